/* dlq_read - see dlq_read.h. */
#define _DEFAULT_SOURCE /* timegm */
#include "dlq_read.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dlq_conf.h"

#define POLL_MS 200

struct dlq_reader {
    rd_kafka_t *rk; /* consumer handle, owned */
    int timeout_ms; /* longest wait without progress */
};

struct dlq_reader *dlq_reader_new(rd_kafka_conf_t *conf, int timeout_ms,
                                  char *errstr, size_t errstr_size)
{
    struct dlq_reader *r = calloc(1, sizeof(*r));

    if (!r) {
        snprintf(errstr, errstr_size, "out of memory");
        goto out_destroy_conf;
    }
    r->timeout_ms = timeout_ms;
    /* Read only: never store or commit an offset anywhere. EOF events tell
     * a scan that a partition has nothing more. */
    if (dlq_conf_force(conf, "enable.auto.commit", "false", errstr,
                       errstr_size) != CS_ERR_OK ||
        dlq_conf_force(conf, "enable.auto.offset.store", "false", errstr,
                       errstr_size) != CS_ERR_OK ||
        dlq_conf_force(conf, "enable.partition.eof", "true", errstr,
                       errstr_size) != CS_ERR_OK)
        goto out_free_reader;
    r->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, errstr_size);
    if (!r->rk)
        goto out_free_reader;
    /* conf now belongs to r->rk. */
    rd_kafka_poll_set_consumer(r->rk);
    return r;

out_free_reader:
    free(r);
out_destroy_conf:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

void dlq_reader_free(struct dlq_reader *r)
{
    if (!r)
        return;
    if (r->rk) {
        rd_kafka_assign(r->rk, NULL);
        /* No subscription, so closing leaves no group and commits nothing
         * (auto commit is off). */
        rd_kafka_consumer_close(r->rk);
        rd_kafka_destroy(r->rk);
    }
    free(r);
}

enum cs_err dlq_reader_partition_count(struct dlq_reader *r, const char *topic,
                                       int32_t *count, char *errstr,
                                       size_t errstr_size)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t kerr;
    enum cs_err err = CS_ERR_INVALID_ARG;

    /* All topics, not just this one: asking for one topic by name makes
     * brokers with auto.create.topics.enable (and the mock cluster) create
     * it. */
    kerr = rd_kafka_metadata(r->rk, 1, NULL, &md, r->timeout_ms);
    if (kerr) {
        snprintf(errstr, errstr_size, "metadata: %s", rd_kafka_err2str(kerr));
        return CS_ERR_KAFKA;
    }
    snprintf(errstr, errstr_size, "topic %s does not exist", topic);
    for (int i = 0; i < md->topic_cnt; i++) {
        const struct rd_kafka_metadata_topic *t = &md->topics[i];

        if (strcmp(t->topic, topic))
            continue;
        if (t->err || t->partition_cnt == 0) {
            snprintf(errstr, errstr_size, "topic %s: %s", topic,
                     t->err ? rd_kafka_err2str(t->err) : "no partitions");
            err = t->err ? CS_ERR_KAFKA : CS_ERR_INVALID_ARG;
        } else {
            *count = t->partition_cnt;
            err = CS_ERR_OK;
        }
        break;
    }
    rd_kafka_metadata_destroy(md);
    return err;
}

enum cs_err dlq_reader_watermarks(struct dlq_reader *r, const char *topic,
                                  int32_t partition, int64_t *low,
                                  int64_t *high, char *errstr,
                                  size_t errstr_size)
{
    rd_kafka_resp_err_t kerr = rd_kafka_query_watermark_offsets(
        r->rk, topic, partition, low, high, r->timeout_ms);

    if (kerr) {
        snprintf(errstr, errstr_size, "watermarks of %s/%" PRId32 ": %s", topic,
                 partition, rd_kafka_err2str(kerr));
        return CS_ERR_KAFKA;
    }
    return CS_ERR_OK;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

enum cs_err dlq_reader_scan(struct dlq_reader *r, const char *topic,
                            int32_t partition, int64_t from, int64_t end,
                            bool (*cb)(const rd_kafka_message_t *rkm,
                                       void *opaque),
                            void *opaque, char *errstr, size_t errstr_size)
{
    rd_kafka_topic_partition_list_t *parts;
    rd_kafka_resp_err_t kerr;
    enum cs_err err = CS_ERR_OK;
    int64_t next = from; /* first offset not yet seen */
    int64_t deadline;
    bool done = from >= end;

    if (done)
        return CS_ERR_OK;
    parts = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(parts, topic, partition)->offset = from;
    kerr = rd_kafka_assign(r->rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (kerr) {
        snprintf(errstr, errstr_size, "assign %s/%" PRId32 ": %s", topic,
                 partition, rd_kafka_err2str(kerr));
        return CS_ERR_KAFKA;
    }
    deadline = now_ms() + r->timeout_ms;
    while (!done) {
        rd_kafka_message_t *rkm = rd_kafka_consumer_poll(r->rk, POLL_MS);

        if (!rkm) {
            if (now_ms() > deadline) {
                snprintf(errstr, errstr_size,
                         "%s/%" PRId32 ": no progress for %d ms at offset "
                         "%" PRId64 " (end %" PRId64 ")",
                         topic, partition, r->timeout_ms, next, end);
                err = CS_ERR_KAFKA;
                break;
            }
            continue;
        }
        if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            /* Nothing more right now: with records deleted or compacted
             * away the end may be short of the captured watermark. */
            done = true;
        } else if (rkm->err) {
            snprintf(errstr, errstr_size, "%s/%" PRId32 ": %s", topic,
                     partition, rd_kafka_message_errstr(rkm));
            err = CS_ERR_KAFKA;
            done = true;
        } else if (rkm->offset >= end) {
            done = true; /* written after the scan started */
        } else {
            deadline = now_ms() + r->timeout_ms;
            next = rkm->offset + 1;
            if (!cb(rkm, opaque) || next >= end)
                done = true;
        }
        rd_kafka_message_destroy(rkm);
    }
    rd_kafka_assign(r->rk, NULL);
    return err;
}

/* Copies header @p name (last occurrence) into @p buf; false if absent. */
static bool header_str(rd_kafka_headers_t *hdrs, const char *name, char *buf,
                       size_t size)
{
    const void *val = NULL;
    size_t len = 0;

    buf[0] = '\0';
    if (!hdrs ||
        rd_kafka_header_get_last(hdrs, name, &val, &len) !=
            RD_KAFKA_RESP_ERR_NO_ERROR ||
        !val)
        return false;
    if (len >= size)
        len = size - 1;
    memcpy(buf, val, len);
    buf[len] = '\0';
    /* A NUL inside the value would silently cut it: treat as absent. */
    return strlen(buf) == len;
}

/* Parses a non-negative decimal integer that fills the whole string. */
static bool parse_i64(const char *s, int64_t *out)
{
    char *end;
    long long v;

    if (!isdigit((unsigned char)s[0]))
        return false;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || *end)
        return false;
    *out = (int64_t)v;
    return true;
}

void dlq_meta_parse(const rd_kafka_message_t *rkm, struct dlq_meta *out)
{
    rd_kafka_headers_t *hdrs = NULL;
    char num[32];
    int64_t v;
    bool ok;

    memset(out, 0, sizeof(*out));
    out->partition = -1;
    out->offset = -1;
    if (rd_kafka_message_headers(rkm, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
        hdrs = NULL;
    ok = header_str(hdrs, "crmsync.error.topic", out->topic,
                    sizeof(out->topic)) &&
         out->topic[0];
    if (header_str(hdrs, "crmsync.error.partition", num, sizeof(num)) &&
        parse_i64(num, &v) && v <= INT32_MAX)
        out->partition = (int32_t)v;
    if (header_str(hdrs, "crmsync.error.offset", num, sizeof(num)) &&
        parse_i64(num, &v))
        out->offset = v;
    out->has_origin = ok && out->partition >= 0 && out->offset >= 0;
    header_str(hdrs, "crmsync.error.class", out->cls, sizeof(out->cls));
    header_str(hdrs, "crmsync.error.message", out->message,
               sizeof(out->message));
    header_str(hdrs, "crmsync.error.worker", out->worker, sizeof(out->worker));
    header_str(hdrs, "crmsync.error.timestamp", out->timestamp,
               sizeof(out->timestamp));
    out->ts_ms = out->timestamp[0] ? dlq_parse_time(out->timestamp) : -1;
}

/* Reads exactly @p n digits. */
static bool digits(const char **p, int n, int *out)
{
    int v = 0;

    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return false;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return true;
}

int64_t dlq_parse_time(const char *s)
{
    struct tm tm = {0};
    const char *p = s;
    int y, mo, d, h = 0, mi = 0, sec = 0, oh, om;
    int64_t ms = 0;
    int64_t offset_min = 0;
    time_t t;

    if (!s || !digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) ||
        *p++ != '-' || !digits(&p, 2, &d))
        return -1;
    if (*p == '\0')
        goto out_compute;
    if ((*p != 'T' && *p != 't' && *p != ' ') || !(p++, digits(&p, 2, &h)) ||
        *p++ != ':' || !digits(&p, 2, &mi) || *p++ != ':' ||
        !digits(&p, 2, &sec))
        return -1;
    if (*p == '.') {
        int64_t scale = 100;
        p++;
        if (!isdigit((unsigned char)*p))
            return -1;
        for (; isdigit((unsigned char)*p); p++) {
            ms += (*p - '0') * scale;
            scale /= 10;
        }
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1;
        if (!digits(&p, 2, &oh) || *p++ != ':' || !digits(&p, 2, &om) ||
            oh > 23 || om > 59)
            return -1;
        offset_min = sign * (oh * 60 + om);
    } else {
        return -1; /* RFC 3339 requires the offset */
    }
    if (*p != '\0')
        return -1;

out_compute:
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -1;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    t = timegm(&tm);
    if (t == (time_t)-1)
        return -1;
    return ((int64_t)t - offset_min * 60) * 1000 + ms;
}
