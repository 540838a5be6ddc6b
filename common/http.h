/*
 * http - a libcurl client for one peer user (one CRM application user):
 * keep-alive connection reuse, connect/total timeouts, retries with
 * exponential backoff and full jitter on 5xx, 408, 429 and network errors,
 * and the 429 gate.
 *
 * DESIGN: the 429 gate. Dataverse counts service-protection limits per user,
 * so when any response of this client is 429, no request of this client may
 * be sent before now + Retry-After. The gate is checked before every attempt.
 * Waits up to max_inline_wait_ms are slept inside http_request; longer ones
 * return CS_ERR_HTTP_THROTTLED immediately (nothing sent) so the caller can
 * pause its Kafka partitions and keep polling instead of blocking.
 *
 * Metrics (when a registry is given): crmsync_crm_requests_total{kind,status}
 * per attempt (status is the HTTP code or "network"),
 * crmsync_crm_request_duration_seconds{kind}, crmsync_crm_throttled_total,
 * crmsync_crm_retries_total.
 *
 * Concurrency: http_multi.h sends several requests of one client at once
 * under the same rules (same gate, retries and metrics).
 *
 * Secrets: header values and bodies are never logged or copied into errstr.
 *
 * Thread-safety: a client is used by one thread at a time (it owns one CURL
 * easy handle). Different clients may be used concurrently.
 */
#ifndef CRMSYNC_HTTP_H
#define CRMSYNC_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"

struct metrics;
struct http_client; /* opaque: one per peer user, one thread */

struct http_opts {
    long connect_timeout_ms; /* TCP+TLS connect timeout */
    long timeout_ms;         /* whole-transfer timeout per attempt */
    int max_retries;         /* retries after the first attempt for 5xx, 408,
                                network errors and 429 */
    long backoff_base_ms;    /* exponential backoff with full jitter:
                                random(0, min(max, base * 2^attempt)) */
    long backoff_max_ms;
    long max_inline_wait_ms; /* never sleep longer than this inside
                                http_request; longer gate waits return
                                CS_ERR_HTTP_THROTTLED */
    bool tls_verify;         /* default true; false only when configured */
    const char *ca_file;     /* borrowed during http_client_new; NULL/"" =
                                system store */
    const char *user_agent;  /* borrowed during http_client_new; NULL ok */
};

struct http_header {
    const char *name;  /* borrowed */
    const char *value; /* borrowed */
};

struct http_response {
    long status;         /* final HTTP status (0 when nothing was received) */
    char *body;          /* NUL-terminated body, owned; NULL when empty */
    size_t body_len;     /* bytes in body (excluding the NUL) */
    char *content_type;  /* Content-Type header value, owned; NULL if absent */
    long retry_after_ms; /* from Retry-After (429/503) or the gate; 0 if none */
};

/**
 * @brief Creates a client. Strings in @p opts are copied.
 * @param m borrowed metrics registry, may be NULL; must outlive the client.
 * @returns the client (caller frees with http_client_free) or NULL with a
 *          message in errstr.
 */
struct http_client *http_client_new(const struct http_opts *opts,
                                    struct metrics *m, char *errstr,
                                    size_t errstr_size);

/** @brief Frees the client and closes its connections. NULL is fine. */
void http_client_free(struct http_client *c);

/**
 * @brief Performs one request with retries and the 429 gate.
 * @param method "GET", "POST", "PATCH", "DELETE", ... (borrowed)
 * @param url absolute URL (borrowed)
 * @param headers extra request headers (borrowed; nheaders entries)
 * @param body request body or NULL (borrowed; body_len bytes)
 * @param metric_kind label value for kind="..." (e.g. "batch", "token")
 * @param resp zeroed and filled; caller frees with http_response_free (also
 *        after an error return).
 * @returns CS_ERR_OK with resp filled for any final HTTP status (including
 *          4xx/5xx/429 after retries are exhausted: inspect resp->status);
 *          CS_ERR_HTTP_NETWORK / CS_ERR_HTTP_TIMEOUT when the network failed
 *          on every attempt; CS_ERR_HTTP_THROTTLED when the gate would need a
 *          wait longer than max_inline_wait_ms (resp->retry_after_ms is the
 *          remaining wait; nothing was sent); CS_ERR_NOMEM.
 */
enum cs_err http_request(struct http_client *c, const char *method,
                         const char *url, const struct http_header *headers,
                         size_t nheaders, const char *body, size_t body_len,
                         const char *metric_kind, struct http_response *resp,
                         char *errstr, size_t errstr_size);

/** @brief Frees the owned members and zeroes @p r. NULL is fine. */
void http_response_free(struct http_response *r);

/** @returns the monotonic ms until which sending is gated (0 if not gated). */
long long http_gate_until_ms(const struct http_client *c);

/** @returns the last x-ms-dop-hint (recommended degree of parallelism) any
 *  response of this client carried, 0 when none was seen. */
long http_dop_hint(const struct http_client *c);

/** @returns the current CLOCK_MONOTONIC time in ms (same clock as the gate). */
long long http_now_ms(void);

#endif
