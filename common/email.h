/*
 * email - e-mail addresses as every worker compares them.
 *
 * An address is trimmed (blanks, tabs) and lower-cased, and accepted only
 * in the shape local@domain.tld: one '@', something before it, a dot
 * inside the domain and no empty domain label, no blanks or control
 * characters, at most 254 bytes.
 *
 * Ownership: the caller owns both buffers. Thread-safety: pure.
 */
#ifndef CRMSYNC_EMAIL_H
#define CRMSYNC_EMAIL_H

#include <stdbool.h>
#include <stddef.h>

/** @returns false when @p in is not acceptable; else @p out holds the
 *  normalised address (needs up to 255 bytes). */
bool email_normalize(const char *in, char *out, size_t size);

#endif
