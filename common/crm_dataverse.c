/*
 * crm_dataverse - Dataverse Web API connector. See crm_dataverse.h.
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
#include "common/log.h"
#include "common/metrics.h"
#include "common/odata.h"

/* Largest $batch Dataverse accepts. */
#define DV_MAX_BATCH 1000
/* Pages followed by get_json(all_pages) before giving up. */
#define DV_MAX_PAGES 1000

/* ------------------------------------------------------------------------
 * $batch writer
 * ---------------------------------------------------------------------- */

/* Writes one application/http part (headers, request line, body). */
static void write_op_part(struct buf *b, const struct crm_op *op,
                          const char *api_path, int content_id)
{
    const char *path = op->path ? op->path : "";

    buf_appends(b, "Content-Type: application/http\r\n"
                   "Content-Transfer-Encoding: binary\r\n");
    if (content_id > 0)
        buf_appendf(b, "Content-ID: %d\r\n", content_id);
    buf_appends(b, "\r\n");
    buf_appends(b, op->method);
    buf_appends(b, " ");
    if (path[0] != '$' && strncmp(path, "http", 4) != 0)
        buf_appends(b, api_path);
    buf_appends(b, path);
    buf_appends(b, " HTTP/1.1\r\n");
    if (op->body)
        buf_appends(b, "Content-Type: application/json; type=entry\r\n");
    if (op->flags & CRM_OP_CREATE_ONLY)
        buf_appends(b, "If-None-Match: *\r\n");
    if (op->flags & CRM_OP_UPDATE_ONLY)
        buf_appends(b, "If-Match: *\r\n");
    buf_appends(b, "\r\n");
    if (op->body)
        buf_appends(b, op->body);
    buf_appends(b, "\r\n");
}

enum cs_err crm_dataverse_batch_build(const struct crm_op *ops, size_t n,
                                      const char *api_path,
                                      const char *boundary, char **out,
                                      size_t *out_len)
{
    struct buf b = {0};
    size_t i = 0;
    int run = 0;

    while (i < n) {
        buf_appendf(&b, "--%s\r\n", boundary);
        if (ops[i].changeset == 0) {
            write_op_part(&b, &ops[i], api_path, 0);
            i++;
            continue;
        }
        {
            char seed[64];
            char cs[48];
            int id = ops[i].changeset;
            char uuid[37];

            snprintf(seed, sizeof(seed), "changeset/%d", run++);
            odata_uuid5(CRMSYNC_UUID_NAMESPACE, boundary, uuid);
            odata_uuid5(uuid, seed, uuid);
            snprintf(cs, sizeof(cs), "changeset_%s", uuid);
            buf_appendf(&b,
                        "Content-Type: multipart/mixed; boundary=\"%s\"\r\n"
                        "\r\n",
                        cs);
            while (i < n && ops[i].changeset == id) {
                buf_appendf(&b, "--%s\r\n", cs);
                write_op_part(&b, &ops[i], api_path, (int)i + 1);
                i++;
            }
            buf_appendf(&b, "--%s--\r\n\r\n", cs);
        }
    }
    buf_appendf(&b, "--%s--\r\n", boundary);
    if (b.oom) {
        buf_free(&b);
        return CS_ERR_NOMEM;
    }
    *out_len = b.len;
    *out = buf_detach(&b);
    return CS_ERR_OK;
}

/* ------------------------------------------------------------------------
 * $batch reader
 * ---------------------------------------------------------------------- */

struct span {
    const char *p;
    size_t len;
};

/* One answered operation inside a batch response. */
struct part_resp {
    int status;
    int content_id;      /* -1 when absent */
    long retry_after_ms; /* 0 when absent */
    struct span body;
};

struct resp_list {
    struct part_resp *items;
    size_t n;
    size_t cap;
};

/* Finds the end of the line starting at p: *eol is the end of its content
 * (before CR LF / LF), the return value the start of the next line. */
static const char *line_next(const char *p, const char *end, const char **eol)
{
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *e = nl ? nl : end;

    if (e > p && e[-1] == '\r')
        e--;
    *eol = e;
    return nl ? nl + 1 : end;
}

/* Splits @p s into the parts delimited by "--boundary" lines. Parts are
 * appended to *parts (caller frees). Returns false on OOM or when no
 * delimiter was found. */
static bool multipart_split(struct span s, const char *boundary,
                            struct span **parts, size_t *nparts)
{
    const char *p = s.p;
    const char *end = s.p + s.len;
    size_t blen = strlen(boundary);
    const char *part_start = NULL;
    size_t cap = 0;
    bool seen = false;

    *parts = NULL;
    *nparts = 0;
    while (p < end) {
        const char *eol;
        const char *next = line_next(p, end, &eol);
        const char *t = eol;
        bool delim;
        bool final = false;

        while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        delim = (size_t)(t - p) >= blen + 2 && p[0] == '-' && p[1] == '-' &&
                memcmp(p + 2, boundary, blen) == 0;
        if (delim) {
            size_t rest = (size_t)(t - p) - blen - 2;
            if (rest == 2 && p[blen + 2] == '-' && p[blen + 3] == '-')
                final = true;
            else if (rest != 0)
                delim = false;
        }
        if (delim) {
            seen = true;
            if (part_start) {
                /* The line break before a delimiter belongs to it. */
                const char *pe = p;
                if (pe > part_start && pe[-1] == '\n')
                    pe--;
                if (pe > part_start && pe[-1] == '\r')
                    pe--;
                if (*nparts == cap) {
                    size_t ncap = cap ? cap * 2 : 16;
                    struct span *np = realloc(*parts, ncap * sizeof(*np));
                    if (!np) {
                        free(*parts);
                        *parts = NULL;
                        return false;
                    }
                    *parts = np;
                    cap = ncap;
                }
                (*parts)[*nparts].p = part_start;
                (*parts)[*nparts].len = (size_t)(pe - part_start);
                (*nparts)++;
            }
            if (final)
                break;
            part_start = next;
        }
        p = next;
    }
    return seen;
}

/* Splits a header block from its body: returns the body span; *hdrs gets
 * the header lines (without the blank line). */
static struct span split_headers(struct span s, struct span *hdrs)
{
    const char *p = s.p;
    const char *end = s.p + s.len;

    while (p < end) {
        const char *eol;
        const char *next = line_next(p, end, &eol);
        if (eol == p) {
            hdrs->p = s.p;
            hdrs->len = (size_t)(p - s.p);
            return (struct span){next, (size_t)(end - next)};
        }
        p = next;
    }
    *hdrs = s;
    return (struct span){end, 0};
}

/* Copies the value of header @p name from a header block into out
 * (trimmed). Returns false when absent. */
static bool header_get(struct span hdrs, const char *name, char *out,
                       size_t out_size)
{
    const char *p = hdrs.p;
    const char *end = hdrs.p + hdrs.len;
    size_t nlen = strlen(name);

    while (p < end) {
        const char *eol;
        const char *next = line_next(p, end, &eol);
        if ((size_t)(eol - p) > nlen && p[nlen] == ':' &&
            strncasecmp(p, name, nlen) == 0) {
            const char *v = p + nlen + 1;
            size_t len;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            len = (size_t)(eol - v);
            while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
                len--;
            if (len >= out_size)
                len = out_size - 1;
            memcpy(out, v, len);
            out[len] = '\0';
            return true;
        }
        p = next;
    }
    return false;
}

/* Extracts boundary=... (quoted or not) from a Content-Type value. */
static bool content_type_boundary(const char *ct, char *out, size_t out_size)
{
    const char *p = ct;
    size_t len = 0;

    for (; *p; p++)
        if (strncasecmp(p, "boundary=", 9) == 0)
            break;
    if (!*p)
        return false;
    p += 9;
    if (*p == '"') {
        const char *q = strchr(++p, '"');
        len = q ? (size_t)(q - p) : strlen(p);
    } else {
        while (p[len] && p[len] != ';' && p[len] != ' ' && p[len] != '\t' &&
               p[len] != '\r' && p[len] != '\n')
            len++;
    }
    if (len == 0 || len >= out_size)
        return false;
    memcpy(out, p, len);
    out[len] = '\0';
    return true;
}

/* Boundary from the first "--" line of a body (Content-Type missing). */
static bool sniff_boundary(struct span s, char *out, size_t out_size)
{
    const char *p = s.p;
    const char *end = s.p + s.len;

    while (p < end) {
        const char *eol;
        const char *next = line_next(p, end, &eol);
        if (eol - p > 2 && p[0] == '-' && p[1] == '-') {
            size_t len = (size_t)(eol - p) - 2;
            while (len > 0 && (p[2 + len - 1] == ' ' || p[2 + len - 1] == '\t'))
                len--;
            if (len == 0 || len >= out_size)
                return false;
            memcpy(out, p + 2, len);
            out[len] = '\0';
            return true;
        }
        p = next;
    }
    return false;
}

static bool resp_push(struct resp_list *l, const struct part_resp *r)
{
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 16;
        struct part_resp *np = realloc(l->items, ncap * sizeof(*np));
        if (!np)
            return false;
        l->items = np;
        l->cap = ncap;
    }
    l->items[l->n++] = *r;
    return true;
}

static long parse_long(const char *s, long dflt)
{
    char *end = NULL;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (end == s || errno != 0)
        return dflt;
    return v;
}

/* Parses an application/http part (part headers + embedded response). */
static bool parse_http_part(struct span part, struct part_resp *r)
{
    struct span phdrs;
    struct span msg = split_headers(part, &phdrs);
    const char *end = msg.p + msg.len;
    const char *eol;
    const char *next;
    struct span rhdrs;
    char val[64];

    memset(r, 0, sizeof(*r));
    r->content_id = -1;
    if (header_get(phdrs, "Content-ID", val, sizeof(val)))
        r->content_id = (int)parse_long(val, -1);
    /* Skip blank lines before the status line. */
    next = msg.p;
    do {
        msg.p = next;
        if (msg.p >= end)
            return false;
        next = line_next(msg.p, end, &eol);
    } while (eol == msg.p);
    if (eol - msg.p < 12 || strncmp(msg.p, "HTTP/", 5) != 0)
        return false;
    {
        const char *sp = memchr(msg.p, ' ', (size_t)(eol - msg.p));
        char code[8] = {0};
        if (!sp || eol - sp < 4)
            return false;
        memcpy(code, sp + 1, 3);
        r->status = (int)parse_long(code, 0);
        if (r->status < 100 || r->status > 599)
            return false;
    }
    r->body = split_headers((struct span){next, (size_t)(end - next)}, &rhdrs);
    if (header_get(rhdrs, "Retry-After", val, sizeof(val)))
        r->retry_after_ms = parse_long(val, 0) * 1000;
    /* Trim trailing blank lines of the body. */
    while (r->body.len > 0 && (r->body.p[r->body.len - 1] == '\n' ||
                               r->body.p[r->body.len - 1] == '\r'))
        r->body.len--;
    return true;
}

/* Collects the responses of one batch part: one for application/http, all
 * nested ones for a change set response. *is_changeset tells which. */
static bool collect_part(struct span part, struct resp_list *out,
                         bool *is_changeset)
{
    struct span hdrs;
    char ct[256];
    char cs_boundary[200];

    *is_changeset = false;
    (void)split_headers(part, &hdrs);
    if (header_get(hdrs, "Content-Type", ct, sizeof(ct)) &&
        strncasecmp(ct, "multipart/", 10) == 0) {
        struct span body = split_headers(part, &hdrs);
        struct span *subs = NULL;
        size_t nsubs = 0;
        bool ok = true;

        *is_changeset = true;
        if (!content_type_boundary(ct, cs_boundary, sizeof(cs_boundary)))
            return false;
        if (!multipart_split(body, cs_boundary, &subs, &nsubs))
            return false;
        for (size_t k = 0; k < nsubs && ok; k++) {
            struct part_resp r;
            if (parse_http_part(subs[k], &r))
                ok = resp_push(out, &r);
        }
        free(subs);
        return ok;
    }
    {
        struct part_resp r;
        if (!parse_http_part(part, &r))
            return false;
        return resp_push(out, &r);
    }
}

/* Fills op->error from a JSON error body ({"error":{"code","message"}}) or
 * the raw text. */
static void set_op_error(struct crm_op *op, int status, struct span body)
{
    json_t *root = json_loadb(body.p, body.len, 0, NULL);
    json_t *err = root ? json_object_get(root, "error") : NULL;
    const char *code = json_string_value(json_object_get(err, "code"));
    const char *msg = json_string_value(json_object_get(err, "message"));

    if (msg) {
        snprintf(op->error, sizeof(op->error), "%d %s: %s", status,
                 code && *code ? code : "-", msg);
    } else {
        int len = body.len > 160 ? 160 : (int)body.len;
        snprintf(op->error, sizeof(op->error), "%d: %.*s", status, len,
                 body.p ? body.p : "");
    }
    json_decref(root);
}

/* Maps one per-operation status to the op's result. */
static void apply_resp(struct crm_op *op, const struct part_resp *r)
{
    op->status = r->status;
    op->error[0] = '\0';
    op->retry_after_ms = 0;
    if (r->status >= 200 && r->status < 300) {
        op->result = CRM_OP_OK;
    } else if (r->status == 412 && (op->flags & CRM_OP_CREATE_ONLY)) {
        op->result = CRM_OP_EXISTS;
    } else if (r->status == 429 || r->status == 408 || r->status >= 500) {
        op->result = CRM_OP_RETRY;
        op->retry_after_ms = r->retry_after_ms;
        set_op_error(op, r->status, r->body);
    } else {
        op->result = CRM_OP_FAILED;
        set_op_error(op, r->status, r->body);
    }
}

static void mark_unanswered(struct crm_op *op, const char *why)
{
    op->result = CRM_OP_RETRY;
    op->status = 0;
    op->retry_after_ms = 0;
    snprintf(op->error, sizeof(op->error), "%s", why);
}

/* Maps the responses of one change set (ops[first..first+count)). */
static void apply_changeset(struct crm_op *ops, size_t first, size_t count,
                            const struct part_resp *rs, size_t nrs)
{
    const struct part_resp *failure = NULL;

    if (nrs == 1 && count > 1) {
        /* A failed change set answers with one error part: all of its ops
           were rolled back, so all share the outcome. */
        for (size_t k = 0; k < count; k++)
            apply_resp(&ops[first + k], &rs[0]);
        return;
    }
    for (size_t k = 0; k < count; k++)
        ops[first + k].result = CRM_OP_PENDING;
    for (size_t k = 0; k < nrs; k++) {
        size_t idx;
        if (rs[k].content_id >= 1 && (size_t)rs[k].content_id - 1 >= first &&
            (size_t)rs[k].content_id - 1 < first + count)
            idx = (size_t)rs[k].content_id - 1;
        else if (k < count)
            idx = first + k;
        else
            continue;
        apply_resp(&ops[idx], &rs[k]);
        if (rs[k].status >= 300 && !failure)
            failure = &rs[k];
    }
    for (size_t k = 0; k < count; k++) {
        if (ops[first + k].result != CRM_OP_PENDING)
            continue;
        if (failure)
            apply_resp(&ops[first + k], failure);
        else
            mark_unanswered(&ops[first + k], "no response in change set");
    }
}

enum cs_err crm_dataverse_batch_parse(const char *content_type,
                                      const char *body, size_t len,
                                      struct crm_op *ops, size_t n,
                                      char *errstr, size_t errstr_size)
{
    char boundary[200];
    struct span all = {body ? body : "", body ? len : 0};
    struct span *parts = NULL;
    size_t nparts = 0;
    size_t unit = 0;
    size_t i = 0;
    enum cs_err rc = CS_ERR_OK;

    if (!(content_type &&
          content_type_boundary(content_type, boundary, sizeof(boundary))) &&
        !sniff_boundary(all, boundary, sizeof(boundary))) {
        snprintf(errstr, errstr_size, "batch response without boundary");
        return CS_ERR_CRM_PROTOCOL;
    }
    if (!multipart_split(all, boundary, &parts, &nparts)) {
        snprintf(errstr, errstr_size, "batch response without parts");
        return CS_ERR_CRM_PROTOCOL;
    }
    /* Batch part k answers unit k: a standalone op or a whole change set. */
    while (i < n) {
        size_t count = 1;
        struct resp_list rl = {0};
        bool is_cs = false;

        if (ops[i].changeset != 0)
            while (i + count < n &&
                   ops[i + count].changeset == ops[i].changeset)
                count++;
        if (unit >= nparts) {
            for (size_t k = 0; k < count; k++)
                mark_unanswered(&ops[i + k], "no response in batch");
        } else if (!collect_part(parts[unit], &rl, &is_cs) || rl.n == 0) {
            for (size_t k = 0; k < count; k++)
                mark_unanswered(&ops[i + k], "unparseable batch part");
        } else if (ops[i].changeset != 0) {
            apply_changeset(ops, i, count, rl.items, rl.n);
        } else {
            apply_resp(&ops[i], &rl.items[0]);
        }
        free(rl.items);
        unit++;
        i += count;
    }
    free(parts);
    return rc;
}

/* ------------------------------------------------------------------------
 * The connector
 * ---------------------------------------------------------------------- */

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
        expires_s = parse_long(json_string_value(exp), 0);
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
        set_op_error(&ops[k], (int)resp.status,
                     (struct span){resp.body ? resp.body : "", resp.body_len});
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
            set_op_error(
                &tmp, (int)resp.status,
                (struct span){resp.body ? resp.body : "", resp.body_len});
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
