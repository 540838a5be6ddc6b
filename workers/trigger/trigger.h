/*
 * trigger worker - behavioural, business and custom triggers start
 * journeys; journeys fire CRM custom triggers, ESP mails, CRM tasks and
 * Kafka events, with waits, reminders, branches and exits
 * (docs/trigger.md).
 *
 * Files: journey.c (journey YAML -> compiled program), config.c (settings
 * table), event.c (read one TriggerEvent), instance.c (an instance's state
 * blob and keys), engine.c (pure step logic: what a fired timer does),
 * store.c (the Redis scripts: transitions, timer claims, completions,
 * action markers - one round trip each), actions.c (executes actions
 * against the CRM, the ESP and Kafka), timer.c (the firing thread),
 * handler.c (the consumer side), main.c (runtime + loop + timer thread).
 *
 * Ownership: structs filled by the *_read functions borrow their strings
 * from the decoded Avro value; they never outlive one process() call.
 */
#ifndef CRMSYNC_TRIGGER_H
#define CRMSYNC_TRIGGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <avro.h>

#include "common/config.h"
#include "common/err.h"
#include "workers/trigger/journey.h"

#define TRIGGER_TOPIC_DEFAULT "crmsync.trigger.events"
#define TRIGGER_READER_SCHEMA "crmsync.trigger.TriggerEvent"
#define TRIGGER_ATTRS_MAX     64

/* ---- settings (config.c) ---- */

struct trigger_config {
    char *journeys;      /* trigger.journeys: journey file path */
    int tick_ms;         /* trigger.tick_ms */
    int fire_batch;      /* trigger.fire_batch */
    int lease_ms;        /* trigger.lease_ms */
    int retry_ms;        /* trigger.retry_ms */
    char *derived_topic; /* trigger.derived_topic ("" = none) */
    int event_schema_id; /* trigger.event_schema_id */
    char *actions_dlq;   /* trigger.actions_dlq_topic */
    char *esp_uncertain; /* trigger.esp_on_uncertain: resend|skip */
    char *ledger_set;    /* trigger.ledger_entity_set */
    char *esp_kind;      /* esp.kind */
    char *esp_base_url;  /* esp.base_url */
    char *esp_mandator;  /* esp.mandator_id */
    char *esp_user;      /* esp.user */
    char *esp_password;  /* esp.password (secret) */
    int esp_timeout_ms;  /* esp.timeout_ms */
};

extern const struct config_field trigger_config_fields[];
extern const size_t trigger_config_fields_cnt;

/* ---- one event (event.c) ---- */

struct trigger_event {
    const char *event_id;
    const char *tenant;
    const char *name; /* trigger_name */
    int kind;         /* JR_KIND_BEHAVIOURAL.. */
    int64_t occurred_ms;
    int64_t deadline_ms;     /* 0: none */
    const char *entity_type; /* "contact" | "lead" | "account" | NULL */
    const char *entity_id;   /* lower-case GUID or NULL */
    char email[256];         /* normalised, "" when none */
    const char *names[TRIGGER_ATTRS_MAX];
    const char *values[TRIGGER_ATTRS_MAX];
    struct jr_attrs attrs; /* points at names/values */
    char entity_id_buf[37];
};

/**
 * @brief Reads and validates a decoded TriggerEvent.
 * @returns CS_ERR_OK, or CS_ERR_INVALID_EVENT with a reason label first in
 *          errstr ("missing-profile: ...", "invalid-email: ...",
 *          "too-many-attributes: ...", "invalid-entity-id: ...").
 */
enum cs_err trigger_event_read(avro_value_t *rec, struct trigger_event *ev,
                               char *errstr, size_t errstr_size);

#endif
