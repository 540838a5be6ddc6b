/*
 * trigger_timers - the trigger worker's timer store (workers/trigger/
 * store.c) at scale: Redis bytes per pending timer, start rate, firing lag
 * and firing rate.
 *
 *   crmsync-bench-trigger_timers --redis redis://127.0.0.1:PORT [--n N]
 *                                [--lag-n L] [--lag-window-s W]
 *                                [--backlog B]
 *
 * It starts nothing itself. WARNING: it runs FLUSHALL on the target
 * (before each phase: the only way to read a clean used_memory delta).
 *
 * Phases:
 *  1. memory: N starts ('S' ops of store_transition, batches of 1000) of
 *     realistic instances (tenant "acme", journey "abandoned-cart", a
 *     contact GUID profile + "user<i>@example.com", no attributes) with
 *     their first timer spread uniformly over the next 7 days; prints the
 *     used_memory delta per pending timer (instance + timer) and starts/s;
 *  2. lag: L timers due uniformly over W seconds (starting once they are
 *     all inserted), then store_claim (limit 500, lease 30 s) +
 *     store_complete('D') as fast as possible; lag = claim return time -
 *     due; prints p50 / p99 / max and fired/s over the run;
 *  3. backlog: B timers all due already, drained as fast as possible:
 *     the firing capacity (fired/s).
 * Output: a Markdown table and one JSON line (prefix "json: ").
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "common/redis_conn.h"
#include "workers/trigger/instance.h"
#include "workers/trigger/store.h"

#define BATCH       1000
#define CLAIM_LIMIT 500
#define LEASE_MS    30000
#define WEEK_MS     (7LL * 86400000LL)

struct bench_opts {
    const char *url;   /* borrowed from argv */
    long n;            /* phase 1 timers */
    long lag_n;        /* phase 2 timers */
    long lag_window_s; /* phase 2 spread */
    long backlog;      /* phase 3 timers */
};

struct results {
    double bytes_per_timer;
    double starts_per_s;
    double lag_p50_ms, lag_p99_ms, lag_max_ms;
    double lag_fired_per_s;
    long lag_fired;
    double backlog_fired_per_s;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: crmsync-bench-trigger_timers --redis URL [--n N] "
               "[--lag-n L] [--lag-window-s W] [--backlog B] [--keep]\n"
               "  runs FLUSHALL on the target; --keep leaves the last phase's\n"
               "  data in Redis (to inspect it, e.g. MEMORY USAGE per key)\n");
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

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* host and port of redis://host:port[/db] (no auth: a local benchmark). */
static redisContext *admin_connect(const char *url)
{
    char host[256];
    const char *rest, *colon, *slash;
    long port = 6379;
    struct timeval tv = {5, 0};
    redisContext *c;

    if (strncmp(url, "redis://", 8) != 0 || strchr(url, '@'))
        return NULL;
    rest = url + 8;
    slash = strchr(rest, '/');
    colon = strchr(rest, ':');
    if (colon && (!slash || colon < slash)) {
        char p[16];
        snprintf(p, sizeof(p), "%.*s",
                 (int)((slash ? slash : rest + strlen(rest)) - colon - 1),
                 colon + 1);
        if (!parse_long(p, 1, 65535, &port))
            return NULL;
    } else {
        colon = slash ? slash : rest + strlen(rest);
    }
    snprintf(host, sizeof(host), "%.*s", (int)(colon - rest), rest);
    c = redisConnectWithTimeout(host, (int)port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    return c;
}

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

static long long flush(redisContext *c)
{
    redisReply *r = redisCommand(c, "FLUSHALL SYNC");
    bool ok = r && r->type != REDIS_REPLY_ERROR;

    if (r)
        freeReplyObject(r);
    if (!ok)
        return -1;
    nap_ms(200);
    return used_memory(c);
}

/* Inserts @p n starts, profile i = first + k, due from @p due_of. */
struct due_gen {
    int64_t base_ms;
    int64_t span_ms;
    uint64_t seed;
};

static bool insert(struct store *st, long first, long n, struct due_gen *g,
                   int64_t started_ms)
{
    struct store_op *ops = calloc(BATCH, sizeof(*ops));
    char err[256] = "";
    bool ok = ops != NULL;

    for (long done = 0; ok && done < n; done += BATCH) {
        size_t m = (size_t)(n - done < BATCH ? n - done : BATCH);
        for (size_t k = 0; k < m; k++) {
            long i = first + done + (long)k;
            struct instance in;
            struct store_op *op = &ops[k];
            uint64_t h = splitmix64(&g->seed);
            uint64_t h2 = splitmix64(&g->seed);
            char ev[32];

            memset(&in, 0, sizeof(in));
            buf_free(&op->blob);
            memset(op, 0, sizeof(*op));
            in.status = INST_ACTIVE;
            in.started_s = (uint32_t)(started_ms / 1000);
            snprintf(ev, sizeof(ev), "ev-%ld", i);
            instance_id_from_event(ev, in.id);
            snprintf(in.tenant, sizeof(in.tenant), "acme");
            snprintf(in.journey, sizeof(in.journey), "abandoned-cart");
            snprintf(in.ptype, sizeof(in.ptype), "contact");
            snprintf(in.pid, sizeof(in.pid), "%08x-%04x-4%03x-%04x-%012llx",
                     (unsigned)(h >> 32), (unsigned)(h >> 16) & 0xffffu,
                     (unsigned)h & 0xfffu,
                     ((unsigned)(h2 >> 48) & 0x3fffu) | 0x8000u,
                     (unsigned long long)(h2 & 0xffffffffffffULL));
            /* no e-mail: the worker keeps it only for profiles without an
               id (or templates using it); mails read it from the CRM */
            op->op = 'S';
            op->policy = 'o';
            instance_key("acme", "abandoned-cart", in.ptype, in.pid, in.email,
                         op->key);
            op->due_ms = g->base_ms +
                         (int64_t)(splitmix64(&g->seed) %
                                   (uint64_t)(g->span_ms > 0 ? g->span_ms : 1));
            if (instance_encode(&in, false, &op->blob) != CS_ERR_OK)
                ok = false;
        }
        if (ok && store_transition(st, ops, m, err, sizeof(err)) != CS_ERR_OK) {
            fprintf(stderr, "store_transition: %s\n", err);
            ok = false;
        }
        for (size_t k = 0; ok && k < m; k++)
            if (strcmp(ops[k].result, "started") != 0) {
                fprintf(stderr, "start %ld: %s\n", first + done + (long)k,
                        ops[k].result);
                ok = false;
            }
    }
    for (size_t k = 0; ops && k < BATCH; k++)
        buf_free(&ops[k].blob);
    free(ops);
    return ok;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Claims and completes ('D') until @p total fired or @p deadline_us.
 * lags (optional, @p total entries) receives claim time - due in us. */
static long drain(struct store *st, long total, int64_t deadline_us,
                  int64_t *lags, int64_t *first_us, int64_t *last_us)
{
    struct store_claim *c = calloc(CLAIM_LIMIT, sizeof(*c));
    struct store_done *d = calloc(CLAIM_LIMIT, sizeof(*d));
    char err[256] = "";
    long fired = 0;

    if (!c || !d)
        goto out_free;
    *first_us = 0;
    while (fired < total && now_us() < deadline_us) {
        size_t n = 0;
        int64_t t;
        if (store_claim(st, now_us() / 1000, CLAIM_LIMIT, LEASE_MS, c, &n, err,
                        sizeof(err)) != CS_ERR_OK) {
            fprintf(stderr, "store_claim: %s\n", err);
            break;
        }
        t = now_us();
        if (n == 0) {
            nap_ms(1);
            continue;
        }
        if (*first_us == 0)
            *first_us = t;
        for (size_t i = 0; i < n; i++) {
            if (lags && fired + (long)i < total)
                lags[fired + (long)i] = t - c[i].due_ms * 1000;
            memset(&d[i], 0, sizeof(d[i]));
            memcpy(d[i].key, c[i].key, INST_KEY_LEN);
            d[i].claimed_ver = c[i].inst.ver;
            d[i].kind = 'D';
            c[i].inst.pc = 1;
            instance_encode(&c[i].inst, true, &d[i].blob);
        }
        if (store_complete(st, d, n, err, sizeof(err)) != CS_ERR_OK)
            fprintf(stderr, "store_complete: %s\n", err);
        for (size_t i = 0; i < n; i++) {
            buf_free(&d[i].blob);
            instance_clear(&c[i].inst);
        }
        fired += (long)n;
        *last_us = now_us();
    }
out_free:
    free(c);
    free(d);
    return fired;
}

static double pct(const int64_t *v, long n, double p)
{
    long i = (long)(p * (double)(n - 1) + 0.5);
    return n > 0 ? (double)v[i] / 1000.0 : 0;
}

int main(int argc, char **argv)
{
    struct bench_opts bo = {NULL, 1000000, 200000, 20, 100000};
    struct results res;
    struct redis_conn_opts ro;
    struct redis_conn *conn = NULL;
    redisContext *admin = NULL;
    struct store st;
    char err[256] = "";
    int rc = 1;
    int64_t *lags = NULL;
    bool keep = false;

    memset(&res, 0, sizeof(res));
    for (int i = 1; i < argc; i++) {
        bool has_val = i + 1 < argc;
        bool ok = true;
        if (strcmp(argv[i], "--redis") == 0 && has_val)
            bo.url = argv[++i];
        else if (strcmp(argv[i], "--n") == 0 && has_val)
            ok = parse_long(argv[++i], 0, 100000000, &bo.n);
        else if (strcmp(argv[i], "--lag-n") == 0 && has_val)
            ok = parse_long(argv[++i], 0, 100000000, &bo.lag_n);
        else if (strcmp(argv[i], "--lag-window-s") == 0 && has_val)
            ok = parse_long(argv[++i], 1, 86400, &bo.lag_window_s);
        else if (strcmp(argv[i], "--backlog") == 0 && has_val)
            ok = parse_long(argv[++i], 0, 100000000, &bo.backlog);
        else if (strcmp(argv[i], "--keep") == 0)
            keep = true;
        else if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else
            ok = false;
        if (!ok) {
            usage(stderr);
            return 2;
        }
    }
    if (!bo.url) {
        usage(stderr);
        return 2;
    }
    admin = admin_connect(bo.url);
    ro.url = bo.url;
    ro.timeout_ms = 30000;
    conn = redis_conn_new(&ro, err, sizeof(err));
    if (!admin || !conn) {
        fprintf(stderr, "cannot connect to %s %s\n", bo.url, err);
        goto out;
    }
    store_init(&st, conn);

    /* 1. memory and start rate */
    if (bo.n > 0) {
        long long before = flush(admin), after;
        int64_t t0 = now_us(), t1;
        struct due_gen g = {t0 / 1000 + 60000, WEEK_MS, 42};
        if (before < 0 || !insert(&st, 0, bo.n, &g, t0 / 1000))
            goto out;
        t1 = now_us();
        nap_ms(200);
        after = used_memory(admin);
        res.bytes_per_timer = (double)(after - before) / (double)bo.n;
        res.starts_per_s = (double)bo.n / ((double)(t1 - t0) / 1e6);
        fprintf(stderr, "memory: %ld timers, %lld -> %lld bytes\n", bo.n,
                before, after);
    }

    /* 2. firing lag */
    if (bo.lag_n > 0) {
        double rate = res.starts_per_s > 0 ? res.starts_per_s : 20000;
        int64_t est_ms = (int64_t)((double)bo.lag_n / rate * 1000.0 * 1.5);
        int64_t t0 = now_us() / 1000;
        struct due_gen g = {t0 + est_ms + 2000, bo.lag_window_s * 1000, 7};
        int64_t first = 0, last = 0;
        lags = calloc((size_t)bo.lag_n, sizeof(*lags));
        if (!lags || flush(admin) < 0 ||
            !insert(&st, 10000000, bo.lag_n, &g, t0))
            goto out;
        if (now_us() / 1000 > g.base_ms)
            fprintf(stderr, "lag: inserting took longer than planned (the "
                            "first timers were late from the start)\n");
        res.lag_fired =
            drain(&st, bo.lag_n, (g.base_ms + g.span_ms + 120000) * 1000, lags,
                  &first, &last);
        qsort(lags, (size_t)res.lag_fired, sizeof(*lags), cmp_i64);
        res.lag_p50_ms = pct(lags, res.lag_fired, 0.50);
        res.lag_p99_ms = pct(lags, res.lag_fired, 0.99);
        res.lag_max_ms =
            res.lag_fired ? (double)lags[res.lag_fired - 1] / 1000.0 : 0;
        res.lag_fired_per_s =
            (double)res.lag_fired / ((double)(last - g.base_ms * 1000) / 1e6);
        if (res.lag_fired != bo.lag_n)
            fprintf(stderr, "lag: only %ld of %ld timers fired\n",
                    res.lag_fired, bo.lag_n);
    }

    /* 3. backlog drain */
    if (bo.backlog > 0) {
        int64_t t0 = now_us() / 1000;
        struct due_gen g = {t0 - 60000, 50000, 9};
        int64_t first = 0, last = 0;
        long fired;
        if (flush(admin) < 0 || !insert(&st, 20000000, bo.backlog, &g, t0))
            goto out;
        t0 = now_us();
        fired =
            drain(&st, bo.backlog, t0 + 600 * 1000000LL, NULL, &first, &last);
        res.backlog_fired_per_s = (double)fired / ((double)(last - t0) / 1e6);
        if (fired != bo.backlog)
            fprintf(stderr, "backlog: only %ld of %ld timers fired\n", fired,
                    bo.backlog);
    }
    if (!keep)
        flush(admin);

    printf("| figure | value |\n|---|---|\n");
    printf("| pending timers (memory run) | %ld |\n", bo.n);
    printf("| Redis bytes per pending timer (instance + timer) | %.1f |\n",
           res.bytes_per_timer);
    printf("| starts/s (store_transition 'S', batches of %d) | %.0f |\n", BATCH,
           res.starts_per_s);
    printf("| firing lag p50 / p99 / max (%ld timers over %ld s) | %.1f / "
           "%.1f / %.1f ms |\n",
           bo.lag_n, bo.lag_window_s, res.lag_p50_ms, res.lag_p99_ms,
           res.lag_max_ms);
    printf("| fired/s during the lag run | %.0f |\n", res.lag_fired_per_s);
    printf("| fired/s draining a backlog of %ld | %.0f |\n", bo.backlog,
           res.backlog_fired_per_s);
    printf("json: {\"n\":%ld,\"bytes_per_timer\":%.1f,\"starts_per_s\":%.0f,"
           "\"lag_n\":%ld,\"lag_window_s\":%ld,\"lag_fired\":%ld,"
           "\"lag_p50_ms\":%.1f,\"lag_p99_ms\":%.1f,\"lag_max_ms\":%.1f,"
           "\"lag_fired_per_s\":%.0f,\"backlog\":%ld,"
           "\"backlog_fired_per_s\":%.0f}\n",
           bo.n, res.bytes_per_timer, res.starts_per_s, bo.lag_n,
           bo.lag_window_s, res.lag_fired, res.lag_p50_ms, res.lag_p99_ms,
           res.lag_max_ms, res.lag_fired_per_s, bo.backlog,
           res.backlog_fired_per_s);
    rc = 0;
out:
    free(lags);
    redis_conn_free(conn);
    if (admin)
        redisFree(admin);
    return rc;
}
