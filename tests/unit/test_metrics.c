/*
 * test_metrics - unit tests for common/metrics: exposition format (parsed
 * back), label escaping, NULL no-ops, librdkafka stats → lag gauges and
 * the partition list (committed offsets), lag seconds, series removal, the
 * HTTP endpoints (served on an ephemeral port, fetched with libcurl) and
 * concurrent increments.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "common/metrics.h"

/* ------------------------------------------------------------ helpers */

/* Returns the value of the sample whose "name{labels}" part equals @p key
 * exactly, NAN when absent; fails the test if it appears twice. */
static double sample_value(const char *text, const char *key)
{
    double v = NAN;
    int hits = 0;
    size_t klen = strlen(key);
    const char *line = text;

    while (line && *line) {
        const char *nl = strchr(line, '\n');
        size_t llen = nl ? (size_t)(nl - line) : strlen(line);

        if (line[0] != '#' && llen > klen && strncmp(line, key, klen) == 0 &&
            line[klen] == ' ') {
            char *end = NULL;
            const char *vs = line + klen + 1;

            if (strncmp(vs, "+Inf", 4) == 0)
                v = INFINITY;
            else
                v = strtod(vs, &end);
            hits++;
        }
        line = nl ? nl + 1 : NULL;
    }
    assert_true(hits <= 1);
    return v;
}

static int count_substr(const char *text, const char *needle)
{
    int n = 0;

    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* Family name of a sample line (up to '{', ' ', or histogram suffix). */
static void family_of(const char *line, char *out, size_t out_size)
{
    size_t n = strcspn(line, "{ \n");
    static const char *const sfx[] = {"_bucket", "_sum", "_count"};

    snprintf(out, out_size, "%.*s", (int)n, line);
    for (size_t i = 0; i < 3; i++) {
        size_t sl = strlen(sfx[i]), ol = strlen(out);

        if (ol > sl && strcmp(out + ol - sl, sfx[i]) == 0) {
            /* Only strip when a TYPE histogram line exists for the base;
             * the caller checks grouping against the TYPE lines. */
            out[ol - sl] = '\0';
            break;
        }
    }
}

/* Checks grouping: every sample line belongs to the family of the last
 * "# TYPE" line, and each family has exactly one TYPE line. */
static void assert_grouped(const char *text)
{
    char cur[256] = "";
    const char *line = text;

    while (line && *line) {
        const char *nl = strchr(line, '\n');

        if (strncmp(line, "# TYPE ", 7) == 0) {
            char tl[300];

            snprintf(cur, sizeof(cur), "%.*s", (int)strcspn(line + 7, " "),
                     line + 7);
            snprintf(tl, sizeof(tl), "# TYPE %s ", cur);
            assert_int_equal(count_substr(text, tl), 1);
        } else if (line[0] != '#') {
            char fam[256];

            family_of(line, fam, sizeof(fam));
            if (strcmp(fam, cur) != 0) {
                /* a counter named x_count/x_sum would be stripped wrongly;
                 * retry with the full name */
                snprintf(fam, sizeof(fam), "%.*s", (int)strcspn(line, "{ \n"),
                         line);
            }
            assert_string_equal(fam, cur);
        }
        line = nl ? nl + 1 : NULL;
    }
}

/* ------------------------------------------------------------- tests */

static void test_null_is_noop(void **state)
{
    (void)state;
    int port = 123;
    char err[64] = "";

    metrics_free(NULL);
    metrics_describe(NULL, "a", "counter", "h");
    metrics_counter_add(NULL, "a", NULL, 1);
    metrics_gauge_set(NULL, "a", NULL, 1);
    metrics_histogram_observe(NULL, "a", NULL, 1);
    metrics_update_from_kafka_stats(NULL, "{}", 2);
    metrics_set_health(NULL, true, true, "x");
    assert_true(metrics_counter_get(NULL, "a", NULL) == 0);
    assert_false(metrics_is_ready(NULL));
    assert_null(metrics_render(NULL, NULL));
    assert_int_equal(metrics_serve(NULL, 0, &port, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(port, 0);
}

static void test_counter_gauge_format(void **state)
{
    (void)state;
    struct metrics *m = metrics_new("response");
    assert_non_null(m);

    metrics_describe(m, "crmsync_messages_consumed_total", "counter",
                     "Messages consumed from Kafka.");
    metrics_counter_add(m, "crmsync_messages_consumed_total", NULL, 3);
    metrics_counter_add(m, "crmsync_messages_consumed_total", NULL, 4);
    metrics_counter_add(m, "crmsync_messages_skipped_total",
                        "reason=\"no_campaign\"", 2);
    metrics_counter_add(m, "crmsync_messages_skipped_total",
                        "reason=\"copied_list\"", 1);
    metrics_counter_add(m, "crmsync_messages_skipped_total",
                        "reason=\"no_campaign\"", 5);
    metrics_counter_add(m, "crmsync_messages_skipped_total",
                        "reason=\"no_campaign\"", -1); /* ignored */
    metrics_gauge_set(m, "crmsync_partitions_paused", NULL, 4);
    metrics_gauge_set(m, "crmsync_partitions_paused", NULL, 2);
    metrics_gauge_set(m, "crmsync_fraction", NULL, 0.1);
    /* a type clash must not corrupt the family */
    metrics_gauge_set(m, "crmsync_messages_consumed_total", NULL, 99);

    assert_true(
        metrics_counter_get(m, "crmsync_messages_consumed_total", NULL) == 7);
    assert_true(metrics_counter_get(m, "crmsync_messages_skipped_total",
                                    "reason=\"no_campaign\"") == 7);
    assert_true(metrics_counter_get(m, "nope", NULL) == 0);
    assert_true(metrics_gauge_get(m, "crmsync_partitions_paused", NULL) == 2);

    size_t len = 0;
    char *text = metrics_render(m, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);

    assert_non_null(strstr(text, "# HELP crmsync_messages_consumed_total "
                                 "Messages consumed from Kafka.\n"
                                 "# TYPE crmsync_messages_consumed_total "
                                 "counter\n"));
    assert_non_null(
        strstr(text, "# TYPE crmsync_messages_skipped_total counter\n"));
    assert_non_null(strstr(text, "# TYPE crmsync_partitions_paused gauge\n"));
    assert_true(sample_value(text, "crmsync_messages_consumed_total"
                                   "{worker=\"response\"}") == 7);
    assert_true(sample_value(text,
                             "crmsync_messages_skipped_total{worker="
                             "\"response\",reason=\"no_campaign\"}") == 7);
    assert_true(sample_value(text,
                             "crmsync_messages_skipped_total{worker="
                             "\"response\",reason=\"copied_list\"}") == 1);
    assert_true(sample_value(text, "crmsync_partitions_paused{worker="
                                   "\"response\"}") == 2);
    assert_non_null(
        strstr(text, "crmsync_fraction{worker=\"response\"} 0.1\n"));
    assert_grouped(text);

    /* sorted: families by name */
    const char *a = strstr(text, "# TYPE crmsync_fraction");
    const char *b = strstr(text, "# TYPE crmsync_messages_consumed_total");
    const char *c = strstr(text, "# TYPE crmsync_partitions_paused");
    assert_true(a && b && c && a < b && b < c);
    free(text);
    metrics_free(m);
}

static void test_histogram_format(void **state)
{
    (void)state;
    struct metrics *m = metrics_new("response");

    metrics_describe(m, "crmsync_crm_request_duration_seconds", "histogram",
                     "CRM HTTP request latency.");
    const double obs[] = {0.0005, 0.001, 0.02, 0.3, 0.3, 7, 100};
    double sum = 0;
    for (size_t i = 0; i < sizeof(obs) / sizeof(obs[0]); i++) {
        metrics_histogram_observe(m, "crmsync_crm_request_duration_seconds",
                                  "kind=\"batch\"", obs[i]);
        sum += obs[i];
    }
    char *text = metrics_render(m, NULL);
    assert_non_null(text);
    assert_non_null(strstr(
        text, "# TYPE crmsync_crm_request_duration_seconds histogram\n"));
    const struct {
        const char *le;
        double want;
    } cases[] = {{"0.001", 2}, {"0.0025", 2}, {"0.025", 3},
                 {"0.25", 3},  {"0.5", 5},    {"5", 5},
                 {"10", 6},    {"30", 6},     {"+Inf", 7}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char key[256];

        snprintf(key, sizeof(key),
                 "crmsync_crm_request_duration_seconds_bucket{worker="
                 "\"response\",kind=\"batch\",le=\"%s\"}",
                 cases[i].le);
        assert_true(sample_value(text, key) == cases[i].want);
    }
    assert_int_equal(count_substr(text, "_bucket{"), 15);
    double got_sum = sample_value(
        text, "crmsync_crm_request_duration_seconds_sum{worker=\"response\","
              "kind=\"batch\"}");
    assert_true(fabs(got_sum - sum) < 1e-9);
    assert_true(sample_value(text, "crmsync_crm_request_duration_seconds_"
                                   "count{worker=\"response\",kind=\"batch\""
                                   "}") == 7);
    assert_grouped(text);
    free(text);
    metrics_free(m);
}

static void test_label_escaping(void **state)
{
    (void)state;
    char out[64];

    assert_int_equal(metrics_label_escape("a\\b\"c\nd", out, sizeof(out)), 10);
    assert_string_equal(out, "a\\\\b\\\"c\\nd");
    /* truncation reports the needed size and stays terminated */
    assert_int_equal(metrics_label_escape("abcdef", out, 4), 6);
    assert_string_equal(out, "abc");

    /* the worker name is escaped into the constant label */
    struct metrics *m = metrics_new("we\"ird\\name");
    metrics_counter_add(m, "x_total", NULL, 1);
    char *text = metrics_render(m, NULL);
    assert_non_null(strstr(text, "x_total{worker=\"we\\\"ird\\\\name\"} 1\n"));
    free(text);

    /* HELP escapes backslash and newline */
    metrics_describe(m, "x_total", "counter", "line1\nline2 \\ end");
    text = metrics_render(m, NULL);
    assert_non_null(strstr(text, "# HELP x_total line1\\nline2 \\\\ end\n"));
    free(text);
    metrics_free(m);
}

/* A realistic librdkafka 2.x statistics payload (trimmed brokers). */
static const char stats_two_parts[] =
    "{\"name\":\"rdkafka#consumer-1\",\"client_id\":\"crmsync-response\","
    "\"type\":\"consumer\",\"ts\":5016483227792,\"time\":1700000000,"
    "\"age\":6000123,\"replyq\":0,\"msg_cnt\":0,\"msg_size\":0,"
    "\"msg_max\":100000,\"msg_size_max\":1073741824,\"simple_cnt\":0,"
    "\"metadata_cache_cnt\":1,"
    "\"brokers\":{\"localhost:9092/1\":{\"name\":\"localhost:9092/1\","
    "\"nodeid\":1,\"state\":\"UP\",\"rtt\":{\"min\":100,\"max\":900,"
    "\"avg\":300}}},"
    "\"topics\":{\"crmsync.response.events\":{\"topic\":"
    "\"crmsync.response.events\",\"age\":6000,\"metadata_age\":5000,"
    "\"batchsize\":{\"min\":0,\"max\":0},\"partitions\":{"
    "\"0\":{\"partition\":0,\"broker\":1,\"leader\":1,\"desired\":true,"
    "\"unknown\":false,\"fetchq_cnt\":12,\"fetch_state\":\"active\","
    "\"query_offset\":-1001,\"next_offset\":1500,\"app_offset\":1490,"
    "\"stored_offset\":1480,\"committed_offset\":1400,"
    "\"eof_offset\":-1001,\"lo_offset\":0,\"hi_offset\":1600,"
    "\"ls_offset\":1600,\"consumer_lag\":200,\"consumer_lag_stored\":120,"
    "\"txmsgs\":0,\"rxmsgs\":1500},"
    "\"1\":{\"partition\":1,\"broker\":1,\"leader\":1,\"desired\":true,"
    "\"unknown\":false,\"fetch_state\":\"active\",\"committed_offset\":50,"
    "\"hi_offset\":50,\"consumer_lag\":0,\"consumer_lag_stored\":0},"
    "\"2\":{\"partition\":2,\"broker\":1,\"leader\":1,\"desired\":false,"
    "\"unknown\":false,\"fetch_state\":\"none\",\"committed_offset\":-1001,"
    "\"hi_offset\":900,\"consumer_lag\":-1,\"consumer_lag_stored\":-1},"
    "\"-1\":{\"partition\":-1,\"broker\":-1,\"leader\":-1,\"desired\":false,"
    "\"consumer_lag\":-1,\"consumer_lag_stored\":-1}}}},"
    "\"cgrp\":{\"state\":\"up\",\"stateage\":5000,\"join_state\":"
    "\"steady\",\"rebalance_age\":4000,\"rebalance_cnt\":3,"
    "\"rebalance_reason\":\"group rebalanced\",\"assignment_size\":2}}";

/* Later sample: partition 0 revoked (cooperative), 1 still ours, lag
 * unknown (-1) for now. */
static const char stats_one_part[] =
    "{\"type\":\"consumer\",\"topics\":{\"crmsync.response.events\":{"
    "\"topic\":\"crmsync.response.events\",\"partitions\":{"
    "\"1\":{\"partition\":1,\"desired\":true,\"consumer_lag\":-1,"
    "\"consumer_lag_stored\":7},"
    "\"-1\":{\"partition\":-1,\"consumer_lag\":-1}}}},"
    "\"cgrp\":{\"rebalance_cnt\":4,\"assignment_size\":1}}";

static void test_kafka_stats(void **state)
{
    (void)state;
    struct metrics *m = metrics_new("response");
    const char *p0 = "partition=\"0\",topic=\"crmsync.response.events\"";
    const char *p1 = "partition=\"1\",topic=\"crmsync.response.events\"";
    const char *p2 = "partition=\"2\",topic=\"crmsync.response.events\"";

    metrics_update_from_kafka_stats(m, stats_two_parts,
                                    strlen(stats_two_parts));
    assert_true(metrics_gauge_get(m, "crmsync_consumer_lag", p0) == 200);
    assert_true(metrics_gauge_get(m, "crmsync_consumer_lag_stored", p0) == 120);
    assert_true(metrics_gauge_get(m, "crmsync_consumer_lag", p1) == 0);
    assert_true(
        metrics_counter_get(m, "crmsync_kafka_rebalances_total", NULL) == 3);
    assert_true(
        metrics_gauge_get(m, "crmsync_kafka_assigned_partitions", NULL) == 2);
    char *text = metrics_render(m, NULL);
    assert_true(sample_value(text, "crmsync_consumer_lag{worker=\"response\""
                                   ",partition=\"0\",topic=\"crmsync."
                                   "response.events\"}") == 200);
    assert_null(strstr(text, "partition=\"-1\""));
    assert_null(strstr(text, "partition=\"2\"")); /* not assigned */
    assert_int_equal(count_substr(text, "crmsync_consumer_lag{"), 2);
    free(text);
    (void)p2;

    metrics_update_from_kafka_stats(m, stats_one_part, strlen(stats_one_part));
    text = metrics_render(m, NULL);
    /* partition 0 disappeared: its series are removed */
    assert_null(strstr(text, "partition=\"0\""));
    /* partition 1 present with lag -1: last known value kept */
    assert_true(sample_value(text, "crmsync_consumer_lag{worker=\"response\""
                                   ",partition=\"1\",topic=\"crmsync."
                                   "response.events\"}") == 0);
    assert_true(metrics_gauge_get(m, "crmsync_consumer_lag_stored", p1) == 7);
    assert_true(
        metrics_counter_get(m, "crmsync_kafka_rebalances_total", NULL) == 4);
    assert_grouped(text);
    free(text);

    /* garbage is ignored, nothing changes */
    metrics_update_from_kafka_stats(m, "{not json", 9);
    metrics_update_from_kafka_stats(m, "[]", 2);
    assert_true(metrics_gauge_get(m, "crmsync_consumer_lag_stored", p1) == 7);
    metrics_free(m);
}

/* The partitions list behind committed offsets and lag seconds: same
 * filter as the lag gauges, -1001 and other negatives become -1. */
static void test_kafka_stats_partitions(void **state)
{
    (void)state;
    struct metrics_kafka_part *parts = NULL;
    size_t n = 99;
    static const char never[] =
        "{\"topics\":{\"t\":{\"partitions\":{"
        "\"0\":{\"partition\":0,\"desired\":true,"
        "\"committed_offset\":-1001,\"lo_offset\":10,\"hi_offset\":25,"
        "\"consumer_lag\":-1,\"consumer_lag_stored\":-1},"
        "\"1\":{\"partition\":1,\"committed_offset\":-1001,"
        "\"lo_offset\":0,\"hi_offset\":0,\"consumer_lag\":-1},"
        "\"2\":{\"partition\":2,\"committed_offset\":-1001,"
        "\"lo_offset\":-1001,\"hi_offset\":-1001,\"consumer_lag\":-1},"
        "\"3\":{\"partition\":3,\"committed_offset\":7,"
        "\"lo_offset\":0,\"hi_offset\":9,\"consumer_lag\":-1}}}}}";

    assert_int_equal(metrics_kafka_stats_partitions(
                         stats_two_parts, strlen(stats_two_parts), &parts, &n),
                     CS_ERR_OK);
    assert_int_equal(n, 2); /* 2 (desired=false) and -1 are not ours */
    for (size_t i = 0; i < n; i++) {
        const struct metrics_kafka_part *p = &parts[i];
        assert_string_equal(p->topic, "crmsync.response.events");
        if (p->partition == 0) {
            assert_true(p->committed_offset == 1400);
            assert_true(p->consumer_lag == 200);
            assert_true(p->consumer_lag_stored == 120);
            assert_true(p->lo_offset == 0 && p->hi_offset == 1600);
            /* stored (processed) wins over committed */
            assert_true(metrics_kafka_part_unprocessed(p) == 120);
        } else {
            assert_int_equal(p->partition, 1);
            assert_true(p->committed_offset == 50);
            assert_true(p->lo_offset == -1); /* absent */
            assert_true(metrics_kafka_part_unprocessed(p) == 0);
        }
    }
    free(parts);

    assert_int_equal(
        metrics_kafka_stats_partitions(never, strlen(never), &parts, &n),
        CS_ERR_OK);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++) {
        const struct metrics_kafka_part *p = &parts[i];
        int64_t want[] = {15, 0, -1, -1};
        assert_true(p->partition >= 0 && p->partition < 4);
        /* librdkafka's -1001 (no commit) is reported as -1 */
        assert_true(p->committed_offset == (p->partition == 3 ? 7 : -1));
        /* never committed: the whole partition; committed but lag
         * unknown, or no watermarks: unknown */
        if (metrics_kafka_part_unprocessed(p) != want[p->partition])
            fail_msg("partition %d: unprocessed %lld, want %lld",
                     (int)p->partition,
                     (long long)metrics_kafka_part_unprocessed(p),
                     (long long)want[p->partition]);
    }
    free(parts);

    /* The lag gauge gets the same never-committed fallback. */
    struct metrics *m = metrics_new("w");
    metrics_update_from_kafka_stats(m, never, strlen(never));
    assert_true(metrics_gauge_get(m, "crmsync_consumer_lag",
                                  "partition=\"0\",topic=\"t\"") == 15);
    char *text = metrics_render(m, NULL);
    assert_true(sample_value(text, "crmsync_consumer_lag{worker=\"w\","
                                   "partition=\"1\",topic=\"t\"}") == 0);
    assert_int_equal(count_substr(text, "crmsync_consumer_lag{"), 2);
    assert_int_equal(count_substr(text, "crmsync_consumer_lag_stored{"), 0);
    free(text);
    metrics_free(m);

    parts = (struct metrics_kafka_part *)1;
    assert_int_equal(metrics_kafka_stats_partitions("{not json", 9, &parts, &n),
                     CS_ERR_INVALID_ARG);
    assert_null(parts);
    assert_int_equal(n, 0);
    assert_int_equal(metrics_kafka_stats_partitions("[]", 2, &parts, &n),
                     CS_ERR_INVALID_ARG);
    assert_int_equal(metrics_kafka_stats_partitions("{}", 2, &parts, &n),
                     CS_ERR_OK);
    assert_null(parts);
    assert_int_equal(n, 0);
}

/* Age of the oldest unprocessed message with an injected clock. */
static void test_lag_seconds(void **state)
{
    (void)state;
    const int64_t t = 1700000000000LL; /* ms since the epoch */
    int64_t since = 0;

    /* caught up, or lag unknown with nothing held */
    assert_true(metrics_lag_seconds(t, -1, 0, &since) == 0);
    assert_true(metrics_lag_seconds(t, -1, -1, &since) == 0);
    assert_true(since == 0);
    /* held messages: now minus the oldest one's Kafka timestamp */
    assert_true(metrics_lag_seconds(t, t - 2500, 0, &since) == 2.5);
    assert_true(metrics_lag_seconds(t + 4000, t - 2500, 3, &since) == 6.5);
    assert_true(since == 0);
    /* a producer clock ahead of ours never gives a negative age */
    assert_true(metrics_lag_seconds(t, t + 900, 0, &since) == 0);
    /* lag but nothing held (next message not fetched yet): a lower bound
     * counted from when it was first seen; a stall keeps it growing */
    assert_true(metrics_lag_seconds(t, -1, 5, &since) == 0);
    assert_true(since == t);
    assert_true(metrics_lag_seconds(t + 1500, -1, 5, &since) == 1.5);
    assert_true(metrics_lag_seconds(t + 7000, -1, 9, &since) == 7);
    /* the next message is fetched: its real age takes over */
    assert_true(metrics_lag_seconds(t + 8000, t - 60000, 9, &since) == 68);
    assert_true(since == 0);
    /* fetched and done, more lag: a new lower bound starts at 0 */
    assert_true(metrics_lag_seconds(t + 9000, -1, 4, &since) == 0);
    assert_true(metrics_lag_seconds(t + 9500, -1, 4, &since) == 0.5);
    /* caught up: 0 and the state resets */
    assert_true(metrics_lag_seconds(t + 9600, -1, 0, &since) == 0);
    assert_true(since == 0);
    assert_true(metrics_lag_seconds(t + 20000, -1, 1, &since) == 0);
}

static void test_remove_series(void **state)
{
    (void)state;
    struct metrics *m = metrics_new("w");
    const char *a = "partition=\"0\",topic=\"t\"";
    const char *b = "partition=\"1\",topic=\"t\"";

    metrics_gauge_set(m, "crmsync_consumer_lag_seconds", a, 3);
    metrics_gauge_set(m, "crmsync_consumer_lag_seconds", b, 4);
    metrics_remove(m, "crmsync_consumer_lag_seconds", a);
    metrics_remove(m, "crmsync_consumer_lag_seconds", a); /* absent: ok */
    metrics_remove(m, "crmsync_no_such_family", a);
    metrics_remove(NULL, "crmsync_consumer_lag_seconds", b);
    char *text = metrics_render(m, NULL);
    assert_null(strstr(text, "partition=\"0\""));
    assert_true(sample_value(text, "crmsync_consumer_lag_seconds{worker=\"w\","
                                   "partition=\"1\",topic=\"t\"}") == 4);
    free(text);
    metrics_free(m);
}

/* When promtool is installed, the exposition passes `promtool check
 * metrics` (format and lint); otherwise the test only checks the text. */
static void test_promtool_check(void **state)
{
    (void)state;
    struct metrics *m = metrics_new("response");

    metrics_describe(m, "crmsync_messages_skipped_total", "counter",
                     "Messages skipped \\ by \"reason\".");
    metrics_counter_add(m, "crmsync_messages_skipped_total",
                        "reason=\"a\\\\b\\\"c\\nd\"", 2);
    metrics_describe(m, "crmsync_crm_request_duration_seconds", "histogram",
                     "CRM request latency.");
    metrics_histogram_observe(m, "crmsync_crm_request_duration_seconds",
                              "kind=\"batch\"", 0.3);
    metrics_describe(m, "crmsync_partitions_paused", "gauge",
                     "Paused partitions.");
    metrics_gauge_set(m, "crmsync_partitions_paused", NULL, 0);
    metrics_set_health(m, true, true, NULL);
    metrics_update_from_kafka_stats(m, stats_two_parts,
                                    strlen(stats_two_parts));
    char *text = metrics_render(m, NULL);
    assert_non_null(text);
    assert_non_null(strstr(text, "reason=\"a\\\\b\\\"c\\nd\""));

    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        print_message("promtool not installed: skipping lint\n");
    } else {
        FILE *p = popen("promtool check metrics", "w");
        assert_non_null(p);
        fputs(text, p);
        int rc = pclose(p);
        assert_int_equal(rc, 0);
    }
    free(text);
    metrics_free(m);
}

/* ---------------------------------------------------------------- HTTP */

struct body {
    char data[65536];
    size_t len;
};

static size_t body_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct body *b = ud;
    size_t n = size * nmemb;

    if (b->len + n >= sizeof(b->data))
        return 0;
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* GETs http://127.0.0.1:port/path; returns the status, body in *b and the
 * content type copied into ctype. */
static long http_get(int port, const char *path, struct body *b, char *ctype,
                     size_t ctype_size)
{
    char url[128];
    long status = 0;
    CURL *c = curl_easy_init();

    assert_non_null(c);
    b->len = 0;
    b->data[0] = '\0';
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, body_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (ctype) {
        char *ct = NULL;

        curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
        snprintf(ctype, ctype_size, "%s", ct ? ct : "");
    }
    curl_easy_cleanup(c);
    return status;
}

static void test_http_endpoints(void **state)
{
    (void)state;
    struct metrics *m = metrics_new("response");
    struct body *b = malloc(sizeof(*b));
    char err[256] = "";
    char ctype[128];
    int port = 0;

    assert_non_null(b);
    metrics_counter_add(m, "crmsync_messages_processed_total", NULL, 42);
    assert_int_equal(metrics_serve(m, 0, &port, err, sizeof(err)), CS_ERR_OK);
    assert_true(port > 0 && port < 65536);
    /* a second serve is refused */
    assert_int_equal(metrics_serve(m, 0, NULL, err, sizeof(err)),
                     CS_ERR_INVALID_ARG);

    assert_int_equal(http_get(port, "/metrics", b, ctype, sizeof(ctype)), 200);
    assert_string_equal(ctype, "text/plain; version=0.0.4");
    assert_true(sample_value(b->data, "crmsync_messages_processed_total{"
                                      "worker=\"response\"}") == 42);

    assert_int_equal(http_get(port, "/healthz", b, NULL, 0), 200);
    assert_string_equal(b->data, "ok\n");

    /* not ready before the first set_health */
    assert_int_equal(http_get(port, "/readyz", b, NULL, 0), 503);
    metrics_set_health(m, true, false, "redis down");
    assert_int_equal(http_get(port, "/readyz", b, NULL, 0), 503);
    assert_non_null(strstr(b->data, "redis down"));
    assert_true(metrics_gauge_get(m, "crmsync_ready", NULL) == 0);
    metrics_set_health(m, true, true, NULL);
    assert_int_equal(http_get(port, "/readyz", b, NULL, 0), 200);
    assert_true(metrics_is_ready(m));
    assert_int_equal(http_get(port, "/metrics", b, NULL, 0), 200);
    assert_true(sample_value(b->data, "crmsync_ready{worker=\"response\"}") ==
                1);
    metrics_set_health(m, false, true, "no partitions assigned");
    assert_int_equal(http_get(port, "/readyz", b, NULL, 0), 503);
    assert_non_null(strstr(b->data, "no partitions assigned"));

    assert_int_equal(http_get(port, "/nope", b, NULL, 0), 404);
    assert_int_equal(http_get(port, "/", b, NULL, 0), 404);

    /* binding a port in use fails with CS_ERR_IO */
    struct metrics *m2 = metrics_new("other");
    assert_int_equal(metrics_serve(m2, port, NULL, err, sizeof(err)),
                     CS_ERR_IO);
    assert_non_null(strstr(err, "port"));
    metrics_free(m2);

    free(b);
    metrics_free(m);
}

/* ---------------------------------------------------------- concurrency */

#define N_THREADS 4
#define N_ITERS   20000

static void *bump(void *arg)
{
    struct metrics *m = arg;

    for (int i = 0; i < N_ITERS; i++) {
        char labels[32];

        snprintf(labels, sizeof(labels), "shard=\"%d\"", i % 50);
        metrics_counter_add(m, "crmsync_messages_consumed_total", NULL, 1);
        metrics_counter_add(m, "crmsync_sharded_total", labels, 1);
        metrics_histogram_observe(m, "crmsync_lat_seconds", NULL, 0.01);
        if (i % 1000 == 0)
            free(metrics_render(m, NULL));
    }
    return NULL;
}

static void test_concurrent_increments(void **state)
{
    (void)state;
    struct metrics *m = metrics_new("response");
    pthread_t th[N_THREADS];

    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, bump, m), 0);
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(th[i], NULL);
    assert_true(metrics_counter_get(m, "crmsync_messages_consumed_total",
                                    NULL) == N_THREADS * N_ITERS);
    double total = 0;
    for (int s = 0; s < 50; s++) {
        char labels[32];

        snprintf(labels, sizeof(labels), "shard=\"%d\"", s);
        total += metrics_counter_get(m, "crmsync_sharded_total", labels);
    }
    assert_true(total == N_THREADS * N_ITERS);
    char *text = metrics_render(m, NULL);
    assert_true(sample_value(text, "crmsync_lat_seconds_count{worker="
                                   "\"response\"}") == N_THREADS * N_ITERS);
    free(text);
    metrics_free(m);
}

/* A few thousand series stay sorted, findable and fast enough. */
static void test_many_series(void **state)
{
    (void)state;
    struct metrics *m = metrics_new("response");

    for (int i = 4999; i >= 0; i--) {
        char labels[64];

        snprintf(labels, sizeof(labels), "partition=\"%d\",topic=\"t\"", i);
        metrics_gauge_set(m, "crmsync_consumer_lag", labels, i);
    }
    assert_true(metrics_gauge_get(m, "crmsync_consumer_lag",
                                  "partition=\"1234\",topic=\"t\"") == 1234);
    char *text = metrics_render(m, NULL);
    assert_int_equal(count_substr(text, "crmsync_consumer_lag{"), 5000);
    assert_int_equal(count_substr(text, "# TYPE "), 1);
    free(text);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_null_is_noop),
        cmocka_unit_test(test_counter_gauge_format),
        cmocka_unit_test(test_histogram_format),
        cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_kafka_stats),
        cmocka_unit_test(test_kafka_stats_partitions),
        cmocka_unit_test(test_lag_seconds),
        cmocka_unit_test(test_remove_series),
        cmocka_unit_test(test_promtool_check),
        cmocka_unit_test(test_http_endpoints),
        cmocka_unit_test(test_concurrent_increments),
        cmocka_unit_test(test_many_series),
    };
    int rc;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
