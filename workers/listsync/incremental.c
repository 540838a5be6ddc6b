/*
 * incremental - membership change events (see incremental.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/avro_codec.h"
#include "common/crm.h"
#include "common/email.h"
#include "common/esp.h"
#include "common/kafka_loop.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/odata.h"
#include "common/producer.h"
#include "common/runtime.h"
#include "workers/listsync/filter.h"
#include "workers/listsync/incremental.h"
#include "workers/listsync/members.h"
#include "workers/listsync/store.h"

#define FORMATTED_PREFER                                                       \
    "odata.include-annotations=\"OData.Community.Display.V1.FormattedValue\""

struct incremental {
    struct job_env env;        /* borrowed pointers */
    struct runtime *rt;        /* borrowed */
    struct esp *esp;           /* owned */
    struct producer *producer; /* owned */
};

struct incremental *incremental_new(const struct job_env *env,
                                    struct runtime *rt, char *errstr,
                                    size_t errstr_size)
{
    const struct listsync_config *lc = env->lc;
    struct incremental *in = calloc(1, sizeof(*in));
    struct esp_options eo = {
        .kind = lc->esp_kind,
        .base_url = lc->esp_base_url,
        .mandator_id = lc->esp_mandator,
        .user = lc->esp_user,
        .password = lc->esp_password,
        .http = {.connect_timeout_ms = 5000,
                 .timeout_ms = lc->esp_timeout_ms,
                 .max_retries = 2,
                 .backoff_base_ms = 200,
                 .backoff_max_ms = 2000,
                 .max_inline_wait_ms = 2000,
                 .tls_verify = true,
                 .user_agent = "crmsync/0.1"},
    };

    if (!in) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    in->env = *env;
    in->rt = rt;
    in->esp = esp_new(&eo, env->metrics, errstr, errstr_size);
    if (in->esp)
        in->producer = producer_new(env->cfg, errstr, errstr_size);
    if (!in->producer) {
        incremental_free(in);
        return NULL;
    }
    return in;
}

void incremental_free(struct incremental *in)
{
    if (!in)
        return;
    if (in->esp)
        in->esp->ops->logout(in->esp->self);
    esp_free(in->esp);
    producer_free(in->producer);
    free(in);
}

static void count(struct incremental *in, const char *change,
                  const char *outcome)
{
    char labels[96];
    snprintf(labels, sizeof(labels), "change=\"%s\",outcome=\"%s\"", change,
             outcome);
    metrics_counter_add(in->env.metrics, "crmsync_listsync_membership_total",
                        labels, 1);
}

/* Maps a failed step onto the item: retryable -> retry, else dead. */
static void failed(struct kl_item *it, enum cs_err err, const char *what,
                   const char *errstr)
{
    kl_item_fail(it, cs_err_retryable(err) ? KL_RETRY : KL_DEAD, err, "%s: %s",
                 what, errstr);
}

/* Removes @p email from the list (absent is fine). */
static bool remove_member(struct incremental *in, struct kl_item *it,
                          const char *esp_list, const char *email)
{
    char errstr[256];
    bool existed = false;
    enum cs_err err = in->esp->ops->remove(in->esp->self, esp_list, email,
                                           &existed, errstr, sizeof(errstr));
    if (err) {
        failed(it, err, "esp: remove", errstr);
        return false;
    }
    return true;
}

/* Why @p row must not be on the list, or NULL. */
static const char *filter_row(struct incremental *in,
                              const struct store_registration *reg,
                              const char *tenant, json_t *row, char *email,
                              enum cs_err *err, char *errstr,
                              size_t errstr_size)
{
    const char *id =
        json_string_value(json_object_get(row, members_keys[reg->set]));
    const char *raw = json_string_value(json_object_get(row, "emailaddress1"));
    json_int_t st = json_integer_value(json_object_get(row, "statecode"));
    struct listsync_tenant tn = {0};
    struct store store;
    enum page_code pc = PAGE_OK;
    const char *const ids[1] = {id};
    const char *const emails[1] = {email};
    bool ok = false;
    int model = 0;
    bool history;

    *err = CS_ERR_OK;
    if (!id || !raw || !email_normalize(raw, email, 255)) {
        email[0] = '\0';
        return "invalid_email";
    }
    if (reg->set == 2 && st == 1)
        return "qualified_lead";
    if (st != 0)
        return "inactive";
    if (config_tenant_section(in->env.cfg, in->env.tenant_sec, tenant, &tn,
                              errstr, errstr_size) != CS_ERR_OK) {
        *err = CS_ERR_NOMEM;
        return NULL;
    }
    history = strcmp(tn.consent_model, "history") == 0;
    config_section_free(in->env.tenant_sec, &tn);
    if (!history)
        *err = filter_purpose_model(in->rt->crm, reg->consent, &model, errstr,
                                    errstr_size);
    if (!*err)
        *err = filter_consent(in->rt->crm, in->env.lc, history, model,
                              reg->consent, reg->set, ids, emails, 1, &ok,
                              errstr, errstr_size);
    if (*err)
        return NULL;
    if (!ok)
        return "no_consent";
    store_init(&store, in->rt->redis, tenant, "incremental", reg->esp_list);
    *err = store_page(&store, tenant, reg->consent, emails, 1, false, &pc,
                      errstr, errstr_size);
    if (*err)
        return NULL;
    return pc == PAGE_OUTBOUNCED   ? "outbounced"
           : pc == PAGE_SUPPRESSED ? "suppressed"
                                   : NULL;
}

/* Maps and adds one member; feeds refusals back. */
static void add_member(struct incremental *in, struct kl_item *it,
                       const struct store_registration *reg, const char *tenant,
                       json_t *row, const char *email, const char *change)
{
    const struct listsync_mapping *m = in->env.map;
    const struct listsync_config *lc = in->env.lc;
    const char *id =
        json_string_value(json_object_get(row, members_keys[reg->set]));
    const char *lang =
        lc->language_field[0]
            ? json_string_value(json_object_get(row, lc->language_field))
            : NULL;
    struct listsync_tenant tn = {0};
    char **vals = calloc(m->nnames, sizeof(*vals));
    struct esp_recipient r = {email, email, NULL};
    int code = 0;
    char errstr[256];
    enum cs_err err = CS_ERR_NOMEM;

    if (!vals || config_tenant_section(in->env.cfg, in->env.tenant_sec, tenant,
                                       &tn, errstr, sizeof(errstr))) {
        kl_item_fail(it, KL_RETRY, CS_ERR_NOMEM, "out of memory");
        free(vals);
        return;
    }
    struct map_ctx ctx = {lc,
                          lang && *lang ? lang : tn.default_language,
                          reg->consent,
                          reg->name,
                          members_entities[reg->set],
                          id};
    if (listsync_map_member(m, &ctx, row, vals)) {
        r.values = (const char *const *)vals;
        err = in->esp->ops->add_all(in->esp->self, reg->esp_list, lc->esp_optin,
                                    (const char *const *)m->names, m->nnames,
                                    &r, 1, &code, errstr, sizeof(errstr));
    }
    listsync_values_free(vals, m->nnames);
    free(vals);
    config_section_free(in->env.tenant_sec, &tn);
    if (err) {
        failed(it, err, "esp: addAll3", errstr);
        return;
    }
    if (code == ESP_ADD_UNSUBSCRIBED || code == ESP_ADD_BLACKLISTED ||
        code == ESP_ADD_BOUNCE_OVERFLOWED) {
        if (!listsync_feedback(in->rt->codec, in->producer, lc->feedback_topic,
                               tenant, reg->consent, "incremental",
                               reg->esp_list, email, members_entities[reg->set],
                               id, code, errstr, sizeof(errstr)) ||
            producer_flush(in->producer, 10000, errstr, sizeof(errstr))) {
            kl_item_fail(it, KL_RETRY, CS_ERR_KAFKA, "feedback: %s", errstr);
            return;
        }
    }
    count(in, change, code == ESP_ADD_INSERTED ? "added" : "refused");
    it->state = KL_DONE;
}

void incremental_process(struct incremental *in, struct kl_item *it)
{
    const char *tenant = avro_field_str(&it->value, "tenant");
    const char *list = avro_field_str(&it->value, "crm_list_id");
    const char *change = avro_field_str(&it->value, "change");
    avro_value_t rec;
    const char *etype = NULL, *eid = NULL, *raw_email = NULL;
    struct store_registration reg;
    bool found = false;
    char email[256] = "";
    char errstr[512];
    char path[2048];
    json_t *row = NULL;
    enum cs_err err;
    const char *why;
    char *select;

    if (avro_field_record(&it->value, "recipient", &rec)) {
        etype = avro_field_str(&rec, "entity_type");
        eid = avro_field_str(&rec, "entity_id");
        raw_email = avro_field_str(&rec, "email");
    }
    if (!tenant || !list || !change || !odata_is_guid(list)) {
        kl_item_fail(it, KL_DEAD, CS_ERR_INVALID_EVENT,
                     "invalid-event: tenant, crm_list_id (GUID) and change "
                     "are required");
        return;
    }
    err = store_lookup(in->rt->redis, tenant, list, &reg, &found, errstr,
                       sizeof(errstr));
    if (err) {
        failed(it, err, "redis", errstr);
        return;
    }
    if (!found) {
        it->state = KL_SKIPPED;
        it->skip_reason = "not_incremental";
        return;
    }
    if (strcmp(change, "REMOVED") == 0) {
        if (!raw_email || !email_normalize(raw_email, email, sizeof(email))) {
            kl_item_fail(it, KL_DEAD, CS_ERR_INVALID_EVENT,
                         "invalid-email: a REMOVED event needs the address");
            return;
        }
        if (remove_member(in, it, reg.esp_list, email)) {
            count(in, change, "removed");
            it->state = KL_DONE;
        }
        return;
    }
    if (!eid || !odata_is_guid(eid) || !etype ||
        strcmp(etype, members_entities[reg.set]) != 0) {
        kl_item_fail(it, KL_DEAD, CS_ERR_INVALID_EVENT,
                     "missing-recipient: %s needs the member's %s id", change,
                     members_entities[reg.set]);
        return;
    }
    select = listsync_mapping_select(in->env.map);
    snprintf(
        path, sizeof(path), "%s(%s)?$select=%s,emailaddress1,statecode%s%s%s%s",
        members_sets[reg.set], eid, members_keys[reg.set],
        select && *select ? "," : "", select ? select : "",
        in->env.lc->language_field[0] ? "," : "", in->env.lc->language_field);
    free(select);
    err = in->rt->crm->ops->get_page(in->rt->crm->self, path, FORMATTED_PREFER,
                                     &row, errstr, sizeof(errstr));
    if (err == CS_ERR_HTTP_CLIENT && raw_email &&
        email_normalize(raw_email, email, sizeof(email))) {
        /* the record is gone: it cannot stay on the list */
        if (remove_member(in, it, reg.esp_list, email)) {
            count(in, change, "removed");
            it->state = KL_DONE;
        }
        return;
    }
    if (err) {
        failed(it, err, "crm: member", errstr);
        return;
    }
    why =
        filter_row(in, &reg, tenant, row, email, &err, errstr, sizeof(errstr));
    if (err) {
        failed(it, err, "filter", errstr);
    } else if (why) {
        /* no longer eligible: make sure it is not on the list */
        if (!email[0] || remove_member(in, it, reg.esp_list, email)) {
            count(in, change, why);
            it->state = KL_DONE;
        }
    } else if (strcmp(change, "DATA_CHANGED") != 0 ||
               remove_member(in, it, reg.esp_list, email)) {
        add_member(in, it, &reg, tenant, row, email, change);
    }
    json_decref(row);
}
