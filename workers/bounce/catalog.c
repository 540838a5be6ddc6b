/*
 * catalog - the consents the CRM knows (see crmio.h).
 *
 * CI-J: msdynmkt_purposes (id, msdynmkt_type) and msdynmkt_topics (id).
 * History: <history.consent_set> (id, <history.consent_tenant_field>).
 * Both are small tables (tens of rows), read whole with paging.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/odata.h"
#include "workers/bounce/crmio.h"

#define FORCE_MIN_MS 10000 /* forced re-reads at most this often */

struct entry {
    char id[37];
    bool commercial; /* CI-J purpose type Commercial; history: always */
    char *tenant;    /* history: the consent's tenant (owned) or NULL */
};

struct table {
    struct entry *v; /* owned */
    size_t n;
    struct entry *topics; /* CI-J topics (owned) */
    size_t ntopics;
    bool loaded;
    int64_t loaded_at; /* monotonic ms */
};

struct bounce_catalog {
    struct crm *crm;                /* borrowed */
    const struct bounce_config *bc; /* borrowed */
    struct table cij;
    struct table hist;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void entries_free(struct entry *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i].tenant);
    free(v);
}

static void table_clear(struct table *t)
{
    entries_free(t->v, t->n);
    entries_free(t->topics, t->ntopics);
    t->v = t->topics = NULL;
    t->n = t->ntopics = 0;
}

struct bounce_catalog *bounce_catalog_new(struct crm *crm,
                                          const struct bounce_config *bc)
{
    struct bounce_catalog *c = calloc(1, sizeof(*c));
    if (c) {
        c->crm = crm;
        c->bc = bc;
    }
    return c;
}

void bounce_catalog_free(struct bounce_catalog *c)
{
    if (!c)
        return;
    table_clear(&c->cij);
    table_clear(&c->hist);
    free(c);
}

/* Reads "value" rows of @p path into entries: id from @p id_field, the
 * commercial flag from @p type_field (NULL: commercial), the tenant from
 * @p tenant_field (NULL/"": none). */
static enum cs_err read_rows(struct bounce_catalog *c, const char *path,
                             const char *id_field, const char *type_field,
                             const char *tenant_field, struct entry **out,
                             size_t *nout, char *errstr, size_t errstr_size)
{
    json_t *root = NULL;
    json_t *rows;
    enum cs_err err;
    size_t k = 0;

    err = c->crm->ops->get_json(c->crm->self, path, true, &root, errstr,
                                errstr_size);
    if (err != CS_ERR_OK)
        return err;
    rows = json_object_get(root, "value");
    *out = calloc(json_array_size(rows) + 1, sizeof(**out));
    if (!*out) {
        json_decref(root);
        return CS_ERR_NOMEM;
    }
    for (size_t i = 0; i < json_array_size(rows); i++) {
        json_t *row = json_array_get(rows, i);
        const char *id = json_string_value(json_object_get(row, id_field));
        json_t *type = type_field ? json_object_get(row, type_field) : NULL;
        const char *tn =
            tenant_field && tenant_field[0]
                ? json_string_value(json_object_get(row, tenant_field))
                : NULL;
        if (!id || !odata_is_guid(id))
            continue;
        snprintf((*out)[k].id, sizeof((*out)[k].id), "%s", id);
        for (char *p = (*out)[k].id; *p; p++)
            if (*p >= 'A' && *p <= 'F')
                *p = (char)(*p - 'A' + 'a');
        (*out)[k].commercial = !type_field || json_integer_value(type) ==
                                                  BOUNCE_PURPOSE_COMMERCIAL;
        (*out)[k].tenant = tn ? strdup(tn) : NULL;
        k++;
    }
    *nout = k;
    json_decref(root);
    return CS_ERR_OK;
}

static enum cs_err load(struct bounce_catalog *c, bool history, char *errstr,
                        size_t errstr_size)
{
    struct table t = {0};
    char path[512];
    enum cs_err err;

    if (history) {
        const char *tf = c->bc->consent_tenant_field;
        snprintf(path, sizeof(path), "%s?$select=%s%s%s", c->bc->consent_set,
                 c->bc->consent_id_field, tf[0] ? "," : "", tf);
        err = read_rows(c, path, c->bc->consent_id_field, NULL, tf, &t.v, &t.n,
                        errstr, errstr_size);
    } else {
        err = read_rows(c,
                        "msdynmkt_purposes?$select=msdynmkt_purposeid,"
                        "msdynmkt_type",
                        "msdynmkt_purposeid", "msdynmkt_type", NULL, &t.v, &t.n,
                        errstr, errstr_size);
        if (err == CS_ERR_OK)
            err = read_rows(c, "msdynmkt_topics?$select=msdynmkt_topicid",
                            "msdynmkt_topicid", NULL, NULL, &t.topics,
                            &t.ntopics, errstr, errstr_size);
    }
    if (err != CS_ERR_OK) {
        table_clear(&t);
        return err;
    }
    table_clear(history ? &c->hist : &c->cij);
    t.loaded = true;
    t.loaded_at = mono_ms();
    *(history ? &c->hist : &c->cij) = t;
    return CS_ERR_OK;
}

enum cs_err bounce_catalog_ensure(struct bounce_catalog *c, bool history,
                                  bool force, char *errstr, size_t errstr_size)
{
    struct table *t = history ? &c->hist : &c->cij;
    int64_t age = mono_ms() - t->loaded_at;

    if (t->loaded && !(force && age >= FORCE_MIN_MS) &&
        age < (int64_t)c->bc->catalog_refresh_s * 1000)
        return CS_ERR_OK;
    return load(c, history, errstr, errstr_size);
}

static bool same_id(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a >= 'A' && *a <= 'F' ? (char)(*a - 'A' + 'a') : *a;
        if (x != *b)
            return false;
    }
    return *a == *b;
}

static const struct entry *find(const struct entry *v, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (same_id(id, v[i].id))
            return &v[i];
    return NULL;
}

static bool tenant_ok(const struct bounce_catalog *c, const struct entry *e,
                      const char *tenant)
{
    return !c->bc->consent_tenant_field[0] ||
           (e->tenant && strcmp(e->tenant, tenant) == 0);
}

bool bounce_catalog_has(const struct bounce_catalog *c, bool history,
                        const char *tenant, const char *consent,
                        const char *topic)
{
    const struct table *t = history ? &c->hist : &c->cij;
    const struct entry *e = find(t->v, t->n, consent);

    if (!e)
        return false;
    if (history)
        return tenant_ok(c, e, tenant) && !topic;
    return !topic || find(t->topics, t->ntopics, topic);
}

size_t bounce_catalog_channel(const struct bounce_catalog *c, bool history,
                              const char *tenant,
                              const struct bounce_tenant *tn, const char **out,
                              size_t max)
{
    const struct table *t = history ? &c->hist : &c->cij;
    size_t k = 0;

    if (tn->channel_consents[0]) {
        /* configured: the catalog's copies of the listed ids */
        for (size_t i = 0; i < t->n; i++)
            if (bounce_list_has(tn->channel_consents, t->v[i].id)) {
                if (k < max)
                    out[k] = t->v[i].id;
                k++;
            }
        return k;
    }
    for (size_t i = 0; i < t->n; i++) {
        if (!t->v[i].commercial || (history && !tenant_ok(c, &t->v[i], tenant)))
            continue;
        if (k < max)
            out[k] = t->v[i].id;
        k++;
    }
    return k;
}
