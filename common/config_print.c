/*
 * config_print - help texts, the effective configuration and config_cli().
 *
 * --help and --help-markdown are generated from the same field tables that
 * drive loading, so the README reference cannot drift from behaviour;
 * --check-config prints the loaded values as flat YAML with secrets shown
 * as "***". Part of the config module; see config.h for the public API and
 * config_internal.h for how the files fit together.
 *
 * Thread-safety: printing only reads the tables and the given structs.
 */
#include "common/config_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
        print_yaml_scalar(out, CONFIG_REDACTED);
        return;
    }
    switch (f->type) {
    case CONFIG_INT:
        fprintf(out, "%d", *config_member_int(f, target));
        return;
    case CONFIG_BOOL:
        fputs(*config_member_bool(f, target) ? "true" : "false", out);
        return;
    case CONFIG_STRING:
        break;
    }
    s = *config_member_str(f, target);
    if (s == NULL)
        s = "";
    /* An empty secret is shown as empty: "not set" helps and leaks nothing. */
    print_yaml_scalar(out,
                      (f->flags & CONFIG_SECRET) && s[0] ? CONFIG_REDACTED : s);
}

void config_print_effective(FILE *out, const struct config *cfg,
                            const struct config_section *extra, size_t nextra)
{
    /* The section API takes a mutable target; printing only reads it. */
    struct config_section common = config_common_section((struct config *)cfg);

    fprintf(out, "# crmsync-%s effective configuration (secrets redacted)\n",
            cfg->worker != NULL ? cfg->worker : "?");
    fprintf(out, "# file: %s\n",
            cfg->config_path != NULL ? cfg->config_path : "(none)");
    for (size_t s = 0; s <= nextra; s++) {
        const struct config_section *sec = config_section_at(&common, extra, s);
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
        print_yaml_scalar(out, config_kafka_key_secret(kv->key) && kv->value[0]
                                   ? CONFIG_REDACTED
                                   : kv->value);
        fputc('\n', out);
    }
    if (cfg->tenant_kv_cnt > 0)
        fputs("# per-tenant overrides\n", out);
    for (size_t i = 0; i < cfg->tenant_kv_cnt; i++) {
        fprintf(out, "%s%s: ", CONFIG_TENANTS_PREFIX, cfg->tenant_kv[i].key);
        print_yaml_scalar(out, cfg->tenant_kv[i].value);
        fputc('\n', out);
    }
}

/* true when some field of the worker can be overridden per tenant. */
static bool any_per_tenant(const struct config_section *common,
                           const struct config_section *extra, size_t nextra)
{
    for (size_t s = 0; s <= nextra; s++) {
        const struct config_section *sec = config_section_at(common, extra, s);
        for (size_t i = 0; i < sec->nfields; i++)
            if (sec->fields[i].flags & CONFIG_PER_TENANT)
                return true;
    }
    return false;
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
    struct config_section common = config_common_section(NULL);

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
        const struct config_section *sec = config_section_at(&common, extra, s);
        fprintf(out, "\n[%s]\n", sec->title);
        for (size_t i = 0; i < sec->nfields; i++) {
            const struct config_field *f = &sec->fields[i];
            char bounds[256];

            format_bounds(bounds, sizeof(bounds), f);
            fprintf(out, "  %s (%s%s%s%s%s%s) default \"%s\"%s%s\n      %s\n",
                    f->name, config_type_name(f->type), bounds[0] ? " " : "",
                    bounds, (f->flags & CONFIG_REQUIRED) ? ", required" : "",
                    (f->flags & CONFIG_SECRET) ? ", secret" : "",
                    (f->flags & CONFIG_PER_TENANT) ? ", per tenant" : "",
                    config_field_default(f, topics_default),
                    f->env != NULL ? " env " : "", f->env != NULL ? f->env : "",
                    f->doc);
        }
    }
    if (any_per_tenant(&common, extra, nextra))
        fprintf(out, "\n[tenants]\n"
                     "  tenants.<tenant>.<setting> (file only)\n"
                     "      Overrides a setting marked \"per tenant\" for "
                     "events of that tenant.\n");
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
    struct config_section common = config_common_section(NULL);

    fprintf(out,
            "Configuration of `crmsync-%s` (generated by `crmsync-%s "
            "--help-markdown`).\n\n"
            "| Key | Env | Type | Default | Bounds | Description |\n"
            "|---|---|---|---|---|---|\n",
            worker, worker);
    for (size_t s = 0; s <= nextra; s++) {
        const struct config_section *sec = config_section_at(&common, extra, s);
        for (size_t i = 0; i < sec->nfields; i++) {
            const struct config_field *f = &sec->fields[i];
            char bounds[256];

            format_bounds(bounds, sizeof(bounds), f);
            fputs("| ", out);
            print_md_cell(out, f->name, true);
            fputs(" | ", out);
            print_md_cell(out, f->env != NULL ? f->env : "", true);
            fprintf(out, " | %s%s | ", config_type_name(f->type),
                    (f->flags & CONFIG_SECRET) ? " (secret)" : "");
            print_md_cell(out, config_field_default(f, topics_default), true);
            fputs(" | ", out);
            print_md_cell(out, bounds, true);
            fputs(" | ", out);
            if (f->flags & CONFIG_REQUIRED)
                fputs("Required. ", out);
            if (f->flags & CONFIG_PER_TENANT)
                fputs("Per tenant. ", out);
            print_md_cell(out, f->doc, false);
            fputs(" |\n", out);
        }
    }
    fputs("| `kafka.<property>` | `CRMSYNC_KAFKA_<PROPERTY>` | string | | | "
          "Any librdkafka property, passed through verbatim (env: "
          "upper-case, `.` becomes `_`); `kafka.bootstrap.servers` is "
          "required |\n",
          out);
    if (any_per_tenant(&common, extra, nextra))
        fputs("| `tenants.<tenant>.<setting>` | | | | | File only: overrides "
              "a setting marked *Per tenant* for events of that tenant |\n",
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
