/*
 * event - one BounceEvent: read, validate, normalise.
 *
 * Every rejection names its reason label first (docs/bounce.md), so the
 * dead-letter header tells an operator what to fix without reading code.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/avro_codec.h"
#include "common/odata.h"
#include "workers/bounce/bounce.h"

static const struct {
    const char *name;
    enum bounce_kind kind;
} kinds[] = {
    {"UNSUBSCRIBE", BOUNCE_UNSUBSCRIBE}, {"RESUBSCRIBE", BOUNCE_RESUBSCRIBE},
    {"BOUNCE", BOUNCE_BOUNCE},           {"OUTBOUNCE", BOUNCE_OUTBOUNCE},
    {"BOUNCE_RESET", BOUNCE_RESET},      {"SPAM_COMPLAINT", BOUNCE_SPAM},
};

bool bounce_classify(const char *smtp_status, const char *bounce_type,
                     bool *hard, char *errstr, size_t errstr_size)
{
    if (smtp_status) {
        /* class "." subject "." detail, 1-3 digits each (RFC 3463) */
        const char *p = smtp_status;
        int parts = 0;
        while (parts < 3) {
            int digits = 0;
            while (isdigit((unsigned char)*p) && digits < 4) {
                p++;
                digits++;
            }
            if (digits == 0 || digits > 3 || (parts == 0 && digits != 1))
                break;
            parts++;
            if (parts < 3 && *p++ != '.')
                break;
        }
        if (parts != 3 || *p != '\0' ||
            (smtp_status[0] != '4' && smtp_status[0] != '5')) {
            snprintf(errstr, errstr_size,
                     "invalid-bounce: smtp_status '%.32s' is not a 4.x.x or "
                     "5.x.x enhanced status code",
                     smtp_status);
            return false;
        }
        *hard = smtp_status[0] == '5';
        return true;
    }
    if (bounce_type) {
        *hard = strcmp(bounce_type, "HARD") == 0;
        return true;
    }
    snprintf(errstr, errstr_size,
             "invalid-bounce: neither smtp_status nor bounce_type given");
    return false;
}

static enum cs_err fail(char *errstr, size_t errstr_size, const char *msg,
                        const char *detail)
{
    snprintf(errstr, errstr_size, "%s%.64s", msg, detail ? detail : "");
    return CS_ERR_INVALID_EVENT;
}

enum cs_err bounce_event_read(avro_value_t *rec, struct bounce_event *ev,
                              char *errstr, size_t errstr_size)
{
    avro_value_t recipient;
    const char *kind;
    const char *scope;
    const char *email = NULL;
    size_t i;

    memset(ev, 0, sizeof(*ev));
    ev->event_id = avro_field_str(rec, "event_id");
    ev->tenant = avro_field_str(rec, "tenant");
    ev->source_system = avro_field_str(rec, "source_system");
    avro_field_long(rec, "occurred_at", &ev->occurred_at);
    if (avro_field_record(rec, "recipient", &recipient)) {
        ev->entity_type = avro_field_str(&recipient, "entity_type");
        ev->entity_id = avro_field_str(&recipient, "entity_id");
        email = avro_field_str(&recipient, "email");
    }
    kind = avro_field_str(rec, "kind");
    scope = avro_field_str(rec, "scope");
    ev->consent_id = avro_field_str(rec, "consent_id");
    ev->topic_id = avro_field_str(rec, "topic_id");
    ev->source = avro_field_str(rec, "source");
    ev->reason = avro_field_str(rec, "reason");

    if (!ev->event_id || !ev->event_id[0])
        return fail(errstr, errstr_size, "invalid-event: event_id is empty",
                    NULL);
    if (!ev->tenant || !ev->tenant[0] || strchr(ev->tenant, '|'))
        return fail(errstr, errstr_size,
                    "invalid-event: tenant is empty or contains '|'", NULL);
    if (ev->occurred_at <= 0)
        return fail(errstr, errstr_size,
                    "missing-timestamp: occurred_at must be > 0", NULL);
    for (i = 0; kind && i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (strcmp(kind, kinds[i].name) == 0)
            break;
    if (!kind || i == sizeof(kinds) / sizeof(kinds[0]))
        return fail(errstr, errstr_size, "invalid-event: unknown kind ", kind);
    ev->kind = kinds[i].kind;
    ev->kind_name = kinds[i].name;
    ev->channel = scope && strcmp(scope, "CHANNEL") == 0;

    if (ev->entity_id && (!odata_is_guid(ev->entity_id) || !ev->entity_type))
        return fail(errstr, errstr_size,
                    "missing-recipient: entity_id is not a GUID or has no "
                    "entity_type: ",
                    ev->entity_id);
    if (email && !email_normalize(email, ev->email, sizeof(ev->email)))
        return fail(errstr, errstr_size, "invalid-email: ", email);
    if (!ev->entity_id && !ev->email[0])
        return fail(errstr, errstr_size,
                    "missing-recipient: neither entity nor email", NULL);

    if (ev->kind == BOUNCE_RESUBSCRIBE ||
        (ev->kind == BOUNCE_UNSUBSCRIBE && !ev->channel)) {
        if (!ev->consent_id || !ev->consent_id[0] || ev->channel)
            return fail(errstr, errstr_size,
                        ev->kind == BOUNCE_RESUBSCRIBE
                            ? "missing-consent: a resubscribe needs scope "
                              "CONSENT and consent_id"
                            : "missing-consent: scope CONSENT without "
                              "consent_id",
                        NULL);
        if (!odata_is_guid(ev->consent_id))
            return fail(
                errstr, errstr_size,
                "unknown-consent: consent_id is not a GUID: ", ev->consent_id);
        if (ev->topic_id && !odata_is_guid(ev->topic_id))
            return fail(
                errstr, errstr_size,
                "unknown-consent: topic_id is not a GUID: ", ev->topic_id);
    }
    if (ev->kind == BOUNCE_BOUNCE &&
        !bounce_classify(avro_field_str(rec, "smtp_status"),
                         avro_field_str(rec, "bounce_type"), &ev->hard, errstr,
                         errstr_size))
        return CS_ERR_INVALID_EVENT;
    return CS_ERR_OK;
}
