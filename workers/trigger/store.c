/*
 * store - the trigger worker's Redis scripts (see store.h).
 *
 * Every script shares PRELUDE: the header format, the shard of a key and
 * the wheel operations. Times travel as decimal strings; Lua numbers are
 * exact up to 2^53, far above epoch milliseconds. Scripts may run twice
 * for one call (redis_conn retries once on a dead idle connection): a
 * second start is a "duplicate", a second transition finds no match, a
 * second completion a "conflict", a second claim returns other timers
 * (the first run's are leased and fire again when the lease ends).
 */
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/trigger/store.h"

#define NUM_MAX 24

/* The scripts address the blob as header (bytes 1..19) + instance id
 * (20..INST_ID_END) + context. */
#define INST_ID_END_STR "23"
_Static_assert(INST_HDR_LEN == 19 && INST_HDR_LEN + INST_ID_LEN == 23,
               "store.c's Lua offsets follow instance.h's blob layout");

#define PRELUDE                                                                \
    "local HDR = '<HBBBI4I4I4H'\n"                                             \
    "local SLOT = " STORE_SLOT_MS_STR "\n"                                     \
    "local IDEND = " INST_ID_END_STR "\n"                                      \
    "local function shard(k)\n"                                                \
    "  return 'cs:tr:s:' .. string.format('%04x', (string.byte(k, 1) * 256 "   \
    "+ string.byte(k, 2)) % 16384)\n"                                          \
    "end\n"                                                                    \
    "local function hdr(b)\n"                                                  \
    "  local h = {}\n"                                                         \
    "  h.ver, h.st, h.pc, h.it, h.started, h.dl, h.slot, h.sn = "              \
    "struct.unpack(HDR, b)\n"                                                  \
    "  return h\n"                                                             \
    "end\n"                                                                    \
    "local function phdr(h)\n"                                                 \
    "  return struct.pack(HDR, h.ver % 65536, h.st, h.pc, h.it, h.started, "   \
    "h.dl, h.slot, h.sn)\n"                                                    \
    "end\n"                                                                    \
    "local function wkey(slot, n)\n"                                           \
    "  return string.format('cs:tr:w:%d:%d', slot, n)\n"                       \
    "end\n"                                                                    \
    "local function wdel(h, k)\n"                                              \
    "  if h.slot > 0 then\n"                                                   \
    "    local w = wkey(h.slot, h.sn)\n"                                       \
    "    redis.call('HDEL', w, k)\n"                                           \
    "    if redis.call('EXISTS', w) == 0 then\n"                               \
    "      redis.call('ZREM', 'cs:tr:wi', string.format('%d:%d', h.slot, "     \
    "h.sn))\n"                                                                 \
    "    end\n"                                                                \
    "  end\n"                                                                  \
    "  h.slot = 0\n"                                                           \
    "  h.sn = 0\n"                                                             \
    "end\n"                                                                    \
    "local function wadd(h, k, due)\n"                                         \
    "  local slot = math.floor(due / SLOT)\n"                                  \
    "  local n = tonumber(redis.call('HGET', 'cs:tr:wn', slot) or '0')\n"      \
    "  local w = wkey(slot, n)\n"                                              \
    "  if redis.call('HLEN', w) >= 120 then\n"                                 \
    "    n = n + 1\n"                                                          \
    "    redis.call('HSET', 'cs:tr:wn', slot, n)\n"                            \
    "    w = wkey(slot, n)\n"                                                  \
    "  end\n"                                                                  \
    "  redis.call('HSET', w, k, struct.pack('<H', due - slot * SLOT))\n"       \
    "  redis.call('ZADD', 'cs:tr:wi', 'LT', due, string.format('%d:%d', "      \
    "slot, n))\n"                                                              \
    "  h.slot = slot\n"                                                        \
    "  h.sn = n\n"                                                             \
    "end\n"

/* ARGV: 7 per op.
 *   S, key, policy, window_s, blob, due, ""
 *   T, key, occurred_s, pairs, due, "", "" */
static const char TRANSITION[] = PRELUDE
    "local out = {}\n"
    "for i = 1, #ARGV, 7 do\n"
    "  local op, k = ARGV[i], ARGV[i + 1]\n"
    "  local sk = shard(k)\n"
    "  local cur = redis.call('HGET', sk, k)\n"
    "  local res\n"
    "  if op == 'S' then\n"
    "    local blob = ARGV[i + 4]\n"
    "    local n = hdr(blob)\n"
    "    if cur then\n"
    "      local h = hdr(cur)\n"
    "      if string.sub(cur, 20, IDEND) == string.sub(blob, 20, IDEND) then "
    "res = 'duplicate'\n"
    "      elseif h.st == 1 then res = 'active'\n"
    "      elseif n.started < h.started then res = 'older'\n"
    "      elseif ARGV[i + 2] == 'o' then res = 'once'\n"
    "      elseif ARGV[i + 2] == 'w' and n.started < h.started + "
    "tonumber(ARGV[i + 3]) then res = 'window'\n"
    "      end\n"
    "      n.ver = h.ver + 1\n"
    "    else\n"
    "      n.ver = 1\n"
    "    end\n"
    "    if not res then\n"
    "      n.st, n.pc, n.it = 1, 0, 0\n"
    "      wadd(n, k, tonumber(ARGV[i + 5]))\n"
    "      redis.call('HSET', sk, k, phdr(n) .. string.sub(blob, 20))\n"
    "      res = 'started'\n"
    "    end\n"
    "  elseif not cur then res = 'none'\n"
    "  else\n"
    "    local h = hdr(cur)\n"
    "    local to\n"
    "    local pairs = ARGV[i + 3]\n"
    "    for p = 1, #pairs, 2 do\n"
    "      local from = string.byte(pairs, p)\n"
    "      if from == 254 or from == h.pc then\n"
    "        to = string.byte(pairs, p + 1)\n"
    "        break\n"
    "      end\n"
    "    end\n"
    "    if h.st ~= 1 then res = 'ended'\n"
    "    elseif tonumber(ARGV[i + 2]) < h.started then res = 'older'\n"
    "    elseif not to then res = 'nomatch'\n"
    "    else\n"
    "      wdel(h, k)\n"
    "      h.ver = h.ver + 1\n"
    "      if to == 255 then\n"
    "        h.st = 3\n"
    "        redis.call('HSET', sk, k, phdr(h) .. string.sub(cur, 20, IDEND))\n"
    "        res = 'exited'\n"
    "      else\n"
    "        h.pc, h.it = to, 0\n"
    "        wadd(h, k, tonumber(ARGV[i + 4]))\n"
    "        redis.call('HSET', sk, k, phdr(h) .. string.sub(cur, 20))\n"
    "        res = 'moved'\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  out[#out + 1] = res\n"
    "end\n"
    "return out\n";

/* ARGV: now, limit, lease_ms. Reply: key, due, blob per claimed timer. */
static const char CLAIM[] = PRELUDE
    "local now, limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), "
    "tonumber(ARGV[3])\n"
    "local cur_slot = math.floor(now / SLOT)\n"
    "local out = {}\n"
    "local leased = {}\n"
    "local slots = redis.call('ZRANGEBYSCORE', 'cs:tr:wi', '-inf', now, "
    "'LIMIT', 0, 256)\n"
    "for _, sm in ipairs(slots) do\n"
    "  if #out >= 3 * limit then break end\n"
    "  local w = 'cs:tr:w:' .. sm\n"
    "  local slot, sn = string.match(sm, '^(%d+):(%d+)$')\n"
    "  slot, sn = tonumber(slot), tonumber(sn)\n"
    "  local all = redis.call('HGETALL', w)\n"
    "  local min, partial = nil, false\n"
    "  for i = 1, #all, 2 do\n"
    "    local k = all[i]\n"
    "    local due = slot * SLOT + struct.unpack('<H', all[i + 1])\n"
    "    if due <= now and #out < 3 * limit then\n"
    "      redis.call('HDEL', w, k)\n"
    "      local sk = shard(k)\n"
    "      local b = redis.call('HGET', sk, k)\n"
    "      if b then\n"
    "        local h = hdr(b)\n"
    "        if h.st == 1 and h.slot == slot and h.sn == sn then\n"
    "          leased[#leased + 1] = {k, sk, h, b}\n"
    "          out[#out + 1] = k\n"
    "          out[#out + 1] = string.format('%d', due)\n"
    "          out[#out + 1] = b\n"
    "        end\n"
    "      end\n"
    "    elseif not min or due < min then\n"
    "      min = due\n"
    "    end\n"
    "  end\n"
    "  if not min then\n"
    "    redis.call('DEL', w)\n"
    "    redis.call('ZREM', 'cs:tr:wi', sm)\n"
    "    if slot < cur_slot then redis.call('HDEL', 'cs:tr:wn', slot) end\n"
    "  else\n"
    "    redis.call('ZADD', 'cs:tr:wi', min, sm)\n"
    "  end\n"
    "end\n"
    "for _, x in ipairs(leased) do\n"
    "  wadd(x[3], x[1], now + lease)\n"
    "  redis.call('HSET', x[2], x[1], phdr(x[3]) .. string.sub(x[4], 20))\n"
    "end\n"
    "return out\n";

/* ARGV: 5 per completion: key, claimed_ver, kind, blob, due. */
static const char COMPLETE[] = PRELUDE
    "local out = {}\n"
    "for i = 1, #ARGV, 5 do\n"
    "  local k = ARGV[i]\n"
    "  local sk = shard(k)\n"
    "  local b = redis.call('HGET', sk, k)\n"
    "  local res = 'ok'\n"
    "  if not b then res = 'gone'\n"
    "  else\n"
    "    local h = hdr(b)\n"
    "    if h.ver ~= tonumber(ARGV[i + 1]) or h.st ~= 1 then res = "
    "'conflict'\n"
    "    else\n"
    "      wdel(h, k)\n"
    "      local kind, blob, due = ARGV[i + 2], ARGV[i + 3], "
    "tonumber(ARGV[i + 4])\n"
    "      if kind == 'R' then\n"
    "        h.ver = h.ver + 1\n"
    "        wadd(h, k, due)\n"
    "        redis.call('HSET', sk, k, phdr(h) .. string.sub(b, 20))\n"
    "      else\n"
    "        local n = hdr(blob)\n"
    "        n.ver = h.ver + 1\n"
    "        n.slot, n.sn = 0, 0\n"
    "        if kind == 'A' then\n"
    "          n.st = 1\n"
    "          wadd(n, k, due)\n"
    "          redis.call('HSET', sk, k, phdr(n) .. string.sub(blob, 20))\n"
    "        else\n"
    "          n.st = 2\n"
    "          redis.call('HSET', sk, k, phdr(n) .. string.sub(blob, 20, "
    "IDEND))\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  out[#out + 1] = res\n"
    "end\n"
    "return out\n";

/* ARGV: mode (s|d|c), day, ids... Reply: earlier marker per id (today's
 * or yesterday's key, so a re-fire after midnight still finds it). 'c'
 * takes a "sending" back (never a "sent"). */
static const char MARK[] =
    "local key = 'cs:tr:m:' .. ARGV[2]\n"
    "local older = 'cs:tr:m:' .. (tonumber(ARGV[2]) - 1)\n"
    "local out = {}\n"
    "for i = 3, #ARGV do\n"
    "  local prev = redis.call('HGET', key, ARGV[i]) or "
    "redis.call('HGET', older, ARGV[i]) or ''\n"
    "  out[#out + 1] = prev\n"
    "  if ARGV[1] == 'c' then\n"
    "    if prev == 's' then\n"
    "      redis.call('HDEL', key, ARGV[i])\n"
    "      redis.call('HDEL', older, ARGV[i])\n"
    "    end\n"
    "  elseif ARGV[1] == 'd' or prev ~= 'd' then\n"
    "    redis.call('HSET', key, ARGV[i], ARGV[1])\n"
    "  end\n"
    "end\n"
    "redis.call('EXPIRE', key, 691200)\n"
    "return out\n";

void store_init(struct store *s, struct redis_conn *r)
{
    s->r = r;
    redis_script_init(&s->transition, TRANSITION);
    redis_script_init(&s->claim, CLAIM);
    redis_script_init(&s->complete, COMPLETE);
    redis_script_init(&s->mark, MARK);
}

/* Checks an array reply of @p want elements. */
static enum cs_err want_array(redisReply *r, size_t want, const char *what,
                              char *errstr, size_t errstr_size)
{
    if (r->type == REDIS_REPLY_ARRAY &&
        (want == SIZE_MAX || r->elements == want))
        return CS_ERR_OK;
    snprintf(errstr, errstr_size, "trigger %s script: unexpected reply", what);
    return CS_ERR_REDIS_PROTOCOL;
}

static const char *label(const redisReply *e)
{
    static const char *const labels[] = {
        "started", "duplicate", "active",   "older", "once",
        "window",  "moved",     "exited",   "none",  "ended",
        "nomatch", "ok",        "conflict", "gone"};
    if (e->type == REDIS_REPLY_STRING)
        for (size_t i = 0; i < sizeof(labels) / sizeof(labels[0]); i++)
            if (strcmp(e->str, labels[i]) == 0)
                return labels[i];
    return "unknown";
}

enum cs_err store_transition(struct store *s, struct store_op *ops, size_t n,
                             char *errstr, size_t errstr_size)
{
    const char **argv;
    size_t *lens;
    char(*nums)[NUM_MAX];
    redisReply *reply = NULL;
    enum cs_err err = CS_ERR_NOMEM;
    size_t a = 0;

    if (n == 0)
        return CS_ERR_OK;
    argv = calloc(7 * n, sizeof(*argv));
    lens = calloc(7 * n, sizeof(*lens));
    nums = calloc(3 * n, sizeof(*nums));
    if (!argv || !lens || !nums)
        goto out_free;
    for (size_t i = 0; i < n; i++) {
        struct store_op *o = &ops[i];
        char *n1 = nums[3 * i], *n2 = nums[3 * i + 1], *n3 = nums[3 * i + 2];
        argv[a] = o->op == 'S' ? "S" : "T";
        lens[a++] = 1;
        argv[a] = (const char *)o->key;
        lens[a++] = INST_KEY_LEN;
        if (o->op == 'S') {
            snprintf(n1, NUM_MAX, "%c", o->policy);
            snprintf(n2, NUM_MAX, "%" PRId64, o->window_s);
            snprintf(n3, NUM_MAX, "%" PRId64, o->due_ms);
            argv[a] = n1;
            lens[a++] = 1;
            argv[a] = n2;
            lens[a++] = strlen(n2);
            argv[a] = o->blob.data ? o->blob.data : "";
            lens[a++] = o->blob.len;
            argv[a] = n3;
            lens[a++] = strlen(n3);
            argv[a] = "";
            lens[a++] = 0;
        } else {
            snprintf(n1, NUM_MAX, "%" PRIu32, o->occurred_s);
            snprintf(n3, NUM_MAX, "%" PRId64, o->due_ms);
            argv[a] = n1;
            lens[a++] = strlen(n1);
            argv[a] = (const char *)o->pairs;
            lens[a++] = 2 * o->npairs;
            argv[a] = n3;
            lens[a++] = strlen(n3);
            argv[a] = "";
            lens[a++] = 0;
            argv[a] = "";
            lens[a++] = 0;
        }
    }
    err = redis_conn_eval(s->r, &s->transition, 0, (int)a, argv, lens, &reply,
                          errstr, errstr_size);
    if (err != CS_ERR_OK)
        goto out_free;
    err = want_array(reply, n, "transition", errstr, errstr_size);
    if (err != CS_ERR_OK)
        goto out_free;
    for (size_t i = 0; i < n; i++)
        ops[i].result = label(reply->element[i]);
out_free:
    if (reply)
        freeReplyObject(reply);
    free(nums);
    free(lens);
    free(argv);
    return err;
}

enum cs_err store_claim(struct store *s, int64_t now_ms, size_t limit,
                        int lease_ms, struct store_claim *out, size_t *n,
                        char *errstr, size_t errstr_size)
{
    char a1[NUM_MAX], a2[NUM_MAX], a3[NUM_MAX];
    const char *argv[3] = {a1, a2, a3};
    redisReply *reply = NULL;
    enum cs_err err;

    *n = 0;
    snprintf(a1, sizeof(a1), "%" PRId64, now_ms);
    snprintf(a2, sizeof(a2), "%zu", limit);
    snprintf(a3, sizeof(a3), "%d", lease_ms);
    err = redis_conn_eval(s->r, &s->claim, 0, 3, argv, NULL, &reply, errstr,
                          errstr_size);
    if (err != CS_ERR_OK)
        return err;
    err = want_array(reply, SIZE_MAX, "claim", errstr, errstr_size);
    for (size_t i = 0;
         err == CS_ERR_OK && i + 2 < reply->elements && *n < limit; i += 3) {
        redisReply *k = reply->element[i];
        redisReply *d = reply->element[i + 1];
        redisReply *b = reply->element[i + 2];
        struct store_claim *c = &out[*n];
        if (k->type != REDIS_REPLY_STRING || k->len != INST_KEY_LEN ||
            d->type != REDIS_REPLY_STRING || b->type != REDIS_REPLY_STRING)
            continue;
        memcpy(c->key, k->str, INST_KEY_LEN);
        c->due_ms = strtoll(d->str, NULL, 10);
        c->decode_err = instance_decode(b->str, b->len, &c->inst);
        (*n)++;
    }
    freeReplyObject(reply);
    return err;
}

enum cs_err store_complete(struct store *s, struct store_done *d, size_t n,
                           char *errstr, size_t errstr_size)
{
    const char **argv;
    size_t *lens;
    char(*nums)[NUM_MAX];
    redisReply *reply = NULL;
    enum cs_err err = CS_ERR_NOMEM;
    size_t a = 0;

    if (n == 0)
        return CS_ERR_OK;
    argv = calloc(5 * n, sizeof(*argv));
    lens = calloc(5 * n, sizeof(*lens));
    nums = calloc(2 * n, sizeof(*nums));
    if (!argv || !lens || !nums)
        goto out_free;
    for (size_t i = 0; i < n; i++) {
        snprintf(nums[2 * i], NUM_MAX, "%u", d[i].claimed_ver);
        snprintf(nums[2 * i + 1], NUM_MAX, "%" PRId64, d[i].due_ms);
        argv[a] = (const char *)d[i].key;
        lens[a++] = INST_KEY_LEN;
        argv[a] = nums[2 * i];
        lens[a++] = strlen(nums[2 * i]);
        argv[a] = d[i].kind == 'A' ? "A" : d[i].kind == 'D' ? "D" : "R";
        lens[a++] = 1;
        argv[a] = d[i].blob.data ? d[i].blob.data : "";
        lens[a++] = d[i].blob.len;
        argv[a] = nums[2 * i + 1];
        lens[a++] = strlen(nums[2 * i + 1]);
    }
    err = redis_conn_eval(s->r, &s->complete, 0, (int)a, argv, lens, &reply,
                          errstr, errstr_size);
    if (err != CS_ERR_OK)
        goto out_free;
    err = want_array(reply, n, "complete", errstr, errstr_size);
    if (err != CS_ERR_OK)
        goto out_free;
    for (size_t i = 0; i < n; i++)
        d[i].result = label(reply->element[i]);
out_free:
    if (reply)
        freeReplyObject(reply);
    free(nums);
    free(lens);
    free(argv);
    return err;
}

static enum cs_err mark(struct store *s, const char *mode,
                        const char *const *ids, size_t n, int64_t now_ms,
                        char *prev, char *errstr, size_t errstr_size)
{
    const char **argv;
    char day[NUM_MAX];
    redisReply *reply = NULL;
    enum cs_err err;

    if (n == 0)
        return CS_ERR_OK;
    argv = calloc(n + 2, sizeof(*argv));
    if (!argv)
        return CS_ERR_NOMEM;
    snprintf(day, sizeof(day), "%" PRId64, now_ms / 86400000);
    argv[0] = mode;
    argv[1] = day;
    for (size_t i = 0; i < n; i++)
        argv[i + 2] = ids[i];
    err = redis_conn_eval(s->r, &s->mark, 0, (int)(n + 2), argv, NULL, &reply,
                          errstr, errstr_size);
    if (err == CS_ERR_OK)
        err = want_array(reply, n, "mark", errstr, errstr_size);
    for (size_t i = 0; err == CS_ERR_OK && prev && i < n; i++) {
        const redisReply *e = reply->element[i];
        prev[i] = e->type == REDIS_REPLY_STRING && e->len == 1 ? e->str[0] : 0;
    }
    if (reply)
        freeReplyObject(reply);
    free(argv);
    return err;
}

enum cs_err store_mark_sending(struct store *s, const char *const *ids,
                               size_t n, int64_t now_ms, char *prev,
                               char *errstr, size_t errstr_size)
{
    return mark(s, "s", ids, n, now_ms, prev, errstr, errstr_size);
}

enum cs_err store_mark_sent(struct store *s, const char *const *ids, size_t n,
                            int64_t now_ms, char *errstr, size_t errstr_size)
{
    return mark(s, "d", ids, n, now_ms, NULL, errstr, errstr_size);
}

enum cs_err store_mark_unsent(struct store *s, const char *const *ids, size_t n,
                              int64_t now_ms, char *errstr, size_t errstr_size)
{
    return mark(s, "c", ids, n, now_ms, NULL, errstr, errstr_size);
}
