/*
 * check_utf8.c - unit tests for the UTF-8 decoder (lib/utf8.c): a table of
 * byte sequences with the length and code point expected, or 0 for what
 * RFC 3629 forbids (overlongs, surrogates, above U+10FFFF, truncated and
 * stray bytes); the control-character rule, C1 included; and the log-line
 * sanitizer.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"

#define N_(t) ((int)(sizeof(t) / sizeof((t)[0])))

static const struct {
	const char *in;
	size_t n;               /* bytes available */
	size_t len;             /* utf8_decode's answer */
	uint32_t cp;
} dcases[] = {
	{ "a", 1, 1, 'a' },
	{ "\x7f", 1, 1, 0x7f },
	{ "\xc2\x80", 2, 2, 0x80 },                     /* smallest two-byte */
	{ "\xc3\xa4", 2, 2, 0xe4 },                     /* a umlaut */
	{ "\xdf\xbf", 2, 2, 0x7ff },
	{ "\xe0\xa0\x80", 3, 3, 0x800 },                /* smallest three-byte */
	{ "\xe7\x94\xa8", 3, 3, 0x7528 },
	{ "\xed\x9f\xbf", 3, 3, 0xd7ff },               /* just below the surrogates */
	{ "\xee\x80\x80", 3, 3, 0xe000 },               /* just above */
	{ "\xef\xbf\xbf", 3, 3, 0xffff },
	{ "\xf0\x90\x80\x80", 4, 4, 0x10000 },
	{ "\xf0\x9f\x98\x80", 4, 4, 0x1f600 },
	{ "\xf4\x8f\xbf\xbf", 4, 4, 0x10ffff },         /* the last code point */
	{ "\xc3\xa4xyz", 5, 2, 0xe4 },                  /* only the first character */
	/* refused */
	{ "", 0, 0, 0 },
	{ "\x80", 1, 0, 0 },                            /* stray continuation */
	{ "\xbf", 1, 0, 0 },
	{ "\xc0\x80", 2, 0, 0 },                        /* overlong NUL */
	{ "\xc0\xaf", 2, 0, 0 },                        /* overlong '/' */
	{ "\xc1\xbf", 2, 0, 0 },
	{ "\xe0\x80\xaf", 3, 0, 0 },
	{ "\xe0\x9f\xbf", 3, 0, 0 },                    /* overlong U+07FF */
	{ "\xf0\x80\x80\xaf", 4, 0, 0 },
	{ "\xf0\x8f\xbf\xbf", 4, 0, 0 },                /* overlong U+FFFF */
	{ "\xed\xa0\x80", 3, 0, 0 },                    /* U+D800 */
	{ "\xed\xbf\xbf", 3, 0, 0 },                    /* U+DFFF */
	{ "\xf4\x90\x80\x80", 4, 0, 0 },                /* U+110000 */
	{ "\xf5\x80\x80\x80", 4, 0, 0 },
	{ "\xf8\x88\x80\x80\x80", 5, 0, 0 },            /* the old five-byte form */
	{ "\xfe", 1, 0, 0 },
	{ "\xff", 1, 0, 0 },
	{ "\xc3", 1, 0, 0 },                            /* truncated */
	{ "\xc3\xa4", 1, 0, 0 },                        /* truncated by n */
	{ "\xe7\x94", 2, 0, 0 },
	{ "\xf0\x9f\x98", 3, 0, 0 },
	{ "\xc3" "a", 2, 0, 0 },                        /* not a continuation */
	{ "\xe7\x94" "a", 3, 0, 0 },
	{ "\xe7\xc3\xa4", 3, 0, 0 },
};

START_TEST(test_decode)
{
	uint32_t cp = 0xdeadbeef;
	size_t len = utf8_decode(dcases[_i].in, dcases[_i].n, &cp);

	ck_assert_msg(len == dcases[_i].len, "case %d: length %zu, want %zu", _i, len,
		      dcases[_i].len);
	if (len > 0)
		ck_assert_msg(cp == dcases[_i].cp, "case %d: U+%04X, want U+%04X", _i,
			      (unsigned)cp, (unsigned)dcases[_i].cp);
	ck_assert_uint_eq(utf8_decode(dcases[_i].in, dcases[_i].n, NULL), len);
}
END_TEST

START_TEST(test_control)
{
	ck_assert(utf8_is_control(0));
	ck_assert(utf8_is_control(0x1f));
	ck_assert(!utf8_is_control(0x20));
	ck_assert(!utf8_is_control(0x7e));
	ck_assert(utf8_is_control(0x7f));
	ck_assert(utf8_is_control(0x80));
	ck_assert(utf8_is_control(0x85));               /* NEL */
	ck_assert(utf8_is_control(0x9f));
	ck_assert(!utf8_is_control(0xa0));
	ck_assert(!utf8_is_control(0x2028));
}
END_TEST

START_TEST(test_valid)
{
	ck_assert(utf8_valid("", 0));
	ck_assert(utf8_valid("plain ascii", 11));
	ck_assert(utf8_valid("j\xc3\xbcrgen \xe7\x94\xa8\xe6\x88\xb7 \xf0\x9f\x98\x80", 19));
	ck_assert(!utf8_valid("tab\there", 8));
	ck_assert(!utf8_valid("del\x7f", 4));
	ck_assert(!utf8_valid("nel\xc2\x85", 5));
	ck_assert(!utf8_valid("j\xfcrgen", 6));
	ck_assert(!utf8_valid("a\0b", 3));
	ck_assert(str_has_8bit("j\xc3\xbc"));
	ck_assert(!str_has_8bit("ascii~\x7f"));
	ck_assert(!str_has_8bit(""));
}
END_TEST

/* what log lines go through: UTF-8 kept, every other odd byte a '?' */
static const struct {
	const char *in, *out;
	size_t changed;
} scases[] = {
	{ "to=<j\xc3\xbcrgen@example.test>", "to=<j\xc3\xbcrgen@example.test>", 0 },
	{ "\xe7\x94\xa8\xe6\x88\xb7 \xf0\x9f\x98\x80", "\xe7\x94\xa8\xe6\x88\xb7 \xf0\x9f\x98\x80", 0 },
	{ "a\tb\x1b[31mc\x7f", "a?b?[31mc?", 3 },
	{ "nel\xc2\x85.", "nel??.", 2 },
	{ "j\xfcrgen", "j?rgen", 1 },
	{ "\xc3\xc3\xa4", "?\xc3\xa4", 1 },               /* what follows a bad byte may be good */
	{ "over\xc0\xaf", "over??", 2 },
	{ "sur\xed\xa0\x80", "sur???", 3 },
	{ "cut\xe7\x94", "cut??", 2 },
};

START_TEST(test_sanitize)
{
	char buf[128];
	size_t n = strlen(scases[_i].in);

	memcpy(buf, scases[_i].in, n + 1);
	ck_assert_uint_eq(utf8_sanitize(buf, n), scases[_i].changed);
	ck_assert_str_eq(buf, scases[_i].out);
	ck_assert(utf8_valid(buf, n));
}
END_TEST

static Suite *
utf8_suite(void)
{
	Suite *s = suite_create("utf8");
	TCase *tc = tcase_create("core");

	tcase_add_loop_test(tc, test_decode, 0, N_(dcases));
	tcase_add_test(tc, test_control);
	tcase_add_test(tc, test_valid);
	tcase_add_loop_test(tc, test_sanitize, 0, N_(scases));
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(utf8_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
