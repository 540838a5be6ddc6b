/*
 * test_listsync_mapping - list-sync's CRM -> ESP attribute mapping:
 * parsing listsync.mapping, every kind (field, lookup, option with
 * per-language overrides, multi-select, language) and the technical
 * attributes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "workers/listsync/listsync.h"

#define FMT "@OData.Community.Display.V1.FormattedValue"

static void test_parse(void **state)
{
    struct listsync_mapping m;
    char err[256];
    char *sel;

    (void)state;
    assert_int_equal(listsync_mapping_parse(
                         "first=field:firstname, salutation=option:gendercode,"
                         "lang=language:x",
                         &m, err, sizeof(err)),
                     CS_ERR_OK);
    assert_int_equal(m.n, 3);
    assert_int_equal(m.nnames, 8); /* 3 mapped + 5 technical */
    assert_string_equal(m.names[0], "first");
    assert_string_equal(m.names[3], "opt-in-id");
    assert_string_equal(m.names[7], "entity-id");
    sel = listsync_mapping_select(&m);
    assert_string_equal(sel, "firstname,gendercode"); /* language: no col */
    free(sel);
    listsync_mapping_free(&m);

    /* bad entries name the expected shape */
    static const char *const bad[] = {"first",          "first=field",
                                      "=field:x",       "a=colour:x",
                                      "a=field:x;drop", "a=field:"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(listsync_mapping_parse(bad[i], &m, err, sizeof(err)),
                         CS_ERR_CONFIG);
        assert_non_null(strstr(err, "attr=kind:column"));
    }
}

static void test_labels(void **state)
{
    char buf[64];
    const char *labels = "de|gendercode|1=Herr; de|gendercode|2=Frau;"
                         "en|gendercode|1=Mr";

    (void)state;
    assert_string_equal(
        listsync_label(labels, "de", "gendercode", "2", buf, sizeof(buf)),
        "Frau");
    assert_string_equal(
        listsync_label(labels, "en", "gendercode", "1", buf, sizeof(buf)),
        "Mr");
    assert_null(
        listsync_label(labels, "en", "gendercode", "2", buf, sizeof(buf)));
    assert_null(
        listsync_label(labels, "de", "gendercode", "12", buf, sizeof(buf)));
    assert_null(listsync_label("", "de", "x", "1", buf, sizeof(buf)));
}

static void test_map_member(void **state)
{
    struct listsync_config lc = {.labels = "de|gendercode|1=Herr",
                                 .multi_separator = "|"};
    struct listsync_mapping m;
    struct map_ctx ctx = {&lc, "de", "c-1", "News", "contact", "id-1"};
    char err[256];
    char *out[16] = {0};
    json_t *row = json_pack(
        "{s:s,s:i,s:s,s:i,s:s,s:s,s:s,s:s,s:s,s:n,s:b}", "firstname", "Ann",
        "gendercode", 1, "gendercode" FMT, "Male", "leadsourcecode", 3,
        "leadsourcecode" FMT, "Web", "interests", "1,3", "interests" FMT,
        "Sport; Travel", "_parentcustomerid_value", "acc-guid",
        "_parentcustomerid_value" FMT, "Contoso", "nickname", "vip", true);

    (void)state;
    assert_int_equal(
        listsync_mapping_parse("first=field:firstname,sal=option:gendercode,"
                               "src=option:leadsourcecode,"
                               "int=multi:interests,"
                               "company=lookup:_parentcustomerid_value,"
                               "nick=field:nickname,vip=field:vip,"
                               "lang=language:x",
                               &m, err, sizeof(err)),
        CS_ERR_OK);
    assert_true(listsync_map_member(&m, &ctx, row, out));
    assert_string_equal(out[0], "Ann");
    assert_string_equal(out[1], "Herr");         /* per-language override */
    assert_string_equal(out[2], "Web");          /* the CRM's label */
    assert_string_equal(out[3], "Sport|Travel"); /* multi, own separator */
    assert_string_equal(out[4], "Contoso");      /* lookup: the name */
    assert_string_equal(out[5], "");             /* null */
    assert_string_equal(out[6], "true");
    assert_string_equal(out[7], "de");       /* language */
    assert_string_equal(out[8], "c-1");      /* opt-in-id */
    assert_string_equal(out[9], "News");     /* description */
    assert_string_equal(out[10], "email");   /* media-type */
    assert_string_equal(out[11], "contact"); /* entity-type */
    assert_string_equal(out[12], "id-1");    /* entity-id */
    listsync_values_free(out, m.nnames);
    listsync_mapping_free(&m);
    json_decref(row);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_labels),
        cmocka_unit_test(test_map_member),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
