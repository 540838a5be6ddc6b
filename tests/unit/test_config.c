/*
 * Unit tests for common/config: defaults, YAML (nested, flat, lists), env
 * overrides, kafka passthrough, validation errors (table-driven), secret
 * redaction, worker extra sections, help/markdown and config_cli.
 *
 * Every test starts and ends with no CRMSYNC_* / TEST_CONFIG_* variables in
 * the environment; YAML fixtures are mkstemp files under /tmp.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"

extern char **environ;

#define TOPICS_DEFAULT "response.events"

#define assert_contains(hay, needle)                                           \
    do {                                                                       \
        if (strstr((hay), (needle)) == NULL)                                   \
            fail_msg("expected '%s' in:\n%s", (needle), (hay));                \
    } while (0)
/* Fails with the loader's message when @p call does not return OK. */
#define assert_load_ok(call, errstr)                                           \
    do {                                                                       \
        enum cs_err rc_ = (call);                                              \
        if (rc_ != CS_ERR_OK)                                                  \
            fail_msg("load failed: %s: %s", cs_err_name(rc_), (errstr));       \
    } while (0)
#define assert_not_contains(hay, needle)                                       \
    do {                                                                       \
        if (strstr((hay), (needle)) != NULL)                                   \
            fail_msg("did not expect '%s' in:\n%s", (needle), (hay));          \
    } while (0)

/* ------------------------------------------------------------------ */
/* Fixtures                                                            */
/* ------------------------------------------------------------------ */

/* Unsets every CRMSYNC_* and TEST_CONFIG_* variable. */
static void env_clear(void)
{
    char names[64][128];
    size_t n = 0;

    for (char **e = environ; *e != NULL && n < 64; e++) {
        const char *eq = strchr(*e, '=');
        size_t len = eq != NULL ? (size_t)(eq - *e) : strlen(*e);
        if ((strncmp(*e, "CRMSYNC_", 8) == 0 ||
             strncmp(*e, "TEST_CONFIG_", 12) == 0) &&
            len < sizeof(names[0])) {
            memcpy(names[n], *e, len);
            names[n][len] = '\0';
            n++;
        }
    }
    for (size_t i = 0; i < n; i++)
        unsetenv(names[i]);
}

/* The smallest environment that loads: bootstrap servers + CRM. */
static void env_minimal(void)
{
    setenv("CRMSYNC_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", 1);
    setenv("CRMSYNC_CRM_BASE_URL", "https://org.example.com/", 1);
    setenv("CRMSYNC_CRM_TENANT_ID", "tenant-1", 1);
}

static int setup(void **state)
{
    (void)state;
    env_clear();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    env_clear();
    return 0;
}

/* Writes @p text to a new temp file; path into @p path (size >= 64). */
static void yaml_write(char *path, size_t size, const char *text)
{
    int fd;
    size_t len = strlen(text);

    snprintf(path, size, "/tmp/test_config_XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
}

/* Loads @p yaml (NULL = no file) with the given extra sections. */
static enum cs_err load_text(struct config *cfg, const char *yaml,
                             const struct config_section *extra, size_t nextra,
                             char *errstr, size_t errsize)
{
    char path[64];
    enum cs_err err;

    if (yaml == NULL)
        return config_load(cfg, "response", TOPICS_DEFAULT, NULL, extra, nextra,
                           errstr, errsize);
    yaml_write(path, sizeof(path), yaml);
    err = config_load(cfg, "response", TOPICS_DEFAULT, path, extra, nextra,
                      errstr, errsize);
    unlink(path);
    return err;
}

/* Captures config_print_effective() into a malloc'ed string. */
static char *effective_text(const struct config *cfg,
                            const struct config_section *extra, size_t nextra)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    assert_non_null(f);
    config_print_effective(f, cfg, extra, nextra);
    fclose(f);
    return buf;
}

/* ------------------------------------------------------------------ */
/* A worker's extra section                                            */
/* ------------------------------------------------------------------ */

struct response_opts {
    char *mode;
    int window_s;
    bool filter_machine_opens;
    int pin; /* secret int: proves bad secret values never reach errors */
};

static const struct config_field response_fields[] = {
    {"response.mode", "TEST_CONFIG_MODE", CONFIG_STRING,
     offsetof(struct response_opts, mode), "all", 0, 0, CONFIG_PER_TENANT,
     "all|unique", "Which reactions become responses"},
    {"response.window_s", NULL, CONFIG_INT,
     offsetof(struct response_opts, window_s), "60", 1, 3600, CONFIG_PER_TENANT,
     NULL, "Dedupe window (s)"},
    {"response.filter_machine_opens", NULL, CONFIG_BOOL,
     offsetof(struct response_opts, filter_machine_opens), "false", 0, 0, 0,
     NULL, "Drop machine opens"},
    {"response.pin", "TEST_CONFIG_PIN", CONFIG_INT,
     offsetof(struct response_opts, pin), "0", 0, 9999, CONFIG_SECRET, NULL,
     "A secret number"},
};

static void response_section(struct config_section *sec,
                             struct response_opts *opts)
{
    sec->title = "response worker";
    sec->fields = response_fields;
    sec->nfields = sizeof(response_fields) / sizeof(response_fields[0]);
    sec->target = opts;
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */
/* ------------------------------------------------------------------ */

static void test_defaults(void **state)
{
    struct config cfg;
    char errstr[512];
    char *text;
    /* Every default, as config_print_effective shows it. */
    static const char *const lines[] = {
        "consumer.topics: response.events\n",
        "consumer.group_id: crmsync-response\n",
        "consumer.batch_max_messages: 500\n",
        "consumer.batch_max_ms: 200\n",
        "consumer.dlq_suffix: .dlq\n",
        "consumer.retry_backoff_min_ms: 200\n",
        "consumer.retry_backoff_max_ms: 30000\n",
        "consumer.shutdown_timeout_ms: 8000\n",
        "avro.schema_registry_url: \"\"\n",
        "avro.schemas_dir: schemas\n",
        "redis.url: \"***\"\n",
        "redis.timeout_ms: 2000\n",
        "idem.ttl_days: 7\n",
        "idem.buckets_per_day: 4096\n",
        "idem.lease_ms: 30000\n",
        "crm.kind: dataverse\n",
        "crm.base_url: https://org.example.com\n",
        "crm.token_url: https://login.microsoftonline.com/tenant-1/oauth2/"
        "v2.0/token\n",
        "crm.client_secret: \"\"\n",
        "crm.scope: https://org.example.com/.default\n",
        "crm.batch_size: 100\n",
        "crm.timeout_ms: 30000\n",
        "crm.connect_timeout_ms: 5000\n",
        "crm.max_retries: 3\n",
        "crm.tls_verify: true\n",
        "crm.ca_file: \"\"\n",
        "metrics.port: 9464\n",
        "log.level: info\n",
        "kafka.bootstrap.servers: 127.0.0.1:9092\n",
    };

    (void)state;
    env_minimal();
    assert_load_ok(load_text(&cfg, NULL, NULL, 0, errstr, sizeof(errstr)),
                   errstr);
    assert_string_equal(cfg.worker, "response");
    assert_null(cfg.config_path);
    assert_string_equal(cfg.topics, TOPICS_DEFAULT);
    assert_string_equal(cfg.group_id, "crmsync-response");
    assert_int_equal(cfg.batch_max_messages, 500);
    assert_int_equal(cfg.shutdown_timeout_ms, 8000);
    assert_string_equal(cfg.redis_url, "redis://127.0.0.1:6379/0");
    assert_int_equal(cfg.idem_buckets_per_day, 4096);
    assert_string_equal(cfg.crm_base_url, "https://org.example.com");
    assert_string_equal(
        cfg.crm_token_url,
        "https://login.microsoftonline.com/tenant-1/oauth2/v2.0/token");
    assert_string_equal(cfg.crm_scope, "https://org.example.com/.default");
    assert_true(cfg.crm_tls_verify);
    assert_int_equal(cfg.metrics_port, 9464);
    assert_string_equal(cfg.log_level, "info");
    assert_int_equal(cfg.kafka_cnt, 1);

    text = effective_text(&cfg, NULL, 0);
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        assert_contains(text, lines[i]);
    free(text);
    config_free(&cfg, NULL, 0);
    assert_null(cfg.topics);
    config_free(&cfg, NULL, 0); /* idempotent */
    config_free(NULL, NULL, 0);
}

static void test_yaml_nested_and_flat(void **state)
{
    struct config cfg;
    char errstr[512];
    const char *yaml = "# mounted from a ConfigMap\n"
                       "consumer:\n"
                       "  topics: [a.events, b.events]\n"
                       "  batch_max_messages: 42\n"
                       "consumer.batch_max_ms: 7\n"
                       "redis.url: \"redis://:pw@redis:6379/1\"\n"
                       "crm:\n"
                       "  base_url: https://org.crm4.dynamics.com//\n"
                       "  token_url: http://127.0.0.1:1234/token\n"
                       "  client_id: app-1\n"
                       "  tls_verify: no\n"
                       "  max_retries: 0\n"
                       "avro:\n"
                       "  schema_registry_url: ~\n"
                       "kafka:\n"
                       "  bootstrap.servers: k1:9092,k2:9092\n"
                       "  security:\n"
                       "    protocol: SASL_SSL\n"
                       "  sasl.mechanism: PLAIN\n"
                       "kafka.enable.auto.commit: \"false\"\n";

    (void)state;
    assert_load_ok(load_text(&cfg, yaml, NULL, 0, errstr, sizeof(errstr)),
                   errstr);
    assert_non_null(cfg.config_path);
    assert_string_equal(cfg.topics, "a.events,b.events");
    assert_int_equal(cfg.batch_max_messages, 42);
    assert_int_equal(cfg.batch_max_ms, 7);
    assert_string_equal(cfg.redis_url, "redis://:pw@redis:6379/1");
    assert_string_equal(cfg.crm_base_url, "https://org.crm4.dynamics.com");
    assert_string_equal(cfg.crm_token_url, "http://127.0.0.1:1234/token");
    assert_string_equal(cfg.crm_scope,
                        "https://org.crm4.dynamics.com/.default");
    assert_string_equal(cfg.crm_client_id, "app-1");
    assert_false(cfg.crm_tls_verify);
    assert_int_equal(cfg.crm_max_retries, 0);
    assert_string_equal(cfg.schema_registry_url, "");
    assert_string_equal(config_kafka_get(&cfg, "bootstrap.servers"),
                        "k1:9092,k2:9092");
    assert_string_equal(config_kafka_get(&cfg, "security.protocol"),
                        "SASL_SSL");
    assert_string_equal(config_kafka_get(&cfg, "sasl.mechanism"), "PLAIN");
    assert_string_equal(config_kafka_get(&cfg, "enable.auto.commit"), "false");
    assert_null(config_kafka_get(&cfg, "sasl.password"));
    config_free(&cfg, NULL, 0);
}

static void test_env_overrides_yaml(void **state)
{
    struct config cfg;
    char errstr[512];
    const char *yaml = "redis: {url: \"redis://file:6379/0\"}\n"
                       "metrics: {port: 1000}\n"
                       "log: {level: debug}\n"
                       "consumer: {topics: file.topic}\n"
                       "crm: {base_url: \"https://file.example\", "
                       "tenant_id: file-tenant}\n"
                       "kafka:\n"
                       "  bootstrap.servers: file:9092\n"
                       "  security.protocol: PLAINTEXT\n"
                       "  client.id: from-file\n";

    (void)state;
    setenv("CRMSYNC_REDIS_URL", "redis://:envpw@env:6379/2", 1);
    setenv("CRMSYNC_METRICS_PORT", "0", 1);
    setenv("CRMSYNC_LOG_LEVEL", "", 1); /* empty counts as unset */
    setenv("CRMSYNC_TOPICS", "env.a,env.b", 1);
    setenv("CRMSYNC_CRM_BASE_URL", "https://env.example", 1);
    setenv("CRMSYNC_GROUP_ID", "my-group", 1);
    setenv("CRMSYNC_KAFKA_BOOTSTRAP_SERVERS", "env:9092", 1);
    setenv("CRMSYNC_KAFKA_SECURITY_PROTOCOL", "SASL_SSL", 1);
    setenv("CRMSYNC_KAFKA_SASL_PASSWORD", "kpw", 1);
    assert_load_ok(load_text(&cfg, yaml, NULL, 0, errstr, sizeof(errstr)),
                   errstr);
    assert_string_equal(cfg.redis_url, "redis://:envpw@env:6379/2");
    assert_int_equal(cfg.metrics_port, 0);
    assert_string_equal(cfg.log_level, "debug");
    assert_string_equal(cfg.topics, "env.a,env.b");
    assert_string_equal(cfg.crm_base_url, "https://env.example");
    assert_string_equal(cfg.crm_tenant_id, "file-tenant");
    assert_string_equal(cfg.group_id, "my-group");
    assert_string_equal(config_kafka_get(&cfg, "bootstrap.servers"),
                        "env:9092");
    assert_string_equal(config_kafka_get(&cfg, "security.protocol"),
                        "SASL_SSL");
    assert_string_equal(config_kafka_get(&cfg, "sasl.password"), "kpw");
    assert_string_equal(config_kafka_get(&cfg, "client.id"), "from-file");
    assert_int_equal(cfg.kafka_cnt, 4);
    config_free(&cfg, NULL, 0);
}

/* One invalid configuration and what its message must (not) say. */
struct bad_case {
    const char *what;
    const char *yaml;      /* NULL = no file */
    const char *env[4][2]; /* extra variables; value NULL = unset */
    const char *want[4];   /* substrings the message must contain */
    const char *never;     /* substring it must not contain, or NULL */
};

static const struct bad_case bad_cases[] = {
    {"unknown nested key",
     "redis:\n  urll: x\n",
     {{0}},
     {"unknown key 'redis.urll'", "/tmp/test_config_", "line 2"},
     NULL},
    {"unknown top-level key",
     "redsi:\n  url: x\n",
     {{0}},
     {"unknown key 'redsi'"},
     NULL},
    {"unknown flat key",
     "consumer.batchmax: 3\n",
     {{0}},
     {"unknown key 'consumer.batchmax'"},
     NULL},
    {"group given a scalar",
     "redis: x\n",
     {{0}},
     {"'redis' must be a mapping"},
     NULL},
    {"int below min",
     "consumer:\n  batch_max_messages: 0\n",
     {{0}},
     {"consumer.batch_max_messages", "'0'", "1..100000"},
     NULL},
    {"int above max from env",
     NULL,
     {{"CRMSYNC_METRICS_PORT", "70000"}},
     {"metrics.port", "'70000'", "0..65535", "env CRMSYNC_METRICS_PORT"},
     NULL},
    {"int with junk",
     "crm:\n  batch_size: 10x\n",
     {{0}},
     {"crm.batch_size", "'10x'"},
     NULL},
    {"int as a mapping",
     "crm:\n  batch_size: {a: 1}\n",
     {{0}},
     {"crm.batch_size must be a single int value"},
     NULL},
    {"bad bool",
     "crm:\n  tls_verify: maybe\n",
     {{0}},
     {"crm.tls_verify", "'maybe'", "true/false"},
     NULL},
    {"choice violation",
     "log:\n  level: verbose\n",
     {{0}},
     {"log.level", "'verbose'", "debug|info|warn|error"},
     NULL},
    {"unknown crm kind",
     "crm.kind: salesforce\n",
     {{0}},
     {"crm.kind", "'salesforce'", "dataverse"},
     NULL},
    {"empty required",
     "consumer:\n  dlq_suffix: \"\"\n",
     {{0}},
     {"consumer.dlq_suffix is required"},
     NULL},
    {"backoff min > max",
     "consumer: {retry_backoff_min_ms: 5000, retry_backoff_max_ms: 1000}\n",
     {{0}},
     {"consumer.retry_backoff_min_ms (5000)", "(1000)"},
     NULL},
    {"missing base url",
     NULL,
     {{"CRMSYNC_CRM_BASE_URL", NULL}},
     {"crm.base_url is required"},
     NULL},
    {"missing tenant",
     NULL,
     {{"CRMSYNC_CRM_TENANT_ID", NULL}},
     {"crm.tenant_id is required"},
     NULL},
    {"missing bootstrap servers",
     NULL,
     {{"CRMSYNC_KAFKA_BOOTSTRAP_SERVERS", NULL}},
     {"kafka.bootstrap.servers", "CRMSYNC_KAFKA_BOOTSTRAP_SERVERS"},
     NULL},
    {"librdkafka rejects a property",
     "kafka:\n  no.such.prop: 1\n",
     {{0}},
     {"kafka.no.such.prop"},
     NULL},
    {"librdkafka rejects a value from env",
     NULL,
     {{"CRMSYNC_KAFKA_SECURITY_PROTOCOL", "carrier_pigeon"}},
     {"kafka.security.protocol", "carrier_pigeon"},
     NULL},
    {"yaml syntax error", "consumer: [1,\n", {{0}}, {"cannot parse"}, NULL},
    {"top level not a mapping", "- a\n- b\n", {{0}}, {"top level"}, NULL},
    {"secret never in errors",
     "crm:\n  client_secret: s3cr3t\n",
     {{"CRMSYNC_REDIS_URL", "redis://:hunter2@h:1/0"},
      {"CRMSYNC_LOG_LEVEL", "loud"}},
     {"log.level"},
     "hunter2"},
};

static void test_bad_configs(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *c = &bad_cases[i];
        struct config cfg;
        char errstr[512];
        enum cs_err err;

        env_clear();
        env_minimal();
        for (size_t e = 0; e < 4 && c->env[e][0] != NULL; e++) {
            if (c->env[e][1] != NULL)
                setenv(c->env[e][0], c->env[e][1], 1);
            else
                unsetenv(c->env[e][0]);
        }
        err = load_text(&cfg, c->yaml, NULL, 0, errstr, sizeof(errstr));
        if (err != CS_ERR_CONFIG)
            fail_msg("case '%s': expected CS_ERR_CONFIG, got %s", c->what,
                     cs_err_name(err));
        for (size_t w = 0; w < 4 && c->want[w] != NULL; w++)
            assert_contains(errstr, c->want[w]);
        if (c->never != NULL)
            assert_not_contains(errstr, c->never);
        assert_not_contains(errstr, "s3cr3t");
        /* everything was freed on failure; freeing again is harmless */
        assert_null(cfg.topics);
        assert_int_equal(cfg.kafka_cnt, 0);
        config_free(&cfg, NULL, 0);
    }
}

static void test_missing_file(void **state)
{
    struct config cfg;
    char errstr[512];

    (void)state;
    env_minimal();
    assert_int_equal(config_load(&cfg, "response", TOPICS_DEFAULT,
                                 "/nonexistent/crmsync.yaml", NULL, 0, errstr,
                                 sizeof(errstr)),
                     CS_ERR_CONFIG);
    assert_contains(errstr, "cannot open config file /nonexistent/");
    config_free(&cfg, NULL, 0);
}

static void test_apply_kafka(void **state)
{
    struct config cfg;
    char errstr[512];
    char value[256];
    size_t vsize = sizeof(value);
    rd_kafka_conf_t *conf;
    struct config_kv bad[] = {
        {"bootstrap.servers", "b:9092"},
        {"no.such.property", "1"},
    };
    struct config fake = {.kafka = bad, .kafka_cnt = 2};

    (void)state;
    env_minimal();
    setenv("CRMSYNC_KAFKA_SECURITY_PROTOCOL", "SASL_SSL", 1);
    setenv("CRMSYNC_KAFKA_SASL_MECHANISM", "PLAIN", 1);
    setenv("CRMSYNC_KAFKA_SASL_USERNAME", "user", 1);
    setenv("CRMSYNC_KAFKA_SASL_PASSWORD", "pw", 1);
    assert_load_ok(load_text(&cfg, NULL, NULL, 0, errstr, sizeof(errstr)),
                   errstr);
    conf = rd_kafka_conf_new();
    assert_int_equal(config_apply_kafka(&cfg, conf, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(
        rd_kafka_conf_get(conf, "security.protocol", value, &vsize),
        RD_KAFKA_CONF_OK);
    assert_string_equal(value, "sasl_ssl");
    vsize = sizeof(value);
    assert_int_equal(rd_kafka_conf_get(conf, "sasl.username", value, &vsize),
                     RD_KAFKA_CONF_OK);
    assert_string_equal(value, "user");
    rd_kafka_conf_destroy(conf);
    config_free(&cfg, NULL, 0);

    conf = rd_kafka_conf_new();
    assert_int_equal(config_apply_kafka(&fake, conf, errstr, sizeof(errstr)),
                     CS_ERR_CONFIG);
    assert_contains(errstr, "kafka.no.such.property");
    rd_kafka_conf_destroy(conf);
}

static void test_effective_redacts_secrets(void **state)
{
    struct config cfg;
    char errstr[512];
    char *text;
    const char *yaml = "redis:\n  url: \"redis://:redispw-42@redis:6379/0\"\n"
                       "crm:\n  client_id: app-7\n";

    (void)state;
    env_minimal();
    setenv("CRMSYNC_CRM_CLIENT_SECRET", "clientsecret-42", 1);
    setenv("CRMSYNC_KAFKA_SASL_PASSWORD", "kafkapw-42", 1);
    setenv("CRMSYNC_KAFKA_SSL_KEY_PASSWORD", "keypw-42", 1);
    assert_load_ok(load_text(&cfg, yaml, NULL, 0, errstr, sizeof(errstr)),
                   errstr);
    assert_string_equal(cfg.crm_client_secret, "clientsecret-42");
    text = effective_text(&cfg, NULL, 0);
    assert_contains(text, "redis.url: \"***\"\n");
    assert_contains(text, "crm.client_secret: \"***\"\n");
    assert_contains(text, "kafka.sasl.password: \"***\"\n");
    assert_contains(text, "kafka.ssl.key.password: \"***\"\n");
    assert_contains(text, "crm.client_id: app-7\n");
    assert_not_contains(text, "redispw-42");
    assert_not_contains(text, "clientsecret-42");
    assert_not_contains(text, "kafkapw-42");
    assert_not_contains(text, "keypw-42");
    free(text);
    config_free(&cfg, NULL, 0);
}

/* The effective output is itself a valid config file that loads back to
 * the same settings (flat dotted keys, quoting). */
static void test_effective_round_trip(void **state)
{
    struct config a, b;
    char errstr[512];
    char *first, *second;
    const char *yaml = "consumer:\n"
                       "  topics: \"x.events, y.events\"\n"
                       "  dlq_suffix: \"-dead: \\\"letter\\\"\"\n"
                       "crm:\n  ca_file: \"/etc/ssl/ca bundle.pem\"\n";

    (void)state;
    env_minimal();
    assert_load_ok(load_text(&a, yaml, NULL, 0, errstr, sizeof(errstr)),
                   errstr);
    first = effective_text(&a, NULL, 0);
    env_clear();
    assert_load_ok(load_text(&b, first, NULL, 0, errstr, sizeof(errstr)),
                   errstr);
    second = effective_text(&b, NULL, 0);
    /* Identical after the "# file:" line (paths differ). */
    assert_string_equal(strstr(first, "# common"), strstr(second, "# common"));
    assert_string_equal(b.dlq_suffix, "-dead: \"letter\"");
    assert_string_equal(b.crm_ca_file, "/etc/ssl/ca bundle.pem");
    assert_string_equal(b.redis_url, "***"); /* secrets do not survive */
    free(first);
    free(second);
    config_free(&a, NULL, 0);
    config_free(&b, NULL, 0);
}

static void test_extra_section(void **state)
{
    struct config cfg;
    struct response_opts opts;
    struct config_section sec;
    char errstr[512];
    char *text;

    (void)state;
    memset(&opts, 0xab, sizeof(opts)); /* garbage must not be freed */
    response_section(&sec, &opts);
    env_minimal();

    assert_load_ok(load_text(&cfg, NULL, &sec, 1, errstr, sizeof(errstr)),
                   errstr);
    assert_string_equal(opts.mode, "all");
    assert_int_equal(opts.window_s, 60);
    assert_false(opts.filter_machine_opens);
    config_free(&cfg, &sec, 1);
    assert_null(opts.mode);

    assert_load_ok(load_text(&cfg,
                             "response:\n  mode: unique\n  window_s: 5\n"
                             "  filter_machine_opens: YES\n",
                             &sec, 1, errstr, sizeof(errstr)),
                   errstr);
    assert_string_equal(opts.mode, "unique");
    assert_int_equal(opts.window_s, 5);
    assert_true(opts.filter_machine_opens);
    text = effective_text(&cfg, &sec, 1);
    assert_contains(text, "# response worker\nresponse.mode: unique\n");
    assert_contains(text, "response.filter_machine_opens: true\n");
    assert_contains(text, "response.pin: \"***\"\n"); /* secret int */
    free(text);
    config_free(&cfg, &sec, 1);

    setenv("TEST_CONFIG_MODE", "all", 1);
    assert_load_ok(load_text(&cfg, "response.mode: unique\n", &sec, 1, errstr,
                             sizeof(errstr)),
                   errstr);
    assert_string_equal(opts.mode, "all");
    config_free(&cfg, &sec, 1);
    unsetenv("TEST_CONFIG_MODE");

    assert_int_equal(load_text(&cfg, "response:\n  mode: some\n", &sec, 1,
                               errstr, sizeof(errstr)),
                     CS_ERR_CONFIG);
    assert_contains(errstr, "response.mode");
    assert_contains(errstr, "all|unique");
    assert_null(opts.mode);
    config_free(&cfg, &sec, 1);

    assert_int_equal(load_text(&cfg, "response:\n  window_s: 0\n", &sec, 1,
                               errstr, sizeof(errstr)),
                     CS_ERR_CONFIG);
    assert_contains(errstr, "response.window_s");
    assert_contains(errstr, "1..3600");

    assert_int_equal(load_text(&cfg, "response:\n  mood: x\n", &sec, 1, errstr,
                               sizeof(errstr)),
                     CS_ERR_CONFIG);
    assert_contains(errstr, "unknown key 'response.mood'");

    setenv("TEST_CONFIG_PIN", "hunter2", 1);
    assert_int_equal(load_text(&cfg, NULL, &sec, 1, errstr, sizeof(errstr)),
                     CS_ERR_CONFIG);
    assert_contains(errstr, "response.pin");
    assert_contains(errstr, "'***'");
    assert_not_contains(errstr, "hunter2");
    config_free(&cfg, &sec, 1);
}

static void test_tenant_overrides(void **state)
{
    struct config cfg;
    struct response_opts opts;
    struct response_opts t = {0};
    struct config_section sec;
    char errstr[512];
    char name[64];
    char *text;

    (void)state;
    memset(&opts, 0xab, sizeof(opts));
    response_section(&sec, &opts);
    env_minimal();

    assert_load_ok(load_text(&cfg,
                             "response:\n  window_s: 30\n"
                             "tenants:\n"
                             "  acme:\n    response.mode: unique\n"
                             "  beta-2:\n    response: {window_s: 7}\n"
                             "  acme.response.window_s: 9\n",
                             &sec, 1, errstr, sizeof(errstr)),
                   errstr);
    assert_int_equal(config_tenant_count(&cfg), 2);
    assert_string_equal(config_tenant_name(&cfg, 0, name, sizeof(name)),
                        "acme");
    assert_string_equal(config_tenant_name(&cfg, 1, name, sizeof(name)),
                        "beta-2");
    assert_null(config_tenant_name(&cfg, 2, name, sizeof(name)));

    assert_int_equal(
        config_tenant_section(&cfg, &sec, "acme", &t, errstr, sizeof(errstr)),
        CS_ERR_OK);
    assert_string_equal(t.mode, "unique");
    assert_int_equal(t.window_s, 9);
    config_section_free(&sec, &t);
    assert_null(t.mode);
    assert_int_equal(
        config_tenant_section(&cfg, &sec, "beta-2", &t, errstr, sizeof(errstr)),
        CS_ERR_OK);
    assert_string_equal(t.mode, "all"); /* section value */
    assert_int_equal(t.window_s, 7);
    config_section_free(&sec, &t);
    assert_int_equal(
        config_tenant_section(&cfg, &sec, "other", &t, errstr, sizeof(errstr)),
        CS_ERR_OK);
    assert_int_equal(t.window_s, 30); /* no overrides: the loaded value */
    config_section_free(&sec, &t);

    text = effective_text(&cfg, &sec, 1);
    assert_contains(text, "tenants.acme.response.mode: unique\n");
    assert_contains(text, "tenants.beta-2.response.window_s: 7\n");
    free(text);
    config_free(&cfg, &sec, 1);

    /* Bounds and choices are checked at load, naming the tenant. */
    assert_int_equal(load_text(&cfg,
                               "tenants:\n  acme:\n    response.mode: x\n",
                               &sec, 1, errstr, sizeof(errstr)),
                     CS_ERR_CONFIG);
    assert_contains(errstr, "response.mode");
    assert_contains(errstr, "all|unique");
    config_free(&cfg, &sec, 1);
    assert_int_equal(load_text(&cfg,
                               "tenants:\n  acme:\n    response.window_s: 0\n",
                               &sec, 1, errstr, sizeof(errstr)),
                     CS_ERR_CONFIG);
    assert_contains(errstr, "1..3600");
    config_free(&cfg, &sec, 1);
    /* Only per-tenant settings. */
    assert_int_equal(load_text(&cfg,
                               "tenants:\n  acme:\n    "
                               "response.filter_machine_opens: true\n",
                               &sec, 1, errstr, sizeof(errstr)),
                     CS_ERR_CONFIG);
    assert_contains(errstr, "cannot be set per tenant");
    config_free(&cfg, &sec, 1);
    assert_int_equal(load_text(&cfg, "tenants:\n  acme:\n    redis.url: x\n",
                               &sec, 1, errstr, sizeof(errstr)),
                     CS_ERR_CONFIG);
    assert_contains(errstr, "cannot be set per tenant");
    config_free(&cfg, &sec, 1);
    assert_int_equal(load_text(&cfg, "tenants:\n  acme: 3\n", &sec, 1, errstr,
                               sizeof(errstr)),
                     CS_ERR_CONFIG);
    assert_contains(errstr, "tenants.acme");
    config_free(&cfg, &sec, 1);
}

static void test_help_and_markdown(void **state)
{
    struct response_opts opts;
    struct config_section sec;
    char *buf = NULL;
    size_t len = 0;
    FILE *f;

    (void)state;
    response_section(&sec, &opts);
    f = open_memstream(&buf, &len);
    config_print_help(f, "response", TOPICS_DEFAULT, &sec, 1);
    fclose(f);
    assert_contains(buf, "Usage: crmsync-response");
    assert_contains(buf, "--check-config");
    assert_contains(buf, "consumer.topics (string, required) default "
                         "\"response.events\" env CRMSYNC_TOPICS");
    assert_contains(buf, "consumer.batch_max_messages (int 1..100000) "
                         "default \"500\"");
    assert_contains(buf, "redis.url (string, required, secret)");
    assert_contains(buf, "log.level (string debug|info|warn|error");
    assert_contains(buf, "[response worker]");
    assert_contains(buf, "response.mode (string all|unique, per tenant)");
    assert_contains(buf, "tenants.<tenant>.<setting> (file only)");
    assert_contains(buf, "CRMSYNC_KAFKA_<PROPERTY>");
    free(buf);

    buf = NULL;
    f = open_memstream(&buf, &len);
    config_print_markdown(f, "response", TOPICS_DEFAULT, &sec, 1);
    fclose(f);
    assert_contains(buf, "| Key | Env | Type | Default | Bounds | "
                         "Description |\n|---|---|---|---|---|---|\n");
    assert_contains(buf, "| `consumer.topics` | `CRMSYNC_TOPICS` | string | "
                         "`response.events` |  | Required. ");
    assert_contains(buf, "| `crm.client_secret` | `CRMSYNC_CRM_CLIENT_SECRET`"
                         " | string (secret) |");
    assert_contains(buf, "`debug\\|info\\|warn\\|error`");
    assert_contains(buf, "crmsync-&lt;worker&gt;");
    assert_contains(buf, "| `response.mode` | `TEST_CONFIG_MODE` | string | "
                         "`all` | `all\\|unique` |");
    assert_contains(buf, "| `kafka.<property>` |");
    free(buf);
}

/* Runs config_cli with stdout/stderr captured into *out / *err. */
static int run_cli(int argc, char **argv, struct config *cfg, char **out,
                   char **err)
{
    FILE *fo = tmpfile(), *fe = tmpfile();
    int saved_out = dup(STDOUT_FILENO), saved_err = dup(STDERR_FILENO);
    long n;
    int rc;

    assert_non_null(fo);
    assert_non_null(fe);
    fflush(stdout);
    fflush(stderr);
    dup2(fileno(fo), STDOUT_FILENO);
    dup2(fileno(fe), STDERR_FILENO);
    rc = config_cli(argc, argv, "response", TOPICS_DEFAULT, cfg, NULL, 0);
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, STDOUT_FILENO);
    dup2(saved_err, STDERR_FILENO);
    close(saved_out);
    close(saved_err);
    for (int i = 0; i < 2; i++) {
        FILE *fp = i == 0 ? fo : fe;
        char **dst = i == 0 ? out : err;
        n = ftell(fp);
        *dst = calloc(1, (size_t)n + 1);
        rewind(fp);
        assert_int_equal(fread(*dst, 1, (size_t)n, fp), (size_t)n);
        fclose(fp);
    }
    return rc;
}

static void test_cli(void **state)
{
    struct config cfg;
    char good[64], bad[64];
    char *out, *err;

    (void)state;
    yaml_write(good, sizeof(good),
               "kafka: {bootstrap.servers: \"h:9092\", sasl.password: kpw9}\n"
               "crm: {base_url: \"https://o.example\", tenant_id: t}\n");
    yaml_write(bad, sizeof(bad),
               "kafka: {bootstrap.servers: h}\n"
               "crm: {base_url: x, tenant_id: t}\n"
               "redis: {urll: x}\n");
    {
        char *argv[] = {"w", "--check-config", "-c", good, NULL};
        assert_int_equal(run_cli(4, argv, &cfg, &out, &err), 0);
        assert_contains(out, "kafka.bootstrap.servers: h:9092");
        assert_contains(out, "kafka.sasl.password: \"***\"");
        assert_not_contains(out, "kpw9");
        assert_contains(err, "configuration OK");
        assert_null(cfg.topics); /* freed by config_cli */
        free(out);
        free(err);
    }
    {
        char *argv[] = {"w", "--config", bad, "--check-config", NULL};
        assert_int_equal(run_cli(4, argv, &cfg, &out, &err), 1);
        assert_contains(err, "unknown key 'redis.urll'");
        free(out);
        free(err);
    }
    {
        char *argv[] = {"w", "--bogus", NULL};
        assert_int_equal(run_cli(2, argv, &cfg, &out, &err), 2);
        assert_contains(err, "unknown argument '--bogus'");
        free(out);
        free(err);
    }
    {
        char *argv[] = {"w", "-c", NULL};
        assert_int_equal(run_cli(2, argv, &cfg, &out, &err), 2);
        free(out);
        free(err);
    }
    {
        char *argv[] = {"w", "--help", NULL};
        assert_int_equal(run_cli(2, argv, &cfg, &out, &err), 0);
        assert_contains(out, "Usage: crmsync-response");
        free(out);
        free(err);
    }
    {
        char *argv[] = {"w", "--help-markdown", NULL};
        assert_int_equal(run_cli(2, argv, &cfg, &out, &err), 0);
        assert_contains(out, "| Key | Env |");
        free(out);
        free(err);
    }
    {
        /* no flags: file from CRMSYNC_CONFIG, the worker should run */
        char *argv[] = {"w", NULL};
        setenv("CRMSYNC_CONFIG", good, 1);
        assert_int_equal(run_cli(1, argv, &cfg, &out, &err), -1);
        assert_string_equal(cfg.config_path, good);
        assert_string_equal(cfg.topics, TOPICS_DEFAULT);
        config_free(&cfg, NULL, 0);
        free(out);
        free(err);
    }
    {
        /* -c wins over CRMSYNC_CONFIG */
        char *argv[] = {"w", "--check-config", "--config=/nonexistent", NULL};
        assert_int_equal(run_cli(3, argv, &cfg, &out, &err), 1);
        assert_contains(err, "/nonexistent");
        free(out);
        free(err);
    }
    unlink(good);
    unlink(bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_yaml_nested_and_flat, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_env_overrides_yaml, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_bad_configs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_kafka, setup, teardown),
        cmocka_unit_test_setup_teardown(test_effective_redacts_secrets, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_effective_round_trip, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_extra_section, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_overrides, setup, teardown),
        cmocka_unit_test_setup_teardown(test_help_and_markdown, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
