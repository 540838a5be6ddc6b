/*
 * redis_conn - one robust blocking Redis connection that runs Lua scripts.
 *
 * Every Redis user in crmsync (idem's markers, the bounce worker's opt-out
 * state) talks to Redis through this module: one round trip per call, a
 * Lua script run with EVALSHA, and the same failure handling everywhere.
 *
 * Connection handling: one blocking hiredis connection, opened lazily (and
 * tried once, best effort, by redis_conn_new). Any connection error,
 * timeout or AUTH/SELECT failure frees it and the call returns
 * CS_ERR_REDIS_UNAVAILABLE (retryable: the caller pauses; nothing is
 * pretended to have succeeded); the next call reconnects (AUTH [user]
 * password and SELECT db pipelined in one round trip). If a connection that
 * was idle since an earlier call turns out dead (Redis restarted, idle
 * timeout), the call reconnects and retries once within the same call, so
 * scripts must be safe to run twice (idempotent) for the same arguments.
 * A timeout is not retried. A script this connection has not run yet goes
 * out as EVAL (which also caches it on the server), later calls as
 * EVALSHA; NOSCRIPT (SCRIPT FLUSH, failover) falls back to EVAL once.
 * Error replies a retry can outlive (LOADING, BUSY, READONLY, MASTERDOWN,
 * NOAUTH, OOM, TRYAGAIN, CLUSTERDOWN, WRONGPASS, NOPERM) drop the
 * connection and map to CS_ERR_REDIS_UNAVAILABLE; any other error reply
 * (a Lua runtime error, redis.error_reply, a wrong type) maps to
 * CS_ERR_REDIS_PROTOCOL. SIGPIPE is blocked in the calling thread around
 * each exchange (and one caused by it swallowed), so a reset socket cannot
 * kill the process.
 *
 * Ownership: redis_conn_new copies everything it needs from the options
 * (the URL is borrowed during the call only); a struct redis_script's body
 * is borrowed and must outlive every eval of it. Replies belong to the
 * caller (freeReplyObject). Secrets: the password is never written to
 * errstr or logs, and error texts never quote the URL.
 *
 * Thread-safety: a struct redis_conn is used by one thread at a time;
 * several modules of that thread may share it (e.g. idem borrows the
 * runtime's). Different handles are independent. struct redis_script is
 * immutable after redis_script_init and may be shared freely.
 */
#ifndef CRMSYNC_REDIS_CONN_H
#define CRMSYNC_REDIS_CONN_H

#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"

struct redisReply; /* hiredis' reply; include <hiredis/hiredis.h> to read */

struct redis_conn; /* opaque: one blocking hiredis connection, opened lazily */

struct redis_conn_opts {
    const char *url; /* redis://[[user]:password@]host[:port][/db] (borrowed
                        during new); user and password may be %-encoded;
                        host may be [IPv6]; port defaults to 6379, db to 0 */
    int timeout_ms;  /* connect + command timeout, > 0 */
};

/**
 * @brief Creates the handle and tries to connect once; a failed connect is
 *        NOT an error (the next call reconnects).
 * @param opts borrowed during the call; everything needed is copied.
 * @returns a handle the caller frees with redis_conn_free(), or NULL only on
 *          bad options or out of memory (errstr says why; it never contains
 *          the password).
 */
struct redis_conn *redis_conn_new(const struct redis_conn_opts *opts,
                                  char *errstr, size_t errstr_size);

/** @brief Closes the connection and frees the handle; NULL is fine. */
void redis_conn_free(struct redis_conn *c);

/* A Lua script: body plus its SHA-1 hex, prepared once (static storage ok). */
struct redis_script {
    const char *body; /* borrowed, must outlive every eval */
    char sha[41];
};

/** @brief Sets s->body = body (borrowed) and computes its SHA-1 hex. */
void redis_script_init(struct redis_script *s, const char *body);

/**
 * @brief One round trip: EVALSHA (EVAL when this connection has not run the
 *        script yet, EVAL once more on NOSCRIPT), reconnecting and retrying
 *        once when an idle connection turned out dead.
 * @param s borrowed for the call (initialised with redis_script_init).
 * @param numkeys how many of argv are KEYS (0..argc).
 * @param argv argv[0..argc) are the script's KEYS (first numkeys) then ARGV,
 *        binary safe; borrowed for the call.
 * @param argvlen byte lengths of argv, or NULL to use strlen.
 * @param reply on CS_ERR_OK the non-error reply, which the caller frees with
 *        freeReplyObject; NULL on any error.
 * @returns CS_ERR_OK; CS_ERR_REDIS_UNAVAILABLE (connection failed, lost,
 *          timed out, AUTH/SELECT rejected or a transient error reply;
 *          retryable); CS_ERR_REDIS_PROTOCOL (any other error reply, e.g. a
 *          Lua runtime error or redis.error_reply: errstr holds up to 200
 *          bytes of it; retryable per err.h, so a bug in our own script
 *          pauses the consumer instead of dead-lettering events);
 *          CS_ERR_INVALID_ARG (bad numkeys/argc or NULL argument);
 *          CS_ERR_NOMEM. errstr never contains the password.
 */
enum cs_err redis_conn_eval(struct redis_conn *c, const struct redis_script *s,
                            int numkeys, int argc, const char **argv,
                            const size_t *argvlen, struct redisReply **reply,
                            char *errstr, size_t errstr_size);

/** @returns true when Redis answers PING (reconnecting first if needed). */
bool redis_conn_ping(struct redis_conn *c);

/** @returns round trips made so far by every user of @p c (connect
 *           handshakes, PINGs and script calls; a NOSCRIPT fallback counts
 *           twice, a failed exchange once). */
unsigned long long redis_conn_round_trips(const struct redis_conn *c);

#endif
