/*
 * idem_mem - Redis bytes per remembered event id: the idem layout (small
 * per-day bucket hashes) against one plain `SET key 1 NX EX 604800` per id.
 *
 *   crmsync-bench-idem_mem [--redis-url URL] [--n 1000000] [--buckets B]
 *                          [--per-bucket 80]
 *
 * Without --redis-url it starts its own redis-server on a free 127.0.0.1
 * port and stops it at the end. WARNING: it runs FLUSHALL on the server it
 * measures (the only way to read a clean used_memory delta).
 *
 * The N ids are UUID-like strings with event times spread evenly over one
 * UTC day, claimed and marked done in batches of 1000. The default
 * buckets_per_day is ceil(N / per-bucket), i.e. the sizing rule of idem.h.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "common/idem.h"
#include "common/redis_conn.h"
#include "tests/support/redis_server.h"

#define BATCH            1000
#define ID_LEN           37   /* 36-char UUID text + NUL */
#define ADMIN_TIMEOUT_MS 5000 /* connect timeout of admin connections */

struct bench_opts {
    const char *url; /* borrowed from argv, NULL = own redis-server */
    long n;          /* ids to remember */
    long buckets;    /* buckets_per_day, 0 = n / per_bucket */
    long per_bucket; /* target mean fields per bucket */
};

static void usage(FILE *f)
{
    fprintf(f, "usage: crmsync-bench-idem_mem [--redis-url URL] [--n N] "
               "[--buckets B] [--per-bucket K]\n"
               "  measures Redis bytes per remembered event id; runs "
               "FLUSHALL on the target\n");
}

static bool parse_long(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* redis://[[user]:password@]host[:port][/db] without %-decoding: enough for
 * the admin connection of a benchmark. */
static bool parse_target(const char *url, struct redis_server *t)
{
    const char *rest;
    const char *at;
    const char *colon;
    const char *slash;
    size_t hlen;
    long v;

    memset(t, 0, sizeof(*t)); /* pid 0: external, never stopped by us */
    t->port = 6379;
    t->timeout_ms = ADMIN_TIMEOUT_MS;
    if (strncmp(url, "redis://", 8) != 0)
        return false;
    rest = url + 8;
    at = strrchr(rest, '@');
    if (at) {
        colon = memchr(rest, ':', (size_t)(at - rest));
        if (!colon)
            return false;
        snprintf(t->user, sizeof(t->user), "%.*s", (int)(colon - rest), rest);
        snprintf(t->password, sizeof(t->password), "%.*s",
                 (int)(at - colon - 1), colon + 1);
        rest = at + 1;
    }
    slash = strchr(rest, '/');
    hlen = slash ? (size_t)(slash - rest) : strlen(rest);
    colon = memchr(rest, ':', hlen);
    snprintf(t->host, sizeof(t->host), "%.*s",
             (int)(colon ? (size_t)(colon - rest) : hlen), rest);
    if (colon) {
        char port[16];
        snprintf(port, sizeof(port), "%.*s", (int)(rest + hlen - colon - 1),
                 colon + 1);
        if (!parse_long(port, 1, 65535, &v))
            return false;
        t->port = (int)v;
    }
    if (slash && slash[1] != '\0') {
        if (!parse_long(slash + 1, 0, 1 << 20, &v))
            return false;
        t->db = (int)v;
    }
    return t->host[0] != '\0';
}

static bool admin_simple(redisContext *c, const char *cmd)
{
    redisReply *r = redisCommand(c, cmd);
    bool ok = r && r->type != REDIS_REPLY_ERROR;

    if (r)
        freeReplyObject(r);
    return ok;
}

/* INFO memory used_memory, or -1. */
static long long used_memory(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO memory");
    long long v = -1;

    if (r && r->type == REDIS_REPLY_STRING) {
        const char *p = strstr(r->str, "used_memory:");
        if (p)
            v = strtoll(p + strlen("used_memory:"), NULL, 10);
    }
    if (r)
        freeReplyObject(r);
    return v;
}

/* FLUSHALL, give lazy frees a moment, then read used_memory. */
static long long baseline(redisContext *c)
{
    if (!admin_simple(c, "FLUSHALL SYNC"))
        return -1;
    rs_sleep_ms(200);
    return used_memory(c);
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A random UUIDv4-shaped id (36 chars). */
static void make_id(uint64_t *seed, char out[ID_LEN])
{
    uint64_t a = splitmix64(seed);
    uint64_t b = splitmix64(seed);

    snprintf(out, ID_LEN, "%08x-%04x-4%03x-%04x-%012llx", (unsigned)(a >> 32),
             (unsigned)((a >> 16) & 0xffff), (unsigned)(a & 0xfff),
             (unsigned)(0x8000 | (b >> 50)),
             (unsigned long long)(b & 0xffffffffffffULL));
}

/* Counts bucket hashes that left the listpack encoding (the layout's
 * memory assumption broken: too few buckets for the volume). */
static long count_hashtable_buckets(redisContext *c)
{
    char cursor[32] = "0";
    long count = 0;

    do {
        redisReply *r = redisCommand(c,
                                     "SCAN %s MATCH cs:idem:bench:* "
                                     "COUNT 1000",
                                     cursor);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            if (r)
                freeReplyObject(r);
            return -1;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++)
            redisAppendCommand(c, "OBJECT ENCODING %b",
                               r->element[1]->element[i]->str,
                               r->element[1]->element[i]->len);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            void *p = NULL;
            if (redisGetReply(c, &p) != REDIS_OK) {
                freeReplyObject(r);
                return -1;
            }
            redisReply *e = p;
            if (e->type == REDIS_REPLY_STRING &&
                strcmp(e->str, "hashtable") == 0)
                count++;
            freeReplyObject(e);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return count;
}

static int run_idem(const struct bench_opts *bo, const char *url,
                    redisContext *admin)
{
    char errstr[256];
    struct redis_conn_opts ro = {.url = url, .timeout_ms = 30000};
    struct idem_opts o = {
        .ns = "bench",
        .owner = NULL,
        .ttl_days = 7,
        .buckets_per_day = (int)bo->buckets,
        .lease_ms = 60000,
    };
    char(*ids)[ID_LEN] = malloc(BATCH * sizeof(*ids));
    struct idem_key keys[BATCH];
    enum idem_state out[BATCH];
    struct redis_conn *redis = NULL;
    struct idem *idem = NULL;
    uint64_t seed = 42;
    int64_t day_start = (int64_t)(time(NULL) / 86400) * 86400000;
    long long m0;
    long long m1;
    unsigned long long rt;
    long done = 0;
    long overflow;
    int rc = 1;
    struct timespec t0;
    struct timespec t1;

    if (!ids)
        return 1;
    m0 = baseline(admin);
    redis = redis_conn_new(&ro, errstr, sizeof(errstr));
    if (!redis) {
        fprintf(stderr, "redis_conn_new: %s\n", errstr);
        goto out_free;
    }
    idem = idem_new(redis, &o, errstr, sizeof(errstr));
    if (!idem || m0 < 0) {
        fprintf(stderr, "idem_new: %s\n", idem ? "INFO failed" : errstr);
        goto out_free;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rt = redis_conn_round_trips(redis);
    while (done < bo->n) {
        size_t k = (size_t)(bo->n - done < BATCH ? bo->n - done : BATCH);
        enum cs_err err;

        for (size_t i = 0; i < k; i++) {
            make_id(&seed, ids[i]);
            keys[i].id = ids[i];
            keys[i].event_ms =
                day_start + (int64_t)((done + (long)i) * (86400000.0 / bo->n));
        }
        err = idem_claim(idem, keys, k, out, errstr, sizeof(errstr));
        if (err == CS_ERR_OK)
            err = idem_mark_done(idem, keys, k, errstr, sizeof(errstr));
        if (err != CS_ERR_OK) {
            fprintf(stderr, "idem: %s: %s\n", cs_err_name(err), errstr);
            goto out_free;
        }
        for (size_t i = 0; i < k; i++) {
            if (out[i] != IDEM_CLAIMED) {
                fprintf(stderr, "id %s not CLAIMED (%d)\n", ids[i], out[i]);
                goto out_free;
            }
        }
        done += (long)k;
    }
    rt = redis_conn_round_trips(redis) - rt;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    idem_free(idem);
    idem = NULL;
    redis_conn_free(redis); /* drop its client buffers before measuring */
    redis = NULL;
    rs_sleep_ms(200);
    m1 = used_memory(admin);
    overflow = count_hashtable_buckets(admin);
    printf("idem layout: %ld ids, %.1f bytes/id (used_memory delta), "
           "buckets=%ld, round trips=%llu\n",
           bo->n, (double)(m1 - m0) / (double)bo->n, bo->buckets, rt);
    printf("  mean %.1f ids/bucket, %ld buckets over the listpack limit, "
           "%.0f ids/s (claim+done)\n",
           (double)bo->n / (double)bo->buckets, overflow,
           (double)bo->n / ((double)(t1.tv_sec - t0.tv_sec) +
                            (double)(t1.tv_nsec - t0.tv_nsec) / 1e9));
    rc = 0;

out_free:
    idem_free(idem);
    redis_conn_free(redis);
    free(ids);
    return rc;
}

static int run_plain(const struct bench_opts *bo, redisContext *admin,
                     const struct redis_server *t)
{
    redisContext *c = rs_connect(t);
    uint64_t seed = 42;
    long long m0 = baseline(admin);
    long long m1;
    long done = 0;
    char id[ID_LEN];
    char key[64];

    if (!c || m0 < 0) {
        fprintf(stderr, "plain SET: cannot connect\n");
        if (c)
            redisFree(c);
        return 1;
    }
    while (done < bo->n) {
        long k = bo->n - done < BATCH ? bo->n - done : BATCH;
        for (long i = 0; i < k; i++) {
            make_id(&seed, id);
            snprintf(key, sizeof(key), "cs:idem:plain:%s", id);
            redisAppendCommand(c, "SET %s 1 NX EX 604800", key);
        }
        for (long i = 0; i < k; i++) {
            void *p = NULL;
            if (redisGetReply(c, &p) != REDIS_OK) {
                fprintf(stderr, "plain SET: %s\n", c->errstr);
                redisFree(c);
                return 1;
            }
            freeReplyObject(p);
        }
        done += k;
    }
    redisFree(c);
    rs_sleep_ms(200);
    m1 = used_memory(admin);
    printf("plain SET: %.1f bytes/id (key \"cs:idem:plain:<uuid>\", "
           "%ld ids)\n",
           (double)(m1 - m0) / (double)bo->n, bo->n);
    return 0;
}

int main(int argc, char **argv)
{
    struct bench_opts bo = {NULL, 1000000, 0, 80};
    struct redis_server t;
    char url[320];
    redisContext *admin = NULL;
    int rc = 1;

    for (int i = 1; i < argc; i++) {
        bool has_val = i + 1 < argc;
        if (strcmp(argv[i], "--redis-url") == 0 && has_val) {
            bo.url = argv[++i];
        } else if (strcmp(argv[i], "--n") == 0 && has_val) {
            if (!parse_long(argv[++i], 1, 100000000, &bo.n))
                goto out_usage;
        } else if (strcmp(argv[i], "--buckets") == 0 && has_val) {
            if (!parse_long(argv[++i], 1, 1 << 24, &bo.buckets))
                goto out_usage;
        } else if (strcmp(argv[i], "--per-bucket") == 0 && has_val) {
            if (!parse_long(argv[++i], 1, 100000, &bo.per_bucket))
                goto out_usage;
        } else if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            goto out_usage;
        }
    }
    if (bo.buckets == 0)
        bo.buckets = (bo.n + bo.per_bucket - 1) / bo.per_bucket;

    if (bo.url) {
        if (!parse_target(bo.url, &t)) {
            fprintf(stderr, "bad --redis-url\n");
            return 2;
        }
        snprintf(url, sizeof(url), "%s", bo.url);
    } else {
        if (!rs_init_local(&t, NULL, ADMIN_TIMEOUT_MS) || !rs_start(&t)) {
            fprintf(stderr, "cannot start redis-server\n");
            return 1;
        }
        snprintf(url, sizeof(url), "redis://127.0.0.1:%d", t.port);
    }
    admin = rs_connect(&t);
    if (!admin) {
        fprintf(stderr, "cannot connect to redis %s:%d\n", t.host, t.port);
        goto out_stop;
    }
    if (run_idem(&bo, url, admin) != 0)
        goto out_free_admin;
    if (run_plain(&bo, admin, &t) != 0)
        goto out_free_admin;
    (void)admin_simple(admin, "FLUSHALL");
    rc = 0;

out_free_admin:
    redisFree(admin);
out_stop:
    rs_stop(&t, SIGTERM); /* no-op for an external --redis-url server */
    return rc;

out_usage:
    usage(stderr);
    return 2;
}
