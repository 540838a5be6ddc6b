/*
 * dlq_conf - librdkafka configuration of `crmsync dlq` from the command
 * line: -F files of "prop=value" lines, then -X prop=value, then -b (later
 * wins), plus the SASL password from CRMSYNC_KAFKA_SASL_PASSWORD when no
 * file or -X sets sasl.password (so it need not appear in argv).
 *
 * Property values are never printed: errors name the property (and file
 * and line) only, since SASL passwords and SSL keys travel this way.
 *
 * Ownership: the option struct borrows every string (argv); the returned
 * conf belongs to the caller (rd_kafka_conf_destroy, or rd_kafka_new).
 * Thread-safety: none needed (start-up only).
 */
#ifndef CRMSYNC_TOOLS_DLQ_CONF_H
#define CRMSYNC_TOOLS_DLQ_CONF_H

#include <stdbool.h>
#include <stddef.h>

#include <librdkafka/rdkafka.h>

#include "common/err.h"

#define DLQ_CONF_MAX_PROPS    64
#define DLQ_CONF_MAX_FILES    8
#define DLQ_CONF_PASSWORD_ENV "CRMSYNC_KAFKA_SASL_PASSWORD"

/* What the command line said about Kafka; every string borrowed. */
struct dlq_conf_opts {
    const char *bootstrap;                 /* -b, NULL = from -F/-X */
    const char *props[DLQ_CONF_MAX_PROPS]; /* -X "name=value" */
    int nprops;
    const char *files[DLQ_CONF_MAX_FILES]; /* -F paths */
    int nfiles;
};

/**
 * @brief Builds a librdkafka conf: @p defaults first ("name", "value"
 *        pairs, NULL-terminated; the user may override them), then the
 *        files, -X, -b and the password variable.
 * @param defaults borrowed; may be NULL.
 * @returns a new conf (caller owns it) or NULL with errstr set (no values).
 */
rd_kafka_conf_t *dlq_conf_build(const struct dlq_conf_opts *o,
                                const char *const *defaults, char *errstr,
                                size_t errstr_size);

/**
 * @brief Sets one property that the tool itself requires (after the user's,
 *        so it wins), e.g. enable.auto.commit=false.
 * @returns CS_ERR_OK or CS_ERR_CONFIG with errstr naming the property.
 */
enum cs_err dlq_conf_force(rd_kafka_conf_t *conf, const char *name,
                           const char *value, char *errstr, size_t errstr_size);

#endif
