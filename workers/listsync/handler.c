/*
 * handler - starts list-sync jobs and waits for them (see handler.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/crm.h"
#include "common/kafka_loop.h"
#include "common/log.h"
#include "common/redis_conn.h"
#include "common/runtime.h"
#include "workers/listsync/handler.h"
#include "workers/listsync/incremental.h"

#define POLL_MS 1000 /* how often a running job is looked at */

struct listsync_handler {
    struct job_env env;      /* borrowed pointers */
    struct runtime *rt;      /* borrowed */
    struct job *job;         /* owned: the running (or just ended) job */
    struct incremental *inc; /* owned, opened on the first membership event */
};

struct listsync_handler *listsync_handler_new(const struct job_env *env,
                                              struct runtime *rt, char *errstr,
                                              size_t errstr_size)
{
    struct listsync_handler *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    h->env = *env;
    h->rt = rt;
    return h;
}

void listsync_handler_free(struct listsync_handler *h)
{
    if (!h)
        return;
    job_free(h->job);
    incremental_free(h->inc);
    free(h);
}

/* Maps an ended job onto its item and frees the job. */
static void finish(struct listsync_handler *h, struct kl_item *it)
{
    enum job_state st = job_state(h->job);

    switch (st) {
    case JOB_DONE:
        it->state = KL_DONE;
        break;
    case JOB_DUPLICATE:
        it->state = KL_DUPLICATE;
        break;
    case JOB_FAILED:
        kl_item_fail(it, KL_DEAD,
                     job_err(h->job) ? job_err(h->job) : CS_ERR_JOB_FAILED,
                     "%s", job_reason(h->job));
        break;
    default: /* busy, transient, interrupted: try again later */
        kl_item_fail(it, KL_RETRY,
                     st == JOB_BUSY    ? CS_ERR_IN_FLIGHT
                     : job_err(h->job) ? job_err(h->job)
                                       : CS_ERR_SHUTDOWN,
                     "%s", job_reason(h->job));
        it->retry_after_ms = POLL_MS;
        break;
    }
    job_free(h->job);
    h->job = NULL;
}

void listsync_handler_process(void *ctx, struct kl_item **items, size_t n)
{
    struct listsync_handler *h = ctx;
    bool started = false;

    for (size_t i = 0; i < n; i++) {
        struct kl_item *it = items[i];
        struct listsync_request req;
        char errstr[256];

        if (strcmp(rd_kafka_topic_name(it->rkm->rkt),
                   h->env.lc->membership_topic) == 0) {
            if (!h->inc)
                h->inc =
                    incremental_new(&h->env, h->rt, errstr, sizeof(errstr));
            if (h->inc)
                incremental_process(h->inc, it);
            else
                kl_item_fail(it, KL_RETRY, CS_ERR_CONFIG, "%s", errstr);
            continue;
        }
        if (listsync_request_read(&it->value, &req, it->reason,
                                  sizeof(it->reason)) != CS_ERR_OK) {
            it->state = KL_DEAD;
            it->err = CS_ERR_INVALID_EVENT;
            continue;
        }
        if (h->job && job_is(h->job, req.tenant, req.event_id)) {
            listsync_request_free(&req);
            if (job_state(h->job) == JOB_RUNNING) {
                kl_item_fail(it, KL_RETRY, CS_ERR_IN_FLIGHT, "job running");
                it->retry_after_ms = POLL_MS;
            } else {
                finish(h, it);
            }
            continue;
        }
        if (h->job || started) {
            /* one job at a time: this request waits its turn */
            listsync_request_free(&req);
            kl_item_fail(it, KL_RETRY, CS_ERR_IN_FLIGHT,
                         "waiting for the running job");
            it->retry_after_ms = POLL_MS;
            continue;
        }
        if (req.incremental)
            LOG_INFO("request %s asks for INCREMENTAL: running a full "
                     "refresh (the robust mode)",
                     req.event_id);
        h->job = job_start(&h->env, &req, errstr, sizeof(errstr));
        listsync_request_free(&req);
        if (!h->job) {
            kl_item_fail(it, KL_RETRY, CS_ERR_NOMEM, "%s", errstr);
            continue;
        }
        started = true;
        kl_item_fail(it, KL_RETRY, CS_ERR_IN_FLIGHT, "job running");
        it->retry_after_ms = POLL_MS;
    }
}

void listsync_handler_abandon(void *ctx, struct kl_item **items, size_t n)
{
    struct listsync_handler *h = ctx;
    (void)items;
    (void)n;
    /* The partition (or the process) goes away: stop the job; its next
       owner restarts it from the beginning. */
    if (h->job) {
        job_free(h->job);
        h->job = NULL;
    }
}

bool listsync_handler_healthy(void *ctx)
{
    struct listsync_handler *h = ctx;
    return redis_conn_ping(h->rt->redis) &&
           h->rt->crm->ops->ping(h->rt->crm->self);
}
