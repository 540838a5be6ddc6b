/*
 * isotime - ISO 8601 UTC timestamps with milliseconds, as crmsync writes
 * them into CRM columns and status records ("2026-11-22T10:00:00.000Z"),
 * and parsing of those and of Dataverse's ("2026-11-22T10:00:00Z").
 *
 * Thread-safety: pure (gmtime_r / timegm).
 */
#ifndef CRMSYNC_ISOTIME_H
#define CRMSYNC_ISOTIME_H

#include <stddef.h>
#include <stdint.h>

/** @brief Formats @p ms since the epoch into @p buf (>= 25 bytes). */
void isotime_format(int64_t ms, char *buf, size_t size);

/** @returns ms since the epoch, or -1 when @p s is not such a time. */
int64_t isotime_parse(const char *s);

#endif
