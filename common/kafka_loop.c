/* kafka_loop - see kafka_loop.h. */
#include "common/kafka_loop.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/avro_codec.h"
#include "common/config.h"
#include "common/dlq.h"
#include "common/kafka_lag.h"
#include "common/log.h"
#include "common/metrics.h"

#define KL_POLL_MS         100   /* longest poll: how often *run is checked */
#define KL_HEALTH_EVERY_MS 10000 /* dependency probe interval for /readyz */
#define KL_DLQ_FLUSH_MS    10000 /* wait for dead letters before storing */
#define KL_LAG_EVERY_MS    1000  /* lag-seconds refresh, messages or not */

struct kafka_loop {
    const struct config *cfg; /* borrowed */
    struct kl_handler h;      /* copy; h.ctx borrowed */
    struct avro_codec *codec; /* borrowed */
    struct dlq *dlq;          /* borrowed */
    struct metrics *m;        /* borrowed, may be NULL */
    rd_kafka_t *rk;           /* consumer, owned */
    bool closed;              /* rd_kafka_consumer_close() done */

    struct kl_item *items; /* the open batch, poll order, owned */
    size_t n;              /* items in use */
    size_t cap;            /* items allocated */
    int64_t batch_start;   /* monotonic ms when the batch got its 1st item */

    int64_t retry_at;   /* monotonic ms of the next attempt; 0 = none */
    long backoff_ms;    /* current backoff step */
    bool paused;        /* assigned partitions are paused */
    int assigned;       /* partitions currently assigned */
    bool deps_ok;       /* last dependency probe */
    int64_t next_probe; /* monotonic ms of the next health probe */
    unsigned int rng;   /* jitter state */

    struct kafka_lag *lag;   /* lag metrics of the assignment, owned */
    int64_t next_lag_update; /* monotonic ms of the next lag_refresh() */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void kl_item_fail(struct kl_item *it, enum kl_state state, enum cs_err err,
                  const char *fmt, ...)
{
    va_list ap;
    it->state = state;
    it->err = err;
    va_start(ap, fmt);
    vsnprintf(it->reason, sizeof(it->reason), fmt, ap);
    va_end(ap);
}

static void item_release(struct kl_item *it)
{
    if (it->decoded)
        avro_value_decref(&it->value);
    rd_kafka_message_destroy(it->rkm);
    memset(it, 0, sizeof(*it));
}

/* ---------------------------------------------------------------------
 * Pause / resume and health
 * ------------------------------------------------------------------- */

static void set_paused(struct kafka_loop *kl, bool pause)
{
    rd_kafka_topic_partition_list_t *parts = NULL;

    if (kl->paused == pause)
        return;
    if (rd_kafka_assignment(kl->rk, &parts) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (pause)
            rd_kafka_pause_partitions(kl->rk, parts);
        else
            rd_kafka_resume_partitions(kl->rk, parts);
        metrics_gauge_set(kl->m, "crmsync_partitions_paused", NULL,
                          pause ? parts->cnt : 0);
        rd_kafka_topic_partition_list_destroy(parts);
    }
    kl->paused = pause;
    LOG_INFO("%s partitions", pause ? "paused" : "resumed");
}

static void update_health(struct kafka_loop *kl, bool force)
{
    int64_t now = now_ms();
    bool ok;

    if (!force && now < kl->next_probe)
        return;
    kl->next_probe = now + KL_HEALTH_EVERY_MS;
    ok = kl->h.healthy ? kl->h.healthy(kl->h.ctx) : true;
    if (ok != kl->deps_ok)
        LOG_INFO("dependencies %s", ok ? "reachable" : "unreachable");
    kl->deps_ok = ok;
    metrics_set_health(kl->m, kl->assigned > 0, ok,
                       ok ? (kl->assigned > 0 ? "ok" : "no partitions assigned")
                          : "dependency unreachable");
    metrics_gauge_set(kl->m, "crmsync_ready", NULL,
                      kl->assigned > 0 && ok ? 1 : 0);
}

/* Refreshes the lag metrics (kafka_lag.h) from the batch's unfinished
 * items. Runs every KL_LAG_EVERY_MS (messages or not, so a stall keeps
 * growing), after each statistics callback and after each rebalance. */
static void lag_refresh(struct kafka_loop *kl)
{
    const rd_kafka_message_t **held = NULL;
    size_t nheld = 0;

    kl->next_lag_update = now_ms() + KL_LAG_EVERY_MS;
    if (kl->n) {
        held = malloc(kl->n * sizeof(*held));
        if (!held)
            return; /* try again at the next tick */
    }
    for (size_t i = 0; i < kl->n; i++)
        if (kl->items[i].state != KL_FINAL)
            held[nheld++] = kl->items[i].rkm;
    kafka_lag_update(kl->lag, kl->rk, held, nheld);
    free(held);
}

/* ---------------------------------------------------------------------
 * Rebalance: cooperative incremental assign / unassign
 * ------------------------------------------------------------------- */

static bool in_list(const rd_kafka_topic_partition_list_t *parts,
                    const rd_kafka_message_t *rkm)
{
    const char *topic = rd_kafka_topic_name(rkm->rkt);
    for (int i = 0; i < parts->cnt; i++)
        if (parts->elems[i].partition == rkm->partition &&
            strcmp(parts->elems[i].topic, topic) == 0)
            return true;
    return false;
}

/* Drops every item of the revoked partitions: their offsets are never
 * stored, so the next owner re-reads them. */
static void abandon_items(struct kafka_loop *kl,
                          const rd_kafka_topic_partition_list_t *parts)
{
    size_t kept = 0, dropped = 0, nheld = 0;
    struct kl_item **held = NULL;

    /* Let the handler drop what it holds for unfinished, decoded items
     * (e.g. idempotency leases) so the next owner proceeds at once. */
    if (kl->h.abandon && kl->n)
        held = malloc(kl->n * sizeof(*held));
    for (size_t i = 0; held && i < kl->n; i++) {
        struct kl_item *it = &kl->items[i];
        if (it->decoded && it->state != KL_FINAL && in_list(parts, it->rkm))
            held[nheld++] = it;
    }
    if (nheld)
        kl->h.abandon(kl->h.ctx, held, nheld);
    free(held);

    for (size_t i = 0; i < kl->n; i++) {
        if (in_list(parts, kl->items[i].rkm)) {
            item_release(&kl->items[i]);
            dropped++;
        } else {
            kl->items[kept++] = kl->items[i];
        }
    }
    kl->n = kept;
    if (dropped)
        LOG_INFO("abandoned unfinished messages of revoked partitions "
                 "count=%zu",
                 dropped);
    if (kl->n == 0)
        kl->retry_at = 0;
}

static void log_partitions(const char *what,
                           const rd_kafka_topic_partition_list_t *parts)
{
    char buf[1024];
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < parts->cnt && len + 64 < sizeof(buf); i++)
        len += (size_t)snprintf(
            buf + len, sizeof(buf) - len, "%s%s[%" PRId32 "]", i ? "," : "",
            parts->elems[i].topic, parts->elems[i].partition);
    LOG_INFO("%s partitions=%s", what, buf);
}

/* Commits the stored offsets synchronously. A failure only means those
 * messages are delivered again (at-least-once), but it must be visible. */
static void commit_stored(rd_kafka_t *rk, const char *when)
{
    rd_kafka_resp_err_t kerr = rd_kafka_commit(rk, NULL, 0);
    if (kerr && kerr != RD_KAFKA_RESP_ERR__NO_OFFSET)
        LOG_WARN("offset commit %s failed err=%s (messages will be "
                 "redelivered)",
                 when, rd_kafka_err2str(kerr));
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    struct kafka_loop *kl = opaque;
    bool coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t ret = RD_KAFKA_RESP_ERR_NO_ERROR;

    switch (err) {
    case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
        log_partitions("assigned", parts);
        if (coop)
            error = rd_kafka_incremental_assign(rk, parts);
        else
            ret = rd_kafka_assign(rk, parts);
        kl->assigned = coop ? kl->assigned + parts->cnt : parts->cnt;
        if (!coop)
            kafka_lag_revoke(kl->lag, NULL); /* eager: the list is all */
        kafka_lag_assign(kl->lag, parts);
        /* A paused loop pauses what it gains too: the batch is stuck. */
        if (kl->paused)
            rd_kafka_pause_partitions(rk, parts);
        break;
    case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
        log_partitions("revoked", parts);
        abandon_items(kl, parts);
        kafka_lag_revoke(kl->lag, parts);
        /* librdkafka keeps a partition's pause flag across unassign and a
         * later assign: never give a partition back paused. */
        if (kl->paused)
            rd_kafka_resume_partitions(rk, parts);
        if (!rd_kafka_assignment_lost(rk))
            commit_stored(rk, "on revoke");
        if (coop)
            error = rd_kafka_incremental_unassign(rk, parts);
        else
            ret = rd_kafka_assign(rk, NULL);
        kl->assigned = coop ? kl->assigned - parts->cnt : 0;
        /* The retry that would resume is gone with the batch: resume now,
         * or what stays assigned (and all we gain) stays paused forever. */
        if (kl->n == 0 && kl->paused) {
            kl->backoff_ms = kl->cfg->retry_backoff_min_ms;
            set_paused(kl, false);
        }
        break;
    default:
        LOG_ERROR("rebalance failed err=%s", rd_kafka_err2str(err));
        rd_kafka_assign(rk, NULL);
        kl->assigned = 0;
        kafka_lag_revoke(kl->lag, NULL);
        break;
    }
    if (error) {
        LOG_ERROR("incremental rebalance failed err=%s",
                  rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (ret) {
        LOG_ERROR("rebalance assign failed err=%s", rd_kafka_err2str(ret));
    }
    if (kl->assigned < 0)
        kl->assigned = 0;
    update_health(kl, true);
    lag_refresh(kl);
}

static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    struct kafka_loop *kl = opaque;
    (void)rk;
    metrics_update_from_kafka_stats(kl->m, json, len);
    kafka_lag_stats(kl->lag, json, len);
    lag_refresh(kl);
    return 0; /* librdkafka frees json */
}

/* ---------------------------------------------------------------------
 * Setup
 * ------------------------------------------------------------------- */

/* Defaults first, user passthrough second, invariants last. */
static rd_kafka_conf_t *build_conf(struct kafka_loop *kl, char *errstr,
                                   size_t errstr_size)
{
    static const char *const defaults[][2] = {
        {"partition.assignment.strategy", "cooperative-sticky"},
        {"auto.offset.reset", "earliest"},
        {"enable.auto.commit", "true"},
        {"auto.commit.interval.ms", "1000"},
        /* Lag metrics come from here: within 10 s of start (capped by
         * kafka_lag_cap_stats_interval() below). */
        {"statistics.interval.ms", "2000"},
        /* librdkafka prefetches up to 64 MiB and 100k messages per
         * partition by default; a batch never needs that much and pods
         * have memory limits (bench: peak RSS 90 -> 53 MiB at 200k events,
         * same throughput; 10k messages starved the batches). */
        {"queued.max.messages.kbytes", "16384"},
        {"queued.min.messages", "30000"},
        {"enable.partition.eof", "false"},
    };
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const struct config *cfg = kl->cfg;

    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++)
        if (rd_kafka_conf_set(conf, defaults[i][0], defaults[i][1], errstr,
                              errstr_size) != RD_KAFKA_CONF_OK)
            goto out_destroy;
    if (config_apply_kafka(cfg, conf, errstr, errstr_size) != CS_ERR_OK)
        goto out_destroy;
    if (kafka_lag_cap_stats_interval(conf, errstr, errstr_size) != CS_ERR_OK)
        goto out_destroy;
    if (config_kafka_get(cfg, "enable.auto.offset.store") &&
        strcmp(config_kafka_get(cfg, "enable.auto.offset.store"), "false"))
        LOG_WARN("kafka.enable.auto.offset.store is forced to false: offsets "
                 "are stored only after effects are durable");
    if (rd_kafka_conf_set(conf, "group.id", cfg->group_id, errstr,
                          errstr_size) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "enable.auto.offset.store", "false", errstr,
                          errstr_size) != RD_KAFKA_CONF_OK)
        goto out_destroy;
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_stats_cb(conf, on_stats);
    rd_kafka_conf_set_opaque(conf, kl);
    return conf;

out_destroy:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

static rd_kafka_topic_partition_list_t *parse_topics(const char *csv)
{
    rd_kafka_topic_partition_list_t *list =
        rd_kafka_topic_partition_list_new(4);
    const char *p = csv;

    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char name[256];
        while (len && (*p == ' ')) {
            p++;
            len--;
        }
        while (len && p[len - 1] == ' ')
            len--;
        if (len && len < sizeof(name)) {
            memcpy(name, p, len);
            name[len] = '\0';
            rd_kafka_topic_partition_list_add(list, name,
                                              RD_KAFKA_PARTITION_UA);
        }
        if (!end)
            break;
        p = end + 1;
    }
    return list;
}

struct kafka_loop *kafka_loop_new(const struct config *cfg,
                                  const struct kl_handler *handler,
                                  struct avro_codec *codec, struct dlq *dlq,
                                  struct metrics *m, char *errstr,
                                  size_t errstr_size)
{
    struct kafka_loop *kl = calloc(1, sizeof(*kl));
    rd_kafka_conf_t *conf;
    rd_kafka_topic_partition_list_t *topics = NULL;
    rd_kafka_resp_err_t kerr;

    if (!kl) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    kl->cfg = cfg;
    kl->h = *handler;
    kl->codec = codec;
    kl->dlq = dlq;
    kl->m = m;
    kl->backoff_ms = cfg->retry_backoff_min_ms;
    kl->rng = (unsigned int)time(NULL) ^ (unsigned int)(uintptr_t)kl;
    kl->lag = kafka_lag_new(m);
    if (!kl->lag) {
        snprintf(errstr, errstr_size, "out of memory");
        goto out_free_kl;
    }
    /* Exported from the start, before a first rebalance. */
    metrics_counter_add(m, "crmsync_kafka_rebalances_total", NULL, 0);

    conf = build_conf(kl, errstr, errstr_size);
    if (!conf)
        goto out_free_kl;
    kl->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, errstr_size);
    if (!kl->rk) {
        rd_kafka_conf_destroy(conf);
        goto out_free_kl;
    }
    /* conf is now owned by kl->rk. */
    rd_kafka_poll_set_consumer(kl->rk);

    topics = parse_topics(cfg->topics);
    if (topics->cnt == 0) {
        snprintf(errstr, errstr_size, "consumer.topics is empty");
        goto out_destroy_topics;
    }
    kerr = rd_kafka_subscribe(kl->rk, topics);
    if (kerr) {
        snprintf(errstr, errstr_size, "subscribe to %s: %s", cfg->topics,
                 rd_kafka_err2str(kerr));
        goto out_destroy_topics;
    }
    rd_kafka_topic_partition_list_destroy(topics);
    LOG_INFO("subscribed topics=%s group=%s", cfg->topics, cfg->group_id);
    return kl;

out_destroy_topics:
    rd_kafka_topic_partition_list_destroy(topics);
    rd_kafka_destroy(kl->rk);
out_free_kl:
    kafka_lag_free(kl->lag);
    free(kl);
    return NULL;
}

void kafka_loop_free(struct kafka_loop *kl)
{
    if (!kl)
        return;
    for (size_t i = 0; i < kl->n; i++)
        item_release(&kl->items[i]);
    free(kl->items);
    /* The close below may run a revoke callback (abandon_items): it must
     * see no items, not freed ones. */
    kl->items = NULL;
    kl->n = kl->cap = 0;
    if (kl->rk) {
        if (!kl->closed)
            rd_kafka_consumer_close(kl->rk);
        rd_kafka_destroy(kl->rk);
    }
    kafka_lag_free(kl->lag); /* after close: its revoke still updates it */
    free(kl);
}

/* ---------------------------------------------------------------------
 * Batch processing
 * ------------------------------------------------------------------- */

/* Per-attempt tallies, flushed to metrics once per attempt. */
struct tally {
    unsigned done, skipped, duplicate, dead, retry;
};

static bool append_item(struct kafka_loop *kl, rd_kafka_message_t *rkm)
{
    if (kl->n == kl->cap) {
        size_t cap = kl->cap ? kl->cap * 2 : 256;
        struct kl_item *items = realloc(kl->items, cap * sizeof(*items));
        if (!items)
            return false;
        kl->items = items;
        kl->cap = cap;
    }
    memset(&kl->items[kl->n], 0, sizeof(kl->items[kl->n]));
    kl->items[kl->n].rkm = rkm;
    if (kl->n == 0)
        kl->batch_start = now_ms();
    kl->n++;
    return true;
}

/* Decodes items not decoded yet; undecodable ones become DEAD or RETRY. */
/* The reader schema for @p rkm's topic. */
static const char *reader_of(const struct kafka_loop *kl,
                             const rd_kafka_message_t *rkm)
{
    const char *topic = rd_kafka_topic_name(rkm->rkt);

    for (size_t i = 0; i < kl->h.ntopic_schemas; i++)
        if (strcmp(kl->h.topic_schemas[i].topic, topic) == 0)
            return kl->h.topic_schemas[i].reader_schema;
    return kl->h.reader_schema;
}

static void decode_items(struct kafka_loop *kl)
{
    for (size_t i = 0; i < kl->n; i++) {
        struct kl_item *it = &kl->items[i];
        enum cs_err err;
        if (it->state != KL_PENDING || it->decoded)
            continue;
        if (!it->rkm->payload) {
            kl_item_fail(it, KL_DEAD, CS_ERR_BAD_FRAME,
                         "empty message value (tombstone)");
            continue;
        }
        err = avro_codec_decode(kl->codec, reader_of(kl, it->rkm),
                                it->rkm->payload, it->rkm->len, &it->value,
                                &it->schema_id, it->reason, sizeof(it->reason));
        if (err == CS_ERR_OK) {
            it->decoded = true;
        } else {
            it->state = cs_err_retryable(err) ? KL_RETRY : KL_DEAD;
            it->err = err;
        }
    }
}

static void run_handler(struct kafka_loop *kl)
{
    struct kl_item **pending = malloc(kl->n * sizeof(*pending));
    size_t n = 0;

    if (!pending) {
        for (size_t i = 0; i < kl->n; i++)
            if (kl->items[i].state == KL_PENDING)
                kl_item_fail(&kl->items[i], KL_RETRY, CS_ERR_NOMEM,
                             "out of memory");
        return;
    }
    for (size_t i = 0; i < kl->n; i++)
        if (kl->items[i].state == KL_PENDING)
            pending[n++] = &kl->items[i];
    if (n)
        kl->h.process(kl->h.ctx, pending, n);
    for (size_t i = 0; i < n; i++) {
        pending[i]->attempts++;
        if (pending[i]->state == KL_PENDING) /* handler bug: never drop */
            kl_item_fail(pending[i], KL_RETRY, CS_ERR_INVALID_ARG,
                         "handler left the item unhandled");
    }
    free(pending);
}

static const char *event_id_of(struct kl_item *it)
{
    return it->decoded ? avro_field_str(&it->value, "event_id") : NULL;
}

/* Sends DEAD items to the DLQ and waits for delivery; finished items become
 * KL_FINAL. */
static void finish_items(struct kafka_loop *kl, struct tally *t)
{
    char errstr[256];
    size_t sent = 0;

    for (size_t i = 0; i < kl->n; i++) {
        struct kl_item *it = &kl->items[i];
        if (it->state != KL_DEAD)
            continue;
        if (dlq_send(kl->dlq, it->rkm, it->err, it->reason) != CS_ERR_OK) {
            kl_item_fail(it, KL_RETRY, CS_ERR_DLQ_PRODUCE,
                         "dead-letter produce failed");
            continue;
        }
        sent++;
    }
    if (sent && dlq_flush(kl->dlq, KL_DLQ_FLUSH_MS, errstr, sizeof(errstr)) !=
                    CS_ERR_OK) {
        LOG_ERROR("dead-letter flush failed, will retry: %s", errstr);
        for (size_t i = 0; i < kl->n; i++)
            if (kl->items[i].state == KL_DEAD)
                kl_item_fail(&kl->items[i], KL_RETRY, CS_ERR_DLQ_PRODUCE, "%s",
                             errstr);
    }

    for (size_t i = 0; i < kl->n; i++) {
        struct kl_item *it = &kl->items[i];
        char labels[96];
        switch (it->state) {
        case KL_DONE:
            t->done++;
            break;
        case KL_SKIPPED:
            t->skipped++;
            snprintf(labels, sizeof(labels), "reason=\"%s\"",
                     it->skip_reason ? it->skip_reason : "other");
            metrics_counter_add(kl->m, "crmsync_messages_skipped_total", labels,
                                1);
            break;
        case KL_DUPLICATE:
            t->duplicate++;
            break;
        case KL_DEAD:
            t->dead++;
            snprintf(labels, sizeof(labels), "reason=\"%s\"",
                     cs_err_name(it->err));
            metrics_counter_add(kl->m, "crmsync_messages_deadlettered_total",
                                labels, 1);
            LOG_AT(LOG_LEVEL_WARN, event_id_of(it),
                   "dead-lettered topic=%s partition=%" PRId32
                   " offset=%" PRId64 " class=%s reason=%s",
                   rd_kafka_topic_name(it->rkm->rkt), it->rkm->partition,
                   it->rkm->offset, cs_err_name(it->err), it->reason);
            break;
        case KL_RETRY:
            t->retry++;
            continue;
        default:
            continue;
        }
        it->state = KL_FINAL;
    }
}

/* Stores, per partition, the offset after the longest finished prefix and
 * removes that prefix from the batch. */
static void store_finished(struct kafka_loop *kl)
{
    rd_kafka_topic_partition_list_t *offs =
        rd_kafka_topic_partition_list_new(8);
    rd_kafka_topic_partition_list_t *blocked =
        rd_kafka_topic_partition_list_new(8);
    size_t kept = 0;

    for (size_t i = 0; i < kl->n; i++) {
        struct kl_item *it = &kl->items[i];
        const char *topic = rd_kafka_topic_name(it->rkm->rkt);
        bool is_blocked = rd_kafka_topic_partition_list_find(
                              blocked, topic, it->rkm->partition) != NULL;
        if (it->state == KL_FINAL && !is_blocked) {
            rd_kafka_topic_partition_t *p = rd_kafka_topic_partition_list_find(
                offs, topic, it->rkm->partition);
            if (!p)
                p = rd_kafka_topic_partition_list_add(offs, topic,
                                                      it->rkm->partition);
            p->offset = it->rkm->offset + 1;
            item_release(it);
            continue;
        }
        if (!is_blocked)
            rd_kafka_topic_partition_list_add(blocked, topic,
                                              it->rkm->partition);
        kl->items[kept++] = *it;
    }
    kl->n = kept;
    if (kl->n)
        kl->batch_start = now_ms();

    if (offs->cnt) {
        rd_kafka_resp_err_t kerr = rd_kafka_offsets_store(kl->rk, offs);
        if (kerr)
            LOG_WARN("offsets store err=%s (partition probably revoked)",
                     rd_kafka_err2str(kerr));
    }
    rd_kafka_topic_partition_list_destroy(blocked);
    rd_kafka_topic_partition_list_destroy(offs);
}

static void schedule_retry(struct kafka_loop *kl)
{
    long wait = kl->backoff_ms;
    long hint = 0;
    bool only_waiting = true; /* every retry waits for work in progress */

    for (size_t i = 0; i < kl->n; i++) {
        if (kl->items[i].state != KL_RETRY)
            continue;
        if (kl->items[i].retry_after_ms > hint)
            hint = kl->items[i].retry_after_ms;
        only_waiting &= kl->items[i].err == CS_ERR_IN_FLIGHT;
    }
    if (only_waiting && hint > 0) {
        /* Nothing failed (a list-sync job runs, another worker holds a
           lease): look again after the hint, without growing the backoff. */
        kl->retry_at = now_ms() + hint;
        set_paused(kl, true);
        return;
    }
    /* Equal jitter (half fixed, half random), never before a peer's hint. */
    wait = wait / 2 + (long)(rand_r(&kl->rng) % (unsigned)(wait / 2 + 1));
    if (hint > wait)
        wait = hint;
    kl->retry_at = now_ms() + wait;
    kl->backoff_ms *= 2;
    if (kl->backoff_ms > kl->cfg->retry_backoff_max_ms)
        kl->backoff_ms = kl->cfg->retry_backoff_max_ms;
    set_paused(kl, true);
}

static void log_retry(struct kafka_loop *kl, unsigned retry)
{
    for (size_t i = 0; i < kl->n; i++) {
        struct kl_item *it = &kl->items[i];
        if (it->state != KL_RETRY)
            continue;
        /* Waiting for work in progress (a list-sync job, another worker's
           lease) is expected, not a warning. */
        if (it->err == CS_ERR_IN_FLIGHT)
            LOG_DEBUG("waiting count=%u reason=%s wait_ms=%" PRId64, retry,
                      it->reason, kl->retry_at - now_ms());
        else
            LOG_WARN("retrying later count=%u class=%s reason=%s "
                     "wait_ms=%" PRId64,
                     retry, cs_err_name(it->err), it->reason,
                     kl->retry_at - now_ms());
        break;
    }
}

/* One attempt at the open batch: decode, handle, dead-letter, store. */
static void attempt_batch(struct kafka_loop *kl)
{
    struct tally t = {0};

    for (size_t i = 0; i < kl->n; i++)
        if (kl->items[i].state == KL_RETRY) {
            kl->items[i].state = KL_PENDING;
            kl->items[i].retry_after_ms = 0;
        }
    decode_items(kl);
    run_handler(kl);
    finish_items(kl, &t);
    store_finished(kl);

    metrics_counter_add(kl->m, "crmsync_batches_total", NULL, 1);
    if (t.done)
        metrics_counter_add(kl->m, "crmsync_messages_processed_total", NULL,
                            t.done);
    if (t.duplicate)
        metrics_counter_add(kl->m, "crmsync_messages_duplicate_total", NULL,
                            t.duplicate);
    if (t.retry)
        metrics_counter_add(kl->m, "crmsync_messages_retried_total", NULL,
                            t.retry);
    LOG_DEBUG("batch done=%u skipped=%u duplicate=%u dead=%u retry=%u", t.done,
              t.skipped, t.duplicate, t.dead, t.retry);

    if (t.retry) {
        schedule_retry(kl);
        log_retry(kl, t.retry);
        if (kl->deps_ok)
            update_health(kl, true);
        return;
    }
    kl->retry_at = 0;
    kl->backoff_ms = kl->cfg->retry_backoff_min_ms;
    if (kl->paused) {
        set_paused(kl, false);
        update_health(kl, true);
    }
}

/* ---------------------------------------------------------------------
 * The loop
 * ------------------------------------------------------------------- */

/* @returns false on a fatal consumer error. */
static bool handle_message(struct kafka_loop *kl, rd_kafka_message_t *rkm)
{
    char errstr[512];

    if (rkm->err) {
        bool fatal = rkm->err == RD_KAFKA_RESP_ERR__FATAL;
        if (fatal)
            rd_kafka_fatal_error(kl->rk, errstr, sizeof(errstr));
        else
            snprintf(errstr, sizeof(errstr), "%s",
                     rd_kafka_message_errstr(rkm));
        if (fatal)
            LOG_ERROR("fatal consumer error: %s", errstr);
        else
            LOG_WARN("consumer error (informational): %s", errstr);
        rd_kafka_message_destroy(rkm);
        return !fatal;
    }
    metrics_counter_add(kl->m, "crmsync_messages_consumed_total", NULL, 1);
    if (!append_item(kl, rkm)) {
        /* Cannot hold it: without storing its offset, pause and let the
         * consumer re-fetch it after a seek-free resume is impossible, so
         * stop the worker rather than lose it. */
        LOG_ERROR("out of memory holding message offset=%" PRId64, rkm->offset);
        rd_kafka_message_destroy(rkm);
        return false;
    }
    return true;
}

static int poll_timeout(const struct kafka_loop *kl)
{
    int64_t now = now_ms(), due;

    if (kl->retry_at)
        due = kl->retry_at;
    else if (kl->n)
        due = kl->batch_start + kl->cfg->batch_max_ms;
    else
        return KL_POLL_MS;
    if (due <= now)
        return 0;
    return due - now < KL_POLL_MS ? (int)(due - now) : KL_POLL_MS;
}

static bool batch_due(const struct kafka_loop *kl)
{
    int64_t now = now_ms();
    if (kl->n == 0)
        return false;
    if (kl->retry_at)
        return now >= kl->retry_at;
    return kl->n >= (size_t)kl->cfg->batch_max_messages ||
           now - kl->batch_start >= kl->cfg->batch_max_ms;
}

enum cs_err kafka_loop_run(struct kafka_loop *kl, volatile sig_atomic_t *run)
{
    bool ok = true;

    update_health(kl, true);
    while (*run && ok) {
        rd_kafka_message_t *rkm =
            rd_kafka_consumer_poll(kl->rk, poll_timeout(kl));
        if (rkm)
            ok = handle_message(kl, rkm);
        if (ok && batch_due(kl))
            attempt_batch(kl);
        else if (ok && kl->n == 0 && kl->h.idle)
            kl->h.idle(kl->h.ctx);
        update_health(kl, false);
        if (now_ms() >= kl->next_lag_update)
            lag_refresh(kl);
    }

    /* SIGTERM: finish the batch (one attempt unless we are backing off from
     * an outage), then close, which revokes (abandoning what is unfinished)
     * and commits the stored offsets. A hard deadline (SIGALRM terminates
     * the process) bounds shutdown even if a peer hangs: nothing is lost,
     * uncommitted work is simply redelivered. */
    alarm((unsigned)(kl->cfg->shutdown_timeout_ms + 999) / 1000);
    if (ok && kl->n && !kl->retry_at) {
        LOG_INFO("stopping: finishing open batch count=%zu", kl->n);
        attempt_batch(kl);
    }
    metrics_set_health(kl->m, false, kl->deps_ok, "shutting down");
    commit_stored(kl->rk, "on stop");
    rd_kafka_consumer_close(kl->rk);
    kl->closed = true;
    alarm(0); /* closed in time: the caller's own cleanup is not bounded */
    LOG_INFO("consumer closed");
    return ok ? CS_ERR_OK : CS_ERR_KAFKA_FATAL;
}
