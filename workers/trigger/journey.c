/*
 * journey - parses, validates and compiles journey definitions (the format
 * and the compiled program are described in journey.h).
 *
 * The file is loaded with libyaml's document API so every error can name
 * "<file>:<line>:<col>: <path>: <what>", where path is the dotted place of
 * the node ("journeys[0].steps[2].reminder"). Parsing compiles as it goes:
 * steps are appended to the journey's flat array, and a branch patches its
 * else_pc and JUMP target once its lists are compiled. Everything allocated
 * is reachable from the journey_set from the first moment, so one
 * journey_set_free() cleans up after a failure at any point.
 *
 * Thread-safety: parsing is reentrant; the query functions only read.
 */
#include "workers/trigger/journey.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "common/buf.h"
#include "common/isotime.h"

#define PATH_BUF       512 /* dotted node path in messages */
#define MSG_BUF        768 /* one message before the position prefix */
#define NAME_MAX_LEN   200 /* trigger, attribute and parameter names */
#define DECIMAL_ID_MAX 20  /* digits of an ESP mailing / list id */
#define TOPIC_MAX      249 /* Kafka's limit */
#define REMINDER_MAX   100 /* reminder.max upper bound */

#define DURATION_HINT "use e.g. 500ms, 90s, 15m, 1h, 7d, 2w or integer ms"
#define TEMPLATE_VARS                                                          \
    "attr.NAME, profile.id, profile.type, profile.email, journey.id, "         \
    "tenant, iteration"

/* State of one journey_set_parse() call. */
struct jp {
    const char *name;     /* label of errors (borrowed) */
    yaml_document_t *doc; /* borrowed */
    char *errstr;
    size_t errstr_size;
    struct journey *j; /* journey being compiled (borrowed from the set) */
    size_t step_cap;   /* allocated entries of j->steps */
    size_t attr_cap;   /* allocated entries of j->attrs */
};

/* ------------------------------------------------------------------ */
/* errors and node helpers                                             */

static enum cs_err jp_fail(struct jp *p, const yaml_node_t *at,
                           const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Writes "<name>:<line>:<col>: <path>: <message>"; returns CS_ERR_CONFIG. */
static enum cs_err jp_fail(struct jp *p, const yaml_node_t *at,
                           const char *path, const char *fmt, ...)
{
    char msg[MSG_BUF];
    va_list ap;
    unsigned long line = at != NULL ? at->start_mark.line + 1 : 1;
    unsigned long col = at != NULL ? at->start_mark.column + 1 : 1;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (p->errstr != NULL && p->errstr_size > 0)
        snprintf(p->errstr, p->errstr_size, "%s:%lu:%lu: %s%s%s", p->name, line,
                 col, path != NULL ? path : "",
                 path != NULL && path[0] != '\0' ? ": " : "", msg);
    return CS_ERR_CONFIG;
}

static enum cs_err jp_nomem(struct jp *p)
{
    if (p->errstr != NULL && p->errstr_size > 0)
        snprintf(p->errstr, p->errstr_size, "%s: out of memory", p->name);
    return CS_ERR_NOMEM;
}

static yaml_node_t *jp_node(struct jp *p, int id)
{
    return yaml_document_get_node(p->doc, id);
}

static const char *type_name(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_SEQUENCE_NODE:
        return "a sequence";
    case YAML_SCALAR_NODE:
        return "a scalar";
    default:
        return "nothing";
    }
}

static enum cs_err want(struct jp *p, const yaml_node_t *n, const char *path,
                        yaml_node_type_t type)
{
    yaml_node_t want_node = {.type = type};

    if (n->type == type)
        return CS_ERR_OK;
    return jp_fail(p, n, path, "expected %s, got %s", type_name(&want_node),
                   type_name(n));
}

static const char *scalar(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

/* Empty text, or plain "~" / "null" (YAML's null): no value. */
static bool scalar_is_null(const yaml_node_t *n)
{
    const char *s = scalar(n);

    return s[0] == '\0' || (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                            (strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
                             strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0));
}

static size_t seq_len(const yaml_node_t *seq)
{
    return (size_t)(seq->data.sequence.items.top -
                    seq->data.sequence.items.start);
}

static yaml_node_t *seq_at(struct jp *p, const yaml_node_t *seq, size_t i)
{
    return jp_node(p, seq->data.sequence.items.start[i]);
}

/* Paths are truncated when too long (messages only); snprintf's result
 * is checked so gcc's -Wformat-truncation knows it is intended. */
static void path_key(char *dst, const char *path, const char *key)
{
    if (snprintf(dst, PATH_BUF, "%s%s%s", path, path[0] != '\0' ? "." : "",
                 key) >= PATH_BUF)
        dst[PATH_BUF - 1] = '\0';
}

static void path_index(char *dst, const char *path, size_t i)
{
    if (snprintf(dst, PATH_BUF, "%s[%zu]", path, i) >= PATH_BUF)
        dst[PATH_BUF - 1] = '\0';
}

/* Checks that @p map has only scalar keys from @p allowed (NULL-ended),
 * each at most once. */
static enum cs_err check_keys(struct jp *p, yaml_node_t *map, const char *path,
                              const char *const *allowed)
{
    yaml_node_pair_t *pair;

    for (pair = map->data.mapping.pairs.start;
         pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = jp_node(p, pair->key);
        yaml_node_pair_t *prev;
        size_t i;

        if (key->type != YAML_SCALAR_NODE)
            return jp_fail(p, key, path, "keys must be scalars, got %s",
                           type_name(key));
        for (i = 0; allowed[i] != NULL; i++)
            if (strcmp(allowed[i], scalar(key)) == 0)
                break;
        if (allowed[i] == NULL) {
            char expected[MSG_BUF / 2] = "";
            size_t used = 0;

            for (i = 0; allowed[i] != NULL && used < sizeof(expected); i++)
                used +=
                    (size_t)snprintf(expected + used, sizeof(expected) - used,
                                     "%s%s", i > 0 ? ", " : "", allowed[i]);
            return jp_fail(p, key, path, "unknown key '%s' (expected %s)",
                           scalar(key), expected);
        }
        for (prev = map->data.mapping.pairs.start; prev < pair; prev++) {
            yaml_node_t *pk = jp_node(p, prev->key);
            if (strcmp(scalar(pk), scalar(key)) == 0)
                return jp_fail(
                    p, key, path, "duplicate key '%s' (first at line %lu)",
                    scalar(key), (unsigned long)pk->start_mark.line + 1);
        }
    }
    return CS_ERR_OK;
}

/* Value of the first scalar key @p key in @p map, or NULL. */
static yaml_node_t *map_get(struct jp *p, const yaml_node_t *map,
                            const char *key)
{
    yaml_node_pair_t *pair;

    for (pair = map->data.mapping.pairs.start;
         pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = jp_node(p, pair->key);
        if (k->type == YAML_SCALAR_NODE && strcmp(scalar(k), key) == 0)
            return jp_node(p, pair->value);
    }
    return NULL;
}

/* Non-empty scalar @p key of @p map: *out borrowed text, NULL when absent
 * and optional; *at its node (may be NULL). */
static enum cs_err get_text(struct jp *p, const yaml_node_t *map,
                            const char *path, const char *key, bool required,
                            const char **out, yaml_node_t **at)
{
    yaml_node_t *v = map_get(p, map, key);
    char sub[PATH_BUF];
    enum cs_err err;

    *out = NULL;
    if (at != NULL)
        *at = v;
    if (v == NULL)
        return required
                   ? jp_fail(p, map, path, "missing required key '%s'", key)
                   : CS_ERR_OK;
    path_key(sub, path, key);
    err = want(p, v, sub, YAML_SCALAR_NODE);
    if (err != CS_ERR_OK)
        return err;
    if (scalar_is_null(v))
        return jp_fail(p, v, sub, "must not be empty");
    *out = scalar(v);
    return CS_ERR_OK;
}

static enum cs_err dup_text(struct jp *p, const char *s, char **out)
{
    *out = strdup(s);
    return *out != NULL ? CS_ERR_OK : jp_nomem(p);
}

/* ------------------------------------------------------------------ */
/* value syntax                                                        */

static bool id_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > JOURNEY_ID_MAX)
        return false;
    for (; *s != '\0'; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '.' || *s == '_' || *s == '-'))
            return false;
    return true;
}

/* Trigger names: 1..NAME_MAX_LEN printable ASCII characters, no spaces. */
static bool trigger_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    for (; *s != '\0'; s++)
        if (*s < 0x21 || *s > 0x7e)
            return false;
    return true;
}

/* Attribute and parameter names: [A-Za-z0-9_.-]{1,NAME_MAX_LEN}. */
static bool attr_name_okn(const char *s, size_t n)
{
    size_t i;

    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    for (i = 0; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '.' ||
              s[i] == '-'))
            return false;
    return true;
}

static bool attr_name_ok(const char *s)
{
    return attr_name_okn(s, strlen(s));
}

/* Condition values: any non-empty text. */
static bool any_text_ok(const char *s)
{
    return s[0] != '\0';
}

/* ^msdynmkt_[a-z0-9_]+$ */
static bool crm_trigger_name_ok(const char *s)
{
    static const char prefix[] = "msdynmkt_";

    if (strncmp(s, prefix, sizeof(prefix) - 1) != 0)
        return false;
    s += sizeof(prefix) - 1;
    if (*s == '\0' || strlen(s) > NAME_MAX_LEN)
        return false;
    for (; *s != '\0'; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return false;
    return true;
}

static bool decimal_id_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > DECIMAL_ID_MAX)
        return false;
    for (; *s != '\0'; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

static bool topic_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > TOPIC_MAX)
        return false;
    for (; *s != '\0'; s++)
        if (!(isalnum((unsigned char)*s) || *s == '.' || *s == '_' ||
              *s == '-'))
            return false;
    return true;
}

/* The whole string is a number (strtod, no surrounding space, not NaN). */
static bool number_parse(const char *s, double *out)
{
    char *end;
    double d;

    if (s == NULL || s[0] == '\0' || isspace((unsigned char)s[0]))
        return false;
    errno = 0;
    d = strtod(s, &end);
    if (end == s || *end != '\0' || d != d)
        return false;
    *out = d;
    return true;
}

bool journey_parse_duration(const char *s, int64_t *ms)
{
    static const struct {
        const char *suffix;
        int64_t mult;
    } units[] = {{"", 1},        {"ms", 1},       {"s", 1000},     {"m", 60000},
                 {"h", 3600000}, {"d", 86400000}, {"w", 604800000}};
    int64_t v = 0;
    size_t i;

    if (s == NULL || ms == NULL || !isdigit((unsigned char)*s))
        return false;
    for (; isdigit((unsigned char)*s); s++) {
        int d = *s - '0';
        if (v > (INT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(s, units[i].suffix) != 0)
            continue;
        if (v > INT64_MAX / units[i].mult)
            return false;
        *ms = v * units[i].mult;
        return true;
    }
    return false;
}

static bool leap_year(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Strict "YYYY-MM-DDTHH:MM:SS[.f{1,3}]Z" from 1970 on -> epoch ms. */
static bool iso_utc_parse(const char *s, int64_t *ms)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, sec;
    size_t i, frac = 0;
    const char *p;

    for (i = 0; shape[i] != '\0'; i++) {
        if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
            return false;
    }
    p = s + i;
    if (*p == '.') {
        for (p++; isdigit((unsigned char)*p); p++)
            frac++;
        if (frac < 1 || frac > 3)
            return false;
    }
    if (strcmp(p, "Z") != 0)
        return false;
#define DIG2(o) ((s[(o)] - '0') * 10 + (s[(o) + 1] - '0'))
    y = DIG2(0) * 100 + DIG2(2);
    mo = DIG2(5);
    d = DIG2(8);
    h = DIG2(11);
    mi = DIG2(14);
    sec = DIG2(17);
#undef DIG2
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || sec > 59)
        return false;
    if (d > mdays[mo - 1] + (mo == 2 && leap_year(y) ? 1 : 0))
        return false;
    *ms = isotime_parse(s);
    return *ms >= 0;
}

/* ------------------------------------------------------------------ */
/* templates                                                           */

enum tvar {
    TV_BAD,
    TV_ATTR,
    TV_PROFILE_ID,
    TV_PROFILE_TYPE,
    TV_PROFILE_EMAIL,
    TV_JOURNEY_ID,
    TV_TENANT,
    TV_ITERATION,
};

/* Finds the next "{{ ... }}" in @p s: 1 with *open at "{{", the trimmed
 * variable in [*var, *var + *vlen) and *after past "}}"; 0 when there is
 * none; -1 when a "{{" is not closed. */
static int tmpl_next(const char *s, const char **open, const char **var,
                     size_t *vlen, const char **after)
{
    const char *o = strstr(s, "{{");
    const char *c, *b, *e;

    if (o == NULL)
        return 0;
    c = strstr(o + 2, "}}");
    if (c == NULL) {
        *open = o;
        return -1;
    }
    b = o + 2;
    e = c;
    while (b < e && (*b == ' ' || *b == '\t'))
        b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *open = o;
    *var = b;
    *vlen = (size_t)(e - b);
    *after = c + 2;
    return 1;
}

static enum tvar tmpl_var(const char *v, size_t n, const char **attr,
                          size_t *attr_len)
{
    static const struct {
        const char *name;
        enum tvar var;
    } fixed[] = {{"profile.id", TV_PROFILE_ID},
                 {"profile.type", TV_PROFILE_TYPE},
                 {"profile.email", TV_PROFILE_EMAIL},
                 {"journey.id", TV_JOURNEY_ID},
                 {"tenant", TV_TENANT},
                 {"iteration", TV_ITERATION}};
    size_t i;

    if (n > 5 && strncmp(v, "attr.", 5) == 0 && attr_name_okn(v + 5, n - 5)) {
        *attr = v + 5;
        *attr_len = n - 5;
        return TV_ATTR;
    }
    for (i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (strlen(fixed[i].name) == n && strncmp(fixed[i].name, v, n) == 0)
            return fixed[i].var;
    return TV_BAD;
}

/* Adds an attribute name to the journey's attrs (unique; sorted later). */
static enum cs_err add_attr(struct jp *p, const char *name, size_t n)
{
    struct journey *j = p->j;
    size_t i;

    for (i = 0; i < j->nattrs; i++)
        if (strlen(j->attrs[i]) == n && strncmp(j->attrs[i], name, n) == 0)
            return CS_ERR_OK;
    if (j->nattrs == p->attr_cap) {
        size_t cap = p->attr_cap > 0 ? p->attr_cap * 2 : 8;
        char **v = realloc(j->attrs, cap * sizeof(*v));
        if (v == NULL)
            return jp_nomem(p);
        j->attrs = v;
        p->attr_cap = cap;
    }
    j->attrs[j->nattrs] = strndup(name, n);
    if (j->attrs[j->nattrs] == NULL)
        return jp_nomem(p);
    j->nattrs++;
    return CS_ERR_OK;
}

/* Checks every placeholder of template @p at (path names it) and collects
 * the attributes it uses. */
static enum cs_err check_template(struct jp *p, const yaml_node_t *at,
                                  const char *path, const char *text)
{
    const char *s = text;

    for (;;) {
        const char *open, *var = NULL, *after = NULL, *attr = NULL;
        size_t vlen = 0, alen = 0;
        enum cs_err err;
        int r = tmpl_next(s, &open, &var, &vlen, &after);

        if (r == 0)
            return CS_ERR_OK;
        if (r < 0)
            return jp_fail(p, at, path, "unterminated '{{' in template \"%s\"",
                           text);
        if (tmpl_var(var, vlen, &attr, &alen) == TV_BAD)
            return jp_fail(p, at, path,
                           "unknown template variable '%.*s' in \"%s\" "
                           "(expected " TEMPLATE_VARS ")",
                           (int)vlen, var, text);
        if (attr != NULL) {
            err = add_attr(p, attr, alen);
            if (err != CS_ERR_OK)
                return err;
        }
        s = after;
    }
}

/* Optional/required template @p key of @p map, copied into *out. */
static enum cs_err get_template(struct jp *p, const yaml_node_t *map,
                                const char *path, const char *key,
                                bool required, char **out)
{
    const char *t;
    yaml_node_t *at;
    char sub[PATH_BUF];
    enum cs_err err = get_text(p, map, path, key, required, &t, &at);

    if (err != CS_ERR_OK || t == NULL)
        return err;
    path_key(sub, path, key);
    err = check_template(p, at, sub, t);
    if (err != CS_ERR_OK)
        return err;
    return dup_text(p, t, out);
}

/* ------------------------------------------------------------------ */
/* typed fields                                                        */

/* Duration @p key of @p map; *present false when absent and optional. */
static enum cs_err get_duration(struct jp *p, const yaml_node_t *map,
                                const char *path, const char *key,
                                bool required, bool positive, int64_t *out,
                                bool *present)
{
    const char *t;
    yaml_node_t *at;
    char sub[PATH_BUF];
    enum cs_err err = get_text(p, map, path, key, required, &t, &at);

    if (present != NULL)
        *present = false;
    if (err != CS_ERR_OK || t == NULL)
        return err;
    path_key(sub, path, key);
    if (t[0] == '-')
        return jp_fail(p, at, sub, "duration '%s' must not be negative", t);
    if (!journey_parse_duration(t, out))
        return jp_fail(p, at, sub, "'%s' is not a duration (" DURATION_HINT ")",
                       t);
    if (positive && *out == 0)
        return jp_fail(p, at, sub, "duration must be greater than 0");
    if (present != NULL)
        *present = true;
    return CS_ERR_OK;
}

/* A sequence of names under @p key of @p map into a new array. */
static enum cs_err get_name_list(struct jp *p, const yaml_node_t *map,
                                 const char *path, const char *key,
                                 bool nonempty, bool (*ok)(const char *),
                                 const char *what, char ***out, size_t *n)
{
    yaml_node_t *seq = map_get(p, map, key);
    char sub[PATH_BUF], item[PATH_BUF];
    size_t i, len;
    enum cs_err err;

    if (seq == NULL)
        return CS_ERR_OK;
    path_key(sub, path, key);
    err = want(p, seq, sub, YAML_SEQUENCE_NODE);
    if (err != CS_ERR_OK)
        return err;
    len = seq_len(seq);
    if (len == 0) {
        if (nonempty)
            return jp_fail(p, seq, sub, "must not be an empty list");
        return CS_ERR_OK;
    }
    *out = calloc(len, sizeof(**out));
    if (*out == NULL)
        return jp_nomem(p);
    *n = len;
    for (i = 0; i < len; i++) {
        yaml_node_t *it = seq_at(p, seq, i);
        size_t k;

        path_index(item, sub, i);
        err = want(p, it, item, YAML_SCALAR_NODE);
        if (err != CS_ERR_OK)
            return err;
        if (scalar_is_null(it))
            return jp_fail(p, it, item, "must not be empty");
        if (!ok(scalar(it)))
            return jp_fail(p, it, item, "'%s' is not a valid %s", scalar(it),
                           what);
        for (k = 0; k < i; k++)
            if (strcmp((*out)[k], scalar(it)) == 0)
                return jp_fail(p, it, item, "'%s' is listed twice", scalar(it));
        err = dup_text(p, scalar(it), &(*out)[i]);
        if (err != CS_ERR_OK)
            return err;
    }
    return CS_ERR_OK;
}

/* A mapping name -> template (crm_trigger parameters, produce attributes).
 * @p reserved (NULL-ended, may be NULL) lists names the worker sets. */
static enum cs_err get_kv(struct jp *p, const yaml_node_t *map,
                          const char *path, const char *key,
                          const char *const *reserved, struct jr_action *a)
{
    yaml_node_t *m = map_get(p, map, key);
    char sub[PATH_BUF], item[PATH_BUF];
    yaml_node_pair_t *pair;
    size_t i, len;
    enum cs_err err;

    if (m == NULL)
        return CS_ERR_OK;
    path_key(sub, path, key);
    err = want(p, m, sub, YAML_MAPPING_NODE);
    if (err != CS_ERR_OK)
        return err;
    len = (size_t)(m->data.mapping.pairs.top - m->data.mapping.pairs.start);
    if (len == 0)
        return CS_ERR_OK;
    a->params = calloc(len, sizeof(*a->params));
    if (a->params == NULL)
        return jp_nomem(p);
    a->nparams = len;
    for (i = 0, pair = m->data.mapping.pairs.start; i < len; i++, pair++) {
        yaml_node_t *k = jp_node(p, pair->key);
        yaml_node_t *v = jp_node(p, pair->value);
        size_t r;

        if (k->type != YAML_SCALAR_NODE)
            return jp_fail(p, k, sub, "keys must be scalars, got %s",
                           type_name(k));
        if (!attr_name_ok(scalar(k)))
            return jp_fail(p, k, sub,
                           "'%s' is not a valid name ([A-Za-z0-9_.-])",
                           scalar(k));
        for (r = 0; reserved != NULL && reserved[r] != NULL; r++)
            if (strcmp(reserved[r], scalar(k)) == 0)
                return jp_fail(p, k, sub, "'%s' is set by the worker",
                               scalar(k));
        for (r = 0; r < i; r++)
            if (strcmp(a->params[r].name, scalar(k)) == 0)
                return jp_fail(p, k, sub, "duplicate key '%s'", scalar(k));
        path_key(item, sub, scalar(k));
        err = want(p, v, item, YAML_SCALAR_NODE);
        if (err != CS_ERR_OK)
            return err;
        if (scalar_is_null(v) && scalar(v)[0] != '\0')
            return jp_fail(p, v, item, "has no value (quote \"%s\" if meant)",
                           scalar(v));
        err = check_template(p, v, item, scalar(v));
        if (err == CS_ERR_OK)
            err = dup_text(p, scalar(k), &a->params[i].name);
        if (err == CS_ERR_OK)
            err = dup_text(p, scalar(v), &a->params[i].tmpl);
        if (err != CS_ERR_OK)
            return err;
    }
    return CS_ERR_OK;
}

/* ------------------------------------------------------------------ */
/* journey parts                                                       */

static const char *const CRM_TRIGGER_RESERVED[] = {
    "msdynmkt_signaltimestamp", "msdynmkt_signalingestiontimestamp",
    "msdynmkt_signaluserauthid", "msdynmkt_profileid", NULL};

static enum cs_err parse_action(struct jp *p, yaml_node_t *map,
                                const char *path, struct jr_action *a)
{
    static const char *const crm_trigger_keys[] = {"type", "name", "parameters",
                                                   NULL};
    static const char *const esp_mail_keys[] = {"type", "mailing", "list",
                                                NULL};
    static const char *const crm_task_keys[] = {
        "type", "subject", "description", "owner", "due_in", NULL};
    static const char *const produce_keys[] = {"type", "topic", "trigger",
                                               "attributes", NULL};
    const char *type, *t;
    yaml_node_t *at;
    char sub[PATH_BUF];
    enum cs_err err = want(p, map, path, YAML_MAPPING_NODE);

    if (err == CS_ERR_OK)
        err = get_text(p, map, path, "type", true, &type, &at);
    if (err != CS_ERR_OK)
        return err;
    if (strcmp(type, "crm_trigger") == 0) {
        a->type = JR_ACT_CRM_TRIGGER;
        err = check_keys(p, map, path, crm_trigger_keys);
        if (err == CS_ERR_OK)
            err = get_text(p, map, path, "name", true, &t, &at);
        if (err != CS_ERR_OK)
            return err;
        if (!crm_trigger_name_ok(t)) {
            path_key(sub, path, "name");
            return jp_fail(p, at, sub,
                           "'%s' is not a custom trigger action name "
                           "(msdynmkt_[a-z0-9_]+)",
                           t);
        }
        err = dup_text(p, t, &a->name);
        if (err == CS_ERR_OK)
            err = get_kv(p, map, path, "parameters", CRM_TRIGGER_RESERVED, a);
        return err;
    }
    if (strcmp(type, "esp_mail") == 0) {
        static const char *const ids[] = {"mailing", "list"};
        size_t i;

        a->type = JR_ACT_ESP_MAIL;
        err = check_keys(p, map, path, esp_mail_keys);
        for (i = 0; i < 2 && err == CS_ERR_OK; i++) {
            err = get_text(p, map, path, ids[i], true, &t, &at);
            if (err != CS_ERR_OK)
                break;
            if (!decimal_id_ok(t)) {
                path_key(sub, path, ids[i]);
                return jp_fail(p, at, sub, "'%s' is not a decimal id", t);
            }
            err = dup_text(p, t, i == 0 ? &a->mailing : &a->list);
        }
        return err;
    }
    if (strcmp(type, "crm_task") == 0) {
        a->type = JR_ACT_CRM_TASK;
        err = check_keys(p, map, path, crm_task_keys);
        if (err == CS_ERR_OK)
            err = get_template(p, map, path, "subject", true, &a->subject);
        if (err == CS_ERR_OK)
            err = get_template(p, map, path, "description", false,
                               &a->description);
        if (err == CS_ERR_OK)
            err = get_template(p, map, path, "owner", false, &a->owner);
        if (err == CS_ERR_OK)
            err = get_duration(p, map, path, "due_in", false, true,
                               &a->due_in_ms, NULL);
        return err;
    }
    if (strcmp(type, "produce") == 0) {
        a->type = JR_ACT_PRODUCE;
        err = check_keys(p, map, path, produce_keys);
        if (err == CS_ERR_OK)
            err = get_text(p, map, path, "topic", true, &t, &at);
        if (err != CS_ERR_OK)
            return err;
        path_key(sub, path, "topic");
        if (!topic_ok(t))
            return jp_fail(p, at, sub, "'%s' is not a topic name", t);
        err = dup_text(p, t, &a->topic);
        if (err == CS_ERR_OK)
            err = get_text(p, map, path, "trigger", true, &t, &at);
        if (err != CS_ERR_OK)
            return err;
        path_key(sub, path, "trigger");
        if (!trigger_name_ok(t))
            return jp_fail(p, at, sub, "'%s' is not a valid trigger name", t);
        err = dup_text(p, t, &a->name);
        if (err == CS_ERR_OK)
            err = get_kv(p, map, path, "attributes", NULL, a);
        return err;
    }
    path_key(sub, path, "type");
    return jp_fail(p, at, sub,
                   "unknown action type '%s' (expected crm_trigger, "
                   "esp_mail, crm_task, produce)",
                   type);
}

static enum cs_err parse_wait(struct jp *p, yaml_node_t *map, const char *path,
                              size_t idx)
{
    static const char *const keys[] = {"for", "until", "until_attribute",
                                       "offset", NULL};
    struct jr_step *st = &p->j->steps[idx];
    const char *t;
    yaml_node_t *at;
    char sub[PATH_BUF];
    int count = (map_get(p, map, "for") != NULL) +
                (map_get(p, map, "until") != NULL) +
                (map_get(p, map, "until_attribute") != NULL);
    enum cs_err err = check_keys(p, map, path, keys);

    if (err != CS_ERR_OK)
        return err;
    if (count != 1)
        return jp_fail(p, map, path,
                       "a wait needs exactly one of for, until, "
                       "until_attribute");
    if (map_get(p, map, "offset") != NULL &&
        map_get(p, map, "until_attribute") == NULL)
        return jp_fail(p, map_get(p, map, "offset"), path,
                       "offset is only allowed with until_attribute");
    if (map_get(p, map, "for") != NULL)
        return get_duration(p, map, path, "for", true, true, &st->wait_ms,
                            NULL);
    if (map_get(p, map, "until") != NULL) {
        err = get_text(p, map, path, "until", true, &t, &at);
        if (err != CS_ERR_OK)
            return err;
        if (!iso_utc_parse(t, &st->until_ms)) {
            path_key(sub, path, "until");
            return jp_fail(p, at, sub,
                           "'%s' is not an ISO 8601 UTC time like "
                           "2026-12-24T09:00:00Z",
                           t);
        }
        return CS_ERR_OK;
    }
    err = get_text(p, map, path, "until_attribute", true, &t, &at);
    if (err != CS_ERR_OK)
        return err;
    if (!attr_name_ok(t)) {
        path_key(sub, path, "until_attribute");
        return jp_fail(p, at, sub,
                       "'%s' is not a valid attribute name ([A-Za-z0-9_.-])",
                       t);
    }
    err = add_attr(p, t, strlen(t));
    if (err == CS_ERR_OK)
        err = dup_text(p, t, &st->until_attr);
    if (err != CS_ERR_OK)
        return err;
    err = get_text(p, map, path, "offset", false, &t, &at);
    if (err != CS_ERR_OK || t == NULL)
        return err;
    path_key(sub, path, "offset");
    if (!journey_parse_duration(t[0] == '-' ? t + 1 : t, &st->offset_ms))
        return jp_fail(p, at, sub,
                       "'%s' is not a duration (" DURATION_HINT
                       ", may start with '-')",
                       t);
    if (t[0] == '-')
        st->offset_ms = -st->offset_ms;
    return CS_ERR_OK;
}

static enum cs_err parse_reminder(struct jp *p, yaml_node_t *map,
                                  const char *path, size_t idx,
                                  const char **mailing)
{
    static const char *const keys[] = {"action", "first_after", "every", "max",
                                       "until",  "deadline",    NULL};
    struct jr_step *st = &p->j->steps[idx];
    yaml_node_t *an, *at;
    const char *t;
    char sub[PATH_BUF];
    char *end;
    long max;
    bool has_deadline;
    enum cs_err err = check_keys(p, map, path, keys);

    if (err != CS_ERR_OK)
        return err;
    an = map_get(p, map, "action");
    if (an == NULL)
        return jp_fail(p, map, path, "missing required key 'action'");
    path_key(sub, path, "action");
    err = parse_action(p, an, sub, &st->action);
    if (err == CS_ERR_OK)
        err = get_duration(p, map, path, "first_after", false, false,
                           &st->first_after_ms, NULL);
    if (err == CS_ERR_OK)
        err = get_duration(p, map, path, "every", true, true, &st->every_ms,
                           NULL);
    if (err == CS_ERR_OK)
        err = get_text(p, map, path, "max", true, &t, &at);
    if (err != CS_ERR_OK)
        return err;
    errno = 0;
    max = isdigit((unsigned char)t[0]) ? strtol(t, &end, 10) : -1;
    if (max < 1 || max > REMINDER_MAX || errno != 0 || *end != '\0') {
        path_key(sub, path, "max");
        return jp_fail(p, at, sub, "'%s' is not a whole number from 1 to %d", t,
                       REMINDER_MAX);
    }
    st->max = (int)max;
    err = get_name_list(p, map, path, "until", false, trigger_name_ok,
                        "trigger name", &st->until, &st->nuntil);
    if (err == CS_ERR_OK)
        err = get_duration(p, map, path, "deadline", false, true,
                           &st->deadline_ms, &has_deadline);
    if (err != CS_ERR_OK)
        return err;
    if (has_deadline && st->deadline_ms <= st->first_after_ms) {
        path_key(sub, path, "deadline");
        return jp_fail(p, map_get(p, map, "deadline"), sub,
                       "deadline must be later than first_after (no "
                       "reminder would be sent)");
    }
    if (st->action.type == JR_ACT_ESP_MAIL)
        *mailing = st->action.mailing;
    return CS_ERR_OK;
}

/* Appends a zeroed step; *idx its index. */
static enum cs_err emit_step(struct jp *p, const yaml_node_t *at,
                             const char *path, enum jr_step_kind kind,
                             size_t *idx)
{
    struct journey *j = p->j;

    if (j->nsteps >= JOURNEY_MAX_STEPS)
        return jp_fail(p, at, path,
                       "journey has too many steps (at most %d compiled "
                       "steps; every branch with an else list adds one)",
                       JOURNEY_MAX_STEPS);
    if (j->nsteps == p->step_cap) {
        size_t cap = p->step_cap > 0 ? p->step_cap * 2 : 8;
        struct jr_step *v = realloc(j->steps, cap * sizeof(*v));
        if (v == NULL)
            return jp_nomem(p);
        j->steps = v;
        p->step_cap = cap;
    }
    *idx = j->nsteps;
    memset(&j->steps[*idx], 0, sizeof(j->steps[*idx]));
    j->steps[*idx].kind = kind;
    j->steps[*idx].line = (int)at->start_mark.line + 1;
    j->nsteps++;
    return CS_ERR_OK;
}

static enum cs_err parse_steps(struct jp *p, yaml_node_t *seq, const char *path,
                               int depth, const char **mailing);

static enum cs_err parse_branch(struct jp *p, yaml_node_t *map,
                                const char *path, size_t idx, int depth,
                                const char *mailing)
{
    static const char *const keys[] = {"on", "within", "then", "else", NULL};
    yaml_node_t *then_n, *else_n, *at;
    const char *t, *then_mail = mailing, *else_mail = mailing;
    char sub[PATH_BUF];
    size_t jump;
    bool then_empty, else_empty;
    enum cs_err err = check_keys(p, map, path, keys);

    if (err == CS_ERR_OK)
        err = get_text(p, map, path, "on", true, &t, &at);
    if (err != CS_ERR_OK)
        return err;
    if (strcmp(t, "opened") != 0 && strcmp(t, "clicked") != 0) {
        path_key(sub, path, "on");
        return jp_fail(p, at, sub, "'%s' is not opened or clicked", t);
    }
    p->j->steps[idx].on_click = strcmp(t, "clicked") == 0;
    err = get_duration(p, map, path, "within", true, true,
                       &p->j->steps[idx].within_ms, NULL);
    if (err != CS_ERR_OK)
        return err;
    then_n = map_get(p, map, "then");
    else_n = map_get(p, map, "else");
    path_key(sub, path, "then");
    if (then_n != NULL)
        err = want(p, then_n, sub, YAML_SEQUENCE_NODE);
    path_key(sub, path, "else");
    if (err == CS_ERR_OK && else_n != NULL)
        err = want(p, else_n, sub, YAML_SEQUENCE_NODE);
    if (err != CS_ERR_OK)
        return err;
    then_empty = then_n == NULL || seq_len(then_n) == 0;
    else_empty = else_n == NULL || seq_len(else_n) == 0;
    if (then_empty && else_empty)
        return jp_fail(p, map, path,
                       "a branch needs a non-empty then or else list");
    if (mailing == NULL)
        return jp_fail(p, map, path,
                       "branch needs an esp_mail step before it (or a start "
                       "trigger email.delivered/email.sent with condition "
                       "mailing_id eq <id>)");
    if (depth + 1 > JOURNEY_MAX_DEPTH)
        return jp_fail(p, map, path, "branches nested deeper than %d",
                       JOURNEY_MAX_DEPTH);
    p->j->steps[idx].mailing = (char *)mailing;
    p->j->steps[idx].then_pc = (int)idx + 1;
    if (!then_empty) {
        path_key(sub, path, "then");
        err = parse_steps(p, then_n, sub, depth + 1, &then_mail);
        if (err != CS_ERR_OK)
            return err;
    }
    if (else_empty) {
        p->j->steps[idx].else_pc = (int)p->j->nsteps;
        return CS_ERR_OK;
    }
    err = emit_step(p, map, path, JR_STEP_JUMP, &jump);
    if (err != CS_ERR_OK)
        return err;
    p->j->steps[idx].else_pc = (int)p->j->nsteps;
    path_key(sub, path, "else");
    err = parse_steps(p, else_n, sub, depth + 1, &else_mail);
    if (err != CS_ERR_OK)
        return err;
    p->j->steps[jump].target = (int)p->j->nsteps;
    return CS_ERR_OK;
}

static enum cs_err parse_step(struct jp *p, yaml_node_t *map, const char *path,
                              int depth, const char **mailing)
{
    static const char *const keys[] = {"action", "wait", "reminder", "branch",
                                       NULL};
    static const enum jr_step_kind kinds[] = {JR_STEP_ACTION, JR_STEP_WAIT,
                                              JR_STEP_REMINDER, JR_STEP_BRANCH};
    yaml_node_pair_t *pair;
    yaml_node_t *key, *body;
    char sub[PATH_BUF];
    size_t k, idx;
    enum cs_err err = want(p, map, path, YAML_MAPPING_NODE);

    if (err == CS_ERR_OK)
        err = check_keys(p, map, path, keys);
    if (err != CS_ERR_OK)
        return err;
    pair = map->data.mapping.pairs.start;
    if (pair == map->data.mapping.pairs.top)
        return jp_fail(p, map, path,
                       "empty step (expected one of action, wait, reminder, "
                       "branch)");
    if (pair + 1 < map->data.mapping.pairs.top)
        return jp_fail(p, jp_node(p, pair[1].key), path,
                       "a step has exactly one of action, wait, reminder, "
                       "branch; found both '%s' and '%s'",
                       scalar(jp_node(p, pair[0].key)),
                       scalar(jp_node(p, pair[1].key)));
    key = jp_node(p, pair->key);
    body = jp_node(p, pair->value);
    for (k = 0; strcmp(keys[k], scalar(key)) != 0; k++)
        ;
    path_key(sub, path, keys[k]);
    if (kinds[k] != JR_STEP_ACTION) {
        err = want(p, body, sub, YAML_MAPPING_NODE);
        if (err != CS_ERR_OK)
            return err;
    }
    err = emit_step(p, key, sub, kinds[k], &idx);
    if (err != CS_ERR_OK)
        return err;
    switch (kinds[k]) {
    case JR_STEP_ACTION:
        err = parse_action(p, body, sub, &p->j->steps[idx].action);
        if (err == CS_ERR_OK && p->j->steps[idx].action.type == JR_ACT_ESP_MAIL)
            *mailing = p->j->steps[idx].action.mailing;
        return err;
    case JR_STEP_WAIT:
        return parse_wait(p, body, sub, idx);
    case JR_STEP_REMINDER:
        return parse_reminder(p, body, sub, idx, mailing);
    default:
        /* after a branch the nearest mail sent on every path is still the
           one before it */
        return parse_branch(p, body, sub, idx, depth, *mailing);
    }
}

static enum cs_err parse_steps(struct jp *p, yaml_node_t *seq, const char *path,
                               int depth, const char **mailing)
{
    char item[PATH_BUF];
    size_t i;
    enum cs_err err;

    for (i = 0; i < seq_len(seq); i++) {
        path_index(item, path, i);
        err = parse_step(p, seq_at(p, seq, i), item, depth, mailing);
        if (err != CS_ERR_OK)
            return err;
    }
    return CS_ERR_OK;
}

static enum cs_err parse_condition(struct jp *p, yaml_node_t *map,
                                   const char *path, struct jr_condition *c)
{
    static const char *const keys[] = {"attribute", "op", "value", "values",
                                       NULL};
    static const struct {
        const char *name;
        enum jr_op op;
        int arity; /* 0 none, 1 value, 2 values */
    } ops[] = {{"eq", JR_OP_EQ, 1},           {"ne", JR_OP_NE, 1},
               {"in", JR_OP_IN, 2},           {"exists", JR_OP_EXISTS, 0},
               {"missing", JR_OP_MISSING, 0}, {"gt", JR_OP_GT, 1},
               {"gte", JR_OP_GTE, 1},         {"lt", JR_OP_LT, 1},
               {"lte", JR_OP_LTE, 1},         {"prefix", JR_OP_PREFIX, 1}};
    const char *t;
    yaml_node_t *at;
    char sub[PATH_BUF];
    size_t i;
    double d;
    enum cs_err err = want(p, map, path, YAML_MAPPING_NODE);

    if (err == CS_ERR_OK)
        err = check_keys(p, map, path, keys);
    if (err == CS_ERR_OK)
        err = get_text(p, map, path, "attribute", true, &t, &at);
    if (err != CS_ERR_OK)
        return err;
    if (!attr_name_ok(t)) {
        path_key(sub, path, "attribute");
        return jp_fail(p, at, sub,
                       "'%s' is not a valid attribute name ([A-Za-z0-9_.-])",
                       t);
    }
    err = dup_text(p, t, &c->attr);
    if (err == CS_ERR_OK)
        err = get_text(p, map, path, "op", true, &t, &at);
    if (err != CS_ERR_OK)
        return err;
    for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (strcmp(ops[i].name, t) == 0)
            break;
    if (i == sizeof(ops) / sizeof(ops[0])) {
        path_key(sub, path, "op");
        return jp_fail(p, at, sub,
                       "unknown op '%s' (expected eq, ne, in, exists, "
                       "missing, gt, gte, lt, lte, prefix)",
                       t);
    }
    c->op = ops[i].op;
    if (ops[i].arity != 1 && map_get(p, map, "value") != NULL)
        return jp_fail(p, map_get(p, map, "value"), path,
                       "op %s takes no 'value'%s", ops[i].name,
                       ops[i].arity == 2 ? " (use values: [...])" : "");
    if (ops[i].arity != 2 && map_get(p, map, "values") != NULL)
        return jp_fail(p, map_get(p, map, "values"), path,
                       "op %s takes no 'values'%s", ops[i].name,
                       ops[i].arity == 1 ? " (use value: ...)" : "");
    if (ops[i].arity == 2) {
        err = get_name_list(p, map, path, "values", true, any_text_ok, "value",
                            &c->values, &c->nvalues);
        if (err == CS_ERR_OK && c->nvalues == 0)
            err = jp_fail(p, map, path, "missing required key 'values'");
        return err;
    }
    if (ops[i].arity == 0)
        return CS_ERR_OK;
    err = get_text(p, map, path, "value", true, &t, &at);
    if (err != CS_ERR_OK)
        return err;
    if (c->op >= JR_OP_GT && c->op <= JR_OP_LTE && !number_parse(t, &d)) {
        path_key(sub, path, "value");
        return jp_fail(p, at, sub, "'%s' is not a number (op %s)", t,
                       ops[i].name);
    }
    c->values = calloc(1, sizeof(*c->values));
    if (c->values == NULL)
        return jp_nomem(p);
    c->nvalues = 1;
    return dup_text(p, t, &c->values[0]);
}

static enum cs_err parse_start(struct jp *p, yaml_node_t *map, const char *path,
                               struct journey *j)
{
    static const char *const keys[] = {"trigger", "kind", "conditions", NULL};
    static const char *const kinds[] = {"BEHAVIOURAL", "BUSINESS", "CUSTOM"};
    yaml_node_t *at, *conds;
    const char *t;
    char sub[PATH_BUF], item[PATH_BUF];
    size_t i;
    enum cs_err err = want(p, map, path, YAML_MAPPING_NODE);

    if (err == CS_ERR_OK)
        err = check_keys(p, map, path, keys);
    if (err == CS_ERR_OK)
        err = get_text(p, map, path, "trigger", true, &t, &at);
    if (err != CS_ERR_OK)
        return err;
    if (!trigger_name_ok(t)) {
        path_key(sub, path, "trigger");
        return jp_fail(p, at, sub,
                       "'%s' is not a valid trigger name (printable, no "
                       "spaces)",
                       t);
    }
    err = dup_text(p, t, &j->start_trigger);
    if (err == CS_ERR_OK)
        err = get_text(p, map, path, "kind", false, &t, &at);
    if (err != CS_ERR_OK)
        return err;
    if (t != NULL) {
        for (i = 0; i < 3 && strcmp(kinds[i], t) != 0; i++)
            ;
        if (i == 3) {
            path_key(sub, path, "kind");
            return jp_fail(p, at, sub,
                           "unknown kind '%s' (expected BEHAVIOURAL, "
                           "BUSINESS, CUSTOM)",
                           t);
        }
        j->start_kind = (enum jr_kind_filter)i;
    }
    conds = map_get(p, map, "conditions");
    if (conds == NULL)
        return CS_ERR_OK;
    path_key(sub, path, "conditions");
    err = want(p, conds, sub, YAML_SEQUENCE_NODE);
    if (err != CS_ERR_OK || seq_len(conds) == 0)
        return err;
    j->conds = calloc(seq_len(conds), sizeof(*j->conds));
    if (j->conds == NULL)
        return jp_nomem(p);
    j->nconds = seq_len(conds);
    for (i = 0; i < j->nconds; i++) {
        path_index(item, sub, i);
        err = parse_condition(p, seq_at(p, conds, i), item, &j->conds[i]);
        if (err != CS_ERR_OK)
            return err;
    }
    return CS_ERR_OK;
}

static enum cs_err parse_reentry(struct jp *p, yaml_node_t *n, const char *path,
                                 struct journey *j)
{
    static const char *const keys[] = {"once_per", NULL};
    enum cs_err err;

    if (n->type == YAML_SCALAR_NODE) {
        if (strcmp(scalar(n), "once") == 0) {
            j->reentry = JR_REENTRY_ONCE;
            return CS_ERR_OK;
        }
        if (strcmp(scalar(n), "always") == 0) {
            j->reentry = JR_REENTRY_ALWAYS;
            return CS_ERR_OK;
        }
    }
    if (n->type != YAML_MAPPING_NODE)
        return jp_fail(p, n, path,
                       "expected once, always or {once_per: <duration>}");
    err = check_keys(p, n, path, keys);
    if (err == CS_ERR_OK)
        err = get_duration(p, n, path, "once_per", true, true,
                           &j->reentry_window_ms, NULL);
    if (err == CS_ERR_OK)
        j->reentry = JR_REENTRY_WINDOW;
    return err;
}

/* The mailing a start trigger stands for: email.delivered / email.sent
 * with a condition mailing_id eq X (borrowed from the condition). */
static const char *start_mailing(const struct journey *j)
{
    size_t i;

    if (strcmp(j->start_trigger, "email.delivered") != 0 &&
        strcmp(j->start_trigger, "email.sent") != 0)
        return NULL;
    for (i = 0; i < j->nconds; i++)
        if (j->conds[i].op == JR_OP_EQ &&
            strcmp(j->conds[i].attr, "mailing_id") == 0)
            return j->conds[i].values[0];
    return NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static enum cs_err parse_journey(struct jp *p, yaml_node_t *map,
                                 const char *path, struct journey_set *s,
                                 size_t idx)
{
    static const char *const keys[] = {"id",      "tenants", "start", "reentry",
                                       "exit_on", "steps",   NULL};
    struct journey *j = &s->j[idx];
    yaml_node_t *at, *n;
    const char *t, *mailing;
    char sub[PATH_BUF];
    size_t k;
    enum cs_err err = want(p, map, path, YAML_MAPPING_NODE);

    j->start_kind = JR_KIND_ANY;
    j->reentry = JR_REENTRY_ONCE;
    if (err == CS_ERR_OK)
        err = check_keys(p, map, path, keys);
    if (err == CS_ERR_OK)
        err = get_text(p, map, path, "id", true, &t, &at);
    if (err != CS_ERR_OK)
        return err;
    path_key(sub, path, "id");
    if (!id_ok(t))
        return jp_fail(p, at, sub,
                       "'%s' is not a valid id ([a-z0-9._-], 1 to %d "
                       "characters)",
                       t, JOURNEY_ID_MAX);
    for (k = 0; k < idx; k++)
        if (strcmp(s->j[k].id, t) == 0)
            return jp_fail(p, at, sub,
                           "duplicate journey id '%s' (also journeys[%zu])", t,
                           k);
    err = dup_text(p, t, &j->id);
    if (err == CS_ERR_OK)
        err = get_name_list(p, map, path, "tenants", true, trigger_name_ok,
                            "tenant (printable, no spaces)", &j->tenants,
                            &j->ntenants);
    if (err != CS_ERR_OK)
        return err;
    n = map_get(p, map, "start");
    if (n == NULL)
        return jp_fail(p, map, path, "missing required key 'start'");
    path_key(sub, path, "start");
    err = parse_start(p, n, sub, j);
    if (err != CS_ERR_OK)
        return err;
    n = map_get(p, map, "reentry");
    path_key(sub, path, "reentry");
    if (n != NULL)
        err = parse_reentry(p, n, sub, j);
    if (err == CS_ERR_OK)
        err = get_name_list(p, map, path, "exit_on", false, trigger_name_ok,
                            "trigger name", &j->exit_on, &j->nexit);
    if (err != CS_ERR_OK)
        return err;
    n = map_get(p, map, "steps");
    if (n == NULL)
        return jp_fail(p, map, path, "missing required key 'steps'");
    path_key(sub, path, "steps");
    err = want(p, n, sub, YAML_SEQUENCE_NODE);
    if (err != CS_ERR_OK)
        return err;
    if (seq_len(n) == 0)
        return jp_fail(p, n, sub, "a journey needs at least one step");
    p->j = j;
    p->step_cap = 0;
    p->attr_cap = 0;
    mailing = start_mailing(j);
    err = parse_steps(p, n, sub, 0, &mailing);
    p->j = NULL;
    if (err != CS_ERR_OK)
        return err;
    if (j->nattrs > 1)
        qsort(j->attrs, j->nattrs, sizeof(*j->attrs), cmp_str);
    return CS_ERR_OK;
}

/* ------------------------------------------------------------------ */
/* load / free                                                         */

static enum cs_err parse_root(struct jp *p, yaml_node_t *root,
                              struct journey_set *s)
{
    static const char *const keys[] = {"journeys", NULL};
    yaml_node_t *seq;
    char item[PATH_BUF];
    size_t i;
    enum cs_err err;

    if (root->type != YAML_MAPPING_NODE)
        return jp_fail(p, root, "",
                       "the top level must be a mapping with the key "
                       "'journeys', got %s",
                       type_name(root));
    err = check_keys(p, root, "", keys);
    if (err != CS_ERR_OK)
        return err;
    seq = map_get(p, root, "journeys");
    if (seq == NULL)
        return jp_fail(p, root, "", "missing required key 'journeys'");
    err = want(p, seq, "journeys", YAML_SEQUENCE_NODE);
    if (err != CS_ERR_OK)
        return err;
    if (seq_len(seq) == 0)
        return jp_fail(p, seq, "journeys",
                       "no journeys defined (the list is empty)");
    s->j = calloc(seq_len(seq), sizeof(*s->j));
    if (s->j == NULL)
        return jp_nomem(p);
    s->n = seq_len(seq);
    for (i = 0; i < s->n; i++) {
        path_index(item, "journeys", i);
        err = parse_journey(p, seq_at(p, seq, i), item, s, i);
        if (err != CS_ERR_OK)
            return err;
    }
    return CS_ERR_OK;
}

static enum cs_err yaml_syntax_err(struct jp *p, const yaml_parser_t *parser)
{
    if (parser->error == YAML_MEMORY_ERROR)
        return jp_nomem(p);
    if (p->errstr != NULL && p->errstr_size > 0)
        snprintf(p->errstr, p->errstr_size, "%s:%lu:%lu: YAML error: %s%s%s",
                 p->name, (unsigned long)parser->problem_mark.line + 1,
                 (unsigned long)parser->problem_mark.column + 1,
                 parser->problem != NULL ? parser->problem : "syntax error",
                 parser->context != NULL ? " " : "",
                 parser->context != NULL ? parser->context : "");
    return CS_ERR_CONFIG;
}

enum cs_err journey_set_parse(const char *text, size_t len, const char *name,
                              struct journey_set *out, char *errstr,
                              size_t errstr_size)
{
    struct jp p = {.name = name != NULL ? name : "<journeys>",
                   .errstr = errstr,
                   .errstr_size = errstr_size};
    struct journey_set s = {0};
    yaml_parser_t parser;
    yaml_document_t doc, extra;
    yaml_node_t *root;
    enum cs_err err;

    if (!yaml_parser_initialize(&parser))
        return jp_nomem(&p);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        err = yaml_syntax_err(&p, &parser);
        goto out_parser;
    }
    p.doc = &doc;
    root = yaml_document_get_root_node(&doc);
    if (root == NULL) {
        err = jp_fail(&p, NULL, "",
                      "empty file (expected a mapping with the key "
                      "'journeys')");
        goto out_doc;
    }
    err = parse_root(&p, root, &s);
    if (err != CS_ERR_OK)
        goto out_doc;
    if (!yaml_parser_load(&parser, &extra)) {
        err = yaml_syntax_err(&p, &parser);
        goto out_doc;
    }
    if (yaml_document_get_root_node(&extra) != NULL)
        err = jp_fail(&p, yaml_document_get_root_node(&extra), "",
                      "only one YAML document is allowed");
    yaml_document_delete(&extra);
out_doc:
    yaml_document_delete(&doc);
out_parser:
    yaml_parser_delete(&parser);
    if (err == CS_ERR_OK)
        *out = s;
    else
        journey_set_free(&s);
    return err;
}

enum cs_err journey_set_load(const char *path, struct journey_set *out,
                             char *errstr, size_t errstr_size)
{
    struct buf b = {0};
    char chunk[8192];
    size_t n;
    FILE *fp = fopen(path, "rb");
    enum cs_err err;

    if (fp == NULL) {
        if (errstr != NULL && errstr_size > 0)
            snprintf(errstr, errstr_size, "%s: cannot open: %s", path,
                     strerror(errno));
        return CS_ERR_CONFIG;
    }
    do {
        n = fread(chunk, 1, sizeof(chunk), fp);
        buf_append(&b, chunk, n);
    } while (n == sizeof(chunk));
    if (ferror(fp)) {
        if (errstr != NULL && errstr_size > 0)
            snprintf(errstr, errstr_size, "%s: cannot read: %s", path,
                     strerror(errno));
        err = CS_ERR_CONFIG;
    } else if (b.oom) {
        if (errstr != NULL && errstr_size > 0)
            snprintf(errstr, errstr_size, "%s: out of memory", path);
        err = CS_ERR_NOMEM;
    } else {
        err = journey_set_parse(b.data != NULL ? b.data : "", b.len, path, out,
                                errstr, errstr_size);
    }
    buf_free(&b);
    fclose(fp);
    return err;
}

static void strv_free(char **v, size_t n)
{
    size_t i;

    for (i = 0; v != NULL && i < n; i++)
        free(v[i]);
    free(v);
}

static void action_free(struct jr_action *a)
{
    size_t i;

    free(a->name);
    free(a->mailing);
    free(a->list);
    free(a->topic);
    free(a->subject);
    free(a->description);
    free(a->owner);
    for (i = 0; a->params != NULL && i < a->nparams; i++) {
        free(a->params[i].name);
        free(a->params[i].tmpl);
    }
    free(a->params);
}

static void journey_free(struct journey *j)
{
    size_t i;

    free(j->id);
    strv_free(j->tenants, j->ntenants);
    free(j->start_trigger);
    for (i = 0; j->conds != NULL && i < j->nconds; i++) {
        free(j->conds[i].attr);
        strv_free(j->conds[i].values, j->conds[i].nvalues);
    }
    free(j->conds);
    strv_free(j->exit_on, j->nexit);
    for (i = 0; j->steps != NULL && i < j->nsteps; i++) {
        /* steps[i].mailing is borrowed */
        action_free(&j->steps[i].action);
        free(j->steps[i].until_attr);
        strv_free(j->steps[i].until, j->steps[i].nuntil);
    }
    free(j->steps);
    strv_free(j->attrs, j->nattrs);
}

void journey_set_free(struct journey_set *s)
{
    size_t i;

    if (s == NULL)
        return;
    for (i = 0; s->j != NULL && i < s->n; i++)
        journey_free(&s->j[i]);
    free(s->j);
    s->j = NULL;
    s->n = 0;
}

/* ------------------------------------------------------------------ */
/* evaluation                                                          */

const char *jr_attrs_get(const struct jr_attrs *a, const char *name)
{
    size_t i;

    if (a == NULL || name == NULL)
        return NULL;
    for (i = 0; i < a->n; i++)
        if (a->names[i] != NULL && strcmp(a->names[i], name) == 0)
            return a->values[i];
    return NULL;
}

/* jr_attrs_get for a name of @p n bytes (not NUL-terminated). */
static const char *attrs_getn(const struct jr_attrs *a, const char *name,
                              size_t n)
{
    size_t i;

    if (a == NULL)
        return NULL;
    for (i = 0; i < a->n; i++)
        if (a->names[i] != NULL && strncmp(a->names[i], name, n) == 0 &&
            a->names[i][n] == '\0')
            return a->values[i];
    return NULL;
}

static bool condition_holds(const struct jr_condition *c,
                            const struct jr_attrs *a)
{
    const char *v = jr_attrs_get(a, c->attr);
    double lhs, rhs;
    size_t i;

    switch (c->op) {
    case JR_OP_EQ:
        return v != NULL && strcmp(v, c->values[0]) == 0;
    case JR_OP_NE:
        return v == NULL || strcmp(v, c->values[0]) != 0;
    case JR_OP_IN:
        for (i = 0; v != NULL && i < c->nvalues; i++)
            if (strcmp(v, c->values[i]) == 0)
                return true;
        return false;
    case JR_OP_EXISTS:
        return v != NULL;
    case JR_OP_MISSING:
        return v == NULL;
    case JR_OP_PREFIX:
        return v != NULL && strncmp(v, c->values[0], strlen(c->values[0])) == 0;
    case JR_OP_GT:
    case JR_OP_GTE:
    case JR_OP_LT:
    case JR_OP_LTE:
        if (!number_parse(v, &lhs) || !number_parse(c->values[0], &rhs))
            return false;
        if (c->op == JR_OP_GT)
            return lhs > rhs;
        if (c->op == JR_OP_GTE)
            return lhs >= rhs;
        if (c->op == JR_OP_LT)
            return lhs < rhs;
        return lhs <= rhs;
    }
    return false;
}

bool journey_for_tenant(const struct journey *j, const char *tenant)
{
    size_t i;

    if (j->ntenants == 0)
        return true;
    for (i = 0; tenant != NULL && i < j->ntenants; i++)
        if (strcmp(j->tenants[i], tenant) == 0)
            return true;
    return false;
}

bool journey_exits_on(const struct journey *j, const char *trigger)
{
    size_t i;

    for (i = 0; trigger != NULL && i < j->nexit; i++)
        if (strcmp(j->exit_on[i], trigger) == 0)
            return true;
    return false;
}

bool journey_starts(const struct journey *j, const char *tenant, int kind,
                    const char *trigger, const struct jr_attrs *a)
{
    size_t i;

    if (j == NULL || trigger == NULL || strcmp(j->start_trigger, trigger) != 0)
        return false;
    if (j->start_kind != JR_KIND_ANY && (int)j->start_kind != kind)
        return false;
    if (!journey_for_tenant(j, tenant))
        return false;
    for (i = 0; i < j->nconds; i++)
        if (!condition_holds(&j->conds[i], a))
            return false;
    return true;
}

char *journey_render(const char *tmpl, const struct jr_vars *v)
{
    static const struct jr_vars none = {0};
    struct buf b = {0};
    const char *s = tmpl != NULL ? tmpl : "";

    if (v == NULL)
        v = &none;
    for (;;) {
        const char *open = NULL, *var = NULL, *after = NULL, *attr = NULL;
        const char *val = NULL;
        size_t vlen = 0, alen = 0;

        if (tmpl_next(s, &open, &var, &vlen, &after) <= 0) {
            buf_appends(&b, s);
            break;
        }
        buf_append(&b, s, (size_t)(open - s));
        switch (tmpl_var(var, vlen, &attr, &alen)) {
        case TV_ATTR:
            val = attrs_getn(v->attrs, attr, alen);
            break;
        case TV_PROFILE_ID:
            val = v->profile_id;
            break;
        case TV_PROFILE_TYPE:
            val = v->profile_type;
            break;
        case TV_PROFILE_EMAIL:
            val = v->profile_email;
            break;
        case TV_JOURNEY_ID:
            val = v->journey_id;
            break;
        case TV_TENANT:
            val = v->tenant;
            break;
        case TV_ITERATION:
            buf_appendf(&b, "%d", v->iteration);
            break;
        case TV_BAD: /* rejected at load; kept verbatim */
            buf_append(&b, open, (size_t)(after - open));
            break;
        }
        if (val != NULL)
            buf_appends(&b, val);
        s = after;
    }
    return buf_detach(&b);
}
