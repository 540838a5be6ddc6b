/*
 * esp_optimizely - Optimizely Campaign (optivo broadmail) SOAP connector
 * behind esp.h, and the esp_new() factory: lazy login and session reuse,
 * one re-login and resend on InvalidWebserviceSessionException, the
 * connector's own retries (SOAP faults are HTTP 500 and must not be resent
 * blindly, so the HTTP client is created with max_retries = 0 and 5xx
 * without a fault, network errors and timeouts are retried here with the
 * same full-jitter backoff), fault mapping and metrics. Request bodies are
 * written and responses read with soap.h.
 *
 * Ownership: struct optimizely owns its strings, HTTP client and session
 * id (password and session id cleansed on free); the metrics registry is
 * borrowed from esp_new's caller and must outlive the connector.
 *
 * Thread-safety: one connector instance is used by one thread at a time.
 */
#include "common/esp.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/soap.h"

#define NS_SESSION   SOAP_OPTIVO_NS_PREFIX "RpcSession"
#define NS_RECIPIENT SOAP_OPTIVO_NS_PREFIX "RpcRecipient"
#define NS_MAILING   SOAP_OPTIVO_NS_PREFIX "RpcMailing"

/* Fault texts that change what the caller does. */
#define FAULT_INVALID_SESSION "InvalidWebserviceSessionException"
#define FAULT_TOO_MANY        "too many recipients"

struct optimizely {
    struct http_client *http; /* owned */
    struct metrics *m;        /* borrowed */
    char *session_url;        /* owned: base_url + "/RpcSession" */
    char *recipient_url;      /* owned: base_url + "/RpcRecipient" */
    char *mailing_url;        /* owned: base_url + "/RpcMailing" */
    char *mandator_id;        /* owned */
    char *user;               /* owned */
    char *password;           /* owned, secret: cleansed on free */
    char *session;            /* owned, secret: current session id or NULL */
    int max_retries;          /* connector-level retries per request */
    long backoff_base_ms;
    long backoff_max_ms;
    uint64_t rng; /* backoff jitter state */
};

static void free_secret(char *s)
{
    if (!s)
        return;
    OPENSSL_cleanse(s, strlen(s));
    free(s);
}

static bool is_decimal(const char *s)
{
    if (!s || !*s || strlen(s) > 19)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

/* ---- request bodies ------------------------------------------------- */

static enum cs_err detach(struct buf *b, char **out)
{
    *out = b->oom ? NULL : buf_detach(b);
    buf_free(b);
    return *out ? CS_ERR_OK : CS_ERR_NOMEM;
}

enum cs_err esp_optimizely_build_login(const char *mandator_id,
                                       const char *user, const char *password,
                                       char **out)
{
    struct buf b = {0};

    soap_begin(&b, NS_SESSION, "login");
    soap_add_string(&b, "mandatorId", mandator_id);
    soap_add_string(&b, "user", user);
    soap_add_string(&b, "password", password);
    soap_end(&b, "login");
    if (b.oom && b.data)
        OPENSSL_cleanse(b.data, b.len);
    return detach(&b, out);
}

enum cs_err esp_optimizely_build_logout(const char *session_id, char **out)
{
    struct buf b = {0};

    soap_begin(&b, NS_SESSION, "logout");
    soap_add_string(&b, "sessionId", session_id);
    soap_end(&b, "logout");
    return detach(&b, out);
}

enum cs_err esp_optimizely_build_clear(const char *session_id,
                                       const char *list_id, char **out)
{
    struct buf b = {0};

    soap_begin(&b, NS_RECIPIENT, "clear");
    soap_add_string(&b, "recipientListId", list_id);
    soap_add_string(&b, "sessionId", session_id);
    soap_end(&b, "clear");
    return detach(&b, out);
}

enum cs_err esp_optimizely_build_remove(const char *session_id,
                                        const char *list_id,
                                        const char *recipient_id, char **out)
{
    struct buf b = {0};

    soap_begin(&b, NS_RECIPIENT, "remove");
    soap_add_string(&b, "recipientListId", list_id);
    soap_add_string(&b, "recipientId", recipient_id);
    soap_add_string(&b, "sessionId", session_id);
    soap_end(&b, "remove");
    return detach(&b, out);
}

static const char *optin_or_zero(const char *optin)
{
    return optin && *optin ? optin : "0";
}

enum cs_err esp_optimizely_build_add2(const char *session_id,
                                      const char *list_id,
                                      const char *optin_process_id,
                                      const char *const *attr_names,
                                      size_t nattrs,
                                      const struct esp_recipient *r, char **out)
{
    struct buf b = {0};

    soap_begin(&b, NS_RECIPIENT, "add2");
    soap_add_string(&b, "recipientListId", list_id);
    soap_add_string(&b, "optinProcessId", optin_or_zero(optin_process_id));
    soap_add_string(&b, "recipientId", r->id ? r->id : "");
    soap_add_string(&b, "address", r->email ? r->email : "");
    soap_add_string_array(&b, "attributeNames", attr_names, nattrs);
    soap_open(&b, "attributeValues");
    for (size_t j = 0; j < nattrs; j++)
        soap_add_string(&b, "element",
                        r->values && r->values[j] ? r->values[j] : "");
    soap_close(&b, "attributeValues");
    soap_add_string(&b, "sessionId", session_id);
    soap_end(&b, "add2");
    return detach(&b, out);
}

enum cs_err esp_optimizely_build_send_mail(const char *session_id,
                                           const char *mailing_id,
                                           const char *list_id,
                                           const char *recipient_id, char **out)
{
    struct buf b = {0};

    soap_begin(&b, NS_MAILING, "sendMail");
    soap_add_string(&b, "mailingId", mailing_id);
    soap_add_string(&b, "recipientListId", list_id);
    soap_add_string(&b, "recipientId", recipient_id);
    soap_add_string(&b, "sessionId", session_id);
    soap_end(&b, "sendMail");
    return detach(&b, out);
}

enum cs_err esp_optimizely_build_add_all3(
    const char *session_id, const char *list_id, const char *optin_process_id,
    const char *const *attr_names, size_t nattrs, const struct esp_recipient *r,
    size_t n, char **out)
{
    struct buf b = {0};

    soap_begin(&b, NS_RECIPIENT, "addAll3");
    soap_add_string(&b, "recipientListId", list_id);
    soap_add_string(&b, "optinProcessId", optin_or_zero(optin_process_id));
    soap_open(&b, "recipientIds");
    for (size_t i = 0; i < n; i++)
        soap_add_string(&b, "element", r[i].id ? r[i].id : "");
    soap_close(&b, "recipientIds");
    soap_open(&b, "emailAddresses");
    for (size_t i = 0; i < n; i++)
        soap_add_string(&b, "element", r[i].email ? r[i].email : "");
    soap_close(&b, "emailAddresses");
    soap_add_string_array(&b, "attributeNames", attr_names, nattrs);
    soap_open(&b, "attributeValues");
    for (size_t i = 0; i < n; i++) {
        soap_open(&b, "element");
        for (size_t j = 0; j < nattrs; j++)
            soap_add_string(&b, "element",
                            r[i].values && r[i].values[j] ? r[i].values[j]
                                                          : "");
        soap_close(&b, "element");
    }
    soap_close(&b, "attributeValues");
    soap_add_string(&b, "sessionId", session_id);
    soap_end(&b, "addAll3");
    return detach(&b, out);
}

/* ---- transport ------------------------------------------------------ */

static void sleep_ms(long long ms)
{
    struct timespec ts;

    if (ms <= 0)
        return;
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Full-jitter backoff for retry number @p attempt (0-based). */
static long long backoff_ms(struct optimizely *o, int attempt)
{
    long long cap = o->backoff_base_ms;
    uint64_t z;

    for (int i = 0; i < attempt && cap < o->backoff_max_ms; i++)
        cap *= 2;
    if (cap > o->backoff_max_ms)
        cap = o->backoff_max_ms;
    if (cap <= 0)
        return 0;
    /* splitmix64 */
    z = (o->rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (long long)(z % (uint64_t)(cap + 1));
}

static void count(struct optimizely *o, const char *method, const char *result,
                  long long t0_ms)
{
    char labels[128];
    double secs = (double)(http_now_ms() - t0_ms) / 1000.0;

    snprintf(labels, sizeof(labels), "method=\"%s\",result=\"%s\"", method,
             result);
    metrics_counter_add(o->m, "crmsync_esp_requests_total", labels, 1);
    snprintf(labels, sizeof(labels), "method=\"%s\"", method);
    metrics_histogram_observe(o->m, "crmsync_esp_request_duration_seconds",
                              labels, secs);
}

/* Case-insensitive strstr (strcasestr is a GNU extension). */
static bool contains_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);

    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return true;
    return false;
}

/* Maps a fault to the error of the call: *session_invalid tells the caller
 * to log in again. errstr gets "<method>: <sanitized faultstring>". */
static enum cs_err map_fault(struct optimizely *o, const char *method,
                             const struct soap_response *sr, long long t0,
                             bool *session_invalid, char *errstr,
                             size_t errstr_size)
{
    const char *code = "";
    const char *fs = "";
    char tmp[512];
    char clean[512];
    enum cs_err rc = CS_ERR_ESP_FAULT;
    const char *result = "fault";

    soap_fault(sr, &code, &fs);
    /* Neither the password nor the session id (echoed by the expiry
       fault) goes into errstr or logs. */
    soap_fault_sanitize(fs, o->password, tmp, sizeof(tmp));
    soap_fault_sanitize(tmp, o->session, clean, sizeof(clean));
    if (strstr(fs, FAULT_INVALID_SESSION)) {
        *session_invalid = true;
        result = "invalid_session";
    } else if (contains_ci(fs, FAULT_TOO_MANY)) {
        rc = CS_ERR_ESP_BATCH_TOO_LARGE;
        result = "batch_too_large";
    }
    count(o, method, result, t0);
    snprintf(errstr, errstr_size, "%s: %s", method, clean);
    LOG_WARN("esp fault method=%s result=%s fault=%s", method, result, clean);
    return rc;
}

/*
 * POSTs one SOAP request with the connector's retries.
 * @param out receives the parsed non-fault response on CS_ERR_OK (caller
 *        frees with soap_response_free).
 * @param session_invalid set when the fault says the session is invalid.
 */
static enum cs_err opt_post(struct optimizely *o, const char *url,
                            const char *method, const char *body, size_t len,
                            struct soap_response **out, bool *session_invalid,
                            char *errstr, size_t errstr_size)
{
    static const struct http_header hdrs[] = {
        {"Content-Type", "text/xml;charset=UTF-8"},
        {"SOAPAction", "\"\""},
        {"Accept", "text/xml"},
    };
    enum cs_err rc = CS_ERR_ESP_UNAVAILABLE;

    *out = NULL;
    *session_invalid = false;
    for (int attempt = 0;; attempt++) {
        struct http_response resp;
        struct soap_response *sr = NULL;
        long long t0 = http_now_ms();
        char perr[128];
        enum cs_err hrc;
        const char *result;

        hrc = http_request(o->http, "POST", url, hdrs, 3, body, len, "esp",
                           &resp, errstr, errstr_size);
        if (hrc == CS_ERR_NOMEM) {
            http_response_free(&resp);
            return hrc;
        }
        if (hrc != CS_ERR_OK) {
            /* errstr holds "POST esp: <curl reason>" (no secrets). */
            result = hrc == CS_ERR_HTTP_TIMEOUT ? "timeout" : "network";
            rc = CS_ERR_ESP_UNAVAILABLE;
        } else {
            if (resp.body && soap_parse(resp.body, resp.body_len, &sr, perr,
                                        sizeof(perr)) != CS_ERR_OK)
                sr = NULL;
            if (sr && soap_fault(sr, NULL, NULL)) {
                rc = map_fault(o, method, sr, t0, session_invalid, errstr,
                               errstr_size);
                soap_response_free(sr);
                http_response_free(&resp);
                return rc;
            }
            if (resp.status >= 200 && resp.status < 300 && sr) {
                count(o, method, "ok", t0);
                http_response_free(&resp);
                *out = sr;
                return CS_ERR_OK;
            }
            soap_response_free(sr);
            if (resp.status >= 200 && resp.status < 300) {
                result = "bad_response";
                snprintf(errstr, errstr_size,
                         "%s: HTTP %ld with an unreadable SOAP body", method,
                         resp.status);
            } else {
                result = "http_error";
                snprintf(errstr, errstr_size,
                         "%s: HTTP %ld without a SOAP fault", method,
                         resp.status);
            }
            if (resp.status >= 300 && resp.status < 500 && resp.status != 408 &&
                resp.status != 429) {
                count(o, method, result, t0);
                http_response_free(&resp);
                return CS_ERR_ESP_FAULT;
            }
            rc = CS_ERR_ESP_UNAVAILABLE;
        }
        http_response_free(&resp);
        count(o, method, result, t0);
        LOG_WARN("esp request failed method=%s result=%s attempt=%d", method,
                 result, attempt);
        if (attempt >= o->max_retries)
            return rc;
        sleep_ms(backoff_ms(o, attempt));
    }
}

static void drop_session(struct optimizely *o)
{
    free_secret(o->session);
    o->session = NULL;
}

static enum cs_err opt_login(struct optimizely *o, char *errstr,
                             size_t errstr_size)
{
    struct soap_response *sr = NULL;
    bool invalid = false;
    char *body = NULL;
    char *sid = NULL;
    enum cs_err rc;

    drop_session(o);
    rc =
        esp_optimizely_build_login(o->mandator_id, o->user, o->password, &body);
    if (rc != CS_ERR_OK) {
        snprintf(errstr, errstr_size, "out of memory");
        return rc;
    }
    rc = opt_post(o, o->session_url, "login", body, strlen(body), &sr, &invalid,
                  errstr, errstr_size);
    free_secret(body);
    if (rc == CS_ERR_ESP_BATCH_TOO_LARGE)
        rc = CS_ERR_ESP_FAULT; /* cannot apply to a login */
    if (rc != CS_ERR_OK)
        return rc;
    rc = soap_return_string(sr, &sid);
    soap_response_free(sr);
    if (rc == CS_ERR_NOMEM) {
        snprintf(errstr, errstr_size, "out of memory");
        return rc;
    }
    if (rc != CS_ERR_OK || !sid || !*sid) {
        free_secret(sid);
        snprintf(errstr, errstr_size, "login: answer without a session id");
        return CS_ERR_ESP_FAULT;
    }
    o->session = sid;
    LOG_DEBUG("esp logged in");
    return CS_ERR_OK;
}

/* Builds a request for the current session id (ctx is the call's data). */
typedef enum cs_err (*build_fn)(const char *sid, const void *ctx, char **out);

/* One call that needs a session: logs in if there is none, and on an
 * invalid-session fault logs in again and resends once. */
static enum cs_err opt_call(struct optimizely *o, const char *url,
                            const char *method, build_fn build, const void *ctx,
                            struct soap_response **out, char *errstr,
                            size_t errstr_size)
{
    enum cs_err rc = CS_ERR_ESP_FAULT;

    *out = NULL;
    for (int pass = 0; pass < 2; pass++) {
        bool invalid = false;
        char *body = NULL;

        if (!o->session) {
            rc = opt_login(o, errstr, errstr_size);
            if (rc != CS_ERR_OK)
                return rc;
        }
        rc = build(o->session, ctx, &body);
        if (rc != CS_ERR_OK) {
            snprintf(errstr, errstr_size, "out of memory");
            return rc;
        }
        rc = opt_post(o, url, method, body, strlen(body), out, &invalid, errstr,
                      errstr_size);
        free(body);
        if (!invalid)
            return rc;
        drop_session(o);
        if (pass == 0) {
            metrics_counter_add(o->m, "crmsync_esp_relogins_total", NULL, 1);
            LOG_INFO("esp session invalid, logging in again method=%s", method);
        }
    }
    return rc;
}

/* ---- vtable --------------------------------------------------------- */

struct clear_ctx {
    const char *list_id;
};

static enum cs_err build_clear(const char *sid, const void *ctx, char **out)
{
    const struct clear_ctx *c = ctx;

    return esp_optimizely_build_clear(sid, c->list_id, out);
}

static enum cs_err opt_clear(void *self, const char *list_id, char *errstr,
                             size_t errstr_size)
{
    struct optimizely *o = self;
    struct clear_ctx c = {list_id};
    struct soap_response *sr = NULL;
    enum cs_err rc;

    if (!is_decimal(list_id)) {
        snprintf(errstr, errstr_size, "clear: list id must be decimal");
        return CS_ERR_INVALID_ARG;
    }
    rc = opt_call(o, o->recipient_url, "clear", build_clear, &c, &sr, errstr,
                  errstr_size);
    soap_response_free(sr);
    return rc;
}

struct remove_ctx {
    const char *list_id;
    const char *recipient_id;
};

static enum cs_err build_remove(const char *sid, const void *ctx, char **out)
{
    const struct remove_ctx *c = ctx;

    return esp_optimizely_build_remove(sid, c->list_id, c->recipient_id, out);
}

static enum cs_err opt_remove(void *self, const char *list_id,
                              const char *recipient_id, bool *existed,
                              char *errstr, size_t errstr_size)
{
    struct optimizely *o = self;
    struct remove_ctx c = {list_id, recipient_id};
    struct soap_response *sr = NULL;
    enum cs_err rc;

    *existed = true;
    if (!is_decimal(list_id) || !recipient_id || !*recipient_id) {
        snprintf(errstr, errstr_size, "remove: bad arguments");
        return CS_ERR_INVALID_ARG;
    }
    rc = opt_call(o, o->recipient_url, "remove", build_remove, &c, &sr, errstr,
                  errstr_size);
    soap_response_free(sr);
    /* "Recipient does not exist for call: ..." (recorded): nothing to do */
    if (rc == CS_ERR_ESP_FAULT && contains_ci(errstr, "does not exist")) {
        *existed = false;
        return CS_ERR_OK;
    }
    return rc;
}

struct add_ctx {
    const char *list_id;
    const char *optin;
    const char *const *names;
    size_t nattrs;
    const struct esp_recipient *r;
    size_t n;
};

static enum cs_err build_add_all(const char *sid, const void *ctx, char **out)
{
    const struct add_ctx *a = ctx;

    return esp_optimizely_build_add_all3(sid, a->list_id, a->optin, a->names,
                                         a->nattrs, a->r, a->n, out);
}

static enum cs_err opt_add_all(void *self, const char *list_id,
                               const char *optin_process_id,
                               const char *const *attr_names, size_t nattrs,
                               const struct esp_recipient *r, size_t n,
                               int *codes, char *errstr, size_t errstr_size)
{
    struct optimizely *o = self;
    struct add_ctx a = {list_id, optin_process_id, attr_names, nattrs, r, n};
    struct soap_response *sr = NULL;
    int *got = NULL;
    size_t ngot = 0;
    enum cs_err rc;

    if (!is_decimal(list_id) ||
        (optin_process_id && *optin_process_id &&
         !is_decimal(optin_process_id)) ||
        n == 0 || !r || !codes || (nattrs > 0 && !attr_names)) {
        snprintf(errstr, errstr_size,
                 "addAll3: bad arguments (decimal list and opt-in ids, "
                 "n >= 1, codes)");
        return CS_ERR_INVALID_ARG;
    }
    rc = opt_call(o, o->recipient_url, "addAll3", build_add_all, &a, &sr,
                  errstr, errstr_size);
    if (rc != CS_ERR_OK)
        return rc;
    rc = soap_return_int_array(sr, &got, &ngot);
    soap_response_free(sr);
    if (rc == CS_ERR_NOMEM) {
        snprintf(errstr, errstr_size, "out of memory");
        return rc;
    }
    if (rc != CS_ERR_OK || ngot != n) {
        free(got);
        snprintf(errstr, errstr_size,
                 "addAll3: answer is not an int[%zu] (got %zu codes)", n, ngot);
        return CS_ERR_ESP_FAULT;
    }
    for (size_t i = 0; i < n; i++)
        codes[i] = got[i] >= ESP_ADD_INSERTED && got[i] <= ESP_ADD_GENERAL_ERROR
                       ? got[i]
                       : ESP_ADD_GENERAL_ERROR;
    free(got);
    return CS_ERR_OK;
}

struct send_ctx {
    const char *mailing_id;
    const char *list_id;
    const char *recipient_id;
};

static enum cs_err build_send_mail(const char *sid, const void *ctx, char **out)
{
    const struct send_ctx *c = ctx;

    return esp_optimizely_build_send_mail(sid, c->mailing_id, c->list_id,
                                          c->recipient_id, out);
}

struct add2_ctx {
    const char *list_id;
    struct esp_recipient r;
};

static enum cs_err build_add2(const char *sid, const void *ctx, char **out)
{
    const struct add2_ctx *c = ctx;

    return esp_optimizely_build_add2(sid, c->list_id, "0", NULL, 0, &c->r, out);
}

/* One int-returning call (sendMail, add2): *value on CS_ERR_OK. */
static enum cs_err opt_call_int(struct optimizely *o, const char *url,
                                const char *method, build_fn build,
                                const void *ctx, long long *value, char *errstr,
                                size_t errstr_size)
{
    struct soap_response *sr = NULL;
    enum cs_err rc;

    rc = opt_call(o, url, method, build, ctx, &sr, errstr, errstr_size);
    if (rc == CS_ERR_ESP_BATCH_TOO_LARGE)
        rc = CS_ERR_ESP_FAULT; /* a single recipient cannot be split */
    if (rc != CS_ERR_OK) {
        soap_response_free(sr);
        return rc;
    }
    rc = soap_return_long(sr, value);
    soap_response_free(sr);
    if (rc != CS_ERR_OK) {
        snprintf(errstr, errstr_size, "%s: answer is not an int", method);
        return CS_ERR_ESP_FAULT;
    }
    return CS_ERR_OK;
}

static int send_code(long long v)
{
    return v >= ESP_SEND_SPOOLED && v <= ESP_SEND_BOUNCE_OVERFLOWED
               ? (int)v
               : ESP_SEND_OTHER;
}

static enum cs_err opt_send_mail(void *self, const char *mailing_id,
                                 const char *list_id, const char *recipient_id,
                                 const char *email, int *code, char *errstr,
                                 size_t errstr_size)
{
    struct optimizely *o = self;
    struct send_ctx c = {mailing_id, list_id, recipient_id};
    struct add2_ctx a = {list_id, {recipient_id, email, NULL}};
    long long v = -1;
    long long added = -1;
    enum cs_err rc;

    if (!is_decimal(mailing_id) || !is_decimal(list_id) || !recipient_id ||
        !*recipient_id || !code) {
        snprintf(errstr, errstr_size,
                 "sendMail: bad arguments (decimal mailing and list ids, "
                 "recipient id, code)");
        return CS_ERR_INVALID_ARG;
    }
    rc = opt_call_int(o, o->mailing_url, "sendMail", build_send_mail, &c, &v,
                      errstr, errstr_size);
    if (rc != CS_ERR_OK)
        return rc;
    if (v == ESP_SEND_NOT_FOUND && email) {
        /* Unknown to the list: add it (activated at once), then resend. */
        rc = opt_call_int(o, o->recipient_url, "add2", build_add2, &a, &added,
                          errstr, errstr_size);
        if (rc != CS_ERR_OK)
            return rc;
        LOG_DEBUG("esp sendMail: recipient added to the list add2=%lld", added);
        rc = opt_call_int(o, o->mailing_url, "sendMail", build_send_mail, &c,
                          &v, errstr, errstr_size);
        if (rc != CS_ERR_OK)
            return rc;
    }
    *code = send_code(v);
    return CS_ERR_OK;
}

static enum cs_err opt_logout(void *self)
{
    struct optimizely *o = self;
    struct soap_response *sr = NULL;
    bool invalid = false;
    char *body = NULL;
    char err[256];
    enum cs_err rc;

    if (!o->session)
        return CS_ERR_OK;
    rc = esp_optimizely_build_logout(o->session, &body);
    if (rc != CS_ERR_OK)
        return rc;
    rc = opt_post(o, o->session_url, "logout", body, strlen(body), &sr,
                  &invalid, err, sizeof(err));
    free(body);
    soap_response_free(sr);
    drop_session(o);
    if (invalid)
        return CS_ERR_OK; /* already ended */
    if (rc != CS_ERR_OK)
        LOG_WARN("esp logout failed: %s", err);
    return rc;
}

static bool opt_ping(void *self)
{
    struct optimizely *o = self;
    char err[256];
    enum cs_err rc;

    opt_logout(o);
    rc = opt_login(o, err, sizeof(err));
    if (rc != CS_ERR_OK)
        LOG_WARN("esp ping failed: %s", err);
    return rc == CS_ERR_OK;
}

static void opt_free(void *self)
{
    struct optimizely *o = self;

    if (!o)
        return;
    http_client_free(o->http);
    free(o->session_url);
    free(o->recipient_url);
    free(o->mailing_url);
    free(o->mandator_id);
    free(o->user);
    free_secret(o->password);
    free_secret(o->session);
    free(o);
}

static const struct esp_ops optimizely_ops = {
    .remove = opt_remove,
    .name = "optimizely",
    .clear = opt_clear,
    .add_all = opt_add_all,
    .send_mail = opt_send_mail,
    .logout = opt_logout,
    .ping = opt_ping,
    .free = opt_free,
};

/* base_url without trailing slashes + suffix; NULL on OOM. */
static char *endpoint(const char *base, const char *suffix)
{
    size_t lb = strlen(base);
    size_t ls = strlen(suffix);
    char *s;

    while (lb > 0 && base[lb - 1] == '/')
        lb--;
    s = malloc(lb + ls + 1);
    if (!s)
        return NULL;
    memcpy(s, base, lb);
    memcpy(s + lb, suffix, ls + 1);
    return s;
}

struct esp *esp_optimizely_new(const struct esp_options *o, struct metrics *m,
                               char *errstr, size_t errstr_size)
{
    struct http_opts hopts = o->http;
    struct optimizely *op;
    struct esp *e;

    if (!o->base_url || !*o->base_url) {
        snprintf(errstr, errstr_size, "esp.base_url is required");
        return NULL;
    }
    if (!is_decimal(o->mandator_id)) {
        snprintf(errstr, errstr_size, "esp.mandator_id must be decimal");
        return NULL;
    }
    if (!o->user || !*o->user || !o->password || !*o->password) {
        snprintf(errstr, errstr_size, "esp.user and esp.password are required");
        return NULL;
    }
    soap_init();
    op = calloc(1, sizeof(*op));
    e = calloc(1, sizeof(*e));
    if (!op || !e)
        goto out_nomem;
    op->m = m;
    op->max_retries = o->http.max_retries > 0 ? o->http.max_retries : 0;
    op->backoff_base_ms = o->http.backoff_base_ms;
    op->backoff_max_ms = o->http.backoff_max_ms > 0 ? o->http.backoff_max_ms
                                                    : o->http.backoff_base_ms;
    op->rng = (uint64_t)http_now_ms() ^ (uint64_t)(uintptr_t)op;
    op->session_url = endpoint(o->base_url, "/RpcSession");
    op->recipient_url = endpoint(o->base_url, "/RpcRecipient");
    op->mailing_url = endpoint(o->base_url, "/RpcMailing");
    op->mandator_id = strdup(o->mandator_id);
    op->user = strdup(o->user);
    op->password = strdup(o->password);
    if (!op->session_url || !op->recipient_url || !op->mailing_url ||
        !op->mandator_id || !op->user || !op->password)
        goto out_nomem;
    /* Retries happen here (opt_post), never inside http_request: a SOAP
       fault is an HTTP 500. No metrics registry either: ESP traffic has its
       own series, not the CRM's crmsync_crm_requests_total. */
    hopts.max_retries = 0;
    op->http = http_client_new(&hopts, NULL, errstr, errstr_size);
    if (!op->http) {
        opt_free(op);
        free(e);
        return NULL;
    }
    metrics_describe(m, "crmsync_esp_requests_total", "counter",
                     "ESP SOAP requests by method and result");
    metrics_describe(m, "crmsync_esp_request_duration_seconds", "histogram",
                     "ESP SOAP request latency");
    metrics_describe(m, "crmsync_esp_relogins_total", "counter",
                     "ESP logins repeated after an invalid-session fault");
    e->ops = &optimizely_ops;
    e->self = op;
    return e;
out_nomem:
    opt_free(op);
    free(e);
    snprintf(errstr, errstr_size, "out of memory");
    return NULL;
}

struct esp *esp_new(const struct esp_options *o, struct metrics *m,
                    char *errstr, size_t errstr_size)
{
    const char *kind = o->kind && *o->kind ? o->kind : "optimizely";

    if (strcmp(kind, "optimizely") == 0)
        return esp_optimizely_new(o, m, errstr, errstr_size);
    snprintf(errstr, errstr_size, "esp.kind: unknown ESP kind '%s'", kind);
    return NULL;
}

void esp_free(struct esp *e)
{
    if (!e)
        return;
    if (e->ops && e->ops->free)
        e->ops->free(e->self);
    free(e);
}
