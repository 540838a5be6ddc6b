/*
 * handler - one batch of bounce events, end to end (docs/bounce.md).
 *
 *  1. read + validate (bad input -> dead letter), tenant filter, consent
 *     catalog check (unknown consent -> dead letter);
 *  2. events naming only an entity: read its address (one $batch);
 *  3. per distinct address: its contacts/accounts/leads and CI-J consent
 *     rows (one $batch), then the recipients (contact > account > lead;
 *     none -> dead letter or a created lead);
 *  4. expand events into changes per key and run the Redis script once
 *     (carried done markers + compare-and-set + counters + suppression);
 *  5. collapse changes of one key to the newest, compare with the time the
 *     CRM row carries, write (one $batch), carry done markers.
 * A Redis or CRM outage turns the unfinished items into KL_RETRY.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/crm.h"
#include "common/kafka_loop.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/runtime.h"
#include "workers/bounce/handler.h"

#define MAX_CHANNEL    64  /* consents one client-wide opt-out covers */
#define CARRY_GRACE_MS 250 /* idle time before carried markers are flushed */
#define DAY_MS         86400000LL

enum eff_type { EF_CONSENT, EF_CHANNEL, EF_STATUS, EF_COUNT };

struct effect {
    size_t w; /* work index */
    enum eff_type type;
    char *key;           /* Redis state key (EF_COUNT: counter key), owned */
    char *status_key;    /* EF_COUNT: the address's status key, owned */
    char *sup;           /* suppression set, owned, or NULL */
    char *thr_prefix;    /* EF_COUNT, owned */
    char thr_eid[128];   /* EF_COUNT crossing: its outbounce id */
    const char *consent; /* borrowed (work or catalog) */
    const char *topic;   /* borrowed or NULL */
    int value;
    bool reset;
    struct bounce_state_op sop;
    bool write;                /* APPLY and newest of its key in this batch */
    bool superseded;           /* a newer change of the key is in this batch */
    bool crm_newer;            /* the CRM holds a newer change */
    size_t op_first, op_count; /* its write ops */
};

struct work {
    struct kl_item *it;
    struct bounce_event ev;
    const struct bounce_tenant *tn;
    bool history;      /* tenant's consent model */
    bool consent_kind; /* UNSUBSCRIBE / RESUBSCRIBE / SPAM */
    bool status_kind;  /* BOUNCE / OUTBOUNCE / BOUNCE_RESET */
    char consent[37];  /* lower-cased */
    char topic[37];    /* lower-cased, "" none */
    int addr;          /* index into addrs, -1 none */
    int rset;          /* recipient: entity set of the event's entity, */
    char rid[37];      /* or -1 = the address's records of `rtype` */
    int rtype;
    bool lead;           /* recipient is the lead created in this batch */
    bool active;         /* still being processed */
    const char *outcome; /* metrics label */
};

struct carry {
    char **keys; /* owned */
    char **eids; /* owned */
    size_t n, cap;
};

struct bounce_handler {
    const struct bounce_config *bc; /* borrowed */
    struct bounce_tenants *tenants; /* borrowed */
    struct runtime *rt;             /* borrowed */
    struct bounce_catalog *catalog; /* owned */
    struct bounce_state state;
    struct carry done;
    int64_t carry_since;
    int64_t next_flush;
    long flush_backoff_ms;
};

/* ---- small helpers ---- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void lower_copy(char *dst, size_t size, const char *src)
{
    size_t i = 0;
    for (; src && src[i] && i + 1 < size; i++)
        dst[i] = (char)(src[i] >= 'A' && src[i] <= 'F' ? src[i] - 'A' + 'a'
                                                       : src[i]);
    dst[i] = '\0';
}

static void count_event(struct bounce_handler *h, struct work *w,
                        const char *outcome)
{
    char labels[96];
    snprintf(labels, sizeof(labels), "kind=\"%s\",outcome=\"%s\"",
             w->ev.kind_name ? w->ev.kind_name : "UNKNOWN", outcome);
    metrics_counter_add(h->rt->metrics, "crmsync_bounce_events_total", labels,
                        1);
}

static void dead(struct work *w, enum cs_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void dead(struct work *w, enum cs_err err, const char *fmt, ...)
{
    char reason[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    kl_item_fail(w->it, KL_DEAD, err, "%s", reason);
    w->active = false;
    w->outcome = "dead";
}

static void retry_all(struct work *w, size_t n, enum cs_err err,
                      const char *why)
{
    for (size_t i = 0; i < n; i++)
        if (w[i].active) {
            kl_item_fail(w[i].it, KL_RETRY, err, "%s", why);
            w[i].active = false;
            w[i].outcome = NULL;
        }
}

/* ---- carried done markers ---- */

static bool carry_add(struct carry *c, const char *key, const char *eid)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        char **k = realloc(c->keys, cap * sizeof(*k));
        char **e;
        if (!k)
            return false;
        c->keys = k;
        e = realloc(c->eids, cap * sizeof(*e));
        if (!e)
            return false;
        c->eids = e;
        c->cap = cap;
    }
    c->keys[c->n] = strdup(key);
    c->eids[c->n] = strdup(eid);
    if (!c->keys[c->n] || !c->eids[c->n]) {
        free(c->keys[c->n]);
        free(c->eids[c->n]);
        return false;
    }
    c->n++;
    return true;
}

static void carry_clear(struct carry *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->keys[i]);
        free(c->eids[i]);
    }
    c->n = 0;
}

/* One round trip: carried done markers + @p ops (may be 0). */
static enum cs_err state_run(struct bounce_handler *h,
                             struct bounce_state_op *ops, size_t n,
                             char *errstr, size_t errstr_size)
{
    struct bounce_done *d = calloc(h->done.n + 1, sizeof(*d));
    enum cs_err err;

    if (!d)
        return CS_ERR_NOMEM;
    for (size_t i = 0; i < h->done.n; i++) {
        d[i].key = h->done.keys[i];
        d[i].eid = h->done.eids[i];
    }
    err =
        bounce_state_run(&h->state, d, h->done.n, ops, n, errstr, errstr_size);
    free(d);
    if (h->done.n + n > 0)
        metrics_counter_add(h->rt->metrics, "crmsync_redis_round_trips_total",
                            NULL, 1);
    if (err == CS_ERR_OK) {
        carry_clear(&h->done);
        h->carry_since = 0;
    }
    return err;
}

/* ---- lifecycle ---- */

struct bounce_handler *bounce_handler_new(const struct bounce_config *bc,
                                          struct bounce_tenants *tenants,
                                          struct runtime *rt, char *errstr,
                                          size_t errstr_size)
{
    struct bounce_handler *h = calloc(1, sizeof(*h));

    if (!h || !(h->catalog = bounce_catalog_new(rt->crm, bc))) {
        snprintf(errstr, errstr_size, "out of memory");
        free(h);
        return NULL;
    }
    h->bc = bc;
    h->tenants = tenants;
    h->rt = rt;
    h->flush_backoff_ms = 100;
    bounce_state_init(&h->state, rt->redis,
                      (int64_t)bc->state_ttl_days * DAY_MS);
    return h;
}

void bounce_handler_free(struct bounce_handler *h)
{
    char errstr[256];

    if (!h)
        return;
    if (h->done.n && state_run(h, NULL, 0, errstr, sizeof(errstr)) != CS_ERR_OK)
        LOG_WARN("done markers lost at shutdown (a redelivery re-checks the "
                 "CRM): %s",
                 errstr);
    carry_clear(&h->done);
    free(h->done.keys);
    free(h->done.eids);
    bounce_catalog_free(h->catalog);
    free(h);
}

void bounce_handler_idle(void *ctx)
{
    struct bounce_handler *h = ctx;
    int64_t now = mono_ms();
    char errstr[256];

    if (h->done.n == 0 || now < h->next_flush ||
        now - h->carry_since < CARRY_GRACE_MS)
        return;
    if (state_run(h, NULL, 0, errstr, sizeof(errstr)) == CS_ERR_OK) {
        h->flush_backoff_ms = 100;
        return;
    }
    LOG_WARN("could not write %zu done markers yet: %s", h->done.n, errstr);
    h->next_flush = now + h->flush_backoff_ms;
    if (h->flush_backoff_ms < 5000)
        h->flush_backoff_ms *= 2;
}

bool bounce_handler_healthy(void *ctx)
{
    struct bounce_handler *h = ctx;
    return redis_conn_ping(h->rt->redis) &&
           h->rt->crm->ops->ping(h->rt->crm->self);
}

void bounce_handler_abandon(void *ctx, struct kl_item **items, size_t n)
{
    (void)items;
    (void)n;
    /* No leases to give back: the state script needs none (a second
       worker re-applying the same event writes the same thing). Flush the
       carried markers so the next owner sees them. */
    bounce_handler_idle(ctx);
}

/* ---- step 1: read, filter, check consents ---- */

static void prepare(struct bounce_handler *h, struct work *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct work *x = &w[i];
        enum bounce_kind k;

        x->addr = -1;
        x->rset = -1;
        x->rtype = -1;
        x->active = true;
        if (bounce_event_read(&x->it->value, &x->ev, x->it->reason,
                              sizeof(x->it->reason)) != CS_ERR_OK) {
            x->it->state = KL_DEAD;
            x->it->err = CS_ERR_INVALID_EVENT;
            x->active = false;
            x->outcome = "dead";
            continue;
        }
        k = x->ev.kind;
        x->tn = bounce_tenants_get(h->tenants, x->ev.tenant);
        x->history = strcmp(x->tn->consent_model, "history") == 0;
        x->consent_kind = k == BOUNCE_UNSUBSCRIBE || k == BOUNCE_RESUBSCRIBE ||
                          k == BOUNCE_SPAM;
        x->status_kind = !x->consent_kind;
        lower_copy(x->consent, sizeof(x->consent), x->ev.consent_id);
        lower_copy(x->topic, sizeof(x->topic), x->ev.topic_id);
        if (x->ev.entity_type)
            x->rset = bounce_set_of_type(x->ev.entity_type);
        if (x->rset >= 0)
            snprintf(x->rid, sizeof(x->rid), "%s", x->ev.entity_id);
        if (x->consent_kind && h->bc->tenants[0] &&
            !bounce_list_has(h->bc->tenants, x->ev.tenant)) {
            x->it->state = KL_SKIPPED;
            x->it->skip_reason = "other_tenant";
            x->active = false;
            x->outcome = "other_tenant";
        }
    }
}

/* Does x name one consent (and topic) that model's catalog does not know
 * for its tenant? Client-wide changes name none. */
static bool consent_unknown(const struct bounce_handler *h,
                            const struct work *x, bool model)
{
    return x->active && x->consent_kind && x->history == model &&
           x->consent[0] && x->ev.kind != BOUNCE_SPAM &&
           !(x->ev.kind == BOUNCE_UNSUBSCRIBE && x->ev.channel) &&
           !bounce_catalog_has(h->catalog, model, x->ev.tenant, x->consent,
                               x->topic[0] ? x->topic : NULL);
}

static bool check_consents(struct bounce_handler *h, struct work *w, size_t n)
{
    char errstr[256];

    for (int model = 0; model < 2; model++) {
        bool need = false;
        bool missing = false;
        for (size_t i = 0; i < n; i++)
            need |= w[i].active && w[i].consent_kind && w[i].history == model;
        if (!need)
            continue;
        for (int attempt = 0; attempt < 2; attempt++) {
            enum cs_err err = bounce_catalog_ensure(
                h->catalog, model, attempt > 0, errstr, sizeof(errstr));
            if (err != CS_ERR_OK) {
                LOG_WARN("consent catalog: %s", errstr);
                retry_all(w, n, err, errstr);
                return false;
            }
            missing = false;
            for (size_t i = 0; i < n; i++)
                missing |= consent_unknown(h, &w[i], model);
            if (!missing)
                break;
        }
        for (size_t i = 0; missing && i < n; i++)
            if (consent_unknown(h, &w[i], model))
                dead(&w[i], CS_ERR_INVALID_EVENT,
                     "unknown-consent: %s%s is not a consent of this tenant",
                     w[i].consent, w[i].topic[0] ? " (or its topic)" : "");
    }
    return true;
}

/* ---- step 2: addresses of entity-only events ---- */

static bool read_entity_emails(struct bounce_handler *h, struct work *w,
                               size_t n)
{
    struct crm_op *ops = calloc(n + 1, sizeof(*ops));
    size_t *idx = calloc(n + 1, sizeof(*idx));
    size_t k = 0;
    char errstr[256];
    enum cs_err err = CS_ERR_OK;

    if (!ops || !idx) {
        retry_all(w, n, CS_ERR_NOMEM, "out of memory");
        goto out_free;
    }
    for (size_t i = 0; i < n; i++) {
        if (!w[i].active || w[i].ev.email[0])
            continue;
        if (w[i].rset < 0) {
            dead(&w[i], CS_ERR_INVALID_EVENT,
                 "missing-recipient: unknown entity_type");
            continue;
        }
        bounce_entity_op(&ops[k], w[i].rset, w[i].rid);
        idx[k++] = i;
    }
    if (k == 0)
        goto out_free;
    err = h->rt->crm->ops->execute(h->rt->crm->self, ops, k, errstr,
                                   sizeof(errstr));
    for (size_t j = 0; j < k; j++) {
        struct work *x = &w[idx[j]];
        const char *email;
        if (err != CS_ERR_OK || ops[j].result == CRM_OP_RETRY) {
            kl_item_fail(x->it, KL_RETRY, err ? err : CS_ERR_HTTP_SERVER,
                         "CRM: %s", err ? errstr : ops[j].error);
            x->it->retry_after_ms = ops[j].retry_after_ms;
            x->active = false;
            continue;
        }
        if (ops[j].result == CRM_OP_NOT_FOUND) {
            dead(x, CS_ERR_INVALID_EVENT, "recipient-not-found: %s(%s)",
                 bounce_sets[x->rset], x->rid);
            continue;
        }
        if (ops[j].result != CRM_OP_OK) {
            dead(x, CS_ERR_CRM_REJECTED, "crm-rejected: %s", ops[j].error);
            continue;
        }
        email = bounce_entity_email(&ops[j]);
        if (!email || !email[0])
            dead(x, CS_ERR_INVALID_EVENT,
                 "recipient-without-email: %s(%s) has no emailaddress1",
                 bounce_sets[x->rset], x->rid);
        else if (!email_normalize(email, x->ev.email, sizeof(x->ev.email)))
            dead(x, CS_ERR_INVALID_EVENT, "invalid-email: %s(%s)",
                 bounce_sets[x->rset], x->rid);
    }
out_free:
    if (ops)
        bounce_ops_free(ops, k);
    free(ops);
    free(idx);
    return true;
}

/* ---- step 3: per-address reads and recipients ---- */

static int addr_find(struct bounce_addr *a, size_t na, const char *email)
{
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i].email, email) == 0)
            return (int)i;
    return -1;
}

static size_t build_addrs(struct work *w, size_t n, struct bounce_addr *a)
{
    size_t na = 0;

    for (size_t i = 0; i < n; i++) {
        struct work *x = &w[i];
        int k;
        if (!x->active)
            continue;
        k = addr_find(a, na, x->ev.email);
        if (k < 0) {
            k = (int)na++;
            a[k].email = x->ev.email;
        }
        x->addr = k;
        /* Lookups: to find the recipient, and every record for a status. */
        a[k].need_lookup |= x->rset < 0 || x->status_kind;
        a[k].need_cpc |= x->consent_kind && !x->history;
    }
    return na;
}

static bool read_addrs(struct bounce_handler *h, struct work *w, size_t n,
                       struct bounce_addr *a, size_t na)
{
    struct crm_op *ops = calloc(4 * na + 1, sizeof(*ops));
    size_t *first = calloc(na + 1, sizeof(*first));
    size_t k = 0;
    char errstr[256];
    enum cs_err err;
    bool ok = false;

    if (!ops || !first) {
        retry_all(w, n, CS_ERR_NOMEM, "out of memory");
        goto out_free;
    }
    for (size_t i = 0; i < na; i++) {
        first[i] = k;
        k += bounce_lookup_ops(h->bc, &a[i], &ops[k]);
    }
    if (k == 0) {
        ok = true;
        goto out_free;
    }
    err = h->rt->crm->ops->execute(h->rt->crm->self, ops, k, errstr,
                                   sizeof(errstr));
    if (err != CS_ERR_OK) {
        retry_all(w, n, err, errstr);
        goto out_free;
    }
    for (size_t i = 0; i < na; i++) {
        size_t cnt = (i + 1 < na ? first[i + 1] : k) - first[i];
        if (cnt && !bounce_lookup_parse(h->bc, &a[i], &ops[first[i]], cnt,
                                        errstr, sizeof(errstr))) {
            long ra = 0;
            for (size_t j = first[i]; j < first[i] + cnt; j++)
                if (ops[j].retry_after_ms > ra)
                    ra = ops[j].retry_after_ms;
            for (size_t j = 0; j < n; j++)
                if (w[j].active && w[j].addr == (int)i) {
                    kl_item_fail(w[j].it, KL_RETRY, CS_ERR_HTTP_SERVER, "%s",
                                 errstr);
                    w[j].it->retry_after_ms = ra;
                    w[j].active = false;
                }
        }
    }
    ok = true;
out_free:
    if (ops)
        bounce_ops_free(ops, k);
    free(ops);
    free(first);
    return ok;
}

static void pick_recipients(struct work *w, size_t n, struct bounce_addr *a)
{
    for (size_t i = 0; i < n; i++) {
        struct work *x = &w[i];
        struct bounce_addr *ad;
        if (!x->active || x->rset >= 0)
            continue;
        ad = &a[x->addr];
        for (int s = 0; s < BOUNCE_NSETS && x->rtype < 0; s++)
            for (size_t r = 0; r < ad->nrecs; r++)
                if (ad->recs[r].set == s)
                    x->rtype = s;
        if (x->rtype >= 0)
            continue;
        if (strcmp(x->tn->not_found, "create-lead") == 0) {
            if (!ad->lead_planned) {
                ad->lead_planned = true;
                bounce_lead_id(x->ev.tenant, ad->email, ad->lead_id);
            }
            x->lead = true;
            x->rset = 2; /* leads */
            snprintf(x->rid, sizeof(x->rid), "%s", ad->lead_id);
            continue;
        }
        dead(x, CS_ERR_INVALID_EVENT,
             "recipient-not-found: no contact, account or lead has %s",
             ad->email);
    }
}

/* ---- step 4: changes and the Redis script ---- */

static struct effect *effect_add(struct effect **v, size_t *n, size_t *cap,
                                 size_t w, enum eff_type type)
{
    struct effect *e;
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        struct effect *g = realloc(*v, c * sizeof(*g));
        if (!g)
            return NULL;
        *v = g;
        *cap = c;
    }
    e = &(*v)[(*n)++];
    memset(e, 0, sizeof(*e));
    e->w = w;
    e->type = type;
    return e;
}

static void effects_free(struct effect *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].key);
        free(v[i].status_key);
        free(v[i].sup);
        free(v[i].thr_prefix);
    }
    free(v);
}

/* Fills e's state op from its type. */
static bool effect_op(struct effect *e, struct work *x)
{
    struct bounce_state_op *op = &e->sop;
    char buf[BOUNCE_KEY_MAX];
    const char *email = x->ev.email;

    op->t = x->ev.occurred_at;
    op->eid = x->ev.event_id;
    op->value = e->value;
    op->member = email;
    switch (e->type) {
    case EF_CONSENT:
        bounce_key_consent(buf, sizeof(buf), x->ev.tenant, email, e->consent,
                           e->topic);
        e->key = strdup(buf);
        bounce_sup_consent(buf, sizeof(buf), x->ev.tenant, e->consent,
                           e->topic);
        e->sup = strdup(buf);
        break;
    case EF_CHANNEL:
        bounce_key_channel(buf, sizeof(buf), x->ev.tenant, email);
        e->key = strdup(buf);
        bounce_sup_channel(buf, sizeof(buf), x->ev.tenant);
        e->sup = strdup(buf);
        break;
    case EF_STATUS:
        bounce_key_status(buf, sizeof(buf), email);
        e->key = strdup(buf);
        e->sup = strdup(BOUNCE_SUP_BOUNCED);
        op->reset = e->reset;
        break;
    case EF_COUNT:
        bounce_key_counter(buf, sizeof(buf), x->ev.tenant, email, x->ev.hard);
        e->key = strdup(buf);
        bounce_key_status(buf, sizeof(buf), email);
        e->status_key = strdup(buf);
        e->sup = strdup(BOUNCE_SUP_BOUNCED);
        snprintf(buf, sizeof(buf), "thr|%s|%c|", x->ev.tenant,
                 x->ev.hard ? 'h' : 's');
        e->thr_prefix = strdup(buf);
        op->type = 'C';
        op->status_key = e->status_key;
        op->threshold =
            x->ev.hard ? x->tn->hard_threshold : x->tn->soft_threshold;
        op->window_ms = (int64_t)x->tn->window_days * DAY_MS;
        op->thr_prefix = e->thr_prefix;
        break;
    }
    if (e->type != EF_COUNT)
        op->type = 'S';
    op->key = e->key;
    op->sup_key = e->sup;
    return e->key && e->sup &&
           (e->type != EF_COUNT || (e->status_key && e->thr_prefix));
}

static bool expand(struct bounce_handler *h, struct work *w, size_t n,
                   struct effect **ev, size_t *nev)
{
    size_t cap = 0;

    *ev = NULL;
    *nev = 0;
    for (size_t i = 0; i < n; i++) {
        struct work *x = &w[i];
        const char *ids[MAX_CHANNEL];
        size_t nids = 0;
        size_t before = *nev;
        bool ok = true;
        struct effect *e;

        if (!x->active)
            continue;
        switch (x->ev.kind) {
        case BOUNCE_UNSUBSCRIBE:
        case BOUNCE_SPAM:
            if (x->ev.kind == BOUNCE_UNSUBSCRIBE && !x->ev.channel) {
                ids[0] = x->consent;
                nids = 1;
            } else {
                nids =
                    bounce_catalog_channel(h->catalog, x->history, x->ev.tenant,
                                           x->tn, ids, MAX_CHANNEL);
                if (nids > MAX_CHANNEL)
                    nids = MAX_CHANNEL;
                e = effect_add(ev, nev, &cap, i, EF_CHANNEL);
                if (!e)
                    return false;
                e->value = 1;
            }
            for (size_t c = 0; c < nids; c++) {
                e = effect_add(ev, nev, &cap, i, EF_CONSENT);
                if (!e)
                    return false;
                e->consent = ids[c];
                e->topic = nids == 1 && x->topic[0] && !x->ev.channel &&
                                   x->ev.kind == BOUNCE_UNSUBSCRIBE
                               ? x->topic
                               : NULL;
                e->value = 1;
            }
            break;
        case BOUNCE_RESUBSCRIBE:
            e = effect_add(ev, nev, &cap, i, EF_CONSENT);
            if (!e)
                return false;
            e->consent = x->consent;
            e->topic = x->topic[0] ? x->topic : NULL;
            e->value = 0;
            e = effect_add(ev, nev, &cap, i, EF_CHANNEL);
            if (!e)
                return false;
            e->value = 0;
            break;
        case BOUNCE_BOUNCE:
            e = effect_add(ev, nev, &cap, i, EF_COUNT);
            if (!e)
                return false;
            e->value = 1; /* a crossing makes the address bounced */
            break;
        case BOUNCE_OUTBOUNCE:
        case BOUNCE_RESET:
            e = effect_add(ev, nev, &cap, i, EF_STATUS);
            if (!e)
                return false;
            e->value = x->ev.kind == BOUNCE_OUTBOUNCE;
            e->reset = x->ev.kind == BOUNCE_RESET;
            break;
        }
        for (size_t k = before; k < *nev; k++)
            ok &= effect_op(&(*ev)[k], x);
        if (!ok)
            return false;
    }
    return true;
}

static bool run_state(struct bounce_handler *h, struct work *w, size_t n,
                      struct effect *ev, size_t nev)
{
    struct bounce_state_op *ops = calloc(nev + 1, sizeof(*ops));
    char errstr[256];
    enum cs_err err;

    if (!ops) {
        retry_all(w, n, CS_ERR_NOMEM, "out of memory");
        return false;
    }
    for (size_t i = 0; i < nev; i++)
        ops[i] = ev[i].sop;
    err = state_run(h, ops, nev, errstr, sizeof(errstr));
    if (err != CS_ERR_OK) {
        free(ops);
        retry_all(w, n, err, errstr);
        return false;
    }
    for (size_t i = 0; i < nev; i++) {
        ev[i].sop.verdict = ops[i].verdict;
        ev[i].sop.cross_t = ops[i].cross_t;
        if (ev[i].type == EF_COUNT && ops[i].verdict != BOUNCE_V_NONE &&
            ops[i].verdict != BOUNCE_V_IGNORED)
            snprintf(ev[i].thr_eid, sizeof(ev[i].thr_eid), "%s%lld",
                     ev[i].thr_prefix, (long long)ops[i].cross_t);
    }
    free(ops);
    return true;
}

/* The state key a write of @p e updates (for collapsing). */
static const char *write_key(const struct effect *e)
{
    return e->type == EF_COUNT ? e->status_key : e->key;
}

static int64_t effect_time(const struct effect *e)
{
    return e->type == EF_COUNT ? e->sop.cross_t : e->sop.t;
}

static void collapse(struct work *w, struct effect *ev, size_t nev)
{
    for (size_t i = 0; i < nev; i++)
        ev[i].write = ev[i].sop.verdict == BOUNCE_V_APPLY && w[ev[i].w].active;
    /* History entries are each a record; every other key is one row whose
       newest change in the batch is the only one to write. */
    for (size_t i = 0; i < nev; i++) {
        if (!ev[i].write || (ev[i].type == EF_CONSENT && w[ev[i].w].history))
            continue;
        for (size_t j = i + 1; j < nev; j++) {
            if (!ev[j].write || strcmp(write_key(&ev[i]), write_key(&ev[j])))
                continue;
            if (effect_time(&ev[j]) >= effect_time(&ev[i])) {
                ev[i].write = false;
                ev[i].superseded = true;
                break;
            }
        }
    }
}

/* ---- step 5: writes ---- */

static const struct bounce_cpc *cpc_row(const struct bounce_addr *a,
                                        const char *purpose, const char *topic)
{
    for (size_t i = 0; i < a->ncpcs; i++)
        if (strcmp(a->cpcs[i].purpose, purpose) == 0 &&
            strcmp(a->cpcs[i].topic, topic ? topic : "") == 0)
            return &a->cpcs[i];
    return NULL;
}

/* Does the CRM row already hold a change at least as new? Dataverse keeps
 * date/time columns (and modifiedon) to the second, so a stored time that
 * is a whole second is compared at second precision. Ties: the same value
 * is the same change; opted out / bounced wins. */
static bool crm_newer(int64_t crm_t, bool crm_out, int64_t t, bool out)
{
    if (crm_t < 0)
        return false;
    if (crm_t % 1000 == 0)
        t -= t % 1000;
    if (crm_t != t)
        return crm_t > t;
    return crm_out == out || crm_out;
}

struct opbuf {
    struct crm_op *v;
    size_t n, cap;
};

static struct crm_op *op_next(struct opbuf *b)
{
    if (b->n == b->cap) {
        size_t c = b->cap ? b->cap * 2 : 64;
        struct crm_op *g = realloc(b->v, c * sizeof(*g));
        if (!g)
            return NULL;
        b->v = g;
        b->cap = c;
    }
    return &b->v[b->n];
}

/* Recipient records of x: its entity, else the address's records of the
 * winning type. Calls fn for each (set, id). */
static size_t recipients(const struct work *x, const struct bounce_addr *a,
                         int *sets, const char **ids, size_t max)
{
    size_t k = 0;
    if (x->rset >= 0) {
        sets[0] = x->rset;
        ids[0] = x->rid;
        return 1;
    }
    for (size_t r = 0; r < a->nrecs && k < max; r++)
        if (a->recs[r].set == x->rtype) {
            sets[k] = a->recs[r].set;
            ids[k++] = a->recs[r].id;
        }
    return k;
}

static bool build_writes(struct bounce_handler *h, struct work *w,
                         struct bounce_addr *a, struct effect *ev, size_t nev,
                         struct opbuf *ob)
{
    for (size_t i = 0; i < nev; i++) {
        struct effect *e = &ev[i];
        struct work *x = &w[e->w];
        struct bounce_addr *ad = &a[x->addr];
        struct bounce_change c = {&x->ev, effect_time(e), e->value, e->consent,
                                  e->topic};
        int sets[64];
        const char *ids[64];
        size_t nr;
        struct crm_op *op;

        e->op_first = ob->n;
        if (!e->write)
            continue;
        /* A lead for an unknown address goes first, once per batch. */
        if (x->lead && ad->lead_planned) {
            if (!(op = op_next(ob)) ||
                !bounce_op_lead(op, &x->ev, ad->email, ad->lead_id))
                return false;
            ob->n++;
            ad->lead_planned = false;
        }
        switch (e->type) {
        case EF_CONSENT:
            if (x->history) {
                nr = recipients(x, ad, sets, ids, 64);
                for (size_t r = 0; r < nr; r++) {
                    if (!(op = op_next(ob)) ||
                        !bounce_op_history(op, h->bc, &c, sets[r], ids[r]))
                        return false;
                    ob->n++;
                }
            } else {
                const struct bounce_cpc *row =
                    cpc_row(ad, e->consent, e->topic);
                if (row &&
                    crm_newer(row->t, row->value == 534120002, c.t, c.value)) {
                    e->crm_newer = true;
                    break;
                }
                if (!(op = op_next(ob)) ||
                    !bounce_op_cpc(op, &c, ad->email, row))
                    return false;
                ob->n++;
            }
            break;
        case EF_CHANNEL:
            if (!x->tn->set_donotbulkemail)
                break;
            nr = recipients(x, ad, sets, ids, 64);
            for (size_t r = 0; r < nr; r++) {
                if (!(op = op_next(ob)) ||
                    !bounce_op_dnb(op, sets[r], ids[r], e->value))
                    return false;
                ob->n++;
            }
            break;
        case EF_STATUS:
        case EF_COUNT: {
            size_t written = 0, newer = 0;
            for (size_t r = 0; r < ad->nrecs; r++) {
                const struct bounce_rec *rec = &ad->recs[r];
                if (!bounce_list_has(h->bc->status_sets, bounce_sets[rec->set]))
                    continue;
                /* the stored time says which change is newer; the flag's
                   value itself is not read back */
                if (crm_newer(rec->status_t, rec->status, c.t, c.value)) {
                    newer++;
                    continue;
                }
                if (!(op = op_next(ob)) ||
                    !bounce_op_status(op, h->bc, &c, rec))
                    return false;
                ob->n++;
                written++;
            }
            if (x->lead && bounce_list_has(h->bc->status_sets, "leads")) {
                struct bounce_rec lead = {.set = 2, .status_t = -1};
                snprintf(lead.id, sizeof(lead.id), "%s", x->rid);
                if (!(op = op_next(ob)) ||
                    !bounce_op_status(op, h->bc, &c, &lead))
                    return false;
                op->if_match = NULL; /* created in this batch */
                ob->n++;
                written++;
            }
            e->crm_newer = written == 0 && newer > 0;
            break;
        }
        }
        e->op_count = ob->n - e->op_first;
    }
    return true;
}

/* Maps write results to items: FAILED -> dead, RETRY -> retry. */
static void apply_results(struct work *w, struct effect *ev, size_t nev,
                          struct crm_op *ops, enum cs_err err,
                          const char *errstr)
{
    for (size_t i = 0; i < nev; i++) {
        struct work *x = &w[ev[i].w];
        for (size_t k = ev[i].op_first;
             x->active && k < ev[i].op_first + ev[i].op_count; k++) {
            struct crm_op *op = &ops[k];
            bool cpc_create = ev[i].type == EF_CONSENT && !x->history &&
                              (op->flags & CRM_OP_CREATE_ONLY);
            bool lead = strncmp(op->path, "leads(", 6) == 0 &&
                        (op->flags & CRM_OP_CREATE_ONLY);
            if (err != CS_ERR_OK) {
                kl_item_fail(x->it, KL_RETRY, err, "%s", errstr);
                x->active = false;
            } else if (op->result == CRM_OP_FAILED) {
                kl_item_fail(x->it, KL_DEAD, CS_ERR_CRM_REJECTED,
                             "crm-rejected: %s %s: %s", op->method, op->path,
                             op->error);
                x->active = false;
                x->outcome = "dead";
            } else if (op->result == CRM_OP_RETRY ||
                       (op->result == CRM_OP_EXISTS && cpc_create && !lead)) {
                /* a consent row appeared since it was read: read again */
                kl_item_fail(x->it, KL_RETRY, CS_ERR_HTTP_SERVER, "CRM %d: %s",
                             op->status,
                             op->result == CRM_OP_EXISTS ? "row created "
                                                           "concurrently"
                                                         : op->error);
                x->it->retry_after_ms = op->retry_after_ms;
                x->active = false;
            }
        }
    }
}

static void count_writes(struct bounce_handler *h, struct work *w,
                         struct effect *ev, size_t nev, struct crm_op *ops)
{
    for (size_t i = 0; i < nev; i++) {
        const char *target;
        if (!w[ev[i].w].active)
            continue;
        switch (ev[i].type) {
        case EF_CONSENT:
            target = w[ev[i].w].history ? "target=\"history\""
                                        : "target=\"consent\"";
            break;
        case EF_CHANNEL:
            target = "target=\"donotbulkemail\"";
            break;
        default:
            target = "target=\"status\"";
            break;
        }
        for (size_t k = ev[i].op_first; k < ev[i].op_first + ev[i].op_count;
             k++)
            if (ops[k].result == CRM_OP_OK)
                metrics_counter_add(h->rt->metrics,
                                    "crmsync_bounce_crm_writes_total",
                                    strncmp(ops[k].path, "leads(", 6) == 0 &&
                                            (ops[k].flags & CRM_OP_CREATE_ONLY)
                                        ? "target=\"lead\""
                                        : target,
                                    1);
    }
}

static bool write_crm(struct bounce_handler *h, struct work *w, size_t n,
                      struct bounce_addr *a, struct effect *ev, size_t nev)
{
    struct opbuf ob = {0};
    char errstr[256] = "";
    enum cs_err err = CS_ERR_OK;

    if (!build_writes(h, w, a, ev, nev, &ob)) {
        retry_all(w, n, CS_ERR_NOMEM, "out of memory");
        bounce_ops_free(ob.v, ob.n);
        free(ob.v);
        return false;
    }
    if (ob.n > 0)
        err = h->rt->crm->ops->execute(h->rt->crm->self, ob.v, ob.n, errstr,
                                       sizeof(errstr));
    apply_results(w, ev, nev, ob.v, err, errstr);
    count_writes(h, w, ev, nev, ob.v);
    bounce_ops_free(ob.v, ob.n);
    free(ob.v);
    return true;
}

/* ---- outcomes ---- */

static void settle(struct bounce_handler *h, struct work *w, size_t n,
                   struct effect *ev, size_t nev)
{
    bool ok = true;

    for (size_t i = 0; i < n; i++)
        if (w[i].active) {
            w[i].it->state = KL_DONE;
            w[i].outcome = NULL;
        }
    for (size_t i = 0; i < nev; i++) {
        struct effect *e = &ev[i];
        struct work *x = &w[e->w];
        const char *o = NULL;
        if (x->it->state != KL_DONE)
            continue;
        switch (e->sop.verdict) {
        case BOUNCE_V_APPLY:
            o = e->superseded  ? "superseded"
                : e->crm_newer ? "crm_newer"
                               : "applied";
            if (e->type == EF_COUNT && !e->superseded)
                metrics_counter_add(
                    h->rt->metrics, "crmsync_bounce_outbounces_total",
                    x->ev.hard ? "cause=\"hard\"" : "cause=\"soft\"", 1);
            else if (e->type == EF_STATUS && e->value && !e->superseded)
                metrics_counter_add(h->rt->metrics,
                                    "crmsync_bounce_outbounces_total",
                                    "cause=\"event\"", 1);
            ok &= carry_add(&h->done, write_key(e),
                            e->type == EF_COUNT ? e->thr_eid : x->ev.event_id);
            break;
        case BOUNCE_V_DUPLICATE:
            o = e->type == EF_COUNT ? "counted" : "duplicate";
            break;
        case BOUNCE_V_STALE:
            o = "stale";
            break;
        default:
            o = "counted";
            break;
        }
        /* The event's outcome: the most telling of its changes. */
        if (!x->outcome || strcmp(o, "applied") == 0 ||
            (strcmp(x->outcome, "applied") != 0 && strcmp(o, "crm_newer") == 0))
            x->outcome = o;
    }
    for (size_t i = 0; i < n; i++)
        if (w[i].it->state == KL_DONE && !w[i].outcome)
            w[i].outcome = "applied"; /* e.g. a channel opt-out of nothing */
    if (!ok)
        LOG_WARN("out of memory carrying done markers: some are lost (a "
                 "redelivery re-checks the CRM)");
    if (h->done.n && h->carry_since == 0)
        h->carry_since = mono_ms();
}

static void observe(struct bounce_handler *h, struct work *w, size_t n)
{
    struct timespec now;
    double now_s;

    clock_gettime(CLOCK_REALTIME, &now);
    now_s = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    for (size_t i = 0; i < n; i++) {
        if (w[i].outcome)
            count_event(h, &w[i], w[i].outcome);
        if (w[i].it->state == KL_DONE && w[i].outcome &&
            strcmp(w[i].outcome, "applied") == 0)
            metrics_histogram_observe(
                h->rt->metrics, "crmsync_event_to_crm_seconds", NULL,
                now_s - (double)w[i].ev.occurred_at / 1000.0);
    }
}

void bounce_handler_process(void *ctx, struct kl_item **items, size_t n)
{
    struct bounce_handler *h = ctx;
    struct work *w = calloc(n, sizeof(*w));
    struct bounce_addr *a = calloc(n + 1, sizeof(*a));
    struct effect *ev = NULL;
    size_t na = 0, nev = 0;

    if (!w || !a) {
        for (size_t i = 0; i < n; i++)
            kl_item_fail(items[i], KL_RETRY, CS_ERR_NOMEM, "out of memory");
        goto out_free;
    }
    for (size_t i = 0; i < n; i++)
        w[i].it = items[i];

    prepare(h, w, n);
    if (!check_consents(h, w, n) || !read_entity_emails(h, w, n))
        goto out_count;
    na = build_addrs(w, n, a);
    if (!read_addrs(h, w, n, a, na))
        goto out_count;
    pick_recipients(w, n, a);
    if (!expand(h, w, n, &ev, &nev)) {
        retry_all(w, n, CS_ERR_NOMEM, "out of memory");
        goto out_count;
    }
    if (!run_state(h, w, n, ev, nev))
        goto out_count;
    collapse(w, ev, nev);
    if (write_crm(h, w, n, a, ev, nev))
        settle(h, w, n, ev, nev);
out_count:
    observe(h, w, n);
out_free:
    effects_free(ev, nev);
    for (size_t i = 0; a && i < na; i++)
        bounce_addr_clear(&a[i]);
    free(a);
    free(w);
}
