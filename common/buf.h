/*
 * buf - a growable byte buffer (in the manner of curl's dynbuf) for building
 * request bodies, response bodies and text output piece by piece.
 *
 * Start from `struct buf b = {0};` and append. `data` is NULL until the
 * first append and NUL-terminated after it (the NUL is not counted in
 * `len`), so it can be read as a C string at any time. The first failed
 * allocation sets `oom`, frees nothing, and turns every later append into a
 * no-op that returns CS_ERR_NOMEM; callers may append a whole document and
 * check `oom` once at the end. `data` then still holds what was appended
 * before the failure.
 *
 * Ownership: the struct owns `data`; release it with buf_free(), or take it
 * with buf_detach() (the caller then frees it with free()). Bytes passed to
 * the append functions are borrowed for the call and copied.
 *
 * Thread-safety: none; a buffer belongs to one thread at a time. Different
 * buffers may be used from different threads.
 */
#ifndef CRMSYNC_BUF_H
#define CRMSYNC_BUF_H

#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"

struct buf {
    char *data; /* owned; NULL until the first append, then NUL-terminated */
    size_t len; /* bytes in data, not counting the NUL */
    size_t cap; /* bytes allocated for data */
    bool oom;   /* an allocation failed; appends are now no-ops */
};

/**
 * @brief Appends @p n bytes from @p p (may contain NULs).
 * @returns CS_ERR_OK, or CS_ERR_NOMEM when this or an earlier append failed.
 */
enum cs_err buf_append(struct buf *b, const void *p, size_t n);

/** @brief Appends the C string @p s. @returns as buf_append(). */
enum cs_err buf_appends(struct buf *b, const char *s);

/**
 * @brief Appends printf-style formatted text. A format error counts as a
 *        failure (sets oom) like an allocation failure.
 * @returns as buf_append().
 */
enum cs_err buf_appendf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/** @brief Frees the data and resets @p b to empty (oom cleared). */
void buf_free(struct buf *b);

/**
 * @brief Takes the contents out of @p b and resets it to empty.
 * @returns the NUL-terminated data (caller frees with free()); "" in a new
 *          allocation when nothing was appended; NULL when @p b is oom (its
 *          data is freed) or the empty string cannot be allocated.
 */
char *buf_detach(struct buf *b);

#endif
