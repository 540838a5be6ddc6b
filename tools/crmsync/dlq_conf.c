/* dlq_conf - see dlq_conf.h. */
#include "dlq_conf.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 256
#define LINE_MAX_LEN 8192

/* Sets name=value, reporting failures without the value. */
static enum cs_err set_prop(rd_kafka_conf_t *conf, const char *name,
                            const char *value, const char *where, char *errstr,
                            size_t errstr_size)
{
    char rderr[512];
    rd_kafka_conf_res_t res =
        rd_kafka_conf_set(conf, name, value, rderr, sizeof(rderr));

    if (res == RD_KAFKA_CONF_OK)
        return CS_ERR_OK;
    if (res == RD_KAFKA_CONF_UNKNOWN)
        snprintf(errstr, errstr_size, "%s: unknown librdkafka property '%s'",
                 where, name);
    else
        snprintf(errstr, errstr_size,
                 "%s: invalid value for librdkafka property '%s' (value not "
                 "shown)",
                 where, name);
    return CS_ERR_CONFIG;
}

/* Splits "name=value" into name (copied into @p name) and a pointer to the
 * value inside @p s; surrounding blanks of both are dropped (the value's
 * trailing ones by writing into @p s, which must be writable). */
static bool split_prop(char *s, char *name, size_t name_size,
                       const char **value)
{
    char *eq = strchr(s, '=');
    char *end;
    size_t n;

    if (!eq)
        return false;
    while (s < eq && isspace((unsigned char)*s))
        s++;
    end = eq;
    while (end > s && isspace((unsigned char)end[-1]))
        end--;
    n = (size_t)(end - s);
    if (n == 0 || n >= name_size)
        return false;
    memcpy(name, s, n);
    name[n] = '\0';
    eq++;
    while (isspace((unsigned char)*eq))
        eq++;
    end = eq + strlen(eq);
    while (end > eq && isspace((unsigned char)end[-1]))
        *--end = '\0';
    *value = eq;
    return true;
}

/* Applies one -F file; sets *has_password when it names sasl.password. */
static enum cs_err apply_file(rd_kafka_conf_t *conf, const char *path,
                              bool *has_password, char *errstr,
                              size_t errstr_size)
{
    FILE *fp = fopen(path, "r");
    char line[LINE_MAX_LEN];
    char name[NAME_MAX_LEN];
    char where[512];
    const char *value;
    enum cs_err err = CS_ERR_OK;
    int lineno = 0;

    if (!fp) {
        snprintf(errstr, errstr_size, "-F %s: cannot open", path);
        return CS_ERR_CONFIG;
    }
    while (fgets(line, sizeof(line), fp)) {
        char *p = line;

        lineno++;
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0' || *p == '#')
            continue;
        snprintf(where, sizeof(where), "-F %s:%d", path, lineno);
        if (!split_prop(p, name, sizeof(name), &value)) {
            snprintf(errstr, errstr_size, "%s: expected prop=value", where);
            err = CS_ERR_CONFIG;
            break;
        }
        if (!strcmp(name, "sasl.password"))
            *has_password = true;
        err = set_prop(conf, name, value, where, errstr, errstr_size);
        if (err != CS_ERR_OK)
            break;
    }
    fclose(fp);
    return err;
}

rd_kafka_conf_t *dlq_conf_build(const struct dlq_conf_opts *o,
                                const char *const *defaults, char *errstr,
                                size_t errstr_size)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char name[NAME_MAX_LEN];
    char copy[LINE_MAX_LEN];
    const char *value;
    const char *env;
    bool has_password = false;

    for (size_t i = 0; defaults && defaults[i]; i += 2)
        if (set_prop(conf, defaults[i], defaults[i + 1], "default", errstr,
                     errstr_size) != CS_ERR_OK)
            goto out_destroy_conf;
    for (int i = 0; i < o->nfiles; i++)
        if (apply_file(conf, o->files[i], &has_password, errstr, errstr_size) !=
            CS_ERR_OK)
            goto out_destroy_conf;
    for (int i = 0; i < o->nprops; i++) {
        snprintf(copy, sizeof(copy), "%s", o->props[i]);
        if (!split_prop(copy, name, sizeof(name), &value)) {
            snprintf(errstr, errstr_size, "-X: expected prop=value");
            goto out_destroy_conf;
        }
        if (!strcmp(name, "sasl.password"))
            has_password = true;
        if (set_prop(conf, name, value, "-X", errstr, errstr_size) != CS_ERR_OK)
            goto out_destroy_conf;
    }
    if (o->bootstrap && set_prop(conf, "bootstrap.servers", o->bootstrap, "-b",
                                 errstr, errstr_size) != CS_ERR_OK)
        goto out_destroy_conf;
    env = getenv(DLQ_CONF_PASSWORD_ENV);
    if (!has_password && env && *env &&
        set_prop(conf, "sasl.password", env, DLQ_CONF_PASSWORD_ENV, errstr,
                 errstr_size) != CS_ERR_OK)
        goto out_destroy_conf;
    return conf;

out_destroy_conf:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

enum cs_err dlq_conf_force(rd_kafka_conf_t *conf, const char *name,
                           const char *value, char *errstr, size_t errstr_size)
{
    return set_prop(conf, name, value, "crmsync dlq", errstr, errstr_size);
}
