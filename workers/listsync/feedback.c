/*
 * feedback - recipients the ESP refused go back to the CRM side as
 * BounceEvents (docs/listsync.md step 6): unsubscribed (2) and blacklisted
 * (3) as UNSUBSCRIBE of the job's consent, bounce-overflowed (4) as
 * OUTBOUNCE, source ESP. The event id is deterministic per (job, list,
 * address, code), so a restarted job produces duplicates the bounce
 * worker recognises.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "common/avro_codec.h"
#include "common/esp.h"
#include "common/producer.h"
#include "workers/listsync/listsync.h"

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool listsync_feedback(struct avro_codec *codec, struct producer *producer,
                       const char *topic, const char *tenant,
                       const char *consent, const char *tag,
                       const char *esp_list, const char *email,
                       const char *entity, const char *id, int code,
                       char *errstr, size_t errstr_size)
{
    bool ok = false;
    char eid[200];
    json_t *ev;
    avro_value_t v;
    void *buf = NULL;
    size_t len = 0;

    snprintf(eid, sizeof(eid), "listsync|%s|%s|%s|%d", tag, esp_list, email,
             code);
    ev = json_pack(
        "{s:s,s:s,s:I,s:s,s:{s:s,s:s,s:s},s:s,s:s,s:s,s:n,s:s,s:s,s:n,"
        "s:n,s:n}",
        "event_id", eid, "tenant", tenant, "occurred_at", (json_int_t)now_ms(),
        "source_system", "crmsync-listsync", "recipient", "entity_type", entity,
        "entity_id", id, "email", email, "kind",
        code == ESP_ADD_BOUNCE_OVERFLOWED ? "OUTBOUNCE" : "UNSUBSCRIBE",
        "scope", "CONSENT", "consent_id", consent, "topic_id", "source", "ESP",
        "reason",
        code == ESP_ADD_BLACKLISTED    ? "blacklisted in the ESP"
        : code == ESP_ADD_UNSUBSCRIBED ? "unsubscribed in the ESP"
                                       : "bounce-overflowed in the ESP",
        "bounce_type", "smtp_status", "mailing_id");
    if (!ev) {
        snprintf(errstr, errstr_size, "out of memory");
        return false;
    }
    if (avro_codec_from_json(codec, LISTSYNC_BOUNCE_SCHEMA_ID, ev, &v, errstr,
                             errstr_size) == CS_ERR_OK) {
        if (avro_codec_encode(codec, LISTSYNC_BOUNCE_SCHEMA_ID, &v, &buf, &len,
                              errstr, errstr_size) == CS_ERR_OK &&
            producer_send(producer, topic, email, strlen(email), buf, len) ==
                CS_ERR_OK)
            ok = true;
        avro_value_decref(&v);
    }
    free(buf);
    json_decref(ev);
    return ok;
}
