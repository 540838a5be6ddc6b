/*
 * fuzz_avro_frame - the Confluent frame + Avro decoder every consumed Kafka
 * message goes through (outside input): avro_codec_decode() must neither
 * crash, leak, read out of bounds nor allocate without bound on any bytes,
 * for every reader schema a worker decodes into. A decoded value is also
 * read back through the field accessors and rendered as JSON, so a value
 * the resolver left half-built shows up here too.
 *
 * The codec is local mode over the checked-in schemas (CRMSYNC_SOURCE_DIR
 * "/schemas", no registry), created once per process: schema parsing and
 * the cached resolutions are set-up, not input.
 *
 * The checked-in schemas use only strings, longs, enums, unions, one nested
 * record and one map, but a Schema Registry may hand the codec any writer
 * schema. So every input is also decoded by a second codec over a
 * synthetic record crmsync.fuzz.Everything (ids 100 and 101, below) with
 * every Avro type: arrays (of null and of empty records: the zero-byte
 * items the scan bounds), nested maps, fixed, bytes, floats, a recursive
 * record, and a v1 -> v2 evolution with promotions, a dropped field and
 * added fields with defaults of every kind.
 *
 * Seeds (tests/fuzz/corpus/avro_frame/): valid-* frames of each schema id
 * (1-6), poison-* messages as the dead-letter tests send them (bad magic,
 * short, unknown id, truncated, trailing bytes, wrong schema), hostile-*
 * length prefixes (huge / negative string lengths, map and array block
 * counts and sizes, bad union and enum indexes, deep nesting), synth-*
 * frames of the synthetic schema, and regress-* inputs that once crashed,
 * leaked or hung the codec (see the comments at the fixes in
 * common/avro_scan.c and common/avro_resolve.c).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/avro_codec.h"

#define SCHEMAS_DIR CRMSYNC_SOURCE_DIR "/schemas"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The reader schemas the workers pass to kafka_loop / avro_codec_decode:
 * response, bounce, listsync (requests and membership changes), trigger. */
static const char *const reader_names[] = {
    "crmsync.response.ResponseEvent",   "crmsync.bounce.BounceEvent",
    "crmsync.listsync.ListSyncRequest", "crmsync.listsync.ListMembershipChange",
    "crmsync.trigger.TriggerEvent",
};

#define SYNTH_READER "crmsync.fuzz.Everything"

/* Writer id 100; the reader (highest id) is v2, id 101. */
static const char synth_v1[] =
    "{\"type\":\"record\",\"name\":\"Everything\",\"namespace\":\"crmsync."
    "fuzz\",\"fields\":["
    "{\"name\":\"b\",\"type\":\"boolean\"},"
    "{\"name\":\"i\",\"type\":\"int\"},"
    "{\"name\":\"l\",\"type\":\"long\"},"
    "{\"name\":\"f\",\"type\":\"float\"},"
    "{\"name\":\"d\",\"type\":\"double\"},"
    "{\"name\":\"s\",\"type\":\"string\"},"
    "{\"name\":\"y\",\"type\":\"bytes\"},"
    "{\"name\":\"x\",\"type\":{\"type\":\"fixed\",\"name\":\"F4\",\"size\":4}},"
    "{\"name\":\"e\",\"type\":{\"type\":\"enum\",\"name\":\"E\",\"symbols\":["
    "\"A\",\"B\",\"C\"]}},"
    "{\"name\":\"u\",\"type\":[\"null\",\"string\",\"long\",{\"type\":"
    "\"array\",\"items\":\"int\"}]},"
    "{\"name\":\"an\",\"type\":{\"type\":\"array\",\"items\":\"null\"}},"
    "{\"name\":\"ae\",\"type\":{\"type\":\"array\",\"items\":{\"type\":"
    "\"record\",\"name\":\"Empty\",\"fields\":[]}}},"
    "{\"name\":\"as\",\"type\":{\"type\":\"array\",\"items\":\"string\"}},"
    "{\"name\":\"m\",\"type\":{\"type\":\"map\",\"values\":{\"type\":\"map\","
    "\"values\":\"long\"}}},"
    "{\"name\":\"n\",\"type\":[\"null\",{\"type\":\"record\",\"name\":\"Node\","
    "\"fields\":[{\"name\":\"v\",\"type\":\"int\"},{\"name\":\"next\",\"type\":"
    "[\"null\",\"Node\"]}]}]},"
    "{\"name\":\"p\",\"type\":\"int\"},"
    "{\"name\":\"q\",\"type\":\"long\"},"
    "{\"name\":\"dropped\",\"type\":\"string\"}]}";

/* v2: i int -> float, p int -> long, q long -> double, "dropped" gone,
 * six fields added with defaults. */
static const char synth_v2[] =
    "{\"type\":\"record\",\"name\":\"Everything\",\"namespace\":\"crmsync."
    "fuzz\",\"fields\":["
    "{\"name\":\"b\",\"type\":\"boolean\"},"
    "{\"name\":\"i\",\"type\":\"float\"},"
    "{\"name\":\"l\",\"type\":\"long\"},"
    "{\"name\":\"f\",\"type\":\"float\"},"
    "{\"name\":\"d\",\"type\":\"double\"},"
    "{\"name\":\"s\",\"type\":\"string\"},"
    "{\"name\":\"y\",\"type\":\"bytes\"},"
    "{\"name\":\"x\",\"type\":{\"type\":\"fixed\",\"name\":\"F4\",\"size\":4}},"
    "{\"name\":\"e\",\"type\":{\"type\":\"enum\",\"name\":\"E\",\"symbols\":["
    "\"A\",\"B\",\"C\"]}},"
    "{\"name\":\"u\",\"type\":[\"null\",\"string\",\"long\",{\"type\":"
    "\"array\",\"items\":\"int\"}]},"
    "{\"name\":\"an\",\"type\":{\"type\":\"array\",\"items\":\"null\"}},"
    "{\"name\":\"ae\",\"type\":{\"type\":\"array\",\"items\":{\"type\":"
    "\"record\",\"name\":\"Empty\",\"fields\":[]}}},"
    "{\"name\":\"as\",\"type\":{\"type\":\"array\",\"items\":\"string\"}},"
    "{\"name\":\"m\",\"type\":{\"type\":\"map\",\"values\":{\"type\":\"map\","
    "\"values\":\"long\"}}},"
    "{\"name\":\"n\",\"type\":[\"null\",{\"type\":\"record\",\"name\":\"Node\","
    "\"fields\":[{\"name\":\"v\",\"type\":\"int\"},{\"name\":\"next\",\"type\":"
    "[\"null\",\"Node\"]}]}]},"
    "{\"name\":\"p\",\"type\":\"long\"},"
    "{\"name\":\"q\",\"type\":\"double\"},"
    "{\"name\":\"added\",\"type\":\"string\",\"default\":\"x\"},"
    "{\"name\":\"added_rec\",\"type\":{\"type\":\"record\",\"name\":\"Added\","
    "\"fields\":[{\"name\":\"a\",\"type\":\"int\"},{\"name\":\"t\",\"type\":["
    "\"null\",\"string\"]}]},\"default\":{\"a\":1,\"t\":null}},"
    "{\"name\":\"added_arr\",\"type\":{\"type\":\"array\",\"items\":\"long\"},"
    "\"default\":[1,2]},"
    "{\"name\":\"added_map\",\"type\":{\"type\":\"map\",\"values\":\"string\"},"
    "\"default\":{\"k\":\"v\"}},"
    "{\"name\":\"added_union\",\"type\":[\"null\",\"string\"],\"default\":null}"
    ","
    "{\"name\":\"added_enum\",\"type\":{\"type\":\"enum\",\"name\":\"E2\","
    "\"symbols\":[\"X\",\"Y\"]},\"default\":\"Y\"}]}";

/* The process-wide codec, created on first use and never freed (the fuzzer
 * exits without a hook; LeakSanitizer ignores reachable memory). */
static struct avro_codec *codec_get(void)
{
    static struct avro_codec *codec;
    char err[512] = "";

    if (!codec) {
        codec = avro_codec_new(NULL, SCHEMAS_DIR, err, sizeof(err));
        if (!codec) {
            fprintf(stderr, "fuzz_avro_frame: avro_codec_new(%s): %s\n",
                    SCHEMAS_DIR, err);
            abort();
        }
    }
    return codec;
}

/* Writes @p text to @p dir/@p name; false on error. */
static bool file_put(const char *dir, const char *name, const char *text)
{
    char path[256];
    FILE *f;
    bool ok;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    if (!f)
        return false;
    ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

static void file_remove(const char *dir, const char *name)
{
    char path[256];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
}

/* The codec over the synthetic schemas: written to a temporary directory,
 * loaded, and the directory removed again (the codec keeps the parsed
 * schemas). Created once, never freed, as codec_get(). */
static struct avro_codec *synth_codec_get(void)
{
    static struct avro_codec *codec;
    char dir[] = "/tmp/fuzz_avro_frame.XXXXXX";
    char err[512] = "";

    if (codec)
        return codec;
    if (!mkdtemp(dir)) {
        perror("fuzz_avro_frame: mkdtemp");
        abort();
    }
    if (file_put(dir, "ids.txt", "100 v1.avsc\n101 v2.avsc\n") &&
        file_put(dir, "v1.avsc", synth_v1) &&
        file_put(dir, "v2.avsc", synth_v2))
        codec = avro_codec_new(NULL, dir, err, sizeof(err));
    else
        snprintf(err, sizeof(err), "cannot write the schema files");
    file_remove(dir, "ids.txt");
    file_remove(dir, "v1.avsc");
    file_remove(dir, "v2.avsc");
    rmdir(dir);
    if (!codec) {
        fprintf(stderr, "fuzz_avro_frame: synthetic codec: %s\n", err);
        abort();
    }
    return codec;
}

/* Reads a decoded value back the way the workers do. */
static void value_read(avro_value_t *v)
{
    avro_value_t rec;
    int64_t l;
    bool b;
    char *json = NULL;

    (void)avro_field_str(v, "event_id");
    (void)avro_field_str(v, "tenant");
    (void)avro_field_long(v, "occurred_at", &l);
    (void)avro_field_long(v, "sent_at", &l);
    (void)avro_field_bool(v, "from_copied_list", &b);
    (void)avro_field_str(v, "response_type");
    (void)avro_field_str(v, "kind");
    (void)avro_field_str(v, "mode");
    (void)avro_field_str(v, "change");
    (void)avro_field_str(v, "device");
    (void)avro_field_str(v, "e");
    (void)avro_field_long(v, "p", &l);
    (void)avro_field_bool(v, "b", &b);
    (void)avro_field_str(v, "u");
    if (avro_field_record(v, "n", &rec))
        (void)avro_field_long(&rec, "v", &l);
    if (avro_field_record(v, "recipient", &rec)) {
        (void)avro_field_str(&rec, "entity_type");
        (void)avro_field_str(&rec, "entity_id");
        (void)avro_field_str(&rec, "email");
    }
    /* Walks every field, map entry and union branch of the value. */
    if (avro_value_to_json(v, 1, &json) == 0)
        free(json);
}

/* Decodes one input as @p reader and reads the value back on success. */
static void decode_one(struct avro_codec *codec, const char *reader,
                       const uint8_t *data, size_t size)
{
    avro_value_t v;
    int32_t id = -1;
    char err[512];

    if (avro_codec_decode(codec, reader, data, size, &v, &id, err,
                          sizeof(err)) != CS_ERR_OK)
        return;
    value_read(&v);
    avro_value_decref(&v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t i;

    for (i = 0; i < sizeof(reader_names) / sizeof(reader_names[0]); i++)
        decode_one(codec_get(), reader_names[i], data, size);
    decode_one(synth_codec_get(), SYNTH_READER, data, size);
    return 0;
}
