/*
 * job - one list-sync job, run in its own thread (docs/listsync.md).
 *
 * job_start() copies what the job needs and starts the thread; the
 * handler polls job_state() from the consumer loop's thread and joins the
 * job with job_free() once it ended. job_stop() asks a running job to stop
 * at the next page (SIGTERM, revoke): it then ends INTERRUPTED, drops its
 * lease and leaves the job record "running", so the next attempt restarts
 * it from the beginning.
 *
 * The thread opens its own CRM, ESP, Redis, barrier and producer handles
 * (none of them is shared with the loop's thread).
 *
 * Ownership: the job owns its copies and handles; cfg, lc, tenant settings,
 * mapping and metrics are borrowed and must outlive it.
 */
#ifndef CRMSYNC_LISTSYNC_JOB_H
#define CRMSYNC_LISTSYNC_JOB_H

#include <stdbool.h>

#include "workers/listsync/listsync.h"

struct metrics;
struct job;

enum job_state {
    JOB_RUNNING = 0,
    JOB_DONE,        /* list refreshed, status reported */
    JOB_DUPLICATE,   /* this request finished earlier */
    JOB_BUSY,        /* another owner runs this ESP list: try later */
    JOB_FAILED,      /* status reported; job_reason() says why */
    JOB_RETRY,       /* transient failure before anything changed */
    JOB_INTERRUPTED, /* stopped by job_stop() */
};

struct job_env {
    const struct config *cfg;                /* borrowed */
    const struct listsync_config *lc;        /* borrowed */
    const struct config_section *tenant_sec; /* borrowed: per-tenant
                                                settings and their defaults */
    const struct listsync_mapping *map;      /* borrowed */
    struct metrics *metrics;                 /* borrowed */
};

/**
 * @brief Starts a job for @p req (takes ownership of its strings: *req is
 *        zeroed).
 * @returns the job or NULL (errstr) when the thread could not start.
 */
struct job *job_start(const struct job_env *env, struct listsync_request *req,
                      char *errstr, size_t errstr_size);
enum job_state job_state(const struct job *j);
/** @returns the reason of FAILED / RETRY / BUSY (valid until job_free). */
const char *job_reason(const struct job *j);
/** @returns the error class of a FAILED / RETRY job. */
enum cs_err job_err(const struct job *j);
/** @returns whether @p j runs the request (tenant, event_id). */
bool job_is(const struct job *j, const char *tenant, const char *event_id);
void job_stop(struct job *j);
/** @brief Stops (if running), joins and frees. NULL is fine. */
void job_free(struct job *j);

#endif
