/*
 * timer - the firing thread of the trigger worker.
 *
 * Beside the consumer loop (never blocking it), the thread claims due
 * timers from Redis (store_claim: atomic, leased, so several replicas
 * share the work and each timer fires once), runs the engine for each
 * instance, executes the actions (actions.h) and completes the timers
 * (store_complete: next timer, end of journey, or retry later when an
 * action met a retryable failure). It has its own Redis, CRM and ESP
 * connections. Firing lag (now - due) is the histogram
 * crmsync_trigger_firing_lag_seconds.
 *
 * Ownership: borrows cfg, tc, js and metrics (they outlive the thread);
 * owns its connections. timer_stop() joins the thread (the firing round in
 * progress finishes first) and frees everything.
 */
#ifndef CRMSYNC_TRIGGER_TIMER_H
#define CRMSYNC_TRIGGER_TIMER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include "workers/trigger/trigger.h"

struct metrics;
struct timer;

/**
 * @brief Opens the connections and starts the thread.
 * @param run the process stop flag (borrowed; the thread ends when 0).
 * @returns the timer (caller stops it with timer_stop) or NULL + errstr.
 */
struct timer *timer_start(const struct config *cfg,
                          const struct trigger_config *tc,
                          const struct journey_set *js, struct metrics *m,
                          volatile sig_atomic_t *run, char *errstr,
                          size_t errstr_size);

/**
 * @brief Wakes the thread now instead of at its next tick: the consumer
 *        calls it after scheduling timers that may be due already (a start
 *        whose first step acts at once). Thread-safe; NULL is fine.
 */
void timer_kick(struct timer *t);

/** @brief Stops and joins the thread, frees everything. NULL is fine. */
void timer_stop(struct timer *t);

/** @returns false after the last round failed on Redis. */
bool timer_healthy(const struct timer *t);

#endif
