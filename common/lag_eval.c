/*
 * lag_eval - Burrow's evaluation rules; see lag_eval.h.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/lag_eval.h"

struct lag_window {
    size_t cap;           /* maximum samples */
    size_t cnt;           /* samples held, oldest first */
    struct lag_sample *s; /* owned; cap entries */
};

static bool any_zero_lag(const struct lag_sample *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i].lag <= 0)
            return true;
    }
    return false;
}

static bool offset_decreased(const struct lag_sample *s, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        if (s[i].offset < s[i - 1].offset)
            return true;
    }
    return false;
}

static bool offset_unchanged(const struct lag_sample *s, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        if (s[i].offset != s[i - 1].offset)
            return false;
    }
    return true;
}

static bool lag_never_decreased(const struct lag_sample *s, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        if (s[i].lag < s[i - 1].lag)
            return false;
    }
    return true;
}

/* Burrow STOP: the time since the last commit exceeds the window span. */
static bool commit_stopped(const struct lag_sample *s, size_t n, int64_t now_ms)
{
    int64_t span = s[n - 1].time_ms - s[0].time_ms;

    return span > 0 && now_ms - s[n - 1].commit_ms > span;
}

enum lag_verdict lag_eval_samples(const struct lag_sample *s, size_t n,
                                  int64_t now_ms, enum lag_rule *rule)
{
    enum lag_rule r;
    enum lag_verdict v;

    if (n == 0) {
        r = LAG_RULE_NO_SAMPLES;
        v = LAG_OK;
    } else if (any_zero_lag(s, n)) {
        r = LAG_RULE_ZERO_LAG;
        v = LAG_OK;
    } else if (n < 2) {
        r = LAG_RULE_TOO_FEW_SAMPLES;
        v = LAG_LAGGING;
    } else if (offset_decreased(s, n)) {
        r = LAG_RULE_REWIND;
        v = LAG_REWINDING;
    } else if (commit_stopped(s, n, now_ms)) {
        r = LAG_RULE_STOPPED;
        v = LAG_STALLED;
    } else if (offset_unchanged(s, n)) {
        r = LAG_RULE_UNCHANGED;
        v = LAG_STALLED;
    } else if (lag_never_decreased(s, n)) {
        r = LAG_RULE_NOT_DECREASING;
        v = LAG_LAGGING;
    } else {
        r = LAG_RULE_PROGRESSING;
        v = LAG_OK;
    }
    if (rule)
        *rule = r;
    return v;
}

enum lag_verdict lag_verdict_worst(enum lag_verdict a, enum lag_verdict b)
{
    return a > b ? a : b;
}

const char *lag_verdict_name(enum lag_verdict v)
{
    switch (v) {
    case LAG_OK:
        return "OK";
    case LAG_LAGGING:
        return "lagging";
    case LAG_STALLED:
        return "stalled";
    case LAG_REWINDING:
        return "rewinding";
    }
    return "unknown";
}

const char *lag_rule_name(enum lag_rule r)
{
    switch (r) {
    case LAG_RULE_ZERO_LAG:
        return "zero_lag";
    case LAG_RULE_REWIND:
        return "offset_rewound";
    case LAG_RULE_STOPPED:
        return "no_commit_in_window";
    case LAG_RULE_UNCHANGED:
        return "offset_unchanged";
    case LAG_RULE_NOT_DECREASING:
        return "lag_not_decreasing";
    case LAG_RULE_PROGRESSING:
        return "catching_up";
    case LAG_RULE_TOO_FEW_SAMPLES:
        return "too_few_samples";
    case LAG_RULE_NO_SAMPLES:
        return "no_samples";
    }
    return "unknown";
}

struct lag_window *lag_window_new(size_t cap)
{
    struct lag_window *w;

    if (cap == 0)
        return NULL;
    w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->s = calloc(cap, sizeof(*w->s));
    if (!w->s) {
        free(w);
        return NULL;
    }
    w->cap = cap;
    return w;
}

void lag_window_free(struct lag_window *w)
{
    if (!w)
        return;
    free(w->s);
    free(w);
}

void lag_window_add(struct lag_window *w, int64_t offset, int64_t lag,
                    int64_t time_ms)
{
    const struct lag_sample *prev = lag_window_last(w);
    struct lag_sample ns;

    ns.offset = offset;
    ns.lag = lag;
    ns.time_ms = time_ms;
    ns.commit_ms = prev && prev->offset == offset ? prev->commit_ms : time_ms;
    if (w->cnt == w->cap) {
        /* cap is small (tens): shifting keeps the samples contiguous, so
         * lag_eval_samples() can read them in place. */
        memmove(w->s, w->s + 1, (w->cap - 1) * sizeof(*w->s));
        w->cnt--;
    }
    w->s[w->cnt++] = ns;
}

size_t lag_window_count(const struct lag_window *w)
{
    return w->cnt;
}

const struct lag_sample *lag_window_last(const struct lag_window *w)
{
    return w->cnt ? &w->s[w->cnt - 1] : NULL;
}

enum lag_verdict lag_window_eval(const struct lag_window *w, int64_t now_ms,
                                 enum lag_rule *rule)
{
    return lag_eval_samples(w->s, w->cnt, now_ms, rule);
}
