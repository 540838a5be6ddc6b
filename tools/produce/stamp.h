/*
 * stamp - fills in the scheduled parts of a ListSyncRequest line for
 * crmsync-produce --stamp (the daily list-sync CronJob).
 *
 * A line of the CronJob's ConfigMap names only what to sync (tenant,
 * crm_list_id, esp_list_id, consent_id); stamp_request() adds, when absent:
 * occurred_at and requested_at (now, ms since the epoch), source_system,
 * mode FULL, the message key (= crm_list_id, so one list's requests stay in
 * order on one partition) and a deterministic event_id
 * "<prefix>|<tenant>|<crm_list_id>|<YYYY-MM-DD>" (UTC day of now): a retry
 * of the CronJob on the same day produces the same event_id, which the
 * worker skips as a duplicate (its job key is tenant + event_id).
 *
 * Ownership: the event object is borrowed and modified in place.
 * Thread-safety: pure functions, thread-safe.
 */
#ifndef CRMSYNC_TOOLS_PRODUCE_STAMP_H
#define CRMSYNC_TOOLS_PRODUCE_STAMP_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/err.h"

#define STAMP_DEFAULT_PREFIX "daily"
#define STAMP_SOURCE_SYSTEM  "crmsync-schedule"

/* Writes the deterministic event id of (prefix, tenant, list, UTC day of
 * now_ms) into out; CS_ERR_INVALID_ARG when it does not fit. */
enum cs_err stamp_event_id(const char *prefix, const char *tenant,
                           const char *crm_list_id, int64_t now_ms, char *out,
                           size_t out_size);

/* Fills the missing fields of one request line (see above). ev is
 * borrowed; fields already present are kept. CS_ERR_INVALID_EVENT with
 * errstr set when tenant or crm_list_id is missing or not a string. */
enum cs_err stamp_request(json_t *ev, const char *prefix, int64_t now_ms,
                          char *errstr, size_t errstr_size);

#endif
