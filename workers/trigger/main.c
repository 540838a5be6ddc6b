/*
 * crmsync-trigger - triggers start journeys; journeys fire CRM custom
 * triggers, ESP mails, CRM tasks and events, with waits, reminders,
 * branches and exits (docs/trigger.md).
 *
 * Two threads: the consumer loop (handler.c: starts and moves journey
 * instances in Redis) and the timer thread (timer.c: fires due timers and
 * executes actions). Shape as librdkafka's examples/consumer.c:
 * configure, open, loop until SIGTERM, close.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/config.h"
#include "common/kafka_loop.h"
#include "common/log.h"
#include "common/runtime.h"
#include "workers/trigger/handler.h"
#include "workers/trigger/instance.h"
#include "workers/trigger/timer.h"

static volatile sig_atomic_t run = 1; /* cleared by SIGTERM / SIGINT */

int main(int argc, char **argv)
{
    struct config cfg = {0};
    struct trigger_config tc = {0};
    struct config_section extra[] = {
        {"trigger worker", trigger_config_fields, trigger_config_fields_cnt,
         &tc},
    };
    struct journey_set js = {0};
    struct runtime rt = {0};
    struct timer *timer = NULL;
    struct trigger_handler *handler = NULL;
    struct kafka_loop *loop = NULL;
    char errstr[512];
    enum log_level level = LOG_LEVEL_INFO;
    int rc;
    int exit_code = EXIT_FAILURE;

    rc = config_cli(argc, argv, "trigger", TRIGGER_TOPIC_DEFAULT, &cfg, extra,
                    1);
    if (rc >= 0)
        return rc;
    log_level_parse(cfg.log_level, &level);
    log_init("trigger", level);
    runtime_install_signals(&run);

    if (journey_set_load(tc.journeys, &js, errstr, sizeof(errstr)) !=
        CS_ERR_OK) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_free_config;
    }
    for (size_t i = 0; i < js.n; i++)
        for (size_t k = i + 1; k < js.n; k++)
            if (instance_journey_hash(js.j[i].id) ==
                instance_journey_hash(js.j[k].id)) {
                LOG_ERROR("startup failed: journeys '%s' and '%s' have the "
                          "same 32-bit hash (instances store it): rename one",
                          js.j[i].id, js.j[k].id);
                goto out_free_journeys;
            }
    if (runtime_open(&rt, &cfg, errstr, sizeof(errstr)) != CS_ERR_OK) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_free_journeys;
    }
    timer =
        timer_start(&cfg, &tc, &js, rt.metrics, &run, errstr, sizeof(errstr));
    if (!timer) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_close_runtime;
    }
    handler = trigger_handler_new(&js, rt.redis, rt.metrics, timer);
    if (!handler) {
        LOG_ERROR("startup failed: out of memory");
        goto out_stop_timer;
    }
    struct kl_handler kh = {
        .reader_schema = TRIGGER_READER_SCHEMA,
        .process = trigger_handler_process,
        .healthy = trigger_handler_healthy,
        .ctx = handler,
    };
    loop = kafka_loop_new(&cfg, &kh, rt.codec, rt.dlq, rt.metrics, errstr,
                          sizeof(errstr));
    if (!loop) {
        LOG_ERROR("startup failed: %s", errstr);
        goto out_free_handler;
    }
    LOG_INFO("started journeys=%zu tick_ms=%d lease_ms=%d", js.n, tc.tick_ms,
             tc.lease_ms);
    if (kafka_loop_run(loop, &run) == CS_ERR_OK)
        exit_code = EXIT_SUCCESS;

    kafka_loop_free(loop);
out_free_handler:
    trigger_handler_free(handler);
out_stop_timer:
    timer_stop(timer);
out_close_runtime:
    runtime_close(&rt);
out_free_journeys:
    journey_set_free(&js);
out_free_config:
    config_free(&cfg, extra, 1);
    LOG_INFO("stopped exit=%d", exit_code);
    return exit_code;
}
