/*
 * check_spool.c - unit tests for the queue file format (queue/spool.c):
 * encode/parse round trips, recipient states, every kind of damage a crash
 * or a disk can do to a file, the reader (a read error is never taken for
 * damage), and the spool folder helpers.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/lib.h"
#include "queue/queue.h"

static const char content[] =
	"Received: from client.test ([127.0.0.1])\r\n\tby mx.example.test\r\n"
	"Subject: test\r\n\r\nbody line\r\n";

struct env_case {
	const char *name;
	const char *sender;
	const char *sender_params;
	const char *rcpts[4];
	/* expected split of each recipient */
	const char *addr[4];
	const char *params[4];
};

static const struct env_case env_cases[] = {
	{ "one recipient", "a@remote.test", NULL,
	  { "alice@example.test" }, { "alice@example.test" }, { NULL } },
	{ "null sender", "", NULL,
	  { "bob@example.test" }, { "bob@example.test" }, { NULL } },
	{ "dsn params", "a@remote.test", "RET=FULL ENVID=abc",
	  { "alice@example.test NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.test",
	    "bob@example.test" },
	  { "alice@example.test", "bob@example.test" },
	  { "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.test", NULL } },
	{ "quoted local part with a space", "\"x y\"@remote.test", "",
	  { "\"john smith\"@example.test", "\"a \\\" b\"@example.test NOTIFY=NEVER",
	    "carol@example.test", "dave@example.test" },
	  { "\"john smith\"@example.test", "\"a \\\" b\"@example.test",
	    "carol@example.test", "dave@example.test" },
	  { NULL, "NOTIFY=NEVER", NULL, NULL } },
};

static size_t
nrcpts(const struct env_case *c)
{
	size_t n = 0;

	while (n < 4 && c->rcpts[n] != NULL)
		n++;
	return n;
}

static void
build(const struct env_case *c, uint64_t arrival, const char *body, size_t bodylen,
      struct dstr *out)
{
	struct spool_envelope env;
	unsigned char end[SPOOL_REC_HDR];

	env.id = "0000000000A1";
	env.arrival_usec = arrival;
	env.client = "127.0.0.1";
	env.helo = "client.test";
	env.proto = "ESMTPS";
	env.sender = c->sender;
	env.sender_params = c->sender_params;
	env.rcpts = (const char **)c->rcpts;
	env.nrcpt = nrcpts(c);
	env.hold_reason = NULL;
	dstr_init(out, 0);
	spool_encode_head(&env, bodylen, out);
	dstr_append(out, body, bodylen);
	spool_encode_end(end);
	dstr_append(out, end, sizeof(end));
}

static void
build_default(struct dstr *out)
{
	build(&env_cases[2], 1700000000123456ull, content, sizeof(content) - 1, out);
}

static void
put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

/* Offset of the n-th record (0-based) of a file image. */
static size_t
rec_offset(const struct dstr *d, int n)
{
	const unsigned char *b = (const unsigned char *)d->s;
	size_t off = 0;

	while (n-- > 0)
		off += SPOOL_REC_HDR + ((size_t)b[off + 1] << 24 | (size_t)b[off + 2] << 16 |
					(size_t)b[off + 3] << 8 | b[off + 4]);
	return off;
}

static int
parse_dstr(const struct dstr *d, struct spool_msg *m, char *err, size_t errlen)
{
	return spool_parse((const unsigned char *)d->s, d->len, m, err, errlen);
}

START_TEST(test_roundtrip)
{
	const struct env_case *c = &env_cases[_i];
	struct spool_msg m;
	struct dstr d;
	char err[256];
	size_t i, n = nrcpts(c);

	build(c, 1700000000123456ull + (uint64_t)_i, content, sizeof(content) - 1, &d);
	ck_assert_msg(parse_dstr(&d, &m, err, sizeof(err)) == 0, "%s: %s", c->name, err);
	ck_assert_uint_eq(m.arrival_usec, 1700000000123456ull + (uint64_t)_i);
	ck_assert_str_eq(m.client, "127.0.0.1");
	ck_assert_str_eq(m.helo, "client.test");
	ck_assert_str_eq(m.proto, "ESMTPS");
	ck_assert_str_eq(m.sender, c->sender);
	if (c->sender_params == NULL)
		ck_assert_ptr_null(m.sender_params);
	else
		ck_assert_str_eq(m.sender_params, c->sender_params);
	ck_assert_uint_eq(m.nrcpt, n);
	for (i = 0; i < n; i++) {
		ck_assert_str_eq(m.rcpts[i].addr, c->addr[i]);
		if (c->params[i] == NULL)
			ck_assert_ptr_null(m.rcpts[i].params);
		else
			ck_assert_str_eq(m.rcpts[i].params, c->params[i]);
		ck_assert_int_eq(m.rcpts[i].state, RCPT_PENDING);
		ck_assert_int_eq(d.s[m.rcpts[i].type_offset], 'R');
	}
	ck_assert_uint_eq(m.content_len, sizeof(content) - 1);
	ck_assert_uint_eq(m.content_offset + m.content_len + SPOOL_REC_HDR, d.len);
	ck_assert_mem_eq(d.s + m.content_offset, content, m.content_len);
	ck_assert_uint_eq(m.file_size, d.len);
	spool_msg_free(&m);
	ck_assert_ptr_null(m.rcpts);
	dstr_free(&d);
}
END_TEST

/* The exact bytes of a small file: record order, big-endian lengths. */
START_TEST(test_exact_bytes)
{
	static const unsigned char want[] =
		"V\0\0\0\001" "1"
		"I\0\0\0\014" "0000000000A1"
		"T\0\0\0\002" "42"
		"C\0\0\0\011" "127.0.0.1"
		"H\0\0\0\013" "client.test"
		"P\0\0\0\006" "ESMTPS"
		"S\0\0\0\0"
		"R\0\0\0\020" "bob@example.test"
		"M\0\0\0\002" "hi"
		"E\0\0\0\0";
	const struct env_case *c = &env_cases[1];
	struct dstr d;

	build(c, 42, "hi", 2, &d);
	ck_assert_uint_eq(d.len, sizeof(want) - 1);
	ck_assert_mem_eq(d.s, want, sizeof(want) - 1);
	dstr_free(&d);
}
END_TEST

/* A message quarantined as it arrived carries why (SPOOL_REC_HOLD) before
 * its recipients; without one the record is absent and reads back NULL. */
START_TEST(test_hold_reason)
{
	const char *rcpts[] = { "bob@example.test" };
	struct spool_envelope env = {
		.id = "0000000000A1", .arrival_usec = 7, .client = "127.0.0.1", .helo = "h", .proto = "ESMTP",
		.sender = "a@b.test", .rcpts = rcpts, .nrcpt = 1,
		.hold_reason = "milter inet:127.0.0.1:1: looks like spam",
	};
	unsigned char end[SPOOL_REC_HDR];
	struct spool_msg m;
	struct dstr d;
	char err[256];

	dstr_init(&d, 0);
	spool_encode_head(&env, 2, &d);
	dstr_append(&d, "hi", 2);
	spool_encode_end(end);
	dstr_append(&d, end, sizeof(end));
	ck_assert_ptr_nonnull(memmem(d.s, d.len, "Q\0\0\0\050milter", 11));
	ck_assert_msg(parse_dstr(&d, &m, err, sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(m.hold_reason, "milter inet:127.0.0.1:1: looks like spam");
	ck_assert_uint_eq(m.nrcpt, 1);
	spool_msg_free(&m);
	dstr_free(&d);

	build_default(&d);
	ck_assert_msg(parse_dstr(&d, &m, err, sizeof(err)) == 0, "%s", err);
	ck_assert_ptr_null(m.hold_reason);
	spool_msg_free(&m);
	dstr_free(&d);
}
END_TEST

START_TEST(test_empty_content_and_large_length)
{
	struct spool_msg m;
	struct dstr d;
	char err[256];
	unsigned char *big;
	size_t biglen = 70000;   /* needs more than two length bytes */

	build(&env_cases[0], 1, "", 0, &d);
	ck_assert_msg(parse_dstr(&d, &m, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(m.content_len, 0);
	spool_msg_free(&m);
	dstr_free(&d);

	big = malloc(biglen);
	memset(big, 'x', biglen);
	build(&env_cases[0], 1, (const char *)big, biglen, &d);
	ck_assert_msg(parse_dstr(&d, &m, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(m.content_len, biglen);
	ck_assert_mem_eq(d.s + m.content_offset, big, biglen);
	spool_msg_free(&m);
	dstr_free(&d);
	free(big);
}
END_TEST

START_TEST(test_rcpt_states)
{
	static const struct { char type; enum rcpt_state state; } states[] = {
		{ 'R', RCPT_PENDING }, { 'D', RCPT_DONE },
		{ 'B', RCPT_BOUNCED }, { 'X', RCPT_DELETED },
	};
	const struct env_case *c = &env_cases[3];
	struct spool_msg m, m2;
	struct dstr d;
	char err[256];
	size_t i;

	build(c, 7, content, sizeof(content) - 1, &d);
	ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), 0);
	ck_assert_uint_eq(m.nrcpt, 4);
	/* the in-place mark the queue manager makes: one type byte per recipient */
	for (i = 0; i < 4; i++)
		d.s[m.rcpts[i].type_offset] = states[i].type;
	ck_assert_msg(parse_dstr(&d, &m2, err, sizeof(err)) == 0, "%s", err);
	for (i = 0; i < 4; i++) {
		ck_assert_int_eq(m2.rcpts[i].state, states[i].state);
		ck_assert_uint_eq(m2.rcpts[i].type_offset, m.rcpts[i].type_offset);
		ck_assert_str_eq(m2.rcpts[i].addr, c->addr[i]);
	}
	spool_msg_free(&m);
	spool_msg_free(&m2);
	dstr_free(&d);
}
END_TEST

/* A crash can leave any prefix of a file behind: none may parse. */
START_TEST(test_every_truncation)
{
	struct spool_msg m;
	struct dstr d;
	char err[256];
	unsigned char *copy;
	size_t n;

	build_default(&d);
	for (n = 0; n < d.len; n++) {
		/* an exact-size heap copy lets ASan catch any read past the end */
		copy = malloc(n ? n : 1);
		memcpy(copy, d.s, n);
		err[0] = '\0';
		ck_assert_msg(spool_parse(copy, n, &m, err, sizeof(err)) == -1,
			      "prefix of %zu bytes accepted", n);
		ck_assert_msg(err[0] != '\0', "prefix of %zu bytes: no reason", n);
		ck_assert_ptr_null(m.rcpts);
		ck_assert_ptr_null(m.sender);
		free(copy);
	}
	/* the torn cases name themselves */
	ck_assert_int_eq(spool_parse((const unsigned char *)d.s, 0, &m, err, sizeof(err)), -1);
	ck_assert_str_eq(err, "torn: empty file");
	ck_assert_int_eq(spool_parse((const unsigned char *)d.s, d.len - SPOOL_REC_HDR, &m,
				     err, sizeof(err)), -1);
	ck_assert_str_eq(err, "torn: no end marker");
	ck_assert_int_eq(spool_parse((const unsigned char *)d.s, d.len - 2, &m,
				     err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "torn: record header at offset") != NULL, "%s", err);
	dstr_free(&d);
}
END_TEST

/* Damaged length fields of each record. */
START_TEST(test_bad_lengths)
{
	static const uint32_t lens[] = { 0xffffffffu, 0x80000000u, 0x7fffffffu };
	struct spool_msg m;
	struct dstr d;
	char err[256], want[128];
	size_t off, left, nrec = 0, r, k;
	uint32_t orig;

	build_default(&d);
	while (rec_offset(&d, (int)nrec) < d.len)
		nrec++;
	ck_assert_uint_eq(nrec, 12);   /* V I T C H P S s R R M E */
	for (r = 0; r < nrec; r++) {
		off = rec_offset(&d, (int)r);
		orig = (uint32_t)(rec_offset(&d, (int)r + 1) - off - SPOOL_REC_HDR);
		for (k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
			put32((unsigned char *)d.s + off + 1, lens[k]);
			ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), -1);
			left = d.len - off - SPOOL_REC_HDR;
			snprintf(want, sizeof(want),
				 "record '%c' at offset %zu runs past end of file (length %u, %zu bytes left)",
				 d.s[off], off, (unsigned)lens[k], left);
			ck_assert_str_eq(err, want);
		}
		/* one byte too long or too short shifts every later record */
		put32((unsigned char *)d.s + off + 1, orig + 1);
		ck_assert_msg(parse_dstr(&d, &m, err, sizeof(err)) == -1,
			      "record %zu length +1 accepted", r);
		if (orig > 0) {
			put32((unsigned char *)d.s + off + 1, orig - 1);
			ck_assert_msg(parse_dstr(&d, &m, err, sizeof(err)) == -1,
				      "record %zu length -1 accepted", r);
		}
		put32((unsigned char *)d.s + off + 1, orig);
		ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), 0);
		spool_msg_free(&m);
	}
	dstr_free(&d);
}
END_TEST

START_TEST(test_trailing_byte)
{
	static const char *const tails[] = { "\n", "E", "E\0\0\0\0" };
	struct spool_msg m;
	struct dstr d;
	char err[256], want[128];
	size_t base, tl;

	for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]); i++) {
		build_default(&d);
		base = d.len;
		tl = i == 2 ? 5 : 1;
		dstr_append(&d, tails[i], tl);
		ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), -1);
		snprintf(want, sizeof(want),
			 "%zu trailing bytes after the end marker, from offset %zu", tl, base);
		ck_assert_str_eq(err, want);
		dstr_free(&d);
	}
}
END_TEST

START_TEST(test_unknown_type)
{
	struct spool_msg m;
	struct dstr d;
	char err[256], want[128];
	size_t off;

	build_default(&d);
	off = rec_offset(&d, 3);   /* the client record */
	ck_assert_int_eq(d.s[off], 'C');
	d.s[off] = 'z';
	ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "unknown record type 0x7a at offset %zu", off);
	ck_assert_str_eq(err, want);
	d.s[off] = 'Z';         /* padding: only after the end marker */
	ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "padding record at offset %zu before the end marker", off);
	ck_assert_str_eq(err, want);
	d.s[off] = 'r';   /* type letters are case-sensitive */
	ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "unknown record type 0x72 at offset %zu", off);
	ck_assert_str_eq(err, want);
	dstr_free(&d);
}
END_TEST

/* Hand-built files: each breaks one structural rule. */
struct rec { char type; const char *data; size_t len; };
#define REC(t, s) { t, s, sizeof(s) - 1 }

struct shape_case {
	const char *name;
	struct rec recs[12];
	const char *reason;     /* expected substring of the reason */
};

static const struct shape_case shape_cases[] = {
	{ "minimal valid", { REC('V', "1"), REC('T', "5"), REC('S', ""),
	  REC('R', "a@b"), REC('M', ""), REC('E', "") }, NULL },
	{ "no version", { REC('T', "5"), REC('S', ""), REC('R', "a@b"), REC('M', ""),
	  REC('E', "") }, "first record is 'T', not the version record" },
	{ "version 2", { REC('V', "2"), REC('T', "5"), REC('S', ""), REC('R', "a@b"),
	  REC('M', ""), REC('E', "") }, "unsupported spool version \"2\"" },
	{ "version with control bytes", { REC('V', "1\033[2J"), REC('T', "5"), REC('S', ""),
	  REC('R', "a@b"), REC('M', ""), REC('E', "") }, "unsupported spool version \"1?[2J\"" },
	{ "second version", { REC('V', "1"), REC('V', "1"), REC('T', "5"), REC('S', ""),
	  REC('R', "a@b"), REC('M', ""), REC('E', "") }, "second version record at offset 6" },
	{ "no time", { REC('V', "1"), REC('S', ""), REC('R', "a@b"), REC('M', ""),
	  REC('E', "") }, "no arrival time record 'T'" },
	{ "two times", { REC('V', "1"), REC('T', "5"), REC('T', "6"), REC('S', ""),
	  REC('R', "a@b"), REC('M', ""), REC('E', "") }, "duplicate record 'T' at offset 12" },
	{ "time not a number", { REC('V', "1"), REC('T', "5x"), REC('S', ""),
	  REC('R', "a@b"), REC('M', ""), REC('E', "") }, "bad arrival time" },
	{ "time empty", { REC('V', "1"), REC('T', ""), REC('S', ""),
	  REC('R', "a@b"), REC('M', ""), REC('E', "") }, "bad arrival time" },
	{ "time overflows", { REC('V', "1"), REC('T', "18446744073709551616"), REC('S', ""),
	  REC('R', "a@b"), REC('M', ""), REC('E', "") }, "bad arrival time" },
	{ "time at maximum", { REC('V', "1"), REC('T', "18446744073709551615"), REC('S', ""),
	  REC('R', "a@b"), REC('M', ""), REC('E', "") }, NULL },
	{ "no sender", { REC('V', "1"), REC('T', "5"), REC('R', "a@b"), REC('M', ""),
	  REC('E', "") }, "no sender record 'S'" },
	{ "two senders", { REC('V', "1"), REC('T', "5"), REC('S', ""), REC('S', "x@y"),
	  REC('R', "a@b"), REC('M', ""), REC('E', "") }, "duplicate record 'S' at offset 17" },
	{ "two sender params", { REC('V', "1"), REC('T', "5"), REC('S', ""), REC('s', "RET=HDRS"),
	  REC('s', "RET=FULL"), REC('R', "a@b"), REC('M', ""), REC('E', "") },
	  "duplicate record 's'" },
	{ "two clients", { REC('V', "1"), REC('T', "5"), REC('C', "1"), REC('C', "2"),
	  REC('S', ""), REC('R', "a@b"), REC('M', ""), REC('E', "") }, "duplicate record 'C'" },
	{ "no recipients", { REC('V', "1"), REC('T', "5"), REC('S', ""), REC('M', ""),
	  REC('E', "") }, "no recipient records before the content" },
	{ "empty recipient", { REC('V', "1"), REC('T', "5"), REC('S', ""), REC('R', ""),
	  REC('M', ""), REC('E', "") }, "empty recipient address in record 'R' at offset 17" },
	{ "recipient only params", { REC('V', "1"), REC('T', "5"), REC('S', ""),
	  REC('D', " NOTIFY=NEVER"), REC('M', ""), REC('E', "") },
	  "empty recipient address in record 'D'" },
	{ "no content", { REC('V', "1"), REC('T', "5"), REC('S', ""), REC('R', "a@b"),
	  REC('E', "") }, "end marker at offset 25 before the content" },
	{ "two contents", { REC('V', "1"), REC('T', "5"), REC('S', ""), REC('R', "a@b"),
	  REC('M', "x"), REC('M', "y"), REC('E', "") }, "duplicate record 'M' at offset 31" },
	{ "recipient after content", { REC('V', "1"), REC('T', "5"), REC('S', ""),
	  REC('R', "a@b"), REC('M', ""), REC('R', "c@d"), REC('E', "") },
	  "record 'R' at offset 30 after the content" },
	{ "end with a length", { REC('V', "1"), REC('T', "5"), REC('S', ""), REC('R', "a@b"),
	  REC('M', ""), REC('E', "x") }, "end marker at offset 30 has length 1" },
	{ "NUL in sender", { REC('V', "1"), REC('T', "5"), REC('S', "a\0b"), REC('R', "a@b"),
	  REC('M', ""), REC('E', "") }, "NUL byte in record 'S' at offset 12" },
	{ "NUL in recipient", { REC('V', "1"), REC('T', "5"), REC('S', ""), REC('R', "a@b\0"),
	  REC('M', ""), REC('E', "") }, "NUL byte in record 'R' at offset 17" },
	{ "NUL in helo", { REC('V', "1"), REC('T', "5"), REC('H', "\0"), REC('S', ""),
	  REC('R', "a@b"), REC('M', ""), REC('E', "") }, "NUL byte in record 'H'" },
	{ "NUL in content is fine", { REC('V', "1"), REC('T', "5"), REC('S', ""),
	  REC('R', "a@b"), REC('M', "a\0b"), REC('E', "") }, NULL },
	{ "unknown type 0x00", { REC('V', "1"), REC('T', "5"), { '\0', "", 0 }, REC('S', ""),
	  REC('R', "a@b"), REC('M', ""), REC('E', "") }, "unknown record type 0x00 at offset 12" },
};

START_TEST(test_shapes)
{
	const struct shape_case *c = &shape_cases[_i];
	unsigned char hdr[SPOOL_REC_HDR];
	struct spool_msg m;
	struct dstr d;
	char err[256];
	size_t i;
	int rc;

	dstr_init(&d, 0);
	/* the list ends at the first unused slot (data NULL), so type 0x00 can be tested */
	for (i = 0; i < 12 && c->recs[i].data != NULL; i++) {
		hdr[0] = (unsigned char)c->recs[i].type;
		put32(hdr + 1, (uint32_t)c->recs[i].len);
		dstr_append(&d, hdr, sizeof(hdr));
		dstr_append(&d, c->recs[i].data, c->recs[i].len);
	}
	rc = parse_dstr(&d, &m, err, sizeof(err));
	if (c->reason == NULL) {
		ck_assert_msg(rc == 0, "%s: %s", c->name, err);
		ck_assert_uint_eq(m.nrcpt, 1);
		ck_assert_str_eq(m.client, "");   /* optional records read back as "" */
		spool_msg_free(&m);
	} else {
		ck_assert_msg(rc == -1, "%s: accepted", c->name);
		ck_assert_msg(strstr(err, c->reason) != NULL, "%s: got \"%s\", want \"%s\"",
			      c->name, err, c->reason);
	}
	dstr_free(&d);
}
END_TEST

/* ---- files ---- */

static char tmpdir[256];

static void
make_tmpdir(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/check_spool.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void
rm_rf(const char *path)
{
	char cmd[512];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
	ck_assert_int_eq(system(cmd), 0);
}

static void
write_file(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write_all(fd, p, n), 0);
	close(fd);
}

START_TEST(test_read_file)
{
	struct spool_file f;
	struct dstr d;
	char path[512], id[QID_LEN + 1], err[256];

	make_tmpdir();
	qid_init(3, 0);
	qid_next(id);
	build_default(&d);
	snprintf(path, sizeof(path), "%s/%s", tmpdir, id);
	write_file(path, d.s, d.len);
	ck_assert_msg(spool_load(path, NULL, &f, err, sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(f.m.id, id);           /* from the basename */
	ck_assert_uint_eq(f.m.file_size, d.len);
	ck_assert_uint_eq(f.head_len, d.len);  /* small: read in one piece */
	ck_assert_mem_eq(f.head, d.s, d.len);
	ck_assert_str_eq(f.m.sender, "a@remote.test");
	ck_assert_uint_eq(f.m.nrcpt, 2);
	ck_assert_uint_eq(f.m.content_len, sizeof(content) - 1);
	{
		char c[sizeof(content)];

		ck_assert_int_eq(spool_content_read(f.fd, &f.m, 0, c, sizeof(content) - 1), 0);
		ck_assert_mem_eq(c, content, sizeof(content) - 1);
		ck_assert_int_eq(spool_content_read(f.fd, &f.m, 3, c, 4), 0);
		ck_assert_mem_eq(c, content + 3, 4);
	}
	spool_file_free(&f);
	ck_assert_int_eq(f.fd, -1);

	/* torn on disk: corrupt, not an I/O error */
	write_file(path, d.s, d.len - SPOOL_REC_HDR - 1);
	ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "runs past end of file") != NULL, "%s", err);
	ck_assert_ptr_null(f.head);
	ck_assert_int_eq(f.fd, -1);

	/* a name that is not a queue id (a tmp file, an editor's backup) */
	snprintf(path, sizeof(path), "%s/%s~", tmpdir, id);
	write_file(path, d.s, d.len);
	ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);
	ck_assert_str_eq(err, "file name is not a queue id");
	snprintf(path, sizeof(path), "%s/%s", tmpdir, "7kq2m4xh1c00");
	write_file(path, d.s, d.len);
	ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);

	/* missing: an I/O error, errno kept */
	snprintf(path, sizeof(path), "%s/%s", tmpdir, "7KQ2M4XH1C00");
	errno = 0;
	ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -2);
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_msg(strstr(err, path) != NULL, "%s", err);

	/* a directory in the way is no queue file: it goes aside, not retried forever */
	ck_assert_int_eq(mkdir(path, 0700), 0);
	ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);
	ck_assert_str_eq(err, "not a regular file");
	ck_assert_int_eq(rmdir(path), 0);

	/* nor is a symbolic link, wherever it points */
	ck_assert_int_eq(symlink("/etc/passwd", path), 0);
	ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);
	ck_assert_str_eq(err, "a symbolic link, not a queue file");
	ck_assert_int_eq(unlink(path), 0);

	dstr_free(&d);
	rm_rf(tmpdir);
}
END_TEST

/*
 * Fault injection for the read path: a reader that hands out `fault_after`
 * bytes (in `fault_chunk`-byte reads) and then fails with `fault_errno`,
 * or, with fault_errno 0, ends the file there. EINTR is answered once and
 * the read then goes on.
 */
static size_t fault_after, fault_chunk, fault_given;
static int fault_errno;
static bool fault_eintr_done;

static ssize_t
faulty_read(int fd, void *buf, size_t n)
{
	ssize_t got;

	if (fault_given >= fault_after) {
		if (fault_errno == EINTR && fault_eintr_done)
			return read(fd, buf, n);
		if (fault_errno == EINTR)
			fault_eintr_done = true;
		if (fault_errno == 0)
			return 0;
		errno = fault_errno;
		return -1;
	}
	if (n > fault_after - fault_given)
		n = fault_after - fault_given;
	if (n > fault_chunk)
		n = fault_chunk;
	got = read(fd, buf, n);
	if (got > 0)
		fault_given += (size_t)got;
	return got;
}

static void
fault_set(size_t after, size_t chunk, int err)
{
	fault_after = after;
	fault_chunk = chunk;
	fault_errno = err;
	fault_given = 0;
	fault_eintr_done = false;
}

static bool
exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* A file whose records do not fit in the first piece read and whose
 * content is far bigger than it: spool_load() reads the records in growing
 * pieces and the end marker on its own, never the content, and finds what
 * spool_parse() finds in the whole image; damage after the content is
 * still found. */
START_TEST(test_load_big_file)
{
	static const size_t nr = 3000, clen = 300000;
	struct spool_envelope env;
	struct spool_file f;
	struct spool_msg m;
	struct dstr d;
	unsigned char end[SPOOL_REC_HDR];
	char path[512], id[QID_LEN + 1], err[256], **rc = xcalloc(nr, sizeof(char *));
	char *body = xmalloc(clen), got[64];
	size_t i;

	make_tmpdir();
	qid_init(5, 0);
	qid_next(id);
	for (i = 0; i < nr; i++)
		rc[i] = xasprintf("user%zu@example.test NOTIFY=FAILURE", i);
	for (i = 0; i < clen; i++)
		body[i] = (char)('a' + i % 26);
	memset(&env, 0, sizeof(env));
	env.id = id;
	env.arrival_usec = 1700000000000000ull;
	env.sender = "s@remote.test";
	env.rcpts = (const char **)rc;
	env.nrcpt = nr;
	dstr_init(&d, 0);
	spool_encode_head(&env, clen, &d);
	ck_assert_uint_gt(d.len, 16 * 1024);    /* more than the first piece */
	dstr_append(&d, body, clen);
	spool_encode_end(end);
	dstr_append(&d, end, sizeof(end));
	snprintf(path, sizeof(path), "%s/%s", tmpdir, id);
	write_file(path, d.s, d.len);

	ck_assert_msg(spool_load(path, NULL, &f, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), 0);
	ck_assert_uint_eq(f.m.nrcpt, nr);
	ck_assert_str_eq(f.m.rcpts[nr - 1].addr, m.rcpts[nr - 1].addr);
	ck_assert_str_eq(f.m.rcpts[nr - 1].params, "NOTIFY=FAILURE");
	ck_assert_uint_eq(f.m.content_offset, m.content_offset);
	ck_assert_uint_eq(f.m.content_len, clen);
	ck_assert_uint_lt(f.head_len, d.len / 2);       /* the content was not read */
	ck_assert_int_eq(spool_content_read(f.fd, &f.m, clen - 10, got, 10), 0);
	ck_assert_mem_eq(got, body + clen - 10, 10);
	spool_msg_free(&m);
	spool_file_free(&f);

	/* no end marker, a wrong one, bytes after it: each corrupt */
	write_file(path, d.s, d.len - SPOOL_REC_HDR);
	ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "no end marker") != NULL, "%s", err);
	((char *)d.s)[d.len - SPOOL_REC_HDR] = SPOOL_REC_RCPT;
	write_file(path, d.s, d.len);
	ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "after the content") != NULL, "%s", err);
	((char *)d.s)[d.len - SPOOL_REC_HDR] = SPOOL_REC_END;
	dstr_append(&d, "xy", 2);
	write_file(path, d.s, d.len);
	ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "2 trailing bytes") != NULL, "%s", err);
	for (i = 0; i < 5000; i++)
		dstr_append(&d, "z", 1);
	write_file(path, d.s, d.len);
	ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "5002 trailing bytes") != NULL, "%s", err);
	/* the same bytes as a padding record: a recycled file, whole */
	{
		unsigned char pad[SPOOL_REC_HDR];

		spool_encode_pad(pad, 5002 - SPOOL_REC_HDR);
		memcpy(d.s + d.len - 5002, pad, sizeof(pad));
		((char *)d.s)[d.len - 100] = '\0';     /* old bytes: anything */
		write_file(path, d.s, d.len);
		ck_assert_msg(spool_load(path, NULL, &f, err, sizeof(err)) == 0, "%s", err);
		ck_assert_uint_eq(f.m.content_len, clen);
		ck_assert_uint_eq(f.m.file_size, d.len);
		spool_file_free(&f);
		/* one byte short of the end, or one past: damage */
		spool_encode_pad(pad, 5002 - SPOOL_REC_HDR - 1);
		memcpy(d.s + d.len - 5002, pad, sizeof(pad));
		write_file(path, d.s, d.len);
		ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);
		ck_assert_msg(strstr(err, "1 trailing bytes after the padding") != NULL, "%s", err);
		spool_encode_pad(pad, 5002 - SPOOL_REC_HDR + 1);
		memcpy(d.s + d.len - 5002, pad, sizeof(pad));
		write_file(path, d.s, d.len);
		ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);
		ck_assert_msg(strstr(err, "runs past end of file") != NULL, "%s", err);
		/* padding where the end marker should be */
		memcpy(d.s + d.len - 5002 - SPOOL_REC_HDR, pad, sizeof(pad));
		write_file(path, d.s, d.len);
		ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);
		ck_assert_msg(strstr(err, "after the content") != NULL, "%s", err);
	}
	/* a record before the content cut by the end of the file */
	write_file(path, d.s, 20000);
	ck_assert_int_eq(spool_load(path, NULL, &f, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "runs past end of file") != NULL, "%s", err);

	for (i = 0; i < nr; i++)
		free(rc[i]);
	free(rc);
	free(body);
	dstr_free(&d);
	rm_rf(tmpdir);
}
END_TEST

/* What the queue manager and the start-up check do with a file they pick
 * up (spool_take): a read error leaves a good file where it is, whatever
 * the errno and wherever the read fails; a file that parses wrong goes to
 * corrupt/. */
START_TEST(test_take_read_errors)
{
	static const int errs[] = { EIO, ENOMEM, EMFILE, ENFILE, EAGAIN, ESTALE };
	char spool[512], path[600], bad[600], id[QID_LEN + 1];
	struct spool_file f;
	struct dstr d;
	size_t i, k, after[] = { 0, 1, SPOOL_REC_HDR, 0 };

	make_tmpdir();
	snprintf(spool, sizeof(spool), "%s/spool", tmpdir);
	ck_assert_int_eq(spool_prepare(spool), 0);
	qid_init(4, 0);
	qid_next(id);
	build_default(&d);
	snprintf(path, sizeof(path), "%s/active/%s", spool, id);
	snprintf(bad, sizeof(bad), "%s/corrupt/%s", spool, id);
	write_file(path, d.s, d.len);
	after[3] = d.len / 2;

	for (i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
		for (k = 0; k < sizeof(after) / sizeof(after[0]); k++) {
			fault_set(after[k], 7, errs[i]);
			errno = 0;
			ck_assert_msg(spool_take(spool, path, faulty_read, &f) == -2,
				      "errno %d after %zu bytes: not an I/O error", errs[i], after[k]);
			ck_assert_int_eq(errno, errs[i]);
			ck_assert_ptr_null(f.head);
			ck_assert_msg(exists(path), "errno %d after %zu bytes: the file was moved",
				      errs[i], after[k]);
			ck_assert_msg(!exists(bad), "errno %d: quarantined on a read error", errs[i]);
		}
	}

	/* an interrupted read goes on: the file loads whole */
	fault_set(10, 3, EINTR);
	ck_assert_int_eq(spool_take(spool, path, faulty_read, &f), 0);
	ck_assert_uint_eq(f.m.file_size, d.len);
	ck_assert_str_eq(f.m.id, id);
	spool_file_free(&f);

	/* small reads are put together */
	fault_set(d.len, 1, 0);
	ck_assert_int_eq(spool_take(spool, path, faulty_read, &f), 0);
	ck_assert_mem_eq(f.head, d.s, d.len);
	spool_file_free(&f);

	/* the same file read in full again, after the errors */
	ck_assert_int_eq(spool_take(spool, path, NULL, &f), 0);
	spool_file_free(&f);

	/* reads that end before the size the file had when opened: it changed
	 * while being read, which a queue file never does; read again later,
	 * never taken for torn on the strength of a read */
	fault_set(d.len / 2, 4096, 0);
	ck_assert_int_eq(spool_take(spool, path, faulty_read, &f), -2);
	ck_assert_ptr_null(f.head);
	ck_assert(exists(path));
	ck_assert(!exists(bad));

	/* the file really is torn (its end is gone): corrupt/ */
	write_file(path, d.s, d.len - 1);
	ck_assert_int_eq(spool_take(spool, path, NULL, &f), -1);
	ck_assert(!exists(path));
	ck_assert(exists(bad));

	/* gone meanwhile: nothing moved, nothing to do */
	errno = 0;
	ck_assert_int_eq(spool_take(spool, path, NULL, &f), -2);
	ck_assert_int_eq(errno, ENOENT);

	dstr_free(&d);
	rm_rf(tmpdir);
}
END_TEST

START_TEST(test_prepare)
{
	static const char *const subs[] = {
		"tmp", "incoming", "active", "deferred", "hold", "corrupt",
	};
	char spool[512], path[600];
	struct stat st;
	size_t i;

	make_tmpdir();
	snprintf(spool, sizeof(spool), "%s/var/spool/sorter", tmpdir);
	ck_assert_int_eq(spool_prepare(spool), 0);
	for (i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", spool, subs[i]);
		ck_assert_msg(stat(path, &st) == 0, "%s missing", path);
		ck_assert(S_ISDIR(st.st_mode));
		ck_assert_int_eq(st.st_mode & 0777, 0700);
	}
	ck_assert_int_eq(stat(spool, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0700);
	/* idempotent */
	ck_assert_int_eq(spool_prepare(spool), 0);
	/* a plain file where a folder belongs */
	snprintf(path, sizeof(path), "%s/hold", spool);
	ck_assert_int_eq(rmdir(path), 0);
	write_file(path, "x", 1);
	errno = 0;
	ck_assert_int_eq(spool_prepare(spool), -1);
	ck_assert_int_eq(errno, ENOTDIR);
	rm_rf(tmpdir);
}
END_TEST

/* the newest id named in the queue folders, whatever else lies there */
START_TEST(test_newest_qid)
{
	char spool[512], path[700], a[QID_LEN + 1], b[QID_LEN + 1], c[QID_LEN + 1];

	make_tmpdir();
	snprintf(spool, sizeof(spool), "%s/spool", tmpdir);
	ck_assert_int_eq(spool_prepare(spool), 0);
	ck_assert_uint_eq(spool_newest_qid(spool), 0);
	qid_init(2, 0);
	qid_next(a);
	qid_next(b);
	qid_next(c);
	snprintf(path, sizeof(path), "%s/deferred/%s", spool, a);
	write_file(path, "x", 1);
	snprintf(path, sizeof(path), "%s/defer/%s", spool, b);
	write_file(path, "x", 1);
	ck_assert_uint_eq(spool_newest_qid(spool), qid_usec(b));
	/* corrupt/ keeps a second file of a name as NAME.1 */
	snprintf(path, sizeof(path), "%s/corrupt/%s.1", spool, c);
	write_file(path, "x", 1);
	ck_assert_uint_eq(spool_newest_qid(spool), qid_usec(c));
	/* names that are no ids, and files outside the queue folders, do not count */
	snprintf(path, sizeof(path), "%s/hold/ZZZZZZZZZZZZ-x", spool);
	write_file(path, "x", 1);
	snprintf(path, sizeof(path), "%s/hold/zzzzzzzzzzzzz", spool);
	write_file(path, "x", 1);
	snprintf(path, sizeof(path), "%s/tmp/ZZZZZZZZZZZZ", spool);
	write_file(path, "x", 1);
	ck_assert_uint_eq(spool_newest_qid(spool), qid_usec(c));
	/* a process told of it issues later ids, even with the clock behind */
	qid_init(2, qid_usec(c) + 60000000u);
	qid_next(a);
	ck_assert_uint_eq(qid_usec(a), qid_usec(c) + 60000001u);
	rm_rf(tmpdir);
}
END_TEST

START_TEST(test_quarantine)
{
	char spool[512], src[600], dst[600], id[QID_LEN + 1];
	struct stat st;

	make_tmpdir();
	snprintf(spool, sizeof(spool), "%s/spool", tmpdir);
	ck_assert_int_eq(spool_prepare(spool), 0);
	qid_init(1, 0);
	qid_next(id);
	snprintf(src, sizeof(src), "%s/incoming/%s", spool, id);
	snprintf(dst, sizeof(dst), "%s/corrupt/%s", spool, id);
	write_file(src, "torn", 4);
	spool_quarantine(spool, src, "torn: no end marker");
	ck_assert_int_eq(stat(src, &st), -1);
	ck_assert_int_eq(stat(dst, &st), 0);
	ck_assert_int_eq(st.st_size, 4);

	/* the same name again never replaces what is already there */
	write_file(src, "second", 6);
	spool_quarantine(spool, src, "torn: no end marker");
	ck_assert_int_eq(stat(src, &st), -1);
	ck_assert_int_eq(stat(dst, &st), 0);
	ck_assert_int_eq(st.st_size, 4);
	snprintf(dst, sizeof(dst), "%s/corrupt/%s.1", spool, id);
	ck_assert_int_eq(stat(dst, &st), 0);
	ck_assert_int_eq(st.st_size, 6);

	/* a file that is not a queue id is moved too */
	snprintf(src, sizeof(src), "%s/incoming/junk", spool);
	snprintf(dst, sizeof(dst), "%s/corrupt/junk", spool);
	write_file(src, "j", 1);
	spool_quarantine(spool, src, "file name is not a queue id");
	ck_assert_int_eq(stat(src, &st), -1);
	ck_assert_int_eq(stat(dst, &st), 0);

	/* a vanished file is only logged */
	spool_quarantine(spool, src, "whatever");
	rm_rf(tmpdir);
}
END_TEST

/* ---- the status file beside a deferred message (status.c) ---- */

struct status_case {
	const char *in;
	int rc;
	unsigned attempts;
	bool warned;
	const char *items;      /* the items as "kind index text|..." */
	size_t len;             /* of in, when it holds a NUL; else 0 */
};

static const struct status_case status_cases[] = {
	{ .in = "", .attempts = 0, .warned = false, .items = "" },
	{ .in = "attempts\t3\nwarned\t1\n", .attempts = 3, .warned = true, .items = "" },
	{ .in = "attempts\t1\nwarned\t0\nerror\t0\t451 4.3.0 later\ndone\t2\tb@x.test\n",
	  .attempts = 1, .items = "error 0 451 4.3.0 later|done 2 b@x.test|" },
	{ .in = "error\t4\t\n", .attempts = 0, .warned = false, .items = "error 4 |" },
	/* only the first two TABs split a line */
	{ .in = "error\t1\ta\tb\n", .attempts = 0, .warned = false, .items = "error 1 a\tb|" },
	{ .in = "attempts\t4294967295\n", .attempts = 4294967295u, .warned = false, .items = "" },
	/* refused */
	{ .in = "attempts\t3", .rc = -1 },  /* torn: no LF at the end */
	{ .in = "error\t1\tx\nattempts\t3", .rc = -1 },  /* torn after an item: nothing leaks */
	{ .in = "attempts 3\n", .rc = -1 },
	{ .in = "attempts\t\n", .rc = -1 },
	{ .in = "attempts\t-1\n", .rc = -1 },  /* strtoul would take these */
	{ .in = "attempts\t+1\n", .rc = -1 },
	{ .in = "attempts\t 1\n", .rc = -1 },
	{ .in = "attempts\t4294967296\n", .rc = -1 },
	{ .in = "attempts\t1\t2\n", .rc = -1 },
	{ .in = "warned\t2\n", .rc = -1 },
	{ .in = "error\t1\n", .rc = -1 },
	{ .in = "error\tx\tfoo\n", .rc = -1 },
	{ .in = "done\t99999999999999999999999\ta@b\n", .rc = -1 },
	{ .in = "bogus\t1\n", .rc = -1 },
	{ .in = "parked\t1\n", .rc = -1 },
	{ .in = "parked\tx\t1\n", .rc = -1 },
	{ .in = "parked\t1\t\n", .rc = -1 },
	{ .in = "parked\t1\t2\t3\n", .rc = -1 },
	{ .in = "error\t1\ta\0b\n", .len = 13, .rc = -1 },
};

START_TEST(test_status_parse)
{
	const struct status_case *c = &status_cases[_i];
	size_t len = c->len ? c->len : strlen(c->in);
	struct qstatus st;
	struct dstr got;
	size_t i;

	ck_assert_int_eq(qstatus_parse(c->in, len, &st), c->rc);
	if (c->rc < 0) {
		ck_assert_uint_eq(st.nitems, 0);
		ck_assert_ptr_null(st.items);
		return;
	}
	ck_assert_uint_eq(st.attempts, c->attempts);
	ck_assert_int_eq(st.warned, c->warned);
	dstr_init(&got, 0);
	for (i = 0; i < st.nitems; i++)
		dstr_printf(&got, "%s %zu %s|", st.items[i].kind == QS_DONE ? "done" : "error",
			    st.items[i].index, st.items[i].text);
	ck_assert_str_eq(got.s ? got.s : "", c->items);
	dstr_free(&got);
	qstatus_free(&st);
}
END_TEST

START_TEST(test_status_round_trip)
{
	struct qstatus st, back;
	struct dstr d;

	qstatus_init(&st);
	st.attempts = 7;
	st.warned = true;
	qstatus_set_error(&st, 0, "550 5.1.1\tno\r\nsuch user");
	qstatus_set_error(&st, 0, "451 4.3.0 later");        /* replaces */
	qstatus_add_done(&st, 1, "a@example.test");
	qstatus_add_done(&st, 1, "a@example.test");          /* once */
	qstatus_add_done(&st, 1, "b@example.test");
	ck_assert_str_eq(qstatus_error(&st, 0), "451 4.3.0 later");
	ck_assert_ptr_null(qstatus_error(&st, 1));
	dstr_init(&d, 0);
	qstatus_format(&st, &d);
	ck_assert_str_eq(d.s, "attempts\t7\nwarned\t1\nerror\t0\t451 4.3.0 later\n"
			 "done\t1\ta@example.test\ndone\t1\tb@example.test\n");
	ck_assert_int_eq(qstatus_parse(d.s, d.len, &back), 0);
	ck_assert_uint_eq(back.attempts, 7);
	ck_assert(back.warned);
	ck_assert(qstatus_is_done(&back, 1, "b@example.test"));
	ck_assert(!qstatus_is_done(&back, 0, "b@example.test"));
	/* control characters never get into the file */
	qstatus_set_error(&back, 2, "a\tb\rc\nd");
	ck_assert_str_eq(qstatus_error(&back, 2), "a b c d");
	qstatus_free(&back);
	qstatus_free(&st);
	dstr_free(&d);

	/* time spent parked: written only when there is some, read back */
	qstatus_init(&st);
	ck_assert_uint_eq(qstatus_parked(&st, 1000), 0);
	st.parked = 30;
	st.parked_since = 900;
	ck_assert_uint_eq(qstatus_parked(&st, 1000), 130);
	ck_assert_uint_eq(qstatus_parked(&st, 800), 30);       /* a clock step back */
	dstr_init(&d, 0);
	qstatus_format(&st, &d);
	ck_assert_str_eq(d.s, "attempts\t0\nwarned\t0\nparked\t30\t900\n");
	ck_assert_int_eq(qstatus_parse(d.s, d.len, &back), 0);
	ck_assert_uint_eq(back.parked, 30);
	ck_assert_uint_eq(back.parked_since, 900);
	qstatus_free(&back);
	qstatus_free(&st);
	dstr_free(&d);
}
END_TEST

/* ---- the id and check records ---- */

START_TEST(test_crc32c)
{
	static const char v[] = "123456789";
	unsigned char big[1000];
	uint32_t whole, parts;
	size_t i;

	ck_assert_uint_eq(crc32c(0, v, 9), 0xe3069283u);       /* the standard check value */
	ck_assert_uint_eq(crc32c(0, "", 0), 0);
	for (i = 0; i < sizeof(big); i++)
		big[i] = (unsigned char)(i * 131 + 7);
	whole = crc32c(0, big, sizeof(big));
	for (i = 0; i <= 17; i++) {     /* any split, any alignment */
		parts = crc32c(crc32c(0, big, i), big + i, sizeof(big) - i);
		ck_assert_uint_eq(parts, whole);
	}
	parts = crc32c(crc32c(0, big + 1, 500), big + 501, sizeof(big) - 501);
	ck_assert_uint_eq(parts, crc32c(0, big + 1, sizeof(big) - 1));
}
END_TEST

/* A file as the writers make it: the head, the content, the check record
 * over both, the end marker. */
static void
build_checked(const char *id, const char *body, struct dstr *out)
{
	const char *rcpts[] = { "alice@example.test", "bob@example.test" };
	struct spool_envelope env = {
		.id = id, .arrival_usec = 9, .client = "127.0.0.1", .helo = "h", .proto = "ESMTP",
		.sender = "a@b.test", .rcpts = rcpts, .nrcpt = 2,
	};
	unsigned char check[SPOOL_CHECK_REC], end[SPOOL_REC_HDR];
	uint32_t hcrc;

	dstr_init(out, 0);
	spool_encode_head(&env, strlen(body), out);
	hcrc = crc32c(0, out->s, out->len);
	dstr_append(out, body, strlen(body));
	spool_check_encode(check, hcrc, crc32c(0, body, strlen(body)));
	dstr_append(out, check, sizeof(check));
	spool_encode_end(end);
	dstr_append(out, end, sizeof(end));
}

START_TEST(test_check_record)
{
	struct spool_msg m;
	struct dstr d;
	char err[256];
	size_t k;

	build_checked("0000000000A1", "Subject: x\r\n\r\nbody\r\n", &d);
	ck_assert_msg(parse_dstr(&d, &m, err, sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(m.qid, "0000000000A1");
	ck_assert(m.has_check);
	ck_assert_uint_eq(m.check_content, crc32c(0, "Subject: x\r\n\r\nbody\r\n", 20));
	spool_msg_free(&m);
	/* the check record's place: only right before the end marker */
	k = d.len - SPOOL_REC_HDR - SPOOL_CHECK_REC;
	ck_assert_int_eq(d.s[k], 'K');
	d.s[k + SPOOL_REC_HDR] = 'G';           /* not a hex digit */
	ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "bad check record at offset") != NULL, "%s", err);
	d.s[k + SPOOL_REC_HDR] = 'A';           /* lowercase only */
	ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), -1);
	d.s[k + SPOOL_REC_HDR] = '0';
	d.s[k] = 'E';                           /* an end marker with a length */
	ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), -1);
	d.s[k] = 'K';
	d.s[d.len - SPOOL_REC_HDR] = 'K';       /* two check records */
	ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), -1);
	dstr_free(&d);
	/* an id record must hold a queue id, once */
	build_checked("0000000000A1", "x\r\n", &d);
	k = rec_offset(&d, 1);
	ck_assert_int_eq(d.s[k], 'I');
	d.s[k + SPOOL_REC_HDR + 3] = 'U';       /* not in the alphabet */
	ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "bad queue id in record 'I'") != NULL, "%s", err);
	d.s[k + SPOOL_REC_HDR + 3] = '0';
	memcpy(d.s + rec_offset(&d, 2), "I\0\0\0\002" "42", 7);        /* T -> a short I */
	ck_assert_int_eq(parse_dstr(&d, &m, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "record 'I'") != NULL, "%s", err);
	dstr_free(&d);
}
END_TEST

/* spool_check_verify: a file that matches its check record, whatever
 * its recipients' marks; one with a changed byte anywhere does not. */
START_TEST(test_check_verify)
{
	static const char body[] = "Subject: x\r\n\r\nthe body of the message\r\n";
	struct spool_file f;
	struct dstr d;
	char path[512], id[QID_LEN + 1], err[256];
	size_t i, cstart;

	make_tmpdir();
	qid_init(3, 0);
	qid_next(id);
	snprintf(path, sizeof(path), "%s/%s", tmpdir, id);
	build_checked(id, body, &d);
	write_file(path, d.s, d.len);
	ck_assert_msg(spool_load(path, NULL, &f, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(spool_check_verify(&f), 1);
	cstart = f.m.content_offset;
	/* marks: the one in-place change */
	d.s[f.m.rcpts[0].type_offset] = SPOOL_REC_RCPT_DONE;
	d.s[f.m.rcpts[1].type_offset] = SPOOL_REC_RCPT_BOUNCED;
	spool_file_free(&f);
	write_file(path, d.s, d.len);
	ck_assert_msg(spool_load(path, NULL, &f, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(spool_check_verify(&f), 1);
	spool_file_free(&f);
	/* any other byte of the head or the content */
	for (i = 0; i < cstart + sizeof(body) - 1; i++) {
		d.s[i] ^= 0x01;         /* a file that no longer parses is not looked at */
		write_file(path, d.s, d.len);
		if (spool_load(path, NULL, &f, err, sizeof(err)) == 0) {
			ck_assert_msg(spool_check_verify(&f) == 0, "byte %zu changed, check matches", i);
			spool_file_free(&f);
		}
		d.s[i] ^= 0x01;
	}
	/* a file without the record: nothing to match */
	dstr_free(&d);
	build_default(&d);
	write_file(path, d.s, d.len);
	ck_assert_msg(spool_load(path, NULL, &f, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(spool_check_verify(&f), 0);
	spool_file_free(&f);
	dstr_free(&d);
	rm_rf(tmpdir);
}
END_TEST

/* spool_committed_in_tmp: a checked file whose id record names another id
 * than its name; not its own name, not without a check, not torn. */
START_TEST(test_committed_in_tmp)
{
	struct spool_file f;
	struct dstr d;
	char path[512], slot[QID_LEN + 1], id[QID_LEN + 1];

	make_tmpdir();
	qid_init(3, 0);
	qid_next(slot);
	qid_next(id);
	snprintf(path, sizeof(path), "%s/%s", tmpdir, slot);
	build_checked(id, "x\r\n", &d);
	write_file(path, d.s, d.len);
	ck_assert_int_eq(spool_committed_in_tmp(path, &f), 1);
	ck_assert_str_eq(f.m.qid, id);
	ck_assert_str_eq(f.m.id, slot);
	spool_file_free(&f);
	dstr_free(&d);
	build_checked(slot, "x\r\n", &d);         /* a slot's old content */
	write_file(path, d.s, d.len);
	ck_assert_int_eq(spool_committed_in_tmp(path, &f), 0);
	dstr_free(&d);
	build_checked(id, "x\r\n", &d);
	d.s[d.len - SPOOL_REC_HDR - 2] ^= 1;    /* the check's last digit */
	write_file(path, d.s, d.len);
	ck_assert_int_eq(spool_committed_in_tmp(path, &f), 0);
	write_file(path, d.s, d.len - 1);       /* torn */
	ck_assert_int_eq(spool_committed_in_tmp(path, &f), 0);
	dstr_free(&d);
	build_default(&d);                      /* no check record */
	write_file(path, d.s, d.len);
	ck_assert_int_eq(spool_committed_in_tmp(path, &f), 0);
	dstr_free(&d);
	rm_rf(tmpdir);
}
END_TEST

static Suite *
spool_suite(void)
{
	Suite *s = suite_create("spool");
	TCase *tc = tcase_create("format");

	tcase_add_loop_test(tc, test_roundtrip, 0, sizeof(env_cases) / sizeof(env_cases[0]));
	tcase_add_test(tc, test_exact_bytes);
	tcase_add_test(tc, test_hold_reason);
	tcase_add_test(tc, test_empty_content_and_large_length);
	tcase_add_test(tc, test_rcpt_states);
	tcase_add_test(tc, test_every_truncation);
	tcase_add_test(tc, test_bad_lengths);
	tcase_add_test(tc, test_trailing_byte);
	tcase_add_test(tc, test_unknown_type);
	tcase_add_test(tc, test_crc32c);
	tcase_add_test(tc, test_check_record);
	tcase_add_loop_test(tc, test_shapes, 0, sizeof(shape_cases) / sizeof(shape_cases[0]));
	suite_add_tcase(s, tc);

	tc = tcase_create("files");
	tcase_add_test(tc, test_read_file);
	tcase_add_test(tc, test_check_verify);
	tcase_add_test(tc, test_committed_in_tmp);
	tcase_add_test(tc, test_load_big_file);
	tcase_add_test(tc, test_take_read_errors);
	tcase_add_test(tc, test_prepare);
	tcase_add_test(tc, test_newest_qid);
	tcase_add_test(tc, test_quarantine);
	suite_add_tcase(s, tc);

	tc = tcase_create("status");
	tcase_add_loop_test(tc, test_status_parse, 0,
			    sizeof(status_cases) / sizeof(status_cases[0]));
	tcase_add_test(tc, test_status_round_trip);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(spool_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
