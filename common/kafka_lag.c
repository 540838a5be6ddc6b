/*
 * kafka_lag - per-partition lag metrics of the consumer loop (see .h).
 */
#include "common/kafka_lag.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/metrics.h"

#define STATS_MAX_MS 3000 /* statistics.interval.ms ceiling (10 s) */

/* An assigned partition, as the lag metrics see it. */
struct lag_part {
    char topic[256];
    int32_t partition;
    char labels[600];        /* 'partition="<n>",topic="<escaped>"' */
    int64_t stats_lag;       /* unprocessed lag in the last statistics, -1 */
    int64_t behind_since_ms; /* metrics_lag_seconds() state */
    int64_t held_since_ms;   /* wall ms since the loop holds unfinished
                                messages of it, 0 = none (the age of
                                messages without a timestamp) */
    int64_t oldest_held_ms;  /* kafka_lag_update() scratch */
    bool held, untimed;      /* kafka_lag_update() scratch */
};

struct kafka_lag {
    struct metrics *m;       /* borrowed, may be NULL */
    struct lag_part *parts;  /* assigned partitions, owned */
    size_t nparts, capparts; /* in use, allocated */
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct kafka_lag *kafka_lag_new(struct metrics *m)
{
    struct kafka_lag *lg = calloc(1, sizeof(*lg));

    if (!lg)
        return NULL;
    lg->m = m;
    metrics_describe(m, "crmsync_consumer_committed_offset", "gauge",
                     "The group's committed offset per assigned partition "
                     "(librdkafka stats; absent until the first commit).");
    metrics_describe(m, "crmsync_consumer_lag_seconds", "gauge",
                     "Age in seconds of the oldest unprocessed message per "
                     "assigned partition (its Kafka timestamp); 0 when "
                     "caught up.");
    metrics_describe(m, "crmsync_consumer_lag_seconds_max", "gauge",
                     "Largest crmsync_consumer_lag_seconds of this consumer.");
    /* Exported from the start, before statistics or a first rebalance. */
    metrics_gauge_set(m, "crmsync_consumer_lag_seconds_max", NULL, 0);
    return lg;
}

void kafka_lag_free(struct kafka_lag *lg)
{
    if (!lg)
        return;
    free(lg->parts);
    free(lg);
}

/* ---------------------------------------------------------------------
 * Assigned partitions
 * ------------------------------------------------------------------- */

static struct lag_part *part_find(struct kafka_lag *lg, const char *topic,
                                  int32_t partition)
{
    for (size_t i = 0; i < lg->nparts; i++)
        if (lg->parts[i].partition == partition &&
            strcmp(lg->parts[i].topic, topic) == 0)
            return &lg->parts[i];
    return NULL;
}

void kafka_lag_assign(struct kafka_lag *lg,
                      const rd_kafka_topic_partition_list_t *parts)
{
    for (int i = 0; i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &parts->elems[i];
        char etopic[512];
        struct lag_part *p;

        if (part_find(lg, tp->topic, tp->partition) ||
            strlen(tp->topic) >= sizeof(p->topic) ||
            metrics_label_escape(tp->topic, etopic, sizeof(etopic)) >=
                sizeof(etopic))
            continue;
        if (lg->nparts == lg->capparts) {
            size_t cap = lg->capparts ? lg->capparts * 2 : 16;
            struct lag_part *grown = realloc(lg->parts, cap * sizeof(*grown));
            if (!grown) {
                LOG_WARN("out of memory: no lag metrics for %s[%" PRId32 "]",
                         tp->topic, tp->partition);
                continue;
            }
            lg->parts = grown;
            lg->capparts = cap;
        }
        p = &lg->parts[lg->nparts++];
        memset(p, 0, sizeof(*p));
        snprintf(p->topic, sizeof(p->topic), "%s", tp->topic);
        p->partition = tp->partition;
        snprintf(p->labels, sizeof(p->labels),
                 "partition=\"%" PRId32 "\",topic=\"%s\"", tp->partition,
                 etopic);
        p->stats_lag = -1;
    }
}

static void part_forget(struct kafka_lag *lg, size_t i)
{
    metrics_remove(lg->m, "crmsync_consumer_committed_offset",
                   lg->parts[i].labels);
    metrics_remove(lg->m, "crmsync_consumer_lag_seconds", lg->parts[i].labels);
    memmove(&lg->parts[i], &lg->parts[i + 1],
            (lg->nparts - i - 1) * sizeof(lg->parts[0]));
    lg->nparts--;
}

void kafka_lag_revoke(struct kafka_lag *lg,
                      const rd_kafka_topic_partition_list_t *parts)
{
    for (size_t i = lg->nparts; i > 0; i--) {
        const struct lag_part *p = &lg->parts[i - 1];
        if (!parts ||
            rd_kafka_topic_partition_list_find(parts, p->topic, p->partition))
            part_forget(lg, i - 1);
    }
}

/* ---------------------------------------------------------------------
 * Statistics and lag seconds
 * ------------------------------------------------------------------- */

void kafka_lag_stats(struct kafka_lag *lg, const char *json, size_t len)
{
    struct metrics_kafka_part *sp = NULL;
    size_t n = 0;

    if (!lg->m || lg->nparts == 0 ||
        metrics_kafka_stats_partitions(json, len, &sp, &n) != CS_ERR_OK)
        return;
    for (size_t i = 0; i < n; i++) {
        struct lag_part *p = part_find(lg, sp[i].topic, sp[i].partition);
        if (!p)
            continue;
        p->stats_lag = metrics_kafka_part_unprocessed(&sp[i]);
        if (sp[i].committed_offset >= 0)
            metrics_gauge_set(lg->m, "crmsync_consumer_committed_offset",
                              p->labels, (double)sp[i].committed_offset);
    }
    free(sp);
}

/* Marks, per partition, the Kafka timestamp of the oldest unfinished
 * message the loop holds (in flight, paused, waiting to retry). */
static void scan_held(struct kafka_lag *lg,
                      const rd_kafka_message_t *const *held, size_t nheld,
                      int64_t now)
{
    for (size_t i = 0; i < lg->nparts; i++) {
        lg->parts[i].oldest_held_ms = -1;
        lg->parts[i].held = lg->parts[i].untimed = false;
    }
    for (size_t i = 0; i < nheld; i++) {
        const rd_kafka_message_t *rkm = held[i];
        rd_kafka_timestamp_type_t tstype;
        struct lag_part *p;
        int64_t ts;

        p = part_find(lg, rd_kafka_topic_name(rkm->rkt), rkm->partition);
        if (!p)
            continue;
        p->held = true;
        ts = rd_kafka_message_timestamp(rkm, &tstype);
        if (ts < 0)
            p->untimed = true;
        else if (p->oldest_held_ms < 0 || ts < p->oldest_held_ms)
            p->oldest_held_ms = ts;
    }
    for (size_t i = 0; i < lg->nparts; i++) {
        struct lag_part *p = &lg->parts[i];
        if (!p->held) {
            p->held_since_ms = 0;
            continue;
        }
        if (p->held_since_ms == 0)
            p->held_since_ms = now;
        /* No timestamp: it is at least as old as the hold. */
        if (p->untimed &&
            (p->oldest_held_ms < 0 || p->held_since_ms < p->oldest_held_ms))
            p->oldest_held_ms = p->held_since_ms;
    }
}

/* Messages of each partition not yet handed to the loop, from the fetch
 * position and the cached high watermark (fresh with every fetch response,
 * no broker round trip), else from the last statistics; -1 unknown. */
static void fetch_lags(struct kafka_lag *lg, rd_kafka_t *rk, int64_t *lags)
{
    rd_kafka_topic_partition_list_t *pos =
        rd_kafka_topic_partition_list_new((int)lg->nparts);
    bool known;

    for (size_t i = 0; i < lg->nparts; i++)
        rd_kafka_topic_partition_list_add(pos, lg->parts[i].topic,
                                          lg->parts[i].partition);
    known = rd_kafka_position(rk, pos) == RD_KAFKA_RESP_ERR_NO_ERROR;
    for (size_t i = 0; i < lg->nparts; i++) {
        const struct lag_part *p = &lg->parts[i];
        int64_t off = known ? pos->elems[i].offset : -1;
        int64_t lo = -1, hi = -1;

        lags[i] = p->stats_lag;
        if (off >= 0 &&
            rd_kafka_get_watermark_offsets(rk, p->topic, p->partition, &lo,
                                           &hi) == RD_KAFKA_RESP_ERR_NO_ERROR &&
            hi >= 0)
            lags[i] = hi > off ? hi - off : 0;
    }
    rd_kafka_topic_partition_list_destroy(pos);
}

void kafka_lag_update(struct kafka_lag *lg, rd_kafka_t *rk,
                      const rd_kafka_message_t *const *held, size_t nheld)
{
    int64_t now = wall_ms();
    int64_t *lags = NULL;
    double max = 0;

    if (!lg->m)
        return;
    if (lg->nparts) {
        lags = malloc(lg->nparts * sizeof(*lags));
        if (!lags)
            return; /* try again at the next tick */
        scan_held(lg, held, nheld, now);
        fetch_lags(lg, rk, lags);
    }
    for (size_t i = 0; i < lg->nparts; i++) {
        struct lag_part *p = &lg->parts[i];
        double secs = metrics_lag_seconds(now, p->oldest_held_ms, lags[i],
                                          &p->behind_since_ms);
        metrics_gauge_set(lg->m, "crmsync_consumer_lag_seconds", p->labels,
                          secs);
        if (secs > max)
            max = secs;
    }
    metrics_gauge_set(lg->m, "crmsync_consumer_lag_seconds_max", NULL, max);
    free(lags);
}

/* ---------------------------------------------------------------------
 * Statistics interval
 * ------------------------------------------------------------------- */

enum cs_err kafka_lag_cap_stats_interval(rd_kafka_conf_t *conf, char *errstr,
                                         size_t errstr_size)
{
    char val[32];
    size_t size = sizeof(val);
    long ms;

    if (rd_kafka_conf_get(conf, "statistics.interval.ms", val, &size) !=
        RD_KAFKA_CONF_OK)
        return CS_ERR_OK;
    ms = strtol(val, NULL, 10);
    if (ms > 0 && ms <= STATS_MAX_MS)
        return CS_ERR_OK;
    LOG_WARN("kafka.statistics.interval.ms=%ld lowered to %d: lag metrics "
             "must be exported within 10 s",
             ms, STATS_MAX_MS);
    snprintf(val, sizeof(val), "%d", STATS_MAX_MS);
    if (rd_kafka_conf_set(conf, "statistics.interval.ms", val, errstr,
                          errstr_size) != RD_KAFKA_CONF_OK)
        return CS_ERR_CONFIG;
    return CS_ERR_OK;
}
