/*
 * fuzz_kafka_stats - librdkafka's statistics JSON (the stats_cb payload;
 * outside input as far as crmsync is concerned: written by another library,
 * with topic names chosen by whoever creates topics):
 * metrics_update_from_kafka_stats() and metrics_kafka_stats_partitions(),
 * and what the consumer derives from the partition list, must neither
 * crash nor leak on any bytes.
 *
 * An input may hold two documents separated by a NUL byte: the second is a
 * later sample on the same registry, which exercises the sweep of lag
 * series of partitions that disappeared (revoked) and the keep-alive of
 * series whose lag is unknown in the later sample.
 *
 * Seeds (tests/fuzz/corpus/kafka_stats/): consumer statistics documents in
 * the shape of librdkafka's STATISTICS.md (1.9-2.x), with assigned and
 * not-desired partitions, the internal -1 partition, never-committed
 * partitions, and revocation pairs.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What the consumer does with each listed partition (kafka_loop). */
static void parts_use(const char *json, size_t len)
{
    struct metrics_kafka_part *parts = NULL;
    size_t n = 0;
    size_t i;

    if (metrics_kafka_stats_partitions(json, len, &parts, &n) != CS_ERR_OK)
        return;
    for (i = 0; i < n; i++) {
        int64_t lag = metrics_kafka_part_unprocessed(&parts[i]);
        int64_t since = 0;

        (void)metrics_lag_seconds(1714564800000, -1, lag, &since);
        (void)metrics_lag_seconds(1714564801000, parts[i].hi_offset, lag,
                                  &since);
    }
    free(parts);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *json = (const char *)data;
    const char *sep = memchr(data, '\0', size);
    size_t first = sep ? (size_t)(sep - json) : size;
    struct metrics *m = metrics_new("fuzz");
    char *text;

    if (!m)
        return 0;
    metrics_update_from_kafka_stats(m, json, first);
    parts_use(json, first);
    if (sep) {
        metrics_update_from_kafka_stats(m, sep + 1, size - first - 1);
        parts_use(sep + 1, size - first - 1);
    }
    /* Topic names end up in label values: the rendering must cope. */
    text = metrics_render(m, NULL);
    free(text);
    metrics_free(m);
    return 0;
}
