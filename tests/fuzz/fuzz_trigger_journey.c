/*
 * fuzz_trigger_journey - journey files of the trigger worker (operator
 * input, read at start): journey_set_parse() must neither crash nor leak on
 * any bytes, and what it accepts must be a well-formed program (every
 * branch/jump target inside the step list, every branch with its mailing)
 * that journey_starts() and journey_render() handle. The input is also fed
 * to journey_parse_duration() as a string.
 * Seeds (tests/fuzz/corpus/trigger_journey/): workers/trigger/
 * journeys.example.yaml, the journeys of tests/integration/
 * test_trigger_worker.py and bench/trigger_bench.py, the valid and invalid
 * documents of tests/unit/test_trigger_journey.c and a few durations.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "workers/trigger/journey.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_ATTRS 16

/* Aborts unless every pc of the compiled program is in [0, nsteps]. */
static void check_program(const struct journey *j)
{
    int n = (int)j->nsteps;

    if (j->id == NULL || j->start_trigger == NULL || j->nsteps == 0 ||
        j->nsteps > JOURNEY_MAX_STEPS)
        abort();
    for (size_t i = 0; i < j->nsteps; i++) {
        const struct jr_step *st = &j->steps[i];
        if (st->kind == JR_STEP_BRANCH &&
            (st->mailing == NULL || st->then_pc != (int)i + 1 ||
             st->else_pc < 0 || st->else_pc > n))
            abort();
        if (st->kind == JR_STEP_JUMP &&
            (st->target <= (int)i || st->target > n))
            abort();
    }
}

/* Renders one template (NULL: none) and frees the result. */
static void render(const char *tmpl, const struct jr_vars *v)
{
    if (tmpl)
        free(journey_render(tmpl, v));
}

/* Runs the matching and rendering entry points on a loaded journey, with
 * event attributes taken from its own conditions. */
static void exercise(const struct journey *j)
{
    const char *names[FUZZ_MAX_ATTRS];
    const char *values[FUZZ_MAX_ATTRS];
    struct jr_attrs a = {names, values, 0};
    struct jr_vars v = {&a,    "contact", "0000-1", "a@example.com",
                        j->id, "acme",    2};

    for (size_t k = 0; k < j->nconds && a.n < FUZZ_MAX_ATTRS; k++) {
        const struct jr_condition *c = &j->conds[k];
        if (jr_attrs_get(&a, c->attr) != NULL)
            continue; /* names must be unique */
        names[a.n] = c->attr;
        values[a.n] = c->nvalues > 0 ? c->values[0] : "1";
        a.n++;
    }
    (void)journey_starts(j, "acme", JR_KIND_CUSTOM, j->start_trigger, &a);
    (void)journey_starts(j, NULL, JR_KIND_BEHAVIOURAL, "x.y", NULL);
    (void)journey_exits_on(j, j->start_trigger);
    (void)journey_for_tenant(j, "acme");
    for (size_t i = 0; i < j->nsteps; i++) {
        const struct jr_action *act = &j->steps[i].action;
        if (j->steps[i].kind != JR_STEP_ACTION &&
            j->steps[i].kind != JR_STEP_REMINDER)
            continue;
        render(act->subject, &v);
        render(act->description, &v);
        render(act->owner, &v);
        for (size_t k = 0; k < act->nparams; k++)
            render(act->params[k].tmpl, &v);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct journey_set s = {0};
    char err[512];
    char *text = malloc(size + 1);
    int64_t ms;

    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (journey_parse_duration(text, &ms) && ms < 0)
        abort(); /* digits and a unit never make a negative duration */
    if (journey_set_parse(text, size, "fuzz.yaml", &s, err, sizeof(err)) ==
        CS_ERR_OK) {
        if (s.n == 0)
            abort();
        for (size_t i = 0; i < s.n; i++) {
            check_program(&s.j[i]);
            exercise(&s.j[i]);
        }
    }
    journey_set_free(&s);
    free(text);
    return 0;
}
