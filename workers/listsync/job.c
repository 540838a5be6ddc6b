/*
 * job - one list-sync job in its own thread (see job.h, docs/listsync.md).
 *
 * Phases: begin (job record + list lease) -> barrier -> list record ->
 * clear -> per page: filter (state, address, consent, suppression, dedupe),
 * map, addAll3 in batches, feedback of refused recipients, lease renewal
 * -> logout -> report (list record, results topic) -> end.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/avro_codec.h"
#include "common/crm.h"
#include "common/esp.h"
#include "common/kafka_barrier.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/odata.h"
#include "common/producer.h"
#include "common/redis_conn.h"
#include "common/runtime.h"
#include "common/email.h"
#include "common/isotime.h"
#include "workers/listsync/filter.h"
#include "workers/listsync/job.h"
#include "workers/listsync/members.h"
#include "workers/listsync/store.h"

#define NCODES      8
#define PROGRESS_MS 5000
#define EMAIL_MAX   255

struct counts {
    long read, invalid_email, inactive, qualified, outbounced, suppressed,
        no_consent, duplicates, sent, codes[NCODES], feedback;
};

struct job {
    struct job_env env;
    struct listsync_tenant tn;   /* this request's tenant settings (owned) */
    struct listsync_request req; /* owned */
    pthread_t thread;
    _Atomic int state;
    atomic_bool stop;
    enum cs_err err;
    char reason[512];
    long attempt;
    bool restarted;
    struct counts c;
    struct list_meta meta;
    int64_t started_ms;
    /* handles, owned by the thread while it runs */
    struct crm *crm;
    struct esp *esp;
    struct redis_conn *redis;
    struct producer *producer;
    struct avro_codec *codec;
    struct store store;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void fail(struct job *j, enum cs_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(struct job *j, enum cs_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->reason, sizeof(j->reason), fmt, ap);
    va_end(ap);
    j->err = err;
}

/* ---- status ---- */

static json_t *status_json(const struct job *j, const char *state)
{
    static const char *const code_names[NCODES] = {
        "inserted",    "validation_failed", "unsubscribed",
        "blacklisted", "bounce_overflowed", "already_in_list",
        "filtered",    "general_error"};
    json_t *filtered = json_pack("{s:i,s:i,s:i,s:i,s:i,s:i}", "invalid_email",
                                 j->c.invalid_email, "inactive", j->c.inactive,
                                 "qualified_lead", j->c.qualified, "outbounced",
                                 j->c.outbounced, "suppressed", j->c.suppressed,
                                 "no_consent", j->c.no_consent);
    json_t *codes = json_object();
    long refused = 0;
    char iso[40];

    for (int i = 0; i < NCODES; i++) {
        json_object_set_new(codes, code_names[i], json_integer(j->c.codes[i]));
        if (i != 0 && i != 5)
            refused += j->c.codes[i];
    }
    isotime_format(now_ms(), iso, sizeof(iso));
    return json_pack(
        "{s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:b,s:s,s:i,s:o,s:i,s:i,s:i,s:i,s:o,"
        "s:i,s:I,s:s}",
        "state", state, "reason", j->reason, "request", j->req.event_id,
        "tenant", j->req.tenant, "crm_list_id", j->req.list_id, "esp_list_id",
        j->req.esp_list, "attempt", (int)j->attempt, "restarted", j->restarted,
        "list_name", j->meta.name, "read", (int)j->c.read, "filtered", filtered,
        "duplicates", (int)j->c.duplicates, "sent", (int)j->c.sent, "accepted",
        (int)j->c.codes[0], "refused", (int)refused, "codes", codes,
        "feedback_events", (int)j->c.feedback, "duration_ms",
        (json_int_t)(now_ms() - j->started_ms), "finished_at", iso);
}

/* Writes the status to the list record and the results topic; a final
 * state also ends the job record (later copies of the request are
 * duplicates). */
static void report(struct job *j, const char *state, bool final)
{
    const struct listsync_config *lc = j->env.lc;
    json_t *st = status_json(j, state);
    char *text = json_dumps(st, JSON_COMPACT);
    char errstr[256];

    LOG_INFO("job %s list=%s esp_list=%s state=%s status=%s", j->req.event_id,
             j->req.list_id, j->req.esp_list, state, text ? text : "");
    if (text && lc->status_field[0] && j->crm) {
        json_t *b = json_object();
        char iso[40];
        struct crm_op op = {.method = "PATCH", .flags = CRM_OP_UPDATE_ONLY};
        char path[64];
        json_object_set_new(b, lc->status_field, json_string(text));
        if (lc->synced_field[0]) {
            isotime_format(now_ms(), iso, sizeof(iso));
            json_object_set_new(b, lc->synced_field, json_string(iso));
        }
        snprintf(path, sizeof(path), "lists(%s)", j->req.list_id);
        op.path = path;
        op.body = json_dumps(b, JSON_COMPACT);
        if (j->crm->ops->execute(j->crm->self, &op, 1, errstr,
                                 sizeof(errstr)) != CS_ERR_OK ||
            op.result != CRM_OP_OK)
            LOG_WARN("job %s: status not written to the list: %s %s",
                     j->req.event_id, errstr, op.error);
        free(op.body);
        json_decref(op.response);
        json_decref(b);
    }
    if (text && j->producer && lc->results_topic[0]) {
        producer_send(j->producer, lc->results_topic, j->req.list_id,
                      strlen(j->req.list_id), text, strlen(text));
        if (producer_flush(j->producer, 10000, errstr, sizeof(errstr)))
            LOG_WARN("job %s: status not produced: %s", j->req.event_id,
                     errstr);
    }
    if (text)
        store_end(&j->store, final ? state : NULL, text,
                  j->env.lc->job_ttl_days * 86400, errstr, sizeof(errstr));
    free(text);
    json_decref(st);
}

/* ---- phases ---- */

static bool open_handles(struct job *j)
{
    const struct config *cfg = j->env.cfg;
    const struct listsync_config *lc = j->env.lc;
    struct redis_conn_opts ro = {cfg->redis_url, cfg->redis_timeout_ms};
    struct esp_options eo = {
        .kind = lc->esp_kind,
        .base_url = lc->esp_base_url,
        .mandator_id = lc->esp_mandator,
        .user = lc->esp_user,
        .password = lc->esp_password,
        .http = {.connect_timeout_ms = 5000,
                 .timeout_ms = lc->esp_timeout_ms,
                 .max_retries = lc->esp_max_retries,
                 .backoff_base_ms = 200,
                 .backoff_max_ms = 5000,
                 .max_inline_wait_ms = 5000,
                 .tls_verify = true,
                 .user_agent = "crmsync/0.1"},
    };
    char errstr[256];

    j->crm = runtime_crm_new(cfg, j->env.metrics, errstr, sizeof(errstr));
    if (j->crm)
        j->esp = esp_new(&eo, j->env.metrics, errstr, sizeof(errstr));
    if (j->esp)
        j->redis = redis_conn_new(&ro, errstr, sizeof(errstr));
    if (j->redis)
        j->producer = producer_new(cfg, errstr, sizeof(errstr));
    if (j->producer)
        j->codec = avro_codec_new(cfg->schema_registry_url, cfg->schemas_dir,
                                  errstr, sizeof(errstr));
    if (!j->codec) {
        fail(j, CS_ERR_CONFIG, "startup: %s", errstr);
        return false;
    }
    store_init(&j->store, j->redis, j->req.tenant, j->req.event_id,
               j->req.esp_list);
    return true;
}

static void close_handles(struct job *j)
{
    avro_codec_free(j->codec);
    producer_free(j->producer);
    redis_conn_free(j->redis);
    esp_free(j->esp);
    crm_free(j->crm);
}

/* Waits for the bounce worker's group; false on timeout/stop. */
static bool barrier(struct job *j)
{
    const struct listsync_config *lc = j->env.lc;
    struct kafka_barrier *b;
    int64_t deadline = now_ms() + (int64_t)lc->barrier_timeout_s * 1000;
    char errstr[256] = "";
    bool reached = false;
    int64_t behind = 0;

    if (!lc->barrier_topics[0])
        return true;
    b = kafka_barrier_new(j->env.cfg, lc->barrier_group, errstr,
                          sizeof(errstr));
    if (!b) {
        fail(j, CS_ERR_CONFIG, "barrier: %s", errstr);
        return false;
    }
    while (!atomic_load(&j->stop)) {
        bool ours = true;
        char lease_err[128];
        enum cs_err err =
            kafka_barrier_check(b, lc->barrier_topics, j->req.requested_at,
                                &reached, &behind, errstr, sizeof(errstr));
        /* Waiting is part of the job: keep the ESP list's lease. */
        if (store_renew(&j->store, lc->lease_ms, "{\"phase\":\"barrier\"}",
                        &ours, lease_err, sizeof(lease_err)) == CS_ERR_OK &&
            !ours) {
            fail(j, CS_ERR_IN_FLIGHT, "lease on the ESP list lost");
            reached = false;
            break;
        }
        if (err == CS_ERR_OK && reached)
            break;
        if (now_ms() > deadline) {
            fail(j, CS_ERR_BARRIER_TIMEOUT,
                 "barrier-timeout: group %s is %lld message(s) behind %s as "
                 "of the request after %d s%s%s",
                 lc->barrier_group, (long long)behind, lc->barrier_topics,
                 lc->barrier_timeout_s, err ? ": " : "", err ? errstr : "");
            break;
        }
        sleep_ms(500);
    }
    kafka_barrier_free(b);
    return reached && !atomic_load(&j->stop);
}

/* Calls add_all, splitting on a too-large fault, retrying transient
 * failures with backoff; counts codes. */
static enum cs_err send_batch(struct job *j, const char *const *names,
                              size_t nattrs, struct esp_recipient *r, size_t n,
                              int *codes)
{
    char errstr[512];
    long wait = 500;
    enum cs_err err = CS_ERR_OK;

    for (int attempt = 0; attempt <= j->env.lc->esp_max_retries; attempt++) {
        if (atomic_load(&j->stop))
            return CS_ERR_SHUTDOWN;
        err = j->esp->ops->add_all(j->esp->self, j->req.esp_list,
                                   j->env.lc->esp_optin, names, nattrs, r, n,
                                   codes, errstr, sizeof(errstr));
        if (err == CS_ERR_ESP_BATCH_TOO_LARGE && n > 1) {
            size_t h = n / 2;
            err = send_batch(j, names, nattrs, r, h, codes);
            if (err == CS_ERR_OK)
                err = send_batch(j, names, nattrs, r + h, n - h, codes + h);
            return err;
        }
        if (err == CS_ERR_OK || !cs_err_retryable(err))
            break;
        LOG_WARN("job %s: addAll3 failed, retrying in %ld ms: %s",
                 j->req.event_id, wait, errstr);
        sleep_ms(wait);
        wait = wait * 2 > 30000 ? 30000 : wait * 2;
    }
    if (err)
        fail(j, err, "esp: addAll3: %s", errstr);
    return err;
}

/* Produces an opt-out / outbounce for a recipient the ESP refused. */
static void feedback(struct job *j, const char *email, const char *entity,
                     const char *id, int code)
{
    char errstr[256];

    if (listsync_feedback(j->codec, j->producer, j->env.lc->feedback_topic,
                          j->req.tenant, j->req.consent_id, j->req.event_id,
                          j->req.esp_list, email, entity, id, code, errstr,
                          sizeof(errstr)))
        j->c.feedback++;
    else
        LOG_WARN("job %s: feedback event not produced: %s", j->req.event_id,
                 errstr);
}

/* Per-page scratch. */
struct page {
    size_t n, cap;
    json_t **rows; /* borrowed from the reader's page */
    char (*email)[EMAIL_MAX];
    const char **ids;
    const char **emails;
    bool *ok;
    enum page_code *pc;
};

static bool page_reserve(struct page *p, size_t n)
{
    if (n <= p->cap)
        return true;
    p->rows = realloc(p->rows, n * sizeof(*p->rows));
    p->email = realloc(p->email, n * sizeof(*p->email));
    p->ids = realloc(p->ids, n * sizeof(*p->ids));
    p->emails = realloc(p->emails, n * sizeof(*p->emails));
    p->ok = realloc(p->ok, n * sizeof(*p->ok));
    p->pc = realloc(p->pc, n * sizeof(*p->pc));
    p->cap = n;
    return p->rows && p->email && p->ids && p->emails && p->ok && p->pc;
}

static void page_free(struct page *p)
{
    free(p->rows);
    free(p->email);
    free(p->ids);
    free(p->emails);
    free(p->ok);
    free(p->pc);
}

/* Moves member @p from to slot @p to (to <= from) while compacting. */
static void page_keep(struct page *p, size_t to, size_t from)
{
    p->rows[to] = p->rows[from];
    p->ids[to] = p->ids[from];
    memmove(p->email[to], p->email[from], EMAIL_MAX);
    p->emails[to] = p->email[to];
}

/* Filters the page's rows; the survivors stay in p (compacted). */
static bool filter_page(struct job *j, json_t *rows, struct page *p, int model)
{
    const char *key = members_keys[j->meta.set];
    bool history = strcmp(j->tn.consent_model, "history") == 0;
    size_t k = 0;
    char errstr[512];
    enum cs_err err;

    if (!page_reserve(p, json_array_size(rows) + 1))
        return false;
    for (size_t i = 0; i < json_array_size(rows); i++) {
        json_t *row = json_array_get(rows, i);
        const char *id = json_string_value(json_object_get(row, key));
        const char *email =
            json_string_value(json_object_get(row, "emailaddress1"));
        json_int_t st = json_integer_value(json_object_get(row, "statecode"));
        j->c.read++;
        if (!id || !email || !email_normalize(email, p->email[k], EMAIL_MAX)) {
            j->c.invalid_email++;
            continue;
        }
        if (j->meta.set == 2 && st == 1) {
            j->c.qualified++;
            continue;
        }
        if (st != 0) {
            j->c.inactive++;
            continue;
        }
        p->rows[k] = row;
        p->ids[k] = id;
        p->emails[k] = p->email[k];
        k++;
    }
    p->n = k;
    err = filter_consent(j->crm, j->env.lc, history, model, j->req.consent_id,
                         j->meta.set, p->ids, p->emails, p->n, p->ok, errstr,
                         sizeof(errstr));
    if (err) {
        fail(j, err, "crm: consent query: %s", errstr);
        return false;
    }
    k = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (!p->ok[i]) {
            j->c.no_consent++;
            continue;
        }
        page_keep(p, k++, i);
    }
    p->n = k;
    err = store_page(&j->store, j->req.tenant, j->req.consent_id, p->emails,
                     p->n, true, p->pc, errstr, sizeof(errstr));
    if (err) {
        fail(j, err, "redis: %s", errstr);
        return false;
    }
    k = 0;
    for (size_t i = 0; i < p->n; i++) {
        switch (p->pc[i]) {
        case PAGE_OUTBOUNCED:
            j->c.outbounced++;
            continue;
        case PAGE_SUPPRESSED:
            j->c.suppressed++;
            continue;
        case PAGE_DUP:
            j->c.duplicates++;
            continue;
        default:
            break;
        }
        page_keep(p, k++, i);
    }
    p->n = k;
    return true;
}

/* Maps and sends the page's survivors in ESP batches. */
static bool send_page(struct job *j, struct page *p)
{
    const struct listsync_mapping *m = j->env.map;
    size_t bs = (size_t)j->env.lc->esp_batch_size;
    const char *entity = members_entities[j->meta.set];
    struct esp_recipient *r = calloc(bs, sizeof(*r));
    char **vals = calloc(bs * m->nnames, sizeof(*vals));
    int *codes = calloc(bs, sizeof(*codes));
    bool ok = r && vals && codes;

    for (size_t from = 0; ok && from < p->n; from += bs) {
        size_t n = p->n - from < bs ? p->n - from : bs;
        for (size_t i = 0; ok && i < n; i++) {
            json_t *row = p->rows[from + i];
            const char *lang = NULL;
            if (j->env.lc->language_field[0])
                lang = json_string_value(
                    json_object_get(row, j->env.lc->language_field));
            struct map_ctx ctx = {j->env.lc,
                                  lang && *lang ? lang : j->tn.default_language,
                                  j->req.consent_id,
                                  j->meta.name,
                                  entity,
                                  p->ids[from + i]};
            ok = listsync_map_member(m, &ctx, row, &vals[i * m->nnames]);
            r[i].id = p->emails[from + i];
            r[i].email = p->emails[from + i];
            r[i].values = (const char *const *)&vals[i * m->nnames];
        }
        if (ok && send_batch(j, (const char *const *)m->names, m->nnames, r, n,
                             codes) != CS_ERR_OK)
            ok = false;
        for (size_t i = 0; ok && i < n; i++) {
            int c = codes[i] >= 0 && codes[i] < NCODES ? codes[i] : 7;
            j->c.codes[c]++;
            if (c == ESP_ADD_UNSUBSCRIBED || c == ESP_ADD_BLACKLISTED ||
                c == ESP_ADD_BOUNCE_OVERFLOWED)
                feedback(j, p->emails[from + i], entity, p->ids[from + i], c);
        }
        if (ok)
            j->c.sent += (long)n;
        for (size_t i = 0; i < n; i++)
            listsync_values_free(&vals[i * m->nnames], m->nnames);
        memset(vals, 0, bs * m->nnames * sizeof(*vals));
    }
    if (!ok && !j->reason[0])
        fail(j, CS_ERR_NOMEM, "out of memory");
    free(codes);
    free(vals);
    free(r);
    return ok;
}

static void progress(struct job *j, int64_t *last)
{
    char text[256];
    double pct = j->meta.membercount > 0
                     ? 100.0 * (double)j->c.read / (double)j->meta.membercount
                     : 0;
    double secs = (double)(now_ms() - j->started_ms) / 1000.0;
    bool ours = true;
    char errstr[256];

    metrics_gauge_set(j->env.metrics, "crmsync_listsync_job_members",
                      "state=\"read\"", (double)j->c.read);
    metrics_gauge_set(j->env.metrics, "crmsync_listsync_job_members",
                      "state=\"sent\"", (double)j->c.sent);
    metrics_gauge_set(j->env.metrics, "crmsync_listsync_job_progress_ratio",
                      NULL, pct / 100.0);
    snprintf(text, sizeof(text), "{\"read\":%ld,\"sent\":%ld,\"percent\":%.1f}",
             j->c.read, j->c.sent, pct);
    if (store_renew(&j->store, j->env.lc->lease_ms, text, &ours, errstr,
                    sizeof(errstr)) == CS_ERR_OK &&
        !ours) {
        fail(j, CS_ERR_IN_FLIGHT, "lease on the ESP list lost");
        atomic_store(&j->stop, true);
    }
    if (now_ms() - *last >= PROGRESS_MS) {
        LOG_INFO("job %s progress read=%ld sent=%ld percent=%.1f rate=%.0f/s",
                 j->req.event_id, j->c.read, j->c.sent, pct,
                 secs > 0 ? (double)j->c.read / secs : 0);
        *last = now_ms();
    }
}

/* The refresh itself; returns the final state. */
static enum job_state refresh(struct job *j)
{
    const struct listsync_config *lc = j->env.lc;
    char *select = NULL;
    struct members *mr = NULL;
    struct page p = {0};
    json_t *rows;
    enum cs_err err = CS_ERR_OK;
    char errstr[512];
    int model = 0;
    int64_t last = now_ms();
    bool history = strcmp(j->tn.consent_model, "history") == 0;
    enum job_state result = JOB_FAILED;

    if (!barrier(j))
        return atomic_load(&j->stop)      ? JOB_INTERRUPTED
               : cs_err_retryable(j->err) ? JOB_RETRY
                                          : JOB_FAILED;
    select = listsync_mapping_select(j->env.map);
    if (select && lc->language_field[0]) {
        char *s2 = malloc(strlen(select) + strlen(lc->language_field) + 2);
        if (s2)
            snprintf(s2, strlen(select) + strlen(lc->language_field) + 2,
                     "%s%s%s", select, select[0] ? "," : "",
                     lc->language_field);
        free(select);
        select = s2;
    }
    mr = members_open(j->crm, j->req.list_id, select ? select : "",
                      lc->page_size, &j->meta, &err, errstr, sizeof(errstr));
    if (!mr) {
        fail(j, err, "crm: list %s: %s", j->req.list_id, errstr);
        result = cs_err_retryable(err) ? JOB_RETRY : JOB_FAILED;
        goto out_free;
    }
    if (!history &&
        (err = filter_purpose_model(j->crm, j->req.consent_id, &model, errstr,
                                    sizeof(errstr))) != CS_ERR_OK) {
        fail(j, err, "crm: purpose %s: %s", j->req.consent_id, errstr);
        result = cs_err_retryable(err) ? JOB_RETRY : JOB_FAILED;
        goto out_free;
    }
    err = j->esp->ops->clear(j->esp->self, j->req.esp_list, errstr,
                             sizeof(errstr));
    if (err) {
        fail(j, err, "esp: clear: %s", errstr);
        result = cs_err_retryable(err) ? JOB_RETRY : JOB_FAILED;
        goto out_free;
    }
    LOG_INFO("job %s cleared esp_list=%s (list '%s', %ld members)",
             j->req.event_id, j->req.esp_list, j->meta.name,
             j->meta.membercount);
    /* From here on the ESP list is incomplete until the job ends: a
       failure restarts it from the beginning (clear + refill). */
    for (;;) {
        if (atomic_load(&j->stop)) {
            result = JOB_INTERRUPTED;
            goto out_free;
        }
        for (int attempt = 0;; attempt++) {
            err = members_next(mr, &rows, errstr, sizeof(errstr));
            if (err == CS_ERR_OK || !cs_err_retryable(err) ||
                attempt >= lc->esp_max_retries || atomic_load(&j->stop))
                break;
            sleep_ms(500L << (attempt < 6 ? attempt : 6));
        }
        if (err) {
            fail(j, err, "crm: reading members: %s", errstr);
            goto out_free;
        }
        if (!rows || json_array_size(rows) == 0)
            break;
        if (!filter_page(j, rows, &p, model) || !send_page(j, &p))
            goto out_free;
        progress(j, &last);
    }
    if (producer_flush(j->producer, 10000, errstr, sizeof(errstr)))
        LOG_WARN("job %s: feedback events not all delivered: %s",
                 j->req.event_id, errstr);
    j->esp->ops->logout(j->esp->self);
    result = JOB_DONE;
out_free:
    page_free(&p);
    members_free(mr);
    free(select);
    /* A dependency that stays down (after the inline retries) pauses the
       request instead of failing it: the job starts over later. */
    if (result == JOB_FAILED && cs_err_retryable(j->err))
        result = JOB_RETRY;
    return result;
}

static void *run(void *arg)
{
    struct job *j = arg;
    enum store_begin b = STORE_START;
    enum job_state st = JOB_RETRY;
    char errstr[256];

    if (!open_handles(j))
        goto out_close;
    if (store_begin(&j->store, j->env.lc->lease_ms, &b, &j->attempt, errstr,
                    sizeof(errstr)) != CS_ERR_OK) {
        fail(j, CS_ERR_REDIS_UNAVAILABLE, "redis: %s", errstr);
        goto out_close;
    }
    if (b == STORE_FINISHED) {
        st = JOB_DUPLICATE;
        goto out_close;
    }
    if (b == STORE_BUSY) {
        fail(j, CS_ERR_IN_FLIGHT, "another worker runs ESP list %s",
             j->req.esp_list);
        st = JOB_BUSY;
        goto out_close;
    }
    j->restarted = b == STORE_RESTART;
    LOG_INFO("job %s started list=%s esp_list=%s consent=%s attempt=%ld%s",
             j->req.event_id, j->req.list_id, j->req.esp_list,
             j->req.consent_id, j->attempt,
             j->restarted ? " (restarted after interruption)" : "");
    st = refresh(j);
    if (st == JOB_DONE) {
        snprintf(j->reason, sizeof(j->reason), "%s",
                 j->restarted ? "restarted after interruption" : "");
        report(j, "done", true);
        if (j->req.incremental) {
            /* From now on membership events keep this list up to date. */
            struct store_registration reg = {.set = j->meta.set};
            snprintf(reg.esp_list, sizeof(reg.esp_list), "%s", j->req.esp_list);
            snprintf(reg.consent, sizeof(reg.consent), "%s", j->req.consent_id);
            snprintf(reg.name, sizeof(reg.name), "%s", j->meta.name);
            if (store_register(j->redis, j->req.tenant, j->req.list_id, &reg,
                               errstr, sizeof(errstr)) != CS_ERR_OK)
                LOG_WARN("job %s: list not registered for incremental "
                         "updates: %s",
                         j->req.event_id, errstr);
        }
    } else if (st == JOB_FAILED) {
        report(j, "failed", true);
    } else if (st == JOB_RETRY) {
        report(j, "retrying", false); /* also drops the lease */
    } else {
        /* interrupted / transient: the next attempt starts over */
        store_end(&j->store, NULL, NULL, 0, errstr, sizeof(errstr));
    }
out_close:
    close_handles(j);
    atomic_store(&j->state, st);
    return NULL;
}

struct job *job_start(const struct job_env *env, struct listsync_request *req,
                      char *errstr, size_t errstr_size)
{
    struct job *j = calloc(1, sizeof(*j));

    if (!j) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    j->env = *env;
    if (config_tenant_section(env->cfg, env->tenant_sec, req->tenant, &j->tn,
                              errstr, errstr_size) != CS_ERR_OK) {
        free(j);
        return NULL;
    }
    j->req = *req;
    memset(req, 0, sizeof(*req));
    j->started_ms = now_ms();
    atomic_store(&j->state, JOB_RUNNING);
    if (pthread_create(&j->thread, NULL, run, j) != 0) {
        snprintf(errstr, errstr_size, "cannot start the job thread");
        listsync_request_free(&j->req);
        config_section_free(env->tenant_sec, &j->tn);
        free(j);
        return NULL;
    }
    return j;
}

enum job_state job_state(const struct job *j)
{
    return (enum job_state)atomic_load(&j->state);
}

const char *job_reason(const struct job *j)
{
    return j->reason;
}

enum cs_err job_err(const struct job *j)
{
    return j->err;
}

bool job_is(const struct job *j, const char *tenant, const char *event_id)
{
    return strcmp(j->req.tenant, tenant) == 0 &&
           strcmp(j->req.event_id, event_id) == 0;
}

void job_stop(struct job *j)
{
    if (j)
        atomic_store(&j->stop, true);
}

void job_free(struct job *j)
{
    if (!j)
        return;
    job_stop(j);
    pthread_join(j->thread, NULL);
    listsync_request_free(&j->req);
    config_section_free(j->env.tenant_sec, &j->tn);
    free(j);
}
