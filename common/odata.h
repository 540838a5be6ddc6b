/*
 * odata - escaping of OData literals and URL parts, GUID checks and
 * deterministic record ids (RFC 4122 UUIDv5), and the hex digit decoding
 * that percent-decoding and hex parsers elsewhere share.
 *
 * Every string that lands in a Dataverse URL goes through this module: filter
 * literals through odata_quote_literal() (quote doubling + percent-encoding),
 * free-form segments through odata_url_encode(). Record ids that must stay
 * the same across replays (so an upsert can never create a second record)
 * come from odata_uuid5(CRMSYNC_UUID_NAMESPACE, "<tenant>/<event id>").
 *
 * JSON string escaping is not done here: build bodies with jansson.
 *
 * Ownership: returned strings are malloc'd; the caller frees them with free().
 * Thread-safety: all functions are pure and thread-safe.
 */
#ifndef CRMSYNC_ODATA_H
#define CRMSYNC_ODATA_H

#include <stdbool.h>

/* The fixed crmsync namespace for UUIDv5 record ids (never change it: every
 * id ever written to a CRM derives from it). */
#define CRMSYNC_UUID_NAMESPACE "5c1f3d2e-8a4b-4f6c-9d7e-2b1a0c9e8f71"

/**
 * @brief Quotes @p s as an OData string literal ('O''Bryan') and
 *        percent-encodes the result for a URL query or key segment: every
 *        byte except ALPHA DIGIT - . _ ~ ' ( ) ! * becomes %XX (so
 *        $ & + , / : ; = ? @ # % space, controls and UTF-8 bytes are encoded).
 * @returns the literal (caller frees with free()), NULL on OOM.
 */
char *odata_quote_literal(const char *s);

/**
 * @brief Percent-encodes @p s keeping only RFC 3986 unreserved characters
 *        (ALPHA DIGIT - . _ ~).
 * @returns the encoded string (caller frees with free()), NULL on OOM.
 */
char *odata_url_encode(const char *s);

/** @returns the value 0..15 of hex digit @p c (any case), -1 if not one. */
int odata_hex_value(char c);

/** @returns true when @p s is a GUID in 8-4-4-4-12 hex form (any case). */
bool odata_is_guid(const char *s);

/**
 * @brief RFC 4122 version 5 (SHA-1) UUID of @p name in @p namespace_guid.
 * @param namespace_guid a GUID string (8-4-4-4-12); an invalid one is treated
 *        as the nil namespace.
 * @param out receives the lower-case 36-character form plus NUL.
 */
void odata_uuid5(const char *namespace_guid, const char *name, char out[37]);

#endif
