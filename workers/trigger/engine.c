/*
 * engine - journey step logic (see engine.h).
 *
 * Step phases kept in instance.iter:
 *   WAIT      0 entering, 1 waiting (the timer ends the wait)
 *   REMINDER  0 entering, k = 1..max: reminder k is due at this timer,
 *             max + 1: all sent, this timer is the final timeout
 *   BRANCH    0 entering, 1 waiting for an open/click (the timer is the
 *             "not within X" timeout)
 */
#include <stdlib.h>
#include <string.h>

#include "common/isotime.h"
#include "workers/trigger/engine.h"

static void add_action(struct engine_plan *p, const struct instance *in,
                       const struct jr_step *s, const struct jr_action *a,
                       unsigned pc, unsigned iter, int64_t at)
{
    struct engine_action *x = &p->actions[p->n++];
    x->a = a;
    x->step = s;
    x->pc = pc;
    x->iter = iter;
    x->at_ms = at;
    instance_action_id(in, pc, iter, x->id);
}

/* The stored value of attribute @p name, or NULL. */
static const char *stored_attr(const struct journey *j,
                               const struct instance *in, const char *name)
{
    for (size_t i = 0; i < j->nattrs && i < in->nattrs; i++)
        if (strcmp(j->attrs[i], name) == 0)
            return in->attrs[i];
    return NULL;
}

/* ISO 8601 or epoch milliseconds; -1 when neither. */
static int64_t parse_time(const char *v)
{
    char *end;
    long long ms;

    if (!v || !v[0])
        return -1;
    ms = strtoll(v, &end, 10);
    if (*end == '\0' && ms > 0)
        return ms;
    return isotime_parse(v);
}

/* The end of a reminder step: step deadline and trigger deadline. */
static int64_t reminder_deadline(const struct jr_step *s,
                                 const struct instance *in)
{
    int64_t dl = 0;
    if (s->deadline_ms > 0)
        dl = (int64_t)in->started_s * 1000 + s->deadline_ms;
    if (in->deadline_s > 0) {
        int64_t ev = (int64_t)in->deadline_s * 1000;
        if (dl == 0 || ev < dl)
            dl = ev;
    }
    return dl;
}

enum cs_err engine_fire(const struct journey *j, const struct instance *in,
                        int64_t due_ms, int64_t now_ms,
                        struct engine_plan *plan)
{
    unsigned pc = in->pc;
    unsigned iter = in->iter;
    int64_t t = due_ms;
    size_t guard = 4 * j->nsteps + 16;

    memset(plan, 0, sizeof(*plan));
    if (pc > j->nsteps)
        return CS_ERR_INVALID_ARG;
    while (guard-- > 0) {
        const struct jr_step *s;
        if (pc >= j->nsteps) {
            plan->done = true;
            break;
        }
        if (plan->n + 1 >= ENGINE_MAX_ACTIONS) {
            plan->next_due_ms = t; /* go on at the next firing */
            break;
        }
        s = &j->steps[pc];
        switch (s->kind) {
        case JR_STEP_ACTION:
            add_action(plan, in, s, &s->action, pc, 0, t);
            pc++;
            iter = 0;
            continue;
        case JR_STEP_JUMP:
            pc = (unsigned)s->target;
            iter = 0;
            continue;
        case JR_STEP_WAIT: {
            int64_t target;
            if (iter == 1) { /* the wait is over */
                pc++;
                iter = 0;
                continue;
            }
            if (s->until_attr) {
                target = parse_time(stored_attr(j, in, s->until_attr));
                if (target >= 0)
                    target += s->offset_ms;
                else
                    target = t; /* no such time: do not wait */
            } else if (s->until_ms > 0) {
                target = s->until_ms;
            } else {
                target = t + s->wait_ms;
            }
            if (target <= now_ms) {
                if (target > t)
                    t = target;
                pc++;
                iter = 0;
                continue;
            }
            iter = 1;
            plan->next_due_ms = target;
            break;
        }
        case JR_STEP_REMINDER: {
            int64_t dl = reminder_deadline(s, in);
            int64_t next;
            if (iter == 0) { /* entering: schedule the first reminder */
                next = t + s->first_after_ms;
                if (dl > 0 && next >= dl)
                    next = dl;
                iter = 1;
                if (next <= now_ms) {
                    t = next;
                    continue;
                }
                plan->next_due_ms = next;
                break;
            }
            if ((dl > 0 && (t >= dl || now_ms >= dl)) ||
                iter > (unsigned)s->max) {
                pc++; /* deadline or every reminder sent: step over */
                iter = 0;
                continue;
            }
            add_action(plan, in, s, &s->action, pc, iter, t);
            iter++;
            next = t + s->every_ms;
            if (now_ms - t > s->every_ms / 2) /* late (an outage): no */
                next = now_ms + s->every_ms;  /* burst, a full interval */
            if (dl > 0 && next > dl)
                next = dl;
            plan->next_due_ms = next;
            break;
        }
        case JR_STEP_BRANCH:
            if (iter == 0) {
                int64_t next = t + s->within_ms;
                iter = 1;
                if (next > now_ms) {
                    plan->next_due_ms = next;
                    break;
                }
                t = next;
            }
            /* no open/click within the time: the derived trigger, else */
            add_action(plan, in, s, NULL, pc, 0, t);
            pc = (unsigned)s->else_pc;
            iter = 0;
            continue;
        }
        break;
    }
    if (!plan->done && plan->next_due_ms == 0)
        plan->next_due_ms = t > now_ms ? t : now_ms; /* guard ran out */
    plan->pc = pc;
    plan->iter = iter;
    return CS_ERR_OK;
}

static bool in_list(char *const *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], name) == 0)
            return true;
    return false;
}

size_t engine_transitions(const struct journey *j, const char *name,
                          const struct jr_attrs *a, uint8_t *pairs,
                          size_t max_pairs)
{
    size_t n = 0;
    bool opened = strcmp(name, JOURNEY_TRIGGER_OPENED) == 0;
    bool clicked = strcmp(name, JOURNEY_TRIGGER_CLICKED) == 0;

    if (max_pairs == 0)
        return 0;
    if (journey_exits_on(j, name)) {
        pairs[0] = ENGINE_PC_ANY;
        pairs[1] = ENGINE_PC_EXIT;
        return 1;
    }
    for (size_t pc = 0; pc < j->nsteps && n < max_pairs; pc++) {
        const struct jr_step *s = &j->steps[pc];
        unsigned to;
        if (s->kind == JR_STEP_REMINDER && in_list(s->until, s->nuntil, name)) {
            to = (unsigned)pc + 1;
        } else if (s->kind == JR_STEP_BRANCH &&
                   ((s->on_click && clicked) || (!s->on_click && opened))) {
            const char *m = jr_attrs_get(a, "mailing_id");
            if (m && s->mailing && strcmp(m, s->mailing) != 0)
                continue; /* an open of another mailing */
            to = (unsigned)s->then_pc;
        } else {
            continue;
        }
        pairs[2 * n] = (uint8_t)pc;
        pairs[2 * n + 1] = (uint8_t)to;
        n++;
    }
    return n;
}
