/*
 * check_milter.c - unit tests for the milter codec (smtpd/milter_proto.c)
 * and the edits (smtpd/milter_apply.c): the exact bytes Sorter sends,
 * every reply a filter can send decoded or refused, option negotiation,
 * which reply may come when, a filter's own reply text, the header section
 * as a list, header and body bytes from a filter made safe for the spool,
 * and the edits applied to a message and an envelope.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "smtpd/milter.h"

#define S(x) (const unsigned char *)(x), sizeof(x) - 1

/* ---- framing ---- */

static const struct {
	const char *in;
	size_t len;
	enum milter_frame_status st;
	size_t pktlen;
} frames[] = {
	{ "", 0, MILTER_FRAME_NEED_MORE, 0 },
	{ "\0\0\0", 3, MILTER_FRAME_NEED_MORE, 0 },
	{ "\0\0\0\1", 4, MILTER_FRAME_NEED_MORE, 0 },
	{ "\0\0\0\1c", 5, MILTER_FRAME_OK, 5 },
	{ "\0\0\0\1cXYZ", 8, MILTER_FRAME_OK, 5 },          /* the next packet's bytes stay */
	{ "\0\0\0\3y5", 6, MILTER_FRAME_NEED_MORE, 0 },
	{ "\0\0\0\0c", 5, MILTER_FRAME_ERROR, 0 },
	{ "\0\x10\0\x11", 4, MILTER_FRAME_ERROR, 0 },       /* 1 MiB + 17 */
	{ "\xff\xff\xff\xff", 4, MILTER_FRAME_ERROR, 0 },
	{ "\0\x10\0\x10", 4, MILTER_FRAME_NEED_MORE, 0 },   /* 1 MiB + 16: allowed */
};

START_TEST(test_frame)
{
	size_t pktlen = 0;
	const char *why = NULL;
	enum milter_frame_status st;

	st = milter_frame((const unsigned char *)frames[_i].in, frames[_i].len, &pktlen, &why);
	ck_assert_int_eq(st, frames[_i].st);
	if (st == MILTER_FRAME_OK)
		ck_assert_uint_eq(pktlen, frames[_i].pktlen);
	if (st == MILTER_FRAME_ERROR)
		ck_assert_ptr_nonnull(why);
}
END_TEST

/* ---- what Sorter sends ---- */

static void
assert_bytes(const struct dstr *d, const void *want, size_t n)
{
	ck_assert_uint_eq(d->len, n);
	ck_assert_mem_eq(d->s, want, n);
}

START_TEST(test_encoders)
{
	struct dstr d;
	const char *mail[] = { "<a@b.test>", "SIZE=10", "BODY=8BITMIME" };
	const char *names[] = { "j", "{daemon_name}" }, *values[] = { "mx.test", "mx" };

	dstr_init(&d, 0);
	milter_put_optneg(&d, 6, MILTER_ACTIONS_OFFERED, MILTER_PROTO_OFFERED);
	assert_bytes(&d, "\0\0\0\x0dO\0\0\0\6\0\0\x01\xff\0\x1f\xf7\xff", 17);
	dstr_reset(&d);
	milter_put_connect(&d, "unknown", '4', 2525, "127.0.0.1");
	assert_bytes(&d, "\0\0\0\x16" "Cunknown\0" "4\x09\xdd" "127.0.0.1\0", 26);
	dstr_reset(&d);
	milter_put_connect(&d, "unknown", 'U', 0, NULL);
	assert_bytes(&d, "\0\0\0\x0a" "Cunknown\0U", 14);
	dstr_reset(&d);
	milter_put_strings(&d, SMFIC_MAIL, mail, 3);
	assert_bytes(&d, "\0\0\0\x22M<a@b.test>\0SIZE=10\0BODY=8BITMIME\0", 38);
	dstr_reset(&d);
	milter_put_header(&d, "Subject", " hi\r\n\tthere", 11);
	assert_bytes(&d, "\0\0\0\x15LSubject\0 hi\r\n\tthere\0", 25);
	dstr_reset(&d);
	milter_put_macros(&d, SMFIC_CONNECT, names, values, 2);
	assert_bytes(&d, "\0\0\0\x1d" "DCj\0mx.test\0{daemon_name}\0mx\0", 33);
	dstr_reset(&d);
	milter_put(&d, SMFIC_BODYEOB, NULL, 0);
	assert_bytes(&d, "\0\0\0\1E", 5);
	dstr_free(&d);
}
END_TEST

/* ---- every reply a filter can send ---- */

#define R0(p, t) { p, sizeof(p) - 1, 0, t, NULL, NULL, NULL, NULL, 0 }
#define RT(p, t, text, args) { p, sizeof(p) - 1, 0, t, text, args, NULL, NULL, 0 }
#define RH(p, t, name, value, i) { p, sizeof(p) - 1, 0, t, NULL, NULL, name, value, i }
#define RBAD(p) { p, sizeof(p) - 1, -1, 0, NULL, NULL, NULL, NULL, 0 }

static const struct {
	const char *pkt;
	size_t len;
	int rc;
	char type;
	const char *text, *args, *name, *value;
	uint32_t index;
} replies[] = {
	R0("c", 'c'), R0("a", 'a'), R0("r", 'r'), R0("t", 't'), R0("d", 'd'), R0("s", 's'),
	R0("p", 'p'), R0("4", '4'), R0("f", 'f'),
	RBAD("cX"),                                         /* a byte too many */
	RT("y550 5.7.1 no\0", 'y', "550 5.7.1 no", NULL),
	RBAD("y550 5.7.1 no"),                              /* no NUL */
	RBAD("y550\0x"),
	RT("qspam\0", 'q', "spam", NULL),
	RT("+<x@y.test>\0", '+', "<x@y.test>", NULL),
	RBAD("+<x@y.test>\0NOTIFY=NEVER\0"),              /* ADDRCPT takes no parameters */
	RT("-<x@y.test>\0", '-', "<x@y.test>", NULL),
	RT("2<x@y.test>\0NOTIFY=NEVER\0", '2', "<x@y.test>", "NOTIFY=NEVER"),
	RT("2<x@y.test>\0", '2', "<x@y.test>", NULL),
	RT("e<>\0", 'e', "<>", NULL),
	RT("e<a@b>\0RET=HDRS ENVID=x\0", 'e', "<a@b>", "RET=HDRS ENVID=x"),
	RBAD("e<a@b>\0RET\0more\0"),
	RH("hX-A\0v\0", 'h', "X-A", "v", 0),
	RBAD("hX-A\0"),
	RBAD("hX-A\0v"),
	RH("i\0\0\0\2X-A\0 v\0", 'i', "X-A", " v", 2),
	RBAD("i\0\0\2"),
	RH("m\0\0\0\1Subject\0\0", 'm', "Subject", "", 1),
	RH("m\xff\xff\xff\xffS\0v\0", 'm', "S", "v", 0xffffffffu),
	R0("bsome\0body", 'b'),
	R0("b", 'b'),
	RBAD("z"),
	RBAD("C"),                                          /* a command, not a reply */
	R0("O\0\0\0\6\0\0\0\1\0\0\0\0", 'O'),
	RBAD("O\0\0\0\6\0\0\0\1\0\0\0"),
	R0("O\0\0\0\6\0\0\0\1\0\0\0\0\0\0\0\5i {auth_type}\0\0\0\0\0j\0", 'O'),
	RBAD("O\0\0\0\6\0\0\0\1\0\0\0\0\0\0\0\7i\0"),        /* stage 7 */
	RBAD("O\0\0\0\6\0\0\0\1\0\0\0\0\0\0\0\5i\0\0\0\0\5j\0"),  /* twice */
	RBAD("O\0\0\0\6\0\0\0\1\0\0\0\0\0\0\0\5i"),
	RBAD("O\0\0\0\6\0\0\0\1\0\0\0\0\0\0"),
};

START_TEST(test_reply_parse)
{
	struct milter_reply r;
	const char *why = NULL;
	int rc = milter_reply_parse((const unsigned char *)replies[_i].pkt, replies[_i].len, &r,
				    &why);

	ck_assert_msg(rc == replies[_i].rc, "packet %d: %d (%s)", _i, rc, why ? why : "");
	if (rc < 0) {
		ck_assert_ptr_nonnull(why);
		return;
	}
	ck_assert_int_eq(r.type, replies[_i].type);
	if (replies[_i].text)
		ck_assert_str_eq(r.text, replies[_i].text);
	if (replies[_i].args)
		ck_assert_str_eq(r.args, replies[_i].args);
	else if (r.type == '2' || r.type == 'e')
		ck_assert_ptr_null(r.args);
	if (replies[_i].name) {
		ck_assert_str_eq(r.name, replies[_i].name);
		ck_assert_str_eq(r.value, replies[_i].value);
		ck_assert_uint_eq(r.index, replies[_i].index);
	}
	if (r.type == 'b')
		ck_assert_uint_eq(r.len, replies[_i].len - 1);
}
END_TEST

START_TEST(test_optneg)
{
	struct milter_reply r;
	const char *why;
	static const unsigned char lists[] =
		"O\0\0\0\6\0\0\x01\x01\0\x10\0\x02\0\0\0\6i {daemon_name}\0";
	static const unsigned char bad_list[] = "O\0\0\0\6\0\0\0\1\0\0\0\0\0\0\0\0{x y}\0";

	ck_assert_int_eq(milter_reply_parse(lists, sizeof(lists) - 1, &r, &why), 0);
	ck_assert_uint_eq(r.version, 6);
	ck_assert_uint_eq(r.actions, SMFIF_ADDHDRS | SMFIF_SETSYMLIST);
	ck_assert_uint_eq(r.proto, SMFIP_HDR_LEADSPC | SMFIP_NOHELO);
	ck_assert_str_eq(r.macros[MS_EOH], "i {daemon_name}");
	ck_assert_ptr_null(r.macros[MS_CONNECT]);
	ck_assert_int_eq(milter_negotiate(&r, MILTER_ACTIONS_OFFERED, MILTER_PROTO_OFFERED, &why), 0);
	/* more than was offered */
	ck_assert_int_eq(milter_negotiate(&r, SMFIF_ADDHDRS, MILTER_PROTO_OFFERED, &why), -1);
	ck_assert_str_eq(why, "actions that were not offered");
	ck_assert_int_eq(milter_negotiate(&r, MILTER_ACTIONS_OFFERED, SMFIP_NOHELO, &why), -1);
	ck_assert_str_eq(why, "protocol steps that were not offered");
	r.version = 7;
	ck_assert_int_eq(milter_negotiate(&r, MILTER_ACTIONS_OFFERED, MILTER_PROTO_OFFERED, &why), -1);
	r.version = 1;
	ck_assert_int_eq(milter_negotiate(&r, MILTER_ACTIONS_OFFERED, MILTER_PROTO_OFFERED, &why), -1);
	r.version = 2;      /* an old filter: still spoken to */
	ck_assert_int_eq(milter_negotiate(&r, MILTER_ACTIONS_OFFERED, MILTER_PROTO_OFFERED, &why), 0);
	r.type = 'c';
	ck_assert_int_eq(milter_negotiate(&r, MILTER_ACTIONS_OFFERED, MILTER_PROTO_OFFERED, &why), -1);
	ck_assert_int_eq(milter_reply_parse(bad_list, sizeof(bad_list) - 1, &r, &why), 0);
	ck_assert_int_eq(milter_negotiate(&r, MILTER_ACTIONS_OFFERED, MILTER_PROTO_OFFERED, &why), -1);
	ck_assert_str_eq(why, "a malformed macro list");
}
END_TEST

/* which reply may come at which stage */
static const struct {
	enum milter_stage st;
	char type;
	uint32_t actions;
	bool ok;
} allowed[] = {
	{ MS_OPTNEG, 'O', 0, true }, { MS_OPTNEG, 'c', 0, false }, { MS_CONNECT, 'O', 0, false },
	{ MS_CONNECT, 'c', 0, true }, { MS_CONNECT, 'y', 0, true }, { MS_CONNECT, 'd', 0, false },
	{ MS_HELO, 'd', 0, false }, { MS_MAIL, 'd', 0, true }, { MS_RCPT, 'a', 0, true },
	{ MS_BODY, 's', 0, true }, { MS_HEADER, 's', 0, false }, { MS_EOM, 's', 0, false },
	{ MS_HEADER, 'p', 0, true }, { MS_EOM, 'p', 0, true },
	{ MS_EOM, 'h', SMFIF_ADDHDRS, true }, { MS_EOM, 'h', SMFIF_CHGHDRS, false },
	{ MS_EOH, 'h', SMFIF_ADDHDRS, false }, { MS_EOM, 'i', SMFIF_ADDHDRS, true },
	{ MS_EOM, 'm', SMFIF_CHGHDRS, true }, { MS_EOM, 'm', SMFIF_ADDHDRS, false },
	{ MS_EOM, 'b', SMFIF_CHGBODY, true }, { MS_BODY, 'b', SMFIF_CHGBODY, false },
	{ MS_EOM, '+', SMFIF_ADDRCPT, true }, { MS_EOM, '+', SMFIF_ADDRCPT_PAR, false },
	{ MS_EOM, '2', SMFIF_ADDRCPT_PAR, true }, { MS_EOM, '-', SMFIF_DELRCPT, true },
	{ MS_EOM, 'e', SMFIF_CHGFROM, true }, { MS_EOM, 'e', 0x1bf, false },
	{ MS_EOM, 'q', SMFIF_QUARANTINE, true }, { MS_EOM, 'q', 0, false },
	{ MS_RCPT, 'q', SMFIF_QUARANTINE, false }, { MS_EOM, 'z', 0x1ff, false },
};

START_TEST(test_allowed)
{
	ck_assert_msg(milter_reply_allowed(allowed[_i].st, allowed[_i].type, allowed[_i].actions) ==
		      allowed[_i].ok, "case %d", _i);
}
END_TEST

/* a filter's own reply */
static const struct {
	const char *in, *out;
} codes[] = {
	{ "550 5.7.1 no", "550 5.7.1 no" },
	{ "451 4.3.2 later", "451 4.3.2 later" },
	{ "550 go away", "550 5.7.1 go away" },
	{ "421 closing", "421 4.7.1 closing" },
	{ "550", "550 5.7.1" },
	{ "554 5.7.10 long detail", "554 5.7.10 long detail" },
	{ "550-5.7.0 one\r\n550 5.7.0 two", "550-5.7.0 one\r\n550 5.7.0 two" },
	{ "550-one\r\n550 two", "550-5.7.1 one\r\n550 5.7.1 two" },
	{ "550 5.7.1 100% sure", "550 5.7.1 100% sure" },
	{ "250 ok", NULL },
	{ "650 odd", NULL },
	{ "5x0 bad", NULL },
	{ "55", NULL },
	{ "550-5.7.0 one\r\n551 5.7.0 two", NULL },
	{ "550 5.7.0 one\r\n550 5.7.0 two", NULL },
	{ "550-5.7.0 one", NULL },
	{ "550 4.7.1 wrong class", NULL },
	{ "550 bare\nlf", NULL },
	{ "550 bare\rcr", NULL },
	{ "550 tab\there", NULL },
	{ "550 caf\xc3\xa9", NULL },
	{ "550x5.7.1", NULL },
	{ "550-one\r\n550", "550-5.7.1 one\r\n550 5.7.1" },
};

START_TEST(test_replycode)
{
	struct dstr out;
	const char *why = NULL;
	int rc;

	dstr_init(&out, 0);
	rc = milter_replycode(codes[_i].in, &out, &why);
	if (codes[_i].out == NULL) {
		ck_assert_msg(rc == -1, "accepted: %s", codes[_i].in);
		ck_assert_ptr_nonnull(why);
	} else {
		ck_assert_msg(rc == 0, "%s: %s", codes[_i].in, why);
		ck_assert_str_eq(out.s, codes[_i].out);
	}
	dstr_free(&out);
}
END_TEST

/* ---- the header section ---- */

static const struct {
	const char *msg;
	bool complete;
	ssize_t body;
	const char *hdrs;       /* "name=value|..." */
} sections[] = {
	{ "A: 1\r\nB:2\r\n\r\nbody\r\n", true, 13, "A= 1|B=2" },
	{ "A: 1\r\n\tmore\r\n more\r\nB: x\r\n\r\n", true, 28, "A= 1\r\n\tmore\r\n more|B= x" },
	{ "A: 1\r\nB: 2\r\n", true, 12, "A= 1|B= 2" },
	{ "A: 1\r\nB: 2", true, 10, "A= 1|B= 2" },
	{ "A: 1\r\nnot a header\r\nB: 2\r\n", true, 6, "A= 1" },
	{ " starts folded\r\n\r\n", true, 0, "" },
	{ "\r\nbody only\r\n", true, 2, "" },
	{ "", true, 0, "" },
	{ "From x\r\n", true, 0, "" },
	{ "A: 1\r\n", false, -1, NULL },
	{ "A: 1\r\nB: 2", false, -1, NULL },
	{ "A: 1\r\n\r\n", false, 8, "A= 1" },
	{ "X-Empty:\r\n:bad\r\n", true, 10, "X-Empty=" },
	{ "A: bare\rcr\r\n\r\n", true, 14, "A= bare\rcr" },
};

static void
hdrs_text(const struct mhdrs *h, char *buf, size_t len)
{
	size_t i, n = 0;

	buf[0] = '\0';
	for (i = 0; i < h->n; i++)
		n += (size_t)snprintf(buf + n, len - n, "%s%s=%s", i ? "|" : "", h->v[i].name,
				      h->v[i].value);
}

START_TEST(test_sections)
{
	struct mhdrs h;
	char got[512];
	ssize_t body = mhdrs_parse(sections[_i].msg, strlen(sections[_i].msg),
				   sections[_i].complete, &h);

	ck_assert_int_eq(body, sections[_i].body);
	if (body < 0) {
		ck_assert_uint_eq(h.n, 0);
		return;
	}
	hdrs_text(&h, got, sizeof(got));
	ck_assert_str_eq(got, sections[_i].hdrs);
	mhdrs_free(&h);
}
END_TEST

static const struct {
	const char *in;
	bool leadspc;
	const char *out;        /* NULL: refused */
} values[] = {
	{ "plain", false, " plain" },
	{ "plain", true, "plain" },
	{ " spaced", true, " spaced" },
	{ "one\ntwo", false, " one\r\n\ttwo" },
	{ "one\r\n two", false, " one\r\n two" },
	{ "one\n\n\n two\n", false, " one\r\n two" },
	{ "one\rtwo", false, " one\r\n\ttwo" },
	{ "tab\tinside", false, " tab\tinside" },
	{ "", false, " " },
	{ "", true, "" },
	{ "caf\xc3\xa9", false, " caf\xc3\xa9" },
	{ "bell\a", false, NULL },
	{ "del\x7f", false, NULL },
	{ "esc\x1b[0m", false, NULL },
};

START_TEST(test_values)
{
	char *v = mhdr_value_from_filter(values[_i].in, values[_i].leadspc);

	if (values[_i].out == NULL) {
		ck_assert_ptr_null(v);
		return;
	}
	ck_assert_ptr_nonnull(v);
	ck_assert_str_eq(v, values[_i].out);
	free(v);
}
END_TEST

START_TEST(test_names_and_shown_values)
{
	ck_assert(mhdr_name_ok("X-Spam-Flag"));
	ck_assert(!mhdr_name_ok(""));
	ck_assert(!mhdr_name_ok("X Spam"));
	ck_assert(!mhdr_name_ok("X:"));
	ck_assert(!mhdr_name_ok("X\xc3\xa9"));
	ck_assert_str_eq(mhdr_value_for_filter("  \tvalue ", false), "value ");
	ck_assert_str_eq(mhdr_value_for_filter("  \tvalue ", true), "  \tvalue ");
}
END_TEST

static struct milter_mod
mod(enum mod_type t, uint32_t index, const char *name, const char *value)
{
	struct milter_mod m;

	memset(&m, 0, sizeof(m));
	m.type = t;
	m.index = index;
	m.name = (char *)name;
	m.value = (char *)value;
	return m;
}

#define S_TEXT "A: 1\r\nB: 2\r\na: 3\r\n"

START_TEST(test_header_edits)
{
	struct mhdrs h;
	struct milter_mod m;
	char got[512];

	ck_assert_int_eq(mhdrs_parse(S_TEXT, strlen(S_TEXT), true, &h), (ssize_t)strlen(S_TEXT));
	m = mod(MOD_ADDHDR, 0, "X-End", " e");
	mhdrs_apply(&h, &m);
	m = mod(MOD_INSHDR, 0, "X-First", " f");
	mhdrs_apply(&h, &m);
	m = mod(MOD_INSHDR, 2, "X-Third", " t");
	mhdrs_apply(&h, &m);
	m = mod(MOD_INSHDR, 99, "X-Last", " l");
	mhdrs_apply(&h, &m);
	hdrs_text(&h, got, sizeof(got));
	ck_assert_str_eq(got, "X-First= f|A= 1|X-Third= t|B= 2|a= 3|X-End= e|X-Last= l");
	m = mod(MOD_CHGHDR, 2, "A", " second a");     /* names match ignoring case */
	mhdrs_apply(&h, &m);
	m = mod(MOD_CHGHDR, 1, "b", NULL);             /* deleted */
	mhdrs_apply(&h, &m);
	m = mod(MOD_CHGHDR, 0, "x-first", " zero is one");
	mhdrs_apply(&h, &m);
	m = mod(MOD_CHGHDR, 3, "A", " added");          /* no third A: added */
	mhdrs_apply(&h, &m);
	m = mod(MOD_CHGHDR, 1, "Nope", NULL);           /* nothing to delete */
	mhdrs_apply(&h, &m);
	hdrs_text(&h, got, sizeof(got));
	ck_assert_str_eq(got, "X-First= zero is one|A= 1|X-Third= t|a= second a|X-End= e|X-Last= l|"
			 "A= added");
	mhdrs_free(&h);
}
END_TEST

/* ---- the body ---- */

START_TEST(test_body_any_split)
{
	static const char in[] = "a\nb\r\nc\rd\r\r\ne\n\r";
	static const char want[] = "a\r\nb\r\nc\r\nd\r\n\r\ne\r\n\r\n";
	size_t n = sizeof(in) - 1, i, j;

	/* the same bytes whatever the pieces */
	for (i = 0; i <= n; i++)
		for (j = i; j <= n; j++) {
			struct dstr d;
			bool cr = false;

			dstr_init(&d, 0);
			ck_assert_int_eq(milter_body_append(&d, (const unsigned char *)in, i, &cr), 0);
			ck_assert_int_eq(milter_body_append(&d, (const unsigned char *)in + i, j - i,
							    &cr), 0);
			ck_assert_int_eq(milter_body_append(&d, (const unsigned char *)in + j, n - j,
							    &cr), 0);
			ck_assert_int_eq(milter_body_finish(&d, &cr), 0);
			ck_assert_uint_eq(d.len, sizeof(want) - 1);
			ck_assert_mem_eq(d.s, want, d.len);
			dstr_free(&d);
		}
}
END_TEST

START_TEST(test_body_limit)
{
	struct dstr d;
	bool cr = false;

	dstr_init(&d, 10);
	ck_assert_int_eq(milter_body_append(&d, S("123456789\n"), &cr), -1);
	dstr_free(&d);
	dstr_init(&d, 10);
	ck_assert_int_eq(milter_body_append(&d, S("12345678\n"), &cr), 0);
	ck_assert_uint_eq(d.len, 10);
	ck_assert_int_eq(milter_body_append(&d, S("x"), &cr), -1);
	dstr_free(&d);
}
END_TEST

/* ---- the edits applied ---- */

START_TEST(test_serialize)
{
	struct mhdrs h;
	struct milter_mod x;
	struct milter_mods m;
	struct dstr out;
	static const char msg[] = "Received: by us\r\nSubject: old\r\n\tfolded\r\nX-Gone: 1\r\n"
				  "\r\nbody\r\n";

	/* no edit: the same bytes as the section parsed */
	ck_assert_int_eq(mhdrs_parse(msg, sizeof(msg) - 1, true, &h), 53);
	dstr_init(&out, 0);
	mhdrs_serialize(&h, &out);
	ck_assert_uint_eq(out.len, 53);
	ck_assert_mem_eq(out.s, msg, 53);
	x = mod(MOD_CHGHDR, 1, "Subject", " new");
	mhdrs_apply(&h, &x);
	x = mod(MOD_CHGHDR, 1, "X-Gone", NULL);
	mhdrs_apply(&h, &x);
	x = mod(MOD_INSHDR, 1, "DKIM-Signature", " v=1;\r\n\tb=x");
	mhdrs_apply(&h, &x);
	dstr_reset(&out);
	mhdrs_serialize(&h, &out);
	ck_assert_str_eq(out.s, "Received: by us\r\nDKIM-Signature: v=1;\r\n\tb=x\r\nSubject: new\r\n"
			 "\r\n");
	mhdrs_free(&h);
	/* every header gone: the empty line alone */
	dstr_reset(&out);
	mhdrs_serialize(&h, &out);
	ck_assert_str_eq(out.s, "\r\n");
	dstr_free(&out);

	/* a replaced body moves out of the edits; what is left to apply */
	milter_mods_init(&m);
	ck_assert(!milter_mods_any(&m));
	dstr_init(&out, 0);
	ck_assert(!milter_mods_take_body(&m, &out));
	m.body_replaced = true;
	dstr_append(&m.body, "new\r\n", 5);
	ck_assert(milter_mods_any(&m));
	ck_assert(milter_mods_take_body(&m, &out));
	ck_assert_str_eq(out.s, "new\r\n");
	ck_assert(!m.body_replaced);
	ck_assert(!milter_mods_any(&m));
	m.quarantine = xstrdup("why");
	ck_assert(milter_mods_any(&m));
	milter_mods_free(&m);
	dstr_free(&out);
}
END_TEST

static int checked;

static int
check_rcpt(void *arg, const char *addr, const char *milter)
{
	checked++;
	if (strcmp(addr, "refused@example.test") == 0)
		return 1;
	if (strcmp(addr, "later@example.test") == 0)
		return -1;
	return 0;
}

static void
add(struct milter_mods *m, enum mod_type t, const char *addr, const char *args)
{
	m->v = xrealloc(m->v, (m->n + 1) * sizeof(*m->v));
	memset(&m->v[m->n], 0, sizeof(m->v[m->n]));
	m->v[m->n].type = t;
	m->v[m->n].addr = xstrdup(addr);
	m->v[m->n].args = args ? xstrdup(args) : NULL;
	m->v[m->n].milter = "inet:127.0.0.1:1";
	m->n++;
}

START_TEST(test_apply_envelope)
{
	char *sender = xstrdup("old@remote.test"), *sparams = NULL, why[256];
	char **rcpts = xcalloc(2, sizeof(char *));
	size_t nrcpt = 2, i;
	struct milter_mods m;
	struct milter_envelope env = { &sender, &sparams, &rcpts, &nrcpt, false, 10, check_rcpt,
				       NULL };

	rcpts[0] = xstrdup("alice@example.test");
	rcpts[1] = xstrdup("Bob@Example.test NOTIFY=NEVER");
	milter_mods_init(&m);
	add(&m, MOD_CHGFROM, "<bounce@remote.test>", "RET=HDRS ENVID=a+2Bb");
	add(&m, MOD_DELRCPT, "<bob@example.test>", NULL);
	add(&m, MOD_ADDRCPT, "carol@example.test", "NOTIFY=SUCCESS,FAILURE");
	add(&m, MOD_ADDRCPT, "<ALICE@example.test>", NULL);        /* already there */
	add(&m, MOD_ADDRCPT, "<refused@example.test>", NULL);      /* the router says no */
	checked = 0;
	ck_assert_int_eq(milter_apply_envelope(&m, &env, why, sizeof(why)), 0);
	ck_assert_str_eq(sender, "bounce@remote.test");
	ck_assert_str_eq(sparams, "RET=HDRS ENVID=a+2Bb");
	ck_assert_uint_eq(nrcpt, 2);
	ck_assert_str_eq(rcpts[0], "alice@example.test");
	ck_assert_str_eq(rcpts[1], "carol@example.test NOTIFY=SUCCESS,FAILURE");
	ck_assert_int_eq(checked, 2);
	milter_mods_free(&m);

	/* a temporary failure of the router, a malformed address, too many */
	add(&m, MOD_ADDRCPT, "<later@example.test>", NULL);
	ck_assert_int_eq(milter_apply_envelope(&m, &env, why, sizeof(why)), -1);
	ck_assert_int_eq(why[0], '4');
	milter_mods_free(&m);
	add(&m, MOD_ADDRCPT, "<not an address>", NULL);
	ck_assert_int_eq(milter_apply_envelope(&m, &env, why, sizeof(why)), -1);
	ck_assert_str_eq(why, "5milter inet:127.0.0.1:1: malformed recipient <\\x3cnot an "
			 "address\\x3e>");
	milter_mods_free(&m);
	add(&m, MOD_CHGFROM, "<a@b.test>", "NOSUCH=1");
	ck_assert_int_eq(milter_apply_envelope(&m, &env, why, sizeof(why)), -1);
	ck_assert_int_eq(why[0], '5');
	milter_mods_free(&m);
	add(&m, MOD_ADDRCPT, "<u\xc3\xa9@example.test>", NULL);   /* UTF-8 without SMTPUTF8 */
	ck_assert_int_eq(milter_apply_envelope(&m, &env, why, sizeof(why)), -1);
	env.smtputf8 = true;
	ck_assert_int_eq(milter_apply_envelope(&m, &env, why, sizeof(why)), 0);
	ck_assert_uint_eq(nrcpt, 3);
	milter_mods_free(&m);
	env.rcpt_limit = 3;
	add(&m, MOD_ADDRCPT, "<dave@example.test>", NULL);
	ck_assert_int_eq(milter_apply_envelope(&m, &env, why, sizeof(why)), -1);
	milter_mods_free(&m);
	/* the null sender, and SMTPUTF8 kept when the transaction had it */
	add(&m, MOD_CHGFROM, "<>", NULL);
	ck_assert_int_eq(milter_apply_envelope(&m, &env, why, sizeof(why)), 0);
	ck_assert_str_eq(sender, "");
	ck_assert_str_eq(sparams, "SMTPUTF8");
	milter_mods_free(&m);

	for (i = 0; i < nrcpt; i++)
		free(rcpts[i]);
	free(rcpts);
	free(sender);
	free(sparams);
}
END_TEST

static const struct {
	const char *arg;
	const char *want;       /* the parameters joined with '|' */
} esmtp[] = {
	{ "FROM:<a@b.test>", "" },
	{ "FROM:<a@b.test> SIZE=10 BODY=8BITMIME", "SIZE=10|BODY=8BITMIME" },
	{ "TO:<\"a > b\"@c.test> NOTIFY=NEVER", "NOTIFY=NEVER" },
	{ "TO:<\"a\\\" > b\"@c.test>  ORCPT=rfc822;x", "ORCPT=rfc822;x" },
	{ "FROM: <a@b> RET=HDRS", "RET=HDRS" },
	{ "FROM:a@b RET=HDRS", "RET=HDRS" },
	{ "FROM:<>", "" },
	{ "nothing", "" },
};

START_TEST(test_esmtp_args)
{
	char buf[256], got[256] = "";
	const char *v[8];
	size_t n, i, used = 0;

	n = milter_esmtp_args(esmtp[_i].arg, buf, sizeof(buf), v, 8);
	for (i = 0; i < n; i++)
		used += (size_t)snprintf(got + used, sizeof(got) - used, "%s%s", i ? "|" : "", v[i]);
	ck_assert_str_eq(got, esmtp[_i].want);
	ck_assert_ptr_null(v[n]);
}
END_TEST

static Suite *
milter_suite(void)
{
	Suite *s = suite_create("milter");
	TCase *tc = tcase_create("core");

	tcase_add_loop_test(tc, test_frame, 0, sizeof(frames) / sizeof(frames[0]));
	tcase_add_test(tc, test_encoders);
	tcase_add_loop_test(tc, test_reply_parse, 0, sizeof(replies) / sizeof(replies[0]));
	tcase_add_test(tc, test_optneg);
	tcase_add_loop_test(tc, test_allowed, 0, sizeof(allowed) / sizeof(allowed[0]));
	tcase_add_loop_test(tc, test_replycode, 0, sizeof(codes) / sizeof(codes[0]));
	tcase_add_loop_test(tc, test_sections, 0, sizeof(sections) / sizeof(sections[0]));
	tcase_add_loop_test(tc, test_values, 0, sizeof(values) / sizeof(values[0]));
	tcase_add_test(tc, test_names_and_shown_values);
	tcase_add_test(tc, test_header_edits);
	tcase_add_test(tc, test_body_any_split);
	tcase_add_test(tc, test_body_limit);
	tcase_add_test(tc, test_serialize);
	tcase_add_test(tc, test_apply_envelope);
	tcase_add_loop_test(tc, test_esmtp_args, 0, sizeof(esmtp) / sizeof(esmtp[0]));
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(milter_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
