/*
 * Unit tests for common/kafka_loop against librdkafka's in-process mock
 * cluster: exactly-once handling and final commits, poison messages to the
 * dead-letter topic, RETRY pause/backoff, per-partition offset prefixes,
 * stop while stuck, decoded values and order, cooperative rebalance, a
 * rebalance while paused and the lag metrics (committed offsets, lag
 * seconds of a stuck partition).
 *
 * Every test builds its own mock cluster (3 brokers, "t.in" with 3
 * partitions, "t.in.dlq" with 1), its own YAML config and consumer group, and
 * runs kafka_loop_run() on a separate thread; the test thread only produces
 * and observes. The fake handler's behaviour is scripted per test and its
 * observations are guarded by one mutex (two loops share it in the rebalance
 * tests). Every wait is bounded.
 *
 * Set LOOPTEST_VERBOSE=1 for the loop's info logs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "common/avro_codec.h"
#include "common/config.h"
#include "common/dlq.h"
#include "common/kafka_loop.h"
#include "common/log.h"
#include "common/metrics.h"

#define TOPIC        "t.in"
#define DLQ_TOPIC    "t.in.dlq"
#define PARTITIONS   3
#define READER       "crmsync.response.ResponseEvent"
#define SCHEMAS_DIR  CRMSYNC_SOURCE_DIR "/schemas"
#define WAIT_MS      30000 /* upper bound of every wait */
#define MAX_SEEN     1024
#define MAX_ATTEMPTS 64

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Sets @p ok to whether @p cond became true within @p timeout_ms. */
#define WAIT_UNTIL(ok, cond, timeout_ms)                                       \
    do {                                                                       \
        int64_t dl_ = now_ms() + (timeout_ms);                                 \
        for (;;) {                                                             \
            if (cond) {                                                        \
                (ok) = true;                                                   \
                break;                                                         \
            }                                                                  \
            if (now_ms() >= dl_) {                                             \
                (ok) = false;                                                  \
                break;                                                         \
            }                                                                  \
            sleep_ms(20);                                                      \
        }                                                                      \
    } while (0)

/* ------------------------------------------------------------------ */
/* The scripted fake handler                                           */
/* ------------------------------------------------------------------ */

/* One DONE item as the handler saw it. */
struct seen {
    char id[48];       /* event_id of the decoded value */
    int32_t partition; /* Kafka partition */
    int64_t offset;    /* Kafka offset */
    int loop;          /* which loop (0 or 1) handled it */
};

/* Behaviour (set before the loop starts, release at any time) and
 * observations; everything under mu. */
struct script {
    pthread_mutex_t mu;
    /* behaviour */
    char retry_id[48];   /* event_id answered with RETRY ("" = none) */
    int retry_times;     /* RETRY this many attempts; -1 = until release */
    bool release;        /* ends a retry_times == -1 outage */
    long retry_after_ms; /* hint set on every RETRY */
    /* observations */
    struct seen done[MAX_SEEN];
    size_t ndone;
    int retry_attempts;                     /* attempts at retry_id so far */
    int64_t retry_attempt_at[MAX_ATTEMPTS]; /* monotonic ms of each */
    double paused_seen;   /* max paused gauge seen in handler */
    int bad_items;        /* contract violations seen */
    char bad_reason[256]; /* the first violation */
    int done_per_loop[2]; /* DONE items per loop */
    struct metrics *m[2]; /* borrowed: each loop's metrics */
};

/* Per-loop handler context: the shared script plus the loop's index. */
struct hctx {
    struct script *s; /* borrowed */
    int loop;         /* 0 or 1 */
};

static void script_init(struct script *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
}

static void script_bad(struct script *s, const char *what,
                       const struct kl_item *it)
{
    if (s->bad_items++ == 0)
        snprintf(s->bad_reason, sizeof(s->bad_reason),
                 "%s (partition %" PRId32 " offset %" PRId64 ")", what,
                 it->rkm->partition, it->rkm->offset);
}

/* Checks the handler contract on one item and records/answers it. */
static void fake_one(struct hctx *hc, struct kl_item *it)
{
    struct script *s = hc->s;
    const char *id = NULL;
    const char *tenant;

    if (it->state != KL_PENDING)
        script_bad(s, "item not PENDING", it);
    if (!it->decoded) {
        script_bad(s, "undecoded item reached the handler", it);
        it->state = KL_DONE;
        return;
    }
    if (it->schema_id != 1)
        script_bad(s, "unexpected writer schema id", it);
    id = avro_field_str(&it->value, "event_id");
    tenant = avro_field_str(&it->value, "tenant");
    if (!id || !tenant || strcmp(tenant, "t") != 0)
        script_bad(s, "decoded value lacks event_id/tenant", it);
    /* v2 reader field the v1 writer lacks: filled with its default. */
    if (avro_field_str(&it->value, "device") != NULL)
        script_bad(s, "v2 field 'device' not defaulted to null", it);
    if (!id)
        id = "";

    if (s->retry_id[0] && strcmp(id, s->retry_id) == 0) {
        bool retry = s->retry_times < 0 ? !s->release
                                        : s->retry_attempts < s->retry_times;
        double g = metrics_gauge_get(s->m[hc->loop],
                                     "crmsync_partitions_paused", NULL);
        if (s->retry_attempts < MAX_ATTEMPTS)
            s->retry_attempt_at[s->retry_attempts] = now_ms();
        s->retry_attempts++;
        if (g > s->paused_seen)
            s->paused_seen = g;
        if (retry) {
            kl_item_fail(it, KL_RETRY, CS_ERR_HTTP_SERVER,
                         "scripted outage attempt %d", s->retry_attempts);
            it->retry_after_ms = s->retry_after_ms;
            return;
        }
    }
    if (s->ndone < MAX_SEEN) {
        struct seen *d = &s->done[s->ndone++];
        snprintf(d->id, sizeof(d->id), "%s", id);
        d->partition = it->rkm->partition;
        d->offset = it->rkm->offset;
        d->loop = hc->loop;
    }
    s->done_per_loop[hc->loop]++;
    it->state = KL_DONE;
}

static void fake_process(void *ctx, struct kl_item **items, size_t n)
{
    struct hctx *hc = ctx;

    pthread_mutex_lock(&hc->s->mu);
    for (size_t i = 0; i < n; i++)
        fake_one(hc, items[i]);
    pthread_mutex_unlock(&hc->s->mu);
}

static size_t script_ndone(struct script *s)
{
    size_t n;
    pthread_mutex_lock(&s->mu);
    n = s->ndone;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static int script_attempts(struct script *s)
{
    int n;
    pthread_mutex_lock(&s->mu);
    n = s->retry_attempts;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void script_release(struct script *s)
{
    pthread_mutex_lock(&s->mu);
    s->release = true;
    pthread_mutex_unlock(&s->mu);
}

/* How often @p id was handled DONE. */
static int script_count(struct script *s, const char *id)
{
    int n = 0;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->ndone; i++)
        if (strcmp(s->done[i].id, id) == 0)
            n++;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void assert_no_bad_items(struct script *s)
{
    char first[256];
    int bad;

    pthread_mutex_lock(&s->mu);
    bad = s->bad_items;
    snprintf(first, sizeof(first), "%s", s->bad_reason);
    pthread_mutex_unlock(&s->mu);
    if (bad)
        fail_msg("%d handler contract violations, first: %s", bad, first);
}

/* ------------------------------------------------------------------ */
/* Environment: mock cluster, producer, config, codec                  */
/* ------------------------------------------------------------------ */

struct env {
    rd_kafka_t *prk;             /* test producer; owns the mock cluster */
    rd_kafka_mock_cluster_t *mc; /* borrowed from prk */
    char bootstraps[256];
    char group[64];
    char yaml[64];            /* temp config file, removed on env_down */
    struct config cfg;        /* loaded from yaml */
    struct avro_codec *codec; /* for the test thread's encoding */
    rd_kafka_t *observer;     /* consumer of the group, never joins */
};

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *op)
{
    (void)rk;
    (void)op;
    if (rkm->err)
        fprintf(stderr, "test produce failed: %s\n",
                rd_kafka_err2str(rkm->err));
}

static rd_kafka_t *make_consumer(const char *bootstraps, const char *group)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk;

    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps, err,
                          sizeof(err)) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", err,
                          sizeof(err)) ||
        rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err,
                          sizeof(err)) ||
        (group && rd_kafka_conf_set(conf, "group.id", group, err, sizeof(err))))
        fail_msg("consumer conf: %s", err);
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (!rk)
        fail_msg("consumer: %s", err);
    return rk;
}

/* @p extra_kafka: more "    key: value\n" lines under kafka:. */
static void env_up(struct env *e, const char *group, int batch_max_ms,
                   const char *extra_kafka)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    FILE *f;
    int fd;

    memset(e, 0, sizeof(*e));
    snprintf(e->group, sizeof(e->group), "%s", group);
    if (rd_kafka_conf_set(conf, "test.mock.num.brokers", "3", err,
                          sizeof(err)) ||
        rd_kafka_conf_set(conf, "linger.ms", "0", err, sizeof(err)))
        fail_msg("mock conf: %s", err);
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    e->prk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (!e->prk)
        fail_msg("mock producer: %s", err);
    e->mc = rd_kafka_handle_mock_cluster(e->prk);
    assert_non_null(e->mc);
    assert_int_equal(rd_kafka_mock_topic_create(e->mc, TOPIC, PARTITIONS, 1),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(rd_kafka_mock_topic_create(e->mc, DLQ_TOPIC, 1, 1),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
    snprintf(e->bootstraps, sizeof(e->bootstraps), "%s",
             rd_kafka_mock_cluster_bootstraps(e->mc));

    snprintf(e->yaml, sizeof(e->yaml), "/tmp/looptest-XXXXXX");
    fd = mkstemp(e->yaml);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    fprintf(f,
            "kafka:\n"
            "  bootstrap.servers: \"%s\"\n"
            "  auto.commit.interval.ms: 300\n"
            "  heartbeat.interval.ms: 300\n"
            "  session.timeout.ms: 4000\n"
            "%s"
            "consumer:\n"
            "  topics: " TOPIC "\n"
            "  group_id: %s\n"
            "  batch_max_messages: 10\n"
            "  batch_max_ms: %d\n"
            "  retry_backoff_min_ms: 50\n"
            "  retry_backoff_max_ms: 200\n"
            "crm:\n"
            "  base_url: http://127.0.0.1:1\n"
            "  tenant_id: t\n"
            "metrics:\n"
            "  port: 0\n"
            "avro:\n"
            "  schemas_dir: " SCHEMAS_DIR "\n",
            e->bootstraps, extra_kafka ? extra_kafka : "", group, batch_max_ms);
    fclose(f);
    if (config_load(&e->cfg, "looptest", TOPIC, e->yaml, NULL, 0, err,
                    sizeof(err)) != CS_ERR_OK)
        fail_msg("config_load: %s", err);
    e->codec = avro_codec_new(NULL, SCHEMAS_DIR, err, sizeof(err));
    if (!e->codec)
        fail_msg("avro_codec_new: %s", err);
    e->observer = make_consumer(e->bootstraps, group);
}

static void env_down(struct env *e)
{
    rd_kafka_destroy(e->observer);
    avro_codec_free(e->codec);
    config_free(&e->cfg, NULL, 0);
    unlink(e->yaml);
    rd_kafka_flush(e->prk, 5000);
    rd_kafka_destroy(e->prk);
}

/* Produces one message (value copied) with an optional header. */
static void produce_raw(struct env *e, int32_t partition, const char *key,
                        const void *val, size_t len, const char *hdr_name,
                        const char *hdr_val)
{
    rd_kafka_headers_t *h = NULL;
    rd_kafka_resp_err_t err;

    if (hdr_name) {
        h = rd_kafka_headers_new(1);
        rd_kafka_header_add(h, hdr_name, -1, hdr_val, -1);
    }
    if (h)
        err = rd_kafka_producev(e->prk, RD_KAFKA_V_TOPIC(TOPIC),
                                RD_KAFKA_V_PARTITION(partition),
                                RD_KAFKA_V_KEY(key, strlen(key)),
                                RD_KAFKA_V_VALUE((void *)(uintptr_t)val, len),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
    else
        err = rd_kafka_producev(
            e->prk, RD_KAFKA_V_TOPIC(TOPIC), RD_KAFKA_V_PARTITION(partition),
            RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_VALUE((void *)(uintptr_t)val, len),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    if (err) {
        if (h)
            rd_kafka_headers_destroy(h);
        fail_msg("produce: %s", rd_kafka_err2str(err));
    }
}

/* Confluent-framed ResponseEvent v1 (schema id 1); *buf caller frees. */
static void encode_event(struct env *e, const char *id, void **buf, size_t *len)
{
    char err[256];
    avro_value_t v;
    json_t *j = json_pack("{s:s, s:s, s:I, s:s, s:{s:s}, s:s, s:s}", "event_id",
                          id, "tenant", "t", "occurred_at",
                          (json_int_t)1700000000000LL, "source_system",
                          "looptest", "recipient", "email", "a@example.com",
                          "response_type", "OPEN", "mailing_id", "m-1");

    assert_non_null(j);
    if (avro_codec_from_json(e->codec, 1, j, &v, err, sizeof(err)) != CS_ERR_OK)
        fail_msg("from_json: %s", err);
    if (avro_codec_encode(e->codec, 1, &v, buf, len, err, sizeof(err)) !=
        CS_ERR_OK)
        fail_msg("encode: %s", err);
    avro_value_decref(&v);
    json_decref(j);
}

static void event_id(char *buf, size_t size, const char *tag, int32_t p, int i)
{
    snprintf(buf, size, "%s-%" PRId32 "-%d", tag, p, i);
}

/* Produces @p n events "<tag>-<p>-<i>" (i from @p first) to partition p. */
static void produce_events(struct env *e, const char *tag, int32_t p, int first,
                           int n)
{
    for (int i = first; i < first + n; i++) {
        char id[48];
        void *buf = NULL;
        size_t len = 0;
        event_id(id, sizeof(id), tag, p, i);
        encode_event(e, id, &buf, &len);
        produce_raw(e, p, id, buf, len, NULL, NULL);
        free(buf);
    }
}

static void flush_producer(struct env *e)
{
    assert_int_equal(rd_kafka_flush(e->prk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static int64_t high_watermark(struct env *e, const char *topic, int32_t p)
{
    int64_t lo = -1, hi = -1;
    assert_int_equal(
        rd_kafka_query_watermark_offsets(e->prk, topic, p, &lo, &hi, 5000),
        RD_KAFKA_RESP_ERR_NO_ERROR);
    return hi;
}

/* The group's committed offset of TOPIC[p] (negative = none). */
static int64_t committed(struct env *e, int32_t p)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_resp_err_t err;
    int64_t off;

    rd_kafka_topic_partition_list_add(l, TOPIC, p);
    err = rd_kafka_committed(e->observer, l, 5000);
    off = err ? -2 : l->elems[0].offset;
    rd_kafka_topic_partition_list_destroy(l);
    return off;
}

/* Waits until every partition's committed offset reached its high
 * watermark. Used before stopping two loops together: while one leaves,
 * the mock coordinator answers the other's final commits with
 * REBALANCE_IN_PROGRESS (redelivery, not loss), so the stop-time commit
 * is only checked with a single loop. */
static void wait_all_committed(struct env *e)
{
    for (int32_t p = 0; p < PARTITIONS; p++) {
        int64_t hwm = high_watermark(e, TOPIC, p);
        bool ok;
        WAIT_UNTIL(ok, committed(e, p) == hwm || hwm == 0, 10000);
        if (!ok)
            fail_msg("partition %" PRId32 ": committed %" PRId64
                     " never reached high watermark %" PRId64,
                     p, committed(e, p), hwm);
    }
}

static void assert_all_committed(struct env *e)
{
    for (int32_t p = 0; p < PARTITIONS; p++) {
        int64_t hwm = high_watermark(e, TOPIC, p);
        bool ok;
        /* The final commit is synchronous; allow for the coordinator. */
        WAIT_UNTIL(ok, committed(e, p) == hwm || hwm == 0, 5000);
        if (!ok)
            fail_msg("partition %" PRId32 ": committed %" PRId64
                     " != high watermark %" PRId64,
                     p, committed(e, p), hwm);
    }
}

/* ------------------------------------------------------------------ */
/* A loop on its own thread, with its own codec, dlq and metrics       */
/* ------------------------------------------------------------------ */

struct runner {
    struct kafka_loop *kl;
    struct avro_codec *codec; /* one per loop: codecs are single-threaded */
    struct dlq *dlq;
    struct metrics *m;
    struct hctx hc;
    volatile sig_atomic_t run;
    enum cs_err rc;
    pthread_t th;
};

static void *runner_main(void *arg)
{
    struct runner *r = arg;
    r->rc = kafka_loop_run(r->kl, &r->run);
    return NULL;
}

static void runner_start(struct runner *r, struct env *e, struct script *s,
                         int loop)
{
    char err[512];
    struct kl_handler h = {.reader_schema = READER,
                           .process = fake_process,
                           .healthy = NULL,
                           .ctx = &r->hc};

    memset(r, 0, sizeof(*r));
    r->m = metrics_new("looptest");
    assert_non_null(r->m);
    r->codec = avro_codec_new(NULL, SCHEMAS_DIR, err, sizeof(err));
    if (!r->codec)
        fail_msg("avro_codec_new: %s", err);
    r->dlq = dlq_new(&e->cfg, r->m, err, sizeof(err));
    if (!r->dlq)
        fail_msg("dlq_new: %s", err);
    r->hc.s = s;
    r->hc.loop = loop;
    pthread_mutex_lock(&s->mu);
    s->m[loop] = r->m;
    pthread_mutex_unlock(&s->mu);
    r->kl =
        kafka_loop_new(&e->cfg, &h, r->codec, r->dlq, r->m, err, sizeof(err));
    if (!r->kl)
        fail_msg("kafka_loop_new: %s", err);
    r->run = 1;
    assert_int_equal(pthread_create(&r->th, NULL, runner_main, r), 0);
}

/* Clears run, joins, frees. @returns how long the loop took to return. */
static int64_t runner_stop(struct runner *r)
{
    int64_t t0 = now_ms(), took;
    unsigned left;

    r->run = 0;
    pthread_join(r->th, NULL);
    took = now_ms() - t0;
    /* The shutdown deadline (alarm) must not outlive a clean stop. */
    left = alarm(0);
    if (left)
        fail_msg("kafka_loop_run returned with an alarm pending (%u s)", left);
    assert_int_equal(r->rc, CS_ERR_OK);
    kafka_loop_free(r->kl);
    dlq_free(r->dlq);
    avro_codec_free(r->codec);
    /* The script may still point at the metrics: nobody reads it now. */
    metrics_free(r->m);
    return took;
}

/* ------------------------------------------------------------------ */
/* Reading the dead-letter topic                                       */
/* ------------------------------------------------------------------ */

/* The dead-letter topic read from the beginning. Messages keep references
 * into the consumer: destroy them before it (dlq_reader_free). */
struct dlq_reader {
    rd_kafka_t *rk;
    rd_kafka_message_t *msgs[16];
    size_t n;
};

/* Waits at most @p timeout_ms for @p want messages of DLQ_TOPIC[0]. */
static void dlq_read(struct env *e, struct dlq_reader *d, size_t want,
                     int timeout_ms)
{
    /* assign() needs a group.id; this reader never commits. */
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    int64_t deadline = now_ms() + timeout_ms;

    memset(d, 0, sizeof(*d));
    d->rk = make_consumer(e->bootstraps, "looptest-dlq-reader");
    rd_kafka_topic_partition_list_add(l, DLQ_TOPIC, 0)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
    assert_int_equal(rd_kafka_assign(d->rk, l), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(l);
    while (d->n < want && d->n < 16 && now_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(d->rk, 100);
        if (!m)
            continue;
        if (m->err) {
            rd_kafka_message_destroy(m);
            continue;
        }
        d->msgs[d->n++] = m;
    }
}

static void dlq_reader_free(struct dlq_reader *d)
{
    for (size_t i = 0; i < d->n; i++)
        rd_kafka_message_destroy(d->msgs[i]);
    rd_kafka_consumer_close(d->rk);
    rd_kafka_destroy(d->rk);
}

/* Copies header @p name of @p m into buf; false when absent. */
static bool header_str(const rd_kafka_message_t *m, const char *name, char *buf,
                       size_t size)
{
    rd_kafka_headers_t *h = NULL;
    const void *val = NULL;
    size_t len = 0;

    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(h, name, &val, &len) !=
            RD_KAFKA_RESP_ERR_NO_ERROR)
        return false;
    snprintf(buf, size, "%.*s", (int)len, val ? (const char *)val : "");
    return true;
}

/* ------------------------------------------------------------------ */
/* 1. all DONE: handled exactly once, everything committed             */
/* ------------------------------------------------------------------ */

static void test_all_done_committed(void **state)
{
    struct env e;
    struct script s;
    struct runner r;
    bool ok;
    const int per = 10;

    (void)state;
    env_up(&e, "g-all-done", 50, NULL);
    script_init(&s);
    for (int32_t p = 0; p < PARTITIONS; p++)
        produce_events(&e, "a", p, 0, per);
    flush_producer(&e);

    runner_start(&r, &e, &s, 0);
    WAIT_UNTIL(ok, script_ndone(&s) >= (size_t)(PARTITIONS * per), WAIT_MS);
    assert_true(ok);
    sleep_ms(300); /* a duplicate would show up now */
    assert_int_equal(
        metrics_counter_get(r.m, "crmsync_messages_processed_total", NULL),
        PARTITIONS * per);
    runner_stop(&r);

    assert_no_bad_items(&s);
    assert_int_equal(script_ndone(&s), PARTITIONS * per);
    for (int32_t p = 0; p < PARTITIONS; p++)
        for (int i = 0; i < per; i++) {
            char id[48];
            event_id(id, sizeof(id), "a", p, i);
            if (script_count(&s, id) != 1)
                fail_msg("%s handled %d times", id, script_count(&s, id));
        }
    assert_all_committed(&e);
    assert_int_equal(high_watermark(&e, DLQ_TOPIC, 0), 0);
    env_down(&e);
}

/* ------------------------------------------------------------------ */
/* 2. poison messages go to the DLQ, never to the handler              */
/* ------------------------------------------------------------------ */

struct poison {
    int32_t partition;
    const char *cls; /* expected crmsync.error.class */
    void *val;       /* owned */
    size_t len;
    int64_t offset; /* where it landed */
};

static void test_poison_to_dlq(void **state)
{
    struct env e;
    struct script s;
    struct runner r;
    struct poison pz[4];
    struct dlq_reader d;
    bool ok;
    void *good = NULL;
    size_t good_len = 0;
    unsigned char unknown[16] = {0, 0, 0, 0x03, 0xe7}; /* schema id 999 */

    (void)state;
    env_up(&e, "g-poison", 50, NULL);
    script_init(&s);

    encode_event(&e, "trunc", &good, &good_len);
    assert_true(good_len > 12);
    memset(unknown + 5, 0x02, sizeof(unknown) - 5);
    pz[0] = (struct poison){0, "BAD_FRAME", strdup("not avro at all"), 15, 0};
    pz[1] = (struct poison){1, "UNKNOWN_SCHEMA", malloc(sizeof(unknown)),
                            sizeof(unknown), 0};
    memcpy(pz[1].val, unknown, sizeof(unknown));
    pz[2] = (struct poison){2, "DECODE", malloc(good_len / 2), good_len / 2, 0};
    memcpy(pz[2].val, good, good_len / 2);
    pz[3] = (struct poison){0, "BAD_FRAME", malloc(3), 3, 0}; /* too short */
    memcpy(pz[3].val, "\0\0\0", 3);
    free(good);

    /* Layout per partition: good, poison(s), good. Offsets follow. */
    {
        int64_t next[PARTITIONS] = {0};
        for (int32_t p = 0; p < PARTITIONS; p++) {
            produce_events(&e, "g", p, 0, 1);
            next[p]++;
        }
        for (size_t i = 0; i < 4; i++) {
            char key[32];
            snprintf(key, sizeof(key), "poison-%zu", i);
            produce_raw(&e, pz[i].partition, key, pz[i].val, pz[i].len,
                        "x-trace", key);
            pz[i].offset = next[pz[i].partition]++;
        }
        for (int32_t p = 0; p < PARTITIONS; p++)
            produce_events(&e, "g", p, 1, 1);
    }
    flush_producer(&e);

    runner_start(&r, &e, &s, 0);
    WAIT_UNTIL(ok, script_ndone(&s) >= 2 * PARTITIONS, WAIT_MS);
    assert_true(ok);
    dlq_read(&e, &d, 4, WAIT_MS);
    assert_int_equal(metrics_counter_get(r.m,
                                         "crmsync_messages_deadlettered_total",
                                         "reason=\"BAD_FRAME\""),
                     2);
    assert_int_equal(metrics_counter_get(r.m,
                                         "crmsync_messages_deadlettered_total",
                                         "reason=\"DECODE\""),
                     1);
    runner_stop(&r);

    assert_no_bad_items(&s); /* no undecoded item reached the handler */
    assert_int_equal(script_ndone(&s), 2 * PARTITIONS);
    assert_int_equal(d.n, 4);
    for (size_t i = 0; i < 4; i++) {
        char buf[512], want[32];
        const rd_kafka_message_t *m = NULL;
        for (size_t j = 0; j < d.n && !m; j++) {
            char key[32];
            snprintf(key, sizeof(key), "poison-%zu", i);
            if (d.msgs[j]->key_len == strlen(key) &&
                memcmp(d.msgs[j]->key, key, strlen(key)) == 0)
                m = d.msgs[j];
        }
        if (!m)
            fail_msg("poison %zu not in the DLQ", i);
        assert_int_equal(m->len, pz[i].len);
        assert_memory_equal(m->payload, pz[i].val, pz[i].len);
        assert_true(header_str(m, "crmsync.error.topic", buf, sizeof(buf)));
        assert_string_equal(buf, TOPIC);
        assert_true(header_str(m, "crmsync.error.partition", buf, sizeof(buf)));
        snprintf(want, sizeof(want), "%" PRId32, pz[i].partition);
        assert_string_equal(buf, want);
        assert_true(header_str(m, "crmsync.error.offset", buf, sizeof(buf)));
        snprintf(want, sizeof(want), "%" PRId64, pz[i].offset);
        assert_string_equal(buf, want);
        assert_true(header_str(m, "crmsync.error.class", buf, sizeof(buf)));
        if (strcmp(buf, pz[i].cls) != 0)
            fail_msg("poison %zu: class %s, want %s", i, buf, pz[i].cls);
        assert_true(header_str(m, "crmsync.error.message", buf, sizeof(buf)));
        assert_true(strlen(buf) > 0);
        assert_true(header_str(m, "crmsync.error.worker", buf, sizeof(buf)));
        assert_string_equal(buf, "looptest");
        assert_true(header_str(m, "crmsync.error.timestamp", buf, sizeof(buf)));
        /* RFC 3339 UTC with milliseconds: 2024-05-01T12:00:00.000Z */
        assert_int_equal(strlen(buf), 24);
        assert_int_equal(buf[23], 'Z');
        assert_true(header_str(m, "x-trace", buf, sizeof(buf)));
        snprintf(want, sizeof(want), "poison-%zu", i);
        assert_string_equal(buf, want);
    }
    /* Dead letters are finished: every offset is committed. */
    assert_all_committed(&e);

    dlq_reader_free(&d);
    for (size_t i = 0; i < 4; i++)
        free(pz[i].val);
    env_down(&e);
}

/* ------------------------------------------------------------------ */
/* 3. RETRY: pause, keep polling, back off, complete; nothing dead    */
/* ------------------------------------------------------------------ */

static void test_retry_then_done(void **state)
{
    struct env e;
    struct script s;
    struct runner r;
    bool ok;
    const int64_t k = 2; /* offset of the retrying message in partition 0 */
    int64_t max_committed = -1;
    int64_t deadline;

    (void)state;
    env_up(&e, "g-retry", 50, NULL);
    script_init(&s);
    snprintf(s.retry_id, sizeof(s.retry_id), "r-0-%d", (int)k);
    s.retry_times = 3;
    s.retry_after_ms = 700; /* outage > auto.commit.interval.ms */
    for (int32_t p = 0; p < PARTITIONS; p++)
        produce_events(&e, "r", p, 0, 5);
    flush_producer(&e);

    runner_start(&r, &e, &s, 0);
    /* During the outage the committed offset of partition 0 must never
     * pass the retrying message. */
    deadline = now_ms() + WAIT_MS;
    while (script_count(&s, s.retry_id) == 0 && now_ms() < deadline) {
        int64_t c = committed(&e, 0);
        if (c > max_committed)
            max_committed = c;
        if (c > k)
            fail_msg("committed %" PRId64 " past the retrying offset %" PRId64
                     " during the outage",
                     c, k);
        assert_true(script_attempts(&s) <= 4);
        sleep_ms(50);
    }
    /* Offsets 0..k-1 were finished before the outage: their commit is not
     * held back by it. */
    if (max_committed != k)
        fail_msg("during the outage partition 0 committed at most %" PRId64
                 ", want %" PRId64,
                 max_committed, k);
    WAIT_UNTIL(ok, script_ndone(&s) >= 5 * PARTITIONS, WAIT_MS);
    assert_true(ok);
    /* Retry finished: the prefix of partition 0 now gets committed. */
    WAIT_UNTIL(ok, committed(&e, 0) == 5, 5000);
    assert_true(ok);
    assert_int_equal(metrics_gauge_get(r.m, "crmsync_partitions_paused", NULL),
                     0);
    assert_true(
        metrics_counter_get(r.m, "crmsync_messages_retried_total", NULL) >= 3);
    runner_stop(&r);

    assert_no_bad_items(&s);
    assert_int_equal(s.retry_attempts, 4);
    assert_int_equal(script_count(&s, s.retry_id), 1);
    assert_int_equal(script_ndone(&s), 5 * PARTITIONS);
    /* The loop paused while the message was retrying. */
    assert_true(s.paused_seen > 0);
    /* The Retry-After hint was honoured between attempts. */
    for (int i = 1; i < 4; i++)
        if (s.retry_attempt_at[i] - s.retry_attempt_at[i - 1] < 650)
            fail_msg("attempt %d only %" PRId64 " ms after the previous", i,
                     s.retry_attempt_at[i] - s.retry_attempt_at[i - 1]);
    assert_int_equal(high_watermark(&e, DLQ_TOPIC, 0), 0);
    assert_all_committed(&e);
    env_down(&e);
}

/* ------------------------------------------------------------------ */
/* 4. per-partition prefix: a stuck offset holds back only its own     */
/*    partition                                                        */
/* ------------------------------------------------------------------ */

static void test_partition_prefix(void **state)
{
    struct env e;
    struct script s;
    struct runner r;
    bool ok;
    const int per = 4;
    const int64_t k = 1;

    (void)state;
    /* A long batch window so all 8 messages form one batch: a RETRY
     * pauses every partition, so only what is in the batch can advance. */
    env_up(&e, "g-prefix", 1000, NULL);
    script_init(&s);
    snprintf(s.retry_id, sizeof(s.retry_id), "p-0-%d", (int)k);
    s.retry_times = -1;
    produce_events(&e, "p", 0, 0, per);
    produce_events(&e, "p", 1, 0, per);
    flush_producer(&e);

    runner_start(&r, &e, &s, 0);
    /* Everything but the stuck message is handled... */
    WAIT_UNTIL(ok, script_ndone(&s) >= (size_t)(2 * per - 1), WAIT_MS);
    assert_true(ok);
    /* ...partition 1 is committed fully, partition 0 only below k. */
    WAIT_UNTIL(ok, committed(&e, 1) == per, 10000);
    if (!ok)
        fail_msg("partition 1 committed %" PRId64 ", want %d", committed(&e, 1),
                 per);
    assert_int_equal(committed(&e, 0), k);
    /* Stays there across several auto-commit intervals. */
    for (int i = 0; i < 10; i++) {
        int64_t c = committed(&e, 0);
        if (c > k)
            fail_msg("partition 0 committed %" PRId64
                     " past stuck offset %" PRId64,
                     c, k);
        sleep_ms(100);
    }
    assert_true(script_attempts(&s) >= 2);
    assert_int_equal(script_count(&s, s.retry_id), 0);

    script_release(&s);
    WAIT_UNTIL(ok, script_ndone(&s) >= (size_t)(2 * per), WAIT_MS);
    assert_true(ok);
    WAIT_UNTIL(ok, committed(&e, 0) == per, 10000);
    assert_true(ok);
    runner_stop(&r);

    assert_no_bad_items(&s);
    assert_int_equal(script_ndone(&s), 2 * per);
    assert_all_committed(&e);
    env_down(&e);
}

/* ------------------------------------------------------------------ */
/* 5. stop while stuck: returns quickly, stuck offset not committed    */
/* ------------------------------------------------------------------ */

static void test_stop_while_stuck(void **state)
{
    struct env e;
    struct script s;
    struct runner r;
    bool ok;
    int64_t took;
    rd_kafka_t *rk;
    rd_kafka_topic_partition_list_t *l;
    rd_kafka_message_t *m = NULL;
    int64_t deadline;

    (void)state;
    env_up(&e, "g-stop", 50, NULL);
    script_init(&s);
    snprintf(s.retry_id, sizeof(s.retry_id), "s-0-1");
    s.retry_times = -1;
    produce_events(&e, "s", 0, 0, 3);
    flush_producer(&e);

    runner_start(&r, &e, &s, 0);
    WAIT_UNTIL(ok, script_attempts(&s) >= 3, WAIT_MS);
    assert_true(ok);
    took = runner_stop(&r);
    if (took >= 10000)
        fail_msg("kafka_loop_run took %" PRId64 " ms to stop", took);
    assert_int_equal(script_count(&s, "s-0-1"), 0);
    /* Offset 0 is done and committed; offset 1 is not. */
    assert_int_equal(committed(&e, 0), 1);

    /* A new consumer of the group starts at the stuck message. */
    rk = make_consumer(e.bootstraps, e.group);
    l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, TOPIC, 0)->offset =
        RD_KAFKA_OFFSET_STORED;
    assert_int_equal(rd_kafka_assign(rk, l), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(l);
    deadline = now_ms() + WAIT_MS;
    while (!m && now_ms() < deadline) {
        m = rd_kafka_consumer_poll(rk, 100);
        if (m && m->err) {
            rd_kafka_message_destroy(m);
            m = NULL;
        }
    }
    assert_non_null(m);
    assert_int_equal(m->offset, 1);
    assert_int_equal(m->key_len, strlen("s-0-1"));
    assert_memory_equal(m->key, "s-0-1", m->key_len);
    rd_kafka_message_destroy(m);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);

    assert_no_bad_items(&s);
    env_down(&e);
}

/* ------------------------------------------------------------------ */
/* 6. decoded values reach the handler, per-partition order kept       */
/* ------------------------------------------------------------------ */

static void test_decoded_in_order(void **state)
{
    struct env e;
    struct script s;
    struct runner r;
    bool ok;
    const int per = 15;

    (void)state;
    env_up(&e, "g-order", 50, NULL);
    script_init(&s);
    for (int32_t p = 0; p < PARTITIONS; p++)
        produce_events(&e, "o", p, 0, per);
    flush_producer(&e);

    runner_start(&r, &e, &s, 0);
    WAIT_UNTIL(ok, script_ndone(&s) >= (size_t)(PARTITIONS * per), WAIT_MS);
    assert_true(ok);
    runner_stop(&r);

    assert_no_bad_items(&s);
    assert_int_equal(s.ndone, PARTITIONS * per);
    {
        int64_t last[PARTITIONS] = {-1, -1, -1};
        for (size_t i = 0; i < s.ndone; i++) {
            const struct seen *d = &s.done[i];
            char want[48];
            /* Empty partitions: offset i holds event o-<p>-<i>. */
            event_id(want, sizeof(want), "o", d->partition, (int)d->offset);
            assert_string_equal(d->id, want);
            if (d->offset != last[d->partition] + 1)
                fail_msg("partition %" PRId32 ": offset %" PRId64
                         " handled after %" PRId64,
                         d->partition, d->offset, last[d->partition]);
            last[d->partition] = d->offset;
        }
    }
    env_down(&e);
}

/* ------------------------------------------------------------------ */
/* 7. cooperative rebalance: a second loop joins                       */
/* ------------------------------------------------------------------ */

/* Called once every loop has stopped: no lock needed. */
static void assert_unique_done(const struct script *s)
{
    for (size_t i = 0; i < s->ndone; i++)
        for (size_t j = i + 1; j < s->ndone; j++)
            if (strcmp(s->done[i].id, s->done[j].id) == 0)
                fail_msg("%s handled twice (loops %d and %d)", s->done[i].id,
                         s->done[i].loop, s->done[j].loop);
}

static void test_cooperative_rebalance(void **state)
{
    struct env e;
    struct script s;
    struct runner a, b;
    bool ok;
    const int per = 10;
    int before[2];

    (void)state;
    env_up(&e, "g-coop", 50, NULL);
    script_init(&s);
    for (int32_t p = 0; p < PARTITIONS; p++)
        produce_events(&e, "c1", p, 0, per);
    flush_producer(&e);

    runner_start(&a, &e, &s, 0);
    WAIT_UNTIL(ok, script_ndone(&s) >= (size_t)(PARTITIONS * per), WAIT_MS);
    assert_true(ok);

    /* B joins; more messages arrive while the group rebalances. */
    runner_start(&b, &e, &s, 1);
    for (int32_t p = 0; p < PARTITIONS; p++)
        produce_events(&e, "c2", p, 0, per);
    flush_producer(&e);
    WAIT_UNTIL(ok, metrics_is_ready(b.m) && metrics_is_ready(a.m), WAIT_MS);
    if (!ok)
        fail_msg("second loop never got partitions (ready a=%d b=%d)",
                 metrics_is_ready(a.m), metrics_is_ready(b.m));
    WAIT_UNTIL(ok, script_ndone(&s) >= (size_t)(2 * PARTITIONS * per), WAIT_MS);
    assert_true(ok);

    pthread_mutex_lock(&s.mu);
    before[0] = s.done_per_loop[0];
    before[1] = s.done_per_loop[1];
    pthread_mutex_unlock(&s.mu);
    for (int32_t p = 0; p < PARTITIONS; p++)
        produce_events(&e, "c3", p, 0, per);
    flush_producer(&e);
    WAIT_UNTIL(ok, script_ndone(&s) >= (size_t)(3 * PARTITIONS * per), WAIT_MS);
    assert_true(ok);
    wait_all_committed(&e);
    runner_stop(&b);
    runner_stop(&a);

    assert_no_bad_items(&s);
    assert_unique_done(&s);
    assert_int_equal(s.ndone, 3 * PARTITIONS * per);
    /* Both loops own partitions after the rebalance. */
    if (s.done_per_loop[0] == before[0] || s.done_per_loop[1] == before[1])
        fail_msg("after the rebalance loop A handled %d, loop B %d",
                 s.done_per_loop[0] - before[0],
                 s.done_per_loop[1] - before[1]);
    assert_all_committed(&e);
    env_down(&e);
}

/* ------------------------------------------------------------------ */
/* 8. rebalance while paused: a loop that loses its stuck message must */
/*    not stay paused on what it keeps or gains                        */
/* ------------------------------------------------------------------ */

static void test_rebalance_while_paused(void **state)
{
    struct env e;
    struct script s;
    struct runner a, b;
    bool ok;
    const int per = 5;

    (void)state;
    /* Eager protocol: B joining revokes all of A's partitions, so A
     * abandons the stuck message and is left with an empty batch. */
    env_up(&e, "g-paused-rebalance", 50,
           "  partition.assignment.strategy: range\n");
    script_init(&s);
    snprintf(s.retry_id, sizeof(s.retry_id), "q-0-0");
    s.retry_times = -1;
    produce_events(&e, "q", 0, 0, 1);
    flush_producer(&e);

    runner_start(&a, &e, &s, 0);
    WAIT_UNTIL(ok, script_attempts(&s) >= 2, WAIT_MS);
    assert_true(ok);

    runner_start(&b, &e, &s, 1);
    WAIT_UNTIL(ok, metrics_is_ready(b.m) && metrics_is_ready(a.m), WAIT_MS);
    if (!ok)
        fail_msg("rebalance did not finish (ready a=%d b=%d)",
                 metrics_is_ready(a.m), metrics_is_ready(b.m));
    script_release(&s);
    for (int32_t p = 0; p < PARTITIONS; p++)
        produce_events(&e, "q2", p, 0, per);
    flush_producer(&e);
    WAIT_UNTIL(ok, script_ndone(&s) >= (size_t)(PARTITIONS * per + 1), 20000);
    if (!ok) {
        int na, nb;
        pthread_mutex_lock(&s.mu);
        na = s.done_per_loop[0];
        nb = s.done_per_loop[1];
        pthread_mutex_unlock(&s.mu);
        fail_msg("only %d of %d handled (A %d, B %d, A paused gauge %g, "
                 "B paused gauge %g): a loop stayed paused after a "
                 "rebalance emptied its batch",
                 na + nb, PARTITIONS * per + 1, na, nb,
                 metrics_gauge_get(a.m, "crmsync_partitions_paused", NULL),
                 metrics_gauge_get(b.m, "crmsync_partitions_paused", NULL));
    }
    wait_all_committed(&e);
    runner_stop(&b);
    runner_stop(&a);

    assert_no_bad_items(&s);
    assert_int_equal(script_count(&s, "q-0-0"), 1);
    assert_all_committed(&e);
    env_down(&e);
}

/* ------------------------------------------------------------------ */
/* 9. lag metrics: committed offsets, lag seconds that grow while a    */
/*    message is stuck and return to 0, series gone after revoke       */
/* ------------------------------------------------------------------ */

static double lag_gauge(struct metrics *m, const char *fam, int32_t p)
{
    char labels[96];
    snprintf(labels, sizeof(labels),
             "partition=\"%" PRId32 "\",topic=\"" TOPIC "\"", p);
    return metrics_gauge_get(m, fam, labels);
}

static double committed_sum(struct metrics *m)
{
    double sum = 0;
    for (int32_t p = 0; p < PARTITIONS; p++)
        sum += lag_gauge(m, "crmsync_consumer_committed_offset", p);
    return sum;
}

/* Every partition has a lag-seconds series and all of them are 0. */
static bool lag_seconds_all_zero(struct metrics *m)
{
    char *text = metrics_render(m, NULL);
    int series = 0;
    bool zero = text != NULL;

    for (const char *q = text ? strstr(text, "crmsync_consumer_lag_seconds{")
                              : NULL;
         q; q = strstr(q + 1, "crmsync_consumer_lag_seconds{")) {
        const char *sp = strchr(q, ' ');
        series++;
        if (!sp || strtod(sp + 1, NULL) != 0)
            zero = false;
    }
    free(text);
    return zero && series == PARTITIONS &&
           metrics_gauge_get(m, "crmsync_consumer_lag_seconds_max", NULL) == 0;
}

static void test_lag_metrics(void **state)
{
    struct env e;
    struct script s;
    struct runner r;
    bool ok;
    const int per = 5;
    char *text;
    double first, second;
    int64_t t0;

    (void)state;
    /* 60 s would put the first statistics beyond 10 s: the loop caps it. */
    env_up(&e, "g-lag", 50, "  statistics.interval.ms: 60000\n");
    script_init(&s);
    snprintf(s.retry_id, sizeof(s.retry_id), "s-0-0");
    s.retry_times = -1;
    for (int32_t p = 0; p < PARTITIONS; p++)
        produce_events(&e, "l", p, 0, per);
    flush_producer(&e);

    t0 = now_ms();
    runner_start(&r, &e, &s, 0);
    /* Before statistics and before any rebalance: the counter is there. */
    text = metrics_render(r.m, NULL);
    assert_non_null(text);
    assert_non_null(strstr(text, "crmsync_kafka_rebalances_total{"));
    assert_non_null(strstr(text, "crmsync_consumer_lag_seconds_max{"));
    free(text);

    /* Caught up: committed offsets = what was produced, lag seconds 0. */
    WAIT_UNTIL(
        ok, committed_sum(r.m) == PARTITIONS * per && lag_seconds_all_zero(r.m),
        10000);
    if (!ok)
        fail_msg(
            "after %" PRId64 " ms: committed sum %g (want %d), lag "
            "seconds max %g, lag p0 %g",
            now_ms() - t0, committed_sum(r.m), PARTITIONS * per,
            metrics_gauge_get(r.m, "crmsync_consumer_lag_seconds_max", NULL),
            lag_gauge(r.m, "crmsync_consumer_lag", 0));
    assert_true(now_ms() - t0 < 10000);
    for (int32_t p = 0; p < PARTITIONS; p++) {
        assert_true(lag_gauge(r.m, "crmsync_consumer_committed_offset", p) ==
                    per);
        assert_true(lag_gauge(r.m, "crmsync_consumer_lag", p) == 0);
    }

    /* A message of partition 0 is stuck (handler answers RETRY): its age
     * keeps growing although nothing flows, its commit does not move. */
    produce_events(&e, "s", 0, 0, 1);
    flush_producer(&e);
    WAIT_UNTIL(ok, script_attempts(&s) >= 1, WAIT_MS);
    assert_true(ok);
    WAIT_UNTIL(ok, lag_gauge(r.m, "crmsync_consumer_lag_seconds", 0) >= 1,
               5000);
    assert_true(ok);
    first = lag_gauge(r.m, "crmsync_consumer_lag_seconds", 0);
    sleep_ms(2500);
    second = lag_gauge(r.m, "crmsync_consumer_lag_seconds", 0);
    if (!(second >= first + 1.5))
        fail_msg("lag seconds of the stuck partition: %g then %g", first,
                 second);
    assert_true(metrics_gauge_get(r.m, "crmsync_consumer_lag_seconds_max",
                                  NULL) >= second);
    assert_true(lag_gauge(r.m, "crmsync_consumer_lag_seconds", 1) == 0);
    assert_true(lag_gauge(r.m, "crmsync_consumer_committed_offset", 0) == per);

    /* Released: processed, committed, back to 0. */
    script_release(&s);
    WAIT_UNTIL(ok,
               lag_gauge(r.m, "crmsync_consumer_committed_offset", 0) ==
                       per + 1 &&
                   lag_seconds_all_zero(r.m),
               10000);
    if (!ok)
        fail_msg("after the release: committed p0 %g, lag seconds p0 %g",
                 lag_gauge(r.m, "crmsync_consumer_committed_offset", 0),
                 lag_gauge(r.m, "crmsync_consumer_lag_seconds", 0));

    /* Stopping revokes everything: the per-partition series go. */
    r.run = 0;
    pthread_join(r.th, NULL);
    alarm(0);
    text = metrics_render(r.m, NULL);
    assert_non_null(text);
    assert_null(strstr(text, "crmsync_consumer_lag_seconds{"));
    assert_null(strstr(text, "crmsync_consumer_committed_offset{"));
    free(text);
    assert_int_equal(r.rc, CS_ERR_OK);
    kafka_loop_free(r.kl);
    dlq_free(r.dlq);
    avro_codec_free(r.codec);
    metrics_free(r.m);

    assert_no_bad_items(&s);
    assert_int_equal(script_count(&s, "s-0-0"), 1);
    assert_all_committed(&e);
    env_down(&e);
}

/* Per-test timing, printed so slow mock-cluster paths stay visible. */
static int timing_start(void **state)
{
    int64_t *t0 = malloc(sizeof(*t0));
    if (!t0)
        return -1;
    *t0 = now_ms();
    *state = t0;
    return 0;
}

static int timing_end(void **state)
{
    int64_t *t0 = *state;
    fprintf(stderr, "    took %" PRId64 " ms\n", now_ms() - *t0);
    free(t0);
    return 0;
}

#define LOOP_TEST(f)                                                           \
    cmocka_unit_test_setup_teardown(f, timing_start, timing_end)

int main(void)
{
    const struct CMUnitTest tests[] = {
        LOOP_TEST(test_all_done_committed),
        LOOP_TEST(test_poison_to_dlq),
        LOOP_TEST(test_retry_then_done),
        LOOP_TEST(test_partition_prefix),
        LOOP_TEST(test_stop_while_stuck),
        LOOP_TEST(test_decoded_in_order),
        LOOP_TEST(test_cooperative_rebalance),
        LOOP_TEST(test_rebalance_while_paused),
        LOOP_TEST(test_lag_metrics),
    };
    const char *v = getenv("LOOPTEST_VERBOSE");
    const char *only = getenv("LOOPTEST_ONLY"); /* e.g. "*poison*" */

    log_init("looptest", v && v[0] == '1' ? LOG_LEVEL_INFO : LOG_LEVEL_ERROR);
    if (only && only[0])
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
