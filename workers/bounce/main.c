/*
 * crmsync-bounce - ESP unsubscribes, resubscribes, spam complaints and
 * bounces -> consent changes and the bounce status in the CRM.
 *
 * Consumes BounceEvents from crmsync.bounce.events; latest event time wins
 * per (tenant, address, consent) and per address for the bounce status;
 * opted-out and outbounced addresses also land in Redis suppression sets
 * that list-sync consults (docs/bounce.md). Shape as librdkafka's
 * examples/consumer.c: configure, open, loop until SIGTERM, close.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/config.h"
#include "common/kafka_loop.h"
#include "common/log.h"
#include "common/runtime.h"
#include "workers/bounce/handler.h"

static volatile sig_atomic_t run = 1; /* cleared by SIGTERM / SIGINT */

int main(int argc, char **argv)
{
    struct config cfg = {0};             /* shared settings */
    struct bounce_tenant defaults = {0}; /* per-tenant settings' defaults */
    struct bounce_config bcfg = {0};     /* worker-wide settings */
    struct config_section extra[] = {
        {"bounce worker (per tenant)", bounce_tenant_fields,
         bounce_tenant_fields_cnt, &defaults},
        {"bounce worker", bounce_config_fields, bounce_config_fields_cnt,
         &bcfg},
    };
    struct runtime rt = {0}; /* metrics, codec, redis, crm, dlq */
    struct bounce_tenants *tenants = NULL;
    struct bounce_handler *handler = NULL;
    struct kafka_loop *loop = NULL;
    char errstr[512]; /* error detail from any module */
    enum log_level level = LOG_LEVEL_INFO;
    int rc;
    int exit_code = EXIT_FAILURE;

    rc = config_cli(argc, argv, "bounce", BOUNCE_TOPIC_DEFAULT, &cfg, extra, 2);
    if (rc >= 0)
        return rc; /* --help, --check-config or a config error */
    log_level_parse(cfg.log_level, &level);
    log_init("bounce", level);
    runtime_install_signals(&run);

    tenants = bounce_tenants_new(&cfg, &extra[0], errstr, sizeof(errstr));
    if (!tenants) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_free_config;
    }
    if (runtime_open(&rt, &cfg, errstr, sizeof(errstr)) != CS_ERR_OK) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_free_tenants;
    }
    handler = bounce_handler_new(&bcfg, tenants, &rt, errstr, sizeof(errstr));
    if (!handler) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_close_runtime;
    }

    struct kl_handler kh = {
        .reader_schema = BOUNCE_READER_SCHEMA,
        .process = bounce_handler_process,
        .abandon = bounce_handler_abandon,
        .idle = bounce_handler_idle,
        .healthy = bounce_handler_healthy,
        .ctx = handler,
    };
    loop = kafka_loop_new(&cfg, &kh, rt.codec, rt.dlq, rt.metrics, errstr,
                          sizeof(errstr));
    if (!loop) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_free_handler;
    }

    LOG_INFO("started consent.model=%s tenants_configured=%zu "
             "batch_max_messages=%d",
             defaults.consent_model, config_tenant_count(&cfg),
             cfg.batch_max_messages);
    if (kafka_loop_run(loop, &run) == CS_ERR_OK)
        exit_code = EXIT_SUCCESS;

    kafka_loop_free(loop);
out_free_handler:
    bounce_handler_free(handler);
out_close_runtime:
    runtime_close(&rt);
out_free_tenants:
    bounce_tenants_free(tenants);
out_free_config:
    config_free(&cfg, extra, 2);
    LOG_INFO("stopped exit=%d", exit_code);
    return exit_code;
}
