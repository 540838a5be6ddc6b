/*
 * dlq_read - reads a dead-letter topic without touching any consumer group,
 * and parses the crmsync.error.* headers (common/dlq.h) of each message.
 *
 * The reader is a librdkafka consumer used only with assign() and explicit
 * offsets: it never subscribes (so never joins a group), auto commit and
 * offset store are off and it commits nothing. A scan reads one partition
 * from an offset up to an end offset captured by the caller (normally the
 * high watermark at start), so messages dead-lettered meanwhile are not
 * read and a scan always ends.
 *
 * Ownership: the reader owns its rd_kafka_t. Messages handed to a scan
 * callback are borrowed for the call only. struct dlq_meta holds copies.
 * Thread-safety: one thread.
 */
#ifndef CRMSYNC_TOOLS_DLQ_READ_H
#define CRMSYNC_TOOLS_DLQ_READ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "common/err.h"

/* The dead-letter headers of one message, copied and NUL-terminated. A
 * missing header leaves its string empty. */
struct dlq_meta {
    bool has_origin;    /* topic, partition and offset present and valid:
                           only such messages can be replayed */
    char topic[256];    /* crmsync.error.topic */
    int32_t partition;  /* crmsync.error.partition, -1 if missing */
    int64_t offset;     /* crmsync.error.offset, -1 if missing */
    char cls[64];       /* crmsync.error.class */
    char message[1024]; /* crmsync.error.message (truncated to fit) */
    char worker[64];    /* crmsync.error.worker */
    char timestamp[64]; /* crmsync.error.timestamp as written */
    int64_t ts_ms;      /* the timestamp in ms since the epoch, -1 if
                           missing or not RFC 3339 */
};

struct dlq_reader;

/**
 * @brief Creates the reader.
 * @param conf takes ownership (also on failure); enable.auto.commit,
 *        enable.auto.offset.store and enable.partition.eof are forced.
 * @param timeout_ms how long a scan or metadata request may go without
 *        progress before it fails.
 * @returns the reader (free with dlq_reader_free) or NULL with errstr set.
 */
struct dlq_reader *dlq_reader_new(rd_kafka_conf_t *conf, int timeout_ms,
                                  char *errstr, size_t errstr_size);

/** @brief Destroys the reader (no commits, no group). NULL-safe. */
void dlq_reader_free(struct dlq_reader *r);

/**
 * @brief Partition count of @p topic.
 * @returns CS_ERR_OK; CS_ERR_INVALID_ARG when the topic does not exist;
 *          CS_ERR_KAFKA when metadata could not be fetched.
 */
enum cs_err dlq_reader_partition_count(struct dlq_reader *r, const char *topic,
                                       int32_t *count, char *errstr,
                                       size_t errstr_size);

/** @brief Low and high watermark of one partition, asked from the broker. */
enum cs_err dlq_reader_watermarks(struct dlq_reader *r, const char *topic,
                                  int32_t partition, int64_t *low,
                                  int64_t *high, char *errstr,
                                  size_t errstr_size);

/**
 * @brief Reads @p topic / @p partition from offset @p from up to, not
 *        including, @p end, calling @p cb for each message in order until it
 *        returns false.
 * @param cb gets a borrowed message; @p opaque is passed through.
 * @returns CS_ERR_OK (also when cb stopped early) or CS_ERR_KAFKA with
 *          errstr set (error from the broker, or no progress for the
 *          reader's timeout).
 */
enum cs_err dlq_reader_scan(struct dlq_reader *r, const char *topic,
                            int32_t partition, int64_t from, int64_t end,
                            bool (*cb)(const rd_kafka_message_t *rkm,
                                       void *opaque),
                            void *opaque, char *errstr, size_t errstr_size);

/** @brief Fills @p out from the message's crmsync.error.* headers. */
void dlq_meta_parse(const rd_kafka_message_t *rkm, struct dlq_meta *out);

/**
 * @brief Parses an RFC 3339 time ("2026-05-01T12:00:00Z",
 *        "...12:00:00.250+02:00", lower-case t/z too) or a date
 *        ("2026-05-01" = midnight UTC).
 * @returns ms since the epoch, or -1 when @p s is not such a time.
 */
int64_t dlq_parse_time(const char *s);

#endif
