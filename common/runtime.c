/* runtime - see runtime.h. */
#include "common/runtime.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/avro_codec.h"
#include "common/config.h"
#include "common/crm.h"
#include "common/dlq.h"
#include "common/http.h"
#include "common/idem.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/redis_conn.h"

/* The stop flag lives in the worker's main.c; the handler needs its
 * address, which a signal handler can only get from a static. */
static volatile sig_atomic_t *stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    if (stop_flag)
        *stop_flag = 0;
}

void runtime_install_signals(volatile sig_atomic_t *run)
{
    struct sigaction sa;

    stop_flag = run;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

static enum cs_err open_metrics(struct runtime *rt, char *errstr,
                                size_t errstr_size)
{
    rt->metrics = metrics_new(rt->cfg->worker);
    if (!rt->metrics) {
        snprintf(errstr, errstr_size, "metrics: out of memory");
        return CS_ERR_NOMEM;
    }
    if (rt->cfg->metrics_port == 0)
        return CS_ERR_OK;
    return metrics_serve(rt->metrics, rt->cfg->metrics_port, &rt->metrics_port,
                         errstr, errstr_size);
}

static enum cs_err open_redis(struct runtime *rt, char *errstr,
                              size_t errstr_size)
{
    struct redis_conn_opts opts = {
        .url = rt->cfg->redis_url,
        .timeout_ms = rt->cfg->redis_timeout_ms,
    };
    rt->redis = redis_conn_new(&opts, errstr, errstr_size);
    return rt->redis ? CS_ERR_OK : CS_ERR_CONFIG;
}

static enum cs_err open_idem(struct runtime *rt, char *errstr,
                             size_t errstr_size)
{
    const struct config *cfg = rt->cfg;
    struct idem_opts opts = {
        .ns = cfg->worker,
        .owner = NULL,
        .ttl_days = cfg->idem_ttl_days,
        .buckets_per_day = cfg->idem_buckets_per_day,
        .lease_ms = cfg->idem_lease_ms,
    };
    rt->idem = idem_new(rt->redis, &opts, errstr, errstr_size);
    return rt->idem ? CS_ERR_OK : CS_ERR_CONFIG;
}

struct crm *runtime_crm_new(const struct config *cfg, struct metrics *m,
                            char *errstr, size_t errstr_size)
{
    struct crm_options opts = {
        .kind = cfg->crm_kind,
        .base_url = cfg->crm_base_url,
        .token_url = cfg->crm_token_url,
        .tenant_id = cfg->crm_tenant_id,
        .client_id = cfg->crm_client_id,
        .client_secret = cfg->crm_client_secret,
        .scope = cfg->crm_scope,
        .batch_size = cfg->crm_batch_size,
        .max_in_flight = cfg->crm_max_in_flight,
        .http =
            {
                .connect_timeout_ms = cfg->crm_connect_timeout_ms,
                .timeout_ms = cfg->crm_timeout_ms,
                .max_retries = cfg->crm_max_retries,
                .backoff_base_ms = 100,
                .backoff_max_ms = 2000,
                .max_inline_wait_ms = 2000,
                .tls_verify = cfg->crm_tls_verify,
                .ca_file = cfg->crm_ca_file,
                .user_agent = "crmsync/0.1",
            },
    };
    return crm_new(&opts, m, errstr, errstr_size);
}

static enum cs_err open_crm(struct runtime *rt, char *errstr,
                            size_t errstr_size)
{
    rt->crm = runtime_crm_new(rt->cfg, rt->metrics, errstr, errstr_size);
    return rt->crm ? CS_ERR_OK : CS_ERR_CONFIG;
}

enum cs_err runtime_open(struct runtime *rt, const struct config *cfg,
                         char *errstr, size_t errstr_size)
{
    enum cs_err err;

    memset(rt, 0, sizeof(*rt));
    rt->cfg = cfg;
    err = open_metrics(rt, errstr, errstr_size);
    if (err)
        goto out_close;
    rt->codec = avro_codec_new(cfg->schema_registry_url, cfg->schemas_dir,
                               errstr, errstr_size);
    if (!rt->codec) {
        err = CS_ERR_CONFIG;
        goto out_close;
    }
    err = open_redis(rt, errstr, errstr_size);
    if (err)
        goto out_close;
    err = open_idem(rt, errstr, errstr_size);
    if (err)
        goto out_close;
    err = open_crm(rt, errstr, errstr_size);
    if (err)
        goto out_close;
    rt->dlq = dlq_new(cfg, rt->metrics, errstr, errstr_size);
    if (!rt->dlq) {
        err = CS_ERR_CONFIG;
        goto out_close;
    }
    LOG_INFO("runtime ready metrics_port=%d crm=%s schemas=%s",
             rt->metrics_port, cfg->crm_kind,
             cfg->schema_registry_url[0] ? "registry" : cfg->schemas_dir);
    return CS_ERR_OK;

out_close:
    runtime_close(rt);
    return err;
}

void runtime_close(struct runtime *rt)
{
    dlq_free(rt->dlq);
    crm_free(rt->crm);
    idem_free(rt->idem);
    redis_conn_free(rt->redis);
    avro_codec_free(rt->codec);
    metrics_free(rt->metrics);
    memset(rt, 0, sizeof(*rt));
}
