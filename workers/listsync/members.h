/*
 * members - a marketing list's members, one CRM page at a time.
 *
 * Static lists: lists(<id>)/list<type>_association with
 * Prefer: odata.maxpagesize=N and @odata.nextLink. Dynamic lists: the
 * list's FetchXML on the member entity set, with count/page/paging-cookie
 * (Dataverse's @Microsoft.Dynamics.CRM.fetchxmlpagingcookie). Either way
 * only one page is held at a time.
 *
 * Ownership: the reader owns its copies and the current page; rows handed
 * out are borrowed until the next members_next() call.
 * Thread-safety: one thread (the job's).
 */
#ifndef CRMSYNC_LISTSYNC_MEMBERS_H
#define CRMSYNC_LISTSYNC_MEMBERS_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "common/crm.h"

struct list_meta {
    char name[256];
    bool dynamic;
    int set;          /* 0 contacts, 1 accounts, 2 leads */
    long membercount; /* -1 unknown */
};

extern const char *const members_sets[3];     /* "contacts", ... */
extern const char *const members_keys[3];     /* "contactid", ... */
extern const char *const members_entities[3]; /* "contact", ... */

struct members;

/**
 * @brief Reads the list record and prepares paging.
 * @param select extra columns (comma list, may be "").
 * @returns the reader (free with members_free) or NULL: *err says why
 *          (CS_ERR_HTTP_CLIENT: no such list; retryable errors otherwise).
 */
struct members *members_open(struct crm *crm, const char *list_id,
                             const char *select, int page_size,
                             struct list_meta *meta, enum cs_err *err,
                             char *errstr, size_t errstr_size);

/**
 * @brief The next page of member rows.
 * @param rows receives the "value" array (borrowed until the next call);
 *        an empty array or NULL at the end.
 * @returns CS_ERR_OK (also at the end: *rows NULL) or the CRM's error.
 */
enum cs_err members_next(struct members *r, json_t **rows, char *errstr,
                         size_t errstr_size);

void members_free(struct members *r);

#endif
