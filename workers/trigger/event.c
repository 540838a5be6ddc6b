/*
 * event - one TriggerEvent: read, validate, normalise.
 *
 * Every rejection names its reason label first (docs/trigger.md), so the
 * dead-letter header tells an operator what to fix.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "common/avro_codec.h"
#include "common/email.h"
#include "common/odata.h"
#include "workers/trigger/trigger.h"

static enum cs_err fail(char *errstr, size_t errstr_size, const char *msg,
                        const char *detail)
{
    snprintf(errstr, errstr_size, "%s%.64s", msg, detail ? detail : "");
    return CS_ERR_INVALID_EVENT;
}

static const char *const kind_names[] = {"BEHAVIOURAL", "BUSINESS", "CUSTOM"};

/* Reads the attributes map into ev->names/values. */
static enum cs_err read_attrs(avro_value_t *rec, struct trigger_event *ev,
                              char *errstr, size_t errstr_size)
{
    avro_value_t map;
    size_t n = 0;

    if (avro_value_get_by_name(rec, "attributes", &map, NULL) != 0 ||
        avro_value_get_type(&map) != AVRO_MAP)
        return CS_ERR_OK;
    avro_value_get_size(&map, &n);
    if (n > TRIGGER_ATTRS_MAX)
        return fail(errstr, errstr_size,
                    "too-many-attributes: more than 64 attributes", NULL);
    for (size_t i = 0; i < n; i++) {
        avro_value_t v;
        const char *name = NULL;
        const char *s = NULL;
        size_t len = 0;
        if (avro_value_get_by_index(&map, i, &v, &name) != 0 ||
            avro_value_get_string(&v, &s, &len) != 0)
            return fail(errstr, errstr_size,
                        "invalid-event: unreadable attribute", NULL);
        ev->names[i] = name;
        ev->values[i] = s;
    }
    ev->attrs.names = ev->names;
    ev->attrs.values = ev->values;
    ev->attrs.n = n;
    return CS_ERR_OK;
}

enum cs_err trigger_event_read(avro_value_t *rec, struct trigger_event *ev,
                               char *errstr, size_t errstr_size)
{
    avro_value_t recipient;
    const char *kind;
    const char *email = NULL;
    const char *eid = NULL;

    memset(ev, 0, sizeof(*ev));
    ev->attrs.names = ev->names;
    ev->attrs.values = ev->values;
    ev->event_id = avro_field_str(rec, "event_id");
    ev->tenant = avro_field_str(rec, "tenant");
    ev->name = avro_field_str(rec, "trigger_name");
    avro_field_long(rec, "occurred_at", &ev->occurred_ms);
    avro_field_long(rec, "deadline", &ev->deadline_ms);
    if (avro_field_record(rec, "recipient", &recipient)) {
        ev->entity_type = avro_field_str(&recipient, "entity_type");
        eid = avro_field_str(&recipient, "entity_id");
        email = avro_field_str(&recipient, "email");
    }
    kind = avro_field_str(rec, "trigger_kind");
    ev->kind = JR_KIND_ANY;
    for (int i = 0; kind && i < 3; i++)
        if (strcmp(kind, kind_names[i]) == 0)
            ev->kind = i;

    if (!ev->event_id || !ev->event_id[0])
        return fail(errstr, errstr_size, "invalid-event: event_id is empty",
                    NULL);
    if (!ev->tenant || !ev->tenant[0] || strlen(ev->tenant) > 64 ||
        strchr(ev->tenant, '|'))
        return fail(errstr, errstr_size,
                    "invalid-event: tenant is empty, longer than 64 bytes or "
                    "contains '|'",
                    NULL);
    if (!ev->name || !ev->name[0])
        return fail(errstr, errstr_size, "invalid-event: trigger_name is empty",
                    NULL);
    if (ev->occurred_ms <= 0)
        return fail(errstr, errstr_size,
                    "missing-timestamp: occurred_at must be > 0", NULL);
    if (ev->kind == JR_KIND_ANY)
        return fail(errstr, errstr_size, "invalid-event: unknown kind ", kind);
    if (eid) {
        if (!odata_is_guid(eid) || !ev->entity_type)
            return fail(errstr, errstr_size,
                        "invalid-entity-id: entity_id is not a GUID or has no "
                        "entity_type: ",
                        eid);
        for (size_t i = 0; i < 36; i++)
            ev->entity_id_buf[i] = (char)tolower((unsigned char)eid[i]);
        ev->entity_id = ev->entity_id_buf;
    } else {
        ev->entity_type = NULL;
    }
    if (email && email[0] &&
        !email_normalize(email, ev->email, sizeof(ev->email)))
        return fail(errstr, errstr_size, "invalid-email: ", email);
    if (!ev->entity_id && !ev->email[0])
        return fail(errstr, errstr_size,
                    "missing-profile: neither entity_id nor email", NULL);
    return read_attrs(rec, ev, errstr, errstr_size);
}
