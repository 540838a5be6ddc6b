/*
 * lookup - reading an address's records and CI-J consent rows (crmio.h).
 *
 * Per address, one GET per entity set
 *   <set>?$select=<key>,emailaddress1[,<status>,<time>]
 *        &$filter=emailaddress1 eq '<address>'
 * (Dataverse compares strings case-insensitively) and, for the CI-J model,
 *   msdynmkt_contactpointconsent4s?$select=...&$filter=
 *        msdynmkt_contactpointvalue eq '<address>' and
 *        msdynmkt_contactpointtype eq 534120000
 * The caller sends them all in one $batch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/odata.h"
#include "workers/bounce/crmio.h"

#define PATH_MAX_LEN 2048
#define STAMP        "crmsync:t="

const char *const bounce_sets[BOUNCE_NSETS] = {"contacts", "accounts", "leads"};
const char *const bounce_set_keys[BOUNCE_NSETS] = {"contactid", "accountid",
                                                   "leadid"};
static const char *const set_types[BOUNCE_NSETS] = {"contact", "account",
                                                    "lead"};

int bounce_set_of_type(const char *entity_type)
{
    for (int i = 0; entity_type && i < BOUNCE_NSETS; i++)
        if (strcmp(entity_type, set_types[i]) == 0)
            return i;
    return -1;
}

static bool status_set(const struct bounce_config *bc, int set)
{
    return bounce_list_has(bc->status_sets, bounce_sets[set]);
}

size_t bounce_lookup_ops(const struct bounce_config *bc,
                         const struct bounce_addr *a, struct crm_op *ops)
{
    char *lit = odata_quote_literal(a->email); /* 'a%40b.example' */
    char path[PATH_MAX_LEN];
    size_t k = 0;

    if (!lit)
        return 0;
    for (int s = 0; a->need_lookup && s < BOUNCE_NSETS; s++) {
        bool st = status_set(bc, s);
        snprintf(path, sizeof(path),
                 "%s?$select=%s,emailaddress1%s%s%s%s&$filter=emailaddress1%%20"
                 "eq%%20%s",
                 bounce_sets[s], bounce_set_keys[s], st ? "," : "",
                 st ? bc->status_field : "", st ? "," : "",
                 st ? bc->status_time_field : "", lit);
        memset(&ops[k], 0, sizeof(ops[k]));
        ops[k].method = "GET";
        ops[k].path = strdup(path);
        k++;
    }
    if (a->need_cpc) {
        snprintf(path, sizeof(path),
                 "msdynmkt_contactpointconsent4s?$select="
                 "msdynmkt_contactpointconsent4id,_msdynmkt_purposeid_value,"
                 "_msdynmkt_topicid_value,msdynmkt_value,msdynmkt_reason,"
                 "modifiedon&$filter=msdynmkt_contactpointvalue%%20eq%%20%s"
                 "%%20and%%20msdynmkt_contactpointtype%%20eq%%20%d",
                 lit, BOUNCE_CHANNEL_EMAIL);
        memset(&ops[k], 0, sizeof(ops[k]));
        ops[k].method = "GET";
        ops[k].path = strdup(path);
        k++;
    }
    free(lit);
    return k;
}

static void copy_str(char *dst, size_t size, json_t *v)
{
    const char *s = json_string_value(v);
    snprintf(dst, size, "%s", s ? s : "");
}

static json_t *rows_of(struct crm_op *op, char *errstr, size_t errstr_size)
{
    json_t *rows;

    if (op->result != CRM_OP_OK || !op->response) {
        snprintf(errstr, errstr_size, "lookup %s: %d %s", op->path, op->status,
                 op->error);
        return NULL;
    }
    rows = json_object_get(op->response, "value");
    if (!json_is_array(rows)) {
        snprintf(errstr, errstr_size, "lookup %s: no value array", op->path);
        return NULL;
    }
    return rows;
}

/* The crmsync stamp of a consent row's reason, else its modifiedon. */
static int64_t cpc_time(json_t *row)
{
    const char *reason =
        json_string_value(json_object_get(row, "msdynmkt_reason"));
    if (reason && strncmp(reason, STAMP, strlen(STAMP)) == 0) {
        char iso[40];
        size_t n = strcspn(reason + strlen(STAMP), ";");
        if (n < sizeof(iso)) {
            memcpy(iso, reason + strlen(STAMP), n);
            iso[n] = '\0';
            if (isotime_parse(iso) > 0)
                return isotime_parse(iso);
        }
    }
    return isotime_parse(json_string_value(json_object_get(row, "modifiedon")));
}

bool bounce_lookup_parse(const struct bounce_config *bc, struct bounce_addr *a,
                         struct crm_op *ops, size_t n, char *errstr,
                         size_t errstr_size)
{
    size_t k = 0;

    bounce_addr_clear(a);
    for (int s = 0; a->need_lookup && s < BOUNCE_NSETS; s++, k++) {
        json_t *rows = k < n ? rows_of(&ops[k], errstr, errstr_size) : NULL;
        struct bounce_rec *grown;
        if (!rows)
            return false;
        grown = realloc(a->recs, (a->nrecs + json_array_size(rows) + 1) *
                                     sizeof(*grown));
        if (!grown)
            return false;
        a->recs = grown;
        for (size_t i = 0; i < json_array_size(rows); i++) {
            json_t *row = json_array_get(rows, i);
            struct bounce_rec *r = &a->recs[a->nrecs];
            memset(r, 0, sizeof(*r));
            r->set = s;
            copy_str(r->id, sizeof(r->id),
                     json_object_get(row, bounce_set_keys[s]));
            copy_str(r->etag, sizeof(r->etag),
                     json_object_get(row, "@odata.etag"));
            r->status_t = status_set(bc, s)
                              ? isotime_parse(json_string_value(json_object_get(
                                    row, bc->status_time_field)))
                              : -1;
            if (odata_is_guid(r->id))
                a->nrecs++;
        }
    }
    if (a->need_cpc) {
        json_t *rows = k < n ? rows_of(&ops[k], errstr, errstr_size) : NULL;
        if (!rows)
            return false;
        a->cpcs = calloc(json_array_size(rows) + 1, sizeof(*a->cpcs));
        if (!a->cpcs)
            return false;
        for (size_t i = 0; i < json_array_size(rows); i++) {
            json_t *row = json_array_get(rows, i);
            struct bounce_cpc *c = &a->cpcs[a->ncpcs];
            copy_str(c->id, sizeof(c->id),
                     json_object_get(row, "msdynmkt_contactpointconsent4id"));
            copy_str(c->purpose, sizeof(c->purpose),
                     json_object_get(row, "_msdynmkt_purposeid_value"));
            copy_str(c->topic, sizeof(c->topic),
                     json_object_get(row, "_msdynmkt_topicid_value"));
            copy_str(c->etag, sizeof(c->etag),
                     json_object_get(row, "@odata.etag"));
            c->value =
                (int)json_integer_value(json_object_get(row, "msdynmkt_value"));
            c->t = cpc_time(row);
            if (odata_is_guid(c->id))
                a->ncpcs++;
        }
    }
    return true;
}

void bounce_addr_clear(struct bounce_addr *a)
{
    free(a->recs);
    free(a->cpcs);
    a->recs = NULL;
    a->cpcs = NULL;
    a->nrecs = a->ncpcs = 0;
}

void bounce_entity_op(struct crm_op *op, int set, const char *id)
{
    char path[256];

    snprintf(path, sizeof(path), "%s(%s)?$select=emailaddress1",
             bounce_sets[set], id);
    memset(op, 0, sizeof(*op));
    op->method = "GET";
    op->path = strdup(path);
}

const char *bounce_entity_email(const struct crm_op *op)
{
    return op->response ? json_string_value(
                              json_object_get(op->response, "emailaddress1"))
                        : NULL;
}
