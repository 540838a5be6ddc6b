/*
 * crmsync-kafka-mock - a local Kafka cluster for tests, demos and benchmarks,
 * built on librdkafka's in-process mock cluster (rdkafka_mock.h).
 *
 * It creates the cluster (3 brokers by default), pre-creates the crmsync
 * topics and their dead-letter topics plus any --topic, checks through a
 * real client that the metadata is served, then prints
 * "bootstrap=<host:port,...>" on stdout and, with --bootstrap-file, writes
 * the bootstrap string to that file atomically (temporary file + rename), so
 * a waiting script never reads a half-written address. It then waits for
 * SIGTERM or SIGINT and destroys the cluster.
 *
 * Ownership: the dummy producer handle owns nothing but the cluster's book
 * keeping; the cluster is destroyed before the handle. Single-threaded from
 * our point of view (librdkafka runs the brokers on its own threads). The
 * termination signals are blocked before any librdkafka thread exists and
 * received with sigwait(), so no global stop flag is needed.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_TOPICS     64
#define TOPIC_NAME_MAX 250

/* One topic to pre-create. */
struct topic_spec {
    char name[TOPIC_NAME_MAX]; /* Kafka topic name */
    int partitions;            /* partition count */
};

/* Everything the command line decides. */
struct opts {
    int brokers;                /* number of mock brokers */
    int partitions;             /* partitions of every default topic */
    int dlq_partitions;         /* partitions of every default <topic>.dlq */
    int replication;            /* replication factor (<= brokers) */
    const char *bootstrap_file; /* borrowed from argv; NULL = none */
    bool no_defaults;           /* skip the default crmsync topics */
    struct topic_spec extra[MAX_TOPICS]; /* --topic arguments */
    int extra_cnt;
};

/* The topics every crmsync worker kind reads; each also gets <topic>.dlq. */
static const char *const default_topics[] = {
    "crmsync.response.events",   "crmsync.bounce.events",
    "crmsync.listsync.requests", "crmsync.listsync.membership",
    "crmsync.trigger.events",
};

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: crmsync-kafka-mock [options]\n"
        "\n"
        "Starts an in-memory Kafka cluster (librdkafka mock cluster), prints\n"
        "'bootstrap=<host:port,...>' on stdout once the topics are served and\n"
        "runs until SIGTERM or SIGINT.\n"
        "\n"
        "options:\n"
        "  --brokers N          number of brokers (default 3)\n"
        "  --partitions N       partitions of each default topic (default 6)\n"
        "  --dlq-partitions N   partitions of each default <topic>.dlq\n"
        "                       (default: same as --partitions)\n"
        "  --replication N      replication factor (default min(3, brokers))\n"
        "  --topic NAME[:P]     also create topic NAME with P partitions\n"
        "                       (default --partitions); repeatable\n"
        "  --no-default-topics  create only the --topic topics\n"
        "  --bootstrap-file F   write the bootstrap string to F (atomically)\n"
        "  -h, --help           this text\n"
        "\n"
        "default topics (each with a <topic>.dlq):\n"
        "  crmsync.response.events, crmsync.bounce.events,\n"
        "  crmsync.listsync.requests, crmsync.listsync.membership,\n"
        "  crmsync.trigger.events\n"
        "\n"
        "limits of the mock cluster (librdkafka 2.0.x):\n"
        "  - everything is in memory and lost on exit;\n"
        "  - each partition keeps only about 5 MiB or 100000 message batches;\n"
        "    older batches are dropped (the low watermark moves up), so a\n"
        "    consumer that falls further behind loses data. Keep benchmark\n"
        "    streams within that or use more partitions;\n"
        "  - the CreateTopics admin API is not supported: create topics here;\n"
        "  - consumer groups (JoinGroup/SyncGroup/Heartbeat, OffsetCommit/\n"
        "    OffsetFetch), cooperative-sticky assignment and headers work\n"
        "    (tests/integration/test_stack_smoke.py); rdkafka_mock.h also\n"
        "    lists idempotent and transactional producers;\n"
        "  - when a member joins or leaves a group that already has members,\n"
        "    the coordinator waits up to session.timeout.ms - 1 s (44 s with\n"
        "    the default 45000) before it completes the rebalance: give test\n"
        "    consumers session.timeout.ms=6000 and "
        "heartbeat.interval.ms=500.\n");
}

/* Parses a positive int in [1, max]; false on anything else. */
static bool parse_count(const char *s, int max, int *out)
{
    char *end = NULL;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 1 || v > max)
        return false;
    *out = (int)v;
    return true;
}

/* Parses NAME[:P] into *spec; P defaults to default_partitions. */
static bool parse_topic(const char *arg, int default_partitions,
                        struct topic_spec *spec)
{
    const char *colon = strrchr(arg, ':');
    size_t name_len = colon ? (size_t)(colon - arg) : strlen(arg);

    if (name_len == 0 || name_len >= sizeof(spec->name))
        return false;
    memcpy(spec->name, arg, name_len);
    spec->name[name_len] = '\0';
    spec->partitions = default_partitions;
    if (colon)
        return parse_count(colon + 1, 10000, &spec->partitions);
    return true;
}

/* Fills *o from argv; returns 0 to run, 1 on --help, -1 on a usage error. */
static int parse_opts(int argc, char **argv, struct opts *o)
{
    static const struct option longopts[] = {
        {"brokers", required_argument, NULL, 'B'},
        {"partitions", required_argument, NULL, 'p'},
        {"dlq-partitions", required_argument, NULL, 'd'},
        {"replication", required_argument, NULL, 'r'},
        {"topic", required_argument, NULL, 't'},
        {"no-default-topics", no_argument, NULL, 'n'},
        {"bootstrap-file", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /* --topic may come before --partitions: keep the raw args. */
    const char *topic_args[MAX_TOPICS];
    int c;

    memset(o, 0, sizeof(*o));
    o->brokers = 3;
    o->partitions = 6;
    o->dlq_partitions = -1;
    o->replication = -1;
    for (;;) {
        c = getopt_long(argc, argv, "h", longopts, NULL);
        if (c == -1)
            break;
        switch (c) {
        case 'B':
            if (!parse_count(optarg, 64, &o->brokers))
                goto bad_value;
            break;
        case 'p':
            if (!parse_count(optarg, 10000, &o->partitions))
                goto bad_value;
            break;
        case 'd':
            if (!parse_count(optarg, 10000, &o->dlq_partitions))
                goto bad_value;
            break;
        case 'r':
            if (!parse_count(optarg, 64, &o->replication))
                goto bad_value;
            break;
        case 't':
            if (o->extra_cnt >= MAX_TOPICS) {
                fprintf(stderr, "crmsync-kafka-mock: at most %d --topic\n",
                        MAX_TOPICS);
                return -1;
            }
            topic_args[o->extra_cnt++] = optarg;
            break;
        case 'n':
            o->no_defaults = true;
            break;
        case 'f':
            o->bootstrap_file = optarg;
            break;
        case 'h':
            return 1;
        default:
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "crmsync-kafka-mock: unexpected argument '%s'\n",
                argv[optind]);
        return -1;
    }
    if (o->dlq_partitions < 0)
        o->dlq_partitions = o->partitions;
    if (o->replication < 0)
        o->replication = o->brokers < 3 ? o->brokers : 3;
    if (o->replication > o->brokers) {
        fprintf(stderr,
                "crmsync-kafka-mock: --replication %d exceeds --brokers %d\n",
                o->replication, o->brokers);
        return -1;
    }
    for (int i = 0; i < o->extra_cnt; i++) {
        if (!parse_topic(topic_args[i], o->partitions, &o->extra[i])) {
            fprintf(stderr, "crmsync-kafka-mock: bad --topic '%s'\n",
                    topic_args[i]);
            return -1;
        }
    }
    return 0;

bad_value:
    fprintf(stderr, "crmsync-kafka-mock: bad value '%s'\n", optarg);
    return -1;
}

/* Creates one topic; prints the reason to stderr on failure. */
static bool create_topic(rd_kafka_mock_cluster_t *mc, const char *name,
                         int partitions, int replication)
{
    rd_kafka_resp_err_t err;

    err = rd_kafka_mock_topic_create(mc, name, partitions, replication);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "crmsync-kafka-mock: create topic %s: %s\n", name,
                rd_kafka_err2str(err));
        return false;
    }
    fprintf(stderr, "crmsync-kafka-mock: topic %s partitions=%d rf=%d\n", name,
            partitions, replication);
    return true;
}

static bool create_topics(rd_kafka_mock_cluster_t *mc, const struct opts *o)
{
    char dlq[TOPIC_NAME_MAX + 8];
    size_t n = sizeof(default_topics) / sizeof(default_topics[0]);

    for (size_t i = 0; !o->no_defaults && i < n; i++) {
        snprintf(dlq, sizeof(dlq), "%s.dlq", default_topics[i]);
        if (!create_topic(mc, default_topics[i], o->partitions,
                          o->replication) ||
            !create_topic(mc, dlq, o->dlq_partitions, o->replication))
            return false;
    }
    for (int i = 0; i < o->extra_cnt; i++) {
        if (!create_topic(mc, o->extra[i].name, o->extra[i].partitions,
                          o->replication))
            return false;
    }
    return true;
}

/*
 * Connects a throw-away client to the cluster and checks that the metadata
 * lists every broker; proves the listeners answer before we announce them.
 */
static bool check_served(const char *bootstraps, int brokers)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_t *rk;
    rd_kafka_resp_err_t err;
    bool ok = false;

    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps, errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "crmsync-kafka-mock: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return false;
    }
    /* rd_kafka_new() takes ownership of conf on success only. */
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!rk) {
        fprintf(stderr, "crmsync-kafka-mock: check client: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return false;
    }
    err = rd_kafka_metadata(rk, 1, NULL, &md, 10000);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "crmsync-kafka-mock: metadata: %s\n",
                rd_kafka_err2str(err));
        goto out_destroy_rk;
    }
    ok = md->broker_cnt == brokers;
    if (!ok)
        fprintf(stderr, "crmsync-kafka-mock: metadata lists %d brokers\n",
                md->broker_cnt);
    rd_kafka_metadata_destroy(md);
out_destroy_rk:
    rd_kafka_destroy(rk);
    return ok;
}

/* Writes "<bootstraps>\n" to path via path.tmp.<pid> + rename(2). */
static bool write_bootstrap_file(const char *path, const char *bootstraps)
{
    char tmp[PATH_MAX];
    FILE *f;
    int n;

    n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        fprintf(stderr, "crmsync-kafka-mock: bootstrap file path too long\n");
        return false;
    }
    f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "crmsync-kafka-mock: %s: %s\n", tmp, strerror(errno));
        return false;
    }
    if (fprintf(f, "%s\n", bootstraps) < 0 || fclose(f) != 0) {
        fprintf(stderr, "crmsync-kafka-mock: write %s failed\n", tmp);
        unlink(tmp);
        return false;
    }
    if (rename(tmp, path) != 0) {
        fprintf(stderr, "crmsync-kafka-mock: rename to %s: %s\n", path,
                strerror(errno));
        unlink(tmp);
        return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    struct opts o;
    char errstr[512];
    sigset_t stop_sigs;
    rd_kafka_conf_t *conf;
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mc;
    const char *bootstraps;
    int sig = 0;
    int rc = 1;
    int pr;

    pr = parse_opts(argc, argv, &o);
    if (pr > 0) {
        usage(stdout);
        return 0;
    }
    if (pr < 0) {
        fprintf(stderr, "crmsync-kafka-mock: see --help\n");
        return 2;
    }

    /* Block before librdkafka starts threads: they inherit the mask and
     * the signals stay pending for sigwait() below. */
    sigemptyset(&stop_sigs);
    sigaddset(&stop_sigs, SIGTERM);
    sigaddset(&stop_sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_sigs, NULL);

    /* The handle only hosts the cluster: it never connects anywhere, so
     * silence its "no bootstrap.servers" notice (level 5). */
    conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
        fprintf(stderr, "crmsync-kafka-mock: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!rk) {
        fprintf(stderr, "crmsync-kafka-mock: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    conf = NULL; /* owned by rk now */

    mc = rd_kafka_mock_cluster_new(rk, o.brokers);
    if (!mc) {
        fprintf(stderr, "crmsync-kafka-mock: cannot create mock cluster\n");
        goto out_destroy_rk;
    }
    /* Borrowed; valid until the cluster is destroyed. */
    bootstraps = rd_kafka_mock_cluster_bootstraps(mc);

    if (!create_topics(mc, &o) || !check_served(bootstraps, o.brokers))
        goto out_destroy_cluster;
    if (o.bootstrap_file && !write_bootstrap_file(o.bootstrap_file, bootstraps))
        goto out_destroy_cluster;
    printf("bootstrap=%s\n", bootstraps);
    fflush(stdout);

    if (sigwait(&stop_sigs, &sig) != 0)
        goto out_destroy_cluster;
    fprintf(stderr, "crmsync-kafka-mock: signal %d, shutting down\n", sig);
    rc = 0;

out_destroy_cluster:
    if (o.bootstrap_file)
        unlink(o.bootstrap_file);
    rd_kafka_mock_cluster_destroy(mc);
out_destroy_rk:
    rd_kafka_destroy(rk);
    return rc;
}
