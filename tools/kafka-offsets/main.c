/*
 * crmsync-kafka-offsets - prints a consumer group's committed offsets and
 * lag for one topic as one JSON object:
 *
 *   {"topic":"t","group":"g","partitions":[{"partition":0,"committed":5,
 *    "low":0,"high":7,"lag":2}, ...],"total_lag":2}
 *
 * committed is -1 when the group has no commit for a partition; its lag then
 * counts from the low watermark (what a consumer starting at "earliest"
 * still has to read). Used by the integration tests, the demo script and
 * humans ("is the worker done?").
 *
 * It uses a consumer handle with that group.id that never subscribes, so it
 * does not join the group or disturb its assignment: rd_kafka_committed()
 * only sends OffsetFetch to the coordinator. Single-threaded CLI.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#define MAX_CONF_PROPS 32

/* Everything the command line decides; all strings borrowed from argv. */
struct opts {
    const char *bootstrap;
    const char *group;
    const char *topic;
    int timeout_ms;
    const char *props[MAX_CONF_PROPS]; /* -X name=value */
    int prop_cnt;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: crmsync-kafka-offsets -b <bootstrap> -g <group> -t "
            "<topic>\n"
            "                             [-X prop=value]... [-T timeout_ms]\n"
            "\n"
            "Prints {\"topic\",\"group\",\"partitions\":[{\"partition\","
            "\"committed\",\"low\",\"high\",\"lag\"}],\"total_lag\"} as JSON.\n"
            "committed -1 = no commit; lag then counts from the low "
            "watermark.\n"
            "Does not join the group. Exit 0 on success, 1 on a Kafka error,\n"
            "2 on a usage error.\n");
}

static bool parse_opts(int argc, char **argv, struct opts *o)
{
    char *end = NULL;
    long v;
    int c;

    memset(o, 0, sizeof(*o));
    o->timeout_ms = 10000;
    for (;;) {
        c = getopt(argc, argv, "b:g:t:X:T:h");
        if (c == -1)
            break;
        switch (c) {
        case 'b':
            o->bootstrap = optarg;
            break;
        case 'g':
            o->group = optarg;
            break;
        case 't':
            o->topic = optarg;
            break;
        case 'X':
            if (o->prop_cnt >= MAX_CONF_PROPS)
                return false;
            o->props[o->prop_cnt++] = optarg;
            break;
        case 'T':
            errno = 0;
            v = strtol(optarg, &end, 10);
            if (errno != 0 || *end != '\0' || v < 1 || v > 600000)
                return false;
            o->timeout_ms = (int)v;
            break;
        default:
            return false;
        }
    }
    return o->bootstrap && o->group && o->topic && optind == argc;
}

/* Sets "name=value"; false with the reason in errstr. */
static bool conf_set_prop(rd_kafka_conf_t *conf, const char *prop, char *errstr,
                          size_t errstr_size)
{
    char name[256];
    const char *eq = strchr(prop, '=');
    size_t n;

    if (!eq || eq == prop || (size_t)(eq - prop) >= sizeof(name)) {
        snprintf(errstr, errstr_size, "bad -X '%s' (want name=value)", prop);
        return false;
    }
    n = (size_t)(eq - prop);
    memcpy(name, prop, n);
    name[n] = '\0';
    return rd_kafka_conf_set(conf, name, eq + 1, errstr, errstr_size) ==
           RD_KAFKA_CONF_OK;
}

/* Creates the non-subscribing consumer; NULL with the reason in errstr. */
static rd_kafka_t *consumer_new(const struct opts *o, char *errstr,
                                size_t errstr_size)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk;

    if (rd_kafka_conf_set(conf, "bootstrap.servers", o->bootstrap, errstr,
                          errstr_size) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "group.id", o->group, errstr, errstr_size) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
                          errstr_size) != RD_KAFKA_CONF_OK)
        goto out_destroy_conf;
    for (int i = 0; i < o->prop_cnt; i++) {
        if (!conf_set_prop(conf, o->props[i], errstr, errstr_size))
            goto out_destroy_conf;
    }
    /* rd_kafka_new() takes ownership of conf on success only. */
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, errstr_size);
    if (!rk)
        goto out_destroy_conf;
    return rk;

out_destroy_conf:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/*
 * Returns the partition count of o->topic (0 if it does not exist, -1 on a
 * metadata error with the reason in errstr). Asks for all topics: a request
 * naming the topic would make the mock cluster (and brokers with
 * auto.create.topics.enable) create it.
 */
static int topic_partition_cnt(rd_kafka_t *rk, const struct opts *o,
                               char *errstr, size_t errstr_size)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err;
    int cnt = 0;

    err = rd_kafka_metadata(rk, 1, NULL, &md, o->timeout_ms);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(errstr, errstr_size, "metadata: %s", rd_kafka_err2str(err));
        return -1;
    }
    for (int i = 0; i < md->topic_cnt; i++) {
        const struct rd_kafka_metadata_topic *t = &md->topics[i];

        if (strcmp(t->topic, o->topic) != 0)
            continue;
        if (t->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            snprintf(errstr, errstr_size, "metadata: %s",
                     rd_kafka_err2str(t->err));
            cnt = -1;
        } else {
            cnt = t->partition_cnt;
        }
        break;
    }
    rd_kafka_metadata_destroy(md);
    return cnt;
}

/*
 * Builds the report. Returns a new JSON object (caller decrefs) or NULL
 * with the reason in errstr.
 */
static json_t *build_report(rd_kafka_t *rk, const struct opts *o, char *errstr,
                            size_t errstr_size)
{
    rd_kafka_topic_partition_list_t *parts;
    rd_kafka_resp_err_t err;
    json_t *report = NULL;
    json_t *arr;
    int64_t total = 0;
    int cnt;

    cnt = topic_partition_cnt(rk, o, errstr, errstr_size);
    if (cnt < 0)
        return NULL;
    if (cnt == 0) {
        snprintf(errstr, errstr_size, "topic %s does not exist", o->topic);
        return NULL;
    }
    parts = rd_kafka_topic_partition_list_new(cnt);
    for (int p = 0; p < cnt; p++)
        rd_kafka_topic_partition_list_add(parts, o->topic, p);
    err = rd_kafka_committed(rk, parts, o->timeout_ms);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(errstr, errstr_size, "committed: %s", rd_kafka_err2str(err));
        goto out_destroy_parts;
    }
    arr = json_array();
    for (int i = 0; i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &parts->elems[i];
        int64_t lo = 0;
        int64_t hi = 0;
        int64_t committed = tp->offset >= 0 ? tp->offset : -1;
        int64_t lag;

        if (tp->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            snprintf(errstr, errstr_size, "committed [%d]: %s",
                     (int)tp->partition, rd_kafka_err2str(tp->err));
            json_decref(arr);
            goto out_destroy_parts;
        }
        err = rd_kafka_query_watermark_offsets(rk, o->topic, tp->partition, &lo,
                                               &hi, o->timeout_ms);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            snprintf(errstr, errstr_size, "watermarks [%d]: %s",
                     (int)tp->partition, rd_kafka_err2str(err));
            json_decref(arr);
            goto out_destroy_parts;
        }
        lag = hi - (committed >= 0 ? committed : lo);
        if (lag < 0)
            lag = 0;
        total += lag;
        json_array_append_new(
            arr, json_pack("{s:i, s:I, s:I, s:I, s:I}", "partition",
                           (int)tp->partition, "committed",
                           (json_int_t)committed, "low", (json_int_t)lo, "high",
                           (json_int_t)hi, "lag", (json_int_t)lag));
    }
    report =
        json_pack("{s:s, s:s, s:o, s:I}", "topic", o->topic, "group", o->group,
                  "partitions", arr, "total_lag", (json_int_t)total);
    if (!report)
        snprintf(errstr, errstr_size, "out of memory");
out_destroy_parts:
    rd_kafka_topic_partition_list_destroy(parts);
    return report;
}

int main(int argc, char **argv)
{
    struct opts o;
    char errstr[512];
    rd_kafka_t *rk;
    json_t *report;
    int rc = 1;

    if (!parse_opts(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    rk = consumer_new(&o, errstr, sizeof(errstr));
    if (!rk) {
        fprintf(stderr, "crmsync-kafka-offsets: %s\n", errstr);
        return 2;
    }
    report = build_report(rk, &o, errstr, sizeof(errstr));
    if (!report) {
        fprintf(stderr, "crmsync-kafka-offsets: %s\n", errstr);
        goto out_destroy_rk;
    }
    if (json_dumpf(report, stdout, JSON_COMPACT) == 0 &&
        fputc('\n', stdout) != EOF && fflush(stdout) == 0)
        rc = 0;
    json_decref(report);
out_destroy_rk:
    /* Never subscribed: no consumer_close needed, nothing to commit. */
    rd_kafka_destroy(rk);
    return rc;
}
