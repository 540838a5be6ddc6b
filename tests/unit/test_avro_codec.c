/*
 * Unit tests for common/avro_codec: Confluent framing, round trips, schema
 * evolution both ways, hostile payloads, JSON -> value, accessors and the
 * Schema Registry mode (against tests/emulators/schema_registry.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "common/avro_codec.h"

#define SCHEMAS_DIR CRMSYNC_SOURCE_DIR "/schemas"
#define RESPONSE    "crmsync.response.ResponseEvent"

/* A full v1 response event as JSON. */
static const char RESPONSE_V1_JSON[] =
    "{\"event_id\":\"e-1\",\"tenant\":\"acme\","
    "\"occurred_at\":\"2024-05-01T12:00:00.123Z\","
    "\"source_system\":\"optimizely-campaign\","
    "\"recipient\":{\"entity_type\":\"contact\","
    "\"entity_id\":\"0b7f6a3c-8d6e-4c1e-9a55-2f1d3e4b5a69\","
    "\"email\":\"Ann@Example.com\"},"
    "\"response_type\":\"CLICK\",\"mailing_id\":\"m-7\","
    "\"mailing_name\":{\"string\":\"Spring sale\"},"
    "\"crm_campaign_id\":\"c-1\",\"url\":\"https://example.com/x\","
    "\"sent_at\":1714564700000}";

static json_t *json_parse(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);

    assert_non_null(j);
    return j;
}

static struct avro_codec *codec_local(const char *dir)
{
    char err[256] = "";
    struct avro_codec *c = avro_codec_new(NULL, dir, err, sizeof(err));

    if (!c)
        fail_msg("avro_codec_new(%s): %s", dir, err);
    return c;
}

/* Encodes JSON text as schema @p id; *buf caller frees. */
static void encode_json(struct avro_codec *c, int32_t id, const char *text,
                        void **buf, size_t *len)
{
    char err[256] = "";
    json_t *j = json_parse(text);
    avro_value_t v;

    if (avro_codec_from_json(c, id, j, &v, err, sizeof(err)) != CS_ERR_OK)
        fail_msg("from_json: %s", err);
    if (avro_codec_encode(c, id, &v, buf, len, err, sizeof(err)) != CS_ERR_OK)
        fail_msg("encode: %s", err);
    avro_value_decref(&v);
    json_decref(j);
}

/* Temporary schemas dir with copies of the given files and an ids.txt. */
static void copy_file(const char *from, const char *to)
{
    char buf[65536];
    FILE *in = fopen(from, "rb");
    FILE *out = fopen(to, "wb");
    size_t n;

    assert_non_null(in);
    assert_non_null(out);
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    fclose(out);
}

static void tmpdir_make(char *dir, const char *ids_txt, const char **files)
{
    char path[512];
    char src[512];
    FILE *fp;
    size_t i;

    snprintf(dir, 64, "%s", "/tmp/avro_codec_test.XXXXXX");
    assert_non_null(mkdtemp(dir));
    for (i = 0; files[i]; i++) {
        snprintf(src, sizeof(src), "%s/%s", SCHEMAS_DIR, files[i]);
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        copy_file(src, path);
    }
    snprintf(path, sizeof(path), "%s/ids.txt", dir);
    fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(ids_txt, fp);
    fclose(fp);
}

static void tmpdir_remove(const char *dir, const char **files)
{
    char path[512];
    size_t i;

    for (i = 0; files[i]; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/ids.txt", dir);
    unlink(path);
    rmdir(dir);
}

/* ------------------------------------------------------------------------ */

static void test_framing_short_and_magic(void **state)
{
    struct avro_codec *c = codec_local(SCHEMAS_DIR);
    uint8_t buf[8] = {0x7b, 0, 0, 0, 1, 0, 0, 0};
    uint8_t zero[5] = {0, 0, 0, 0, 1};
    char err[256];
    avro_value_t v;
    size_t n;

    (void)state;
    for (n = 0; n < 5; n++) {
        err[0] = '\0';
        assert_int_equal(
            avro_codec_decode(c, RESPONSE, zero, n, &v, NULL, err, sizeof(err)),
            CS_ERR_BAD_FRAME);
        assert_non_null(strstr(err, "need at least 5"));
    }
    assert_int_equal(avro_codec_decode(c, RESPONSE, buf, sizeof(buf), &v, NULL,
                                       err, sizeof(err)),
                     CS_ERR_BAD_FRAME);
    assert_string_equal(err, "magic byte 0x7b, expected 0x00");
    assert_false(cs_err_retryable(CS_ERR_BAD_FRAME));
    avro_codec_free(c);
}

static void test_framing_id_big_endian(void **state)
{
    struct avro_codec *c = codec_local(SCHEMAS_DIR);
    uint8_t hdr[6] = {0, 0x01, 0x02, 0x03, 0x04, 0x00};
    char err[256];
    avro_value_t v;
    int32_t id = 0;
    void *buf;
    size_t len;

    (void)state;
    assert_int_equal(avro_codec_decode(c, RESPONSE, hdr, sizeof(hdr), &v, &id,
                                       err, sizeof(err)),
                     CS_ERR_UNKNOWN_SCHEMA);
    assert_int_equal(id, 0x01020304);
    assert_string_equal(err, "schema id 16909060 not found");

    hdr[1] = hdr[2] = hdr[3] = 0;
    hdr[4] = 42;
    assert_int_equal(avro_codec_decode(c, RESPONSE, hdr, sizeof(hdr), &v, &id,
                                       err, sizeof(err)),
                     CS_ERR_UNKNOWN_SCHEMA);
    assert_int_equal(id, 42);
    assert_string_equal(err, "schema id 42 not found");

    encode_json(c, 2, RESPONSE_V1_JSON, &buf, &len);
    assert_true(len > 5);
    assert_memory_equal(buf, "\0\0\0\0\2", 5);
    assert_int_equal(
        avro_codec_decode(c, RESPONSE, buf, len, &v, &id, err, sizeof(err)),
        CS_ERR_OK);
    assert_int_equal(id, 2);
    avro_value_decref(&v);
    free(buf);
    avro_codec_free(c);
}

static void test_round_trip_and_accessors(void **state)
{
    struct avro_codec *c = codec_local(SCHEMAS_DIR);
    char err[256];
    avro_value_t v;
    avro_value_t rcp;
    int64_t l;
    bool b = true;
    void *buf;
    size_t len;

    (void)state;
    encode_json(c, 2, RESPONSE_V1_JSON, &buf, &len);
    assert_int_equal(
        avro_codec_decode(c, RESPONSE, buf, len, &v, NULL, err, sizeof(err)),
        CS_ERR_OK);
    assert_string_equal(avro_field_str(&v, "event_id"), "e-1");
    assert_string_equal(avro_field_str(&v, "tenant"), "acme");
    assert_string_equal(avro_field_str(&v, "response_type"), "CLICK");
    assert_string_equal(avro_field_str(&v, "mailing_name"), "Spring sale");
    assert_string_equal(avro_field_str(&v, "url"), "https://example.com/x");
    assert_null(avro_field_str(&v, "subject"));     /* null union */
    assert_null(avro_field_str(&v, "no_such"));     /* absent */
    assert_null(avro_field_str(&v, "occurred_at")); /* not a string */
    assert_true(avro_field_long(&v, "occurred_at", &l));
    assert_int_equal(l, 1714564800123LL);
    assert_true(avro_field_long(&v, "sent_at", &l)); /* through union */
    assert_int_equal(l, 1714564700000LL);
    assert_false(avro_field_long(&v, "event_id", &l));
    assert_true(avro_field_bool(&v, "from_copied_list", &b));
    assert_false(b); /* schema default */
    assert_false(avro_field_bool(&v, "tenant", &b));
    assert_true(avro_field_record(&v, "recipient", &rcp));
    assert_string_equal(avro_field_str(&rcp, "entity_type"), "contact");
    assert_string_equal(avro_field_str(&rcp, "email"), "Ann@Example.com");
    assert_false(avro_field_record(&v, "tenant", &rcp));
    assert_null(avro_field_str(&v, "device"));
    avro_value_decref(&v);
    free(buf);
    avro_codec_free(c);
}

/* v1 data read with the v2 reader (main dir: id 2 is the newest): the added
 * field takes its default, everything else survives. */
static void test_evolution_v1_data_v2_reader(void **state)
{
    struct avro_codec *c = codec_local(SCHEMAS_DIR);
    char err[256];
    avro_value_t v;
    avro_value_t rcp;
    void *buf;
    size_t len;
    size_t i;
    int64_t l;

    (void)state;
    encode_json(c, 1, RESPONSE_V1_JSON, &buf, &len);
    /* Decode twice: the second run uses the cached resolver. */
    for (i = 0; i < 2; i++) {
        assert_int_equal(avro_codec_decode(c, RESPONSE, buf, len, &v, NULL, err,
                                           sizeof(err)),
                         CS_ERR_OK);
        assert_null(avro_field_str(&v, "device"));
        assert_string_equal(avro_field_str(&v, "event_id"), "e-1");
        assert_string_equal(avro_field_str(&v, "mailing_name"), "Spring sale");
        assert_true(avro_field_long(&v, "sent_at", &l));
        assert_int_equal(l, 1714564700000LL);
        assert_true(avro_field_record(&v, "recipient", &rcp));
        assert_string_equal(avro_field_str(&rcp, "entity_type"), "contact");
        /* The decoded value is a full v2 value: it re-encodes as id 2. */
        {
            void *b2;
            size_t l2;

            assert_int_equal(
                avro_codec_encode(c, 2, &v, &b2, &l2, err, sizeof(err)),
                CS_ERR_OK);
            assert_int_equal(l2, len + 1); /* + union index of device */
            free(b2);
        }
        avro_value_decref(&v);
    }
    free(buf);
    avro_codec_free(c);
}

/* v2 data read with a v1 reader (tmp dir where v1 has the higher id). */
static void test_evolution_v2_data_v1_reader(void **state)
{
    const char *files[] = {"response_event.v1.avsc", "response_event.v2.avsc",
                           NULL};
    char dir[64];
    struct avro_codec *c;
    char err[256];
    avro_value_t v;
    void *buf;
    size_t len;
    size_t fields;
    char *json;

    (void)state;
    tmpdir_make(dir,
                "# v1 is the reader here\n2 response_event.v2.avsc\n"
                "3 response_event.v1.avsc\n",
                files);
    c = codec_local(dir);
    json = malloc(sizeof(RESPONSE_V1_JSON) + 32);
    assert_non_null(json);
    snprintf(json, sizeof(RESPONSE_V1_JSON) + 32, "%.*s,\"device\":\"mobile\"}",
             (int)sizeof(RESPONSE_V1_JSON) - 2, RESPONSE_V1_JSON);
    encode_json(c, 2, json, &buf, &len);
    assert_int_equal(
        avro_codec_decode(c, RESPONSE, buf, len, &v, NULL, err, sizeof(err)),
        CS_ERR_OK);
    assert_null(avro_field_str(&v, "device"));
    assert_int_equal(avro_value_get_size(&v, &fields), 0);
    assert_int_equal(fields, 16); /* the v1 field count */
    assert_string_equal(avro_field_str(&v, "url"), "https://example.com/x");
    avro_value_decref(&v);
    free(buf);
    free(json);
    avro_codec_free(c);
    tmpdir_remove(dir, files);
}

static void test_incompatible_and_bad_reader(void **state)
{
    struct avro_codec *c = codec_local(SCHEMAS_DIR);
    char err[256];
    avro_value_t v;
    void *buf;
    size_t len;

    (void)state;
    encode_json(c, 3,
                "{\"event_id\":\"b-1\",\"tenant\":\"acme\",\"occurred_at\":1,"
                "\"source_system\":\"esp\",\"recipient\":{\"email\":\"a@b\"},"
                "\"kind\":\"BOUNCE\",\"scope\":\"CHANNEL\","
                "\"bounce_type\":\"HARD\",\"smtp_status\":\"5.1.1\"}",
                &buf, &len);
    assert_int_equal(
        avro_codec_decode(c, RESPONSE, buf, len, &v, NULL, err, sizeof(err)),
        CS_ERR_SCHEMA_INCOMPATIBLE);
    assert_non_null(strstr(err, "schema id 3 cannot be read as"));
    /* cached failure, same answer */
    assert_int_equal(
        avro_codec_decode(c, RESPONSE, buf, len, &v, NULL, err, sizeof(err)),
        CS_ERR_SCHEMA_INCOMPATIBLE);
    assert_int_equal(avro_codec_decode(c, "crmsync.nope.Nope", buf, len, &v,
                                       NULL, err, sizeof(err)),
                     CS_ERR_INVALID_ARG);
    assert_int_equal(avro_codec_decode(c, "crmsync.bounce.BounceEvent", buf,
                                       len, &v, NULL, err, sizeof(err)),
                     CS_ERR_OK);
    assert_string_equal(avro_field_str(&v, "kind"), "BOUNCE");
    assert_string_equal(avro_field_str(&v, "bounce_type"), "HARD");
    assert_null(avro_field_str(&v, "source"));
    avro_value_decref(&v);
    /* A bounce value is not an instance of schema 1. */
    assert_int_equal(avro_codec_decode(c, "crmsync.bounce.BounceEvent", buf,
                                       len, &v, NULL, err, sizeof(err)),
                     CS_ERR_OK);
    {
        void *b2 = NULL;
        size_t l2;

        assert_int_equal(
            avro_codec_encode(c, 1, &v, &b2, &l2, err, sizeof(err)),
            CS_ERR_INVALID_ARG);
        assert_null(b2);
    }
    avro_value_decref(&v);
    free(buf);
    avro_codec_free(c);
}

static void test_truncated_every_length(void **state)
{
    struct avro_codec *c = codec_local(SCHEMAS_DIR);
    char err[256];
    avro_value_t v;
    uint8_t *buf;
    uint8_t *copy;
    size_t len;
    size_t n;
    int id;

    (void)state;
    for (id = 1; id <= 2; id++) {
        encode_json(c, id, RESPONSE_V1_JSON, (void **)&buf, &len);
        for (n = 5; n < len; n++) {
            /* exact-size heap copy so ASan sees any over-read */
            copy = malloc(n);
            assert_non_null(copy);
            memcpy(copy, buf, n);
            err[0] = '\0';
            assert_int_equal(avro_codec_decode(c, RESPONSE, copy, n, &v, NULL,
                                               err, sizeof(err)),
                             CS_ERR_DECODE);
            assert_non_null(strstr(err, "truncated at byte"));
            free(copy);
        }
        free(buf);
    }
    /* the message names the position and total */
    encode_json(c, 2, RESPONSE_V1_JSON, (void **)&buf, &len);
    assert_int_equal(
        avro_codec_decode(c, RESPONSE, buf, 10, &v, NULL, err, sizeof(err)),
        CS_ERR_DECODE);
    assert_string_equal(err,
                        "truncated at byte 10 of 10 (string/bytes of field "
                        "'tenant')");
    free(buf);
    avro_codec_free(c);
}

static void test_trailing_garbage(void **state)
{
    struct avro_codec *c = codec_local(SCHEMAS_DIR);
    char err[256];
    avro_value_t v;
    uint8_t *buf;
    uint8_t *longer;
    size_t len;

    (void)state;
    encode_json(c, 2, RESPONSE_V1_JSON, (void **)&buf, &len);
    longer = malloc(len + 3);
    assert_non_null(longer);
    memcpy(longer, buf, len);
    memcpy(longer + len, "xyz", 3);
    assert_int_equal(avro_codec_decode(c, RESPONSE, longer, len + 3, &v, NULL,
                                       err, sizeof(err)),
                     CS_ERR_DECODE);
    assert_non_null(strstr(err, "3 trailing bytes"));
    free(longer);
    free(buf);
    avro_codec_free(c);
}

/* Hostile lengths and counts must be rejected before avro-c allocates. */
static void test_hostile_lengths(void **state)
{
    struct avro_codec *c = codec_local(SCHEMAS_DIR);
    char err[256];
    avro_value_t v;
    /* id 2, event_id length = huge zig-zag varint (2^62) */
    const uint8_t huge_str[] = {0,    0,    0,    0,    2,    0x80, 0x80, 0x80,
                                0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
    /* id 2, varint of 11 bytes */
    const uint8_t long_varint[] = {0,    0,    0,    0,    2,    0xff,
                                   0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                   0xff, 0xff, 0xff, 0x01};
    /* id 2, negative string length (-1 zig-zag = 0x01) */
    const uint8_t neg_len[] = {0, 0, 0, 0, 2, 0x01};
    /* trigger (id 6): "e","t",occurred 0,"s", recipient 3x null,
     * trigger_kind 0, name "n", journey null, map block count 2^40 */
    const uint8_t huge_map[] = {0, 0,    0,    0,    6,    2,    'e', 2, 't',
                                0, 2,    's',  0,    0,    0,    0,   2, 'n',
                                0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40};

    (void)state;
    assert_int_equal(avro_codec_decode(c, RESPONSE, huge_str, sizeof(huge_str),
                                       &v, NULL, err, sizeof(err)),
                     CS_ERR_DECODE);
    assert_int_equal(avro_codec_decode(c, RESPONSE, long_varint,
                                       sizeof(long_varint), &v, NULL, err,
                                       sizeof(err)),
                     CS_ERR_DECODE);
    assert_non_null(strstr(err, "varint longer than 10 bytes"));
    assert_int_equal(avro_codec_decode(c, RESPONSE, neg_len, sizeof(neg_len),
                                       &v, NULL, err, sizeof(err)),
                     CS_ERR_DECODE);
    assert_non_null(strstr(err, "invalid length -1"));
    assert_int_equal(avro_codec_decode(c, "crmsync.trigger.TriggerEvent",
                                       huge_map, sizeof(huge_map), &v, NULL,
                                       err, sizeof(err)),
                     CS_ERR_DECODE);
    assert_non_null(strstr(err, "block count"));
    avro_codec_free(c);
}

/* Random payloads and random mutations of a valid one: no crash, no leak,
 * only OK or DECODE. */
static void test_random_bytes(void **state)
{
    struct avro_codec *c = codec_local(SCHEMAS_DIR);
    const char *readers[] = {RESPONSE, "crmsync.trigger.TriggerEvent"};
    char err[256];
    avro_value_t v;
    uint8_t *good;
    size_t good_len;
    uint8_t *buf;
    unsigned seed = 12345;
    int ok = 0;
    int i;

    (void)state;
    encode_json(c, 2, RESPONSE_V1_JSON, (void **)&good, &good_len);
    for (i = 0; i < 20000; i++) {
        size_t n;
        size_t k;
        int id = (i % 2) ? 2 : 6;
        enum cs_err rc;

        if (i % 4 < 2) { /* fully random body */
            n = 5 + (size_t)(rand_r(&seed) % 80);
            buf = malloc(n);
            assert_non_null(buf);
            for (k = 5; k < n; k++)
                buf[k] = (uint8_t)rand_r(&seed);
        } else { /* mutate a few bytes of a valid message */
            n = good_len;
            id = 2;
            buf = malloc(n);
            assert_non_null(buf);
            memcpy(buf, good, n);
            for (k = 0; k < 3; k++)
                buf[5 + (size_t)rand_r(&seed) % (n - 5)] =
                    (uint8_t)rand_r(&seed);
        }
        memcpy(buf, "\0\0\0\0", 4);
        buf[4] = (uint8_t)id;
        rc = avro_codec_decode(c, readers[id == 6], buf, n, &v, NULL, err,
                               sizeof(err));
        if (rc == CS_ERR_OK) {
            ok++;
            avro_value_decref(&v);
        } else {
            assert_int_equal(rc, CS_ERR_DECODE);
        }
        free(buf);
    }
    print_message("random payloads: %d of 20000 decoded\n", ok);
    free(good);
    avro_codec_free(c);
}

static void test_from_json(void **state)
{
    struct avro_codec *c = codec_local(SCHEMAS_DIR);
    char err[256];
    avro_value_t v;
    json_t *j;
    int64_t l;
    bool b;
    size_t n;
    avro_value_t attrs;

    (void)state;
    /* timestamp with offset, enums, defaults, explicit union branch */
    j = json_parse("{\"event_id\":\"t-1\",\"tenant\":\"acme\","
                   "\"occurred_at\":\"2024-05-01T14:00:00+02:00\","
                   "\"source_system\":\"crm\",\"recipient\":{},"
                   "\"trigger_kind\":\"BUSINESS\",\"trigger_name\":\"n\","
                   "\"attributes\":{\"a\":\"1\",\"b\":\"2\"},"
                   "\"deadline\":\"2024-05-02T00:00:00.5Z\"}");
    assert_int_equal(avro_codec_from_json(c, 6, j, &v, err, sizeof(err)),
                     CS_ERR_OK);
    assert_true(avro_field_long(&v, "occurred_at", &l));
    assert_int_equal(l, 1714564800000LL);
    assert_true(avro_field_long(&v, "deadline", &l));
    assert_int_equal(l, 1714608000500LL);
    assert_string_equal(avro_field_str(&v, "trigger_kind"), "BUSINESS");
    assert_null(avro_field_str(&v, "journey_id"));
    assert_int_equal(avro_value_get_by_name(&v, "attributes", &attrs, NULL), 0);
    assert_int_equal(avro_value_get_size(&attrs, &n), 0);
    assert_int_equal(n, 2);
    avro_value_decref(&v);
    json_decref(j);

    /* missing optional fields take defaults (map {} , boolean false) */
    j = json_parse("{\"event_id\":\"t-2\",\"tenant\":\"acme\","
                   "\"occurred_at\":0,\"source_system\":\"crm\","
                   "\"recipient\":{\"email\":\"x@y\"},"
                   "\"trigger_kind\":\"CUSTOM\",\"trigger_name\":\"n\"}");
    assert_int_equal(avro_codec_from_json(c, 6, j, &v, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(avro_value_get_by_name(&v, "attributes", &attrs, NULL), 0);
    assert_int_equal(avro_value_get_size(&attrs, &n), 0);
    assert_int_equal(n, 0);
    avro_value_decref(&v);
    json_decref(j);

    j = json_parse(RESPONSE_V1_JSON);
    json_object_del(j, "from_copied_list");
    assert_int_equal(avro_codec_from_json(c, 1, j, &v, err, sizeof(err)),
                     CS_ERR_OK);
    b = true;
    assert_true(avro_field_bool(&v, "from_copied_list", &b));
    assert_false(b);
    avro_value_decref(&v);

    /* missing required field */
    json_object_del(j, "mailing_id");
    assert_int_equal(avro_codec_from_json(c, 1, j, &v, err, sizeof(err)),
                     CS_ERR_INVALID_EVENT);
    assert_non_null(strstr(err, "missing required field 'mailing_id'"));
    json_object_set_new(j, "mailing_id", json_string("m"));

    /* wrong enum symbol */
    json_object_set_new(j, "response_type", json_string("BOUNCE"));
    assert_int_equal(avro_codec_from_json(c, 1, j, &v, err, sizeof(err)),
                     CS_ERR_INVALID_EVENT);
    assert_non_null(strstr(err, "response_type"));
    json_object_set_new(j, "response_type", json_string("OPEN"));

    /* bad timestamp, and a string where a plain long is not a timestamp */
    json_object_set_new(j, "occurred_at", json_string("2024-13-01T00:00:00Z"));
    assert_int_equal(avro_codec_from_json(c, 1, j, &v, err, sizeof(err)),
                     CS_ERR_INVALID_EVENT);
    assert_non_null(strstr(err, "RFC 3339"));
    json_object_set_new(j, "occurred_at", json_integer(5));

    /* union: wrong type fits no branch; unknown key rejected */
    json_object_set_new(j, "url", json_integer(5));
    assert_int_equal(avro_codec_from_json(c, 1, j, &v, err, sizeof(err)),
                     CS_ERR_INVALID_EVENT);
    assert_non_null(strstr(err, "'url'"));
    json_object_set_new(j, "url", json_null());
    json_object_set_new(j, "devise", json_string("x"));
    assert_int_equal(avro_codec_from_json(c, 1, j, &v, err, sizeof(err)),
                     CS_ERR_INVALID_EVENT);
    assert_non_null(strstr(err, "unknown field 'devise'"));
    json_object_del(j, "devise");

    /* entity_type enum inside a union, by bare symbol and wrapped */
    json_object_set_new(json_object_get(j, "recipient"), "entity_type",
                        json_pack("{s:s}", "EntityType", "lead"));
    assert_int_equal(avro_codec_from_json(c, 1, j, &v, err, sizeof(err)),
                     CS_ERR_OK);
    {
        avro_value_t r;

        assert_true(avro_field_record(&v, "recipient", &r));
        assert_string_equal(avro_field_str(&r, "entity_type"), "lead");
    }
    avro_value_decref(&v);
    assert_int_equal(avro_codec_from_json(c, 99, j, &v, err, sizeof(err)),
                     CS_ERR_UNKNOWN_SCHEMA);
    json_decref(j);
    avro_codec_free(c);
}

/* Every schema in schemas/ round-trips through its own reader. */
static void test_all_schemas_round_trip(void **state)
{
    static const struct {
        int32_t id;
        const char *reader;
        const char *json;
        const char *field;
        const char *want;
    } cases[] = {
        {3, "crmsync.bounce.BounceEvent",
         "{\"event_id\":\"b\",\"tenant\":\"t\",\"occurred_at\":1,"
         "\"source_system\":\"s\",\"recipient\":{\"email\":\"a@b\"},"
         "\"kind\":\"UNSUBSCRIBE\",\"scope\":\"CONSENT\",\"consent_id\":\"c\","
         "\"source\":\"LIST_UNSUBSCRIBE_HEADER\"}",
         "source", "LIST_UNSUBSCRIBE_HEADER"},
        {4, "crmsync.listsync.ListSyncRequest",
         "{\"event_id\":\"l\",\"tenant\":\"t\",\"occurred_at\":1,"
         "\"source_system\":\"crm\",\"crm_list_id\":\"L\",\"esp_list_id\":"
         "\"E\",\"consent_id\":\"c\",\"requested_at\":\"2024-01-01T00:00:"
         "00Z\"}",
         "mode", "FULL"},
        {5, "crmsync.listsync.ListMembershipChange",
         "{\"event_id\":\"m\",\"tenant\":\"t\",\"occurred_at\":1,"
         "\"source_system\":\"crm\",\"recipient\":{\"entity_type\":\"account\","
         "\"entity_id\":\"g\"},\"crm_list_id\":\"L\",\"change\":\"REMOVED\"}",
         "change", "REMOVED"},
        {6, "crmsync.trigger.TriggerEvent",
         "{\"event_id\":\"x\",\"tenant\":\"t\",\"occurred_at\":1,"
         "\"source_system\":\"s\",\"recipient\":{},\"trigger_kind\":"
         "\"BEHAVIOURAL\",\"trigger_name\":\"cart\",\"journey_id\":\"j\"}",
         "journey_id", "j"},
    };
    struct avro_codec *c = codec_local(SCHEMAS_DIR);
    char err[256];
    avro_value_t v;
    void *buf;
    size_t len;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        encode_json(c, cases[i].id, cases[i].json, &buf, &len);
        if (avro_codec_decode(c, cases[i].reader, buf, len, &v, NULL, err,
                              sizeof(err)) != CS_ERR_OK)
            fail_msg("%s: %s", cases[i].reader, err);
        assert_string_equal(avro_field_str(&v, cases[i].field), cases[i].want);
        avro_value_decref(&v);
        free(buf);
    }
    avro_codec_free(c);
}

static void test_bad_ids_txt(void **state)
{
    const char *none[] = {NULL};
    const char *one[] = {"response_event.v1.avsc", NULL};
    char dir[64];
    char err[256] = "";

    (void)state;
    tmpdir_make(dir, "1 response_event.v1.avsc\nbogus line here\n", one);
    assert_null(avro_codec_new("", dir, err, sizeof(err)));
    assert_non_null(strstr(err, "ids.txt:2"));
    tmpdir_remove(dir, one);

    tmpdir_make(dir, "1 missing.avsc\n", none);
    assert_null(avro_codec_new(NULL, dir, err, sizeof(err)));
    assert_non_null(strstr(err, "missing.avsc"));
    tmpdir_remove(dir, none);

    tmpdir_make(dir, "1 response_event.v1.avsc\n1 response_event.v1.avsc\n",
                one);
    assert_null(avro_codec_new(NULL, dir, err, sizeof(err)));
    assert_non_null(strstr(err, "duplicate id 1"));
    tmpdir_remove(dir, one);
    avro_codec_free(NULL);
}

/* ------------------------------------------------------------------------
 * Registry mode against the emulator
 * ------------------------------------------------------------------------ */

struct registry {
    pid_t pid;
    int port;
    char url[64];
    char port_file[64];
};

static size_t collect(char *p, size_t size, size_t nmemb, void *ud)
{
    char *dst = ud;
    size_t have = strlen(dst);
    size_t n = size * nmemb;

    if (have + n >= 256)
        return 0;
    memcpy(dst + have, p, n);
    dst[have + n] = '\0';
    return n;
}

static long registry_stats(const struct registry *r)
{
    char url[128];
    char body[256] = "";
    CURL *curl = curl_easy_init();
    json_t *j;
    long n;

    snprintf(url, sizeof(url), "%s/_admin/stats", r->url);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
    assert_int_equal(curl_easy_perform(curl), CURLE_OK);
    curl_easy_cleanup(curl);
    j = json_parse(body);
    n = (long)json_integer_value(json_object_get(j, "requests"));
    json_decref(j);
    return n;
}

static void registry_start(struct registry *r)
{
    const char *script =
        CRMSYNC_SOURCE_DIR "/tests/emulators/schema_registry.py";
    struct timespec ts = {0, 20 * 1000 * 1000};
    FILE *fp;
    int i;

    snprintf(r->port_file, sizeof(r->port_file), "/tmp/avro_sr_%d.port",
             (int)getpid());
    unlink(r->port_file);
    r->pid = fork();
    assert_true(r->pid >= 0);
    if (r->pid == 0) {
        execlp("python3", "python3", script, "--port", "0", "--port-file",
               r->port_file, "--schemas-dir", SCHEMAS_DIR, (char *)NULL);
        _exit(127);
    }
    r->port = 0;
    for (i = 0; i < 500 && r->port == 0; i++) { /* up to 10 s */
        fp = fopen(r->port_file, "r");
        if (fp) {
            if (fscanf(fp, "%d", &r->port) != 1)
                r->port = 0;
            fclose(fp);
        }
        if (r->port == 0)
            nanosleep(&ts, NULL);
    }
    assert_true(r->port > 0);
    snprintf(r->url, sizeof(r->url), "http://127.0.0.1:%d", r->port);
}

static void registry_stop(struct registry *r)
{
    int status;

    kill(r->pid, SIGTERM);
    waitpid(r->pid, &status, 0);
    unlink(r->port_file);
}

static void test_registry_mode(void **state)
{
    struct registry r;
    struct avro_codec *local = codec_local(SCHEMAS_DIR);
    struct avro_codec *c;
    char err[256] = "";
    avro_value_t v;
    void *buf;
    size_t len;
    uint8_t unknown[6] = {0, 0, 0, 0, 99, 0};
    int i;

    (void)state;
    registry_start(&r);
    /* data produced by someone else (local codec, same ids) */
    encode_json(local, 1, RESPONSE_V1_JSON, &buf, &len);
    avro_codec_free(local);

    /* a trailing slash is tolerated */
    {
        char slash[80];

        snprintf(slash, sizeof(slash), "%s/", r.url);
        c = avro_codec_new(slash, SCHEMAS_DIR, err, sizeof(err));
    }
    assert_non_null(c);
    assert_int_equal(registry_stats(&r), 0);
    for (i = 0; i < 3; i++) {
        assert_int_equal(avro_codec_decode(c, RESPONSE, buf, len, &v, NULL, err,
                                           sizeof(err)),
                         CS_ERR_OK);
        assert_string_equal(avro_field_str(&v, "event_id"), "e-1");
        assert_null(avro_field_str(&v, "device")); /* v1 -> v2 reader */
        avro_value_decref(&v);
        /* fetched once, then cached */
        assert_int_equal(registry_stats(&r), 1);
    }
    assert_int_equal(avro_codec_decode(c, RESPONSE, unknown, sizeof(unknown),
                                       &v, NULL, err, sizeof(err)),
                     CS_ERR_UNKNOWN_SCHEMA);
    assert_string_equal(err, "schema id 99 not found in registry");
    assert_int_equal(registry_stats(&r), 2);
    avro_codec_free(c);
    free(buf);

    registry_stop(&r);
}

/* Registry down: retryable error, and no secret in the message. */
static void test_registry_unavailable(void **state)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    char url[96];
    char err[256] = "";
    struct avro_codec *c;
    avro_value_t v;
    uint8_t frame[6] = {0, 0, 0, 0, 1, 0};
    json_t *j;

    (void)state;
    /* a port that was free a moment ago: connection refused */
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    snprintf(url, sizeof(url), "http://user:s3cret@127.0.0.1:%d",
             ntohs(sa.sin_port));
    c = avro_codec_new(url, SCHEMAS_DIR, err, sizeof(err));
    assert_non_null(c);
    assert_int_equal(avro_codec_decode(c, RESPONSE, frame, sizeof(frame), &v,
                                       NULL, err, sizeof(err)),
                     CS_ERR_REGISTRY_UNAVAILABLE);
    assert_true(cs_err_retryable(CS_ERR_REGISTRY_UNAVAILABLE));
    assert_null(strstr(err, "s3cret"));
    assert_non_null(strstr(err, "id 1"));
    j = json_object();
    assert_int_equal(avro_codec_from_json(c, 1, j, &v, err, sizeof(err)),
                     CS_ERR_REGISTRY_UNAVAILABLE);
    json_decref(j);
    avro_codec_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_framing_short_and_magic),
        cmocka_unit_test(test_framing_id_big_endian),
        cmocka_unit_test(test_round_trip_and_accessors),
        cmocka_unit_test(test_evolution_v1_data_v2_reader),
        cmocka_unit_test(test_evolution_v2_data_v1_reader),
        cmocka_unit_test(test_incompatible_and_bad_reader),
        cmocka_unit_test(test_truncated_every_length),
        cmocka_unit_test(test_trailing_garbage),
        cmocka_unit_test(test_hostile_lengths),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_from_json),
        cmocka_unit_test(test_all_schemas_round_trip),
        cmocka_unit_test(test_bad_ids_txt),
        cmocka_unit_test(test_registry_mode),
        cmocka_unit_test(test_registry_unavailable),
    };
    int rc;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
