/*
 * handler - one batch of response events through idempotency and the CRM.
 *
 * Per batch: read + validate each event (invalid -> dead letter), decide
 * skips, claim every effect key in Redis, write the new campaign responses
 * in $batch requests as create-only upserts keyed by a UUIDv5 of the effect
 * key (so even with Redis wiped a replay can never create a second record:
 * the CRM answers 412 "exists"), then remember the written keys as done.
 * Redis or CRM outages turn the affected items into KL_RETRY; the loop
 * pauses and retries them.
 *
 * One Redis round trip per batch: the done markers (and releases of
 * rejected claims) of batch N are carried and written by the same script
 * call that claims batch N+1 (idem_settle_claim). When no batch follows
 * they are flushed from the loop's idle hook, on abandon and at shutdown.
 * Losing carried markers (crash) only costs a 412 on a later duplicate.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/crm.h"
#include "common/idem.h"
#include "common/kafka_loop.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/odata.h"
#include "common/redis_conn.h"
#include "common/runtime.h"
#include "workers/response/response.h"

#define KEY_MAX        512
#define CARRY_GRACE_MS 250 /* idle time before carried markers are flushed */

struct tenant_mode {
    char *tenant; /* owned */
    bool unique;
};

/* Idempotency keys waiting for the next Redis round trip. */
struct carry {
    struct idem_key *keys; /* owned; keys[i].id points into ids[i] */
    char (*ids)[KEY_MAX];  /* owned */
    size_t n;
    size_t cap;
};

struct response_handler {
    const struct response_config *rc; /* borrowed */
    struct runtime *rt;               /* borrowed */
    bool unique_default;
    struct tenant_mode *modes; /* owned */
    size_t nmodes;
    struct carry done;     /* written effects, to be marked done */
    struct carry release;  /* rejected effects, claims to give back */
    int64_t carry_since;   /* monotonic ms of the oldest carried key */
    int64_t next_flush;    /* monotonic ms of the next idle flush try */
    long flush_backoff_ms; /* grows while Redis is unreachable */
};

/* Per-item scratch for one batch. */
struct work {
    struct kl_item *it;
    struct response_event ev;
    char key[KEY_MAX];
    char activityid[37];
    struct crm_op op;
    bool candidate; /* needs a claim */
};

static enum cs_err parse_tenant_modes(struct response_handler *h,
                                      const char *spec, char *errstr,
                                      size_t errstr_size)
{
    char *copy = strdup(spec);
    char *save = NULL;

    if (!copy)
        return CS_ERR_NOMEM;
    for (char *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        struct tenant_mode *modes;
        while (*tok == ' ')
            tok++;
        if (!eq || eq == tok ||
            (strcmp(eq + 1, "all") != 0 && strcmp(eq + 1, "unique") != 0)) {
            snprintf(errstr, errstr_size,
                     "response.tenant_modes: bad entry '%s' (want "
                     "tenant=all|unique)",
                     tok);
            free(copy);
            return CS_ERR_CONFIG;
        }
        *eq = '\0';
        modes = realloc(h->modes, (h->nmodes + 1) * sizeof(*modes));
        if (!modes) {
            free(copy);
            return CS_ERR_NOMEM;
        }
        h->modes = modes;
        h->modes[h->nmodes].tenant = strdup(tok);
        h->modes[h->nmodes].unique = strcmp(eq + 1, "unique") == 0;
        h->nmodes++;
    }
    free(copy);
    return CS_ERR_OK;
}

struct response_handler *response_handler_new(const struct response_config *rc,
                                              struct runtime *rt, char *errstr,
                                              size_t errstr_size)
{
    struct response_handler *h = calloc(1, sizeof(*h));

    if (!h) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    h->rc = rc;
    h->rt = rt;
    h->unique_default = strcmp(rc->mode, "unique") == 0;
    h->flush_backoff_ms = 100;
    if (parse_tenant_modes(h, rc->tenant_modes, errstr, errstr_size)) {
        response_handler_free(h);
        return NULL;
    }
    return h;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool carry_add(struct carry *c, const char *id, int64_t event_ms)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        struct idem_key *keys = realloc(c->keys, cap * sizeof(*keys));
        char(*ids)[KEY_MAX];
        if (!keys)
            return false;
        c->keys = keys;
        ids = realloc(c->ids, cap * sizeof(*ids));
        if (!ids)
            return false;
        c->ids = ids;
        c->cap = cap;
        /* ids moved: re-point every key at its string. */
        for (size_t i = 0; i < c->n; i++)
            c->keys[i].id = c->ids[i];
    }
    snprintf(c->ids[c->n], KEY_MAX, "%s", id);
    c->keys[c->n].id = c->ids[c->n];
    c->keys[c->n].event_ms = event_ms;
    c->n++;
    return true;
}

/*
 * One round trip: the carried done markers and releases, plus `claims`
 * (may be 0). On success the carry is empty; on failure it is kept for the
 * next try.
 */
static enum cs_err settle_claim(struct response_handler *h,
                                const struct idem_key *claims, size_t nc,
                                enum idem_state *out, char *errstr,
                                size_t errstr_size)
{
    enum cs_err err;

    if (h->done.n + h->release.n + nc == 0)
        return CS_ERR_OK;
    err =
        idem_settle_claim(h->rt->idem, h->done.keys, h->done.n, h->release.keys,
                          h->release.n, claims, nc, out, errstr, errstr_size);
    metrics_counter_add(h->rt->metrics, "crmsync_redis_round_trips_total", NULL,
                        1);
    if (err == CS_ERR_OK) {
        h->done.n = 0;
        h->release.n = 0;
        h->carry_since = 0;
    }
    return err;
}

void response_handler_idle(void *ctx)
{
    struct response_handler *h = ctx;
    int64_t now = mono_ms();
    char errstr[256];

    /* A short grace lets a following batch carry the markers instead. */
    if (h->done.n + h->release.n == 0 || now < h->next_flush ||
        now - h->carry_since < CARRY_GRACE_MS)
        return;
    if (settle_claim(h, NULL, 0, NULL, errstr, sizeof(errstr)) == CS_ERR_OK) {
        h->flush_backoff_ms = 100;
        return;
    }
    /* Redis is down: the next batch's claim will pause the loop; until
     * then try again now and then, not every poll. */
    LOG_WARN("could not write %zu done markers yet: %s", h->done.n, errstr);
    h->next_flush = now + h->flush_backoff_ms;
    if (h->flush_backoff_ms < 5000)
        h->flush_backoff_ms *= 2;
}

void response_handler_free(struct response_handler *h)
{
    char errstr[256];

    if (!h)
        return;
    if (settle_claim(h, NULL, 0, NULL, errstr, sizeof(errstr)) != CS_ERR_OK)
        LOG_WARN("done markers lost at shutdown (the CRM still guards "
                 "against duplicates): %s",
                 errstr);
    free(h->done.keys);
    free(h->done.ids);
    free(h->release.keys);
    free(h->release.ids);
    for (size_t i = 0; i < h->nmodes; i++)
        free(h->modes[i].tenant);
    free(h->modes);
    free(h);
}

static bool tenant_unique(const struct response_handler *h, const char *tenant)
{
    for (size_t i = 0; i < h->nmodes; i++)
        if (strcmp(h->modes[i].tenant, tenant) == 0)
            return h->modes[i].unique;
    return h->unique_default;
}

bool response_handler_healthy(void *ctx)
{
    struct response_handler *h = ctx;
    return redis_conn_ping(h->rt->redis) &&
           h->rt->crm->ops->ping(h->rt->crm->self);
}

/* Step 1: validate and decide skips; candidates get an effect key. */
static void prepare(struct response_handler *h, struct work *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct kl_item *it = w[i].it;
        const char *skip;
        if (response_event_read(&it->value, &w[i].ev, it->reason,
                                sizeof(it->reason)) != CS_ERR_OK) {
            it->state = KL_DEAD;
            it->err = CS_ERR_INVALID_EVENT;
            continue;
        }
        skip = response_skip_reason(h->rc, &w[i].ev);
        if (skip) {
            it->state = KL_SKIPPED;
            it->skip_reason = skip;
            continue;
        }
        response_effect_key(&w[i].ev, tenant_unique(h, w[i].ev.tenant),
                            w[i].key, sizeof(w[i].key));
        w[i].candidate = true;
    }
}

/* Step 2: claim every candidate in one round trip. */
static bool claim(struct response_handler *h, struct work *w, size_t n)
{
    struct idem_key *keys = calloc(n, sizeof(*keys));
    enum idem_state *st = calloc(n, sizeof(*st));
    size_t *idx = calloc(n, sizeof(*idx));
    size_t k = 0;
    char errstr[256];
    enum cs_err err = CS_ERR_NOMEM;

    if (!keys || !st || !idx)
        goto out_free;
    for (size_t i = 0; i < n; i++) {
        if (!w[i].candidate)
            continue;
        keys[k].id = w[i].key;
        keys[k].event_ms = w[i].ev.occurred_at;
        idx[k++] = i;
    }
    /* One round trip: the previous batch's markers, then these claims. */
    err = settle_claim(h, keys, k, st, errstr, sizeof(errstr));
    if (err) {
        for (size_t j = 0; j < k; j++)
            kl_item_fail(w[idx[j]].it, KL_RETRY, err, "%s", errstr);
        goto out_free;
    }
    for (size_t j = 0; j < k; j++) {
        struct work *x = &w[idx[j]];
        if (st[j] == IDEM_DUPLICATE) {
            x->it->state = KL_DUPLICATE;
            x->candidate = false;
        } else if (st[j] == IDEM_IN_FLIGHT) {
            kl_item_fail(x->it, KL_RETRY, CS_ERR_IN_FLIGHT,
                         "effect is claimed by another worker");
            x->candidate = false;
        }
    }
out_free:
    free(idx);
    free(st);
    free(keys);
    return err == CS_ERR_OK;
}

/* Step 3: one create-only upsert per claimed item, sent in $batch. */
static void write_crm(struct response_handler *h, struct work *w, size_t n)
{
    struct crm_op *ops = calloc(n, sizeof(*ops));
    size_t *idx = calloc(n, sizeof(*idx));
    size_t k = 0;
    char errstr[256];
    enum cs_err err;
    char path[128];

    if (!ops || !idx) {
        for (size_t i = 0; i < n; i++)
            if (w[i].candidate)
                kl_item_fail(w[i].it, KL_RETRY, CS_ERR_NOMEM, "out of memory");
        goto out_free;
    }
    for (size_t i = 0; i < n; i++) {
        if (!w[i].candidate)
            continue;
        odata_uuid5(CRMSYNC_UUID_NAMESPACE, w[i].key, w[i].activityid);
        snprintf(path, sizeof(path), "campaignresponses(%s)", w[i].activityid);
        ops[k].method = "PATCH";
        ops[k].path = strdup(path);
        ops[k].body = response_build_body(&w[i].ev);
        ops[k].flags = CRM_OP_CREATE_ONLY;
        idx[k++] = i;
    }
    if (k == 0)
        goto out_free;

    err = h->rt->crm->ops->execute(h->rt->crm->self, ops, k, errstr,
                                   sizeof(errstr));
    for (size_t j = 0; j < k; j++) {
        struct kl_item *it = w[idx[j]].it;
        if (err) {
            kl_item_fail(it, KL_RETRY, err, "%s", errstr);
            continue;
        }
        switch (ops[j].result) {
        case CRM_OP_OK:
        case CRM_OP_EXISTS:
            it->state = KL_DONE;
            break;
        case CRM_OP_FAILED:
            kl_item_fail(it, KL_DEAD, CS_ERR_CRM_REJECTED, "CRM %d: %s",
                         ops[j].status, ops[j].error);
            break;
        default:
            kl_item_fail(it, KL_RETRY, CS_ERR_HTTP_SERVER, "CRM %d: %s",
                         ops[j].status, ops[j].error);
            it->retry_after_ms = ops[j].retry_after_ms;
            break;
        }
    }
out_free:
    for (size_t j = 0; j < k; j++) {
        free(ops[j].path);
        free(ops[j].body);
    }
    free(idx);
    free(ops);
}

/* Step 4: carry done markers for written effects and releases for rejected
 * ones into the next round trip. */
static void settle(struct response_handler *h, struct work *w, size_t n)
{
    bool ok = true;

    for (size_t i = 0; i < n; i++) {
        if (!w[i].candidate)
            continue;
        if (w[i].it->state == KL_DONE)
            ok &= carry_add(&h->done, w[i].key, w[i].ev.occurred_at);
        else if (w[i].it->state == KL_DEAD)
            ok &= carry_add(&h->release, w[i].key, w[i].ev.occurred_at);
    }
    if (!ok)
        LOG_WARN("out of memory carrying idempotency markers: some done "
                 "markers are lost (the CRM still guards duplicates)");
    if (h->done.n + h->release.n && h->carry_since == 0)
        h->carry_since = mono_ms();
}

static void observe_latency(struct response_handler *h, struct work *w,
                            size_t n)
{
    struct timespec now;
    double now_s;
    clock_gettime(CLOCK_REALTIME, &now);
    now_s = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    for (size_t i = 0; i < n; i++)
        if (w[i].candidate && w[i].it->state == KL_DONE)
            metrics_histogram_observe(
                h->rt->metrics, "crmsync_event_to_crm_seconds", NULL,
                now_s - (double)w[i].ev.occurred_at / 1000.0);
}

void response_handler_abandon(void *ctx, struct kl_item **items, size_t n)
{
    struct response_handler *h = ctx;
    struct idem_key *keys = calloc(n, sizeof(*keys));
    char(*bufs)[KEY_MAX] = calloc(n, sizeof(*bufs));
    size_t k = 0;
    char errstr[256];

    if (!keys || !bufs)
        goto out_free;
    for (size_t i = 0; i < n; i++) {
        struct response_event ev;
        if (response_event_read(&items[i]->value, &ev, errstr,
                                sizeof(errstr)) != CS_ERR_OK ||
            response_skip_reason(h->rc, &ev))
            continue;
        response_effect_key(&ev, tenant_unique(h, ev.tenant), bufs[k],
                            sizeof(bufs[k]));
        keys[k].id = bufs[k];
        keys[k].event_ms = ev.occurred_at;
        k++;
    }
    /* Only our own processing leases are dropped; done markers stay. The
     * carried markers go in the same round trip. */
    for (size_t i = 0; i < k; i++)
        carry_add(&h->release, keys[i].id, keys[i].event_ms);
    if (settle_claim(h, NULL, 0, NULL, errstr, sizeof(errstr)) != CS_ERR_OK)
        LOG_WARN("could not release %zu abandoned claims: %s", k, errstr);
out_free:
    free(bufs);
    free(keys);
}

void response_handler_process(void *ctx, struct kl_item **items, size_t n)
{
    struct response_handler *h = ctx;
    struct work *w = calloc(n, sizeof(*w));

    if (!w) {
        for (size_t i = 0; i < n; i++)
            kl_item_fail(items[i], KL_RETRY, CS_ERR_NOMEM, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++)
        w[i].it = items[i];

    prepare(h, w, n);
    if (claim(h, w, n)) {
        write_crm(h, w, n);
        settle(h, w, n);
        observe_latency(h, w, n);
    }
    free(w);
}
