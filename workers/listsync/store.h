/*
 * store - the list-sync job's Redis state: job records, list leases and the
 * per-page suppression + dedupe check (key layout in docs/listsync.md).
 *
 * Every call is one Lua script run (one round trip) over the job's own
 * redis_conn. The suppression sets are the bounce/opt-out worker's
 * (workers/bounce/state.h names them; the layout is documented in
 * docs/bounce.md).
 *
 * Ownership: strings are borrowed for the call. Thread-safety: the job's
 * thread only.
 */
#ifndef CRMSYNC_LISTSYNC_STORE_H
#define CRMSYNC_LISTSYNC_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/redis_conn.h"

struct store {
    struct redis_conn *rc; /* borrowed */
    struct redis_script begin, renew, end, page;
    char job_key[512];
    char lease_key[512];
    char seen_key[512];
    char owner[64];
};

enum store_begin {
    STORE_START = 0,    /* first attempt */
    STORE_RESTART = 1,  /* an earlier attempt was interrupted */
    STORE_FINISHED = 2, /* done or failed before: a duplicate request */
    STORE_BUSY = 3,     /* another owner holds the list's lease */
};

enum page_code { PAGE_OK = 0, PAGE_OUTBOUNCED, PAGE_SUPPRESSED, PAGE_DUP };

void store_init(struct store *s, struct redis_conn *rc, const char *tenant,
                const char *event_id, const char *esp_list);

/** @brief Claims the job and the list lease. *attempt gets the attempt. */
enum cs_err store_begin(struct store *s, int lease_ms, enum store_begin *out,
                        long *attempt, char *errstr, size_t errstr_size);

/** @brief Renews the lease and records @p progress (JSON); *ours false
 *  when the lease was lost (another owner took over). */
enum cs_err store_renew(struct store *s, int lease_ms, const char *progress,
                        bool *ours, char *errstr, size_t errstr_size);

/** @brief Final state ("done"/"failed") + status JSON; drops the lease
 *  and the dedupe set. @p state NULL: interrupted (lease dropped only). */
enum cs_err store_end(struct store *s, const char *state, const char *status,
                      int ttl_s, char *errstr, size_t errstr_size);

/**
 * @brief For each address: outbounced (cs:sup:b), suppressed
 *        (cs:sup:x:<tenant>, cs:sup:c:<tenant>|<consent>), already sent in
 *        this job (only with @p dedupe), else OK (and, with @p dedupe, now
 *        remembered as sent).
 */
enum cs_err store_page(struct store *s, const char *tenant, const char *consent,
                       const char *const *emails, size_t n, bool dedupe,
                       enum page_code *out, char *errstr, size_t errstr_size);

/* A list synchronised incrementally (cs:ls:inc:<tenant>|<crm list>),
 * registered by a finished INCREMENTAL request. */
struct store_registration {
    char esp_list[32];
    char consent[40];
    char name[256];
    int set; /* 0 contacts, 1 accounts, 2 leads */
};

enum cs_err store_register(struct redis_conn *rc, const char *tenant,
                           const char *list_id,
                           const struct store_registration *reg, char *errstr,
                           size_t errstr_size);
/** @brief *found false when the list is not registered. */
enum cs_err store_lookup(struct redis_conn *rc, const char *tenant,
                         const char *list_id, struct store_registration *reg,
                         bool *found, char *errstr, size_t errstr_size);

#endif
