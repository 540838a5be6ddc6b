/*
 * config_internal - INTERNAL glue between the files of the config module.
 *
 * Not a public API: only common/config*.c include this header; workers,
 * tools and tests use common/config.h. The module is split as:
 *   config_fields.c  the common field table and per-field value handling
 *                    (defaults, parsing, bounds, choices, secrecy);
 *   config.c         config_load()/config_free(): defaults -> file -> env,
 *                    required fields, cross-field rules and derived values,
 *                    and the kafka passthrough;
 *   config_yaml.c    reads the YAML file (libyaml) and hands every dotted
 *                    key with its value to config.c;
 *   config_print.c   --help, --help-markdown, the effective configuration
 *                    (secrets redacted) and config_cli().
 *
 * Ownership: as in config.h; every pointer below is borrowed unless its
 * comment says otherwise.
 *
 * Thread-safety: same as config.h (loading at start-up only; the tables
 * are immutable).
 */
#ifndef CRMSYNC_CONFIG_INTERNAL_H
#define CRMSYNC_CONFIG_INTERNAL_H

#include "common/config.h"
#include "common/err.h"
#include <stdbool.h>
#include <stddef.h>

#define CONFIG_REDACTED       "***" /* printed in place of a secret value */
#define CONFIG_KAFKA_PREFIX   "kafka."
#define CONFIG_TENANTS_PREFIX "tenants."
#define CONFIG_NAME_BUF       256 /* longest dotted key we accept */

/* ---- config_fields.c: the common table and field values ---- */

/* The common section ("common", every shared field) filling @p cfg, which
 * may be NULL when only the table is needed (help output). */
struct config_section config_common_section(struct config *cfg);

/* Section @p i of common-then-extra: 0 is @p common, i is extra[i - 1]. */
const struct config_section *
config_section_at(const struct config_section *common,
                  const struct config_section *extra, size_t i);

/* Formats into @p errstr (NULL or size 0: does nothing). */
void config_set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The member @p f describes inside @p target. */
static inline char **config_member_str(const struct config_field *f,
                                       void *target)
{
    return (char **)(void *)((char *)target + f->offset);
}

static inline int *config_member_int(const struct config_field *f, void *target)
{
    return (int *)(void *)((char *)target + f->offset);
}

static inline bool *config_member_bool(const struct config_field *f,
                                       void *target)
{
    return (bool *)(void *)((char *)target + f->offset);
}

/* "string", "int" or "bool" (static storage). */
const char *config_type_name(enum config_type t);

/* Default text of @p f; consumer.topics takes the worker's default.
 * Borrowed from the table or from @p topics_default. */
const char *config_field_default(const struct config_field *f,
                                 const char *topics_default);

/* true for kafka properties whose values must never be printed. */
bool config_kafka_key_secret(const char *key);

/* Parses @p value into @p f's member of @p target (strings are copied; the
 * old string is freed). @p origin says where the value came from
 * ("default", "<file> line 3", "env X") for the message. */
enum cs_err config_field_set(const struct config_field *f, void *target,
                             const char *value, const char *origin,
                             char *errstr, size_t errstr_size);

/* ---- config.c: what the YAML reader hands values to ---- */

/* State of one config_load() call (defined in config.c). */
struct config_loader;

/* Shape of a YAML value the reader did not descend into. */
enum config_value_kind {
    CONFIG_VALUE_SCALAR, /* text: the scalar ("~"/null already "") */
    CONFIG_VALUE_LIST,   /* text: items joined with ',', or NULL when an
                            item is not a scalar */
    CONFIG_VALUE_OTHER,  /* a mapping that is not a group; text: NULL */
};

/* true when a mapping at dotted @p name is to be walked into: "kafka",
 * "kafka.*" or a prefix of some field name ("redis" for "redis.url"). */
bool config_loader_is_mapping(const struct config_loader *ld, const char *name);

/* One "name: value" from the file. @p origin ("<file> line N") is used in
 * messages. Errors go to the errstr given to config_load(). */
enum cs_err config_loader_file_value(struct config_loader *ld, const char *name,
                                     enum config_value_kind kind,
                                     const char *text, const char *origin);

/* ---- config_yaml.c ---- */

/* Reads YAML file @p path and hands every non-mapping value to @p ld under
 * its dotted name. Empty file: nothing to hand over, CS_ERR_OK.
 * @returns CS_ERR_OK, CS_ERR_NOMEM or CS_ERR_CONFIG (message in @p errstr
 *          naming the file and line). */
enum cs_err config_yaml_read(struct config_loader *ld, const char *path,
                             char *errstr, size_t errstr_size);

#endif
