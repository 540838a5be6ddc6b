/*
 * test_bounce_state - the bounce worker's Redis script (workers/bounce/
 * state.c) against a real redis-server started on a free port.
 *
 * Covers docs/bounce.md "Latest event time wins" (compare-and-set of the
 * last applied change per key, done markers, suppression sets) and the
 * bounce counters (threshold within a window, resets). Every test starts
 * with an empty database and checks the verdicts and what Redis holds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "common/redis_conn.h"
#include "tests/support/redis_server.h"
#include "workers/bounce/state.h"

#define ADMIN_TIMEOUT_MS 1000
#define TTL_MS           (7LL * 86400000) /* state.ttl_days = 7 */
#define DAY              86400000LL
#define WINDOW           (10 * DAY)
#define THRESHOLD        3
#define T0               1763800000000LL
#define EMAIL            "anna@example.com"
#define KEY_C            "cs:bo:c:tenant-a|anna@example.com|consent-1"
#define SUP_C            "cs:sup:c:tenant-a|consent-1"
#define KEY_B            "cs:bo:b:anna@example.com"
#define KEY_N            "cs:bo:n:tenant-a|anna@example.com|h"
#define PFX              "thr|tenant-a|h|"

struct fixture {
    struct redis_server redis; /* the group's server */
    struct redis_conn *rc;     /* owned; borrowed by st */
    struct bounce_state st;
    redisContext *admin; /* owned; inspects what the script wrote */
};

static int group_setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    char url[64];
    char errstr[256] = "";
    struct redis_conn_opts ro = {.url = url, .timeout_ms = 2000};

    if (!fx)
        return -1;
    if (!rs_init_local(&fx->redis, NULL, ADMIN_TIMEOUT_MS) ||
        !rs_start(&fx->redis)) {
        fprintf(stderr, "redis-server did not start\n");
        free(fx);
        return -1;
    }
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", fx->redis.port);
    fx->rc = redis_conn_new(&ro, errstr, sizeof(errstr));
    fx->admin = rs_connect(&fx->redis);
    if (!fx->rc || !fx->admin) {
        fprintf(stderr, "connect: %s\n", errstr);
        redis_conn_free(fx->rc);
        if (fx->admin)
            redisFree(fx->admin);
        rs_stop(&fx->redis, SIGTERM);
        free(fx);
        return -1;
    }
    bounce_state_init(&fx->st, fx->rc, TTL_MS);
    *state = fx;
    return 0;
}

static int group_teardown(void **state)
{
    struct fixture *fx = *state;

    redisFree(fx->admin);
    redis_conn_free(fx->rc);
    rs_stop(&fx->redis, SIGTERM);
    free(fx);
    return 0;
}

/* Each test starts with an empty database. */
static int test_setup(void **state)
{
    struct fixture *fx = *state;
    redisReply *r = redisCommand(fx->admin, "FLUSHALL");

    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

/* ---- helpers ---- */

static struct bounce_state_op op_s(const char *key, int64_t t, int value,
                                   const char *eid, const char *sup)
{
    struct bounce_state_op op = {
        .type = 'S',
        .key = key,
        .t = t,
        .value = value,
        .eid = eid,
        .sup_key = sup,
        .member = EMAIL,
        .verdict = (enum bounce_verdict) - 1,
        .cross_t = -1,
    };
    return op;
}

/* A bounce status reset (value 0, moves r). */
static struct bounce_state_op op_reset(int64_t t, const char *eid)
{
    struct bounce_state_op op = op_s(KEY_B, t, 0, eid, BOUNCE_SUP_BOUNCED);
    op.reset = true;
    return op;
}

/* A hard bounce of EMAIL for tenant-a: threshold 3 in 10 days. */
static struct bounce_state_op op_c(int64_t t, const char *eid)
{
    struct bounce_state_op op = {
        .type = 'C',
        .key = KEY_N,
        .t = t,
        .eid = eid,
        .sup_key = BOUNCE_SUP_BOUNCED,
        .member = EMAIL,
        .status_key = KEY_B,
        .threshold = THRESHOLD,
        .window_ms = WINDOW,
        .thr_prefix = PFX,
        .verdict = (enum bounce_verdict) - 1,
        .cross_t = -1,
    };
    return op;
}

static void run(struct fixture *fx, const struct bounce_done *done, size_t nd,
                struct bounce_state_op *ops, size_t n)
{
    char errstr[256] = "";
    enum cs_err err =
        bounce_state_run(&fx->st, done, nd, ops, n, errstr, sizeof(errstr));

    if (err != CS_ERR_OK)
        fail_msg("bounce_state_run: %s: %s", cs_err_name(err), errstr);
}

/* Runs one op alone and returns its verdict. */
static enum bounce_verdict run1(struct fixture *fx, struct bounce_state_op op)
{
    run(fx, NULL, 0, &op, 1);
    return op.verdict;
}

/* Runs one counter op, checks its verdict and crossing time. */
static void count1(struct fixture *fx, int64_t t, const char *eid,
                   enum bounce_verdict want, int64_t want_cross)
{
    struct bounce_state_op op = op_c(t, eid);

    run(fx, NULL, 0, &op, 1);
    if (op.verdict != want)
        fail_msg("bounce %s at T0%+lldd: verdict %d, want %d", eid,
                 (long long)((t - T0) / DAY), op.verdict, want);
    if (want == BOUNCE_V_APPLY || want == BOUNCE_V_DUPLICATE)
        assert_int_equal(op.cross_t, want_cross);
}

/* HGET key field as a long long; -1 when absent. */
static long long hget_ll(struct fixture *fx, const char *key, const char *f)
{
    redisReply *r = redisCommand(fx->admin, "HGET %s %s", key, f);
    long long v = -1;

    assert_non_null(r);
    if (r->type == REDIS_REPLY_STRING)
        v = strtoll(r->str, NULL, 10);
    freeReplyObject(r);
    return v;
}

/* Asserts HGET key field == want (NULL: absent). */
static void assert_hget(struct fixture *fx, const char *key, const char *f,
                        const char *want)
{
    redisReply *r = redisCommand(fx->admin, "HGET %s %s", key, f);

    assert_non_null(r);
    if (!want)
        assert_int_equal(r->type, REDIS_REPLY_NIL);
    else {
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        assert_string_equal(r->str, want);
    }
    freeReplyObject(r);
}

static long long cmd_int(struct fixture *fx, const char *fmt, const char *a,
                         const char *b)
{
    redisReply *r = redisCommand(fx->admin, fmt, a, b);
    long long v;

    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    v = r->integer;
    freeReplyObject(r);
    return v;
}

static bool in_set(struct fixture *fx, const char *set)
{
    return cmd_int(fx, "SISMEMBER %s %s", set, EMAIL) == 1;
}

static long long pttl(struct fixture *fx, const char *key)
{
    return cmd_int(fx, "PTTL %s%s", key, "");
}

static void assert_t(struct fixture *fx, const char *key, int64_t t)
{
    assert_int_equal(hget_ll(fx, key, "t"), t);
}

/* ---- compare-and-set ---- */

static void test_newer_applies(void **state)
{
    struct fixture *fx = *state;

    assert_int_equal(run1(fx, op_s(KEY_C, T0, 1, "e1", SUP_C)), BOUNCE_V_APPLY);
    assert_t(fx, KEY_C, T0);
    assert_hget(fx, KEY_C, "v", "1");
    assert_hget(fx, KEY_C, "e", "e1");
    assert_hget(fx, KEY_C, "d", "0");
    assert_true(in_set(fx, SUP_C));
    assert_true(pttl(fx, KEY_C) > 0);
    assert_true(pttl(fx, KEY_C) <= TTL_MS);

    /* newer opt-in: applies, leaves the suppression set */
    assert_int_equal(run1(fx, op_s(KEY_C, T0 + 1000, 0, "e2", SUP_C)),
                     BOUNCE_V_APPLY);
    assert_t(fx, KEY_C, T0 + 1000);
    assert_hget(fx, KEY_C, "v", "0");
    assert_hget(fx, KEY_C, "e", "e2");
    assert_false(in_set(fx, SUP_C));

    /* newer opt-out again */
    assert_int_equal(run1(fx, op_s(KEY_C, T0 + 2000, 1, "e3", SUP_C)),
                     BOUNCE_V_APPLY);
    assert_true(in_set(fx, SUP_C));
}

static void test_older_is_stale(void **state)
{
    struct fixture *fx = *state;

    assert_int_equal(run1(fx, op_s(KEY_C, T0, 0, "in", SUP_C)), BOUNCE_V_APPLY);
    assert_false(in_set(fx, SUP_C));
    /* an older opt-out changes nothing, not even the suppression set */
    assert_int_equal(run1(fx, op_s(KEY_C, T0 - 1, 1, "old-out", SUP_C)),
                     BOUNCE_V_STALE);
    assert_t(fx, KEY_C, T0);
    assert_hget(fx, KEY_C, "v", "0");
    assert_hget(fx, KEY_C, "e", "in");
    assert_false(in_set(fx, SUP_C));

    /* and an older opt-in does not remove a newer opt-out */
    assert_int_equal(run1(fx, op_s(KEY_C, T0 + 5000, 1, "out", SUP_C)),
                     BOUNCE_V_APPLY);
    assert_int_equal(run1(fx, op_s(KEY_C, T0 + 4000, 0, "old-in", SUP_C)),
                     BOUNCE_V_STALE);
    assert_true(in_set(fx, SUP_C));
    assert_hget(fx, KEY_C, "e", "out");
}

static void test_same_event_retry_then_done(void **state)
{
    struct fixture *fx = *state;
    struct bounce_done other = {KEY_C, "someone-else"};
    struct bounce_done done = {KEY_C, "e1"};
    struct bounce_state_op op;

    assert_int_equal(run1(fx, op_s(KEY_C, T0, 1, "e1", SUP_C)), BOUNCE_V_APPLY);
    /* redelivered before its CRM write was done: apply again */
    assert_int_equal(run1(fx, op_s(KEY_C, T0, 1, "e1", SUP_C)), BOUNCE_V_APPLY);
    assert_hget(fx, KEY_C, "d", "0");
    /* a done marker of another event id does not mark this one */
    op = op_s(KEY_C, T0, 1, "e1", SUP_C);
    run(fx, &other, 1, &op, 1);
    assert_int_equal(op.verdict, BOUNCE_V_APPLY);
    assert_hget(fx, KEY_C, "d", "0");
    /* the done marker runs before the ops of the same run */
    op = op_s(KEY_C, T0, 1, "e1", SUP_C);
    run(fx, &done, 1, &op, 1);
    assert_int_equal(op.verdict, BOUNCE_V_DUPLICATE);
    assert_hget(fx, KEY_C, "d", "1");
    assert_int_equal(run1(fx, op_s(KEY_C, T0, 1, "e1", SUP_C)),
                     BOUNCE_V_DUPLICATE);
    assert_true(in_set(fx, SUP_C));
}

static void test_same_time_same_value_other_id(void **state)
{
    struct fixture *fx = *state;

    assert_int_equal(run1(fx, op_s(KEY_C, T0, 1, "esp-1", SUP_C)),
                     BOUNCE_V_APPLY);
    /* re-reported by the ESP with a new event id */
    assert_int_equal(run1(fx, op_s(KEY_C, T0, 1, "esp-2", SUP_C)),
                     BOUNCE_V_DUPLICATE);
    assert_hget(fx, KEY_C, "e", "esp-1");
    assert_true(in_set(fx, SUP_C));
}

static void test_same_time_opt_out_wins(void **state)
{
    struct fixture *fx = *state;
    const char *key2 = "cs:bo:c:tenant-a|anna@example.com|consent-2";
    const char *sup2 = "cs:sup:c:tenant-a|consent-2";

    /* in, then out at the same time: out wins */
    assert_int_equal(run1(fx, op_s(KEY_C, T0, 0, "in", SUP_C)), BOUNCE_V_APPLY);
    assert_int_equal(run1(fx, op_s(KEY_C, T0, 1, "out", SUP_C)),
                     BOUNCE_V_APPLY);
    assert_hget(fx, KEY_C, "v", "1");
    assert_hget(fx, KEY_C, "e", "out");
    assert_true(in_set(fx, SUP_C));

    /* out, then in at the same time: out stays */
    assert_int_equal(run1(fx, op_s(key2, T0, 1, "out", sup2)), BOUNCE_V_APPLY);
    assert_int_equal(run1(fx, op_s(key2, T0, 0, "in", sup2)), BOUNCE_V_STALE);
    assert_hget(fx, key2, "v", "1");
    assert_hget(fx, key2, "e", "out");
    assert_true(in_set(fx, sup2));
}

static void test_ops_of_one_key_in_order(void **state)
{
    struct fixture *fx = *state;
    struct bounce_state_op ops[] = {
        op_s(KEY_C, T0 + 100, 1, "a", SUP_C), /* first: apply */
        op_s(KEY_C, T0 + 300, 0, "b", SUP_C), /* newer: apply */
        op_s(KEY_C, T0 + 200, 1, "c", SUP_C), /* older than b: stale */
        op_s(KEY_C, T0 + 300, 0, "d", SUP_C), /* same as b: duplicate */
        op_s(KEY_C, T0 + 300, 1, "e", SUP_C), /* tie, opt-out wins */
        op_s(KEY_C, T0 + 300, 0, "b", SUP_C), /* b again, not done: apply */
    };

    run(fx, NULL, 0, ops, sizeof(ops) / sizeof(ops[0]));
    assert_int_equal(ops[0].verdict, BOUNCE_V_APPLY);
    assert_int_equal(ops[1].verdict, BOUNCE_V_APPLY);
    assert_int_equal(ops[2].verdict, BOUNCE_V_STALE);
    assert_int_equal(ops[3].verdict, BOUNCE_V_DUPLICATE);
    assert_int_equal(ops[4].verdict, BOUNCE_V_APPLY);
    /* b is no longer the key's event: its re-run is a tie with e's opt-out,
     * which wins */
    assert_int_equal(ops[5].verdict, BOUNCE_V_STALE);
    assert_t(fx, KEY_C, T0 + 300);
    assert_hget(fx, KEY_C, "v", "1");
    assert_hget(fx, KEY_C, "e", "e");
    assert_true(in_set(fx, SUP_C));
}

static void test_done_markers_only(void **state)
{
    struct fixture *fx = *state;
    const char *key2 = "cs:bo:x:tenant-a|anna@example.com";
    struct bounce_state_op ops[] = {
        op_s(KEY_C, T0, 1, "e1", SUP_C),
        op_s(key2, T0, 1, "e2", "cs:sup:x:tenant-a"),
    };
    struct bounce_done done[] = {{KEY_C, "e1"}, {key2, "e2"}};
    char errstr[256] = "";

    run(fx, NULL, 0, ops, 2);
    assert_int_equal(
        bounce_state_run(&fx->st, done, 2, NULL, 0, errstr, sizeof(errstr)),
        CS_ERR_OK);
    assert_hget(fx, KEY_C, "d", "1");
    assert_hget(fx, key2, "d", "1");
    assert_int_equal(run1(fx, op_s(key2, T0, 1, "e2", "cs:sup:x:tenant-a")),
                     BOUNCE_V_DUPLICATE);
    /* nothing at all is fine too */
    assert_int_equal(
        bounce_state_run(&fx->st, NULL, 0, NULL, 0, errstr, sizeof(errstr)),
        CS_ERR_OK);
}

static void test_outbounce_and_reset_status(void **state)
{
    struct fixture *fx = *state;

    /* an OUTBOUNCE event sets the status, a later reset clears it */
    assert_int_equal(run1(fx, op_s(KEY_B, T0, 1, "ob", BOUNCE_SUP_BOUNCED)),
                     BOUNCE_V_APPLY);
    assert_true(in_set(fx, BOUNCE_SUP_BOUNCED));
    assert_int_equal(run1(fx, op_reset(T0 + DAY, "rs")), BOUNCE_V_APPLY);
    assert_hget(fx, KEY_B, "v", "0");
    assert_int_equal(hget_ll(fx, KEY_B, "r"), T0 + DAY);
    assert_false(in_set(fx, BOUNCE_SUP_BOUNCED));
    assert_true(pttl(fx, KEY_B) > 0);
}

/* ---- counters ---- */

static void test_count_threshold(void **state)
{
    struct fixture *fx = *state;
    char eid[64];
    struct bounce_done done = {KEY_B, eid};

    count1(fx, T0, "b1", BOUNCE_V_NONE, 0);
    count1(fx, T0 + DAY, "b2", BOUNCE_V_NONE, 0);
    assert_int_equal(hget_ll(fx, KEY_B, "v"), -1);
    assert_false(in_set(fx, BOUNCE_SUP_BOUNCED));
    assert_true(pttl(fx, KEY_N) > 0);

    count1(fx, T0 + 2 * DAY, "b3", BOUNCE_V_APPLY, T0 + 2 * DAY);
    snprintf(eid, sizeof(eid), PFX "%lld", T0 + 2 * DAY);
    assert_hget(fx, KEY_B, "v", "1");
    assert_t(fx, KEY_B, T0 + 2 * DAY);
    assert_hget(fx, KEY_B, "e", eid);
    assert_hget(fx, KEY_B, "d", "0");
    assert_true(in_set(fx, BOUNCE_SUP_BOUNCED));
    assert_true(pttl(fx, KEY_B) > 0);
    assert_true(pttl(fx, KEY_N) > 0);

    /* b3 redelivered before the status write was done: apply again */
    count1(fx, T0 + 2 * DAY, "b3", BOUNCE_V_APPLY, T0 + 2 * DAY);
    /* after the done marker: the crossing is a duplicate */
    {
        struct bounce_state_op op = op_c(T0 + 2 * DAY, "b3");
        run(fx, &done, 1, &op, 1);
        assert_int_equal(op.verdict, BOUNCE_V_DUPLICATE);
        assert_hget(fx, KEY_B, "d", "1");
    }

    /* a 4th bounce: no second transition */
    count1(fx, T0 + 3 * DAY, "b4", BOUNCE_V_DUPLICATE, T0 + 3 * DAY);
    assert_t(fx, KEY_B, T0 + 2 * DAY);
    assert_hget(fx, KEY_B, "e", eid);
    assert_int_equal(cmd_int(fx, "ZCARD %s%s", KEY_N, ""), 4);
}

static void test_count_same_id_once(void **state)
{
    struct fixture *fx = *state;

    count1(fx, T0, "b1", BOUNCE_V_NONE, 0);
    count1(fx, T0, "b1", BOUNCE_V_NONE, 0);
    count1(fx, T0 + DAY, "b2", BOUNCE_V_NONE, 0);
    count1(fx, T0 + DAY, "b2", BOUNCE_V_NONE, 0);
    assert_int_equal(cmd_int(fx, "ZCARD %s%s", KEY_N, ""), 2);
    assert_int_equal(hget_ll(fx, KEY_B, "v"), -1);
    count1(fx, T0 + 2 * DAY, "b3", BOUNCE_V_APPLY, T0 + 2 * DAY);
}

static void test_count_in_one_run(void **state)
{
    struct fixture *fx = *state;
    struct bounce_state_op ops[] = {
        op_c(T0, "b1"),
        op_c(T0 + DAY, "b2"),
        op_c(T0 + 2 * DAY, "b3"),
        op_c(T0 + 3 * DAY, "b4"),
    };

    run(fx, NULL, 0, ops, 4);
    assert_int_equal(ops[0].verdict, BOUNCE_V_NONE);
    assert_int_equal(ops[1].verdict, BOUNCE_V_NONE);
    assert_int_equal(ops[2].verdict, BOUNCE_V_APPLY);
    assert_int_equal(ops[2].cross_t, T0 + 2 * DAY);
    assert_int_equal(ops[3].verdict, BOUNCE_V_DUPLICATE);
    assert_true(in_set(fx, BOUNCE_SUP_BOUNCED));
}

static void test_count_spread_never_crosses(void **state)
{
    struct fixture *fx = *state;

    /* any three of these span 12 days or more: more than the window */
    for (int i = 0; i < 8; i++) {
        char eid[16];
        snprintf(eid, sizeof(eid), "b%d", i);
        count1(fx, T0 + i * 6 * DAY, eid, BOUNCE_V_NONE, 0);
    }
    assert_false(in_set(fx, BOUNCE_SUP_BOUNCED));
    assert_int_equal(hget_ll(fx, KEY_B, "v"), -1);
}

static void test_count_exact_window(void **state)
{
    struct fixture *fx = *state;

    /* 10 days + 1 ms from first to third: no crossing */
    count1(fx, T0, "a1", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 5 * DAY, "a2", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 10 * DAY + 1, "a3", BOUNCE_V_NONE, 0);
    assert_false(in_set(fx, BOUNCE_SUP_BOUNCED));
    assert_int_equal(test_setup(state), 0); /* start over */
    /* exactly the window (10 days) from first to third still counts */
    count1(fx, T0, "b1", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 5 * DAY, "b2", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 10 * DAY, "b3", BOUNCE_V_APPLY, T0 + 10 * DAY);
    assert_true(in_set(fx, BOUNCE_SUP_BOUNCED));
}

static void test_count_late_bounce(void **state)
{
    struct fixture *fx = *state;

    count1(fx, T0 + 5 * DAY, "b5", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 8 * DAY, "b8", BOUNCE_V_NONE, 0);
    /* arrives late: [T0-2d, T0+8d] now holds 3 bounces, [.., T0+5d] only 2 */
    count1(fx, T0 + DAY, "b1", BOUNCE_V_APPLY, T0 + 8 * DAY);
    assert_t(fx, KEY_B, T0 + 8 * DAY);
    assert_hget(fx, KEY_B, "v", "1");
    assert_true(in_set(fx, BOUNCE_SUP_BOUNCED));
}

/* A bounce that arrives after a newer one, by less than the window,
 * still completes a window of its own (T0, T0+1d, late T0+2d after
 * T0+15d); one later than two windows behind the newest only counts
 * towards newer windows (the counter keeps two windows: bounded memory). */
static void test_count_late_bounce_after_newer_one(void **state)
{
    struct fixture *fx = *state;

    count1(fx, T0, "b0", BOUNCE_V_NONE, 0);
    count1(fx, T0 + DAY, "b1", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 15 * DAY, "b15", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 2 * DAY, "b2", BOUNCE_V_APPLY, T0 + 2 * DAY);
}

static void test_count_too_late_bounce_is_bounded(void **state)
{
    struct fixture *fx = *state;

    count1(fx, T0, "b0", BOUNCE_V_NONE, 0);
    count1(fx, T0 + DAY, "b1", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 100 * DAY, "b100", BOUNCE_V_NONE, 0);
    /* b0 and b1 are more than two windows behind b100: forgotten */
    count1(fx, T0 + 2 * DAY, "b2", BOUNCE_V_NONE, 0);
}

/* A late bounce completing the earliest window: the crossing is dated at
 * that window's end. */
static void test_count_late_bounce_crossing_time(void **state)
{
    struct fixture *fx = *state;

    count1(fx, T0, "c1", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 5 * DAY, "c2", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 15 * DAY, "c3", BOUNCE_V_NONE, 0);
    /* c1, c2 and the late c4 (T0 + 9d) are three bounces within 10 days:
     * the status turns Yes at T0 + 9d, not at c3's later window. */
    count1(fx, T0 + 9 * DAY, "c4", BOUNCE_V_APPLY, T0 + 9 * DAY);
}

static void test_count_reset(void **state)
{
    struct fixture *fx = *state;
    const int64_t r = T0 + 3 * DAY;

    count1(fx, T0, "b0", BOUNCE_V_NONE, 0);
    count1(fx, T0 + DAY, "b1", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 2 * DAY, "b2", BOUNCE_V_APPLY, T0 + 2 * DAY);
    assert_true(in_set(fx, BOUNCE_SUP_BOUNCED));

    /* the reset clears the status and the suppression */
    assert_int_equal(run1(fx, op_reset(r, "reset-1")), BOUNCE_V_APPLY);
    assert_hget(fx, KEY_B, "v", "0");
    assert_t(fx, KEY_B, r);
    assert_int_equal(hget_ll(fx, KEY_B, "r"), r);
    assert_false(in_set(fx, BOUNCE_SUP_BOUNCED));

    /* bounces up to the reset's time do not count */
    count1(fx, r, "b3", BOUNCE_V_IGNORED, 0);
    count1(fx, T0 + DAY / 2, "b05", BOUNCE_V_IGNORED, 0);
    /* after it, counting starts again from zero (b0..b2 are in the set but
     * not after r) */
    count1(fx, r + 1, "b4", BOUNCE_V_NONE, 0);
    count1(fx, r + DAY, "b5", BOUNCE_V_NONE, 0);
    assert_false(in_set(fx, BOUNCE_SUP_BOUNCED));
    count1(fx, r + 2 * DAY, "b6", BOUNCE_V_APPLY, r + 2 * DAY);
    assert_hget(fx, KEY_B, "v", "1");
    assert_true(in_set(fx, BOUNCE_SUP_BOUNCED));
}

static void test_older_reset_keeps_newer_outbounce(void **state)
{
    struct fixture *fx = *state;

    count1(fx, T0 + 4 * DAY, "b4", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 5 * DAY, "b5", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 6 * DAY, "b6", BOUNCE_V_APPLY, T0 + 6 * DAY);

    /* a reset older than the outbounce: stale, status stays bounced ... */
    assert_int_equal(run1(fx, op_reset(T0 + 3 * DAY, "old-reset")),
                     BOUNCE_V_STALE);
    assert_hget(fx, KEY_B, "v", "1");
    assert_t(fx, KEY_B, T0 + 6 * DAY);
    assert_true(in_set(fx, BOUNCE_SUP_BOUNCED));
    /* ... but bounces up to its time stop counting */
    assert_int_equal(hget_ll(fx, KEY_B, "r"), T0 + 3 * DAY);
    count1(fx, T0 + 2 * DAY, "b2", BOUNCE_V_IGNORED, 0);
    /* an even older reset does not move r back */
    assert_int_equal(run1(fx, op_reset(T0 + DAY, "older-reset")),
                     BOUNCE_V_STALE);
    assert_int_equal(hget_ll(fx, KEY_B, "r"), T0 + 3 * DAY);

    /* an older status change does not touch the newer status either */
    assert_int_equal(
        run1(fx, op_s(KEY_B, T0 + 5 * DAY, 0, "x", BOUNCE_SUP_BOUNCED)),
        BOUNCE_V_STALE);
    assert_true(in_set(fx, BOUNCE_SUP_BOUNCED));
}

/* A crossing older than the status's last change (here a "not bounced"
 * written without a reset) does not overwrite it. */
static void test_count_crossing_older_than_status(void **state)
{
    struct fixture *fx = *state;

    assert_int_equal(
        run1(fx, op_s(KEY_B, T0 + 10 * DAY, 0, "no", BOUNCE_SUP_BOUNCED)),
        BOUNCE_V_APPLY);
    count1(fx, T0, "b0", BOUNCE_V_NONE, 0);
    count1(fx, T0 + DAY, "b1", BOUNCE_V_NONE, 0);
    count1(fx, T0 + 2 * DAY, "b2", BOUNCE_V_STALE, 0);
    assert_hget(fx, KEY_B, "v", "0");
    assert_hget(fx, KEY_B, "e", "no");
    assert_false(in_set(fx, BOUNCE_SUP_BOUNCED));
}

static void test_redis_down(void **state)
{
    struct redis_conn *rc;
    struct bounce_state st;
    struct bounce_state_op op = op_s(KEY_C, T0, 1, "e1", SUP_C);
    char url[64];
    char errstr[256] = "";
    struct redis_conn_opts ro = {.url = url, .timeout_ms = 500};
    int port = rs_free_port();
    (void)state;

    assert_true(port > 0);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    rc = redis_conn_new(&ro, errstr, sizeof(errstr));
    assert_non_null(rc);
    bounce_state_init(&st, rc, TTL_MS);
    assert_int_equal(
        bounce_state_run(&st, NULL, 0, &op, 1, errstr, sizeof(errstr)),
        CS_ERR_REDIS_UNAVAILABLE);
    redis_conn_free(rc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_newer_applies, test_setup),
        cmocka_unit_test_setup(test_older_is_stale, test_setup),
        cmocka_unit_test_setup(test_same_event_retry_then_done, test_setup),
        cmocka_unit_test_setup(test_same_time_same_value_other_id, test_setup),
        cmocka_unit_test_setup(test_same_time_opt_out_wins, test_setup),
        cmocka_unit_test_setup(test_ops_of_one_key_in_order, test_setup),
        cmocka_unit_test_setup(test_done_markers_only, test_setup),
        cmocka_unit_test_setup(test_outbounce_and_reset_status, test_setup),
        cmocka_unit_test_setup(test_count_threshold, test_setup),
        cmocka_unit_test_setup(test_count_same_id_once, test_setup),
        cmocka_unit_test_setup(test_count_in_one_run, test_setup),
        cmocka_unit_test_setup(test_count_spread_never_crosses, test_setup),
        cmocka_unit_test_setup(test_count_late_bounce, test_setup),
        cmocka_unit_test_setup(test_count_exact_window, test_setup),
        cmocka_unit_test_setup(test_count_too_late_bounce_is_bounded,
                               test_setup),
        cmocka_unit_test_setup(test_count_late_bounce_after_newer_one,
                               test_setup),
        cmocka_unit_test_setup(test_count_late_bounce_crossing_time,
                               test_setup),
        cmocka_unit_test_setup(test_count_reset, test_setup),
        cmocka_unit_test_setup(test_older_reset_keeps_newer_outbounce,
                               test_setup),
        cmocka_unit_test_setup(test_count_crossing_older_than_status,
                               test_setup),
        cmocka_unit_test(test_redis_down),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
