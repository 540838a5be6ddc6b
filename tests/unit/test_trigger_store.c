/*
 * test_trigger_store - the trigger worker's Redis scripts (store.c)
 * against a real redis-server on a free port: starts and re-entry
 * policies, claims and leases, completions with compare-and-set,
 * transitions and exits, the ESP action markers, and crowded wheel slots.
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
#include "workers/trigger/engine.h"
#include "workers/trigger/store.h"

#define ADMIN_TIMEOUT_MS 2000
#define T0               1790000000000LL /* ms, whole seconds */
#define LEASE            30000
#define GUID             "0f8fad5b-d9cb-469f-a165-70867728950e"

struct fixture {
    struct redis_server redis;
    redisContext *admin;     /* owned */
    struct redis_conn *conn; /* owned */
    struct store store;      /* borrows conn */
};

static int group_setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    char url[64], err[256] = "";
    struct redis_conn_opts ro = {.url = url, .timeout_ms = 5000};

    if (!fx || !rs_init_local(&fx->redis, NULL, ADMIN_TIMEOUT_MS))
        return -1;
    if (!rs_start(&fx->redis)) {
        fprintf(stderr, "redis-server did not start\n");
        return -1;
    }
    fx->admin = rs_connect(&fx->redis);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", fx->redis.port);
    fx->conn = redis_conn_new(&ro, err, sizeof(err));
    if (!fx->admin || !fx->conn) {
        fprintf(stderr, "connect: %s\n", err);
        return -1;
    }
    store_init(&fx->store, fx->conn);
    *state = fx;
    return 0;
}

static int group_teardown(void **state)
{
    struct fixture *fx = *state;

    redis_conn_free(fx->conn);
    if (fx->admin)
        redisFree(fx->admin);
    rs_stop(&fx->redis, SIGTERM);
    free(fx);
    return 0;
}

static int test_setup(void **state)
{
    struct fixture *fx = *state;
    redisReply *r = redisCommand(fx->admin, "FLUSHALL");

    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

/* ------------------------------------------------------------------ */
/* helpers                                                             */

/* The key of profile @p n of journey "cart" in tenant acme. */
static void key_of(int n, uint8_t key[INST_KEY_LEN])
{
    char email[64];
    snprintf(email, sizeof(email), "user%d@example.com", n);
    instance_key("acme", "cart", NULL, NULL, email, key);
}

/* A start op for profile @p n from event @p event_id at @p started_ms. */
static void start_op(struct store_op *op, int n, const char *event_id,
                     int64_t started_ms, char policy, int64_t window_s,
                     int64_t due_ms)
{
    struct instance in;

    memset(op, 0, sizeof(*op));
    memset(&in, 0, sizeof(in));
    op->op = 'S';
    key_of(n, op->key);
    op->policy = policy;
    op->window_s = window_s;
    op->due_ms = due_ms;
    in.status = INST_ACTIVE;
    in.started_s = (uint32_t)(started_ms / 1000);
    instance_id_from_event(event_id, in.id);
    snprintf(in.tenant, sizeof(in.tenant), "acme");
    snprintf(in.journey, sizeof(in.journey), "cart");
    snprintf(in.email, sizeof(in.email), "user%d@example.com", n);
    assert_int_equal(instance_encode(&in, false, &op->blob), CS_ERR_OK);
}

/* Runs one start and returns its result label. */
static const char *start(struct fixture *fx, int n, const char *event_id,
                         int64_t started_ms, char policy, int64_t window_s,
                         int64_t due_ms)
{
    struct store_op op;
    char err[256] = "";

    start_op(&op, n, event_id, started_ms, policy, window_s, due_ms);
    if (store_transition(&fx->store, &op, 1, err, sizeof(err)) != CS_ERR_OK)
        fail_msg("store_transition: %s", err);
    buf_free(&op.blob);
    return op.result;
}

/* A transition of profile @p n with (from, to) pairs. */
static const char *transition(struct fixture *fx, int n, uint32_t occurred_s,
                              const uint8_t *pairs, size_t npairs,
                              int64_t due_ms)
{
    struct store_op op;
    char err[256] = "";

    memset(&op, 0, sizeof(op));
    op.op = 'T';
    key_of(n, op.key);
    op.occurred_s = occurred_s;
    memcpy(op.pairs, pairs, 2 * npairs);
    op.npairs = npairs;
    op.due_ms = due_ms;
    if (store_transition(&fx->store, &op, 1, err, sizeof(err)) != CS_ERR_OK)
        fail_msg("store_transition: %s", err);
    return op.result;
}

/* Claims up to @p limit; returns the count (claims must be released). */
static size_t claim(struct fixture *fx, int64_t now, size_t limit,
                    struct store_claim *out)
{
    size_t n = 0;
    char err[256] = "";

    memset(out, 0, limit * sizeof(*out));
    if (store_claim(&fx->store, now, limit, LEASE, out, &n, err, sizeof(err)) !=
        CS_ERR_OK)
        fail_msg("store_claim: %s", err);
    return n;
}

static void release(struct store_claim *c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        instance_clear(&c[i].inst);
}

/* Completes claim @p c with @p kind (blob from @p c->inst, pc/iter set). */
static const char *complete(struct fixture *fx, struct store_claim *c,
                            char kind, unsigned iter, int64_t due_ms)
{
    struct store_done d;
    char err[256] = "";

    memset(&d, 0, sizeof(d));
    memcpy(d.key, c->key, INST_KEY_LEN);
    d.claimed_ver = c->inst.ver;
    d.kind = kind;
    d.due_ms = due_ms;
    c->inst.iter = iter;
    if (kind != 'R')
        assert_int_equal(instance_encode(&c->inst, kind == 'D', &d.blob),
                         CS_ERR_OK);
    if (store_complete(&fx->store, &d, 1, err, sizeof(err)) != CS_ERR_OK)
        fail_msg("store_complete: %s", err);
    buf_free(&d.blob);
    return d.result;
}

/* The stored blob of profile @p n decoded; false when there is none. */
static bool stored(struct fixture *fx, int n, struct instance *in, size_t *len)
{
    uint8_t k[INST_KEY_LEN];
    char shard[32];
    redisReply *r;
    bool found;

    key_of(n, k);
    snprintf(shard, sizeof(shard), "cs:tr:s:%04x",
             (unsigned)((k[0] * 256 + k[1]) % 16384));
    r = redisCommand(fx->admin, "HGET %s %b", shard, (const char *)k,
                     (size_t)INST_KEY_LEN);
    assert_non_null(r);
    found = r->type == REDIS_REPLY_STRING;
    if (found) {
        *len = r->len;
        assert_int_equal(instance_decode(r->str, r->len, in), CS_ERR_OK);
    }
    freeReplyObject(r);
    return found;
}

static long long zcard_wheel(struct fixture *fx)
{
    redisReply *r = redisCommand(fx->admin, "ZCARD cs:tr:wi");
    long long v;
    assert_non_null(r);
    v = r->integer;
    freeReplyObject(r);
    return v;
}

/* ------------------------------------------------------------------ */
/* starts                                                              */

static void test_start_creates_instance_and_timer(void **state)
{
    struct fixture *fx = *state;
    struct instance in;
    struct store_claim c[4];
    size_t len = 0;
    uint8_t k[INST_KEY_LEN];

    assert_string_equal(start(fx, 1, "ev-1", T0, 'o', 0, T0 + 5000), "started");
    assert_true(stored(fx, 1, &in, &len));
    assert_int_equal(in.ver, 1);
    assert_int_equal(in.status, INST_ACTIVE);
    assert_int_equal(in.pc, 0);
    assert_int_equal(in.slot, (uint32_t)((T0 + 5000) / STORE_SLOT_MS));
    assert_string_equal(in.email, "user1@example.com");
    instance_clear(&in);
    assert_int_equal(zcard_wheel(fx), 1);

    assert_int_equal(claim(fx, T0 + 4999, 4, c), 0); /* not yet due */
    assert_int_equal(claim(fx, T0 + 5000, 4, c), 1);
    key_of(1, k);
    assert_memory_equal(c[0].key, k, INST_KEY_LEN);
    assert_int_equal(c[0].due_ms, T0 + 5000);
    assert_int_equal(c[0].decode_err, CS_ERR_OK);
    assert_int_equal(c[0].inst.journey_hash, instance_journey_hash("cart"));
    assert_int_equal(c[0].inst.ver, 1);
    release(c, 1);
}

static void test_start_duplicate_active_older(void **state)
{
    struct fixture *fx = *state;

    assert_string_equal(start(fx, 2, "ev-a", T0, 'a', 0, T0), "started");
    assert_string_equal(start(fx, 2, "ev-a", T0, 'a', 0, T0), "duplicate");
    assert_string_equal(start(fx, 2, "ev-b", T0 + 1000, 'a', 0, T0 + 1000),
                        "active");
    /* ended: an older start is refused */
    struct store_claim c[2];
    assert_int_equal(claim(fx, T0, 2, c), 1);
    assert_string_equal(complete(fx, &c[0], 'D', 0, 0), "ok");
    release(c, 1);
    assert_string_equal(start(fx, 2, "ev-c", T0 - 1000, 'a', 0, T0), "older");
    assert_string_equal(start(fx, 2, "ev-a", T0, 'a', 0, T0), "duplicate");
}

/* Starts profile @p n at T0 with @p policy and ends it at once. */
static void start_and_end(struct fixture *fx, int n, char policy,
                          int64_t window_s)
{
    struct store_claim c[2];
    assert_string_equal(start(fx, n, "ev-first", T0, policy, window_s, T0),
                        "started");
    assert_int_equal(claim(fx, T0, 2, c), 1);
    assert_string_equal(complete(fx, &c[0], 'D', 0, 0), "ok");
    release(c, 1);
}

static void test_reentry_policies(void **state)
{
    struct fixture *fx = *state;
    struct instance in;
    size_t len = 0;

    start_and_end(fx, 3, 'o', 0);
    assert_string_equal(start(fx, 3, "ev-2", T0 + 100 * 86400000LL, 'o', 0,
                              T0 + 100 * 86400000LL),
                        "once");

    start_and_end(fx, 4, 'w', 3600);
    assert_string_equal(
        start(fx, 4, "ev-2", T0 + 3599000, 'w', 3600, T0 + 3599000), "window");
    assert_string_equal(
        start(fx, 4, "ev-3", T0 + 3600000, 'w', 3600, T0 + 3600000), "started");
    assert_true(stored(fx, 4, &in, &len));
    assert_int_equal(in.status, INST_ACTIVE);
    assert_int_equal(in.started_s, (uint32_t)((T0 + 3600000) / 1000));
    assert_int_equal(in.ver, 3); /* start, completion, re-start */
    instance_clear(&in);

    start_and_end(fx, 5, 'a', 0);
    assert_string_equal(start(fx, 5, "ev-2", T0 + 1000, 'a', 0, T0 + 1000),
                        "started");
}

/* ------------------------------------------------------------------ */
/* claims and completions                                              */

static void test_claim_due_only_and_lease(void **state)
{
    struct fixture *fx = *state;
    struct store_claim c[8];
    uint8_t k6[INST_KEY_LEN];

    assert_string_equal(start(fx, 6, "ev", T0, 'a', 0, T0 - 1000), "started");
    assert_string_equal(start(fx, 7, "ev", T0, 'a', 0, T0 + 60000), "started");
    assert_int_equal(claim(fx, T0, 8, c), 1);
    key_of(6, k6);
    assert_memory_equal(c[0].key, k6, INST_KEY_LEN);
    assert_int_equal(c[0].due_ms, T0 - 1000);
    release(c, 1);
    /* leased: a second claim gets nothing */
    assert_int_equal(claim(fx, T0, 8, c), 0);
    assert_int_equal(claim(fx, T0 + LEASE - 1, 8, c), 0);
    /* the lease ended (the worker died): due again */
    assert_int_equal(claim(fx, T0 + LEASE, 8, c), 1);
    assert_memory_equal(c[0].key, k6, INST_KEY_LEN);
    assert_int_equal(c[0].due_ms, T0 + LEASE);
    release(c, 1);
    /* both due later */
    assert_int_equal(claim(fx, T0 + 10 * LEASE, 8, c), 2);
    release(c, 2);
}

static void test_complete_active_done_retry(void **state)
{
    struct fixture *fx = *state;
    struct store_claim c[4];
    struct instance in;
    size_t len = 0;

    assert_string_equal(start(fx, 8, "ev", T0, 'a', 0, T0), "started");
    assert_int_equal(claim(fx, T0, 4, c), 1);
    /* A: the next step at T0 + 1 h (iter 2) */
    assert_string_equal(complete(fx, &c[0], 'A', 2, T0 + 3600000), "ok");
    release(c, 1);
    assert_true(stored(fx, 8, &in, &len));
    assert_int_equal(in.ver, 2);
    assert_int_equal(in.iter, 2);
    assert_int_equal(in.slot, (uint32_t)((T0 + 3600000) / STORE_SLOT_MS));
    instance_clear(&in);
    assert_int_equal(claim(fx, T0 + LEASE, 4, c), 0); /* old lease gone */
    assert_int_equal(claim(fx, T0 + 3600000, 4, c), 1);
    assert_int_equal(c[0].due_ms, T0 + 3600000);
    assert_int_equal(c[0].inst.iter, 2);
    /* R: state unchanged, due later */
    assert_string_equal(complete(fx, &c[0], 'R', 9, T0 + 3700000), "ok");
    release(c, 1);
    assert_int_equal(claim(fx, T0 + 3699999, 4, c), 0);
    assert_int_equal(claim(fx, T0 + 3700000, 4, c), 1);
    assert_int_equal(c[0].inst.iter, 2);
    assert_int_equal(c[0].inst.ver, 3);
    /* a stale completion (the version claimed before) conflicts */
    c[0].inst.ver = 2;
    assert_string_equal(complete(fx, &c[0], 'D', 2, 0), "conflict");
    c[0].inst.ver = 3;
    /* D: the header and id stay, the context goes */
    assert_string_equal(complete(fx, &c[0], 'D', 2, 0), "ok");
    /* completing it again (a re-run script): the version moved on */
    assert_string_equal(complete(fx, &c[0], 'D', 2, 0), "conflict");
    release(c, 1);
    assert_true(stored(fx, 8, &in, &len));
    assert_int_equal(len, INST_HDR_LEN + INST_ID_LEN);
    assert_int_equal(in.status, INST_DONE);
    assert_int_equal(in.slot, 0);
    instance_clear(&in);
    assert_int_equal(claim(fx, T0 + 100 * 86400000LL, 4, c), 0);
}

static void test_transition_conflicts_claim(void **state)
{
    struct fixture *fx = *state;
    struct store_claim c[4];
    struct instance in;
    size_t len = 0;
    const uint8_t move[] = {0, 1};
    const uint8_t other[] = {5, 6};

    assert_string_equal(start(fx, 9, "ev", T0, 'a', 0, T0), "started");
    assert_int_equal(claim(fx, T0, 4, c), 1);
    assert_string_equal(
        transition(fx, 9, (uint32_t)(T0 / 1000), other, 1, T0 + 1000),
        "nomatch");
    assert_string_equal(
        transition(fx, 9, (uint32_t)(T0 / 1000) - 1, move, 1, T0 + 1000),
        "older");
    assert_string_equal(
        transition(fx, 9, (uint32_t)(T0 / 1000) + 5, move, 1, T0 + 1000),
        "moved");
    /* the claimed firing lost the race */
    assert_string_equal(complete(fx, &c[0], 'A', 3, T0 + 99000), "conflict");
    release(c, 1);
    assert_true(stored(fx, 9, &in, &len));
    assert_int_equal(in.pc, 1);
    assert_int_equal(in.iter, 0);
    assert_int_equal(in.ver, 2);
    instance_clear(&in);
    /* the moved-to step's timer (not the lease) fires */
    assert_int_equal(claim(fx, T0 + 1000, 4, c), 1);
    assert_int_equal(c[0].due_ms, T0 + 1000);
    assert_int_equal(c[0].inst.pc, 1);
    release(c, 1);
    assert_int_equal(claim(fx, T0 + 10 * LEASE, 4, c), 1); /* its lease */
    release(c, 1);
    assert_string_equal(transition(fx, 99, (uint32_t)(T0 / 1000), move, 1, T0),
                        "none");
}

static void test_exit_removes_timer(void **state)
{
    struct fixture *fx = *state;
    struct store_claim c[4];
    struct instance in;
    size_t len = 0;
    const uint8_t exit_pair[] = {ENGINE_PC_ANY, ENGINE_PC_EXIT};

    assert_string_equal(start(fx, 10, "ev", T0, 'a', 0, T0 + 20000), "started");
    assert_string_equal(
        transition(fx, 10, (uint32_t)(T0 / 1000), exit_pair, 1, 0), "exited");
    assert_true(stored(fx, 10, &in, &len));
    assert_int_equal(in.status, INST_EXITED);
    assert_int_equal(len, INST_HDR_LEN + INST_ID_LEN);
    instance_clear(&in);
    /* its wheel hash emptied: gone from the index at once, not at its due
       time (a million cancelled reminders must not leave index entries) */
    assert_int_equal(zcard_wheel(fx), 0);
    assert_int_equal(claim(fx, T0 + 100 * 86400000LL, 4, c), 0);
    assert_string_equal(
        transition(fx, 10, (uint32_t)(T0 / 1000), exit_pair, 1, 0), "ended");
    /* a re-start with 'always' after an exit */
    assert_string_equal(start(fx, 10, "ev2", T0 + 1000, 'a', 0, T0 + 1000),
                        "started");
}

/* ------------------------------------------------------------------ */
/* action markers                                                      */

static void test_markers(void **state)
{
    struct fixture *fx = *state;
    const char *ids[] = {"id-a", "id-b"};
    const char *c_id[] = {"id-c"};
    char prev[2] = {'x', 'x'};
    char err[256] = "";
    int64_t now = T0;

    assert_int_equal(
        store_mark_sending(&fx->store, ids, 2, now, prev, err, sizeof(err)),
        CS_ERR_OK);
    assert_int_equal(prev[0], 0);
    assert_int_equal(prev[1], 0);
    assert_int_equal(
        store_mark_sending(&fx->store, ids, 2, now, prev, err, sizeof(err)),
        CS_ERR_OK);
    assert_int_equal(prev[0], 's');
    assert_int_equal(prev[1], 's');
    assert_int_equal(store_mark_sent(&fx->store, ids, 1, now, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(
        store_mark_sending(&fx->store, ids, 2, now, prev, err, sizeof(err)),
        CS_ERR_OK);
    assert_int_equal(prev[0], 'd');
    assert_int_equal(prev[1], 's');
    /* a sending mark never overwrites sent */
    assert_int_equal(
        store_mark_sending(&fx->store, ids, 1, now, prev, err, sizeof(err)),
        CS_ERR_OK);
    assert_int_equal(prev[0], 'd');
    /* taking "sending" back: id-b was never handed to the ESP, so its
       re-fire finds no marker; id-a stays sent */
    assert_int_equal(
        store_mark_unsent(&fx->store, ids, 2, now, err, sizeof(err)),
        CS_ERR_OK);
    assert_int_equal(
        store_mark_sending(&fx->store, ids, 2, now, prev, err, sizeof(err)),
        CS_ERR_OK);
    assert_int_equal(prev[0], 'd');
    assert_int_equal(prev[1], 0);

    /* sent yesterday, re-fired after midnight */
    assert_int_equal(store_mark_sent(&fx->store, c_id, 1, now - 86400000LL, err,
                                     sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(
        store_mark_sending(&fx->store, c_id, 1, now, prev, err, sizeof(err)),
        CS_ERR_OK);
    assert_int_equal(prev[0], 'd');
    /* the day before yesterday is forgotten */
    assert_int_equal(store_mark_sending(&fx->store, c_id, 1,
                                        now + 86400000LL * 2, prev, err,
                                        sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(prev[0], 0);
}

/* ------------------------------------------------------------------ */
/* crowded slots                                                       */

#define MANY 500

static void test_many_timers_one_slot(void **state)
{
    struct fixture *fx = *state;
    int64_t slot0 = (T0 / STORE_SLOT_MS) * STORE_SLOT_MS;
    struct store_op *ops = calloc(MANY, sizeof(*ops));
    struct store_claim *c = calloc(MANY, sizeof(*c));
    bool *seen = calloc(MANY, sizeof(*seen));
    char err[256] = "";
    size_t got = 0;

    assert_non_null(ops);
    assert_non_null(c);
    assert_non_null(seen);
    for (int i = 0; i < MANY; i++)
        start_op(&ops[i], 1000 + i, "ev", T0, 'a', 0,
                 slot0 + (i * 19) % STORE_SLOT_MS);
    assert_int_equal(store_transition(&fx->store, ops, MANY, err, sizeof(err)),
                     CS_ERR_OK);
    for (int i = 0; i < MANY; i++) {
        assert_string_equal(ops[i].result, "started");
        buf_free(&ops[i].blob);
    }
    assert_true(zcard_wheel(fx) >= (MANY + 119) / 120);
    /* in batches of 100: every timer exactly once */
    for (int round = 0; round < 20 && got < MANY; round++) {
        size_t n = claim(fx, slot0 + STORE_SLOT_MS - 1, 100, c);
        for (size_t i = 0; i < n; i++) {
            int who = -1;
            for (int p = 0; p < MANY && who < 0; p++) {
                uint8_t k[INST_KEY_LEN];
                key_of(1000 + p, k);
                if (memcmp(k, c[i].key, INST_KEY_LEN) == 0)
                    who = p;
            }
            assert_true(who >= 0);
            assert_false(seen[who]);
            seen[who] = true;
            assert_int_equal(c[i].due_ms, slot0 + (who * 19) % STORE_SLOT_MS);
        }
        got += n;
        release(c, n);
    }
    assert_int_equal(got, MANY);
    assert_int_equal(claim(fx, slot0 + STORE_SLOT_MS - 1, 100, c), 0);
    free(seen);
    free(c);
    free(ops);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_start_creates_instance_and_timer,
                               test_setup),
        cmocka_unit_test_setup(test_start_duplicate_active_older, test_setup),
        cmocka_unit_test_setup(test_reentry_policies, test_setup),
        cmocka_unit_test_setup(test_claim_due_only_and_lease, test_setup),
        cmocka_unit_test_setup(test_complete_active_done_retry, test_setup),
        cmocka_unit_test_setup(test_transition_conflicts_claim, test_setup),
        cmocka_unit_test_setup(test_exit_removes_timer, test_setup),
        cmocka_unit_test_setup(test_markers, test_setup),
        cmocka_unit_test_setup(test_many_timers_one_slot, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
