/*
 * handler - the bounce worker's kl_handler (see handler.c for the steps).
 *
 * Ownership: the handler borrows the settings, the tenant table and the
 * runtime (all must outlive it) and owns its consent catalog and the done
 * markers it carries between batches.
 * Thread-safety: the kafka_loop's thread only.
 */
#ifndef CRMSYNC_BOUNCE_HANDLER_H
#define CRMSYNC_BOUNCE_HANDLER_H

#include <stdbool.h>
#include <stddef.h>

#include "workers/bounce/bounce.h"
#include "workers/bounce/crmio.h"
#include "workers/bounce/state.h"

struct runtime;
struct kl_item;
struct bounce_handler;

/** @returns a handler (free with bounce_handler_free) or NULL + errstr. */
struct bounce_handler *bounce_handler_new(const struct bounce_config *bc,
                                          struct bounce_tenants *tenants,
                                          struct runtime *rt, char *errstr,
                                          size_t errstr_size);
/** @brief Writes carried done markers, then frees. NULL is fine. */
void bounce_handler_free(struct bounce_handler *h);

/** @brief kl_handler.process. */
void bounce_handler_process(void *ctx, struct kl_item **items, size_t n);
/** @brief kl_handler.idle: writes carried done markers. */
void bounce_handler_idle(void *ctx);
/** @brief kl_handler.abandon: flushes carried done markers. */
void bounce_handler_abandon(void *ctx, struct kl_item **items, size_t n);
/** @brief kl_handler.healthy: Redis and the CRM answer. */
bool bounce_handler_healthy(void *ctx);

#endif
