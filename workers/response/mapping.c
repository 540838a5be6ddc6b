/*
 * mapping - ResponseEvent -> campaignresponse, and what is skipped.
 *
 * Skips (counted, never dead-lettered): mailings sent without a CRM
 * campaign, mailings sent to a copied marketing list, and - when enabled -
 * automated opens and clicks. The heuristics, documented in the README:
 *  - machine open: the user agent is a known image proxy/prefetcher
 *    (Apple Mail Privacy Protection sends exactly "Mozilla/5.0";
 *    GoogleImageProxy; YahooMailProxy) or the open came less than
 *    response.machine_open_window_s seconds after the mailing was sent;
 *  - scanner click: the user agent names a known link scanner (Barracuda,
 *    Mimecast, Proofpoint, urldefense, Trend Micro, MessageLabs, Symantec,
 *    SafeLinks) or the click came less than response.scanner_click_window_s
 *    seconds after the mailing was sent.
 */
#define _GNU_SOURCE /* strcasestr */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/avro_codec.h"
#include "common/odata.h"
#include "workers/response/response.h"

#define RC_OFF(f) offsetof(struct response_config, f)

const struct config_field response_config_fields[] = {
    {"response.mode", "CRMSYNC_RESPONSE_MODE", CONFIG_STRING, RC_OFF(mode),
     "all", 0, 0, 0, "all|unique",
     "all: every reaction becomes a campaign response; unique: only the "
     "first reaction of each type per recipient and mailing"},
    {"response.tenant_modes", "CRMSYNC_RESPONSE_TENANT_MODES", CONFIG_STRING,
     RC_OFF(tenant_modes), "", 0, 0, 0, NULL,
     "per-tenant mode overrides, e.g. \"tenant-a=unique,tenant-b=all\""},
    {"response.filter_machine_opens", NULL, CONFIG_BOOL,
     RC_OFF(filter_machine_opens), "false", 0, 0, 0, NULL,
     "skip opens by image proxies / prefetchers (see README heuristics)"},
    {"response.machine_open_window_s", NULL, CONFIG_INT,
     RC_OFF(machine_open_window_s), "2", 0, 3600, 0, NULL,
     "an open this many seconds after sending or sooner counts as machine"},
    {"response.filter_scanner_clicks", NULL, CONFIG_BOOL,
     RC_OFF(filter_scanner_clicks), "false", 0, 0, 0, NULL,
     "skip clicks by security link scanners (see README heuristics)"},
    {"response.scanner_click_window_s", NULL, CONFIG_INT,
     RC_OFF(scanner_click_window_s), "10", 0, 3600, 0, NULL,
     "a click this many seconds after sending or sooner counts as scanner"},
};
const size_t response_config_fields_cnt =
    sizeof(response_config_fields) / sizeof(response_config_fields[0]);

enum cs_err response_event_read(avro_value_t *rec, struct response_event *ev,
                                char *errstr, size_t errstr_size)
{
    avro_value_t recipient;

    memset(ev, 0, sizeof(*ev));
    ev->event_id = avro_field_str(rec, "event_id");
    ev->tenant = avro_field_str(rec, "tenant");
    ev->source_system = avro_field_str(rec, "source_system");
    avro_field_long(rec, "occurred_at", &ev->occurred_at);
    if (avro_field_record(rec, "recipient", &recipient)) {
        ev->entity_type = avro_field_str(&recipient, "entity_type");
        ev->entity_id = avro_field_str(&recipient, "entity_id");
        ev->email = avro_field_str(&recipient, "email");
    }
    ev->type = avro_field_str(rec, "response_type");
    ev->mailing_id = avro_field_str(rec, "mailing_id");
    ev->mailing_name = avro_field_str(rec, "mailing_name");
    ev->campaign_id = avro_field_str(rec, "crm_campaign_id");
    avro_field_bool(rec, "from_copied_list", &ev->from_copied_list);
    ev->url = avro_field_str(rec, "url");
    ev->link_name = avro_field_str(rec, "link_name");
    ev->subject = avro_field_str(rec, "subject");
    ev->user_agent = avro_field_str(rec, "user_agent");
    ev->has_sent_at = avro_field_long(rec, "sent_at", &ev->sent_at);

    if (!ev->event_id || !ev->event_id[0]) {
        snprintf(errstr, errstr_size, "event_id is empty");
        return CS_ERR_INVALID_EVENT;
    }
    if (!ev->tenant || !ev->tenant[0]) {
        snprintf(errstr, errstr_size, "tenant is empty");
        return CS_ERR_INVALID_EVENT;
    }
    if (!ev->type || !ev->mailing_id || !ev->mailing_id[0]) {
        snprintf(errstr, errstr_size, "response_type or mailing_id missing");
        return CS_ERR_INVALID_EVENT;
    }
    if (ev->campaign_id && !odata_is_guid(ev->campaign_id)) {
        snprintf(errstr, errstr_size, "crm_campaign_id '%.64s' is not a GUID",
                 ev->campaign_id);
        return CS_ERR_INVALID_EVENT;
    }
    if (ev->entity_id && (!odata_is_guid(ev->entity_id) || !ev->entity_type)) {
        snprintf(errstr, errstr_size,
                 "recipient entity_id '%.64s' is not a GUID or has no "
                 "entity_type",
                 ev->entity_id);
        return CS_ERR_INVALID_EVENT;
    }
    if (!ev->entity_id && !ev->email) {
        snprintf(errstr, errstr_size, "recipient has neither entity nor email");
        return CS_ERR_INVALID_EVENT;
    }
    return CS_ERR_OK;
}

static bool ua_contains_any(const char *ua, const char *const *needles)
{
    for (; *needles; needles++)
        if (strcasestr(ua, *needles))
            return true;
    return false;
}

static bool within_window(const struct response_event *ev, int window_s)
{
    return ev->has_sent_at && ev->occurred_at >= ev->sent_at &&
           ev->occurred_at - ev->sent_at <= (int64_t)window_s * 1000;
}

static bool is_machine_open(const struct response_config *rc,
                            const struct response_event *ev)
{
    static const char *const proxies[] = {"GoogleImageProxy", "YahooMailProxy",
                                          "ggpht.com", NULL};
    if (ev->user_agent && (strcmp(ev->user_agent, "Mozilla/5.0") == 0 ||
                           ua_contains_any(ev->user_agent, proxies)))
        return true;
    return within_window(ev, rc->machine_open_window_s);
}

static bool is_scanner_click(const struct response_config *rc,
                             const struct response_event *ev)
{
    static const char *const scanners[] = {
        "Barracuda",   "Mimecast", "Proofpoint", "urldefense", "Trend Micro",
        "MessageLabs", "Symantec", "SafeLinks",  NULL};
    if (ev->user_agent && ua_contains_any(ev->user_agent, scanners))
        return true;
    return within_window(ev, rc->scanner_click_window_s);
}

const char *response_skip_reason(const struct response_config *rc,
                                 const struct response_event *ev)
{
    if (!ev->campaign_id)
        return "no_campaign";
    if (ev->from_copied_list)
        return "copied_list";
    if (rc->filter_machine_opens && strcmp(ev->type, "OPEN") == 0 &&
        is_machine_open(rc, ev))
        return "machine_open";
    if (rc->filter_scanner_clicks && strcmp(ev->type, "CLICK") == 0 &&
        is_scanner_click(rc, ev))
        return "scanner_click";
    return NULL;
}

void response_effect_key(const struct response_event *ev, bool unique,
                         char *buf, size_t size)
{
    if (!unique) {
        snprintf(buf, size, "e|%s|%s", ev->tenant, ev->event_id);
        return;
    }
    snprintf(buf, size, "u|%s|%s|%s|%s|%s", ev->tenant, ev->mailing_id,
             ev->entity_id ? ev->entity_id : "",
             ev->entity_id ? "" : (ev->email ? ev->email : ""), ev->type);
}

/* "OPEN" -> "open" into buf. */
static void lower_copy(const char *s, char *buf, size_t size)
{
    size_t i = 0;
    for (; s[i] && i + 1 < size; i++)
        buf[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
    buf[i] = '\0';
}

static void iso8601(int64_t ms, char *buf, size_t size)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* Sets key to s cut to max UTF-8-safe bytes (Dataverse column lengths). */
static void set_str_max(json_t *obj, const char *key, const char *s, size_t max)
{
    char buf[2048];
    size_t len;
    if (!s)
        return;
    len = strlen(s);
    if (len > max)
        len = max;
    if (len >= sizeof(buf))
        len = sizeof(buf) - 1;
    /* Do not cut inside a multi-byte sequence. */
    while (len > 0 && len < strlen(s) && ((unsigned char)s[len] & 0xC0) == 0x80)
        len--;
    memcpy(buf, s, len);
    buf[len] = '\0';
    json_object_set_new(obj, key, json_string(buf));
}

static json_t *customer_parties(const struct response_event *ev)
{
    char bind_key[64];
    char bind_val[96];
    json_t *party, *parties;

    if (!ev->entity_id)
        return NULL;
    snprintf(bind_key, sizeof(bind_key), "partyid_%s@odata.bind",
             ev->entity_type);
    snprintf(bind_val, sizeof(bind_val), "/%ss(%s)", ev->entity_type,
             ev->entity_id);
    party = json_object();
    json_object_set_new(party, bind_key, json_string(bind_val));
    json_object_set_new(party, "participationtypemask", json_integer(11));
    parties = json_array();
    json_array_append_new(parties, party);
    return parties;
}

char *response_build_body(const struct response_event *ev)
{
    char category[32];
    char subject[512];
    char when[64];
    char regarding[96];
    char desc[2048];
    const char *what;
    json_t *obj = json_object();
    json_t *parties = customer_parties(ev);
    char *text;

    lower_copy(ev->type, category, sizeof(category));
    what = ev->mailing_name ? ev->mailing_name : ev->mailing_id;
    snprintf(subject, sizeof(subject), "Email %s: %s", category, what);
    iso8601(ev->occurred_at, when, sizeof(when));
    snprintf(regarding, sizeof(regarding), "/campaigns(%s)", ev->campaign_id);
    snprintf(desc, sizeof(desc),
             "%s reaction to mailing %s%s%s%s%s (event %s from %s)", category,
             ev->mailing_id, ev->url ? " url=" : "", ev->url ? ev->url : "",
             ev->subject ? " subject=" : "", ev->subject ? ev->subject : "",
             ev->event_id, ev->source_system ? ev->source_system : "esp");

    set_str_max(obj, "subject", subject, 200);
    json_object_set_new(obj,
                        "regardingobjectid_campaign_campaignresponse"
                        "@odata.bind",
                        json_string(regarding));
    json_object_set_new(obj, "channeltypecode", json_integer(1)); /* Email */
    /* 3 = Do Not Send Marketing Materials; 1 = Interested otherwise. */
    json_object_set_new(
        obj, "responsecode",
        json_integer(strcmp(ev->type, "UNSUBSCRIBE") == 0 ? 3 : 1));
    json_object_set_new(obj, "receivedon", json_string(when));
    json_object_set_new(obj, "category", json_string(category));
    if (ev->link_name || ev->url)
        set_str_max(obj, "subcategory", ev->link_name ? ev->link_name : ev->url,
                    250);
    set_str_max(obj, "emailaddress", ev->email, 100);
    set_str_max(obj, "description", desc, 2000);
    if (parties)
        json_object_set_new(obj, "campaignresponse_activity_parties", parties);

    text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    return text;
}
