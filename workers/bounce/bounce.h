/*
 * bounce worker - ESP unsubscribes, resubscribes, spam complaints and
 * bounces become consent changes and the address's bounce status in the
 * CRM, latest event time wins, each effect exactly once (docs/bounce.md).
 *
 * Files: config.c (settings tables, per-tenant lookup), event.c (read and
 * validate one BounceEvent), state.c (the Redis script: compare-and-set of
 * the last applied change per key, bounce counters, suppression sets, done
 * markers - one round trip per batch), catalog.c (the CRM's consents),
 * lookup.c (recipients and current CRM state, read in one $batch),
 * write.c (the CRM write operations), handler.c (a batch, end to end),
 * main.c (runtime + loop).
 *
 * Ownership: structs filled by the *_read / *_build functions borrow their
 * strings from the decoded Avro value or the handler's batch scratch; they
 * never outlive one process() call.
 */
#ifndef CRMSYNC_BOUNCE_H
#define CRMSYNC_BOUNCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <avro.h>

#include "common/config.h"
#include "common/email.h"
#include "common/isotime.h"
#include "common/err.h"

#define BOUNCE_TOPIC_DEFAULT      "crmsync.bounce.events"
#define BOUNCE_READER_SCHEMA      "crmsync.bounce.BounceEvent"
#define BOUNCE_EMAIL_MAX          255 /* 254 bytes + NUL */
#define BOUNCE_KEY_MAX            700
#define BOUNCE_CHANNEL_EMAIL      534120000 /* msdynmkt_contactpointtype Email */
#define BOUNCE_PURPOSE_COMMERCIAL 534120000

/* ---- settings (config.c) ---- */

/* Settings that may differ per tenant (tenants.<name>.<setting>). */
struct bounce_tenant {
    char *consent_model;     /* "cij" | "history" */
    bool set_donotbulkemail; /* channel opt-out / spam -> donotbulkemail */
    char *channel_consents;  /* comma list; "" = commercial from catalog */
    int hard_threshold;      /* hard bounces within the window */
    int soft_threshold;      /* soft bounces within the window */
    int window_days;         /* bounce counting window */
    char *not_found;         /* "dlq" | "create-lead" */
};

/* Settings of the whole worker. */
struct bounce_config {
    char *tenants;              /* consent.tenants: applied tenants, "" all */
    int catalog_refresh_s;      /* consent.catalog_refresh_s */
    char *history_set;          /* history.entity_set */
    char *history_name;         /* history.name_field */
    char *history_optin;        /* history.optin_field */
    char *history_time;         /* history.time_field */
    char *history_source;       /* history.source_field */
    char *history_reason;       /* history.reason_field */
    char *history_consent_nav;  /* history.consent_nav */
    char *history_contact_nav;  /* history.contact_nav */
    char *history_lead_nav;     /* history.lead_nav */
    char *history_account_nav;  /* history.account_nav */
    char *consent_set;          /* history.consent_set */
    char *consent_id_field;     /* history.consent_id_field */
    char *consent_tenant_field; /* history.consent_tenant_field */
    char *status_field;         /* bounce.status_field */
    char *status_time_field;    /* bounce.time_field */
    char *status_sets;          /* bounce.entity_sets */
    int state_ttl_days;         /* state.ttl_days */
};

extern const struct config_field bounce_tenant_fields[];
extern const size_t bounce_tenant_fields_cnt;
extern const struct config_field bounce_config_fields[];
extern const size_t bounce_config_fields_cnt;

/* Per-tenant settings resolved at start. */
struct bounce_tenants;

/**
 * @brief Builds every configured tenant's effective settings.
 * @param sec the per-tenant section as loaded (its target holds the
 *        defaults for tenants without overrides); borrowed for the life of
 *        the result.
 * @returns the table (free with bounce_tenants_free) or NULL + errstr.
 */
struct bounce_tenants *bounce_tenants_new(const struct config *cfg,
                                          const struct config_section *sec,
                                          char *errstr, size_t errstr_size);
void bounce_tenants_free(struct bounce_tenants *t);
/** @returns the settings of @p tenant (borrowed from @p t). */
const struct bounce_tenant *bounce_tenants_get(const struct bounce_tenants *t,
                                               const char *tenant);

/** @returns true when @p item is an element of comma list @p list ("" =
 *  false). */
bool bounce_list_has(const char *list, const char *item);

/* ---- events (event.c) ---- */

enum bounce_kind {
    BOUNCE_UNSUBSCRIBE,
    BOUNCE_RESUBSCRIBE,
    BOUNCE_BOUNCE,
    BOUNCE_OUTBOUNCE,
    BOUNCE_RESET,
    BOUNCE_SPAM,
};

/* One event, strings borrowed from the decoded Avro value. */
struct bounce_event {
    const char *event_id;
    const char *tenant;
    const char *source_system;
    int64_t occurred_at;          /* ms since epoch, > 0 */
    const char *entity_type;      /* contact | lead | account, or NULL */
    const char *entity_id;        /* GUID, or NULL */
    char email[BOUNCE_EMAIL_MAX]; /* trimmed + lower-cased, "" if none */
    enum bounce_kind kind;
    const char *kind_name;  /* the enum symbol, for logs and metrics */
    bool channel;           /* scope CHANNEL */
    const char *consent_id; /* GUID or NULL */
    const char *topic_id;   /* GUID or NULL */
    const char *source;     /* OptOutSource symbol or NULL */
    const char *reason;     /* or NULL */
    bool hard;              /* BOUNCE: hard (5.x.x) or soft (4.x.x) */
};

/**
 * @brief Reads and validates a BounceEvent record.
 * @returns CS_ERR_OK, or CS_ERR_INVALID_EVENT with errstr starting with the
 *          reason label of docs/bounce.md ("invalid-email: ...").
 */
enum cs_err bounce_event_read(avro_value_t *rec, struct bounce_event *ev,
                              char *errstr, size_t errstr_size);

/**
 * @brief Classifies a bounce: RFC 3463 status first ("5.x.x" hard,
 *        "4.x.x" soft), else bounce_type ("HARD"/"SOFT").
 * @returns false (with errstr) when neither gives a class.
 */
bool bounce_classify(const char *smtp_status, const char *bounce_type,
                     bool *hard, char *errstr, size_t errstr_size);

#endif
