/*
 * avro_internal - what the avro codec's source files share. Internal to the
 * codec, NOT API: only avro_codec.c, avro_schema.c, avro_resolve.c,
 * avro_json.c and avro_scan.c include it. Non-static internal names start
 * with avc_ (as libuv's uv__) so they are not mistaken for avro-c's avro_*.
 *
 * Who does what:
 *   avro_codec.c   - struct avro_codec: lifecycle, writer / reader /
 *                    resolution caches, Schema Registry fetch, decode and
 *                    encode, the field accessors;
 *   avro_schema.c  - schema entries (parsed schema plus the defaults and
 *                    timestamp fields avro-c does not expose), ids.txt
 *                    loading, the small helpers below;
 *   avro_resolve.c - writer -> reader resolution and default filling;
 *   avro_json.c    - JSON -> value;
 *   avro_scan.c    - bounded pre-scan of payloads (avro_scan.h).
 *
 * Ownership: a struct schema_entry owns every reference in it (released by
 * avc_schema_entry_clear); a struct resolver_entry owns its resolver, its
 * value and its projected schema (released by avc_resolver_clear). Both
 * live in the codec's arrays.
 *
 * Thread-safety: as the codec, one thread at a time per codec; the helpers
 * keep no state of their own.
 */
#ifndef CRMSYNC_AVRO_INTERNAL_H
#define CRMSYNC_AVRO_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <avro.h>
#include <jansson.h>

#include "common/err.h"

/* Limits for untrusted input and files. */
#define SCHEMA_FILE_MAX    (1024 * 1024) /* largest .avsc / registry body */
#define FULLNAME_MAX       512
#define RESOLVE_REASON_MAX 256

/* One parsed schema: a writer (by id) or a reader (by full name). */
struct schema_entry {
    int32_t id;                /* schema id (local or registry) */
    char *fullname;            /* record full name; NULL if not a record */
    avro_schema_t schema;      /* owned reference */
    avro_value_iface_t *iface; /* generic class of schema, owned */
    json_t *defaults;          /* "<Record>.<field>" -> default JSON */
    json_t *ts_fields;         /* "<Record>.<field>" -> true (timestamp) */
    json_t *root;              /* the schema as JSON (keeps defaults) */
};

/* Cached resolution of (writer id, reader); failures are cached too. */
struct resolver_entry {
    int32_t writer_id;               /* writer schema id */
    size_t reader_idx;               /* index into codec->readers */
    enum cs_err status;              /* CS_ERR_OK or SCHEMA_INCOMPATIBLE */
    char reason[RESOLVE_REASON_MAX]; /* why resolution failed */
    bool direct;                     /* writer == reader: plain read */
    avro_value_iface_t *resolver;    /* resolved writer (values per decode) */
    /* Reader minus the fields the writer lacks (NULL when none): data is
     * resolved into it, then copied into the reader with defaults. */
    avro_schema_t projected;
    avro_value_iface_t *projected_iface;
};

/* ------------------------------------------------------------------------
 * Helpers (avro_schema.c)
 * ------------------------------------------------------------------------ */

/** @brief snprintf into @p errstr; a NULL or empty errstr is fine. */
void avc_set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/**
 * @brief Copies avro-c's last error text, trailing newlines trimmed, into
 *        @p buf.
 * @returns @p buf.
 */
const char *avc_err_text(char *buf, size_t size);

/** @returns a malloc'd copy of @p s (caller frees), NULL if out of memory. */
char *avc_strdup(const char *s);

/** @brief Writes "<namespace>.<name>" of @p s (or its type name) to buf. */
void avc_fullname(avro_schema_t s, char *buf, size_t size);

/** @returns the part of @p full after its last '.'; points into @p full. */
const char *avc_short_name(const char *full);

/* ------------------------------------------------------------------------
 * Schema entries (avro_schema.c)
 * ------------------------------------------------------------------------ */

/**
 * @brief Parses schema text into *e (zeroed by the caller).
 * @param text borrowed, @p len bytes.
 * @returns CS_ERR_OK (*e then owns its references: avc_schema_entry_clear),
 *          CS_ERR_UNKNOWN_SCHEMA (bad JSON or schema) or CS_ERR_NOMEM; on
 *          error *e is left zeroed and errstr says why.
 */
enum cs_err avc_schema_entry_init(struct schema_entry *e, int32_t id,
                                  const char *text, size_t len, char *errstr,
                                  size_t errstr_size);

/** @brief Releases what *e owns and zeroes it. */
void avc_schema_entry_clear(struct schema_entry *e);

/** @brief Copies *src into *dst with new references (*dst owns them). */
void avc_schema_entry_share(struct schema_entry *dst,
                            const struct schema_entry *src);

/**
 * @brief Loads `<dir>/ids.txt` and each schema file it names, appending
 *        one entry per id to *local.
 * @param local in/out array of *nlocal entries, grown with realloc. The
 *        caller clears every entry (avc_schema_entry_clear) and frees the
 *        array, on error too.
 * @returns CS_ERR_OK; CS_ERR_CONFIG (unreadable file, bad line, duplicate
 *          id, bad schema), CS_ERR_NOMEM.
 */
enum cs_err avc_schemas_load_local(const char *dir, struct schema_entry **local,
                                   size_t *nlocal, char *errstr,
                                   size_t errstr_size);

/* ------------------------------------------------------------------------
 * Resolution (avro_resolve.c)
 * ------------------------------------------------------------------------ */

/**
 * @brief Builds the resolution of writer @p w into reader @p rd into *r
 *        (zeroed by the caller). Sets r->status: CS_ERR_OK, or
 *        CS_ERR_SCHEMA_INCOMPATIBLE with r->reason saying why.
 * @param w, rd borrowed; must outlive *r.
 */
void avc_resolver_build(struct resolver_entry *r, struct schema_entry *w,
                        struct schema_entry *rd);

/** @brief Releases what *r owns. */
void avc_resolver_clear(struct resolver_entry *r);

/**
 * @brief Reads one datum of @p n bytes at @p p through resolution @p r
 *        (status CS_ERR_OK) into a new value of reader @p rd, filling the
 *        fields the writer lacks from their defaults.
 * @param reader the codec's memory reader, re-pointed at @p p.
 * @param p borrowed; should have passed avro_scan_payload.
 * @param out on success a new value; caller releases with avro_value_decref.
 * @returns CS_ERR_OK, CS_ERR_DECODE, CS_ERR_SCHEMA_INCOMPATIBLE (a missing
 *          field has no default), CS_ERR_NOMEM.
 */
enum cs_err avc_resolver_decode(struct resolver_entry *r,
                                struct schema_entry *rd, avro_reader_t reader,
                                const char *p, size_t n, avro_value_t *out,
                                char *errstr, size_t errstr_size);

/* ------------------------------------------------------------------------
 * JSON -> value (avro_json.c)
 * ------------------------------------------------------------------------ */

/**
 * @brief Sets @p v, a fresh value of (part of) schema @p e, from JSON @p j.
 * @param e supplies record defaults and timestamp fields; borrowed.
 * @param ts_ok a long may be given as an RFC 3339 string.
 * @param field the field being set, for error text; NULL at the top.
 * @returns CS_ERR_OK, CS_ERR_INVALID_EVENT (errstr names the field) or
 *          CS_ERR_NOMEM; on error @p v may be partly set.
 */
enum cs_err avc_json_to_value(const struct schema_entry *e, avro_value_t *v,
                              const json_t *j, bool ts_ok, const char *field,
                              char *errstr, size_t errstr_size);

#endif
