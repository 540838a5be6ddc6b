/*
 * crm - the connector interface between workers and a CRM.
 *
 * Workers describe writes as `struct crm_op`s (method, path relative to the
 * API root, JSON body, create-only/update-only flags, optional atomic change
 * set) and hand arrays of them to crm->ops->execute(); reads go through
 * get_json(). Nothing CRM-specific leaks out of this header: a connector is a
 * vtable plus its private state (hiredis adapters are the model), and
 * crm_new() picks one by `kind`. Today there is one: "dataverse"
 * (crm_dataverse.c, the Dataverse Web API with OAuth2 client credentials and
 * $batch).
 *
 * Result mapping per operation: 2xx -> CRM_OP_OK (a GET's JSON body in
 * op->response); 412 on CRM_OP_CREATE_ONLY -> CRM_OP_EXISTS (the record is
 * already there: a replay); 404 on a GET -> CRM_OP_NOT_FOUND; 412 or 404 on
 * an op with if_match (the row changed or vanished since it was read) and
 * 429/5xx/408 -> CRM_OP_RETRY (retry later, never dead-letter); any other
 * 4xx -> CRM_OP_FAILED with the CRM's error code and message.
 *
 * Ownership: a crm owns its HTTP client and token; strings in crm_options
 * are copied. Ops are owned by the caller (execute only writes the out
 * fields).
 * Thread-safety: one struct crm is used by one thread at a time.
 */
#ifndef CRMSYNC_CRM_H
#define CRMSYNC_CRM_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "common/err.h"
#include "common/http.h"

struct metrics;

/** Upper bound of crm_options.max_in_flight (Dataverse allows 52 concurrent
 *  requests per user; several workers may share one user). */
#define CRM_MAX_IN_FLIGHT 16

enum crm_op_flags {
    CRM_OP_CREATE_ONLY = 1, /* If-None-Match: * ; 412 means already exists */
    CRM_OP_UPDATE_ONLY = 2, /* If-Match: * */
};

enum crm_op_result {
    CRM_OP_PENDING = 0,
    CRM_OP_OK,
    CRM_OP_EXISTS,
    CRM_OP_RETRY,
    CRM_OP_FAILED,
    CRM_OP_NOT_FOUND, /* a GET answered 404 */
};

struct crm_op {
    /* in */
    const char *method;   /* "POST" | "PATCH" | "DELETE" | "GET" (borrowed) */
    char *path;           /* relative to the API root, e.g.
                             "campaignresponses(<guid>)" (owned by the caller) */
    char *body;           /* JSON text or NULL (owned by the caller) */
    unsigned flags;       /* enum crm_op_flags */
    const char *if_match; /* ETag read earlier (W/"123"): sent as If-Match
                             for optimistic concurrency; NULL = none
                             (borrowed) */
    int changeset;        /* 0 = standalone; ops with the same non-zero value
                             form one atomic change set (must be adjacent) */
    /* out */
    enum crm_op_result result;
    int status;          /* HTTP status of this operation (0: not executed) */
    char error[256];     /* CRM error code + message for FAILED/RETRY */
    long retry_after_ms; /* for RETRY because of throttling */
    json_t *response;    /* 2xx JSON body of a GET, else NULL (caller
                            json_decref()s it) */
};

struct crm_ops {
    const char *name;
    /* Executes ops in $batch requests of at most batch_size operations each
       with Prefer: odata.continue-on-error; maps every per-operation response
       back to ops[i] (result/status/error). If a whole $batch request fails
       retryably (network, 5xx, throttled beyond inline wait, 401 twice) its
       ops become RETRY and execute still returns CS_ERR_OK unless NOTHING
       could be sent (then the retryable error code). Ops whose result is
       already OK or EXISTS on entry are skipped (never re-sent). Up to
       max_in_flight requests are in flight at once; after a retryable
       failure no further request is started (those in flight finish). */
    enum cs_err (*execute)(void *self, struct crm_op *ops, size_t n,
                           char *errstr, size_t errstr_size);
    /* GET path (relative, with query) -> parsed JSON (caller json_decref).
       Follows @odata.nextLink when all_pages, concatenating "value" arrays
       (for small reads only). */
    enum cs_err (*get_json)(void *self, const char *path, bool all_pages,
                            json_t **out, char *errstr, size_t errstr_size);
    /* One page: GET @p path (relative, or an absolute @odata.nextLink)
       with an optional Prefer header value (e.g.
       "odata.maxpagesize=5000,odata.include-annotations=\"*\""). The
       caller follows "@odata.nextLink" itself (streaming reads). */
    enum cs_err (*get_page)(void *self, const char *path, const char *prefer,
                            json_t **out, char *errstr, size_t errstr_size);
    /* Cheap reachability check (token + GET "WhoAmI"); true when the CRM
       answers 2xx. */
    bool (*ping)(void *self);
    void (*free)(void *self);
};

struct crm {
    const struct crm_ops *ops; /* static vtable */
    void *self;                /* connector state, owned */
};

struct crm_options {       /* all strings borrowed during crm_new */
    const char *kind;      /* "dataverse" */
    const char *base_url;  /* https://org.crm.dynamics.com (no trailing
                              slash); API root = base_url + "/api/data/v9.2/" */
    const char *token_url; /* NULL/"" = Entra v2 endpoint of tenant_id */
    const char *tenant_id;
    const char *client_id;
    const char *client_secret;
    const char *scope; /* NULL/"" = base_url + "/.default" */
    int batch_size;    /* 1..1000 */
    int max_in_flight; /* 1..CRM_MAX_IN_FLIGHT concurrent $batch requests
                          per execute call (0 = 1), further capped by the
                          server's x-ms-dop-hint */
    struct http_opts http;
};

/**
 * @brief Creates the connector named by opts->kind.
 * @param m borrowed metrics registry (may be NULL); must outlive the crm.
 * @returns the connector (caller frees with crm_free) or NULL with the reason
 *          in errstr (unknown kind, missing setting; never a secret).
 */
struct crm *crm_new(const struct crm_options *opts, struct metrics *m,
                    char *errstr, size_t errstr_size);

/** @brief Frees the connector. NULL is fine. */
void crm_free(struct crm *crm);

#endif
