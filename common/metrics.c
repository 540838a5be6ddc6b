/*
 * metrics - registry and HTTP endpoints; see metrics.h for the contract.
 *
 * DESIGN: families live in an array sorted by name, each family's series in
 * an array sorted by label string; both are searched with bsearch and grown
 * with memmove on insert (series are created rarely, bumped often), so a
 * lookup costs O(log n) string compares and rendering walks both arrays in
 * order, giving grouped, sorted output for free. One mutex guards it all;
 * the libmicrohttpd thread renders into a private buffer under the mutex and
 * sends it after releasing it.
 */
#include "common/metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/buf.h"

enum metric_type {
    METRIC_UNTYPED = 0,
    METRIC_COUNTER,
    METRIC_GAUGE,
    METRIC_HISTOGRAM,
};

/* Upper bounds of the fixed histogram buckets; +Inf is implicit. */
static const double hist_bounds[] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
static const char *const hist_bound_text[] = {
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25",  "0.5",    "1",     "2.5",  "5",     "10",   "30"};
#define HIST_NBOUNDS (sizeof(hist_bounds) / sizeof(hist_bounds[0]))

struct series {
    char *labels;      /* user labels without braces, "" for none; owned */
    double value;      /* counter/gauge value, histogram sum */
    uint64_t count;    /* histogram observation count */
    uint64_t *buckets; /* histogram: HIST_NBOUNDS non-cumulative counts,
                          owned; NULL for other types */
    uint64_t seen_gen; /* kafka stats generation that last touched it */
};

struct family {
    char *name; /* owned */
    char *help; /* owned, NULL when undescribed */
    enum metric_type type;
    struct series *series; /* sorted by labels; owned */
    size_t nseries, capseries;
};

struct metrics {
    pthread_mutex_t lock;
    char *worker_label;  /* 'worker="<escaped>"', owned */
    struct family *fams; /* sorted by name; owned */
    size_t nfams, capfams;
    bool assigned, deps_ok;
    char *detail; /* owned, may be NULL */
    uint64_t stats_gen;
    struct MHD_Daemon *daemon; /* NULL until metrics_serve */
};

/* ---------------------------------------------------------------- helpers */

static char *str_dup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);

    if (p)
        memcpy(p, s, n);
    return p;
}

size_t metrics_label_escape(const char *value, char *out, size_t out_size)
{
    size_t need = 0;

    for (const char *p = value ? value : ""; *p; p++) {
        char esc = 0;

        if (*p == '\\')
            esc = '\\';
        else if (*p == '"')
            esc = '"';
        else if (*p == '\n')
            esc = 'n';
        if (esc) {
            if (out_size > 0 && need + 2 < out_size) {
                out[need] = '\\';
                out[need + 1] = esc;
            }
            need += 2;
        } else {
            if (out_size > 0 && need + 1 < out_size)
                out[need] = *p;
            need++;
        }
    }
    if (out_size > 0)
        out[need < out_size ? need : out_size - 1] = '\0';
    /* A truncated escape pair may leave a half sequence; callers check the
     * return value against out_size. */
    return need;
}

static enum metric_type type_parse(const char *type)
{
    if (!type)
        return METRIC_UNTYPED;
    if (strcmp(type, "counter") == 0)
        return METRIC_COUNTER;
    if (strcmp(type, "gauge") == 0)
        return METRIC_GAUGE;
    if (strcmp(type, "histogram") == 0)
        return METRIC_HISTOGRAM;
    return METRIC_UNTYPED;
}

static const char *type_name(enum metric_type t)
{
    switch (t) {
    case METRIC_COUNTER:
        return "counter";
    case METRIC_GAUGE:
        return "gauge";
    case METRIC_HISTOGRAM:
        return "histogram";
    case METRIC_UNTYPED:
        break;
    }
    return "untyped";
}

/* Binary search over @p n structs of @p size bytes at @p base, sorted by
 * the string pointer found @p key_off bytes into each; returns the index of
 * @p key or where it would be inserted, with *found telling which. */
static size_t sorted_search(const void *base, size_t n, size_t size,
                            size_t key_off, const char *key, bool *found)
{
    size_t lo = 0, hi = n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *elem = (const char *)base + mid * size;
        int c = strcmp(*(const char *const *)(elem + key_off), key);

        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static size_t fam_search(const struct metrics *m, const char *name, bool *found)
{
    return sorted_search(m->fams, m->nfams, sizeof(m->fams[0]),
                         offsetof(struct family, name), name, found);
}

static size_t series_search(const struct family *f, const char *labels,
                            bool *found)
{
    return sorted_search(f->series, f->nseries, sizeof(f->series[0]),
                         offsetof(struct series, labels), labels, found);
}

/* Returns the family (created with @p type if missing), NULL on OOM. A
 * family created untyped by describe() takes the type of its first use. */
static struct family *fam_get(struct metrics *m, const char *name,
                              enum metric_type type)
{
    bool found;
    size_t i = fam_search(m, name, &found);
    struct family *f;

    if (found) {
        f = &m->fams[i];
        if (f->type == METRIC_UNTYPED)
            f->type = type;
        return f;
    }
    if (m->nfams == m->capfams) {
        size_t cap = m->capfams ? m->capfams * 2 : 16;
        struct family *nf = realloc(m->fams, cap * sizeof(*nf));

        if (!nf)
            return NULL;
        m->fams = nf;
        m->capfams = cap;
    }
    char *dup = str_dup(name);
    if (!dup)
        return NULL;
    memmove(&m->fams[i + 1], &m->fams[i], (m->nfams - i) * sizeof(m->fams[0]));
    m->nfams++;
    f = &m->fams[i];
    memset(f, 0, sizeof(*f));
    f->name = dup;
    f->type = type;
    return f;
}

static struct family *fam_find(struct metrics *m, const char *name)
{
    bool found;
    size_t i = fam_search(m, name, &found);

    return found ? &m->fams[i] : NULL;
}

/* Returns the series (created zeroed if missing), NULL on OOM. */
static struct series *series_get(struct family *f, const char *labels)
{
    bool found;
    const char *key = labels ? labels : "";
    size_t i = series_search(f, key, &found);
    struct series *s;

    if (found)
        return &f->series[i];
    if (f->nseries == f->capseries) {
        size_t cap = f->capseries ? f->capseries * 2 : 8;
        struct series *ns = realloc(f->series, cap * sizeof(*ns));

        if (!ns)
            return NULL;
        f->series = ns;
        f->capseries = cap;
    }
    char *dup = str_dup(key);
    if (!dup)
        return NULL;
    uint64_t *buckets = NULL;
    if (f->type == METRIC_HISTOGRAM) {
        buckets = calloc(HIST_NBOUNDS, sizeof(*buckets));
        if (!buckets) {
            free(dup);
            return NULL;
        }
    }
    memmove(&f->series[i + 1], &f->series[i],
            (f->nseries - i) * sizeof(f->series[0]));
    f->nseries++;
    s = &f->series[i];
    memset(s, 0, sizeof(*s));
    s->labels = dup;
    s->buckets = buckets;
    return s;
}

static void series_clear(struct series *s)
{
    free(s->labels);
    free(s->buckets);
}

static void series_remove(struct family *f, size_t i)
{
    series_clear(&f->series[i]);
    memmove(&f->series[i], &f->series[i + 1],
            (f->nseries - i - 1) * sizeof(f->series[0]));
    f->nseries--;
}

/* Looks up (or creates) a series of the given type under the lock; returns
 * NULL when the family exists with another type (a programming error that
 * must not corrupt the output) or on OOM. */
static struct series *lookup(struct metrics *m, const char *name,
                             const char *labels, enum metric_type type)
{
    struct family *f = fam_get(m, name, type);

    if (!f || f->type != type)
        return NULL;
    return series_get(f, labels);
}

/* ------------------------------------------------------------- lifecycle */

struct metrics *metrics_new(const char *worker)
{
    struct metrics *m = calloc(1, sizeof(*m));
    char esc[256];
    char label[300];

    if (!m)
        return NULL;
    metrics_label_escape(worker ? worker : "", esc, sizeof(esc));
    snprintf(label, sizeof(label), "worker=\"%s\"", esc);
    m->worker_label = str_dup(label);
    if (!m->worker_label)
        goto out_free_m;
    if (pthread_mutex_init(&m->lock, NULL) != 0)
        goto out_free_label;
    /* Families this module fills itself. */
    metrics_describe(m, "crmsync_ready", "gauge",
                     "1 when partitions are assigned and dependencies are "
                     "reachable (/readyz), else 0.");
    metrics_describe(m, "crmsync_consumer_lag", "gauge",
                     "Messages between the committed offset and the high "
                     "watermark, per assigned partition (librdkafka stats).");
    metrics_describe(m, "crmsync_consumer_lag_stored", "gauge",
                     "Messages between the stored (processed, not yet "
                     "committed) offset and the high watermark.");
    metrics_describe(m, "crmsync_kafka_rebalances_total", "counter",
                     "Consumer group rebalances seen by this process.");
    metrics_describe(m, "crmsync_kafka_assigned_partitions", "gauge",
                     "Partitions currently assigned to this consumer.");
    return m;

out_free_label:
    free(m->worker_label);
out_free_m:
    free(m);
    return NULL;
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    /* Stop the daemon first: its thread uses the registry. */
    if (m->daemon)
        MHD_stop_daemon(m->daemon);
    for (size_t i = 0; i < m->nfams; i++) {
        struct family *f = &m->fams[i];

        for (size_t j = 0; j < f->nseries; j++)
            series_clear(&f->series[j]);
        free(f->series);
        free(f->name);
        free(f->help);
    }
    free(m->fams);
    free(m->detail);
    free(m->worker_label);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* ----------------------------------------------------------------- update */

void metrics_describe(struct metrics *m, const char *name, const char *type,
                      const char *help)
{
    if (!m || !name)
        return;
    pthread_mutex_lock(&m->lock);
    struct family *f = fam_get(m, name, type_parse(type));
    if (f && help) {
        char *dup = str_dup(help);

        if (dup) {
            free(f->help);
            f->help = dup;
        }
    }
    pthread_mutex_unlock(&m->lock);
}

void metrics_counter_add(struct metrics *m, const char *name,
                         const char *labels, double v)
{
    if (!m || !name || !(v >= 0))
        return;
    pthread_mutex_lock(&m->lock);
    struct series *s = lookup(m, name, labels, METRIC_COUNTER);
    if (s)
        s->value += v;
    pthread_mutex_unlock(&m->lock);
}

void metrics_gauge_set(struct metrics *m, const char *name, const char *labels,
                       double v)
{
    if (!m || !name)
        return;
    pthread_mutex_lock(&m->lock);
    struct series *s = lookup(m, name, labels, METRIC_GAUGE);
    if (s)
        s->value = v;
    pthread_mutex_unlock(&m->lock);
}

void metrics_histogram_observe(struct metrics *m, const char *name,
                               const char *labels, double v)
{
    if (!m || !name || isnan(v))
        return;
    pthread_mutex_lock(&m->lock);
    struct series *s = lookup(m, name, labels, METRIC_HISTOGRAM);
    if (s) {
        for (size_t i = 0; i < HIST_NBOUNDS; i++) {
            if (v <= hist_bounds[i]) {
                s->buckets[i]++;
                break;
            }
        }
        s->value += v;
        s->count++;
    }
    pthread_mutex_unlock(&m->lock);
}

static double value_get(struct metrics *m, const char *name, const char *labels,
                        enum metric_type type)
{
    double v = 0;

    if (!m || !name)
        return 0;
    pthread_mutex_lock(&m->lock);
    struct family *f = fam_find(m, name);
    if (f && f->type == type) {
        bool found;
        size_t i = series_search(f, labels ? labels : "", &found);

        if (found)
            v = f->series[i].value;
    }
    pthread_mutex_unlock(&m->lock);
    return v;
}

double metrics_counter_get(struct metrics *m, const char *name,
                           const char *labels)
{
    return value_get(m, name, labels, METRIC_COUNTER);
}

double metrics_gauge_get(struct metrics *m, const char *name,
                         const char *labels)
{
    return value_get(m, name, labels, METRIC_GAUGE);
}

void metrics_set_health(struct metrics *m, bool assigned, bool deps_ok,
                        const char *detail)
{
    if (!m)
        return;
    char *dup = detail ? str_dup(detail) : NULL;

    pthread_mutex_lock(&m->lock);
    m->assigned = assigned;
    m->deps_ok = deps_ok;
    free(m->detail);
    m->detail = dup;
    struct series *s = lookup(m, "crmsync_ready", NULL, METRIC_GAUGE);
    if (s)
        s->value = (assigned && deps_ok) ? 1 : 0;
    pthread_mutex_unlock(&m->lock);
}

bool metrics_is_ready(struct metrics *m)
{
    bool ready;

    if (!m)
        return false;
    pthread_mutex_lock(&m->lock);
    ready = m->assigned && m->deps_ok;
    pthread_mutex_unlock(&m->lock);
    return ready;
}

/* ------------------------------------------------------- librdkafka stats */

static const char *const lag_families[] = {"crmsync_consumer_lag",
                                           "crmsync_consumer_lag_stored"};

/* Sets one lag gauge and stamps it with the current generation. */
static void lag_set(struct metrics *m, const char *fam, const char *labels,
                    json_int_t lag)
{
    struct series *s = lookup(m, fam, labels, METRIC_GAUGE);

    if (s) {
        s->value = (double)lag;
        s->seen_gen = m->stats_gen;
    }
}

/* Keeps a lag series alive without changing it (partition present, lag not
 * known in this sample). */
static void lag_touch(struct metrics *m, const char *fam, const char *labels)
{
    struct family *f = fam_find(m, fam);
    bool found;

    if (!f)
        return;
    size_t i = series_search(f, labels, &found);
    if (found)
        f->series[i].seen_gen = m->stats_gen;
}

/* librdkafka reports consumer_lag -1 until the group commits an offset, so
 * a partition nobody ever consumed (e.g. an empty one) would never export
 * a lag. Nothing committed means everything from the start is ahead of the
 * group (auto.offset.reset=earliest): hi - lo, 0 for an empty partition.
 * @returns the lag or -1 when the partition has a commit or no watermarks. */
static json_int_t never_committed_lag(json_t *part)
{
    json_t *committed = json_object_get(part, "committed_offset");
    json_t *lo = json_object_get(part, "lo_offset");
    json_t *hi = json_object_get(part, "hi_offset");

    if (!json_is_integer(committed) || json_integer_value(committed) >= 0 ||
        !json_is_integer(lo) || !json_is_integer(hi) ||
        json_integer_value(lo) < 0 ||
        json_integer_value(hi) < json_integer_value(lo))
        return -1;
    return json_integer_value(hi) - json_integer_value(lo);
}

static void stats_partition(struct metrics *m, const char *topic, json_t *part)
{
    json_t *jp = json_object_get(part, "partition");
    json_t *desired = json_object_get(part, "desired");
    char etopic[512];
    char labels[600];

    if (!json_is_integer(jp) || json_integer_value(jp) < 0)
        return; /* -1 is the internal UA partition */
    /* librdkafka lists every partition of the topic's metadata; those not
     * assigned to us have desired=false and must not export a lag. */
    if (json_is_false(desired))
        return;
    if (metrics_label_escape(topic, etopic, sizeof(etopic)) >= sizeof(etopic))
        return;
    snprintf(labels, sizeof(labels),
             "partition=\"%" JSON_INTEGER_FORMAT "\",topic=\"%s\"",
             json_integer_value(jp), etopic);

    const char *keys[] = {"consumer_lag", "consumer_lag_stored"};
    for (size_t k = 0; k < 2; k++) {
        json_t *jl = json_object_get(part, keys[k]);
        json_int_t lag = json_is_integer(jl) ? json_integer_value(jl) : -1;

        if (k == 0 && lag < 0)
            lag = never_committed_lag(part);
        if (lag >= 0)
            lag_set(m, lag_families[k], labels, lag);
        else
            lag_touch(m, lag_families[k], labels);
    }
}

void metrics_update_from_kafka_stats(struct metrics *m, const char *json,
                                     size_t len)
{
    json_error_t jerr;
    json_t *root;

    if (!m || !json)
        return;
    root = json_loadb(json, len, 0, &jerr);
    if (!root)
        return;
    if (!json_is_object(root))
        goto out_decref;

    pthread_mutex_lock(&m->lock);
    m->stats_gen++;
    json_t *topics = json_object_get(root, "topics");
    const char *tname;
    json_t *topic;
    json_object_foreach(topics, tname, topic)
    {
        json_t *parts = json_object_get(topic, "partitions");
        const char *pkey;
        json_t *part;
        json_object_foreach(parts, pkey, part)
        {
            stats_partition(m, tname, part);
        }
    }
    /* Sweep lag series of partitions that are gone (revoked). */
    for (size_t k = 0; k < 2; k++) {
        struct family *f = fam_find(m, lag_families[k]);

        for (size_t i = f ? f->nseries : 0; i > 0; i--) {
            if (f->series[i - 1].seen_gen != m->stats_gen)
                series_remove(f, i - 1);
        }
    }
    json_t *cgrp = json_object_get(root, "cgrp");
    json_t *rb = json_object_get(cgrp, "rebalance_cnt");
    if (json_is_integer(rb)) {
        /* Cumulative within the process: exported as a counter whose value
         * is set, so rate() works. */
        struct series *s =
            lookup(m, "crmsync_kafka_rebalances_total", NULL, METRIC_COUNTER);
        if (s)
            s->value = (double)json_integer_value(rb);
    }
    json_t *asz = json_object_get(cgrp, "assignment_size");
    if (json_is_integer(asz)) {
        struct series *s =
            lookup(m, "crmsync_kafka_assigned_partitions", NULL, METRIC_GAUGE);
        if (s)
            s->value = (double)json_integer_value(asz);
    }
    pthread_mutex_unlock(&m->lock);

out_decref:
    json_decref(root);
}

/* An integer member of @p obj, @p dflt when absent or not an integer. */
static int64_t json_int_or(json_t *obj, const char *key, int64_t dflt)
{
    json_t *v = json_object_get(obj, key);

    return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

/* Negative offsets (librdkafka's -1001 INVALID and friends) become -1. */
static int64_t offset_or_unknown(int64_t v)
{
    return v >= 0 ? v : -1;
}

enum cs_err metrics_kafka_stats_partitions(const char *json, size_t len,
                                           struct metrics_kafka_part **parts,
                                           size_t *nparts)
{
    json_error_t jerr;
    json_t *root;
    struct metrics_kafka_part *out = NULL;
    size_t n = 0, cap = 0;
    enum cs_err rc = CS_ERR_OK;
    const char *tname;
    json_t *topic;

    *parts = NULL;
    *nparts = 0;
    root = json ? json_loadb(json, len, 0, &jerr) : NULL;
    if (!json_is_object(root)) {
        json_decref(root);
        return CS_ERR_INVALID_ARG;
    }
    json_object_foreach(json_object_get(root, "topics"), tname, topic)
    {
        const char *pkey;
        json_t *part;

        if (strlen(tname) >= sizeof(out->topic))
            continue;
        json_object_foreach(json_object_get(topic, "partitions"), pkey, part)
        {
            int64_t pid = json_int_or(part, "partition", -1);
            struct metrics_kafka_part *p;

            if (pid < 0 || pid > INT32_MAX ||
                json_is_false(json_object_get(part, "desired")))
                continue;
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                struct metrics_kafka_part *grown =
                    realloc(out, ncap * sizeof(*grown));

                if (!grown) {
                    rc = CS_ERR_NOMEM;
                    goto out_free;
                }
                out = grown;
                cap = ncap;
            }
            p = &out[n++];
            snprintf(p->topic, sizeof(p->topic), "%s", tname);
            p->partition = (int32_t)pid;
            p->committed_offset =
                offset_or_unknown(json_int_or(part, "committed_offset", -1));
            p->consumer_lag =
                offset_or_unknown(json_int_or(part, "consumer_lag", -1));
            p->consumer_lag_stored =
                offset_or_unknown(json_int_or(part, "consumer_lag_stored", -1));
            p->lo_offset =
                offset_or_unknown(json_int_or(part, "lo_offset", -1));
            p->hi_offset =
                offset_or_unknown(json_int_or(part, "hi_offset", -1));
        }
    }
    json_decref(root);
    *parts = out;
    *nparts = n;
    return CS_ERR_OK;

out_free:
    free(out);
    json_decref(root);
    return rc;
}

int64_t metrics_kafka_part_unprocessed(const struct metrics_kafka_part *p)
{
    if (p->consumer_lag_stored >= 0)
        return p->consumer_lag_stored;
    if (p->consumer_lag >= 0)
        return p->consumer_lag;
    /* Never committed by the group: everything from the start is ahead. */
    if (p->committed_offset < 0 && p->lo_offset >= 0 &&
        p->hi_offset >= p->lo_offset)
        return p->hi_offset - p->lo_offset;
    return -1;
}

double metrics_lag_seconds(int64_t now_ms, int64_t oldest_held_ms, int64_t lag,
                           int64_t *behind_since_ms)
{
    if (oldest_held_ms >= 0) {
        *behind_since_ms = 0;
        return now_ms > oldest_held_ms ? (double)(now_ms - oldest_held_ms) / 1e3
                                       : 0;
    }
    if (lag > 0) {
        if (*behind_since_ms <= 0 || *behind_since_ms > now_ms)
            *behind_since_ms = now_ms;
        return (double)(now_ms - *behind_since_ms) / 1e3;
    }
    *behind_since_ms = 0;
    return 0;
}

void metrics_remove(struct metrics *m, const char *name, const char *labels)
{
    if (!m || !name)
        return;
    pthread_mutex_lock(&m->lock);
    struct family *f = fam_find(m, name);
    if (f) {
        bool found;
        size_t i = series_search(f, labels ? labels : "", &found);

        if (found)
            series_remove(f, i);
    }
    pthread_mutex_unlock(&m->lock);
}

/* -------------------------------------------------------------- rendering */

/* Formats a sample value: integers exactly, others round-trippable. */
static void fmt_value(double v, char *out, size_t out_size)
{
    if (isnan(v)) {
        snprintf(out, out_size, "NaN");
    } else if (isinf(v)) {
        snprintf(out, out_size, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(out, out_size, "%.15g", v);
        if (strtod(out, NULL) != v)
            snprintf(out, out_size, "%.17g", v);
    }
}

/* Escapes HELP text: backslash and newline only (per the format). */
static void help_append(struct buf *b, const char *help)
{
    for (const char *p = help; *p; p++) {
        if (*p == '\\')
            buf_appends(b, "\\\\");
        else if (*p == '\n')
            buf_appends(b, "\\n");
        else
            buf_append(b, p, 1);
    }
}

static void render_family(const struct metrics *m, const struct family *f,
                          struct buf *b)
{
    char val[64];

    if (f->nseries == 0)
        return;
    if (f->help) {
        buf_appendf(b, "# HELP %s ", f->name);
        help_append(b, f->help);
        buf_appendf(b, "\n");
    }
    buf_appendf(b, "# TYPE %s %s\n", f->name, type_name(f->type));
    for (size_t i = 0; i < f->nseries; i++) {
        const struct series *s = &f->series[i];
        const char *sep = s->labels[0] ? "," : "";

        if (f->type != METRIC_HISTOGRAM) {
            fmt_value(s->value, val, sizeof(val));
            buf_appendf(b, "%s{%s%s%s} %s\n", f->name, m->worker_label, sep,
                        s->labels, val);
            continue;
        }
        uint64_t cum = 0;
        for (size_t k = 0; k < HIST_NBOUNDS; k++) {
            cum += s->buckets[k];
            buf_appendf(b, "%s_bucket{%s%s%s,le=\"%s\"} %" PRIu64 "\n", f->name,
                        m->worker_label, sep, s->labels, hist_bound_text[k],
                        cum);
        }
        buf_appendf(b, "%s_bucket{%s%s%s,le=\"+Inf\"} %" PRIu64 "\n", f->name,
                    m->worker_label, sep, s->labels, s->count);
        fmt_value(s->value, val, sizeof(val));
        buf_appendf(b, "%s_sum{%s%s%s} %s\n", f->name, m->worker_label, sep,
                    s->labels, val);
        buf_appendf(b, "%s_count{%s%s%s} %" PRIu64 "\n", f->name,
                    m->worker_label, sep, s->labels, s->count);
    }
}

char *metrics_render(struct metrics *m, size_t *len)
{
    struct buf b = {0};

    if (len)
        *len = 0;
    if (!m)
        return NULL;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->nfams; i++)
        render_family(m, &m->fams[i], &b);
    pthread_mutex_unlock(&m->lock);
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    if (len)
        *len = b.len;
    return buf_detach(&b);
}

/* ------------------------------------------------------------------- HTTP */

static enum MHD_Result send_text(struct MHD_Connection *conn,
                                 unsigned int status, const char *ctype,
                                 char *body, size_t len)
{
    /* Takes ownership of body (malloc'd). */
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    enum MHD_Result ret;

    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_static(struct MHD_Connection *conn,
                                   unsigned int status, const char *text)
{
    char *body = str_dup(text);

    if (!body)
        return MHD_NO;
    return send_text(conn, status, "text/plain; charset=utf-8", body,
                     strlen(body));
}

static enum MHD_Result handle_request(void *cls, struct MHD_Connection *conn,
                                      const char *url, const char *method,
                                      const char *version,
                                      const char *upload_data,
                                      size_t *upload_data_size, void **req_cls)
{
    struct metrics *m = cls;

    (void)version;
    (void)upload_data;
    (void)req_cls;
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* ignore bodies */
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return send_static(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                           "method not allowed\n");
    if (strcmp(url, "/metrics") == 0) {
        size_t len = 0;
        char *body = metrics_render(m, &len);

        if (!body)
            return send_static(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
                               "out of memory\n");
        return send_text(conn, MHD_HTTP_OK, "text/plain; version=0.0.4", body,
                         len);
    }
    if (strcmp(url, "/healthz") == 0)
        return send_static(conn, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/readyz") == 0) {
        char text[512];
        bool ready;

        pthread_mutex_lock(&m->lock);
        ready = m->assigned && m->deps_ok;
        if (ready)
            snprintf(text, sizeof(text), "ready\n");
        else
            snprintf(
                text, sizeof(text), "not ready: assigned=%s deps_ok=%s%s%s\n",
                m->assigned ? "true" : "false", m->deps_ok ? "true" : "false",
                m->detail ? " " : "", m->detail ? m->detail : "");
        pthread_mutex_unlock(&m->lock);
        return send_static(
            conn, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, text);
    }
    return send_static(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

enum cs_err metrics_serve(struct metrics *m, int port, int *bound_port,
                          char *errstr, size_t errstr_size)
{
    if (bound_port)
        *bound_port = 0;
    if (!m)
        return CS_ERR_OK; /* no registry: nothing to serve */
    if (port < 0 || port > 65535) {
        snprintf(errstr, errstr_size, "metrics port %d out of range", port);
        return CS_ERR_INVALID_ARG;
    }
    if (m->daemon) {
        snprintf(errstr, errstr_size, "metrics server already running");
        return CS_ERR_INVALID_ARG;
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO, (uint16_t)port, NULL,
        NULL, handle_request, m, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)10, MHD_OPTION_CONNECTION_LIMIT, (unsigned int)64,
        MHD_OPTION_END);
    if (!d) {
        snprintf(errstr, errstr_size,
                 "cannot start metrics HTTP server on port %d "
                 "(in use or not permitted)",
                 port);
        return CS_ERR_IO;
    }
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    if (bound_port)
        *bound_port = info ? (int)info->port : port;
    m->daemon = d;
    return CS_ERR_OK;
}
