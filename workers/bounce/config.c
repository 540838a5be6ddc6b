/*
 * config - the bounce worker's settings tables and per-tenant lookup.
 *
 * Two sections: per-tenant settings (consent model, thresholds, ...; each
 * row CONFIG_PER_TENANT, so `tenants.<name>.<setting>` overrides it) and
 * settings of the whole worker (CRM column names, Redis retention).
 * Defaults of the CRM names match the crmsync solution's tables described
 * in docs/bounce.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/bounce/bounce.h"

#define TN_OFF(f) offsetof(struct bounce_tenant, f)
#define BC_OFF(f) offsetof(struct bounce_config, f)
#define PT        CONFIG_PER_TENANT

const struct config_field bounce_tenant_fields[] = {
    {"consent.model", "CRMSYNC_CONSENT_MODEL", CONFIG_STRING,
     TN_OFF(consent_model), "cij", 0, 0, PT, "cij|history",
     "cij: upsert msdynmkt_contactpointconsent4 rows (Customer Insights - "
     "Journeys); history: create opt-in history entries"},
    {"consent.set_donotbulkemail", NULL, CONFIG_BOOL,
     TN_OFF(set_donotbulkemail), "false", 0, 0, PT, NULL,
     "client-wide opt-outs and spam complaints set donotbulkemail on the "
     "recipient; a resubscribe clears it (classic orgs)"},
    {"consent.channel_consents", NULL, CONFIG_STRING, TN_OFF(channel_consents),
     "", 0, 0, PT, NULL,
     "consent ids a client-wide opt-out or spam complaint opts out of "
     "(comma list); empty: every commercial consent in the catalog"},
    {"bounce.hard_threshold", NULL, CONFIG_INT, TN_OFF(hard_threshold), "3", 1,
     1000, PT, NULL,
     "hard (5.x.x) bounces within the window that make an outbounce"},
    {"bounce.soft_threshold", NULL, CONFIG_INT, TN_OFF(soft_threshold), "5", 1,
     1000, PT, NULL,
     "soft (4.x.x) bounces within the window that make an outbounce"},
    {"bounce.window_days", NULL, CONFIG_INT, TN_OFF(window_days), "30", 1, 3650,
     PT, NULL, "bounce counting window (event time), days"},
    {"recipient.not_found", NULL, CONFIG_STRING, TN_OFF(not_found), "dlq", 0, 0,
     PT, "dlq|create-lead",
     "an address matching no contact, account or lead: dead-letter it "
     "(recipient-not-found) or create a lead for it"},
};
const size_t bounce_tenant_fields_cnt =
    sizeof(bounce_tenant_fields) / sizeof(bounce_tenant_fields[0]);

const struct config_field bounce_config_fields[] = {
    {"consent.tenants", "CRMSYNC_CONSENT_TENANTS", CONFIG_STRING,
     BC_OFF(tenants), "", 0, 0, 0, NULL,
     "tenants whose consent changes this deployment applies (comma list; "
     "empty: all). Address-level bounce changes are applied for every tenant"},
    {"consent.catalog_refresh_s", NULL, CONFIG_INT, BC_OFF(catalog_refresh_s),
     "300", 10, 86400, 0, NULL,
     "re-read the CRM's consents (purposes, topics, advertising consents) "
     "this often; an unknown id also triggers a re-read"},
    {"history.entity_set", NULL, CONFIG_STRING, BC_OFF(history_set),
     "crmsync_optinhistories", 0, 0, 0, NULL,
     "entity set of the opt-in history (consent.model history)"},
    {"history.name_field", NULL, CONFIG_STRING, BC_OFF(history_name),
     "crmsync_name", 0, 0, 0, NULL, "history column: entry name"},
    {"history.optin_field", NULL, CONFIG_STRING, BC_OFF(history_optin),
     "crmsync_optin", 0, 0, 0, NULL,
     "history column (Yes/No): true opt-in, false opt-out"},
    {"history.time_field", NULL, CONFIG_STRING, BC_OFF(history_time),
     "crmsync_occurredon", 0, 0, 0, NULL,
     "history column (date/time): event time; the newest entry decides"},
    {"history.source_field", NULL, CONFIG_STRING, BC_OFF(history_source),
     "crmsync_source", 0, 0, 0, NULL, "history column: where it came from"},
    {"history.reason_field", NULL, CONFIG_STRING, BC_OFF(history_reason),
     "crmsync_reason", 0, 0, 0, NULL, "history column: reason text"},
    {"history.consent_nav", NULL, CONFIG_STRING, BC_OFF(history_consent_nav),
     "crmsync_ConsentId", 0, 0, 0, NULL,
     "history navigation property to the consent"},
    {"history.contact_nav", NULL, CONFIG_STRING, BC_OFF(history_contact_nav),
     "crmsync_ContactId", 0, 0, 0, NULL,
     "history navigation property to a contact"},
    {"history.lead_nav", NULL, CONFIG_STRING, BC_OFF(history_lead_nav),
     "crmsync_LeadId", 0, 0, 0, NULL, "history navigation property to a lead"},
    {"history.account_nav", NULL, CONFIG_STRING, BC_OFF(history_account_nav),
     "crmsync_AccountId", 0, 0, 0, NULL,
     "history navigation property to an account"},
    {"history.consent_set", NULL, CONFIG_STRING, BC_OFF(consent_set),
     "crmsync_advertisingconsents", 0, 0, 0, NULL,
     "entity set of the advertising consents (consent ids of the history "
     "model)"},
    {"history.consent_id_field", NULL, CONFIG_STRING, BC_OFF(consent_id_field),
     "crmsync_advertisingconsentid", 0, 0, 0, NULL,
     "primary key column of history.consent_set"},
    {"history.consent_tenant_field", NULL, CONFIG_STRING,
     BC_OFF(consent_tenant_field), "crmsync_tenant", 0, 0, 0, NULL,
     "column of history.consent_set naming the consent's tenant (empty: "
     "consents are not bound to tenants)"},
    {"bounce.status_field", NULL, CONFIG_STRING, BC_OFF(status_field),
     "crmsync_emailbounced", 0, 0, 0, NULL,
     "Yes/No column holding the address's bounce status (outbounce) on the "
     "records of bounce.entity_sets"},
    {"bounce.time_field", NULL, CONFIG_STRING, BC_OFF(status_time_field),
     "crmsync_emailbouncedon", 0, 0, 0, NULL,
     "date/time column holding the event time of the last bounce status "
     "change (the CRM-side guard against older events)"},
    {"bounce.entity_sets", NULL, CONFIG_STRING, BC_OFF(status_sets),
     "contacts,accounts,leads", 0, 0, 0, NULL,
     "entity sets whose records with the address get the bounce status"},
    {"state.ttl_days", NULL, CONFIG_INT, BC_OFF(state_ttl_days), "400", 1, 3650,
     0, NULL,
     "keep the last applied change per key in Redis this long without "
     "change (older events are then judged by the CRM's stored time)"},
};
const size_t bounce_config_fields_cnt =
    sizeof(bounce_config_fields) / sizeof(bounce_config_fields[0]);

struct tenant_entry {
    char *name;               /* owned */
    struct bounce_tenant set; /* owned strings */
};

struct bounce_tenants {
    const struct config_section *sec; /* borrowed; target = defaults */
    struct tenant_entry *v;           /* owned */
    size_t n;
};

struct bounce_tenants *bounce_tenants_new(const struct config *cfg,
                                          const struct config_section *sec,
                                          char *errstr, size_t errstr_size)
{
    struct bounce_tenants *t = calloc(1, sizeof(*t));
    size_t n = config_tenant_count(cfg);
    char name[256];

    if (!t || (n && !(t->v = calloc(n, sizeof(*t->v))))) {
        snprintf(errstr, errstr_size, "out of memory");
        goto out_free;
    }
    t->sec = sec;
    for (size_t i = 0; i < n; i++) {
        if (!config_tenant_name(cfg, i, name, sizeof(name))) {
            snprintf(errstr, errstr_size, "tenant name too long");
            goto out_free;
        }
        t->v[i].name = strdup(name);
        if (!t->v[i].name)
            goto out_nomem;
        t->n++;
        if (config_tenant_section(cfg, sec, name, &t->v[i].set, errstr,
                                  errstr_size) != CS_ERR_OK)
            goto out_free;
    }
    return t;

out_nomem:
    snprintf(errstr, errstr_size, "out of memory");
out_free:
    bounce_tenants_free(t);
    return NULL;
}

void bounce_tenants_free(struct bounce_tenants *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++) {
        config_section_free(t->sec, &t->v[i].set);
        free(t->v[i].name);
    }
    free(t->v);
    free(t);
}

const struct bounce_tenant *bounce_tenants_get(const struct bounce_tenants *t,
                                               const char *tenant)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i].name, tenant) == 0)
            return &t->v[i].set;
    return t->sec->target;
}

bool bounce_list_has(const char *list, const char *item)
{
    size_t len = strlen(item);

    for (const char *p = list; p && *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *s = p;
        while (n && *s == ' ') {
            s++;
            n--;
        }
        while (n && s[n - 1] == ' ')
            n--;
        if (n == len && strncmp(s, item, len) == 0)
            return true;
        p = end ? end + 1 : NULL;
    }
    return false;
}
