/*
 * mapping - CRM columns -> ESP attributes (docs/listsync.md step 5).
 *
 * Values come from the member row as the CRM returned it with formatted
 * values (Prefer: odata.include-annotations=...FormattedValue):
 *   field     the plain value (strings as is, numbers and booleans as text)
 *   lookup    the lookup's formatted value (the linked record's name)
 *   option    listsync.labels for (language, column, value), else the
 *             formatted value, else the raw value
 *   multi     every selected value's label (as option), joined with
 *             listsync.multi_separator (the CRM stores "1,3")
 *   language  the member's language (its column, else the default)
 * Then the technical attributes: opt-in-id, description, media-type,
 * entity-type, entity-id.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "workers/listsync/listsync.h"

#define FORMATTED "@OData.Community.Display.V1.FormattedValue"

static const char *const technical[] = {
    "opt-in-id", "description", "media-type", "entity-type", "entity-id"};
#define NTECH (sizeof(technical) / sizeof(technical[0]))

static const struct {
    const char *name;
    enum map_kind kind;
} kinds[] = {{"field", MAP_FIELD},
             {"lookup", MAP_LOOKUP},
             {"option", MAP_OPTION},
             {"multi", MAP_MULTI},
             {"language", MAP_LANGUAGE}};

static bool valid_column(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return true;
}

enum cs_err listsync_mapping_parse(const char *spec, struct listsync_mapping *m,
                                   char *errstr, size_t errstr_size)
{
    char *copy = strdup(spec);
    char *save = NULL;
    enum cs_err err = CS_ERR_OK;

    memset(m, 0, sizeof(*m));
    if (!copy)
        return CS_ERR_NOMEM;
    for (char *tok = strtok_r(copy, ",", &save); tok && !err;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        char *colon = eq ? strchr(eq, ':') : NULL;
        struct map_entry *grown;
        size_t k;
        while (*tok == ' ')
            tok++;
        if (!eq || !colon || eq == tok) {
            err = CS_ERR_CONFIG;
            break;
        }
        *eq = *colon = '\0';
        for (k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
            if (strcmp(kinds[k].name, eq + 1) == 0)
                break;
        if (k == sizeof(kinds) / sizeof(kinds[0]) || !valid_column(colon + 1)) {
            err = CS_ERR_CONFIG;
            break;
        }
        grown = realloc(m->v, (m->n + 1) * sizeof(*grown));
        if (!grown) {
            err = CS_ERR_NOMEM;
            break;
        }
        m->v = grown;
        m->v[m->n].attr = strdup(tok);
        m->v[m->n].column = strdup(colon + 1);
        m->v[m->n].kind = kinds[k].kind;
        m->n++;
    }
    free(copy);
    if (err == CS_ERR_CONFIG)
        snprintf(errstr, errstr_size,
                 "listsync.mapping: want attr=kind:column,... with kind "
                 "field|lookup|option|multi|language and a CRM column name");
    if (!err) {
        m->nnames = m->n + NTECH;
        m->names = calloc(m->nnames, sizeof(*m->names));
        if (!m->names)
            err = CS_ERR_NOMEM;
        for (size_t i = 0; !err && i < m->nnames; i++) {
            m->names[i] = strdup(i < m->n ? m->v[i].attr : technical[i - m->n]);
            if (!m->names[i])
                err = CS_ERR_NOMEM;
        }
    }
    if (err)
        listsync_mapping_free(m);
    return err;
}

void listsync_mapping_free(struct listsync_mapping *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->v[i].attr);
        free(m->v[i].column);
    }
    for (size_t i = 0; m->names && i < m->nnames; i++)
        free(m->names[i]);
    free(m->names);
    free(m->v);
    memset(m, 0, sizeof(*m));
}

char *listsync_mapping_select(const struct listsync_mapping *m)
{
    struct buf b = {0};

    buf_appends(&b, "");
    for (size_t i = 0; i < m->n; i++) {
        if (m->v[i].kind == MAP_LANGUAGE)
            continue; /* read through listsync.language_field */
        buf_appendf(&b, "%s%s", b.len ? "," : "", m->v[i].column);
    }
    return buf_detach(&b);
}

const char *listsync_label(const char *labels, const char *lang,
                           const char *column, const char *value, char *buf,
                           size_t size)
{
    char key[256];
    const char *p;
    size_t klen;

    if (!labels || !*labels)
        return NULL;
    klen = (size_t)snprintf(key, sizeof(key), "%s|%s|%s=", lang, column, value);
    for (p = labels; p && *p;) {
        const char *end = strchr(p, ';');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        while (n && *p == ' ') {
            p++;
            n--;
        }
        if (n > klen && strncmp(p, key, klen) == 0) {
            snprintf(buf, size, "%.*s", (int)(n - klen), p + klen);
            return buf;
        }
        p = end ? end + 1 : NULL;
    }
    return NULL;
}

/* The row's value of @p col as text (malloc'd), "" when null. */
static char *plain(json_t *row, const char *col)
{
    json_t *v = json_object_get(row, col);
    char num[64];

    if (json_is_string(v))
        return strdup(json_string_value(v));
    if (json_is_integer(v)) {
        snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
        return strdup(num);
    }
    if (json_is_real(v)) {
        snprintf(num, sizeof(num), "%g", json_real_value(v));
        return strdup(num);
    }
    if (json_is_boolean(v))
        return strdup(json_is_true(v) ? "true" : "false");
    return strdup("");
}

static const char *formatted(json_t *row, const char *col)
{
    char key[300];
    snprintf(key, sizeof(key), "%s%s", col, FORMATTED);
    return json_string_value(json_object_get(row, key));
}

/* One option value's label: listsync.labels, else @p fallback, else the
 * value itself. */
static const char *option_label(const struct map_ctx *c, const char *col,
                                const char *value, const char *fallback,
                                char *buf, size_t size)
{
    const char *l =
        listsync_label(c->lc->labels, c->language, col, value, buf, size);
    return l ? l : fallback && *fallback ? fallback : value;
}

static char *multi(const struct map_ctx *c, json_t *row, const char *col)
{
    char *raw = plain(row, col);
    const char *fmt = formatted(row, col); /* "A; C" in value order */
    char out[4096] = "";
    char *save = NULL, *fsave = NULL;
    char *fcopy = fmt ? strdup(fmt) : NULL;
    char *ftok = fcopy ? strtok_r(fcopy, ";", &fsave) : NULL;
    size_t used = 0;

    for (char *tok = raw ? strtok_r(raw, ",", &save) : NULL; tok;
         tok = strtok_r(NULL, ",", &save)) {
        char buf[256];
        const char *label;
        while (ftok && *ftok == ' ')
            ftok++;
        label = option_label(c, col, tok, ftok, buf, sizeof(buf));
        used += (size_t)snprintf(
            out + used, used < sizeof(out) ? sizeof(out) - used : 0, "%s%s",
            used ? c->lc->multi_separator : "", label);
        ftok = ftok ? strtok_r(NULL, ";", &fsave) : NULL;
    }
    free(fcopy);
    free(raw);
    return strdup(out);
}

bool listsync_map_member(const struct listsync_mapping *m,
                         const struct map_ctx *ctx, json_t *row, char **out)
{
    const char *tech[NTECH] = {ctx->consent_id, ctx->list_name, "email",
                               ctx->entity, ctx->entity_id};
    bool ok = true;

    for (size_t i = 0; i < m->n; i++) {
        const struct map_entry *e = &m->v[i];
        char buf[256];
        switch (e->kind) {
        case MAP_FIELD:
            out[i] = plain(row, e->column);
            break;
        case MAP_LOOKUP: {
            const char *f = formatted(row, e->column);
            out[i] = f ? strdup(f) : plain(row, e->column);
            break;
        }
        case MAP_OPTION: {
            char *raw = plain(row, e->column);
            out[i] = raw && *raw
                         ? strdup(option_label(ctx, e->column, raw,
                                               formatted(row, e->column), buf,
                                               sizeof(buf)))
                         : strdup("");
            free(raw);
            break;
        }
        case MAP_MULTI:
            out[i] = multi(ctx, row, e->column);
            break;
        case MAP_LANGUAGE:
            out[i] = strdup(ctx->language);
            break;
        }
        ok &= out[i] != NULL;
    }
    for (size_t i = 0; i < NTECH; i++) {
        out[m->n + i] = strdup(tech[i] ? tech[i] : "");
        ok &= out[m->n + i] != NULL;
    }
    return ok;
}

void listsync_values_free(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
}
