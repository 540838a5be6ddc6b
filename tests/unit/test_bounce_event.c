/*
 * Unit tests for the bounce worker's event layer (workers/bounce/event.c,
 * bounce_list_has of config.c): address normalisation, bounce class,
 * ISO 8601 times, and bounce_event_read on real Avro values built from
 * JSON through the project's codec and schemas/bounce_event.v1.avsc, with
 * every rejection reason label of docs/bounce.md.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/avro_codec.h"
#include "workers/bounce/bounce.h"

#define BOUNCE_SCHEMA_ID 3 /* schemas/ids.txt: bounce_event.v1.avsc */
#define CONSENT          "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
#define TOPIC            "6fa459ea-ee8a-3ca4-894e-db77e160355e"
#define CONTACT          "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"
#define T0               1763800000000LL /* 2025-11-22T08:26:40Z */

static struct avro_codec *codec;

static int setup(void **state)
{
    char errstr[256];
    (void)state;
    codec = avro_codec_new(NULL, CRMSYNC_SOURCE_DIR "/schemas", errstr,
                           sizeof(errstr));
    if (!codec)
        fprintf(stderr, "codec: %s\n", errstr);
    return codec ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    avro_codec_free(codec);
    return 0;
}

/* ---- email_normalize ---- */

static void test_email_normalize_accepts(void **state)
{
    char out[BOUNCE_EMAIL_MAX];
    (void)state;

    assert_true(
        email_normalize("  Anna.Berg@Example.COM \t", out, sizeof(out)));
    assert_string_equal(out, "anna.berg@example.com");
    assert_true(email_normalize("a@b.c", out, sizeof(out)));
    assert_string_equal(out, "a@b.c");
    assert_true(email_normalize("x+tag@mail.example.co.uk", out, sizeof(out)));
    assert_string_equal(out, "x+tag@mail.example.co.uk");
}

static void test_email_normalize_rejects(void **state)
{
    static const char *const bad[] = {
        "",
        "   ",
        "anna.example.com",       /* no '@' */
        "anna@b@example.com",     /* two '@' */
        "anna@localhost",         /* no dot in the domain */
        "anna@.com",              /* dot right after '@' */
        "anna@example.com.",      /* dot at the end */
        "anna@example.",          /* dot at the end */
        "@example.com",           /* empty local part */
        "an na@example.com",      /* space inside */
        "anna@exa mple.com",      /* space inside the domain */
        "an\tna@example.com",     /* tab inside */
        "anna\x01@example.com",   /* control character */
        "anna@example.com\x7f",   /* DEL */
        "anna@example.com\r\nX:", /* header injection */
    };
    char out[BOUNCE_EMAIL_MAX];
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (email_normalize(bad[i], out, sizeof(out)))
            fail_msg("accepted bad address #%zu '%s'", i, bad[i]);
    }
}

/* A domain that starts with a dot ("a@.example.com") has a dot right after
 * the '@' like "a@.com"; it is not a valid domain. */
static void test_email_normalize_rejects_leading_dot_domain(void **state)
{
    char out[BOUNCE_EMAIL_MAX];
    (void)state;

    assert_false(email_normalize("anna@.example.com", out, sizeof(out)));
}

static void test_email_normalize_length(void **state)
{
    char in[300];
    char out[BOUNCE_EMAIL_MAX];
    const char *domain = "@example.com"; /* 12 bytes */
    (void)state;

    /* exactly 254 bytes: accepted */
    memset(in, 'a', 242);
    memcpy(in + 242, domain, strlen(domain) + 1);
    assert_int_equal(strlen(in), 254);
    assert_true(email_normalize(in, out, sizeof(out)));
    assert_int_equal(strlen(out), 254);
    /* 255 bytes: rejected */
    memset(in, 'a', 243);
    memcpy(in + 243, domain, strlen(domain) + 1);
    assert_int_equal(strlen(in), 255);
    assert_false(email_normalize(in, out, sizeof(out)));
    /* surrounding blanks do not count against the limit */
    in[0] = ' ';
    memset(in + 1, 'a', 242);
    memcpy(in + 243, domain, strlen(domain) + 1);
    assert_true(email_normalize(in, out, sizeof(out)));
    assert_int_equal(strlen(out), 254);
    /* an output buffer too small is a rejection, not an overflow */
    assert_false(email_normalize("anna@example.com", out, 8));
}

/* ---- bounce_classify ---- */

static void test_classify(void **state)
{
    bool hard = false;
    char err[128] = "";
    (void)state;

    assert_true(bounce_classify("5.1.1", NULL, &hard, err, sizeof(err)));
    assert_true(hard);
    assert_true(bounce_classify("4.2.2", NULL, &hard, err, sizeof(err)));
    assert_false(hard);
    assert_true(bounce_classify("5.7.133", NULL, &hard, err, sizeof(err)));
    assert_true(hard);
    /* smtp_status wins over bounce_type, both ways */
    assert_true(bounce_classify("4.2.2", "HARD", &hard, err, sizeof(err)));
    assert_false(hard);
    assert_true(bounce_classify("5.1.1", "SOFT", &hard, err, sizeof(err)));
    assert_true(hard);
    /* bounce_type alone */
    assert_true(bounce_classify(NULL, "HARD", &hard, err, sizeof(err)));
    assert_true(hard);
    assert_true(bounce_classify(NULL, "SOFT", &hard, err, sizeof(err)));
    assert_false(hard);
}

static void test_classify_rejects(void **state)
{
    static const char *const bad[] = {
        "2.0.0", "5.1",  "5.1.1.1", "x.1.1",  "5.1000.1", "55.1.1",
        "5..1",  "5.1.", "",        "5.1.1 ", "3.1.1",    "5.1.x",
    };
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bool hard = false;
        char err[128] = "";
        /* a malformed status is rejected even when bounce_type is given */
        if (bounce_classify(bad[i], "HARD", &hard, err, sizeof(err)))
            fail_msg("accepted smtp_status '%s'", bad[i]);
        assert_ptr_equal(strstr(err, "invalid-bounce"), err);
    }
    {
        bool hard = false;
        char err[128] = "";
        assert_false(bounce_classify(NULL, NULL, &hard, err, sizeof(err)));
        assert_ptr_equal(strstr(err, "invalid-bounce"), err);
    }
}

/* ---- times ---- */

static void test_iso_time_round_trip(void **state)
{
    static const int64_t times[] = {
        T0, T0 + 1, T0 + 999, 1000, 1, 4102444799999LL /* 2099-12-31 */,
    };
    char buf[64];
    (void)state;

    isotime_format(T0 + 123, buf, sizeof(buf));
    assert_string_equal(buf, "2025-11-22T08:26:40.123Z");
    isotime_format(T0, buf, sizeof(buf));
    assert_string_equal(buf, "2025-11-22T08:26:40.000Z");
    for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
        isotime_format(times[i], buf, sizeof(buf));
        assert_int_equal(isotime_parse(buf), times[i]);
    }
}

static void test_parse_time_forms(void **state)
{
    (void)state;
    /* Dataverse: seconds, 'Z', no fraction */
    assert_int_equal(isotime_parse("2026-11-22T10:00:00Z"), 1795341600000LL);
    assert_int_equal(isotime_parse("2026-11-22T10:00:00.000Z"),
                     1795341600000LL);
    assert_int_equal(isotime_parse("2026-11-22T10:00:00.5Z"), 1795341600500LL);
    assert_int_equal(isotime_parse("2026-11-22T10:00:00.042Z"),
                     1795341600042LL);
    /* more than millisecond precision is truncated */
    assert_int_equal(isotime_parse("2026-11-22T10:00:00.1239999Z"),
                     1795341600123LL);
    assert_int_equal(isotime_parse("1970-01-01T00:00:00.001Z"), 1);
}

static void test_parse_time_invalid(void **state)
{
    static const char *const bad[] = {
        "",
        "garbage",
        "2026-11-22",
        "2026-11-22 10:00:00Z",
        "2026-11-22T10:00Z",
        "2026-11-22T10:00:00+01:00",
        "2026-11-22T10:00:00.123+01:00",
        "22.11.2026 10:00:00",
    };
    (void)state;

    assert_int_equal(isotime_parse(NULL), -1);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t t = isotime_parse(bad[i]);
        if (t != -1)
            fail_msg("parsed '%s' as %lld", bad[i], (long long)t);
    }
}

/* Text after the 'Z' is not a time Dataverse or isotime_format writes. */
static void test_parse_time_trailing_garbage(void **state)
{
    (void)state;
    assert_int_equal(isotime_parse("2026-11-22T10:00:00Zjunk"), -1);
    assert_int_equal(isotime_parse("2026-11-22T10:00:00.000ZZ"), -1);
}

/* ---- bounce_list_has ---- */

static void test_list_has(void **state)
{
    (void)state;
    assert_true(bounce_list_has("a,b,c", "a"));
    assert_true(bounce_list_has("a,b,c", "b"));
    assert_true(bounce_list_has("a,b,c", "c"));
    assert_true(bounce_list_has(" tenant-a , tenant-b ", "tenant-a"));
    assert_true(bounce_list_has(" tenant-a , tenant-b ", "tenant-b"));
    assert_true(bounce_list_has("only", "only"));
    assert_false(bounce_list_has("", "a"));
    assert_false(bounce_list_has(NULL, "a"));
    assert_false(bounce_list_has("tenant-a,tenant-b", "tenant"));
    assert_false(bounce_list_has("tenant-a,tenant-b", "tenant-ab"));
    assert_false(bounce_list_has("tenant-a,tenant-b", "enant-a"));
    assert_false(bounce_list_has("tenant-a,tenant-b", "Tenant-a"));
    assert_false(bounce_list_has("a,,b", "c"));
    assert_false(bounce_list_has("a,b", ""));
}

/* ---- bounce_event_read ---- */

/* A valid single-consent unsubscribe; @p patch (JSON object text)
 * overrides top-level fields. */
static void make_event(const char *patch, avro_value_t *out)
{
    char errstr[256] = "";
    json_error_t jerr;
    json_t *ev = json_pack(
        "{s:s, s:s, s:I, s:s, s:{s:n, s:n, s:s}, s:s, s:s, s:s, s:n, s:s,"
        " s:s, s:n, s:n, s:s}",
        "event_id", "ev-1", "tenant", "tenant-a", "occurred_at", (json_int_t)T0,
        "source_system", "optimizely-campaign", "recipient", "entity_type",
        "entity_id", "email", " Anna@Example.com ", "kind", "UNSUBSCRIBE",
        "scope", "CONSENT", "consent_id", CONSENT, "topic_id", "source", "LINK",
        "reason", "too many mails", "bounce_type", "smtp_status", "mailing_id",
        "m-7");
    assert_non_null(ev);
    if (patch) {
        json_t *p = json_loads(patch, 0, &jerr);
        if (!p)
            fail_msg("patch '%s': %s", patch, jerr.text);
        json_object_update(ev, p);
        json_decref(p);
    }
    if (avro_codec_from_json(codec, BOUNCE_SCHEMA_ID, ev, out, errstr,
                             sizeof(errstr)) != CS_ERR_OK)
        fail_msg("from_json: %s", errstr);
    json_decref(ev);
}

/* Reads the event of @p patch; asserts OK and fills @p ev. The Avro value
 * is returned in @p v (the event borrows from it). */
static void read_ok(const char *patch, avro_value_t *v, struct bounce_event *ev)
{
    char err[256] = "";
    make_event(patch, v);
    if (bounce_event_read(v, ev, err, sizeof(err)) != CS_ERR_OK)
        fail_msg("'%s' rejected: %s", patch ? patch : "(default)", err);
}

static void test_event_valid_consent_unsubscribe(void **state)
{
    avro_value_t v;
    struct bounce_event ev;
    (void)state;

    read_ok(NULL, &v, &ev);
    assert_string_equal(ev.event_id, "ev-1");
    assert_string_equal(ev.tenant, "tenant-a");
    assert_string_equal(ev.source_system, "optimizely-campaign");
    assert_int_equal(ev.occurred_at, T0);
    assert_null(ev.entity_type);
    assert_null(ev.entity_id);
    assert_string_equal(ev.email, "anna@example.com");
    assert_int_equal(ev.kind, BOUNCE_UNSUBSCRIBE);
    assert_string_equal(ev.kind_name, "UNSUBSCRIBE");
    assert_false(ev.channel);
    assert_string_equal(ev.consent_id, CONSENT);
    assert_null(ev.topic_id);
    assert_string_equal(ev.source, "LINK");
    assert_string_equal(ev.reason, "too many mails");
    avro_value_decref(&v);

    read_ok("{\"topic_id\": \"" TOPIC "\"}", &v, &ev);
    assert_string_equal(ev.topic_id, TOPIC);
    avro_value_decref(&v);
}

static void test_event_valid_each_kind(void **state)
{
    avro_value_t v;
    struct bounce_event ev;
    (void)state;

    /* client-wide unsubscribe: no consent needed */
    read_ok("{\"scope\": \"CHANNEL\", \"consent_id\": null}", &v, &ev);
    assert_int_equal(ev.kind, BOUNCE_UNSUBSCRIBE);
    assert_true(ev.channel);
    avro_value_decref(&v);

    read_ok("{\"kind\": \"RESUBSCRIBE\", \"source\": \"PREFERENCE_PAGE\"}", &v,
            &ev);
    assert_int_equal(ev.kind, BOUNCE_RESUBSCRIBE);
    assert_string_equal(ev.kind_name, "RESUBSCRIBE");
    assert_false(ev.channel);
    assert_string_equal(ev.consent_id, CONSENT);
    avro_value_decref(&v);

    read_ok("{\"kind\": \"SPAM_COMPLAINT\", \"scope\": \"CHANNEL\", "
            "\"consent_id\": null, \"source\": \"FEEDBACK_LOOP\"}",
            &v, &ev);
    assert_int_equal(ev.kind, BOUNCE_SPAM);
    assert_string_equal(ev.kind_name, "SPAM_COMPLAINT");
    assert_true(ev.channel);
    avro_value_decref(&v);

    /* a spam complaint is client-wide whatever its scope says */
    read_ok("{\"kind\": \"SPAM_COMPLAINT\", \"consent_id\": null}", &v, &ev);
    assert_int_equal(ev.kind, BOUNCE_SPAM);
    avro_value_decref(&v);

    read_ok("{\"kind\": \"BOUNCE\", \"consent_id\": null, \"smtp_status\": "
            "\"5.1.1\"}",
            &v, &ev);
    assert_int_equal(ev.kind, BOUNCE_BOUNCE);
    assert_string_equal(ev.kind_name, "BOUNCE");
    assert_true(ev.hard);
    avro_value_decref(&v);

    read_ok("{\"kind\": \"BOUNCE\", \"consent_id\": null, \"smtp_status\": "
            "\"4.2.2\", \"bounce_type\": \"HARD\"}",
            &v, &ev);
    assert_false(ev.hard);
    avro_value_decref(&v);

    read_ok("{\"kind\": \"BOUNCE\", \"consent_id\": null, \"bounce_type\": "
            "\"SOFT\"}",
            &v, &ev);
    assert_false(ev.hard);
    avro_value_decref(&v);

    read_ok("{\"kind\": \"BOUNCE\", \"consent_id\": null, \"bounce_type\": "
            "\"HARD\"}",
            &v, &ev);
    assert_true(ev.hard);
    avro_value_decref(&v);

    read_ok("{\"kind\": \"OUTBOUNCE\", \"consent_id\": null}", &v, &ev);
    assert_int_equal(ev.kind, BOUNCE_OUTBOUNCE);
    assert_string_equal(ev.kind_name, "OUTBOUNCE");
    avro_value_decref(&v);

    read_ok("{\"kind\": \"BOUNCE_RESET\", \"consent_id\": null}", &v, &ev);
    assert_int_equal(ev.kind, BOUNCE_RESET);
    assert_string_equal(ev.kind_name, "BOUNCE_RESET");
    avro_value_decref(&v);

    /* entity only: no email needed, ev.email stays "" */
    read_ok("{\"recipient\": {\"entity_type\": \"contact\", \"entity_id\": "
            "\"" CONTACT "\", \"email\": null}}",
            &v, &ev);
    assert_string_equal(ev.entity_type, "contact");
    assert_string_equal(ev.entity_id, CONTACT);
    assert_string_equal(ev.email, "");
    avro_value_decref(&v);

    /* entity and email */
    read_ok("{\"recipient\": {\"entity_type\": \"lead\", \"entity_id\": "
            "\"" CONTACT "\", \"email\": \"LEAD@Example.org\"}}",
            &v, &ev);
    assert_string_equal(ev.entity_type, "lead");
    assert_string_equal(ev.email, "lead@example.org");
    avro_value_decref(&v);
}

/* Table of rejected events and the reason label their error starts with. */
static void test_event_rejections(void **state)
{
    static const struct {
        const char *patch;
        const char *reason;
    } cases[] = {
        {"{\"occurred_at\": 0}", "missing-timestamp"},
        {"{\"occurred_at\": -5}", "missing-timestamp"},
        {"{\"recipient\": {\"entity_type\": null, \"entity_id\": null, "
         "\"email\": \"no-at-sign.example.com\"}}",
         "invalid-email"},
        {"{\"recipient\": {\"entity_type\": null, \"entity_id\": null, "
         "\"email\": \"a@b@example.com\"}}",
         "invalid-email"},
        {"{\"recipient\": {\"entity_type\": null, \"entity_id\": null, "
         "\"email\": \"anna@localhost\"}}",
         "invalid-email"},
        /* an entity does not excuse a malformed address */
        {"{\"recipient\": {\"entity_type\": \"contact\", \"entity_id\": "
         "\"" CONTACT "\", \"email\": \"an na@example.com\"}}",
         "invalid-email"},
        {"{\"recipient\": {\"entity_type\": null, \"entity_id\": null, "
         "\"email\": null}}",
         "missing-recipient"},
        {"{\"recipient\": {\"entity_type\": \"contact\", \"entity_id\": "
         "\"x'); DROP\", \"email\": null}}",
         "missing-recipient"},
        {"{\"recipient\": {\"entity_type\": null, \"entity_id\": "
         "\"" CONTACT "\", \"email\": null}}",
         "missing-recipient"},
        {"{\"consent_id\": null}", "missing-consent"},
        {"{\"consent_id\": \"\"}", "missing-consent"},
        {"{\"kind\": \"RESUBSCRIBE\", \"consent_id\": null}",
         "missing-consent"},
        {"{\"kind\": \"RESUBSCRIBE\", \"scope\": \"CHANNEL\"}",
         "missing-consent"},
        {"{\"kind\": \"RESUBSCRIBE\", \"scope\": \"CHANNEL\", \"consent_id\": "
         "null}",
         "missing-consent"},
        {"{\"consent_id\": \"newsletter\"}", "unknown-consent"},
        {"{\"kind\": \"RESUBSCRIBE\", \"consent_id\": \"" CONSENT "x\"}",
         "unknown-consent"},
        {"{\"topic_id\": \"not-a-guid\"}", "unknown-consent"},
        {"{\"kind\": \"BOUNCE\", \"consent_id\": null}", "invalid-bounce"},
        {"{\"kind\": \"BOUNCE\", \"smtp_status\": \"2.0.0\"}",
         "invalid-bounce"},
        {"{\"kind\": \"BOUNCE\", \"smtp_status\": \"5.1\", \"bounce_type\": "
         "\"HARD\"}",
         "invalid-bounce"},
        {"{\"kind\": \"BOUNCE\", \"smtp_status\": \"x.1.1\"}",
         "invalid-bounce"},
        {"{\"event_id\": \"\"}", "invalid-event"},
        {"{\"tenant\": \"\"}", "invalid-event"},
        {"{\"tenant\": \"a|b\"}", "invalid-event"},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        avro_value_t v;
        struct bounce_event ev;
        char err[256] = "";
        enum cs_err rc;

        make_event(cases[i].patch, &v);
        rc = bounce_event_read(&v, &ev, err, sizeof(err));
        if (rc != CS_ERR_INVALID_EVENT)
            fail_msg("case %zu '%s': got %s (%s), want %s", i, cases[i].patch,
                     cs_err_name(rc), err, cases[i].reason);
        if (strncmp(err, cases[i].reason, strlen(cases[i].reason)) != 0)
            fail_msg("case %zu '%s': reason '%s', want prefix '%s'", i,
                     cases[i].patch, err, cases[i].reason);
        avro_value_decref(&v);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_email_normalize_accepts),
        cmocka_unit_test(test_email_normalize_rejects),
        cmocka_unit_test(test_email_normalize_rejects_leading_dot_domain),
        cmocka_unit_test(test_email_normalize_length),
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_classify_rejects),
        cmocka_unit_test(test_iso_time_round_trip),
        cmocka_unit_test(test_parse_time_forms),
        cmocka_unit_test(test_parse_time_invalid),
        cmocka_unit_test(test_parse_time_trailing_garbage),
        cmocka_unit_test(test_list_has),
        cmocka_unit_test(test_event_valid_consent_unsubscribe),
        cmocka_unit_test(test_event_valid_each_kind),
        cmocka_unit_test(test_event_rejections),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
