/* err - see err.h. */
#include "common/err.h"

struct err_row {
    const char *name; /* symbolic name without the CS_ERR_ prefix */
    bool retryable;   /* may a later retry of the same work succeed? */
    const char *msg;  /* human readable message */
};

static const struct err_row err_rows[] = {
#define CS_ERR_ROW(code, retry, msg) {#code, retry, msg},
    CS_ERR_MAP(CS_ERR_ROW)
#undef CS_ERR_ROW
};

const char *cs_err_str(enum cs_err err)
{
    if ((unsigned)err >= CS_ERR__COUNT)
        return "unknown error";
    return err_rows[err].msg;
}

const char *cs_err_name(enum cs_err err)
{
    if ((unsigned)err >= CS_ERR__COUNT)
        return "UNKNOWN";
    return err_rows[err].name;
}

bool cs_err_retryable(enum cs_err err)
{
    if ((unsigned)err >= CS_ERR__COUNT)
        return false;
    return err_rows[err].retryable;
}
