/*
 * crm_dataverse - the Dataverse Web API connector behind crm.h.
 *
 * Workers never include this header: they call crm_new() with kind
 * "dataverse". It exists for the factory (crm.c) and for unit tests of the
 * $batch writer and reader, which are pure functions. The connector is in
 * crm_dataverse.c, the $batch writer and reader in crm_batch.c.
 *
 * DESIGN: OAuth2 client credentials (token cached, refreshed at expires_in
 * minus min(300 s, expires_in/10), one refresh-and-retry on 401); writes go
 * as multipart/mixed $batch requests with Prefer: odata.continue-on-error,
 * change sets as nested multipart parts with Content-ID = 1-based index of
 * the op in the batch; the response parser maps every part (nested change
 * set responses included) back to its op.
 *
 * Thread-safety: the pure functions are thread-safe; a connector instance is
 * used by one thread at a time.
 */
#ifndef CRMSYNC_CRM_DATAVERSE_H
#define CRMSYNC_CRM_DATAVERSE_H

#include <stddef.h>

#include "common/crm.h"

/** Path of the Web API below the base URL. */
#define CRM_DATAVERSE_API_PATH "/api/data/v9.2/"

/**
 * @brief Creates a Dataverse connector (see crm_new).
 * @returns the connector (caller frees with crm_free) or NULL + errstr.
 */
struct crm *crm_dataverse_new(const struct crm_options *opts, struct metrics *m,
                              char *errstr, size_t errstr_size);

/**
 * @brief Writes a $batch request body for ops[0..n) in order, CRLF line
 *        ends: one application/http part per standalone op, one nested
 *        multipart/mixed part per run of adjacent ops sharing a non-zero
 *        changeset (boundary "changeset_<uuid5 of boundary and run>",
 *        Content-ID = 1 + index in ops).
 * @param api_path absolute path prefix of request lines, e.g.
 *        "/api/data/v9.2/" (borrowed); op paths starting with '$' (Content-ID
 *        references) or "http" are written as is.
 * @param boundary batch boundary without leading dashes, e.g.
 *        "batch_<uuid>" (borrowed).
 * @param out receives the body (caller frees with free()); *out_len its size.
 * @returns CS_ERR_OK or CS_ERR_NOMEM.
 */
enum cs_err crm_dataverse_batch_build(const struct crm_op *ops, size_t n,
                                      const char *api_path,
                                      const char *boundary, char **out,
                                      size_t *out_len);

/**
 * @brief Parses a $batch response and sets result/status/error/
 *        retry_after_ms of ops[0..n) (the ops of the request, same order).
 *        The boundary comes from @p content_type, or from the first
 *        delimiter line when the header is missing. LF-only and CRLF both
 *        work. A change set answered by a single part (a failed change set)
 *        applies that part to all of its ops. Ops without an answer (the
 *        batch stopped early) become CRM_OP_RETRY.
 * @param content_type response Content-Type (borrowed, may be NULL).
 * @returns CS_ERR_OK, or CS_ERR_CRM_PROTOCOL when the body is not a
 *          multipart batch response (ops untouched).
 */
enum cs_err crm_dataverse_batch_parse(const char *content_type,
                                      const char *body, size_t len,
                                      struct crm_op *ops, size_t n,
                                      char *errstr, size_t errstr_size);

#endif
