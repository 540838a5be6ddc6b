/*
 * test_odata - OData literal escaping, URL encoding, GUID checks, UUIDv5.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/odata.h"

struct literal_case {
    const char *in;
    const char *want;
};

static void test_quote_literal_table(void **state)
{
    static const struct literal_case cases[] = {
        {"", "''"},
        {"plain", "'plain'"},
        {"O'Bryan", "'O''Bryan'"},
        {"''", "''''''"},
        {"a+b", "'a%2Bb'"},
        {"x/y", "'x%2Fy'"},
        {"tag#1", "'tag%231'"},
        {"100%", "'100%25'"},
        {"a&b=c", "'a%26b%3Dc'"},
        {"john+news@example.com", "'john%2Bnews%40example.com'"},
        {"$,:;?@ ", "'%24%2C%3A%3B%3F%40%20'"},
        {"caf\xc3\xa9", "'caf%C3%A9'"},                       /* café */
        {"\xe6\x97\xa5\xe6\x9c\xac", "'%E6%97%A5%E6%9C%AC'"}, /* 日本 */
        {"\xf0\x9f\x98\x80", "'%F0%9F%98%80'"},               /* emoji */
        {"tab\there\nnl", "'tab%09here%0Anl'"},
        {"O'Bryan & Sons+1", "'O''Bryan%20%26%20Sons%2B1'"},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = odata_quote_literal(cases[i].in);
        assert_non_null(got);
        assert_string_equal(got, cases[i].want);
        free(got);
    }
}

static void test_url_encode(void **state)
{
    static const struct literal_case cases[] = {
        {"", ""},
        {"AZaz09-._~", "AZaz09-._~"},
        {"a b'c", "a%20b%27c"},
        {"k=v&x+y/z#f%", "k%3Dv%26x%2By%2Fz%23f%25"},
        {"client secret/+=", "client%20secret%2F%2B%3D"},
        {"\xc3\xa9\xf0\x9f\x98\x80", "%C3%A9%F0%9F%98%80"},
        {"https://org.crm.dynamics.com/.default",
         "https%3A%2F%2Forg.crm.dynamics.com%2F.default"},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = odata_url_encode(cases[i].in);
        assert_non_null(got);
        assert_string_equal(got, cases[i].want);
        free(got);
    }
}

static void test_is_guid(void **state)
{
    (void)state;
    assert_true(odata_is_guid("886313e1-3b8a-5372-9b90-0c9aee199e5d"));
    assert_true(odata_is_guid("886313E1-3B8A-5372-9B90-0C9AEE199E5D"));
    assert_false(odata_is_guid(NULL));
    assert_false(odata_is_guid(""));
    assert_false(odata_is_guid("886313e13b8a53729b900c9aee199e5d"));
    assert_false(odata_is_guid("886313e1-3b8a-5372-9b90-0c9aee199e5"));
    assert_false(odata_is_guid("886313e1-3b8a-5372-9b90-0c9aee199e5dd"));
    assert_false(odata_is_guid("886313g1-3b8a-5372-9b90-0c9aee199e5d"));
    assert_false(odata_is_guid("886313e1+3b8a-5372-9b90-0c9aee199e5d"));
    assert_false(odata_is_guid("{86313e1-3b8a-5372-9b90-0c9aee199e5}"));
}

static void test_uuid5_known_vectors(void **state)
{
    char out[37];

    (void)state;
    /* Python: uuid.uuid5(uuid.NAMESPACE_DNS, "python.org") */
    odata_uuid5("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "python.org", out);
    assert_string_equal(out, "886313e1-3b8a-5372-9b90-0c9aee199e5d");
    /* Python: uuid.uuid5(uuid.NAMESPACE_URL, "http://example.com/") */
    odata_uuid5("6ba7b811-9dad-11d1-80b4-00c04fd430c8", "http://example.com/",
                out);
    assert_string_equal(out, "0a300ee9-f9e4-5697-a51a-efc7fafaba67");
    /* Upper-case namespace gives the same id. */
    odata_uuid5("6BA7B810-9DAD-11D1-80B4-00C04FD430C8", "python.org", out);
    assert_string_equal(out, "886313e1-3b8a-5372-9b90-0c9aee199e5d");
}

static void test_uuid5_project_namespace(void **state)
{
    char a[37];
    char b[37];
    char c[37];

    (void)state;
    assert_true(odata_is_guid(CRMSYNC_UUID_NAMESPACE));
    odata_uuid5(CRMSYNC_UUID_NAMESPACE, "tenant-a/evt-1", a);
    odata_uuid5(CRMSYNC_UUID_NAMESPACE, "tenant-a/evt-1", b);
    odata_uuid5(CRMSYNC_UUID_NAMESPACE, "tenant-b/evt-1", c);
    assert_true(odata_is_guid(a));
    assert_string_equal(a, b); /* deterministic: a replay hits the same id */
    assert_string_not_equal(a, c);
    assert_int_equal(a[14], '5');           /* version nibble */
    assert_non_null(strchr("89ab", a[19])); /* RFC 4122 variant */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quote_literal_table),
        cmocka_unit_test(test_url_encode),
        cmocka_unit_test(test_is_guid),
        cmocka_unit_test(test_uuid5_known_vectors),
        cmocka_unit_test(test_uuid5_project_namespace),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
