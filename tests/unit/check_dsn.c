/*
 * check_dsn.c - unit tests for lib/dsnparam.c and queue/dsn.c: tables of RFC 3461 parameter
 * strings (as the spool stores them) and of xtext and SMTP replies, and
 * reports from dsn_build taken apart again (header fields, MIME boundary
 * and parts, delivery-status fields, CRLF discipline).
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "lib/lib.h"
#include "queue/queue.h"

#define N_(t) ((int)(sizeof(t) / sizeof((t)[0])))

/* ---- recipient parameters ---- */

#define ORCPT500 "rfc822;" \
	"a123456789012345678901234567890123456789012345678901234567890123456789" \
	"0123456789012345678901234567890123456789012345678901234567890123456789" \
	"0123456789012345678901234567890123456789012345678901234567890123456789" \
	"0123456789012345678901234567890123456789012345678901234567890123456789" \
	"0123456789012345678901234567890123456789012345678901234567890123456789" \
	"0123456789012345678901234567890123456789012345678901234567890123456789" \
	"012345678901234567890123456789012345678901234567890123456789012345@x.test"

struct rcase {
	const char *in;
	int rc;
	int notify;
	const char *type, *orcpt;       /* NULL: "" */
	const char *why;                /* on error: exact reason */
};

static const struct rcase rcases[] = {
	{ .in = NULL },
	{ .in = "" },
	{ .in = "   " },
	{ .in = "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice+2Bx@example.test", .notify = 3,
	  .type = "rfc822", .orcpt = "alice+x@example.test" },
	{ .in = "NOTIFY=NEVER", .notify = 8 },
	{ .in = "NOTIFY=DELAY", .notify = 4 },
	{ .in = "notify=delay,success", .notify = 5 },
	{ .in = "NOTIFY=SUCCESS,FAILURE,DELAY", .notify = 7 },
	{ .in = "ORCPT=rfc822;bob@example.test", .type = "rfc822",
	  .orcpt = "bob@example.test" },
	{ .in = "ORCPT=x-local;a+20b+3Dc", .type = "x-local", .orcpt = "a b=c" },
	{ .in = "  NOTIFY=FAILURE   ORCPT=rfc822;c@x  ", .notify = 2, .type = "rfc822",
	  .orcpt = "c@x" },
	{ .in = "ORCPT=" ORCPT500, .type = "rfc822", .orcpt = &ORCPT500[7] },
	{ .in = "ORCPT=" ORCPT500 "t", .rc = -1, .why = "ORCPT too long" },
	{ .in = "NOTIFY=NEVER,SUCCESS", .rc = -1, .why = "NOTIFY=NEVER must be alone" },
	{ .in = "NOTIFY=FAILURE,NEVER", .rc = -1, .why = "NOTIFY=NEVER must be alone" },
	{ .in = "NOTIFY=SUCCESS,SUCCESS", .rc = -1, .why = "invalid NOTIFY value" },
	{ .in = "NOTIFY=SUCCESS,", .rc = -1, .why = "invalid NOTIFY value" },
	{ .in = "NOTIFY=ALWAYS", .rc = -1, .why = "invalid NOTIFY value" },
	{ .in = "NOTIFY=", .rc = -1, .why = "missing parameter value" },
	{ .in = "NOTIFY", .rc = -1, .why = "missing parameter value" },
	{ .in = "=SUCCESS", .rc = -1, .why = "missing parameter keyword" },
	{ .in = "NOTIFY=DELAY NOTIFY=DELAY", .rc = -1, .why = "duplicate NOTIFY" },
	{ .in = "ORCPT=rfc822;a@x ORCPT=rfc822;b@x", .rc = -1, .why = "duplicate ORCPT" },
	{ .in = "ORCPT=rfc822;a+G1@x", .rc = -1, .why = "malformed xtext hex escape" },
	{ .in = "ORCPT=rfc822;a+4", .rc = -1, .why = "malformed xtext hex escape" },
	{ .in = "ORCPT=rfc822;a+", .rc = -1, .why = "malformed xtext hex escape" },
	{ .in = "ORCPT=rfc822;a+4a@x", .rc = -1, .why = "malformed xtext hex escape" },
	{ .in = "ORCPT=rfc822;a+0D+0AX-Evil:+20y", .rc = -1,
	  .why = "xtext decodes to a control or 8-bit character" },
	{ .in = "ORCPT=rfc822;a+00", .rc = -1,
	  .why = "xtext decodes to a control or 8-bit character" },
	{ .in = "ORCPT=rfc822;j+C3+B6rg@x", .rc = -1,
	  .why = "xtext decodes to a control or 8-bit character" },
	{ .in = "ORCPT=rfc822;a=b@x", .rc = -1, .why = "invalid character in xtext" },
	{ .in = "ORCPT=rfc822;j\xc3\xb6rg@x", .rc = -1, .why = "invalid character in xtext" },
	{ .in = "ORCPT=;a@x", .rc = -1, .why = "invalid ORCPT value" },
	{ .in = "ORCPT=rfc822;", .rc = -1, .why = "invalid ORCPT value" },
	{ .in = "ORCPT=rfc822", .rc = -1, .why = "invalid ORCPT value" },
	{ .in = "ORCPT=rfc_822;a@x", .rc = -1, .why = "invalid ORCPT address type" },
	{ .in = "ORCPT=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;a@x",
	  .rc = -1, .why = "ORCPT address type too long" },
	{ .in = "FOO=BAR", .rc = -1, .why = "unknown recipient DSN parameter" },
	{ .in = "NOTIFY=NEVER RET=FULL", .rc = -1, .why = "unknown recipient DSN parameter" },
};

START_TEST(test_rcpt_params)
{
	const struct rcase *c = &rcases[_i];
	struct dsn_rcpt_params p;
	const char *why = NULL;
	int rc;

	memset(&p, 0x5a, sizeof(p));
	rc = dsn_parse_rcpt_params(c->in, &p, &why);
	ck_assert_msg(rc == c->rc, "\"%s\": rc %d, want %d (%s)", c->in, rc, c->rc,
		      why ? why : "");
	/* the reason is optional */
	ck_assert_int_eq(dsn_parse_rcpt_params(c->in, &p, NULL), c->rc);
	if (rc < 0) {
		ck_assert_str_eq(why, c->why);
		/* nothing half-parsed is left behind */
		ck_assert_int_eq(p.notify, 0);
		ck_assert_str_eq(p.orcpt_type, "");
		ck_assert_str_eq(p.orcpt, "");
		return;
	}
	ck_assert_int_eq(p.notify, c->notify);
	ck_assert_str_eq(p.orcpt_type, c->type ? c->type : "");
	ck_assert_str_eq(p.orcpt, c->orcpt ? c->orcpt : "");
}
END_TEST

/* ---- sender parameters ---- */

#define ENVID100 "0123456789012345678901234567890123456789012345678901234567890123456789" \
	"012345678901234567890123456789"

struct scase {
	const char *in;
	int rc, ret;
	const char *envid;
	const char *why;
	bool smtputf8;
};

static const struct scase scases[] = {
	{ .in = NULL },
	{ .in = "" },
	{ .in = "RET=HDRS ENVID=QQ314159", .ret = 2, .envid = "QQ314159" },
	{ .in = "RET=FULL", .ret = 1 },
	{ .in = "ret=hdrs", .ret = 2 },
	{ .in = "ENVID=a+2Bb+3Dc", .envid = "a+b=c" },
	{ .in = "ENVID=" ENVID100 " RET=FULL", .ret = 1, .envid = ENVID100 },
	{ .in = "ENVID=" ENVID100 "0", .rc = -1, .why = "ENVID too long" },
	{ .in = "ENVID=a+20b", .rc = -1, .why = "invalid ENVID value" },
	{ .in = "ENVID=+G1", .rc = -1, .why = "malformed xtext hex escape" },
	{ .in = "ENVID=ab+4", .rc = -1, .why = "malformed xtext hex escape" },
	{ .in = "ENVID=", .rc = -1, .why = "missing parameter value" },
	{ .in = "RET=BOGUS", .rc = -1, .why = "invalid RET value" },
	{ .in = "RET=FULL RET=HDRS", .rc = -1, .why = "duplicate RET" },
	{ .in = "ENVID=a ENVID=b", .rc = -1, .why = "duplicate ENVID" },
	{ .in = "NOTIFY=NEVER", .rc = -1, .why = "unknown sender DSN parameter" },
	{ .in = "RET=FULL SIZE=10", .rc = -1, .why = "unknown sender DSN parameter" },
	/* RFC 6531: SMTPUTF8 is kept beside them, the keyword alone */
	{ .in = "SMTPUTF8", .smtputf8 = true },
	{ .in = "RET=HDRS ENVID=x SMTPUTF8", .ret = 2, .envid = "x", .smtputf8 = true },
	{ .in = "smtputf8 RET=FULL", .ret = 1, .smtputf8 = true },
	{ .in = "SMTPUTF8=yes", .rc = -1, .why = "SMTPUTF8 takes no value" },
	{ .in = "SMTPUTF8=", .rc = -1, .why = "missing parameter value" },
	{ .in = "SMTPUTF8 SMTPUTF8", .rc = -1, .why = "duplicate SMTPUTF8" },
	{ .in = "RET", .rc = -1, .why = "missing parameter value" },
	{ .in = "SMTPUTF8 BOGUS", .rc = -1, .why = "missing parameter value" },
	{ .in = "=SMTPUTF8", .rc = -1, .why = "missing parameter keyword" },
};

START_TEST(test_sender_params)
{
	const struct scase *c = &scases[_i];
	struct dsn_sender_params p;
	const char *why = NULL;
	int rc;

	memset(&p, 0x5a, sizeof(p));
	rc = dsn_parse_sender_params(c->in, &p, &why);
	ck_assert_msg(rc == c->rc, "\"%s\": rc %d, want %d (%s)", c->in, rc, c->rc,
		      why ? why : "");
	ck_assert_int_eq(dsn_parse_sender_params(c->in, &p, NULL), c->rc);
	if (rc < 0) {
		ck_assert_str_eq(why, c->why);
		ck_assert_int_eq(p.ret, 0);
		ck_assert_str_eq(p.envid, "");
		ck_assert(!p.smtputf8);
		return;
	}
	ck_assert_int_eq(p.ret, c->ret);
	ck_assert_str_eq(p.envid, c->envid ? c->envid : "");
	ck_assert_int_eq(p.smtputf8, c->smtputf8);
}
END_TEST

/* What the SMTP server writes is written back the same by the formatters */
START_TEST(test_format)
{
	static const char *const rcpt[] = {
		"NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice+2Bx@example.test",
		"NOTIFY=NEVER", "NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;a+20b",
		"NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=x-type;+3Dx", "",
	};
	static const char *const sender[] = {
		"RET=HDRS ENVID=QQ314159", "RET=FULL", "ENVID=a+2Bb", "",
		"SMTPUTF8", "RET=FULL ENVID=a+2Bb SMTPUTF8",
	};
	struct dsn_rcpt_params rp;
	struct dsn_sender_params sp;
	struct dstr d;
	size_t i;

	dstr_init(&d, 0);
	for (i = 0; i < sizeof(rcpt) / sizeof(rcpt[0]); i++) {
		ck_assert_int_eq(dsn_parse_rcpt_params(rcpt[i], &rp, NULL), 0);
		dstr_reset(&d);
		dsn_format_rcpt_params(&rp, &d);
		ck_assert_str_eq(d.len ? d.s : "", rcpt[i]);
	}
	for (i = 0; i < sizeof(sender) / sizeof(sender[0]); i++) {
		ck_assert_int_eq(dsn_parse_sender_params(sender[i], &sp, NULL), 0);
		dstr_reset(&d);
		dsn_format_sender_params(&sp, &d);
		ck_assert_str_eq(d.len ? d.s : "", sender[i]);
	}
	/* lower-case keywords come back in the canonical form */
	ck_assert_int_eq(dsn_parse_rcpt_params("orcpt=rfc822;+41b notify=delay,success", &rp,
					       NULL), 0);
	dstr_reset(&d);
	dsn_format_rcpt_params(&rp, &d);
	ck_assert_str_eq(d.s, "NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Ab");
	dstr_free(&d);
}
END_TEST

/* ---- xtext ---- */

struct xcase {
	const char *in;
	int rc;                 /* decoded length, or -1 */
	const char *out;
};

static const struct xcase xcases[] = {
	{ .in = "", .out = "" },
	{ .in = "abc", .rc = 3, .out = "abc" },
	{ .in = "+2B+3D", .rc = 2, .out = "+=" },
	{ .in = "a+20b", .rc = 3, .out = "a b" },
	{ .in = "+7E", .rc = 1, .out = "~" },
	{ .in = "+7F", .rc = -1 },
	{ .in = "+1F", .rc = -1 },
	{ .in = "+80", .rc = -1 },
	{ .in = "+2b", .rc = -1 },
	{ .in = "+G1", .rc = -1 },
	{ .in = "a+4", .rc = -1 },
	{ .in = "a+", .rc = -1 },
	{ .in = "a b", .rc = -1 },
	{ .in = "a=b", .rc = -1 },
	{ .in = "a\x7f", .rc = -1 },
};

START_TEST(test_xtext_decode)
{
	const struct xcase *c = &xcases[_i];
	char out[16];
	const char *why = NULL;
	int rc = xtext_decode(c->in, strlen(c->in), out, sizeof(out), &why);

	ck_assert_msg(rc == c->rc, "\"%s\": %d, want %d", c->in, rc, c->rc);
	if (rc >= 0)
		ck_assert_str_eq(out, c->out);
	else
		ck_assert_ptr_nonnull(why);
}
END_TEST

START_TEST(test_xtext_bounds)
{
	char out[4];
	const char *why = NULL;

	ck_assert_int_eq(xtext_decode("abc", 3, out, sizeof(out), &why), 3);
	ck_assert_int_eq(xtext_decode("abcd", 4, out, sizeof(out), &why), -1);
	ck_assert_str_eq(why, "xtext value too long");
	ck_assert_int_eq(xtext_decode("ab+41", 5, out, sizeof(out), &why), 3);
	ck_assert_str_eq(out, "abA");
	/* only n bytes are read: the "+4" past them does not count */
	ck_assert_int_eq(xtext_decode("ab+4", 2, out, sizeof(out), &why), 2);
	ck_assert_int_eq(xtext_decode("", 0, out, 0, &why), -1);
}
END_TEST

/* every printable byte and space survives encode then decode */
START_TEST(test_xtext_round_trip)
{
	char all[96], back[96];
	struct dstr d;
	size_t i;

	for (i = 0; i < 95; i++)
		all[i] = (char)(32 + i);
	all[95] = '\0';
	dstr_init(&d, 0);
	xtext_encode(all, 95, &d);
	ck_assert_ptr_null(strchr(d.s, ' '));
	ck_assert_ptr_null(strchr(d.s, '='));
	ck_assert_int_eq(xtext_decode(d.s, d.len, back, sizeof(back), NULL), 95);
	ck_assert_str_eq(back, all);
	dstr_reset(&d);
	xtext_encode("a+b=c d\r\n", 9, &d);
	ck_assert_str_eq(d.s, "a+2Bb+3Dc+20d+0D+0A");
	dstr_free(&d);
	/* a bounded string that cannot take the whole encoding takes none */
	dstr_init(&d, 5);
	xtext_encode("++", 2, &d);
	ck_assert_uint_eq(d.len, 0);
	dstr_free(&d);
}
END_TEST

/* ---- status codes from replies ---- */

struct stcase {
	const char *reply;
	bool ok;
	const char *status;
};

static const struct stcase stcases[] = {
	{ .reply = "550 5.1.1 <x@example.test>: user unknown", .ok = true, .status = "5.1.1" },
	{ .reply = "250 2.0.0 Ok", .ok = true, .status = "2.0.0" },
	{ .reply = "250 2.1.5", .ok = true, .status = "2.1.5" },
	{ .reply = "452 4.2.2 Mailbox full", .ok = true, .status = "4.2.2" },
	{ .reply = "550-5.7.1 first line\r\n550 5.7.1 second", .ok = true, .status = "5.7.1" },
	{ .reply = "550 5.123.999 odd but valid", .ok = true, .status = "5.123.999" },
	{ .reply = "250  2.1.5 two spaces", .ok = true, .status = "2.1.5" },
	{ .reply = "550 user unknown", .ok = true, .status = "5.0.0" },
	{ .reply = "451 try later", .ok = true, .status = "4.0.0" },
	{ .reply = "250 ok", .ok = true, .status = "2.0.0" },
	{ .reply = "550", .ok = true, .status = "5.0.0" },
	{ .reply = "550 4.1.1 class disagrees", .ok = true, .status = "5.0.0" },
	{ .reply = "550 5.1.1234 detail too long", .ok = true, .status = "5.0.0" },
	{ .reply = "550 5.1234.1 subject too long", .ok = true, .status = "5.0.0" },
	{ .reply = "550 5.1. x", .ok = true, .status = "5.0.0" },
	{ .reply = "550 5.1.1: glued", .ok = true, .status = "5.0.0" },
	{ .reply = "550 3.1.1 bad class", .ok = true, .status = "5.0.0" },
	{ .reply = "354 go ahead", .ok = false, .status = "" },
	{ .reply = "150 x", .ok = false, .status = "" },
	{ .reply = "", .ok = false, .status = "" },
	{ .reply = NULL, .ok = false, .status = "" },
	{ .reply = "55", .ok = false, .status = "" },
	{ .reply = "5500 x", .ok = false, .status = "" },
	{ .reply = "5x0 x", .ok = false, .status = "" },
	{ .reply = "hello", .ok = false, .status = "" },
	{ .reply = " 550 5.1.1 leading space", .ok = false, .status = "" },
};

START_TEST(test_status_from_reply)
{
	const struct stcase *c = &stcases[_i];
	char status[16];

	memset(status, 'z', sizeof(status));
	ck_assert_msg(dsn_status_from_reply(c->reply, status) == c->ok, "\"%s\"",
		      c->reply ? c->reply : "(null)");
	ck_assert_str_eq(status, c->status);
}
END_TEST

/* ---- reports ---- */

#define HOST "mx1.example.test"
#define ARRIVAL 1700000000000000ull
#define ATTEMPT 1700000100000000ull
#define RETRY 1700400000000000ull

static const char content[] =
	"Received: from client.test ([127.0.0.1])\r\n\tby " HOST "\r\n"
	"From: <a@remote.test>\r\nSubject: test\r\n\r\nsecret body line\r\n.dotted\r\n";
static const char content_headers[] =
	"Received: from client.test ([127.0.0.1])\r\n\tby " HOST "\r\n"
	"From: <a@remote.test>\r\nSubject: test\r\n";

struct part {
	const char *hdr, *body;
	size_t hdrlen, bodylen;
};

/* a report taken apart: raw bytes, top header section and MIME parts */
struct msg {
	struct dstr raw;
	size_t hdrlen;
	char boundary[128];
	struct part parts[8];
	size_t nparts;
};

static void
fixture(struct dsn_report *r, struct dsn_entry e[2])
{
	*r = (struct dsn_report){ .reporting_mta = HOST, .queue_id = "0123456789AB",
		.arrival_usec = ARRIVAL, .sender = "a@remote.test", .envid = "QQ314159",
		.kind = DSN_FAILURE, .content = (const unsigned char *)content,
		.content_len = sizeof(content) - 1 };
	e[0] = (struct dsn_entry){ .final_rcpt = "bob@example.test", .orcpt_type = "rfc822",
		.orcpt = "bob+orig@example.test", .action = "failed", .status = "5.1.1",
		.remote_mta = "127.0.0.1", .diagnostic = "550 5.1.1 <bob@example.test>: user unknown",
		.diagnostic_is_reply = true, .last_attempt_usec = ATTEMPT, .will_retry_until_usec = RETRY };
	/* "5.1" is not a valid code: it is replaced */
	e[1] = (struct dsn_entry){ .final_rcpt = "carol@example.test", .action = "failed",
		.status = "5.1" };
}

/* Every line ends in CRLF; there is no CR or LF anywhere else */
static void
check_crlf(const char *s, size_t len)
{
	size_t i;

	ck_assert_uint_ge(len, 2);
	ck_assert(s[len - 2] == '\r' && s[len - 1] == '\n');
	for (i = 0; i < len; i++) {
		if (s[i] == '\r')
			ck_assert_msg(i + 1 < len && s[i + 1] == '\n', "bare CR at %zu", i);
		if (s[i] == '\n')
			ck_assert_msg(i > 0 && s[i - 1] == '\r', "bare LF at %zu", i);
	}
}

/* The longest line in s (CRLF not counted) */
static size_t
longest_line(const char *s, size_t len)
{
	size_t i, line = 0, max = 0;

	for (i = 0; i < len; i++) {
		line = s[i] == '\r' || s[i] == '\n' ? 0 : line + 1;
		max = line > max ? line : max;
	}
	return max;
}

/* The unfolded value of the first field called name in a header block, or
 * NULL; *count (if not NULL) says how many such fields there are. */
static char *
field(const char *h, size_t len, const char *name, int *count)
{
	const char *end = h + len, *line, *eol;
	size_t nlen = strlen(name);
	struct dstr v;
	int found = 0;

	dstr_init(&v, 0);
	for (line = h; line < end; line = eol + 2) {
		eol = memmem(line, (size_t)(end - line), "\r\n", 2);
		if (eol == NULL)
			eol = end;
		if ((size_t)(eol - line) > nlen && line[nlen] == ':' &&
		    strncasecmp(line, name, nlen) == 0) {
			if (found++ == 0) {
				const char *p = line + nlen + 1;

				while (*p == ' ' || *p == '\t')
					p++;
				dstr_append(&v, p, (size_t)(eol - p));
				/* continuation lines belong to it, minus their CRLF */
				while (eol + 2 < end && (eol[2] == ' ' || eol[2] == '\t')) {
					line = eol + 2;
					eol = memmem(line, (size_t)(end - line), "\r\n", 2);
					if (eol == NULL)
						eol = end;
					dstr_append(&v, line, (size_t)(eol - line));
				}
			}
		}
		if (eol == end)
			break;
	}
	if (count != NULL)
		*count = found;
	if (!found)
		return NULL;
	return v.s != NULL ? v.s : xstrdup("");
}

static void
field_eq(const char *h, size_t len, const char *name, const char *want)
{
	int count;
	char *v = field(h, len, name, &count);

	if (want == NULL) {
		ck_assert_msg(v == NULL, "%s: present (%s), want absent", name, v);
		return;
	}
	ck_assert_msg(v != NULL, "%s: absent, want \"%s\"", name, want);
	ck_assert_msg(count == 1, "%s: %d fields", name, count);
	ck_assert_msg(strcmp(v, want) == 0, "%s: \"%s\", want \"%s\"", name, v, want);
	free(v);
}

static void
parse_msg(struct msg *m)
{
	const char *s = m->raw.s, *end = s + m->raw.len, *p, *b, *next;
	char delim[140], *ct;
	size_t dlen, count = 0;

	check_crlf(s, m->raw.len);
	p = memmem(s, m->raw.len, "\r\n\r\n", 4);
	ck_assert_ptr_nonnull(p);
	m->hdrlen = (size_t)(p - s) + 2;
	ct = field(s, m->hdrlen, "Content-Type", NULL);
	ck_assert_ptr_nonnull(ct);
	ck_assert_msg(strncmp(ct, "multipart/report; report-type=delivery-status;", 46) == 0,
		      "Content-Type: %s", ct);
	b = strstr(ct, "boundary=\"");
	ck_assert_ptr_nonnull(b);
	b += 10;
	ck_assert_ptr_nonnull(strchr(b, '"'));
	snprintf(m->boundary, sizeof(m->boundary), "%.*s", (int)(strchr(b, '"') - b), b);
	free(ct);
	ck_assert_uint_gt(strlen(m->boundary), 0);
	ck_assert_uint_le(strlen(m->boundary), 70);

	dlen = (size_t)snprintf(delim, sizeof(delim), "\r\n--%s", m->boundary);
	m->nparts = 0;
	p = memmem(p, (size_t)(end - p), delim, dlen);
	ck_assert_ptr_nonnull(p);
	for (;;) {
		p += dlen;
		if (end - p >= 4 && memcmp(p, "--\r\n", 4) == 0) {
			ck_assert_msg(p + 4 == end, "text after the closing delimiter");
			break;
		}
		ck_assert(end - p >= 2 && memcmp(p, "\r\n", 2) == 0);
		p += 2;
		next = memmem(p, (size_t)(end - p), delim, dlen);
		ck_assert_msg(next != NULL, "part %zu is not closed", m->nparts);
		ck_assert_uint_lt(m->nparts, 8);
		m->parts[m->nparts].hdr = p;
		b = memmem(p, (size_t)(next + 2 - p), "\r\n\r\n", 4);
		ck_assert_ptr_nonnull(b);
		m->parts[m->nparts].hdrlen = (size_t)(b - p) + 2;
		m->parts[m->nparts].body = b + 4;
		m->parts[m->nparts].bodylen = (size_t)(next - (b + 4));
		m->nparts++;
		p = next;
	}
	/* the boundary occurs in the Content-Type field and the delimiters only */
	for (p = s; (p = memmem(p, (size_t)(end - p), m->boundary, strlen(m->boundary))); p++)
		count++;
	ck_assert_uint_eq(count, m->nparts + 2);
}

static bool
has(const char *s, size_t len, const char *what)
{
	return memmem(s, len, what, strlen(what)) != NULL;
}

static void
build_msg(const struct dsn_report *r, const struct dsn_entry *e, size_t n, struct msg *m)
{
	memset(m, 0, sizeof(*m));
	dstr_init(&m->raw, 0);
	dsn_build(r, e, n, "uniq1", &m->raw);
	parse_msg(m);
	ck_assert_uint_eq(m->nparts, 3);
}

static void
part_type_eq(const struct msg *m, size_t i, const char *want)
{
	field_eq(m->parts[i].hdr, m->parts[i].hdrlen, "Content-Type", want);
}

/* The n-th block (0: per-message fields) of the delivery-status part */
static void
status_block(const struct msg *m, size_t n, const char **start, size_t *len)
{
	const char *p = m->parts[1].body, *end = p + m->parts[1].bodylen, *q;

	for (;;) {
		q = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
		if (n == 0) {
			*start = p;
			*len = q != NULL ? (size_t)(q - p) + 2 : (size_t)(end - p);
			return;
		}
		ck_assert_msg(q != NULL, "no such delivery-status block");
		p = q + 4;
		n--;
	}
}

static void
block_eq(const struct msg *m, size_t n, const char *name, const char *want)
{
	const char *b;
	size_t len;

	status_block(m, n, &b, &len);
	field_eq(b, len, name, want);
}

static void
date_eq(const struct msg *m, size_t n, const char *name, uint64_t usec)
{
	char date[64];

	rfc5322_date((time_t)(usec / 1000000u), date, sizeof(date));
	block_eq(m, n, name, date);
}

static bool
has_line_starting(const struct msg *m, const char *prefix)
{
	char *needle = xasprintf("\n%s", prefix);
	bool found = has(m->raw.s, m->raw.len, needle);

	free(needle);
	return found;
}

START_TEST(test_build_failure)
{
	struct dsn_report r;
	struct dsn_entry e[2];
	struct msg m;
	const char *h;
	char *v;

	fixture(&r, e);
	build_msg(&r, e, 2, &m);
	h = m.raw.s;

	v = field(h, m.hdrlen, "Date", NULL);
	ck_assert(v != NULL && strlen(v) > 20);
	free(v);
	field_eq(h, m.hdrlen, "From", "Mail Delivery System <MAILER-DAEMON@" HOST ">");
	field_eq(h, m.hdrlen, "To", "<a@remote.test>");
	field_eq(h, m.hdrlen, "Subject", "Undelivered Mail Returned to Sender");
	field_eq(h, m.hdrlen, "Message-ID", "<uniq1@" HOST ">");
	field_eq(h, m.hdrlen, "Auto-Submitted", "auto-replied");
	field_eq(h, m.hdrlen, "MIME-Version", "1.0");
	field_eq(h, m.hdrlen, "Content-Transfer-Encoding", NULL);

	part_type_eq(&m, 0, "text/plain; charset=us-ascii");
	part_type_eq(&m, 1, "message/delivery-status");
	part_type_eq(&m, 2, "message/rfc822");
	field_eq(m.parts[2].hdr, m.parts[2].hdrlen, "Content-Transfer-Encoding", NULL);

	/* the human part names each recipient and what went wrong, in short lines */
	ck_assert(has(m.parts[0].body, m.parts[0].bodylen, "\r\n<bob@example.test>: host"
		      " 127.0.0.1 said: 550 5.1.1 <bob@example.test>: user\r\n    unknown\r\n"));
	ck_assert(has(m.parts[0].body, m.parts[0].bodylen,
		      "\r\n<carol@example.test>: failed (5.0.0)\r\n"));
	ck_assert_uint_lt(longest_line(m.parts[0].body, m.parts[0].bodylen), 78);
	ck_assert_uint_lt(longest_line(m.parts[1].body, m.parts[1].bodylen), 78);

	block_eq(&m, 0, "Reporting-MTA", "dns; " HOST);
	block_eq(&m, 0, "X-Queue-ID", "0123456789AB");
	block_eq(&m, 0, "Original-Envelope-Id", "QQ314159");
	date_eq(&m, 0, "Arrival-Date", ARRIVAL);
	block_eq(&m, 0, "Final-Recipient", NULL);

	block_eq(&m, 1, "Final-Recipient", "rfc822; bob@example.test");
	block_eq(&m, 1, "Original-Recipient", "rfc822; bob+orig@example.test");
	block_eq(&m, 1, "Action", "failed");
	block_eq(&m, 1, "Status", "5.1.1");
	block_eq(&m, 1, "Remote-MTA", "dns; 127.0.0.1");
	block_eq(&m, 1, "Diagnostic-Code", "smtp; 550 5.1.1 <bob@example.test>: user unknown");
	date_eq(&m, 1, "Last-Attempt-Date", ATTEMPT);
	block_eq(&m, 1, "Will-Retry-Until", NULL);

	block_eq(&m, 2, "Final-Recipient", "rfc822; carol@example.test");
	block_eq(&m, 2, "Original-Recipient", NULL);
	block_eq(&m, 2, "Action", "failed");
	block_eq(&m, 2, "Status", "5.0.0");
	block_eq(&m, 2, "Remote-MTA", NULL);
	block_eq(&m, 2, "Diagnostic-Code", NULL);
	block_eq(&m, 2, "Last-Attempt-Date", NULL);

	/* the original comes back whole and unchanged */
	ck_assert_uint_eq(m.parts[2].bodylen, sizeof(content) - 1);
	ck_assert(memcmp(m.parts[2].body, content, sizeof(content) - 1) == 0);
	dstr_free(&m.raw);
}
END_TEST

/* RFC 6533: an SMTPUTF8 recipient is of type utf-8, written 7-bit */
START_TEST(test_build_utf8_recipient)
{
	struct dsn_report r;
	struct dsn_entry e[2];
	struct msg m;

	fixture(&r, e);
	e[0].final_rcpt = "bj\xc3\xb6rn+x=y\\z@example.test";
	e[1].final_rcpt = "\xe7\x94\xa8\xe6\x88\xb7@\xf0\x9f\x98\x80.example";
	build_msg(&r, e, 2, &m);
	block_eq(&m, 1, "Final-Recipient", "utf-8; bj\\x{F6}rn\\x{2B}x\\x{3D}y\\x{5C}z@example.test");
	block_eq(&m, 2, "Final-Recipient", "utf-8; \\x{7528}\\x{6237}@\\x{1F600}.example");
	ck_assert(!str_has_8bit(m.parts[1].body));
	dstr_free(&m.raw);
}
END_TEST

START_TEST(test_build_hdrs)
{
	struct dsn_report r;
	struct dsn_entry e[2];
	struct msg m;

	fixture(&r, e);
	r.ret = DSN_RET_HDRS;
	r.envid = NULL;
	build_msg(&r, e, 2, &m);
	part_type_eq(&m, 2, "text/rfc822-headers");
	ck_assert_uint_eq(m.parts[2].bodylen, sizeof(content_headers) - 1);
	ck_assert(memcmp(m.parts[2].body, content_headers, sizeof(content_headers) - 1) == 0);
	ck_assert(!has(m.raw.s, m.raw.len, "secret body line"));
	block_eq(&m, 0, "Original-Envelope-Id", NULL);
	block_eq(&m, 0, "X-Queue-ID", "0123456789AB");
	dstr_free(&m.raw);
}
END_TEST

/* delay and success reports carry the header section only, whatever RET says */
START_TEST(test_build_delay)
{
	struct dsn_report r;
	struct dsn_entry e[2];
	struct msg m;

	fixture(&r, e);
	r.kind = DSN_DELAY;
	r.ret = DSN_RET_FULL;
	e[0].action = "delayed";
	e[0].status = "4.4.1";
	e[0].diagnostic = "connect to 127.0.0.1:24: Connection refused";
	e[0].diagnostic_is_reply = false;
	build_msg(&r, e, 1, &m);
	field_eq(m.raw.s, m.hdrlen, "Subject", "Delayed Mail (still being retried)");
	part_type_eq(&m, 2, "text/rfc822-headers");
	ck_assert(!has(m.raw.s, m.raw.len, "secret body line"));
	block_eq(&m, 1, "Action", "delayed");
	block_eq(&m, 1, "Status", "4.4.1");
	/* Sorter's own words, not a server's reply (RFC 3464 2.3.6) */
	block_eq(&m, 1, "Diagnostic-Code", "X-Sorter; connect to 127.0.0.1:24: Connection refused");
	date_eq(&m, 1, "Will-Retry-Until", RETRY);
	ck_assert(has(m.parts[0].body, m.parts[0].bodylen, "WARNING ONLY"));
	dstr_free(&m.raw);
}
END_TEST

START_TEST(test_build_success)
{
	struct dsn_report r;
	struct dsn_entry e[2];
	struct msg m;

	fixture(&r, e);
	r.kind = DSN_SUCCESS;
	e[0].action = "delivered";
	e[0].status = "2.0.0";
	e[0].diagnostic = "250 2.0.0 <bob@example.test> Saved";
	build_msg(&r, e, 1, &m);
	field_eq(m.raw.s, m.hdrlen, "Subject", "Successful Mail Delivery Report");
	part_type_eq(&m, 2, "text/rfc822-headers");
	block_eq(&m, 1, "Action", "delivered");
	block_eq(&m, 1, "Status", "2.0.0");
	block_eq(&m, 1, "Will-Retry-Until", NULL);
	dstr_free(&m.raw);
}
END_TEST

/* an action RFC 3464 does not know, or a malformed status, is not passed on */
START_TEST(test_build_bad_fields)
{
	static const char *const bad[] = {
		"5.1", "5.1.1.1", "9.1.1", "5.1.1 ", "5.1.1\r\nX-Evil: 1", "5.1234.1", "", "x",
	};
	struct dsn_report r;
	struct dsn_entry e[2];
	struct msg m;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		fixture(&r, e);
		e[0].status = bad[i];
		e[0].action = "exploded";
		build_msg(&r, e, 1, &m);
		block_eq(&m, 1, "Status", "5.0.0");
		block_eq(&m, 1, "Action", "failed");
		ck_assert(!has_line_starting(&m, "X-Evil:"));
		dstr_free(&m.raw);
	}
	fixture(&r, e);
	e[0].status = NULL;
	e[0].action = NULL;
	r.kind = DSN_DELAY;
	build_msg(&r, e, 1, &m);
	block_eq(&m, 1, "Status", "4.0.0");
	block_eq(&m, 1, "Action", "delayed");
	dstr_free(&m.raw);
}
END_TEST

/* what a remote server or a sender wrote cannot add a header line */
START_TEST(test_build_injection)
{
	struct dsn_report r;
	struct dsn_entry e[2];
	struct msg m;

	fixture(&r, e);
	e[0].diagnostic = "550 5.1.1 bad\r\nX-Injected: yes\r\n\r\nbody\n\rmore\x01\xff";
	e[0].remote_mta = "host\nBcc: evil@x";
	e[0].orcpt = "o\r\nX-Orcpt: 1";
	r.envid = "E\rX-Envid: 1";
	build_msg(&r, e, 1, &m);
	ck_assert(!has_line_starting(&m, "X-Injected:"));
	ck_assert(!has_line_starting(&m, "Bcc:"));
	ck_assert(!has_line_starting(&m, "X-Orcpt:"));
	ck_assert(!has_line_starting(&m, "X-Envid:"));
	block_eq(&m, 1, "Diagnostic-Code", "smtp; 550 5.1.1 bad X-Injected: yes body more ?");
	block_eq(&m, 1, "Remote-MTA", "dns; host Bcc: evil@x");
	block_eq(&m, 1, "Original-Recipient", "rfc822; o X-Orcpt: 1");
	block_eq(&m, 0, "Original-Envelope-Id", "E X-Envid: 1");
	dstr_free(&m.raw);
}
END_TEST

/* the first-choice boundary in the content, or in a reply, is not used */
START_TEST(test_build_boundary)
{
	struct dsn_report r;
	struct dsn_entry e[2];
	struct msg m;
	struct dstr c;
	char first[128];

	fixture(&r, e);
	build_msg(&r, e, 2, &m);
	snprintf(first, sizeof(first), "%s", m.boundary);
	dstr_free(&m.raw);

	dstr_init(&c, 0);
	dstr_printf(&c, "%s--%s\r\nContent-Type: text/plain\r\n\r\nfake\r\n--%s--\r\n",
		    content, first, first);
	r.content = (const unsigned char *)c.s;
	r.content_len = c.len;
	build_msg(&r, e, 2, &m);
	ck_assert_str_ne(m.boundary, first);
	ck_assert_uint_eq(m.parts[2].bodylen, c.len);
	ck_assert(memcmp(m.parts[2].body, c.s, c.len) == 0);
	dstr_free(&m.raw);

	fixture(&r, e);
	e[1].diagnostic = first;
	build_msg(&r, e, 2, &m);
	ck_assert_str_ne(m.boundary, first);
	dstr_free(&m.raw);
	dstr_free(&c);
}
END_TEST

/* 8-bit bytes and long lines pass through, labelled so the part stays valid */
START_TEST(test_build_8bit)
{
	struct dsn_report r;
	struct dsn_entry e[2];
	struct msg m;
	struct dstr c;
	int i;

	fixture(&r, e);
	dstr_init(&c, 0);
	dstr_printf(&c, "%s", "Subject: gr\xc3\xbc\xc3\x9f\x65\r\n\r\nk\xc3\xa4se\r\n");
	r.content = (const unsigned char *)c.s;
	r.content_len = c.len;
	build_msg(&r, e, 1, &m);
	field_eq(m.raw.s, m.hdrlen, "Content-Transfer-Encoding", "8bit");
	field_eq(m.parts[2].hdr, m.parts[2].hdrlen, "Content-Transfer-Encoding", "8bit");
	ck_assert(memcmp(m.parts[2].body, c.s, c.len) == 0);
	dstr_free(&m.raw);

	/* a 2000-byte line, and no CRLF at the end */
	dstr_reset(&c);
	dstr_printf(&c, "Subject: long\r\n\r\n");
	for (i = 0; i < 2000; i++)
		dstr_append(&c, "x", 1);
	r.content = (const unsigned char *)c.s;
	r.content_len = c.len;
	build_msg(&r, e, 1, &m);
	field_eq(m.raw.s, m.hdrlen, "Content-Transfer-Encoding", "binary");
	field_eq(m.parts[2].hdr, m.parts[2].hdrlen, "Content-Transfer-Encoding", "binary");
	ck_assert_uint_eq(m.parts[2].bodylen, c.len + 2);
	ck_assert(memcmp(m.parts[2].body, c.s, c.len) == 0);
	ck_assert(memcmp(m.parts[2].body + c.len, "\r\n", 2) == 0);
	dstr_free(&m.raw);

	/* only the header section counts for RET=HDRS */
	r.ret = DSN_RET_HDRS;
	build_msg(&r, e, 1, &m);
	field_eq(m.raw.s, m.hdrlen, "Content-Transfer-Encoding", NULL);
	dstr_free(&m.raw);
	dstr_free(&c);
}
END_TEST

/* bare CR and LF become CRLF: a report never carries either */
START_TEST(test_build_bare_crlf)
{
	static const char bare[] = "Subject: x\nFrom: y\r\n\r\nline\rmore\n\nend";
	static const char fixed[] = "Subject: x\r\nFrom: y\r\n\r\nline\r\nmore\r\n\r\nend\r\n";
	struct dsn_report r;
	struct dsn_entry e[2];
	struct msg m;

	fixture(&r, e);
	r.content = (const unsigned char *)bare;
	r.content_len = sizeof(bare) - 1;
	build_msg(&r, e, 1, &m);
	ck_assert_uint_eq(m.parts[2].bodylen, sizeof(fixed) - 1);
	ck_assert(memcmp(m.parts[2].body, fixed, sizeof(fixed) - 1) == 0);
	dstr_free(&m.raw);
}
END_TEST

/* RET=HDRS stops at the first line that is not a header field, blank or not */
START_TEST(test_build_hdrs_no_blank)
{
	static const char odd[] = "Received: x\r\n\ty\r\nSubject: s\r\nnot a header\r\nsecret\r\n";
	static const char odd2[] = " continuation first\r\nSubject: s\r\n\r\nsecret\r\n";
	struct dsn_report r;
	struct dsn_entry e[2];
	struct msg m;

	fixture(&r, e);
	r.ret = DSN_RET_HDRS;
	r.content = (const unsigned char *)odd;
	r.content_len = sizeof(odd) - 1;
	build_msg(&r, e, 1, &m);
	ck_assert_uint_eq(m.parts[2].bodylen, 29);
	ck_assert(memcmp(m.parts[2].body, "Received: x\r\n\ty\r\nSubject: s\r\n", 29) == 0);
	ck_assert(!has(m.raw.s, m.raw.len, "secret"));
	dstr_free(&m.raw);

	r.content = (const unsigned char *)odd2;
	r.content_len = sizeof(odd2) - 1;
	build_msg(&r, e, 1, &m);
	ck_assert_uint_eq(m.parts[2].bodylen, 0);
	ck_assert(!has(m.raw.s, m.raw.len, "secret"));
	dstr_free(&m.raw);

	r.content = NULL;
	r.content_len = 0;
	build_msg(&r, e, 1, &m);
	ck_assert_uint_eq(m.parts[2].bodylen, 0);
	dstr_free(&m.raw);
}
END_TEST

/* a huge reply is folded (and cut), never written as a line over 998 */
static void
strip_spaces(char *s)
{
	char *o = s;

	for (; *s; s++)
		if (*s != ' ')
			*o++ = *s;
	*o = '\0';
}

START_TEST(test_build_long_values)
{
	struct dsn_report r;
	struct dsn_entry e[2];
	struct msg m;
	struct dstr d;
	const char *blk;
	char *v, *want;
	size_t len;
	int i;

	dstr_init(&d, 0);
	dstr_printf(&d, "550 5.1.1 ");
	for (i = 0; i < 3000; i++)
		dstr_append(&d, "y", 1);
	for (i = 0; i < 300; i++)
		dstr_printf(&d, " word%d", i);
	fixture(&r, e);
	e[0].diagnostic = d.s;
	build_msg(&r, e, 1, &m);
	ck_assert_uint_le(longest_line(m.raw.s, m.raw.len), 998);
	/* the value is cut at 4096 bytes, and folding a 3000-byte word adds
	 * spaces to it, but nothing else changes */
	status_block(&m, 1, &blk, &len);
	v = field(blk, len, "Diagnostic-Code", NULL);
	ck_assert_ptr_nonnull(v);
	want = xasprintf("smtp; %.4090s", d.s);
	strip_spaces(v);
	strip_spaces(want);
	ck_assert(strcmp(v, want) == 0);
	free(want);
	free(v);
	dstr_free(&m.raw);
	dstr_free(&d);
}
END_TEST

static void
add_build_tests(TCase *tc)
{
	tcase_add_test(tc, test_build_failure);
	tcase_add_test(tc, test_build_hdrs);
	tcase_add_test(tc, test_build_utf8_recipient);
	tcase_add_test(tc, test_build_delay);
	tcase_add_test(tc, test_build_success);
	tcase_add_test(tc, test_build_bad_fields);
	tcase_add_test(tc, test_build_injection);
	tcase_add_test(tc, test_build_boundary);
	tcase_add_test(tc, test_build_8bit);
	tcase_add_test(tc, test_build_bare_crlf);
	tcase_add_test(tc, test_build_hdrs_no_blank);
	tcase_add_test(tc, test_build_long_values);
}

static Suite *
dsn_suite(void)
{
	Suite *s = suite_create("dsn");
	TCase *tc = tcase_create("params");
	TCase *tb = tcase_create("build");

	tcase_add_loop_test(tc, test_rcpt_params, 0, N_(rcases));
	tcase_add_loop_test(tc, test_sender_params, 0, N_(scases));
	tcase_add_test(tc, test_format);
	tcase_add_loop_test(tc, test_xtext_decode, 0, N_(xcases));
	tcase_add_test(tc, test_xtext_bounds);
	tcase_add_test(tc, test_xtext_round_trip);
	tcase_add_loop_test(tc, test_status_from_reply, 0, N_(stcases));
	suite_add_tcase(s, tc);
	add_build_tests(tb);
	suite_add_tcase(s, tb);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(dsn_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
