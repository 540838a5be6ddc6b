/*
 * buf - growable byte buffer. See buf.h.
 */
#include "common/buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Capacity of the first allocation; doubled from there. */
#define BUF_MIN_CAP 256

/* Makes room for @p n more bytes plus the NUL; false (oom set) if not. */
static bool buf_reserve(struct buf *b, size_t n)
{
    size_t need;
    size_t cap;
    char *p;

    if (b->oom)
        return false;
    if (n > SIZE_MAX - b->len - 1) {
        b->oom = true;
        return false;
    }
    need = b->len + n + 1;
    if (need <= b->cap)
        return true;
    cap = b->cap ? b->cap : BUF_MIN_CAP;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    p = realloc(b->data, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

enum cs_err buf_append(struct buf *b, const void *p, size_t n)
{
    if (!buf_reserve(b, n))
        return CS_ERR_NOMEM;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return CS_ERR_OK;
}

enum cs_err buf_appends(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

enum cs_err buf_appendf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    size_t room;
    int n;

    if (b->oom)
        return CS_ERR_NOMEM;
    /* First try to format into the spare room; most appends fit. */
    room = b->data ? b->cap - b->len : 0;
    va_start(ap, fmt);
    n = vsnprintf(b->data ? b->data + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < room) {
        b->len += (size_t)n;
        return CS_ERR_OK;
    }
    /* A truncated attempt wrote over the old terminator: restore it. */
    if (b->data)
        b->data[b->len] = '\0';
    if (n < 0) {
        b->oom = true;
        return CS_ERR_NOMEM;
    }
    if (!buf_reserve(b, (size_t)n))
        return CS_ERR_NOMEM;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return CS_ERR_OK;
}

void buf_free(struct buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

char *buf_detach(struct buf *b)
{
    char *s = b->data;

    if (b->oom) {
        buf_free(b);
        return NULL;
    }
    memset(b, 0, sizeof(*b));
    if (!s) {
        s = malloc(1);
        if (s)
            s[0] = '\0';
    }
    return s;
}
