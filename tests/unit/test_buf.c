/*
 * test_buf - growable byte buffer: append, formatted growth, detach, NUL
 * termination, free of an empty buffer, oom no-ops.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"

static void test_append_bytes_and_strings(void **state)
{
    struct buf b = {0};
    static const char bin[] = {'x', '\0', 'y'};

    (void)state;
    assert_int_equal(buf_appends(&b, "hello"), CS_ERR_OK);
    assert_int_equal(buf_append(&b, ", ", 2), CS_ERR_OK);
    assert_int_equal(buf_appends(&b, "world"), CS_ERR_OK);
    assert_non_null(b.data);
    assert_int_equal(b.len, 12);
    assert_string_equal(b.data, "hello, world");
    assert_true(b.cap > b.len);

    /* Embedded NULs are kept and counted; the terminator is not. */
    assert_int_equal(buf_append(&b, bin, sizeof(bin)), CS_ERR_OK);
    assert_int_equal(b.len, 15);
    assert_memory_equal(b.data + 12, bin, sizeof(bin));
    assert_int_equal(b.data[15], '\0');

    /* A zero-length append changes nothing but keeps the string valid. */
    assert_int_equal(buf_append(&b, NULL, 0), CS_ERR_OK);
    assert_int_equal(b.len, 15);
    assert_false(b.oom);
    buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
}

static void test_nul_terminated_after_every_append(void **state)
{
    struct buf b = {0};

    (void)state;
    for (int i = 0; i < 2000; i++) {
        char c = (char)('a' + i % 26);

        assert_int_equal(buf_append(&b, &c, 1), CS_ERR_OK);
        assert_int_equal(b.len, (size_t)i + 1);
        assert_int_equal(b.data[b.len], '\0');
        assert_int_equal(strlen(b.data), b.len);
        assert_true(b.cap >= b.len + 1);
    }
    buf_free(&b);
}

static void test_appendf_grows_across_many_kb(void **state)
{
    struct buf b = {0};
    char want[32];
    size_t off = 0;
    char big[5000];

    (void)state;
    for (int i = 0; i < 10000; i++)
        assert_int_equal(buf_appendf(&b, "line %05d|", i), CS_ERR_OK);
    assert_int_equal(b.len, 10000 * 11);
    assert_int_equal(strlen(b.data), b.len);
    for (int i = 0; i < 10000; i++) {
        snprintf(want, sizeof(want), "line %05d|", i);
        assert_memory_equal(b.data + off, want, 11);
        off += 11;
    }

    /* One formatted piece larger than the spare room and than any
     * initial capacity: must be written whole after growing. */
    memset(big, 'Z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(buf_appendf(&b, "<%s>%d", big, 42), CS_ERR_OK);
    assert_int_equal(b.len, off + 1 + 4999 + 1 + 2);
    assert_int_equal(b.data[off], '<');
    assert_int_equal(b.data[off + 1 + 4999], '>');
    assert_string_equal(b.data + off + 1 + 4999, ">42");
    buf_free(&b);

    /* appendf on a fresh buffer, bigger than the first allocation. */
    assert_int_equal(buf_appendf(&b, "%s", big), CS_ERR_OK);
    assert_int_equal(b.len, 4999);
    assert_string_equal(b.data, big);
    buf_free(&b);
}

static void test_detach(void **state)
{
    struct buf b = {0};
    char *s;

    (void)state;
    buf_appendf(&b, "%s=%d", "n", 7);
    s = buf_detach(&b);
    assert_string_equal(s, "n=7");
    /* The buffer is reset and reusable; the detached string is ours. */
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    buf_appends(&b, "again");
    assert_string_equal(b.data, "again");
    assert_string_equal(s, "n=7");
    free(s);
    buf_free(&b);

    /* Nothing appended: an allocated empty string, not NULL. */
    s = buf_detach(&b);
    assert_non_null(s);
    assert_string_equal(s, "");
    free(s);
}

static void test_oom_makes_appends_noops(void **state)
{
    struct buf b = {0};

    (void)state;
    buf_appends(&b, "kept");
    /* A length no allocator can satisfy trips the oom flag. */
    assert_int_equal(buf_append(&b, "x", SIZE_MAX - 2), CS_ERR_NOMEM);
    assert_true(b.oom);
    assert_string_equal(b.data, "kept");
    assert_int_equal(buf_appends(&b, "more"), CS_ERR_NOMEM);
    assert_int_equal(buf_appendf(&b, "%d", 1), CS_ERR_NOMEM);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.data, "kept");
    /* Detach of an oom buffer frees and yields NULL. */
    assert_null(buf_detach(&b));
    assert_false(b.oom);
    assert_null(b.data);
}

static void test_free_on_empty(void **state)
{
    struct buf b = {0};

    (void)state;
    buf_free(&b);
    assert_null(b.data);
    buf_free(&b); /* twice is fine: the struct is reset */
    assert_int_equal(b.len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_bytes_and_strings),
        cmocka_unit_test(test_nul_terminated_after_every_append),
        cmocka_unit_test(test_appendf_grows_across_many_kb),
        cmocka_unit_test(test_detach),
        cmocka_unit_test(test_oom_makes_appends_noops),
        cmocka_unit_test(test_free_on_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
