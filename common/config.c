/* config - see config.h. */
#include "common/config.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

extern char **environ; /* POSIX; not declared under _POSIX_C_SOURCE alone */

#define KAFKA_ENV_PREFIX "CRMSYNC_KAFKA_"
#define KAFKA_PREFIX     "kafka."
#define NAME_BUF         256 /* longest dotted key we accept */
#define YAML_MAX_DEPTH   16  /* also stops alias cycles */
#define REDACTED         "***"
#define DATAVERSE_LOGIN  "https://login.microsoftonline.com/"

/* ------------------------------------------------------------------ */
/* The common table                                                    */
/* ------------------------------------------------------------------ */

#define F_STR(n, e, m, d, fl, ch, doc)                                         \
    {                                                                          \
        n, e, CONFIG_STRING, offsetof(struct config, m), d, 0, 0, fl, ch, doc  \
    }
#define F_INT(n, e, m, d, lo, hi, doc)                                         \
    {                                                                          \
        n, e, CONFIG_INT, offsetof(struct config, m), d, lo, hi, 0, NULL, doc  \
    }
#define F_BOOL(n, e, m, d, doc)                                                \
    {                                                                          \
        n, e, CONFIG_BOOL, offsetof(struct config, m), d, 0, 0, 0, NULL, doc   \
    }

/* def == NULL on consumer.topics means "the worker's topics_default". */
static const struct config_field common_fields[] = {
    F_STR("consumer.topics", "CRMSYNC_TOPICS", topics, NULL, CONFIG_REQUIRED,
          NULL, "Comma-separated topics to consume (default per worker)"),
    F_STR("consumer.group_id", "CRMSYNC_GROUP_ID", group_id, "", 0, NULL,
          "Kafka consumer group; empty = crmsync-<worker>"),
    F_INT("consumer.batch_max_messages", NULL, batch_max_messages, "500", 1,
          100000, "A batch is processed once it holds this many messages"),
    F_INT("consumer.batch_max_ms", NULL, batch_max_ms, "200", 1, 60000,
          "... or once its first message waited this long (ms)"),
    F_STR("consumer.dlq_suffix", NULL, dlq_suffix, ".dlq", CONFIG_REQUIRED,
          NULL, "Dead-letter topic = <source topic><suffix>"),
    F_INT("consumer.retry_backoff_min_ms", NULL, retry_backoff_min_ms, "200", 1,
          600000, "First pause after a retryable failure (ms)"),
    F_INT("consumer.retry_backoff_max_ms", NULL, retry_backoff_max_ms, "30000",
          1, 600000, "Pauses double up to this cap (ms)"),
    F_INT("consumer.shutdown_timeout_ms", NULL, shutdown_timeout_ms, "8000",
          100, 60000, "On SIGTERM: time to finish the batch and commit (ms)"),
    F_STR("avro.schema_registry_url", "CRMSYNC_SCHEMA_REGISTRY_URL",
          schema_registry_url, "", 0, NULL,
          "Schema Registry URL; empty = writer schemas from avro.schemas_dir"),
    F_STR("avro.schemas_dir", "CRMSYNC_SCHEMAS_DIR", schemas_dir, "schemas", 0,
          NULL, "Local .avsc directory (id mapping in schemas/README.md)"),
    F_STR("redis.url", "CRMSYNC_REDIS_URL", redis_url,
          "redis://127.0.0.1:6379/0", CONFIG_SECRET | CONFIG_REQUIRED, NULL,
          "Redis for idempotency markers: redis://[:password@]host:port/db"),
    F_INT("redis.timeout_ms", NULL, redis_timeout_ms, "2000", 10, 60000,
          "Redis connect and command timeout (ms)"),
    F_INT("idem.ttl_days", NULL, idem_ttl_days, "7", 1, 365,
          "Days a processed event id is remembered for dedupe"),
    F_INT("idem.buckets_per_day", NULL, idem_buckets_per_day, "4096", 1,
          16777216, "Redis hashes per day (memory layout of the markers)"),
    F_INT("idem.lease_ms", NULL, idem_lease_ms, "30000", 100, 3600000,
          "Lease of a claimed, unfinished event before others may retry (ms)"),
    F_STR("crm.kind", NULL, crm_kind, "dataverse", CONFIG_REQUIRED, "dataverse",
          "CRM connector"),
    F_STR("crm.base_url", "CRMSYNC_CRM_BASE_URL", crm_base_url, "", 0, NULL,
          "CRM environment URL (required for dataverse), e.g. "
          "https://org.crm4.dynamics.com"),
    F_STR("crm.token_url", "CRMSYNC_CRM_TOKEN_URL", crm_token_url, "", 0, NULL,
          "OAuth2 token endpoint; empty = https://login.microsoftonline.com/"
          "<tenant_id>/oauth2/v2.0/token"),
    F_STR("crm.tenant_id", "CRMSYNC_CRM_TENANT_ID", crm_tenant_id, "", 0, NULL,
          "Entra ID tenant (directory) id"),
    F_STR("crm.client_id", "CRMSYNC_CRM_CLIENT_ID", crm_client_id, "", 0, NULL,
          "OAuth2 client (application) id"),
    F_STR("crm.client_secret", "CRMSYNC_CRM_CLIENT_SECRET", crm_client_secret,
          "", CONFIG_SECRET, NULL, "OAuth2 client secret"),
    F_STR("crm.scope", NULL, crm_scope, "", 0, NULL,
          "OAuth2 scope; empty = <base_url>/.default"),
    F_INT("crm.batch_size", NULL, crm_batch_size, "100", 1, 1000,
          "Operations per $batch request"),
    F_INT("crm.timeout_ms", NULL, crm_timeout_ms, "30000", 100, 600000,
          "Total timeout of one CRM HTTP request (ms)"),
    F_INT("crm.connect_timeout_ms", NULL, crm_connect_timeout_ms, "5000", 100,
          60000, "Connect timeout of CRM HTTP requests (ms)"),
    F_INT("crm.max_retries", NULL, crm_max_retries, "3", 0, 20,
          "Retries of one CRM request on 5xx, 408 and network errors"),
    F_BOOL("crm.tls_verify", NULL, crm_tls_verify, "true",
           "Verify the CRM's TLS certificate"),
    F_STR("crm.ca_file", NULL, crm_ca_file, "", 0, NULL,
          "CA bundle for CRM TLS; empty = system default"),
    F_INT("metrics.port", "CRMSYNC_METRICS_PORT", metrics_port, "9464", 0,
          65535, "Port of /metrics, /healthz and /readyz; 0 = disabled"),
    F_STR("log.level", "CRMSYNC_LOG_LEVEL", log_level, "info", CONFIG_REQUIRED,
          "debug|info|warn|error", "Minimum log level"),
};

#define COMMON_NFIELDS (sizeof(common_fields) / sizeof(common_fields[0]))

/* Common section first, then the worker's: index 0..nextra. */
static struct config_section common_section(struct config *cfg)
{
    struct config_section s = {"common", common_fields, COMMON_NFIELDS, cfg};
    return s;
}

static const struct config_section *
section_at(const struct config_section *common,
           const struct config_section *extra, size_t i)
{
    return i == 0 ? common : &extra[i - 1];
}

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

static void set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
{
    va_list ap;

    if (errstr == NULL || errstr_size == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errstr, errstr_size, fmt, ap);
    va_end(ap);
}

static char **member_str(const struct config_field *f, void *target)
{
    return (char **)(void *)((char *)target + f->offset);
}

static int *member_int(const struct config_field *f, void *target)
{
    return (int *)(void *)((char *)target + f->offset);
}

static bool *member_bool(const struct config_field *f, void *target)
{
    return (bool *)(void *)((char *)target + f->offset);
}

static const char *type_name(enum config_type t)
{
    switch (t) {
    case CONFIG_INT:
        return "int";
    case CONFIG_BOOL:
        return "bool";
    case CONFIG_STRING:
        break;
    }
    return "string";
}

/* Default text of @p f; consumer.topics takes the worker's default. */
static const char *field_default(const struct config_field *f,
                                 const char *topics_default)
{
    if (f->def != NULL)
        return f->def;
    if (f == &common_fields[0] && topics_default != NULL)
        return topics_default;
    return "";
}

/* true when @p value is one of the '|'-separated @p choices. */
static bool choice_ok(const char *choices, const char *value)
{
    size_t vlen = strlen(value);
    const char *p = choices;

    while (*p != '\0') {
        const char *bar = strchr(p, '|');
        size_t len = bar != NULL ? (size_t)(bar - p) : strlen(p);
        if (len == vlen && strncmp(p, value, len) == 0)
            return true;
        if (bar == NULL)
            break;
        p = bar + 1;
    }
    return false;
}

/* Whole-string base-10 integer; no leading blanks, no trailing junk. */
static bool parse_long(const char *s, long *out)
{
    char *end = NULL;
    long v;

    if (*s == '\0' || *s == ' ' || *s == '\t')
        return false;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return false;
    *out = v;
    return true;
}

static bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "1"};
    static const char *const no[] = {"false", "no", "0"};

    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

/* Kafka properties whose values must never be printed. */
static bool kafka_key_secret(const char *key)
{
    const char *last = strrchr(key, '.');

    last = last != NULL ? last + 1 : key;
    return strstr(last, "password") != NULL || strstr(last, "secret") != NULL ||
           strcmp(key, "ssl.key.pem") == 0 ||
           strcmp(key, "sasl.oauthbearer.config") == 0;
}

/* ------------------------------------------------------------------ */
/* Setting values                                                      */
/* ------------------------------------------------------------------ */

/* Parses @p value into @p f's member of @p target. @p origin says where the
 * value came from ("default", "<file> line 3", "env X") for the message. */
static enum cs_err field_set(const struct config_field *f, void *target,
                             const char *value, const char *origin,
                             char *errstr, size_t errstr_size)
{
    const char *shown = (f->flags & CONFIG_SECRET) ? REDACTED : value;
    long lv = 0;
    bool bv = false;
    char *dup;

    switch (f->type) {
    case CONFIG_STRING:
        if (f->choices != NULL && !choice_ok(f->choices, value)) {
            set_err(errstr, errstr_size,
                    "invalid value '%s' for %s (%s): must be one of %s", shown,
                    f->name, origin, f->choices);
            return CS_ERR_CONFIG;
        }
        dup = strdup(value);
        if (dup == NULL) {
            set_err(errstr, errstr_size, "out of memory setting %s", f->name);
            return CS_ERR_NOMEM;
        }
        free(*member_str(f, target));
        *member_str(f, target) = dup;
        return CS_ERR_OK;
    case CONFIG_INT:
        if (!parse_long(value, &lv) || lv < f->min || lv > f->max) {
            set_err(errstr, errstr_size,
                    "invalid value '%s' for %s (%s): must be an integer in "
                    "%ld..%ld",
                    shown, f->name, origin, f->min, f->max);
            return CS_ERR_CONFIG;
        }
        *member_int(f, target) = (int)lv;
        return CS_ERR_OK;
    case CONFIG_BOOL:
        if (!parse_bool(value, &bv)) {
            set_err(errstr, errstr_size,
                    "invalid value '%s' for %s (%s): must be "
                    "true/false/yes/no/1/0",
                    shown, f->name, origin);
            return CS_ERR_CONFIG;
        }
        *member_bool(f, target) = bv;
        return CS_ERR_OK;
    }
    return CS_ERR_INVALID_ARG;
}

/* Sets (or replaces) kafka passthrough @p key. Copies both strings. */
static enum cs_err kafka_set(struct config *cfg, const char *key,
                             const char *value)
{
    char *v = strdup(value);
    char *k = NULL;
    struct config_kv *grown;

    if (v == NULL)
        return CS_ERR_NOMEM;
    for (size_t i = 0; i < cfg->kafka_cnt; i++) {
        if (strcmp(cfg->kafka[i].key, key) == 0) {
            free(cfg->kafka[i].value);
            cfg->kafka[i].value = v;
            return CS_ERR_OK;
        }
    }
    k = strdup(key);
    if (k == NULL)
        goto out_free_value;
    grown = realloc(cfg->kafka, (cfg->kafka_cnt + 1) * sizeof(*grown));
    if (grown == NULL)
        goto out_free_key;
    cfg->kafka = grown;
    cfg->kafka[cfg->kafka_cnt].key = k;
    cfg->kafka[cfg->kafka_cnt].value = v;
    cfg->kafka_cnt++;
    return CS_ERR_OK;

out_free_key:
    free(k);
out_free_value:
    free(v);
    return CS_ERR_NOMEM;
}

/* ------------------------------------------------------------------ */
/* Loading                                                             */
/* ------------------------------------------------------------------ */

/* State of one config_load() call. */
struct loader {
    struct config *cfg;
    struct config_section common;
    const struct config_section *extra;
    size_t nextra;
    const char *path; /* YAML file, borrowed */
    yaml_document_t *doc;
    char *errstr;
    size_t errstr_size;
};

/* Finds the field called @p name in any section; *target gets its struct. */
static const struct config_field *loader_find(const struct loader *ld,
                                              const char *name, void **target)
{
    for (size_t s = 0; s <= ld->nextra; s++) {
        const struct config_section *sec =
            section_at(&ld->common, ld->extra, s);
        for (size_t i = 0; i < sec->nfields; i++) {
            if (strcmp(sec->fields[i].name, name) == 0) {
                *target = sec->target;
                return &sec->fields[i];
            }
        }
    }
    return NULL;
}

/* true when some field name starts with "<prefix>." */
static bool loader_is_group(const struct loader *ld, const char *prefix)
{
    size_t len = strlen(prefix);

    for (size_t s = 0; s <= ld->nextra; s++) {
        const struct config_section *sec =
            section_at(&ld->common, ld->extra, s);
        for (size_t i = 0; i < sec->nfields; i++) {
            const char *n = sec->fields[i].name;
            if (strncmp(n, prefix, len) == 0 && n[len] == '.')
                return true;
        }
    }
    return false;
}

/* NULL-ing every string member first makes config_free() safe whatever
 * happens later, even though the caller's structs may hold garbage. */
static void loader_clear(struct loader *ld, const char *worker)
{
    memset(ld->cfg, 0, sizeof(*ld->cfg));
    ld->cfg->worker = worker;
    for (size_t s = 1; s <= ld->nextra; s++) {
        const struct config_section *sec =
            section_at(&ld->common, ld->extra, s);
        for (size_t i = 0; i < sec->nfields; i++) {
            if (sec->fields[i].type == CONFIG_STRING)
                *member_str(&sec->fields[i], sec->target) = NULL;
        }
    }
}

static enum cs_err loader_defaults(struct loader *ld,
                                   const char *topics_default)
{
    for (size_t s = 0; s <= ld->nextra; s++) {
        const struct config_section *sec =
            section_at(&ld->common, ld->extra, s);
        for (size_t i = 0; i < sec->nfields; i++) {
            const struct config_field *f = &sec->fields[i];
            enum cs_err err =
                field_set(f, sec->target, field_default(f, topics_default),
                          "default", ld->errstr, ld->errstr_size);
            if (err != CS_ERR_OK)
                return err;
        }
    }
    return CS_ERR_OK;
}

/* Text of a scalar node; plain "~", "null" and "" mean empty. */
static const char *scalar_text(const yaml_node_t *node)
{
    const char *s = (const char *)node->data.scalar.value;

    if (node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
        (strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
         strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0))
        return "";
    return s;
}

/* Joins a sequence of scalars with ',' (topic lists). Caller frees. */
static char *sequence_join(yaml_document_t *doc, yaml_node_t *seq)
{
    size_t len = 1;
    char *out;
    yaml_node_item_t *it;

    for (it = seq->data.sequence.items.start; it < seq->data.sequence.items.top;
         it++) {
        yaml_node_t *n = yaml_document_get_node(doc, *it);
        if (n == NULL || n->type != YAML_SCALAR_NODE)
            return NULL;
        len += strlen(scalar_text(n)) + 1;
    }
    out = calloc(1, len);
    if (out == NULL)
        return NULL;
    for (it = seq->data.sequence.items.start; it < seq->data.sequence.items.top;
         it++) {
        const char *t = scalar_text(yaml_document_get_node(doc, *it));
        size_t used = strlen(out);
        snprintf(out + used, len - used, "%s%s", used > 0 ? "," : "", t);
    }
    return out;
}

/* One "name: value" from the file where value is not a mapping. */
static enum cs_err loader_file_value(struct loader *ld, const char *name,
                                     yaml_node_t *val)
{
    char origin[NAME_BUF + 64];
    void *target = NULL;
    const struct config_field *f;
    char *joined;
    enum cs_err err;

    snprintf(origin, sizeof(origin), "%s line %lu", ld->path,
             (unsigned long)val->start_mark.line + 1);
    if (strncmp(name, KAFKA_PREFIX, strlen(KAFKA_PREFIX)) == 0) {
        if (val->type != YAML_SCALAR_NODE ||
            name[strlen(KAFKA_PREFIX)] == '\0') {
            set_err(ld->errstr, ld->errstr_size,
                    "kafka property '%s' must be a scalar (%s)", name, origin);
            return CS_ERR_CONFIG;
        }
        err = kafka_set(ld->cfg, name + strlen(KAFKA_PREFIX), scalar_text(val));
        if (err != CS_ERR_OK)
            set_err(ld->errstr, ld->errstr_size, "out of memory");
        return err;
    }
    if (strcmp(name, "kafka") == 0 && val->type == YAML_SCALAR_NODE &&
        scalar_text(val)[0] == '\0')
        return CS_ERR_OK; /* "kafka:" with nothing under it */
    f = loader_find(ld, name, &target);
    if (f == NULL) {
        if (loader_is_group(ld, name) || strcmp(name, "kafka") == 0)
            set_err(ld->errstr, ld->errstr_size,
                    "key '%s' must be a mapping in %s", name, origin);
        else
            set_err(ld->errstr, ld->errstr_size, "unknown key '%s' in %s", name,
                    origin);
        return CS_ERR_CONFIG;
    }
    if (val->type == YAML_SCALAR_NODE)
        return field_set(f, target, scalar_text(val), origin, ld->errstr,
                         ld->errstr_size);
    joined = NULL;
    if (val->type == YAML_SEQUENCE_NODE && f->type == CONFIG_STRING)
        joined = sequence_join(ld->doc, val);
    if (joined == NULL) {
        set_err(ld->errstr, ld->errstr_size,
                "%s must be a single %s value%s (%s)", name, type_name(f->type),
                f->type == CONFIG_STRING ? " or a list of strings" : "",
                origin);
        return CS_ERR_CONFIG;
    }
    err = field_set(f, target, joined, origin, ld->errstr, ld->errstr_size);
    free(joined);
    return err;
}

/* Walks a mapping; @p prefix is the dotted name of the mapping ("" = root). */
static enum cs_err loader_mapping(struct loader *ld, const char *prefix,
                                  yaml_node_t *map, int depth)
{
    yaml_node_pair_t *pair;

    if (depth > YAML_MAX_DEPTH) {
        set_err(ld->errstr, ld->errstr_size, "'%s' nested too deep in %s",
                prefix, ld->path);
        return CS_ERR_CONFIG;
    }
    for (pair = map->data.mapping.pairs.start;
         pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = yaml_document_get_node(ld->doc, pair->key);
        yaml_node_t *val = yaml_document_get_node(ld->doc, pair->value);
        char name[NAME_BUF];
        int n;
        enum cs_err err;

        if (key == NULL || val == NULL || key->type != YAML_SCALAR_NODE) {
            set_err(ld->errstr, ld->errstr_size,
                    "keys must be scalars in %s (under '%s')", ld->path,
                    prefix);
            return CS_ERR_CONFIG;
        }
        n = snprintf(name, sizeof(name), "%s%s%s", prefix,
                     prefix[0] != '\0' ? "." : "",
                     (const char *)key->data.scalar.value);
        if (n < 0 || (size_t)n >= sizeof(name)) {
            set_err(ld->errstr, ld->errstr_size, "key too long in %s line %lu",
                    ld->path, (unsigned long)key->start_mark.line + 1);
            return CS_ERR_CONFIG;
        }
        if (val->type == YAML_MAPPING_NODE &&
            (strcmp(name, "kafka") == 0 ||
             strncmp(name, KAFKA_PREFIX, strlen(KAFKA_PREFIX)) == 0 ||
             loader_is_group(ld, name)))
            err = loader_mapping(ld, name, val, depth + 1);
        else
            err = loader_file_value(ld, name, val);
        if (err != CS_ERR_OK)
            return err;
    }
    return CS_ERR_OK;
}

static enum cs_err loader_file(struct loader *ld, const char *path)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_node_t *root;
    FILE *fp;
    enum cs_err err = CS_ERR_CONFIG;

    ld->cfg->config_path = strdup(path);
    if (ld->cfg->config_path == NULL) {
        set_err(ld->errstr, ld->errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    ld->path = ld->cfg->config_path;
    fp = fopen(path, "rb");
    if (fp == NULL) {
        set_err(ld->errstr, ld->errstr_size, "cannot open config file %s: %s",
                path, strerror(errno));
        return CS_ERR_CONFIG;
    }
    if (!yaml_parser_initialize(&parser)) {
        set_err(ld->errstr, ld->errstr_size, "out of memory");
        err = CS_ERR_NOMEM;
        goto out_close;
    }
    yaml_parser_set_input_file(&parser, fp);
    if (!yaml_parser_load(&parser, &doc)) {
        set_err(ld->errstr, ld->errstr_size,
                "cannot parse %s line %lu column %lu: %s%s%s", path,
                (unsigned long)parser.problem_mark.line + 1,
                (unsigned long)parser.problem_mark.column + 1,
                parser.problem != NULL ? parser.problem : "syntax error",
                parser.context != NULL ? " " : "",
                parser.context != NULL ? parser.context : "");
        goto out_parser;
    }
    ld->doc = &doc;
    root = yaml_document_get_root_node(&doc);
    if (root == NULL) {
        err = CS_ERR_OK; /* empty file: defaults + environment */
    } else if (root->type != YAML_MAPPING_NODE) {
        set_err(ld->errstr, ld->errstr_size,
                "%s: the top level must be a mapping (key: value)", path);
    } else {
        err = loader_mapping(ld, "", root, 0);
    }
    ld->doc = NULL;
    yaml_document_delete(&doc);
out_parser:
    yaml_parser_delete(&parser);
out_close:
    fclose(fp);
    return err;
}

/* Field overrides from their environment variables, then every
 * CRMSYNC_KAFKA_<PROP>. Empty variables count as unset. */
static enum cs_err loader_env(struct loader *ld)
{
    size_t plen = strlen(KAFKA_ENV_PREFIX);

    for (size_t s = 0; s <= ld->nextra; s++) {
        const struct config_section *sec =
            section_at(&ld->common, ld->extra, s);
        for (size_t i = 0; i < sec->nfields; i++) {
            const struct config_field *f = &sec->fields[i];
            const char *v = f->env != NULL ? getenv(f->env) : NULL;
            char origin[NAME_BUF];
            enum cs_err err;

            if (v == NULL || v[0] == '\0')
                continue;
            snprintf(origin, sizeof(origin), "env %s", f->env);
            err = field_set(f, sec->target, v, origin, ld->errstr,
                            ld->errstr_size);
            if (err != CS_ERR_OK)
                return err;
        }
    }
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        char key[NAME_BUF];
        size_t klen;

        if (strncmp(*e, KAFKA_ENV_PREFIX, plen) != 0 || eq == NULL ||
            eq[1] == '\0')
            continue;
        klen = (size_t)(eq - *e) - plen;
        if (klen == 0 || klen >= sizeof(key))
            continue;
        for (size_t i = 0; i < klen; i++) {
            char c = (*e)[plen + i];
            key[i] = c == '_'                 ? '.'
                     : (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a')
                                              : c;
        }
        key[klen] = '\0';
        if (kafka_set(ld->cfg, key, eq + 1) != CS_ERR_OK) {
            set_err(ld->errstr, ld->errstr_size, "out of memory");
            return CS_ERR_NOMEM;
        }
    }
    return CS_ERR_OK;
}

static enum cs_err loader_required(struct loader *ld)
{
    for (size_t s = 0; s <= ld->nextra; s++) {
        const struct config_section *sec =
            section_at(&ld->common, ld->extra, s);
        for (size_t i = 0; i < sec->nfields; i++) {
            const struct config_field *f = &sec->fields[i];
            const char *v;

            if (!(f->flags & CONFIG_REQUIRED) || f->type != CONFIG_STRING)
                continue;
            v = *member_str(f, sec->target);
            if (v != NULL && v[0] != '\0')
                continue;
            set_err(ld->errstr, ld->errstr_size,
                    "%s is required (set it in the config file%s%s)", f->name,
                    f->env != NULL ? " or env " : "",
                    f->env != NULL ? f->env : "");
            return CS_ERR_CONFIG;
        }
    }
    return CS_ERR_OK;
}

/* Replaces *slot with a formatted string. */
static enum cs_err replace_fmt(char **slot, const char *a, const char *b,
                               const char *c)
{
    size_t len = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(len);

    if (s == NULL)
        return CS_ERR_NOMEM;
    snprintf(s, len, "%s%s%s", a, b, c);
    free(*slot);
    *slot = s;
    return CS_ERR_OK;
}

/* Cross-field rules and derived defaults. */
static enum cs_err loader_finish(struct loader *ld)
{
    struct config *cfg = ld->cfg;
    size_t len = strlen(cfg->crm_base_url);
    const char *bs;
    enum cs_err err = CS_ERR_OK;

    while (len > 0 && cfg->crm_base_url[len - 1] == '/')
        cfg->crm_base_url[--len] = '\0';
    if (strcmp(cfg->crm_kind, "dataverse") == 0) {
        if (len == 0) {
            set_err(ld->errstr, ld->errstr_size,
                    "crm.base_url is required (set it in the config file or "
                    "env CRMSYNC_CRM_BASE_URL)");
            return CS_ERR_CONFIG;
        }
        if (cfg->crm_token_url[0] == '\0') {
            if (cfg->crm_tenant_id[0] == '\0') {
                set_err(ld->errstr, ld->errstr_size,
                        "crm.tenant_id is required when crm.token_url is "
                        "empty (env CRMSYNC_CRM_TENANT_ID or "
                        "CRMSYNC_CRM_TOKEN_URL)");
                return CS_ERR_CONFIG;
            }
            err = replace_fmt(&cfg->crm_token_url, DATAVERSE_LOGIN,
                              cfg->crm_tenant_id, "/oauth2/v2.0/token");
        }
        if (err == CS_ERR_OK && cfg->crm_scope[0] == '\0')
            err = replace_fmt(&cfg->crm_scope, cfg->crm_base_url, "/.default",
                              "");
    }
    if (err == CS_ERR_OK && cfg->group_id[0] == '\0')
        err = replace_fmt(&cfg->group_id, "crmsync-", cfg->worker, "");
    if (err != CS_ERR_OK) {
        set_err(ld->errstr, ld->errstr_size, "out of memory");
        return err;
    }
    if (cfg->retry_backoff_min_ms > cfg->retry_backoff_max_ms) {
        set_err(ld->errstr, ld->errstr_size,
                "consumer.retry_backoff_min_ms (%d) must not exceed "
                "consumer.retry_backoff_max_ms (%d)",
                cfg->retry_backoff_min_ms, cfg->retry_backoff_max_ms);
        return CS_ERR_CONFIG;
    }
    bs = config_kafka_get(cfg, "bootstrap.servers");
    if (bs == NULL || bs[0] == '\0') {
        set_err(ld->errstr, ld->errstr_size,
                "kafka.bootstrap.servers is required (set it under kafka: in "
                "the config file or env CRMSYNC_KAFKA_BOOTSTRAP_SERVERS)");
        return CS_ERR_CONFIG;
    }
    return CS_ERR_OK;
}

/* Lets librdkafka judge every passthrough property now, so --check-config
 * catches a misspelt kafka key before the worker starts. */
static enum cs_err loader_check_kafka(struct loader *ld)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    enum cs_err err;

    if (conf == NULL) {
        set_err(ld->errstr, ld->errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    err = config_apply_kafka(ld->cfg, conf, ld->errstr, ld->errstr_size);
    rd_kafka_conf_destroy(conf);
    return err;
}

enum cs_err config_load(struct config *cfg, const char *worker,
                        const char *topics_default, const char *yaml_path,
                        const struct config_section *extra, size_t nextra,
                        char *errstr, size_t errstr_size)
{
    struct loader ld = {.cfg = cfg,
                        .common = common_section(cfg),
                        .extra = extra,
                        .nextra = nextra,
                        .path = "(no file)",
                        .errstr = errstr,
                        .errstr_size = errstr_size};
    enum cs_err err;

    set_err(errstr, errstr_size, "%s", "");
    if (cfg == NULL)
        return CS_ERR_INVALID_ARG;
    loader_clear(&ld, worker);
    if (worker == NULL) {
        set_err(errstr, errstr_size, "config_load: worker name is NULL");
        return CS_ERR_INVALID_ARG;
    }
    err = loader_defaults(&ld, topics_default);
    if (err == CS_ERR_OK && yaml_path != NULL)
        err = loader_file(&ld, yaml_path);
    if (err == CS_ERR_OK)
        err = loader_env(&ld);
    if (err == CS_ERR_OK)
        err = loader_required(&ld);
    if (err == CS_ERR_OK)
        err = loader_finish(&ld);
    if (err == CS_ERR_OK)
        err = loader_check_kafka(&ld);
    if (err != CS_ERR_OK)
        config_free(cfg, extra, nextra);
    return err;
}

void config_free(struct config *cfg, const struct config_section *extra,
                 size_t nextra)
{
    if (cfg != NULL) {
        for (size_t i = 0; i < COMMON_NFIELDS; i++) {
            const struct config_field *f = &common_fields[i];
            if (f->type == CONFIG_STRING) {
                free(*member_str(f, cfg));
                *member_str(f, cfg) = NULL;
            }
        }
        for (size_t i = 0; i < cfg->kafka_cnt; i++) {
            free(cfg->kafka[i].key);
            free(cfg->kafka[i].value);
        }
        free(cfg->kafka);
        cfg->kafka = NULL;
        cfg->kafka_cnt = 0;
        free(cfg->config_path);
        cfg->config_path = NULL;
    }
    for (size_t s = 0; extra != NULL && s < nextra; s++) {
        for (size_t i = 0; i < extra[s].nfields; i++) {
            const struct config_field *f = &extra[s].fields[i];
            if (f->type == CONFIG_STRING && extra[s].target != NULL) {
                free(*member_str(f, extra[s].target));
                *member_str(f, extra[s].target) = NULL;
            }
        }
    }
}

/* ------------------------------------------------------------------ */
/* Kafka passthrough                                                   */
/* ------------------------------------------------------------------ */

const char *config_kafka_get(const struct config *cfg, const char *key)
{
    for (size_t i = 0; i < cfg->kafka_cnt; i++) {
        if (strcmp(cfg->kafka[i].key, key) == 0)
            return cfg->kafka[i].value;
    }
    return NULL;
}

/* Copies @p msg into @p out with every occurrence of @p secret replaced. */
static void redact_copy(char *out, size_t out_size, const char *msg,
                        const char *secret)
{
    size_t slen = strlen(secret);
    size_t used = 0;

    out[0] = '\0';
    while (*msg != '\0' && used + 1 < out_size) {
        if (slen > 0 && strncmp(msg, secret, slen) == 0) {
            int n = snprintf(out + used, out_size - used, "%s", REDACTED);
            used += n > 0 ? (size_t)n : 0;
            if (used >= out_size)
                break;
            msg += slen;
        } else {
            out[used++] = *msg++;
            out[used] = '\0';
        }
    }
}

enum cs_err config_apply_kafka(const struct config *cfg, rd_kafka_conf_t *conf,
                               char *errstr, size_t errstr_size)
{
    for (size_t i = 0; i < cfg->kafka_cnt; i++) {
        const struct config_kv *kv = &cfg->kafka[i];
        char rderr[512];
        char clean[512];

        if (rd_kafka_conf_set(conf, kv->key, kv->value, rderr, sizeof(rderr)) ==
            RD_KAFKA_CONF_OK)
            continue;
        if (kafka_key_secret(kv->key))
            redact_copy(clean, sizeof(clean), rderr, kv->value);
        else
            snprintf(clean, sizeof(clean), "%s", rderr);
        set_err(errstr, errstr_size, "invalid kafka property kafka.%s: %s",
                kv->key, clean);
        return CS_ERR_CONFIG;
    }
    return CS_ERR_OK;
}

/* ------------------------------------------------------------------ */
/* Printing                                                            */
/* ------------------------------------------------------------------ */

/* Writes @p s so that it reads back as the same YAML scalar. */
static void print_yaml_scalar(FILE *out, const char *s)
{
    bool plain = s[0] != '\0' && strchr("-:?", s[0]) == NULL &&
                 strcasecmp(s, "null") != 0; /* plain null reads as "" */

    for (const char *p = s; plain && *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                (c >= '0' && c <= '9') || strchr("._/:@,+=-", c) != NULL;
    }
    /* no blanks, quotes, '#' or flow characters: safe as a plain scalar */
    if (plain) {
        fputs(s, out);
        return;
    }
    fputc('"', out);
    for (const char *p = s; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\x%02x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

static void print_field_value(FILE *out, const struct config_field *f,
                              void *target)
{
    const char *s;

    if ((f->flags & CONFIG_SECRET) && f->type != CONFIG_STRING) {
        print_yaml_scalar(out, REDACTED);
        return;
    }
    switch (f->type) {
    case CONFIG_INT:
        fprintf(out, "%d", *member_int(f, target));
        return;
    case CONFIG_BOOL:
        fputs(*member_bool(f, target) ? "true" : "false", out);
        return;
    case CONFIG_STRING:
        break;
    }
    s = *member_str(f, target);
    if (s == NULL)
        s = "";
    /* An empty secret is shown as empty: "not set" helps and leaks nothing. */
    print_yaml_scalar(out, (f->flags & CONFIG_SECRET) && s[0] ? REDACTED : s);
}

void config_print_effective(FILE *out, const struct config *cfg,
                            const struct config_section *extra, size_t nextra)
{
    /* The section API takes a mutable target; printing only reads it. */
    struct config_section common = common_section((struct config *)cfg);

    fprintf(out, "# crmsync-%s effective configuration (secrets redacted)\n",
            cfg->worker != NULL ? cfg->worker : "?");
    fprintf(out, "# file: %s\n",
            cfg->config_path != NULL ? cfg->config_path : "(none)");
    for (size_t s = 0; s <= nextra; s++) {
        const struct config_section *sec = section_at(&common, extra, s);
        fprintf(out, "# %s\n", sec->title);
        for (size_t i = 0; i < sec->nfields; i++) {
            fprintf(out, "%s: ", sec->fields[i].name);
            print_field_value(out, &sec->fields[i], sec->target);
            fputc('\n', out);
        }
    }
    fputs("# kafka (passed to librdkafka)\n", out);
    for (size_t i = 0; i < cfg->kafka_cnt; i++) {
        const struct config_kv *kv = &cfg->kafka[i];
        fprintf(out, "kafka.%s: ", kv->key);
        print_yaml_scalar(out, kafka_key_secret(kv->key) && kv->value[0]
                                   ? REDACTED
                                   : kv->value);
        fputc('\n', out);
    }
}

/* "1..100000", "all|unique", "true|false" or "" (strings). */
static void format_bounds(char *buf, size_t size, const struct config_field *f)
{
    if (f->type == CONFIG_INT)
        snprintf(buf, size, "%ld..%ld", f->min, f->max);
    else if (f->type == CONFIG_BOOL)
        snprintf(buf, size, "true|false");
    else
        snprintf(buf, size, "%s", f->choices != NULL ? f->choices : "");
}

void config_print_help(FILE *out, const char *worker,
                       const char *topics_default,
                       const struct config_section *extra, size_t nextra)
{
    struct config_section common = common_section(NULL);

    fprintf(out,
            "Usage: crmsync-%s [-c FILE] [--check-config] [--help] "
            "[--help-markdown]\n\n"
            "Options:\n"
            "  -c, --config FILE  YAML config file (default: env "
            "CRMSYNC_CONFIG; none = defaults + environment)\n"
            "  --check-config     load and validate the configuration, "
            "print it (secrets redacted), exit 0 or 1\n"
            "  --help-markdown    print the configuration reference as a "
            "Markdown table\n"
            "  -h, --help         print this help\n\n"
            "Configuration keys (nested YAML or flat dotted keys; an "
            "environment variable overrides the file):\n",
            worker);
    for (size_t s = 0; s <= nextra; s++) {
        const struct config_section *sec = section_at(&common, extra, s);
        fprintf(out, "\n[%s]\n", sec->title);
        for (size_t i = 0; i < sec->nfields; i++) {
            const struct config_field *f = &sec->fields[i];
            char bounds[256];

            format_bounds(bounds, sizeof(bounds), f);
            fprintf(out, "  %s (%s%s%s%s%s) default \"%s\"%s%s\n      %s\n",
                    f->name, type_name(f->type), bounds[0] ? " " : "", bounds,
                    (f->flags & CONFIG_REQUIRED) ? ", required" : "",
                    (f->flags & CONFIG_SECRET) ? ", secret" : "",
                    field_default(f, topics_default),
                    f->env != NULL ? " env " : "", f->env != NULL ? f->env : "",
                    f->doc);
        }
    }
    fprintf(out, "\n[kafka]\n"
                 "  kafka.<property> (string) env CRMSYNC_KAFKA_<PROPERTY>\n"
                 "      Any librdkafka property, passed through verbatim (env: "
                 "upper-case, '.' -> '_');\n"
                 "      kafka.bootstrap.servers is required. Keys ending in "
                 "password/secret are redacted.\n");
}

/* Writes @p s for a Markdown table cell; @p code: inside a code span. */
static void print_md_cell(FILE *out, const char *s, bool code)
{
    if (code && s[0] == '\0')
        return;
    if (code)
        fputc('`', out);
    for (const char *p = s; *p != '\0'; p++) {
        if (*p == '|')
            fputs("\\|", out);
        else if (!code && *p == '<')
            fputs("&lt;", out);
        else if (!code && *p == '>')
            fputs("&gt;", out);
        else
            fputc(*p, out);
    }
    if (code)
        fputc('`', out);
}

void config_print_markdown(FILE *out, const char *worker,
                           const char *topics_default,
                           const struct config_section *extra, size_t nextra)
{
    struct config_section common = common_section(NULL);

    fprintf(out,
            "Configuration of `crmsync-%s` (generated by `crmsync-%s "
            "--help-markdown`).\n\n"
            "| Key | Env | Type | Default | Bounds | Description |\n"
            "|---|---|---|---|---|---|\n",
            worker, worker);
    for (size_t s = 0; s <= nextra; s++) {
        const struct config_section *sec = section_at(&common, extra, s);
        for (size_t i = 0; i < sec->nfields; i++) {
            const struct config_field *f = &sec->fields[i];
            char bounds[256];

            format_bounds(bounds, sizeof(bounds), f);
            fputs("| ", out);
            print_md_cell(out, f->name, true);
            fputs(" | ", out);
            print_md_cell(out, f->env != NULL ? f->env : "", true);
            fprintf(out, " | %s%s | ", type_name(f->type),
                    (f->flags & CONFIG_SECRET) ? " (secret)" : "");
            print_md_cell(out, field_default(f, topics_default), true);
            fputs(" | ", out);
            print_md_cell(out, bounds, true);
            fputs(" | ", out);
            if (f->flags & CONFIG_REQUIRED)
                fputs("Required. ", out);
            print_md_cell(out, f->doc, false);
            fputs(" |\n", out);
        }
    }
    fputs("| `kafka.<property>` | `CRMSYNC_KAFKA_<PROPERTY>` | string | | | "
          "Any librdkafka property, passed through verbatim (env: "
          "upper-case, `.` becomes `_`); `kafka.bootstrap.servers` is "
          "required |\n",
          out);
}

/* ------------------------------------------------------------------ */
/* Command line                                                        */
/* ------------------------------------------------------------------ */

int config_cli(int argc, char **argv, const char *worker,
               const char *topics_default, struct config *cfg,
               const struct config_section *extra, size_t nextra)
{
    const char *path = NULL;
    bool check = false;
    char errstr[512];

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            config_print_help(stdout, worker, topics_default, extra, nextra);
            return 0;
        } else if (strcmp(a, "--help-markdown") == 0) {
            config_print_markdown(stdout, worker, topics_default, extra,
                                  nextra);
            return 0;
        } else if (strcmp(a, "--check-config") == 0) {
            check = true;
        } else if ((strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) &&
                   i + 1 < argc) {
            path = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            path = a + 9;
        } else {
            fprintf(stderr, "crmsync-%s: %s '%s'\nTry 'crmsync-%s --help'.\n",
                    worker,
                    (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0)
                        ? "missing file after"
                        : "unknown argument",
                    a, worker);
            return 2;
        }
    }
    if (path == NULL) {
        const char *env = getenv("CRMSYNC_CONFIG");
        if (env != NULL && env[0] != '\0')
            path = env;
    }
    if (config_load(cfg, worker, topics_default, path, extra, nextra, errstr,
                    sizeof(errstr)) != CS_ERR_OK) {
        fprintf(stderr, "crmsync-%s: configuration error: %s\n", worker,
                errstr);
        return 1;
    }
    if (!check)
        return -1;
    config_print_effective(stdout, cfg, extra, nextra);
    fprintf(stderr, "crmsync-%s: configuration OK\n", worker);
    config_free(cfg, extra, nextra);
    return 0;
}
