/*
 * test_esp_sendmail - the Optimizely connector's send_mail (esp.h,
 * MailingWebservice.sendMail) against a scripted HTTP server: the request
 * body (named parts, sessionId last, every value escaped), the multiRef int
 * answer mapped onto enum esp_send_code, the not-found -> add2 -> resend
 * flow, one re-login after the invalid-session fault, and the fault /
 * transport error mapping shared with the other calls. One end-to-end case
 * runs the connector against tests/emulators/optimizely_emulator.py (a
 * python3 child process on a free port; skipped without python3).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/esp.h"
#include "common/http.h"
#include "common/metrics.h"
#include "script_server.h"

#define PASSWORD "s3cr3t-pw"
#define SID_A    "aaaaaaaaaaaaaaaa"
#define SID_B    "bbbbbbbbbbbbbbbb"

#define XML_HDR "Content-Type: text/xml;charset=utf-8\r\n"
#define ENV_OPEN                                                               \
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope "             \
    "xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" "             \
    "xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" "                          \
    "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>"
#define ENV_CLOSE "</soapenv:Body></soapenv:Envelope>"
#define SOAPENC   "xmlns:soapenc=\"http://schemas.xmlsoap.org/soap/encoding/\""
#define ENCSTYLE                                                               \
    "soapenv:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\""
#define LOGIN_OK(sid)                                                          \
    ENV_OPEN "<ns1:loginResponse " ENCSTYLE " "                                \
             "xmlns:ns1=\"urn:api.broadmail.de/soap11/RpcSession\">"           \
             "<loginReturn xsi:type=\"soapenc:string\" " SOAPENC ">" sid       \
             "</loginReturn></ns1:loginResponse>" ENV_CLOSE
/* An int answer the way Axis sends it (recorded for add2 and getCount):
   the return part is an href to a multiRef after the response element. */
#define INT_RESP(svc, op, n)                                                   \
    ENV_OPEN "<ns1:" op "Response " ENCSTYLE " "                               \
             "xmlns:ns1=\"urn:api.broadmail.de/soap11/" svc "\">"              \
             "<" op "Return href=\"#id0\"/></ns1:" op "Response>"              \
             "<multiRef id=\"id0\" soapenc:root=\"0\" " ENCSTYLE               \
             " xsi:type=\"xsd:int\" " SOAPENC ">" #n "</multiRef>" ENV_CLOSE
#define SEND(n) INT_RESP("RpcMailing", "sendMail", n)
#define ADD2(n) INT_RESP("RpcRecipient", "add2", n)
#define FAULT(text)                                                            \
    ENV_OPEN "<soapenv:Fault><faultcode>soapenv:Server.userException"          \
             "</faultcode><faultstring>" text "</faultstring><detail>"         \
             "<ns1:hostname xmlns:ns1=\"http://xml.apache.org/axis/\">api"     \
             "</ns1:hostname></detail></soapenv:Fault>" ENV_CLOSE
#define FAULT_SESSION(sid)                                                     \
    FAULT("optivo.core.util.DontLogMeException: broadmail.api.soap11.impl."    \
          "InvalidWebserviceSessionException: Invalid sessionId: " sid)

#define REQ_HEAD(svc)                                                          \
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><env:Envelope "                 \
    "xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" "                          \
    "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" "                 \
    "xmlns:impl=\"urn:api.broadmail.de/soap11/" svc "\" "                      \
    "xmlns:env=\"http://schemas.xmlsoap.org/soap/envelope/\"><env:Body>"

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
    assert_non_null(f->esp->ops->send_mail);
}

static void fx_stop(struct fx *f)
{
    esp_free(f->esp);
    ss_stop(&f->ss);
    metrics_free(f->m);
}

static enum cs_err send_one(struct fx *f, const char *email, int *code,
                            char *err, size_t err_size)
{
    return f->esp->ops->send_mail(f->esp->self, "1001", "2001", "r-17", email,
                                  code, err, err_size);
}

static double requests(struct fx *f, const char *method, const char *result)
{
    char labels[128];

    snprintf(labels, sizeof(labels), "method=\"%s\",result=\"%s\"", method,
             result);
    return metrics_counter_get(f->m, "crmsync_esp_requests_total", labels);
}

static double relogins(struct fx *f)
{
    return metrics_counter_get(f->m, "crmsync_esp_relogins_total", NULL);
}

static void test_build_send_mail(void **state)
{
    char *got = NULL;

    (void)state;
    assert_int_equal(esp_optimizely_build_send_mail("33c4296db6972a38", "1001",
                                                    "2001", "r-17", &got),
                     CS_ERR_OK);
    assert_string_equal(
        got, REQ_HEAD("RpcMailing") "<impl:sendMail><mailingId>1001</mailingId>"
                                    "<recipientListId>2001</recipientListId>"
                                    "<recipientId>r-17</recipientId>"
                                    "<sessionId>33c4296db6972a38</sessionId>"
                                    "</impl:sendMail></env:Body>"
                                    "</env:Envelope>");
    free(got);

    /* Every value is escaped, the session id too. */
    assert_int_equal(esp_optimizely_build_send_mail("s<1>", "1&2", "3\"4",
                                                    "a<&>\"'b@x.com", &got),
                     CS_ERR_OK);
    assert_non_null(strstr(got, "<mailingId>1&amp;2</mailingId>"
                                "<recipientListId>3&quot;4</recipientListId>"
                                "<recipientId>a&lt;&amp;&gt;&quot;&apos;"
                                "b@x.com</recipientId>"
                                "<sessionId>s&lt;1&gt;</sessionId>"));
    assert_null(strstr(got, "a<&>"));
    free(got);
}

static void test_send_codes_and_request(void **state)
{
    static const struct ss_response script[] = {
        {200, XML_HDR, LOGIN_OK(SID_A)},
        {200, XML_HDR, SEND(0)},
        {200, XML_HDR, SEND(1)},
        {200, XML_HDR, SEND(2)},
        {200, XML_HDR, SEND(4)},
        {200, XML_HDR, SEND(5)},
        {200, XML_HDR, SEND(6)},
        {200, XML_HDR, SEND(9)},
        {200, XML_HDR, SEND(-1)},
        /* an inline (non-multiRef) int is read as well */
        {200, XML_HDR,
         ENV_OPEN "<ns1:sendMailResponse "
                  "xmlns:ns1=\"urn:api.broadmail.de/soap11/RpcMailing\">"
                  "<sendMailReturn xsi:type=\"xsd:int\">2</sendMailReturn>"
                  "</ns1:sendMailResponse>" ENV_CLOSE},
    };
    static const int want[] = {
        ESP_SEND_SPOOLED,      ESP_SEND_BLACKLISTED,
        ESP_SEND_UNSUBSCRIBED, ESP_SEND_LIST_INVALID,
        ESP_SEND_TARGET_GROUP, ESP_SEND_BOUNCE_OVERFLOWED,
        ESP_SEND_OTHER,        ESP_SEND_OTHER,
        ESP_SEND_UNSUBSCRIBED,
    };
    struct fx f;
    char err[256];
    char val[64];

    (void)state;
    fx_start(&f, script, 10, 2);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        int code = -1;

        assert_int_equal(send_one(&f, "r17@x.com", &code, err, sizeof(err)),
                         CS_ERR_OK);
        assert_int_equal(code, want[i]);
    }
    assert_int_equal(ss_nreqs(&f.ss), 10); /* one login, never add2 */
    assert_string_equal(f.ss.reqs[0].target, "/soap11/RpcSession");
    assert_string_equal(f.ss.reqs[1].target, "/soap11/RpcMailing");
    assert_string_equal(f.ss.reqs[1].body,
                        REQ_HEAD("RpcMailing") "<impl:sendMail><mailingId>1001"
                                               "</mailingId><recipientListId>"
                                               "2001</recipientListId>"
                                               "<recipientId>r-17</"
                                               "recipientId><sessionId>" SID_A
                                               "</sessionId></impl:sendMail>"
                                               "</env:Body></env:Envelope>");
    assert_true(ss_req_header(&f.ss, 1, "SOAPAction", val, sizeof(val)));
    assert_string_equal(val, "\"\"");
    assert_true(requests(&f, "sendMail", "ok") == 9.0);
    assert_true(requests(&f, "add2", "ok") == 0.0);
    {
        char *text = metrics_render(f.m, NULL);

        assert_non_null(strstr(text, "crmsync_esp_request_duration_seconds_"
                                     "count{worker=\"test\",method="
                                     "\"sendMail\"} 9"));
        free(text);
    }
    fx_stop(&f);
}

static void test_not_found_adds_then_resends(void **state)
{
    static const struct ss_response script[] = {
        {200, XML_HDR, LOGIN_OK(SID_A)},
        {200, XML_HDR, SEND(3)},
        {200, XML_HDR, ADD2(0)},
        {200, XML_HDR, SEND(0)},
        /* second call: add2 refuses (blacklisted), the resend's answer wins */
        {200, XML_HDR, SEND(3)},
        {200, XML_HDR, ADD2(3)},
        {200, XML_HDR, SEND(1)},
        /* third call: no address, so no add2 */
        {200, XML_HDR, SEND(3)},
    };
    struct fx f;
    int code = -1;
    char err[256];

    (void)state;
    fx_start(&f, script, 8, 2);
    assert_int_equal(send_one(&f, "new<&>@x.com", &code, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(code, ESP_SEND_SPOOLED);
    assert_int_equal(ss_nreqs(&f.ss), 4);
    assert_string_equal(f.ss.reqs[2].target, "/soap11/RpcRecipient");
    assert_string_equal(
        f.ss.reqs[2].body,
        REQ_HEAD("RpcRecipient") "<impl:add2><recipientListId>2001"
                                 "</recipientListId><optinProcessId>0"
                                 "</optinProcessId><recipientId>r-17"
                                 "</recipientId><address>new&lt;&amp;&gt;@x."
                                 "com</address><attributeNames>"
                                 "</attributeNames><attributeValues>"
                                 "</attributeValues><sessionId>" SID_A
                                 "</sessionId></impl:add2></env:Body>"
                                 "</env:Envelope>");
    assert_string_equal(f.ss.reqs[3].target, "/soap11/RpcMailing");
    assert_string_equal(f.ss.reqs[3].body, f.ss.reqs[1].body);

    code = -1;
    assert_int_equal(send_one(&f, "black@x.com", &code, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(code, ESP_SEND_BLACKLISTED);
    assert_int_equal(ss_nreqs(&f.ss), 7);

    code = -1;
    assert_int_equal(send_one(&f, NULL, &code, err, sizeof(err)), CS_ERR_OK);
    assert_int_equal(code, ESP_SEND_NOT_FOUND);
    assert_int_equal(ss_nreqs(&f.ss), 8);
    assert_true(requests(&f, "sendMail", "ok") == 5.0);
    assert_true(requests(&f, "add2", "ok") == 2.0);
    assert_true(requests(&f, "login", "ok") == 1.0);
    fx_stop(&f);
}

static void test_relogin_after_invalid_session(void **state)
{
    static const struct ss_response script[] = {
        {200, XML_HDR, LOGIN_OK(SID_A)},
        {500, XML_HDR, FAULT_SESSION(SID_A)},
        {200, XML_HDR, LOGIN_OK(SID_B)},
        {200, XML_HDR, SEND(3)},
        /* the session expires between sendMail and add2 */
        {500, XML_HDR, FAULT_SESSION(SID_B)},
        {200, XML_HDR, LOGIN_OK("cccccccccccccccc")},
        {200, XML_HDR, ADD2(0)},
        {200, XML_HDR, SEND(0)},
    };
    struct fx f;
    int code = -1;
    char err[256];

    (void)state;
    fx_start(&f, script, 8, 2);
    assert_int_equal(send_one(&f, "r17@x.com", &code, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(code, ESP_SEND_SPOOLED);
    assert_int_equal(ss_nreqs(&f.ss), 8);
    assert_non_null(strstr(f.ss.reqs[1].body, "<sessionId>" SID_A));
    assert_string_equal(f.ss.reqs[2].target, "/soap11/RpcSession");
    assert_non_null(strstr(f.ss.reqs[3].body, "<sessionId>" SID_B));
    assert_string_equal(f.ss.reqs[4].target, "/soap11/RpcRecipient");
    assert_string_equal(f.ss.reqs[6].target, "/soap11/RpcRecipient");
    assert_non_null(strstr(f.ss.reqs[6].body, "<impl:add2>"));
    assert_non_null(
        strstr(f.ss.reqs[7].body, "<sessionId>cccccccccccccccc</sessionId>"));
    assert_true(relogins(&f) == 2.0);
    assert_true(requests(&f, "sendMail", "invalid_session") == 1.0);
    assert_true(requests(&f, "add2", "invalid_session") == 1.0);
    fx_stop(&f);
}

static void test_invalid_session_twice_is_fault(void **state)
{
    static const struct ss_response script[] = {
        {200, XML_HDR, LOGIN_OK(SID_A)},
        {500, XML_HDR, FAULT_SESSION(SID_A)},
        {200, XML_HDR, LOGIN_OK(SID_B)},
        {500, XML_HDR, FAULT_SESSION(SID_B)},
    };
    struct fx f;
    int code = -1;
    char err[256];

    (void)state;
    fx_start(&f, script, 4, 2);
    assert_int_equal(send_one(&f, "r17@x.com", &code, err, sizeof(err)),
                     CS_ERR_ESP_FAULT);
    assert_int_equal(code, -1); /* untouched */
    assert_int_equal(ss_nreqs(&f.ss), 4);
    assert_non_null(strstr(err, "sendMail: "));
    assert_non_null(strstr(err, "InvalidWebserviceSessionException"));
    assert_null(strstr(err, SID_B));
    assert_true(relogins(&f) == 1.0);
    fx_stop(&f);
}

static void test_faults_and_transport_errors(void **state)
{
    static const struct ss_response script[] = {
        {200, XML_HDR, LOGIN_OK(SID_A)},
        /* unknown mailing: a fault, not retried */
        {500, XML_HDR,
         FAULT("broadmail.api.soap11.impl.WebserviceImplException: "
               "[" SID_A ",4711,api-user] Mailing does not exist for call: "
               "mailingId='1001'")},
        /* 503 without a fault twice: retried, then unavailable */
        {503, NULL, "busy"},
        {503, NULL, "busy"},
        /* a fault of the add2 step is the call's error */
        {200, XML_HDR, SEND(3)},
        {500, XML_HDR,
         FAULT("broadmail.api.soap11.impl.WebserviceImplException: "
               "[" SID_A ",4711,api-user] Recipient list does not exist")},
        /* an answer of the wrong shape */
        {200, XML_HDR,
         ENV_OPEN
         "<ns1:sendMailResponse "
         "xmlns:ns1=\"urn:api.broadmail.de/soap11/RpcMailing\"/>" ENV_CLOSE},
        /* HTTP 404 without a fault */
        {404, NULL, "no such service"},
    };
    struct fx f;
    int code = -1;
    char err[256];

    (void)state;
    fx_start(&f, script, 8, 1);
    assert_int_equal(send_one(&f, "r17@x.com", &code, err, sizeof(err)),
                     CS_ERR_ESP_FAULT);
    assert_false(cs_err_retryable(CS_ERR_ESP_FAULT));
    assert_non_null(strstr(err, "sendMail: "));
    assert_non_null(strstr(err, "Mailing does not exist"));
    assert_null(strstr(err, SID_A));
    assert_null(strstr(err, "api-user"));
    assert_int_equal(ss_nreqs(&f.ss), 2);
    assert_true(requests(&f, "sendMail", "fault") == 1.0);

    assert_int_equal(send_one(&f, "r17@x.com", &code, err, sizeof(err)),
                     CS_ERR_ESP_UNAVAILABLE);
    assert_true(cs_err_retryable(CS_ERR_ESP_UNAVAILABLE));
    assert_non_null(strstr(err, "HTTP 503"));
    assert_int_equal(ss_nreqs(&f.ss), 4);
    assert_true(requests(&f, "sendMail", "http_error") == 2.0);

    assert_int_equal(send_one(&f, "r17@x.com", &code, err, sizeof(err)),
                     CS_ERR_ESP_FAULT);
    assert_non_null(strstr(err, "add2: "));
    assert_non_null(strstr(err, "Recipient list does not exist"));
    assert_int_equal(ss_nreqs(&f.ss), 6); /* no resend after the fault */
    assert_true(requests(&f, "add2", "fault") == 1.0);

    assert_int_equal(send_one(&f, "r17@x.com", &code, err, sizeof(err)),
                     CS_ERR_ESP_FAULT);
    assert_non_null(strstr(err, "sendMail: answer is not an int"));

    assert_int_equal(send_one(&f, "r17@x.com", &code, err, sizeof(err)),
                     CS_ERR_ESP_FAULT);
    assert_non_null(strstr(err, "HTTP 404"));
    assert_int_equal(code, -1); /* never written on an error */
    assert_int_equal(ss_nreqs(&f.ss), 8);

    /* Bad arguments never reach the wire. */
    assert_int_equal(f.esp->ops->send_mail(f.esp->self, "10x", "2001", "r",
                                           NULL, &code, err, sizeof(err)),
                     CS_ERR_INVALID_ARG);
    assert_int_equal(f.esp->ops->send_mail(f.esp->self, "1001", "", "r", NULL,
                                           &code, err, sizeof(err)),
                     CS_ERR_INVALID_ARG);
    assert_int_equal(f.esp->ops->send_mail(f.esp->self, "1001", "2001", "",
                                           NULL, &code, err, sizeof(err)),
                     CS_ERR_INVALID_ARG);
    assert_int_equal(f.esp->ops->send_mail(f.esp->self, "1001", "2001", "r",
                                           NULL, NULL, err, sizeof(err)),
                     CS_ERR_INVALID_ARG);
    assert_int_equal(ss_nreqs(&f.ss), 8);
    fx_stop(&f);
}

/* ---- end to end against the emulator --------------------------------- */

struct emu {
    pid_t pid; /* 0 = not running (python3 missing: the test skips) */
    int port;
    char dir[64];
    char portfile[96];
    struct http_client *http; /* for /_admin */
};

/* Child side of emu_setup: output to /dev/null (so a test runner's pipe is
 * never held open), killed when the test process dies, then exec. Only
 * async-signal-safe calls. */
static void emu_exec(char *const argv[])
{
    int fd = open("/dev/null", O_RDWR);

    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (fd > 2)
            close(fd);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    execvp(argv[0], argv);
    _exit(127);
}

/* cmocka setup: starts the emulator on a free port (--port 0). */
static int emu_setup(void **state)
{
    struct emu *e = calloc(1, sizeof(*e));
    char *argv[] = {
        "python3",
        CRMSYNC_SOURCE_DIR "/tests/emulators/optimizely_emulator.py",
        "--port",
        "0",
        "--port-file",
        NULL, /* [5] */
        "--quiet",
        "--mandator",
        "4711",
        "--user",
        "api-user",
        "--password",
        PASSWORD,
        "--mailings",
        "1001:2001",
        NULL};
    struct http_opts ho = {
        .connect_timeout_ms = 2000, .timeout_ms = 5000, .tls_verify = true};
    pid_t parent = getpid();
    char err[256];
    int st;

    if (!e)
        return -1;
    *state = e;
    snprintf(e->dir, sizeof(e->dir), "/tmp/test_esp_sendmail.XXXXXX");
    if (!mkdtemp(e->dir))
        return -1;
    snprintf(e->portfile, sizeof(e->portfile), "%s/port", e->dir);
    argv[5] = e->portfile;
    e->pid = fork();
    if (e->pid < 0)
        return -1;
    if (e->pid == 0) {
        if (getppid() != parent) /* died before prctl */
            _exit(1);
        emu_exec(argv);
    }
    for (int i = 0; i < 1500 && e->port <= 0; i++) { /* up to 15 s */
        FILE *f = fopen(e->portfile, "r");

        if (f) {
            if (fscanf(f, "%d", &e->port) != 1)
                e->port = 0;
            fclose(f);
        }
        if (e->port <= 0 && waitpid(e->pid, &st, WNOHANG) == e->pid) {
            e->pid = 0; /* python3 missing or the emulator failed */
            return 0;
        }
        if (e->port <= 0)
            nanosleep(&(struct timespec){0, 10000000L}, NULL);
    }
    if (e->port <= 0)
        return -1;
    e->http = http_client_new(&ho, NULL, err, sizeof(err));
    return e->http ? 0 : -1;
}

/* cmocka teardown: runs after a failed assertion too. */
static int emu_teardown(void **state)
{
    struct emu *e = *state;
    int st = 0;

    if (!e)
        return 0;
    http_client_free(e->http);
    if (e->pid > 0) {
        kill(e->pid, SIGTERM);
        waitpid(e->pid, &st, 0);
    }
    unlink(e->portfile);
    rmdir(e->dir);
    free(e);
    return 0;
}

/* Calls the admin API; returns the body (caller frees with free()). */
static char *emu_admin(struct emu *e, const char *method, const char *what,
                       const char *json)
{
    static const struct http_header hdrs[] = {
        {"Content-Type", "application/json"},
    };
    struct http_response r;
    char url[160];
    char err[256];
    char *body;

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/_admin/%s", e->port, what);
    assert_int_equal(http_request(e->http, method, url, hdrs, 1, json,
                                  json ? strlen(json) : 0, "admin", &r, err,
                                  sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(r.status, 200);
    body = r.body;
    r.body = NULL;
    http_response_free(&r);
    return body ? body : strdup("");
}

static size_t count_str(const char *hay, const char *needle)
{
    size_t n = 0;

    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void test_end_to_end_with_emulator(void **state)
{
    struct esp_options o = {
        .mandator_id = "4711",
        .user = "api-user",
        .password = PASSWORD,
        .http = {.connect_timeout_ms = 2000,
                 .timeout_ms = 5000,
                 .tls_verify = true},
    };
    struct emu *e = *state;
    struct metrics *m;
    struct esp *esp;
    char base[96];
    char err[256];
    char *body;
    int code = -1;

    if (e->pid == 0)
        skip();
    free(emu_admin(e, "POST", "blacklist", "{\"addresses\":[\"b@x.com\"]}"));
    free(emu_admin(e, "POST", "lists/2001",
                   "{\"recipients\":[{\"id\":\"known\",\"email\":"
                   "\"known@x.com\"},{\"id\":\"blk\",\"email\":"
                   "\"b@x.com\"}]}"));
    snprintf(base, sizeof(base), "http://127.0.0.1:%d/soap11", e->port);
    o.base_url = base;
    m = metrics_new("test");
    esp = esp_new(&o, m, err, sizeof(err));
    assert_non_null(esp);

    assert_int_equal(esp->ops->send_mail(esp->self, "1001", "2001", "known",
                                         NULL, &code, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(code, ESP_SEND_SPOOLED);
    /* unknown to the list: add2 (escaped id) then the resend spools it */
    assert_int_equal(esp->ops->send_mail(esp->self, "1001", "2001", "n<&>\"'1",
                                         "n1@x.com", &code, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(code, ESP_SEND_SPOOLED);
    assert_int_equal(esp->ops->send_mail(esp->self, "1001", "2001", "blk",
                                         "b@x.com", &code, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(code, ESP_SEND_BLACKLISTED);
    assert_int_equal(esp->ops->send_mail(esp->self, "1001", "2002", "known",
                                         "known@x.com", &code, err,
                                         sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(code, ESP_SEND_LIST_INVALID);
    code = -1;
    assert_int_equal(esp->ops->send_mail(esp->self, "9999", "2001", "known",
                                         NULL, &code, err, sizeof(err)),
                     CS_ERR_ESP_FAULT);
    assert_non_null(strstr(err, "Mailing does not exist"));
    assert_int_equal(code, -1);
    /* session expiry: one re-login, then spooled */
    free(emu_admin(e, "POST", "expire-sessions", NULL));
    assert_int_equal(esp->ops->send_mail(esp->self, "1001", "2001", "known",
                                         NULL, &code, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(code, ESP_SEND_SPOOLED);
    assert_true(metrics_counter_get(m, "crmsync_esp_relogins_total", NULL) ==
                1.0);

    body = emu_admin(e, "GET", "mails", NULL);
    assert_int_equal(count_str(body, "\"mailing_id\":\"1001\""), 3);
    assert_non_null(strstr(body, "\"recipient_id\":\"n<&>\\\"'1\","
                                 "\"email\":\"n1@x.com\""));
    free(body);
    body = emu_admin(e, "GET", "lists/2001", NULL);
    assert_non_null(strstr(body, "\"n1@x.com\""));
    free(body);
    assert_int_equal(esp->ops->logout(esp->self), CS_ERR_OK);
    esp_free(esp);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_send_mail),
        cmocka_unit_test(test_send_codes_and_request),
        cmocka_unit_test(test_not_found_adds_then_resends),
        cmocka_unit_test(test_relogin_after_invalid_session),
        cmocka_unit_test(test_invalid_session_twice_is_fault),
        cmocka_unit_test(test_faults_and_transport_errors),
        cmocka_unit_test_setup_teardown(test_end_to_end_with_emulator,
                                        emu_setup, emu_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
