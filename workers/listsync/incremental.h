/*
 * incremental - list-membership change events for lists registered by an
 * INCREMENTAL request (docs/listsync.md "Incremental mode").
 *
 * Each event is handled on the consumer loop's thread, one recipient at a
 * time: ADDED / DATA_CHANGED read the record and pass it through the same
 * filters as a full refresh, then (re)add it with addAll3 (a changed
 * recipient is removed first so its attributes are replaced); a filtered
 * or REMOVED member is removed from the ESP list. Events of lists that are
 * not registered are skipped (counted).
 *
 * Ownership: borrows the settings and the runtime; owns its ESP
 * connection and producer. Thread-safety: the loop's thread.
 */
#ifndef CRMSYNC_LISTSYNC_INCREMENTAL_H
#define CRMSYNC_LISTSYNC_INCREMENTAL_H

#include <stddef.h>

#include "workers/listsync/job.h"

struct kl_item;
struct runtime;
struct incremental;

struct incremental *incremental_new(const struct job_env *env,
                                    struct runtime *rt, char *errstr,
                                    size_t errstr_size);
void incremental_free(struct incremental *in);
/** @brief Handles one ListMembershipChange item (sets its state). */
void incremental_process(struct incremental *in, struct kl_item *it);

#endif
