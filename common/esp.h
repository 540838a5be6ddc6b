/*
 * esp - the connector interface between the workers and an email service
 * provider (ESP): the list-sync worker's recipient lists and the trigger
 * worker's transactional (event) mails.
 *
 * The list-sync worker refreshes one ESP recipient list at a time: clear()
 * it, then add_all() the members in batches (per-recipient result codes
 * out), then logout(). The trigger worker sends one event mailing to one
 * recipient with send_mail() (adding the recipient to the list first when
 * the service does not know it). Nothing ESP-specific leaks out of this
 * header: a connector is a vtable plus its private state (like crm.h), and
 * esp_new() picks one by `kind`. Today there is one: "optimizely"
 * (esp_optimizely.c, Optimizely Campaign's SOAP 1.1 RPC/encoded API:
 * RpcSession login/logout, RpcRecipient clear/addAll3/add2/remove,
 * RpcMailing sendMail; request/response XML in soap.c).
 *
 * Sessions: the connector logs in lazily on the first call and reuses the
 * session; when the service says the session is invalid (expired after 20
 * minutes) it logs in again and resends the call once
 * (crmsync_esp_relogins_total).
 *
 * Error mapping of every action:
 *   CS_ERR_OK                  the call succeeded;
 *   CS_ERR_ESP_BATCH_TOO_LARGE the service refused the batch size ("too many
 *                              recipients" fault): split it and resend the
 *                              halves (not retryable as it is);
 *   CS_ERR_ESP_UNAVAILABLE     network error, timeout, HTTP 5xx/408/429
 *                              without a SOAP fault, unreadable 2xx body,
 *                              after the inline retries of http_opts
 *                              (retryable: try the job later);
 *   CS_ERR_ESP_FAULT           any other SOAP fault (bad credentials,
 *                              unknown list or mailing, invalid session
 *                              twice, ...), an HTTP 4xx without a fault, an
 *                              answer of the wrong shape; errstr has the
 *                              faultstring with echoed credentials removed;
 *   CS_ERR_INVALID_ARG, CS_ERR_NOMEM.
 * The password (and the session id) never appear in errstr or logs.
 *
 * Metrics (when a registry is given): crmsync_esp_requests_total
 * {method,result} per HTTP attempt, result one of ok, fault,
 * invalid_session, batch_too_large, http_error, bad_response, network,
 * timeout; crmsync_esp_request_duration_seconds{method};
 * crmsync_esp_relogins_total.
 *
 * Ownership: an esp owns its HTTP client and session; strings in
 * esp_options are copied. Recipient data passed to add_all is borrowed for
 * the call; so are the ids and address passed to send_mail.
 * Thread-safety: one struct esp is used by one thread at a time.
 */
#ifndef CRMSYNC_ESP_H
#define CRMSYNC_ESP_H

#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"
#include "common/http.h"

struct metrics;

/** Per-recipient result codes of addAll3 (and add2). */
enum esp_add_code {
    ESP_ADD_INSERTED = 0,
    ESP_ADD_VALIDATION_FAILED = 1,
    ESP_ADD_UNSUBSCRIBED = 2,
    ESP_ADD_BLACKLISTED = 3,
    ESP_ADD_BOUNCE_OVERFLOWED = 4,
    ESP_ADD_ALREADY_IN_LIST = 5,
    ESP_ADD_FILTERED = 6,
    ESP_ADD_GENERAL_ERROR = 7, /* also any code outside 0..7 */
};

/** Result of MailingWebservice.sendMail (send_mail's *code). */
enum esp_send_code {
    ESP_SEND_SPOOLED = 0,           /* the mail has been spooled (async) */
    ESP_SEND_BLACKLISTED = 1,       /* the recipient is blocked */
    ESP_SEND_UNSUBSCRIBED = 2,      /* the recipient is unsubscribed */
    ESP_SEND_NOT_FOUND = 3,         /* the recipient is not in the list */
    ESP_SEND_LIST_INVALID = 4,      /* list not assigned to the mailing */
    ESP_SEND_TARGET_GROUP = 5,      /* blocked by the mailing's target group */
    ESP_SEND_BOUNCE_OVERFLOWED = 6, /* too many bounces */
    ESP_SEND_OTHER = 7,             /* any code outside 0..6 */
};

struct esp_recipient {
    const char *id;    /* recipient id, e.g. the e-mail address (borrowed) */
    const char *email; /* address (borrowed) */
    const char *const *values; /* nattrs values in attr_names order
                                  (borrowed); NULL entries are sent as "" */
};

struct esp_ops {
    const char *name;
    /* Removes every recipient of list_id (decimal id). Cannot be undone. */
    enum cs_err (*clear)(void *self, const char *list_id, char *errstr,
                         size_t errstr_size);
    /* addAll3(list, optin_process_id ("0" or NULL/"" = activate at once),
       ids, emails, attribute names, values) -> codes[i] (0..7, enum
       esp_add_code) for r[i], i < n. n >= 1. codes is caller-owned, n
       entries; written only on CS_ERR_OK. */
    enum cs_err (*add_all)(void *self, const char *list_id,
                           const char *optin_process_id,
                           const char *const *attr_names, size_t nattrs,
                           const struct esp_recipient *r, size_t n, int *codes,
                           char *errstr, size_t errstr_size);
    /* remove(list, recipient id): *existed false when the service says the
       recipient is not in the list (not an error). */
    enum cs_err (*remove)(void *self, const char *list_id,
                          const char *recipient_id, bool *existed, char *errstr,
                          size_t errstr_size);
    /* sendMail(mailing_id, list_id, recipient_id) of an event-type mailing
       (decimal mailing and list ids; the mail is spooled asynchronously).
       When the answer is ESP_SEND_NOT_FOUND and email is not NULL, the
       recipient is added to list_id first (add2, opt-in process "0", no
       attributes) and sendMail is sent once more, whatever add2 answered.
       *code (enum esp_send_code) is the last sendMail answer, written only
       on CS_ERR_OK; a fault of the add2 step is returned as such. */
    enum cs_err (*send_mail)(void *self, const char *mailing_id,
                             const char *list_id, const char *recipient_id,
                             const char *email, int *code, char *errstr,
                             size_t errstr_size);
    /* Ends the session if there is one (an invalid-session fault counts as
       ended). CS_ERR_OK when nothing was open. */
    enum cs_err (*logout)(void *self);
    /* Logs in with a fresh session (the previous one is logged out):
       true when the service accepted the credentials. */
    bool (*ping)(void *self);
    void (*free)(void *self);
};

struct esp {
    const struct esp_ops *ops; /* static vtable */
    void *self;                /* connector state, owned */
};

struct esp_options {         /* all strings borrowed during esp_new */
    const char *kind;        /* "optimizely" (NULL/"" = "optimizely") */
    const char *base_url;    /* e.g. https://api.campaign.episerver.net/soap11
                                (trailing slash ok): endpoints are
                                base_url + "/RpcSession", "/RpcRecipient" */
    const char *mandator_id; /* decimal client id */
    const char *user;
    const char *password;  /* secret */
    struct http_opts http; /* timeouts, TLS; max_retries/backoff_* drive
                              the connector's own retries (SOAP faults
                              arrive as HTTP 500 and are never resent
                              blindly) */
};

/**
 * @brief Creates the connector named by o->kind. Does not log in.
 * @param m borrowed metrics registry (may be NULL); must outlive the esp.
 * @returns the connector (caller frees with esp_free) or NULL with the
 *          reason in errstr (unknown kind, missing setting; never a secret).
 */
struct esp *esp_new(const struct esp_options *o, struct metrics *m,
                    char *errstr, size_t errstr_size);

/** @brief Frees the connector (does not log out). NULL is fine. */
void esp_free(struct esp *e);

/**
 * @brief Optimizely connector (see esp_new; for esp.c and tests).
 * @returns the connector (caller frees with esp_free) or NULL + errstr.
 */
struct esp *esp_optimizely_new(const struct esp_options *o, struct metrics *m,
                               char *errstr, size_t errstr_size);

/*
 * Request bodies exactly as the connector sends them (exposed for unit
 * tests): named parts, sessionId last, as the recorded Savon client did.
 * Each writes the body into *out (caller frees with free()) and returns
 * CS_ERR_OK or CS_ERR_NOMEM. Strings are borrowed.
 */
enum cs_err esp_optimizely_build_login(const char *mandator_id,
                                       const char *user, const char *password,
                                       char **out);
enum cs_err esp_optimizely_build_logout(const char *session_id, char **out);
enum cs_err esp_optimizely_build_clear(const char *session_id,
                                       const char *list_id, char **out);
enum cs_err esp_optimizely_build_remove(const char *session_id,
                                        const char *list_id,
                                        const char *recipient_id, char **out);
/* add2 (single recipient; for the incremental mode). */
enum cs_err
esp_optimizely_build_add2(const char *session_id, const char *list_id,
                          const char *optin_process_id,
                          const char *const *attr_names, size_t nattrs,
                          const struct esp_recipient *r, char **out);
/* sendMail (MailingWebservice, namespace ...soap11/RpcMailing). */
enum cs_err esp_optimizely_build_send_mail(const char *session_id,
                                           const char *mailing_id,
                                           const char *list_id,
                                           const char *recipient_id,
                                           char **out);
enum cs_err esp_optimizely_build_add_all3(
    const char *session_id, const char *list_id, const char *optin_process_id,
    const char *const *attr_names, size_t nattrs, const struct esp_recipient *r,
    size_t n, char **out);

#endif
