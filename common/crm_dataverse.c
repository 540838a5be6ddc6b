/*
 * crm_dataverse - Dataverse Web API connector behind crm.h: options,
 * OAuth2 client-credentials token cache and refresh, execute (chunking into
 * $batch requests sent up to max_in_flight at a time through http_multi,
 * one refresh-and-retry on 401, result mapping), get_json
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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "common/buf.h"
#include "common/crm_batch.h"
#include "common/http_multi.h"
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
    unsigned token_gen;            /* counts token fetches */
    char *batch_url;               /* owned: api_root + "$batch" */
    struct http_multi *multi;      /* owned: the $batch requests in flight */
    int batch_size;
    int max_in_flight; /* slots of multi */
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
    http_multi_free(dv->multi);
    http_client_free(dv->http);
    free(dv->batch_url);
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
    dv->token_gen++;
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
    return op->result == CRM_OP_OK || op->result == CRM_OP_EXISTS ||
           op->result == CRM_OP_NOT_FOUND;
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

/* One $batch request of an execute call, from build to answer. */
struct dv_chunk {
    struct crm_op *ops; /* borrowed from execute's caller */
    size_t n;           /* ops in this request */
    char *body;         /* owned: the multipart request body */
    size_t body_len;    /* bytes in body */
    char ctype[96];     /* Content-Type with the batch boundary */
    char *auth;         /* owned, secret: "Bearer <token>" */
    unsigned token_gen; /* dv->token_gen the request was signed with */
    int pass;           /* 0 = first send, 1 = after a 401 refresh */
    struct http_header hdrs[7];
    struct http_multi_req req; /* borrowed by dv->multi while sent */
};

/* Frees what the chunk owns and empties it. */
static void chunk_clear(struct dv_chunk *ch)
{
    free(ch->body);
    free_secret(ch->auth);
    http_response_free(&ch->req.resp);
    memset(ch, 0, sizeof(*ch));
}

/* (Re)signs the chunk with the current token and fills its request. */
static enum cs_err chunk_sign(struct dataverse *dv, struct dv_chunk *ch,
                              char *errstr, size_t errstr_size)
{
    size_t nh = 0;

    free_secret(ch->auth);
    ch->auth = str_concat("Bearer ", dv->token);
    if (!ch->auth) {
        snprintf(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    ch->token_gen = dv->token_gen;
    ch->hdrs[nh++] = (struct http_header){"Authorization", ch->auth};
    ch->hdrs[nh++] = (struct http_header){"Accept", "application/json"};
    ch->hdrs[nh++] = (struct http_header){"OData-MaxVersion", "4.0"};
    ch->hdrs[nh++] = (struct http_header){"OData-Version", "4.0"};
    ch->hdrs[nh++] = (struct http_header){"If-None-Match", "null"};
    ch->hdrs[nh++] = (struct http_header){"Content-Type", ch->ctype};
    ch->hdrs[nh++] = (struct http_header){"Prefer", "odata.continue-on-error"};
    http_response_free(&ch->req.resp);
    ch->req = (struct http_multi_req){
        .method = "POST",
        .url = dv->batch_url,
        .headers = ch->hdrs,
        .nheaders = nh,
        .body = ch->body,
        .body_len = ch->body_len,
        .metric_kind = "batch",
        .user = ch,
    };
    return CS_ERR_OK;
}

/* Builds ops[0..n) into a signed $batch request (token fetched if due). */
static enum cs_err chunk_prepare(struct dataverse *dv, struct dv_chunk *ch,
                                 struct crm_op *ops, size_t n, char *errstr,
                                 size_t errstr_size)
{
    char boundary[64];
    enum cs_err rc;

    memset(ch, 0, sizeof(*ch));
    ch->ops = ops;
    ch->n = n;
    new_boundary(boundary, sizeof(boundary));
    snprintf(ch->ctype, sizeof(ch->ctype), "multipart/mixed; boundary=\"%s\"",
             boundary);
    if (crm_dataverse_batch_build(ops, n, dv->api_path, boundary, &ch->body,
                                  &ch->body_len) != CS_ERR_OK) {
        snprintf(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    rc = dv_ensure_token(dv, false, errstr, errstr_size);
    if (rc != CS_ERR_OK)
        return rc;
    return chunk_sign(dv, ch, errstr, errstr_size);
}

/* A chunk that could not be sent or whose request failed retryably as a
 * whole: its ops become RETRY and further chunks are not sent. */
static struct chunk_outcome chunk_stop(struct crm_op *ops, size_t n,
                                       enum cs_err err, int status,
                                       long retry_after_ms, const char *why,
                                       char *errstr, size_t errstr_size)
{
    struct chunk_outcome out = {false, true, err, retry_after_ms};

    if (errstr != why)
        snprintf(errstr, errstr_size, "%s", why);
    mark_range(ops, n, CRM_OP_RETRY, status, retry_after_ms, why);
    return out;
}

/* Maps the final answer to a chunk's request onto its ops. */
static struct chunk_outcome chunk_finish(struct dv_chunk *ch, char *errstr,
                                         size_t errstr_size)
{
    struct chunk_outcome out = {false, false, CS_ERR_OK, 0};
    struct http_response *resp = &ch->req.resp;
    struct crm_op *ops = ch->ops;
    size_t n = ch->n;
    char why[256];
    enum cs_err rc;

    if (ch->req.rc != CS_ERR_OK)
        return chunk_stop(ops, n, ch->req.rc, 0, resp->retry_after_ms,
                          ch->req.errstr, errstr, errstr_size);
    if (resp->status == 401 || resp->status == 429 || resp->status == 408 ||
        resp->status >= 500) {
        snprintf(why, sizeof(why), "$batch answered %ld", resp->status);
        return chunk_stop(ops, n,
                          resp->status == 401   ? CS_ERR_AUTH
                          : resp->status == 429 ? CS_ERR_HTTP_THROTTLED
                                                : CS_ERR_HTTP_SERVER,
                          (int)resp->status, resp->retry_after_ms, why, errstr,
                          errstr_size);
    }
    if (resp->content_type &&
        strncasecmp(resp->content_type, "multipart/", 10) == 0) {
        rc = crm_dataverse_batch_parse(resp->content_type, resp->body,
                                       resp->body_len, ops, n, errstr,
                                       errstr_size);
        if (rc != CS_ERR_OK) {
            LOG_WARN("crm batch response unparseable status=%ld err=%s",
                     resp->status, errstr);
            mark_range(ops, n, CRM_OP_RETRY, (int)resp->status, 0, errstr);
        }
        out.answered = rc == CS_ERR_OK;
        return out;
    }
    if (resp->status >= 200 && resp->status < 300) {
        /* 2xx without a multipart body: a protocol error, retry later. */
        snprintf(why, sizeof(why), "$batch answered %ld without multipart",
                 resp->status);
        mark_range(ops, n, CRM_OP_RETRY, (int)resp->status, 0, why);
        return out;
    }
    /* A whole-batch 4xx (e.g. 400 malformed, 403, 413): every op failed. */
    out.answered = true;
    for (size_t k = 0; k < n; k++) {
        ops[k].result = CRM_OP_FAILED;
        ops[k].retry_after_ms = 0;
        crm_batch_op_error(&ops[k], (int)resp->status,
                           resp->body ? resp->body : "", resp->body_len);
        ops[k].status = (int)resp->status;
    }
    return out;
}

/* On a first 401: refresh the token (unless another chunk already did since
 * this one was signed) and sign again. CS_ERR_OK = send it once more. */
static enum cs_err chunk_resign_after_401(struct dataverse *dv,
                                          struct dv_chunk *ch, char *errstr,
                                          size_t errstr_size)
{
    enum cs_err rc;

    LOG_WARN("crm answered 401 kind=batch pass=%d", ch->pass);
    ch->pass = 1;
    rc = dv_ensure_token(dv, ch->token_gen == dv->token_gen, errstr,
                         errstr_size);
    if (rc != CS_ERR_OK)
        return rc;
    return chunk_sign(dv, ch, errstr, errstr_size);
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
        [CRM_OP_NOT_FOUND] = "result=\"not_found\"",
    };

    for (size_t k = 0; k < n; k++)
        if (touched[k] && ops[k].result != CRM_OP_PENDING)
            metrics_counter_add(dv->m, "crmsync_crm_operations_total",
                                names[ops[k].result], 1);
}

/* The next run of pending ops from *i on (skipping done ones): whole change
 * sets, at most batch_size ops unless one change set is larger. Resets the
 * run's out fields, marks it touched and moves *i past it; *start receives
 * its first index. Returns its length, 0 when no op is pending. */
static size_t next_run(const struct dataverse *dv, struct crm_op *ops, size_t n,
                       size_t *i, size_t *start, bool *touched)
{
    size_t end;
    size_t count = 0;

    while (*i < n && op_done(&ops[*i]))
        (*i)++;
    *start = *i;
    end = *i;
    while (end < n && !op_done(&ops[end])) {
        size_t u = unit_len(ops, n, end);
        if (count > 0 && count + u > (size_t)dv->batch_size)
            break;
        count += u;
        end += u;
        if (count >= (size_t)dv->batch_size)
            break;
    }
    for (size_t k = *start; k < end; k++) {
        touched[k] = true;
        ops[k].result = CRM_OP_PENDING;
        ops[k].status = 0;
        ops[k].error[0] = '\0';
        ops[k].retry_after_ms = 0;
    }
    *i = end;
    return count;
}

/* FNV-1a of an op's path: equal paths, equal hashes. */
static uint64_t path_hash(const char *p)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (; p && *p; p++) {
        h ^= (unsigned char)*p;
        h *= 0x100000001b3ULL;
    }
    return h;
}

struct path_ref {
    uint64_t hash;
    size_t idx;
};

static int path_ref_cmp(const void *a, const void *b)
{
    const struct path_ref *x = a;
    const struct path_ref *y = b;

    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* prev[k] = index of the last op before k with the same path (hash), or
 * SIZE_MAX. Ops on one record must reach the CRM in order (e.g. the first
 * of two create-only writes wins), so a chunk waits while a chunk holding
 * an earlier op on one of its records is in flight. Hash collisions only
 * order more than needed. Returns NULL on OOM (caller frees with free). */
static size_t *same_path_prev(const struct crm_op *ops, size_t n)
{
    struct path_ref *refs = calloc(n ? n : 1, sizeof(*refs));
    size_t *prev = malloc((n ? n : 1) * sizeof(*prev));

    if (!refs || !prev) {
        free(refs);
        free(prev);
        return NULL;
    }
    for (size_t k = 0; k < n; k++) {
        refs[k] = (struct path_ref){path_hash(ops[k].path), k};
        prev[k] = SIZE_MAX;
    }
    qsort(refs, n, sizeof(*refs), path_ref_cmp);
    for (size_t k = 1; k < n; k++)
        if (refs[k].hash == refs[k - 1].hash)
            prev[refs[k].idx] = refs[k - 1].idx;
    free(refs);
    return prev;
}

/* True when an op of ops[start, start+count) follows an op on the same
 * record that is in a chunk still in flight. */
static bool run_waits_for_earlier(const size_t *prev, size_t start,
                                  size_t count, const struct dv_chunk *chunks,
                                  int nchunks, const struct crm_op *ops)
{
    for (size_t k = start; k < start + count; k++) {
        if (prev[k] == SIZE_MAX || prev[k] >= start)
            continue;
        for (int c = 0; c < nchunks; c++) {
            const struct crm_op *lo = chunks[c].ops;
            if (lo && &ops[prev[k]] >= lo && &ops[prev[k]] < lo + chunks[c].n)
                return true;
        }
    }
    return false;
}

/* Remembers the stop to report: the first one, or a later one that asks
 * for a longer pause. */
static void note_stop(struct chunk_outcome *stop, char *stop_why,
                      size_t stop_why_size, const struct chunk_outcome *oc,
                      const char *why)
{
    if (!oc->stop || (stop->stop && oc->retry_after_ms <= stop->retry_after_ms))
        return;
    *stop = *oc;
    snprintf(stop_why, stop_why_size, "%s", why);
}

/* Chunks of one call are sent as separate $batch requests: up to
 * http_multi_capacity() of them are in flight at once (1 = strictly one
 * after the other, as before max_in_flight existed), except that ops on
 * the same record keep their order (same_path_prev). */
static enum cs_err dv_execute(void *self, struct crm_op *ops, size_t n,
                              char *errstr, size_t errstr_size)
{
    struct dataverse *dv = self;
    bool *touched = calloc(n ? n : 1, sizeof(*touched));
    struct dv_chunk *chunks =
        calloc((size_t)dv->max_in_flight, sizeof(*chunks));
    bool answered = false;
    struct chunk_outcome stop = {false, false, CS_ERR_OK, 0};
    char stop_why[256] = "";
    size_t i = 0;
    size_t *prev = dv->max_in_flight > 1 ? same_path_prev(ops, n) : NULL;
    size_t held_start = 0; /* a claimed run waiting for an earlier one */
    size_t held_count = 0;

    if (!touched || !chunks || (dv->max_in_flight > 1 && !prev)) {
        free(touched);
        free(chunks);
        free(prev);
        snprintf(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    for (;;) {
        struct http_multi_req *req;
        struct dv_chunk *ch;
        struct chunk_outcome oc;
        enum cs_err rc;

        /* Send further chunks while there is room and nothing failed. */
        while (!stop.stop && http_multi_outstanding(dv->multi) <
                                 http_multi_capacity(dv->multi)) {
            size_t start = held_start;
            size_t count = held_count;

            if (count == 0)
                count = next_run(dv, ops, n, &i, &start, touched);
            if (count == 0)
                break;
            held_count = 0;
            if (prev && count <= DV_MAX_BATCH &&
                run_waits_for_earlier(prev, start, count, chunks,
                                      dv->max_in_flight, ops)) {
                held_start = start;
                held_count = count;
                break;
            }
            if (count > DV_MAX_BATCH) {
                mark_range(&ops[start], count, CRM_OP_FAILED, 0, 0,
                           "change set larger than 1000 operations");
                answered = true;
                continue;
            }
            ch = chunks;
            while (ch->ops)
                ch++; /* a free one exists: outstanding < max_in_flight */
            rc = chunk_prepare(dv, ch, &ops[start], count, errstr, errstr_size);
            if (rc == CS_ERR_OK)
                rc = http_multi_add(dv->multi, &ch->req, errstr, errstr_size);
            if (rc != CS_ERR_OK) {
                oc = chunk_stop(&ops[start], count, rc, 0, 0, errstr, errstr,
                                errstr_size);
                note_stop(&stop, stop_why, sizeof(stop_why), &oc, errstr);
                chunk_clear(ch);
            }
        }
        req = http_multi_wait(dv->multi);
        if (!req)
            break;
        ch = req->user;
        if (req->rc == CS_ERR_OK && req->resp.status == 401 && ch->pass == 0) {
            /* One refresh-and-retry per request. */
            rc = chunk_resign_after_401(dv, ch, errstr, errstr_size);
            if (rc == CS_ERR_OK)
                rc = http_multi_add(dv->multi, &ch->req, errstr, errstr_size);
            if (rc == CS_ERR_OK)
                continue;
            oc = chunk_stop(ch->ops, ch->n, rc, 0, 0, errstr, errstr,
                            errstr_size);
        } else {
            oc = chunk_finish(ch, errstr, errstr_size);
        }
        if (oc.answered)
            answered = true;
        note_stop(&stop, stop_why, sizeof(stop_why), &oc, errstr);
        chunk_clear(ch);
    }
    /* After a retryable failure the ops never sent are to be retried. */
    for (size_t k = held_count ? held_start : i; k < n; k++) {
        if (op_done(&ops[k]))
            continue;
        touched[k] = true;
        mark_range(&ops[k], 1, CRM_OP_RETRY, 0, stop.retry_after_ms, stop_why);
    }
    count_results(dv, ops, n, touched);
    free(prev);
    free(chunks);
    free(touched);
    if (stop.stop)
        snprintf(errstr, errstr_size, "%s", stop_why);
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

static enum cs_err dv_get_page(void *self, const char *path, const char *prefer,
                               json_t **out, char *errstr, size_t errstr_size)
{
    struct dataverse *dv = self;
    struct http_header extra = {"Prefer", prefer};
    struct http_response resp;
    char *url = resolve_url(dv, path);
    enum cs_err rc;

    *out = NULL;
    if (!url) {
        snprintf(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    rc = dv_send(dv, "GET", url, &extra, prefer ? 1 : 0, NULL, 0, "get", &resp,
                 errstr, errstr_size);
    free(url);
    if (rc == CS_ERR_OK && (resp.status < 200 || resp.status >= 300)) {
        struct crm_op tmp = {0};
        crm_batch_op_error(&tmp, (int)resp.status, resp.body ? resp.body : "",
                           resp.body_len);
        snprintf(errstr, errstr_size, "GET: %s", tmp.error);
        rc = status_err(resp.status);
    }
    if (rc == CS_ERR_OK) {
        *out = json_loadb(resp.body ? resp.body : "", resp.body_len, 0, NULL);
        if (!*out) {
            snprintf(errstr, errstr_size, "GET: invalid JSON");
            rc = CS_ERR_CRM_PROTOCOL;
        }
    }
    http_response_free(&resp);
    return rc;
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
    .get_page = dv_get_page,
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
    if (opts->max_in_flight < 0 || opts->max_in_flight > CRM_MAX_IN_FLIGHT) {
        snprintf(errstr, errstr_size,
                 "crm.max_in_flight must be 1..%d (got %d)", CRM_MAX_IN_FLIGHT,
                 opts->max_in_flight);
        return NULL;
    }
    dv = calloc(1, sizeof(*dv));
    crm = calloc(1, sizeof(*crm));
    if (!dv || !crm)
        goto out_nomem;
    dv->m = m;
    dv->batch_size = opts->batch_size;
    dv->max_in_flight = opts->max_in_flight > 0 ? opts->max_in_flight : 1;
    dv->base_url = strdup(opts->base_url);
    if (!dv->base_url)
        goto out_nomem;
    blen = strlen(dv->base_url);
    while (blen > 0 && dv->base_url[blen - 1] == '/')
        dv->base_url[--blen] = '\0';
    dv->api_root = str_concat(dv->base_url, CRM_DATAVERSE_API_PATH);
    dv->api_path = str_concat(url_path(dv->base_url), CRM_DATAVERSE_API_PATH);
    dv->batch_url = dv->api_root ? str_concat(dv->api_root, "$batch") : NULL;
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
    if (!dv->api_root || !dv->api_path || !dv->batch_url || !dv->token_url ||
        !dv->client_id || !dv->client_secret || !dv->scope)
        goto out_nomem;
    dv->http = http_client_new(&opts->http, m, errstr, errstr_size);
    if (!dv->http)
        goto out_free;
    dv->multi =
        http_multi_new(dv->http, dv->max_in_flight, errstr, errstr_size);
    if (!dv->multi)
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
