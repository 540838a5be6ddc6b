/*
 * avro_scan - bounded pre-scan of an untrusted Avro payload against its
 * writer schema, before avro-c reads it. Internal to the avro codec (only
 * avro_codec.c includes it), not API.
 *
 * Guarantee: when avro_scan_payload returns CS_ERR_OK the payload is
 * exactly one datum of the writer schema: no varint is longer than 10
 * bytes; every string / bytes / fixed length, array / map block count and
 * block size fits in the bytes left; ints fit 32 bits; enum indexes and
 * union branches exist; nesting stays within SCAN_DEPTH_MAX levels; arrays
 * of items that encode to zero bytes hold at most EMPTY_ITEMS_MAX items in
 * all; no byte follows the datum. So hostile input can neither make avro-c
 * allocate huge buffers nor make it read past the end. Otherwise errstr
 * says what was wrong, at which byte (offsets count the whole frame, the
 * Confluent header included) and in which field: the text that ends up in
 * the dead-letter headers.
 *
 * Ownership: nothing is allocated or kept; the payload is only read during
 * the call. Thread-safety: reentrant, no state.
 */
#ifndef CRMSYNC_AVRO_SCAN_H
#define CRMSYNC_AVRO_SCAN_H

#include <stddef.h>
#include <stdint.h>

#include <avro.h>

#include "common/err.h"

/**
 * @brief Checks that @p payload is one well-formed datum of @p writer.
 * @param writer the writer schema; borrowed.
 * @param payload the bytes after the Confluent header; borrowed, @p len
 *        bytes.
 * @returns CS_ERR_OK or CS_ERR_DECODE (truncated, invalid or trailing
 *          bytes; errstr says which).
 */
enum cs_err avro_scan_payload(avro_schema_t writer, const uint8_t *payload,
                              size_t len, char *errstr, size_t errstr_size);

#endif
