/*
 * Unit tests for the response worker's mapping: validation, skips (no
 * campaign, copied list, machine opens, scanner clicks), effect keys per
 * mode and the campaignresponse body. Events are built from JSON through
 * the real codec and the checked-in schemas.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/avro_codec.h"
#include "workers/response/response.h"

#define CAMPAIGN "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
#define CONTACT  "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"

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

/* A valid click event; @p patch (JSON object text) overrides fields. */
static void make_event(const char *patch, avro_value_t *out)
{
    char errstr[256];
    json_error_t jerr;
    json_t *ev = json_pack(
        "{s:s, s:s, s:I, s:s, s:{s:s, s:s, s:s}, s:s, s:s, s:s, s:s, s:b,"
        " s:s, s:s}",
        "event_id", "ev-1", "tenant", "tenant-a", "occurred_at",
        (json_int_t)1763800000000LL, "source_system", "optimizely-campaign",
        "recipient", "entity_type", "contact", "entity_id", CONTACT, "email",
        "anna@example.com", "response_type", "CLICK", "mailing_id", "m-7",
        "mailing_name", "Winter sale", "crm_campaign_id", CAMPAIGN,
        "from_copied_list", 0, "url", "https://shop.example.com/?a=1&b=2",
        "user_agent", "Mozilla/5.0 (Windows NT 10.0)");
    if (patch) {
        json_t *p = json_loads(patch, 0, &jerr);
        assert_non_null(p);
        json_object_update(ev, p);
        json_decref(p);
    }
    assert_int_equal(
        avro_codec_from_json(codec, 1, ev, out, errstr, sizeof(errstr)),
        CS_ERR_OK);
    json_decref(ev);
}

static const struct response_config rc_default = {
    .mode = "all",
    .tenant_modes = "",
    .filter_machine_opens = true,
    .machine_open_window_s = 2,
    .filter_scanner_clicks = true,
    .scanner_click_window_s = 10,
};

static void test_valid_event_reads(void **state)
{
    avro_value_t v;
    struct response_event ev;
    char err[128];
    (void)state;
    make_event(NULL, &v);
    assert_int_equal(response_event_read(&v, &ev, err, sizeof(err)), CS_ERR_OK);
    assert_string_equal(ev.event_id, "ev-1");
    assert_string_equal(ev.type, "CLICK");
    assert_string_equal(ev.campaign_id, CAMPAIGN);
    assert_string_equal(ev.entity_type, "contact");
    assert_null(response_skip_reason(&rc_default, &ev));
    avro_value_decref(&v);
}

/* Table of invalid events and the text their error must contain. */
static void test_invalid_events(void **state)
{
    static const struct {
        const char *patch;
        const char *expect;
    } cases[] = {
        {"{\"event_id\": \"\"}", "event_id"},
        {"{\"tenant\": \"\"}", "tenant"},
        {"{\"crm_campaign_id\": \"not-a-guid\"}", "not a GUID"},
        {"{\"recipient\": {\"entity_type\": \"contact\", \"entity_id\": "
         "\"x'); DROP\", \"email\": null}}",
         "not a GUID"},
        {"{\"recipient\": {\"entity_type\": null, \"entity_id\": null, "
         "\"email\": null}}",
         "neither"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        avro_value_t v;
        struct response_event ev;
        char err[128] = "";
        make_event(cases[i].patch, &v);
        assert_int_equal(response_event_read(&v, &ev, err, sizeof(err)),
                         CS_ERR_INVALID_EVENT);
        assert_non_null(strstr(err, cases[i].expect));
        avro_value_decref(&v);
    }
}

static void test_skip_reasons(void **state)
{
    static const struct {
        const char *patch;
        const char *reason; /* NULL = processed */
    } cases[] = {
        {"{\"crm_campaign_id\": null}", "no_campaign"},
        {"{\"from_copied_list\": true}", "copied_list"},
        {"{\"response_type\": \"OPEN\", \"user_agent\": \"Mozilla/5.0\"}",
         "machine_open"},
        {"{\"response_type\": \"OPEN\", \"user_agent\": \"Mozilla/5.0 "
         "(Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com "
         "GoogleImageProxy)\"}",
         "machine_open"},
        {"{\"response_type\": \"OPEN\", \"sent_at\": 1763799999000}",
         "machine_open"},
        {"{\"response_type\": \"OPEN\", \"sent_at\": 1763799000000}", NULL},
        {"{\"user_agent\": \"Mimecast URL scanner\"}", "scanner_click"},
        {"{\"sent_at\": 1763799995000}", "scanner_click"},
        {"{\"sent_at\": 1763799000000}", NULL},
        {"{\"response_type\": \"REPLY\", \"user_agent\": \"Mozilla/5.0\"}",
         NULL},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        avro_value_t v;
        struct response_event ev;
        char err[128];
        const char *got;
        make_event(cases[i].patch, &v);
        assert_int_equal(response_event_read(&v, &ev, err, sizeof(err)),
                         CS_ERR_OK);
        got = response_skip_reason(&rc_default, &ev);
        if (cases[i].reason)
            assert_string_equal(got, cases[i].reason);
        else
            assert_null(got);
        avro_value_decref(&v);
    }
}

static void test_filters_off_by_default(void **state)
{
    struct response_config rc = rc_default;
    avro_value_t v;
    struct response_event ev;
    char err[128];
    (void)state;
    rc.filter_machine_opens = false;
    rc.filter_scanner_clicks = false;
    make_event("{\"response_type\": \"OPEN\", \"user_agent\": "
               "\"Mozilla/5.0\"}",
               &v);
    assert_int_equal(response_event_read(&v, &ev, err, sizeof(err)), CS_ERR_OK);
    assert_null(response_skip_reason(&rc, &ev));
    avro_value_decref(&v);
}

static void test_effect_keys(void **state)
{
    avro_value_t a, b;
    struct response_event ea, eb;
    char err[128], ka[512], kb[512];
    (void)state;
    make_event(NULL, &a);
    make_event("{\"event_id\": \"ev-2\", \"url\": \"https://other\"}", &b);
    response_event_read(&a, &ea, err, sizeof(err));
    response_event_read(&b, &eb, err, sizeof(err));

    response_effect_key(&ea, false, ka, sizeof(ka));
    response_effect_key(&eb, false, kb, sizeof(kb));
    assert_string_not_equal(ka, kb); /* all: every event counts */

    response_effect_key(&ea, true, ka, sizeof(ka));
    response_effect_key(&eb, true, kb, sizeof(kb));
    assert_string_equal(ka, kb); /* unique: same type/recipient/mailing */
    avro_value_decref(&a);
    avro_value_decref(&b);
}

static void test_body(void **state)
{
    avro_value_t v;
    struct response_event ev;
    char err[128];
    json_error_t jerr;
    json_t *body, *parties;
    char *text;
    (void)state;
    make_event("{\"response_type\": \"UNSUBSCRIBE\", \"mailing_name\": "
               "\"Sale \\\"quoted\\\" \u00e9\"}",
               &v);
    response_event_read(&v, &ev, err, sizeof(err));
    text = response_build_body(&ev);
    body = json_loads(text, 0, &jerr);
    assert_non_null(body);
    assert_string_equal(
        json_string_value(json_object_get(
            body, "regardingobjectid_campaign_campaignresponse@odata.bind")),
        "/campaigns(" CAMPAIGN ")");
    assert_int_equal(json_integer_value(json_object_get(body, "responsecode")),
                     3);
    assert_int_equal(
        json_integer_value(json_object_get(body, "channeltypecode")), 1);
    assert_string_equal(json_string_value(json_object_get(body, "category")),
                        "unsubscribe");
    assert_string_equal(json_string_value(json_object_get(body, "receivedon")),
                        "2025-11-22T08:26:40.000Z");
    assert_non_null(strstr(json_string_value(json_object_get(body, "subject")),
                           "\"quoted\""));
    parties = json_object_get(body, "campaignresponse_activity_parties");
    assert_int_equal(json_array_size(parties), 1);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(parties, 0),
                                          "partyid_contact@odata.bind")),
        "/contacts(" CONTACT ")");
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(parties, 0), "participationtypemask")),
                     11);
    json_decref(body);
    free(text);
    avro_value_decref(&v);
}

static void test_subject_truncated_utf8_safe(void **state)
{
    char name[400];
    char patch[600];
    avro_value_t v;
    struct response_event ev;
    char err[128];
    json_error_t jerr;
    json_t *body;
    char *text;
    (void)state;
    /* 150 x "é" (2 bytes each) > 200 bytes of subject. */
    for (int i = 0; i < 150; i++)
        memcpy(name + 2 * i, "\xc3\xa9", 2);
    name[300] = '\0';
    snprintf(patch, sizeof(patch), "{\"mailing_name\": \"%s\"}", name);
    make_event(patch, &v);
    response_event_read(&v, &ev, err, sizeof(err));
    text = response_build_body(&ev);
    body = json_loads(text, 0, &jerr);
    assert_non_null(body); /* valid UTF-8 after the cut */
    assert_true(strlen(json_string_value(json_object_get(body, "subject"))) <=
                200);
    json_decref(body);
    free(text);
    avro_value_decref(&v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_event_reads),
        cmocka_unit_test(test_invalid_events),
        cmocka_unit_test(test_skip_reasons),
        cmocka_unit_test(test_filters_off_by_default),
        cmocka_unit_test(test_effect_keys),
        cmocka_unit_test(test_body),
        cmocka_unit_test(test_subject_truncated_utf8_safe),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
