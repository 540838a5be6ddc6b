/*
 * http_internal - what http.c shares with http_multi.c: the client struct
 * and the per-attempt steps (gate check, easy handle setup, accounting of a
 * finished attempt), so that the sequential http_request and the concurrent
 * http_multi apply exactly the same retry, gate and metrics rules. Only
 * http.c and http_multi.c include it.
 *
 * Ownership: as stated per function; nothing here allocates for the caller
 * except http_build_headers.
 *
 * Thread-safety: as http.h (a client and its multi: one thread at a time).
 */
#ifndef CRMSYNC_HTTP_INTERNAL_H
#define CRMSYNC_HTTP_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <curl/curl.h>

#include "common/buf.h"
#include "common/http.h"

struct http_client {
    CURL *curl;              /* one easy handle: keeps its connection cache */
    struct metrics *m;       /* borrowed, may be NULL */
    struct http_opts opts;   /* copy; string members point to ours below */
    char *ca_file;           /* owned copy or NULL */
    char *user_agent;        /* owned copy or NULL */
    long long gate_until_ms; /* monotonic ms; no send before this */
    long dop_hint;           /* last x-ms-dop-hint seen; 0 = none */
    uint64_t rng;            /* xorshift state for backoff jitter */
};

/* Headers of interest captured by the header callback (last response). */
struct hdr_capture {
    char *content_type;  /* owned */
    long retry_after_ms; /* -1 when absent */
    long dop_hint;       /* x-ms-dop-hint; -1 when absent */
};

/* State of one attempt (one transfer on one easy handle). */
struct http_attempt {
    struct buf body;       /* response body being received (owned) */
    struct hdr_capture hc; /* response headers of interest (owned) */
    long long t0_ms;       /* monotonic start, for the latency histogram */
};

/* Builds the curl header list; NULL on OOM. Caller frees with
 * curl_slist_free_all. */
struct curl_slist *http_build_headers(const struct http_header *headers,
                                      size_t nheaders);

/**
 * @brief The 429 gate before an attempt.
 * @param wait_ms receives how long to wait before sending (0 = send now).
 * @returns CS_ERR_OK, or CS_ERR_HTTP_THROTTLED when the wait would exceed
 *          max_inline_wait_ms: then resp is emptied, resp->retry_after_ms
 *          is the remaining wait and errstr says so (nothing may be sent).
 */
enum cs_err http_gate_check(struct http_client *c, const char *method,
                            const char *kind, long long *wait_ms,
                            struct http_response *resp, char *errstr,
                            size_t errstr_size);

/**
 * @brief Resets @p h and sets every option of one attempt; *a is reset and
 *        its start time taken. All pointers are borrowed until the transfer
 *        ends (hdrs, body) or until http_attempt_end (a).
 */
void http_attempt_start(struct http_client *c, CURL *h, struct http_attempt *a,
                        const char *method, const char *url,
                        struct curl_slist *hdrs, const char *body,
                        size_t body_len);

/**
 * @brief Accounts one finished attempt: metrics, the 429 gate, the dop hint,
 *        and resp (takes the body and headers out of @p a).
 * @param cc curl's result; @p status the HTTP code (0 if none).
 * @param rc receives the request's result so far (as http_request returns).
 * @param wait_ms when true is returned: the pause before the next attempt
 *        (capped at max_inline_wait_ms; retries_total already counted).
 * @returns true when another attempt should follow.
 */
bool http_attempt_end(struct http_client *c, struct http_attempt *a,
                      CURLcode cc, long status, const char *method,
                      const char *kind, int attempt, struct http_response *resp,
                      enum cs_err *rc, long long *wait_ms, char *errstr,
                      size_t errstr_size);

#endif
