/*
 * stamp - scheduled ListSyncRequest fields (see stamp.h).
 */
#include <stdio.h>
#include <time.h>

#include "tools/produce/stamp.h"

enum cs_err stamp_event_id(const char *prefix, const char *tenant,
                           const char *crm_list_id, int64_t now_ms, char *out,
                           size_t out_size)
{
    time_t secs = (time_t)(now_ms / 1000);
    struct tm tm;
    int n;

    if (!gmtime_r(&secs, &tm))
        return CS_ERR_INVALID_ARG;
    n = snprintf(out, out_size, "%s|%s|%s|%04d-%02d-%02d", prefix, tenant,
                 crm_list_id, tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    if (n < 0 || (size_t)n >= out_size)
        return CS_ERR_INVALID_ARG;
    return CS_ERR_OK;
}

/* Sets key to a new value unless present; false when out of memory. */
static int set_default(json_t *ev, const char *key, json_t *value)
{
    if (!value)
        return -1;
    if (json_object_get(ev, key)) {
        json_decref(value);
        return 0;
    }
    return json_object_set_new(ev, key, value);
}

enum cs_err stamp_request(json_t *ev, const char *prefix, int64_t now_ms,
                          char *errstr, size_t errstr_size)
{
    const char *tenant = json_string_value(json_object_get(ev, "tenant"));
    const char *list = json_string_value(json_object_get(ev, "crm_list_id"));
    char id[512];

    if (!tenant || !tenant[0] || !list || !list[0]) {
        snprintf(errstr, errstr_size,
                 "--stamp needs string fields tenant and crm_list_id");
        return CS_ERR_INVALID_EVENT;
    }
    if (!json_object_get(ev, "event_id")) {
        if (stamp_event_id(prefix, tenant, list, now_ms, id, sizeof(id)) !=
            CS_ERR_OK) {
            snprintf(errstr, errstr_size, "--stamp: event id too long");
            return CS_ERR_INVALID_EVENT;
        }
        if (json_object_set_new(ev, "event_id", json_string(id)))
            goto out_nomem;
    }
    if (set_default(ev, "occurred_at", json_integer(now_ms)) ||
        set_default(ev, "requested_at", json_integer(now_ms)) ||
        set_default(ev, "source_system", json_string(STAMP_SOURCE_SYSTEM)) ||
        set_default(ev, "mode", json_string("FULL")) ||
        set_default(ev, "__key", json_string(list)))
        goto out_nomem;
    return CS_ERR_OK;

out_nomem:
    snprintf(errstr, errstr_size, "out of memory");
    return CS_ERR_NOMEM;
}
