/*
 * dlq - dead-letter producer: failures that no retry can fix.
 *
 * A message that cannot be processed (bad framing, unknown schema, invalid
 * event, CRM rejection) is produced to "<original topic><suffix>" (default
 * suffix ".dlq") with its original key, value and headers, plus these
 * headers describing the failure:
 *   crmsync.error.topic      original topic
 *   crmsync.error.partition  original partition (decimal)
 *   crmsync.error.offset     original offset (decimal)
 *   crmsync.error.class      error class, e.g. "DECODE" (enum cs_err name)
 *   crmsync.error.message    human readable reason
 *   crmsync.error.worker     worker kind, e.g. "response"
 *   crmsync.error.timestamp  failure time, RFC 3339 UTC with milliseconds
 * Retryable failures are never dead-lettered: the consumer loop pauses and
 * retries them instead.
 *
 * Ownership: the dlq owns its own librdkafka producer. dlq_send() copies what
 * it needs from the message; the caller keeps ownership of @p rkm.
 * Thread-safety: one thread (the consumer loop).
 */
#ifndef CRMSYNC_DLQ_H
#define CRMSYNC_DLQ_H

#include <stddef.h>

#include <librdkafka/rdkafka.h>

#include "common/err.h"

struct config;
struct metrics;
struct dlq;

/**
 * @brief Creates the dead-letter producer (acks=all, idempotent) from the
 *        worker's kafka passthrough properties.
 * @param cfg borrowed during the call.
 * @param m borrowed, must outlive the dlq; may be NULL.
 * @returns a new dlq (free with dlq_free) or NULL with errstr set.
 */
struct dlq *dlq_new(const struct config *cfg, struct metrics *m, char *errstr,
                    size_t errstr_size);

/** @brief Flushes (bounded by 5 s) and destroys the producer. NULL-safe. */
void dlq_free(struct dlq *dlq);

/**
 * @brief Queues @p rkm for the dead-letter topic of its topic.
 * @param reason borrowed; copied into the error message header.
 * @returns CS_ERR_OK when queued, CS_ERR_DLQ_PRODUCE when the local queue
 *          refused it. Delivery is confirmed by dlq_flush().
 */
enum cs_err dlq_send(struct dlq *dlq, const rd_kafka_message_t *rkm,
                     enum cs_err err, const char *reason);

/**
 * @brief Waits until every queued message is acknowledged by the brokers.
 * @returns CS_ERR_OK when all messages since the last flush were delivered;
 *          CS_ERR_DLQ_PRODUCE (retryable) when any failed or timed out, in
 *          which case the caller must not store the originals' offsets.
 */
enum cs_err dlq_flush(struct dlq *dlq, int timeout_ms, char *errstr,
                      size_t errstr_size);

/** @returns the dead-letter topic name for @p topic into buf. */
void dlq_topic_name(const struct dlq *dlq, const char *topic, char *buf,
                    size_t size);

#endif
