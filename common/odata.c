/*
 * odata - OData literal escaping, URL encoding, GUID checks and UUIDv5.
 * See odata.h.
 */
#include "common/odata.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* RFC 3986 unreserved characters, never encoded. */
static bool is_unreserved(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
           (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' ||
           ch == '~';
}

/* Characters kept literally inside a quoted OData literal: unreserved plus
 * the sub-delimiters that have no meaning inside a query value. */
static bool keep_in_literal(unsigned char ch)
{
    return is_unreserved(ch) || ch == '\'' || ch == '(' || ch == ')' ||
           ch == '!' || ch == '*';
}

/* Percent-encodes src into a new string, keeping bytes for which keep()
 * is true. Caller frees with free(). */
static char *percent_encode(const char *src, bool (*keep)(unsigned char))
{
    static const char hex[] = "0123456789ABCDEF";
    size_t len = strlen(src);
    char *out = malloc(len * 3 + 1);
    size_t o = 0;

    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)src[i];
        if (keep(ch)) {
            out[o++] = (char)ch;
        } else {
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 0x0f];
        }
    }
    out[o] = '\0';
    return out;
}

char *odata_url_encode(const char *s)
{
    return percent_encode(s, is_unreserved);
}

char *odata_quote_literal(const char *s)
{
    size_t len = strlen(s);
    size_t quotes = 0;
    char *quoted;
    char *out;
    size_t o = 0;

    for (size_t i = 0; i < len; i++)
        if (s[i] == '\'')
            quotes++;
    quoted = malloc(len + quotes + 3);
    if (!quoted)
        return NULL;
    quoted[o++] = '\'';
    for (size_t i = 0; i < len; i++) {
        quoted[o++] = s[i];
        if (s[i] == '\'')
            quoted[o++] = '\'';
    }
    quoted[o++] = '\'';
    quoted[o] = '\0';
    out = percent_encode(quoted, keep_in_literal);
    free(quoted);
    return out;
}

int odata_hex_value(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

bool odata_is_guid(const char *s)
{
    if (!s || strlen(s) != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (odata_hex_value(s[i]) < 0) {
            return false;
        }
    }
    return true;
}

/* Parses a GUID string into 16 bytes (network order); false if invalid. */
static bool guid_parse(const char *s, unsigned char out[16])
{
    size_t o = 0;

    if (!odata_is_guid(s))
        return false;
    for (size_t i = 0; i < 36 && o < 16; i++) {
        if (s[i] == '-')
            continue;
        out[o++] = (unsigned char)(odata_hex_value(s[i]) << 4 |
                                   odata_hex_value(s[i + 1]));
        i++;
    }
    return o == 16;
}

void odata_uuid5(const char *namespace_guid, const char *name, char out[37])
{
    unsigned char ns[16] = {0};
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    if (!guid_parse(namespace_guid, ns))
        memset(ns, 0, sizeof(ns));
    memset(digest, 0, sizeof(digest));
    if (ctx) {
        if (EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) != 1 ||
            EVP_DigestUpdate(ctx, ns, sizeof(ns)) != 1 ||
            EVP_DigestUpdate(ctx, name, strlen(name)) != 1 ||
            EVP_DigestFinal_ex(ctx, digest, &digest_len) != 1)
            memset(digest, 0, sizeof(digest));
        EVP_MD_CTX_free(ctx);
    }
    digest[6] = (unsigned char)((digest[6] & 0x0f) | 0x50); /* version 5 */
    digest[8] = (unsigned char)((digest[8] & 0x3f) | 0x80); /* RFC 4122 */
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x",
             digest[0], digest[1], digest[2], digest[3], digest[4], digest[5],
             digest[6], digest[7], digest[8], digest[9], digest[10], digest[11],
             digest[12], digest[13], digest[14], digest[15]);
}
