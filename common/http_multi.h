/*
 * http_multi - several requests of one http_client in flight at once
 * (libcurl multi interface, one easy handle per slot, so every slot keeps
 * its own keep-alive connection).
 *
 * Each request follows exactly the rules of http_request (http.h): retries
 * with backoff on 5xx/408/429/network, per-attempt metrics, and the 429
 * gate, which is the client's and therefore shared: a 429 on one request
 * holds back every other request's retries and first sends until
 * Retry-After has elapsed (transfers already on the wire cannot be
 * recalled). A request that would have to wait longer than
 * max_inline_wait_ms ends with CS_ERR_HTTP_THROTTLED without being sent.
 *
 * In flight = transfers on the wire; never more than
 * http_multi_capacity(): the slot count, lowered to the server's
 * x-ms-dop-hint when one was seen.
 *
 * Use: http_multi_add() up to capacity requests, then http_multi_wait()
 * returns them one by one as they finish (in completion order); add more in
 * between. The caller decides what to do with each result (e.g. refresh a
 * token on 401 and add the request again).
 *
 * Ownership: the multi borrows its client (which must outlive it); a
 * request struct is borrowed from http_multi_add until http_multi_wait
 * returns it; its resp is then the caller's (http_response_free).
 *
 * Thread-safety: one thread at a time, and not concurrently with
 * http_request on the same client.
 */
#ifndef CRMSYNC_HTTP_MULTI_H
#define CRMSYNC_HTTP_MULTI_H

#include <stddef.h>

#include "common/err.h"
#include "common/http.h"

struct http_multi; /* opaque */

struct http_multi_req {
    /* in: all borrowed until http_multi_wait returns the request */
    const char *method;
    const char *url;
    const struct http_header *headers;
    size_t nheaders;
    const char *body;
    size_t body_len;
    const char *metric_kind; /* kind="..." label; NULL = "other" */
    void *user;              /* caller's tag, untouched */
    /* out: valid once http_multi_wait returned the request */
    enum cs_err rc;            /* as http_request's return value */
    struct http_response resp; /* as http_request's resp; caller frees */
    char errstr[256];          /* detail when rc != CS_ERR_OK */
};

/**
 * @brief Creates a multi with @p slots easy handles (1..64).
 * @param c borrowed client; must outlive the multi.
 * @returns the multi (caller frees with http_multi_free) or NULL + errstr.
 */
struct http_multi *http_multi_new(struct http_client *c, int slots,
                                  char *errstr, size_t errstr_size);

/** @brief Frees the multi (aborting unfinished transfers). NULL is fine. */
void http_multi_free(struct http_multi *hm);

/** @returns how many requests may be in flight now: the slot count, capped
 *  by the client's last x-ms-dop-hint. */
size_t http_multi_capacity(const struct http_multi *hm);

/** @returns requests added and not yet returned by http_multi_wait. */
size_t http_multi_outstanding(const struct http_multi *hm);

/**
 * @brief Queues @p req; it is sent as soon as the gate, its backoff and the
 *        capacity allow (inside http_multi_wait).
 * @returns CS_ERR_OK; CS_ERR_NOMEM; CS_ERR_INVALID_ARG when all slots are
 *          taken (req untouched).
 */
enum cs_err http_multi_add(struct http_multi *hm, struct http_multi_req *req,
                           char *errstr, size_t errstr_size);

/**
 * @brief Drives the transfers until one request is final and returns it
 *        (its out fields filled).
 * @returns the finished request (borrowed back to the caller), or NULL
 *          when no request is outstanding.
 */
struct http_multi_req *http_multi_wait(struct http_multi *hm);

#endif
