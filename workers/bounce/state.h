/*
 * state - the bounce worker's Redis state, one script run per batch.
 *
 * One Lua script (EVALSHA over common/redis_conn) does, atomically and in
 * order: the done markers carried from the previous batch, then every op of
 * this batch:
 *  - 'S' compare-and-set of the last applied change of a key (consent,
 *    channel or bounce status), verdict APPLY / DUPLICATE / STALE by event
 *    time, value and event id (rules in docs/bounce.md), plus the matching
 *    suppression-set change when it applies;
 *  - 'C' count a bounce (sorted set member = event id, score = event time)
 *    and, when some window of window_ms now holds threshold bounces after
 *    the last reset, move the address's bounce status No -> Yes (verdict
 *    APPLY with the crossing time; DUPLICATE when already Yes).
 * Keys are built by the bounce_key_* functions below (layout in
 * docs/bounce.md, which list-sync reads). The script takes no KEYS: it is
 * for a standalone Redis (or one cluster slot), like the idem script.
 *
 * Ownership: every pointer in the structs is borrowed for the call.
 * Thread-safety: as the redis_conn used.
 */
#ifndef CRMSYNC_BOUNCE_STATE_H
#define CRMSYNC_BOUNCE_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/redis_conn.h"

enum bounce_verdict {
    BOUNCE_V_NONE = 0,  /* 'C': counted, no threshold crossed */
    BOUNCE_V_APPLY = 1, /* write it (again, for a retry of the same event) */
    BOUNCE_V_DUPLICATE = 2,
    BOUNCE_V_STALE = 3,   /* a newer change was applied before */
    BOUNCE_V_IGNORED = 4, /* 'C': bounce not after the last reset */
};

struct bounce_state_op {
    char type;              /* 'S' or 'C' */
    const char *key;        /* S: state key; C: counter key */
    int64_t t;              /* event time, ms */
    int value;              /* S: 1 out / bounced, 0 in / not bounced */
    const char *eid;        /* event id (C: the counter member) */
    const char *sup_key;    /* suppression set or NULL */
    const char *member;     /* address added / removed */
    bool reset;             /* S on a status key: a bounce reset (moves r) */
    const char *status_key; /* C: the address's bounce status key */
    int threshold;          /* C */
    int64_t window_ms;      /* C */
    const char *thr_prefix; /* C: id of a threshold outbounce = prefix+time */
    /* out */
    enum bounce_verdict verdict;
    int64_t cross_t; /* C with APPLY/DUPLICATE: time of the crossing */
};

/* The script and where it runs (the handler embeds one). */
struct bounce_state {
    struct redis_conn *rc; /* borrowed */
    struct redis_script script;
    int64_t ttl_ms; /* lifetime of a state key after its last change */
};

struct bounce_done {
    const char *key; /* state key */
    const char *eid; /* event id whose write is now durable */
};

/** @brief Prepares @p st (computes the script's SHA-1). */
void bounce_state_init(struct bounce_state *st, struct redis_conn *rc,
                       int64_t ttl_ms);

/**
 * @brief Runs the done markers and ops in one round trip.
 * @returns CS_ERR_OK (verdicts filled), CS_ERR_REDIS_UNAVAILABLE (retry) or
 *          another error with errstr.
 */
enum cs_err bounce_state_run(struct bounce_state *st,
                             const struct bounce_done *done, size_t nd,
                             struct bounce_state_op *ops, size_t n,
                             char *errstr, size_t errstr_size);

/* Key builders (buf of BOUNCE_KEY_MAX). topic may be NULL. */
void bounce_key_consent(char *buf, size_t size, const char *tenant,
                        const char *email, const char *consent,
                        const char *topic);
void bounce_key_channel(char *buf, size_t size, const char *tenant,
                        const char *email);
void bounce_key_status(char *buf, size_t size, const char *email);
void bounce_key_counter(char *buf, size_t size, const char *tenant,
                        const char *email, bool hard);
void bounce_sup_consent(char *buf, size_t size, const char *tenant,
                        const char *consent, const char *topic);
void bounce_sup_channel(char *buf, size_t size, const char *tenant);
#define BOUNCE_SUP_BOUNCED "cs:sup:b"

#endif
