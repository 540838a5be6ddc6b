/*
 * handler - the list-sync worker's kl_handler.
 *
 * A request starts a job thread (job.h) and stays unfinished (KL_RETRY,
 * "job running") while the job runs, so the consumer loop keeps polling
 * and stores the request's offset only once the job ended: done ->
 * KL_DONE; finished earlier -> KL_DUPLICATE; failed -> KL_DEAD with the
 * job's status; another replica runs the list -> KL_RETRY. One job at a
 * time per process.
 *
 * Ownership: borrows the settings and runtime; owns the running job.
 * Thread-safety: the consumer loop's thread.
 */
#ifndef CRMSYNC_LISTSYNC_HANDLER_H
#define CRMSYNC_LISTSYNC_HANDLER_H

#include <stdbool.h>
#include <stddef.h>

#include "workers/listsync/job.h"

struct kl_item;
struct runtime;
struct listsync_handler;

struct listsync_handler *listsync_handler_new(const struct job_env *env,
                                              struct runtime *rt, char *errstr,
                                              size_t errstr_size);
/** @brief Stops a running job (it restarts on the next attempt), frees. */
void listsync_handler_free(struct listsync_handler *h);

void listsync_handler_process(void *ctx, struct kl_item **items, size_t n);
void listsync_handler_abandon(void *ctx, struct kl_item **items, size_t n);
bool listsync_handler_healthy(void *ctx);

#endif
