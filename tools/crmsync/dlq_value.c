/* dlq_value - see dlq_value.h. */
#include "dlq_value.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/avro_codec.h"

#define MAX_SCHEMAS  256
#define NAME_MAX_LEN 512
#define PATH_MAX_LEN 4096

/* One line of ids.txt: schema id and the record full name of its file. */
struct known_schema {
    int32_t id;
    char name[NAME_MAX_LEN];
};

struct dlq_decoder {
    struct avro_codec *codec; /* owned */
    bool registry;            /* writer ids come from a registry */
    struct known_schema known[MAX_SCHEMAS];
    size_t nknown;
};

void dlq_print_quoted(FILE *out, const void *buf, size_t len, size_t max_len)
{
    const unsigned char *p = buf;
    size_t n = len;

    if (!buf) {
        fputs("null", out);
        return;
    }
    if (max_len && n > max_len)
        n = max_len;
    fputc('"', out);
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '"' || p[i] == '\\')
            fprintf(out, "\\%c", p[i]);
        else if (p[i] >= 0x20 && p[i] < 0x7f)
            fputc(p[i], out);
        else
            fprintf(out, "\\x%02x", p[i]);
    }
    fputc('"', out);
    if (n < len)
        fputs("...", out);
}

void dlq_print_hexdump(FILE *out, const void *buf, size_t len)
{
    const unsigned char *p = buf;

    for (size_t off = 0; off < len; off += 16) {
        fprintf(out, "  %08zx ", off);
        for (size_t i = 0; i < 16; i++) {
            if (off + i < len)
                fprintf(out, " %02x", p[off + i]);
            else
                fputs("   ", out);
            if (i == 7)
                fputc(' ', out);
        }
        fputs("  |", out);
        for (size_t i = 0; i < 16 && off + i < len; i++)
            fputc(isprint(p[off + i]) ? p[off + i] : '.', out);
        fputs("|\n", out);
    }
}

/* Record full name of an .avsc file ("namespace.name"); false if none. */
static bool schema_fullname(const char *path, char *buf, size_t size)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    const char *name, *ns;
    bool ok = false;

    if (!root)
        return false;
    name = json_string_value(json_object_get(root, "name"));
    ns = json_string_value(json_object_get(root, "namespace"));
    if (name && (strchr(name, '.') || !ns || !*ns))
        ok = (size_t)snprintf(buf, size, "%s", name) < size;
    else if (name)
        ok = (size_t)snprintf(buf, size, "%s.%s", ns, name) < size;
    json_decref(root);
    return ok;
}

/* Loads "<id> <file>" lines of ids.txt into d->known (bad lines skipped:
 * the codec has already validated the file). */
static void load_known(struct dlq_decoder *d, const char *schemas_dir)
{
    char path[PATH_MAX_LEN];
    char line[1024];
    char file[512];
    FILE *fp;

    snprintf(path, sizeof(path), "%s/ids.txt", schemas_dir);
    fp = fopen(path, "r");
    if (!fp)
        return;
    while (fgets(line, sizeof(line), fp) && d->nknown < MAX_SCHEMAS) {
        char *p = line, *end;
        long id;
        size_t n;

        while (isspace((unsigned char)*p))
            p++;
        if (!isdigit((unsigned char)*p))
            continue;
        errno = 0;
        id = strtol(p, &end, 10);
        if (errno || id < 0 || id > INT32_MAX || !isspace((unsigned char)*end))
            continue;
        while (isspace((unsigned char)*end))
            end++;
        n = strcspn(end, " \t\r\n#");
        if (n == 0 || n >= sizeof(file))
            continue;
        memcpy(file, end, n);
        file[n] = '\0';
        snprintf(path, sizeof(path), "%s/%s", schemas_dir, file);
        if (schema_fullname(path, d->known[d->nknown].name,
                            sizeof(d->known[d->nknown].name))) {
            d->known[d->nknown].id = (int32_t)id;
            d->nknown++;
        }
    }
    fclose(fp);
}

struct dlq_decoder *dlq_decoder_new(const char *registry_url,
                                    const char *schemas_dir, char *errstr,
                                    size_t errstr_size)
{
    struct dlq_decoder *d = calloc(1, sizeof(*d));

    if (!d) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    d->codec = avro_codec_new(registry_url, schemas_dir, errstr, errstr_size);
    if (!d->codec) {
        free(d);
        return NULL;
    }
    d->registry = registry_url && *registry_url;
    load_known(d, schemas_dir);
    return d;
}

void dlq_decoder_free(struct dlq_decoder *d)
{
    if (!d)
        return;
    avro_codec_free(d->codec);
    free(d);
}

/* Re-indents avro-c's one-line JSON; takes ownership of @p text. */
static char *pretty_json(char *text)
{
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_DECODE_ANY, &jerr);
    char *out;

    if (!root)
        return text;
    out = json_dumps(root, JSON_INDENT(2) | JSON_ENCODE_ANY);
    json_decref(root);
    if (!out)
        return text;
    free(text);
    return out;
}

/* Decodes into reader record @p name; OK sets *json_out. */
static enum cs_err decode_as(struct dlq_decoder *d, const char *name,
                             const void *buf, size_t len, char **json_out,
                             int32_t *schema_id_out, char *errstr,
                             size_t errstr_size)
{
    avro_value_t val;
    char *text = NULL;
    enum cs_err err = avro_codec_decode(d->codec, name, buf, len, &val,
                                        schema_id_out, errstr, errstr_size);

    if (err != CS_ERR_OK)
        return err;
    if (avro_value_to_json(&val, 1, &text) || !text) {
        snprintf(errstr, errstr_size, "cannot render %s as JSON", name);
        err = CS_ERR_DECODE;
    } else {
        *json_out = pretty_json(text);
    }
    avro_value_decref(&val);
    return err;
}

enum cs_err dlq_decoder_to_json(struct dlq_decoder *d, const void *buf,
                                size_t len, char **json_out,
                                int32_t *schema_id_out, char *name_out,
                                size_t name_size, char *errstr,
                                size_t errstr_size)
{
    const unsigned char *p = buf;
    int32_t id;
    enum cs_err err = CS_ERR_UNKNOWN_SCHEMA;

    *json_out = NULL;
    if (schema_id_out)
        *schema_id_out = -1;
    if (!buf || len < AVRO_CODEC_HEADER_SIZE || p[0] != 0) {
        snprintf(errstr, errstr_size,
                 "not Confluent-framed Avro (%zu bytes, first byte %s)", len,
                 !buf || len == 0 ? "none"
                 : p[0]           ? "not 0"
                                  : "0");
        return CS_ERR_BAD_FRAME;
    }
    id = (int32_t)(((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) |
                   ((uint32_t)p[3] << 8) | (uint32_t)p[4]);
    if (schema_id_out)
        *schema_id_out = id;
    snprintf(errstr, errstr_size, "schema id %d is not in the known schemas",
             (int)id);
    /* Local mode: the record name of that id's file. With a registry the
     * ids differ from the local ones: try every known record name. */
    for (size_t i = 0; i < d->nknown; i++) {
        if (!d->registry && d->known[i].id != id)
            continue;
        err = decode_as(d, d->known[i].name, buf, len, json_out, NULL, errstr,
                        errstr_size);
        if (err == CS_ERR_OK) {
            snprintf(name_out, name_size, "%s", d->known[i].name);
            return CS_ERR_OK;
        }
        if (!d->registry || err == CS_ERR_REGISTRY_UNAVAILABLE ||
            err == CS_ERR_UNKNOWN_SCHEMA || err == CS_ERR_BAD_FRAME)
            return err;
    }
    return err;
}
