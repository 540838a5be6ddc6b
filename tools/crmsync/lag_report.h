/*
 * lag_report - the state `crmsync lag` keeps per group and partition (the
 * last observation plus a sliding window of samples) and its two renderings:
 * a `kafka-consumer-groups --describe`-like table and a JSON document.
 *
 * Ownership: struct lag_group owns its name, topics, partitions and their
 * windows; lag_group_free_all() releases an array of groups. The render
 * functions only read. Thread-safety: none.
 */
#ifndef CRMSYNC_LAG_REPORT_H
#define CRMSYNC_LAG_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "common/lag_eval.h"
#include "lag_kafka.h"

/* One partition of one group. */
struct lag_part {
    struct lag_window *win; /* owned; samples of this partition */
    enum lag_verdict verdict;
    enum lag_rule rule;
};

/* One consumer group. */
struct lag_group {
    char *name;               /* owned */
    char **topics;            /* owned; free with lag_strv_free() */
    size_t topic_cnt;         /* entries in topics */
    struct lag_obs *obs;      /* owned; part_cnt observations (topic borrowed
                                 from topics) */
    struct lag_part *parts;   /* owned; part_cnt entries, same order as obs */
    size_t part_cnt;          /* partitions over all topics */
    enum lag_verdict verdict; /* worst partition */
    int64_t total_lag;        /* sum over partitions, last sample */
};

/** @brief Lag of an observation: high - committed (or - low without a
 *         commit: what a consumer starting at "earliest" has to read),
 *         never negative. */
int64_t lag_obs_lag(const struct lag_obs *o);

/** @brief Evaluates every partition window at @p now_ms and sets the
 *         partition verdicts, the group verdict and total_lag. */
void lag_group_eval(struct lag_group *g, int64_t now_ms);

/** @brief Frees @p cnt groups and the array; NULL is fine. */
void lag_group_free_all(struct lag_group *groups, size_t cnt);

/** @brief Prints the table, one block per group with a total line. */
void lag_report_text(FILE *out, const struct lag_group *groups, size_t cnt);

/**
 * @brief The report as JSON: {"verdict","groups":[{"group","verdict",
 *        "total_lag","partitions":[{"topic","partition","current_offset",
 *        "log_end_offset","lag","verdict","rule","samples","client_id"}]}]}.
 * @returns a new object (caller decrefs), NULL on out of memory.
 */
json_t *lag_report_json(const struct lag_group *groups, size_t cnt);

#endif
