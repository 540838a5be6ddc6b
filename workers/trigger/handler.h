/*
 * handler - the trigger worker's kl_handler (the consumer side).
 *
 * Per batch: read each TriggerEvent (bad ones are dead-lettered), find the
 * journeys it starts and the instances it moves (qualifying triggers of
 * reminders, opens/clicks of branches, exit triggers: engine_transitions),
 * and apply all of it in one Redis script call (store_transition) in the
 * batch's order. The consumer never executes actions: a started or moved
 * instance gets a timer due at once (at the start trigger's occurred_at)
 * and the timer thread does the rest, so actions have one path with claims
 * and leases; the handler kicks the thread (timer_kick) so it does not wait
 * for its next tick.
 *
 * Replays are harmless: a start whose instance id (derived from the event
 * id) is stored is a duplicate; a transition finds the instance already
 * moved; triggers older than the instance's start never touch it.
 *
 * Ownership: borrows the journeys, metrics, the timer (may be NULL) and
 * the runtime's Redis connection. Thread-safety: the consumer loop's thread.
 */
#ifndef CRMSYNC_TRIGGER_HANDLER_H
#define CRMSYNC_TRIGGER_HANDLER_H

#include <stdbool.h>
#include <stddef.h>

#include "workers/trigger/trigger.h"

struct kl_item;
struct metrics;
struct redis_conn;
struct timer;
struct trigger_handler;

struct trigger_handler *trigger_handler_new(const struct journey_set *js,
                                            struct redis_conn *redis,
                                            struct metrics *m,
                                            struct timer *timer);
void trigger_handler_free(struct trigger_handler *h);

void trigger_handler_process(void *ctx, struct kl_item **items, size_t n);
bool trigger_handler_healthy(void *ctx);

#endif
