/*
 * handler - trigger events -> journey starts and transitions (handler.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/kafka_loop.h"
#include "common/log.h"
#include "common/metrics.h"
#include "workers/trigger/engine.h"
#include "workers/trigger/handler.h"
#include "workers/trigger/instance.h"
#include "workers/trigger/store.h"
#include "workers/trigger/timer.h"

struct trigger_handler {
    const struct journey_set *js; /* borrowed */
    struct metrics *m;            /* borrowed */
    struct timer *timer;          /* borrowed, may be NULL */
    struct store store;           /* borrows the runtime's connection */
};

struct trigger_handler *trigger_handler_new(const struct journey_set *js,
                                            struct redis_conn *redis,
                                            struct metrics *m,
                                            struct timer *timer)
{
    struct trigger_handler *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->js = js;
    h->m = m;
    h->timer = timer;
    store_init(&h->store, redis);
    metrics_describe(m, "crmsync_trigger_instances_total", "counter",
                     "Journey instances by journey and what happened "
                     "(started, moved, exited, completed, refused ...)");
    metrics_describe(m, "crmsync_trigger_events_total", "counter",
                     "Trigger events by outcome (matched, no_journey, "
                     "expired)");
    return h;
}

void trigger_handler_free(struct trigger_handler *h)
{
    free(h);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool has_email_var(const char *tmpl)
{
    return tmpl && strstr(tmpl, "profile.email") != NULL;
}

/* Does a template of @p j use {{profile.email}}? Then the instance keeps
 * the address even when the profile has an id. */
static bool uses_email(const struct journey *j)
{
    for (size_t s = 0; s < j->nsteps; s++) {
        const struct jr_action *a = &j->steps[s].action;
        if (j->steps[s].kind != JR_STEP_ACTION &&
            j->steps[s].kind != JR_STEP_REMINDER)
            continue;
        if (has_email_var(a->subject) || has_email_var(a->description) ||
            has_email_var(a->owner))
            return true;
        for (size_t i = 0; i < a->nparams; i++)
            if (has_email_var(a->params[i].tmpl))
                return true;
    }
    return false;
}

/* Fills the start op of @p ev in journey @p j. */
static enum cs_err start_op(const struct journey *j,
                            const struct trigger_event *ev, struct store_op *op)
{
    struct instance in = {0};
    enum cs_err err;

    op->op = 'S';
    instance_key(ev->tenant, j->id, ev->entity_type, ev->entity_id, ev->email,
                 op->key);
    op->policy = j->reentry == JR_REENTRY_ONCE     ? 'o'
                 : j->reentry == JR_REENTRY_WINDOW ? 'w'
                                                   : 'a';
    op->window_s = j->reentry_window_ms / 1000;
    op->due_ms = ev->occurred_ms;
    in.status = INST_ACTIVE;
    in.started_s = (uint32_t)(ev->occurred_ms / 1000);
    in.deadline_s = (uint32_t)(ev->deadline_ms / 1000);
    instance_id_from_event(ev->event_id, in.id);
    snprintf(in.tenant, sizeof(in.tenant), "%s", ev->tenant);
    snprintf(in.journey, sizeof(in.journey), "%s", j->id);
    if (ev->entity_id) {
        snprintf(in.ptype, sizeof(in.ptype), "%s", ev->entity_type);
        snprintf(in.pid, sizeof(in.pid), "%s", ev->entity_id);
    }
    if (!ev->entity_id || uses_email(j)) /* else read when a mail goes */
        snprintf(in.email, sizeof(in.email), "%s", ev->email);
    in.nattrs = j->nattrs < INST_ATTRS_MAX ? j->nattrs : INST_ATTRS_MAX;
    for (size_t i = 0; i < in.nattrs; i++)
        in.attrs[i] = (char *)jr_attrs_get(&ev->attrs, j->attrs[i]);
    err = instance_encode(&in, false, &op->blob);
    return err;
}

static void count(struct metrics *m, const char *name, const char *journey,
                  const char *outcome)
{
    char labels[128];
    if (journey)
        snprintf(labels, sizeof(labels), "journey=\"%.40s\",outcome=\"%s\"",
                 journey, outcome);
    else
        snprintf(labels, sizeof(labels), "outcome=\"%s\"", outcome);
    metrics_counter_add(m, name, labels, 1);
}

void trigger_handler_process(void *ctx, struct kl_item **items, size_t n)
{
    struct trigger_handler *h = ctx;
    size_t cap = n * (2 * h->js->n) + 1;
    struct store_op *ops = calloc(cap, sizeof(*ops));
    const struct journey **owner = calloc(cap, sizeof(*owner));
    size_t nops = 0;
    int64_t now = now_ms();
    bool kick = false;
    char errstr[256];
    enum cs_err err;

    if (!ops || !owner) {
        for (size_t i = 0; i < n; i++)
            kl_item_fail(items[i], KL_RETRY, CS_ERR_NOMEM, "out of memory");
        goto out_free;
    }
    for (size_t i = 0; i < n; i++) {
        struct kl_item *it = items[i];
        struct trigger_event ev;
        bool matched = false;

        if (trigger_event_read(&it->value, &ev, it->reason,
                               sizeof(it->reason)) != CS_ERR_OK) {
            it->state = KL_DEAD;
            it->err = CS_ERR_INVALID_EVENT;
            count(h->m, "crmsync_trigger_events_total", NULL, "dead");
            continue;
        }
        for (size_t k = 0; k < h->js->n; k++) {
            const struct journey *j = &h->js->j[k];
            struct store_op *op;
            if (!journey_for_tenant(j, ev.tenant))
                continue;
            if (journey_starts(j, ev.tenant, ev.kind, ev.name, &ev.attrs)) {
                matched = true;
                if (ev.deadline_ms > 0 && ev.deadline_ms <= now) {
                    count(h->m, "crmsync_trigger_instances_total", j->id,
                          "expired");
                } else {
                    op = &ops[nops];
                    owner[nops++] = j;
                    if (start_op(j, &ev, op) != CS_ERR_OK) {
                        kl_item_fail(it, KL_RETRY, CS_ERR_NOMEM,
                                     "out of memory");
                        break;
                    }
                }
            }
            op = &ops[nops];
            op->npairs = engine_transitions(j, ev.name, &ev.attrs, op->pairs,
                                            sizeof(op->pairs) / 2);
            if (op->npairs > 0) {
                matched = true;
                op->op = 'T';
                instance_key(ev.tenant, j->id, ev.entity_type, ev.entity_id,
                             ev.email, op->key);
                op->occurred_s = (uint32_t)(ev.occurred_ms / 1000);
                op->due_ms = ev.occurred_ms;
                owner[nops++] = j;
            }
        }
        if (it->state == KL_RETRY)
            continue;
        if (matched) {
            it->state = KL_DONE;
            count(h->m, "crmsync_trigger_events_total", NULL, "matched");
        } else {
            it->state = KL_SKIPPED;
            it->skip_reason = "no-journey";
            count(h->m, "crmsync_trigger_events_total", NULL, "no_journey");
        }
    }
    err = store_transition(&h->store, ops, nops, errstr, sizeof(errstr));
    if (err != CS_ERR_OK) {
        for (size_t i = 0; i < n; i++)
            if (items[i]->state == KL_DONE || items[i]->state == KL_SKIPPED)
                kl_item_fail(items[i], KL_RETRY, err, "redis: %s", errstr);
        goto out_free;
    }
    for (size_t i = 0; i < nops; i++) {
        count(h->m, "crmsync_trigger_instances_total", owner[i]->id,
              ops[i].result ? ops[i].result : "unknown");
        if (ops[i].result && (strcmp(ops[i].result, "started") == 0 ||
                              strcmp(ops[i].result, "moved") == 0))
            kick = true;
    }
    if (kick)
        timer_kick(h->timer);
out_free:
    for (size_t i = 0; ops && i < nops; i++)
        buf_free(&ops[i].blob);
    free(ops);
    free(owner);
}

bool trigger_handler_healthy(void *ctx)
{
    struct trigger_handler *h = ctx;
    return !h->timer || timer_healthy(h->timer);
}
