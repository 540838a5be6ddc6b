/*
 * avro_codec - see avro_codec.h. This file: the codec's lifecycle and its
 * caches (writer schemas by id, local or fetched from the Schema Registry;
 * reader schemas by full name; resolutions by writer / reader pair),
 * decode, encode, the entry of avro_codec_from_json and the field
 * accessors. The rest of the codec: avro_schema.c (schema entries,
 * ids.txt), avro_resolve.c (resolution, defaults), avro_json.c (JSON ->
 * value), avro_scan.c (pre-scan of payloads); shared declarations in
 * avro_internal.h.
 */
#include "common/avro_codec.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "common/avro_internal.h"
#include "common/avro_scan.h"
#include "common/buf.h"

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

/* ------------------------------------------------------------------------
 * Lifecycle and schema caches
 * ------------------------------------------------------------------------ */

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
            avc_schema_entry_share(&c->readers[c->nreaders++], &local[i]);
        } else if (local[i].id > c->readers[j].id) {
            avc_schema_entry_clear(&c->readers[j]);
            avc_schema_entry_share(&c->readers[j], &local[i]);
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
        avc_set_err(errstr, errstr_size, "out of memory");
        return NULL;
    }
    rc = avc_schemas_load_local(schemas_dir, &local, &nlocal, errstr,
                                errstr_size);
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
            avc_set_err(errstr, errstr_size, "curl_easy_init failed");
            goto out_free_local;
        }
        for (i = 0; i < nlocal; i++)
            avc_schema_entry_clear(&local[i]);
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
        avc_set_err(errstr, errstr_size, "out of memory");
        goto out_free_codec;
    }
    return c;

out_free_local:
    for (i = 0; i < nlocal; i++)
        avc_schema_entry_clear(&local[i]);
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
    for (i = 0; i < codec->nresolvers; i++)
        avc_resolver_clear(&codec->resolvers[i]);
    free(codec->resolvers);
    for (i = 0; i < codec->nwriters; i++)
        avc_schema_entry_clear(&codec->writers[i]);
    free(codec->writers);
    for (i = 0; i < codec->nreaders; i++)
        avc_schema_entry_clear(&codec->readers[i]);
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
        avc_set_err(errstr, errstr_size,
                    "schema registry request for id %" PRId32 " failed: %s", id,
                    body.too_big ? "response too large"
                                 : curl_easy_strerror(cc));
        rc = CS_ERR_REGISTRY_UNAVAILABLE;
        goto out_free_body;
    }
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
    if (status == 404) {
        avc_set_err(errstr, errstr_size,
                    "schema id %" PRId32 " not found in registry", id);
        rc = CS_ERR_UNKNOWN_SCHEMA;
        goto out_free_body;
    }
    if (status != 200) {
        avc_set_err(errstr, errstr_size,
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
        avc_set_err(errstr, errstr_size,
                    "schema registry answer for id %" PRId32 " has no schema",
                    id);
        rc = CS_ERR_REGISTRY_UNAVAILABLE;
    } else if (type && strcmp(type, "AVRO") != 0) {
        avc_set_err(errstr, errstr_size,
                    "schema id %" PRId32 " is %s, not Avro", id, type);
        rc = CS_ERR_UNKNOWN_SCHEMA;
    } else {
        *text_out = avc_strdup(schema);
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
        avc_set_err(errstr, errstr_size, "schema id %" PRId32 " not found", id);
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
    rc = avc_schema_entry_init(w, id, text, strlen(text), errstr, errstr_size);
    free(text);
    if (rc != CS_ERR_OK)
        return rc;
    c->nwriters++;
    *out = w;
    return CS_ERR_OK;
}

/* ------------------------------------------------------------------------
 * JSON -> value (the machinery is in avro_json.c)
 * ------------------------------------------------------------------------ */

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
        avc_set_err(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    rc = avc_json_to_value(w, out, json, false, NULL, errstr, errstr_size);
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
    avc_resolver_build(r, w, &c->readers[reader_idx]);
    return r;
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
    size_t reader_idx;
    int32_t id;
    enum cs_err rc;

    if (len < AVRO_CODEC_HEADER_SIZE) {
        avc_set_err(errstr, errstr_size, "frame of %zu bytes, need at least %d",
                    len, AVRO_CODEC_HEADER_SIZE);
        return CS_ERR_BAD_FRAME;
    }
    if (b[0] != 0) {
        avc_set_err(errstr, errstr_size, "magic byte 0x%02x, expected 0x00",
                    b[0]);
        return CS_ERR_BAD_FRAME;
    }
    id = (int32_t)((uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 |
                   (uint32_t)b[3] << 8 | (uint32_t)b[4]);
    if (schema_id_out)
        *schema_id_out = id;
    rd = reader_find(codec, reader_name, &reader_idx);
    if (!rd) {
        avc_set_err(errstr, errstr_size, "no reader schema named %s",
                    reader_name);
        return CS_ERR_INVALID_ARG;
    }
    rc = writer_get(codec, id, &w, errstr, errstr_size);
    if (rc != CS_ERR_OK)
        return rc;
    r = resolver_get(codec, w, reader_idx);
    if (!r)
        return CS_ERR_NOMEM;
    if (r->status != CS_ERR_OK) {
        avc_set_err(errstr, errstr_size,
                    "schema id %" PRId32 " cannot be read as %s: %s", id,
                    reader_name, r->reason);
        return r->status;
    }
    rc = avro_scan_payload(w->schema, b + AVRO_CODEC_HEADER_SIZE,
                           len - AVRO_CODEC_HEADER_SIZE, errstr, errstr_size);
    if (rc != CS_ERR_OK)
        return rc;
    return avc_resolver_decode(
        r, rd, codec->reader, (const char *)b + AVRO_CODEC_HEADER_SIZE,
        len - AVRO_CODEC_HEADER_SIZE, out, errstr, errstr_size);
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
        avc_set_err(errstr, errstr_size,
                    "value is not an instance of schema id %" PRId32,
                    schema_id);
        return CS_ERR_INVALID_ARG;
    }
    if (avro_value_sizeof(value, &size) != 0) {
        avc_set_err(errstr, errstr_size, "avro: %s",
                    avc_err_text(abuf, sizeof(abuf)));
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
        avc_set_err(errstr, errstr_size, "avro: %s",
                    avc_err_text(abuf, sizeof(abuf)));
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
