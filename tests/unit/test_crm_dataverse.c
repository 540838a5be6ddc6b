/*
 * test_crm_dataverse - $batch writer and reader against Microsoft's
 * documented examples (../shared/reference/golden/dataverse), and the
 * connector (token caching, 401 refresh, chunking, paging, throttling)
 * against a scripted HTTP server.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/crm.h"
#include "common/crm_dataverse.h"
#include "common/metrics.h"
#include "script_server.h"

#define GOLDEN_DIR CRMSYNC_SOURCE_DIR "/../shared/reference/golden/dataverse"

/* ---------------------------------------------------------------- helpers */

/* Reads a golden file; NULL when absent. Caller frees. */
static char *read_golden(const char *name)
{
    char path[1024];
    FILE *f;
    char *buf;
    long len;

    snprintf(path, sizeof(path), "%s/%s", GOLDEN_DIR, name);
    f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)len + 1);
    if (fread(buf, 1, (size_t)len, f) != (size_t)len)
        len = 0;
    buf[len] = '\0';
    fclose(f);
    return buf;
}

/* Loads a golden file or skips the test with a clear message. */
static char *golden_or_skip(const char *name)
{
    char *s = read_golden(name);

    if (!s) {
        print_message("golden file %s/%s absent: skipping\n", GOLDEN_DIR, name);
        skip();
    }
    return s;
}

/* The part after the first blank line (the HTTP message body). */
static const char *after_headers(const char *msg)
{
    const char *p = strstr(msg, "\n\n");

    return p ? p + 2 : msg;
}

/* Returns a copy of s with every "from" replaced by "to". Caller frees. */
static char *replace_all(const char *s, const char *from, const char *to)
{
    size_t fl = strlen(from);
    size_t tl = strlen(to);
    size_t n = 0;
    char *out;
    char *o;

    for (const char *p = strstr(s, from); p; p = strstr(p + fl, from))
        n++;
    out = malloc(strlen(s) + n * (tl > fl ? tl - fl : 0) + 1);
    o = out;
    while (*s) {
        if (strncmp(s, from, fl) == 0) {
            memcpy(o, to, tl);
            o += tl;
            s += fl;
        } else {
            *o++ = *s++;
        }
    }
    *o = '\0';
    return out;
}

static void rtrim(char *s)
{
    size_t n = strlen(s);

    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
        s[--n] = '\0';
}

static size_t count_bare_lf(const char *s)
{
    size_t n = 0;

    for (size_t i = 0; s[i]; i++)
        if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
            n++;
    return n;
}

static const char *TASK_BODY[] = {
    "{\n  \"subject\": \"Task 1 in batch\",\n"
    "  \"regardingobjectid_account_task@odata.bind\": "
    "\"accounts(00000000-0000-0000-0000-000000000001)\"\n}",
    "{\n  \"subject\": \"Task 2 in batch\",\n"
    "  \"regardingobjectid_account_task@odata.bind\": "
    "\"accounts(00000000-0000-0000-0000-000000000001)\"\n}",
    "{\n  \"subject\": \"Task 3 in batch\",\n"
    "  \"regardingobjectid_account_task@odata.bind\": "
    "\"accounts(00000000-0000-0000-0000-000000000001)\"\n}",
};

#define GET_TASKS                                                              \
    "accounts(00000000-0000-0000-0000-000000000001)/Account_Tasks?$select="    \
    "subject"

/* The ops of golden 01/02: three task creates (+changeset) and one GET. */
static void golden_ops(struct crm_op ops[4], int changeset)
{
    memset(ops, 0, 4 * sizeof(ops[0]));
    for (int i = 0; i < 3; i++) {
        ops[i].method = "POST";
        ops[i].path = "tasks";
        ops[i].body = (char *)TASK_BODY[i];
        ops[i].changeset = changeset;
    }
    ops[3].method = "GET";
    ops[3].path = GET_TASKS;
}

/* Builds and compares with a golden request (bodies carry LF; everything
 * else must be CRLF). */
static void check_build(const char *golden_name, const char *boundary,
                        int changeset, const char *golden_cs_boundary)
{
    char *golden = golden_or_skip(golden_name);
    struct crm_op ops[4];
    char *built = NULL;
    size_t built_len = 0;
    char *lf;
    char *want;
    size_t body_lfs = 0;

    golden_ops(ops, changeset);
    assert_int_equal(crm_dataverse_batch_build(ops, 4, "/api/data/v9.2/",
                                               boundary, &built, &built_len),
                     CS_ERR_OK);
    assert_int_equal(strlen(built), built_len);
    for (int i = 0; i < 3; i++)
        body_lfs += count_bare_lf(TASK_BODY[i]);
    /* CRLF everywhere except inside the JSON bodies we passed in. */
    assert_int_equal(count_bare_lf(built), body_lfs);
    lf = replace_all(built, "\r\n", "\n");
    if (golden_cs_boundary) {
        const char *p = strstr(lf, "boundary=\"changeset_");
        char ours[128];
        char *tmp;
        size_t len;
        assert_non_null(p);
        p += strlen("boundary=\"");
        len = (size_t)(strchr(p, '"') - p);
        memcpy(ours, p, len);
        ours[len] = '\0';
        tmp = replace_all(lf, ours, golden_cs_boundary);
        free(lf);
        lf = tmp;
    }
    want = strdup(after_headers(golden));
    rtrim(want);
    rtrim(lf);
    assert_string_equal(lf, want);
    free(want);
    free(lf);
    free(built);
    free(golden);
}

/* ------------------------------------------------------------ $batch writer */

static void test_build_golden_01(void **state)
{
    (void)state;
    check_build("01-batch-no-changeset.request.http",
                "batch_80dd1615-2a10-428a-bb6f-0e559792721f", 0, NULL);
}

static void test_build_golden_02_changeset(void **state)
{
    (void)state;
    check_build("02-batch-changeset.request.http",
                "batch_22975cad-7f57-410d-be15-6363209367ea", 7,
                "changeset_246e6bfe-89a4-4c77-b293-7a433f082e8a");
}

static void test_build_conditional_headers(void **state)
{
    struct crm_op ops[3];
    char *built = NULL;
    size_t len = 0;

    (void)state;
    memset(ops, 0, sizeof(ops));
    ops[0] = (struct crm_op){.method = "PATCH",
                             .path = "campaignresponses(1)",
                             .body = "{\"subject\":\"a\"}",
                             .flags = CRM_OP_CREATE_ONLY};
    ops[1] = (struct crm_op){.method = "PATCH",
                             .path = "contacts(2)",
                             .body = "{\"donotbulkemail\":true}",
                             .flags = CRM_OP_UPDATE_ONLY};
    ops[2] = (struct crm_op){.method = "DELETE", .path = "listmembers(3)"};
    assert_int_equal(crm_dataverse_batch_build(ops, 3, "/org/api/data/v9.2/",
                                               "batch_x", &built, &len),
                     CS_ERR_OK);
    assert_non_null(strstr(built,
                           "PATCH /org/api/data/v9.2/campaignresponses(1) "
                           "HTTP/1.1\r\nContent-Type: application/json; "
                           "type=entry\r\nIf-None-Match: *\r\n\r\n"
                           "{\"subject\":\"a\"}\r\n--batch_x\r\n"));
    assert_non_null(strstr(built, "PATCH /org/api/data/v9.2/contacts(2) "
                                  "HTTP/1.1\r\nContent-Type: "
                                  "application/json; type=entry\r\n"
                                  "If-Match: *\r\n\r\n"));
    assert_non_null(strstr(built, "DELETE /org/api/data/v9.2/listmembers(3) "
                                  "HTTP/1.1\r\n\r\n\r\n--batch_x--\r\n"));
    assert_null(strstr(built, "If-None-Match: *\r\n\r\n{\"donot"));
    free(built);
}

static void test_build_if_match_etag(void **state)
{
    struct crm_op op = {.method = "PATCH",
                        .path = "contacts(2)",
                        .body = "{}",
                        .flags = CRM_OP_UPDATE_ONLY,
                        .if_match = "W/\"12\"\r\nX-Evil: 1"};
    char *built = NULL;
    size_t len = 0;

    (void)state;
    assert_int_equal(
        crm_dataverse_batch_build(&op, 1, "/a/", "batch_x", &built, &len),
        CS_ERR_OK);
    /* the etag replaces "*"; a CR LF inside it cannot start a header */
    assert_non_null(strstr(built, "If-Match: W/\"12\"X-Evil: 1\r\n\r\n"));
    assert_null(strstr(built, "If-Match: *"));
    assert_null(strstr(built, "\r\nX-Evil"));
    free(built);
}

static const char GET_RESPONSE[] =
    "--b\r\nContent-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 200 OK\r\nContent-Type: application/json; "
    "odata.metadata=minimal; odata.streaming=true\r\n"
    "OData-Version: 4.0\r\n\r\n"
    "{\"value\":[{\"@odata.etag\":\"W/\\\"7\\\"\",\"contactid\":\"c1\"}]}"
    "\r\n--b\r\nContent-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\r\n"
    "{\"error\":{\"code\":\"0x80040217\",\"message\":\"contact With Id = "
    "x Does Not Exist\"}}\r\n--b\r\nContent-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 412 Precondition Failed\r\nContent-Type: "
    "application/json\r\n\r\n{\"error\":{\"code\":\"0x80060882\","
    "\"message\":\"The version of the existing record doesn't match\"}}"
    "\r\n--b\r\nContent-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\r\n"
    "{\"error\":{\"code\":\"0x80040217\",\"message\":\"gone\"}}\r\n"
    "--b--\r\n";

static void test_parse_get_and_if_match(void **state)
{
    struct crm_op ops[4];
    char err[256];

    (void)state;
    memset(ops, 0, sizeof(ops));
    ops[0] = (struct crm_op){.method = "GET", .path = "contacts?$select=x"};
    ops[1] = (struct crm_op){.method = "GET", .path = "contacts(1)"};
    ops[2] = (struct crm_op){.method = "PATCH",
                             .path = "contacts(2)",
                             .body = "{}",
                             .if_match = "W/\"3\""};
    ops[3] = (struct crm_op){.method = "PATCH",
                             .path = "contacts(3)",
                             .body = "{}",
                             .if_match = "W/\"3\""};
    assert_int_equal(crm_dataverse_batch_parse(
                         "multipart/mixed;boundary=b", GET_RESPONSE,
                         strlen(GET_RESPONSE), ops, 4, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(ops[0].result, CRM_OP_OK);
    assert_non_null(ops[0].response);
    assert_string_equal(
        json_string_value(json_object_get(
            json_array_get(json_object_get(ops[0].response, "value"), 0),
            "@odata.etag")),
        "W/\"7\"");
    assert_int_equal(ops[1].result, CRM_OP_NOT_FOUND);
    assert_null(ops[1].response);
    /* changed or deleted since read: read again, never dead-letter */
    assert_int_equal(ops[2].result, CRM_OP_RETRY);
    assert_int_equal(ops[2].status, 412);
    assert_int_equal(ops[3].result, CRM_OP_RETRY);
    json_decref(ops[0].response);
}

static void test_build_two_changesets_content_ids(void **state)
{
    struct crm_op ops[4];
    char *built = NULL;
    size_t len = 0;
    const char *cs1;
    const char *cs2;

    (void)state;
    memset(ops, 0, sizeof(ops));
    for (int i = 0; i < 4; i++) {
        ops[i].method = "POST";
        ops[i].path = "tasks";
        ops[i].body = "{}";
        ops[i].changeset = i < 2 ? 1 : 2;
    }
    assert_int_equal(crm_dataverse_batch_build(ops, 4, "/api/data/v9.2/",
                                               "batch_y", &built, &len),
                     CS_ERR_OK);
    cs1 = strstr(built, "boundary=\"changeset_");
    assert_non_null(cs1);
    cs2 = strstr(cs1 + 1, "boundary=\"changeset_");
    assert_non_null(cs2);
    assert_true(strncmp(cs1, cs2, 56) != 0); /* distinct boundaries */
    for (int id = 1; id <= 4; id++) {
        char want[32];
        snprintf(want, sizeof(want), "Content-ID: %d\r\n", id);
        assert_non_null(strstr(built, want));
    }
    free(built);
}

/* ------------------------------------------------------------ $batch reader */

static void test_parse_golden_01(void **state)
{
    char *golden = golden_or_skip("01-batch-no-changeset.response.http");
    const char *body = after_headers(golden);
    struct crm_op ops[4];
    char err[256];
    static const int want[] = {204, 204, 204, 200};

    (void)state;
    golden_ops(ops, 0);
    /* No Content-Type in the docs' response: the boundary is sniffed. */
    assert_int_equal(crm_dataverse_batch_parse(NULL, body, strlen(body), ops, 4,
                                               err, sizeof(err)),
                     CS_ERR_OK);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(ops[i].result, CRM_OP_OK);
        assert_int_equal(ops[i].status, want[i]);
    }
    /* the GET's answer is kept for the caller */
    assert_non_null(json_object_get(ops[3].response, "value"));
    json_decref(ops[3].response);
    /* Same with the boundary from the header. */
    golden_ops(ops, 0);
    assert_int_equal(
        crm_dataverse_batch_parse(
            "multipart/mixed; "
            "boundary=batchresponse_01346794-f2e2-4d45-8cc2-f97e09fe8916",
            body, strlen(body), ops, 4, err, sizeof(err)),
        CS_ERR_OK);
    for (int i = 0; i < 4; i++)
        assert_int_equal(ops[i].status, want[i]);
    json_decref(ops[3].response);
    free(golden);
}

static void test_parse_golden_02_changeset(void **state)
{
    char *golden = golden_or_skip("02-batch-changeset.response.http");
    const char *body = after_headers(golden);
    struct crm_op ops[4];
    char err[256];
    static const int want[] = {204, 204, 204, 200};

    (void)state;
    golden_ops(ops, 1);
    assert_int_equal(crm_dataverse_batch_parse(
                         "multipart/mixed; boundary=\"batchresponse_f27ef42d-"
                         "51b0-4685-bac9-f468f844de2f\"",
                         body, strlen(body), ops, 4, err, sizeof(err)),
                     CS_ERR_OK);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(ops[i].result, CRM_OP_OK);
        assert_int_equal(ops[i].status, want[i]);
    }
    json_decref(ops[3].response);
    free(golden);
}

static void three_task_ops(struct crm_op ops[3])
{
    memset(ops, 0, 3 * sizeof(ops[0]));
    for (int i = 0; i < 3; i++) {
        ops[i].method = "POST";
        ops[i].path = "tasks";
        ops[i].body = (char *)TASK_BODY[i];
    }
}

static void test_parse_golden_08_error_stop(void **state)
{
    char *golden = golden_or_skip("08-error-stop.response.http");
    const char *body = after_headers(golden);
    struct crm_op ops[3];
    char err[256];

    (void)state;
    three_task_ops(ops);
    assert_int_equal(crm_dataverse_batch_parse(NULL, body, strlen(body), ops, 3,
                                               err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(ops[0].result, CRM_OP_FAILED);
    assert_int_equal(ops[0].status, 400);
    assert_non_null(strstr(ops[0].error, "0x80044331"));
    assert_non_null(strstr(ops[0].error, "validation error"));
    /* Never answered (the batch stopped): retry, never dead-letter. */
    assert_int_equal(ops[1].result, CRM_OP_RETRY);
    assert_int_equal(ops[2].result, CRM_OP_RETRY);
    assert_int_equal(ops[1].status, 0);
    free(golden);
}

static void check_09(const char *body)
{
    struct crm_op ops[3];
    char err[256];

    three_task_ops(ops);
    assert_int_equal(crm_dataverse_batch_parse(NULL, body, strlen(body), ops, 3,
                                               err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(ops[0].result, CRM_OP_FAILED);
    assert_int_equal(ops[0].status, 400);
    assert_non_null(strstr(ops[0].error, "0x80044331"));
    assert_int_equal(ops[1].result, CRM_OP_OK);
    assert_int_equal(ops[1].status, 204);
    assert_int_equal(ops[2].result, CRM_OP_OK);
    assert_int_equal(ops[2].status, 204);
}

static void test_parse_golden_09_continue_lf_and_crlf(void **state)
{
    char *golden = golden_or_skip("09-error-continue.response.http");
    char *crlf;

    (void)state;
    check_09(after_headers(golden)); /* the docs' LF-only text */
    crlf = replace_all(after_headers(golden), "\n", "\r\n");
    check_09(crlf);
    free(crlf);
    free(golden);
}

static const char CS_FAIL_RESPONSE[] =
    "--batchresponse_1\r\n"
    "Content-Type: multipart/mixed; boundary=changesetresponse_2\r\n"
    "\r\n"
    "--changesetresponse_2\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "\r\n"
    "HTTP/1.1 400 Bad Request\r\n"
    "Content-Type: application/json; odata.metadata=minimal\r\n"
    "\r\n"
    "{\"error\":{\"code\":\"0x80040217\",\"message\":\"campaign With Id = 9 "
    "Does Not Exist\"}}\r\n"
    "--changesetresponse_2--\r\n"
    "--batchresponse_1\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "\r\n"
    "HTTP/1.1 204 No Content\r\n"
    "OData-Version: 4.0\r\n"
    "\r\n"
    "\r\n"
    "--batchresponse_1--\r\n";

static void test_parse_changeset_failure(void **state)
{
    struct crm_op ops[3];
    char err[256];

    (void)state;
    memset(ops, 0, sizeof(ops));
    for (int i = 0; i < 3; i++) {
        ops[i].method = "POST";
        ops[i].path = "tasks";
        ops[i].body = "{}";
        ops[i].changeset = i < 2 ? 5 : 0;
    }
    assert_int_equal(
        crm_dataverse_batch_parse("multipart/mixed; boundary=batchresponse_1",
                                  CS_FAIL_RESPONSE, strlen(CS_FAIL_RESPONSE),
                                  ops, 3, err, sizeof(err)),
        CS_ERR_OK);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ops[i].result, CRM_OP_FAILED);
        assert_int_equal(ops[i].status, 400);
        assert_non_null(strstr(ops[i].error, "0x80040217"));
        assert_non_null(strstr(ops[i].error, "Does Not Exist"));
    }
    assert_int_equal(ops[2].result, CRM_OP_OK);
    assert_int_equal(ops[2].status, 204);
}

static const char MIXED_RESPONSE[] =
    "--b\n"
    "Content-Type: multipart/mixed; boundary=\"cs\"\n"
    "\n"
    "--cs\n"
    "Content-Type: application/http\n"
    "Content-ID: 2\n"
    "\n"
    "HTTP/1.1 201 Created\n"
    "\n"
    "{}\n"
    "--cs\n"
    "Content-Type: application/http\n"
    "Content-ID: 1\n"
    "\n"
    "HTTP/1.1 204 No Content\n"
    "\n"
    "\n"
    "--cs--\n"
    "--b\n"
    "Content-Type: application/http\n"
    "\n"
    "HTTP/1.1 412 Precondition Failed\n"
    "\n"
    "{\"error\":{\"code\":\"0x80060892\",\"message\":\"A record with matching "
    "key values already exists.\"}}\n"
    "--b\n"
    "Content-Type: application/http\n"
    "\n"
    "HTTP/1.1 412 Precondition Failed\n"
    "\n"
    "{\"error\":{\"code\":\"0x80060882\",\"message\":\"version mismatch\"}}\n"
    "--b\n"
    "Content-Type: application/http\n"
    "\n"
    "HTTP/1.1 429 Too Many Requests\n"
    "Retry-After: 7\n"
    "\n"
    "{\"error\":{\"code\":\"0x80072322\",\"message\":\"Number of requests "
    "exceeded\"}}\n"
    "--b\n"
    "Content-Type: application/http\n"
    "\n"
    "HTTP/1.1 503 Service Unavailable\n"
    "\n"
    "\n"
    "--b--\n";

static void test_parse_results_mapping(void **state)
{
    struct crm_op ops[6];
    char err[256];

    (void)state;
    memset(ops, 0, sizeof(ops));
    for (int i = 0; i < 6; i++) {
        ops[i].method = "PATCH";
        ops[i].path = "x(1)";
        ops[i].body = "{}";
    }
    ops[0].changeset = ops[1].changeset = 1;
    ops[2].flags = CRM_OP_CREATE_ONLY;
    ops[3].flags = CRM_OP_UPDATE_ONLY;
    assert_int_equal(crm_dataverse_batch_parse(
                         "multipart/mixed;boundary=b", MIXED_RESPONSE,
                         strlen(MIXED_RESPONSE), ops, 6, err, sizeof(err)),
                     CS_ERR_OK);
    /* Content-ID maps change set answers, whatever their order. */
    assert_int_equal(ops[0].status, 204);
    assert_int_equal(ops[1].status, 201);
    assert_int_equal(ops[0].result, CRM_OP_OK);
    assert_int_equal(ops[1].result, CRM_OP_OK);
    assert_int_equal(ops[2].result, CRM_OP_EXISTS);
    assert_int_equal(ops[3].result, CRM_OP_FAILED);
    assert_non_null(strstr(ops[3].error, "version mismatch"));
    assert_int_equal(ops[4].result, CRM_OP_RETRY);
    assert_int_equal(ops[4].retry_after_ms, 7000);
    assert_int_equal(ops[5].result, CRM_OP_RETRY);
    assert_int_equal(ops[5].status, 503);
}

/* Found by fuzz_crm_batch: a huge per-part Retry-After overflowed the
 * milliseconds (signed overflow); it is capped at a day like http.c's, and
 * a negative one means none. */
static void test_parse_retry_after_bounded(void **state)
{
    static const char *const values[] = {"3333333333333333333", "-5"};
    static const long long want[] = {86400000LL, 0};
    char body[512];
    char err[256];
    struct crm_op op;

    (void)state;
    for (int i = 0; i < 2; i++) {
        snprintf(body, sizeof(body),
                 "--b\nContent-Type: application/http\n\n"
                 "HTTP/1.1 429 Too Many Requests\nRetry-After: %s\n\n"
                 "{}\n--b--\n",
                 values[i]);
        memset(&op, 0, sizeof(op));
        op.method = "PATCH";
        op.path = "x(1)";
        op.body = "{}";
        assert_int_equal(crm_dataverse_batch_parse("multipart/mixed;boundary=b",
                                                   body, strlen(body), &op, 1,
                                                   err, sizeof(err)),
                         CS_ERR_OK);
        assert_int_equal(op.result, CRM_OP_RETRY);
        assert_int_equal(op.retry_after_ms, want[i]);
    }
}

static void test_parse_garbage_is_protocol_error(void **state)
{
    struct crm_op ops[1];
    char err[256];
    const char *junk = "{\"error\":{\"code\":\"\",\"message\":\"bad\"}}";

    (void)state;
    memset(ops, 0, sizeof(ops));
    ops[0].method = "POST";
    ops[0].path = "tasks";
    assert_int_equal(crm_dataverse_batch_parse("application/json", junk,
                                               strlen(junk), ops, 1, err,
                                               sizeof(err)),
                     CS_ERR_CRM_PROTOCOL);
    assert_int_equal(ops[0].result, CRM_OP_PENDING);
}

/* --------------------------------------------- connector vs scripted server */

#define TOKEN1                                                                 \
    "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"access_token\":"         \
    "\"tok1\"}"
#define TOKEN2                                                                 \
    "{\"token_type\":\"Bearer\",\"expires_in\":\"3599\",\"access_token\":"     \
    "\"tok2\"}"
#define MP_HDR "Content-Type: multipart/mixed; boundary=batchresponse_z\r\n"
#define PART_204                                                               \
    "--batchresponse_z\r\nContent-Type: application/http\r\n"                  \
    "Content-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 204 No Content\r\n"     \
    "\r\n\r\n"
#define TWO_OK PART_204 PART_204 "--batchresponse_z--\r\n"
#define ONE_OK PART_204 "--batchresponse_z--\r\n"
#define CS_TWO_OK                                                              \
    "--batchresponse_z\r\nContent-Type: multipart/mixed; "                     \
    "boundary=csr\r\n\r\n--csr\r\nContent-Type: application/http\r\n"          \
    "Content-ID: 1\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\r\n--csr\r\n"        \
    "Content-Type: application/http\r\nContent-ID: 2\r\n\r\n"                  \
    "HTTP/1.1 204 No Content\r\n\r\n\r\n--csr--\r\n--batchresponse_z--\r\n"

struct conn_fixture {
    struct script_server ss;
    struct metrics *m;
    struct crm *crm;
    char base[64];
    char token_url[96];
};

/* Starts the scripted server (reply i held delays[i] ms, delays may be
 * NULL) and a connector with max_in_flight (0 = the default of crm_options,
 * one) and max_inline_wait_ms. */
static void fixture_start_ex(struct conn_fixture *fx,
                             const struct ss_response *script, size_t n,
                             const int *delays, int batch_size,
                             int max_in_flight, long max_inline_wait_ms)
{
    struct crm_options o = {
        .kind = "dataverse",
        .tenant_id = "t",
        .client_id = "app-id",
        .client_secret = "s3cr+t/=",
        .scope = NULL,
        .batch_size = batch_size,
        .max_in_flight = max_in_flight,
        .http = {.connect_timeout_ms = 2000,
                 .timeout_ms = 5000,
                 .max_retries = 2,
                 .backoff_base_ms = 5,
                 .backoff_max_ms = 20,
                 .max_inline_wait_ms = max_inline_wait_ms,
                 .tls_verify = true},
    };
    char err[256];

    assert_int_equal(ss_start_delayed(&fx->ss, script, n, delays), 0);
    snprintf(fx->base, sizeof(fx->base), "http://127.0.0.1:%d", fx->ss.port);
    snprintf(fx->token_url, sizeof(fx->token_url), "%s/token", fx->base);
    o.base_url = fx->base;
    o.token_url = fx->token_url;
    fx->m = metrics_new("test");
    fx->crm = crm_new(&o, fx->m, err, sizeof(err));
    assert_non_null(fx->crm);
}

static void fixture_start(struct conn_fixture *fx,
                          const struct ss_response *script, size_t n,
                          int batch_size)
{
    fixture_start_ex(fx, script, n, NULL, batch_size, 0, 500);
}

static void fixture_stop(struct conn_fixture *fx)
{
    crm_free(fx->crm);
    ss_stop(&fx->ss);
    metrics_free(fx->m);
}

/* Distinct records, so that chunks of them may be in flight together. */
static char *const OP_PATHS[] = {
    "campaignresponses(00000000-0000-0000-0000-000000000001)",
    "campaignresponses(00000000-0000-0000-0000-000000000002)",
    "campaignresponses(00000000-0000-0000-0000-000000000003)",
    "campaignresponses(00000000-0000-0000-0000-000000000004)",
    "campaignresponses(00000000-0000-0000-0000-000000000005)",
    "campaignresponses(00000000-0000-0000-0000-000000000006)",
};

static void simple_ops(struct crm_op *ops, size_t n)
{
    assert_true(n <= sizeof(OP_PATHS) / sizeof(OP_PATHS[0]));
    memset(ops, 0, n * sizeof(ops[0]));
    for (size_t i = 0; i < n; i++) {
        ops[i].method = "PATCH";
        ops[i].path = OP_PATHS[i];
        ops[i].body = "{\"subject\":\"open\"}";
        ops[i].flags = CRM_OP_CREATE_ONLY;
    }
}

static void test_token_cached_and_headers(void **state)
{
    static const struct ss_response script[] = {
        {200, "Content-Type: application/json\r\n", TOKEN1},
        {200, MP_HDR, TWO_OK},
        {200, MP_HDR, TWO_OK},
    };
    struct conn_fixture fx;
    struct crm_op ops[2];
    char err[256];
    char val[256];

    (void)state;
    fixture_start(&fx, script, 3, 100);
    for (int round = 0; round < 2; round++) {
        simple_ops(ops, 2);
        assert_int_equal(
            fx.crm->ops->execute(fx.crm->self, ops, 2, err, sizeof(err)),
            CS_ERR_OK);
        assert_int_equal(ops[0].result, CRM_OP_OK);
        assert_int_equal(ops[1].result, CRM_OP_OK);
    }
    assert_int_equal(ss_nreqs(&fx.ss), 3); /* one token for both batches */
    assert_string_equal(fx.ss.reqs[0].target, "/token");
    assert_non_null(
        strstr(fx.ss.reqs[0].body, "grant_type=client_credentials"));
    assert_non_null(strstr(fx.ss.reqs[0].body, "client_id=app-id"));
    assert_non_null(strstr(fx.ss.reqs[0].body, "client_secret=s3cr%2Bt%2F%3D"));
    assert_non_null(strstr(fx.ss.reqs[0].body, "scope=http%3A%2F%2F127.0.0.1"));
    assert_true(ss_req_header(&fx.ss, 0, "Content-Type", val, sizeof(val)));
    assert_string_equal(val, "application/x-www-form-urlencoded");
    for (size_t r = 1; r < 3; r++) {
        assert_string_equal(fx.ss.reqs[r].method, "POST");
        assert_string_equal(fx.ss.reqs[r].target, "/api/data/v9.2/$batch");
        assert_true(
            ss_req_header(&fx.ss, r, "Authorization", val, sizeof(val)));
        assert_string_equal(val, "Bearer tok1");
        assert_true(
            ss_req_header(&fx.ss, r, "OData-Version", val, sizeof(val)));
        assert_string_equal(val, "4.0");
        assert_true(
            ss_req_header(&fx.ss, r, "OData-MaxVersion", val, sizeof(val)));
        assert_true(
            ss_req_header(&fx.ss, r, "If-None-Match", val, sizeof(val)));
        assert_string_equal(val, "null");
        assert_true(ss_req_header(&fx.ss, r, "Accept", val, sizeof(val)));
        assert_string_equal(val, "application/json");
        assert_true(ss_req_header(&fx.ss, r, "Prefer", val, sizeof(val)));
        assert_string_equal(val, "odata.continue-on-error");
        assert_true(ss_req_header(&fx.ss, r, "Content-Type", val, sizeof(val)));
        assert_non_null(strstr(val, "multipart/mixed; boundary=\"batch_"));
        assert_non_null(strstr(fx.ss.reqs[r].body,
                               "PATCH /api/data/v9.2/campaignresponses("));
        assert_non_null(strstr(fx.ss.reqs[r].body, "If-None-Match: *\r\n"));
    }
    assert_true(metrics_counter_get(fx.m, "crmsync_crm_token_refreshes_total",
                                    NULL) == 1.0);
    assert_true(metrics_counter_get(fx.m, "crmsync_crm_operations_total",
                                    "result=\"ok\"") == 4.0);
    fixture_stop(&fx);
}

static void test_401_refreshes_token_once(void **state)
{
    static const struct ss_response script[] = {
        {200, NULL, TOKEN1},
        {401, "WWW-Authenticate: Bearer authorization_uri=x\r\n", NULL},
        {200, NULL, TOKEN2},
        {200, MP_HDR, ONE_OK},
    };
    struct conn_fixture fx;
    struct crm_op ops[1];
    char err[256];
    char val[256];

    (void)state;
    fixture_start(&fx, script, 4, 100);
    simple_ops(ops, 1);
    assert_int_equal(
        fx.crm->ops->execute(fx.crm->self, ops, 1, err, sizeof(err)),
        CS_ERR_OK);
    assert_int_equal(ops[0].result, CRM_OP_OK);
    assert_int_equal(ss_nreqs(&fx.ss), 4);
    assert_string_equal(fx.ss.reqs[2].target, "/token");
    assert_true(ss_req_header(&fx.ss, 3, "Authorization", val, sizeof(val)));
    assert_string_equal(val, "Bearer tok2");
    assert_true(metrics_counter_get(fx.m, "crmsync_crm_token_refreshes_total",
                                    NULL) == 2.0);
    fixture_stop(&fx);
}

static void test_401_twice_is_retry(void **state)
{
    static const struct ss_response script[] = {
        {200, NULL, TOKEN1}, {401, NULL, NULL},     {200, NULL, TOKEN2},
        {401, NULL, NULL},   {200, MP_HDR, ONE_OK},
    };
    struct conn_fixture fx;
    struct crm_op ops[1];
    char err[256];

    (void)state;
    fixture_start(&fx, script, 5, 100);
    simple_ops(ops, 1);
    assert_int_equal(
        fx.crm->ops->execute(fx.crm->self, ops, 1, err, sizeof(err)),
        CS_ERR_AUTH);
    assert_int_equal(ops[0].result, CRM_OP_RETRY);
    assert_int_equal(ss_nreqs(&fx.ss), 4); /* exactly one refresh-and-retry */
    fixture_stop(&fx);
}

static void test_chunking_keeps_changesets_and_skips_done(void **state)
{
    static const struct ss_response script[] = {
        {200, NULL, TOKEN1},
        {200, MP_HDR, ONE_OK},
        {200, MP_HDR, CS_TWO_OK},
        {200, MP_HDR, TWO_OK},
    };
    struct conn_fixture fx;
    struct crm_op ops[6];
    char err[256];

    (void)state;
    fixture_start(&fx, script, 4, 2);
    simple_ops(ops, 6);
    ops[1].changeset = ops[2].changeset = 3;
    ops[3].result = CRM_OP_OK; /* done earlier: never re-sent */
    ops[3].path = "done(1)";
    assert_int_equal(
        fx.crm->ops->execute(fx.crm->self, ops, 6, err, sizeof(err)),
        CS_ERR_OK);
    for (int i = 0; i < 6; i++)
        assert_int_equal(ops[i].result, CRM_OP_OK);
    assert_int_equal(ss_nreqs(&fx.ss), 4);
    /* [0] | changeset [1,2] | [4,5]: a change set is never split. */
    assert_null(strstr(fx.ss.reqs[1].body, "changeset_"));
    /* Content-IDs are per $batch request: 1 and 2 in the second one. */
    assert_non_null(strstr(fx.ss.reqs[2].body, "Content-ID: 1\r\n"));
    assert_non_null(strstr(fx.ss.reqs[2].body, "Content-ID: 2\r\n"));
    for (size_t r = 1; r < 4; r++)
        assert_null(strstr(fx.ss.reqs[r].body, "done(1)"));
    fixture_stop(&fx);
}

static void test_throttled_batch_is_retry(void **state)
{
    static const struct ss_response script[] = {
        {200, NULL, TOKEN1},
        {429, "Retry-After: 30\r\n", NULL},
        {200, MP_HDR, ONE_OK},
    };
    struct conn_fixture fx;
    struct crm_op ops[3];
    char err[256];

    (void)state;
    fixture_start(&fx, script, 3, 1);
    simple_ops(ops, 3);
    assert_int_equal(
        fx.crm->ops->execute(fx.crm->self, ops, 3, err, sizeof(err)),
        CS_ERR_HTTP_THROTTLED);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ops[i].result, CRM_OP_RETRY);
        assert_true(ops[i].retry_after_ms > 25000);
    }
    assert_int_equal(ss_nreqs(&fx.ss), 2); /* nothing sent after the 429 */
    assert_true(metrics_counter_get(fx.m, "crmsync_crm_operations_total",
                                    "result=\"retry\"") == 3.0);
    fixture_stop(&fx);
}

/* Most requests in [from, nreqs) the server had open at once: for each
 * arrival, how many of them had arrived and were not yet answered. */
static int max_overlap(struct script_server *ss, size_t from)
{
    int best = 0;

    for (size_t i = from; i < ss->nreqs; i++) {
        int open = 0;
        for (size_t j = from; j < ss->nreqs; j++)
            if (ss->reqs[j].at_ms <= ss->reqs[i].at_ms &&
                ss->reqs[i].at_ms < ss->reqs[j].replied_ms)
                open++;
        best = open > best ? open : best;
    }
    return best;
}

/* Runs execute on n PATCH ops and asserts every op ended OK. */
static void execute_all_ok(struct conn_fixture *fx, struct crm_op *ops,
                           size_t n)
{
    char err[256];

    simple_ops(ops, n);
    assert_int_equal(
        fx->crm->ops->execute(fx->crm->self, ops, n, err, sizeof(err)),
        CS_ERR_OK);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ops[i].result, CRM_OP_OK);
}

static void test_in_flight_chunks_overlap(void **state)
{
    static const struct ss_response script[] = {
        {200, NULL, TOKEN1},   {200, MP_HDR, ONE_OK}, {200, MP_HDR, ONE_OK},
        {200, MP_HDR, ONE_OK}, {200, MP_HDR, ONE_OK},
    };
    static const int delays[] = {0, 300, 300, 300, 300};
    struct conn_fixture fx;
    struct crm_op ops[4];
    long long t0;
    long long first_reply = 0;

    (void)state;
    fixture_start_ex(&fx, script, 5, delays, 1, 4, 500);
    t0 = ss_now_ms();
    execute_all_ok(&fx, ops, 4);
    assert_int_equal(ss_nreqs(&fx.ss), 5);
    /* All four $batch requests reached the server before any answer. */
    for (size_t r = 1; r < 5; r++)
        if (!first_reply || fx.ss.reqs[r].replied_ms < first_reply)
            first_reply = fx.ss.reqs[r].replied_ms;
    for (size_t r = 1; r < 5; r++)
        assert_true(fx.ss.reqs[r].at_ms < first_reply);
    assert_int_equal(max_overlap(&fx.ss, 1), 4);
    assert_true(ss_now_ms() - t0 < 4 * 300);
    /* Each op went exactly once, in its own request. */
    assert_true(metrics_counter_get(fx.m, "crmsync_crm_requests_total",
                                    "kind=\"batch\",status=\"200\"") == 4.0);
    assert_true(metrics_counter_get(fx.m, "crmsync_crm_operations_total",
                                    "result=\"ok\"") == 4.0);
    fixture_stop(&fx);
}

static void test_max_in_flight_1_is_sequential(void **state)
{
    static const struct ss_response script[] = {
        {200, NULL, TOKEN1},
        {200, MP_HDR, ONE_OK},
        {200, MP_HDR, ONE_OK},
        {200, MP_HDR, ONE_OK},
    };
    static const int delays[] = {0, 100, 100, 100};
    struct conn_fixture fx;
    struct crm_op ops[3];

    (void)state;
    fixture_start_ex(&fx, script, 4, delays, 1, 1, 500);
    execute_all_ok(&fx, ops, 3);
    assert_int_equal(ss_nreqs(&fx.ss), 4);
    for (size_t r = 2; r < 4; r++)
        assert_true(fx.ss.reqs[r].at_ms >= fx.ss.reqs[r - 1].replied_ms);
    assert_int_equal(max_overlap(&fx.ss, 1), 1);
    /* One kept-alive connection carries the three $batch requests. */
    assert_int_equal(fx.ss.reqs[1].conn, fx.ss.reqs[3].conn);
    fixture_stop(&fx);
}

static void test_429_holds_back_every_send(void **state)
{
    /* Two in flight: the first arrival is throttled for 1 s, the second
       fails with 503 100 ms later; its retry, the throttled one's retry and
       the two chunks not sent yet must all wait for Retry-After. */
    static const struct ss_response script[] = {
        {200, NULL, TOKEN1},   {429, "Retry-After: 1\r\n", NULL},
        {503, NULL, "busy"},   {200, MP_HDR, ONE_OK},
        {200, MP_HDR, ONE_OK}, {200, MP_HDR, ONE_OK},
        {200, MP_HDR, ONE_OK},
    };
    static const int delays[] = {0, 0, 100, 0, 0, 0, 0};
    struct conn_fixture fx;
    struct crm_op ops[4];
    long long gate_from;
    size_t later = 0;

    (void)state;
    fixture_start_ex(&fx, script, 7, delays, 1, 2, 2000);
    execute_all_ok(&fx, ops, 4);
    assert_int_equal(ss_nreqs(&fx.ss), 7);
    assert_int_equal(fx.ss.reqs[2].at_ms - fx.ss.reqs[1].at_ms < 100, true);
    gate_from = fx.ss.reqs[1].replied_ms;
    for (size_t r = 2; r < 7; r++) {
        if (fx.ss.reqs[r].at_ms <= gate_from)
            continue; /* was already on the wire */
        later++;
        assert_true(fx.ss.reqs[r].at_ms - gate_from >= 990);
    }
    assert_int_equal(later, 4);
    assert_true(
        metrics_counter_get(fx.m, "crmsync_crm_throttled_total", NULL) == 1.0);
    assert_true(metrics_counter_get(fx.m, "crmsync_crm_retries_total", NULL) ==
                2.0);
    fixture_stop(&fx);
}

static void test_dop_hint_caps_in_flight(void **state)
{
    static const struct ss_response script[] = {
        {200, NULL, TOKEN1},   {200, MP_HDR "x-ms-dop-hint: 2\r\n", ONE_OK},
        {200, MP_HDR, ONE_OK}, {200, MP_HDR, ONE_OK},
        {200, MP_HDR, ONE_OK}, {200, MP_HDR, ONE_OK},
        {200, MP_HDR, ONE_OK},
    };
    static const int delays[] = {0, 0, 150, 150, 150, 150, 150};
    struct conn_fixture fx;
    struct crm_op ops[5];

    (void)state;
    fixture_start_ex(&fx, script, 7, delays, 1, 4, 500);
    execute_all_ok(&fx, ops, 1); /* learns the hint */
    execute_all_ok(&fx, ops, 5);
    assert_int_equal(ss_nreqs(&fx.ss), 7);
    assert_int_equal(max_overlap(&fx.ss, 2), 2);
    fixture_stop(&fx);
}

static void test_same_record_keeps_order(void **state)
{
    /* ops 0 and 2 write the same record (unique mode: the first create-only
       write must win), op 1 another: 0 and 1 go together, 2 only after 0
       was answered. */
    static const struct ss_response script[] = {
        {200, NULL, TOKEN1},
        {200, MP_HDR, ONE_OK},
        {200, MP_HDR, ONE_OK},
        {200, MP_HDR, ONE_OK},
    };
    static const int delays[] = {0, 200, 200, 200};
    struct conn_fixture fx;
    struct crm_op ops[3];
    char err[256];
    size_t first = 0;
    size_t second = 0;

    (void)state;
    fixture_start_ex(&fx, script, 4, delays, 1, 4, 500);
    simple_ops(ops, 3);
    ops[2].path = OP_PATHS[0];
    assert_int_equal(
        fx.crm->ops->execute(fx.crm->self, ops, 3, err, sizeof(err)),
        CS_ERR_OK);
    assert_int_equal(ss_nreqs(&fx.ss), 4);
    for (size_t r = 1; r < 4; r++)
        if (strstr(fx.ss.reqs[r].body, OP_PATHS[0]))
            *(first ? &second : &first) = r;
    assert_true(first > 0 && second > first);
    assert_true(fx.ss.reqs[second].at_ms >= fx.ss.reqs[first].replied_ms);
    assert_int_equal(max_overlap(&fx.ss, 1), 2);
    fixture_stop(&fx);
}

static void test_get_json_follows_next_link(void **state)
{
    static const struct ss_response script[] = {
        {200, NULL, TOKEN1},
        {200, "Content-Type: application/json\r\n", "placeholder"},
        {200, "Content-Type: application/json\r\n", "{\"value\":[{\"id\":3}]}"},
    };
    struct conn_fixture fx;
    char page1[256];
    json_t *out = NULL;
    char err[256];

    (void)state;
    fixture_start(&fx, script, 3, 100);
    snprintf(page1, sizeof(page1),
             "{\"value\":[{\"id\":1},{\"id\":2}],\"@odata.nextLink\":"
             "\"%s/api/data/v9.2/contacts?$select=x&$skiptoken=abc\"}",
             fx.base);
    pthread_mutex_lock(&fx.ss.mu);
    fx.ss.script[1].body = page1;
    pthread_mutex_unlock(&fx.ss.mu);
    assert_int_equal(fx.crm->ops->get_json(fx.crm->self, "contacts?$select=x",
                                           true, &out, err, sizeof(err)),
                     CS_ERR_OK);
    assert_non_null(out);
    assert_int_equal(json_array_size(json_object_get(out, "value")), 3);
    assert_null(json_object_get(out, "@odata.nextLink"));
    assert_string_equal(fx.ss.reqs[1].target,
                        "/api/data/v9.2/contacts?$select=x");
    assert_string_equal(fx.ss.reqs[2].target,
                        "/api/data/v9.2/contacts?$select=x&$skiptoken=abc");
    json_decref(out);
    fixture_stop(&fx);
}

static void test_get_json_404_and_ping(void **state)
{
    static const struct ss_response script[] = {
        {200, NULL, TOKEN1},
        {404, NULL,
         "{\"error\":{\"code\":\"0x8006088a\",\"message\":\"Resource not "
         "found for the segment 'Account'\"}}"},
        {200, NULL, "{\"UserId\":\"u\"}"},
    };
    struct conn_fixture fx;
    json_t *out = NULL;
    char err[256];

    (void)state;
    fixture_start(&fx, script, 3, 100);
    assert_int_equal(fx.crm->ops->get_json(fx.crm->self, "Account", false, &out,
                                           err, sizeof(err)),
                     CS_ERR_HTTP_CLIENT);
    assert_null(out);
    assert_non_null(strstr(err, "Resource not found"));
    assert_null(strstr(err, "tok1"));
    assert_true(fx.crm->ops->ping(fx.crm->self));
    assert_string_equal(fx.ss.reqs[2].target, "/api/data/v9.2/WhoAmI");
    fixture_stop(&fx);
}

static void test_crm_new_rejects_bad_options(void **state)
{
    struct crm_options o = {.kind = "salesforce",
                            .base_url = "https://x",
                            .token_url = "https://t",
                            .client_id = "c",
                            .client_secret = "topsecret",
                            .batch_size = 10};
    char err[256];

    (void)state;
    assert_null(crm_new(&o, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "salesforce"));
    o.kind = "dataverse";
    o.batch_size = 1001;
    assert_null(crm_new(&o, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "batch_size"));
    assert_null(strstr(err, "topsecret"));
    o.batch_size = 10;
    o.max_in_flight = 17;
    assert_null(crm_new(&o, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "max_in_flight"));
    crm_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_golden_01),
        cmocka_unit_test(test_build_golden_02_changeset),
        cmocka_unit_test(test_build_conditional_headers),
        cmocka_unit_test(test_build_if_match_etag),
        cmocka_unit_test(test_parse_get_and_if_match),
        cmocka_unit_test(test_build_two_changesets_content_ids),
        cmocka_unit_test(test_parse_golden_01),
        cmocka_unit_test(test_parse_golden_02_changeset),
        cmocka_unit_test(test_parse_golden_08_error_stop),
        cmocka_unit_test(test_parse_golden_09_continue_lf_and_crlf),
        cmocka_unit_test(test_parse_changeset_failure),
        cmocka_unit_test(test_parse_results_mapping),
        cmocka_unit_test(test_parse_retry_after_bounded),
        cmocka_unit_test(test_parse_garbage_is_protocol_error),
        cmocka_unit_test(test_token_cached_and_headers),
        cmocka_unit_test(test_401_refreshes_token_once),
        cmocka_unit_test(test_401_twice_is_retry),
        cmocka_unit_test(test_chunking_keeps_changesets_and_skips_done),
        cmocka_unit_test(test_throttled_batch_is_retry),
        cmocka_unit_test(test_in_flight_chunks_overlap),
        cmocka_unit_test(test_max_in_flight_1_is_sequential),
        cmocka_unit_test(test_429_holds_back_every_send),
        cmocka_unit_test(test_dop_hint_caps_in_flight),
        cmocka_unit_test(test_same_record_keeps_order),
        cmocka_unit_test(test_get_json_follows_next_link),
        cmocka_unit_test(test_get_json_404_and_ping),
        cmocka_unit_test(test_crm_new_rejects_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
