/*
 * crm_dataverse - Dataverse Web API connector behind crm.h: options,
 * OAuth2 client-credentials token cache and refresh, execute (chunking into
 * $batch requests, one refresh-and-retry on 401, result mapping), get_json
 * (with nextLink paging), ping and the crm_ops vtable. The $batch body
 * writer and response parser live in crm_batch.c. See crm_dataverse.h.
 *
 * Ownership: struct dataverse owns its strings and HTTP client (freed by
 * dv_free, secrets cleansed first); the metrics registry is borrowed from
 * crm_dataverse_new's caller and must outlive the connector.
 *
 * Thread-safety: one connector instance is used by one thread at a time.
 */
#include "common/crm_dataverse.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "common/buf.h"
#include "common/crm_batch.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/odata.h"

/* Largest $batch Dataverse accepts. */
#define DV_MAX_BATCH 1000
/* Pages followed by get_json(all_pages) before giving up. */
#define DV_MAX_PAGES 1000

struct dataverse {
    struct http_client *http; /* owned */
    struct metrics *m;        /* borrowed */
    char *base_url;           /* owned, no trailing slash */
    char *api_root;           /* owned: base_url + CRM_DATAVERSE_API_PATH */
    char *api_path;           /* owned: path part of api_root */
    char *token_url;          /* owned */
    char *client_id;          /* owned */
    char *client_secret;      /* owned, secret: cleansed on free */
    char *scope;              /* owned */
    char *token;              /* owned, secret: current access token */
    long long token_refresh_at_ms; /* monotonic: refresh from then on */
    int batch_size;
};

static void free_secret(char *s)
{
    if (!s)
        return;
    OPENSSL_cleanse(s, strlen(s));
    free(s);
}

static char *str_concat(const char *a, const char *b)
{
    size_t la = strlen(a);
    size_t lb = strlen(b);
    char *s = malloc(la + lb + 1);

    if (!s)
        return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

static void dv_free(void *self)
{
    struct dataverse *dv = self;

    if (!dv)
        return;
    http_client_free(dv->http);
    free(dv->base_url);
    free(dv->api_root);
    free(dv->api_path);
    free(dv->token_url);
    free(dv->client_id);
    free_secret(dv->client_secret);
    free(dv->scope);
    free_secret(dv->token);
    free(dv);
}

/* expires_in sent as a JSON string: its decimal value, 0 when unusable. */
static long long expires_from_string(const char *s)
{
    char *end = NULL;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    return end == s || errno != 0 ? 0 : v;
}

/* Fetches a new access token (client credentials grant). */
static enum cs_err dv_fetch_token(struct dataverse *dv, char *errstr,
                                  size_t errstr_size)
{
    struct http_header hdrs[] = {
        {"Content-Type", "application/x-www-form-urlencoded"},
        {"Accept", "application/json"},
    };
    struct http_response resp;
    struct buf form = {0};
    char *id = odata_url_encode(dv->client_id);
    char *secret = odata_url_encode(dv->client_secret);
    char *scope = odata_url_encode(dv->scope);
    json_t *root = NULL;
    const char *tok;
    json_t *exp;
    long long expires_s = 0;
    enum cs_err rc;

    if (id && secret && scope) {
        buf_appends(&form, "grant_type=client_credentials&client_id=");
        buf_appends(&form, id);
        buf_appends(&form, "&client_secret=");
        buf_appends(&form, secret);
        buf_appends(&form, "&scope=");
        buf_appends(&form, scope);
    }
    free(id);
    free_secret(secret);
    free(scope);
    if (!form.data || form.oom) {
        free_secret(form.data);
        snprintf(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    rc = http_request(dv->http, "POST", dv->token_url, hdrs, 2, form.data,
                      form.len, "token", &resp, errstr, errstr_size);
    free_secret(form.data);
    if (rc != CS_ERR_OK)
        goto out_free_resp;
    if (resp.status != 200) {
        json_t *e =
            json_loadb(resp.body ? resp.body : "", resp.body_len, 0, NULL);
        const char *code = json_string_value(json_object_get(e, "error"));
        snprintf(errstr, errstr_size, "token endpoint answered %ld (%s)",
                 resp.status, code ? code : "no error code");
        json_decref(e);
        rc = resp.status == 429                         ? CS_ERR_HTTP_THROTTLED
             : resp.status >= 500 || resp.status == 408 ? CS_ERR_HTTP_SERVER
                                                        : CS_ERR_AUTH;
        goto out_free_resp;
    }
    root = json_loadb(resp.body ? resp.body : "", resp.body_len, 0, NULL);
    tok = json_string_value(json_object_get(root, "access_token"));
    exp = json_object_get(root, "expires_in");
    if (json_is_integer(exp))
        expires_s = json_integer_value(exp);
    else if (json_is_string(exp))
        expires_s = expires_from_string(json_string_value(exp));
    if (!tok || !*tok) {
        snprintf(errstr, errstr_size, "token response without access_token");
        rc = CS_ERR_AUTH;
        goto out_free_json;
    }
    if (expires_s <= 0)
        expires_s = 3600;
    free_secret(dv->token);
    dv->token = strdup(tok);
    if (!dv->token) {
        rc = CS_ERR_NOMEM;
        snprintf(errstr, errstr_size, "out of memory");
        goto out_free_json;
    }
    {
        /* Refresh before expiry: margin min(300 s, expires_in / 10). */
        long long margin = expires_s / 10 < 300 ? expires_s / 10 : 300;
        dv->token_refresh_at_ms = http_now_ms() + (expires_s - margin) * 1000;
    }
    metrics_counter_add(dv->m, "crmsync_crm_token_refreshes_total", NULL, 1);
    LOG_DEBUG("crm token refreshed expires_in=%lld", expires_s);
out_free_json:
    json_decref(root);
out_free_resp:
    http_response_free(&resp);
    return rc;
}

static enum cs_err dv_ensure_token(struct dataverse *dv, bool force,
                                   char *errstr, size_t errstr_size)
{
    if (!force && dv->token && http_now_ms() < dv->token_refresh_at_ms)
        return CS_ERR_OK;
    return dv_fetch_token(dv, errstr, errstr_size);
}

/* Sends one Web API request with the standard headers and the bearer token;
 * on 401 refreshes the token once and resends. resp as http_request. */
static enum cs_err dv_send(struct dataverse *dv, const char *method,
                           const char *url, const struct http_header *extra,
                           size_t nextra, const char *body, size_t body_len,
                           const char *kind, struct http_response *resp,
                           char *errstr, size_t errstr_size)
{
    struct http_header hdrs[12];
    size_t nh = 0;
    enum cs_err rc;

    memset(resp, 0, sizeof(*resp));
    for (int pass = 0; pass < 2; pass++) {
        char *auth;

        rc = dv_ensure_token(dv, pass > 0, errstr, errstr_size);
        if (rc != CS_ERR_OK)
            return rc;
        auth = str_concat("Bearer ", dv->token);
        if (!auth) {
            snprintf(errstr, errstr_size, "out of memory");
            return CS_ERR_NOMEM;
        }
        nh = 0;
        hdrs[nh++] = (struct http_header){"Authorization", auth};
        hdrs[nh++] = (struct http_header){"Accept", "application/json"};
        hdrs[nh++] = (struct http_header){"OData-MaxVersion", "4.0"};
        hdrs[nh++] = (struct http_header){"OData-Version", "4.0"};
        hdrs[nh++] = (struct http_header){"If-None-Match", "null"};
        for (size_t k = 0; k < nextra && nh < sizeof(hdrs) / sizeof(hdrs[0]);
             k++)
            hdrs[nh++] = extra[k];
        http_response_free(resp);
        rc = http_request(dv->http, method, url, hdrs, nh, body, body_len, kind,
                          resp, errstr, errstr_size);
        free_secret(auth);
        if (rc != CS_ERR_OK || resp->status != 401)
            return rc;
        LOG_WARN("crm answered 401 kind=%s pass=%d", kind, pass);
    }
    return rc;
}

/* Random batch boundary "batch_<uuid4>". */
static void new_boundary(char *out, size_t out_size)
{
    unsigned char r[16];

    if (RAND_bytes(r, sizeof(r)) != 1) {
        long long t = http_now_ms();
        memcpy(r, &t, sizeof(t));
        memcpy(r + 8, &out, sizeof(out) < 8 ? sizeof(out) : 8);
    }
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    snprintf(out, out_size,
             "batch_%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x",
             r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10],
             r[11], r[12], r[13], r[14], r[15]);
}

static bool op_done(const struct crm_op *op)
{
    return op->result == CRM_OP_OK || op->result == CRM_OP_EXISTS;
}

static void mark_range(struct crm_op *ops, size_t n, enum crm_op_result res,
                       int status, long retry_after_ms, const char *why)
{
    for (size_t k = 0; k < n; k++) {
        ops[k].result = res;
        ops[k].status = status;
        ops[k].retry_after_ms = retry_after_ms;
        snprintf(ops[k].error, sizeof(ops[k].error), "%s", why);
    }
}

/* Outcome of one $batch request. */
struct chunk_outcome {
    bool answered;   /* the CRM gave per-operation answers (or a verdict) */
    bool stop;       /* retryable failure: do not send further batches */
    enum cs_err err; /* the retryable error when stop */
    long retry_after_ms;
};

/* Sends ops[0..n) as one $batch and maps the answers. */
static struct chunk_outcome dv_send_chunk(struct dataverse *dv,
                                          struct crm_op *ops, size_t n,
                                          char *errstr, size_t errstr_size)
{
    struct chunk_outcome out = {false, false, CS_ERR_OK, 0};
    char boundary[64];
    char ctype[96];
    char *body = NULL;
    size_t body_len = 0;
    char *url = NULL;
    struct http_response resp = {0};
    struct http_header extra[2];
    enum cs_err rc;
    char why[256];

    new_boundary(boundary, sizeof(boundary));
    snprintf(ctype, sizeof(ctype), "multipart/mixed; boundary=\"%s\"",
             boundary);
    extra[0] = (struct http_header){"Content-Type", ctype};
    extra[1] = (struct http_header){"Prefer", "odata.continue-on-error"};
    url = str_concat(dv->api_root, "$batch");
    if (!url || crm_dataverse_batch_build(ops, n, dv->api_path, boundary, &body,
                                          &body_len) != CS_ERR_OK) {
        snprintf(errstr, errstr_size, "out of memory");
        out.stop = true;
        out.err = CS_ERR_NOMEM;
        mark_range(ops, n, CRM_OP_RETRY, 0, 0, "out of memory");
        goto out_free;
    }
    rc = dv_send(dv, "POST", url, extra, 2, body, body_len, "batch", &resp,
                 errstr, errstr_size);
    if (rc != CS_ERR_OK) {
        out.stop = true;
        out.err = rc;
        out.retry_after_ms = resp.retry_after_ms;
        mark_range(ops, n, CRM_OP_RETRY, 0, resp.retry_after_ms, errstr);
        goto out_free;
    }
    if (resp.status == 401 || resp.status == 429 || resp.status == 408 ||
        resp.status >= 500) {
        out.stop = true;
        out.err = resp.status == 401   ? CS_ERR_AUTH
                  : resp.status == 429 ? CS_ERR_HTTP_THROTTLED
                                       : CS_ERR_HTTP_SERVER;
        out.retry_after_ms = resp.retry_after_ms;
        snprintf(why, sizeof(why), "$batch answered %ld", resp.status);
        snprintf(errstr, errstr_size, "%s", why);
        mark_range(ops, n, CRM_OP_RETRY, (int)resp.status, resp.retry_after_ms,
                   why);
        goto out_free;
    }
    if (resp.content_type &&
        strncasecmp(resp.content_type, "multipart/", 10) == 0) {
        rc = crm_dataverse_batch_parse(resp.content_type, resp.body,
                                       resp.body_len, ops, n, errstr,
                                       errstr_size);
        if (rc != CS_ERR_OK) {
            LOG_WARN("crm batch response unparseable status=%ld err=%s",
                     resp.status, errstr);
            mark_range(ops, n, CRM_OP_RETRY, (int)resp.status, 0, errstr);
        }
        out.answered = rc == CS_ERR_OK;
        goto out_free;
    }
    if (resp.status >= 200 && resp.status < 300) {
        /* 2xx without a multipart body: a protocol error, retry later. */
        snprintf(why, sizeof(why), "$batch answered %ld without multipart",
                 resp.status);
        mark_range(ops, n, CRM_OP_RETRY, (int)resp.status, 0, why);
        goto out_free;
    }
    /* A whole-batch 4xx (e.g. 400 malformed, 403, 413): every op failed. */
    out.answered = true;
    for (size_t k = 0; k < n; k++) {
        ops[k].result = CRM_OP_FAILED;
        ops[k].retry_after_ms = 0;
        crm_batch_op_error(&ops[k], (int)resp.status,
                           resp.body ? resp.body : "", resp.body_len);
        ops[k].status = (int)resp.status;
    }
out_free:
    http_response_free(&resp);
    free(body);
    free(url);
    return out;
}

/* Length of the unit (standalone op or change set run) starting at i. */
static size_t unit_len(const struct crm_op *ops, size_t n, size_t i)
{
    size_t count = 1;

    if (ops[i].changeset != 0)
        while (i + count < n && ops[i + count].changeset == ops[i].changeset &&
               !op_done(&ops[i + count]))
            count++;
    return count;
}

static void count_results(struct dataverse *dv, const struct crm_op *ops,
                          size_t n, const bool *touched)
{
    static const char *names[] = {
        [CRM_OP_OK] = "result=\"ok\"",
        [CRM_OP_EXISTS] = "result=\"exists\"",
        [CRM_OP_RETRY] = "result=\"retry\"",
        [CRM_OP_FAILED] = "result=\"failed\"",
    };

    for (size_t k = 0; k < n; k++)
        if (touched[k] && ops[k].result != CRM_OP_PENDING)
            metrics_counter_add(dv->m, "crmsync_crm_operations_total",
                                names[ops[k].result], 1);
}

static enum cs_err dv_execute(void *self, struct crm_op *ops, size_t n,
                              char *errstr, size_t errstr_size)
{
    struct dataverse *dv = self;
    bool *touched = calloc(n ? n : 1, sizeof(*touched));
    bool answered = false;
    struct chunk_outcome stop = {false, false, CS_ERR_OK, 0};
    char stop_why[256] = "";
    size_t i = 0;

    if (!touched) {
        snprintf(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    while (i < n) {
        size_t end = i;
        size_t count = 0;
        struct chunk_outcome oc;

        if (op_done(&ops[i])) {
            i++;
            continue;
        }
        if (stop.stop) {
            touched[i] = true;
            mark_range(&ops[i], 1, CRM_OP_RETRY, 0, stop.retry_after_ms,
                       stop_why);
            i++;
            continue;
        }
        /* A contiguous run of pending ops, whole change sets only. */
        while (end < n && !op_done(&ops[end])) {
            size_t u = unit_len(ops, n, end);
            if (count > 0 && count + u > (size_t)dv->batch_size)
                break;
            count += u;
            end += u;
            if (count >= (size_t)dv->batch_size)
                break;
        }
        for (size_t k = i; k < end; k++) {
            touched[k] = true;
            ops[k].result = CRM_OP_PENDING;
            ops[k].status = 0;
            ops[k].error[0] = '\0';
            ops[k].retry_after_ms = 0;
        }
        if (count > DV_MAX_BATCH) {
            mark_range(&ops[i], count, CRM_OP_FAILED, 0, 0,
                       "change set larger than 1000 operations");
            answered = true;
            i = end;
            continue;
        }
        oc = dv_send_chunk(dv, &ops[i], count, errstr, errstr_size);
        if (oc.answered)
            answered = true;
        if (oc.stop) {
            stop = oc;
            snprintf(stop_why, sizeof(stop_why), "%s", errstr);
        }
        i = end;
    }
    count_results(dv, ops, n, touched);
    free(touched);
    if (stop.stop && !answered)
        return stop.err;
    return CS_ERR_OK;
}

/* Maps a non-2xx GET status to an error code. */
static enum cs_err status_err(long status)
{
    if (status == 401)
        return CS_ERR_AUTH;
    if (status == 429)
        return CS_ERR_HTTP_THROTTLED;
    if (status >= 500 || status == 408)
        return CS_ERR_HTTP_SERVER;
    return CS_ERR_HTTP_CLIENT;
}

/* Absolute URL for a nextLink or relative path (caller frees). */
static char *resolve_url(struct dataverse *dv, const char *link)
{
    if (strncmp(link, "http://", 7) == 0 || strncmp(link, "https://", 8) == 0)
        return strdup(link);
    if (link[0] == '/')
        return str_concat(dv->base_url, link);
    return str_concat(dv->api_root, link);
}

static enum cs_err dv_get_json(void *self, const char *path, bool all_pages,
                               json_t **out, char *errstr, size_t errstr_size)
{
    struct dataverse *dv = self;
    char *url = str_concat(dv->api_root, path);
    json_t *result = NULL;
    enum cs_err rc = CS_ERR_OK;

    *out = NULL;
    for (int page = 0; url; page++) {
        struct http_response resp;
        json_t *doc;
        const char *next;

        if (page >= DV_MAX_PAGES) {
            snprintf(errstr, errstr_size, "more than %d pages", DV_MAX_PAGES);
            rc = CS_ERR_CRM_PROTOCOL;
            break;
        }
        rc = dv_send(dv, "GET", url, NULL, 0, NULL, 0, "get", &resp, errstr,
                     errstr_size);
        free(url);
        url = NULL;
        if (rc == CS_ERR_OK && (resp.status < 200 || resp.status >= 300)) {
            struct crm_op tmp = {0};
            crm_batch_op_error(&tmp, (int)resp.status,
                               resp.body ? resp.body : "", resp.body_len);
            snprintf(errstr, errstr_size, "GET %s: %s", path, tmp.error);
            rc = status_err(resp.status);
        }
        if (rc != CS_ERR_OK) {
            http_response_free(&resp);
            break;
        }
        doc = json_loadb(resp.body ? resp.body : "", resp.body_len, 0, NULL);
        http_response_free(&resp);
        if (!doc) {
            snprintf(errstr, errstr_size, "GET %s: invalid JSON", path);
            rc = CS_ERR_CRM_PROTOCOL;
            break;
        }
        next = json_string_value(json_object_get(doc, "@odata.nextLink"));
        if (all_pages && next)
            url = resolve_url(dv, next);
        if (!result) {
            result = doc;
        } else {
            json_t *dst = json_object_get(result, "value");
            json_t *src = json_object_get(doc, "value");
            if (json_is_array(dst) && json_is_array(src))
                json_array_extend(dst, src);
            json_decref(doc);
        }
    }
    free(url);
    if (rc != CS_ERR_OK) {
        json_decref(result);
        return rc;
    }
    if (result)
        json_object_del(result, "@odata.nextLink");
    *out = result;
    return CS_ERR_OK;
}

static bool dv_ping(void *self)
{
    struct dataverse *dv = self;
    struct http_response resp;
    char errstr[256];
    char *url = str_concat(dv->api_root, "WhoAmI");
    enum cs_err rc;
    bool ok;

    if (!url)
        return false;
    rc = dv_send(dv, "GET", url, NULL, 0, NULL, 0, "ping", &resp, errstr,
                 sizeof(errstr));
    ok = rc == CS_ERR_OK && resp.status >= 200 && resp.status < 300;
    if (!ok)
        LOG_DEBUG("crm ping failed status=%ld err=%s", resp.status,
                  rc == CS_ERR_OK ? "-" : errstr);
    http_response_free(&resp);
    free(url);
    return ok;
}

static const struct crm_ops dataverse_ops = {
    .name = "dataverse",
    .execute = dv_execute,
    .get_json = dv_get_json,
    .ping = dv_ping,
    .free = dv_free,
};

/* Path component of a URL ("https://h:1/x" -> "/x", "https://h" -> ""). */
static const char *url_path(const char *url)
{
    const char *p = strstr(url, "://");
    const char *slash;

    p = p ? p + 3 : url;
    slash = strchr(p, '/');
    return slash ? slash : "";
}

struct crm *crm_dataverse_new(const struct crm_options *opts, struct metrics *m,
                              char *errstr, size_t errstr_size)
{
    struct dataverse *dv;
    struct crm *crm;
    size_t blen;

    if (!opts->base_url || !*opts->base_url) {
        snprintf(errstr, errstr_size, "crm.base_url is required");
        return NULL;
    }
    if (!opts->client_id || !*opts->client_id || !opts->client_secret ||
        !*opts->client_secret) {
        snprintf(errstr, errstr_size,
                 "crm.client_id and crm.client_secret are required");
        return NULL;
    }
    if ((!opts->token_url || !*opts->token_url) &&
        (!opts->tenant_id || !*opts->tenant_id)) {
        snprintf(errstr, errstr_size,
                 "crm.token_url or crm.tenant_id is required");
        return NULL;
    }
    if (opts->batch_size < 1 || opts->batch_size > DV_MAX_BATCH) {
        snprintf(errstr, errstr_size, "crm.batch_size must be 1..%d (got %d)",
                 DV_MAX_BATCH, opts->batch_size);
        return NULL;
    }
    dv = calloc(1, sizeof(*dv));
    crm = calloc(1, sizeof(*crm));
    if (!dv || !crm)
        goto out_nomem;
    dv->m = m;
    dv->batch_size = opts->batch_size;
    dv->base_url = strdup(opts->base_url);
    if (!dv->base_url)
        goto out_nomem;
    blen = strlen(dv->base_url);
    while (blen > 0 && dv->base_url[blen - 1] == '/')
        dv->base_url[--blen] = '\0';
    dv->api_root = str_concat(dv->base_url, CRM_DATAVERSE_API_PATH);
    dv->api_path = str_concat(url_path(dv->base_url), CRM_DATAVERSE_API_PATH);
    if (opts->token_url && *opts->token_url) {
        dv->token_url = strdup(opts->token_url);
    } else {
        struct buf b = {0};
        buf_appendf(&b,
                    "https://login.microsoftonline.com/%s/oauth2/v2.0/token",
                    opts->tenant_id);
        dv->token_url = buf_detach(&b);
    }
    dv->client_id = strdup(opts->client_id);
    dv->client_secret = strdup(opts->client_secret);
    dv->scope = opts->scope && *opts->scope
                    ? strdup(opts->scope)
                    : str_concat(dv->base_url, "/.default");
    if (!dv->api_root || !dv->api_path || !dv->token_url || !dv->client_id ||
        !dv->client_secret || !dv->scope)
        goto out_nomem;
    dv->http = http_client_new(&opts->http, m, errstr, errstr_size);
    if (!dv->http)
        goto out_free;
    crm->ops = &dataverse_ops;
    crm->self = dv;
    return crm;
out_nomem:
    snprintf(errstr, errstr_size, "out of memory");
out_free:
    dv_free(dv);
    free(crm);
    return NULL;
}
