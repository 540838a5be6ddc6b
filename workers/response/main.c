/*
 * crmsync-response - ESP reactions -> CRM campaign responses.
 *
 * Consumes ResponseEvents (open, click, reply, autoresponder, unsubscribe)
 * from crmsync.response.events and writes one campaignresponse per reaction
 * (mode "all") or per first reaction of each type per recipient and mailing
 * (mode "unique") on the CRM campaign of the mailing. Shape as librdkafka's
 * examples/consumer.c: configure, open, loop until SIGTERM, close.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/config.h"
#include "common/kafka_loop.h"
#include "common/log.h"
#include "common/runtime.h"
#include "workers/response/response.h"

static volatile sig_atomic_t run = 1; /* cleared by SIGTERM / SIGINT */

int main(int argc, char **argv)
{
    struct config cfg = {0};           /* shared settings */
    struct response_config rcfg = {0}; /* response.* settings */
    struct config_section extra = {"response worker", response_config_fields,
                                   response_config_fields_cnt, &rcfg};
    struct runtime rt = {0}; /* metrics, codec, redis, crm, dlq */
    struct response_handler *handler = NULL;
    struct kafka_loop *loop = NULL;
    char errstr[512]; /* error detail from any module */
    enum log_level level = LOG_LEVEL_INFO;
    int rc;
    int exit_code = EXIT_FAILURE;

    rc = config_cli(argc, argv, "response", RESPONSE_TOPIC_DEFAULT, &cfg,
                    &extra, 1);
    if (rc >= 0)
        return rc; /* --help, --check-config or a config error */
    log_level_parse(cfg.log_level, &level);
    log_init("response", level);
    runtime_install_signals(&run);

    if (runtime_open(&rt, &cfg, errstr, sizeof(errstr)) != CS_ERR_OK) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_free_config;
    }
    handler = response_handler_new(&rcfg, &rt, errstr, sizeof(errstr));
    if (!handler) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_close_runtime;
    }

    struct kl_handler kh = {
        .reader_schema = RESPONSE_READER_SCHEMA,
        .process = response_handler_process,
        .abandon = response_handler_abandon,
        .idle = response_handler_idle,
        .healthy = response_handler_healthy,
        .ctx = handler,
    };
    loop = kafka_loop_new(&cfg, &kh, rt.codec, rt.dlq, rt.metrics, errstr,
                          sizeof(errstr));
    if (!loop) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_free_handler;
    }

    LOG_INFO("started mode=%s batch_max_messages=%d batch_max_ms=%d", rcfg.mode,
             cfg.batch_max_messages, cfg.batch_max_ms);
    if (kafka_loop_run(loop, &run) == CS_ERR_OK)
        exit_code = EXIT_SUCCESS;

    kafka_loop_free(loop);
out_free_handler:
    response_handler_free(handler);
out_close_runtime:
    runtime_close(&rt);
out_free_config:
    config_free(&cfg, &extra, 1);
    LOG_INFO("stopped exit=%d", exit_code);
    return exit_code;
}
