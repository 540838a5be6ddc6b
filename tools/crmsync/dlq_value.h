/*
 * dlq_value - how `crmsync dlq` shows keys, header values and message
 * values: escaped strings, hex dumps, and Confluent-framed Avro decoded to
 * JSON with the project's schemas (local ids.txt or a Schema Registry).
 *
 * Ownership: the decoder owns its avro_codec and its table of record names;
 * JSON text it returns belongs to the caller (free()).
 * Thread-safety: a decoder is used by one thread.
 */
#ifndef CRMSYNC_TOOLS_DLQ_VALUE_H
#define CRMSYNC_TOOLS_DLQ_VALUE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/err.h"

/**
 * @brief Prints @p len bytes as a double-quoted string: printable ASCII as
 *        is, `"` and `\` backslash-escaped, other bytes as \xNN; prints
 *        `null` (unquoted) when @p buf is NULL.
 * @param max_len print at most this many bytes, then "..." (0 = all).
 */
void dlq_print_quoted(FILE *out, const void *buf, size_t len, size_t max_len);

/** @brief Classic hex dump: offset, 16 bytes in hex, |printable|. */
void dlq_print_hexdump(FILE *out, const void *buf, size_t len);

struct dlq_decoder;

/**
 * @brief Creates a decoder over @p schemas_dir (ids.txt + .avsc files) and,
 *        when @p registry_url is non-empty, that Schema Registry.
 * @param registry_url, schemas_dir borrowed (copied).
 * @returns the decoder (free with dlq_decoder_free) or NULL with errstr.
 */
struct dlq_decoder *dlq_decoder_new(const char *registry_url,
                                    const char *schemas_dir, char *errstr,
                                    size_t errstr_size);

/** @brief Frees the decoder. NULL-safe. */
void dlq_decoder_free(struct dlq_decoder *d);

/**
 * @brief Decodes a Confluent-framed Avro value into indented JSON.
 * @param buf borrowed, @p len bytes.
 * @param json_out on success malloc'd NUL-terminated JSON; caller frees.
 * @param schema_id_out the writer schema id when the frame header was
 *        readable; may be NULL.
 * @param name_out receives the record full name decoded into.
 * @returns CS_ERR_OK or the codec's error (BAD_FRAME, UNKNOWN_SCHEMA,
 *          DECODE, ...) with errstr saying why.
 */
enum cs_err dlq_decoder_to_json(struct dlq_decoder *d, const void *buf,
                                size_t len, char **json_out,
                                int32_t *schema_id_out, char *name_out,
                                size_t name_size, char *errstr,
                                size_t errstr_size);

#endif
