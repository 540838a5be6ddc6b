/*
 * test_esp_optimizely - the Optimizely connector (esp.h) against a scripted
 * HTTP server: lazy login and session reuse, one re-login and resend after
 * the invalid-session fault, the batch-size fault, 5xx without a fault and
 * network errors (retryable), faults (not retryable) and the password never
 * reaching errstr.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/esp.h"
#include "common/metrics.h"
#include "script_server.h"

#define PASSWORD "p4ss<&>w0rd"

#define XML_HDR "Content-Type: text/xml;charset=utf-8\r\n"
#define ENV_OPEN                                                               \
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope "             \
    "xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" "             \
    "xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" "                          \
    "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>"
#define ENV_CLOSE "</soapenv:Body></soapenv:Envelope>"
#define SOAPENC   "xmlns:soapenc=\"http://schemas.xmlsoap.org/soap/encoding/\""
#define LOGIN_OK(sid)                                                          \
    ENV_OPEN "<ns1:loginResponse "                                             \
             "xmlns:ns1=\"urn:api.broadmail.de/soap11/RpcSession\">"           \
             "<loginReturn xsi:type=\"soapenc:string\" " SOAPENC ">" sid       \
             "</loginReturn></ns1:loginResponse>" ENV_CLOSE
#define CLEAR_OK                                                               \
    ENV_OPEN                                                                   \
    "<ns1:clearResponse "                                                      \
    "xmlns:ns1=\"urn:api.broadmail.de/soap11/RpcRecipient\"/>" ENV_CLOSE
#define LOGOUT_OK                                                              \
    ENV_OPEN                                                                   \
    "<ns1:logoutResponse "                                                     \
    "xmlns:ns1=\"urn:api.broadmail.de/soap11/RpcSession\"/>" ENV_CLOSE
/* int[2] {0, 3} as multiRefs, the array listed after its items. */
#define ADD_OK_0_3                                                             \
    ENV_OPEN                                                                   \
    "<ns1:addAll3Response "                                                    \
    "xmlns:ns1=\"urn:api.broadmail.de/soap11/RpcRecipient\">"                  \
    "<addAll3Return href=\"#id0\"/></ns1:addAll3Response>"                     \
    "<multiRef id=\"id2\" soapenc:root=\"0\" "                                 \
    "xsi:type=\"xsd:int\" " SOAPENC                                            \
    ">3</multiRef><multiRef id=\"id1\" soapenc:root=\"0\" "                    \
    "xsi:type=\"xsd:int\" " SOAPENC ">0</multiRef>"                            \
    "<multiRef id=\"id0\" soapenc:root=\"0\" "                                 \
    "soapenc:arrayType=\"xsd:int[2]\" xsi:type=\"soapenc:Array\" " SOAPENC     \
    "><item href=\"#id1\"/><item href=\"#id2\"/></multiRef>" ENV_CLOSE
#define FAULT(text)                                                            \
    ENV_OPEN "<soapenv:Fault><faultcode>soapenv:Server.userException"          \
             "</faultcode><faultstring>" text "</faultstring><detail>"         \
             "<ns1:hostname xmlns:ns1=\"http://xml.apache.org/axis/\">api"     \
             "</ns1:hostname></detail></soapenv:Fault>" ENV_CLOSE
#define FAULT_SESSION(sid)                                                     \
    FAULT("optivo.core.util.DontLogMeException: broadmail.api.soap11.impl."    \
          "InvalidWebserviceSessionException: Invalid sessionId: " sid)

struct fx {
    struct script_server ss;
    struct metrics *m;
    struct esp *esp;
    char base[96];
};

static void fx_start(struct fx *f, const struct ss_response *script, size_t n,
                     int max_retries)
{
    struct esp_options o = {
        .kind = "optimizely",
        .mandator_id = "4711",
        .user = "api-user",
        .password = PASSWORD,
        .http = {.connect_timeout_ms = 2000,
                 .timeout_ms = 5000,
                 .max_retries = max_retries,
                 .backoff_base_ms = 5,
                 .backoff_max_ms = 20,
                 .max_inline_wait_ms = 500,
                 .tls_verify = true},
    };
    char err[256];

    assert_int_equal(ss_start(&f->ss, script, n), 0);
    snprintf(f->base, sizeof(f->base), "http://127.0.0.1:%d/soap11/",
             f->ss.port);
    o.base_url = f->base;
    f->m = metrics_new("test");
    f->esp = esp_new(&o, f->m, err, sizeof(err));
    assert_non_null(f->esp);
    assert_string_equal(f->esp->ops->name, "optimizely");
}

static void fx_stop(struct fx *f)
{
    esp_free(f->esp);
    ss_stop(&f->ss);
    metrics_free(f->m);
}

static const char *const NAMES[] = {"firstname", "opt-in-id"};
static const char *const V1[] = {"Ann", "c1"};
static const char *const V2[] = {"Bob", "c1"};
static const struct esp_recipient RS[] = {
    {"ann@x.com", "ann@x.com", V1},
    {"bob@x.com", "bob@x.com", V2},
};

static enum cs_err add_two(struct fx *f, int codes[2], char *err,
                           size_t err_size)
{
    return f->esp->ops->add_all(f->esp->self, "120199092218", "0", NAMES, 2, RS,
                                2, codes, err, err_size);
}

static double requests(struct fx *f, const char *method, const char *result)
{
    char labels[128];

    snprintf(labels, sizeof(labels), "method=\"%s\",result=\"%s\"", method,
             result);
    return metrics_counter_get(f->m, "crmsync_esp_requests_total", labels);
}

static void test_lazy_login_and_session_reuse(void **state)
{
    static const struct ss_response script[] = {
        {200, XML_HDR, LOGIN_OK("33c4296db6972a38")},
        {200, XML_HDR, CLEAR_OK},
        {200, XML_HDR, ADD_OK_0_3},
        {200, XML_HDR, ADD_OK_0_3},
        {200, XML_HDR, LOGOUT_OK},
    };
    struct fx f;
    int codes[2] = {-1, -1};
    char err[256];
    char val[128];

    (void)state;
    fx_start(&f, script, 5, 2);
    assert_int_equal(ss_nreqs(&f.ss), 0); /* esp_new does not log in */
    assert_int_equal(
        f.esp->ops->clear(f.esp->self, "120199092218", err, sizeof(err)),
        CS_ERR_OK);
    assert_int_equal(add_two(&f, codes, err, sizeof(err)), CS_ERR_OK);
    assert_int_equal(codes[0], 0);
    assert_int_equal(codes[1], 3);
    codes[0] = codes[1] = -1;
    assert_int_equal(add_two(&f, codes, err, sizeof(err)), CS_ERR_OK);
    assert_int_equal(codes[1], 3);
    assert_int_equal(f.esp->ops->logout(f.esp->self), CS_ERR_OK);
    assert_int_equal(f.esp->ops->logout(f.esp->self), CS_ERR_OK); /* no-op */
    assert_int_equal(ss_nreqs(&f.ss), 5); /* one login for everything */

    assert_string_equal(f.ss.reqs[0].target, "/soap11/RpcSession");
    assert_non_null(strstr(f.ss.reqs[0].body,
                           "<impl:login><mandatorId>4711</mandatorId>"
                           "<user>api-user</user><password>p4ss&lt;&amp;&gt;"
                           "w0rd</password></impl:login>"));
    assert_true(ss_req_header(&f.ss, 0, "SOAPAction", val, sizeof(val)));
    assert_string_equal(val, "\"\"");
    assert_true(ss_req_header(&f.ss, 0, "Content-Type", val, sizeof(val)));
    assert_string_equal(val, "text/xml;charset=UTF-8");
    assert_string_equal(f.ss.reqs[1].target, "/soap11/RpcRecipient");
    assert_non_null(strstr(f.ss.reqs[1].body,
                           "<impl:clear><recipientListId>120199092218"
                           "</recipientListId><sessionId>33c4296db6972a38"
                           "</sessionId></impl:clear>"));
    for (size_t i = 2; i < 4; i++) {
        assert_string_equal(f.ss.reqs[i].target, "/soap11/RpcRecipient");
        assert_non_null(strstr(f.ss.reqs[i].body, "<impl:addAll3>"));
        assert_non_null(strstr(f.ss.reqs[i].body,
                               "<sessionId>33c4296db6972a38</sessionId>"));
        assert_non_null(strstr(f.ss.reqs[i].body,
                               "<element><element>Bob</element><element>c1"
                               "</element></element>"));
    }
    assert_string_equal(f.ss.reqs[4].target, "/soap11/RpcSession");
    assert_non_null(strstr(f.ss.reqs[4].body,
                           "<impl:logout><sessionId>33c4296db6972a38"
                           "</sessionId></impl:logout>"));
    assert_true(requests(&f, "login", "ok") == 1.0);
    assert_true(requests(&f, "addAll3", "ok") == 2.0);
    assert_true(metrics_counter_get(f.m, "crmsync_esp_relogins_total", NULL) ==
                0.0);
    {
        char *text = metrics_render(f.m, NULL);
        assert_non_null(strstr(text, "crmsync_esp_request_duration_seconds_"
                                     "count{worker=\"test\",method="
                                     "\"addAll3\"} 2"));
        free(text);
    }
    fx_stop(&f);
}

static void test_relogin_after_invalid_session(void **state)
{
    static const struct ss_response script[] = {
        {200, XML_HDR, LOGIN_OK("aaaaaaaaaaaaaaaa")},
        {500, XML_HDR, FAULT_SESSION("aaaaaaaaaaaaaaaa")},
        {200, XML_HDR, LOGIN_OK("bbbbbbbbbbbbbbbb")},
        {200, XML_HDR, ADD_OK_0_3},
        {200, XML_HDR, ADD_OK_0_3},
    };
    struct fx f;
    int codes[2] = {-1, -1};
    char err[256];

    (void)state;
    fx_start(&f, script, 5, 2);
    assert_int_equal(add_two(&f, codes, err, sizeof(err)), CS_ERR_OK);
    assert_int_equal(codes[0], 0);
    assert_int_equal(codes[1], 3);
    assert_int_equal(ss_nreqs(&f.ss), 4); /* the fault is not retried */
    assert_string_equal(f.ss.reqs[2].target, "/soap11/RpcSession");
    assert_non_null(strstr(f.ss.reqs[1].body, "aaaaaaaaaaaaaaaa"));
    assert_non_null(
        strstr(f.ss.reqs[3].body, "<sessionId>bbbbbbbbbbbbbbbb</sessionId>"));
    /* The new session is kept. */
    assert_int_equal(add_two(&f, codes, err, sizeof(err)), CS_ERR_OK);
    assert_int_equal(ss_nreqs(&f.ss), 5);
    assert_non_null(strstr(f.ss.reqs[4].body, "bbbbbbbbbbbbbbbb"));
    assert_true(metrics_counter_get(f.m, "crmsync_esp_relogins_total", NULL) ==
                1.0);
    assert_true(requests(&f, "addAll3", "invalid_session") == 1.0);
    fx_stop(&f);
}

static void test_invalid_session_twice_is_fault(void **state)
{
    static const struct ss_response script[] = {
        {200, XML_HDR, LOGIN_OK("aaaaaaaaaaaaaaaa")},
        {500, XML_HDR, FAULT_SESSION("aaaaaaaaaaaaaaaa")},
        {200, XML_HDR, LOGIN_OK("bbbbbbbbbbbbbbbb")},
        {500, XML_HDR, FAULT_SESSION("bbbbbbbbbbbbbbbb")},
    };
    struct fx f;
    char err[256];

    (void)state;
    fx_start(&f, script, 4, 2);
    assert_int_equal(
        f.esp->ops->clear(f.esp->self, "120199092218", err, sizeof(err)),
        CS_ERR_ESP_FAULT);
    assert_false(cs_err_retryable(CS_ERR_ESP_FAULT));
    assert_int_equal(ss_nreqs(&f.ss), 4); /* resent once, not more */
    assert_non_null(strstr(err, "InvalidWebserviceSessionException"));
    assert_null(strstr(err, "bbbbbbbbbbbbbbbb")); /* session id redacted */
    assert_true(metrics_counter_get(f.m, "crmsync_esp_relogins_total", NULL) ==
                1.0);
    fx_stop(&f);
}

static void test_batch_too_large(void **state)
{
    static const struct ss_response script[] = {
        {200, XML_HDR, LOGIN_OK("aaaaaaaaaaaaaaaa")},
        {500, XML_HDR,
         FAULT("broadmail.api.soap11.impl.WebserviceImplException: "
               "[aaaaaaaaaaaaaaaa,4711,api-user] too many recipients: 2 > 1")},
        {200, XML_HDR, ADD_OK_0_3},
    };
    struct fx f;
    int codes[2] = {-1, -1};
    char err[256];

    (void)state;
    fx_start(&f, script, 3, 2);
    assert_int_equal(add_two(&f, codes, err, sizeof(err)),
                     CS_ERR_ESP_BATCH_TOO_LARGE);
    assert_false(cs_err_retryable(CS_ERR_ESP_BATCH_TOO_LARGE));
    assert_int_equal(codes[0], -1);       /* untouched */
    assert_int_equal(ss_nreqs(&f.ss), 2); /* not retried */
    assert_non_null(strstr(err, "too many recipients"));
    assert_null(strstr(err, "api-user"));
    assert_null(strstr(err, "aaaaaaaaaaaaaaaa"));
    assert_true(requests(&f, "addAll3", "batch_too_large") == 1.0);
    /* The session survives: the halves go out without a new login. */
    assert_int_equal(add_two(&f, codes, err, sizeof(err)), CS_ERR_OK);
    assert_int_equal(ss_nreqs(&f.ss), 3);
    fx_stop(&f);
}

static void test_500_without_fault_is_retried_then_unavailable(void **state)
{
    static const struct ss_response script[] = {
        {200, XML_HDR, LOGIN_OK("aaaaaaaaaaaaaaaa")},
        {500, "Content-Type: text/html\r\n", "<html>oops</html>"},
        {502, NULL, "bad gateway"},
        {503, NULL, NULL},
        {500, NULL, "oops"},
        {200, XML_HDR, CLEAR_OK},
    };
    struct fx f;
    char err[256];

    (void)state;
    fx_start(&f, script, 6, 2);
    assert_int_equal(
        f.esp->ops->clear(f.esp->self, "120199092218", err, sizeof(err)),
        CS_ERR_ESP_UNAVAILABLE);
    assert_true(cs_err_retryable(CS_ERR_ESP_UNAVAILABLE));
    assert_int_equal(ss_nreqs(&f.ss), 4); /* login + 1 try + 2 retries */
    assert_non_null(strstr(err, "HTTP 503"));
    assert_true(requests(&f, "clear", "http_error") == 3.0);
    /* A retry that succeeds: 500 then OK. */
    assert_int_equal(
        f.esp->ops->clear(f.esp->self, "120199092218", err, sizeof(err)),
        CS_ERR_OK);
    assert_int_equal(ss_nreqs(&f.ss), 6);
    assert_true(requests(&f, "clear", "ok") == 1.0);
    fx_stop(&f);
}

static void test_http_4xx_and_bad_answers_are_faults(void **state)
{
    static const struct ss_response script[] = {
        {200, XML_HDR, LOGIN_OK("aaaaaaaaaaaaaaaa")},
        {404, NULL, "no such service"},
        {200, XML_HDR, CLEAR_OK}, /* addAll3 answered without int[] */
    };
    struct fx f;
    int codes[2];
    char err[256];

    (void)state;
    fx_start(&f, script, 3, 2);
    assert_int_equal(
        f.esp->ops->clear(f.esp->self, "120199092218", err, sizeof(err)),
        CS_ERR_ESP_FAULT);
    assert_non_null(strstr(err, "HTTP 404"));
    assert_int_equal(add_two(&f, codes, err, sizeof(err)), CS_ERR_ESP_FAULT);
    assert_non_null(strstr(err, "addAll3"));
    assert_int_equal(ss_nreqs(&f.ss), 3);
    /* Bad arguments never reach the wire. */
    assert_int_equal(
        f.esp->ops->clear(f.esp->self, "12; DROP", err, sizeof(err)),
        CS_ERR_INVALID_ARG);
    assert_int_equal(f.esp->ops->add_all(f.esp->self, "1", "0", NAMES, 2, RS, 0,
                                         codes, err, sizeof(err)),
                     CS_ERR_INVALID_ARG);
    assert_int_equal(ss_nreqs(&f.ss), 3);
    fx_stop(&f);
}

static void test_password_never_in_errstr(void **state)
{
    static const struct ss_response script[] = {
        {500, XML_HDR,
         FAULT("broadmail.api.soap11.impl.WebserviceImplException: "
               "[null,4711,api-user] Invalid credentials for password "
               "p4ss&lt;&amp;&gt;w0rd.")},
        {500, XML_HDR,
         FAULT("broadmail.api.soap11.impl.WebserviceImplException: "
               "Invalid credentials.")},
    };
    struct fx f;
    char err[512];

    (void)state;
    fx_start(&f, script, 2, 2);
    assert_int_equal(
        f.esp->ops->clear(f.esp->self, "120199092218", err, sizeof(err)),
        CS_ERR_ESP_FAULT);
    assert_null(strstr(err, PASSWORD));
    assert_null(strstr(err, "p4ss"));
    assert_null(strstr(err, "api-user"));
    assert_non_null(strstr(err, "login: "));
    assert_non_null(strstr(err, "Invalid credentials"));
    assert_int_equal(ss_nreqs(&f.ss), 1); /* a fault is not retried */
    /* ping = a login that works */
    assert_false(f.esp->ops->ping(f.esp->self));
    assert_true(requests(&f, "login", "fault") == 2.0);
    fx_stop(&f);
}

static void test_ping_and_network_error(void **state)
{
    static const struct ss_response script[] = {
        {200, XML_HDR, LOGIN_OK("aaaaaaaaaaaaaaaa")},
    };
    struct esp_options o = {
        .mandator_id = "4711",
        .user = "u",
        .password = PASSWORD,
        .http = {.connect_timeout_ms = 500,
                 .timeout_ms = 1000,
                 .max_retries = 1,
                 .backoff_base_ms = 1,
                 .backoff_max_ms = 2,
                 .max_inline_wait_ms = 100,
                 .tls_verify = true},
    };
    struct fx f;
    struct esp *dead;
    char base[96];
    char err[256];
    int port;

    (void)state;
    fx_start(&f, script, 1, 2);
    assert_true(f.esp->ops->ping(f.esp->self));
    assert_int_equal(ss_nreqs(&f.ss), 1);
    port = f.ss.port;
    fx_stop(&f); /* nothing listens on port any more */

    snprintf(base, sizeof(base), "http://127.0.0.1:%d/soap11", port);
    o.base_url = base;
    dead = esp_new(&o, NULL, err, sizeof(err));
    assert_non_null(dead);
    assert_int_equal(dead->ops->clear(dead->self, "1", err, sizeof(err)),
                     CS_ERR_ESP_UNAVAILABLE);
    assert_null(strstr(err, PASSWORD));
    assert_false(dead->ops->ping(dead->self));
    esp_free(dead);
}

static void test_esp_new_rejects_bad_options(void **state)
{
    struct esp_options o = {
        .kind = "optimizely",
        .base_url = "https://api.campaign.episerver.net/soap11",
        .mandator_id = "4711",
        .user = "u",
        .password = PASSWORD,
        .http = {.tls_verify = true},
    };
    char err[256];
    struct esp *e;

    (void)state;
    o.kind = "mailworx";
    assert_null(esp_new(&o, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "unknown ESP kind"));
    o.kind = NULL;
    o.mandator_id = "abc";
    assert_null(esp_new(&o, NULL, err, sizeof(err)));
    o.mandator_id = "4711";
    o.password = "";
    assert_null(esp_new(&o, NULL, err, sizeof(err)));
    assert_null(strstr(err, PASSWORD));
    o.password = PASSWORD;
    e = esp_new(&o, NULL, err, sizeof(err));
    assert_non_null(e);
    esp_free(e);
    esp_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lazy_login_and_session_reuse),
        cmocka_unit_test(test_relogin_after_invalid_session),
        cmocka_unit_test(test_invalid_session_twice_is_fault),
        cmocka_unit_test(test_batch_too_large),
        cmocka_unit_test(test_500_without_fault_is_retried_then_unavailable),
        cmocka_unit_test(test_http_4xx_and_bad_answers_are_faults),
        cmocka_unit_test(test_password_never_in_errstr),
        cmocka_unit_test(test_ping_and_network_error),
        cmocka_unit_test(test_esp_new_rejects_bad_options),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
