/*
 * avro_scan - see avro_scan.h: walks the writer schema over the payload
 * bytes with every length, count and index checked against what is left.
 */
#include "common/avro_scan.h"

#include <inttypes.h>
#include <stdbool.h>

#include "common/avro_codec.h"
#include "common/avro_internal.h"

#define SCAN_DEPTH_MAX  64    /* nesting depth of a datum */
#define EMPTY_ITEMS_MAX 65536 /* items of zero-byte type per array/map */

struct scan {
    const uint8_t *buf; /* Avro payload (after the 5-byte header) */
    size_t len;         /* payload length */
    size_t pos;         /* read position in the payload */
    const char *field;  /* innermost record field, for messages */
    char *errstr;
    size_t errstr_size;
};

/* Byte offsets in messages count the whole frame, header included. */
static bool scan_truncated(struct scan *sc, const char *what)
{
    avc_set_err(sc->errstr, sc->errstr_size,
                "truncated at byte %zu of %zu (%s of field '%s')",
                sc->pos + AVRO_CODEC_HEADER_SIZE,
                sc->len + AVRO_CODEC_HEADER_SIZE, what,
                sc->field ? sc->field : "(top)");
    return false;
}

static bool scan_invalid(struct scan *sc, const char *what, int64_t v)
{
    avc_set_err(sc->errstr, sc->errstr_size,
                "invalid %s %" PRId64 " at byte %zu (field '%s')", what, v,
                sc->pos + AVRO_CODEC_HEADER_SIZE,
                sc->field ? sc->field : "(top)");
    return false;
}

/* Zig-zag varint; at most 10 bytes as avro-c. */
static bool scan_long(struct scan *sc, int64_t *out)
{
    uint64_t v = 0;
    unsigned shift = 0;
    size_t start = sc->pos;
    uint8_t b;

    do {
        if (sc->pos >= sc->len) {
            sc->pos = start;
            return scan_truncated(sc, "varint");
        }
        if (shift >= 70) {
            sc->pos = start;
            return scan_invalid(sc, "varint longer than 10 bytes", 0);
        }
        b = sc->buf[sc->pos++];
        v |= (uint64_t)(b & 0x7f) << (shift < 64 ? shift : 63);
        shift += 7;
    } while (b & 0x80);
    *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
    return true;
}

static bool scan_skip(struct scan *sc, int64_t n, const char *what)
{
    if (n < 0)
        return scan_invalid(sc, what, n);
    if ((uint64_t)n > sc->len - sc->pos)
        return scan_truncated(sc, what);
    sc->pos += (size_t)n;
    return true;
}

/* True if a datum of @p s can encode to zero bytes (null, empty record). */
static bool schema_can_be_empty(avro_schema_t s, int depth)
{
    size_t i;

    if (depth > SCAN_DEPTH_MAX)
        return false;
    if (is_avro_link(s))
        s = avro_schema_link_target(s);
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return true;
    case AVRO_FIXED:
        return avro_schema_fixed_size(s) == 0;
    case AVRO_RECORD:
        for (i = 0; i < avro_schema_record_size(s); i++) {
            avro_schema_t f = avro_schema_record_field_get_by_index(s, (int)i);

            if (!schema_can_be_empty(f, depth + 1))
                return false;
        }
        return true;
    default:
        return false;
    }
}

static bool scan_value(struct scan *sc, avro_schema_t s, int depth);

/* Array and map blocks: count [, byte size] items..., ending with 0. */
static bool scan_blocks(struct scan *sc, avro_schema_t items, bool is_map,
                        int depth)
{
    bool empty_items = !is_map && schema_can_be_empty(items, depth);
    int64_t total = 0;
    int64_t count;
    int64_t bytes;
    int64_t i;

    for (;;) {
        if (!scan_long(sc, &count))
            return false;
        if (count == 0)
            return true;
        if (count < 0) {
            if (count == INT64_MIN)
                return scan_invalid(sc, "block count", count);
            count = -count;
            if (!scan_long(sc, &bytes))
                return false;
            if (bytes < 0 || (uint64_t)bytes > sc->len - sc->pos)
                return scan_invalid(sc, "block size", bytes);
        }
        /* Each non-empty item takes at least one byte. Zero-byte items
         * are capped in all: written as `count > MAX - total` because
         * `total + count` overflowed for a huge count after a first block,
         * wrapped negative, passed, and the loop below ran ~2^63 times
         * (found by tests/fuzz/fuzz_avro_frame). */
        if (empty_items ? count > EMPTY_ITEMS_MAX - total
                        : (uint64_t)count > sc->len - sc->pos)
            return scan_invalid(sc, "block count", count);
        total += count;
        for (i = 0; i < count; i++) {
            if (is_map) {
                if (!scan_long(sc, &bytes) || !scan_skip(sc, bytes, "map key"))
                    return false;
            }
            if (!scan_value(sc, items, depth + 1))
                return false;
        }
    }
}

static bool scan_record(struct scan *sc, avro_schema_t s, int depth)
{
    const char *saved = sc->field;
    size_t i;

    for (i = 0; i < avro_schema_record_size(s); i++) {
        sc->field = avro_schema_record_field_name(s, (int)i);
        if (!scan_value(sc, avro_schema_record_field_get_by_index(s, (int)i),
                        depth + 1))
            return false;
    }
    sc->field = saved;
    return true;
}

static bool scan_value(struct scan *sc, avro_schema_t s, int depth)
{
    int64_t v;

    if (depth > SCAN_DEPTH_MAX)
        return scan_invalid(sc, "nesting depth", depth);
    if (is_avro_link(s))
        s = avro_schema_link_target(s);
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return true;
    case AVRO_BOOLEAN:
        return scan_skip(sc, 1, "boolean");
    case AVRO_INT32:
        if (!scan_long(sc, &v))
            return false;
        if (v < INT32_MIN || v > INT32_MAX)
            return scan_invalid(sc, "int", v);
        return true;
    case AVRO_INT64:
        return scan_long(sc, &v);
    case AVRO_FLOAT:
        return scan_skip(sc, 4, "float");
    case AVRO_DOUBLE:
        return scan_skip(sc, 8, "double");
    case AVRO_STRING:
    case AVRO_BYTES:
        if (!scan_long(sc, &v))
            return false;
        if (v < 0)
            return scan_invalid(sc, "length", v);
        return scan_skip(sc, v, "string/bytes");
    case AVRO_FIXED:
        return scan_skip(sc, avro_schema_fixed_size(s), "fixed");
    case AVRO_ENUM:
        if (!scan_long(sc, &v))
            return false;
        if (v < 0 || v >= avro_schema_enum_number_of_symbols(s))
            return scan_invalid(sc, "enum index", v);
        return true;
    case AVRO_UNION:
        if (!scan_long(sc, &v))
            return false;
        if (v < 0 || (uint64_t)v >= avro_schema_union_size(s))
            return scan_invalid(sc, "union branch", v);
        return scan_value(sc, avro_schema_union_branch(s, (int)v), depth + 1);
    case AVRO_ARRAY:
        return scan_blocks(sc, avro_schema_array_items(s), false, depth);
    case AVRO_MAP:
        return scan_blocks(sc, avro_schema_map_values(s), true, depth);
    case AVRO_RECORD:
        return scan_record(sc, s, depth);
    default:
        return scan_invalid(sc, "schema type", avro_typeof(s));
    }
}

enum cs_err avro_scan_payload(avro_schema_t writer, const uint8_t *payload,
                              size_t len, char *errstr, size_t errstr_size)
{
    struct scan sc;

    sc.buf = payload;
    sc.len = len;
    sc.pos = 0;
    sc.field = NULL;
    sc.errstr = errstr;
    sc.errstr_size = errstr_size;
    if (!scan_value(&sc, writer, 0))
        return CS_ERR_DECODE;
    if (sc.pos != sc.len) {
        avc_set_err(errstr, errstr_size,
                    "%zu trailing bytes after the datum (ends at byte %zu of "
                    "%zu)",
                    sc.len - sc.pos, sc.pos + AVRO_CODEC_HEADER_SIZE,
                    sc.len + AVRO_CODEC_HEADER_SIZE);
        return CS_ERR_DECODE;
    }
    return CS_ERR_OK;
}
