/*
 * crmsync lag - consumer lag of every worker group per topic and partition,
 * like `kafka-consumer-groups --describe`, with a total and a verdict per
 * partition and group following Burrow's evaluation rules
 * (common/lag_eval.h). Takes --samples samples --interval apart and prints
 * one report, or with --watch refreshes it every --interval over a sliding
 * window of the last --window samples until SIGINT/SIGTERM.
 *
 * Ownership: main owns the options (props strings), the Kafka client and the
 * group array. SIGINT/SIGTERM are blocked before librdkafka starts threads
 * and received with sigtimedwait() while waiting between samples, so there
 * is no global stop flag. Single-threaded from our point of view.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "lag_kafka.h"
#include "lag_report.h"

#define EXIT_NOT_OK      3   /* a group is lagging, stalled or rewinding */
#define EXIT_INTERRUPTED 130 /* one-shot report interrupted by a signal */

/* Groups checked when the cluster cannot list groups (librdkafka's mock). */
static const char *const worker_groups[] = {
    "crmsync-response", "crmsync-bounce", "crmsync-listsync",
    "crmsync-trigger"};

/* Everything the command line decides. */
struct opts {
    const char *bootstrap; /* borrowed from argv; NULL = from -X/-F */
    char **props;          /* owned "name=value" strings, in order */
    size_t prop_cnt;
    const char **groups; /* owned array; strings borrowed from argv */
    size_t group_cnt;
    const char **topics; /* owned array; strings borrowed from argv */
    size_t topic_cnt;
    const char *prefix; /* borrowed; group filter for discovery */
    int samples;        /* one-shot: samples per report */
    int window;         /* --watch: window size */
    long interval_ms;   /* between samples */
    int timeout_ms;     /* per Kafka request */
    bool watch;
    bool json;
};

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: crmsync lag [-b BROKERS] [-X prop=value]... [-F FILE]\n"
        "                   [-g GROUP]... [--prefix P] [-t TOPIC]...\n"
        "                   [--samples N] [--interval S] [--watch "
        "[--window N]]\n"
        "                   [--json] [-T MS]\n"
        "\n"
        "Prints the consumer lag of every worker group per topic and "
        "partition\n"
        "(GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG VERDICT "
        "RULE\n"
        "CLIENT-ID), a TOTAL line per group, and a verdict per partition and\n"
        "group. It never joins a group: it only reads committed offsets\n"
        "(OffsetFetch) and watermarks.\n"
        "\n"
        "connection (same librdkafka properties as the workers):\n"
        "  -b BROKERS        bootstrap.servers\n"
        "  -X prop=value     librdkafka property (SASL, SSL, ...); repeatable\n"
        "  -F FILE           read prop=value lines from FILE ('#' comments);\n"
        "                    -X and -F apply in command-line order. Secret\n"
        "                    values are never printed.\n"
        "  -T, --timeout MS  per-request timeout (default 10000)\n"
        "\n"
        "what to show:\n"
        "  -g, --group GROUP  this group (repeatable); default: every group\n"
        "                     listed by the cluster whose id starts with "
        "--prefix.\n"
        "                     Clusters that cannot list groups (the local\n"
        "                     mock) fall back to the worker groups\n"
        "                     crmsync-{response,bounce,listsync,trigger}\n"
        "                     that have committed offsets.\n"
        "  --prefix P         group id prefix for discovery (default "
        "crmsync-;\n"
        "                     '' = all groups)\n"
        "  -t, --topic TOPIC  only this topic (repeatable); default: every\n"
        "                     topic the group has committed offsets on.\n"
        "                     Groups and topics are discovered once at "
        "start.\n"
        "\n"
        "sampling:\n"
        "  --samples N     samples per report (default 3, >= 2)\n"
        "  --interval S    seconds between samples (default 1, may be "
        "fractional)\n"
        "  --watch         refresh the report every interval until "
        "SIGINT/SIGTERM\n"
        "  --window N      --watch: evaluate the last N samples (default "
        "10)\n"
        "  --json          one JSON document per report (--watch: one per "
        "line):\n"
        "                  {\"verdict\",\"groups\":[{\"group\",\"verdict\","
        "\"total_lag\",\n"
        "                  \"partitions\":[{\"topic\",\"partition\","
        "\"current_offset\",\n"
        "                  \"log_start_offset\",\"log_end_offset\",\"lag\","
        "\"verdict\",\n"
        "                  \"rule\",\"samples\",\"client_id\"}]}]}\n"
        "\n"
        "lag = LOG-END-OFFSET - CURRENT-OFFSET; without a commit (\"-\") it "
        "counts\n"
        "from the log start offset (what a new consumer reading from "
        "earliest\n"
        "still has to read).\n"
        "\n"
        "verdict of a partition: Burrow's rules over its window of samples, "
        "first\n"
        "match wins (RULE column):\n"
        "  1. zero lag in any sample                      OK        "
        "zero_lag\n"
        "  2. committed offset went backwards             rewinding "
        "offset_rewound\n"
        "  3. no commit for longer than the window span   stalled   "
        "no_commit_in_window\n"
        "  4. committed offset never changed              stalled   "
        "offset_unchanged\n"
        "  5. lag never decreased                         lagging   "
        "lag_not_decreasing\n"
        "  6. otherwise (lag shrinking)                   OK        "
        "catching_up\n"
        "With a single sample (the first --watch report) a non-zero lag is\n"
        "lagging (too_few_samples).\n"
        "The group's verdict is its worst partition (OK < lagging < stalled\n"
        "< rewinding).\n"
        "\n"
        "exit codes: 0 every group OK; 3 some group lagging, stalled or\n"
        "rewinding; 1 Kafka error; 2 usage or configuration error; 130\n"
        "interrupted before the report. --watch exits 0 on SIGINT/SIGTERM.\n");
}

static void opts_free(struct opts *o)
{
    lag_strv_free(o->props, o->prop_cnt);
    free(o->groups);
    free(o->topics);
}

/* Appends to a growable array of borrowed strings; false on OOM. */
static bool push_borrowed(const char ***v, size_t *n, const char *s)
{
    const char **nv = realloc(*v, (*n + 1) * sizeof(*nv));

    if (!nv)
        return false;
    nv[(*n)++] = s;
    *v = nv;
    return true;
}

/* Appends a copy of the n chars at s to o->props; false on OOM. */
static bool push_prop(struct opts *o, const char *s, size_t n)
{
    char **nv = realloc(o->props, (o->prop_cnt + 1) * sizeof(*nv));
    char *dup;

    if (!nv)
        return false;
    o->props = nv;
    dup = strndup(s, n);
    if (!dup)
        return false;
    o->props[o->prop_cnt++] = dup;
    return true;
}

/* Reads "prop=value" lines of path into o->props; false with a message on
 * stderr (never a value). */
static bool read_prop_file(struct opts *o, const char *path)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    FILE *f = fopen(path, "r");
    int lineno = 0;
    bool ok = true;

    if (!f) {
        fprintf(stderr, "crmsync lag: -F %s: %s\n", path, strerror(errno));
        return false;
    }
    for (;;) {
        char *s;

        len = getline(&line, &cap, f);
        if (len < 0)
            break;
        lineno++;
        s = line;
        while (*s == ' ' || *s == '\t')
            s++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' ||
                           line[len - 1] == ' ' || line[len - 1] == '\t'))
            line[--len] = '\0';
        if (*s == '\0' || *s == '#')
            continue;
        if (!strchr(s, '=')) {
            fprintf(stderr, "crmsync lag: -F %s:%d: want prop=value\n", path,
                    lineno);
            ok = false;
            break;
        }
        if (!push_prop(o, s, strlen(s))) {
            ok = false;
            break;
        }
    }
    free(line);
    fclose(f);
    return ok;
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_seconds(const char *s, long *ms)
{
    char *end = NULL;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0.01) || v > 86400.0)
        return false;
    *ms = (long)(v * 1000.0 + 0.5);
    return true;
}

/* True when a bootstrap list was given through -X/-F. */
static bool props_have_bootstrap(const struct opts *o)
{
    for (size_t i = 0; i < o->prop_cnt; i++) {
        if (!strncmp(o->props[i], "bootstrap.servers=", 18) ||
            !strncmp(o->props[i], "metadata.broker.list=", 21))
            return true;
    }
    return false;
}

enum {
    OPT_PREFIX = 256,
    OPT_SAMPLES,
    OPT_INTERVAL,
    OPT_WINDOW,
    OPT_WATCH,
    OPT_JSON
};

/* Returns 0 to run, 2 on a usage error (message printed), -1 for --help. */
static int parse_opts(int argc, char **argv, struct opts *o)
{
    static const struct option longs[] = {
        {"bootstrap", required_argument, NULL, 'b'},
        {"group", required_argument, NULL, 'g'},
        {"topic", required_argument, NULL, 't'},
        {"timeout", required_argument, NULL, 'T'},
        {"prefix", required_argument, NULL, OPT_PREFIX},
        {"samples", required_argument, NULL, OPT_SAMPLES},
        {"interval", required_argument, NULL, OPT_INTERVAL},
        {"window", required_argument, NULL, OPT_WINDOW},
        {"watch", no_argument, NULL, OPT_WATCH},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    long v;
    int c;

    memset(o, 0, sizeof(*o));
    o->prefix = "crmsync-";
    o->samples = 3;
    o->window = 10;
    o->interval_ms = 1000;
    o->timeout_ms = 10000;
    optind = 1;
    for (;;) {
        c = getopt_long(argc, argv, "b:X:F:g:t:T:h", longs, NULL);
        if (c == -1)
            break;
        switch (c) {
        case 'b':
            o->bootstrap = optarg;
            break;
        case 'X':
            if (!strchr(optarg, '=') || optarg[0] == '=') {
                fprintf(stderr, "crmsync lag: -X wants prop=value\n");
                return 2;
            }
            if (!push_prop(o, optarg, strlen(optarg)))
                return 2;
            break;
        case 'F':
            if (!read_prop_file(o, optarg))
                return 2;
            break;
        case 'g':
            if (!push_borrowed(&o->groups, &o->group_cnt, optarg))
                return 2;
            break;
        case 't':
            if (!push_borrowed(&o->topics, &o->topic_cnt, optarg))
                return 2;
            break;
        case 'T':
            if (!parse_long(optarg, 100, 600000, &v)) {
                fprintf(stderr, "crmsync lag: bad -T (100..600000 ms)\n");
                return 2;
            }
            o->timeout_ms = (int)v;
            break;
        case OPT_PREFIX:
            o->prefix = optarg;
            break;
        case OPT_SAMPLES:
            if (!parse_long(optarg, 2, 1000, &v)) {
                fprintf(stderr, "crmsync lag: bad --samples (2..1000)\n");
                return 2;
            }
            o->samples = (int)v;
            break;
        case OPT_WINDOW:
            if (!parse_long(optarg, 2, 1000, &v)) {
                fprintf(stderr, "crmsync lag: bad --window (2..1000)\n");
                return 2;
            }
            o->window = (int)v;
            break;
        case OPT_INTERVAL:
            if (!parse_seconds(optarg, &o->interval_ms)) {
                fprintf(stderr,
                        "crmsync lag: bad --interval (0.01..86400 s)\n");
                return 2;
            }
            break;
        case OPT_WATCH:
            o->watch = true;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case 'h':
            return -1;
        default:
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "crmsync lag: unexpected argument '%s'\n",
                argv[optind]);
        return 2;
    }
    if (!o->bootstrap && !props_have_bootstrap(o)) {
        fprintf(stderr, "crmsync lag: -b BROKERS (or -X "
                        "bootstrap.servers=...) is required\n");
        return 2;
    }
    return 0;
}

static int64_t now_ms(clockid_t clk)
{
    struct timespec ts;

    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleeps ms unless SIGINT/SIGTERM (blocked) arrives; true if one did. */
static bool wait_or_signal(const sigset_t *sigs, long ms)
{
    struct timespec until;
    int64_t deadline = now_ms(CLOCK_MONOTONIC) + ms;

    for (;;) {
        int64_t left = deadline - now_ms(CLOCK_MONOTONIC);

        if (left <= 0)
            return false;
        until.tv_sec = (time_t)(left / 1000);
        until.tv_nsec = (long)(left % 1000) * 1000000L;
        if (sigtimedwait(sigs, NULL, &until) >= 0)
            return true;
        if (errno != EAGAIN && errno != EINTR)
            return false;
    }
}

/* True if SIGINT/SIGTERM is pending (consumes it). */
static bool signal_pending(const sigset_t *sigs)
{
    struct timespec zero = {0, 0};

    return sigtimedwait(sigs, NULL, &zero) >= 0;
}

/* Sets up g's partitions for its topics; false with errstr. */
static bool group_setup(struct lag_client *c, struct lag_group *g,
                        size_t win_cap, char *errstr, size_t errstr_size)
{
    size_t total = 0;
    int cnt[64];
    size_t k = 0;

    if (g->topic_cnt > sizeof(cnt) / sizeof(cnt[0])) {
        snprintf(errstr, errstr_size, "group %s: more than %zu topics", g->name,
                 sizeof(cnt) / sizeof(cnt[0]));
        return false;
    }
    for (size_t t = 0; t < g->topic_cnt; t++) {
        cnt[t] = lag_client_partition_cnt(c, g->topics[t], errstr, errstr_size);
        if (cnt[t] < 0)
            return false;
        if (cnt[t] == 0) {
            snprintf(errstr, errstr_size, "topic %s does not exist",
                     g->topics[t]);
            return false;
        }
        total += (size_t)cnt[t];
    }
    g->obs = calloc(total ? total : 1, sizeof(*g->obs));
    g->parts = calloc(total ? total : 1, sizeof(*g->parts));
    if (!g->obs || !g->parts)
        goto out_nomem;
    g->part_cnt = total;
    for (size_t t = 0; t < g->topic_cnt; t++) {
        for (int p = 0; p < cnt[t]; p++, k++) {
            g->obs[k].topic = g->topics[t];
            g->obs[k].partition = p;
            g->parts[k].win = lag_window_new(win_cap);
            if (!g->parts[k].win)
                goto out_nomem;
        }
    }
    return true;

out_nomem:
    snprintf(errstr, errstr_size, "out of memory");
    return false;
}

/* Copies s into a freshly allocated string; false on OOM. */
static bool set_name(struct lag_group *g, const char *s)
{
    g->name = strdup(s);
    return g->name != NULL;
}

/*
 * Decides the groups and their topics and partitions. Returns 0, or the
 * exit code (1 Kafka, 2 usage) with the message printed.
 */
static int groups_discover(struct lag_client *c, const struct opts *o,
                           struct lag_group **out, size_t *out_cnt)
{
    char errstr[512];
    char **names = NULL;
    size_t name_cnt = 0;
    bool unsupported = false;
    bool fallback = false;
    struct lag_group *gs = NULL;
    size_t n = 0;
    size_t cap = o->watch ? (size_t)o->window : (size_t)o->samples;
    int rc = 1;

    if (o->group_cnt > 0) {
        for (size_t i = 0; i < o->group_cnt; i++) {
            if (!lag_strv_add(&names, &name_cnt, o->groups[i]))
                goto out_nomem;
        }
    } else {
        if (lag_client_list_groups(c, o->prefix, &names, &name_cnt,
                                   &unsupported, errstr,
                                   sizeof(errstr)) != CS_ERR_OK) {
            fprintf(stderr, "crmsync lag: %s\n", errstr);
            return 1;
        }
        if (unsupported) {
            fallback = true;
            for (size_t i = 0;
                 i < sizeof(worker_groups) / sizeof(worker_groups[0]); i++) {
                if (strncmp(worker_groups[i], o->prefix, strlen(o->prefix)))
                    continue;
                if (!lag_strv_add(&names, &name_cnt, worker_groups[i]))
                    goto out_nomem;
            }
        }
    }
    gs = calloc(name_cnt ? name_cnt : 1, sizeof(*gs));
    if (!gs)
        goto out_nomem;
    for (size_t i = 0; i < name_cnt; i++) {
        struct lag_group *g = &gs[n];

        if (!set_name(g, names[i]))
            goto out_nomem;
        n++;
        if (o->topic_cnt > 0) {
            for (size_t t = 0; t < o->topic_cnt; t++) {
                if (!lag_strv_add(&g->topics, &g->topic_cnt, o->topics[t]))
                    goto out_nomem;
            }
        } else if (lag_client_group_topics(c, g->name, &g->topics,
                                           &g->topic_cnt, errstr,
                                           sizeof(errstr)) != CS_ERR_OK) {
            fprintf(stderr, "crmsync lag: group %s: %s\n", g->name, errstr);
            goto out_free;
        }
        /* A fallback group without commits most likely does not exist. */
        if (fallback && g->topic_cnt == 0) {
            n--;
            free(g->name);
            lag_strv_free(g->topics, g->topic_cnt);
            memset(g, 0, sizeof(*g));
            continue;
        }
        if (!group_setup(c, g, cap, errstr, sizeof(errstr))) {
            fprintf(stderr, "crmsync lag: group %s: %s\n", g->name, errstr);
            goto out_free;
        }
    }
    lag_strv_free(names, name_cnt);
    *out = gs;
    *out_cnt = n;
    return 0;

out_nomem:
    fprintf(stderr, "crmsync lag: out of memory\n");
out_free:
    lag_strv_free(names, name_cnt);
    lag_group_free_all(gs, n);
    return rc;
}

/* Samples every group once; false with the message printed. */
static bool sample_all(struct lag_client *c, struct lag_group *gs, size_t n)
{
    char errstr[512];
    int64_t t;

    for (size_t i = 0; i < n; i++) {
        struct lag_group *g = &gs[i];

        if (lag_client_sample(c, g->name, g->obs, g->part_cnt, errstr,
                              sizeof(errstr)) != CS_ERR_OK) {
            fprintf(stderr, "crmsync lag: group %s: %s\n", g->name, errstr);
            return false;
        }
        t = now_ms(CLOCK_MONOTONIC);
        for (size_t k = 0; k < g->part_cnt; k++)
            lag_window_add(g->parts[k].win, g->obs[k].committed,
                           lag_obs_lag(&g->obs[k]), t);
    }
    return true;
}

/* Evaluates and prints one report; returns its exit code (0 or 3). */
static int report(struct lag_client *c, const struct opts *o,
                  struct lag_group *gs, size_t n)
{
    enum lag_verdict all = LAG_OK;
    int64_t t = now_ms(CLOCK_MONOTONIC);

    for (size_t i = 0; i < n; i++) {
        lag_group_eval(&gs[i], t);
        lag_client_owners(c, gs[i].name, gs[i].obs, gs[i].part_cnt);
        all = lag_verdict_worst(all, gs[i].verdict);
    }
    if (o->json) {
        json_t *doc = lag_report_json(gs, n);

        if (doc) {
            json_dumpf(doc, stdout, JSON_COMPACT);
            fputc('\n', stdout);
            json_decref(doc);
        }
    } else {
        if (o->watch && isatty(STDOUT_FILENO))
            fputs("\033[H\033[2J", stdout);
        lag_report_text(stdout, gs, n);
        if (o->watch)
            fputc('\n', stdout);
    }
    fflush(stdout);
    return all == LAG_OK ? 0 : EXIT_NOT_OK;
}

static int run(struct lag_client *c, const struct opts *o, const sigset_t *sigs)
{
    struct lag_group *gs = NULL;
    size_t n = 0;
    int rc;

    rc = groups_discover(c, o, &gs, &n);
    if (rc != 0)
        return rc;
    if (!o->watch) {
        for (int s = 0; s < o->samples; s++) {
            if (s > 0 && wait_or_signal(sigs, o->interval_ms)) {
                rc = EXIT_INTERRUPTED;
                goto out_free;
            }
            if (!sample_all(c, gs, n)) {
                rc = 1;
                goto out_free;
            }
            if (signal_pending(sigs)) {
                rc = EXIT_INTERRUPTED;
                goto out_free;
            }
        }
        rc = report(c, o, gs, n);
        goto out_free;
    }
    for (;;) {
        /* A failed sample is reported and retried at the next tick. */
        if (sample_all(c, gs, n))
            (void)report(c, o, gs, n);
        if (wait_or_signal(sigs, o->interval_ms))
            break;
    }
    rc = 0;
out_free:
    lag_group_free_all(gs, n);
    return rc;
}

int cli_lag_main(int argc, char **argv)
{
    struct lag_client_conf cc;
    struct lag_client *c;
    struct opts o;
    sigset_t sigs;
    sigset_t old;
    char errstr[512];
    bool bad_conf = false;
    int rc;

    rc = parse_opts(argc, argv, &o);
    if (rc != 0) {
        if (rc < 0)
            usage(stdout);
        else
            fprintf(stderr, "(crmsync lag --help for usage)\n");
        opts_free(&o);
        return rc < 0 ? 0 : rc;
    }
    /* Block before librdkafka starts its threads: they inherit the mask,
     * so the signals stay pending for sigtimedwait(). */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigprocmask(SIG_BLOCK, &sigs, &old);

    cc.bootstrap = o.bootstrap;
    cc.props = (const char *const *)o.props;
    cc.prop_cnt = o.prop_cnt;
    cc.timeout_ms = o.timeout_ms;
    c = lag_client_new(&cc, &bad_conf, errstr, sizeof(errstr));
    if (!c) {
        fprintf(stderr, "crmsync lag: %s\n", errstr);
        rc = bad_conf ? 2 : 1;
        goto out_restore;
    }
    rc = run(c, &o, &sigs);
    lag_client_free(c);
out_restore:
    sigprocmask(SIG_SETMASK, &old, NULL);
    opts_free(&o);
    return rc;
}
