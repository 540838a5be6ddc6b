/*
 * filter - which members of a page have a current consent for the job's
 * purpose (docs/listsync.md step 3).
 *
 * CI-J: the purpose's enforcement model (read once per job) and the
 * page's msdynmkt_contactpointconsent4 rows of that purpose (no topic):
 * restrictive sends only to Opted In, non-restrictive to everyone but
 * Opted Out, disabled to everyone. History: the newest entry of (consent,
 * record) must be an opt-in. The rows of a page are read with one $batch
 * of Microsoft.Dynamics.CRM.In(...) queries of up to 100 values each.
 *
 * Ownership: all pointers borrowed for the call. Thread-safety: the job's
 * thread.
 */
#ifndef CRMSYNC_LISTSYNC_FILTER_H
#define CRMSYNC_LISTSYNC_FILTER_H

#include <stdbool.h>
#include <stddef.h>

#include "common/crm.h"
#include "workers/listsync/listsync.h"

#define ENFORCE_RESTRICTIVE     534120000
#define ENFORCE_NON_RESTRICTIVE 534120001
#define ENFORCE_DISABLED        534120002

/** @brief Reads the purpose's enforcement model (CI-J). */
enum cs_err filter_purpose_model(struct crm *crm, const char *purpose,
                                 int *model, char *errstr, size_t errstr_size);

/**
 * @brief Sets ok[i] for the n members (ids[i] of entity set @p set, emails
 *        lower-cased) that have a current consent.
 */
enum cs_err filter_consent(struct crm *crm, const struct listsync_config *lc,
                           bool history, int model, const char *consent,
                           int set, const char *const *ids,
                           const char *const *emails, size_t n, bool *ok,
                           char *errstr, size_t errstr_size);

#endif
