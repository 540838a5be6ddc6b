/*
 * timer - claims due timers, runs the engine, executes actions, completes
 * (see timer.h).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/config.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/redis_conn.h"
#include "workers/trigger/actions.h"
#include "workers/trigger/engine.h"
#include "workers/trigger/store.h"
#include "workers/trigger/timer.h"

struct timer {
    const struct trigger_config *tc; /* borrowed */
    const struct journey_set *js;    /* borrowed */
    struct metrics *m;               /* borrowed */
    volatile sig_atomic_t *run;      /* borrowed */
    atomic_bool stop;
    atomic_bool healthy;
    pthread_mutex_t mu; /* guards kicked; cv wakes a nap early */
    pthread_cond_t cv;
    bool kicked;
    struct redis_conn *redis; /* owned */
    struct store store;
    struct actions *actions; /* owned */
    pthread_t thread;
    bool started;
    /* per round, sized fire_batch */
    struct store_claim *claims;
    struct engine_plan *plans;
    struct store_done *done;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool running(const struct timer *t)
{
    return *t->run && !atomic_load(&t->stop);
}

/* Sleeps up to @p ms in slices so a stop is noticed quickly; a kick
 * (timers due now were just scheduled) ends it at once. */
static void nap(struct timer *t, long ms)
{
    pthread_mutex_lock(&t->mu);
    while (ms > 0 && running(t) && !t->kicked) {
        long step = ms < 50 ? ms : 50;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += step * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&t->cv, &t->mu, &ts);
        ms -= step;
    }
    t->kicked = false;
    pthread_mutex_unlock(&t->mu);
}

void timer_kick(struct timer *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    t->kicked = true;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

/* The journey of a decoded instance (by the hash its blob stores); fills
 * in->journey with the id. NULL when no journey of the file has it. */
static const struct journey *find_journey(const struct journey_set *js,
                                          struct instance *in)
{
    for (size_t i = 0; i < js->n; i++)
        if (instance_journey_hash(js->j[i].id) == in->journey_hash) {
            snprintf(in->journey, sizeof(in->journey), "%s", js->j[i].id);
            return &js->j[i];
        }
    snprintf(in->journey, sizeof(in->journey), "#%08x", in->journey_hash);
    return NULL;
}

static const char *type_label(const struct engine_action *ea)
{
    static const char *const types[] = {"crm_trigger", "esp_mail", "crm_task",
                                        "produce"};
    return ea->a ? types[ea->a->type] : "derived";
}

static void count_action(struct metrics *m, const struct action_job *jb)
{
    static const char *const outcomes[] = {"pending",    "done",   "duplicate",
                                           "suppressed", "failed", "retry"};
    char labels[96];
    snprintf(labels, sizeof(labels), "type=\"%s\",outcome=\"%s\"",
             type_label(jb->ea), outcomes[jb->result]);
    metrics_counter_add(m, "crmsync_trigger_actions_total", labels, 1);
    if (jb->result == ACT_FAILED)
        LOG_WARN("action %s (%s, journey %s) refused: %s", jb->ea->id,
                 type_label(jb->ea), jb->j->id, jb->reason);
    else if (jb->result == ACT_RETRY)
        LOG_DEBUG("action %s retried later: %s", jb->ea->id, jb->reason);
}

/* Builds completion i from the plan and the jobs' results. */
static void complete_one(struct timer *t, size_t i, const struct journey *j,
                         const struct action_job *jobs, size_t first,
                         size_t count, int64_t now)
{
    struct store_claim *c = &t->claims[i];
    struct engine_plan *p = &t->plans[i];
    struct store_done *d = &t->done[i];
    long retry = 0;
    char labels[96];

    memcpy(d->key, c->key, INST_KEY_LEN);
    d->claimed_ver = c->inst.ver;
    for (size_t k = first; k < first + count; k++)
        if (jobs[k].result == ACT_RETRY) {
            long w = jobs[k].retry_after_ms > t->tc->retry_ms
                         ? jobs[k].retry_after_ms
                         : t->tc->retry_ms;
            if (w > retry)
                retry = w;
        }
    if (retry > 0) {
        d->kind = 'R';
        d->due_ms = now + retry;
        return;
    }
    c->inst.pc = p->pc;
    c->inst.iter = p->iter;
    if (p->done || !j) {
        d->kind = 'D';
        instance_encode(&c->inst, true, &d->blob);
        snprintf(labels, sizeof(labels), "journey=\"%.40s\",outcome=\"%s\"",
                 c->inst.journey, j ? "completed" : "journey-removed");
        metrics_counter_add(t->m, "crmsync_trigger_instances_total", labels, 1);
        return;
    }
    d->kind = 'A';
    d->due_ms = p->next_due_ms;
    instance_encode(&c->inst, false, &d->blob);
}

/* One round: claim, fire, act, complete. Returns timers claimed or -1. */
static long round_once(struct timer *t)
{
    int64_t now = now_ms();
    size_t n = 0, njobs = 0;
    struct action_job *jobs = NULL;
    size_t *first = NULL;
    const struct journey **js = NULL;
    char errstr[256];
    enum cs_err err;

    err = store_claim(&t->store, now, (size_t)t->tc->fire_batch,
                      t->tc->lease_ms, t->claims, &n, errstr, sizeof(errstr));
    if (err != CS_ERR_OK) {
        if (atomic_exchange(&t->healthy, false))
            LOG_WARN("timers paused: %s", errstr);
        return -1;
    }
    if (!atomic_exchange(&t->healthy, true))
        LOG_INFO("timers resumed");
    if (n == 0)
        return 0;
    jobs = calloc(n * ENGINE_MAX_ACTIONS, sizeof(*jobs));
    first = calloc(n, sizeof(*first));
    js = calloc(n, sizeof(*js));
    if (!jobs || !first || !js) {
        n = 0; /* leased: they fire again after the lease */
        goto out_free;
    }
    for (size_t i = 0; i < n; i++) {
        struct store_claim *c = &t->claims[i];
        struct engine_plan *p = &t->plans[i];
        memset(p, 0, sizeof(*p));
        metrics_histogram_observe(t->m, "crmsync_trigger_firing_lag_seconds",
                                  NULL, (double)(now - c->due_ms) / 1000.0);
        first[i] = njobs;
        if (c->decode_err != CS_ERR_OK) {
            LOG_ERROR("timer of a malformed instance dropped");
            p->done = true;
            continue;
        }
        js[i] = find_journey(t->js, &c->inst);
        if (!js[i]) {
            LOG_WARN("instance of journey '%s' (no longer configured) ended",
                     c->inst.journey);
            p->done = true;
            continue;
        }
        if (engine_fire(js[i], &c->inst, c->due_ms, now, p) != CS_ERR_OK) {
            LOG_WARN("instance of journey '%s' at step %u does not fit the "
                     "journey file any more: ended",
                     c->inst.journey, c->inst.pc);
            p->done = true;
            continue;
        }
        for (size_t k = 0; k < p->n; k++)
            jobs[njobs++] = (struct action_job){
                .ea = &p->actions[k], .in = &c->inst, .j = js[i]};
    }
    actions_run(t->actions, &t->store, jobs, njobs, now);
    for (size_t i = 0; i < n; i++) {
        size_t count = (i + 1 < n ? first[i + 1] : njobs) - first[i];
        for (size_t k = first[i]; k < first[i] + count; k++)
            count_action(t->m, &jobs[k]);
        complete_one(t, i, js[i], jobs, first[i], count, now);
    }
    metrics_counter_add(t->m, "crmsync_trigger_timers_fired_total", NULL,
                        (double)n);
    err = store_complete(&t->store, t->done, n, errstr, sizeof(errstr));
    if (err != CS_ERR_OK)
        LOG_WARN("timer completions not recorded (%s): they fire again after "
                 "the lease",
                 errstr);
    for (size_t i = 0; err == CS_ERR_OK && i < n; i++)
        if (t->done[i].result && strcmp(t->done[i].result, "conflict") == 0)
            metrics_counter_add(t->m, "crmsync_trigger_timer_conflicts_total",
                                NULL, 1);
out_free:
    for (size_t i = 0; i < (size_t)t->tc->fire_batch; i++) {
        buf_free(&t->done[i].blob);
        memset(&t->done[i], 0, sizeof(t->done[i]));
    }
    for (size_t i = 0; i < n; i++)
        instance_clear(&t->claims[i].inst);
    free(jobs);
    free(first);
    free(js);
    return (long)n;
}

static void *thread_main(void *arg)
{
    struct timer *t = arg;
    long backoff = t->tc->tick_ms;

    while (running(t)) {
        long n = round_once(t);
        if (n < 0) {
            nap(t, backoff);
            backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
            continue;
        }
        backoff = t->tc->tick_ms;
        if (n < t->tc->fire_batch)
            nap(t, t->tc->tick_ms);
    }
    return NULL;
}

struct timer *timer_start(const struct config *cfg,
                          const struct trigger_config *tc,
                          const struct journey_set *js, struct metrics *m,
                          volatile sig_atomic_t *run, char *errstr,
                          size_t errstr_size)
{
    struct timer *t = calloc(1, sizeof(*t));
    struct redis_conn_opts ro = {cfg->redis_url, cfg->redis_timeout_ms};

    if (!t) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    t->tc = tc;
    t->js = js;
    t->m = m;
    t->run = run;
    atomic_init(&t->stop, false);
    atomic_init(&t->healthy, true);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    t->claims = calloc((size_t)tc->fire_batch, sizeof(*t->claims));
    t->plans = calloc((size_t)tc->fire_batch, sizeof(*t->plans));
    t->done = calloc((size_t)tc->fire_batch, sizeof(*t->done));
    if (!t->claims || !t->plans || !t->done) {
        snprintf(errstr, errstr_size, "out of memory");
        goto out_fail;
    }
    t->redis = redis_conn_new(&ro, errstr, errstr_size);
    if (!t->redis)
        goto out_fail;
    store_init(&t->store, t->redis);
    t->actions = actions_new(cfg, tc, js, m, errstr, errstr_size);
    if (!t->actions)
        goto out_fail;
    metrics_describe(m, "crmsync_trigger_firing_lag_seconds", "histogram",
                     "Time from a timer's due time to its firing");
    metrics_describe(m, "crmsync_trigger_timers_fired_total", "counter",
                     "Timers claimed and fired");
    metrics_describe(m, "crmsync_trigger_actions_total", "counter",
                     "Journey actions by type and outcome");
    metrics_describe(m, "crmsync_trigger_timer_conflicts_total", "counter",
                     "Fired timers whose instance changed meanwhile (a "
                     "trigger arrived while firing)");
    if (pthread_create(&t->thread, NULL, thread_main, t) != 0) {
        snprintf(errstr, errstr_size, "cannot start the timer thread");
        goto out_fail;
    }
    t->started = true;
    return t;
out_fail:
    timer_stop(t);
    return NULL;
}

void timer_stop(struct timer *t)
{
    if (!t)
        return;
    atomic_store(&t->stop, true);
    timer_kick(t); /* ends a nap at once */
    if (t->started)
        pthread_join(t->thread, NULL);
    actions_free(t->actions);
    redis_conn_free(t->redis);
    free(t->claims);
    free(t->plans);
    free(t->done);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

bool timer_healthy(const struct timer *t)
{
    return atomic_load(&t->healthy);
}
