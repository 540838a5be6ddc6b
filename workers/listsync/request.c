/*
 * request - one ListSyncRequest, validated into owned copies.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/avro_codec.h"
#include "common/odata.h"
#include "workers/listsync/listsync.h"

static bool all_digits(const char *s)
{
    if (!s || !*s || strlen(s) > 19)
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

static char *lower_dup(const char *s)
{
    char *d = strdup(s);
    for (char *p = d; p && *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return d;
}

enum cs_err listsync_request_read(avro_value_t *rec, struct listsync_request *r,
                                  char *errstr, size_t errstr_size)
{
    const char *event_id = avro_field_str(rec, "event_id");
    const char *tenant = avro_field_str(rec, "tenant");
    const char *list = avro_field_str(rec, "crm_list_id");
    const char *esp = avro_field_str(rec, "esp_list_id");
    const char *consent = avro_field_str(rec, "consent_id");
    const char *mode = avro_field_str(rec, "mode");

    memset(r, 0, sizeof(*r));
    avro_field_long(rec, "requested_at", &r->requested_at);
    if (!event_id || !*event_id || !tenant || !*tenant || strchr(tenant, '|')) {
        snprintf(errstr, errstr_size,
                 "invalid-request: event_id or tenant empty (or '|' in it)");
        return CS_ERR_INVALID_EVENT;
    }
    if (!list || !odata_is_guid(list)) {
        snprintf(errstr, errstr_size,
                 "invalid-request: crm_list_id is not a GUID: %.64s",
                 list ? list : "");
        return CS_ERR_INVALID_EVENT;
    }
    if (!all_digits(esp)) {
        snprintf(errstr, errstr_size,
                 "invalid-request: esp_list_id must be a number: %.64s",
                 esp ? esp : "");
        return CS_ERR_INVALID_EVENT;
    }
    if (!consent || !odata_is_guid(consent)) {
        snprintf(errstr, errstr_size,
                 "invalid-request: consent_id is not a GUID: %.64s",
                 consent ? consent : "");
        return CS_ERR_INVALID_EVENT;
    }
    if (r->requested_at <= 0) {
        snprintf(errstr, errstr_size,
                 "invalid-request: requested_at must be > 0");
        return CS_ERR_INVALID_EVENT;
    }
    r->incremental = mode && strcmp(mode, "INCREMENTAL") == 0;
    r->event_id = strdup(event_id);
    r->tenant = strdup(tenant);
    r->list_id = lower_dup(list);
    r->esp_list = strdup(esp);
    r->consent_id = lower_dup(consent);
    if (!r->event_id || !r->tenant || !r->list_id || !r->esp_list ||
        !r->consent_id) {
        listsync_request_free(r);
        snprintf(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    return CS_ERR_OK;
}

void listsync_request_free(struct listsync_request *r)
{
    free(r->event_id);
    free(r->tenant);
    free(r->list_id);
    free(r->esp_list);
    free(r->consent_id);
    memset(r, 0, sizeof(*r));
}
