/*
 * lag_eval - Burrow's consumer lag evaluation rules over a sliding window of
 * samples of one partition (committed offset, lag, sample time), plus the
 * group verdict (the worst partition). Pure: no Kafka types, no I/O, no
 * clock; the caller supplies every timestamp.
 *
 * Rules, in order (linkedin/Burrow core/internal/evaluator/caching.go):
 *   1. any zero lag in the window              -> OK        (ZERO_LAG)
 *   2. the committed offset ever decreased     -> rewinding (REWIND)
 *   3. now - time of the last commit > window
 *      span (newest - oldest sample time)      -> stalled   (STOPPED, Burrow
 * STOP)
 *   4. the committed offset never changed      -> stalled   (UNCHANGED, Burrow
 * STALL)
 *   5. the lag never decreased                 -> lagging   (NOT_DECREASING,
 * Burrow WARN)
 *   6. otherwise (lag > 0 but shrinking)       -> OK        (PROGRESSING)
 * With fewer than two samples only rule 1 can be decided; a non-zero lag is
 * then reported as lagging (TOO_FEW_SAMPLES).
 *
 * Kafka does not tell when an offset was committed, so a sample carries
 * commit_ms: the time this offset value was first observed (lag_window_add()
 * keeps it across samples and across evictions from the window).
 *
 * Ownership: lag_eval_samples() borrows its array for the call. A
 * struct lag_window owns its samples; free it with lag_window_free().
 * Thread-safety: none; a window belongs to one thread at a time. The name
 * functions return static strings and are thread-safe.
 */
#ifndef CRMSYNC_LAG_EVAL_H
#define CRMSYNC_LAG_EVAL_H

#include <stddef.h>
#include <stdint.h>

/* Verdicts, ordered by severity (Burrow: OK < WARN < STOP < STALL < REWIND);
 * a group's verdict is the maximum over its partitions. */
enum lag_verdict {
    LAG_OK = 0,
    LAG_LAGGING = 1,
    LAG_STALLED = 2,
    LAG_REWINDING = 3,
};

/* Which rule decided a verdict. */
enum lag_rule {
    LAG_RULE_ZERO_LAG,        /* 1: zero lag somewhere in the window */
    LAG_RULE_REWIND,          /* 2: committed offset went backwards */
    LAG_RULE_STOPPED,         /* 3: no commit for longer than the window */
    LAG_RULE_UNCHANGED,       /* 4: committed offset never moved */
    LAG_RULE_NOT_DECREASING,  /* 5: lag never went down */
    LAG_RULE_PROGRESSING,     /* 6: lag > 0 but catching up */
    LAG_RULE_TOO_FEW_SAMPLES, /* < 2 samples and lag > 0 */
    LAG_RULE_NO_SAMPLES,      /* empty window: nothing known, OK */
};

/* One observation of one partition. */
struct lag_sample {
    int64_t offset;    /* committed offset; -1 = the group has none */
    int64_t lag;       /* messages between offset and the high watermark */
    int64_t time_ms;   /* when the sample was taken (any monotonic base) */
    int64_t commit_ms; /* when this offset value was first observed */
};

/**
 * @brief Evaluates @p n samples, oldest first, at time @p now_ms.
 * @param rule if not NULL, receives the rule that decided.
 * @returns the verdict; LAG_OK for n == 0.
 */
enum lag_verdict lag_eval_samples(const struct lag_sample *s, size_t n,
                                  int64_t now_ms, enum lag_rule *rule);

/** @brief The worse of two verdicts (group verdict = fold over partitions). */
enum lag_verdict lag_verdict_worst(enum lag_verdict a, enum lag_verdict b);

/** @brief "OK", "lagging", "stalled" or "rewinding" (static string). */
const char *lag_verdict_name(enum lag_verdict v);

/** @brief Short snake_case rule name, e.g. "zero_lag" (static string). */
const char *lag_rule_name(enum lag_rule r);

/* Sliding window of the last `cap` samples of one partition. */
struct lag_window;

/**
 * @brief Creates an empty window holding at most @p cap (>= 1) samples.
 * @returns the window (caller frees with lag_window_free()), or NULL on
 *          cap == 0 or out of memory.
 */
struct lag_window *lag_window_new(size_t cap);

/** @brief Frees @p w; NULL is fine. */
void lag_window_free(struct lag_window *w);

/**
 * @brief Appends a sample, evicting the oldest when full. commit_ms is
 *        derived: time_ms when @p offset differs from the previous sample
 *        (or for the first sample), else the previous sample's commit_ms.
 */
void lag_window_add(struct lag_window *w, int64_t offset, int64_t lag,
                    int64_t time_ms);

/** @brief Number of samples held (<= cap). */
size_t lag_window_count(const struct lag_window *w);

/**
 * @brief The newest sample, or NULL when empty. Borrowed: valid until the
 *        next lag_window_add() or lag_window_free().
 */
const struct lag_sample *lag_window_last(const struct lag_window *w);

/** @brief lag_eval_samples() over the window's samples. */
enum lag_verdict lag_window_eval(const struct lag_window *w, int64_t now_ms,
                                 enum lag_rule *rule);

#endif
