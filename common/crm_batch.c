/*
 * crm_batch - the OData $batch codec of the Dataverse connector: the
 * multipart/mixed request writer (crm_dataverse_batch_build) and the
 * response parser (crm_dataverse_batch_parse), both declared in
 * crm_dataverse.h, plus crm_batch_op_error for the connector (crm_batch.h).
 *
 * Ownership: everything here is pure. Inputs (ops, paths, boundaries, the
 * response body) are borrowed; the parser's spans point into the caller's
 * body and never outlive the call; the only heap results are the request
 * body (caller frees with free()) and scratch arrays freed before return.
 *
 * Thread-safety: no state, safe from any thread.
 */
#include "common/crm_batch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/crm_dataverse.h"
#include "common/odata.h"

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
    if (op->if_match) {
        /* An ETag comes from a response body: never let it end the header. */
        buf_appends(b, "If-Match: ");
        for (const char *c = op->if_match; *c; c++)
            if ((unsigned char)*c >= 0x20 && *c != 0x7f)
                buf_append(b, c, 1);
        buf_appends(b, "\r\n");
    } else if (op->flags & CRM_OP_UPDATE_ONLY)
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
    if (header_get(rhdrs, "Retry-After", val, sizeof(val))) {
        /* delta-seconds, bounded like http.c does for the whole request
           (a huge value must not overflow; a negative one means none) */
        long secs = parse_long(val, 0);
        if (secs > 86400)
            secs = 86400;
        r->retry_after_ms = secs > 0 ? secs * 1000 : 0;
    }
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

void crm_batch_op_error(struct crm_op *op, int status, const char *body,
                        size_t body_len)
{
    json_t *root = json_loadb(body, body_len, 0, NULL);
    json_t *err = root ? json_object_get(root, "error") : NULL;
    const char *code = json_string_value(json_object_get(err, "code"));
    const char *msg = json_string_value(json_object_get(err, "message"));

    if (msg) {
        snprintf(op->error, sizeof(op->error), "%d %s: %s", status,
                 code && *code ? code : "-", msg);
    } else {
        int len = body_len > 160 ? 160 : (int)body_len;
        snprintf(op->error, sizeof(op->error), "%d: %.*s", status, len,
                 body ? body : "");
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
        if (strcmp(op->method, "GET") == 0 && r->body.len > 0) {
            json_decref(op->response);
            op->response = json_loadb(r->body.p, r->body.len, 0, NULL);
            if (op->response == NULL) {
                op->result = CRM_OP_RETRY;
                snprintf(op->error, sizeof(op->error),
                         "%d: unparseable JSON body", r->status);
            }
        }
    } else if (r->status == 412 && (op->flags & CRM_OP_CREATE_ONLY)) {
        op->result = CRM_OP_EXISTS;
    } else if (r->status == 404 && strcmp(op->method, "GET") == 0) {
        op->result = CRM_OP_NOT_FOUND;
        crm_batch_op_error(op, r->status, r->body.p, r->body.len);
    } else if (op->if_match && (r->status == 412 || r->status == 404)) {
        op->result = CRM_OP_RETRY; /* re-read, then decide again */
        crm_batch_op_error(op, r->status, r->body.p, r->body.len);
    } else if (r->status == 429 || r->status == 408 || r->status >= 500) {
        op->result = CRM_OP_RETRY;
        op->retry_after_ms = r->retry_after_ms;
        crm_batch_op_error(op, r->status, r->body.p, r->body.len);
    } else {
        op->result = CRM_OP_FAILED;
        crm_batch_op_error(op, r->status, r->body.p, r->body.len);
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
