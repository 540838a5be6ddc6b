/*
 * test_trigger_engine - the trigger worker's pure step logic (engine.c)
 * and the instance blob (instance.c), with explicit times: reminders
 * (rhythm, max, deadline, outage catch-up), waits, branches, jumps,
 * deterministic action ids, the transitions a trigger causes, and the
 * blob round trip.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/trigger/engine.h"
#include "workers/trigger/instance.h"
#include "workers/trigger/journey.h"

#define SEC  1000LL
#define HOUR (3600 * SEC)
#define DAY  (24 * HOUR)
#define T0   1790000000000LL /* journey start (whole seconds) */

static const char JOURNEYS[] =
    "journeys:\n"
    "  - id: abandoned-cart\n"
    "    start: {trigger: cart.abandoned}\n"
    "    reentry: once\n"
    "    exit_on: [contact.deleted]\n"
    "    steps:\n"
    "      - reminder:\n"
    "          action: {type: esp_mail, mailing: \"1001\", list: \"2001\"}\n"
    "          first_after: 1h\n"
    "          every: 24h\n"
    "          max: 3\n"
    "          until: [checkout.completed]\n"
    "          deadline: 7d\n"
    "  - id: short-cart\n"
    "    start: {trigger: cart.abandoned}\n"
    "    steps:\n"
    "      - reminder:\n"
    "          action: {type: esp_mail, mailing: \"1001\", list: \"2001\"}\n"
    "          first_after: 1h\n"
    "          every: 24h\n"
    "          max: 5\n"
    "          deadline: 2d\n"
    "  - id: waits\n"
    "    start: {trigger: appointment.booked}\n"
    "    steps:\n"
    "      - wait: {for: 2h}\n"
    "      - action: {type: produce, topic: t, trigger: w.one}\n"
    "      - wait: {until: \"2030-01-01T00:00:00Z\"}\n"
    "      - action: {type: produce, topic: t, trigger: w.two}\n"
    "      - wait: {until_attribute: appointment_at, offset: -1h}\n"
    "      - action: {type: produce, topic: t, trigger: w.three}\n"
    "  - id: branchy\n"
    "    start:\n"
    "      trigger: email.delivered\n"
    "      conditions:\n"
    "        - {attribute: mailing_id, op: eq, value: \"3001\"}\n"
    "    steps:\n"
    "      - branch:\n"
    "          on: opened\n"
    "          within: 2d\n"
    "          then:\n"
    "            - action: {type: produce, topic: t, trigger: b.then}\n"
    "          else:\n"
    "            - action: {type: esp_mail, mailing: \"3002\", list: "
    "\"2001\"}\n"
    "      - action: {type: produce, topic: t, trigger: b.after}\n"
    "  - id: chain\n"
    "    start: {trigger: opportunity.won}\n"
    "    steps:\n"
    "      - action: {type: produce, topic: t, trigger: c.one}\n"
    "      - action: {type: produce, topic: t, trigger: c.two}\n"
    "      - action: {type: produce, topic: t, trigger: c.three}\n";

static struct journey_set g_js; /* loaded by group_setup */

static int group_setup(void **state)
{
    char err[1024] = "";
    (void)state;
    if (journey_set_parse(JOURNEYS, strlen(JOURNEYS), "engine.yaml", &g_js, err,
                          sizeof(err)) != CS_ERR_OK) {
        fprintf(stderr, "journeys do not load: %s\n", err);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    journey_set_free(&g_js);
    return 0;
}

static const struct journey *jr(const char *id)
{
    for (size_t i = 0; i < g_js.n; i++)
        if (strcmp(g_js.j[i].id, id) == 0)
            return &g_js.j[i];
    fail_msg("journey %s not loaded", id);
    return NULL;
}

/* An active instance of @p j at its start (pc 0, iter 0). */
static void inst_init(struct instance *in, const struct journey *j,
                      const char *event_id)
{
    memset(in, 0, sizeof(*in));
    in->ver = 1;
    in->status = INST_ACTIVE;
    in->started_s = (uint32_t)(T0 / 1000);
    instance_id_from_event(event_id, in->id);
    snprintf(in->tenant, sizeof(in->tenant), "acme");
    snprintf(in->journey, sizeof(in->journey), "%s", j->id);
    snprintf(in->ptype, sizeof(in->ptype), "contact");
    snprintf(in->pid, sizeof(in->pid), "0f8fad5b-d9cb-469f-a165-70867728950e");
    snprintf(in->email, sizeof(in->email), "user@example.com");
}

/* engine_fire, which must succeed; moves @p in to the plan's position. */
static void fire(const struct journey *j, struct instance *in, int64_t due,
                 int64_t now, struct engine_plan *p)
{
    assert_int_equal(engine_fire(j, in, due, now, p), CS_ERR_OK);
    in->pc = p->pc;
    in->iter = p->iter;
}

/* ------------------------------------------------------------------ */
/* reminders                                                           */

static void test_reminder_rhythm_and_max(void **state)
{
    const struct journey *j = jr("abandoned-cart");
    struct instance in;
    struct engine_plan p;
    char ids[3][37];
    (void)state;

    inst_init(&in, j, "ev-1");
    /* entering: nothing sent, the first reminder 1 h after the start */
    fire(j, &in, T0, T0 + 50, &p);
    assert_int_equal(p.n, 0);
    assert_false(p.done);
    assert_int_equal(p.next_due_ms, T0 + HOUR);
    assert_int_equal(p.pc, 0);
    assert_int_equal(p.iter, 1);

    for (int k = 1; k <= 3; k++) {
        int64_t due = T0 + HOUR + (k - 1) * DAY;
        fire(j, &in, due, due + 200, &p);
        assert_int_equal(p.n, 1);
        assert_false(p.done);
        assert_ptr_equal(p.actions[0].a, &j->steps[0].action);
        assert_ptr_equal(p.actions[0].step, &j->steps[0]);
        assert_int_equal(p.actions[0].pc, 0);
        assert_int_equal(p.actions[0].iter, k);
        assert_int_equal(p.actions[0].at_ms, due);
        assert_int_equal(p.next_due_ms, due + DAY);
        assert_int_equal(p.iter, k + 1);
        snprintf(ids[k - 1], sizeof(ids[0]), "%s", p.actions[0].id);
    }
    assert_string_not_equal(ids[0], ids[1]);
    assert_string_not_equal(ids[1], ids[2]);
    /* after the third: the final timeout steps over and the journey ends */
    fire(j, &in, T0 + HOUR + 3 * DAY, T0 + HOUR + 3 * DAY, &p);
    assert_int_equal(p.n, 0);
    assert_true(p.done);
    assert_int_equal(p.pc, 1);
}

static void test_reminder_deadline_cuts(void **state)
{
    const struct journey *j = jr("short-cart"); /* max 5, deadline 2d */
    struct instance in;
    struct engine_plan p;
    (void)state;

    inst_init(&in, j, "ev-2");
    fire(j, &in, T0, T0, &p);
    assert_int_equal(p.next_due_ms, T0 + HOUR);
    fire(j, &in, T0 + HOUR, T0 + HOUR, &p);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.next_due_ms, T0 + 25 * HOUR);
    fire(j, &in, T0 + 25 * HOUR, T0 + 25 * HOUR, &p);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.actions[0].iter, 2);
    /* the third would be at 49 h: cut to the deadline */
    assert_int_equal(p.next_due_ms, T0 + 2 * DAY);
    fire(j, &in, T0 + 2 * DAY, T0 + 2 * DAY, &p);
    assert_int_equal(p.n, 0);
    assert_true(p.done);
}

static void test_reminder_trigger_deadline(void **state)
{
    const struct journey *j = jr("abandoned-cart");
    struct instance in;
    struct engine_plan p;
    (void)state;

    inst_init(&in, j, "ev-3");
    in.deadline_s = (uint32_t)((T0 + 30 * 60 * SEC) / 1000); /* 30 min */
    /* the first reminder (1 h) is past the trigger's deadline */
    fire(j, &in, T0, T0, &p);
    assert_int_equal(p.n, 0);
    assert_int_equal(p.next_due_ms, T0 + 30 * 60 * SEC);
    fire(j, &in, T0 + 30 * 60 * SEC, T0 + 30 * 60 * SEC, &p);
    assert_int_equal(p.n, 0);
    assert_true(p.done);
}

static void test_reminder_outage_no_burst(void **state)
{
    const struct journey *j = jr("abandoned-cart");
    struct instance in;
    struct engine_plan p;
    int64_t now = T0 + HOUR + 2 * DAY + 5 * HOUR; /* 3 reminders overdue */
    (void)state;

    inst_init(&in, j, "ev-4");
    fire(j, &in, T0, T0, &p);
    /* the worker was down from before the first reminder until `now` */
    fire(j, &in, T0 + HOUR, now, &p);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.actions[0].iter, 1);
    assert_int_equal(p.next_due_ms, now + DAY);
    fire(j, &in, now + DAY, now + DAY, &p);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.actions[0].iter, 2);

    /* down since the journey started: the first reminder only */
    inst_init(&in, j, "ev-5");
    fire(j, &in, T0, T0 + 10 * HOUR, &p);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.actions[0].iter, 1);
    assert_int_equal(p.actions[0].at_ms, T0 + HOUR);
    /* the rhythm is kept from the start (25 h), i.e. only 15 h after this
       late mail; see the report: an outage just under `every` would put
       two mails minutes apart */
    assert_true(p.next_due_ms > T0 + 10 * HOUR);
    assert_true(p.next_due_ms <= T0 + 10 * HOUR + DAY);
}

static void test_action_ids_deterministic(void **state)
{
    const struct journey *j = jr("abandoned-cart");
    struct instance a, b, c;
    struct engine_plan pa, pb, pc;
    (void)state;

    inst_init(&a, j, "ev-same");
    inst_init(&b, j, "ev-same");
    inst_init(&c, j, "ev-other");
    a.iter = b.iter = c.iter = 1;
    fire(j, &a, T0 + HOUR, T0 + HOUR, &pa);
    fire(j, &b, T0 + HOUR, T0 + 2 * HOUR, &pb); /* re-fired later */
    fire(j, &c, T0 + HOUR, T0 + HOUR, &pc);
    assert_int_equal(pa.n, 1);
    assert_int_equal(pb.n, 1);
    assert_int_equal(pc.n, 1);
    assert_int_equal(strlen(pa.actions[0].id), 36);
    assert_string_equal(pa.actions[0].id, pb.actions[0].id);
    assert_string_not_equal(pa.actions[0].id, pc.actions[0].id);

    char x[37], y[37], z[37];
    instance_action_id(&a, 0, 1, x);
    instance_action_id(&a, 0, 2, y);
    instance_action_id(&a, 1, 1, z);
    assert_string_equal(x, pa.actions[0].id);
    assert_string_not_equal(x, y);
    assert_string_not_equal(x, z);
}

/* ------------------------------------------------------------------ */
/* waits                                                               */

static void test_wait_for_and_until(void **state)
{
    const struct journey *j = jr("waits");
    struct instance in;
    struct engine_plan p;
    int64_t until = 1893456000000LL; /* 2030-01-01T00:00:00Z */
    (void)state;

    inst_init(&in, j, "ev-w1");
    fire(j, &in, T0, T0, &p);
    assert_int_equal(p.n, 0);
    assert_int_equal(p.next_due_ms, T0 + 2 * HOUR);
    assert_int_equal(p.pc, 0);
    assert_int_equal(p.iter, 1);
    /* the wait ends: action 1, then the absolute wait */
    fire(j, &in, T0 + 2 * HOUR, T0 + 2 * HOUR, &p);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.actions[0].pc, 1);
    assert_string_equal(p.actions[0].a->name, "w.one");
    assert_int_equal(p.actions[0].at_ms, T0 + 2 * HOUR);
    assert_int_equal(p.next_due_ms, until);
    assert_int_equal(p.pc, 2);
    /* no appointment_at attribute: no third wait */
    fire(j, &in, until, until, &p);
    assert_int_equal(p.n, 2);
    assert_string_equal(p.actions[0].a->name, "w.two");
    assert_string_equal(p.actions[1].a->name, "w.three");
    assert_true(p.done);
}

static void test_wait_until_attribute(void **state)
{
    const struct journey *j = jr("waits");
    struct instance in;
    struct engine_plan p;
    int64_t appt = 1893456000000LL + 10 * DAY; /* after the until wait */
    char iso[] = "2030-01-11T00:00:00Z";
    char epoch[32];
    (void)state;

    assert_int_equal(j->nattrs, 1);
    assert_string_equal(j->attrs[0], "appointment_at");
    for (int form = 0; form < 2; form++) {
        inst_init(&in, j, "ev-w2");
        in.nattrs = 1;
        snprintf(epoch, sizeof(epoch), "%lld", (long long)appt);
        in.attrs[0] = form == 0 ? iso : epoch;
        in.pc = 4; /* at the attribute wait */
        in.iter = 0;
        assert_int_equal(engine_fire(j, &in, T0, T0, &p), CS_ERR_OK);
        assert_int_equal(p.n, 0);
        assert_int_equal(p.next_due_ms, appt - HOUR);
        assert_int_equal(p.pc, 4);
        assert_int_equal(p.iter, 1);
    }
    /* a time already past: straight on */
    inst_init(&in, j, "ev-w3");
    in.nattrs = 1;
    snprintf(epoch, sizeof(epoch), "%lld", (long long)(T0 - DAY));
    in.attrs[0] = epoch;
    in.pc = 4;
    assert_int_equal(engine_fire(j, &in, T0, T0, &p), CS_ERR_OK);
    assert_int_equal(p.n, 1);
    assert_string_equal(p.actions[0].a->name, "w.three");
    assert_true(p.done);
    /* not a time: no wait */
    in.attrs[0] = (char *)"soon";
    assert_int_equal(engine_fire(j, &in, T0, T0, &p), CS_ERR_OK);
    assert_int_equal(p.n, 1);
    assert_true(p.done);
    memset(in.attrs, 0, sizeof(in.attrs)); /* borrowed, not freed */
}

/* ------------------------------------------------------------------ */
/* branches, jumps, chains                                             */

static void test_branch_timeout_else(void **state)
{
    const struct journey *j = jr("branchy");
    struct instance in;
    struct engine_plan p;
    (void)state;

    /* compiled: 0 BRANCH, 1 then-action, 2 JUMP 4, 3 else-action, 4 */
    assert_int_equal(j->nsteps, 5);
    assert_int_equal(j->steps[0].kind, JR_STEP_BRANCH);
    assert_int_equal(j->steps[0].then_pc, 1);
    assert_int_equal(j->steps[0].else_pc, 3);
    assert_int_equal(j->steps[2].kind, JR_STEP_JUMP);
    assert_int_equal(j->steps[2].target, 4);
    assert_string_equal(j->steps[0].mailing, "3001");

    inst_init(&in, j, "ev-b1");
    fire(j, &in, T0, T0, &p);
    assert_int_equal(p.n, 0);
    assert_int_equal(p.next_due_ms, T0 + 2 * DAY);
    assert_int_equal(p.iter, 1);
    /* no open within 2 days: derived trigger, else, the step after */
    fire(j, &in, T0 + 2 * DAY, T0 + 2 * DAY + 10, &p);
    assert_int_equal(p.n, 3);
    assert_null(p.actions[0].a);
    assert_ptr_equal(p.actions[0].step, &j->steps[0]);
    assert_int_equal(p.actions[0].pc, 0);
    assert_int_equal(p.actions[0].at_ms, T0 + 2 * DAY);
    assert_int_equal(p.actions[1].pc, 3);
    assert_int_equal(p.actions[1].a->type, JR_ACT_ESP_MAIL);
    assert_string_equal(p.actions[1].a->mailing, "3002");
    assert_int_equal(p.actions[2].pc, 4);
    assert_string_equal(p.actions[2].a->name, "b.after");
    assert_true(p.done);
}

static void test_branch_then_jumps(void **state)
{
    const struct journey *j = jr("branchy");
    struct instance in;
    struct engine_plan p;
    (void)state;

    /* an open moved the instance to then_pc (iter 0) */
    inst_init(&in, j, "ev-b2");
    in.pc = 1;
    fire(j, &in, T0 + HOUR, T0 + HOUR, &p);
    assert_int_equal(p.n, 2);
    assert_string_equal(p.actions[0].a->name, "b.then");
    assert_int_equal(p.actions[1].pc, 4); /* the else list was jumped over */
    assert_string_equal(p.actions[1].a->name, "b.after");
    assert_true(p.done);
}

static void test_action_chain_and_done(void **state)
{
    const struct journey *j = jr("chain");
    struct instance in;
    struct engine_plan p;
    (void)state;

    inst_init(&in, j, "ev-c1");
    fire(j, &in, T0, T0 + 5, &p);
    assert_int_equal(p.n, 3);
    for (unsigned k = 0; k < 3; k++) {
        assert_int_equal(p.actions[k].pc, k);
        assert_int_equal(p.actions[k].iter, 0);
        assert_int_equal(p.actions[k].at_ms, T0);
    }
    assert_string_equal(p.actions[2].a->name, "c.three");
    assert_true(p.done);
    assert_int_equal(p.pc, 3);
    /* pc at the end: done at once; beyond it: the file changed */
    in.pc = 3;
    assert_int_equal(engine_fire(j, &in, T0, T0, &p), CS_ERR_OK);
    assert_true(p.done);
    assert_int_equal(p.n, 0);
    in.pc = 9;
    assert_int_equal(engine_fire(j, &in, T0, T0, &p), CS_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------ */
/* transitions                                                         */

static void test_transitions(void **state)
{
    uint8_t pairs[2 * 8];
    const char *mn[] = {"mailing_id"};
    const char *mv_ok[] = {"3001"};
    const char *mv_other[] = {"9999"};
    struct jr_attrs none = {NULL, NULL, 0};
    struct jr_attrs ok = {mn, mv_ok, 1};
    struct jr_attrs other = {mn, mv_other, 1};
    (void)state;

    memset(pairs, 0, sizeof(pairs));
    assert_int_equal(engine_transitions(jr("abandoned-cart"), "contact.deleted",
                                        &none, pairs, 8),
                     1);
    assert_int_equal(pairs[0], ENGINE_PC_ANY);
    assert_int_equal(pairs[1], ENGINE_PC_EXIT);

    assert_int_equal(engine_transitions(jr("abandoned-cart"),
                                        "checkout.completed", &none, pairs, 8),
                     1);
    assert_int_equal(pairs[0], 0);
    assert_int_equal(pairs[1], 1);

    assert_int_equal(engine_transitions(jr("branchy"), JOURNEY_TRIGGER_OPENED,
                                        &ok, pairs, 8),
                     1);
    assert_int_equal(pairs[0], 0);
    assert_int_equal(pairs[1], 1);
    assert_int_equal(engine_transitions(jr("branchy"), JOURNEY_TRIGGER_OPENED,
                                        &other, pairs, 8),
                     0);
    assert_int_equal(engine_transitions(jr("branchy"), JOURNEY_TRIGGER_CLICKED,
                                        &ok, pairs, 8),
                     0);
    assert_int_equal(engine_transitions(jr("abandoned-cart"), "cart.viewed",
                                        &none, pairs, 8),
                     0);
    assert_int_equal(engine_transitions(jr("abandoned-cart"),
                                        "checkout.completed", &none, pairs, 0),
                     0);
}

/* ------------------------------------------------------------------ */
/* the instance blob                                                   */

static void test_instance_round_trip(void **state)
{
    struct instance in, out;
    struct buf b = {0};
    char v0[] = "2030-01-11T00:00:00Z", v1[] = "", v2[] = "x y z";
    (void)state;

    inst_init(&in, jr("waits"), "ev-r1");
    in.ver = 513;
    in.pc = 7;
    in.iter = 3;
    in.deadline_s = 1790600000u;
    in.slot = 179000123u;
    in.slot_n = 4;
    in.nattrs = 3;
    in.attrs[0] = v0;
    in.attrs[1] = v1;
    in.attrs[2] = v2;
    assert_int_equal(instance_encode(&in, false, &b), CS_ERR_OK);
    assert_true(b.len > INST_HDR_LEN + INST_ID_LEN);
    assert_int_equal((uint8_t)b.data[0], 513 & 0xff);
    assert_int_equal((uint8_t)b.data[1], 513 >> 8);
    assert_int_equal(instance_decode(b.data, b.len, &out), CS_ERR_OK);
    assert_int_equal(out.ver, 513);
    assert_int_equal(out.status, INST_ACTIVE);
    assert_int_equal(out.pc, 7);
    assert_int_equal(out.iter, 3);
    assert_int_equal(out.started_s, in.started_s);
    assert_int_equal(out.deadline_s, 1790600000u);
    assert_int_equal(out.slot, 179000123u);
    assert_int_equal(out.slot_n, 4);
    assert_memory_equal(out.id, in.id, INST_ID_LEN);
    assert_string_equal(out.tenant, "acme");
    assert_string_equal(out.journey, ""); /* stored as a hash */
    assert_int_equal(out.journey_hash, instance_journey_hash("waits"));
    assert_string_equal(out.ptype, "contact");
    assert_string_equal(out.pid, "0f8fad5b-d9cb-469f-a165-70867728950e");
    assert_string_equal(out.email, "user@example.com");
    assert_int_equal(out.nattrs, 3);
    assert_string_equal(out.attrs[0], v0);
    assert_string_equal(out.attrs[1], "");
    assert_string_equal(out.attrs[2], "x y z");
    instance_clear(&out);
    assert_null(out.attrs[0]);

    /* header only: decodes with empty context */
    b.len = 0;
    assert_int_equal(instance_encode(&in, true, &b), CS_ERR_OK);
    assert_int_equal(b.len, INST_HDR_LEN + INST_ID_LEN);
    assert_int_equal(instance_decode(b.data, b.len, &out), CS_ERR_OK);
    assert_int_equal(out.pc, 7);
    assert_memory_equal(out.id, in.id, INST_ID_LEN);
    assert_string_equal(out.tenant, "");
    assert_int_equal(out.nattrs, 0);
    instance_clear(&out);

    /* an email-only profile */
    b.len = 0;
    in.ptype[0] = '\0';
    in.pid[0] = '\0';
    in.nattrs = 0;
    assert_int_equal(instance_encode(&in, false, &b), CS_ERR_OK);
    assert_int_equal(instance_decode(b.data, b.len, &out), CS_ERR_OK);
    assert_string_equal(out.ptype, "");
    assert_string_equal(out.pid, "");
    assert_string_equal(out.email, "user@example.com");
    instance_clear(&out);
    buf_free(&b);
}

static void test_instance_malformed(void **state)
{
    struct instance in, out;
    struct buf b = {0};
    char v0[] = "value";
    (void)state;

    inst_init(&in, jr("waits"), "ev-m1");
    in.nattrs = 1;
    in.attrs[0] = v0;
    assert_int_equal(instance_encode(&in, false, &b), CS_ERR_OK);
    /* every truncation but the header-only length is an error */
    for (size_t len = 0; len < b.len; len++) {
        enum cs_err e = instance_decode(b.data, len, &out);
        if (len == INST_HDR_LEN + INST_ID_LEN)
            assert_int_equal(e, CS_ERR_OK);
        else if (e != CS_ERR_REDIS_PROTOCOL)
            fail_msg("truncated to %zu of %zu bytes: %d", len, b.len, (int)e);
        instance_clear(&out);
    }
    /* an attribute count over INST_ATTRS_MAX */
    b.data[b.len - (2 + strlen(v0)) - 1] = (char)(INST_ATTRS_MAX + 1);
    assert_int_equal(instance_decode(b.data, b.len, &out),
                     CS_ERR_REDIS_PROTOCOL);
    buf_free(&b);
    /* garbage */
    assert_int_equal(instance_decode("\x01\x02\x03", 3, &out),
                     CS_ERR_REDIS_PROTOCOL);
}

static void test_instance_key(void **state)
{
    uint8_t a[INST_KEY_LEN], b[INST_KEY_LEN], c[INST_KEY_LEN], d[INST_KEY_LEN];
    uint8_t i1[INST_ID_LEN], i2[INST_ID_LEN];
    (void)state;

    instance_key("acme", "j", "contact", "0f8fad5b-d9cb-469f-a165-70867728950e",
                 "x@example.com", a);
    instance_key("acme", "j", "contact", "0f8fad5b-d9cb-469f-a165-70867728950e",
                 "y@example.com", b);
    instance_key("acme", "k", "contact", "0f8fad5b-d9cb-469f-a165-70867728950e",
                 NULL, c);
    instance_key("acme", "j", NULL, NULL, "x@example.com", d);
    assert_memory_equal(a, b, INST_KEY_LEN); /* the GUID wins */
    assert_memory_not_equal(a, c, INST_KEY_LEN);
    assert_memory_not_equal(a, d, INST_KEY_LEN);
    instance_id_from_event("e1", i1);
    instance_id_from_event("e2", i2);
    assert_memory_not_equal(i1, i2, INST_ID_LEN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reminder_rhythm_and_max),
        cmocka_unit_test(test_reminder_deadline_cuts),
        cmocka_unit_test(test_reminder_trigger_deadline),
        cmocka_unit_test(test_reminder_outage_no_burst),
        cmocka_unit_test(test_action_ids_deterministic),
        cmocka_unit_test(test_wait_for_and_until),
        cmocka_unit_test(test_wait_until_attribute),
        cmocka_unit_test(test_branch_timeout_else),
        cmocka_unit_test(test_branch_then_jumps),
        cmocka_unit_test(test_action_chain_and_done),
        cmocka_unit_test(test_transitions),
        cmocka_unit_test(test_instance_round_trip),
        cmocka_unit_test(test_instance_malformed),
        cmocka_unit_test(test_instance_key),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
