/*
 * test_http - retries, backoff, the 429 gate and keep-alive of the libcurl
 * client and of http_multi (concurrent requests, shared gate) against a
 * scripted HTTP server on 127.0.0.1:0.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/http.h"
#include "common/http_multi.h"
#include "common/metrics.h"
#include "script_server.h"

static struct http_opts fast_opts(void)
{
    struct http_opts o = {
        .connect_timeout_ms = 2000,
        .timeout_ms = 5000,
        .max_retries = 3,
        .backoff_base_ms = 10,
        .backoff_max_ms = 50,
        .max_inline_wait_ms = 2000,
        .tls_verify = true,
        .ca_file = NULL,
        .user_agent = "crmsync-test",
    };
    return o;
}

static void url_of(const struct script_server *ss, const char *path, char *out,
                   size_t out_size)
{
    snprintf(out, out_size, "http://127.0.0.1:%d%s", ss->port, path);
}

static void test_retry_503_then_200(void **state)
{
    static const struct ss_response script[] = {
        {503, NULL, "busy"},
        {200, "Content-Type: application/json\r\n", "{\"ok\":true}"},
    };
    struct script_server ss;
    struct http_opts o = fast_opts();
    struct metrics *m = metrics_new("test");
    struct http_client *c;
    struct http_response resp;
    char err[256];
    char url[128];

    (void)state;
    assert_int_equal(ss_start(&ss, script, 2), 0);
    c = http_client_new(&o, m, err, sizeof(err));
    assert_non_null(c);
    url_of(&ss, "/x", url, sizeof(url));
    assert_int_equal(http_request(c, "GET", url, NULL, 0, NULL, 0, "get", &resp,
                                  err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.body, "{\"ok\":true}");
    assert_string_equal(resp.content_type, "application/json");
    assert_int_equal(ss_nreqs(&ss), 2);
    assert_true(metrics_counter_get(m, "crmsync_crm_retries_total", NULL) ==
                1.0);
    assert_true(metrics_counter_get(m, "crmsync_crm_requests_total",
                                    "kind=\"get\",status=\"503\"") == 1.0);
    assert_true(metrics_counter_get(m, "crmsync_crm_requests_total",
                                    "kind=\"get\",status=\"200\"") == 1.0);
    http_response_free(&resp);
    http_client_free(c);
    ss_stop(&ss);
    metrics_free(m);
}

static void test_retries_exhausted_returns_status(void **state)
{
    static const struct ss_response script[] = {
        {503, NULL, "a"},
        {502, NULL, "b"},
        {504, NULL, "c"},
        {200, NULL, "never"},
    };
    struct script_server ss;
    struct http_opts o = fast_opts();
    struct http_client *c;
    struct http_response resp;
    char err[256];
    char url[128];

    (void)state;
    o.max_retries = 2;
    assert_int_equal(ss_start(&ss, script, 4), 0);
    c = http_client_new(&o, NULL, err, sizeof(err));
    assert_non_null(c);
    url_of(&ss, "/x", url, sizeof(url));
    assert_int_equal(http_request(c, "GET", url, NULL, 0, NULL, 0, "get", &resp,
                                  err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(resp.status, 504);
    assert_int_equal(ss_nreqs(&ss), 3);
    http_response_free(&resp);
    http_client_free(c);
    ss_stop(&ss);
}

static void test_4xx_not_retried(void **state)
{
    static const struct ss_response script[] = {
        {404, NULL, "{\"error\":{\"code\":\"0x1\",\"message\":\"nope\"}}"},
        {200, NULL, "never"},
    };
    struct script_server ss;
    struct http_opts o = fast_opts();
    struct http_client *c;
    struct http_response resp;
    char err[256];
    char url[128];

    (void)state;
    assert_int_equal(ss_start(&ss, script, 2), 0);
    c = http_client_new(&o, NULL, err, sizeof(err));
    url_of(&ss, "/x", url, sizeof(url));
    assert_int_equal(http_request(c, "GET", url, NULL, 0, NULL, 0, "get", &resp,
                                  err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(resp.status, 404);
    assert_int_equal(ss_nreqs(&ss), 1);
    http_response_free(&resp);
    http_client_free(c);
    ss_stop(&ss);
}

static void test_429_retry_after_is_honoured(void **state)
{
    static const struct ss_response script[] = {
        {429, "Retry-After: 1\r\n", "slow down"},
        {200, NULL, "ok"},
    };
    struct script_server ss;
    struct http_opts o = fast_opts();
    struct metrics *m = metrics_new("test");
    struct http_client *c;
    struct http_response resp;
    char err[256];
    char url[128];

    (void)state;
    assert_int_equal(ss_start(&ss, script, 2), 0);
    c = http_client_new(&o, m, err, sizeof(err));
    url_of(&ss, "/x", url, sizeof(url));
    assert_int_equal(http_request(c, "POST", url, NULL, 0, "{}", 2, "batch",
                                  &resp, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(resp.status, 200);
    assert_int_equal(ss_nreqs(&ss), 2);
    /* The second request may not arrive before Retry-After elapsed. */
    assert_true(ss.reqs[1].at_ms - ss.reqs[0].at_ms >= 1000);
    assert_true(metrics_counter_get(m, "crmsync_crm_throttled_total", NULL) ==
                1.0);
    http_response_free(&resp);
    http_client_free(c);
    ss_stop(&ss);
    metrics_free(m);
}

static void test_429_without_retry_after_waits_2_pow_attempt(void **state)
{
    static const struct ss_response script[] = {
        {429, NULL, "slow down"},
        {200, NULL, "ok"},
    };
    struct script_server ss;
    struct http_opts o = fast_opts();
    struct http_client *c;
    struct http_response resp;
    char err[256];
    char url[128];

    (void)state;
    assert_int_equal(ss_start(&ss, script, 2), 0);
    c = http_client_new(&o, NULL, err, sizeof(err));
    url_of(&ss, "/x", url, sizeof(url));
    assert_int_equal(http_request(c, "GET", url, NULL, 0, NULL, 0, "get", &resp,
                                  err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(resp.status, 200);
    assert_int_equal(ss_nreqs(&ss), 2);
    /* First retry: 2^0 s, as Microsoft's sample does. */
    assert_true(ss.reqs[1].at_ms - ss.reqs[0].at_ms >= 1000);
    http_response_free(&resp);
    http_client_free(c);
    ss_stop(&ss);
}

static void test_long_retry_after_returns_throttled(void **state)
{
    static const struct ss_response script[] = {
        {429, "Retry-After: 30\r\n", "slow down"},
        {200, NULL, "never"},
    };
    struct script_server ss;
    struct http_opts o = fast_opts();
    struct http_client *c;
    struct http_response resp;
    char err[256];
    char url[128];
    long long t0 = http_now_ms();

    (void)state;
    assert_int_equal(ss_start(&ss, script, 2), 0);
    c = http_client_new(&o, NULL, err, sizeof(err));
    url_of(&ss, "/x", url, sizeof(url));
    assert_int_equal(http_request(c, "GET", url, NULL, 0, NULL, 0, "get", &resp,
                                  err, sizeof(err)),
                     CS_ERR_HTTP_THROTTLED);
    assert_true(resp.retry_after_ms > 25000 && resp.retry_after_ms <= 30000);
    assert_true(http_gate_until_ms(c) > http_now_ms() + 25000);
    http_response_free(&resp);
    /* Any further request of this client is gated without being sent. */
    assert_int_equal(http_request(c, "GET", url, NULL, 0, NULL, 0, "get", &resp,
                                  err, sizeof(err)),
                     CS_ERR_HTTP_THROTTLED);
    assert_true(resp.retry_after_ms > 25000);
    http_response_free(&resp);
    assert_int_equal(ss_nreqs(&ss), 1);
    assert_true(http_now_ms() - t0 < 1500); /* never slept 30 s inline */
    http_client_free(c);
    ss_stop(&ss);
}

static void test_connection_refused_is_network_error(void **state)
{
    struct http_opts o = fast_opts();
    struct metrics *m = metrics_new("test");
    struct http_client *c;
    struct http_response resp;
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    char err[256];
    char url[128];

    (void)state;
    /* A port that was just free: bind, read it, close. */
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", ntohs(sa.sin_port));
    o.max_retries = 2;
    c = http_client_new(&o, m, err, sizeof(err));
    assert_int_equal(http_request(c, "GET", url, NULL, 0, NULL, 0, "get", &resp,
                                  err, sizeof(err)),
                     CS_ERR_HTTP_NETWORK);
    assert_int_equal(resp.status, 0);
    assert_true(metrics_counter_get(m, "crmsync_crm_requests_total",
                                    "kind=\"get\",status=\"network\"") == 3.0);
    assert_true(metrics_counter_get(m, "crmsync_crm_retries_total", NULL) ==
                2.0);
    http_response_free(&resp);
    http_client_free(c);
    metrics_free(m);
}

static void test_keep_alive_reuses_connection(void **state)
{
    static const struct ss_response script[] = {
        {200, NULL, "1"}, {200, NULL, "2"}, {204, NULL, NULL},
        {200, NULL, "4"}, {200, NULL, "5"},
    };
    static const char *methods[] = {"GET", "POST", "PATCH", "DELETE", "GET"};
    struct script_server ss;
    struct http_opts o = fast_opts();
    struct http_client *c;
    char err[256];
    char url[128];

    (void)state;
    assert_int_equal(ss_start(&ss, script, 5), 0);
    c = http_client_new(&o, NULL, err, sizeof(err));
    url_of(&ss, "/r", url, sizeof(url));
    for (int i = 0; i < 5; i++) {
        struct http_response resp;
        const char *body = i == 0 || i == 3 || i == 4 ? NULL : "{\"a\":1}";
        assert_int_equal(http_request(c, methods[i], url, NULL, 0, body,
                                      body ? 7 : 0, "get", &resp, err,
                                      sizeof(err)),
                         CS_ERR_OK);
        assert_true(resp.status == 200 || resp.status == 204);
        http_response_free(&resp);
    }
    assert_int_equal(ss_nreqs(&ss), 5);
    assert_int_equal(ss_accepts(&ss), 1);
    for (int i = 0; i < 5; i++) {
        assert_string_equal(ss.reqs[i].method, methods[i]);
        assert_int_equal(ss.reqs[i].conn, 1);
    }
    assert_string_equal(ss.reqs[1].body, "{\"a\":1}");
    http_client_free(c);
    ss_stop(&ss);
}

static void test_headers_and_body_sent(void **state)
{
    static const struct ss_response script[] = {{200, NULL, "ok"}};
    struct http_header hdrs[] = {{"OData-Version", "4.0"},
                                 {"Content-Type", "application/json"}};
    struct script_server ss;
    struct http_opts o = fast_opts();
    struct http_client *c;
    struct http_response resp;
    char err[256];
    char url[128];
    char val[128];

    (void)state;
    assert_int_equal(ss_start(&ss, script, 1), 0);
    c = http_client_new(&o, NULL, err, sizeof(err));
    url_of(&ss, "/p?q=1", url, sizeof(url));
    assert_int_equal(http_request(c, "PATCH", url, hdrs, 2, "{\"x\":\"y\"}", 9,
                                  "patch", &resp, err, sizeof(err)),
                     CS_ERR_OK);
    assert_string_equal(ss.reqs[0].method, "PATCH");
    assert_string_equal(ss.reqs[0].target, "/p?q=1");
    assert_string_equal(ss.reqs[0].body, "{\"x\":\"y\"}");
    assert_true(ss_req_header(&ss, 0, "OData-Version", val, sizeof(val)));
    assert_string_equal(val, "4.0");
    assert_true(ss_req_header(&ss, 0, "User-Agent", val, sizeof(val)));
    assert_string_equal(val, "crmsync-test");
    assert_false(ss_req_header(&ss, 0, "Expect", val, sizeof(val)));
    http_response_free(&resp);
    http_client_free(c);
    ss_stop(&ss);
}

static void test_multi_concurrent_retry_and_long_gate(void **state)
{
    /* Three slots: one request meets a 503 and is retried, all three end
       200 after being on the wire together; then a 429 with a long
       Retry-After ends a queued request as THROTTLED without sending it. */
    static const struct ss_response script[] = {
        {503, NULL, "busy"},
        {200, NULL, "a"},
        {200, NULL, "b"},
        {200, NULL, "c"},
        {429, "Retry-After: 30\r\n", NULL},
    };
    static const int delays[] = {0, 150, 150, 150, 0};
    struct script_server ss;
    struct http_opts o = fast_opts();
    struct metrics *m = metrics_new("test");
    struct http_client *c;
    struct http_multi *hm;
    struct http_multi_req reqs[4];
    struct http_multi_req *done;
    char err[256];
    char url[128];
    int finished = 0;

    (void)state;
    assert_int_equal(ss_start_delayed(&ss, script, 5, delays), 0);
    c = http_client_new(&o, m, err, sizeof(err));
    assert_non_null(c);
    hm = http_multi_new(c, 3, err, sizeof(err));
    assert_non_null(hm);
    assert_int_equal(http_multi_capacity(hm), 3);
    url_of(&ss, "/m", url, sizeof(url));
    memset(reqs, 0, sizeof(reqs));
    for (int i = 0; i < 4; i++) {
        reqs[i].method = "POST";
        reqs[i].url = url;
        reqs[i].body = "x";
        reqs[i].body_len = 1;
        reqs[i].metric_kind = "batch";
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(http_multi_add(hm, &reqs[i], err, sizeof(err)),
                         CS_ERR_OK);
    assert_int_equal(http_multi_add(hm, &reqs[3], err, sizeof(err)),
                     CS_ERR_INVALID_ARG);
    assert_int_equal(http_multi_outstanding(hm), 3);
    while ((done = http_multi_wait(hm)) != NULL) {
        assert_int_equal(done->rc, CS_ERR_OK);
        assert_int_equal(done->resp.status, 200);
        assert_non_null(done->resp.body);
        http_response_free(&done->resp);
        finished++;
    }
    assert_int_equal(finished, 3);
    assert_int_equal(ss_nreqs(&ss), 4);
    /* The three first sends were all on the wire before any answer. */
    assert_true(ss.reqs[2].at_ms < ss.reqs[1].replied_ms);
    assert_true(ss.reqs[3].at_ms < ss.reqs[1].replied_ms);
    assert_true(metrics_counter_get(m, "crmsync_crm_retries_total", NULL) ==
                1.0);
    /* 429 (Retry-After 30 s > max_inline_wait_ms): the next one is not
       sent at all. */
    assert_int_equal(http_multi_add(hm, &reqs[0], err, sizeof(err)), CS_ERR_OK);
    done = http_multi_wait(hm);
    assert_ptr_equal(done, &reqs[0]);
    assert_int_equal(done->rc, CS_ERR_HTTP_THROTTLED); /* as http_request */
    assert_int_equal(ss_nreqs(&ss), 5);
    http_response_free(&done->resp);
    assert_int_equal(http_multi_add(hm, &reqs[1], err, sizeof(err)), CS_ERR_OK);
    done = http_multi_wait(hm);
    assert_ptr_equal(done, &reqs[1]);
    assert_int_equal(done->rc, CS_ERR_HTTP_THROTTLED);
    assert_true(done->resp.retry_after_ms > 25000);
    http_response_free(&done->resp);
    assert_null(http_multi_wait(hm));
    assert_int_equal(ss_nreqs(&ss), 5);
    http_multi_free(hm);
    http_client_free(c);
    ss_stop(&ss);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_503_then_200),
        cmocka_unit_test(test_retries_exhausted_returns_status),
        cmocka_unit_test(test_4xx_not_retried),
        cmocka_unit_test(test_429_retry_after_is_honoured),
        cmocka_unit_test(test_429_without_retry_after_waits_2_pow_attempt),
        cmocka_unit_test(test_long_retry_after_returns_throttled),
        cmocka_unit_test(test_connection_refused_is_network_error),
        cmocka_unit_test(test_keep_alive_reuses_connection),
        cmocka_unit_test(test_headers_and_body_sent),
        cmocka_unit_test(test_multi_concurrent_retry_and_long_gate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
