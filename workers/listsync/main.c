/*
 * crmsync-listsync - CRM marketing lists -> ESP recipient lists.
 *
 * Consumes ListSyncRequests from crmsync.listsync.requests; each runs a
 * full refresh of one list (barrier on the bounce/opt-out worker, read,
 * filter, dedupe, map, clear + addAll3, report) in a job thread while the
 * consumer keeps polling (docs/listsync.md). Shape as librdkafka's
 * examples/consumer.c: configure, open, loop until SIGTERM, close.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/config.h"
#include "common/kafka_loop.h"
#include "common/log.h"
#include "common/runtime.h"
#include "workers/listsync/handler.h"

static volatile sig_atomic_t run = 1; /* cleared by SIGTERM / SIGINT */

int main(int argc, char **argv)
{
    struct config cfg = {0};
    struct listsync_tenant tdefaults = {0}; /* per-tenant defaults */
    struct listsync_config lcfg = {0};
    struct config_section extra[] = {
        {"list-sync worker (per tenant)", listsync_tenant_fields,
         listsync_tenant_fields_cnt, &tdefaults},
        {"list-sync worker", listsync_config_fields, listsync_config_fields_cnt,
         &lcfg},
    };
    struct listsync_mapping map = {0};
    struct runtime rt = {0};
    struct listsync_handler *handler = NULL;
    struct kafka_loop *loop = NULL;
    char errstr[512];
    enum log_level level = LOG_LEVEL_INFO;
    int rc;
    int exit_code = EXIT_FAILURE;

    rc = config_cli(argc, argv, "listsync", LISTSYNC_TOPIC_DEFAULT, &cfg, extra,
                    2);
    if (rc >= 0)
        return rc;
    log_level_parse(cfg.log_level, &level);
    log_init("listsync", level);
    runtime_install_signals(&run);

    if (listsync_mapping_parse(lcfg.mapping, &map, errstr, sizeof(errstr)) !=
        CS_ERR_OK) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_free_config;
    }
    if (runtime_open(&rt, &cfg, errstr, sizeof(errstr)) != CS_ERR_OK) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_free_map;
    }
    struct job_env env = {&cfg, &lcfg, &extra[0], &map, rt.metrics};
    handler = listsync_handler_new(&env, &rt, errstr, sizeof(errstr));
    if (!handler) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_close_runtime;
    }
    struct kl_topic_schema readers[] = {
        {lcfg.membership_topic, LISTSYNC_MEMBERSHIP_SCHEMA},
    };
    struct kl_handler kh = {
        .reader_schema = LISTSYNC_READER_SCHEMA,
        .topic_schemas = readers,
        .ntopic_schemas = 1,
        .process = listsync_handler_process,
        .abandon = listsync_handler_abandon,
        .healthy = listsync_handler_healthy,
        .ctx = handler,
    };
    loop = kafka_loop_new(&cfg, &kh, rt.codec, rt.dlq, rt.metrics, errstr,
                          sizeof(errstr));
    if (!loop) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_free_handler;
    }
    LOG_INFO("started esp=%s batch=%d mapping=%zu attributes", lcfg.esp_kind,
             lcfg.esp_batch_size, map.nnames);
    if (kafka_loop_run(loop, &run) == CS_ERR_OK)
        exit_code = EXIT_SUCCESS;

    kafka_loop_free(loop);
out_free_handler:
    listsync_handler_free(handler);
out_close_runtime:
    runtime_close(&rt);
out_free_map:
    listsync_mapping_free(&map);
out_free_config:
    config_free(&cfg, extra, 2);
    LOG_INFO("stopped exit=%d", exit_code);
    return exit_code;
}
