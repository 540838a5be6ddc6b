/*
 * config - the list-sync worker's settings tables.
 */
#include <stddef.h>

#include "workers/listsync/listsync.h"

#define TN(f) offsetof(struct listsync_tenant, f)
#define LC(f) offsetof(struct listsync_config, f)

const struct config_field listsync_tenant_fields[] = {
    {"consent.model", "CRMSYNC_CONSENT_MODEL", CONFIG_STRING, TN(consent_model),
     "cij", 0, 0, CONFIG_PER_TENANT, "cij|history",
     "where the consent of a member is read: cij (msdynmkt_contactpoint"
     "consent4 rows and the purpose's enforcement model) or history (the "
     "newest opt-in history entry)"},
    {"listsync.default_language", NULL, CONFIG_STRING, TN(default_language),
     "en", 0, 0, CONFIG_PER_TENANT, NULL,
     "language of members whose language column is empty"},
};
const size_t listsync_tenant_fields_cnt =
    sizeof(listsync_tenant_fields) / sizeof(listsync_tenant_fields[0]);

const struct config_field listsync_config_fields[] = {
    {"listsync.barrier_group", NULL, CONFIG_STRING, LC(barrier_group),
     "crmsync-bounce", 0, 0, 0, NULL,
     "consumer group that must have caught up before a list is read (the "
     "bounce/opt-out worker's)"},
    {"listsync.barrier_topics", NULL, CONFIG_STRING, LC(barrier_topics),
     "crmsync.bounce.events", 0, 0, 0, NULL,
     "topics of the barrier group (comma list); empty: no barrier"},
    {"listsync.barrier_timeout_s", NULL, CONFIG_INT, LC(barrier_timeout_s),
     "300", 1, 86400, 0, NULL,
     "give up (job failed: barrier-timeout) when the barrier is not reached "
     "within this time"},
    {"listsync.page_size", NULL, CONFIG_INT, LC(page_size), "5000", 10, 5000, 0,
     NULL, "members read per CRM page (odata.maxpagesize)"},
    {"listsync.mapping", NULL, CONFIG_STRING, LC(mapping),
     "firstname=field:firstname,lastname=field:lastname", 0, 0, 0, NULL,
     "ESP attribute <- CRM column: attr=kind:column,... with kind field, "
     "lookup, option, multi or language"},
    {"listsync.labels", NULL, CONFIG_STRING, LC(labels), "", 0, 0, 0, NULL,
     "option labels per language overriding the CRM's: "
     "lang|column|value=label;..."},
    {"listsync.language_field", NULL, CONFIG_STRING, LC(language_field), "", 0,
     0, 0, NULL,
     "CRM column holding a member's language (for labels and the language "
     "attribute); empty: the default language"},
    {"listsync.multi_separator", NULL, CONFIG_STRING, LC(multi_separator), ",",
     0, 0, 0, NULL, "separator of multi-select option labels"},
    {"listsync.status_field", NULL, CONFIG_STRING, LC(status_field),
     "crmsync_syncstatus", 0, 0, 0, NULL,
     "list column receiving the job status (JSON); empty: not written"},
    {"listsync.synced_field", NULL, CONFIG_STRING, LC(synced_field),
     "crmsync_lastsyncon", 0, 0, 0, NULL,
     "list column receiving the finish time; empty: not written"},
    {"listsync.results_topic", NULL, CONFIG_STRING, LC(results_topic),
     "crmsync.listsync.results", 0, 0, 0, NULL,
     "topic receiving each job's status (JSON, key = list id)"},
    {"listsync.feedback_topic", NULL, CONFIG_STRING, LC(feedback_topic),
     "crmsync.bounce.events", 0, 0, 0, NULL,
     "topic receiving opt-outs / outbounces for recipients the ESP refused"},
    {"listsync.membership_topic", NULL, CONFIG_STRING, LC(membership_topic),
     "crmsync.listsync.membership", 0, 0, 0, NULL,
     "topic of list-membership change events (incremental mode; also list "
     "it in consumer.topics)"},
    {"listsync.lease_ms", NULL, CONFIG_INT, LC(lease_ms), "60000", 5000,
     3600000, 0, NULL,
     "lease on an ESP list while a job runs (renewed every page); a job "
     "whose lease lapsed is restarted from the beginning"},
    {"listsync.job_ttl_days", NULL, CONFIG_INT, LC(job_ttl_days), "30", 1, 3650,
     0, NULL, "how long finished jobs are remembered (duplicates)"},
    {"history.entity_set", NULL, CONFIG_STRING, LC(history_set),
     "crmsync_optinhistories", 0, 0, 0, NULL,
     "opt-in history entity set (consent.model history)"},
    {"history.optin_field", NULL, CONFIG_STRING, LC(history_optin),
     "crmsync_optin", 0, 0, 0, NULL, "history: true opt-in, false opt-out"},
    {"history.time_field", NULL, CONFIG_STRING, LC(history_time),
     "crmsync_occurredon", 0, 0, 0, NULL, "history: time of the entry"},
    {"history.consent_field", NULL, CONFIG_STRING, LC(history_consent),
     "_crmsync_consentid_value", 0, 0, 0, NULL,
     "history: lookup value of the consent"},
    {"history.contact_field", NULL, CONFIG_STRING, LC(history_contact),
     "_crmsync_contactid_value", 0, 0, 0, NULL,
     "history: lookup value of the contact"},
    {"history.account_field", NULL, CONFIG_STRING, LC(history_account),
     "_crmsync_accountid_value", 0, 0, 0, NULL,
     "history: lookup value of the account"},
    {"history.lead_field", NULL, CONFIG_STRING, LC(history_lead),
     "_crmsync_leadid_value", 0, 0, 0, NULL,
     "history: lookup value of the lead"},
    {"esp.kind", NULL, CONFIG_STRING, LC(esp_kind), "optimizely", 0, 0, 0,
     "optimizely", "ESP connector"},
    {"esp.base_url", "CRMSYNC_ESP_BASE_URL", CONFIG_STRING, LC(esp_base_url),
     "https://api.campaign.episerver.net/soap11", 0, 0, CONFIG_REQUIRED, NULL,
     "SOAP base URL (…/soap11; RpcSession and RpcRecipient below it)"},
    {"esp.mandator_id", "CRMSYNC_ESP_MANDATOR_ID", CONFIG_STRING,
     LC(esp_mandator), "", 0, 0, CONFIG_REQUIRED, NULL,
     "ESP client (mandator) id"},
    {"esp.user", "CRMSYNC_ESP_USER", CONFIG_STRING, LC(esp_user), "", 0, 0,
     CONFIG_REQUIRED, NULL, "API user (needs INTERFACE_WEBSERVICE)"},
    {"esp.password", "CRMSYNC_ESP_PASSWORD", CONFIG_STRING, LC(esp_password),
     "", 0, 0, CONFIG_REQUIRED | CONFIG_SECRET, NULL, "API user's password"},
    {"esp.optin_process_id", NULL, CONFIG_STRING, LC(esp_optin), "0", 0, 0, 0,
     NULL, "addAll3 opt-in process id (0: activate at once)"},
    {"esp.batch_size", NULL, CONFIG_INT, LC(esp_batch_size), "1000", 1, 10000,
     0, NULL,
     "recipients per addAll3 call (split on a too-large "
     "fault)"},
    {"esp.timeout_ms", NULL, CONFIG_INT, LC(esp_timeout_ms), "60000", 100,
     600000, 0, NULL, "SOAP request timeout"},
    {"esp.max_retries", NULL, CONFIG_INT, LC(esp_max_retries), "5", 0, 100, 0,
     NULL, "retries of a failed ESP call (backoff) before the job fails"},
};
const size_t listsync_config_fields_cnt =
    sizeof(listsync_config_fields) / sizeof(listsync_config_fields[0]);
