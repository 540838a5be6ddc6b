/*
 * store - Redis job records, list leases, page checks (see store.h).
 */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "workers/listsync/store.h"

/* KEYS: job, lease, seen. ARGV: owner, lease_ms. -> {code, attempt}
 * A (re)start forgets what an earlier attempt sent: the list is cleared
 * and refilled from the beginning. */
static const char BEGIN[] =
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if st == 'done' or st == 'failed' then return {2, 0} end\n"
    "local holder = redis.call('GET', KEYS[2])\n"
    "if holder and holder ~= ARGV[1] then return {3, 0} end\n"
    "redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])\n"
    "redis.call('DEL', KEYS[3])\n"
    "local n = redis.call('HINCRBY', KEYS[1], 'attempt', 1)\n"
    "redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1])\n"
    "if st == 'running' then return {1, n} end\n"
    "return {0, n}\n";

/* KEYS: job, lease. ARGV: owner, lease_ms, progress -> 1 ours / 0 lost */
static const char RENEW[] =
    "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[2])\n"
    "redis.call('HSET', KEYS[1], 'progress', ARGV[3])\n"
    "return 1\n";

/* KEYS: job, lease, seen. ARGV: owner, state ('' = interrupted), status,
 * ttl_s */
static const char END[] =
    "if ARGV[2] ~= '' then\n"
    "  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'status', ARGV[3])\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[4])\n"
    "end\n"
    "if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) "
    "end\n"
    "redis.call('DEL', KEYS[3])\n"
    "return 1\n";

/* KEYS: sup_b, sup_x, sup_c, seen. ARGV: ttl_ms, emails... */
static const char PAGE[] =
    "local out = {}\n"
    "for i = 2, #ARGV do\n"
    "  local e = ARGV[i]\n"
    "  if redis.call('SISMEMBER', KEYS[1], e) == 1 then out[#out+1] = 1\n"
    "  elseif redis.call('SISMEMBER', KEYS[2], e) == 1 or\n"
    "         redis.call('SISMEMBER', KEYS[3], e) == 1 then out[#out+1] = 2\n"
    "  elseif ARGV[1] ~= '0' and redis.call('SADD', KEYS[4], e) == 0 then\n"
    "    out[#out+1] = 3\n"
    "  else out[#out+1] = 0 end\n"
    "end\n"
    "if ARGV[1] ~= '0' then redis.call('PEXPIRE', KEYS[4], ARGV[1]) end\n"
    "return out\n";

void store_init(struct store *s, struct redis_conn *rc, const char *tenant,
                const char *event_id, const char *esp_list)
{
    struct timespec ts;

    memset(s, 0, sizeof(*s));
    s->rc = rc;
    redis_script_init(&s->begin, BEGIN);
    redis_script_init(&s->renew, RENEW);
    redis_script_init(&s->end, END);
    redis_script_init(&s->page, PAGE);
    snprintf(s->job_key, sizeof(s->job_key), "cs:ls:job:%s|%s", tenant,
             event_id);
    snprintf(s->lease_key, sizeof(s->lease_key), "cs:ls:lease:%s|%s", tenant,
             esp_list);
    snprintf(s->seen_key, sizeof(s->seen_key), "cs:ls:seen:%s|%s", tenant,
             event_id);
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(s->owner, sizeof(s->owner), "%ld-%ld-%ld", (long)getpid(),
             (long)ts.tv_sec, ts.tv_nsec);
}

static enum cs_err eval(struct store *s, const struct redis_script *sc,
                        int nkeys, int argc, const char **argv, redisReply **r,
                        char *errstr, size_t errstr_size)
{
    return redis_conn_eval(s->rc, sc, nkeys, argc, argv, NULL, r, errstr,
                           errstr_size);
}

enum cs_err store_begin(struct store *s, int lease_ms, enum store_begin *out,
                        long *attempt, char *errstr, size_t errstr_size)
{
    char ms[24];
    const char *argv[] = {s->job_key, s->lease_key, s->seen_key, s->owner, ms};
    redisReply *r = NULL;
    enum cs_err err;

    snprintf(ms, sizeof(ms), "%d", lease_ms);
    err = eval(s, &s->begin, 3, 5, argv, &r, errstr, errstr_size);
    if (err)
        return err;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        freeReplyObject(r);
        snprintf(errstr, errstr_size, "job begin: unexpected reply");
        return CS_ERR_REDIS_PROTOCOL;
    }
    *out = (enum store_begin)r->element[0]->integer;
    *attempt = (long)r->element[1]->integer;
    freeReplyObject(r);
    return CS_ERR_OK;
}

enum cs_err store_renew(struct store *s, int lease_ms, const char *progress,
                        bool *ours, char *errstr, size_t errstr_size)
{
    char ms[24];
    const char *argv[] = {s->job_key, s->lease_key, s->owner, ms, progress};
    redisReply *r = NULL;
    enum cs_err err;

    snprintf(ms, sizeof(ms), "%d", lease_ms);
    err = eval(s, &s->renew, 2, 5, argv, &r, errstr, errstr_size);
    if (err)
        return err;
    *ours = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return CS_ERR_OK;
}

enum cs_err store_end(struct store *s, const char *state, const char *status,
                      int ttl_s, char *errstr, size_t errstr_size)
{
    char ttl[24];
    const char *argv[] = {s->job_key, s->lease_key,       s->seen_key,
                          s->owner,   state ? state : "", status ? status : "",
                          ttl};
    redisReply *r = NULL;
    enum cs_err err;

    snprintf(ttl, sizeof(ttl), "%d", ttl_s);
    err = eval(s, &s->end, 3, 7, argv, &r, errstr, errstr_size);
    if (r)
        freeReplyObject(r);
    return err;
}

enum cs_err store_page(struct store *s, const char *tenant, const char *consent,
                       const char *const *emails, size_t n, bool dedupe,
                       enum page_code *out, char *errstr, size_t errstr_size)
{
    char sup_x[300], sup_c[400];
    const char **argv = calloc(n + 5, sizeof(*argv));
    redisReply *r = NULL;
    enum cs_err err;

    if (!argv)
        return CS_ERR_NOMEM;
    snprintf(sup_x, sizeof(sup_x), "cs:sup:x:%s", tenant);
    snprintf(sup_c, sizeof(sup_c), "cs:sup:c:%s|%s", tenant, consent);
    argv[0] = "cs:sup:b";
    argv[1] = sup_x;
    argv[2] = sup_c;
    argv[3] = s->seen_key;
    argv[4] = dedupe ? "86400000" : "0";
    for (size_t i = 0; i < n; i++)
        argv[5 + i] = emails[i];
    err = eval(s, &s->page, 4, (int)n + 5, argv, &r, errstr, errstr_size);
    free(argv);
    if (err)
        return err;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != n) {
        freeReplyObject(r);
        snprintf(errstr, errstr_size, "page check: unexpected reply");
        return CS_ERR_REDIS_PROTOCOL;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = (enum page_code)r->element[i]->integer;
    freeReplyObject(r);
    return CS_ERR_OK;
}

/* KEYS: registration. ARGV: esp_list, consent, list name, list set. */
static const char REGISTER[] =
    "redis.call('HSET', KEYS[1], 'esp', ARGV[1], 'consent', ARGV[2], "
    "'name', ARGV[3], 'set', ARGV[4])\n"
    "return 1\n";

/* KEYS: registration -> {esp, consent, name, set} or empty */
static const char LOOKUP[] =
    "return redis.call('HMGET', KEYS[1], 'esp', 'consent', 'name', 'set')\n";

static void inc_key(char *buf, size_t size, const char *tenant,
                    const char *list_id)
{
    snprintf(buf, size, "cs:ls:inc:%s|%s", tenant, list_id);
}

enum cs_err store_register(struct redis_conn *rc, const char *tenant,
                           const char *list_id,
                           const struct store_registration *reg, char *errstr,
                           size_t errstr_size)
{
    struct redis_script sc;
    char key[512];
    char set[8];
    const char *argv[5];
    redisReply *r = NULL;
    enum cs_err err;

    redis_script_init(&sc, REGISTER);
    inc_key(key, sizeof(key), tenant, list_id);
    snprintf(set, sizeof(set), "%d", reg->set);
    argv[0] = key;
    argv[1] = reg->esp_list;
    argv[2] = reg->consent;
    argv[3] = reg->name;
    argv[4] = set;
    err = redis_conn_eval(rc, &sc, 1, 5, argv, NULL, &r, errstr, errstr_size);
    if (r)
        freeReplyObject(r);
    return err;
}

enum cs_err store_lookup(struct redis_conn *rc, const char *tenant,
                         const char *list_id, struct store_registration *reg,
                         bool *found, char *errstr, size_t errstr_size)
{
    struct redis_script sc;
    char key[512];
    const char *argv[1] = {key};
    redisReply *r = NULL;
    enum cs_err err;

    *found = false;
    redis_script_init(&sc, LOOKUP);
    inc_key(key, sizeof(key), tenant, list_id);
    err = redis_conn_eval(rc, &sc, 1, 1, argv, NULL, &r, errstr, errstr_size);
    if (err)
        return err;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        snprintf(reg->esp_list, sizeof(reg->esp_list), "%s",
                 r->element[0]->str);
        snprintf(reg->consent, sizeof(reg->consent), "%s",
                 r->element[1]->type == REDIS_REPLY_STRING ? r->element[1]->str
                                                           : "");
        snprintf(reg->name, sizeof(reg->name), "%s",
                 r->element[2]->type == REDIS_REPLY_STRING ? r->element[2]->str
                                                           : "");
        reg->set = r->element[3]->type == REDIS_REPLY_STRING
                       ? (int)strtol(r->element[3]->str, NULL, 10)
                       : 0;
        *found = true;
    }
    freeReplyObject(r);
    return CS_ERR_OK;
}
