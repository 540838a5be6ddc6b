/*
 * filter - consent of a page of members (see filter.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/odata.h"
#include "workers/listsync/filter.h"

#define CHUNK      100
#define OPTED_IN   534120001
#define OPTED_OUT  534120002
#define EMAIL_TYPE 534120000

enum cs_err filter_purpose_model(struct crm *crm, const char *purpose,
                                 int *model, char *errstr, size_t errstr_size)
{
    char path[160];
    json_t *doc = NULL;
    json_t *v;
    enum cs_err err;

    snprintf(path, sizeof(path),
             "msdynmkt_purposes(%s)?$select=msdynmkt_enforcementmodel",
             purpose);
    err = crm->ops->get_json(crm->self, path, false, &doc, errstr, errstr_size);
    if (err)
        return err;
    v = json_object_get(doc, "msdynmkt_enforcementmodel");
    /* Unset: Dataverse's default for email purposes is restrictive. */
    *model =
        json_is_integer(v) ? (int)json_integer_value(v) : ENFORCE_RESTRICTIVE;
    json_decref(doc);
    return CS_ERR_OK;
}

/* One In(...) query over values[from..to). */
static char *chunk_path(const struct listsync_config *lc, bool history,
                        const char *consent, int set, const char *const *vals,
                        size_t from, size_t to)
{
    const char *const lookups[3] = {lc->history_contact, lc->history_account,
                                    lc->history_lead};
    struct buf list = {0};
    struct buf b = {0};
    char *enc;

    buf_appends(&list, "[");
    for (size_t i = from; i < to; i++) {
        char *q = odata_quote_literal(vals[i]);
        buf_appendf(&list, "%s%s", i > from ? "," : "", q ? q : "''");
        free(q);
    }
    buf_appends(&list, "]");
    enc = list.data;
    if (history)
        buf_appendf(&b,
                    "%s?$select=%s,%s,%s&$filter=%s%%20eq%%20%s%%20and%%20"
                    "Microsoft.Dynamics.CRM.In(PropertyName='%s',"
                    "PropertyValues=%s)",
                    lc->history_set, lookups[set], lc->history_optin,
                    lc->history_time, lc->history_consent, consent,
                    lookups[set], enc);
    else
        buf_appendf(&b,
                    "msdynmkt_contactpointconsent4s?$select="
                    "msdynmkt_contactpointvalue,msdynmkt_value,"
                    "_msdynmkt_topicid_value&$filter=_msdynmkt_purposeid_value"
                    "%%20eq%%20%s%%20and%%20msdynmkt_contactpointtype%%20eq"
                    "%%20%d%%20and%%20Microsoft.Dynamics.CRM.In(PropertyName="
                    "'msdynmkt_contactpointvalue',PropertyValues=%s)",
                    consent, EMAIL_TYPE, enc);
    buf_free(&list);
    return buf_detach(&b);
}

/* Index of @p key in vals[0..n) (case-insensitive), or -1. */
static long find(const char *const *vals, size_t n, const char *key)
{
    for (size_t i = 0; key && i < n; i++)
        if (strcasecmp(vals[i], key) == 0)
            return (long)i;
    return -1;
}

enum cs_err filter_consent(struct crm *crm, const struct listsync_config *lc,
                           bool history, int model, const char *consent,
                           int set, const char *const *ids,
                           const char *const *emails, size_t n, bool *ok,
                           char *errstr, size_t errstr_size)
{
    const char *const lookups[3] = {lc->history_contact, lc->history_account,
                                    lc->history_lead};
    const char *const *keys = history ? ids : emails;
    size_t nops = (n + CHUNK - 1) / CHUNK;
    struct crm_op *ops;
    int *state; /* CI-J: value; history: 1 in / 0 out / -1 none */
    char **when;
    enum cs_err err = CS_ERR_OK;

    if (!history && model == ENFORCE_DISABLED) {
        for (size_t i = 0; i < n; i++)
            ok[i] = true;
        return CS_ERR_OK;
    }
    if (n == 0)
        return CS_ERR_OK;
    ops = calloc(nops, sizeof(*ops));
    state = calloc(n, sizeof(*state));
    when = calloc(n, sizeof(*when));
    if (!ops || !state || !when) {
        err = CS_ERR_NOMEM;
        goto out_free;
    }
    for (size_t i = 0; i < n; i++)
        state[i] = -1;
    for (size_t k = 0; k < nops; k++) {
        size_t to = (k + 1) * CHUNK < n ? (k + 1) * CHUNK : n;
        ops[k].method = "GET";
        ops[k].path =
            chunk_path(lc, history, consent, set, keys, k * CHUNK, to);
        if (!ops[k].path) {
            err = CS_ERR_NOMEM;
            goto out_free;
        }
    }
    err = crm->ops->execute(crm->self, ops, nops, errstr, errstr_size);
    for (size_t k = 0; !err && k < nops; k++) {
        json_t *rows = json_object_get(ops[k].response, "value");
        size_t from = k * CHUNK;
        size_t cnt = ((k + 1) * CHUNK < n ? (k + 1) * CHUNK : n) - from;
        if (ops[k].result != CRM_OP_OK || !json_is_array(rows)) {
            snprintf(errstr, errstr_size, "consent query: %d %s", ops[k].status,
                     ops[k].error);
            err = ops[k].result == CRM_OP_FAILED ? CS_ERR_CRM_REJECTED
                                                 : CS_ERR_HTTP_SERVER;
            break;
        }
        for (size_t r = 0; r < json_array_size(rows); r++) {
            json_t *row = json_array_get(rows, r);
            long i;
            if (history) {
                const char *t =
                    json_string_value(json_object_get(row, lc->history_time));
                i = find(keys + from, cnt,
                         json_string_value(json_object_get(row, lookups[set])));
                i = i < 0 ? -1 : i + (long)from;
                /* the newest entry by its time decides */
                if (i < 0 || !t || (when[i] && strcmp(t, when[i]) <= 0))
                    continue;
                free(when[i]);
                when[i] = strdup(t);
                state[i] =
                    json_is_true(json_object_get(row, lc->history_optin));
            } else {
                if (!json_is_null(
                        json_object_get(row, "_msdynmkt_topicid_value")) &&
                    json_object_get(row, "_msdynmkt_topicid_value"))
                    continue; /* a topic's row, not the purpose's */
                i = find(keys + from, cnt,
                         json_string_value(json_object_get(
                             row, "msdynmkt_contactpointvalue")));
                i = i < 0 ? -1 : i + (long)from;
                if (i >= 0)
                    state[i] = (int)json_integer_value(
                        json_object_get(row, "msdynmkt_value"));
            }
        }
    }
    for (size_t i = 0; !err && i < n; i++) {
        if (history)
            ok[i] = state[i] == 1;
        else if (model == ENFORCE_RESTRICTIVE)
            ok[i] = state[i] == OPTED_IN;
        else
            ok[i] = state[i] != OPTED_OUT;
    }
out_free:
    for (size_t k = 0; ops && k < nops; k++) {
        free(ops[k].path);
        json_decref(ops[k].response);
    }
    for (size_t i = 0; when && i < n; i++)
        free(when[i]);
    free(when);
    free(state);
    free(ops);
    return err;
}
