/*
 * config_fields - the common field table and per-field value handling.
 *
 * Holds the table of settings every worker shares (common_fields) and the
 * helpers that turn a text value into a field's member: integer bounds,
 * boolean spellings, allowed choices, defaults, and which kafka properties
 * are secret. Part of the config module; see config.h for the public API
 * and config_internal.h for how the files fit together.
 *
 * Thread-safety: the table is immutable; config_field_set() writes only the
 * caller's target struct.
 */
#include "common/config_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
    F_INT("crm.max_in_flight", NULL, crm_max_in_flight, "1", 1, 16,
          "concurrent $batch requests per worker (Dataverse allows 52 per "
          "user; Microsoft recommends concurrency over batch size)"),
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
struct config_section config_common_section(struct config *cfg)
{
    struct config_section s = {"common", common_fields, COMMON_NFIELDS, cfg};
    return s;
}

const struct config_section *
config_section_at(const struct config_section *common,
                  const struct config_section *extra, size_t i)
{
    return i == 0 ? common : &extra[i - 1];
}

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

void config_set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
{
    va_list ap;

    if (errstr == NULL || errstr_size == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errstr, errstr_size, fmt, ap);
    va_end(ap);
}

const char *config_type_name(enum config_type t)
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

const char *config_field_default(const struct config_field *f,
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
bool config_kafka_key_secret(const char *key)
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

enum cs_err config_field_set(const struct config_field *f, void *target,
                             const char *value, const char *origin,
                             char *errstr, size_t errstr_size)
{
    const char *shown = (f->flags & CONFIG_SECRET) ? CONFIG_REDACTED : value;
    long lv = 0;
    bool bv = false;
    char *dup;

    switch (f->type) {
    case CONFIG_STRING:
        if (f->choices != NULL && !choice_ok(f->choices, value)) {
            config_set_err(errstr, errstr_size,
                           "invalid value '%s' for %s (%s): must be one of %s",
                           shown, f->name, origin, f->choices);
            return CS_ERR_CONFIG;
        }
        dup = strdup(value);
        if (dup == NULL) {
            config_set_err(errstr, errstr_size, "out of memory setting %s",
                           f->name);
            return CS_ERR_NOMEM;
        }
        free(*config_member_str(f, target));
        *config_member_str(f, target) = dup;
        return CS_ERR_OK;
    case CONFIG_INT:
        if (!parse_long(value, &lv) || lv < f->min || lv > f->max) {
            config_set_err(
                errstr, errstr_size,
                "invalid value '%s' for %s (%s): must be an integer in "
                "%ld..%ld",
                shown, f->name, origin, f->min, f->max);
            return CS_ERR_CONFIG;
        }
        *config_member_int(f, target) = (int)lv;
        return CS_ERR_OK;
    case CONFIG_BOOL:
        if (!parse_bool(value, &bv)) {
            config_set_err(errstr, errstr_size,
                           "invalid value '%s' for %s (%s): must be "
                           "true/false/yes/no/1/0",
                           shown, f->name, origin);
            return CS_ERR_CONFIG;
        }
        *config_member_bool(f, target) = bv;
        return CS_ERR_OK;
    }
    return CS_ERR_INVALID_ARG;
}
