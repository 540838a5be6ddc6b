/*
 * http - libcurl client with retries, backoff and the 429 gate. See http.h.
 */
#include "common/http.h"
#include "common/http_internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/metrics.h"

long long http_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long long ms)
{
    struct timespec ts;

    if (ms <= 0)
        return;
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static uint64_t rng_next(struct http_client *c)
{
    uint64_t x = c->rng;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c->rng = x;
    return x;
}

/* Full-jitter backoff for retry number @p attempt (0-based). */
static long long backoff_ms(struct http_client *c, int attempt)
{
    long long cap = c->opts.backoff_base_ms;

    for (int i = 0; i < attempt && cap < c->opts.backoff_max_ms; i++)
        cap *= 2;
    if (cap > c->opts.backoff_max_ms)
        cap = c->opts.backoff_max_ms;
    if (cap <= 0)
        return 0;
    return (long long)(rng_next(c) % (uint64_t)(cap + 1));
}

static char *dup_or_null(const char *s)
{
    if (!s || !*s)
        return NULL;
    return strdup(s);
}

struct http_client *http_client_new(const struct http_opts *opts,
                                    struct metrics *m, char *errstr,
                                    size_t errstr_size)
{
    struct http_client *c = calloc(1, sizeof(*c));

    if (!c) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(errstr, errstr_size, "curl_global_init failed");
        free(c);
        return NULL;
    }
    c->opts = *opts;
    c->m = m;
    c->ca_file = dup_or_null(opts->ca_file);
    c->user_agent = dup_or_null(opts->user_agent);
    c->opts.ca_file = c->ca_file;
    c->opts.user_agent = c->user_agent;
    if (c->opts.max_retries < 0)
        c->opts.max_retries = 0;
    if (c->opts.backoff_max_ms < c->opts.backoff_base_ms)
        c->opts.backoff_max_ms = c->opts.backoff_base_ms;
    c->rng = (uint64_t)http_now_ms() ^ (uint64_t)(uintptr_t)c ^
             0x9e3779b97f4a7c15ULL;
    if (c->rng == 0)
        c->rng = 1;
    c->curl = curl_easy_init();
    if (!c->curl) {
        snprintf(errstr, errstr_size, "curl_easy_init failed");
        http_client_free(c);
        return NULL;
    }
    return c;
}

void http_client_free(struct http_client *c)
{
    if (!c)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    free(c->ca_file);
    free(c->user_agent);
    free(c);
    curl_global_cleanup();
}

void http_response_free(struct http_response *r)
{
    if (!r)
        return;
    free(r->body);
    free(r->content_type);
    memset(r, 0, sizeof(*r));
}

long long http_gate_until_ms(const struct http_client *c)
{
    return c->gate_until_ms > http_now_ms() ? c->gate_until_ms : 0;
}

/* curl write callback: appends to the struct buf in @p userdata. */
static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct buf *b = userdata;
    size_t n = size * nmemb;

    if (buf_append(b, ptr, n) != CS_ERR_OK)
        return 0; /* aborts the transfer; b->oom tells why */
    return n;
}

/* Parses a Retry-After value: delta-seconds or an HTTP-date. -1 if bad. */
static long parse_retry_after(const char *v)
{
    char *end = NULL;
    long secs;

    while (*v == ' ' || *v == '\t')
        v++;
    errno = 0;
    secs = strtol(v, &end, 10);
    if (end != v && errno == 0 && secs >= 0) {
        if (secs > 86400)
            secs = 86400;
        return secs * 1000;
    }
    {
        time_t t = curl_getdate(v, NULL);
        time_t now = time(NULL);
        if (t == (time_t)-1)
            return -1;
        return t > now ? (long)(t - now) * 1000 : 0;
    }
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *userdata)
{
    struct hdr_capture *h = userdata;
    size_t n = size * nitems;
    char line[512];
    size_t len = n < sizeof(line) - 1 ? n : sizeof(line) - 1;
    char *colon;
    char *value;
    char *end;

    memcpy(line, buf, len);
    line[len] = '\0';
    if (strncmp(line, "HTTP/", 5) == 0) {
        /* A new response (e.g. after 100 Continue): forget the old one. */
        free(h->content_type);
        h->content_type = NULL;
        h->retry_after_ms = -1;
        h->dop_hint = -1;
        return n;
    }
    colon = strchr(line, ':');
    if (!colon)
        return n;
    *colon = '\0';
    value = colon + 1;
    while (*value == ' ' || *value == '\t')
        value++;
    end = value + strlen(value);
    while (end > value && (end[-1] == '\r' || end[-1] == '\n' ||
                           end[-1] == ' ' || end[-1] == '\t'))
        *--end = '\0';
    if (strcasecmp(line, "Content-Type") == 0) {
        free(h->content_type);
        h->content_type = strdup(value);
    } else if (strcasecmp(line, "Retry-After") == 0) {
        h->retry_after_ms = parse_retry_after(value);
    } else if (strcasecmp(line, "x-ms-dop-hint") == 0) {
        char *e = NULL;
        long v;
        errno = 0;
        v = strtol(value, &e, 10);
        h->dop_hint = e != value && errno == 0 && v > 0 ? v : -1;
    }
    return n;
}

struct curl_slist *http_build_headers(const struct http_header *headers,
                                      size_t nheaders)
{
    struct curl_slist *list = NULL;
    struct curl_slist *tmp;
    char line[8192];

    /* No "Expect: 100-continue" round trip on large bodies. */
    tmp = curl_slist_append(list, "Expect:");
    if (!tmp)
        return NULL;
    list = tmp;
    for (size_t i = 0; i < nheaders; i++) {
        snprintf(line, sizeof(line), "%s: %s", headers[i].name,
                 headers[i].value);
        tmp = curl_slist_append(list, line);
        if (!tmp) {
            curl_slist_free_all(list);
            return NULL;
        }
        list = tmp;
    }
    return list;
}

void http_attempt_start(struct http_client *c, CURL *h, struct http_attempt *a,
                        const char *method, const char *url,
                        struct curl_slist *hdrs, const char *body,
                        size_t body_len)
{
    memset(a, 0, sizeof(*a));
    a->hc.retry_after_ms = -1;
    a->hc.dop_hint = -1;
    /* curl_easy_reset keeps the handle's connections. */
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->opts.connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->opts.timeout_ms);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &a->body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &a->hc);
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, c->opts.tls_verify ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, c->opts.tls_verify ? 2L : 0L);
    if (c->ca_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
    if (c->user_agent)
        curl_easy_setopt(h, CURLOPT_USERAGENT, c->user_agent);
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)(body ? body_len : 0));
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : "");
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    }
    a->t0_ms = http_now_ms();
}

static void count_request(struct http_client *c, const char *kind,
                          const char *status, double seconds)
{
    char labels[160];

    snprintf(labels, sizeof(labels), "kind=\"%s\",status=\"%s\"", kind, status);
    metrics_counter_add(c->m, "crmsync_crm_requests_total", labels, 1);
    snprintf(labels, sizeof(labels), "kind=\"%s\"", kind);
    metrics_histogram_observe(c->m, "crmsync_crm_request_duration_seconds",
                              labels, seconds);
}

static bool status_retryable(long status)
{
    return status >= 500 || status == 408 || status == 429;
}

enum cs_err http_gate_check(struct http_client *c, const char *method,
                            const char *kind, long long *wait_ms,
                            struct http_response *resp, char *errstr,
                            size_t errstr_size)
{
    long long now = http_now_ms();
    long long gate = c->gate_until_ms - now;

    *wait_ms = 0;
    if (gate <= 0)
        return CS_ERR_OK;
    if (gate > c->opts.max_inline_wait_ms) {
        http_response_free(resp);
        resp->retry_after_ms = (long)gate;
        snprintf(errstr, errstr_size, "throttled: %s %s gated for %lld ms",
                 method, kind, gate);
        return CS_ERR_HTTP_THROTTLED;
    }
    *wait_ms = gate;
    return CS_ERR_OK;
}

bool http_attempt_end(struct http_client *c, struct http_attempt *a,
                      CURLcode cc, long status, const char *method,
                      const char *kind, int attempt, struct http_response *resp,
                      enum cs_err *rc, long long *wait_ms, char *errstr,
                      size_t errstr_size)
{
    bool last = attempt >= c->opts.max_retries;
    double secs = (double)(http_now_ms() - a->t0_ms) / 1000.0;
    long long wait = 0;

    *wait_ms = 0;
    if (cc != CURLE_OK || status == 0) {
        count_request(c, kind, "network", secs);
        free(a->body.data);
        free(a->hc.content_type);
        a->body.data = NULL;
        a->hc.content_type = NULL;
        if (a->body.oom) {
            snprintf(errstr, errstr_size, "out of memory reading body");
            *rc = CS_ERR_NOMEM;
            return false;
        }
        *rc = cc == CURLE_OPERATION_TIMEDOUT ? CS_ERR_HTTP_TIMEOUT
                                             : CS_ERR_HTTP_NETWORK;
        snprintf(errstr, errstr_size, "%s %s: %s", method, kind,
                 curl_easy_strerror(cc));
        LOG_DEBUG("http attempt failed kind=%s attempt=%d err=%s", kind,
                  attempt, curl_easy_strerror(cc));
        if (last)
            return false;
        wait = backoff_ms(c, attempt);
    } else {
        char code[16];
        snprintf(code, sizeof(code), "%ld", status);
        count_request(c, kind, code, secs);
        http_response_free(resp);
        resp->status = status;
        resp->body = a->body.data;
        resp->body_len = a->body.len;
        resp->content_type = a->hc.content_type;
        resp->retry_after_ms =
            a->hc.retry_after_ms > 0 ? a->hc.retry_after_ms : 0;
        a->body.data = NULL;
        a->hc.content_type = NULL;
        *rc = CS_ERR_OK;
        if (a->hc.dop_hint > 0 && a->hc.dop_hint != c->dop_hint) {
            LOG_DEBUG("http dop hint kind=%s dop=%ld", kind, a->hc.dop_hint);
            c->dop_hint = a->hc.dop_hint;
        }
        if (status == 429) {
            /* Missing Retry-After: 2^attempt s, as Microsoft's sample. */
            long ra = a->hc.retry_after_ms >= 0
                          ? a->hc.retry_after_ms
                          : (1L << (attempt < 10 ? attempt : 10)) * 1000;
            metrics_counter_add(c->m, "crmsync_crm_throttled_total", NULL, 1);
            resp->retry_after_ms = ra;
            if (http_now_ms() + ra > c->gate_until_ms)
                c->gate_until_ms = http_now_ms() + ra;
            LOG_WARN("http throttled kind=%s retry_after_ms=%ld", kind, ra);
        }
        if (!status_retryable(status) || last)
            return false;
        if (status != 429) {
            wait = backoff_ms(c, attempt);
            if (a->hc.retry_after_ms > wait)
                wait = a->hc.retry_after_ms;
        }
    }
    metrics_counter_add(c->m, "crmsync_crm_retries_total", NULL, 1);
    if (wait > c->opts.max_inline_wait_ms)
        wait = c->opts.max_inline_wait_ms;
    *wait_ms = wait;
    return true;
}

enum cs_err http_request(struct http_client *c, const char *method,
                         const char *url, const struct http_header *headers,
                         size_t nheaders, const char *body, size_t body_len,
                         const char *metric_kind, struct http_response *resp,
                         char *errstr, size_t errstr_size)
{
    struct curl_slist *hdrs;
    enum cs_err rc = CS_ERR_OK;
    const char *kind = metric_kind ? metric_kind : "other";

    memset(resp, 0, sizeof(*resp));
    hdrs = http_build_headers(headers, nheaders);
    if (!hdrs) {
        snprintf(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    for (int attempt = 0;; attempt++) {
        struct http_attempt a;
        CURLcode cc;
        long status = 0;
        long long wait = 0;

        /* The 429 gate: nothing is sent before it opens. */
        rc = http_gate_check(c, method, kind, &wait, resp, errstr, errstr_size);
        if (rc != CS_ERR_OK)
            break;
        sleep_ms(wait);
        http_attempt_start(c, c->curl, &a, method, url, hdrs, body, body_len);
        cc = curl_easy_perform(c->curl);
        if (cc == CURLE_OK)
            curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
        if (!http_attempt_end(c, &a, cc, status, method, kind, attempt, resp,
                              &rc, &wait, errstr, errstr_size))
            break;
        sleep_ms(wait);
    }
    curl_slist_free_all(hdrs);
    return rc;
}

long http_dop_hint(const struct http_client *c)
{
    return c->dop_hint;
}
