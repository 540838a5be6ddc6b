/*
 * idem - Redis-backed idempotency markers: claim, mark done, release.
 *
 * A worker asks, for a batch of event ids, "may I process these?"
 * (idem_claim), writes to the CRM, then records success (idem_mark_done) or
 * gives its claims back (idem_release). Every call is exactly one Redis
 * round trip for the whole batch: one Lua script run with EVALSHA (EVAL on a
 * fresh connection and on NOSCRIPT), never one command per id.
 * idem_settle_claim does all three in that one round trip, so a worker can
 * carry the done markers of batch N along with the claims of batch N+1 and
 * pay a single round trip per batch.
 *
 * Per id, idem_claim answers:
 *   - IDEM_CLAIMED: nobody has it (or the previous lease expired, or the
 *     lease is already ours): it is now ours for lease_ms; process it.
 *   - IDEM_DUPLICATE: it was marked done earlier, or it appeared earlier in
 *     the same call: skip it and count it.
 *   - IDEM_IN_FLIGHT: another owner holds an unexpired lease: do not process
 *     it now; retry it later (it will be DUPLICATE once the other worker
 *     succeeds, or CLAIMED once its lease lapses or it releases).
 * Redis is an optimisation, not the source of truth: markers can be lost
 * (failover, FLUSHALL, TTL) so the CRM write itself must stay idempotent.
 *
 * DESIGN (memory layout, measured with bench/idem_mem.c on Redis 7.0):
 *   key   = "cs:idem:<ns>:<day>:<bucket>", a small hash per bucket;
 *           day = event time in UTC days since 1970-01-01,
 *           bucket = (first 8 bytes of SHA-256(id)) % buckets_per_day.
 *   field = bytes 8..15 of SHA-256(id) (8 raw bytes, independent of the
 *           bucket selector; a false duplicate needs a 64-bit collision
 *           within one bucket of one day).
 *   value = "d" (done) or "p<owner>:<lease expiry, Redis ms>" (processing).
 *   TTL   = whole-bucket EXPIREAT at (day end + ttl_days) set by every
 *           mark_done (never shortened below now + lease); a claim into a
 *           bucket whose TTL is shorter than lease_ms (or absent, i.e. a new
 *           bucket) sets PEXPIRE lease_ms, so a crash never leaves an eternal
 *           key. Events older than ttl_days after their day are therefore
 *           not remembered for long (the CRM upsert still guards them).
 *   Lease times come from Redis' TIME inside the script, so clock skew
 *   between workers does not matter.
 * A done id costs ~13 B of listpack (1+8+1 field, 1+1+1 value) plus the
 * key's share of per-key overhead (~100 B) and allocator rounding. Measured
 * (1M ids over one day, Redis 7.0.15): 16.4 B/id at a mean of 80 ids per
 * bucket, 15.0 at 200, 14.8 at 400, against ~145 B/id for one
 * `SET cs:idem:plain:<uuid> 1 NX EX 604800` key per id. This only holds
 * while every bucket stays a listpack: at most hash-max-listpack-entries
 * fields (Redis default 512; some deployments lower it, e.g. to 128) and
 * values of at most hash-max-listpack-value (64) bytes. A bucket that
 * overflows becomes a hashtable for good and costs ~5x more per field
 * (1M ids at a mean of 600 per bucket: 70 B/id). Hence:
 *   - SIZING RULE: buckets_per_day = events expected on the busiest day / 80
 *     (rounded up). Bucket sizes are Poisson-distributed: at a mean of 80 no
 *     bucket reaches 128 fields (0 of 12500 measured), so the rule holds
 *     even for a server limited to 128 (at a mean of 100, 31 of 10000
 *     buckets overflowed 128), and with the default 512 it leaves room for
 *     a day 5x busier than planned. Spending fewer buckets saves at most
 *     ~1.5 B/id; bench/idem_mem.c prints the overflow count to check.
 *   - the owner token is limited to IDEM_OWNER_MAX bytes so a processing
 *     value stays under 64 bytes.
 *
 * Redis access goes through a borrowed struct redis_conn (redis_conn.h:
 * lazy connect, one reconnect-and-retry for an idle connection that died,
 * EVALSHA with EVAL fallback, error mapping); the script is idempotent for
 * the same owner, so that retry is safe. The connection may be shared with
 * other modules of the same thread.
 *
 * Ownership: idem_new copies everything it needs from the options; the
 * struct redis_conn is borrowed and must outlive the idem (the caller owns
 * it). All pointers passed to the other functions are borrowed for the
 * call only. Secrets: the Redis password never reaches idem at all.
 *
 * Thread-safety: a struct idem is used by one thread at a time, the thread
 * that uses its redis_conn. Different handles are independent.
 */
#ifndef CRMSYNC_IDEM_H
#define CRMSYNC_IDEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct redis_conn;

/* Longest accepted owner token (keeps "p<owner>:<13-digit ms>" < 64 B). */
#define IDEM_OWNER_MAX 40
/* Longest accepted namespace. */
#define IDEM_NS_MAX 64
/* Most keys accepted in one call (bounds one script run on the server). */
#define IDEM_BATCH_MAX 100000

struct idem; /* opaque; borrows one redis_conn; used by one thread */

struct idem_opts {
    const char *ns;      /* key namespace, e.g. worker name; [A-Za-z0-9_.-]+,
                            borrowed during idem_new */
    const char *owner;   /* lease owner token (e.g. hostname:pid), at most
                            IDEM_OWNER_MAX bytes; NULL = generate from
                            hostname, pid and random */
    int ttl_days;        /* how long done markers are kept after the event's day
                            ends, 0..3650 */
    int buckets_per_day; /* hash buckets per day: expected events per day /
                            80, rounded up; 1..16777216 */
    int lease_ms;        /* processing lease, > 0 */
};

enum idem_state { IDEM_CLAIMED = 0, IDEM_DUPLICATE = 1, IDEM_IN_FLIGHT = 2 };

/* id borrowed for the call; event_ms = event time (ms since epoch, UTC) used
 * for day bucketing: pass the same event_ms for an id in every call. */
struct idem_key {
    const char *id;
    int64_t event_ms;
};

/**
 * @brief Creates the handle; no I/O (the connection connects lazily).
 * @param redis borrowed: owned by the caller, must outlive the idem.
 * @param opts borrowed during the call; everything needed is copied.
 * @returns a handle the caller frees with idem_free(), or NULL only on bad
 *          options or out of memory (errstr says why).
 */
struct idem *idem_new(struct redis_conn *redis, const struct idem_opts *opts,
                      char *errstr, size_t errstr_size);

/** @brief Frees the handle (not its redis_conn); NULL is fine. */
void idem_free(struct idem *idem);

/**
 * @brief One round trip, in this order: marks done[0..nd) done (as
 *        idem_mark_done), releases release[0..nr) (as idem_release), then
 *        claims claim[0..nc) (as idem_claim; out must hold nc entries, may
 *        be NULL when nc == 0). A claim of an id marked done in the same
 *        call answers IDEM_DUPLICATE. All arrays borrowed for the call.
 * @returns as idem_claim; on error nothing is known to have been applied
 *          (the caller keeps its done/release keys and tries again).
 */
enum cs_err idem_settle_claim(struct idem *idem, const struct idem_key *done,
                              size_t nd, const struct idem_key *release,
                              size_t nr, const struct idem_key *claim,
                              size_t nc, enum idem_state *out, char *errstr,
                              size_t errstr_size);

/**
 * @brief Claims n ids in one round trip. out[i] receives the state for
 *        keys[i]; a repeated id within one call gets IDEM_DUPLICATE for
 *        every occurrence after the first.
 * @param keys borrowed for the call; out must hold n entries.
 * @returns CS_ERR_OK; CS_ERR_REDIS_UNAVAILABLE (connection failed, lost,
 *          timed out or AUTH rejected; retryable; out untouched);
 *          CS_ERR_REDIS_PROTOCOL (unexpected reply; out untouched);
 *          CS_ERR_INVALID_ARG (NULL id or n > IDEM_BATCH_MAX).
 *          n == 0 -> CS_ERR_OK without I/O.
 */
enum cs_err idem_claim(struct idem *idem, const struct idem_key *keys, size_t n,
                       enum idem_state *out, char *errstr, size_t errstr_size);

/**
 * @brief One round trip: marks every key done (whoever held the lease) and
 *        (re)applies the bucket TTLs. Same return codes as idem_claim.
 */
enum cs_err idem_mark_done(struct idem *idem, const struct idem_key *keys,
                           size_t n, char *errstr, size_t errstr_size);

/**
 * @brief One round trip: drops our own processing claims (work failed and
 *        will be retried or dead-lettered elsewhere). Ids that are done or
 *        held by another owner are left alone. Same return codes.
 */
enum cs_err idem_release(struct idem *idem, const struct idem_key *keys,
                         size_t n, char *errstr, size_t errstr_size);

/** @returns the owner token in use (borrowed, valid until idem_free). */
const char *idem_owner(const struct idem *idem);

#endif
