/*
 * write - the bounce worker's CRM write operations (crmio.h, docs/bounce.md).
 *
 * Bodies are built with jansson (every value escaped); ids in paths are
 * GUIDs checked earlier or UUIDv5 derived here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/odata.h"
#include "workers/bounce/crmio.h"

#define VALUE_IN       534120001
#define VALUE_OUT      534120002
#define TYPE_PURPOSE   534120000
#define TYPE_TOPIC     534120001
#define SRC_INTERNAL   534120000
#define SRC_PREF_PAGE  534120001
#define SRC_LIST_UNSUB 534120007
#define LR_NONE        534119999
#define LR_ONE_CLICK   534120007

static bool finish(struct crm_op *op, const char *method, const char *path,
                   json_t *body, unsigned flags, const char *if_match)
{
    memset(op, 0, sizeof(*op));
    op->method = method;
    op->path = strdup(path);
    op->body = body ? json_dumps(body, JSON_COMPACT) : NULL;
    op->flags = flags;
    op->if_match = if_match && if_match[0] ? if_match : NULL;
    json_decref(body);
    if (!op->path || (body && !op->body)) {
        free(op->path);
        free(op->body);
        op->path = op->body = NULL;
        return false;
    }
    return true;
}

static int cpc_source(const char *source)
{
    if (!source)
        return SRC_INTERNAL;
    if (strcmp(source, "LIST_UNSUBSCRIBE_HEADER") == 0)
        return SRC_LIST_UNSUB;
    if (strcmp(source, "PREFERENCE_PAGE") == 0 || strcmp(source, "LINK") == 0)
        return SRC_PREF_PAGE;
    return SRC_INTERNAL;
}

/* "crmsync:t=<iso>;k=<kind>;s=<source>; <reason>" cut to 500 chars. */
static void stamp(char *buf, size_t size, const struct bounce_change *c)
{
    char iso[40];
    isotime_format(c->t, iso, sizeof(iso));
    snprintf(buf, size, "crmsync:t=%s;k=%s;s=%s;%s%.400s", iso,
             c->ev->kind_name, c->ev->source ? c->ev->source : "-",
             c->ev->reason ? " " : "", c->ev->reason ? c->ev->reason : "");
}

bool bounce_op_cpc(struct crm_op *op, const struct bounce_change *c,
                   const char *email, const struct bounce_cpc *row)
{
    json_t *b = json_object();
    char reason[501];
    char path[128];
    char bind[96];
    bool unsub_header =
        c->ev->source && strcmp(c->ev->source, "LIST_UNSUBSCRIBE_HEADER") == 0;

    stamp(reason, sizeof(reason), c);
    json_object_set_new(b, "msdynmkt_value",
                        json_integer(c->value ? VALUE_OUT : VALUE_IN));
    json_object_set_new(b, "msdynmkt_source",
                        json_integer(cpc_source(c->ev->source)));
    json_object_set_new(
        b, "msdynmkt_logicalreason",
        json_integer(c->value && unsub_header ? LR_ONE_CLICK : LR_NONE));
    json_object_set_new(b, "msdynmkt_reason", json_string(reason));
    if (row) {
        snprintf(path, sizeof(path), "msdynmkt_contactpointconsent4s(%s)",
                 row->id);
        return finish(op, "PATCH", path, b, CRM_OP_UPDATE_ONLY, row->etag);
    }
    {
        char name[512];
        char id[37];
        snprintf(name, sizeof(name), "cpc|%s|%s|%s", email, c->consent,
                 c->topic ? c->topic : "");
        odata_uuid5(CRMSYNC_UUID_NAMESPACE, name, id);
        snprintf(path, sizeof(path), "msdynmkt_contactpointconsent4s(%s)", id);
    }
    json_object_set_new(b, "msdynmkt_contactpointvalue", json_string(email));
    json_object_set_new(b, "msdynmkt_contactpointtype",
                        json_integer(BOUNCE_CHANNEL_EMAIL));
    json_object_set_new(b, "msdynmkt_contactpointconsenttype",
                        json_integer(c->topic ? TYPE_TOPIC : TYPE_PURPOSE));
    snprintf(bind, sizeof(bind), "/msdynmkt_purposes(%s)", c->consent);
    json_object_set_new(b, "msdynmkt_purposeId@odata.bind", json_string(bind));
    if (c->topic) {
        snprintf(bind, sizeof(bind), "/msdynmkt_topics(%s)", c->topic);
        json_object_set_new(b, "msdynmkt_topicId@odata.bind",
                            json_string(bind));
    }
    return finish(op, "PATCH", path, b, CRM_OP_CREATE_ONLY, NULL);
}

bool bounce_op_history(struct crm_op *op, const struct bounce_config *bc,
                       const struct bounce_change *c, int set, const char *id)
{
    const char *navs[BOUNCE_NSETS] = {
        bc->history_contact_nav, bc->history_account_nav, bc->history_lead_nav};
    json_t *b = json_object();
    char iso[40];
    char name[700];
    char key[37];
    char path[256];
    char bind[300];
    char nav[300];

    isotime_format(c->t, iso, sizeof(iso));
    /* One entry per change, whatever event id reported it. */
    snprintf(name, sizeof(name), "h|%s|%s|%s|%s|%s|%d|%lld", c->ev->tenant,
             bounce_sets[set], id, c->consent, c->topic ? c->topic : "",
             c->value, (long long)c->t);
    odata_uuid5(CRMSYNC_UUID_NAMESPACE, name, key);
    snprintf(path, sizeof(path), "%s(%s)", bc->history_set, key);
    snprintf(name, sizeof(name), "%s %s %s", c->value ? "opt-out" : "opt-in",
             c->consent, iso);
    json_object_set_new(b, bc->history_name, json_string(name));
    json_object_set_new(b, bc->history_optin, json_boolean(!c->value));
    json_object_set_new(b, bc->history_time, json_string(iso));
    json_object_set_new(b, bc->history_source,
                        json_string(c->ev->source ? c->ev->source : "ESP"));
    if (c->ev->reason)
        json_object_set_new(
            b, bc->history_reason,
            json_stringn(c->ev->reason, strnlen(c->ev->reason, 500)));
    snprintf(nav, sizeof(nav), "%s@odata.bind", bc->history_consent_nav);
    snprintf(bind, sizeof(bind), "/%s(%s)", bc->consent_set, c->consent);
    json_object_set_new(b, nav, json_string(bind));
    snprintf(nav, sizeof(nav), "%s@odata.bind", navs[set]);
    snprintf(bind, sizeof(bind), "/%s(%s)", bounce_sets[set], id);
    json_object_set_new(b, nav, json_string(bind));
    return finish(op, "PATCH", path, b, CRM_OP_CREATE_ONLY, NULL);
}

bool bounce_op_status(struct crm_op *op, const struct bounce_config *bc,
                      const struct bounce_change *c, const struct bounce_rec *r)
{
    json_t *b = json_object();
    char iso[40];
    char path[128];

    isotime_format(c->t, iso, sizeof(iso));
    json_object_set_new(b, bc->status_field, json_boolean(c->value));
    json_object_set_new(b, bc->status_time_field, json_string(iso));
    snprintf(path, sizeof(path), "%s(%s)", bounce_sets[r->set], r->id);
    return finish(op, "PATCH", path, b, CRM_OP_UPDATE_ONLY, r->etag);
}

bool bounce_op_dnb(struct crm_op *op, int set, const char *id, bool value)
{
    json_t *b = json_object();
    char path[128];

    json_object_set_new(b, "donotbulkemail", json_boolean(value));
    snprintf(path, sizeof(path), "%s(%s)", bounce_sets[set], id);
    return finish(op, "PATCH", path, b, CRM_OP_UPDATE_ONLY, NULL);
}

void bounce_lead_id(const char *tenant, const char *email, char out[37])
{
    char name[512];
    snprintf(name, sizeof(name), "lead|%s|%s", tenant, email);
    odata_uuid5(CRMSYNC_UUID_NAMESPACE, name, out);
}

bool bounce_op_lead(struct crm_op *op, const struct bounce_event *ev,
                    const char *email, const char *lead_id)
{
    json_t *b = json_object();
    char path[64];
    char text[600];
    size_t local = strcspn(email, "@");

    json_object_set_new(b, "emailaddress1", json_string(email));
    json_object_set_new(b, "lastname",
                        json_stringn(email, local > 50 ? 50 : local));
    snprintf(text, sizeof(text), "crmsync: unknown recipient (%s from %.64s)",
             ev->kind_name, ev->source_system ? ev->source_system : "ESP");
    json_object_set_new(b, "subject", json_string(text));
    snprintf(text, sizeof(text),
             "Created by crmsync for an ESP %s event of tenant %.64s for an "
             "address that matched no contact, account or lead.",
             ev->kind_name, ev->tenant);
    json_object_set_new(b, "description", json_string(text));
    snprintf(path, sizeof(path), "leads(%s)", lead_id);
    return finish(op, "PATCH", path, b, CRM_OP_CREATE_ONLY, NULL);
}

void bounce_ops_free(struct crm_op *ops, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(ops[i].path);
        free(ops[i].body);
        json_decref(ops[i].response);
        ops[i].path = ops[i].body = NULL;
        ops[i].response = NULL;
    }
}
