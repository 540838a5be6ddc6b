/*
 * fuzz_crm_batch - the Dataverse $batch response (outside input):
 * crm_dataverse_batch_parse() must neither crash nor leak on any bytes, and
 * must leave every op it was given decided (never CRM_OP_PENDING) with a
 * NUL-terminated error text.
 *
 * Input layout, so that the fuzzer varies the header and the request too:
 *   line 1: the response Content-Type (empty line: no header, NULL)
 *   line 2: the ops of the request, one letter each: P POST, A PATCH,
 *           D DELETE, G GET; after a letter '!' create-only, '?' update-only,
 *           '~' with an If-Match ETag; '[' ... ']' puts the ops between them
 *           in one change set; anything else is ignored (at most 64 ops)
 *   rest:   the response body
 * Seeds (tests/fuzz/corpus/crm_batch/): Microsoft's recorded responses
 * (../shared/reference/golden/dataverse, ops from the matching request) and
 * the Dataverse emulator's answers (change sets, errors, continue-on-error).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/crm_dataverse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_OPS 64

/* Splits off the next line of [*p, end); returns a malloc'd NUL-terminated
 * copy (caller frees with free()) and moves *p past its '\n'. */
static char *take_line(const uint8_t **p, const uint8_t *end)
{
    const uint8_t *nl = memchr(*p, '\n', (size_t)(end - *p));
    const uint8_t *e = nl ? nl : end;
    size_t len = (size_t)(e - *p);
    char *s = malloc(len + 1);

    if (s) {
        memcpy(s, *p, len);
        s[len] = '\0';
    }
    *p = nl ? nl + 1 : end;
    return s;
}

/* Fills ops[] from the spec line; returns how many. */
static size_t ops_from_spec(const char *spec, struct crm_op *ops)
{
    static char path[] = "contacts(00000000-0000-0000-0000-000000000001)";
    static char body[] = "{\"firstname\":\"x\"}";
    size_t n = 0;
    int changeset = 0;
    int next_changeset = 1;

    for (const char *c = spec; *c && n < FUZZ_MAX_OPS; c++) {
        struct crm_op *op = n > 0 ? &ops[n - 1] : NULL;
        const char *method = NULL;

        switch (*c) {
        case 'P':
            method = "POST";
            break;
        case 'A':
            method = "PATCH";
            break;
        case 'D':
            method = "DELETE";
            break;
        case 'G':
            method = "GET";
            break;
        case '!':
            if (op)
                op->flags |= CRM_OP_CREATE_ONLY;
            break;
        case '?':
            if (op)
                op->flags |= CRM_OP_UPDATE_ONLY;
            break;
        case '~':
            if (op)
                op->if_match = "W/\"1234\"";
            break;
        case '[':
            changeset = next_changeset++;
            break;
        case ']':
            changeset = 0;
            break;
        default:
            break;
        }
        if (!method)
            continue;
        memset(&ops[n], 0, sizeof(ops[n]));
        ops[n].method = method;
        ops[n].path = path;
        ops[n].body =
            strcmp(method, "POST") == 0 || strcmp(method, "PATCH") == 0 ? body
                                                                        : NULL;
        ops[n].changeset = changeset;
        n++;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data;
    const uint8_t *end = data + size;
    char *ct = take_line(&p, end);
    char *spec = take_line(&p, end);
    struct crm_op ops[FUZZ_MAX_OPS];
    size_t n;
    char err[128];

    if (!ct || !spec)
        goto out_free_lines;
    n = ops_from_spec(spec, ops);
    if (crm_dataverse_batch_parse(ct[0] ? ct : NULL, (const char *)p,
                                  (size_t)(end - p), ops, n, err,
                                  sizeof(err)) == CS_ERR_OK) {
        for (size_t i = 0; i < n; i++) {
            if (ops[i].result == CRM_OP_PENDING ||
                memchr(ops[i].error, '\0', sizeof(ops[i].error)) == NULL)
                abort(); /* an op left undecided or an unterminated error */
            if (ops[i].response && strcmp(ops[i].method, "GET") != 0)
                abort(); /* only GETs keep a response body */
            json_decref(ops[i].response);
        }
    }
out_free_lines:
    free(spec);
    free(ct);
    return 0;
}
