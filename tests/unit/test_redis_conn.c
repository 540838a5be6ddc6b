/*
 * test_redis_conn - redis_conn against a real redis-server on a free port.
 *
 * The group starts one redis-server (tests/support/redis_server.h) and kills
 * it in teardown; tests that need a password, a restart or a server that is
 * not there use their own instance or port.
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

#define ADMIN_TIMEOUT_MS 1000 /* connect timeout of admin connections */
#define CONN_TIMEOUT_MS  1000 /* timeout of the connection under test */

static const char echo_lua[] =
    "return {#KEYS, #ARGV, KEYS[1] or false, ARGV[1] or false}";
static const char answer_lua[] = "return 42";
static const char set_lua[] = "return redis.call('SET', KEYS[1], ARGV[1])";
static const char boom_lua[] = "error('boom-' .. ARGV[1])";
static const char syntax_lua[] = "return (";
static const char count_lua[] = "return #KEYS * 1000000 + #ARGV";

struct fixture {
    struct redis_server redis; /* the group's server */
    char url[64];              /* redis://127.0.0.1:<port> */
};

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
    if (!rs_init_local(&fx->redis, NULL, ADMIN_TIMEOUT_MS) ||
        !rs_start(&fx->redis)) {
        free(fx);
        return -1;
    }
    snprintf(fx->url, sizeof(fx->url), "redis://127.0.0.1:%d", fx->redis.port);
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

static struct redis_conn *open_conn(const char *url)
{
    char errstr[256] = "";
    struct redis_conn_opts o = {.url = url, .timeout_ms = CONN_TIMEOUT_MS};
    struct redis_conn *c = redis_conn_new(&o, errstr, sizeof(errstr));

    if (!c)
        fail_msg("redis_conn_new: %s", errstr);
    return c;
}

/* Runs a command on an admin connection; caller frees the reply. */
static redisReply *admin_cmd(const struct redis_server *rs, const char *cmd)
{
    redisContext *c = rs_connect(rs);
    redisReply *r;

    assert_non_null(c);
    r = redisCommand(c, cmd);
    assert_non_null(r);
    redisFree(c);
    return r;
}

/* calls of one command in INFO commandstats, e.g. "evalsha". */
static long long cmd_calls(const struct redis_server *rs, const char *cmd)
{
    redisReply *r = admin_cmd(rs, "INFO commandstats");
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

/* Evaluates a no-argument script that must answer the integer want. */
static void eval_int(struct redis_conn *c, const struct redis_script *s,
                     long long want)
{
    redisReply *r = NULL;
    char errstr[256] = "";
    enum cs_err err =
        redis_conn_eval(c, s, 0, 0, NULL, NULL, &r, errstr, sizeof(errstr));

    if (err != CS_ERR_OK)
        fail_msg("redis_conn_eval: %s: %s", cs_err_name(err), errstr);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, want);
    freeReplyObject(r);
}

/* ------------------------------------------------------------------------ */

static void test_eval_values(void **state)
{
    struct fixture *fx = *state;
    struct redis_conn *c = open_conn(fx->url);
    struct redis_script echo;
    struct redis_script answer;
    const char bin[] = {'a', '\0', 'b'};
    const char *argv[2] = {"k1", bin};
    size_t argvlen[2] = {2, sizeof(bin)};
    redisReply *r = NULL;
    char errstr[256] = "";
    unsigned long long rt;
    long long evalsha;

    redis_script_init(&echo, echo_lua);
    redis_script_init(&answer, answer_lua);
    assert_ptr_equal(echo.body, echo_lua);
    assert_int_equal(strlen(echo.sha), 40);
    {
        /* The SHA Redis itself computes for the body. */
        redisContext *a = rs_connect(&fx->redis);
        assert_non_null(a);
        r = redisCommand(a, "SCRIPT LOAD %s", echo_lua);
        assert_non_null(r);
        assert_string_equal(r->str, echo.sha);
        freeReplyObject(r);
        redisFree(a);
        freeReplyObject(admin_cmd(&fx->redis, "SCRIPT FLUSH"));
    }

    rt = redis_conn_round_trips(c);
    assert_int_equal(redis_conn_eval(c, &echo, 1, 2, argv, argvlen, &r, errstr,
                                     sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(redis_conn_round_trips(c), rt + 1);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 4);
    assert_int_equal(r->element[0]->integer, 1);
    assert_int_equal(r->element[1]->integer, 1);
    assert_string_equal(r->element[2]->str, "k1");
    assert_int_equal(r->element[3]->len, sizeof(bin)); /* binary safe */
    assert_memory_equal(r->element[3]->str, bin, sizeof(bin));
    freeReplyObject(r);

    /* argvlen NULL = strlen; numkeys 0 makes every argument an ARGV. */
    argv[1] = "plain";
    assert_int_equal(
        redis_conn_eval(c, &echo, 0, 2, argv, NULL, &r, errstr, sizeof(errstr)),
        CS_ERR_OK);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 4);
    assert_int_equal(r->element[0]->integer, 0);
    assert_int_equal(r->element[1]->integer, 2);
    assert_int_equal(r->element[2]->type, REDIS_REPLY_NIL);
    assert_string_equal(r->element[3]->str, "k1");
    freeReplyObject(r);

    /* Two scripts on one connection: after the first EVAL of each, every
     * call is one EVALSHA round trip. */
    eval_int(c, &answer, 42);
    evalsha = cmd_calls(&fx->redis, "evalsha");
    rt = redis_conn_round_trips(c);
    for (int i = 0; i < 3; i++) {
        eval_int(c, &answer, 42);
        assert_int_equal(redis_conn_eval(c, &echo, 1, 2, argv, NULL, &r, errstr,
                                         sizeof(errstr)),
                         CS_ERR_OK);
        freeReplyObject(r);
    }
    assert_int_equal(redis_conn_round_trips(c), rt + 6);
    assert_int_equal(cmd_calls(&fx->redis, "evalsha"), evalsha + 6);
    assert_true(redis_conn_ping(c));
    assert_int_equal(redis_conn_round_trips(c), rt + 7);
    redis_conn_free(c);
    redis_conn_free(NULL);
}

/* More arguments than fit the stack buffer (heap path). */
static void test_eval_many_args(void **state)
{
    struct fixture *fx = *state;
    struct redis_conn *c = open_conn(fx->url);
    struct redis_script count;
    enum { N = 1000 };
    char(*args)[16] = malloc(N * sizeof(*args));
    const char **argv = malloc(N * sizeof(*argv));
    redisReply *r = NULL;
    char errstr[256] = "";

    assert_non_null(args);
    assert_non_null(argv);
    for (int i = 0; i < N; i++) {
        snprintf(args[i], sizeof(args[i]), "a%d", i);
        argv[i] = args[i];
    }
    redis_script_init(&count, count_lua);
    assert_int_equal(redis_conn_eval(c, &count, 300, N, argv, NULL, &r, errstr,
                                     sizeof(errstr)),
                     CS_ERR_OK);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, 300LL * 1000000 + (N - 300));
    freeReplyObject(r);
    free(argv);
    free(args);
    redis_conn_free(c);
}

static void test_noscript_fallback(void **state)
{
    struct fixture *fx = *state;
    struct redis_conn *c = open_conn(fx->url);
    struct redis_script answer;
    struct redis_script count;
    unsigned long long rt;
    long long evals;

    redis_script_init(&answer, answer_lua);
    redis_script_init(&count, count_lua);
    eval_int(c, &answer, 42); /* EVAL: now cached */
    eval_int(c, &count, 0);
    freeReplyObject(admin_cmd(&fx->redis, "SCRIPT FLUSH"));

    /* EVALSHA -> NOSCRIPT -> EVAL, and the right answer. */
    evals = cmd_calls(&fx->redis, "eval");
    rt = redis_conn_round_trips(c);
    eval_int(c, &answer, 42);
    assert_int_equal(redis_conn_round_trips(c), rt + 2);
    assert_int_equal(cmd_calls(&fx->redis, "eval"), evals + 1);
    /* The flush took the other script too: it goes out as EVAL directly. */
    eval_int(c, &count, 0);
    assert_int_equal(redis_conn_round_trips(c), rt + 3);
    assert_int_equal(cmd_calls(&fx->redis, "eval"), evals + 2);
    /* Both cached again. */
    eval_int(c, &answer, 42);
    eval_int(c, &count, 0);
    assert_int_equal(redis_conn_round_trips(c), rt + 5);
    assert_int_equal(cmd_calls(&fx->redis, "eval"), evals + 2);
    redis_conn_free(c);
}

static void test_reconnect_after_restart(void **state)
{
    (void)state;
    struct redis_server rs;
    char url[64];
    struct redis_conn *c;
    struct redis_script answer;
    redisReply dummy;
    redisReply *r = NULL;
    char errstr[256] = "";
    unsigned long long rt;

    assert_true(rs_init_local(&rs, NULL, ADMIN_TIMEOUT_MS));
    redis_start(&rs);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
    c = open_conn(url);
    redis_script_init(&answer, answer_lua);
    eval_int(c, &answer, 42);
    eval_int(c, &answer, 42); /* EVALSHA on the cached script */

    /* Restart while idle: the dead connection is replaced within the same
     * call (one failed exchange, then EVAL on the fresh connection: the
     * new server has an empty script cache). */
    rs_stop(&rs, SIGKILL);
    redis_start(&rs);
    rt = redis_conn_round_trips(c);
    eval_int(c, &answer, 42);
    assert_int_equal(redis_conn_round_trips(c), rt + 2);
    assert_int_equal(cmd_calls(&rs, "evalsha"), 0);
    assert_int_equal(cmd_calls(&rs, "eval"), 1);

    /* Down: retryable error, reply untouched as NULL; ping false. */
    rs_stop(&rs, SIGKILL);
    r = &dummy; /* must be reset to NULL */
    assert_int_equal(redis_conn_eval(c, &answer, 0, 0, NULL, NULL, &r, errstr,
                                     sizeof(errstr)),
                     CS_ERR_REDIS_UNAVAILABLE);
    assert_null(r);
    assert_true(cs_err_retryable(CS_ERR_REDIS_UNAVAILABLE));
    assert_non_null(strstr(errstr, "127.0.0.1"));
    assert_false(redis_conn_ping(c));

    /* Back on the same port: the next call works. */
    redis_start(&rs);
    eval_int(c, &answer, 42);
    assert_true(redis_conn_ping(c));
    redis_conn_free(c);
    rs_stop(&rs, SIGTERM);
}

static void test_nothing_listens(void **state)
{
    (void)state;
    char url[64];
    struct redis_conn *c;
    struct redis_script answer;
    redisReply *r = NULL;
    char errstr[256] = "";
    int port = rs_free_port();

    assert_true(port > 0);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    c = open_conn(url); /* lazy: not an error */
    redis_script_init(&answer, answer_lua);
    assert_int_equal(redis_conn_eval(c, &answer, 0, 0, NULL, NULL, &r, errstr,
                                     sizeof(errstr)),
                     CS_ERR_REDIS_UNAVAILABLE);
    assert_null(r);
    assert_true(strlen(errstr) > 0);
    assert_false(redis_conn_ping(c));
    assert_int_equal(redis_conn_round_trips(c), 0);
    redis_conn_free(c);
}

static void test_script_errors(void **state)
{
    struct fixture *fx = *state;
    struct redis_conn *c = open_conn(fx->url);
    struct redis_script boom;
    struct redis_script syntax;
    struct redis_script answer;
    const char *argv[1] = {"x7"};
    redisReply *r = NULL;
    char errstr[256] = "";
    unsigned long long rt;

    redis_script_init(&boom, boom_lua);
    redis_script_init(&syntax, syntax_lua);
    redis_script_init(&answer, answer_lua);
    eval_int(c, &answer, 42);

    /* A Lua runtime error surfaces as REDIS_PROTOCOL with its text. */
    rt = redis_conn_round_trips(c);
    assert_int_equal(
        redis_conn_eval(c, &boom, 0, 1, argv, NULL, &r, errstr, sizeof(errstr)),
        CS_ERR_REDIS_PROTOCOL);
    assert_null(r);
    assert_non_null(strstr(errstr, "boom-x7"));
    assert_int_equal(redis_conn_round_trips(c), rt + 1); /* no retry */
    /* ... twice (no NOSCRIPT confusion), then a compile error. */
    assert_int_equal(
        redis_conn_eval(c, &boom, 0, 1, argv, NULL, &r, errstr, sizeof(errstr)),
        CS_ERR_REDIS_PROTOCOL);
    assert_int_equal(redis_conn_eval(c, &syntax, 0, 0, NULL, NULL, &r, errstr,
                                     sizeof(errstr)),
                     CS_ERR_REDIS_PROTOCOL);
    assert_null(r);
    assert_true(strlen(errstr) > 0);
    /* The connection survives: the next call is one EVALSHA. */
    rt = redis_conn_round_trips(c);
    eval_int(c, &answer, 42);
    assert_int_equal(redis_conn_round_trips(c), rt + 1);

    /* A transient error (READONLY: the server became a replica) is
     * retryable and drops the connection; it works again afterwards. */
    {
        struct redis_script set;
        const char *kv[2] = {"ro-key", "v"};

        redis_script_init(&set, set_lua);
        freeReplyObject(admin_cmd(&fx->redis, "REPLICAOF 127.0.0.1 1"));
        assert_int_equal(redis_conn_eval(c, &set, 1, 2, kv, NULL, &r, errstr,
                                         sizeof(errstr)),
                         CS_ERR_REDIS_UNAVAILABLE);
        assert_null(r);
        assert_non_null(strstr(errstr, "READONLY"));
        freeReplyObject(admin_cmd(&fx->redis, "REPLICAOF NO ONE"));
        assert_int_equal(redis_conn_eval(c, &set, 1, 2, kv, NULL, &r, errstr,
                                         sizeof(errstr)),
                         CS_ERR_OK);
        assert_int_equal(r->type, REDIS_REPLY_STATUS);
        freeReplyObject(r);
    }
    redis_conn_free(c);
}

static void test_bad_arguments(void **state)
{
    struct fixture *fx = *state;
    struct redis_conn *c = open_conn(fx->url);
    struct redis_script answer;
    const char *argv[2] = {"a", NULL};
    redisReply *r = NULL;
    char errstr[256] = "";
    unsigned long long rt;

    redis_script_init(&answer, answer_lua);
    rt = redis_conn_round_trips(c);
    assert_int_equal(redis_conn_eval(c, &answer, 2, 1, argv, NULL, &r, errstr,
                                     sizeof(errstr)),
                     CS_ERR_INVALID_ARG);
    assert_int_equal(redis_conn_eval(c, &answer, -1, 1, argv, NULL, &r, errstr,
                                     sizeof(errstr)),
                     CS_ERR_INVALID_ARG);
    assert_int_equal(redis_conn_eval(c, &answer, 0, 2, argv, NULL, &r, errstr,
                                     sizeof(errstr)),
                     CS_ERR_INVALID_ARG);
    assert_int_equal(redis_conn_eval(c, &answer, 0, 1, NULL, NULL, &r, errstr,
                                     sizeof(errstr)),
                     CS_ERR_INVALID_ARG);
    assert_int_equal(
        redis_conn_eval(c, NULL, 0, 0, NULL, NULL, &r, errstr, sizeof(errstr)),
        CS_ERR_INVALID_ARG);
    assert_int_equal(redis_conn_eval(c, &answer, 0, 0, NULL, NULL, NULL, errstr,
                                     sizeof(errstr)),
                     CS_ERR_INVALID_ARG);
    assert_null(r);
    assert_int_equal(redis_conn_round_trips(c), rt); /* no I/O */
    redis_conn_free(c);
}

/* URL forms that must be rejected up front, never quoting the password. */
static void test_bad_urls(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "http://127.0.0.1:6379",
        "redis://topSecretPw@127.0.0.1:1",
        "redis://:topSecretPw@127.0.0.1:notaport",
        "redis://:topSecretPw@127.0.0.1:0",
        "redis://:topSecretPw@127.0.0.1:65536",
        "redis://:topSecretPw@127.0.0.1:1/x",
        "redis://:topSecretPw@127.0.0.1:1/-1",
        "redis://:topSecretPw@:1",
        "redis://:topSecret%zzPw@127.0.0.1:1",
        "redis://:topSecret%00Pw@127.0.0.1:1",
        "redis://:topSecretPw@[::1:1",
        "redis://:topSecretPw@[]:1",
        "redis://:topSecretPw@[::1]x",
    };
    char errstr[256];
    struct redis_conn_opts o = {.url = NULL, .timeout_ms = 1000};

    errstr[0] = '\0';
    assert_null(redis_conn_new(&o, errstr, sizeof(errstr)));
    assert_true(strlen(errstr) > 0);
    assert_null(redis_conn_new(NULL, errstr, sizeof(errstr)));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        errstr[0] = '\0';
        o.url = bad[i];
        if (redis_conn_new(&o, errstr, sizeof(errstr)))
            fail_msg("accepted bad url #%zu", i);
        assert_true(strlen(errstr) > 0);
        assert_null(strstr(errstr, "topSecret"));
    }
    o.url = "redis://127.0.0.1:1";
    o.timeout_ms = 0;
    assert_null(redis_conn_new(&o, errstr, sizeof(errstr)));

    /* Accepted forms (nothing listens on port 1; connecting is lazy). */
    {
        static const char *const good[] = {
            "redis://127.0.0.1:1",       "redis://127.0.0.1:1/",
            "redis://:pw@127.0.0.1:1/3", "redis://user:p%40w@127.0.0.1:1/0",
            "redis://[::1]:1",
        };
        o.timeout_ms = 1000;
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
            struct redis_conn *c;
            o.url = good[i];
            c = redis_conn_new(&o, errstr, sizeof(errstr));
            if (!c)
                fail_msg("rejected good url #%zu: %s", i, errstr);
            redis_conn_free(c);
        }
    }
}

static void test_password(void **state)
{
    (void)state;
    struct redis_server rs;
    char url[160];
    struct redis_conn *c;
    struct redis_script set;
    struct redis_script answer;
    const char *kv[2] = {"pw-key", "in-db-3"};
    redisReply *r = NULL;
    char errstr[256] = "";

    assert_true(rs_init_local(&rs, "s3cret-Right@1", ADMIN_TIMEOUT_MS));
    redis_start(&rs);
    redis_script_init(&set, set_lua);
    redis_script_init(&answer, answer_lua);

    /* Right password (%-encoded '@'), user form, db 3. */
    snprintf(url, sizeof(url),
             "redis://default:s3cret-Right%%401@127.0.0.1:%d/3", rs.port);
    c = open_conn(url);
    assert_int_equal(
        redis_conn_eval(c, &set, 1, 2, kv, NULL, &r, errstr, sizeof(errstr)),
        CS_ERR_OK);
    freeReplyObject(r);
    redis_conn_free(c);
    rs.db = 3;
    {
        redisContext *a = rs_connect(&rs);
        assert_non_null(a);
        r = redisCommand(a, "GET pw-key");
        assert_non_null(r);
        assert_string_equal(r->str, "in-db-3");
        freeReplyObject(r);
        redisFree(a);
    }
    rs.db = 0;

    /* Wrong password: retryable, and neither password in errstr. */
    snprintf(url, sizeof(url), "redis://:wrong-Secret9@127.0.0.1:%d", rs.port);
    c = open_conn(url);
    r = NULL;
    assert_int_equal(redis_conn_eval(c, &answer, 0, 0, NULL, NULL, &r, errstr,
                                     sizeof(errstr)),
                     CS_ERR_REDIS_UNAVAILABLE);
    assert_null(r);
    assert_non_null(strstr(errstr, "AUTH"));
    assert_null(strstr(errstr, "wrong-Secret9"));
    assert_null(strstr(errstr, "s3cret"));
    assert_false(redis_conn_ping(c));
    redis_conn_free(c);

    /* No password at all: NOAUTH, retryable, nothing secret either. */
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
    c = open_conn(url);
    assert_int_equal(redis_conn_eval(c, &answer, 0, 0, NULL, NULL, &r, errstr,
                                     sizeof(errstr)),
                     CS_ERR_REDIS_UNAVAILABLE);
    assert_non_null(strstr(errstr, "NOAUTH"));
    assert_null(strstr(errstr, "s3cret"));
    redis_conn_free(c);
    rs_stop(&rs, SIGTERM);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eval_values),
        cmocka_unit_test(test_eval_many_args),
        cmocka_unit_test(test_noscript_fallback),
        cmocka_unit_test(test_script_errors),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_reconnect_after_restart),
        cmocka_unit_test(test_nothing_listens),
        cmocka_unit_test(test_bad_urls),
        cmocka_unit_test(test_password),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
