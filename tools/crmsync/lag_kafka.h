/*
 * lag_kafka - the Kafka side of `crmsync lag`: one client handle that
 * discovers consumer groups and the topics they committed to, and samples
 * committed offsets and watermarks, without joining any group.
 *
 * The client holds consumer handles that never subscribe: one without
 * group.id (metadata, ListGroups/DescribeGroups, ListOffsets) and one per
 * group with that group.id (OffsetFetch via rd_kafka_committed()). None
 * joins a group, so the groups' assignments are never disturbed.
 *
 * Ownership: struct lag_client owns its rd_kafka_t handles and its
 * metadata cache; the strings of the struct lag_client_conf it was created
 * with are borrowed and must outlive it; free it with lag_client_free(). String
 * vectors returned to the caller are freed with lag_strv_free(). Thread-safety:
 * none; one thread uses a client.
 */
#ifndef CRMSYNC_LAG_KAFKA_H
#define CRMSYNC_LAG_KAFKA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct lag_client;

/* What the command line says about the connection; all borrowed (the
 * client keeps pointing at the strings until lag_client_free()). */
struct lag_client_conf {
    const char *bootstrap;    /* bootstrap.servers, or NULL (then -X/-F) */
    const char *const *props; /* "name=value" librdkafka properties */
    size_t prop_cnt;          /* applied in order, after bootstrap */
    int timeout_ms;           /* per request */
};

/* One partition of one group, as observed by lag_client_sample(). */
struct lag_obs {
    const char *topic;  /* borrowed from the caller */
    int32_t partition;  /* partition id */
    int64_t committed;  /* committed offset; -1 = none */
    int64_t low;        /* low watermark */
    int64_t high;       /* high watermark (log end offset) */
    char client_id[96]; /* member owning it, "" = unknown/unassigned */
};

/**
 * @brief Creates the client. Errors never contain property values.
 * @returns the client (caller frees with lag_client_free()), or NULL with
 *          the reason in errstr; *bad_conf tells a configuration error
 *          (usage) from others.
 */
struct lag_client *lag_client_new(const struct lag_client_conf *conf,
                                  bool *bad_conf, char *errstr,
                                  size_t errstr_size);

/** @brief Frees @p c; NULL is fine. */
void lag_client_free(struct lag_client *c);

/**
 * @brief Appends a copy of @p s to the vector (*v, *n) unless it is already
 *        there. @returns false on out of memory (vector unchanged).
 */
bool lag_strv_add(char ***v, size_t *n, const char *s);

/** @brief Frees a vector of @p n malloc'd strings; NULL is fine. */
void lag_strv_free(char **v, size_t n);

/**
 * @brief Lists the consumer groups (protocol "consumer") whose id starts
 *        with @p prefix ("" = all), sorted. *unsupported is set when the
 * cluster cannot list groups (e.g. librdkafka's mock cluster); then *groups is
 * empty and CS_ERR_OK is returned.
 * @param groups receives a vector the caller frees with lag_strv_free().
 */
enum cs_err lag_client_list_groups(struct lag_client *c, const char *prefix,
                                   char ***groups, size_t *cnt,
                                   bool *unsupported, char *errstr,
                                   size_t errstr_size);

/**
 * @brief The topics on which @p group has at least one committed offset,
 *        sorted: one OffsetFetch for every partition of every
 *        non-internal topic (pass -t to avoid it on huge clusters).
 * @param topics receives a vector the caller frees with lag_strv_free().
 */
enum cs_err lag_client_group_topics(struct lag_client *c, const char *group,
                                    char ***topics, size_t *cnt, char *errstr,
                                    size_t errstr_size);

/**
 * @brief Partition count of @p topic from the cached cluster metadata
 *        (fetched on first use): 0 when the topic does not exist, -1 on a
 *        metadata error with the reason in errstr.
 */
int lag_client_partition_cnt(struct lag_client *c, const char *topic,
                             char *errstr, size_t errstr_size);

/**
 * @brief Fills committed, low and high of @p n observations (topic and
 *        partition set by the caller) for @p group: one OffsetFetch, then
 *        the watermarks of each partition.
 */
enum cs_err lag_client_sample(struct lag_client *c, const char *group,
                              struct lag_obs *obs, size_t n, char *errstr,
                              size_t errstr_size);

/**
 * @brief Best effort: fills client_id of the observations from the group's
 *        member assignments (classic DescribeGroups). Leaves them "" when
 *        the cluster does not support it (then never asks again) or the
 *        group is empty.
 */
void lag_client_owners(struct lag_client *c, const char *group,
                       struct lag_obs *obs, size_t n);

#endif
