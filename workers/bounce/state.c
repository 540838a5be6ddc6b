/*
 * state - the Redis script of the bounce worker (see state.h).
 *
 * ARGV layout: ttl_ms, nd, nd x (key, eid), then 10 fields per op:
 *   S: "S", key, t, v, eid, sup_key, member, reset(0/1), "", ""
 *   C: "C", counter key, t, threshold, eid, sup_key, member, status key,
 *      window_ms, thr_prefix
 * Reply: 2 integers per op (verdict, crossing time).
 * Counters keep two windows behind their newest bounce: a bounce arriving
 * up to one window after a newer one still completes its own window; one
 * later than that only counts towards windows of newer bounces (memory per
 * address stays bounded by the bounces of two windows).
 * Times travel as decimal strings and are stored as given, so no float
 * formatting ever touches them (Lua numbers are exact up to 2^53 ms).
 */
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/redis_conn.h"
#include "workers/bounce/state.h"

#define OP_FIELDS 10
#define NUM_MAX   24

static const char SCRIPT[] =
    "local ttl = ARGV[1]\n"
    "local nd = tonumber(ARGV[2])\n"
    "local i = 3\n"
    "for _ = 1, nd do\n"
    "  if redis.call('HGET', ARGV[i], 'e') == ARGV[i + 1] then\n"
    "    redis.call('HSET', ARGV[i], 'd', '1')\n"
    "  end\n"
    "  i = i + 2\n"
    "end\n"
    "local function sup(key, member, v)\n"
    "  if key == '' then return end\n"
    "  if v == 1 then redis.call('SADD', key, member)\n"
    "  else redis.call('SREM', key, member) end\n"
    "end\n"
    "local function cas(key, ts, v, e, skey, member, reset)\n"
    "  local t = tonumber(ts)\n"
    "  if reset then\n"
    "    local r = redis.call('HGET', key, 'r')\n"
    "    if not r or tonumber(r) < t then\n"
    "      redis.call('HSET', key, 'r', ts)\n"
    "      redis.call('PEXPIRE', key, ttl)\n"
    "    end\n"
    "  end\n"
    "  local cur = redis.call('HMGET', key, 't', 'v', 'e', 'd')\n"
    "  if cur[1] then\n"
    "    if cur[3] == e then\n"
    "      if cur[4] == '1' then return 2 end\n"
    "      return 1\n"
    "    end\n"
    "    local ct = tonumber(cur[1])\n"
    "    local cv = tonumber(cur[2])\n"
    "    if t < ct then return 3 end\n"
    "    if t == ct then\n"
    "      if v == cv then return 2 end\n"
    "      if v ~= 1 then return 3 end\n"
    "    end\n"
    "  end\n"
    "  redis.call('HSET', key, 't', ts, 'v', v, 'e', e, 'd', '0')\n"
    "  redis.call('PEXPIRE', key, ttl)\n"
    "  sup(skey, member, v)\n"
    "  return 1\n"
    "end\n"
    "local function count(zkey, ts, thr, e, skey, member, status, win, pfx)\n"
    "  local t = tonumber(ts)\n"
    "  local r = tonumber(redis.call('HGET', status, 'r') or '-1')\n"
    "  if t <= r then return 4, 0 end\n"
    "  redis.call('ZADD', zkey, ts, e)\n"
    "  local top = redis.call('ZREVRANGE', zkey, 0, 0, 'WITHSCORES')\n"
    "  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', '(' .. (tonumber(top[2]) "
    "- 2 * win))\n"
    "  redis.call('PEXPIRE', zkey, 2 * win + 86400000)\n"
    "  local ends = redis.call('ZRANGEBYSCORE', zkey, ts, t + win, "
    "'WITHSCORES')\n"
    "  for j = 2, #ends, 2 do\n"
    "    local s = tonumber(ends[j])\n"
    "    local lo = s - win\n"
    "    if lo <= r then lo = r + 1 end\n"
    "    if redis.call('ZCOUNT', zkey, lo, s) >= thr then\n"
    "      local eid = pfx .. ends[j]\n"
    "      local cur = redis.call('HMGET', status, 't', 'v', 'e', 'd')\n"
    "      if cur[2] == '1' then\n"
    "        if cur[3] == eid and cur[4] ~= '1' then return 1, s end\n"
    "        return 2, s\n"
    "      end\n"
    "      if cur[1] and tonumber(cur[1]) > s then return 3, s end\n"
    "      redis.call('HSET', status, 't', ends[j], 'v', 1, 'e', eid, 'd', "
    "'0')\n"
    "      redis.call('PEXPIRE', status, ttl)\n"
    "      sup(skey, member, 1)\n"
    "      return 1, s\n"
    "    end\n"
    "  end\n"
    "  return 0, 0\n"
    "end\n"
    "local out = {}\n"
    "while i <= #ARGV do\n"
    "  local a = ARGV\n"
    "  local v, x = 0, 0\n"
    "  if a[i] == 'S' then\n"
    "    v = cas(a[i+1], a[i+2], tonumber(a[i+3]), a[i+4], a[i+5], a[i+6], "
    "a[i+7] == '1')\n"
    "  else\n"
    "    v, x = count(a[i+1], a[i+2], tonumber(a[i+3]), a[i+4], a[i+5], "
    "a[i+6], a[i+7], tonumber(a[i+8]), a[i+9])\n"
    "  end\n"
    "  out[#out + 1] = v\n"
    "  out[#out + 1] = x\n"
    "  i = i + 10\n"
    "end\n"
    "return out\n";

void bounce_state_init(struct bounce_state *st, struct redis_conn *rc,
                       int64_t ttl_ms)
{
    st->rc = rc;
    st->ttl_ms = ttl_ms;
    redis_script_init(&st->script, SCRIPT);
}

enum cs_err bounce_state_run(struct bounce_state *st,
                             const struct bounce_done *done, size_t nd,
                             struct bounce_state_op *ops, size_t n,
                             char *errstr, size_t errstr_size)
{
    size_t argc = 2 + 2 * nd + OP_FIELDS * n;
    const char **argv = calloc(argc, sizeof(*argv));
    char(*nums)[NUM_MAX] = calloc(4 * n + 2, sizeof(*nums));
    redisReply *reply = NULL;
    enum cs_err err = CS_ERR_NOMEM;
    size_t a = 0;

    if (nd + n == 0) {
        err = CS_ERR_OK;
        goto out_free;
    }
    if (!argv || !nums) {
        snprintf(errstr, errstr_size, "out of memory");
        goto out_free;
    }
    snprintf(nums[0], NUM_MAX, "%" PRId64, st->ttl_ms);
    snprintf(nums[1], NUM_MAX, "%zu", nd);
    argv[a++] = nums[0];
    argv[a++] = nums[1];
    for (size_t i = 0; i < nd; i++) {
        argv[a++] = done[i].key;
        argv[a++] = done[i].eid;
    }
    for (size_t i = 0; i < n; i++) {
        const struct bounce_state_op *op = &ops[i];
        char *t = nums[2 + 4 * i];
        char *x = nums[3 + 4 * i];
        char *w = nums[4 + 4 * i];
        snprintf(t, NUM_MAX, "%" PRId64, op->t);
        argv[a++] = op->type == 'C' ? "C" : "S";
        argv[a++] = op->key;
        argv[a++] = t;
        if (op->type == 'C') {
            snprintf(x, NUM_MAX, "%d", op->threshold);
            snprintf(w, NUM_MAX, "%" PRId64, op->window_ms);
            argv[a++] = x;
            argv[a++] = op->eid;
            argv[a++] = op->sup_key ? op->sup_key : "";
            argv[a++] = op->member ? op->member : "";
            argv[a++] = op->status_key;
            argv[a++] = w;
            argv[a++] = op->thr_prefix;
        } else {
            argv[a++] = op->value ? "1" : "0";
            argv[a++] = op->eid;
            argv[a++] = op->sup_key ? op->sup_key : "";
            argv[a++] = op->member ? op->member : "";
            argv[a++] = op->reset ? "1" : "0";
            argv[a++] = "";
            argv[a++] = "";
        }
    }
    err = redis_conn_eval(st->rc, &st->script, 0, (int)argc, argv, NULL, &reply,
                          errstr, errstr_size);
    if (err != CS_ERR_OK)
        goto out_free;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 * n) {
        snprintf(errstr, errstr_size,
                 "bounce state script: unexpected reply (type %d, %zu "
                 "elements for %zu ops)",
                 reply->type, reply->elements, n);
        err = CS_ERR_REDIS_UNAVAILABLE;
        goto out_free;
    }
    for (size_t i = 0; i < n; i++) {
        ops[i].verdict = (enum bounce_verdict)reply->element[2 * i]->integer;
        ops[i].cross_t = reply->element[2 * i + 1]->integer;
    }
out_free:
    if (reply)
        freeReplyObject(reply);
    free(nums);
    free(argv);
    return err;
}

void bounce_key_consent(char *buf, size_t size, const char *tenant,
                        const char *email, const char *consent,
                        const char *topic)
{
    snprintf(buf, size, "cs:bo:c:%s|%s|%s%s%s", tenant, email, consent,
             topic ? "|" : "", topic ? topic : "");
}

void bounce_key_channel(char *buf, size_t size, const char *tenant,
                        const char *email)
{
    snprintf(buf, size, "cs:bo:x:%s|%s", tenant, email);
}

void bounce_key_status(char *buf, size_t size, const char *email)
{
    snprintf(buf, size, "cs:bo:b:%s", email);
}

void bounce_key_counter(char *buf, size_t size, const char *tenant,
                        const char *email, bool hard)
{
    snprintf(buf, size, "cs:bo:n:%s|%s|%c", tenant, email, hard ? 'h' : 's');
}

void bounce_sup_consent(char *buf, size_t size, const char *tenant,
                        const char *consent, const char *topic)
{
    snprintf(buf, size, "cs:sup:c:%s|%s%s%s", tenant, consent, topic ? "/" : "",
             topic ? topic : "");
}

void bounce_sup_channel(char *buf, size_t size, const char *tenant)
{
    snprintf(buf, size, "cs:sup:x:%s", tenant);
}
