/*
 * dlq_replay - produces dead-lettered messages back to their original topic
 * for `crmsync dlq replay --execute`.
 *
 * Each replayed message carries the dead letter's key and value and its
 * headers minus every crmsync.error.* header and any older
 * crmsync.replay.of, plus crmsync.replay.of = "<dlq topic>/<partition>/
 * <offset>". The producer is idempotent with acks=all, so a retried send
 * never duplicates a message; duplicates across runs (replaying twice) are
 * the workers' business (they are idempotent by event id).
 *
 * Ownership: the replayer owns its rd_kafka_t; send() copies everything it
 * needs from the borrowed message. Thread-safety: one thread.
 */
#ifndef CRMSYNC_TOOLS_DLQ_REPLAY_H
#define CRMSYNC_TOOLS_DLQ_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "common/err.h"

#define DLQ_REPLAY_HEADER "crmsync.replay.of"

struct dlq_replayer;

/**
 * @brief Creates the producer; acks=all and enable.idempotence=true are
 *        forced over the user's settings.
 * @param conf takes ownership (also on failure).
 * @returns the replayer (free with dlq_replayer_free) or NULL with errstr.
 */
struct dlq_replayer *dlq_replayer_new(rd_kafka_conf_t *conf, char *errstr,
                                      size_t errstr_size);

/** @brief Purges whatever is still queued and destroys it. NULL-safe. */
void dlq_replayer_free(struct dlq_replayer *p);

/**
 * @brief Queues a copy of @p rkm for @p topic.
 * @param partition target partition, or RD_KAFKA_PARTITION_UA to let the
 *        partitioner choose by key.
 * @param replay_of value of the crmsync.replay.of header; borrowed (copied).
 * @returns CS_ERR_OK when queued, CS_ERR_KAFKA with errstr otherwise.
 */
enum cs_err dlq_replayer_send(struct dlq_replayer *p,
                              const rd_kafka_message_t *rkm, const char *topic,
                              int32_t partition, const char *replay_of,
                              char *errstr, size_t errstr_size);

/**
 * @brief Waits up to @p timeout_ms for every delivery report; whatever is
 *        still undelivered then is purged and counted as failed. Each
 *        failure is reported on stderr with its crmsync.replay.of value.
 * @param delivered, failed totals since the replayer was created.
 */
void dlq_replayer_flush(struct dlq_replayer *p, int timeout_ms, long *delivered,
                        long *failed);

#endif
