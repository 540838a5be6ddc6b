/* dlq_replay - see dlq_replay.h. */
#include "dlq_replay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dlq_conf.h"

#define ERROR_PREFIX  "crmsync.error."
#define QUEUE_WAIT_MS 100
#define QUEUE_RETRIES 600 /* 60 s of a full local queue */

struct dlq_replayer {
    rd_kafka_t *rk; /* producer, owned */
    long delivered; /* acknowledged by the brokers */
    long failed;    /* failed or purged */
};

/* Delivery report: counts and names failures; frees the replay_of copy
 * passed as the message opaque. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
                        void *opaque)
{
    struct dlq_replayer *p = opaque;
    char *replay_of = rkm->_private;

    (void)rk;
    if (rkm->err) {
        p->failed++;
        fprintf(stderr, "crmsync dlq: replay of %s to %s failed: %s\n",
                replay_of ? replay_of : "?", rd_kafka_topic_name(rkm->rkt),
                rd_kafka_err2str(rkm->err));
    } else {
        p->delivered++;
    }
    free(replay_of);
}

struct dlq_replayer *dlq_replayer_new(rd_kafka_conf_t *conf, char *errstr,
                                      size_t errstr_size)
{
    struct dlq_replayer *p = calloc(1, sizeof(*p));

    if (!p) {
        snprintf(errstr, errstr_size, "out of memory");
        goto out_destroy_conf;
    }
    if (dlq_conf_force(conf, "acks", "all", errstr, errstr_size) != CS_ERR_OK ||
        dlq_conf_force(conf, "enable.idempotence", "true", errstr,
                       errstr_size) != CS_ERR_OK)
        goto out_free_replayer;
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_opaque(conf, p);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, errstr_size);
    if (!p->rk)
        goto out_free_replayer;
    /* conf now belongs to p->rk. */
    return p;

out_free_replayer:
    free(p);
out_destroy_conf:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

void dlq_replayer_free(struct dlq_replayer *p)
{
    if (!p)
        return;
    if (p->rk) {
        /* Serve the reports of purged messages so their opaques are
         * freed. */
        rd_kafka_purge(p->rk,
                       RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_flush(p->rk, 1000);
        rd_kafka_destroy(p->rk);
    }
    free(p);
}

/* The original headers minus crmsync.error.* and older replay markers, plus
 * the new marker. Caller owns the result (or hands it to producev). */
static rd_kafka_headers_t *replay_headers(const rd_kafka_message_t *rkm,
                                          const char *replay_of)
{
    rd_kafka_headers_t *src = NULL;
    rd_kafka_headers_t *dst;
    const char *name;
    const void *val;
    size_t size;
    size_t n = 0;

    if (rd_kafka_message_headers(rkm, &src) != RD_KAFKA_RESP_ERR_NO_ERROR)
        src = NULL;
    if (src)
        n = rd_kafka_header_cnt(src);
    dst = rd_kafka_headers_new(n + 1);
    for (size_t i = 0;
         src && rd_kafka_header_get_all(src, i, &name, &val, &size) ==
                    RD_KAFKA_RESP_ERR_NO_ERROR;
         i++) {
        if (!strncmp(name, ERROR_PREFIX, strlen(ERROR_PREFIX)) ||
            !strcmp(name, DLQ_REPLAY_HEADER))
            continue;
        /* val == NULL is a null header: keep it null. */
        rd_kafka_header_add(dst, name, -1, val, val ? (ssize_t)size : 0);
    }
    rd_kafka_header_add(dst, DLQ_REPLAY_HEADER, -1, replay_of, -1);
    return dst;
}

enum cs_err dlq_replayer_send(struct dlq_replayer *p,
                              const rd_kafka_message_t *rkm, const char *topic,
                              int32_t partition, const char *replay_of,
                              char *errstr, size_t errstr_size)
{
    rd_kafka_resp_err_t kerr = RD_KAFKA_RESP_ERR_NO_ERROR;

    for (int attempt = 0; attempt < QUEUE_RETRIES; attempt++) {
        rd_kafka_headers_t *hdrs = replay_headers(rkm, replay_of);
        char *opaque = strdup(replay_of);

        if (!opaque) {
            rd_kafka_headers_destroy(hdrs);
            snprintf(errstr, errstr_size, "out of memory");
            return CS_ERR_NOMEM;
        }
        kerr = rd_kafka_producev(
            p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
            RD_KAFKA_V_KEY(rkm->key, rkm->key_len),
            RD_KAFKA_V_VALUE(rkm->payload, rkm->len),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(hdrs),
            RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
        if (!kerr)
            return CS_ERR_OK;
        /* Not queued: headers and opaque are still ours. */
        rd_kafka_headers_destroy(hdrs);
        free(opaque);
        if (kerr != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            break;
        rd_kafka_poll(p->rk, QUEUE_WAIT_MS);
    }
    snprintf(errstr, errstr_size, "produce %s to %s: %s", replay_of, topic,
             rd_kafka_err2str(kerr));
    return CS_ERR_KAFKA;
}

void dlq_replayer_flush(struct dlq_replayer *p, int timeout_ms, long *delivered,
                        long *failed)
{
    if (rd_kafka_flush(p->rk, timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr,
                "crmsync dlq: %d message(s) not acknowledged within %d ms; "
                "purging them\n",
                rd_kafka_outq_len(p->rk), timeout_ms);
        rd_kafka_purge(p->rk,
                       RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_flush(p->rk, 1000); /* serves the purged reports */
    }
    *delivered = p->delivered;
    *failed = p->failed;
}
