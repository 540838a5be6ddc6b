/*
 * test_idem - idem against a real redis-server started on a free port.
 *
 * Each group starts its own redis-server (tests/support/redis_server.h:
 * fork/exec, --save "" and no AOF) and kills it in teardown; tests that need
 * a password or a Redis that goes away start their own instance.
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
#include <time.h>

#include <hiredis/hiredis.h>

#include "common/idem.h"
#include "common/redis_conn.h"
#include "tests/support/redis_server.h"

#define ADMIN_TIMEOUT_MS 1000 /* connect timeout of admin connections */

struct fixture {
    struct redis_server redis; /* the group's server */
};

/* An idem with its own connection (a worker shares one; tests isolate). */
struct tidem {
    struct redis_conn *redis; /* owned */
    struct idem *idem;        /* owned, borrows redis */
};

/* A local server description on a free port; fails the test if none. */
static void redis_init(struct redis_server *rs, const char *password)
{
    assert_true(rs_init_local(rs, password, ADMIN_TIMEOUT_MS));
}

/* rs_start or fail the test. */
static void redis_start(struct redis_server *rs)
{
    if (!rs_start(rs))
        fail_msg("redis-server did not answer on port %d", rs->port);
}

static int group_setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));

    if (!fx)
        return -1;
    redis_init(&fx->redis, NULL);
    redis_start(&fx->redis);
    *state = fx;
    return 0;
}

static int group_teardown(void **state)
{
    struct fixture *fx = *state;

    rs_stop(&fx->redis, SIGTERM);
    free(fx);
    return 0;
}

/* Each test starts with an empty database. */
static int test_setup(void **state)
{
    struct fixture *fx = *state;
    redisContext *c = rs_connect(&fx->redis);
    redisReply *r;

    if (!c)
        return -1;
    r = redisCommand(c, "FLUSHALL");
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return 0;
}

static struct tidem *open_idem_full(const char *url, const char *owner,
                                    int lease_ms, int buckets)
{
    char errstr[256] = "";
    struct redis_conn_opts ro = {.url = url, .timeout_ms = 1000};
    struct idem_opts o = {
        .ns = "test",
        .owner = owner,
        .ttl_days = 7,
        .buckets_per_day = buckets,
        .lease_ms = lease_ms,
    };
    struct tidem *t = calloc(1, sizeof(*t));

    assert_non_null(t);
    t->redis = redis_conn_new(&ro, errstr, sizeof(errstr));
    if (!t->redis)
        fail_msg("redis_conn_new: %s", errstr);
    t->idem = idem_new(t->redis, &o, errstr, sizeof(errstr));
    if (!t->idem)
        fail_msg("idem_new: %s", errstr);
    return t;
}

/* The idem first, then the connection it borrows. */
static void tidem_free(struct tidem *t)
{
    idem_free(t->idem);
    redis_conn_free(t->redis);
    free(t);
}

static struct tidem *open_idem_url(const char *url, const char *owner,
                                   int lease_ms)
{
    return open_idem_full(url, owner, lease_ms, 16);
}

/* buckets_per_day = 1 puts every id of a day into one bucket. */
static struct tidem *open_idem_b(const struct fixture *fx, const char *owner,
                                 int lease_ms, int buckets)
{
    char url[64];

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", fx->redis.port);
    return open_idem_full(url, owner, lease_ms, buckets);
}

static struct tidem *open_idem(const struct fixture *fx, const char *owner,
                               int lease_ms)
{
    return open_idem_b(fx, owner, lease_ms, 16);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Claims one id and returns its state (asserting the call succeeded). */
static enum idem_state claim1(struct tidem *t, const char *id)
{
    struct idem_key k = {id, now_ms()};
    enum idem_state st = (enum idem_state) - 1;
    char errstr[256] = "";
    enum cs_err err = idem_claim(t->idem, &k, 1, &st, errstr, sizeof(errstr));

    if (err != CS_ERR_OK)
        fail_msg("idem_claim: %s: %s", cs_err_name(err), errstr);
    return st;
}

static void done1(struct tidem *t, const char *id)
{
    struct idem_key k = {id, now_ms()};
    char errstr[256] = "";
    enum cs_err err = idem_mark_done(t->idem, &k, 1, errstr, sizeof(errstr));

    if (err != CS_ERR_OK)
        fail_msg("idem_mark_done: %s: %s", cs_err_name(err), errstr);
}

static void release1(struct tidem *t, const char *id)
{
    struct idem_key k = {id, now_ms()};
    char errstr[256] = "";
    enum cs_err err = idem_release(t->idem, &k, 1, errstr, sizeof(errstr));

    if (err != CS_ERR_OK)
        fail_msg("idem_release: %s: %s", cs_err_name(err), errstr);
}

/* Runs a command on an admin connection; caller frees the reply. */
static redisReply *admin_cmd(const struct redis_server *rp, const char *cmd,
                             const char *arg)
{
    redisContext *c = rs_connect(rp);
    redisReply *r;

    assert_non_null(c);
    r = arg ? redisCommand(c, "%s %s", cmd, arg) : redisCommand(c, cmd);
    assert_non_null(r);
    redisFree(c);
    return r;
}

/* ------------------------------------------------------------------------ */

static void test_claim_done_duplicate(void **state)
{
    struct fixture *fx = *state;
    struct tidem *a = open_idem(fx, "owner-a", 30000);
    struct tidem *b = open_idem(fx, "owner-b", 30000);

    assert_int_equal(claim1(a, "evt-1"), IDEM_CLAIMED);
    assert_int_equal(claim1(a, "evt-2"), IDEM_CLAIMED);
    done1(a, "evt-1");
    assert_int_equal(claim1(a, "evt-1"), IDEM_DUPLICATE);
    assert_int_equal(claim1(b, "evt-1"), IDEM_DUPLICATE);
    /* evt-2 is still a's processing claim. */
    assert_int_equal(claim1(b, "evt-2"), IDEM_IN_FLIGHT);
    tidem_free(a);
    tidem_free(b);
}

static void test_in_flight_other_owner(void **state)
{
    struct fixture *fx = *state;
    struct tidem *a = open_idem(fx, "owner-a", 30000);
    struct tidem *b = open_idem(fx, "owner-b", 30000);

    assert_int_equal(claim1(a, "evt-x"), IDEM_CLAIMED);
    assert_int_equal(claim1(b, "evt-x"), IDEM_IN_FLIGHT);
    assert_int_equal(claim1(b, "evt-x"), IDEM_IN_FLIGHT);
    done1(a, "evt-x");
    assert_int_equal(claim1(b, "evt-x"), IDEM_DUPLICATE);
    tidem_free(a);
    tidem_free(b);
}

static void test_lease_expiry_takeover(void **state)
{
    struct fixture *fx = *state;
    /* One bucket, kept alive for days by a done id: only the lease in the
     * field itself can expire, not the whole key. */
    struct tidem *a = open_idem_b(fx, "owner-a", 300, 1);
    struct tidem *b = open_idem_b(fx, "owner-b", 300, 1);
    redisReply *r;

    assert_int_equal(claim1(a, "evt-anchor"), IDEM_CLAIMED);
    done1(a, "evt-anchor");
    assert_int_equal(claim1(a, "evt-lease"), IDEM_CLAIMED);
    assert_int_equal(claim1(b, "evt-lease"), IDEM_IN_FLIGHT);
    rs_sleep_ms(450);
    assert_int_equal(claim1(b, "evt-lease"), IDEM_CLAIMED);
    /* Now b holds it: a (whose lease lapsed) is locked out ... */
    assert_int_equal(claim1(a, "evt-lease"), IDEM_IN_FLIGHT);
    /* ... and a's release must not drop b's claim. */
    release1(a, "evt-lease");
    assert_int_equal(claim1(a, "evt-lease"), IDEM_IN_FLIGHT);
    /* The bucket never expired: both ids live in it. */
    r = admin_cmd(&fx->redis, "KEYS", "cs:idem:test:*");
    assert_int_equal(r->elements, 1);
    {
        redisReply *h = admin_cmd(&fx->redis, "HLEN", r->element[0]->str);
        assert_int_equal(h->integer, 2);
        freeReplyObject(h);
    }
    freeReplyObject(r);
    assert_int_equal(claim1(b, "evt-anchor"), IDEM_DUPLICATE);
    tidem_free(a);
    tidem_free(b);
}

static void test_same_owner_reclaim(void **state)
{
    struct fixture *fx = *state;
    struct tidem *a = open_idem(fx, "host-1:42", 30000);
    struct tidem *a2 = open_idem(fx, "host-1:42", 30000);
    struct tidem *b = open_idem(fx, "host-1:4", 30000);

    assert_int_equal(claim1(a, "evt-r"), IDEM_CLAIMED);
    assert_int_equal(claim1(a, "evt-r"), IDEM_CLAIMED);
    /* Same token from another handle (a restarted worker) too. */
    assert_int_equal(claim1(a2, "evt-r"), IDEM_CLAIMED);
    /* A token that is a prefix of ours is another owner. */
    assert_int_equal(claim1(b, "evt-r"), IDEM_IN_FLIGHT);
    tidem_free(a);
    tidem_free(a2);
    tidem_free(b);
}

static void test_release_lets_other_claim(void **state)
{
    struct fixture *fx = *state;
    struct tidem *a = open_idem(fx, "owner-a", 30000);
    struct tidem *b = open_idem(fx, "owner-b", 30000);

    assert_int_equal(claim1(a, "evt-rel"), IDEM_CLAIMED);
    assert_int_equal(claim1(b, "evt-rel"), IDEM_IN_FLIGHT);
    release1(b, "evt-rel"); /* not b's: no effect */
    assert_int_equal(claim1(b, "evt-rel"), IDEM_IN_FLIGHT);
    release1(a, "evt-rel");
    assert_int_equal(claim1(b, "evt-rel"), IDEM_CLAIMED);
    done1(b, "evt-rel");
    release1(b, "evt-rel"); /* done stays done */
    assert_int_equal(claim1(a, "evt-rel"), IDEM_DUPLICATE);
    tidem_free(a);
    tidem_free(b);
}

/* Done, release and claim in one call: the steps apply in that order and
 * cost one round trip together. */
static void test_settle_claim_one_trip(void **state)
{
    struct fixture *fx = *state;
    struct tidem *a = open_idem(fx, "owner-a", 30000);
    struct tidem *b = open_idem(fx, "owner-b", 30000);
    int64_t t = now_ms();
    struct idem_key done[] = {{"s-1", t}, {"s-2", t}};
    struct idem_key rel[] = {{"s-3", t}};
    struct idem_key claim[] = {{"s-1", t}, {"s-4", t}, {"s-5", t}};
    enum idem_state st[3];
    char errstr[256] = "";
    unsigned long long rt;

    assert_int_equal(claim1(a, "s-1"), IDEM_CLAIMED);
    assert_int_equal(claim1(a, "s-2"), IDEM_CLAIMED);
    assert_int_equal(claim1(a, "s-3"), IDEM_CLAIMED);
    rt = redis_conn_round_trips(a->redis);
    assert_int_equal(idem_settle_claim(a->idem, done, 2, rel, 1, claim, 3, st,
                                       errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(redis_conn_round_trips(a->redis), rt + 1);
    assert_int_equal(st[0], IDEM_DUPLICATE); /* marked done just before */
    assert_int_equal(st[1], IDEM_CLAIMED);
    assert_int_equal(st[2], IDEM_CLAIMED);
    assert_int_equal(claim1(b, "s-2"), IDEM_DUPLICATE);
    assert_int_equal(claim1(b, "s-3"), IDEM_CLAIMED); /* released by a */
    assert_int_equal(claim1(b, "s-4"), IDEM_IN_FLIGHT);

    /* Only settling (no claims) and nothing at all. */
    rt = redis_conn_round_trips(a->redis);
    assert_int_equal(idem_settle_claim(a->idem, claim + 1, 2, NULL, 0, NULL, 0,
                                       NULL, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(idem_settle_claim(a->idem, NULL, 0, NULL, 0, NULL, 0, NULL,
                                       errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(redis_conn_round_trips(a->redis), rt + 1);
    assert_int_equal(claim1(b, "s-5"), IDEM_DUPLICATE);
    tidem_free(a);
    tidem_free(b);
}

static void test_repeated_id_in_batch(void **state)
{
    struct fixture *fx = *state;
    struct tidem *a = open_idem(fx, "owner-a", 30000);
    int64_t t = now_ms();
    struct idem_key keys[] = {{"x", t}, {"y", t}, {"x", t},
                              {"x", t}, {"z", t}, {"y", t}};
    enum idem_state out[6];
    char errstr[256];

    assert_int_equal(idem_claim(a->idem, keys, 6, out, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(out[0], IDEM_CLAIMED);
    assert_int_equal(out[1], IDEM_CLAIMED);
    assert_int_equal(out[2], IDEM_DUPLICATE);
    assert_int_equal(out[3], IDEM_DUPLICATE);
    assert_int_equal(out[4], IDEM_CLAIMED);
    assert_int_equal(out[5], IDEM_DUPLICATE);
    /* Marking a repeated id done twice in one call is harmless. */
    assert_int_equal(idem_mark_done(a->idem, keys, 6, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(idem_claim(a->idem, keys, 6, out, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    for (int i = 0; i < 6; i++)
        assert_int_equal(out[i], IDEM_DUPLICATE);
    tidem_free(a);
}

/* Sums HLEN over the namespace's buckets and checks each bucket's TTL lies
 * in [min_ttl, max_ttl] seconds. Returns the number of fields. */
static long long check_buckets(const struct redis_server *rp, long long min_ttl,
                               long long max_ttl, size_t *nkeys)
{
    redisContext *c = rs_connect(rp);
    redisReply *keys;
    long long fields = 0;

    assert_non_null(c);
    keys = redisCommand(c, "KEYS cs:idem:test:*");
    assert_non_null(keys);
    assert_int_equal(keys->type, REDIS_REPLY_ARRAY);
    for (size_t i = 0; i < keys->elements; i++) {
        redisReply *r = redisCommand(c, "TTL %b", keys->element[i]->str,
                                     keys->element[i]->len);
        assert_non_null(r);
        if (r->integer < min_ttl || r->integer > max_ttl)
            fail_msg("bucket %s ttl %lld not in [%lld, %lld]",
                     keys->element[i]->str, r->integer, min_ttl, max_ttl);
        freeReplyObject(r);
        r = redisCommand(c, "HLEN %b", keys->element[i]->str,
                         keys->element[i]->len);
        assert_non_null(r);
        fields += r->integer;
        freeReplyObject(r);
    }
    *nkeys = keys->elements;
    freeReplyObject(keys);
    redisFree(c);
    return fields;
}

static void test_bucket_ttl(void **state)
{
    struct fixture *fx = *state;
    struct tidem *a = open_idem(fx, "owner-a", 60000);
    int64_t t = now_ms();
    int64_t day = t / 86400000;
    long long day_end_ttl = (day + 1 + 7) * 86400 - t / 1000;
    struct idem_key k = {"evt-ttl", t};
    enum idem_state st;
    char errstr[256];
    size_t nkeys = 0;
    redisReply *r;

    assert_int_equal(idem_claim(a->idem, &k, 1, &st, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    /* A brand-new bucket expires with the lease unless marked done. */
    assert_int_equal(check_buckets(&fx->redis, 1, 60, &nkeys), 1);
    assert_int_equal(nkeys, 1);

    assert_int_equal(idem_mark_done(a->idem, &k, 1, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(
        check_buckets(&fx->redis, 7 * 86400 - 1, day_end_ttl, &nkeys), 1);
    assert_int_equal(nkeys, 1);

    /* The stored layout: 8-byte field, value "d", key names the day. */
    r = admin_cmd(&fx->redis, "KEYS", "cs:idem:test:*");
    assert_int_equal(r->elements, 1);
    {
        char want[64];
        snprintf(want, sizeof(want), "cs:idem:test:%lld:", (long long)day);
        assert_memory_equal(r->element[0]->str, want, strlen(want));
        redisReply *h = admin_cmd(&fx->redis, "HGETALL", r->element[0]->str);
        assert_int_equal(h->elements, 2);
        assert_int_equal(h->element[0]->len, 8);
        assert_string_equal(h->element[1]->str, "d");
        freeReplyObject(h);
        {
            redisContext *c = rs_connect(&fx->redis);
            assert_non_null(c);
            h = redisCommand(c, "OBJECT ENCODING %s", r->element[0]->str);
            assert_non_null(h);
            assert_string_equal(h->str, "listpack");
            freeReplyObject(h);
            redisFree(c);
        }
    }
    freeReplyObject(r);

    /* An event older than its retention is kept only for about a lease
     * (never an immediate delete, never forever). */
    test_setup(state);
    k.id = "evt-old";
    k.event_ms = t - 30LL * 86400000;
    assert_int_equal(idem_claim(a->idem, &k, 1, &st, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(idem_mark_done(a->idem, &k, 1, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(check_buckets(&fx->redis, 1, 61, &nkeys), 1);
    tidem_free(a);
}

static void test_password_auth(void **state)
{
    (void)state;
    struct redis_server rp;
    char url[128];
    char errstr[256] = "";
    struct tidem *a;
    struct idem_key k = {"evt-auth", now_ms()};
    enum idem_state st = (enum idem_state) - 1;

    redis_init(&rp, "s3cret-Pw!");
    redis_start(&rp);

    snprintf(url, sizeof(url), "redis://:s3cret-Pw%%21@127.0.0.1:%d/2",
             rp.port);
    a = open_idem_url(url, "owner-a", 30000);
    assert_int_equal(claim1(a, "evt-auth"), IDEM_CLAIMED);
    tidem_free(a);

    /* user form; db 2 must hold the claim made above. */
    snprintf(url, sizeof(url), "redis://default:s3cret-Pw!@127.0.0.1:%d/2",
             rp.port);
    a = open_idem_url(url, "owner-b", 30000);
    assert_int_equal(claim1(a, "evt-auth"), IDEM_IN_FLIGHT);
    tidem_free(a);

    /* Wrong password: opening succeeds (lazy), calls fail retryably and
     * the error text carries neither password. */
    snprintf(url, sizeof(url), "redis://:wrong-Secret9@127.0.0.1:%d", rp.port);
    a = open_idem_url(url, "owner-a", 30000);
    assert_false(redis_conn_ping(a->redis));
    assert_int_equal(idem_claim(a->idem, &k, 1, &st, errstr, sizeof(errstr)),
                     CS_ERR_REDIS_UNAVAILABLE);
    assert_int_equal(st, (enum idem_state) - 1);
    assert_true(strlen(errstr) > 0);
    assert_null(strstr(errstr, "wrong-Secret9"));
    assert_null(strstr(errstr, "s3cret"));
    assert_non_null(strstr(errstr, "AUTH"));
    tidem_free(a);

    /* No password at all: NOAUTH, also retryable. */
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rp.port);
    a = open_idem_url(url, "owner-a", 30000);
    assert_int_equal(idem_claim(a->idem, &k, 1, &st, errstr, sizeof(errstr)),
                     CS_ERR_REDIS_UNAVAILABLE);
    tidem_free(a);

    rs_stop(&rp, SIGTERM);
}

static void test_bad_options(void **state)
{
    (void)state;
    char errstr[256];
    /* URL validation lives in redis_conn (see test_redis_conn.c). */
    struct redis_conn_opts ro = {.url = "redis://127.0.0.1:1",
                                 .timeout_ms = 1000};
    struct redis_conn *redis = redis_conn_new(&ro, errstr, sizeof(errstr));
    struct idem_opts o = {
        .ns = "test",
        .owner = NULL,
        .ttl_days = 7,
        .buckets_per_day = 16,
        .lease_ms = 1000,
    };
    struct idem *idem;

    assert_non_null(redis);
    errstr[0] = '\0';
    assert_null(idem_new(NULL, &o, errstr, sizeof(errstr)));
    assert_true(strlen(errstr) > 0);
    assert_null(idem_new(redis, NULL, errstr, sizeof(errstr)));

    o.ns = "bad ns";
    assert_null(idem_new(redis, &o, errstr, sizeof(errstr)));
    o.ns = NULL;
    assert_null(idem_new(redis, &o, errstr, sizeof(errstr)));
    o.ns = "test";
    o.owner = "0123456789012345678901234567890123456789x"; /* 41 bytes */
    assert_null(idem_new(redis, &o, errstr, sizeof(errstr)));
    o.owner = "";
    assert_null(idem_new(redis, &o, errstr, sizeof(errstr)));
    o.owner = NULL;
    o.lease_ms = 0;
    assert_null(idem_new(redis, &o, errstr, sizeof(errstr)));
    o.lease_ms = 1000;
    o.buckets_per_day = 0;
    assert_null(idem_new(redis, &o, errstr, sizeof(errstr)));
    o.buckets_per_day = 16;
    o.ttl_days = 3651;
    assert_null(idem_new(redis, &o, errstr, sizeof(errstr)));
    o.ttl_days = 7;

    /* Nothing listens on port 1: still a handle; generated owner fits. */
    idem = idem_new(redis, &o, errstr, sizeof(errstr));
    assert_non_null(idem);
    assert_true(strlen(idem_owner(idem)) > 0);
    assert_true(strlen(idem_owner(idem)) <= IDEM_OWNER_MAX);
    /* n == 0 is OK without I/O even though Redis is unreachable. */
    {
        unsigned long long rt = redis_conn_round_trips(redis);
        enum idem_state st;
        assert_int_equal(idem_claim(idem, NULL, 0, &st, errstr, sizeof(errstr)),
                         CS_ERR_OK);
        assert_int_equal(redis_conn_round_trips(redis), rt);
        /* n > 0 reaches Redis, which is not there: retryable. */
        struct idem_key k = {"evt-nobody", now_ms()};
        assert_int_equal(idem_claim(idem, &k, 1, &st, errstr, sizeof(errstr)),
                         CS_ERR_REDIS_UNAVAILABLE);
        assert_true(redis_conn_round_trips(redis) == rt);
    }
    idem_free(idem);
    idem_free(NULL);
    redis_conn_free(redis);
}

static void test_redis_down_reconnect(void **state)
{
    (void)state;
    struct redis_server rp;
    char url[64];
    char errstr[256] = "";
    struct tidem *a;
    struct idem_key k = {"evt-down", now_ms()};
    enum idem_state st;

    redis_init(&rp, NULL);
    redis_start(&rp);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rp.port);
    a = open_idem_url(url, "owner-a", 30000);
    assert_int_equal(claim1(a, "evt-down"), IDEM_CLAIMED);

    rs_stop(&rp, SIGKILL);
    st = (enum idem_state) - 1;
    assert_int_equal(idem_claim(a->idem, &k, 1, &st, errstr, sizeof(errstr)),
                     CS_ERR_REDIS_UNAVAILABLE);
    assert_int_equal(st, (enum idem_state) - 1); /* out untouched */
    assert_true(cs_err_retryable(CS_ERR_REDIS_UNAVAILABLE));
    assert_int_equal(idem_mark_done(a->idem, &k, 1, errstr, sizeof(errstr)),
                     CS_ERR_REDIS_UNAVAILABLE);
    assert_int_equal(idem_release(a->idem, &k, 1, errstr, sizeof(errstr)),
                     CS_ERR_REDIS_UNAVAILABLE);
    assert_false(redis_conn_ping(a->redis));

    /* Back on the same port (empty: no persistence): next call works. */
    redis_start(&rp);
    assert_int_equal(idem_claim(a->idem, &k, 1, &st, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(st, IDEM_CLAIMED);
    assert_int_equal(idem_mark_done(a->idem, &k, 1, errstr, sizeof(errstr)),
                     CS_ERR_OK);

    /* Restart while idle: the stale connection is replaced within the
     * same call, no error surfaces. */
    rs_stop(&rp, SIGKILL);
    redis_start(&rp);
    assert_int_equal(idem_claim(a->idem, &k, 1, &st, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(st, IDEM_CLAIMED);
    assert_true(redis_conn_ping(a->redis));

    /* A hung server (SIGSTOP): the call times out (timeout_ms = 1000)
     * retryably instead of blocking; after SIGCONT the next call works. */
    {
        struct timespec t0;
        struct timespec t1;
        double secs;

        kill(rp.pid, SIGSTOP);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        st = (enum idem_state) - 1;
        assert_int_equal(
            idem_claim(a->idem, &k, 1, &st, errstr, sizeof(errstr)),
            CS_ERR_REDIS_UNAVAILABLE);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        secs = (double)(t1.tv_sec - t0.tv_sec) +
               (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        assert_true(secs >= 0.9 && secs < 5.0);
        assert_int_equal(st, (enum idem_state) - 1);
        kill(rp.pid, SIGCONT);
        assert_int_equal(
            idem_claim(a->idem, &k, 1, &st, errstr, sizeof(errstr)), CS_ERR_OK);
        assert_int_equal(st, IDEM_CLAIMED); /* our own lease */
    }

    tidem_free(a);
    rs_stop(&rp, SIGTERM);
}

/* calls of one command in INFO commandstats, e.g. "evalsha". */
static long long cmd_calls(const struct redis_server *rp, const char *cmd)
{
    redisReply *r = admin_cmd(rp, "INFO", "commandstats");
    char needle[64];
    const char *p;
    long long calls = 0;

    snprintf(needle, sizeof(needle), "cmdstat_%s:calls=", cmd);
    p = strstr(r->str, needle);
    if (p)
        calls = strtoll(p + strlen(needle), NULL, 10);
    freeReplyObject(r);
    return calls;
}

static void test_round_trips(void **state)
{
    struct fixture *fx = *state;
    struct tidem *a = open_idem(fx, "owner-a", 30000);
    static const size_t sizes[] = {1, 10, 1000};
    char ids[1000][24];
    struct idem_key keys[1000];
    enum idem_state out[1000];
    char errstr[256];
    int64_t t = now_ms();

    for (size_t i = 0; i < 1000; i++) {
        snprintf(ids[i], sizeof(ids[i]), "rt-%zu", i);
        keys[i].id = ids[i];
        keys[i].event_ms = t + (int64_t)i * 3600000; /* spans days */
    }
    /* Warm up: the first use of each script on a connection is EVAL. */
    assert_int_equal(idem_claim(a->idem, keys, 1, out, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(idem_mark_done(a->idem, keys, 1, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(idem_release(a->idem, keys, 1, errstr, sizeof(errstr)),
                     CS_ERR_OK);

    for (size_t s = 0; s < 3; s++) {
        size_t n = sizes[s];
        long long evalsha = cmd_calls(&fx->redis, "evalsha");
        unsigned long long rt = redis_conn_round_trips(a->redis);

        assert_int_equal(
            idem_claim(a->idem, keys, n, out, errstr, sizeof(errstr)),
            CS_ERR_OK);
        assert_int_equal(redis_conn_round_trips(a->redis), rt + 1);
        assert_int_equal(idem_release(a->idem, keys, n, errstr, sizeof(errstr)),
                         CS_ERR_OK);
        assert_int_equal(redis_conn_round_trips(a->redis), rt + 2);
        assert_int_equal(
            idem_mark_done(a->idem, keys, n, errstr, sizeof(errstr)),
            CS_ERR_OK);
        assert_int_equal(redis_conn_round_trips(a->redis), rt + 3);
        assert_int_equal(cmd_calls(&fx->redis, "evalsha"), evalsha + 3);
    }

    /* Script cache flushed: EVALSHA -> NOSCRIPT -> EVAL, still correct. */
    freeReplyObject(admin_cmd(&fx->redis, "SCRIPT", "FLUSH"));
    {
        unsigned long long rt = redis_conn_round_trips(a->redis);
        assert_int_equal(
            idem_claim(a->idem, keys, 3, out, errstr, sizeof(errstr)),
            CS_ERR_OK);
        assert_int_equal(out[0], IDEM_DUPLICATE);
        assert_int_equal(redis_conn_round_trips(a->redis), rt + 2);
        assert_int_equal(
            idem_claim(a->idem, keys, 3, out, errstr, sizeof(errstr)),
            CS_ERR_OK);
        assert_int_equal(redis_conn_round_trips(a->redis), rt + 3);
    }
    tidem_free(a);
}

static void test_big_batch(void **state)
{
    struct fixture *fx = *state;
    struct tidem *a = open_idem(fx, "owner-a", 30000);
    enum { N = 10000 };
    char(*ids)[24] = malloc(N * sizeof(*ids));
    struct idem_key *keys = malloc(N * sizeof(*keys));
    enum idem_state *out = malloc(N * sizeof(*out));
    char errstr[256];
    int64_t t = now_ms();
    size_t nkeys = 0;
    unsigned long long rt;

    assert_non_null(ids);
    assert_non_null(keys);
    assert_non_null(out);
    for (size_t i = 0; i < N; i++) {
        snprintf(ids[i], sizeof(ids[i]), "big-%zu", i);
        keys[i].id = ids[i];
        keys[i].event_ms = t;
    }
    rt = redis_conn_round_trips(a->redis);
    assert_int_equal(idem_claim(a->idem, keys, N, out, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(out[i], IDEM_CLAIMED);
    assert_int_equal(idem_mark_done(a->idem, keys, N, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(idem_claim(a->idem, keys, N, out, errstr, sizeof(errstr)),
                     CS_ERR_OK);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(out[i], IDEM_DUPLICATE);
    assert_int_equal(redis_conn_round_trips(a->redis), rt + 3);
    /* Every id is stored exactly once across the 16 buckets of the day. */
    assert_int_equal(check_buckets(&fx->redis, 1, 9 * 86400, &nkeys), N);
    assert_int_equal(nkeys, 16);
    free(ids);
    free(keys);
    free(out);
    tidem_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_claim_done_duplicate, test_setup),
        cmocka_unit_test_setup(test_in_flight_other_owner, test_setup),
        cmocka_unit_test_setup(test_lease_expiry_takeover, test_setup),
        cmocka_unit_test_setup(test_same_owner_reclaim, test_setup),
        cmocka_unit_test_setup(test_release_lets_other_claim, test_setup),
        cmocka_unit_test_setup(test_repeated_id_in_batch, test_setup),
        cmocka_unit_test_setup(test_settle_claim_one_trip, test_setup),
        cmocka_unit_test_setup(test_bucket_ttl, test_setup),
        cmocka_unit_test_setup(test_round_trips, test_setup),
        cmocka_unit_test_setup(test_big_batch, test_setup),
        cmocka_unit_test(test_password_auth),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_redis_down_reconnect),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
