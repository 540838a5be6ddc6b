/*
 * actions - executes the actions of fired timers, each exactly once.
 *
 *  crm_trigger  one $batch change set per action: create-only ledger row
 *               (trigger.ledger_entity_set, id = action id) + POST
 *               msdynmkt_<name>. A re-fired action finds its ledger row,
 *               the change set fails with 412 and the trigger is not fired
 *               again (the CRM itself guarantees exactly once).
 *  crm_task     create-only tasks(<action id>).
 *  esp_mail     the address: stored with e-mail-only profiles, else read
 *               from the CRM (one $batch of GETs: the current address);
 *               Redis marker "sending" (store_mark_sending), sendMail, marker
 *               "sent". A marker found "sent" skips the mail; one found
 *               "sending" means a sender died between the two: the mail
 *               may or may not be out - trigger.esp_on_uncertain decides
 *               (resend: at least once; skip: at most once); counted as
 *               outcome="uncertain".
 *  produce      a TriggerEvent (event_id = action id, so consumers dedupe);
 *               also the derived email.not_opened / email.not_clicked of a
 *               branch timeout (to trigger.derived_topic).
 * A refused action (4xx, unknown mailing, ...) is FAILED: recorded on
 * trigger.actions_dlq_topic with its reason, and the journey goes on. A
 * retryable failure (CRM/ESP down, throttled, Kafka down) is RETRY: the
 * caller fires the timer again later.
 *
 * Ownership: struct actions owns its CRM and ESP connections, producer and
 * codec (all for the timer thread only). Jobs borrow their instance,
 * journey and engine action.
 * Thread-safety: one thread.
 */
#ifndef CRMSYNC_TRIGGER_ACTIONS_H
#define CRMSYNC_TRIGGER_ACTIONS_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "workers/trigger/engine.h"
#include "workers/trigger/trigger.h"

struct config;
struct metrics;
struct store;
struct actions;

enum action_result {
    ACT_PENDING = 0,
    ACT_DONE,       /* executed now */
    ACT_DUPLICATE,  /* executed earlier (ledger row / marker found) */
    ACT_SUPPRESSED, /* the ESP refused the recipient (blacklisted,
                       unsubscribed, bounced, target group) or an
                       uncertain mail skipped */
    ACT_FAILED,     /* refused for good: dead-lettered */
    ACT_RETRY,      /* transient: fire again later */
};

struct action_job {
    const struct engine_action *ea; /* borrowed */
    const struct instance *in;      /* borrowed */
    const struct journey *j;        /* borrowed */
    char email[256]; /* esp_mail: the address (stored, or read from the
                        CRM for entity profiles) */
    enum action_result result;
    char reason[256];
    long retry_after_ms;
};

/**
 * @brief Opens the connections the journeys need (ESP only when a journey
 *        sends mail).
 * @returns the executor (caller frees with actions_free) or NULL + errstr.
 */
struct actions *actions_new(const struct config *cfg,
                            const struct trigger_config *tc,
                            const struct journey_set *js, struct metrics *m,
                            char *errstr, size_t errstr_size);

void actions_free(struct actions *a);

/** @brief Executes jobs[0..n) (sets each result). @p st for markers. */
void actions_run(struct actions *a, struct store *st, struct action_job *jobs,
                 size_t n, int64_t now_ms);

/** @returns true when the CRM (and the ESP, if used) answer. */
bool actions_healthy(struct actions *a);

#endif
