/*
 * store - journey instances and timers in Redis, changed only by Lua
 * scripts (atomic, one round trip per call, safe with many replicas).
 *
 * Layout (docs/trigger.md):
 *   cs:tr:s:<xxxx>      16384 shard hashes: instance key (10 bytes) ->
 *                       state blob (instance.h)
 *   cs:tr:w:<slot>:<n>  timer wheel: hashes of <= 120 entries, instance
 *                       key -> due offset in the 60 s slot (u16 ms); the
 *                       instance header names its slot, so a transition
 *                       removes the timer without a search
 *   cs:tr:wi            sorted set of wheel hashes by their earliest due
 *                       time (re-scored by each claim that leaves entries)
 *   cs:tr:wn            hash slot -> current sub-slot n
 *   cs:tr:m:<day>       action markers (ESP mails): id -> s (sending) |
 *                       d (sent), expire after 8 days
 *
 * Claims: store_claim moves due timers to now + lease (the header keeps
 * its version) and returns them; a completion carries the version it
 * claimed and is dropped ("conflict") if anything wrote the instance in
 * between (a qualifying or exit trigger, or another replica completing a
 * re-fired timer first). A claim whose worker died is simply due again
 * when the lease ends.
 *
 * Ownership: a store borrows the redis_conn (one thread at a time).
 * Results: labels are static strings.
 */
#ifndef CRMSYNC_TRIGGER_STORE_H
#define CRMSYNC_TRIGGER_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"
#include "workers/trigger/instance.h"

#include "common/redis_conn.h"

/* Width of a wheel slot. Wide enough that a million timers spread over a
 * week share ~10k wheel hashes (each costs ~170 bytes of key and index
 * overhead), narrow enough that the due offset fits the entry's u16 ms.
 * Firing precision does not depend on it: the index is scored by each
 * hash's earliest due time. */
#define STORE_SLOT_MS     60000
#define STORE_SLOT_MS_STR "60000"

/* The scripts plus the borrowed connection (store_init). */
struct store {
    struct redis_conn *r; /* borrowed */
    struct redis_script transition, claim, complete, mark;
};

/** @brief Prepares the scripts; @p r is borrowed. */
void store_init(struct store *s, struct redis_conn *r);

/* One consumer-side change. */
struct store_op {
    char op; /* 'S' start, 'T' transition */
    uint8_t key[INST_KEY_LEN];
    /* S */
    char policy; /* 'o' once, 'a' always, 'w' window */
    int64_t window_s;
    struct buf blob; /* full blob (owned; store_ops_free) */
    /* T */
    uint32_t occurred_s;
    uint8_t pairs[2 * 64];
    size_t npairs;
    /* both */
    int64_t due_ms; /* S: first timer; T: timer of the step moved to */
    /* out */
    const char *result; /* started duplicate active older once window |
                           moved exited none ended nomatch */
};

/* A claimed timer. */
struct store_claim {
    uint8_t key[INST_KEY_LEN];
    int64_t due_ms;
    struct instance inst;   /* decoded (owned: instance_clear) */
    enum cs_err decode_err; /* CS_ERR_OK or why inst is unusable */
};

/* A completion of a claimed timer. */
struct store_done {
    uint8_t key[INST_KEY_LEN];
    unsigned claimed_ver;
    char kind;          /* 'A' active, 'D' done, 'R' retry (state unchanged) */
    struct buf blob;    /* A: full blob, D: header + id (owned) */
    int64_t due_ms;     /* A, R */
    const char *result; /* out: ok | conflict | gone */
};

/** @brief Applies ops[0..n) in order. */
enum cs_err store_transition(struct store *s, struct store_op *ops, size_t n,
                             char *errstr, size_t errstr_size);

/**
 * @brief Claims up to @p limit timers due at @p now_ms (leases them for
 *        @p lease_ms).
 * @param out caller array of @p limit entries; *n set.
 */
enum cs_err store_claim(struct store *s, int64_t now_ms, size_t limit,
                        int lease_ms, struct store_claim *out, size_t *n,
                        char *errstr, size_t errstr_size);

/** @brief Applies completions d[0..n). */
enum cs_err store_complete(struct store *s, struct store_done *d, size_t n,
                           char *errstr, size_t errstr_size);

/**
 * @brief Marks action ids as being sent; prev[i] receives the earlier
 *        marker: 0 none, 's' sending (a sender died: uncertain), 'd' sent.
 */
enum cs_err store_mark_sending(struct store *s, const char *const *ids,
                               size_t n, int64_t now_ms, char *prev,
                               char *errstr, size_t errstr_size);

/** @brief Marks action ids as sent. */
enum cs_err store_mark_sent(struct store *s, const char *const *ids, size_t n,
                            int64_t now_ms, char *errstr, size_t errstr_size);

/**
 * @brief Takes "sending" markers back for mails that were never handed to
 *        the ESP (it was down, or the round ran out of time), so their
 *        re-fire is not counted as uncertain. A "sent" marker stays.
 */
enum cs_err store_mark_unsent(struct store *s, const char *const *ids, size_t n,
                              int64_t now_ms, char *errstr, size_t errstr_size);

#endif
