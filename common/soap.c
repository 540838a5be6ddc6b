/*
 * soap - SOAP 1.1 RPC/encoded request writer and libxml2 response reader.
 * See soap.h.
 */
#include "common/soap.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#define SOAP_ENV_NS "http://schemas.xmlsoap.org/soap/envelope/"

/* U+FFFD REPLACEMENT CHARACTER, for what XML 1.0 cannot carry. */
static const char REPLACEMENT[] = "\xef\xbf\xbd";

struct soap_response {
    xmlDocPtr doc;     /* owned */
    xmlNodePtr body;   /* borrowed from doc: env:Body */
    xmlNodePtr resp;   /* borrowed from doc: <METHODResponse>, NULL on fault */
    xmlNodePtr ret;    /* borrowed from doc: first part (unresolved) or NULL */
    bool is_fault;     /* the Body holds a Fault */
    char *faultcode;   /* owned, "" when absent */
    char *faultstring; /* owned, "" when absent */
};

void soap_init(void)
{
    xmlInitParser();
}

/* Length of the valid UTF-8 sequence at p that XML 1.0 allows (1..4), 0 if
 * invalid or not allowed. p is NUL-terminated, so looking at the following
 * bytes stops at the NUL (never a continuation byte). */
static size_t xml_char_len(const unsigned char *p)
{
    unsigned c = p[0];

    if (c < 0x80)
        return c >= 0x20 || c == '\t' || c == '\n' || c == '\r' ? 1 : 0;
    if (c >= 0xC2 && c <= 0xDF)
        return (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if ((p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && p[1] < 0xA0)
            return 0; /* overlong */
        if (c == 0xED && p[1] >= 0xA0)
            return 0; /* UTF-16 surrogates */
        if (c == 0xEF && p[1] == 0xBF && (p[2] == 0xBE || p[2] == 0xBF))
            return 0; /* U+FFFE, U+FFFF */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if ((p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 ||
            (p[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
            return 0; /* overlong, beyond U+10FFFF */
        return 4;
    }
    return 0;
}

enum cs_err soap_escape(struct buf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    const unsigned char *run = p; /* start of bytes copied as they are */

    while (*p) {
        const char *rep = NULL;
        size_t len = xml_char_len(p);

        switch (*p) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;"; /* also breaks "]]>" */
            break;
        case '"':
            rep = "&quot;";
            break;
        case '\'':
            rep = "&apos;";
            break;
        case '\r':
            rep = "&#13;";
            break;
        default:
            if (len == 0) {
                rep = REPLACEMENT;
                len = 1; /* skip one bad byte */
            }
            break;
        }
        if (!rep) {
            p += len;
            continue;
        }
        buf_append(b, run, (size_t)(p - run));
        buf_appends(b, rep);
        p += len;
        run = p;
    }
    return buf_append(b, run, (size_t)(p - run));
}

enum cs_err soap_begin(struct buf *b, const char *ns, const char *method)
{
    buf_appends(b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
                   "<env:Envelope "
                   "xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" "
                   "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" "
                   "xmlns:impl=\"");
    soap_escape(b, ns);
    buf_appends(b, "\" xmlns:env=\"" SOAP_ENV_NS "\"><env:Body><impl:");
    buf_appends(b, method);
    return buf_appends(b, ">");
}

enum cs_err soap_end(struct buf *b, const char *method)
{
    return buf_appendf(b, "</impl:%s></env:Body></env:Envelope>", method);
}

enum cs_err soap_open(struct buf *b, const char *name)
{
    return buf_appendf(b, "<%s>", name);
}

enum cs_err soap_close(struct buf *b, const char *name)
{
    return buf_appendf(b, "</%s>", name);
}

enum cs_err soap_add_string(struct buf *b, const char *name, const char *value)
{
    if (!value)
        return buf_appendf(b, "<%s xsi:nil=\"true\"/>", name);
    soap_open(b, name);
    soap_escape(b, value);
    return soap_close(b, name);
}

enum cs_err soap_add_string_array(struct buf *b, const char *name,
                                  const char *const *values, size_t n)
{
    soap_open(b, name);
    for (size_t i = 0; i < n; i++)
        soap_add_string(b, "element", values[i]);
    return soap_close(b, name);
}

/* ---- response reading ---------------------------------------------- */

static bool is_elem(const xmlNode *n, const char *local)
{
    return n && n->type == XML_ELEMENT_NODE &&
           (!local || strcmp((const char *)n->name, local) == 0);
}

static xmlNodePtr first_elem(xmlNodePtr n)
{
    for (xmlNodePtr c = n ? n->children : NULL; c; c = c->next)
        if (is_elem(c, NULL))
            return c;
    return NULL;
}

static xmlNodePtr child_elem(xmlNodePtr n, const char *local)
{
    for (xmlNodePtr c = n ? n->children : NULL; c; c = c->next)
        if (is_elem(c, local))
            return c;
    return NULL;
}

/* True when attribute @p name (any namespace) equals one of a, b. */
static bool attr_is(xmlNodePtr n, const char *name, const char *a,
                    const char *b)
{
    xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
    bool yes = v && (strcmp((const char *)v, a) == 0 ||
                     (b && strcmp((const char *)v, b) == 0));

    xmlFree(v);
    return yes;
}

/* Text content as a malloc'd C string ("" when empty); NULL on OOM. */
static char *text_dup(xmlNodePtr n)
{
    xmlChar *t = n ? xmlNodeGetContent(n) : NULL;
    char *s = strdup(t ? (const char *)t : "");

    xmlFree(t);
    return s;
}

/* Element below @p root (depth-limited) whose id attribute is @p id. */
static xmlNodePtr find_id(xmlNodePtr root, const char *id, int depth)
{
    if (depth > SOAP_MAX_DEPTH)
        return NULL;
    for (xmlNodePtr c = root->children; c; c = c->next) {
        xmlNodePtr hit;

        if (!is_elem(c, NULL))
            continue;
        if (attr_is(c, "id", id, NULL))
            return c;
        hit = find_id(c, id, depth + 1);
        if (hit)
            return hit;
    }
    return NULL;
}

/* Follows href="#id" references from @p n (multiRef, listed anywhere in the
 * Body); returns the element holding the value, NULL if dangling/cyclic. */
static xmlNodePtr resolve(const struct soap_response *r, xmlNodePtr n)
{
    for (int hops = 0; n && hops < SOAP_MAX_DEPTH; hops++) {
        xmlChar *href = xmlGetProp(n, (const xmlChar *)"href");
        xmlNodePtr target;

        if (!href)
            return n;
        target =
            href[0] == '#' ? find_id(r->body, (const char *)href + 1, 0) : NULL;
        xmlFree(href);
        n = target;
    }
    return NULL;
}

static bool is_nil(xmlNodePtr n)
{
    return attr_is(n, "nil", "true", "1");
}

void soap_response_free(struct soap_response *r)
{
    if (!r)
        return;
    xmlFreeDoc(r->doc);
    free(r->faultcode);
    free(r->faultstring);
    free(r);
}

enum cs_err soap_parse(const char *body, size_t len, struct soap_response **out,
                       char *errstr, size_t errstr_size)
{
    struct soap_response *r;
    xmlNodePtr root;
    xmlNodePtr fault = NULL;

    *out = NULL;
    if (!body || len == 0 || len > INT_MAX) {
        snprintf(errstr, errstr_size, "empty SOAP response");
        return CS_ERR_DECODE;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    /* No network, no entity substitution, no DTD loading, quiet. */
    r->doc = xmlReadMemory(body, (int)len, "soap.xml", NULL,
                           XML_PARSE_NONET | XML_PARSE_NOERROR |
                               XML_PARSE_NOWARNING | XML_PARSE_NOCDATA);
    root = r->doc ? xmlDocGetRootElement(r->doc) : NULL;
    if (!is_elem(root, "Envelope")) {
        snprintf(errstr, errstr_size, "not a SOAP envelope");
        goto out_decode;
    }
    r->body = child_elem(root, "Body");
    if (!r->body) {
        snprintf(errstr, errstr_size, "SOAP envelope without Body");
        goto out_decode;
    }
    for (xmlNodePtr c = r->body->children; c; c = c->next) {
        if (!is_elem(c, NULL))
            continue;
        if (is_elem(c, "Fault")) {
            fault = c;
            break;
        }
        /* multiRef values are not the response (soapenc:root="0"). */
        if (is_elem(c, "multiRef") || attr_is(c, "root", "0", NULL))
            continue;
        if (!r->resp)
            r->resp = c;
    }
    if (fault) {
        r->is_fault = true;
        r->resp = NULL;
        r->faultcode = text_dup(child_elem(fault, "faultcode"));
        r->faultstring = text_dup(child_elem(fault, "faultstring"));
        if (!r->faultcode || !r->faultstring) {
            soap_response_free(r);
            snprintf(errstr, errstr_size, "out of memory");
            return CS_ERR_NOMEM;
        }
    } else if (!r->resp) {
        snprintf(errstr, errstr_size, "SOAP Body without response element");
        goto out_decode;
    } else {
        r->ret = first_elem(r->resp);
    }
    *out = r;
    return CS_ERR_OK;
out_decode:
    soap_response_free(r);
    return CS_ERR_DECODE;
}

bool soap_fault(const struct soap_response *r, const char **code,
                const char **string)
{
    if (!r || !r->is_fault)
        return false;
    if (code)
        *code = r->faultcode;
    if (string)
        *string = r->faultstring;
    return true;
}

const char *soap_response_name(const struct soap_response *r)
{
    return r && r->resp ? (const char *)r->resp->name : "";
}

bool soap_has_return(const struct soap_response *r)
{
    return r && r->ret;
}

/* The resolved return part, NULL when absent or dangling. */
static xmlNodePtr return_value(const struct soap_response *r)
{
    if (!r || r->is_fault || !r->ret)
        return NULL;
    return resolve(r, r->ret);
}

enum cs_err soap_return_string(const struct soap_response *r, char **out)
{
    xmlNodePtr v = return_value(r);

    *out = NULL;
    if (!v || first_elem(v))
        return CS_ERR_DECODE;
    if (is_nil(v))
        return CS_ERR_OK;
    *out = text_dup(v);
    return *out ? CS_ERR_OK : CS_ERR_NOMEM;
}

/* Parses an element's text as a decimal integer (blanks around allowed). */
static bool node_long(xmlNodePtr v, long long *out)
{
    xmlChar *t;
    char *end = NULL;
    long long x;
    bool ok;

    if (!v || is_nil(v) || first_elem(v))
        return false;
    t = xmlNodeGetContent(v);
    if (!t)
        return false;
    errno = 0;
    x = strtoll((const char *)t, &end, 10);
    ok = errno == 0 && end != (char *)t;
    while (ok && *end) {
        if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r')
            ok = false;
        end++;
    }
    xmlFree(t);
    if (ok)
        *out = x;
    return ok;
}

enum cs_err soap_return_long(const struct soap_response *r, long long *out)
{
    return node_long(return_value(r), out) ? CS_ERR_OK : CS_ERR_DECODE;
}

static size_t count_elems(xmlNodePtr n)
{
    size_t k = 0;

    for (xmlNodePtr c = n->children; c; c = c->next)
        k += is_elem(c, NULL);
    return k;
}

enum cs_err soap_return_int_array(const struct soap_response *r, int **out,
                                  size_t *n)
{
    xmlNodePtr arr = return_value(r);
    size_t cap;
    size_t k = 0;
    int *v;

    *out = NULL;
    *n = 0;
    if (!arr || is_nil(arr))
        return CS_ERR_DECODE;
    cap = count_elems(arr);
    if (cap == 0)
        return attr_is(arr, "type", "soapenc:Array", "SOAP-ENC:Array") ||
                       xmlHasProp(arr, (const xmlChar *)"arrayType")
                   ? CS_ERR_OK
                   : CS_ERR_DECODE;
    v = calloc(cap, sizeof(*v));
    if (!v)
        return CS_ERR_NOMEM;
    for (xmlNodePtr c = arr->children; c; c = c->next) {
        long long x;

        if (!is_elem(c, NULL))
            continue;
        if (!node_long(resolve(r, c), &x) || x < INT_MIN || x > INT_MAX) {
            free(v);
            return CS_ERR_DECODE;
        }
        v[k++] = (int)x;
    }
    *out = v;
    *n = k;
    return CS_ERR_OK;
}

void soap_strings_free(char **v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Appends the string value of @p item (resolved) to v; false on OOM/bad. */
static bool push_string(char **v, size_t *k, size_t cap, xmlNodePtr item)
{
    if (!item || first_elem(item) || *k >= cap)
        return false;
    if (is_nil(item)) {
        v[(*k)++] = NULL;
        return true;
    }
    v[*k] = text_dup(item);
    if (!v[*k])
        return false;
    (*k)++;
    return true;
}

enum cs_err soap_return_string_array(const struct soap_response *r, char ***out,
                                     size_t *n, size_t *row_len)
{
    xmlNodePtr arr = return_value(r);
    size_t cap = 0;
    size_t k = 0;
    bool first_row = true;
    char **v;

    *out = NULL;
    *n = 0;
    *row_len = 0;
    if (!arr || is_nil(arr))
        return CS_ERR_DECODE;
    /* Capacity: items, or the items of every row for String[][]. */
    for (xmlNodePtr c = arr->children; c; c = c->next) {
        xmlNodePtr item = is_elem(c, NULL) ? resolve(r, c) : NULL;

        if (!is_elem(c, NULL))
            continue;
        if (!item)
            return CS_ERR_DECODE;
        cap += first_elem(item) ? count_elems(item) : 1;
    }
    if (cap == 0)
        return CS_ERR_OK;
    v = calloc(cap, sizeof(*v));
    if (!v)
        return CS_ERR_NOMEM;
    for (xmlNodePtr c = arr->children; c; c = c->next) {
        xmlNodePtr item = is_elem(c, NULL) ? resolve(r, c) : NULL;

        if (!item)
            continue;
        if (!first_elem(item)) {
            if (!push_string(v, &k, cap, item))
                goto out_fail;
            continue;
        }
        if (first_row)
            *row_len = count_elems(item);
        first_row = false;
        for (xmlNodePtr e = item->children; e; e = e->next)
            if (is_elem(e, NULL) && !push_string(v, &k, cap, resolve(r, e)))
                goto out_fail;
    }
    *out = v;
    *n = k;
    return CS_ERR_OK;
out_fail:
    soap_strings_free(v, k);
    *row_len = 0;
    return CS_ERR_DECODE;
}

/* Length of a credentials bracket group "[a,b,c]" at p (no blanks inside,
 * at least two commas), 0 when p does not start one. */
static size_t bracket_group_len(const char *p)
{
    int commas = 0;

    for (size_t i = 1; p[i] && i < 512; i++) {
        if (p[i] == ']')
            return commas >= 2 ? i + 1 : 0;
        if (p[i] == ',')
            commas++;
        else if (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r' ||
                 p[i] == '[')
            return 0;
    }
    return 0;
}

void soap_fault_sanitize(const char *faultstring, const char *secret, char *out,
                         size_t out_size)
{
    const char *p = faultstring ? faultstring : "";
    size_t slen = secret ? strlen(secret) : 0;
    size_t o = 0;

    if (out_size == 0)
        return;
    while (*p && o + 1 < out_size) {
        char c;

        if (slen && strncmp(p, secret, slen) == 0) {
            for (const char *m = "***"; *m && o + 1 < out_size; m++)
                out[o++] = *m;
            p += slen;
            continue;
        }
        if (*p == '[') {
            size_t skip = bracket_group_len(p);
            if (skip) {
                p += skip;
                if (*p == ' ')
                    p++;
                continue;
            }
        }
        c = *p++;
        if (c == '\r' || c == '\n' || c == '\t')
            c = ' ';
        out[o++] = c;
    }
    /* Truncated inside a UTF-8 sequence: drop its lead and continuations. */
    if (*p && o > 0 && ((unsigned char)*p & 0xC0) == 0x80) {
        while (o > 0 && ((unsigned char)out[o - 1] & 0xC0) == 0x80)
            o--;
        if (o > 0 && ((unsigned char)out[o - 1] & 0xC0) == 0xC0)
            o--;
    }
    out[o] = '\0';
}
