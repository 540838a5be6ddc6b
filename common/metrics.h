/*
 * metrics - Prometheus metrics registry and the /metrics, /healthz, /readyz
 * HTTP endpoints (libmicrohttpd).
 *
 * A worker creates one `struct metrics` at start-up, bumps counters, sets
 * gauges and observes histograms from any thread, and serves everything on
 * a configurable port. Series are identified by a family name plus a label
 * string in exposition syntax ('k="v",k2="v2"', values already escaped by the
 * caller or plain text without '"', '\\' or newlines; use
 * metrics_label_escape() for arbitrary values). Every series also carries the
 * constant label worker="<worker>" given to metrics_new().
 *
 * Output is Prometheus text exposition format 0.0.4, grouped by family (one
 * # HELP / # TYPE per family, all its series after it) and sorted by name and
 * labels so scrapes are stable.
 *
 * Ownership: all strings passed in are borrowed for the duration of the call
 * and copied when kept. The struct owns its series and its HTTP daemon.
 *
 * Thread-safety: every function is thread-safe (one mutex around the
 * registry; the HTTP daemon thread takes the same mutex while rendering).
 * Every function accepts m == NULL and then does nothing (getters return 0),
 * so modules can be used without metrics in tests.
 */
#ifndef CRMSYNC_METRICS_H
#define CRMSYNC_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct metrics;

/**
 * @brief Creates an empty registry (no HTTP server yet).
 * @param worker borrowed, copied; becomes worker="..." on every series.
 * @returns the registry (caller frees with metrics_free), NULL on OOM.
 */
struct metrics *metrics_new(const char *worker);

/** @brief Stops the HTTP server (if running) and frees everything. NULL ok. */
void metrics_free(struct metrics *m);

/**
 * @brief Optional HELP/TYPE text for a family; series work without it
 *        (undescribed families are typed by their first use).
 * @param type "counter" | "gauge" | "histogram".
 */
void metrics_describe(struct metrics *m, const char *name, const char *type,
                      const char *help);

/** @brief Adds @p v (>= 0) to a counter. @p labels NULL or 'k="v",...'. */
void metrics_counter_add(struct metrics *m, const char *name,
                         const char *labels, double v);

/** @brief Sets a gauge. */
void metrics_gauge_set(struct metrics *m, const char *name, const char *labels,
                       double v);

/**
 * @brief Observes one value into a histogram with fixed buckets suited to
 *        seconds: .001 .0025 .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10 30 +Inf.
 *        Exposed as <name>_bucket{le=...}, <name>_sum, <name>_count.
 */
void metrics_histogram_observe(struct metrics *m, const char *name,
                               const char *labels, double v);

/** @returns a counter's value (for tests); 0 if absent or m == NULL. */
double metrics_counter_get(struct metrics *m, const char *name,
                           const char *labels);

/** @returns a gauge's value (for tests); 0 if absent or m == NULL. */
double metrics_gauge_get(struct metrics *m, const char *name,
                         const char *labels);

/**
 * @brief Consumes a librdkafka statistics JSON (stats_cb payload, borrowed):
 *        sets crmsync_consumer_lag{topic,partition} from
 *        topics.*.partitions.*.consumer_lag (for a partition the group never
 *        committed, librdkafka's -1 becomes hi_offset - lo_offset: all of it
 *        is ahead of the group, 0 when empty) and
 *        crmsync_consumer_lag_stored{topic,partition} from consumer_lag_stored
 *        (partition -1 and lag -1 are skipped; partitions with
 *        "desired": false, i.e. known from metadata but not assigned to this
 *        consumer, are treated as absent), removes lag series of partitions
 *        no longer in the JSON (revoked), sets the counter
 *        crmsync_kafka_rebalances_total to cgrp.rebalance_cnt and the gauge
 *        crmsync_kafka_assigned_partitions to cgrp.assignment_size.
 *        Unparseable JSON is ignored.
 */
void metrics_update_from_kafka_stats(struct metrics *m, const char *json,
                                     size_t len);

/* One assigned partition as a librdkafka statistics JSON reports it
 * (metrics_kafka_stats_partitions). Offsets and lags are -1 when unknown. */
struct metrics_kafka_part {
    char topic[256];             /* NUL-terminated topic name */
    int32_t partition;           /* >= 0 */
    int64_t committed_offset;    /* the group's committed offset; -1 for
                                    none (librdkafka's -1001 INVALID) */
    int64_t consumer_lag;        /* committed offset to high watermark */
    int64_t consumer_lag_stored; /* stored offset to high watermark */
    int64_t lo_offset;           /* low watermark */
    int64_t hi_offset;           /* high watermark */
};

/**
 * @brief Lists the partitions of a librdkafka statistics JSON (borrowed)
 *        that are assigned to this consumer: partition >= 0 and not
 *        "desired": false (the same filter as the lag gauges). Topics with
 *        names of 256 bytes or more are skipped. Pure: touches no registry.
 * @param parts receives a malloc'd array (caller frees with free()), NULL
 *              when there are none.
 * @param nparts receives the number of entries.
 * @returns CS_ERR_OK, CS_ERR_INVALID_ARG (not a JSON object; *parts NULL)
 *          or CS_ERR_NOMEM.
 */
enum cs_err metrics_kafka_stats_partitions(const char *json, size_t len,
                                           struct metrics_kafka_part **parts,
                                           size_t *nparts);

/**
 * @brief Unprocessed lag of one partition from a statistics entry: messages
 *        past the stored offset (processed, maybe not committed yet) or,
 *        when nothing was stored since assignment, past the committed
 *        offset; when the group never committed it either, the whole
 *        partition (hi - lo, what auto.offset.reset=earliest reads).
 * @returns messages (>= 0) or -1 when unknown.
 */
int64_t metrics_kafka_part_unprocessed(const struct metrics_kafka_part *p);

/**
 * @brief Age in seconds of a partition's oldest unprocessed message, for
 *        crmsync_consumer_lag_seconds. Pure; the caller keeps
 *        *behind_since_ms per partition (0 initially).
 *
 *  - @p oldest_held_ms >= 0 (the consumer holds unfinished messages of the
 *    partition: in flight, paused, waiting to retry): now - that Kafka
 *    timestamp, clamped at 0 (producer clocks may be ahead).
 *  - nothing held, @p lag > 0 (messages the consumer has not fetched yet):
 *    a lower bound, the time since this was first seen (*behind_since_ms
 *    is set to @p now_ms on the first such call). It never jumps up on a
 *    stale lag sample and becomes exact once the next message is held.
 *  - nothing held and lag 0 or unknown (-1): 0.
 *  Every case except the second resets *behind_since_ms to 0.
 * @param now_ms wall clock, ms since the epoch (injected for tests).
 * @param oldest_held_ms Kafka timestamp (ms since the epoch) of the oldest
 *        unfinished message the consumer holds of the partition, -1 none.
 * @param lag messages of the partition not yet fetched, -1 unknown.
 */
double metrics_lag_seconds(int64_t now_ms, int64_t oldest_held_ms, int64_t lag,
                           int64_t *behind_since_ms);

/**
 * @brief Removes one series of a counter or gauge family (e.g. the gauges
 *        of a revoked partition). No-op when absent.
 */
void metrics_remove(struct metrics *m, const char *name, const char *labels);

/**
 * @brief Health state for /readyz: ready when @p assigned && @p deps_ok.
 *        Also sets the gauge crmsync_ready to 1/0.
 * @param detail borrowed, copied (e.g. "redis down"); NULL for none. Must
 *               not contain secrets: it is served over HTTP.
 */
void metrics_set_health(struct metrics *m, bool assigned, bool deps_ok,
                        const char *detail);

/** @returns true when the last metrics_set_health() said ready. */
bool metrics_is_ready(struct metrics *m);

/**
 * @brief Starts the HTTP server on 0.0.0.0:@p port (0 = ephemeral).
 *        GET /metrics -> text/plain; version=0.0.4, GET /healthz -> 200 "ok",
 *        GET /readyz -> 200 "ready" or 503 with the detail, else 404.
 * @param bound_port receives the real port; may be NULL.
 * @returns CS_ERR_OK (also for m == NULL: nothing served, *bound_port 0),
 *          CS_ERR_INVALID_ARG (already serving, bad port) or CS_ERR_IO
 *          (cannot bind) with detail in errstr. Call from one thread, once.
 */
enum cs_err metrics_serve(struct metrics *m, int port, int *bound_port,
                          char *errstr, size_t errstr_size);

/**
 * @brief Renders the registry in exposition format 0.0.4 (what /metrics
 *        serves; also for tests and debugging).
 * @param len receives the length; may be NULL.
 * @returns a NUL-terminated buffer (caller frees with free()), NULL on OOM
 *          or m == NULL.
 */
char *metrics_render(struct metrics *m, size_t *len);

/**
 * @brief Escapes a label value per the exposition format (\\ \" \n).
 * @param out caller buffer; always NUL-terminated when out_size > 0.
 * @returns the length the full escaped value needs (excluding NUL); if
 *          >= out_size the output was truncated.
 */
size_t metrics_label_escape(const char *value, char *out, size_t out_size);

#endif
