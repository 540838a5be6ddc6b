/* dlq - see dlq.h. */
#include "common/dlq.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "common/metrics.h"

struct dlq {
    rd_kafka_t *rk;    /* producer handle, owned */
    struct metrics *m; /* borrowed */
    char suffix[64];   /* dead-letter topic suffix, e.g. ".dlq" */
    char worker[64];   /* worker kind for the crmsync.error.worker header */
    int failed;        /* deliveries failed since the last flush */
};

/* Delivery report: counts failures so dlq_flush() can report them. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
                        void *opaque)
{
    struct dlq *dlq = opaque;
    (void)rk;
    if (rkm->err) {
        dlq->failed++;
        LOG_ERROR("dead-letter delivery failed topic=%s err=%s",
                  rd_kafka_topic_name(rkm->rkt), rd_kafka_err2str(rkm->err));
    }
}

struct dlq *dlq_new(const struct config *cfg, struct metrics *m, char *errstr,
                    size_t errstr_size)
{
    struct dlq *dlq = calloc(1, sizeof(*dlq));
    rd_kafka_conf_t *conf = NULL;

    if (!dlq) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    dlq->m = m;
    snprintf(dlq->suffix, sizeof(dlq->suffix), "%s", cfg->dlq_suffix);
    snprintf(dlq->worker, sizeof(dlq->worker), "%s", cfg->worker);

    conf = rd_kafka_conf_new();
    if (config_apply_kafka(cfg, conf, errstr, errstr_size) != CS_ERR_OK)
        goto out_free_conf;
    /* Durability of the dead letter is what lets us store the original's
     * offset: wait for all in-sync replicas, no duplicates on retry. */
    if (rd_kafka_conf_set(conf, "acks", "all", errstr, errstr_size) ||
        rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr,
                          errstr_size) ||
        rd_kafka_conf_set(conf, "linger.ms", "5", errstr, errstr_size))
        goto out_free_conf;
    /* Consumer-only passthrough properties would make the producer warn;
     * they are harmless, so they are left as configured. */
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_opaque(conf, dlq);

    dlq->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, errstr_size);
    if (!dlq->rk)
        goto out_free_conf;
    /* conf is now owned by dlq->rk. */
    return dlq;

out_free_conf:
    rd_kafka_conf_destroy(conf);
    free(dlq);
    return NULL;
}

void dlq_free(struct dlq *dlq)
{
    if (!dlq)
        return;
    if (dlq->rk) {
        rd_kafka_flush(dlq->rk, 5000);
        rd_kafka_destroy(dlq->rk);
    }
    free(dlq);
}

void dlq_topic_name(const struct dlq *dlq, const char *topic, char *buf,
                    size_t size)
{
    snprintf(buf, size, "%s%s", topic, dlq->suffix);
}

/* Copies the original message's headers into @p dst (may stay empty). */
static void copy_headers(const rd_kafka_message_t *rkm, rd_kafka_headers_t *dst)
{
    rd_kafka_headers_t *src = NULL;
    const char *name;
    const void *val;
    size_t size;

    if (rd_kafka_message_headers(rkm, &src) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    for (size_t i = 0; rd_kafka_header_get_all(src, i, &name, &val, &size) ==
                       RD_KAFKA_RESP_ERR_NO_ERROR;
         i++)
        rd_kafka_header_add(dst, name, -1, val, (ssize_t)size);
}

enum cs_err dlq_send(struct dlq *dlq, const rd_kafka_message_t *rkm,
                     enum cs_err err, const char *reason)
{
    char topic[512];
    char partition[16];
    char offset[32];
    char ts[64];
    const char *src_topic = rd_kafka_topic_name(rkm->rkt);
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(12);
    rd_kafka_resp_err_t kerr;

    dlq_topic_name(dlq, src_topic, topic, sizeof(topic));
    snprintf(partition, sizeof(partition), "%" PRId32, rkm->partition);
    snprintf(offset, sizeof(offset), "%" PRId64, rkm->offset);
    log_timestamp(ts, sizeof(ts));

    copy_headers(rkm, hdrs);
    rd_kafka_header_add(hdrs, "crmsync.error.topic", -1, src_topic, -1);
    rd_kafka_header_add(hdrs, "crmsync.error.partition", -1, partition, -1);
    rd_kafka_header_add(hdrs, "crmsync.error.offset", -1, offset, -1);
    rd_kafka_header_add(hdrs, "crmsync.error.class", -1, cs_err_name(err), -1);
    rd_kafka_header_add(hdrs, "crmsync.error.message", -1, reason, -1);
    rd_kafka_header_add(hdrs, "crmsync.error.worker", -1, dlq->worker, -1);
    rd_kafka_header_add(hdrs, "crmsync.error.timestamp", -1, ts, -1);

    kerr = rd_kafka_producev(dlq->rk, RD_KAFKA_V_TOPIC(topic),
                             RD_KAFKA_V_KEY(rkm->key, rkm->key_len),
                             RD_KAFKA_V_VALUE(rkm->payload, rkm->len),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_END);
    if (kerr) {
        /* On failure the headers were not taken over. */
        rd_kafka_headers_destroy(hdrs);
        LOG_ERROR("dead-letter produce failed topic=%s err=%s", topic,
                  rd_kafka_err2str(kerr));
        return CS_ERR_DLQ_PRODUCE;
    }
    return CS_ERR_OK;
}

enum cs_err dlq_flush(struct dlq *dlq, int timeout_ms, char *errstr,
                      size_t errstr_size)
{
    rd_kafka_resp_err_t kerr = rd_kafka_flush(dlq->rk, timeout_ms);
    int failed = dlq->failed;

    dlq->failed = 0;
    if (kerr) {
        snprintf(errstr, errstr_size, "dead-letter flush: %s",
                 rd_kafka_err2str(kerr));
        return CS_ERR_DLQ_PRODUCE;
    }
    if (failed) {
        snprintf(errstr, errstr_size, "%d dead-letter deliveries failed",
                 failed);
        return CS_ERR_DLQ_PRODUCE;
    }
    return CS_ERR_OK;
}
