/*
 * runtime - the shared services a worker needs, opened from its config.
 *
 * runtime_open() builds, in order: metrics (and its HTTP server), the Avro
 * codec, the Redis connection, the Redis idempotency store (which borrows
 * that connection), the CRM connector and the dead-letter producer.
 * runtime_close() releases them in reverse order. A worker's main.c then only
 * adds its handler and the consumer loop.
 *
 * Ownership: struct runtime owns every member; cfg is borrowed and must
 * outlive it. A worker may run its own scripts over rt->redis (see
 * redis_conn.h) from the thread that uses idem. Thread-safety: one thread
 * (metrics is internally locked).
 */
#ifndef CRMSYNC_RUNTIME_H
#define CRMSYNC_RUNTIME_H

#include <signal.h>
#include <stddef.h>

#include "common/err.h"

struct config;
struct crm;
struct metrics;

struct runtime {
    const struct config *cfg; /* borrowed */
    struct metrics *metrics;  /* owned; serves /metrics, /healthz, /readyz */
    struct avro_codec *codec; /* owned */
    struct redis_conn *redis; /* owned; opened before idem, closed after */
    struct idem *idem;        /* owned; borrows redis */
    struct crm *crm;          /* owned */
    struct dlq *dlq;          /* owned */
    int metrics_port;         /* bound port, 0 when disabled */
};

/**
 * @brief Opens every service. On failure, whatever was opened is closed.
 * @returns CS_ERR_OK, or an error with errstr naming the failing service.
 */
enum cs_err runtime_open(struct runtime *rt, const struct config *cfg,
                         char *errstr, size_t errstr_size);

/**
 * @brief A further CRM connection with the runtime's settings, for a
 *        thread of its own (a struct crm is single-threaded).
 * @param m borrowed metrics registry (thread-safe), may be NULL.
 * @returns the connector (caller frees with crm_free) or NULL + errstr.
 */
struct crm *runtime_crm_new(const struct config *cfg, struct metrics *m,
                            char *errstr, size_t errstr_size);

/** @brief Closes every service in reverse order. Safe on a zeroed struct. */
void runtime_close(struct runtime *rt);

/**
 * @brief Installs SIGTERM/SIGINT handlers that clear *run (the one mutable
 *        global every worker has: the stop flag). SIGPIPE is ignored.
 */
void runtime_install_signals(volatile sig_atomic_t *run);

#endif
