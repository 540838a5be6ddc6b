/*
 * crmsync dlq - list, inspect and replay dead-lettered messages.
 *
 * Wiring of the sub-commands: dlq_opts parses the command line, dlq_read
 * reads the DLQ topic without any consumer group, dlq_value shows values,
 * dlq_replay produces replays. `crmsync dlq --help` is the documentation.
 *
 * Ownership: struct run borrows the options and owns nothing but counters;
 * the reader, decoder and replayer are created and freed by the command
 * functions. Thread-safety: single-threaded.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "common/isotime.h"
#include "dlq_conf.h"
#include "dlq_opts.h"
#include "dlq_read.h"
#include "dlq_replay.h"
#include "dlq_value.h"

#define EXIT_KAFKA       1
#define EXIT_USAGE       2
#define MAX_CLASS_COUNTS 64
#define MAX_TARGETS      64
#define KEY_SHOWN        200 /* bytes of a key printed by list / replay */
#define ERRSTR_SIZE      512

/* Error class counter for the list summary. */
struct class_count {
    char name[64];
    long n;
};

/* An original topic replays go to, with its partition count. */
struct target {
    char topic[256];
    int32_t partitions; /* -1 = the topic does not exist */
    long n;             /* messages selected for it */
};

/* State of one list / replay pass over the DLQ topic. */
struct run {
    const struct dlq_opts *o;  /* borrowed */
    struct dlq_reader *reader; /* borrowed */
    struct dlq_replayer *rep;  /* borrowed; NULL unless --execute */
    int32_t partition;         /* DLQ partition being scanned */
    long read;                 /* messages read */
    long matched;              /* passed the filters */
    long refused;              /* replay: no origin / no such topic */
    long queued;               /* replay --execute: handed to the producer */
    bool limit_hit;            /* --limit reached */
    struct class_count classes[MAX_CLASS_COUNTS];
    size_t nclasses;
    struct target targets[MAX_TARGETS];
    size_t ntargets;
    enum cs_err err; /* first error that stopped the pass */
    char errstr[ERRSTR_SIZE];
};

static const char *or_unknown(const char *s)
{
    return s && s[0] ? s : "unknown";
}

static void count_class(struct run *r, const char *cls)
{
    size_t i;

    cls = or_unknown(cls);
    for (i = 0; i < r->nclasses; i++)
        if (!strcmp(r->classes[i].name, cls))
            break;
    if (i == r->nclasses) {
        /* A full table lumps the rest into its last row. */
        if (r->nclasses == MAX_CLASS_COUNTS) {
            i = MAX_CLASS_COUNTS - 1;
            cls = "(other)";
        } else {
            r->nclasses++;
        }
        snprintf(r->classes[i].name, sizeof(r->classes[i].name), "%s", cls);
    }
    r->classes[i].n++;
}

/* The target entry of @p topic (partition count looked up once), or NULL
 * when the table is full or metadata failed (r->err set). */
static struct target *target_of(struct run *r, const char *topic)
{
    struct target *t;
    char errstr[ERRSTR_SIZE];
    enum cs_err err;

    for (size_t i = 0; i < r->ntargets; i++)
        if (!strcmp(r->targets[i].topic, topic))
            return &r->targets[i];
    if (r->ntargets == MAX_TARGETS) {
        r->err = CS_ERR_INVALID_ARG;
        snprintf(r->errstr, sizeof(r->errstr),
                 "more than %d different original topics", MAX_TARGETS);
        return NULL;
    }
    t = &r->targets[r->ntargets];
    snprintf(t->topic, sizeof(t->topic), "%s", topic);
    t->n = 0;
    err = dlq_reader_partition_count(r->reader, topic, &t->partitions, errstr,
                                     sizeof(errstr));
    if (err == CS_ERR_INVALID_ARG) {
        t->partitions = -1;
    } else if (err != CS_ERR_OK) {
        r->err = err;
        snprintf(r->errstr, sizeof(r->errstr), "%s", errstr);
        return NULL;
    }
    r->ntargets++;
    return t;
}

static void print_coords(const struct run *r, const rd_kafka_message_t *rkm)
{
    printf("%" PRId32 "/%" PRId64, r->partition, rkm->offset);
}

static void print_list_line(const struct run *r, const rd_kafka_message_t *rkm,
                            const struct dlq_meta *m)
{
    print_coords(r, rkm);
    printf(" %s worker=%s class=%s original=", or_unknown(m->timestamp),
           or_unknown(m->worker), or_unknown(m->cls));
    if (m->has_origin)
        printf("%s/%" PRId32 "/%" PRId64, m->topic, m->partition, m->offset);
    else
        fputs("unknown", stdout);
    fputs(" message=", stdout);
    if (m->message[0])
        dlq_print_quoted(stdout, m->message, strlen(m->message), 0);
    else
        fputs("unknown", stdout);
    fputs(" key=", stdout);
    dlq_print_quoted(stdout, rkm->key, rkm->key_len, KEY_SHOWN);
    fputc('\n', stdout);
}

/* Replay (dry run or --execute) of one selected message; false stops. */
static bool replay_one(struct run *r, const rd_kafka_message_t *rkm,
                       const struct dlq_meta *m)
{
    struct target *t;
    int32_t partition;
    char replay_of[512];

    if (!m->has_origin) {
        r->refused++;
        printf("refuse ");
        print_coords(r, rkm);
        printf(": crmsync.error.topic/partition/offset missing (origin "
               "unknown); never replayed\n");
        return true;
    }
    t = target_of(r, m->topic);
    if (!t)
        return false;
    if (t->partitions < 0) {
        r->refused++;
        printf("refuse ");
        print_coords(r, rkm);
        printf(": original topic %s does not exist\n", m->topic);
        return true;
    }
    /* The original partition keeps the message with the rest of its key's
     * events, whichever partitioner the original producer used. */
    partition =
        m->partition < t->partitions ? m->partition : RD_KAFKA_PARTITION_UA;
    t->n++;
    printf("%s ", r->rep ? "replay" : "would replay");
    print_coords(r, rkm);
    if (partition == RD_KAFKA_PARTITION_UA)
        printf(" -> %s/(by key; partition %" PRId32 " is gone)", m->topic,
               m->partition);
    else
        printf(" -> %s/%" PRId32, m->topic, partition);
    printf(" (original offset %" PRId64 ") class=%s key=", m->offset,
           or_unknown(m->cls));
    dlq_print_quoted(stdout, rkm->key, rkm->key_len, KEY_SHOWN);
    fputc('\n', stdout);
    if (!r->rep)
        return true;
    snprintf(replay_of, sizeof(replay_of), "%s/%" PRId32 "/%" PRId64,
             r->o->topic, r->partition, rkm->offset);
    r->err = dlq_replayer_send(r->rep, rkm, m->topic, partition, replay_of,
                               r->errstr, sizeof(r->errstr));
    if (r->err != CS_ERR_OK)
        return false;
    r->queued++;
    return true;
}

/* Scan callback of list and replay. */
static bool on_message(const rd_kafka_message_t *rkm, void *opaque)
{
    struct run *r = opaque;
    struct dlq_meta m;

    r->read++;
    dlq_meta_parse(rkm, &m);
    if (!dlq_opts_match(r->o, rkm->offset, &m))
        return true;
    r->matched++;
    count_class(r, m.cls);
    if (r->o->cmd == DLQ_CMD_LIST)
        print_list_line(r, rkm, &m);
    else if (!replay_one(r, rkm, &m))
        return false;
    if (r->o->limit && r->matched >= r->o->limit) {
        r->limit_hit = true;
        return false;
    }
    return true;
}

/* Reads the selected partitions of the DLQ topic, each from its low
 * watermark (or --offset-from) to its high watermark at that moment (or
 * --offset-to). */
static enum cs_err scan_topic(struct run *r)
{
    const struct dlq_opts *o = r->o;
    int32_t count = 0;
    int64_t low, high, from, end;
    enum cs_err err;

    err = dlq_reader_partition_count(r->reader, o->topic, &count, r->errstr,
                                     sizeof(r->errstr));
    if (err != CS_ERR_OK)
        return err;
    if (o->partition >= count) {
        snprintf(r->errstr, sizeof(r->errstr),
                 "%s has %" PRId32 " partitions: no partition %" PRId32,
                 o->topic, count, o->partition);
        return CS_ERR_INVALID_ARG;
    }
    for (int32_t p = 0; p < count && !r->limit_hit; p++) {
        if (o->partition >= 0 && p != o->partition)
            continue;
        err = dlq_reader_watermarks(r->reader, o->topic, p, &low, &high,
                                    r->errstr, sizeof(r->errstr));
        if (err != CS_ERR_OK)
            return err;
        from = o->offset_from > low ? o->offset_from : low;
        end = high;
        if (o->offset_to >= 0 && o->offset_to + 1 < end)
            end = o->offset_to + 1;
        r->partition = p;
        err = dlq_reader_scan(r->reader, o->topic, p, from, end, on_message, r,
                              r->errstr, sizeof(r->errstr));
        if (err != CS_ERR_OK)
            return err;
        if (r->err != CS_ERR_OK)
            return r->err;
    }
    return CS_ERR_OK;
}

static void print_class_summary(const struct run *r)
{
    printf("by class:");
    if (r->nclasses == 0)
        printf(" (none)");
    for (size_t i = 0; i < r->nclasses; i++)
        printf(" %s=%ld", r->classes[i].name, r->classes[i].n);
    fputc('\n', stdout);
}

static void print_target_summary(const struct run *r)
{
    for (size_t i = 0; i < r->ntargets; i++)
        if (r->targets[i].n)
            printf("  %s: %ld\n", r->targets[i].topic, r->targets[i].n);
}

static struct dlq_reader *open_reader(const struct dlq_opts *o)
{
    static const char *const defaults[] = {
        "group.id", "crmsync-dlq-cli", "client.id", "crmsync-dlq-cli", NULL,
    };
    char errstr[ERRSTR_SIZE];
    rd_kafka_conf_t *conf =
        dlq_conf_build(&o->kafka, defaults, errstr, sizeof(errstr));
    struct dlq_reader *reader;

    if (!conf) {
        fprintf(stderr, "crmsync dlq: %s\n", errstr);
        return NULL;
    }
    reader = dlq_reader_new(conf, o->timeout_ms, errstr, sizeof(errstr));
    if (!reader)
        fprintf(stderr, "crmsync dlq: %s\n", errstr);
    return reader;
}

static int cmd_list_or_replay(const struct dlq_opts *o)
{
    static const char *const producer_defaults[] = {
        "client.id", "crmsync-dlq-replay", "linger.ms", "5", NULL,
    };
    struct run *r = calloc(1, sizeof(*r));
    struct dlq_replayer *rep = NULL;
    char errstr[ERRSTR_SIZE];
    rd_kafka_conf_t *conf;
    long delivered = 0, failed = 0;
    enum cs_err err;
    int rc = EXIT_KAFKA;

    if (!r) {
        fprintf(stderr, "crmsync dlq: out of memory\n");
        return EXIT_KAFKA;
    }
    r->o = o;
    r->reader = open_reader(o);
    if (!r->reader)
        goto out_free_run;
    if (o->cmd == DLQ_CMD_REPLAY && o->execute) {
        conf = dlq_conf_build(&o->kafka, producer_defaults, errstr,
                              sizeof(errstr));
        if (conf)
            rep = dlq_replayer_new(conf, errstr, sizeof(errstr));
        if (!rep) {
            fprintf(stderr, "crmsync dlq: %s\n", errstr);
            goto out_free_reader;
        }
        r->rep = rep;
    }
    err = scan_topic(r);
    if (rep)
        dlq_replayer_flush(rep, o->timeout_ms, &delivered, &failed);
    if (err != CS_ERR_OK) {
        fprintf(stderr, "crmsync dlq: %s\n", r->errstr);
        rc = err == CS_ERR_INVALID_ARG ? EXIT_USAGE : EXIT_KAFKA;
        if (rep)
            fprintf(stderr,
                    "crmsync dlq: stopped early: %ld replayed and "
                    "acknowledged, %ld failed before the error\n",
                    delivered, failed);
        goto out_free_replayer;
    }
    if (o->cmd == DLQ_CMD_LIST) {
        printf("matched %ld of %ld read in %s%s\n", r->matched, r->read,
               o->topic, r->limit_hit ? " (stopped at --limit)" : "");
        print_class_summary(r);
        rc = 0;
    } else if (!rep) {
        printf("dry run: %ld message(s) would be replayed, %ld refused "
               "(%ld matched of %ld read in %s%s)\n",
               r->matched - r->refused, r->refused, r->matched, r->read,
               o->topic, r->limit_hit ? ", stopped at --limit" : "");
        print_target_summary(r);
        printf("nothing was produced; add --execute to replay\n");
        rc = 0;
    } else {
        printf("replayed %ld message(s): %ld delivered, %ld failed, %ld "
               "refused (%ld matched of %ld read in %s%s)\n",
               r->queued, delivered, failed, r->refused, r->matched, r->read,
               o->topic, r->limit_hit ? ", stopped at --limit" : "");
        print_target_summary(r);
        rc = failed || delivered != r->queued ? EXIT_KAFKA : 0;
    }
    if (r->refused)
        fprintf(stderr,
                "crmsync dlq: %ld message(s) refused (see the \"refuse\" "
                "lines): their origin is unknown or gone\n",
                r->refused);

out_free_replayer:
    dlq_replayer_free(rep);
out_free_reader:
    dlq_reader_free(r->reader);
out_free_run:
    free(r);
    return rc;
}

/* Everything `show` prints about one message. */
struct show_ctx {
    const struct dlq_opts *o; /* borrowed */
    bool found;
};

static void show_headers(const rd_kafka_message_t *rkm)
{
    rd_kafka_headers_t *hdrs = NULL;
    const char *name;
    const void *val;
    size_t size;
    size_t n = 0;

    if (rd_kafka_message_headers(rkm, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR)
        n = rd_kafka_header_cnt(hdrs);
    printf("headers (%zu):\n", n);
    for (size_t i = 0;
         n && rd_kafka_header_get_all(hdrs, i, &name, &val, &size) ==
                  RD_KAFKA_RESP_ERR_NO_ERROR;
         i++) {
        printf("  %s: ", name);
        dlq_print_quoted(stdout, val, size, 0);
        fputc('\n', stdout);
    }
}

static void show_value(const struct dlq_opts *o, const rd_kafka_message_t *rkm)
{
    char errstr[ERRSTR_SIZE];
    char name[512] = "";
    char *json = NULL;
    int32_t id = -1;
    struct dlq_decoder *d;
    enum cs_err err;

    if (!rkm->payload) {
        printf("value: null\n");
        return;
    }
    d = dlq_decoder_new(o->registry_url, o->schemas_dir, errstr,
                        sizeof(errstr));
    if (!d) {
        printf("value: %zu bytes; schemas unavailable (%s), hex dump:\n",
               rkm->len, errstr);
        dlq_print_hexdump(stdout, rkm->payload, rkm->len);
        return;
    }
    err = dlq_decoder_to_json(d, rkm->payload, rkm->len, &json, &id, name,
                              sizeof(name), errstr, sizeof(errstr));
    if (err == CS_ERR_OK) {
        printf("value: %zu bytes, Confluent Avro, schema id %" PRId32
               ", decoded as %s:\n%s\n",
               rkm->len, id, name, json);
        if (o->hex)
            dlq_print_hexdump(stdout, rkm->payload, rkm->len);
    } else {
        printf("value: %zu bytes, not decodable (%s: %s), hex dump:\n",
               rkm->len, cs_err_name(err), errstr);
        dlq_print_hexdump(stdout, rkm->payload, rkm->len);
    }
    free(json);
    dlq_decoder_free(d);
}

static bool on_show(const rd_kafka_message_t *rkm, void *opaque)
{
    struct show_ctx *c = opaque;
    struct dlq_meta m;
    rd_kafka_timestamp_type_t tstype;
    int64_t ts = rd_kafka_message_timestamp(rkm, &tstype);

    if (rkm->offset != c->o->offset)
        return false; /* a gap: nothing at the offset asked for */
    c->found = true;
    dlq_meta_parse(rkm, &m);
    printf("message: %s/%" PRId32 "/%" PRId64 "\n", c->o->topic, rkm->partition,
           rkm->offset);
    if (ts >= 0) {
        char when[64];

        isotime_format(ts, when, sizeof(when));
        printf("kafka timestamp: %s (%s time)\n", when,
               tstype == RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME ? "log append"
                                                            : "create");
    }
    fputs("key: ", stdout);
    dlq_print_quoted(stdout, rkm->key, rkm->key_len, 0);
    fputc('\n', stdout);
    show_headers(rkm);
    printf("dead letter:\n");
    if (m.has_origin)
        printf("  original:  %s/%" PRId32 "/%" PRId64 "\n", m.topic,
               m.partition, m.offset);
    else
        printf("  original:  unknown (crmsync.error.topic/partition/offset "
               "missing: cannot be replayed)\n");
    printf("  class:     %s\n  worker:    %s\n  failed at: %s\n",
           or_unknown(m.cls), or_unknown(m.worker), or_unknown(m.timestamp));
    printf("  reason:    %s\n", or_unknown(m.message));
    show_value(c->o, rkm);
    return false;
}

static int cmd_show(const struct dlq_opts *o)
{
    struct dlq_reader *reader = open_reader(o);
    struct show_ctx c = {.o = o, .found = false};
    char errstr[ERRSTR_SIZE];
    int64_t low, high;
    int32_t count;
    enum cs_err err;
    int rc = EXIT_KAFKA;

    if (!reader)
        return EXIT_KAFKA;
    err = dlq_reader_partition_count(reader, o->topic, &count, errstr,
                                     sizeof(errstr));
    if (err == CS_ERR_OK && o->partition >= count) {
        snprintf(errstr, sizeof(errstr),
                 "%s has %" PRId32 " partitions: no partition %" PRId32,
                 o->topic, count, o->partition);
        err = CS_ERR_INVALID_ARG;
    }
    if (err == CS_ERR_OK)
        err = dlq_reader_watermarks(reader, o->topic, o->partition, &low, &high,
                                    errstr, sizeof(errstr));
    if (err == CS_ERR_OK && (o->offset < low || o->offset >= high)) {
        snprintf(errstr, sizeof(errstr),
                 "offset %" PRId64 " is outside %s/%" PRId32 " [%" PRId64
                 ", %" PRId64 ")",
                 o->offset, o->topic, o->partition, low, high);
        err = CS_ERR_INVALID_ARG;
    }
    /* Read up to the high watermark: with gaps (compaction, transaction
     * markers) the first message returned may be past the offset asked. */
    if (err == CS_ERR_OK)
        err = dlq_reader_scan(reader, o->topic, o->partition, o->offset, high,
                              on_show, &c, errstr, sizeof(errstr));
    if (err != CS_ERR_OK) {
        fprintf(stderr, "crmsync dlq: %s\n", errstr);
        rc = err == CS_ERR_INVALID_ARG ? EXIT_USAGE : EXIT_KAFKA;
    } else if (!c.found) {
        fprintf(stderr,
                "crmsync dlq: no message at %s/%" PRId32 "/%" PRId64 "\n",
                o->topic, o->partition, o->offset);
    } else {
        rc = 0;
    }
    dlq_reader_free(reader);
    return rc;
}

int cli_dlq_main(int argc, char **argv)
{
    struct dlq_opts o;
    int res = dlq_opts_parse(argc, argv, &o);

    if (res > 0)
        return 0;
    if (res < 0)
        return EXIT_USAGE;
    fflush(stdout);
    if (o.cmd == DLQ_CMD_SHOW)
        return cmd_show(&o);
    return cmd_list_or_replay(&o);
}
