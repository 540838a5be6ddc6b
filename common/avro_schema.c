/*
 * avro_schema - schema entries of the avro codec: parsing schema text into
 * a struct schema_entry (avro-c schema, generic class, plus the field
 * defaults and timestamp-millis fields avro-c does not expose), loading the
 * local ids.txt, and the small helpers the codec's files share. Internal to
 * the codec; declarations and ownership in avro_internal.h.
 */
#include "common/avro_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Helpers shared by the codec's files
 * ------------------------------------------------------------------------ */

void avc_set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
{
    va_list ap;

    if (!errstr || errstr_size == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errstr, errstr_size, fmt, ap);
    va_end(ap);
}

/* avro-c error strings end with newlines sometimes; trim them. */
const char *avc_err_text(char *buf, size_t size)
{
    size_t n;

    snprintf(buf, size, "%s", avro_strerror());
    n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    return buf;
}

char *avc_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);

    if (p)
        memcpy(p, s, n);
    return p;
}

void avc_fullname(avro_schema_t s, char *buf, size_t size)
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
const char *avc_short_name(const char *full)
{
    const char *dot = strrchr(full, '.');

    return dot ? dot + 1 : full;
}

/* ------------------------------------------------------------------------
 * Schema entries
 * ------------------------------------------------------------------------ */

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
                 (int)(avc_short_name(name) - name - 1), name);
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
        snprintf(skey, sizeof(skey), "%s.%s", avc_short_name(full), fname);
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

void avc_schema_entry_clear(struct schema_entry *e)
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
enum cs_err avc_schema_entry_init(struct schema_entry *e, int32_t id,
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
        avc_set_err(errstr, errstr_size, "schema id %" PRId32 ": bad JSON: %s",
                    id, jerr.text);
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
        avc_set_err(errstr, errstr_size, "schema id %" PRId32 ": %s", id,
                    avc_err_text(abuf, sizeof(abuf)));
        avc_schema_entry_clear(e);
        return CS_ERR_UNKNOWN_SCHEMA;
    }
    e->iface = avro_generic_class_from_schema(e->schema);
    if (!e->iface)
        goto out_nomem;
    if (is_avro_record(e->schema)) {
        avc_fullname(e->schema, full, sizeof(full));
        e->fullname = avc_strdup(full);
        if (!e->fullname)
            goto out_nomem;
    }
    return CS_ERR_OK;

out_nomem:
    json_decref(root);
    avc_schema_entry_clear(e);
    avc_set_err(errstr, errstr_size, "out of memory");
    return CS_ERR_NOMEM;
}

/* Copies *src into *dst taking new references. */
void avc_schema_entry_share(struct schema_entry *dst,
                            const struct schema_entry *src)
{
    *dst = *src;
    dst->fullname = src->fullname ? avc_strdup(src->fullname) : NULL;
    avro_schema_incref(dst->schema);
    avro_value_iface_incref(dst->iface);
    json_incref(dst->defaults);
    json_incref(dst->ts_fields);
    json_incref(dst->root);
}

/* ------------------------------------------------------------------------
 * Local schemas: ids.txt
 * ------------------------------------------------------------------------ */

static enum cs_err read_file(const char *path, char **out, size_t *len_out,
                             char *errstr, size_t errstr_size)
{
    FILE *fp;
    char *buf;
    size_t n;

    fp = fopen(path, "rb");
    if (!fp) {
        avc_set_err(errstr, errstr_size, "%s: %s", path, strerror(errno));
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
        avc_set_err(errstr, errstr_size, "%s: larger than %d bytes", path,
                    SCHEMA_FILE_MAX);
        return CS_ERR_CONFIG;
    }
    buf[n] = '\0';
    *out = buf;
    *len_out = n;
    return CS_ERR_OK;
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
enum cs_err avc_schemas_load_local(const char *dir, struct schema_entry **local,
                                   size_t *nlocal, char *errstr,
                                   size_t errstr_size)
{
    char path[4096];
    char line[1024];
    FILE *fp;
    int lineno = 0;
    enum cs_err rc = CS_ERR_OK;

    snprintf(path, sizeof(path), "%s/ids.txt", dir);
    fp = fopen(path, "r");
    if (!fp) {
        avc_set_err(errstr, errstr_size, "%s: %s", path, strerror(errno));
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
            avc_set_err(errstr, errstr_size, "%s:%d: expected \"<id> <file>\"",
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
            avc_set_err(errstr, errstr_size, "%s:%d: duplicate id %" PRId32,
                        path, lineno, id);
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
        rc = avc_schema_entry_init(&p[*nlocal], id, text, len, errstr,
                                   errstr_size);
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
