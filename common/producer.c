/*
 * producer - a plain Kafka producer (see producer.h).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include <librdkafka/rdkafka.h>

#include "common/config.h"
#include "common/producer.h"

struct producer {
    rd_kafka_t *rk;     /* owned */
    atomic_long failed; /* deliveries failed since the last flush */
};

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m,
                        void *opaque)
{
    struct producer *p = opaque;
    (void)rk;
    if (m->err)
        atomic_fetch_add(&p->failed, 1);
}

struct producer *producer_new(const struct config *cfg, char *errstr,
                              size_t errstr_size)
{
    struct producer *p = calloc(1, sizeof(*p));
    rd_kafka_conf_t *conf = rd_kafka_conf_new();

    if (!p || !conf) {
        snprintf(errstr, errstr_size, "out of memory");
        goto out_fail;
    }
    if (config_apply_kafka(cfg, conf, errstr, errstr_size) != CS_ERR_OK ||
        rd_kafka_conf_set(conf, "acks", "all", errstr, errstr_size) ||
        rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr,
                          errstr_size))
        goto out_fail;
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_opaque(conf, p);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, errstr_size);
    if (!p->rk)
        goto out_fail;
    return p;

out_fail:
    if (conf)
        rd_kafka_conf_destroy(conf);
    free(p);
    return NULL;
}

void producer_free(struct producer *p)
{
    if (!p)
        return;
    rd_kafka_flush(p->rk, 5000);
    rd_kafka_destroy(p->rk);
    free(p);
}

enum cs_err producer_warm(struct producer *p, const char *topic, int timeout_ms,
                          char *errstr, size_t errstr_size)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(p->rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err;
    enum cs_err ret = CS_ERR_OK;

    if (!rkt) {
        snprintf(errstr, errstr_size, "topic %s: %s", topic,
                 rd_kafka_err2str(rd_kafka_last_error()));
        return CS_ERR_KAFKA;
    }
    err = rd_kafka_metadata(p->rk, 0, rkt, &md, timeout_ms);
    if (!err && (md->topic_cnt != 1 || md->topics[0].err))
        err = md->topic_cnt == 1 ? md->topics[0].err
                                 : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
    if (err) {
        snprintf(errstr, errstr_size, "topic %s: %s", topic,
                 rd_kafka_err2str(err));
        ret = CS_ERR_KAFKA;
    }
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    return ret;
}

enum cs_err producer_send(struct producer *p, const char *topic,
                          const void *key, size_t key_len, const void *value,
                          size_t len)
{
    rd_kafka_resp_err_t err =
        rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(topic),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_KEY((void *)key, key_len),
                          RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_END);
    return err ? CS_ERR_KAFKA : CS_ERR_OK;
}

enum cs_err producer_flush(struct producer *p, int timeout_ms, char *errstr,
                           size_t errstr_size)
{
    rd_kafka_resp_err_t err = rd_kafka_flush(p->rk, timeout_ms);
    long failed = atomic_exchange(&p->failed, 0);

    if (err || failed) {
        snprintf(errstr, errstr_size, "%ld message(s) not delivered%s%s",
                 failed, err ? ": " : "", err ? rd_kafka_err2str(err) : "");
        return CS_ERR_KAFKA;
    }
    return CS_ERR_OK;
}
