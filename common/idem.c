/* idem - see idem.h. */
#include "common/idem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "common/redis_conn.h"

#define IDEM_FIELD_LEN 8   /* raw bytes of the per-id hash field */
#define IDEM_KEY_MAX   128 /* "cs:idem:" + ns + ":" + day + ":" + bucket */
#define IDEM_NUM_MAX   24  /* decimal int64 + NUL */
#define MS_PER_DAY     86400000LL
#define S_PER_DAY      86400LL

/* ------------------------------------------------------------------------
 * Lua scripts. Each runs atomically on the server. KEYS[i] is the bucket
 * key of the i-th id; its hash field is an ARGV entry. Lua strings are
 * binary safe, so the 8 raw field bytes pass through unchanged.
 * ---------------------------------------------------------------------- */

/*
 * The one script every call runs (EVALSHA), so a batch costs one round trip
 * however many of its three steps it needs, in this order:
 *  1. done:    KEYS[1..nd]      field + expire-at (unix s: end of the
 *              event's day + ttl_days, never below now + lease) each;
 *  2. release: KEYS[nd+1..nd+nr] field each; deleted only while it is still
 *              our own processing claim;
 *  3. claim:   the remaining KEYS, field each.
 * ARGV[1] owner, ARGV[2] lease_ms, ARGV[3] nd, ARGV[4] nr, then the
 * per-key arguments in KEYS order. Returns one character per claim key:
 * '0' claimed, '1' duplicate, '2' in flight (a single bulk string keeps the
 * reply small for 10k ids); "" when nothing was claimed.
 */
static const char idem_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local owner = ARGV[1]\n"
    "local lease = tonumber(ARGV[2])\n"
    "local nd = tonumber(ARGV[3])\n"
    "local nr = tonumber(ARGV[4])\n"
    "local min_at = tonumber(t[1]) + math.ceil(lease / 1000)\n"
    "local a = 5\n"
    "local expiring = {}\n"
    "for i = 1, nd do\n"
    "  local k = KEYS[i]\n"
    "  redis.call('HSET', k, ARGV[a], 'd')\n"
    "  if not expiring[k] then\n"
    "    expiring[k] = true\n"
    "    local at = tonumber(ARGV[a + 1])\n"
    "    if at < min_at then at = min_at end\n"
    "    redis.call('EXPIREAT', k, at)\n"
    "  end\n"
    "  a = a + 2\n"
    "end\n"
    "for i = nd + 1, nd + nr do\n"
    "  local k = KEYS[i]\n"
    "  local v = redis.call('HGET', k, ARGV[a])\n"
    "  if v and v ~= 'd' and string.match(v, '^p(.*):%d+$') == owner then\n"
    "    redis.call('HDEL', k, ARGV[a])\n"
    "  end\n"
    "  a = a + 1\n"
    "end\n"
    "local mine = 'p' .. owner .. ':' .. string.format('%d', now + lease)\n"
    "local out = {}\n"
    "local seen = {}\n"
    "local touched = {}\n"
    "for i = nd + nr + 1, #KEYS do\n"
    "  local k = KEYS[i]\n"
    "  local f = ARGV[a]\n"
    "  local sk = k .. '\\0' .. f\n"
    "  local st = '1'\n"
    "  a = a + 1\n"
    "  if not seen[sk] then\n"
    "    seen[sk] = true\n"
    "    local v = redis.call('HGET', k, f)\n"
    "    if not v then\n"
    "      st = '0'\n"
    "    elseif v ~= 'd' then\n"
    "      local o, e = string.match(v, '^p(.*):(%d+)$')\n"
    "      if o == owner or not e or tonumber(e) <= now then\n"
    "        st = '0'\n"
    "      else\n"
    "        st = '2'\n"
    "      end\n"
    "    end\n"
    "    if st == '0' then\n"
    "      redis.call('HSET', k, f, mine)\n"
    "      if not touched[k] then\n"
    "        touched[k] = true\n"
    "        if redis.call('PTTL', k) < lease then\n"
    "          redis.call('PEXPIRE', k, lease)\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  out[#out + 1] = st\n"
    "end\n"
    "return table.concat(out)\n";

struct idem {
    struct redis_conn *redis;       /* borrowed, outlives the idem */
    struct redis_script script;     /* idem_lua and its SHA-1 */
    char prefix[IDEM_NS_MAX + 16];  /* "cs:idem:<ns>" */
    char owner[IDEM_OWNER_MAX + 1]; /* lease owner token */
    char lease_str[IDEM_NUM_MAX];   /* lease_ms in decimal */
    int ttl_days; /* done markers live until day end + ttl_days */
    int buckets;  /* buckets_per_day */
    int lease_ms; /* processing lease */
};

/* ------------------------------------------------------------------------
 * Option parsing
 * ---------------------------------------------------------------------- */

static bool ns_valid(const char *ns)
{
    size_t len = strlen(ns);

    if (len == 0 || len > IDEM_NS_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = ns[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
        if (!ok)
            return false;
    }
    return true;
}

/* "<hostname, at most 16 chars>:<pid>:<8 random hex>", at most 40 bytes. */
static bool owner_generate(char *buf, size_t size)
{
    char host[256];
    unsigned char rnd[4];

    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "host");
    host[sizeof(host) - 1] = '\0';
    host[20] = '\0';
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        return false;
    snprintf(buf, size, "%.16s:%d:%02x%02x%02x%02x", host, (int)getpid(),
             rnd[0], rnd[1], rnd[2], rnd[3]);
    return true;
}

struct idem *idem_new(struct redis_conn *redis, const struct idem_opts *opts,
                      char *errstr, size_t errstr_size)
{
    struct idem *idem;

    if (!redis || !opts || !opts->ns) {
        snprintf(errstr, errstr_size, "a redis connection and ns are required");
        return NULL;
    }
    if (opts->lease_ms <= 0 || opts->ttl_days < 0 || opts->ttl_days > 3650 ||
        opts->buckets_per_day < 1 || opts->buckets_per_day > (1 << 24)) {
        snprintf(errstr, errstr_size,
                 "need lease_ms > 0, ttl_days 0..3650, "
                 "buckets_per_day 1..16777216");
        return NULL;
    }
    if (!ns_valid(opts->ns)) {
        snprintf(errstr, errstr_size,
                 "ns must be 1..%d chars of [A-Za-z0-9_.-]", IDEM_NS_MAX);
        return NULL;
    }
    if (opts->owner &&
        (opts->owner[0] == '\0' || strlen(opts->owner) > IDEM_OWNER_MAX)) {
        snprintf(errstr, errstr_size, "owner must be 1..%d bytes",
                 IDEM_OWNER_MAX);
        return NULL;
    }

    idem = calloc(1, sizeof(*idem));
    if (!idem) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    idem->redis = redis;
    if (opts->owner) {
        snprintf(idem->owner, sizeof(idem->owner), "%s", opts->owner);
    } else if (!owner_generate(idem->owner, sizeof(idem->owner))) {
        snprintf(errstr, errstr_size, "cannot generate an owner token");
        goto out_free_idem;
    }
    snprintf(idem->prefix, sizeof(idem->prefix), "cs:idem:%s", opts->ns);
    snprintf(idem->lease_str, sizeof(idem->lease_str), "%d", opts->lease_ms);
    idem->ttl_days = opts->ttl_days;
    idem->buckets = opts->buckets_per_day;
    idem->lease_ms = opts->lease_ms;
    redis_script_init(&idem->script, idem_lua);
    return idem;

out_free_idem:
    idem_free(idem);
    return NULL;
}

void idem_free(struct idem *idem)
{
    free(idem);
}

const char *idem_owner(const struct idem *idem)
{
    return idem->owner;
}

/* ------------------------------------------------------------------------
 * Batches
 * ---------------------------------------------------------------------- */

/* Arguments of one script call: the n keys (KEYS); then owner, lease, nd,
 * nr; then the per-key arguments (ARGV). */
struct batch {
    int argc;
    int numkeys;
    const char **argv;     /* owned */
    size_t *argvlen;       /* owned */
    char *keys;            /* owned, n * IDEM_KEY_MAX */
    unsigned char *fields; /* owned, n * IDEM_FIELD_LEN */
    char *nums;            /* owned, nd * IDEM_NUM_MAX (expire-at seconds) */
    char nd[IDEM_NUM_MAX];
    char nr[IDEM_NUM_MAX];
};

/* The three steps of one call (see idem_lua). */
struct steps {
    const struct idem_key *done;
    size_t nd;
    const struct idem_key *release;
    size_t nr;
    const struct idem_key *claim;
    size_t nc;
};

static void batch_free(struct batch *b)
{
    free(b->argv);
    free(b->argvlen);
    free(b->keys);
    free(b->fields);
    free(b->nums);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Writes the bucket key of k into key (IDEM_KEY_MAX bytes) and its field
 * into field; returns the key length and the event's day. */
static size_t key_encode(const struct idem *idem, const struct idem_key *k,
                         char *key, unsigned char *field, int64_t *day)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    uint64_t sel = 0;
    int len;

    SHA256((const unsigned char *)k->id, strlen(k->id), md);
    for (int i = 0; i < 8; i++)
        sel = (sel << 8) | md[i];
    memcpy(field, md + 8, IDEM_FIELD_LEN);
    *day = floor_div(k->event_ms, MS_PER_DAY);
    len = snprintf(key, IDEM_KEY_MAX, "%s:%lld:%llu", idem->prefix,
                   (long long)*day,
                   (unsigned long long)(sel % (uint64_t)idem->buckets));
    return (size_t)len;
}

/* Key i of the call, in KEYS order: done, then release, then claim. */
static const struct idem_key *step_key(const struct steps *st, size_t i)
{
    if (i < st->nd)
        return &st->done[i];
    i -= st->nd;
    if (i < st->nr)
        return &st->release[i];
    return &st->claim[i - st->nr];
}

static enum cs_err batch_build(const struct idem *idem, const struct steps *st,
                               struct batch *b, char *errstr,
                               size_t errstr_size)
{
    size_t n = st->nd + st->nr + st->nc;
    size_t argc = n + 4 + n + st->nd;
    size_t a;

    memset(b, 0, sizeof(*b));
    if (n > IDEM_BATCH_MAX) {
        snprintf(errstr, errstr_size, "batch of %zu ids exceeds %d", n,
                 IDEM_BATCH_MAX);
        return CS_ERR_INVALID_ARG;
    }
    for (size_t i = 0; i < n; i++) {
        if (!step_key(st, i)->id) {
            snprintf(errstr, errstr_size, "key %zu has no id", i);
            return CS_ERR_INVALID_ARG;
        }
    }
    b->argv = malloc(argc * sizeof(*b->argv));
    b->argvlen = malloc(argc * sizeof(*b->argvlen));
    b->keys = malloc(n * IDEM_KEY_MAX);
    b->fields = malloc(n * IDEM_FIELD_LEN);
    b->nums = malloc((st->nd ? st->nd : 1) * IDEM_NUM_MAX);
    if (!b->argv || !b->argvlen || !b->keys || !b->fields || !b->nums) {
        batch_free(b);
        snprintf(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    b->argc = (int)argc;
    b->numkeys = (int)n;

    snprintf(b->nd, sizeof(b->nd), "%zu", st->nd);
    snprintf(b->nr, sizeof(b->nr), "%zu", st->nr);
    a = n;
    b->argv[a] = idem->owner;
    b->argvlen[a++] = strlen(idem->owner);
    b->argv[a] = idem->lease_str;
    b->argvlen[a++] = strlen(idem->lease_str);
    b->argv[a] = b->nd;
    b->argvlen[a++] = strlen(b->nd);
    b->argv[a] = b->nr;
    b->argvlen[a++] = strlen(b->nr);
    for (size_t i = 0; i < n; i++) {
        char *key = b->keys + i * IDEM_KEY_MAX;
        unsigned char *field = b->fields + i * IDEM_FIELD_LEN;
        int64_t day;

        b->argv[i] = key;
        b->argvlen[i] = key_encode(idem, step_key(st, i), key, field, &day);
        b->argv[a] = (const char *)field;
        b->argvlen[a++] = IDEM_FIELD_LEN;
        if (i < st->nd) {
            char *num = b->nums + i * IDEM_NUM_MAX;
            long long at = ((long long)day + 1 + idem->ttl_days) * S_PER_DAY;
            b->argv[a] = num;
            b->argvlen[a++] = (size_t)snprintf(num, IDEM_NUM_MAX, "%lld", at);
        }
    }
    return CS_ERR_OK;
}

enum cs_err idem_settle_claim(struct idem *idem, const struct idem_key *done,
                              size_t nd, const struct idem_key *release,
                              size_t nr, const struct idem_key *claim,
                              size_t nc, enum idem_state *out, char *errstr,
                              size_t errstr_size)
{
    struct steps st = {done, nd, release, nr, claim, nc};
    struct batch b;
    redisReply *r = NULL;
    enum cs_err err;

    if (nd + nr + nc == 0)
        return CS_ERR_OK;
    err = batch_build(idem, &st, &b, errstr, errstr_size);
    if (err != CS_ERR_OK)
        return err;
    err = redis_conn_eval(idem->redis, &idem->script, b.numkeys, b.argc, b.argv,
                          b.argvlen, &r, errstr, errstr_size);
    batch_free(&b);
    if (err != CS_ERR_OK)
        return err;

    if (r->type != REDIS_REPLY_STRING || r->len != nc) {
        snprintf(errstr, errstr_size,
                 "redis: script returned type %d len %zu for %zu claims",
                 r->type, r->len, nc);
        err = CS_ERR_REDIS_PROTOCOL;
        goto out_free_reply;
    }
    for (size_t i = 0; i < nc; i++) {
        if (r->str[i] < '0' || r->str[i] > '2') {
            snprintf(errstr, errstr_size,
                     "redis: script returned bad state at %zu", i);
            err = CS_ERR_REDIS_PROTOCOL;
            goto out_free_reply;
        }
    }
    for (size_t i = 0; i < nc; i++)
        out[i] = (enum idem_state)(r->str[i] - '0');

out_free_reply:
    freeReplyObject(r);
    return err;
}

enum cs_err idem_claim(struct idem *idem, const struct idem_key *keys, size_t n,
                       enum idem_state *out, char *errstr, size_t errstr_size)
{
    return idem_settle_claim(idem, NULL, 0, NULL, 0, keys, n, out, errstr,
                             errstr_size);
}

enum cs_err idem_mark_done(struct idem *idem, const struct idem_key *keys,
                           size_t n, char *errstr, size_t errstr_size)
{
    return idem_settle_claim(idem, keys, n, NULL, 0, NULL, 0, NULL, errstr,
                             errstr_size);
}

enum cs_err idem_release(struct idem *idem, const struct idem_key *keys,
                         size_t n, char *errstr, size_t errstr_size)
{
    return idem_settle_claim(idem, NULL, 0, keys, n, NULL, 0, NULL, errstr,
                             errstr_size);
}
