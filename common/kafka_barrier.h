/*
 * kafka_barrier - "has consumer group G caught up with topic T as of time X?"
 *
 * list-sync must not read a marketing list before the bounce/opt-out worker
 * has applied every unsubscribe and bounce that happened before the sync was
 * requested. The barrier compares, per partition of the given topics, group
 * G's committed offset with the offset the partition had at time X
 * (rd_kafka_offsets_for_times: the first message at or after X; a partition
 * with none uses its end offset). It uses its own consumer handle with
 * group.id = G that never subscribes, so it neither joins G nor disturbs its
 * assignment (rd_kafka_committed only asks the coordinator).
 *
 * Ownership: the barrier owns its handle; strings are copied.
 * Thread-safety: one thread at a time (the list-sync job thread).
 */
#ifndef CRMSYNC_KAFKA_BARRIER_H
#define CRMSYNC_KAFKA_BARRIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct config;
struct kafka_barrier;

/**
 * @brief Creates the barrier for @p group from the worker's kafka settings.
 * @returns the barrier (free with kafka_barrier_free) or NULL + errstr.
 */
struct kafka_barrier *kafka_barrier_new(const struct config *cfg,
                                        const char *group, char *errstr,
                                        size_t errstr_size);
void kafka_barrier_free(struct kafka_barrier *b);

/**
 * @brief Checks @p topics (comma list) as of @p at_ms.
 * @param reached true when every partition's committed offset >= its
 *        target offset.
 * @param behind messages the group still has to commit (sum over
 *        partitions), for the status.
 * @returns CS_ERR_OK or CS_ERR_KAFKA (retryable: broker unreachable) with
 *          errstr.
 */
enum cs_err kafka_barrier_check(struct kafka_barrier *b, const char *topics,
                                int64_t at_ms, bool *reached, int64_t *behind,
                                char *errstr, size_t errstr_size);

#endif
