/*
 * crmio - what the bounce worker reads from and writes to the CRM.
 *
 * catalog.c: the consents the CRM knows (CI-J purposes + topics, or the
 * history model's advertising consents with their tenant), re-read every
 * consent.catalog_refresh_s and on an unknown id (at most every 10 s).
 * lookup.c: GET operations (sent together in one $batch) for an address's
 * contacts / accounts / leads and its CI-J consent rows, and their parsing.
 * write.c: the write operations (consent rows, history entries, bounce
 * status, donotbulkemail, created leads) as struct crm_op.
 *
 * Ownership: a catalog owns its copies; lookup results own their strings;
 * crm_op paths/bodies built here are malloc'd and owned by the caller
 * (free with bounce_ops_free).
 */
#ifndef CRMSYNC_BOUNCE_CRMIO_H
#define CRMSYNC_BOUNCE_CRMIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/crm.h"
#include "workers/bounce/bounce.h"

/* ---- catalog.c ---- */

struct bounce_catalog;

struct bounce_catalog *bounce_catalog_new(struct crm *crm,
                                          const struct bounce_config *bc);
void bounce_catalog_free(struct bounce_catalog *c);

/**
 * @brief Makes sure the consents of model @p history (false: CI-J) are
 *        loaded and not older than the refresh interval; @p force re-reads
 *        them unless that happened in the last 10 s.
 * @returns CS_ERR_OK or a (retryable) CRM error with errstr.
 */
enum cs_err bounce_catalog_ensure(struct bounce_catalog *c, bool history,
                                  bool force, char *errstr, size_t errstr_size);

/** @returns whether @p consent (and @p topic, may be NULL) is known for
 *  @p tenant in the given model. */
bool bounce_catalog_has(const struct bounce_catalog *c, bool history,
                        const char *tenant, const char *consent,
                        const char *topic);

/**
 * @brief The consents a client-wide opt-out of @p tenant covers: the
 *        tenant's configured list, else every commercial purpose (CI-J) or
 *        every consent of the tenant (history).
 * @param out receives up to @p max ids (borrowed from the catalog or the
 *        settings; valid until the next ensure).
 * @returns the number of ids (may exceed @p max: then only max are set).
 */
size_t bounce_catalog_channel(const struct bounce_catalog *c, bool history,
                              const char *tenant,
                              const struct bounce_tenant *tn, const char **out,
                              size_t max);

/* ---- lookup.c ---- */

/* The entity sets, in matching precedence (contact > account > lead). */
#define BOUNCE_NSETS 3
extern const char *const bounce_sets[BOUNCE_NSETS];     /* "contacts"... */
extern const char *const bounce_set_keys[BOUNCE_NSETS]; /* "contactid"... */

/** @returns the set index of entity type "contact"/"account"/"lead", or -1. */
int bounce_set_of_type(const char *entity_type);

struct bounce_rec { /* a CRM record with the address */
    int set;        /* index into bounce_sets */
    char id[37];
    char etag[64];
    int64_t status_t; /* bounce.time_field, -1 when empty */
    bool status;      /* bounce.status_field */
};

struct bounce_cpc { /* a CI-J consent row of the address */
    char id[37];
    char purpose[37];
    char topic[37]; /* "" when none */
    int value;      /* msdynmkt_value */
    int64_t t;      /* crmsync stamp in msdynmkt_reason, else modifiedon */
    char etag[64];
};

struct bounce_addr {
    const char *email;       /* borrowed from a work item */
    bool need_lookup;        /* records of every set */
    bool need_cpc;           /* CI-J consent rows */
    struct bounce_rec *recs; /* owned */
    size_t nrecs;
    struct bounce_cpc *cpcs; /* owned */
    size_t ncpcs;
    bool lead_planned; /* create-lead in this batch */
    char lead_id[37];
};

/**
 * @brief Appends the GET ops an address needs (lookups: one per set;
 *        consent rows: one) to @p ops (room for 4 per address).
 * @returns the number of ops appended (paths owned by the ops).
 */
size_t bounce_lookup_ops(const struct bounce_config *bc,
                         const struct bounce_addr *a, struct crm_op *ops);

/**
 * @brief Parses the answers of bounce_lookup_ops() into @p a.
 * @returns false when an answer is missing or malformed (errstr says
 *          which); the caller retries.
 */
bool bounce_lookup_parse(const struct bounce_config *bc, struct bounce_addr *a,
                         struct crm_op *ops, size_t n, char *errstr,
                         size_t errstr_size);

void bounce_addr_clear(struct bounce_addr *a);

/** @brief GET op reading a record's address: <set>(<id>)?$select=... */
void bounce_entity_op(struct crm_op *op, int set, const char *id);
/** @returns the record's emailaddress1 from a GET answer (borrowed from
 *  op->response) or NULL. */
const char *bounce_entity_email(const struct crm_op *op);

/* ---- write.c ---- */

struct bounce_change { /* one applied change to write */
    const struct bounce_event *ev;
    int64_t t;           /* event (or threshold crossing) time */
    int value;           /* 1 out / bounced, 0 in / not bounced */
    const char *consent; /* consent / purpose id */
    const char *topic;   /* or NULL */
};

/* CI-J: update @p row (If-Match its etag) or, when NULL, create the row
 * (deterministic id, create-only). */
bool bounce_op_cpc(struct crm_op *op, const struct bounce_change *c,
                   const char *email, const struct bounce_cpc *row);
/* History: a create-only entry for recipient record (set, id). */
bool bounce_op_history(struct crm_op *op, const struct bounce_config *bc,
                       const struct bounce_change *c, int set, const char *id);
/* Bounce status on one record, If-Match its etag. */
bool bounce_op_status(struct crm_op *op, const struct bounce_config *bc,
                      const struct bounce_change *c,
                      const struct bounce_rec *r);
/* donotbulkemail on one record (update-only). */
bool bounce_op_dnb(struct crm_op *op, int set, const char *id, bool value);
/* A lead for an unknown address (create-only, deterministic id). */
bool bounce_op_lead(struct crm_op *op, const struct bounce_event *ev,
                    const char *email, const char *lead_id);
/** @brief Deterministic id of the lead created for (tenant, email). */
void bounce_lead_id(const char *tenant, const char *email, char out[37]);

/** @brief Frees paths, bodies and responses of ops[0..n). */
void bounce_ops_free(struct crm_op *ops, size_t n);

#endif
