/*
 * config - config_load()/config_free() and the kafka passthrough.
 *
 * Loading: table defaults -> YAML file (read by config_yaml.c, which hands
 * each dotted key back to config_loader_file_value() here) -> environment
 * -> REQUIRED fields -> cross-field rules and derived values (token URL,
 * scope, group id) -> librdkafka's verdict on the kafka properties. The
 * field table and value parsing live in config_fields.c, printing and the
 * command line in config_print.c; see config.h for the public API and
 * config_internal.h for how the files fit together.
 *
 * Thread-safety: config_load() reads the environment; start-up only.
 */
#include "common/config_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ; /* POSIX; not declared under _POSIX_C_SOURCE alone */

#define KAFKA_ENV_PREFIX "CRMSYNC_KAFKA_"
#define DATAVERSE_LOGIN  "https://login.microsoftonline.com/"

/* Sets (or replaces) @p key in the key/value list *kvs (*cnt entries).
 * Copies both strings. */
static enum cs_err kv_set(struct config_kv **kvs, size_t *cnt, const char *key,
                          const char *value)
{
    char *v = strdup(value);
    char *k = NULL;
    struct config_kv *grown;

    if (v == NULL)
        return CS_ERR_NOMEM;
    for (size_t i = 0; i < *cnt; i++) {
        if (strcmp((*kvs)[i].key, key) == 0) {
            free((*kvs)[i].value);
            (*kvs)[i].value = v;
            return CS_ERR_OK;
        }
    }
    k = strdup(key);
    if (k == NULL)
        goto out_free_value;
    grown = realloc(*kvs, (*cnt + 1) * sizeof(*grown));
    if (grown == NULL)
        goto out_free_key;
    *kvs = grown;
    (*kvs)[*cnt].key = k;
    (*kvs)[*cnt].value = v;
    (*cnt)++;
    return CS_ERR_OK;

out_free_key:
    free(k);
out_free_value:
    free(v);
    return CS_ERR_NOMEM;
}

static enum cs_err kafka_set(struct config *cfg, const char *key,
                             const char *value)
{
    return kv_set(&cfg->kafka, &cfg->kafka_cnt, key, value);
}

static void kv_free(struct config_kv **kvs, size_t *cnt)
{
    for (size_t i = 0; i < *cnt; i++) {
        free((*kvs)[i].key);
        free((*kvs)[i].value);
    }
    free(*kvs);
    *kvs = NULL;
    *cnt = 0;
}

/* ------------------------------------------------------------------ */
/* Loading                                                             */
/* ------------------------------------------------------------------ */

/* State of one config_load() call. */
struct config_loader {
    struct config *cfg;
    struct config_section common;
    const struct config_section *extra;
    size_t nextra;
    char *errstr;
    size_t errstr_size;
};

/* Finds the field called @p name in any section; *target gets its struct. */
static const struct config_field *loader_find(const struct config_loader *ld,
                                              const char *name, void **target)
{
    for (size_t s = 0; s <= ld->nextra; s++) {
        const struct config_section *sec =
            config_section_at(&ld->common, ld->extra, s);
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
static bool loader_is_group(const struct config_loader *ld, const char *prefix)
{
    size_t len = strlen(prefix);

    for (size_t s = 0; s <= ld->nextra; s++) {
        const struct config_section *sec =
            config_section_at(&ld->common, ld->extra, s);
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
static void loader_clear(struct config_loader *ld, const char *worker)
{
    memset(ld->cfg, 0, sizeof(*ld->cfg));
    ld->cfg->worker = worker;
    for (size_t s = 1; s <= ld->nextra; s++) {
        const struct config_section *sec =
            config_section_at(&ld->common, ld->extra, s);
        for (size_t i = 0; i < sec->nfields; i++) {
            if (sec->fields[i].type == CONFIG_STRING)
                *config_member_str(&sec->fields[i], sec->target) = NULL;
        }
    }
}

static enum cs_err loader_defaults(struct config_loader *ld,
                                   const char *topics_default)
{
    for (size_t s = 0; s <= ld->nextra; s++) {
        const struct config_section *sec =
            config_section_at(&ld->common, ld->extra, s);
        for (size_t i = 0; i < sec->nfields; i++) {
            const struct config_field *f = &sec->fields[i];
            enum cs_err err = config_field_set(
                f, sec->target, config_field_default(f, topics_default),
                "default", ld->errstr, ld->errstr_size);
            if (err != CS_ERR_OK)
                return err;
        }
    }
    return CS_ERR_OK;
}

bool config_loader_is_mapping(const struct config_loader *ld, const char *name)
{
    return strcmp(name, "kafka") == 0 || strcmp(name, "tenants") == 0 ||
           strncmp(name, CONFIG_TENANTS_PREFIX,
                   strlen(CONFIG_TENANTS_PREFIX)) == 0 ||
           strncmp(name, CONFIG_KAFKA_PREFIX, strlen(CONFIG_KAFKA_PREFIX)) ==
               0 ||
           loader_is_group(ld, name);
}

/* "tenants.<tenant>.<field>: value": checked against the field's type and
 * bounds now (on a scratch copy), stored as "<tenant>.<field>" for
 * config_tenant_section(). Only CONFIG_PER_TENANT fields of the worker's
 * own sections may be overridden. */
static enum cs_err loader_tenant_value(struct config_loader *ld,
                                       const char *rest,
                                       enum config_value_kind kind,
                                       const char *text, const char *origin)
{
    const char *dot = strchr(rest, '.');
    const struct config_field *f = NULL;
    void *target = NULL;
    void *scratch;
    enum cs_err err;

    if (dot == NULL || dot == rest || dot[1] == '\0') {
        config_set_err(ld->errstr, ld->errstr_size,
                       "tenants.%s: want tenants.<tenant>.<setting> (%s)", rest,
                       origin);
        return CS_ERR_CONFIG;
    }
    f = loader_find(ld, dot + 1, &target);
    if (f == NULL || !(f->flags & CONFIG_PER_TENANT)) {
        config_set_err(ld->errstr, ld->errstr_size, "tenants.%s: '%s' %s (%s)",
                       rest, dot + 1,
                       f == NULL ? "is not a setting"
                                 : "cannot be set per tenant",
                       origin);
        return CS_ERR_CONFIG;
    }
    if (kind == CONFIG_VALUE_OTHER || text == NULL ||
        (kind == CONFIG_VALUE_LIST && f->type != CONFIG_STRING)) {
        config_set_err(ld->errstr, ld->errstr_size,
                       "tenants.%s must be a single %s value (%s)", rest,
                       config_type_name(f->type), origin);
        return CS_ERR_CONFIG;
    }
    /* Every member type is at most pointer-sized. */
    scratch = calloc(1, f->offset + sizeof(void *) + sizeof(long));
    if (scratch == NULL)
        return CS_ERR_NOMEM;
    err =
        config_field_set(f, scratch, text, origin, ld->errstr, ld->errstr_size);
    if (f->type == CONFIG_STRING)
        free(*config_member_str(f, scratch));
    free(scratch);
    if (err != CS_ERR_OK)
        return err;
    err = kv_set(&ld->cfg->tenant_kv, &ld->cfg->tenant_kv_cnt, rest, text);
    if (err != CS_ERR_OK)
        config_set_err(ld->errstr, ld->errstr_size, "out of memory");
    return err;
}

enum cs_err config_loader_file_value(struct config_loader *ld, const char *name,
                                     enum config_value_kind kind,
                                     const char *text, const char *origin)
{
    void *target = NULL;
    const struct config_field *f;
    enum cs_err err;

    if (strncmp(name, CONFIG_KAFKA_PREFIX, strlen(CONFIG_KAFKA_PREFIX)) == 0) {
        if (kind != CONFIG_VALUE_SCALAR ||
            name[strlen(CONFIG_KAFKA_PREFIX)] == '\0') {
            config_set_err(ld->errstr, ld->errstr_size,
                           "kafka property '%s' must be a scalar (%s)", name,
                           origin);
            return CS_ERR_CONFIG;
        }
        err = kafka_set(ld->cfg, name + strlen(CONFIG_KAFKA_PREFIX), text);
        if (err != CS_ERR_OK)
            config_set_err(ld->errstr, ld->errstr_size, "out of memory");
        return err;
    }
    if (strncmp(name, CONFIG_TENANTS_PREFIX, strlen(CONFIG_TENANTS_PREFIX)) ==
        0)
        return loader_tenant_value(ld, name + strlen(CONFIG_TENANTS_PREFIX),
                                   kind, text, origin);
    if ((strcmp(name, "kafka") == 0 || strcmp(name, "tenants") == 0) &&
        kind == CONFIG_VALUE_SCALAR && text[0] == '\0')
        return CS_ERR_OK; /* "kafka:" with nothing under it */
    f = loader_find(ld, name, &target);
    if (f == NULL) {
        if (loader_is_group(ld, name) || strcmp(name, "kafka") == 0)
            config_set_err(ld->errstr, ld->errstr_size,
                           "key '%s' must be a mapping in %s", name, origin);
        else
            config_set_err(ld->errstr, ld->errstr_size,
                           "unknown key '%s' in %s", name, origin);
        return CS_ERR_CONFIG;
    }
    if (kind == CONFIG_VALUE_SCALAR)
        return config_field_set(f, target, text, origin, ld->errstr,
                                ld->errstr_size);
    if (kind != CONFIG_VALUE_LIST || f->type != CONFIG_STRING || text == NULL) {
        config_set_err(
            ld->errstr, ld->errstr_size, "%s must be a single %s value%s (%s)",
            name, config_type_name(f->type),
            f->type == CONFIG_STRING ? " or a list of strings" : "", origin);
        return CS_ERR_CONFIG;
    }
    return config_field_set(f, target, text, origin, ld->errstr,
                            ld->errstr_size);
}

/* Records the file name, then reads the file (config_yaml.c). */
static enum cs_err loader_file(struct config_loader *ld, const char *path)
{
    ld->cfg->config_path = strdup(path);
    if (ld->cfg->config_path == NULL) {
        config_set_err(ld->errstr, ld->errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    return config_yaml_read(ld, path, ld->errstr, ld->errstr_size);
}

/* Field overrides from their environment variables, then every
 * CRMSYNC_KAFKA_<PROP>. Empty variables count as unset. */
static enum cs_err loader_env(struct config_loader *ld)
{
    size_t plen = strlen(KAFKA_ENV_PREFIX);

    for (size_t s = 0; s <= ld->nextra; s++) {
        const struct config_section *sec =
            config_section_at(&ld->common, ld->extra, s);
        for (size_t i = 0; i < sec->nfields; i++) {
            const struct config_field *f = &sec->fields[i];
            const char *v = f->env != NULL ? getenv(f->env) : NULL;
            char origin[CONFIG_NAME_BUF];
            enum cs_err err;

            if (v == NULL || v[0] == '\0')
                continue;
            snprintf(origin, sizeof(origin), "env %s", f->env);
            err = config_field_set(f, sec->target, v, origin, ld->errstr,
                                   ld->errstr_size);
            if (err != CS_ERR_OK)
                return err;
        }
    }
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        char key[CONFIG_NAME_BUF];
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
            config_set_err(ld->errstr, ld->errstr_size, "out of memory");
            return CS_ERR_NOMEM;
        }
    }
    return CS_ERR_OK;
}

static enum cs_err loader_required(struct config_loader *ld)
{
    for (size_t s = 0; s <= ld->nextra; s++) {
        const struct config_section *sec =
            config_section_at(&ld->common, ld->extra, s);
        for (size_t i = 0; i < sec->nfields; i++) {
            const struct config_field *f = &sec->fields[i];
            const char *v;

            if (!(f->flags & CONFIG_REQUIRED) || f->type != CONFIG_STRING)
                continue;
            v = *config_member_str(f, sec->target);
            if (v != NULL && v[0] != '\0')
                continue;
            config_set_err(ld->errstr, ld->errstr_size,
                           "%s is required (set it in the config file%s%s)",
                           f->name, f->env != NULL ? " or env " : "",
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
static enum cs_err loader_finish(struct config_loader *ld)
{
    struct config *cfg = ld->cfg;
    size_t len = strlen(cfg->crm_base_url);
    const char *bs;
    enum cs_err err = CS_ERR_OK;

    while (len > 0 && cfg->crm_base_url[len - 1] == '/')
        cfg->crm_base_url[--len] = '\0';
    if (strcmp(cfg->crm_kind, "dataverse") == 0) {
        if (len == 0) {
            config_set_err(
                ld->errstr, ld->errstr_size,
                "crm.base_url is required (set it in the config file or "
                "env CRMSYNC_CRM_BASE_URL)");
            return CS_ERR_CONFIG;
        }
        if (cfg->crm_token_url[0] == '\0') {
            if (cfg->crm_tenant_id[0] == '\0') {
                config_set_err(
                    ld->errstr, ld->errstr_size,
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
        config_set_err(ld->errstr, ld->errstr_size, "out of memory");
        return err;
    }
    if (cfg->retry_backoff_min_ms > cfg->retry_backoff_max_ms) {
        config_set_err(ld->errstr, ld->errstr_size,
                       "consumer.retry_backoff_min_ms (%d) must not exceed "
                       "consumer.retry_backoff_max_ms (%d)",
                       cfg->retry_backoff_min_ms, cfg->retry_backoff_max_ms);
        return CS_ERR_CONFIG;
    }
    bs = config_kafka_get(cfg, "bootstrap.servers");
    if (bs == NULL || bs[0] == '\0') {
        config_set_err(
            ld->errstr, ld->errstr_size,
            "kafka.bootstrap.servers is required (set it under kafka: in "
            "the config file or env CRMSYNC_KAFKA_BOOTSTRAP_SERVERS)");
        return CS_ERR_CONFIG;
    }
    return CS_ERR_OK;
}

/* Lets librdkafka judge every passthrough property now, so --check-config
 * catches a misspelt kafka key before the worker starts. */
static enum cs_err loader_check_kafka(struct config_loader *ld)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    enum cs_err err;

    if (conf == NULL) {
        config_set_err(ld->errstr, ld->errstr_size, "out of memory");
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
    struct config_loader ld = {.cfg = cfg,
                               .common = config_common_section(cfg),
                               .extra = extra,
                               .nextra = nextra,
                               .errstr = errstr,
                               .errstr_size = errstr_size};
    enum cs_err err;

    config_set_err(errstr, errstr_size, "%s", "");
    if (cfg == NULL)
        return CS_ERR_INVALID_ARG;
    loader_clear(&ld, worker);
    if (worker == NULL) {
        config_set_err(errstr, errstr_size, "config_load: worker name is NULL");
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
        struct config_section common = config_common_section(cfg);

        for (size_t i = 0; i < common.nfields; i++) {
            const struct config_field *f = &common.fields[i];
            if (f->type == CONFIG_STRING) {
                free(*config_member_str(f, cfg));
                *config_member_str(f, cfg) = NULL;
            }
        }
        kv_free(&cfg->kafka, &cfg->kafka_cnt);
        kv_free(&cfg->tenant_kv, &cfg->tenant_kv_cnt);
        free(cfg->config_path);
        cfg->config_path = NULL;
    }
    for (size_t s = 0; extra != NULL && s < nextra; s++) {
        for (size_t i = 0; i < extra[s].nfields; i++) {
            const struct config_field *f = &extra[s].fields[i];
            if (f->type == CONFIG_STRING && extra[s].target != NULL) {
                free(*config_member_str(f, extra[s].target));
                *config_member_str(f, extra[s].target) = NULL;
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
            int n =
                snprintf(out + used, out_size - used, "%s", CONFIG_REDACTED);
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
        if (config_kafka_key_secret(kv->key))
            redact_copy(clean, sizeof(clean), rderr, kv->value);
        else
            snprintf(clean, sizeof(clean), "%s", rderr);
        config_set_err(errstr, errstr_size,
                       "invalid kafka property kafka.%s: %s", kv->key, clean);
        return CS_ERR_CONFIG;
    }
    return CS_ERR_OK;
}
