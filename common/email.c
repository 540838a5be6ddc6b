/*
 * email - e-mail address normalisation (see email.h).
 */
#include <ctype.h>
#include <string.h>

#include "common/email.h"

bool email_normalize(const char *in, char *out, size_t size)
{
    const char *end;
    size_t len;
    const char *at = NULL;
    const char *dot = NULL;

    while (*in == ' ' || *in == '\t')
        in++;
    end = in + strlen(in);
    while (end > in && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    len = (size_t)(end - in);
    if (len == 0 || len > 254 || len + 1 > size)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c <= 0x20 || c == 0x7f)
            return false;
        if (c == '@') {
            if (at)
                return false;
            at = in + i;
        } else if (c == '.' && at) {
            dot = in + i;
        }
        out[i] = (char)tolower(c);
    }
    out[len] = '\0';
    /* local@domain.tld: something before '@', a dot inside the domain, no
       empty domain label */
    return at && at > in && dot && dot > at + 1 && dot < end - 1 &&
           at[1] != '.' && !strstr(at, "..");
}
