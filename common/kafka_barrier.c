/*
 * kafka_barrier - group G caught up with topics as of time X (see .h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "common/config.h"
#include "common/kafka_barrier.h"

#define TIMEOUT_MS 5000

struct kafka_barrier {
    rd_kafka_t *rk; /* owned; consumer handle that never subscribes */
};

struct kafka_barrier *kafka_barrier_new(const struct config *cfg,
                                        const char *group, char *errstr,
                                        size_t errstr_size)
{
    struct kafka_barrier *b = calloc(1, sizeof(*b));
    rd_kafka_conf_t *conf = rd_kafka_conf_new();

    if (!b || !conf) {
        snprintf(errstr, errstr_size, "out of memory");
        goto out_fail;
    }
    if (config_apply_kafka(cfg, conf, errstr, errstr_size) != CS_ERR_OK ||
        rd_kafka_conf_set(conf, "group.id", group, errstr, errstr_size) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
                          errstr_size))
        goto out_fail;
    b->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, errstr_size);
    if (!b->rk)
        goto out_fail;
    return b; /* conf is owned by rk now */

out_fail:
    if (conf)
        rd_kafka_conf_destroy(conf);
    free(b);
    return NULL;
}

void kafka_barrier_free(struct kafka_barrier *b)
{
    if (!b)
        return;
    if (b->rk)
        rd_kafka_destroy(b->rk);
    free(b);
}

/* Every partition of every topic in @p topics, offsets set to @p at_ms. */
static rd_kafka_topic_partition_list_t *
partitions_of(rd_kafka_t *rk, const char *topics, int64_t at_ms, char *errstr,
              size_t errstr_size)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
    char *copy = strdup(topics);
    char *save = NULL;

    if (!copy)
        goto out_fail;
    for (char *t = strtok_r(copy, ", ", &save); t;
         t = strtok_r(NULL, ", ", &save)) {
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, t, NULL);
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err =
            rkt ? rd_kafka_metadata(rk, 0, rkt, &md, TIMEOUT_MS)
                : RD_KAFKA_RESP_ERR__INVALID_ARG;
        if (err || md->topic_cnt != 1 || md->topics[0].err) {
            snprintf(errstr, errstr_size, "metadata of %s: %s", t,
                     rd_kafka_err2str(err ? err
                                      : md->topic_cnt == 1
                                          ? md->topics[0].err
                                          : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));
            if (md)
                rd_kafka_metadata_destroy(md);
            if (rkt)
                rd_kafka_topic_destroy(rkt);
            goto out_fail;
        }
        for (int p = 0; p < md->topics[0].partition_cnt; p++)
            rd_kafka_topic_partition_list_add(l, t,
                                              md->topics[0].partitions[p].id)
                ->offset = at_ms;
        rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
    }
    free(copy);
    return l;

out_fail:
    free(copy);
    rd_kafka_topic_partition_list_destroy(l);
    return NULL;
}

enum cs_err kafka_barrier_check(struct kafka_barrier *b, const char *topics,
                                int64_t at_ms, bool *reached, int64_t *behind,
                                char *errstr, size_t errstr_size)
{
    rd_kafka_topic_partition_list_t *target;
    rd_kafka_topic_partition_list_t *done = NULL;
    rd_kafka_resp_err_t err;
    enum cs_err rc = CS_ERR_KAFKA;

    *reached = false;
    *behind = 0;
    target = partitions_of(b->rk, topics, at_ms, errstr, errstr_size);
    if (!target)
        return CS_ERR_KAFKA;
    err = rd_kafka_offsets_for_times(b->rk, target, TIMEOUT_MS);
    if (err) {
        snprintf(errstr, errstr_size, "offsets for time: %s",
                 rd_kafka_err2str(err));
        goto out_free;
    }
    done = rd_kafka_topic_partition_list_copy(target);
    err = rd_kafka_committed(b->rk, done, TIMEOUT_MS);
    if (err) {
        snprintf(errstr, errstr_size, "committed offsets: %s",
                 rd_kafka_err2str(err));
        goto out_free;
    }
    *reached = true;
    for (int i = 0; i < target->cnt; i++) {
        rd_kafka_topic_partition_t *t = &target->elems[i];
        int64_t want = t->offset;
        int64_t have = done->elems[i].offset < 0 ? 0 : done->elems[i].offset;
        if (want < 0) { /* nothing at or after the time: the end offset */
            int64_t lo = 0, hi = 0;
            err = rd_kafka_query_watermark_offsets(
                b->rk, t->topic, t->partition, &lo, &hi, TIMEOUT_MS);
            if (err) {
                snprintf(errstr, errstr_size, "watermarks of %s[%d]: %s",
                         t->topic, (int)t->partition, rd_kafka_err2str(err));
                *reached = false;
                goto out_free;
            }
            want = hi;
        }
        if (have < want) {
            *reached = false;
            *behind += want - have;
        }
    }
    rc = CS_ERR_OK;
out_free:
    if (done)
        rd_kafka_topic_partition_list_destroy(done);
    rd_kafka_topic_partition_list_destroy(target);
    return rc;
}
