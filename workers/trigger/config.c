/*
 * config - the trigger worker's settings table.
 */
#include <stddef.h>

#include "workers/trigger/trigger.h"

#define TC(f) offsetof(struct trigger_config, f)

const struct config_field trigger_config_fields[] = {
    {"trigger.journeys", "CRMSYNC_TRIGGER_JOURNEYS", CONFIG_STRING,
     TC(journeys), "", 0, 0, CONFIG_REQUIRED, NULL,
     "journey definitions (YAML file, validated at start; docs/trigger.md)"},
    {"trigger.tick_ms", NULL, CONFIG_INT, TC(tick_ms), "100", 10, 10000, 0,
     NULL, "how often the timer thread looks for due timers when idle"},
    {"trigger.fire_batch", NULL, CONFIG_INT, TC(fire_batch), "500", 1, 10000, 0,
     NULL, "timers claimed per round trip"},
    {"trigger.lease_ms", NULL, CONFIG_INT, TC(lease_ms), "30000", 1000, 3600000,
     0, NULL,
     "a claimed timer not completed within this time is fired again (by "
     "any replica)"},
    {"trigger.retry_ms", NULL, CONFIG_INT, TC(retry_ms), "5000", 100, 3600000,
     0, NULL,
     "delay before a timer whose action met a retryable failure (CRM/ESP "
     "down or throttling) fires again"},
    {"trigger.derived_topic", NULL, CONFIG_STRING, TC(derived_topic),
     "crmsync.trigger.events", 0, 0, 0, NULL,
     "topic receiving the derived email.not_opened / email.not_clicked "
     "triggers of branch timeouts; empty: not produced"},
    {"trigger.event_schema_id", NULL, CONFIG_INT, TC(event_schema_id), "6", 1,
     2147483647, 0, NULL,
     "writer schema id of produced TriggerEvents (the registry's id of "
     "trigger_event.v1.avsc)"},
    {"trigger.actions_dlq_topic", NULL, CONFIG_STRING, TC(actions_dlq),
     "crmsync.trigger.actions.dlq", 0, 0, 0, NULL,
     "topic receiving actions the CRM or ESP refused for good (JSON with the "
     "reason)"},
    {"trigger.esp_on_uncertain", NULL, CONFIG_STRING, TC(esp_uncertain),
     "resend", 0, 0, 0, "resend|skip",
     "a mail whose sender died between sending and recording it: resend "
     "(at least once) or skip (at most once)"},
    {"trigger.ledger_entity_set", NULL, CONFIG_STRING, TC(ledger_set),
     "crmsync_journeyactions", 0, 0, 0, NULL,
     "ledger table written in the custom trigger's change set (a re-fired "
     "action finds its row and is not executed twice)"},
    {"esp.kind", NULL, CONFIG_STRING, TC(esp_kind), "optimizely", 0, 0, 0,
     "optimizely", "ESP connector"},
    {"esp.base_url", "CRMSYNC_ESP_BASE_URL", CONFIG_STRING, TC(esp_base_url),
     "https://api.campaign.episerver.net/soap11", 0, 0, 0, NULL,
     "SOAP base URL (…/soap11); needed by journeys with esp_mail"},
    {"esp.mandator_id", "CRMSYNC_ESP_MANDATOR_ID", CONFIG_STRING,
     TC(esp_mandator), "", 0, 0, 0, NULL, "ESP client (mandator) id"},
    {"esp.user", "CRMSYNC_ESP_USER", CONFIG_STRING, TC(esp_user), "", 0, 0, 0,
     NULL, "API user"},
    {"esp.password", "CRMSYNC_ESP_PASSWORD", CONFIG_STRING, TC(esp_password),
     "", 0, 0, CONFIG_SECRET, NULL, "API user's password"},
    {"esp.timeout_ms", NULL, CONFIG_INT, TC(esp_timeout_ms), "30000", 100,
     600000, 0, NULL, "SOAP request timeout"},
};
const size_t trigger_config_fields_cnt =
    sizeof(trigger_config_fields) / sizeof(trigger_config_fields[0]);
