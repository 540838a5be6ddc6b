/*
 * test_lag_eval - Burrow's lag evaluation rules: each rule on its own, their
 * precedence, the group verdict (worst partition), and the sliding window
 * (eviction, commit time carried across samples and evictions).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/lag_eval.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* Samples one second apart; commit_ms = first time each offset was seen. */
static void fill(struct lag_sample *s, size_t n, const int64_t *offsets,
                 const int64_t *lags)
{
    for (size_t i = 0; i < n; i++) {
        s[i].offset = offsets[i];
        s[i].lag = lags[i];
        s[i].time_ms = 1000 * (int64_t)i;
        s[i].commit_ms = i > 0 && offsets[i] == offsets[i - 1]
                             ? s[i - 1].commit_ms
                             : s[i].time_ms;
    }
}

static enum lag_verdict eval(const int64_t *offsets, const int64_t *lags,
                             size_t n, enum lag_rule *rule)
{
    struct lag_sample s[16];

    assert_true(n <= N(s));
    fill(s, n, offsets, lags);
    return lag_eval_samples(s, n, n ? s[n - 1].time_ms : 0, rule);
}

static void test_zero_lag_anywhere_is_ok(void **state)
{
    /* Even with a rewind and a growing lag elsewhere in the window, one
     * zero lag wins (rule 1 before everything). */
    const int64_t off[] = {10, 5, 5, 5};
    const int64_t lag[] = {0, 7, 8, 9};
    enum lag_rule rule = LAG_RULE_NO_SAMPLES;

    (void)state;
    assert_int_equal(eval(off, lag, N(off), &rule), LAG_OK);
    assert_int_equal(rule, LAG_RULE_ZERO_LAG);
    /* zero lag at the end too */
    {
        const int64_t o2[] = {1, 1, 1};
        const int64_t l2[] = {4, 4, 0};

        assert_int_equal(eval(o2, l2, N(o2), &rule), LAG_OK);
        assert_int_equal(rule, LAG_RULE_ZERO_LAG);
    }
}

static void test_rewind_before_stall(void **state)
{
    /* Offset goes down once; afterwards unchanged and lag growing:
     * rewind beats stop, stall and not-decreasing. */
    const int64_t off[] = {50, 40, 40, 40};
    const int64_t lag[] = {5, 15, 16, 17};
    enum lag_rule rule;

    (void)state;
    assert_int_equal(eval(off, lag, N(off), &rule), LAG_REWINDING);
    assert_int_equal(rule, LAG_RULE_REWIND);
}

static void test_stopped_no_commit_within_span(void **state)
{
    /* Offsets advanced early, then no commit for longer than the window
     * span when evaluated late: Burrow STOP -> stalled, even though the
     * offsets did change inside the window (so not rule 4). */
    struct lag_sample s[3];
    const int64_t off[] = {1, 2, 2};
    const int64_t lag[] = {5, 5, 6};
    enum lag_rule rule;

    (void)state;
    fill(s, N(s), off, lag); /* times 0,1000,2000; last commit at 1000 */
    /* at 2000: 1000 since commit, span 2000 -> not stopped -> rule 5 */
    assert_int_equal(lag_eval_samples(s, N(s), 2000, &rule), LAG_LAGGING);
    assert_int_equal(rule, LAG_RULE_NOT_DECREASING);
    /* at 3001: 2001 since commit > span 2000 -> stopped */
    assert_int_equal(lag_eval_samples(s, N(s), 3001, &rule), LAG_STALLED);
    assert_int_equal(rule, LAG_RULE_STOPPED);
}

static void test_unchanged_offsets_with_lag_is_stalled(void **state)
{
    /* The worker stopped: offset fixed, lag constant. Evaluated at the
     * newest sample the commit is exactly one span old -> rule 4. */
    const int64_t off[] = {7, 7, 7};
    const int64_t lag[] = {3, 3, 3};
    enum lag_rule rule;

    (void)state;
    assert_int_equal(eval(off, lag, N(off), &rule), LAG_STALLED);
    assert_int_equal(rule, LAG_RULE_UNCHANGED);
    /* also with no commit at all (-1) */
    {
        const int64_t o2[] = {-1, -1};
        const int64_t l2[] = {9, 12};

        assert_int_equal(eval(o2, l2, N(o2), &rule), LAG_STALLED);
        assert_int_equal(rule, LAG_RULE_UNCHANGED);
    }
}

static void test_lag_never_decreasing_is_lagging(void **state)
{
    /* Consumer commits but falls behind (or keeps pace): WARN. */
    const int64_t off[] = {10, 20, 30, 40};
    const int64_t lag[] = {5, 5, 8, 12};
    enum lag_rule rule;

    (void)state;
    assert_int_equal(eval(off, lag, N(off), &rule), LAG_LAGGING);
    assert_int_equal(rule, LAG_RULE_NOT_DECREASING);
}

static void test_catching_up_is_ok(void **state)
{
    const int64_t off[] = {10, 20, 30};
    const int64_t lag[] = {30, 25, 26};
    enum lag_rule rule;

    (void)state;
    assert_int_equal(eval(off, lag, N(off), &rule), LAG_OK);
    assert_int_equal(rule, LAG_RULE_PROGRESSING);
}

static void test_few_samples(void **state)
{
    const int64_t off[] = {3};
    const int64_t lag1[] = {2};
    const int64_t lag0[] = {0};
    enum lag_rule rule;

    (void)state;
    assert_int_equal(eval(off, lag0, 0, &rule), LAG_OK);
    assert_int_equal(rule, LAG_RULE_NO_SAMPLES);
    assert_int_equal(eval(off, lag0, 1, &rule), LAG_OK);
    assert_int_equal(rule, LAG_RULE_ZERO_LAG);
    assert_int_equal(eval(off, lag1, 1, &rule), LAG_LAGGING);
    assert_int_equal(rule, LAG_RULE_TOO_FEW_SAMPLES);
    /* rule may be NULL */
    assert_int_equal(eval(off, lag1, 1, NULL), LAG_LAGGING);
}

static void test_group_verdict_is_worst(void **state)
{
    enum lag_verdict g = LAG_OK;
    const enum lag_verdict parts[] = {LAG_OK, LAG_LAGGING, LAG_STALLED,
                                      LAG_LAGGING, LAG_OK};

    (void)state;
    for (size_t i = 0; i < N(parts); i++)
        g = lag_verdict_worst(g, parts[i]);
    assert_int_equal(g, LAG_STALLED);
    assert_int_equal(lag_verdict_worst(LAG_STALLED, LAG_REWINDING),
                     LAG_REWINDING);
    assert_int_equal(lag_verdict_worst(LAG_OK, LAG_OK), LAG_OK);
    assert_string_equal(lag_verdict_name(LAG_OK), "OK");
    assert_string_equal(lag_verdict_name(LAG_LAGGING), "lagging");
    assert_string_equal(lag_verdict_name(LAG_STALLED), "stalled");
    assert_string_equal(lag_verdict_name(LAG_REWINDING), "rewinding");
    assert_string_equal(lag_rule_name(LAG_RULE_UNCHANGED), "offset_unchanged");
}

static void test_window_slides_and_keeps_commit_time(void **state)
{
    struct lag_window *w = lag_window_new(3);
    enum lag_rule rule;

    (void)state;
    assert_non_null(w);
    assert_null(lag_window_last(w));
    assert_int_equal(lag_window_eval(w, 0, &rule), LAG_OK);
    assert_int_equal(rule, LAG_RULE_NO_SAMPLES);

    lag_window_add(w, 10, 0, 0); /* caught up at t=0 */
    lag_window_add(w, 10, 4, 1000);
    lag_window_add(w, 10, 4, 2000);
    assert_int_equal(lag_window_count(w), 3);
    /* the zero lag is still in the window */
    assert_int_equal(lag_window_eval(w, 2000, &rule), LAG_OK);
    assert_int_equal(rule, LAG_RULE_ZERO_LAG);

    /* evicts the zero-lag sample; offset unchanged since t=0, which is
     * more than the window span (1000..3000) ago -> Burrow STOP */
    lag_window_add(w, 10, 4, 3000);
    assert_int_equal(lag_window_count(w), 3);
    assert_int_equal(lag_window_last(w)->commit_ms, 0);
    assert_int_equal(lag_window_last(w)->time_ms, 3000);
    assert_int_equal(lag_window_eval(w, 3000, &rule), LAG_STALLED);
    assert_int_equal(rule, LAG_RULE_STOPPED);

    /* a commit resets the commit time; lag shrinking -> OK */
    lag_window_add(w, 12, 2, 4000);
    assert_int_equal(lag_window_last(w)->commit_ms, 4000);
    assert_int_equal(lag_window_eval(w, 4000, &rule), LAG_OK);
    assert_int_equal(rule, LAG_RULE_PROGRESSING);

    /* offset goes back -> rewinding */
    lag_window_add(w, 8, 6, 5000);
    assert_int_equal(lag_window_eval(w, 5000, &rule), LAG_REWINDING);
    lag_window_free(w);
    lag_window_free(NULL);
    assert_null(lag_window_new(0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_lag_anywhere_is_ok),
        cmocka_unit_test(test_rewind_before_stall),
        cmocka_unit_test(test_stopped_no_commit_within_span),
        cmocka_unit_test(test_unchanged_offsets_with_lag_is_stalled),
        cmocka_unit_test(test_lag_never_decreasing_is_lagging),
        cmocka_unit_test(test_catching_up_is_ok),
        cmocka_unit_test(test_few_samples),
        cmocka_unit_test(test_group_verdict_is_worst),
        cmocka_unit_test(test_window_slides_and_keeps_commit_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
