/*
 * avro_codec - see avro_codec.h. Sections: schema entries and local loading,
 * registry fetch, payload scan, reader projection and default filling,
 * JSON -> value, decode/encode, accessors.
 */
#include "common/avro_codec.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "common/buf.h"

/* Limits for untrusted input and files. */
#define SCHEMA_FILE_MAX    (1024 * 1024) /* largest .avsc / registry body */
#define SCAN_DEPTH_MAX     64            /* nesting depth of a datum */
#define EMPTY_ITEMS_MAX    65536 /* items of zero-byte type per array/map */
#define FULLNAME_MAX       512
#define RESOLVE_REASON_MAX 256

/* One parsed schema: a writer (by id) or a reader (by full name). */
struct schema_entry {
    int32_t id;                /* schema id (local or registry) */
    char *fullname;            /* record full name; NULL if not a record */
    avro_schema_t schema;      /* owned reference */
    avro_value_iface_t *iface; /* generic class of schema, owned */
    json_t *defaults;          /* "<Record>.<field>" -> default JSON */
    json_t *ts_fields;         /* "<Record>.<field>" -> true (timestamp) */
    json_t *root;              /* the schema as JSON (keeps defaults) */
};

/* Cached resolution of (writer id, reader); failures are cached too. */
struct resolver_entry {
    int32_t writer_id;               /* writer schema id */
    size_t reader_idx;               /* index into codec->readers */
    enum cs_err status;              /* CS_ERR_OK or SCHEMA_INCOMPATIBLE */
    char reason[RESOLVE_REASON_MAX]; /* why resolution failed */
    bool direct;                     /* writer == reader: plain read */
    avro_value_iface_t *resolver;    /* resolved writer, owned */
    avro_value_t rvalue;             /* resolved-writer value, reused */
    bool have_rvalue;                /* rvalue was created */
    /* Reader minus the fields the writer lacks (NULL when none): data is
     * resolved into it, then copied into the reader with defaults. */
    avro_schema_t projected;
    avro_value_iface_t *projected_iface;
};

struct avro_codec {
    char *registry_url; /* NULL in local mode; no trailing '/' */
    CURL *curl;         /* reused for keep-alive; NULL in local mode */
    struct schema_entry *writers; /* by id */
    size_t nwriters;
    size_t capwriters;
    size_t last_writer; /* index of the last writer found (hot path) */
    struct schema_entry *readers; /* by full name */
    size_t nreaders;
    struct resolver_entry *resolvers;
    size_t nresolvers;
    size_t capresolvers;
    avro_reader_t reader; /* memory reader, re-pointed per decode */
};

static void set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
{
    va_list ap;

    if (!errstr || errstr_size == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errstr, errstr_size, fmt, ap);
    va_end(ap);
}

/* avro-c error strings end with newlines sometimes; trim them. */
static const char *avro_err_text(char *buf, size_t size)
{
    size_t n;

    snprintf(buf, size, "%s", avro_strerror());
    n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    return buf;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);

    if (p)
        memcpy(p, s, n);
    return p;
}

/* ------------------------------------------------------------------------
 * Schema entries
 * ------------------------------------------------------------------------ */

static void schema_fullname(avro_schema_t s, char *buf, size_t size)
{
    const char *ns = avro_schema_namespace(s);
    const char *name = avro_schema_name(s);

    if (!name)
        name = avro_schema_type_name(s);
    if (ns && ns[0])
        snprintf(buf, size, "%s.%s", ns, name);
    else
        snprintf(buf, size, "%s", name);
}

/* Short name: the part after the last '.'. */
static const char *short_name(const char *full)
{
    const char *dot = strrchr(full, '.');

    return dot ? dot + 1 : full;
}

static void collect_type_meta(const json_t *type, const char *ns,
                              const char *fieldkey, const char *shortkey,
                              json_t *defaults, json_t *ts_fields);

/* Records "<full>.<field>" and "<short>.<field>" keys of one record. */
static void collect_record_meta(const json_t *rec, const char *parent_ns,
                                json_t *defaults, json_t *ts_fields)
{
    const char *name = json_string_value(json_object_get(rec, "name"));
    const char *ns = json_string_value(json_object_get(rec, "namespace"));
    const json_t *fields = json_object_get(rec, "fields");
    char full[FULLNAME_MAX];
    char nsbuf[FULLNAME_MAX];
    size_t i;

    if (!name || !json_is_array(fields))
        return;
    if (strchr(name, '.')) {
        snprintf(full, sizeof(full), "%s", name);
        snprintf(nsbuf, sizeof(nsbuf), "%.*s",
                 (int)(short_name(name) - name - 1), name);
    } else {
        if (!ns)
            ns = parent_ns;
        if (ns && ns[0])
            snprintf(full, sizeof(full), "%s.%s", ns, name);
        else
            snprintf(full, sizeof(full), "%s", name);
        snprintf(nsbuf, sizeof(nsbuf), "%s", ns ? ns : "");
    }
    for (i = 0; i < json_array_size(fields); i++) {
        const json_t *f = json_array_get(fields, i);
        const char *fname = json_string_value(json_object_get(f, "name"));
        const json_t *def = json_object_get(f, "default");
        char key[FULLNAME_MAX + 128];
        char skey[FULLNAME_MAX + 128];

        if (!fname)
            continue;
        snprintf(key, sizeof(key), "%s.%s", full, fname);
        snprintf(skey, sizeof(skey), "%s.%s", short_name(full), fname);
        if (def) {
            json_object_set(defaults, key, (json_t *)def);
            json_object_set(defaults, skey, (json_t *)def);
        }
        collect_type_meta(json_object_get(f, "type"), nsbuf, key, skey,
                          defaults, ts_fields);
    }
}

/*
 * Walks a field's type: marks the field as a timestamp when a
 * timestamp-millis long appears in it, and descends into nested records.
 */
static void collect_type_meta(const json_t *type, const char *ns,
                              const char *fieldkey, const char *shortkey,
                              json_t *defaults, json_t *ts_fields)
{
    const char *t;
    const char *lt;
    size_t i;

    if (json_is_array(type)) {
        for (i = 0; i < json_array_size(type); i++)
            collect_type_meta(json_array_get(type, i), ns, fieldkey, shortkey,
                              defaults, ts_fields);
        return;
    }
    if (!json_is_object(type))
        return;
    t = json_string_value(json_object_get(type, "type"));
    lt = json_string_value(json_object_get(type, "logicalType"));
    if (!t)
        return;
    if (strcmp(t, "record") == 0 || strcmp(t, "error") == 0) {
        collect_record_meta(type, ns, defaults, ts_fields);
    } else if (strcmp(t, "array") == 0) {
        collect_type_meta(json_object_get(type, "items"), ns, fieldkey,
                          shortkey, defaults, ts_fields);
    } else if (strcmp(t, "map") == 0) {
        collect_type_meta(json_object_get(type, "values"), ns, fieldkey,
                          shortkey, defaults, ts_fields);
    } else if (strcmp(t, "long") == 0 && lt && fieldkey &&
               strcmp(lt, "timestamp-millis") == 0) {
        json_object_set_new(ts_fields, fieldkey, json_true());
        json_object_set_new(ts_fields, shortkey, json_true());
    }
}

static void schema_entry_clear(struct schema_entry *e)
{
    free(e->fullname);
    if (e->iface)
        avro_value_iface_decref(e->iface);
    if (e->schema)
        avro_schema_decref(e->schema);
    json_decref(e->defaults);
    json_decref(e->ts_fields);
    json_decref(e->root);
    memset(e, 0, sizeof(*e));
}

/* Parses schema text into *e (zeroed by the caller). */
static enum cs_err schema_entry_init(struct schema_entry *e, int32_t id,
                                     const char *text, size_t len, char *errstr,
                                     size_t errstr_size)
{
    json_error_t jerr;
    json_t *root;
    char abuf[256];
    char full[FULLNAME_MAX];

    e->id = id;
    root = json_loadb(text, len, 0, &jerr);
    if (!root) {
        set_err(errstr, errstr_size, "schema id %" PRId32 ": bad JSON: %s", id,
                jerr.text);
        return CS_ERR_UNKNOWN_SCHEMA;
    }
    e->defaults = json_object();
    e->ts_fields = json_object();
    if (!e->defaults || !e->ts_fields)
        goto out_nomem;
    collect_type_meta(root, "", NULL, NULL, e->defaults, e->ts_fields);
    e->root = root;
    root = NULL;
    if (avro_schema_from_json_length(text, len, &e->schema) != 0) {
        e->schema = NULL;
        set_err(errstr, errstr_size, "schema id %" PRId32 ": %s", id,
                avro_err_text(abuf, sizeof(abuf)));
        schema_entry_clear(e);
        return CS_ERR_UNKNOWN_SCHEMA;
    }
    e->iface = avro_generic_class_from_schema(e->schema);
    if (!e->iface)
        goto out_nomem;
    if (is_avro_record(e->schema)) {
        schema_fullname(e->schema, full, sizeof(full));
        e->fullname = dup_str(full);
        if (!e->fullname)
            goto out_nomem;
    }
    return CS_ERR_OK;

out_nomem:
    json_decref(root);
    schema_entry_clear(e);
    set_err(errstr, errstr_size, "out of memory");
    return CS_ERR_NOMEM;
}

/* Copies *src into *dst taking new references. */
static void schema_entry_share(struct schema_entry *dst,
                               const struct schema_entry *src)
{
    *dst = *src;
    dst->fullname = src->fullname ? dup_str(src->fullname) : NULL;
    avro_schema_incref(dst->schema);
    avro_value_iface_incref(dst->iface);
    json_incref(dst->defaults);
    json_incref(dst->ts_fields);
    json_incref(dst->root);
}

static enum cs_err read_file(const char *path, char **out, size_t *len_out,
                             char *errstr, size_t errstr_size)
{
    FILE *fp;
    char *buf;
    size_t n;

    fp = fopen(path, "rb");
    if (!fp) {
        set_err(errstr, errstr_size, "%s: %s", path, strerror(errno));
        return CS_ERR_CONFIG;
    }
    buf = malloc(SCHEMA_FILE_MAX + 1);
    if (!buf) {
        fclose(fp);
        return CS_ERR_NOMEM;
    }
    n = fread(buf, 1, SCHEMA_FILE_MAX + 1, fp);
    fclose(fp);
    if (n > SCHEMA_FILE_MAX) {
        free(buf);
        set_err(errstr, errstr_size, "%s: larger than %d bytes", path,
                SCHEMA_FILE_MAX);
        return CS_ERR_CONFIG;
    }
    buf[n] = '\0';
    *out = buf;
    *len_out = n;
    return CS_ERR_OK;
}

static struct schema_entry *writer_find(struct avro_codec *c, int32_t id)
{
    size_t i;

    if (c->last_writer < c->nwriters && c->writers[c->last_writer].id == id)
        return &c->writers[c->last_writer];
    for (i = 0; i < c->nwriters; i++) {
        if (c->writers[i].id == id) {
            c->last_writer = i;
            return &c->writers[i];
        }
    }
    return NULL;
}

/* Appends a zeroed slot to writers; NULL on out of memory. */
static struct schema_entry *writer_append(struct avro_codec *c)
{
    struct schema_entry *w;

    if (c->nwriters == c->capwriters) {
        size_t cap = c->capwriters ? c->capwriters * 2 : 16;
        struct schema_entry *p = realloc(c->writers, cap * sizeof(*p));

        if (!p)
            return NULL;
        c->writers = p;
        c->capwriters = cap;
    }
    w = &c->writers[c->nwriters];
    memset(w, 0, sizeof(*w));
    return w;
}

/* Parses one ids.txt line; returns false on a syntax error. A blank or
 * comment line yields *file = NULL. */
static bool ids_parse_line(char *line, int32_t *id, char **file)
{
    char *p = line;
    char *end;
    long v;
    size_t n;

    *file = NULL;
    end = strchr(p, '#');
    if (end)
        *end = '\0';
    while (*p == ' ' || *p == '\t')
        p++;
    n = strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r' ||
                     p[n - 1] == '\n'))
        p[--n] = '\0';
    if (n == 0)
        return true;
    errno = 0;
    v = strtol(p, &end, 10);
    if (errno != 0 || end == p || v < 0 || v > INT32_MAX ||
        (*end != ' ' && *end != '\t'))
        return false;
    while (*end == ' ' || *end == '\t')
        end++;
    if (*end == '\0' || strchr(end, ' ') || strchr(end, '\t') ||
        strstr(end, ".."))
        return false;
    *id = (int32_t)v;
    *file = end;
    return true;
}

/* Loads ids.txt into `local` (caller clears it on error). */
static enum cs_err load_local(const char *dir, struct schema_entry **local,
                              size_t *nlocal, char *errstr, size_t errstr_size)
{
    char path[4096];
    char line[1024];
    FILE *fp;
    int lineno = 0;
    enum cs_err rc = CS_ERR_OK;

    snprintf(path, sizeof(path), "%s/ids.txt", dir);
    fp = fopen(path, "r");
    if (!fp) {
        set_err(errstr, errstr_size, "%s: %s", path, strerror(errno));
        return CS_ERR_CONFIG;
    }
    while (fgets(line, sizeof(line), fp)) {
        int32_t id;
        char *file;
        char *text;
        size_t len;
        size_t i;
        struct schema_entry *p;

        lineno++;
        if (!ids_parse_line(line, &id, &file)) {
            set_err(errstr, errstr_size, "%s:%d: expected \"<id> <file>\"",
                    path, lineno);
            rc = CS_ERR_CONFIG;
            break;
        }
        if (!file)
            continue;
        for (i = 0; i < *nlocal; i++) {
            if ((*local)[i].id == id)
                break;
        }
        if (i < *nlocal) {
            set_err(errstr, errstr_size, "%s:%d: duplicate id %" PRId32, path,
                    lineno, id);
            rc = CS_ERR_CONFIG;
            break;
        }
        p = realloc(*local, (*nlocal + 1) * sizeof(*p));
        if (!p) {
            rc = CS_ERR_NOMEM;
            break;
        }
        *local = p;
        memset(&p[*nlocal], 0, sizeof(*p));
        snprintf(path, sizeof(path), "%s/%s", dir, file);
        rc = read_file(path, &text, &len, errstr, errstr_size);
        if (rc != CS_ERR_OK)
            break;
        rc = schema_entry_init(&p[*nlocal], id, text, len, errstr, errstr_size);
        free(text);
        if (rc != CS_ERR_OK) {
            rc = CS_ERR_CONFIG;
            break;
        }
        (*nlocal)++;
        snprintf(path, sizeof(path), "%s/ids.txt", dir);
    }
    fclose(fp);
    return rc;
}

/* Picks, for each record full name, the local entry with the highest id. */
static enum cs_err pick_readers(struct avro_codec *c,
                                const struct schema_entry *local, size_t nlocal)
{
    size_t i;
    size_t j;

    c->readers = calloc(nlocal ? nlocal : 1, sizeof(*c->readers));
    if (!c->readers)
        return CS_ERR_NOMEM;
    for (i = 0; i < nlocal; i++) {
        if (!local[i].fullname)
            continue;
        for (j = 0; j < c->nreaders; j++) {
            if (strcmp(c->readers[j].fullname, local[i].fullname) == 0)
                break;
        }
        if (j == c->nreaders) {
            schema_entry_share(&c->readers[c->nreaders++], &local[i]);
        } else if (local[i].id > c->readers[j].id) {
            schema_entry_clear(&c->readers[j]);
            schema_entry_share(&c->readers[j], &local[i]);
        }
    }
    return CS_ERR_OK;
}

struct avro_codec *avro_codec_new(const char *registry_url,
                                  const char *schemas_dir, char *errstr,
                                  size_t errstr_size)
{
    struct avro_codec *c;
    struct schema_entry *local = NULL;
    size_t nlocal = 0;
    size_t i;
    enum cs_err rc;

    c = calloc(1, sizeof(*c));
    if (!c) {
        set_err(errstr, errstr_size, "out of memory");
        return NULL;
    }
    rc = load_local(schemas_dir, &local, &nlocal, errstr, errstr_size);
    if (rc != CS_ERR_OK)
        goto out_free_local;
    rc = pick_readers(c, local, nlocal);
    if (rc != CS_ERR_OK)
        goto out_free_local;
    if (registry_url && registry_url[0]) {
        size_t n = strlen(registry_url);

        while (n > 0 && registry_url[n - 1] == '/')
            n--;
        c->registry_url = malloc(n + 1);
        if (!c->registry_url)
            goto out_free_local;
        memcpy(c->registry_url, registry_url, n);
        c->registry_url[n] = '\0';
        c->curl = curl_easy_init();
        if (!c->curl) {
            set_err(errstr, errstr_size, "curl_easy_init failed");
            goto out_free_local;
        }
        for (i = 0; i < nlocal; i++)
            schema_entry_clear(&local[i]);
        free(local);
        local = NULL;
    } else {
        /* Local mode: the ids.txt entries are the writer schemas. */
        c->writers = local;
        c->nwriters = nlocal;
        c->capwriters = nlocal;
        local = NULL;
    }
    c->reader = avro_reader_memory("", 0);
    if (!c->reader) {
        set_err(errstr, errstr_size, "out of memory");
        goto out_free_codec;
    }
    return c;

out_free_local:
    for (i = 0; i < nlocal; i++)
        schema_entry_clear(&local[i]);
    free(local);
out_free_codec:
    avro_codec_free(c);
    return NULL;
}

void avro_codec_free(struct avro_codec *codec)
{
    size_t i;

    if (!codec)
        return;
    for (i = 0; i < codec->nresolvers; i++) {
        struct resolver_entry *r = &codec->resolvers[i];

        if (r->have_rvalue)
            avro_value_decref(&r->rvalue);
        if (r->resolver)
            avro_value_iface_decref(r->resolver);
        if (r->projected_iface)
            avro_value_iface_decref(r->projected_iface);
        if (r->projected)
            avro_schema_decref(r->projected);
    }
    free(codec->resolvers);
    for (i = 0; i < codec->nwriters; i++)
        schema_entry_clear(&codec->writers[i]);
    free(codec->writers);
    for (i = 0; i < codec->nreaders; i++)
        schema_entry_clear(&codec->readers[i]);
    free(codec->readers);
    if (codec->reader)
        avro_reader_free(codec->reader);
    if (codec->curl)
        curl_easy_cleanup(codec->curl);
    free(codec->registry_url);
    free(codec);
}

/* ------------------------------------------------------------------------
 * Schema Registry
 * ------------------------------------------------------------------------ */

struct http_body {
    struct buf buf; /* the response body so far */
    bool too_big;   /* it passed SCHEMA_FILE_MAX */
};

/* curl write callback: collects up to SCHEMA_FILE_MAX bytes; returning
 * short (0) aborts the transfer. */
static size_t body_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct http_body *b = userdata;
    size_t n = size * nmemb;

    if (b->buf.len + n > SCHEMA_FILE_MAX) {
        b->too_big = true;
        return 0;
    }
    if (buf_append(&b->buf, ptr, n) != CS_ERR_OK)
        return 0;
    return n;
}

/* GETs the schema text of @p id. *text_out: caller frees. */
static enum cs_err registry_get(struct avro_codec *c, int32_t id,
                                char **text_out, char *errstr,
                                size_t errstr_size)
{
    struct http_body body = {{0}, false};
    char url[4096];
    long status = 0;
    CURLcode cc;
    json_t *root;
    json_error_t jerr;
    const char *type;
    const char *schema;
    enum cs_err rc = CS_ERR_OK;

    snprintf(url, sizeof(url), "%s/schemas/ids/%" PRId32, c->registry_url, id);
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
    curl_easy_setopt(c->curl, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, body_write);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &body);
    /* The URL may carry user:pass@; error text names only the id. */
    cc = curl_easy_perform(c->curl);
    if (cc != CURLE_OK) {
        set_err(errstr, errstr_size,
                "schema registry request for id %" PRId32 " failed: %s", id,
                body.too_big ? "response too large" : curl_easy_strerror(cc));
        rc = CS_ERR_REGISTRY_UNAVAILABLE;
        goto out_free_body;
    }
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
    if (status == 404) {
        set_err(errstr, errstr_size,
                "schema id %" PRId32 " not found in registry", id);
        rc = CS_ERR_UNKNOWN_SCHEMA;
        goto out_free_body;
    }
    if (status != 200) {
        set_err(errstr, errstr_size,
                "schema registry returned HTTP %ld for id %" PRId32, status,
                id);
        rc = CS_ERR_REGISTRY_UNAVAILABLE;
        goto out_free_body;
    }
    root =
        json_loadb(body.buf.data ? body.buf.data : "", body.buf.len, 0, &jerr);
    schema = json_string_value(json_object_get(root, "schema"));
    type = json_string_value(json_object_get(root, "schemaType"));
    if (!schema) {
        set_err(errstr, errstr_size,
                "schema registry answer for id %" PRId32 " has no schema", id);
        rc = CS_ERR_REGISTRY_UNAVAILABLE;
    } else if (type && strcmp(type, "AVRO") != 0) {
        set_err(errstr, errstr_size, "schema id %" PRId32 " is %s, not Avro",
                id, type);
        rc = CS_ERR_UNKNOWN_SCHEMA;
    } else {
        *text_out = dup_str(schema);
        if (!*text_out)
            rc = CS_ERR_NOMEM;
    }
    json_decref(root);
out_free_body:
    buf_free(&body.buf);
    return rc;
}

/* Finds the writer schema @p id, fetching it from the registry if needed. */
static enum cs_err writer_get(struct avro_codec *c, int32_t id,
                              struct schema_entry **out, char *errstr,
                              size_t errstr_size)
{
    struct schema_entry *w = writer_find(c, id);
    char *text = NULL;
    enum cs_err rc;

    if (w) {
        *out = w;
        return CS_ERR_OK;
    }
    if (!c->registry_url) {
        set_err(errstr, errstr_size, "schema id %" PRId32 " not found", id);
        return CS_ERR_UNKNOWN_SCHEMA;
    }
    rc = registry_get(c, id, &text, errstr, errstr_size);
    if (rc != CS_ERR_OK)
        return rc;
    w = writer_append(c);
    if (!w) {
        free(text);
        return CS_ERR_NOMEM;
    }
    rc = schema_entry_init(w, id, text, strlen(text), errstr, errstr_size);
    free(text);
    if (rc != CS_ERR_OK)
        return rc;
    c->nwriters++;
    *out = w;
    return CS_ERR_OK;
}

/* ------------------------------------------------------------------------
 * Payload scan: walks the writer schema over the bytes with every length,
 * count and index checked against what is left, before avro-c reads them.
 * ------------------------------------------------------------------------ */

struct scan {
    const uint8_t *buf; /* Avro payload (after the 5-byte header) */
    size_t len;         /* payload length */
    size_t pos;         /* read position in the payload */
    const char *field;  /* innermost record field, for messages */
    char *errstr;
    size_t errstr_size;
};

/* Byte offsets in messages count the whole frame, header included. */
static bool scan_truncated(struct scan *sc, const char *what)
{
    set_err(sc->errstr, sc->errstr_size,
            "truncated at byte %zu of %zu (%s of field '%s')",
            sc->pos + AVRO_CODEC_HEADER_SIZE, sc->len + AVRO_CODEC_HEADER_SIZE,
            what, sc->field ? sc->field : "(top)");
    return false;
}

static bool scan_invalid(struct scan *sc, const char *what, int64_t v)
{
    set_err(sc->errstr, sc->errstr_size,
            "invalid %s %" PRId64 " at byte %zu (field '%s')", what, v,
            sc->pos + AVRO_CODEC_HEADER_SIZE, sc->field ? sc->field : "(top)");
    return false;
}

/* Zig-zag varint; at most 10 bytes as avro-c. */
static bool scan_long(struct scan *sc, int64_t *out)
{
    uint64_t v = 0;
    unsigned shift = 0;
    size_t start = sc->pos;
    uint8_t b;

    do {
        if (sc->pos >= sc->len) {
            sc->pos = start;
            return scan_truncated(sc, "varint");
        }
        if (shift >= 70) {
            sc->pos = start;
            return scan_invalid(sc, "varint longer than 10 bytes", 0);
        }
        b = sc->buf[sc->pos++];
        v |= (uint64_t)(b & 0x7f) << (shift < 64 ? shift : 63);
        shift += 7;
    } while (b & 0x80);
    *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
    return true;
}

static bool scan_skip(struct scan *sc, int64_t n, const char *what)
{
    if (n < 0)
        return scan_invalid(sc, what, n);
    if ((uint64_t)n > sc->len - sc->pos)
        return scan_truncated(sc, what);
    sc->pos += (size_t)n;
    return true;
}

/* True if a datum of @p s can encode to zero bytes (null, empty record). */
static bool schema_can_be_empty(avro_schema_t s, int depth)
{
    size_t i;

    if (depth > SCAN_DEPTH_MAX)
        return false;
    if (is_avro_link(s))
        s = avro_schema_link_target(s);
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return true;
    case AVRO_FIXED:
        return avro_schema_fixed_size(s) == 0;
    case AVRO_RECORD:
        for (i = 0; i < avro_schema_record_size(s); i++) {
            avro_schema_t f = avro_schema_record_field_get_by_index(s, (int)i);

            if (!schema_can_be_empty(f, depth + 1))
                return false;
        }
        return true;
    default:
        return false;
    }
}

static bool scan_value(struct scan *sc, avro_schema_t s, int depth);

/* Array and map blocks: count [, byte size] items..., ending with 0. */
static bool scan_blocks(struct scan *sc, avro_schema_t items, bool is_map,
                        int depth)
{
    bool empty_items = !is_map && schema_can_be_empty(items, depth);
    int64_t total = 0;
    int64_t count;
    int64_t bytes;
    int64_t i;

    for (;;) {
        if (!scan_long(sc, &count))
            return false;
        if (count == 0)
            return true;
        if (count < 0) {
            if (count == INT64_MIN)
                return scan_invalid(sc, "block count", count);
            count = -count;
            if (!scan_long(sc, &bytes))
                return false;
            if (bytes < 0 || (uint64_t)bytes > sc->len - sc->pos)
                return scan_invalid(sc, "block size", bytes);
        }
        /* Each non-empty item takes at least one byte. */
        if (empty_items ? total + count > EMPTY_ITEMS_MAX
                        : (uint64_t)count > sc->len - sc->pos)
            return scan_invalid(sc, "block count", count);
        total += count;
        for (i = 0; i < count; i++) {
            if (is_map) {
                if (!scan_long(sc, &bytes) || !scan_skip(sc, bytes, "map key"))
                    return false;
            }
            if (!scan_value(sc, items, depth + 1))
                return false;
        }
    }
}

static bool scan_record(struct scan *sc, avro_schema_t s, int depth)
{
    const char *saved = sc->field;
    size_t i;

    for (i = 0; i < avro_schema_record_size(s); i++) {
        sc->field = avro_schema_record_field_name(s, (int)i);
        if (!scan_value(sc, avro_schema_record_field_get_by_index(s, (int)i),
                        depth + 1))
            return false;
    }
    sc->field = saved;
    return true;
}

static bool scan_value(struct scan *sc, avro_schema_t s, int depth)
{
    int64_t v;

    if (depth > SCAN_DEPTH_MAX)
        return scan_invalid(sc, "nesting depth", depth);
    if (is_avro_link(s))
        s = avro_schema_link_target(s);
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return true;
    case AVRO_BOOLEAN:
        return scan_skip(sc, 1, "boolean");
    case AVRO_INT32:
        if (!scan_long(sc, &v))
            return false;
        if (v < INT32_MIN || v > INT32_MAX)
            return scan_invalid(sc, "int", v);
        return true;
    case AVRO_INT64:
        return scan_long(sc, &v);
    case AVRO_FLOAT:
        return scan_skip(sc, 4, "float");
    case AVRO_DOUBLE:
        return scan_skip(sc, 8, "double");
    case AVRO_STRING:
    case AVRO_BYTES:
        if (!scan_long(sc, &v))
            return false;
        if (v < 0)
            return scan_invalid(sc, "length", v);
        return scan_skip(sc, v, "string/bytes");
    case AVRO_FIXED:
        return scan_skip(sc, avro_schema_fixed_size(s), "fixed");
    case AVRO_ENUM:
        if (!scan_long(sc, &v))
            return false;
        if (v < 0 || v >= avro_schema_enum_number_of_symbols(s))
            return scan_invalid(sc, "enum index", v);
        return true;
    case AVRO_UNION:
        if (!scan_long(sc, &v))
            return false;
        if (v < 0 || (uint64_t)v >= avro_schema_union_size(s))
            return scan_invalid(sc, "union branch", v);
        return scan_value(sc, avro_schema_union_branch(s, (int)v), depth + 1);
    case AVRO_ARRAY:
        return scan_blocks(sc, avro_schema_array_items(s), false, depth);
    case AVRO_MAP:
        return scan_blocks(sc, avro_schema_map_values(s), true, depth);
    case AVRO_RECORD:
        return scan_record(sc, s, depth);
    default:
        return scan_invalid(sc, "schema type", avro_typeof(s));
    }
}

/* ------------------------------------------------------------------------
 * Reader projection: avro-c's resolved writer rejects reader fields the
 * writer lacks, so data is resolved into the reader minus those fields and
 * then copied into a full reader value, the missing fields taking their
 * defaults.
 * ------------------------------------------------------------------------ */

static bool json_type_is(const json_t *t, const char *name)
{
    const char *s;

    if (json_is_string(t))
        return strcmp(json_string_value(t), name) == 0;
    s = json_string_value(json_object_get(t, "type"));
    return s && strcmp(s, name) == 0;
}

static json_t *project_type(const json_t *rt, avro_schema_t ws, bool *pruned,
                            char *errstr, size_t errstr_size);

static json_t *project_record(const json_t *rt, avro_schema_t ws, bool *pruned,
                              char *errstr, size_t errstr_size)
{
    const json_t *fields = json_object_get(rt, "fields");
    json_t *out = json_deep_copy(rt);
    json_t *nf = json_array();
    size_t i;

    if (!out || !nf)
        goto out_free;
    for (i = 0; i < json_array_size(fields); i++) {
        const json_t *f = json_array_get(fields, i);
        const char *name = json_string_value(json_object_get(f, "name"));
        int wi = name ? avro_schema_record_field_get_index(ws, name) : -1;
        json_t *copy;
        json_t *ptype;

        if (wi < 0) {
            if (!json_object_get(f, "default")) {
                set_err(errstr, errstr_size,
                        "reader field '%s' is missing in the writer and has "
                        "no default",
                        name ? name : "?");
                goto out_free;
            }
            *pruned = true;
            continue;
        }
        ptype = project_type(json_object_get(f, "type"),
                             avro_schema_record_field_get_by_index(ws, wi),
                             pruned, errstr, errstr_size);
        copy = json_deep_copy(f);
        if (!ptype || !copy || json_object_set_new(copy, "type", ptype) ||
            json_array_append_new(nf, copy)) {
            json_decref(copy);
            goto out_free;
        }
    }
    if (json_object_set_new(out, "fields", nf))
        goto out_free_out;
    return out;

out_free:
    json_decref(nf);
out_free_out:
    json_decref(out);
    return NULL;
}

/* Writer branch matching reader branch @p rb (same type, same name). */
static avro_schema_t match_writer_branch(const json_t *rb, avro_schema_t ws)
{
    const char *rname = json_string_value(json_object_get(rb, "name"));
    size_t i;

    for (i = 0; i < avro_schema_union_size(ws); i++) {
        avro_schema_t b = avro_schema_union_branch(ws, (int)i);

        if (is_avro_link(b))
            b = avro_schema_link_target(b);
        if (!json_type_is(rb, avro_schema_type_name(b)) &&
            !(json_type_is(rb, "record") && is_avro_record(b)))
            continue;
        if (!rname || (avro_schema_name(b) &&
                       strcmp(short_name(rname), avro_schema_name(b)) == 0))
            return b;
    }
    return NULL;
}

static json_t *project_type(const json_t *rt, avro_schema_t ws, bool *pruned,
                            char *errstr, size_t errstr_size)
{
    json_t *out;
    size_t i;

    if (is_avro_link(ws))
        ws = avro_schema_link_target(ws);
    if (json_is_array(rt)) {
        out = json_array();
        for (i = 0; out && i < json_array_size(rt); i++) {
            const json_t *rb = json_array_get(rt, i);
            avro_schema_t wb =
                is_avro_union(ws) ? match_writer_branch(rb, ws) : ws;
            json_t *pb = (wb && json_is_object(rb))
                             ? project_type(rb, wb, pruned, errstr, errstr_size)
                             : json_deep_copy(rb);

            if (!pb || json_array_append_new(out, pb)) {
                json_decref(out);
                return NULL;
            }
        }
        return out;
    }
    if (json_type_is(rt, "record") && is_avro_record(ws))
        return project_record(rt, ws, pruned, errstr, errstr_size);
    if (json_is_object(rt) &&
        ((json_type_is(rt, "array") && is_avro_array(ws)) ||
         (json_type_is(rt, "map") && is_avro_map(ws)))) {
        const char *key = is_avro_array(ws) ? "items" : "values";
        json_t *inner =
            project_type(json_object_get(rt, key),
                         is_avro_array(ws) ? avro_schema_array_items(ws)
                                           : avro_schema_map_values(ws),
                         pruned, errstr, errstr_size);

        if (!inner)
            return NULL;
        out = json_deep_copy(rt);
        if (!out) {
            json_decref(inner);
            return NULL;
        }
        if (json_object_set_new(out, key, inner)) {
            json_decref(out);
            return NULL;
        }
        return out;
    }
    return json_deep_copy(rt);
}

static enum cs_err json_to_value(const struct schema_entry *e, avro_value_t *v,
                                 const json_t *j, bool ts_ok, const char *field,
                                 char *errstr, size_t errstr_size);

/* Copies @p src (projected reader) into @p dst (reader), filling defaults. */
static enum cs_err copy_fill(const struct schema_entry *rd, avro_value_t *src,
                             avro_value_t *dst, char *errstr,
                             size_t errstr_size)
{
    avro_value_t sc;
    avro_value_t dc;
    const char *name;
    char full[FULLNAME_MAX];
    char key[FULLNAME_MAX + 128];
    size_t n;
    size_t i;
    int disc;
    enum cs_err rc;

    switch (avro_value_get_type(dst)) {
    case AVRO_RECORD:
        avro_value_get_size(dst, &n);
        schema_fullname(avro_value_get_schema(dst), full, sizeof(full));
        for (i = 0; i < n; i++) {
            avro_value_get_by_index(dst, i, &dc, &name);
            if (avro_value_get_by_name(src, name, &sc, NULL) == 0) {
                rc = copy_fill(rd, &sc, &dc, errstr, errstr_size);
            } else {
                const json_t *def;

                snprintf(key, sizeof(key), "%s.%s", full, name);
                def = json_object_get(rd->defaults, key);
                if (!def) {
                    set_err(errstr, errstr_size, "no default for %s", key);
                    return CS_ERR_SCHEMA_INCOMPATIBLE;
                }
                rc = json_to_value(rd, &dc, def, false, name, errstr,
                                   errstr_size);
            }
            if (rc != CS_ERR_OK)
                return rc;
        }
        return CS_ERR_OK;
    case AVRO_UNION:
        if (avro_value_get_discriminant(src, &disc) ||
            avro_value_get_current_branch(src, &sc) ||
            avro_value_set_branch(dst, disc, &dc))
            return CS_ERR_DECODE;
        return copy_fill(rd, &sc, &dc, errstr, errstr_size);
    case AVRO_ARRAY:
        avro_value_get_size(src, &n);
        for (i = 0; i < n; i++) {
            if (avro_value_get_by_index(src, i, &sc, NULL) ||
                avro_value_append(dst, &dc, NULL))
                return CS_ERR_NOMEM;
            rc = copy_fill(rd, &sc, &dc, errstr, errstr_size);
            if (rc != CS_ERR_OK)
                return rc;
        }
        return CS_ERR_OK;
    case AVRO_MAP:
        avro_value_get_size(src, &n);
        for (i = 0; i < n; i++) {
            if (avro_value_get_by_index(src, i, &sc, &name) ||
                avro_value_add(dst, name, &dc, NULL, NULL))
                return CS_ERR_NOMEM;
            rc = copy_fill(rd, &sc, &dc, errstr, errstr_size);
            if (rc != CS_ERR_OK)
                return rc;
        }
        return CS_ERR_OK;
    default:
        return avro_value_copy_fast(dst, src) ? CS_ERR_DECODE : CS_ERR_OK;
    }
}

/* Builds the resolution of writer @p w into reader @p rd into *r. */
static void resolver_build(struct resolver_entry *r, struct schema_entry *w,
                           struct schema_entry *rd)
{
    char abuf[256];
    json_t *pjson = NULL;
    char *ptext = NULL;
    avro_schema_t target = rd->schema;
    bool pruned = false;

    r->status = CS_ERR_SCHEMA_INCOMPATIBLE;
    if (avro_schema_equal(w->schema, rd->schema)) {
        r->direct = true;
        r->status = CS_ERR_OK;
        return;
    }
    pjson = project_type(rd->root, w->schema, &pruned, r->reason,
                         sizeof(r->reason));
    if (!pjson) {
        if (!r->reason[0])
            snprintf(r->reason, sizeof(r->reason), "cannot project reader");
        goto out_free_json;
    }
    if (pruned) {
        ptext = json_dumps(pjson, JSON_COMPACT);
        if (!ptext || avro_schema_from_json_length(ptext, strlen(ptext),
                                                   &r->projected) != 0) {
            r->projected = NULL;
            snprintf(r->reason, sizeof(r->reason), "projected reader: %s",
                     avro_err_text(abuf, sizeof(abuf)));
            goto out_free_json;
        }
        r->projected_iface = avro_generic_class_from_schema(r->projected);
        if (!r->projected_iface)
            goto out_free_json;
        target = r->projected;
    }
    r->resolver = avro_resolved_writer_new(w->schema, target);
    if (!r->resolver) {
        snprintf(r->reason, sizeof(r->reason), "%s",
                 avro_err_text(abuf, sizeof(abuf)));
        goto out_free_json;
    }
    if (avro_resolved_writer_new_value(r->resolver, &r->rvalue) != 0) {
        snprintf(r->reason, sizeof(r->reason), "out of memory");
        goto out_free_json;
    }
    r->have_rvalue = true;
    r->status = CS_ERR_OK;
out_free_json:
    free(ptext);
    json_decref(pjson);
}

/* ------------------------------------------------------------------------
 * JSON -> value
 * ------------------------------------------------------------------------ */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    int64_t era;
    unsigned yoe;
    unsigned doy;
    unsigned doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = (unsigned)(y - era * 400);
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool parse_digits(const char **p, int n, int *out)
{
    int v = 0;
    int i;

    for (i = 0; i < n; i++) {
        if ((*p)[i] < '0' || (*p)[i] > '9')
            return false;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return true;
}

/* RFC 3339 "YYYY-MM-DDTHH:MM:SS[.fff...](Z|+hh:mm|-hh:mm)" -> epoch ms. */
static bool parse_rfc3339_ms(const char *s, int64_t *out)
{
    int y, mo, d, h, mi, sec, oh = 0, om = 0, ms = 0, scale = 100;
    int64_t t;
    int sign = 0;

    if (!parse_digits(&s, 4, &y) || *s++ != '-' || !parse_digits(&s, 2, &mo) ||
        *s++ != '-' || !parse_digits(&s, 2, &d) ||
        (*s != 'T' && *s != 't' && *s != ' '))
        return false;
    s++;
    if (!parse_digits(&s, 2, &h) || *s++ != ':' || !parse_digits(&s, 2, &mi) ||
        *s++ != ':' || !parse_digits(&s, 2, &sec))
        return false;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return false;
    if (*s == '.') {
        s++;
        if (*s < '0' || *s > '9')
            return false;
        for (; *s >= '0' && *s <= '9'; s++) {
            ms += (*s - '0') * scale;
            scale /= 10;
        }
    }
    if (*s == 'Z' || *s == 'z') {
        s++;
    } else if (*s == '+' || *s == '-') {
        sign = *s++ == '+' ? 1 : -1;
        if (!parse_digits(&s, 2, &oh) || *s++ != ':' ||
            !parse_digits(&s, 2, &om) || oh > 23 || om > 59)
            return false;
    } else {
        return false;
    }
    if (*s != '\0')
        return false;
    t = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 +
        mi * 60 + sec - sign * (oh * 3600 + om * 60);
    *out = t * 1000 + ms;
    return true;
}

/* Does JSON @p j fit branch schema @p b (by JSON kind only)? */
static bool json_fits(const json_t *j, avro_schema_t b, bool ts_ok)
{
    if (is_avro_link(b))
        b = avro_schema_link_target(b);
    switch (avro_typeof(b)) {
    case AVRO_NULL:
        return json_is_null(j);
    case AVRO_BOOLEAN:
        return json_is_boolean(j);
    case AVRO_INT32:
    case AVRO_INT64:
        return json_is_integer(j) ||
               (ts_ok && is_avro_int64(b) && json_is_string(j));
    case AVRO_FLOAT:
    case AVRO_DOUBLE:
        return json_is_number(j);
    case AVRO_STRING:
    case AVRO_BYTES:
    case AVRO_FIXED:
        return json_is_string(j);
    case AVRO_ENUM:
        return json_is_string(j) &&
               avro_schema_enum_get_by_name(b, json_string_value(j)) >= 0;
    case AVRO_ARRAY:
        return json_is_array(j);
    case AVRO_MAP:
    case AVRO_RECORD:
        return json_is_object(j);
    default:
        return false;
    }
}

static enum cs_err bad_json(const char *field, const char *what, char *errstr,
                            size_t errstr_size)
{
    set_err(errstr, errstr_size, "field '%s': %s", field ? field : "(top)",
            what);
    return CS_ERR_INVALID_EVENT;
}

static enum cs_err union_from_json(const struct schema_entry *e,
                                   avro_value_t *v, const json_t *j, bool ts_ok,
                                   const char *field, char *errstr,
                                   size_t errstr_size)
{
    avro_schema_t s = avro_value_get_schema(v);
    avro_value_t branch;
    size_t n = avro_schema_union_size(s);
    size_t i;

    /* {"<type name>": value}: the Avro JSON encoding of a union. */
    if (json_is_object(j) && json_object_size(j) == 1) {
        const char *key = json_object_iter_key(json_object_iter((json_t *)j));

        for (i = 0; i < n; i++) {
            avro_schema_t b = avro_schema_union_branch(s, (int)i);
            char full[FULLNAME_MAX];

            if (is_avro_link(b))
                b = avro_schema_link_target(b);
            schema_fullname(b, full, sizeof(full));
            if (strcmp(key, full) == 0 ||
                strcmp(key, avro_schema_type_name(b)) == 0 ||
                (avro_schema_name(b) &&
                 strcmp(key, avro_schema_name(b)) == 0)) {
                if (avro_value_set_branch(v, (int)i, &branch))
                    return CS_ERR_NOMEM;
                return json_to_value(e, &branch, json_object_get(j, key), ts_ok,
                                     field, errstr, errstr_size);
            }
        }
    }
    for (i = 0; i < n; i++) {
        if (!json_fits(j, avro_schema_union_branch(s, (int)i), ts_ok))
            continue;
        if (avro_value_set_branch(v, (int)i, &branch))
            return CS_ERR_NOMEM;
        return json_to_value(e, &branch, j, ts_ok, field, errstr, errstr_size);
    }
    return bad_json(field, "value fits no branch of the union", errstr,
                    errstr_size);
}

/* True if @p v is a long or a union with a long branch. */
static bool may_hold_long(avro_value_t *v)
{
    avro_schema_t s = avro_value_get_schema(v);
    size_t i;

    if (is_avro_int64(s))
        return true;
    if (!is_avro_union(s))
        return false;
    for (i = 0; i < avro_schema_union_size(s); i++) {
        if (is_avro_int64(avro_schema_union_branch(s, (int)i)))
            return true;
    }
    return false;
}

static enum cs_err record_from_json(const struct schema_entry *e,
                                    avro_value_t *v, const json_t *j,
                                    char *errstr, size_t errstr_size)
{
    avro_schema_t s = avro_value_get_schema(v);
    char full[FULLNAME_MAX] = "";
    char key[FULLNAME_MAX + 128];
    const char *jkey;
    json_t *jval;
    size_t i;
    enum cs_err rc;

    if (!json_is_object(j))
        return bad_json(avro_schema_name(s), "expected an object", errstr,
                        errstr_size);
    json_object_foreach((json_t *)j, jkey, jval)
    {
        if (avro_schema_record_field_get_index(s, jkey) < 0) {
            set_err(errstr, errstr_size, "unknown field '%s' in %s", jkey,
                    avro_schema_name(s));
            return CS_ERR_INVALID_EVENT;
        }
    }
    for (i = 0; i < avro_schema_record_size(s); i++) {
        avro_value_t child;
        const char *name;
        const json_t *fj;
        bool ts_ok;

        avro_value_get_by_index(v, i, &child, &name);
        fj = json_object_get(j, name);
        /* The "<Record>.<field>" key is only needed for a default or for
         * a long given as a string (the hot path needs neither). */
        key[0] = '\0';
        if (!fj || (json_is_string(fj) && may_hold_long(&child))) {
            if (!full[0])
                schema_fullname(s, full, sizeof(full));
            snprintf(key, sizeof(key), "%s.%s", full, name);
            if (!fj)
                fj = json_object_get(e->defaults, key);
        }
        if (!fj) {
            set_err(errstr, errstr_size, "missing required field '%s' in %s",
                    name, full);
            return CS_ERR_INVALID_EVENT;
        }
        ts_ok = key[0] && json_object_get(e->ts_fields, key) != NULL;
        rc = json_to_value(e, &child, fj, ts_ok, name, errstr, errstr_size);
        if (rc != CS_ERR_OK)
            return rc;
    }
    return CS_ERR_OK;
}

static enum cs_err long_from_json(avro_value_t *v, const json_t *j, bool ts_ok,
                                  const char *field, char *errstr,
                                  size_t errstr_size)
{
    int64_t ms;

    if (json_is_integer(j))
        return avro_value_set_long(v, json_integer_value(j)) ? CS_ERR_NOMEM
                                                             : CS_ERR_OK;
    if (ts_ok && json_is_string(j)) {
        if (!parse_rfc3339_ms(json_string_value(j), &ms))
            return bad_json(field, "not an RFC 3339 timestamp", errstr,
                            errstr_size);
        return avro_value_set_long(v, ms) ? CS_ERR_NOMEM : CS_ERR_OK;
    }
    return bad_json(field, "expected an integer", errstr, errstr_size);
}

static enum cs_err json_to_value(const struct schema_entry *e, avro_value_t *v,
                                 const json_t *j, bool ts_ok, const char *field,
                                 char *errstr, size_t errstr_size)
{
    avro_schema_t s = avro_value_get_schema(v);
    avro_value_t child;
    const char *key;
    json_t *jv;
    size_t i;
    int sym;
    enum cs_err rc;

    switch (avro_value_get_type(v)) {
    case AVRO_NULL:
        if (!json_is_null(j))
            return bad_json(field, "expected null", errstr, errstr_size);
        return avro_value_set_null(v) ? CS_ERR_NOMEM : CS_ERR_OK;
    case AVRO_BOOLEAN:
        if (!json_is_boolean(j))
            return bad_json(field, "expected a boolean", errstr, errstr_size);
        return avro_value_set_boolean(v, json_is_true(j)) ? CS_ERR_NOMEM
                                                          : CS_ERR_OK;
    case AVRO_INT32:
        if (!json_is_integer(j) || json_integer_value(j) < INT32_MIN ||
            json_integer_value(j) > INT32_MAX)
            return bad_json(field, "expected a 32-bit integer", errstr,
                            errstr_size);
        return avro_value_set_int(v, (int32_t)json_integer_value(j))
                   ? CS_ERR_NOMEM
                   : CS_ERR_OK;
    case AVRO_INT64:
        return long_from_json(v, j, ts_ok, field, errstr, errstr_size);
    case AVRO_FLOAT:
    case AVRO_DOUBLE:
        if (!json_is_number(j))
            return bad_json(field, "expected a number", errstr, errstr_size);
        if (avro_value_get_type(v) == AVRO_FLOAT)
            return avro_value_set_float(v, (float)json_number_value(j))
                       ? CS_ERR_NOMEM
                       : CS_ERR_OK;
        return avro_value_set_double(v, json_number_value(j)) ? CS_ERR_NOMEM
                                                              : CS_ERR_OK;
    case AVRO_STRING:
        if (!json_is_string(j))
            return bad_json(field, "expected a string", errstr, errstr_size);
        /* avro-c string sizes include the terminating NUL. */
        return avro_value_set_string_len(v, json_string_value(j),
                                         json_string_length(j) + 1)
                   ? CS_ERR_NOMEM
                   : CS_ERR_OK;
    case AVRO_BYTES:
        if (!json_is_string(j))
            return bad_json(field, "expected a string", errstr, errstr_size);
        return avro_value_set_bytes(v, (void *)json_string_value(j),
                                    json_string_length(j))
                   ? CS_ERR_NOMEM
                   : CS_ERR_OK;
    case AVRO_FIXED:
        if (!json_is_string(j) ||
            (int64_t)json_string_length(j) != avro_schema_fixed_size(s))
            return bad_json(field, "expected a string of the fixed size",
                            errstr, errstr_size);
        return avro_value_set_fixed(v, (void *)json_string_value(j),
                                    json_string_length(j))
                   ? CS_ERR_NOMEM
                   : CS_ERR_OK;
    case AVRO_ENUM:
        sym = json_is_string(j)
                  ? avro_schema_enum_get_by_name(s, json_string_value(j))
                  : -1;
        if (sym < 0)
            return bad_json(field, "not a symbol of the enum", errstr,
                            errstr_size);
        return avro_value_set_enum(v, sym) ? CS_ERR_NOMEM : CS_ERR_OK;
    case AVRO_UNION:
        return union_from_json(e, v, j, ts_ok, field, errstr, errstr_size);
    case AVRO_RECORD:
        return record_from_json(e, v, j, errstr, errstr_size);
    case AVRO_MAP:
        if (!json_is_object(j))
            return bad_json(field, "expected an object (map)", errstr,
                            errstr_size);
        json_object_foreach((json_t *)j, key, jv)
        {
            if (avro_value_add(v, key, &child, NULL, NULL))
                return CS_ERR_NOMEM;
            rc =
                json_to_value(e, &child, jv, ts_ok, field, errstr, errstr_size);
            if (rc != CS_ERR_OK)
                return rc;
        }
        return CS_ERR_OK;
    case AVRO_ARRAY:
        if (!json_is_array(j))
            return bad_json(field, "expected an array", errstr, errstr_size);
        for (i = 0; i < json_array_size(j); i++) {
            if (avro_value_append(v, &child, NULL))
                return CS_ERR_NOMEM;
            rc = json_to_value(e, &child, json_array_get(j, i), ts_ok, field,
                               errstr, errstr_size);
            if (rc != CS_ERR_OK)
                return rc;
        }
        return CS_ERR_OK;
    default:
        return bad_json(field, "unsupported schema type", errstr, errstr_size);
    }
}

enum cs_err avro_codec_from_json(struct avro_codec *codec, int32_t schema_id,
                                 const json_t *json, avro_value_t *out,
                                 char *errstr, size_t errstr_size)
{
    struct schema_entry *w;
    enum cs_err rc;

    rc = writer_get(codec, schema_id, &w, errstr, errstr_size);
    if (rc != CS_ERR_OK)
        return rc;
    if (avro_generic_value_new(w->iface, out) != 0) {
        set_err(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    rc = json_to_value(w, out, json, false, NULL, errstr, errstr_size);
    if (rc != CS_ERR_OK) {
        avro_value_decref(out);
        memset(out, 0, sizeof(*out));
    }
    return rc;
}

/* ------------------------------------------------------------------------
 * Decode / encode
 * ------------------------------------------------------------------------ */

static struct schema_entry *reader_find(struct avro_codec *c, const char *name,
                                        size_t *idx)
{
    size_t i;

    for (i = 0; i < c->nreaders; i++) {
        if (strcmp(c->readers[i].fullname, name) == 0) {
            *idx = i;
            return &c->readers[i];
        }
    }
    return NULL;
}

/* Cached resolution of writer @p w into reader @p reader_idx; built on
 * first use. NULL only on out of memory. */
static struct resolver_entry *
resolver_get(struct avro_codec *c, struct schema_entry *w, size_t reader_idx)
{
    struct resolver_entry *r;
    size_t i;

    for (i = 0; i < c->nresolvers; i++) {
        r = &c->resolvers[i];
        if (r->writer_id == w->id && r->reader_idx == reader_idx)
            return r;
    }
    if (c->nresolvers == c->capresolvers) {
        size_t ncap = c->capresolvers ? c->capresolvers * 2 : 8;
        struct resolver_entry *p = realloc(c->resolvers, ncap * sizeof(*p));

        if (!p)
            return NULL;
        c->resolvers = p;
        c->capresolvers = ncap;
    }
    r = &c->resolvers[c->nresolvers++];
    memset(r, 0, sizeof(*r));
    r->writer_id = w->id;
    r->reader_idx = reader_idx;
    resolver_build(r, w, &c->readers[reader_idx]);
    return r;
}

/* Reads the payload through resolver @p r into a new reader value *out. */
static enum cs_err
decode_payload(struct avro_codec *c, struct resolver_entry *r,
               struct schema_entry *w, struct schema_entry *rd, const char *p,
               size_t n, avro_value_t *out, char *errstr, size_t errstr_size)
{
    avro_value_t tmp;
    avro_value_t *target = out;
    char abuf[256];
    enum cs_err rc = CS_ERR_OK;
    int arc;

    (void)w;
    if (avro_generic_value_new(rd->iface, out) != 0)
        return CS_ERR_NOMEM;
    if (r->projected_iface) {
        if (avro_generic_value_new(r->projected_iface, &tmp) != 0) {
            rc = CS_ERR_NOMEM;
            goto out_free_out;
        }
        target = &tmp;
    }
    avro_reader_memory_set_source(c->reader, p, (int64_t)n);
    if (r->direct) {
        arc = avro_value_read(c->reader, target);
    } else {
        avro_resolved_writer_set_dest(&r->rvalue, target);
        arc = avro_value_read(c->reader, &r->rvalue);
        avro_resolved_writer_clear_dest(&r->rvalue);
    }
    if (arc != 0) {
        set_err(errstr, errstr_size, "avro: %s",
                avro_err_text(abuf, sizeof(abuf)));
        rc = CS_ERR_DECODE;
    } else if (target != out) {
        rc = copy_fill(rd, target, out, errstr, errstr_size);
    }
    if (target != out)
        avro_value_decref(&tmp);
out_free_out:
    if (rc != CS_ERR_OK) {
        avro_value_decref(out);
        memset(out, 0, sizeof(*out));
    }
    return rc;
}

enum cs_err avro_codec_decode(struct avro_codec *codec, const char *reader_name,
                              const void *buf, size_t len, avro_value_t *out,
                              int32_t *schema_id_out, char *errstr,
                              size_t errstr_size)
{
    const uint8_t *b = buf;
    struct schema_entry *w;
    struct schema_entry *rd;
    struct resolver_entry *r;
    struct scan sc;
    size_t reader_idx;
    int32_t id;
    enum cs_err rc;

    if (len < AVRO_CODEC_HEADER_SIZE) {
        set_err(errstr, errstr_size, "frame of %zu bytes, need at least %d",
                len, AVRO_CODEC_HEADER_SIZE);
        return CS_ERR_BAD_FRAME;
    }
    if (b[0] != 0) {
        set_err(errstr, errstr_size, "magic byte 0x%02x, expected 0x00", b[0]);
        return CS_ERR_BAD_FRAME;
    }
    id = (int32_t)((uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 |
                   (uint32_t)b[3] << 8 | (uint32_t)b[4]);
    if (schema_id_out)
        *schema_id_out = id;
    rd = reader_find(codec, reader_name, &reader_idx);
    if (!rd) {
        set_err(errstr, errstr_size, "no reader schema named %s", reader_name);
        return CS_ERR_INVALID_ARG;
    }
    rc = writer_get(codec, id, &w, errstr, errstr_size);
    if (rc != CS_ERR_OK)
        return rc;
    r = resolver_get(codec, w, reader_idx);
    if (!r)
        return CS_ERR_NOMEM;
    if (r->status != CS_ERR_OK) {
        set_err(errstr, errstr_size,
                "schema id %" PRId32 " cannot be read as %s: %s", id,
                reader_name, r->reason);
        return r->status;
    }
    sc.buf = b + AVRO_CODEC_HEADER_SIZE;
    sc.len = len - AVRO_CODEC_HEADER_SIZE;
    sc.pos = 0;
    sc.field = NULL;
    sc.errstr = errstr;
    sc.errstr_size = errstr_size;
    if (!scan_value(&sc, w->schema, 0))
        return CS_ERR_DECODE;
    if (sc.pos != sc.len) {
        set_err(errstr, errstr_size,
                "%zu trailing bytes after the datum (ends at byte %zu of "
                "%zu)",
                sc.len - sc.pos, sc.pos + AVRO_CODEC_HEADER_SIZE, len);
        return CS_ERR_DECODE;
    }
    return decode_payload(codec, r, w, rd, (const char *)sc.buf, sc.len, out,
                          errstr, errstr_size);
}

enum cs_err avro_codec_encode(struct avro_codec *codec, int32_t schema_id,
                              avro_value_t *value, void **buf_out,
                              size_t *len_out, char *errstr, size_t errstr_size)
{
    struct schema_entry *w;
    avro_schema_t vs = avro_value_get_schema(value);
    avro_writer_t aw;
    uint8_t *buf;
    size_t size;
    char abuf[256];
    enum cs_err rc;

    rc = writer_get(codec, schema_id, &w, errstr, errstr_size);
    if (rc != CS_ERR_OK)
        return rc;
    if (vs != w->schema && !avro_schema_equal(vs, w->schema)) {
        set_err(errstr, errstr_size,
                "value is not an instance of schema id %" PRId32, schema_id);
        return CS_ERR_INVALID_ARG;
    }
    if (avro_value_sizeof(value, &size) != 0) {
        set_err(errstr, errstr_size, "avro: %s",
                avro_err_text(abuf, sizeof(abuf)));
        return CS_ERR_INVALID_ARG;
    }
    buf = malloc(size + AVRO_CODEC_HEADER_SIZE);
    if (!buf)
        return CS_ERR_NOMEM;
    buf[0] = 0;
    buf[1] = (uint8_t)((uint32_t)schema_id >> 24);
    buf[2] = (uint8_t)((uint32_t)schema_id >> 16);
    buf[3] = (uint8_t)((uint32_t)schema_id >> 8);
    buf[4] = (uint8_t)schema_id;
    aw = avro_writer_memory((const char *)buf + AVRO_CODEC_HEADER_SIZE,
                            (int64_t)size);
    if (!aw) {
        free(buf);
        return CS_ERR_NOMEM;
    }
    if (avro_value_write(aw, value) != 0) {
        set_err(errstr, errstr_size, "avro: %s",
                avro_err_text(abuf, sizeof(abuf)));
        avro_writer_free(aw);
        free(buf);
        return CS_ERR_INVALID_ARG;
    }
    avro_writer_free(aw);
    *buf_out = buf;
    *len_out = size + AVRO_CODEC_HEADER_SIZE;
    return CS_ERR_OK;
}

/* ------------------------------------------------------------------------
 * Accessors
 * ------------------------------------------------------------------------ */

/* Field @p name of @p rec with unions unwrapped; false if absent/null. */
static bool field_get(avro_value_t *rec, const char *name, avro_value_t *out)
{
    avro_value_t branch;

    if (avro_value_get_type(rec) != AVRO_RECORD ||
        avro_value_get_by_name(rec, name, out, NULL) != 0)
        return false;
    while (avro_value_get_type(out) == AVRO_UNION) {
        if (avro_value_get_current_branch(out, &branch) != 0)
            return false;
        *out = branch;
    }
    return avro_value_get_type(out) != AVRO_NULL;
}

const char *avro_field_str(avro_value_t *rec, const char *name)
{
    avro_value_t v;
    const char *s = NULL;
    size_t size;
    int sym;

    if (!field_get(rec, name, &v))
        return NULL;
    if (avro_value_get_type(&v) == AVRO_STRING) {
        if (avro_value_get_string(&v, &s, &size) != 0)
            return NULL;
        return s;
    }
    if (avro_value_get_type(&v) == AVRO_ENUM) {
        if (avro_value_get_enum(&v, &sym) != 0)
            return NULL;
        return avro_schema_enum_get(avro_value_get_schema(&v), sym);
    }
    return NULL;
}

bool avro_field_long(avro_value_t *rec, const char *name, int64_t *out)
{
    avro_value_t v;
    int32_t i;

    if (!field_get(rec, name, &v))
        return false;
    if (avro_value_get_type(&v) == AVRO_INT64)
        return avro_value_get_long(&v, out) == 0;
    if (avro_value_get_type(&v) == AVRO_INT32 &&
        avro_value_get_int(&v, &i) == 0) {
        *out = i;
        return true;
    }
    return false;
}

bool avro_field_bool(avro_value_t *rec, const char *name, bool *out)
{
    avro_value_t v;
    int b;

    if (!field_get(rec, name, &v) || avro_value_get_type(&v) != AVRO_BOOLEAN ||
        avro_value_get_boolean(&v, &b) != 0)
        return false;
    *out = b != 0;
    return true;
}

bool avro_field_record(avro_value_t *rec, const char *name, avro_value_t *out)
{
    avro_value_t v;

    if (!field_get(rec, name, &v) || avro_value_get_type(&v) != AVRO_RECORD)
        return false;
    *out = v;
    return true;
}
