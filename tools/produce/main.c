/*
 * crmsync-produce - reads JSON lines on stdin, encodes each as Confluent-
 * framed Avro and produces it to one Kafka topic.
 *
 *   crmsync-produce -b <bootstrap> -t <topic> [-s <schemas_dir>]
 *                   [-r <registry_url>] [-i <default schema id>]
 *                   [-k recipient|event_id|none] [-X key=value]...
 *                   [-f events.jsonl] [--stamp [--stamp-prefix P]
 *                   [--now MS]] < events.jsonl
 *
 * Each line is an event object of the default schema id. Reserved keys,
 * removed before encoding:
 *   "__schema_id"  integer, overrides -i for this line;
 *   "__key"        string message key (null = no key), overrides -k;
 *   "__raw_hex"    produce these bytes as the value instead of encoding
 *                  (poison messages for tests);
 *   "__headers"    object of string headers.
 * Default key (-k recipient): "<entity_type>:<entity_id>" of the recipient,
 * else its lower-cased email, else event_id - so one recipient's events stay
 * in one partition, in order.
 *
 * --stamp (the daily list-sync CronJob): each line names a list to sync
 * (tenant, crm_list_id, esp_list_id, consent_id); occurred_at, requested_at
 * (now), source_system, mode FULL, the key (crm_list_id) and a deterministic
 * event_id "<prefix>|<tenant>|<crm_list_id>|<YYYY-MM-DD>" (UTC) are added
 * when absent (stamp.h), so a retry the same day is a duplicate request
 * the worker skips. -f reads a file instead of stdin (no shell needed in
 * a pod). The SASL password may come from env CRMSYNC_KAFKA_SASL_PASSWORD
 * (as the workers take it) instead of -X, so it never shows in argv.
 *
 * Delivery: acks=all, linger.ms=5, large batches; messages are queued
 * without waiting and all delivery reports are awaited at the end
 * (rd_kafka_flush). JSON parsing (the costliest step) runs on a reader
 * thread that hands batches of parsed lines to the main thread, which
 * encodes and produces them. Exit status: 0 all delivered; 1 some delivery
 * failed; 2 some input line was rejected (reported on stderr with its line
 * number); 3 usage or setup error. A one-line summary goes to stderr.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "common/avro_codec.h"
#include "common/odata.h"
#include "tools/produce/stamp.h"

#define MAX_X_PROPS       64
#define FLUSH_TIMEOUT     60000 /* ms to wait for the last delivery reports */
#define ERRORS_SHOWN      10    /* delivery errors printed before going quiet */
#define BATCH_LINES       512   /* parsed lines handed over at once */
#define QUEUE_BATCHES     8     /* batches in flight between the threads */
#define SASL_PASSWORD_ENV "CRMSYNC_KAFKA_SASL_PASSWORD"

enum key_mode { KEY_RECIPIENT, KEY_EVENT_ID, KEY_NONE };

struct options {
    const char *bootstrap;          /* -b */
    const char *topic;              /* -t */
    const char *schemas_dir;        /* -s */
    const char *registry_url;       /* -r, NULL = local schemas */
    int32_t default_id;             /* -i */
    enum key_mode key_mode;         /* -k */
    const char *props[MAX_X_PROPS]; /* -X key=value, borrowed from argv */
    int nprops;
    const char *input;        /* -f, NULL = stdin */
    bool stamp;               /* --stamp */
    const char *stamp_prefix; /* --stamp-prefix */
    int64_t now_ms;           /* --now, or the time at startup */
};

/* Delivery report counters (rdkafka opaque; callbacks run in poll/flush on
 * this thread). */
struct delivery {
    long delivered;
    long failed;
};

static void usage(FILE *fp)
{
    fprintf(fp, "usage: crmsync-produce -b <bootstrap> -t <topic> "
                "[-s <schemas_dir>] [-r <registry_url>]\n"
                "                       [-i <default schema id>] "
                "[-k recipient|event_id|none] [-X key=value]...\n"
                "                       [-f events.jsonl] [--stamp "
                "[--stamp-prefix P] [--now MS]] < events.jsonl\n"
                "  -s  schemas directory with ids.txt (default: schemas)\n"
                "  -r  Confluent Schema Registry URL (default: local schemas)\n"
                "  -i  schema id of lines without \"__schema_id\" (default 1)\n"
                "  -k  message key: recipient (default), event_id or none\n"
                "  -X  extra librdkafka property, repeatable\n"
                "  -f  read the lines from this file instead of stdin\n"
                "  --stamp\n"
                "      list-sync requests from a schedule (the daily "
                "CronJob): each line\n"
                "      needs tenant and crm_list_id (plus esp_list_id, "
                "consent_id); added\n"
                "      when absent: occurred_at = requested_at = now (ms), "
                "source_system\n"
                "      \"" STAMP_SOURCE_SYSTEM "\", mode FULL, key = "
                "crm_list_id and\n"
                "      event_id \"<prefix>|<tenant>|<crm_list_id>|"
                "<YYYY-MM-DD>\" (UTC day of now):\n"
                "      a retry on the same day repeats the event_id, so "
                "the worker skips it\n"
                "      as a duplicate; the next day is a new job. Use "
                "with -i 4.\n"
                "  --stamp-prefix P\n"
                "      first part of the stamped event_id (default "
                "\"" STAMP_DEFAULT_PREFIX "\"; e.g.\n"
                "      \"manual\" to run a list again the same day)\n"
                "  --now MS\n"
                "      the time --stamp uses, ms since the epoch (default: "
                "the clock)\n"
                "Environment: CRMSYNC_KAFKA_SASL_PASSWORD sets "
                "sasl.password (unless -X sets it).\n"
                "Reserved line keys: __schema_id, __key, __raw_hex, "
                "__headers.\n");
}

static int parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        {"stamp", no_argument, NULL, 'S'},
        {"stamp-prefix", required_argument, NULL, 'P'},
        {"now", required_argument, NULL, 'N'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct timespec ts;
    int ch;
    long v;
    long long ll;
    char *end;

    memset(o, 0, sizeof(*o));
    o->schemas_dir = "schemas";
    o->default_id = 1;
    o->key_mode = KEY_RECIPIENT;
    o->stamp_prefix = STAMP_DEFAULT_PREFIX;
    clock_gettime(CLOCK_REALTIME, &ts);
    o->now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    for (;;) {
        ch = getopt_long(argc, argv, "b:t:s:r:i:k:X:f:h", longopts, NULL);
        if (ch == -1)
            break;
        switch (ch) {
        case 'f':
            o->input = optarg;
            break;
        case 'S':
            o->stamp = true;
            break;
        case 'P':
            if (!optarg[0] || strchr(optarg, '|')) {
                fprintf(stderr, "crmsync-produce: bad --stamp-prefix %s\n",
                        optarg);
                return -1;
            }
            o->stamp_prefix = optarg;
            break;
        case 'N':
            errno = 0;
            ll = strtoll(optarg, &end, 10);
            if (errno || *end || end == optarg || ll < 0) {
                fprintf(stderr, "crmsync-produce: bad --now %s\n", optarg);
                return -1;
            }
            o->now_ms = (int64_t)ll;
            break;
        case 'b':
            o->bootstrap = optarg;
            break;
        case 't':
            o->topic = optarg;
            break;
        case 's':
            o->schemas_dir = optarg;
            break;
        case 'r':
            o->registry_url = optarg;
            break;
        case 'i':
            errno = 0;
            v = strtol(optarg, &end, 10);
            if (errno || *end || v < 0 || v > INT32_MAX) {
                fprintf(stderr, "crmsync-produce: bad -i %s\n", optarg);
                return -1;
            }
            o->default_id = (int32_t)v;
            break;
        case 'k':
            if (strcmp(optarg, "recipient") == 0) {
                o->key_mode = KEY_RECIPIENT;
            } else if (strcmp(optarg, "event_id") == 0) {
                o->key_mode = KEY_EVENT_ID;
            } else if (strcmp(optarg, "none") == 0) {
                o->key_mode = KEY_NONE;
            } else {
                fprintf(stderr, "crmsync-produce: bad -k %s\n", optarg);
                return -1;
            }
            break;
        case 'X':
            if (o->nprops == MAX_X_PROPS || !strchr(optarg, '=')) {
                fprintf(stderr, "crmsync-produce: bad -X %s\n", optarg);
                return -1;
            }
            o->props[o->nprops++] = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            return -1;
        }
    }
    if (!o->bootstrap || !o->topic || optind != argc)
        return -1;
    return 0;
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
                      void *opaque)
{
    struct delivery *d = opaque;

    (void)rk;
    if (rkm->err) {
        if (d->failed < ERRORS_SHOWN)
            fprintf(stderr, "crmsync-produce: delivery failed: %s\n",
                    rd_kafka_err2str(rkm->err));
        d->failed++;
    } else {
        d->delivered++;
    }
}

static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char errstr[512];

    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
        fprintf(stderr, "crmsync-produce: %s\n", errstr);
        return -1;
    }
    return 0;
}

/* True when -X sets property name. */
static bool has_prop(const struct options *o, const char *name)
{
    size_t n = strlen(name);

    for (int i = 0; i < o->nprops; i++)
        if (strncmp(o->props[i], name, n) == 0 && o->props[i][n] == '=')
            return true;
    return false;
}

/* Creates the producer; NULL on error (printed). */
static rd_kafka_t *producer_new(const struct options *o, struct delivery *d)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char errstr[512];
    char name[256];
    rd_kafka_t *rk;
    int i;

    if (conf_set(conf, "bootstrap.servers", o->bootstrap) ||
        conf_set(conf, "acks", "all") || conf_set(conf, "linger.ms", "5") ||
        conf_set(conf, "batch.num.messages", "10000") ||
        conf_set(conf, "queue.buffering.max.messages", "1000000") ||
        conf_set(conf, "queue.buffering.max.kbytes", "1048576"))
        goto out_free_conf;
    for (i = 0; i < o->nprops; i++) {
        const char *eq = strchr(o->props[i], '=');

        snprintf(name, sizeof(name), "%.*s", (int)(eq - o->props[i]),
                 o->props[i]);
        if (conf_set(conf, name, eq + 1))
            goto out_free_conf;
    }
    if (!has_prop(o, "sasl.password") && getenv(SASL_PASSWORD_ENV) &&
        conf_set(conf, "sasl.password", getenv(SASL_PASSWORD_ENV)))
        goto out_free_conf;
    rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
    rd_kafka_conf_set_opaque(conf, d);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!rk) {
        fprintf(stderr, "crmsync-produce: %s\n", errstr);
        goto out_free_conf;
    }
    return rk; /* conf is now owned by rk */

out_free_conf:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/* Default key of an event; writes into key (size n), returns its length or
 * -1 for no key. */
static int event_key(const json_t *ev, enum key_mode mode, char *key, size_t n)
{
    const json_t *r = json_object_get(ev, "recipient");
    const char *type = json_string_value(json_object_get(r, "entity_type"));
    const char *id = json_string_value(json_object_get(r, "entity_id"));
    const char *email = json_string_value(json_object_get(r, "email"));
    const char *event_id = json_string_value(json_object_get(ev, "event_id"));
    int len;
    int i;

    if (mode == KEY_NONE)
        return -1;
    /* Wrapped union values: {"EntityType":"contact"}, {"string": "..."}. */
    if (!type && json_is_object(json_object_get(r, "entity_type")))
        type = json_string_value(json_object_iter_value(
            json_object_iter(json_object_get(r, "entity_type"))));
    if (!id && json_is_object(json_object_get(r, "entity_id")))
        id = json_string_value(json_object_iter_value(
            json_object_iter(json_object_get(r, "entity_id"))));
    if (!email && json_is_object(json_object_get(r, "email")))
        email = json_string_value(json_object_iter_value(
            json_object_iter(json_object_get(r, "email"))));
    if (mode == KEY_RECIPIENT && type && id) {
        len = snprintf(key, n, "%s:%s", type, id);
    } else if (mode == KEY_RECIPIENT && email) {
        len = snprintf(key, n, "%s", email);
        for (i = 0; key[i]; i++)
            key[i] = (char)tolower((unsigned char)key[i]);
    } else if (event_id) {
        len = snprintf(key, n, "%s", event_id);
    } else {
        return -1;
    }
    return len < (int)n ? len : (int)n - 1;
}

/* Decodes hex into a malloc'd buffer (caller frees); NULL if invalid. */
static void *hex_decode(const char *hex, size_t *len_out)
{
    size_t n = strlen(hex);
    unsigned char *buf;
    size_t i;

    if (n % 2)
        return NULL;
    buf = malloc(n / 2 + 1);
    if (!buf)
        return NULL;
    for (i = 0; i < n / 2; i++) {
        int hi = odata_hex_value(hex[2 * i]);
        int lo = odata_hex_value(hex[2 * i + 1]);

        if (hi < 0 || lo < 0) {
            free(buf);
            return NULL;
        }
        buf[i] = (unsigned char)(hi << 4 | lo);
    }
    *len_out = n / 2;
    return buf;
}

/* Builds the headers of "__headers"; *out NULL when none. */
static int headers_build(const json_t *h, rd_kafka_headers_t **out)
{
    const char *name;
    json_t *v;

    *out = NULL;
    if (!h)
        return 0;
    if (!json_is_object(h))
        return -1;
    *out = rd_kafka_headers_new(json_object_size(h));
    json_object_foreach((json_t *)h, name, v)
    {
        if (!json_is_string(v)) {
            rd_kafka_headers_destroy(*out);
            *out = NULL;
            return -1;
        }
        rd_kafka_header_add(*out, name, -1, json_string_value(v),
                            (ssize_t)json_string_length(v));
    }
    return 0;
}

/* One input message ready to produce. */
struct message {
    void *value; /* malloc'd; freed by rdkafka on success */
    size_t value_len;
    char key[512];
    int key_len;                 /* -1 = no key */
    rd_kafka_headers_t *headers; /* owned until produced; may be NULL */
};

/* Turns one JSON line into *m; returns 0, or -1 with errstr set. */
static int line_to_message(struct avro_codec *codec, const struct options *o,
                           json_t *ev, struct message *m, char *errstr,
                           size_t errstr_size)
{
    const json_t *jid = json_object_get(ev, "__schema_id");
    const json_t *jkey = json_object_get(ev, "__key");
    const json_t *jhex = json_object_get(ev, "__raw_hex");
    int32_t id = o->default_id;
    avro_value_t v;
    enum cs_err rc;

    memset(m, 0, sizeof(*m));
    if (jid) {
        if (!json_is_integer(jid) || json_integer_value(jid) < 0 ||
            json_integer_value(jid) > INT32_MAX) {
            snprintf(errstr, errstr_size, "__schema_id must be an integer");
            return -1;
        }
        id = (int32_t)json_integer_value(jid);
    }
    if (jhex && !json_is_string(jhex)) {
        snprintf(errstr, errstr_size, "__raw_hex must be a string");
        return -1;
    }
    if (jkey && !json_is_string(jkey) && !json_is_null(jkey)) {
        snprintf(errstr, errstr_size, "__key must be a string or null");
        return -1;
    }
    if (headers_build(json_object_get(ev, "__headers"), &m->headers)) {
        snprintf(errstr, errstr_size, "__headers must be an object of strings");
        return -1;
    }
    if (jhex) {
        m->value = hex_decode(json_string_value(jhex), &m->value_len);
        if (!m->value) {
            snprintf(errstr, errstr_size, "__raw_hex is not valid hex");
            goto out_free_headers;
        }
    }
    if (json_is_string(jkey)) {
        m->key_len =
            snprintf(m->key, sizeof(m->key), "%s", json_string_value(jkey));
        if (m->key_len >= (int)sizeof(m->key))
            m->key_len = (int)sizeof(m->key) - 1;
    } else if (jkey) {
        m->key_len = -1;
    }
    json_object_del(ev, "__schema_id");
    json_object_del(ev, "__key");
    json_object_del(ev, "__raw_hex");
    json_object_del(ev, "__headers");
    if (!jkey)
        m->key_len = event_key(ev, o->key_mode, m->key, sizeof(m->key));
    if (m->value)
        return 0;
    rc = avro_codec_from_json(codec, id, ev, &v, errstr, errstr_size);
    if (rc != CS_ERR_OK)
        goto out_free_headers;
    rc = avro_codec_encode(codec, id, &v, &m->value, &m->value_len, errstr,
                           errstr_size);
    avro_value_decref(&v);
    if (rc != CS_ERR_OK)
        goto out_free_headers;
    return 0;

out_free_headers:
    if (m->headers)
        rd_kafka_headers_destroy(m->headers);
    m->headers = NULL;
    free(m->value);
    m->value = NULL;
    return -1;
}

/* Queues one message, waiting while the local queue is full. */
static int produce_one(rd_kafka_t *rk, rd_kafka_topic_t *rkt, struct message *m)
{
    const void *key = m->key_len < 0 ? NULL : m->key;
    size_t key_len = m->key_len < 0 ? 0 : (size_t)m->key_len;
    rd_kafka_resp_err_t err;

    for (;;) {
        err = rd_kafka_producev(rk, RD_KAFKA_V_RKT(rkt),
                                RD_KAFKA_V_PARTITION(RD_KAFKA_PARTITION_UA),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
                                RD_KAFKA_V_VALUE(m->value, m->value_len),
                                RD_KAFKA_V_KEY(key, key_len),
                                RD_KAFKA_V_HEADERS(m->headers), RD_KAFKA_V_END);
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            break;
        rd_kafka_poll(rk, 50); /* serve delivery reports to make room */
    }
    if (err) {
        fprintf(stderr, "crmsync-produce: produce failed: %s\n",
                rd_kafka_err2str(err));
        free(m->value); /* not taken over on failure */
        if (m->headers)
            rd_kafka_headers_destroy(m->headers);
        return -1;
    }
    return 0; /* value and headers now owned by librdkafka */
}

/* One input line after parsing: the event, or why it could not be parsed. */
struct parsed_line {
    long lineno;
    json_t *ev;    /* owned; NULL when the line is bad */
    char err[160]; /* parse error when ev is NULL */
};

struct batch {
    struct parsed_line lines[BATCH_LINES];
    int n;
    struct batch *next;
};

/* Bounded FIFO of batches between the reader thread and the main thread. */
struct line_queue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct batch *head;
    struct batch *tail;
    int depth; /* batches queued */
    bool done; /* reader reached EOF */
};

/* Reader thread: getline + json_loadb, batches handed to the queue. */
static void *reader_main(void *arg)
{
    struct line_queue *q = arg;
    struct batch *b = NULL;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    json_error_t jerr;

    for (;;) {
        n = getline(&line, &cap, stdin);
        if (n != -1) {
            struct parsed_line *pl;

            lineno++;
            while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
                line[--n] = '\0';
            if (n == 0)
                continue;
            if (!b) {
                b = malloc(sizeof(*b));
                if (!b)
                    abort(); /* a CLI tool: no way to carry on */
                b->n = 0;
                b->next = NULL;
            }
            pl = &b->lines[b->n++];
            pl->lineno = lineno;
            pl->ev = json_loadb(line, (size_t)n, 0, &jerr);
            if (!pl->ev) {
                snprintf(pl->err, sizeof(pl->err), "%s", jerr.text);
            } else if (!json_is_object(pl->ev)) {
                json_decref(pl->ev);
                pl->ev = NULL;
                snprintf(pl->err, sizeof(pl->err), "not a JSON object");
            }
        }
        if (b && (b->n == BATCH_LINES || n == -1)) {
            pthread_mutex_lock(&q->lock);
            while (q->depth >= QUEUE_BATCHES)
                pthread_cond_wait(&q->cond, &q->lock);
            if (q->tail)
                q->tail->next = b;
            else
                q->head = b;
            q->tail = b;
            q->depth++;
            pthread_cond_broadcast(&q->cond);
            pthread_mutex_unlock(&q->lock);
            b = NULL;
        }
        if (n == -1)
            break;
    }
    free(line);
    pthread_mutex_lock(&q->lock);
    q->done = true;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

/* Next batch, NULL at end of input. Caller frees it. */
static struct batch *queue_pop(struct line_queue *q)
{
    struct batch *b;

    pthread_mutex_lock(&q->lock);
    while (!q->head && !q->done)
        pthread_cond_wait(&q->cond, &q->lock);
    b = q->head;
    if (b) {
        q->head = b->next;
        if (!q->head)
            q->tail = NULL;
        q->depth--;
        pthread_cond_broadcast(&q->cond);
    }
    pthread_mutex_unlock(&q->lock);
    return b;
}

/* Produces every line of stdin; returns the number of bad lines. */
static long produce_lines(struct avro_codec *codec, const struct options *o,
                          rd_kafka_t *rk, rd_kafka_topic_t *rkt, long *queued,
                          long *produce_failed)
{
    struct line_queue q;
    pthread_t reader;
    struct batch *b;
    long bad = 0;
    char errstr[512];
    struct message m;
    int i;

    memset(&q, 0, sizeof(q));
    pthread_mutex_init(&q.lock, NULL);
    pthread_cond_init(&q.cond, NULL);
    if (pthread_create(&reader, NULL, reader_main, &q) != 0) {
        fprintf(stderr, "crmsync-produce: cannot start reader thread\n");
        return 1;
    }
    while ((b = queue_pop(&q)) != NULL) {
        for (i = 0; i < b->n; i++) {
            struct parsed_line *pl = &b->lines[i];

            if (!pl->ev) {
                fprintf(stderr, "crmsync-produce: line %ld: %s\n", pl->lineno,
                        pl->err);
                bad++;
                continue;
            }
            if (o->stamp &&
                stamp_request(pl->ev, o->stamp_prefix, o->now_ms, errstr,
                              sizeof(errstr)) != CS_ERR_OK) {
                fprintf(stderr, "crmsync-produce: line %ld: %s\n", pl->lineno,
                        errstr);
                bad++;
            } else if (line_to_message(codec, o, pl->ev, &m, errstr,
                                       sizeof(errstr))) {
                fprintf(stderr, "crmsync-produce: line %ld: %s\n", pl->lineno,
                        errstr);
                bad++;
            } else if (produce_one(rk, rkt, &m)) {
                (*produce_failed)++;
            } else {
                (*queued)++;
            }
            json_decref(pl->ev);
        }
        free(b);
        rd_kafka_poll(rk, 0); /* serve delivery reports */
    }
    pthread_join(reader, NULL);
    pthread_cond_destroy(&q.cond);
    pthread_mutex_destroy(&q.lock);
    return bad;
}

int main(int argc, char **argv)
{
    struct options o;
    struct delivery d = {0, 0};
    struct avro_codec *codec;
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    char errstr[512];
    long queued = 0;
    long produce_failed = 0;
    long bad;
    int left;
    int rc;

    if (parse_options(argc, argv, &o)) {
        usage(stderr);
        return 3;
    }
    if (o.input && !freopen(o.input, "r", stdin)) {
        fprintf(stderr, "crmsync-produce: %s: %s\n", o.input, strerror(errno));
        return 3;
    }
    codec =
        avro_codec_new(o.registry_url, o.schemas_dir, errstr, sizeof(errstr));
    if (!codec) {
        fprintf(stderr, "crmsync-produce: %s\n", errstr);
        return 3;
    }
    rk = producer_new(&o, &d);
    if (!rk) {
        avro_codec_free(codec);
        return 3;
    }
    rkt = rd_kafka_topic_new(rk, o.topic, NULL);
    bad = produce_lines(codec, &o, rk, rkt, &queued, &produce_failed);
    rd_kafka_flush(rk, FLUSH_TIMEOUT);
    left = rd_kafka_outq_len(rk);
    if (left > 0)
        fprintf(stderr,
                "crmsync-produce: %d messages not delivered after "
                "%d ms\n",
                left, FLUSH_TIMEOUT);
    fprintf(stderr, "produced %ld messages to %s", d.delivered, o.topic);
    if (d.failed + produce_failed + left > 0)
        fprintf(stderr, " (%ld failed)", d.failed + produce_failed + left);
    if (bad > 0)
        fprintf(stderr, " (%ld bad input lines)", bad);
    fputc('\n', stderr);
    rc = d.failed + produce_failed + left > 0 ? 1 : bad > 0 ? 2 : 0;
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    avro_codec_free(codec);
    return rc;
}
