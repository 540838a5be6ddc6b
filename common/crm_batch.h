/*
 * crm_batch - internal interface of the Dataverse connector's OData $batch
 * codec (crm_batch.c). Its public entry points, crm_dataverse_batch_build
 * and crm_dataverse_batch_parse, stay declared in crm_dataverse.h; this
 * header only adds what crm_dataverse.c shares with the codec. Workers and
 * tests never include it.
 *
 * Ownership: all pointers are borrowed for the duration of the call.
 *
 * Thread-safety: pure functions, safe from any thread.
 */
#ifndef CRMSYNC_CRM_BATCH_H
#define CRMSYNC_CRM_BATCH_H

#include <stddef.h>

#include "common/crm.h"

/**
 * @brief Fills op->error (only) for an error answer with HTTP @p status:
 *        "<status> <code>: <message>" from a JSON error body
 *        ({"error":{"code","message"}}), else "<status>: <first 160 bytes
 *        of the raw body>". Never contains request secrets.
 * @param body response body (borrowed, may be NULL when body_len is 0).
 */
void crm_batch_op_error(struct crm_op *op, int status, const char *body,
                        size_t body_len);

#endif
