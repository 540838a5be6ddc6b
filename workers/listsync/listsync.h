/*
 * list-sync worker - CRM marketing lists -> ESP recipient lists
 * (docs/listsync.md).
 *
 * Files: config.c (settings), request.c (read and validate a request),
 * members.c (stream a list's members page by page), filter.c (consent,
 * suppression and dedupe of one page), mapping.c (CRM columns -> ESP
 * attributes), job.c (one job, run in its own thread), handler.c (the
 * kafka_loop handler that starts jobs and waits for them), main.c.
 *
 * Ownership: as stated per struct; a job owns copies of everything it uses
 * because it outlives the batch that started it.
 */
#ifndef CRMSYNC_LISTSYNC_H
#define CRMSYNC_LISTSYNC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <avro.h>
#include <jansson.h>

#include "common/config.h"
#include "common/err.h"

#define LISTSYNC_TOPIC_DEFAULT                                                 \
    "crmsync.listsync.requests,crmsync.listsync.membership"
#define LISTSYNC_MEMBERSHIP_SCHEMA "crmsync.listsync.ListMembershipChange"
#define LISTSYNC_READER_SCHEMA     "crmsync.listsync.ListSyncRequest"
#define LISTSYNC_BOUNCE_SCHEMA_ID  3

/* ---- settings (config.c) ---- */

struct listsync_tenant {    /* per tenant (tenants.<name>.<setting>) */
    char *consent_model;    /* "cij" | "history" */
    char *default_language; /* listsync.default_language */
};

struct listsync_config {
    char *barrier_group;    /* listsync.barrier_group */
    char *barrier_topics;   /* listsync.barrier_topics */
    int barrier_timeout_s;  /* listsync.barrier_timeout_s */
    int page_size;          /* listsync.page_size */
    char *mapping;          /* listsync.mapping */
    char *labels;           /* listsync.labels */
    char *language_field;   /* listsync.language_field */
    char *multi_separator;  /* listsync.multi_separator */
    char *status_field;     /* listsync.status_field */
    char *synced_field;     /* listsync.synced_field */
    char *results_topic;    /* listsync.results_topic */
    char *feedback_topic;   /* listsync.feedback_topic */
    char *membership_topic; /* listsync.membership_topic */
    int lease_ms;           /* listsync.lease_ms */
    int job_ttl_days;       /* listsync.job_ttl_days */
    char *history_set;      /* history.entity_set */
    char *history_optin;    /* history.optin_field */
    char *history_time;     /* history.time_field */
    char *history_consent;  /* history.consent_field */
    char *history_contact;  /* history.contact_field */
    char *history_account;  /* history.account_field */
    char *history_lead;     /* history.lead_field */
    char *esp_kind;         /* esp.kind */
    char *esp_base_url;     /* esp.base_url */
    char *esp_mandator;     /* esp.mandator_id */
    char *esp_user;         /* esp.user */
    char *esp_password;     /* esp.password (secret) */
    char *esp_optin;        /* esp.optin_process_id */
    int esp_batch_size;     /* esp.batch_size */
    int esp_timeout_ms;     /* esp.timeout_ms */
    int esp_max_retries;    /* esp.max_retries */
};

extern const struct config_field listsync_tenant_fields[];
extern const size_t listsync_tenant_fields_cnt;
extern const struct config_field listsync_config_fields[];
extern const size_t listsync_config_fields_cnt;

/* ---- requests (request.c) ---- */

struct listsync_request { /* owned copies */
    char *event_id;
    char *tenant;
    char *list_id;    /* CRM list GUID */
    char *esp_list;   /* ESP recipient list id (digits) */
    char *consent_id; /* GUID */
    bool incremental;
    int64_t requested_at; /* ms */
};

/**
 * @brief Reads and validates a ListSyncRequest into owned copies.
 * @returns CS_ERR_OK, CS_ERR_INVALID_EVENT (errstr says why) or
 *          CS_ERR_NOMEM.
 */
enum cs_err listsync_request_read(avro_value_t *rec, struct listsync_request *r,
                                  char *errstr, size_t errstr_size);
void listsync_request_free(struct listsync_request *r);

/* ---- mapping (mapping.c) ---- */

enum map_kind { MAP_FIELD, MAP_LOOKUP, MAP_OPTION, MAP_MULTI, MAP_LANGUAGE };

struct map_entry {
    char *attr;   /* ESP attribute name (owned) */
    char *column; /* CRM column (owned) */
    enum map_kind kind;
};

struct listsync_mapping {
    struct map_entry *v; /* owned */
    size_t n;
    char **names; /* ESP attribute names: mapped then technical (owned) */
    size_t nnames;
};

/**
 * @brief Parses listsync.mapping ("attr=kind:column,...").
 * @returns CS_ERR_OK or CS_ERR_CONFIG naming the bad entry.
 */
enum cs_err listsync_mapping_parse(const char *spec, struct listsync_mapping *m,
                                   char *errstr, size_t errstr_size);
void listsync_mapping_free(struct listsync_mapping *m);

/** @brief The $select columns the mapping needs (comma list, malloc'd). */
char *listsync_mapping_select(const struct listsync_mapping *m);

/* Context of one member's values. */
struct map_ctx {
    const struct listsync_config *lc;
    const char *language;   /* member's language (or the default) */
    const char *consent_id; /* technical opt-in-id */
    const char *list_name;  /* technical description */
    const char *entity;     /* contact | account | lead */
    const char *entity_id;
};

/**
 * @brief Fills @p out[0..m->nnames) with the member's attribute values
 *        (malloc'd strings; free with listsync_values_free).
 */
bool listsync_map_member(const struct listsync_mapping *m,
                         const struct map_ctx *ctx, json_t *row, char **out);
void listsync_values_free(char **v, size_t n);

/** @brief Label override from listsync.labels ("lang|column|value=label;")
 *  or NULL. */
const char *listsync_label(const char *labels, const char *lang,
                           const char *column, const char *value, char *buf,
                           size_t size);

/* ---- feedback (feedback.c) ---- */

struct avro_codec;
struct producer;

/**
 * @brief Produces the BounceEvent for a recipient the ESP refused with
 *        @p code (2, 3 or 4) to @p topic.
 * @param tag the job's request id (part of the event id).
 * @returns true when queued (delivery is confirmed by producer_flush).
 */
bool listsync_feedback(struct avro_codec *codec, struct producer *producer,
                       const char *topic, const char *tenant,
                       const char *consent, const char *tag,
                       const char *esp_list, const char *email,
                       const char *entity, const char *id, int code,
                       char *errstr, size_t errstr_size);

#endif
