/*
 * check_sasl.c - unit tests for the AUTH byte decoders (smtpd/sasl.c):
 * strict base64 and the PLAIN message, table-driven.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtpd/smtpd.h"

static const struct {
	const char *in;
	int rc;
	const char *out;
	size_t outlen;
} b64[] = {
	{ "", 0, "", 0 },
	{ "QQ==", 0, "A", 1 },
	{ "QUI=", 0, "AB", 2 },
	{ "QUJD", 0, "ABC", 3 },
	{ "AGFsaWNlAHB3", 0, "\0alice\0pw", 9 },
	{ "YWJjZA==", 0, "abcd", 4 },
	{ "+/+/", 0, "\xfb\xff\xbf", 3 },
	{ "QQ=", -1, NULL, 0 },           /* not a multiple of 4 */
	{ "QQ", -1, NULL, 0 },
	{ "Q===", -1, NULL, 0 },          /* three pads */
	{ "====", -1, NULL, 0 },
	{ "QQ==QQ==", -1, NULL, 0 },      /* padding inside */
	{ "Q=Q=", -1, NULL, 0 },
	{ "QU I", -1, NULL, 0 },          /* a space */
	{ "QUJ\n", -1, NULL, 0 },
	{ "QUJ-", -1, NULL, 0 },          /* the URL alphabet is not base64 */
	{ "QUJ_", -1, NULL, 0 },
	{ "*", -1, NULL, 0 },
};

START_TEST(test_b64)
{
	unsigned char out[64];
	size_t n = 99;
	int rc = sasl_b64_decode(b64[_i].in, strlen(b64[_i].in), out, sizeof(out), &n);

	ck_assert_msg(rc == b64[_i].rc, "%s: rc %d", b64[_i].in, rc);
	if (rc == 0) {
		ck_assert_uint_eq(n, b64[_i].outlen);
		ck_assert_mem_eq(out, b64[_i].out, n);
	}
}
END_TEST

/* the output buffer bounds the result exactly, padding or not */
START_TEST(test_b64_bounds)
{
	unsigned char out[8];
	size_t n;

	memset(out, 0x55, sizeof(out));
	ck_assert_int_eq(sasl_b64_decode("QUJD", 4, out, 2, &n), -2);
	ck_assert_int_eq(sasl_b64_decode("QUI=", 4, out, 2, &n), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_mem_eq(out, "AB", 2);
	ck_assert_uint_eq(out[2], 0x55);        /* nothing written past the bound */
	ck_assert_int_eq(sasl_b64_decode("QUJDRA==", 8, out, 4, &n), 0);
	ck_assert_uint_eq(n, 4);
	ck_assert_mem_eq(out, "ABCD", 4);
	ck_assert_uint_eq(out[4], 0x55);
	ck_assert_int_eq(sasl_b64_decode("QUJDRA==", 8, out, 3, &n), -2);
}
END_TEST

static const struct {
	const char *msg;
	size_t len;
	enum sasl_plain_status st;
	const char *user, *pass;
} plain[] = {
	{ "\0alice@example.test\0secret", 26, SASL_PLAIN_OK, "alice@example.test", "secret" },
	{ "alice@example.test\0alice@example.test\0pw", 40, SASL_PLAIN_OK, "alice@example.test", "pw" },
	{ "ALICE@example.test\0alice@Example.test\0pw", 40, SASL_PLAIN_OK, "alice@Example.test", "pw" },
	{ "bob@example.test\0alice@example.test\0pw", 38, SASL_PLAIN_AUTHZID, NULL, NULL },
	{ "\0alice\0", 7, SASL_PLAIN_MALFORMED, NULL, NULL },       /* empty password */
	{ "\0\0pw", 4, SASL_PLAIN_MALFORMED, NULL, NULL },          /* empty user */
	{ "alice\0pw", 8, SASL_PLAIN_MALFORMED, NULL, NULL },       /* one NUL */
	{ "alicepw", 7, SASL_PLAIN_MALFORMED, NULL, NULL },
	{ "\0alice\0p\0w", 10, SASL_PLAIN_MALFORMED, NULL, NULL },  /* a NUL in the password */
	{ "", 0, SASL_PLAIN_MALFORMED, NULL, NULL },
	{ "\0a-very-long-user-name-indeed\0pw", 32, SASL_PLAIN_TOO_LONG, NULL, NULL },
};

START_TEST(test_plain)
{
	char user[24], pass[16];
	enum sasl_plain_status st;

	st = sasl_plain_parse((const unsigned char *)plain[_i].msg, plain[_i].len, user,
			      sizeof(user), pass, sizeof(pass));
	ck_assert_msg(st == plain[_i].st, "case %d: status %d", _i, (int)st);
	if (st == SASL_PLAIN_OK) {
		ck_assert_str_eq(user, plain[_i].user);
		ck_assert_str_eq(pass, plain[_i].pass);
	}
}
END_TEST

static Suite *
sasl_suite(void)
{
	Suite *s = suite_create("sasl");
	TCase *tc = tcase_create("decode");

	tcase_add_loop_test(tc, test_b64, 0, sizeof(b64) / sizeof(b64[0]));
	tcase_add_test(tc, test_b64_bounds);
	tcase_add_loop_test(tc, test_plain, 0, sizeof(plain) / sizeof(plain[0]));
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(sasl_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
