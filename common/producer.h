/*
 * producer - a plain Kafka producer for results and feedback events.
 *
 * acks=all, idempotent, built from the worker's kafka passthrough settings.
 * producer_send() queues (copying key and value); producer_flush() waits
 * for every queued message and reports whether all were delivered.
 *
 * Ownership: the producer owns its librdkafka handle.
 * Thread-safety: librdkafka producers are thread-safe; the delivery tally
 * is only read by the thread calling producer_flush().
 */
#ifndef CRMSYNC_PRODUCER_H
#define CRMSYNC_PRODUCER_H

#include <stddef.h>

#include "common/err.h"

struct config;
struct producer;

struct producer *producer_new(const struct config *cfg, char *errstr,
                              size_t errstr_size);
void producer_free(struct producer *p); /* flushes up to 5 s; NULL ok */

/**
 * @brief Fetches @p topic's metadata now (connecting to its leaders), so
 *        the first producer_send() to it does not wait for a metadata
 *        round trip (~1 s on the first fire of a journey otherwise).
 * @param topic borrowed.
 * @returns CS_ERR_OK; CS_ERR_KAFKA when the cluster did not answer within
 *          @p timeout_ms or does not know the topic (detail in errstr).
 *          Callers treat a failure as a warning: sends still work once the
 *          topic exists.
 */
enum cs_err producer_warm(struct producer *p, const char *topic, int timeout_ms,
                          char *errstr, size_t errstr_size);

/** @returns CS_ERR_OK when queued, CS_ERR_KAFKA otherwise. */
enum cs_err producer_send(struct producer *p, const char *topic,
                          const void *key, size_t key_len, const void *value,
                          size_t len);

/** @returns CS_ERR_OK when every message since the last flush was
 *  delivered within @p timeout_ms, else CS_ERR_KAFKA (retryable). */
enum cs_err producer_flush(struct producer *p, int timeout_ms, char *errstr,
                           size_t errstr_size);

#endif
