/*
 * check_mapsource.c - unit tests for the map source parser
 * (router/mapsource.c): entries, comments, blank and CRLF lines, case
 * folding of keys only, the length limits, and the exact "FILE:LINE:
 * reason" of every syntax error.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "router/router.h"

#define S(x) x, sizeof(x) - 1

/* Parses text and renders what came out: "key=value@line;" per entry,
 * then "ERR:<message>" if parsing stopped on an error. */
static void
render(const char *text, size_t len, struct dstr *out)
{
	struct mapsource ms;
	struct map_entry e;
	char err[256];
	int rc;

	dstr_init(out, 0);
	dstr_append(out, "", 0);
	mapsource_init(&ms, "t.map", text, len);
	while ((rc = mapsource_next(&ms, &e, err, sizeof(err))) == 1) {
		ck_assert_uint_eq(strlen(e.key), e.keylen);
		dstr_printf(out, "%s=%.*s@%lu;", e.key, (int)e.valuelen, e.value, e.line);
	}
	if (rc < 0)
		dstr_printf(out, "ERR:%s", err);
	/* the end stays the end */
	if (rc == 0)
		ck_assert_int_eq(mapsource_next(&ms, &e, err, sizeof(err)), 0);
}

static const struct {
	const char *text;
	size_t len;
	const char *want;
} cases[] = {
	{ S(""), "" },
	{ S("\n\n\n"), "" },
	{ S("a b\n"), "a=b@1;" },
	{ S("a b"), "a=b@1;" },                              /* no final newline */
	{ S("Alice@Example.TEST  Node-A\n"), "alice@example.test=Node-A@1;" },
	{ S("key\tvalue with  inner blanks \t \n"), "key=value with  inner blanks@1;" },
	{ S("  indented   v\n"), "indented=v@1;" },
	{ S("# comment\n  # indented comment\n\nk v\n"), "k=v@4;" },
	{ S("#k v\n"), "" },
	{ S("a#b c#d\n"), "a#b=c#d@1;" },                    /* '#' inside is data */
	{ S("a b\r\nc d\r\n"), "a=b@1;c=d@2;" },
	{ S("a b\n\r\nc d\n"), "a=b@1;c=d@3;" },             /* CRLF-only line is blank */
	{ S("x 1\ny 2\nz 3\n"), "x=1@1;y=2@2;z=3@3;" },
	{ S("k lmtp:[127.0.0.1]:24, lmtp:unix:/run/x\n"),
	  "k=lmtp:[127.0.0.1]:24, lmtp:unix:/run/x@1;" },
	/* errors, each after the entries before it */
	{ S("k\n"), "ERR:t.map:1: no value after key \"k\"" },
	{ S("ok v\nK \t \n"), "ok=v@1;ERR:t.map:2: no value after key \"k\"" },
	{ S("a b\0c\n"), "ERR:t.map:1: NUL byte" },
	{ S("a b\rc\n"), "ERR:t.map:1: carriage return inside a line" },
	{ S("a b\r\r\n"), "ERR:t.map:1: carriage return inside a line" },
	{ S("a\x01 b\n"), "ERR:t.map:1: control character 0x01" },
	{ S("a b\x7f\n"), "ERR:t.map:1: control character 0x7f" },
	/* UTF-8 is data (SMTPUTF8 addresses); only ASCII letters are folded */
	{ S("# caf\xc3\xa9\n"), "" },
	{ S("J\xc3\x9cRGEN@Example.TEST node-b\n"), "j\xc3\x9crgen@example.test=node-b@1;" },
	{ S("\xe7\x94\xa8\xe6\x88\xb7@example.test n\xc3\xb6" "de\n"),
	  "\xe7\x94\xa8\xe6\x88\xb7@example.test=n\xc3\xb6" "de@1;" },
	{ S("\xf0\x9f\x98\x80 v\n"), "\xf0\x9f\x98\x80=v@1;" },
	/* but only well formed, even in comments, and no C1 controls */
	{ S("# caf\xe9\n"), "ERR:t.map:1: malformed UTF-8 at byte 0xe9" },
	{ S("x y\n\n# c\nb\xe9 v\n"), "x=y@1;ERR:t.map:4: malformed UTF-8 at byte 0xe9" },
	{ S("a \xc0\xaf\n"), "ERR:t.map:1: malformed UTF-8 at byte 0xc0" },
	{ S("a \xed\xa0\x80\n"), "ERR:t.map:1: malformed UTF-8 at byte 0xed" },
	{ S("a \xf4\x90\x80\x80\n"), "ERR:t.map:1: malformed UTF-8 at byte 0xf4" },
	{ S("a b\xc3\n"), "ERR:t.map:1: malformed UTF-8 at byte 0xc3" },
	{ S("a \xc2\x85" "b\n"), "ERR:t.map:1: control character U+0085" },
	{ S("a\x0c b\n"), "ERR:t.map:1: control character 0x0c" },
};

START_TEST(test_cases)
{
	struct dstr out;

	render(cases[_i].text, cases[_i].len, &out);
	ck_assert_msg(strcmp(out.s, cases[_i].want) == 0, "case %d: got \"%s\", want \"%s\"",
		      _i, out.s, cases[_i].want);
	dstr_free(&out);
}
END_TEST

/* keys up to MAP_KEY_MAX and values up to MAP_VALUE_MAX, not a byte more */
START_TEST(test_limits)
{
	struct dstr text, out, want;
	char *k = xmalloc(MAP_KEY_MAX + 2), *v = xmalloc(MAP_VALUE_MAX + 2);

	memset(k, 'K', MAP_KEY_MAX + 1);
	memset(v, 'v', MAP_VALUE_MAX + 1);

	dstr_init(&text, 0);
	dstr_printf(&text, "%.*s %.*s\n", MAP_KEY_MAX, k, MAP_VALUE_MAX, v);
	render(text.s, text.len, &out);
	dstr_init(&want, 0);
	memset(k, 'k', MAP_KEY_MAX + 1);
	dstr_printf(&want, "%.*s=%.*s@1;", MAP_KEY_MAX, k, MAP_VALUE_MAX, v);
	ck_assert_str_eq(out.s, want.s);
	dstr_free(&out);

	dstr_reset(&text);
	dstr_printf(&text, "ok 1\n%.*s v\n", MAP_KEY_MAX + 1, k);
	render(text.s, text.len, &out);
	dstr_reset(&want);
	dstr_printf(&want, "ok=1@1;ERR:t.map:2: key longer than %d bytes", MAP_KEY_MAX);
	ck_assert_str_eq(out.s, want.s);
	dstr_free(&out);

	dstr_reset(&text);
	dstr_printf(&text, "k %.*s\n", MAP_VALUE_MAX + 1, v);
	render(text.s, text.len, &out);
	dstr_reset(&want);
	dstr_printf(&want, "ERR:t.map:1: value longer than %d bytes", MAP_VALUE_MAX);
	ck_assert_str_eq(out.s, want.s);
	dstr_free(&out);

	/* trailing blanks do not count against the value */
	dstr_reset(&text);
	dstr_printf(&text, "k %.*s      \n", MAP_VALUE_MAX, v);
	render(text.s, text.len, &out);
	ck_assert_ptr_null(strstr(out.s, "ERR"));
	dstr_free(&out);

	dstr_free(&text);
	dstr_free(&want);
	free(k);
	free(v);
}
END_TEST

/* the value points into the caller's buffer and never past the line */
START_TEST(test_value_points_into_source)
{
	const char text[] = "a   first value  \nb second\n";
	struct mapsource ms;
	struct map_entry e;
	char err[64];

	mapsource_init(&ms, "t", text, sizeof(text) - 1);
	ck_assert_int_eq(mapsource_next(&ms, &e, err, sizeof(err)), 1);
	ck_assert_ptr_eq(e.value, text + 4);
	ck_assert_uint_eq(e.valuelen, strlen("first value"));
	ck_assert_int_eq(mapsource_next(&ms, &e, err, sizeof(err)), 1);
	ck_assert_ptr_eq(e.value, text + 20);
	ck_assert_uint_eq(e.valuelen, 6);
	ck_assert_int_eq(mapsource_next(&ms, &e, err, sizeof(err)), 0);
}
END_TEST

/* a small error buffer truncates the message, a zero-sized one is left alone */
START_TEST(test_err_buffer)
{
	struct mapsource ms;
	struct map_entry e;
	char err[8], none[1] = { 'x' };

	mapsource_init(&ms, "long-file-name.map", S("k\n"));
	ck_assert_int_eq(mapsource_next(&ms, &e, err, sizeof(err)), -1);
	ck_assert_str_eq(err, "long-fi");
	mapsource_init(&ms, "long-file-name.map", S("k\n"));
	ck_assert_int_eq(mapsource_next(&ms, &e, none, 0), -1);
	ck_assert_int_eq(none[0], 'x');
}
END_TEST

START_TEST(test_fold)
{
	char buf[] = "MiXeD@Example.ORG+Tag-9";

	map_fold(buf, buf, strlen(buf));
	ck_assert_str_eq(buf, "mixed@example.org+tag-9");
}
END_TEST

static Suite *
mapsource_suite(void)
{
	Suite *s = suite_create("mapsource");
	TCase *tc = tcase_create("core");

	tcase_add_loop_test(tc, test_cases, 0, sizeof(cases) / sizeof(cases[0]));
	tcase_add_test(tc, test_limits);
	tcase_add_test(tc, test_value_points_into_source);
	tcase_add_test(tc, test_err_buffer);
	tcase_add_test(tc, test_fold);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(mapsource_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
