/*
 * avro_codec - Confluent-framed Avro: decode with writer -> reader schema
 * resolution, encode, build values from JSON, read fields of decoded records.
 *
 * Wire format (Confluent): byte 0 is the magic 0, bytes 1-4 the writer schema
 * id (big-endian), then the Avro binary encoding of one datum.
 *
 * Writer schemas are looked up by id, either in a Confluent Schema Registry
 * (GET {url}/schemas/ids/{id}, fetched with libcurl on first use and cached
 * forever: ids are immutable) or, in local mode, in `<schemas_dir>/ids.txt`
 * ("<id> <file>" lines, see schemas/README.md). Reader schemas always come
 * from schemas_dir: for each record full name, the file with the highest id
 * in ids.txt. Decoding resolves writer -> reader with avro-c's resolved
 * writer; reader fields the writer lacks are filled from their schema
 * defaults (avro-c 1.11 cannot do that itself), writer fields the reader
 * lacks are dropped.
 *
 * DESIGN: every payload is first checked by a bounded scan over the writer
 * schema (lengths, counts, union/enum indexes, trailing bytes) before avro-c
 * touches it, so hostile input can neither make avro-c allocate huge buffers
 * nor crash it; the scan also gives the precise error text that ends up in
 * the dead-letter headers.
 *
 * Ownership: values returned through `avro_value_t *out` belong to the caller
 * (release with avro_value_decref); they stay valid after avro_codec_free.
 * Strings returned by the accessors are borrowed from the value.
 *
 * Thread-safety: a codec is used by one thread at a time (it reuses one curl
 * handle, one Avro reader and writer). Use one codec per thread.
 */
#ifndef CRMSYNC_AVRO_CODEC_H
#define CRMSYNC_AVRO_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <avro.h>
#include <jansson.h>

#include "common/err.h"

/* Size of the Confluent header: magic byte + 4-byte schema id. */
#define AVRO_CODEC_HEADER_SIZE 5

struct avro_codec;

/**
 * @brief Creates a codec.
 * @param registry_url "" or NULL = local mode (schemas_dir/ids.txt holds the
 *        writer schemas); else the Schema Registry base URL (may carry
 *        user:pass@, which never appears in error text). Borrowed (copied).
 * @param schemas_dir directory with ids.txt and the .avsc files. Borrowed.
 * @returns the codec (caller frees with avro_codec_free), or NULL with a
 *          reason in errstr (bad ids.txt line, unparseable schema, ...).
 */
struct avro_codec *avro_codec_new(const char *registry_url,
                                  const char *schemas_dir, char *errstr,
                                  size_t errstr_size);

/** @brief Frees the codec and its caches. NULL is fine. */
void avro_codec_free(struct avro_codec *codec);

/**
 * @brief Decodes one Confluent-framed message into a new value of the reader
 *        schema @p reader_name (record full name, e.g.
 *        "crmsync.response.ResponseEvent").
 * @param buf borrowed, @p len bytes.
 * @param out on success a new value; caller releases with avro_value_decref.
 * @param schema_id_out the writer schema id when the header was readable
 *        (also on most errors); may be NULL.
 * @returns CS_ERR_OK; CS_ERR_BAD_FRAME (short buffer / magic byte),
 *          CS_ERR_UNKNOWN_SCHEMA, CS_ERR_SCHEMA_INCOMPATIBLE, CS_ERR_DECODE
 *          (truncated, invalid or trailing bytes), CS_ERR_REGISTRY_UNAVAILABLE
 *          (retryable), CS_ERR_INVALID_ARG (no local reader schema of that
 *          name), CS_ERR_NOMEM. errstr says exactly what was wrong.
 */
enum cs_err avro_codec_decode(struct avro_codec *codec, const char *reader_name,
                              const void *buf, size_t len, avro_value_t *out,
                              int32_t *schema_id_out, char *errstr,
                              size_t errstr_size);

/**
 * @brief Encodes @p value, an instance of writer schema @p schema_id, into
 *        Confluent framing.
 * @param value borrowed.
 * @param buf_out on success a malloc'd buffer of *len_out bytes; caller
 *        frees with free().
 * @returns CS_ERR_OK, CS_ERR_UNKNOWN_SCHEMA, CS_ERR_REGISTRY_UNAVAILABLE,
 *          CS_ERR_INVALID_ARG (value is not of that schema), CS_ERR_NOMEM.
 */
enum cs_err avro_codec_encode(struct avro_codec *codec, int32_t schema_id,
                              avro_value_t *value, void **buf_out,
                              size_t *len_out, char *errstr,
                              size_t errstr_size);

/**
 * @brief Builds a value of writer schema @p schema_id from JSON.
 *
 * Records by field name (a missing field takes the schema default, else it
 * is an error; unknown keys are an error); unions take null, the bare value
 * (first branch whose type fits) or {"<type name>": value}; enums by symbol;
 * timestamp-millis longs also take an RFC 3339 string; maps, arrays,
 * booleans, ints, longs, floats, doubles, strings; bytes/fixed from strings.
 * @param json borrowed.
 * @param out on success a new value; caller releases with avro_value_decref.
 * @returns CS_ERR_OK, CS_ERR_INVALID_EVENT (JSON does not fit the schema; the
 *          errstr names the field), CS_ERR_UNKNOWN_SCHEMA,
 *          CS_ERR_REGISTRY_UNAVAILABLE, CS_ERR_NOMEM.
 */
enum cs_err avro_codec_from_json(struct avro_codec *codec, int32_t schema_id,
                                 const json_t *json, avro_value_t *out,
                                 char *errstr, size_t errstr_size);

/*
 * Accessors for decoded records. They follow unions (e.g. ["null", X])
 * transparently and return false / NULL when the record has no such field,
 * the field is null or of another type. Results are borrowed and valid while
 * @p rec lives.
 */

/** @returns the string, or the symbol of an enum field; NULL if absent. */
const char *avro_field_str(avro_value_t *rec, const char *name);

/** @brief Reads a long (or int) field into *out. */
bool avro_field_long(avro_value_t *rec, const char *name, int64_t *out);

/** @brief Reads a boolean field into *out. */
bool avro_field_bool(avro_value_t *rec, const char *name, bool *out);

/** @brief Sets *out to the sub-record field (borrowed, not to be decref'd). */
bool avro_field_record(avro_value_t *rec, const char *name, avro_value_t *out);

#endif
