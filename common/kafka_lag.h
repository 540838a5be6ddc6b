/*
 * kafka_lag - per-partition lag metrics of the consumer loop.
 *
 * Tracks the partitions assigned to a kafka_loop consumer and exports, per
 * partition (labels partition="<n>",topic="<escaped>"):
 *
 *  - crmsync_consumer_committed_offset: the group's committed offset, from
 *    librdkafka statistics (absent until the first commit);
 *  - crmsync_consumer_lag_seconds: the age of the oldest unprocessed message
 *    (see metrics_lag_seconds()), from the messages the loop still holds,
 *    the fetch position and the cached high watermark, else the unprocessed
 *    lag of the last statistics;
 *
 * and crmsync_consumer_lag_seconds_max over all of them (0 from the start).
 * The series of a revoked partition are removed at once.
 *
 * The loop feeds it: partitions from its rebalance callback (assign/revoke),
 * statistics JSON from its statistics callback, and calls kafka_lag_update()
 * after each of those and every second (messages or not, so a stall keeps
 * growing). kafka_lag_cap_stats_interval() keeps statistics frequent enough
 * for the metrics to appear within 10 s of start.
 *
 * Ownership: the tracker borrows the metrics registry (it must outlive the
 * tracker) and copies topic names; every other argument is borrowed for the
 * duration of the call.
 *
 * Thread-safety: none; one thread at a time. The loop calls it only from its
 * own thread (the rebalance and statistics callbacks run inside
 * rd_kafka_consumer_poll() on that thread).
 */
#ifndef CRMSYNC_KAFKA_LAG_H
#define CRMSYNC_KAFKA_LAG_H

#include <stddef.h>

#include <librdkafka/rdkafka.h>

#include "common/err.h"

struct kafka_lag;
struct metrics;

/**
 * @brief Creates a tracker with no partitions; describes the lag families
 *        and exports crmsync_consumer_lag_seconds_max = 0.
 * @param m borrowed, may be NULL (then partitions are tracked, nothing is
 *        exported).
 * @returns the tracker (caller frees with kafka_lag_free), NULL on OOM.
 */
struct kafka_lag *kafka_lag_new(struct metrics *m);

/** @brief Frees the tracker; removes no series. NULL ok. */
void kafka_lag_free(struct kafka_lag *lg);

/**
 * @brief Starts tracking @p parts (borrowed). Partitions already tracked,
 *        and topics too long for a label, are ignored.
 */
void kafka_lag_assign(struct kafka_lag *lg,
                      const rd_kafka_topic_partition_list_t *parts);

/**
 * @brief Stops tracking @p parts (borrowed; NULL = every partition) and
 *        removes their committed-offset and lag-seconds series.
 */
void kafka_lag_revoke(struct kafka_lag *lg,
                      const rd_kafka_topic_partition_list_t *parts);

/**
 * @brief Takes committed offsets (exported at once) and unprocessed lags
 *        (kept for kafka_lag_update) from a librdkafka statistics JSON
 *        (borrowed, @p len bytes).
 */
void kafka_lag_stats(struct kafka_lag *lg, const char *json, size_t len);

/**
 * @brief Sets crmsync_consumer_lag_seconds of every tracked partition and
 *        crmsync_consumer_lag_seconds_max.
 * @param rk the consumer (borrowed): fetch positions and cached watermarks,
 *        no broker round trip.
 * @param held the loop's unfinished messages (in flight, paused, waiting to
 *        retry), @p nheld of them, any order; borrowed for the call. NULL ok
 *        when @p nheld is 0.
 */
void kafka_lag_update(struct kafka_lag *lg, rd_kafka_t *rk,
                      const rd_kafka_message_t *const *held, size_t nheld);

/**
 * @brief Lowers statistics.interval.ms in @p conf (borrowed) when it is
 *        above the ceiling or 0 (off), with a warning: the lag metrics come
 *        from statistics and must be exported within 10 s of start.
 * @returns CS_ERR_OK or CS_ERR_CONFIG with errstr (librdkafka refused).
 */
enum cs_err kafka_lag_cap_stats_interval(rd_kafka_conf_t *conf, char *errstr,
                                         size_t errstr_size);

#endif
