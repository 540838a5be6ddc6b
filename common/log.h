/*
 * log - one JSON object per line on stdout.
 *
 * Each line carries ts (RFC 3339 UTC, milliseconds), level, worker, msg and,
 * when given, event_id:
 *   {"ts":"2026-11-22T09:00:00.123Z","level":"info","worker":"response",
 *    "event_id":"e-1","msg":"dead-lettered reason=DECODE"}
 * Messages are key=value style, one line, no trailing period. Never pass a
 * secret (client secret, token, Redis password) to these functions: the
 * config module redacts secrets in everything it prints, and nothing else
 * should hold them in a printable form.
 *
 * DESIGN: the worker name and minimum level are set once by log_init() at
 * start-up, before any other thread exists, and are read-only afterwards (the
 * one write-once exception to "no mutable globals"). Each line is formatted
 * into a local buffer and written with a single fwrite() under the stdio
 * lock, so lines from several threads never interleave.
 */
#ifndef CRMSYNC_LOG_H
#define CRMSYNC_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO = 1,
    LOG_LEVEL_WARN = 2,
    LOG_LEVEL_ERROR = 3,
};

/**
 * @brief Sets the worker name and minimum level. Call once, first thing.
 * @param worker borrowed; must stay valid for the life of the process
 *               (a string literal or config-owned string).
 */
void log_init(const char *worker, enum log_level min_level);

/** @returns true if @p level would be written (used by the LOG_ macros). */
bool log_enabled(enum log_level level);

/**
 * @brief Parses "debug|info|warn|error".
 * @returns true and sets *out on success, false on an unknown name.
 */
bool log_level_parse(const char *name, enum log_level *out);

/**
 * @brief Formats the current UTC time as RFC 3339 with milliseconds
 *        ("2026-11-22T09:00:00.123Z") into buf (at least 32 bytes).
 */
void log_timestamp(char *buf, size_t size);

/**
 * @brief Writes one log line.
 * @param event_id borrowed; NULL when the line is not about one event.
 */
void log_write(enum log_level level, const char *event_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The macros check the level before evaluating their arguments. */
#define LOG_AT(lvl, ev, ...)                                                   \
    do {                                                                       \
        if (log_enabled(lvl))                                                  \
            log_write(lvl, ev, __VA_ARGS__);                                   \
    } while (0)
#define LOG_DEBUG(...) LOG_AT(LOG_LEVEL_DEBUG, NULL, __VA_ARGS__)
#define LOG_INFO(...)  LOG_AT(LOG_LEVEL_INFO, NULL, __VA_ARGS__)
#define LOG_WARN(...)  LOG_AT(LOG_LEVEL_WARN, NULL, __VA_ARGS__)
#define LOG_ERROR(...) LOG_AT(LOG_LEVEL_ERROR, NULL, __VA_ARGS__)
/* Same, about one event (its id lands in the "event_id" field). */
#define LOG_EV_INFO(ev, ...)  LOG_AT(LOG_LEVEL_INFO, ev, __VA_ARGS__)
#define LOG_EV_WARN(ev, ...)  LOG_AT(LOG_LEVEL_WARN, ev, __VA_ARGS__)
#define LOG_EV_DEBUG(ev, ...) LOG_AT(LOG_LEVEL_DEBUG, ev, __VA_ARGS__)

#endif
