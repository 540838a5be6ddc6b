/*
 * engine - the journey step logic, pure (no I/O), so every rule is a unit
 * test.
 *
 * Two entry points:
 *  - engine_fire(): a timer of an instance fired at logical time `due`
 *    (the time it was scheduled for): run steps from the instance's pc,
 *    collecting actions, until the journey waits (next timer) or ends.
 *  - engine_transitions(): which steps a trigger moves an active instance
 *    out of, and to where (qualifying triggers of reminders, opens/clicks
 *    of branches, exit triggers). The Redis script applies the move
 *    atomically against the instance's current pc.
 *
 * Time: every step works on event time. A journey starts at its start
 * trigger's occurred_at; a wait/reminder/branch is measured from the time
 * its step was entered (the due time of the timer that entered it), so a
 * late-processed timer does not shift the rhythm. Exception: reminders
 * missed during an outage are not sent in a burst - at most one is sent
 * when the timer finally fires, and the next is scheduled `every` after
 * that.
 *
 * Ownership: plans point into the journey (borrowed, immutable).
 */
#ifndef CRMSYNC_TRIGGER_ENGINE_H
#define CRMSYNC_TRIGGER_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "workers/trigger/instance.h"
#include "workers/trigger/journey.h"

#define ENGINE_MAX_ACTIONS 64  /* actions one firing may collect */
#define ENGINE_PC_EXIT     255 /* transition target: leave the journey */
#define ENGINE_PC_ANY      254 /* transition source: whatever the pc */

struct engine_action {
    const struct jr_action *a;  /* NULL: the derived not-opened/clicked
                                   trigger of a branch timeout */
    const struct jr_step *step; /* the step it belongs to */
    unsigned pc, iter;          /* identity (with the instance) */
    int64_t at_ms;              /* logical time of the action */
    char id[37];                /* deterministic action id */
};

struct engine_plan {
    struct engine_action actions[ENGINE_MAX_ACTIONS];
    size_t n;
    bool done;           /* the journey ended (ran past its last step) */
    int64_t next_due_ms; /* when !done: the next timer */
    unsigned pc, iter;   /* the instance's new position */
};

/**
 * @brief Runs a fired timer.
 * @param in the instance (its pc/iter/started/deadline/attributes).
 * @param due_ms the time the timer was due; @p now_ms the wall clock.
 * @returns CS_ERR_OK with *plan filled; CS_ERR_INVALID_ARG when the state
 *          does not fit the journey (pc beyond the program: the journey
 *          file changed incompatibly - the caller ends the instance).
 */
enum cs_err engine_fire(const struct journey *j, const struct instance *in,
                        int64_t due_ms, int64_t now_ms,
                        struct engine_plan *plan);

/**
 * @brief Transitions trigger @p name causes in journey @p j.
 * @param pairs receives (from_pc, to_pc) byte pairs: from ENGINE_PC_ANY
 *        for exit triggers (to ENGINE_PC_EXIT); capacity 2 * max_pairs.
 * @returns the number of pairs written.
 */
size_t engine_transitions(const struct journey *j, const char *name,
                          const struct jr_attrs *a, uint8_t *pairs,
                          size_t max_pairs);

#endif
