/*
 * config - table-driven worker configuration (YAML file + environment).
 *
 * Every setting is one row of a `struct config_field` table: dotted name,
 * overriding environment variable, type, target member (offsetof), default,
 * bounds or allowed choices, flags and a one-line doc. The same tables drive
 * loading, validation, `--help`, `--help-markdown` (the README reference)
 * and `--check-config`, so documentation cannot drift from behaviour.
 *
 * Load order: table defaults -> YAML file (Kubernetes mounts it from a
 * ConfigMap) -> environment (connection settings and secrets). Nested YAML
 * mappings map to dotted names (`redis: {url: x}` == `redis.url: x`). Every
 * key under `kafka:` (and every CRMSYNC_KAFKA_<PROP> variable) is passed
 * through verbatim to librdkafka, so SASL_SSL and friends need no code.
 * An empty environment variable counts as unset. Any error names the key,
 * where the value came from and, unless the field is secret, the value.
 *
 * Secrets (CONFIG_SECRET fields, kafka keys whose last component contains
 * "password" or "secret", ssl.key.pem, sasl.oauthbearer.config) are printed
 * as "***" everywhere, error messages included.
 *
 * Ownership: every string member filled by config_load() (in struct config
 * and in the workers' extra section structs) is heap-allocated and owned by
 * that struct until config_free(). config_load() overwrites the members
 * without freeing them: call config_free() before loading into the same
 * structs again.
 *
 * Thread-safety: config_load() reads the process environment and must run
 * before other threads exist (start-up). A loaded struct config is
 * read-only afterwards and may be read from any thread.
 */
#ifndef CRMSYNC_CONFIG_H
#define CRMSYNC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <librdkafka/rdkafka.h>
#include "common/err.h"

enum config_type { CONFIG_STRING, CONFIG_INT, CONFIG_BOOL };
#define CONFIG_SECRET   0x1u /* value redacted ("***") whenever printed */
#define CONFIG_REQUIRED 0x2u /* must be non-empty after loading */
#define CONFIG_PER_TENANT                                                      \
    0x4u /* may be overridden under tenants.<name>. (config_tenant_section) */

struct config_field {
    const char *name; /* dotted YAML path, e.g. "redis.url" */
    const char *env;  /* environment variable that overrides it, or NULL */
    enum config_type type;
    size_t offset;       /* offsetof() of the member in the target struct:
                            char * / int / bool */
    const char *def;     /* default as text ("" = empty string) */
    long min, max;       /* bounds for CONFIG_INT */
    unsigned flags;      /* CONFIG_SECRET | CONFIG_REQUIRED */
    const char *choices; /* CONFIG_STRING only: "all|unique" allowed values,
                            or NULL */
    const char *doc;     /* one-line documentation */
};

/* A table plus the struct it fills; workers pass their own extra sections. */
struct config_section {
    const char *title; /* e.g. "response worker" */
    const struct config_field *fields;
    size_t nfields;
    void *target; /* struct the offsets point into */
};

struct config_kv {
    char *key;
    char *value;
}; /* owned by struct config */

/* Settings every worker shares. String members are owned by the struct
 * (config_free). */
struct config {
    const char *worker; /* borrowed worker name given to config_load */
    char *config_path;  /* YAML file used, or NULL */
    /* consumer */
    char *topics;             /* consumer.topics, env CRMSYNC_TOPICS, comma
                                 list; default given by the worker */
    char *group_id;           /* consumer.group_id, env CRMSYNC_GROUP_ID;
                                 "" => "crmsync-<worker>" after load */
    int batch_max_messages;   /* consumer.batch_max_messages */
    int batch_max_ms;         /* consumer.batch_max_ms */
    char *dlq_suffix;         /* consumer.dlq_suffix */
    int retry_backoff_min_ms; /* consumer.retry_backoff_min_ms */
    int retry_backoff_max_ms; /* consumer.retry_backoff_max_ms */
    int shutdown_timeout_ms;  /* consumer.shutdown_timeout_ms */
    /* avro */
    char *schema_registry_url; /* avro.schema_registry_url; "" = local dir */
    char *schemas_dir;         /* avro.schemas_dir */
    /* redis + idempotency */
    char *redis_url;          /* redis.url, SECRET (may hold a password) */
    int redis_timeout_ms;     /* redis.timeout_ms */
    int idem_ttl_days;        /* idem.ttl_days */
    int idem_buckets_per_day; /* idem.buckets_per_day */
    int idem_lease_ms;        /* idem.lease_ms */
    /* crm */
    char *crm_kind;          /* crm.kind: "dataverse" */
    char *crm_base_url;      /* crm.base_url, no trailing '/' */
    char *crm_token_url;     /* crm.token_url; "" => login.microsoftonline.com
                                /<tenant_id>/oauth2/v2.0/token */
    char *crm_tenant_id;     /* crm.tenant_id */
    char *crm_client_id;     /* crm.client_id */
    char *crm_client_secret; /* crm.client_secret, SECRET */
    char *crm_scope;         /* crm.scope; "" => <base_url>/.default */
    int crm_batch_size;      /* crm.batch_size */
    int crm_max_in_flight;   /* crm.max_in_flight */
    int crm_timeout_ms;      /* crm.timeout_ms */
    int crm_connect_timeout_ms; /* crm.connect_timeout_ms */
    int crm_max_retries;        /* crm.max_retries */
    bool crm_tls_verify;        /* crm.tls_verify */
    char *crm_ca_file;          /* crm.ca_file */
    /* metrics + logs */
    int metrics_port; /* metrics.port, 0 = disabled */
    char *log_level;  /* log.level: debug|info|warn|error */
    /* kafka passthrough: every key under the YAML "kafka:" mapping, plus env
       CRMSYNC_KAFKA_<PROP> (upper-case, '.' -> '_', e.g.
       CRMSYNC_KAFKA_BOOTSTRAP_SERVERS -> bootstrap.servers). Env wins over
       file. Keys whose last component contains "password" or "secret" are
       redacted when printed. */
    struct config_kv *kafka;
    size_t kafka_cnt;
    /* per-tenant overrides: "tenants: {<tenant>: {<setting>: value}}" in the
       file (no environment form), stored as key "<tenant>.<setting>" in file
       order; only CONFIG_PER_TENANT settings, validated at load. Tenant
       names cannot contain '.'. */
    struct config_kv *tenant_kv;
    size_t tenant_kv_cnt;
};

/**
 * @brief Loads defaults -> YAML file (if @p yaml_path non-NULL) ->
 *        environment, then validates every field (type, bounds, choices,
 *        REQUIRED, unknown keys) and the cross-field rules, and derives
 *        group_id / crm.token_url / crm.scope when empty.
 * @param worker borrowed; must outlive @p cfg (stored in cfg->worker).
 * @param topics_default the worker's default for consumer.topics (borrowed).
 * @param extra worker-specific tables (borrowed); their targets are filled.
 * @returns CS_ERR_OK, CS_ERR_NOMEM, or CS_ERR_CONFIG with a message naming
 *          the key and the bad value (secrets redacted) in @p errstr.
 *          On failure everything allocated is freed (config_free is still
 *          safe to call).
 */
enum cs_err config_load(struct config *cfg, const char *worker,
                        const char *topics_default, const char *yaml_path,
                        const struct config_section *extra, size_t nextra,
                        char *errstr, size_t errstr_size);

/* Frees strings of cfg and of every extra section's string fields and sets
 * the pointers to NULL. NULL-safe, idempotent. */
void config_free(struct config *cfg, const struct config_section *extra,
                 size_t nextra);

/* --help: usage + every field (name, env, type, default, bounds/choices,
 * doc), common then extra. */
void config_print_help(FILE *out, const char *worker,
                       const char *topics_default,
                       const struct config_section *extra, size_t nextra);

/* Markdown table of all fields (name | env | type | default | bounds |
 * description), used to generate the README config reference. */
void config_print_markdown(FILE *out, const char *worker,
                           const char *topics_default,
                           const struct config_section *extra, size_t nextra);

/* Prints the effective configuration as "name: value" lines (readable back
 * as a flat YAML file), secrets redacted. */
void config_print_effective(FILE *out, const struct config *cfg,
                            const struct config_section *extra, size_t nextra);

/**
 * @brief Copies every kafka passthrough property into @p conf
 *        (rd_kafka_conf_set).
 * @returns CS_ERR_CONFIG with librdkafka's message naming the key (secret
 *          values redacted) on an invalid property.
 */
enum cs_err config_apply_kafka(const struct config *cfg, rd_kafka_conf_t *conf,
                               char *errstr, size_t errstr_size);

/**
 * @brief The tenants that have overrides, in first-mention order.
 * @returns the number of distinct tenants; config_tenant_name(cfg, i, buf,
 *          size) copies name i into @p buf and returns it (NULL when i is
 *          out of range or the name does not fit).
 */
size_t config_tenant_count(const struct config *cfg);
const char *config_tenant_name(const struct config *cfg, size_t i, char *buf,
                               size_t size);

/**
 * @brief The effective settings of section @p sec for @p tenant: every field
 *        copied from sec->target (as loaded), then the tenant's overrides.
 * @param out a struct of the section's type; its table members are
 *        overwritten without being freed (string members are fresh copies:
 *        free them with config_section_free(sec, out)).
 * @returns CS_ERR_OK or CS_ERR_NOMEM (values were validated at load).
 */
enum cs_err config_tenant_section(const struct config *cfg,
                                  const struct config_section *sec,
                                  const char *tenant, void *out, char *errstr,
                                  size_t errstr_size);

/* Frees the string members of @p target described by @p sec's table and
 * sets them to NULL. NULL-safe. */
void config_section_free(const struct config_section *sec, void *target);

/* Looks up a kafka passthrough value, or NULL (borrowed from cfg). */
const char *config_kafka_get(const struct config *cfg, const char *key);

/**
 * @brief Standard command line for every worker:
 *   -c/--config FILE (else env CRMSYNC_CONFIG, else no file), -h/--help,
 *   --help-markdown, --check-config (load + validate + print the effective
 *   config redacted, exit 0 or 1).
 * @returns -1 when the worker should run (cfg loaded; caller frees with
 *          config_free), otherwise the process exit code (0 after --help /
 *          --check-config success, 1 on a config error with the message
 *          printed to stderr, 2 on a usage error). When the return is not -1
 *          nothing is left to free.
 */
int config_cli(int argc, char **argv, const char *worker,
               const char *topics_default, struct config *cfg,
               const struct config_section *extra, size_t nextra);

#endif
