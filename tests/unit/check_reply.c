/*
 * check_reply.c - unit tests for the client-side wire formats
 * (router/reply.c): the reply parser against a table of replies, every
 * split of each complete reply, the EHLO/LHLO keyword reader, and the
 * DATA encoder (dot stuffing, bare CR and LF, any split of the input).
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "router/router.h"

#define N_(t) ((int)(sizeof(t) / sizeof((t)[0])))

struct rcase {
	const char *in;
	ssize_t ret;            /* -2: strlen(in) */
	int code;
	const char *status;
	const char *text;       /* NULL: not checked */
	unsigned nlines;
	const char *why;        /* for -1; NULL: any */
};

#define ALL (-2)
#define OKR(in, c, st, t, n) { in, .ret = ALL, .code = c, .status = st, .text = t, .nlines = n }
#define MORE(in) { in, .ret = 0 }
#define BAD(in, w) { in, .ret = -1, .why = w }

static const struct rcase rcases[] = {
	OKR("250 Ok\r\n", 250, "", "Ok", 1),
	OKR("250 2.1.5 Ok\r\n", 250, "2.1.5", "Ok", 1),
	OKR("220 node.example LMTP ready\r\n", 220, "", "node.example LMTP ready", 1),
	OKR("250\r\n", 250, "", "", 1),
	OKR("250 \r\n", 250, "", "", 1),
	OKR("250 Ok\n", 250, "", "Ok", 1),
	OKR("550 5.1.1 <x@y>: user unknown\r\n", 550, "5.1.1", "<x@y>: user unknown", 1),
	OKR("452 4.2.2 Mailbox full\r\n", 452, "4.2.2", "Mailbox full", 1),
	OKR("250 2.0.0\r\n", 250, "2.0.0", "", 1),
	OKR("354 End data with <CR><LF>.<CR><LF>\r\n", 354, "", NULL, 1),
	/* a status whose class is not the code's is text */
	OKR("250 5.1.1 odd\r\n", 250, "", "5.1.1 odd", 1),
	/* not a status: too many digits, no blank after it, missing part */
	OKR("550 5.1.1234 x\r\n", 550, "", "5.1.1234 x", 1),
	OKR("550 5.1.1x\r\n", 550, "", "5.1.1x", 1),
	OKR("550 5.1 no\r\n", 550, "", "5.1 no", 1),
	OKR("550 5.100.999 yes\r\n", 550, "5.100.999", "yes", 1),
	/* multi-line */
	OKR("250-node.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n", 250, "",
	    "node.example PIPELINING 8BITMIME", 3),
	OKR("550-5.1.1 first\r\n550 5.1.1 second\r\n", 550, "5.1.1", "first second", 2),
	OKR("550-5.1.1 first\r\n550-\r\n550 last\r\n", 550, "5.1.1", "first last", 3),
	/* only the first reply is taken */
	{ "250-a\r\n250 b\r\n250 next reply\r\n", .ret = 14, .code = 250, .status = "",
	  .text = "a b", .nlines = 2 },
	/* control and 8-bit bytes in text are made printable */
	OKR("250 a\tb\x01" "c\xc3\xa9\r\n", 250, "", "a b?c??", 1),
	OKR("250 a\rb\r\n", 250, "", "a?b", 1),
	/* need more */
	MORE(""),
	MORE("2"),
	MORE("25"),
	MORE("250"),
	MORE("250\r"),
	MORE("250 Ok"),
	MORE("250 Ok\r"),
	MORE("250-first\r\n"),
	MORE("250-first\r\n250"),
	MORE("250-first\r\n250 second"),
	/* malformed */
	BAD("hello\r\n", "malformed reply code"),
	BAD("h", "malformed reply code"),
	BAD("150 x\r\n", "malformed reply code"),
	BAD("650 x\r\n", "malformed reply code"),
	BAD("2a0 x\r\n", "malformed reply code"),
	BAD("25x", "malformed reply code"),
	BAD("250x\r\n", "malformed reply line"),
	BAD("250x", "malformed reply line"),
	BAD("250\rx", "malformed reply line"),
	BAD("250\rx\r\n", "malformed reply line"),
	BAD("25\r\n", "reply line too short"),
	BAD("\r\n", "reply line too short"),
	BAD("250-a\r\n251 b\r\n", "reply code changes between lines"),
	BAD("250-a\r\n550", "reply code changes between lines"),
	MORE("250-a\r\n2"),
	MORE("250-a\r\n25"),
	MORE("250-a\r\n24"),
	BAD("250-a\r\n240", "reply code changes between lines"),
};

static void
check_case(const struct rcase *c, const char *in, size_t len)
{
	struct reply r;
	const char *why = NULL;
	ssize_t want = c->ret == ALL ? (ssize_t)len : c->ret;
	ssize_t got = reply_parse(in, len, &r, &why);

	ck_assert_msg(got == want, "\"%s\": returned %zd, want %zd (%s)", c->in, got, want,
		      why ? why : "");
	if (got > 0) {
		ck_assert_int_eq(r.code, c->code);
		ck_assert_str_eq(r.status, c->status);
		if (c->text)
			ck_assert_str_eq(r.text, c->text);
		ck_assert_uint_eq(r.nlines, c->nlines);
	} else if (got < 0) {
		ck_assert_ptr_nonnull(why);
		if (c->why)
			ck_assert_str_eq(why, c->why);
	}
}

START_TEST(test_reply_table)
{
	const struct rcase *c = &rcases[_i];
	size_t len = strlen(c->in);
	char *copy = malloc(len ? len : 1);
	size_t cut;
	struct reply r;
	const char *why;

	/* an exact-size copy, so that the sanitizer sees reads past the end */
	memcpy(copy, c->in, len);
	check_case(c, copy, len);
	/* a complete reply is "need more" when any of its tail is missing */
	if (c->ret > 0 || c->ret == ALL)
		for (cut = 0; cut < (size_t)(c->ret == ALL ? (ssize_t)len : c->ret); cut++)
			ck_assert_msg(reply_parse(copy, cut, &r, &why) == 0,
				      "\"%s\" cut at %zu is not need-more", c->in, cut);
	free(copy);
}
END_TEST

START_TEST(test_reply_limits)
{
	struct dstr d;
	struct reply r;
	const char *why;
	int i;

	/* a line of REPLY_LINE_MAX bytes, CR LF included, is fine; one more is not */
	dstr_init(&d, 0);
	dstr_append(&d, "250 ", 4);
	while (d.len < REPLY_LINE_MAX - 2)
		dstr_append(&d, "x", 1);
	dstr_append(&d, "\r\n", 2);
	ck_assert_int_eq(reply_parse(d.s, d.len, &r, &why), REPLY_LINE_MAX);
	ck_assert_uint_eq(strlen(r.text), REPLY_TEXT_MAX - 1);
	dstr_reset(&d);
	dstr_append(&d, "250 ", 4);
	while (d.len < REPLY_LINE_MAX - 1)
		dstr_append(&d, "x", 1);
	dstr_append(&d, "\r\n", 2);
	ck_assert_int_eq(reply_parse(d.s, d.len, &r, &why), -1);
	ck_assert_str_eq(why, "reply line too long");
	/* no line end within the limit: an error before the rest arrives */
	ck_assert_int_eq(reply_parse(d.s, REPLY_LINE_MAX, &r, &why), -1);
	ck_assert_int_eq(reply_parse(d.s, REPLY_LINE_MAX - 1, &r, &why), 0);

	/* REPLY_LINES_MAX lines are fine, one more is not */
	dstr_reset(&d);
	for (i = 0; i < REPLY_LINES_MAX - 1; i++)
		dstr_printf(&d, "250-line %d\r\n", i);
	dstr_printf(&d, "250 last\r\n");
	ck_assert_int_eq(reply_parse(d.s, d.len, &r, &why), (ssize_t)d.len);
	ck_assert_uint_eq(r.nlines, REPLY_LINES_MAX);
	ck_assert_uint_lt(strlen(r.text), REPLY_TEXT_MAX);
	ck_assert(strncmp(r.text, "line 0 line 1 line 2 ", 21) == 0);
	dstr_reset(&d);
	for (i = 0; i < REPLY_LINES_MAX; i++)
		dstr_printf(&d, "250-line %d\r\n", i);
	ck_assert_int_eq(reply_parse(d.s, d.len, &r, &why), -1);
	ck_assert_str_eq(why, "too many reply lines");
	dstr_free(&d);
}
END_TEST

struct ecase {
	const char *in;
	bool pipelining, eightbitmime, enhanced, dsn, size;
	unsigned long long size_max;
	bool starttls, smtputf8, chunking;
};

static const struct ecase ecases[] = {
	{ "250 node.example\r\n", .pipelining = false },
	{ "250 PIPELINING\r\n", .pipelining = false },       /* the first line is the server's name */
	{ "250-node.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
	  "250-DSN\r\n250 SIZE 10240000\r\n", .pipelining = true, .eightbitmime = true,
	  .enhanced = true, .dsn = true, .size = true, .size_max = 10240000 },
	{ "250-node\r\n250-pipelining\r\n250 8bitmime\r\n", .pipelining = true,
	  .eightbitmime = true },
	{ "250-node\r\n250-SIZE\r\n250 ENHANCEDSTATUSCODES\r\n", .enhanced = true, .size = true },
	{ "250-node\r\n250-SIZE 0\r\n", .size = true },
	{ "250-node\r\n250-SIZE abc\r\n", .size = true },
	{ "250-node\r\n250-SIZE 12x\r\n", .size = true },
	{ "250-node\r\n250-SIZE 99999999999999999999999\r\n", .size = true },
	{ "250-node\r\n250 SIZE 100 extra\r\n", .size = true, .size_max = 100 },
	{ "250-node\r\n250-PIPELININGX\r\n250-X-PIPELINING\r\n250 8BITMIMES\r\n", .pipelining = false },
	{ "250-node\n250 PIPELINING\n", .pipelining = true },
	{ "250-node\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n", .starttls = true },
	{ "250-node\r\n250-STARTTLS\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n", .starttls = true,
	  .smtputf8 = true, .chunking = true },
	{ "250-node\r\n250-starttls\r\n250-SmtpUtf8\r\n250 chunking\r\n", .starttls = true,
	  .smtputf8 = true, .chunking = true },
	{ "250 STARTTLS\r\n", .starttls = false },          /* the server's name, not a keyword */
	{ "250-node\r\n250-STARTTLSX\r\n250-SMTPUTF\r\n250-X-CHUNKING\r\n250 CHUNKING2\r\n",
	  .starttls = false },
	{ "250-node\r\n250-CHUNKING extra\r\n250 SMTPUTF8\r\n", .chunking = true, .smtputf8 = true },
	{ "250-node\n250-STARTTLS\n250 8BITMIME\n", .starttls = true, .eightbitmime = true },
};

START_TEST(test_ehlo)
{
	const struct ecase *e = &ecases[_i];
	struct ehlo_caps c;

	ehlo_parse(e->in, strlen(e->in), &c);
	ck_assert_msg(c.pipelining == e->pipelining, "%s: pipelining", e->in);
	ck_assert_msg(c.eightbitmime == e->eightbitmime, "%s: 8bitmime", e->in);
	ck_assert_msg(c.enhancedstatuscodes == e->enhanced, "%s: enhanced", e->in);
	ck_assert_msg(c.dsn == e->dsn, "%s: dsn", e->in);
	ck_assert_msg(c.size == e->size, "%s: size", e->in);
	ck_assert_msg(c.size_max == e->size_max, "%s: size_max %llu", e->in, c.size_max);
	ck_assert_msg(c.starttls == e->starttls, "%s: starttls", e->in);
	ck_assert_msg(c.smtputf8 == e->smtputf8, "%s: smtputf8", e->in);
	ck_assert_msg(c.chunking == e->chunking, "%s: chunking", e->in);
}
END_TEST

struct dcase {
	const char *in, *out;
};

static const struct dcase dcases[] = {
	{ "", ".\r\n" },
	{ "a\r\n", "a\r\n.\r\n" },
	{ "a", "a\r\n.\r\n" },
	{ ".\r\n", "..\r\n.\r\n" },
	{ ".x\r\n", "..x\r\n.\r\n" },
	{ "a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n" },
	{ "a.b\r\n..\r\n", "a.b\r\n...\r\n.\r\n" },
	{ "x\r\n.", "x\r\n..\r\n.\r\n" },
	/* bare LF and bare CR end a line, as CR LF */
	{ "a\nb\n", "a\r\nb\r\n.\r\n" },
	{ "a\rb\r", "a\r\nb\r\n.\r\n" },
	{ "a\n.b\n", "a\r\n..b\r\n.\r\n" },
	{ "a\r.b", "a\r\n..b\r\n.\r\n" },
	{ "a\r\r\nb", "a\r\n\r\nb\r\n.\r\n" },
	{ "a\n\rb", "a\r\n\r\nb\r\n.\r\n" },
	{ "\r\n.\r\n", "\r\n..\r\n.\r\n" },
	{ "\n", "\r\n.\r\n" },
	{ "\r", "\r\n.\r\n" },
	/* the smuggling classic: "\n.\n" must not end the data */
	{ "a\n.\nMAIL FROM:<x>\r\n", "a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n" },
};

static size_t
encode(const char *in, size_t len, size_t step, size_t limit, unsigned char *out)
{
	struct dotstuff d;
	size_t i, n, o = 0;

	dotstuff_init(&d, limit);
	for (i = 0; i < len; i += n) {
		n = len - i < step ? len - i : step;
		o += dotstuff(&d, (const unsigned char *)in + i, n, out + o);
	}
	o += dotstuff_end(&d, out + o);
	return o;
}

/* in, fed in steps of every size, encodes to want */
static void
encodes_to(const char *in, size_t limit, const char *want, int i)
{
	size_t len = strlen(in), step, n;
	unsigned char out[256];

	for (step = 1; step <= len + 1; step++) {
		memset(out, 0, sizeof(out));
		n = encode(in, len, step, limit, out);
		ck_assert_msg(n == strlen(want) && memcmp(out, want, n) == 0,
			      "input #%d in steps of %zu: got \"%.*s\"", i, step, (int)n, out);
	}
}

START_TEST(test_dotstuff)
{
	const struct dcase *c = &dcases[_i];

	encodes_to(c->in, 0, c->out, _i);
}
END_TEST

/* the output bound is 2 * len + 2 per call, reached by a CR carried over,
 * and by a line broken at the limit (4 at least) right at a call's start */
START_TEST(test_dotstuff_bound)
{
	struct dotstuff d;
	unsigned char out[8];

	dotstuff_init(&d, 0);
	ck_assert_uint_eq(dotstuff(&d, (const unsigned char *)"\r", 1, out), 0);
	ck_assert_uint_eq(dotstuff(&d, (const unsigned char *)".", 1, out), 4);
	ck_assert(memcmp(out, "\r\n..", 4) == 0);
	dotstuff_init(&d, 4);
	ck_assert_uint_eq(dotstuff(&d, (const unsigned char *)"abcd", 4, out), 4);
	ck_assert_uint_eq(dotstuff(&d, (const unsigned char *)"e", 1, out), 4);
	ck_assert(memcmp(out, "\r\n e", 4) == 0);
}
END_TEST

/* lines past the limit are broken by CR LF SP, in whatever steps they come */
static const struct lcase {
	size_t limit;
	const char *in, *out;
} lcases[] = {
	{ 5, "abcde\n", "abcde\r\n.\r\n" },
	{ 5, "abcdef\n", "abcde\r\n f\r\n.\r\n" },
	{ 5, "abcdefghijklm", "abcde\r\n fghi\r\n jklm\r\n.\r\n" },
	/* the stuffed dot is not counted; the pieces after a break need none */
	{ 5, ".bcdef\r\n.", "..bcde\r\n f\r\n..\r\n.\r\n" },
	{ 5, "abcde.fg\r\n", "abcde\r\n .fg\r\n.\r\n" },
	/* a CR LF, bare CR or bare LF right at the limit ends the line unbroken */
	{ 5, "abcde\rabcde\r\nabcde", "abcde\r\nabcde\r\nabcde\r\n.\r\n" },
	{ 4, "abcdefghij", "abcd\r\n efg\r\n hij\r\n.\r\n" },
	/* 1 to 3 are 4 */
	{ 1, "abcdefg", "abcd\r\n efg\r\n.\r\n" },
	{ 0, "abcdefghij", "abcdefghij\r\n.\r\n" },
};

START_TEST(test_dotstuff_line_limit)
{
	const struct lcase *c = &lcases[_i];

	encodes_to(c->in, c->limit, c->out, _i);
}
END_TEST

static Suite *
reply_suite(void)
{
	Suite *s = suite_create("reply");
	TCase *tc = tcase_create("core");

	tcase_add_loop_test(tc, test_reply_table, 0, N_(rcases));
	tcase_add_test(tc, test_reply_limits);
	tcase_add_loop_test(tc, test_ehlo, 0, N_(ecases));
	tcase_add_loop_test(tc, test_dotstuff, 0, N_(dcases));
	tcase_add_test(tc, test_dotstuff_bound);
	tcase_add_loop_test(tc, test_dotstuff_line_limit, 0, N_(lcases));
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(reply_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
