/*
 * kafka_loop - the at-least-once consumer loop every worker runs.
 *
 * The loop owns a librdkafka high-level consumer (one consumer group per
 * worker kind, cooperative-sticky assignment) and drives a worker's handler
 * with batches of decoded messages. It guarantees:
 *
 *  - An offset is stored (enable.auto.offset.store=false) only once the
 *    effect of that message and of every earlier message of its partition is
 *    durable: written to the CRM, skipped on purpose, recognised as a
 *    duplicate, or delivered to the dead-letter topic.
 *  - Batches close after consumer.batch_max_messages messages or
 *    consumer.batch_max_ms since the first message, whichever comes first.
 *  - Retryable failures (Redis down, CRM throttling or outage, schema
 *    registry down, DLQ unreachable) pause every assigned partition, keep
 *    polling (so max.poll.interval.ms is never exceeded) and retry the
 *    unfinished items with exponential backoff + jitter (or the CRM's
 *    Retry-After), then resume. Nothing is dropped.
 *  - Non-retryable failures go to "<topic>.dlq" with the reason (dlq.h).
 *  - On revoke, unfinished items of the revoked partitions are abandoned
 *    (their offsets are never stored) and stored offsets are committed.
 *  - When *run becomes 0 (SIGTERM), the current batch gets one more attempt,
 *    finished offsets are stored and committed, the consumer closes.
 *
 * DESIGN: single-threaded. Rebalance and statistics callbacks run inside
 * rd_kafka_consumer_poll() on the loop's thread, so the batch needs no lock.
 * Items keep per-partition offset order; after each attempt the loop stores,
 * per partition, the offset after the longest finished prefix and drops that
 * prefix from the batch. Decoding happens here (avro_codec) so the handler
 * only sees valid reader-schema records.
 *
 * Lag metrics (per-partition lag in messages and seconds, committed
 * offsets; kafka_lag.h) are refreshed every second, after each statistics
 * callback and after each rebalance, from the messages the loop holds.
 *
 * Ownership: the loop borrows cfg, codec, dlq and metrics (they must outlive
 * it) and owns the consumer handle, its lag tracker and every message it
 * polled.
 */
#ifndef CRMSYNC_KAFKA_LOOP_H
#define CRMSYNC_KAFKA_LOOP_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <avro.h>
#include <librdkafka/rdkafka.h>

#include "common/err.h"

struct config;
struct avro_codec;
struct dlq;
struct metrics;

/* What became of one message. The handler sets DONE/SKIPPED/DUPLICATE/DEAD
 * or RETRY on every item it is given. */
enum kl_state {
    KL_PENDING = 0, /* not yet handled */
    KL_DONE,        /* effect written */
    KL_SKIPPED,     /* deliberately ignored (counted by skip_reason) */
    KL_DUPLICATE,   /* effect already written earlier */
    KL_DEAD,        /* cannot succeed: goes to the dead-letter topic */
    KL_RETRY,       /* transient failure: retried after a pause */
    KL_FINAL,       /* internal: finished and (if dead) dead-lettered */
};

struct kl_item {
    rd_kafka_message_t *rkm; /* owned by the loop */
    avro_value_t value;      /* decoded record; valid when decoded */
    bool decoded;            /* value holds a reference */
    int32_t schema_id;       /* writer schema id of the payload */
    enum kl_state state;     /* set by the handler */
    enum cs_err err;         /* cause for KL_DEAD / KL_RETRY */
    char reason[256];        /* detail for logs and the DLQ header */
    const char *skip_reason; /* static label for KL_SKIPPED metrics */
    long retry_after_ms;     /* minimum wait hinted by a peer (429) */
    int attempts;            /* handler attempts so far */
};

/* A topic whose messages are read with another reader schema. */
struct kl_topic_schema {
    const char *topic;         /* borrowed */
    const char *reader_schema; /* full Avro name (borrowed) */
};

/* A worker plugs in here. Callbacks run on the loop's thread. */
struct kl_handler {
    const char *reader_schema; /* full Avro name the worker reads */
    /* Optional per-topic readers (e.g. list-sync's membership events);
       topics not listed use reader_schema. */
    const struct kl_topic_schema *topic_schemas;
    size_t ntopic_schemas;
    /* Handles items[0..n) (state KL_PENDING, decoded). Must leave each item
     * in DONE, SKIPPED, DUPLICATE, DEAD (with err + reason) or RETRY. */
    void (*process)(void *ctx, struct kl_item **items, size_t n);
    /* Optional. items[0..n) (decoded, unfinished) will not be finished by
     * this process: their partitions were revoked or the worker stops.
     * Release what the handler holds for them (idempotency leases) so
     * the partitions' next owner is not blocked until the leases end. */
    void (*abandon)(void *ctx, struct kl_item **items, size_t n);
    /* Optional. Called about every 100 ms while no batch is open: handlers
     * flush deferred work here (the response worker's done markers). */
    void (*idle)(void *ctx);
    /* Are the worker's dependencies reachable? Used for /readyz. */
    bool (*healthy)(void *ctx);
    void *ctx; /* borrowed handler state */
};

struct kafka_loop;

/**
 * @brief Creates the consumer and subscribes to cfg->topics.
 * @param handler copied; handler->ctx stays borrowed.
 * @returns a new loop (free with kafka_loop_free) or NULL with errstr set.
 */
struct kafka_loop *kafka_loop_new(const struct config *cfg,
                                  const struct kl_handler *handler,
                                  struct avro_codec *codec, struct dlq *dlq,
                                  struct metrics *m, char *errstr,
                                  size_t errstr_size);

/**
 * @brief Runs until *run becomes 0 or a fatal Kafka error occurs, then
 *        stores and commits finished offsets and closes the consumer.
 * @returns CS_ERR_OK on a clean stop, CS_ERR_KAFKA_FATAL otherwise.
 */
enum cs_err kafka_loop_run(struct kafka_loop *kl, volatile sig_atomic_t *run);

/** @brief Destroys the consumer (closing it first if still open). */
void kafka_loop_free(struct kafka_loop *kl);

/** @brief Marks @p it as failed with err and a printf-style reason. */
void kl_item_fail(struct kl_item *it, enum kl_state state, enum cs_err err,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
