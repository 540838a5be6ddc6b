/*
 * crm - connector factory. See crm.h.
 */
#include "common/crm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/crm_dataverse.h"

struct crm *crm_new(const struct crm_options *opts, struct metrics *m,
                    char *errstr, size_t errstr_size)
{
    const char *kind = opts->kind && *opts->kind ? opts->kind : "dataverse";

    if (strcmp(kind, "dataverse") == 0)
        return crm_dataverse_new(opts, m, errstr, errstr_size);
    snprintf(errstr, errstr_size, "crm.kind: unknown CRM kind '%s'", kind);
    return NULL;
}

void crm_free(struct crm *crm)
{
    if (!crm)
        return;
    if (crm->ops && crm->ops->free)
        crm->ops->free(crm->self);
    free(crm);
}
