/* dlq_opts - see dlq_opts.h. */
#include "dlq_opts.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_S 30

/* Long-only options (values above the ASCII range). */
enum {
    OPT_CLASS = 256,
    OPT_WORKER,
    OPT_SINCE,
    OPT_UNTIL,
    OPT_OFFSET_FROM,
    OPT_OFFSET_TO,
    OPT_LIMIT,
    OPT_EXECUTE,
    OPT_HEX,
    OPT_TIMEOUT,
};

void dlq_opts_usage(FILE *out)
{
    fputs(
        "usage: crmsync dlq list   -t DLQ_TOPIC [filters] [kafka options]\n"
        "       crmsync dlq show   -t DLQ_TOPIC -p PARTITION -o OFFSET\n"
        "                          [-s SCHEMAS_DIR] [-r REGISTRY_URL] [--hex]\n"
        "       crmsync dlq replay -t DLQ_TOPIC [filters] [--execute]\n"
        "\n"
        "Lists, inspects and replays dead-lettered messages. Every crmsync\n"
        "worker dead-letters what no retry can fix to <topic>.dlq (e.g.\n"
        "crmsync.response.events.dlq) with the original key, value and\n"
        "headers plus crmsync.error.{topic,partition,offset,class,message,\n"
        "worker,timestamp}.\n"
        "\n"
        "Reading never joins or disturbs a consumer group: partitions are\n"
        "assigned with explicit offsets, from the low watermark up to the\n"
        "high watermark captured at start (messages dead-lettered meanwhile\n"
        "are left for the next run); auto commit is off and nothing is ever\n"
        "committed.\n"
        "\n"
        "commands:\n"
        "  list    one line per message: DLQ partition/offset, failure time,\n"
        "          worker, error class, original topic/partition/offset,\n"
        "          reason and key; then the number matched and a count per\n"
        "          error class. Messages without the crmsync.error.* headers\n"
        "          show \"unknown\".\n"
        "  show    one message in full: Kafka timestamp, key, every header,\n"
        "          the dead-letter fields and the value - decoded to JSON "
        "when\n"
        "          it is Confluent-framed Avro of a schema id the schemas "
        "know,\n"
        "          else as a hex dump (--hex adds the dump in any case).\n"
        "  replay  DRY RUN unless --execute: prints each selected message\n"
        "          and where it would go (original topic and partition, from\n"
        "          crmsync.error.topic/partition), and the count; produces\n"
        "          nothing. With --execute each one is produced back to its\n"
        "          original topic and partition (the partitioner decides when\n"
        "          that partition no longer exists) with the original key,\n"
        "          value and headers, minus crmsync.error.*, plus\n"
        "          crmsync.replay.of=\"<dlq topic>/<partition>/<offset>\";\n"
        "          acks=all, idempotent producer; waits for every delivery\n"
        "          and prints the counts. Messages whose origin headers are\n"
        "          missing (\"unknown\") are refused, never replayed. The\n"
        "          workers are idempotent per event, so replaying a message\n"
        "          twice does not repeat its CRM effect. Replays do not "
        "remove\n"
        "          anything from the DLQ; a message that fails again is\n"
        "          dead-lettered again (with crmsync.replay.of among its\n"
        "          original headers).\n"
        "\n"
        "filters (list, replay; all must hold):\n"
        "  --class NAME      error class (crmsync.error.class, e.g. "
        "BAD_FRAME,\n"
        "                    DECODE, UNKNOWN_SCHEMA, INVALID_EVENT,\n"
        "                    CRM_REJECTED), case-insensitive; repeatable (any\n"
        "                    of them); \"unknown\" = no class header\n"
        "  --worker NAME     worker kind (crmsync.error.worker), e.g. "
        "response\n"
        "  --since TIME      failure time (crmsync.error.timestamp) >= TIME\n"
        "  --until TIME      failure time < TIME. TIME is RFC 3339\n"
        "                    (2026-05-01T12:00:00Z, "
        "2026-05-01T14:00:00+02:00)\n"
        "                    or a date (2026-05-01 = 00:00 UTC); messages\n"
        "                    without a timestamp never match a time filter\n"
        "  -p PARTITION      only this DLQ partition\n"
        "  --offset-from N   DLQ offset >= N\n"
        "  --offset-to N     DLQ offset <= N\n"
        "  --limit N         stop after N matching messages (partition by\n"
        "                    partition, in offset order)\n"
        "\n"
        "other options:\n"
        "  -t TOPIC          the dead-letter topic (required)\n"
        "  -o OFFSET         (show) the message's offset in partition -p\n"
        "  --execute         (replay) really produce; without it a dry run\n"
        "  -s DIR            schemas directory with ids.txt (default:\n"
        "                    $CRMSYNC_SCHEMAS_DIR, else ./schemas, else\n"
        "                    /usr/share/crmsync/schemas)\n"
        "  -r URL            Confluent Schema Registry for writer schemas\n"
        "                    (default: $CRMSYNC_SCHEMA_REGISTRY_URL, else the\n"
        "                    local ids.txt)\n"
        "  --hex             (show) hex dump of the value even if decoded\n"
        "  --timeout SEC     give up when Kafka makes no progress for SEC\n"
        "                    seconds (default 30); also the delivery wait\n"
        "  -h, --help        this text\n"
        "\n"
        "kafka options (any cluster; applied in this order, later wins):\n"
        "  -F FILE           librdkafka properties, one prop=value per line\n"
        "                    (# comments), e.g. the SASL/SSL settings\n"
        "  -X prop=value     one librdkafka property, repeatable, e.g.\n"
        "                    -X security.protocol=SASL_SSL\n"
        "                    -X sasl.mechanism=SCRAM-SHA-512\n"
        "  -b HOST:PORT,...  bootstrap.servers\n"
        "  CRMSYNC_KAFKA_SASL_PASSWORD (environment) sets sasl.password when\n"
        "  no -F/-X does, so it need not appear in the process list.\n"
        "  Property values are never printed. group.id defaults to\n"
        "  crmsync-dlq-cli; it is never joined nor committed to.\n"
        "\n"
        "exit status: 0 success (also when a replay refused \"unknown\"\n"
        "messages: they are reported); 1 Kafka error, or a replay delivery\n"
        "failed; 2 usage error.\n"
        "\n"
        "examples:\n"
        "  crmsync dlq list -b kafka:9092 -t crmsync.response.events.dlq \\\n"
        "      --class CRM_REJECTED --since 2026-05-01T00:00:00Z\n"
        "  crmsync dlq show -b kafka:9092 -t crmsync.response.events.dlq \\\n"
        "      -p 0 -o 42\n"
        "  crmsync dlq replay -b kafka:9092 -t crmsync.response.events.dlq \\\n"
        "      --class CRM_REJECTED                # dry run: check the list\n"
        "  crmsync dlq replay -b kafka:9092 -t crmsync.response.events.dlq \\\n"
        "      --class CRM_REJECTED --execute      # then produce them\n",
        out);
}

/* Parses a non-negative integer option value up to @p max. */
static bool parse_num(const char *opt, const char *s, int64_t max, int64_t *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > max) {
        fprintf(stderr, "crmsync dlq: bad %s '%s' (a number 0..%lld)\n", opt, s,
                (long long)max);
        return false;
    }
    *out = (int64_t)v;
    return true;
}

static bool parse_time_opt(const char *opt, const char *s, int64_t *out)
{
    *out = dlq_parse_time(s);
    if (*out < 0) {
        fprintf(stderr,
                "crmsync dlq: bad %s '%s' (RFC 3339, e.g. "
                "2026-05-01T12:00:00Z, or a date 2026-05-01)\n",
                opt, s);
        return false;
    }
    return true;
}

static const char *default_schemas_dir(void)
{
    const char *env = getenv("CRMSYNC_SCHEMAS_DIR");

    if (env && *env)
        return env;
    if (access("schemas/ids.txt", R_OK) == 0)
        return "schemas";
    return "/usr/share/crmsync/schemas";
}

static void set_defaults(struct dlq_opts *o)
{
    const char *reg = getenv("CRMSYNC_SCHEMA_REGISTRY_URL");

    memset(o, 0, sizeof(*o));
    o->partition = -1;
    o->offset = -1;
    o->since_ms = -1;
    o->until_ms = -1;
    o->offset_from = -1;
    o->offset_to = -1;
    o->schemas_dir = default_schemas_dir();
    o->registry_url = reg ? reg : "";
    o->timeout_ms = DEFAULT_TIMEOUT_S * 1000;
}

/* One option; false on a usage error (reported). */
static bool apply_opt(struct dlq_opts *o, int ch, const char *arg)
{
    int64_t v = -1;

    switch (ch) {
    case 'b':
        o->kafka.bootstrap = arg;
        return true;
    case 'X':
        if (o->kafka.nprops == DLQ_CONF_MAX_PROPS || !strchr(arg, '=')) {
            fprintf(stderr, "crmsync dlq: -X wants prop=value (at most %d)\n",
                    DLQ_CONF_MAX_PROPS);
            return false;
        }
        o->kafka.props[o->kafka.nprops++] = arg;
        return true;
    case 'F':
        if (o->kafka.nfiles == DLQ_CONF_MAX_FILES) {
            fprintf(stderr, "crmsync dlq: at most %d -F files\n",
                    DLQ_CONF_MAX_FILES);
            return false;
        }
        o->kafka.files[o->kafka.nfiles++] = arg;
        return true;
    case 't':
        o->topic = arg;
        return true;
    case 'p':
        if (!parse_num("-p", arg, INT32_MAX, &v))
            return false;
        o->partition = (int32_t)v;
        return true;
    case 'o':
        return parse_num("-o", arg, INT64_MAX, &o->offset);
    case 's':
        o->schemas_dir = arg;
        return true;
    case 'r':
        o->registry_url = arg;
        return true;
    case OPT_CLASS:
        if (o->nclasses == DLQ_OPTS_MAX_CLASSES) {
            fprintf(stderr, "crmsync dlq: at most %d --class\n",
                    DLQ_OPTS_MAX_CLASSES);
            return false;
        }
        o->classes[o->nclasses++] = arg;
        return true;
    case OPT_WORKER:
        o->worker = arg;
        return true;
    case OPT_SINCE:
        return parse_time_opt("--since", arg, &o->since_ms);
    case OPT_UNTIL:
        return parse_time_opt("--until", arg, &o->until_ms);
    case OPT_OFFSET_FROM:
        return parse_num("--offset-from", arg, INT64_MAX, &o->offset_from);
    case OPT_OFFSET_TO:
        return parse_num("--offset-to", arg, INT64_MAX, &o->offset_to);
    case OPT_LIMIT:
        if (!parse_num("--limit", arg, LONG_MAX, &v) || v == 0) {
            if (v == 0)
                fprintf(stderr, "crmsync dlq: --limit must be >= 1\n");
            return false;
        }
        o->limit = (long)v;
        return true;
    case OPT_EXECUTE:
        o->execute = true;
        return true;
    case OPT_HEX:
        o->hex = true;
        return true;
    case OPT_TIMEOUT:
        if (!parse_num("--timeout", arg, 3600, &v) || v == 0) {
            if (v == 0)
                fprintf(stderr, "crmsync dlq: --timeout must be >= 1\n");
            return false;
        }
        o->timeout_ms = (int)v * 1000;
        return true;
    default:
        return false;
    }
}

/* Cross-option checks for the chosen sub-command. */
static bool check_opts(const struct dlq_opts *o)
{
    bool filters = o->nclasses || o->worker || o->since_ms >= 0 ||
                   o->until_ms >= 0 || o->offset_from >= 0 ||
                   o->offset_to >= 0 || o->limit;

    if (!o->topic) {
        fprintf(stderr, "crmsync dlq: -t DLQ_TOPIC is required\n");
        return false;
    }
    if (o->cmd == DLQ_CMD_SHOW) {
        if (o->partition < 0 || o->offset < 0) {
            fprintf(stderr, "crmsync dlq show: -p and -o are required\n");
            return false;
        }
        if (filters || o->execute) {
            fprintf(stderr, "crmsync dlq show: takes no filters\n");
            return false;
        }
        return true;
    }
    if (o->offset >= 0 || o->hex) {
        fprintf(stderr, "crmsync dlq: -o and --hex belong to show\n");
        return false;
    }
    if (o->execute && o->cmd != DLQ_CMD_REPLAY) {
        fprintf(stderr, "crmsync dlq: --execute belongs to replay\n");
        return false;
    }
    if (o->offset_from >= 0 && o->offset_to >= 0 &&
        o->offset_from > o->offset_to) {
        fprintf(stderr, "crmsync dlq: --offset-from > --offset-to\n");
        return false;
    }
    if (o->since_ms >= 0 && o->until_ms >= 0 && o->since_ms >= o->until_ms) {
        fprintf(stderr, "crmsync dlq: --since is not before --until\n");
        return false;
    }
    return true;
}

int dlq_opts_parse(int argc, char **argv, struct dlq_opts *o)
{
    static const struct option longopts[] = {
        {"class", required_argument, NULL, OPT_CLASS},
        {"worker", required_argument, NULL, OPT_WORKER},
        {"since", required_argument, NULL, OPT_SINCE},
        {"until", required_argument, NULL, OPT_UNTIL},
        {"offset-from", required_argument, NULL, OPT_OFFSET_FROM},
        {"offset-to", required_argument, NULL, OPT_OFFSET_TO},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"execute", no_argument, NULL, OPT_EXECUTE},
        {"hex", no_argument, NULL, OPT_HEX},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *sub;
    int ch;

    set_defaults(o);
    if (argc < 2) {
        dlq_opts_usage(stderr);
        return -1;
    }
    sub = argv[1];
    if (!strcmp(sub, "-h") || !strcmp(sub, "--help") || !strcmp(sub, "help")) {
        dlq_opts_usage(stdout);
        return 1;
    }
    if (!strcmp(sub, "list")) {
        o->cmd = DLQ_CMD_LIST;
    } else if (!strcmp(sub, "show")) {
        o->cmd = DLQ_CMD_SHOW;
    } else if (!strcmp(sub, "replay")) {
        o->cmd = DLQ_CMD_REPLAY;
    } else {
        fprintf(stderr,
                "crmsync dlq: unknown sub-command '%s' (list, show, replay; "
                "see crmsync dlq --help)\n",
                sub);
        return -1;
    }
    /* getopt over the sub-command's arguments (argv[1] plays argv[0]). */
    optind = 1;
    opterr = 1;
    for (;;) {
        ch = getopt_long(argc - 1, argv + 1, "b:X:F:t:p:o:s:r:h", longopts,
                         NULL);
        if (ch == -1)
            break;
        if (ch == 'h') {
            dlq_opts_usage(stdout);
            return 1;
        }
        if (ch == '?' || !apply_opt(o, ch, optarg)) {
            fprintf(stderr, "see crmsync dlq --help\n");
            return -1;
        }
    }
    if (optind < argc - 1) {
        fprintf(stderr, "crmsync dlq: unexpected argument '%s'\n",
                argv[optind + 1]);
        return -1;
    }
    return check_opts(o) ? 0 : -1;
}

bool dlq_opts_match(const struct dlq_opts *o, int64_t offset,
                    const struct dlq_meta *meta)
{
    if (o->offset_from >= 0 && offset < o->offset_from)
        return false;
    if (o->offset_to >= 0 && offset > o->offset_to)
        return false;
    if (o->nclasses) {
        const char *cls = meta->cls[0] ? meta->cls : "unknown";
        bool any = false;

        for (int i = 0; i < o->nclasses && !any; i++)
            any = !strcasecmp(o->classes[i], cls);
        if (!any)
            return false;
    }
    if (o->worker &&
        strcmp(o->worker, meta->worker[0] ? meta->worker : "unknown"))
        return false;
    if ((o->since_ms >= 0 || o->until_ms >= 0) && meta->ts_ms < 0)
        return false;
    if (o->since_ms >= 0 && meta->ts_ms < o->since_ms)
        return false;
    if (o->until_ms >= 0 && meta->ts_ms >= o->until_ms)
        return false;
    return true;
}
