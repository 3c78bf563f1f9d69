/*
 * check_data.c - unit tests for the DATA content parser (smtpd/data.c):
 * end of data, dot unstuffing, bare CR/LF (SMTP smuggling), Received:
 * counting, and that every way of splitting the input gives one answer;
 * and for its raw (BDAT) mode: content passed through as it is, the same
 * flags and counts, and the same message as DATA gives for the same text.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

#define S(x) x, sizeof(x) - 1

struct result {
	char *out;
	size_t outlen;
	size_t consumed;
	bool done;
	bool bare;
	bool in_headers;
	unsigned received;
	uint64_t bytes;
};

/*
 * Feeds in[0..len) in chunks: cuts[] are the offsets where a new chunk
 * starts (ascending, ncuts of them). Each call gets an output buffer of
 * exactly chunk + 2 bytes, so that writing past the documented bound is
 * caught by AddressSanitizer as well as by the length check.
 */
static void
feed(const char *in, size_t len, const size_t *cuts, size_t ncuts, struct result *r)
{
	struct data_parser p;
	size_t off = 0, ci = 0, next, chunk, n, outlen;
	char *buf;
	bool done = false;

	memset(r, 0, sizeof(*r));
	r->out = malloc(len + 3);
	ck_assert_ptr_nonnull(r->out);
	data_parser_init(&p);
	while (off < len && !done) {
		while (ci < ncuts && cuts[ci] <= off)
			ci++;
		next = ci < ncuts ? cuts[ci] : len;
		chunk = next - off;
		buf = malloc(chunk + 2);
		ck_assert_ptr_nonnull(buf);
		n = data_parse(&p, in + off, chunk, buf, &outlen, &done);
		ck_assert_uint_le(n, chunk);
		ck_assert_uint_le(outlen, chunk + 2);
		/* everything is consumed unless the end of data was found */
		if (!done)
			ck_assert_uint_eq(n, chunk);
		ck_assert_uint_le(r->outlen + outlen, off + n);
		memcpy(r->out + r->outlen, buf, outlen);
		r->outlen += outlen;
		free(buf);
		off += n;
	}
	r->consumed = off;
	r->done = done;
	r->bare = p.bare_cr_lf;
	r->in_headers = p.in_headers;
	r->received = p.received;
	r->bytes = p.bytes;
}

static void
expect_same(const struct result *a, const struct result *b, const char *what)
{
	ck_assert_msg(a->outlen == b->outlen && memcmp(a->out, b->out, a->outlen) == 0,
		      "%s: output differs", what);
	ck_assert_msg(a->consumed == b->consumed, "%s: consumed %zu vs %zu", what,
		      a->consumed, b->consumed);
	ck_assert_msg(a->done == b->done, "%s: done differs", what);
	ck_assert_msg(a->bare == b->bare, "%s: bare flag differs", what);
	ck_assert_msg(a->in_headers == b->in_headers, "%s: in_headers differs", what);
	ck_assert_msg(a->received == b->received, "%s: received %u vs %u", what,
		      a->received, b->received);
	ck_assert_msg(a->bytes == b->bytes, "%s: bytes differs", what);
}

/* memmem() is a GNU extension; the tests do not depend on it */
static const char *
find(const char *h, size_t hlen, const char *n, size_t nlen)
{
	size_t i;

	for (i = 0; i + nlen <= hlen; i++)
		if (memcmp(h + i, n, nlen) == 0)
			return h + i;
	return NULL;
}

/* ---- the table ---- */

#define ALL ((size_t)-1)

struct dcase {
	const char *name;
	const char *in;
	size_t inlen;
	const char *out;
	size_t outlen;
	bool done;
	size_t consumed;	/* ALL = the whole input */
	bool bare;
	unsigned received;
	bool in_headers;
};

static const struct dcase cases[] = {
	{ "empty message", S(".\r\n"), S(""), true, ALL, false, 0, true },
	{ "empty message, then a command", S(".\r\nQUIT\r\n"), S(""), true, 3, false, 0, true },
	{ "simple", S("Subject: x\r\n\r\nhello\r\n.\r\n"),
	  S("Subject: x\r\n\r\nhello\r\n"), true, ALL, false, 0, false },
	{ "pipelined command stays unconsumed", S("a\r\n.\r\nQUIT\r\n"),
	  S("a\r\n"), true, 6, false, 0, true },
	{ "dot-stuffed dot kept once", S("..x\r\n.\r\n"), S(".x\r\n"), true, ALL, false, 0, true },
	{ "leading dot dropped", S(".x\r\n..\r\n.\r\n"), S("x\r\n.\r\n"), true, ALL, false, 0, true },
	{ "three dots", S("a\r\n...\r\n.\r\n"), S("a\r\n..\r\n"), true, ALL, false, 0, true },
	{ "dot inside a line", S("a.b\r\n.\r\n"), S("a.b\r\n"), true, ALL, false, 0, true },
	{ "dot at line end", S("a.\r\n.\r\n"), S("a.\r\n"), true, ALL, false, 0, true },
	{ "no end yet", S("hello\r\n"), S("hello\r\n"), false, ALL, false, 0, true },
	{ "end cut after the dot", S("hello\r\n."), S("hello\r\n"), false, ALL, false, 0, true },
	{ "end cut after dot CR", S("hello\r\n.\r"), S("hello\r\n"), false, ALL, false, 0, true },
	{ "CR at the end is not yet bare", S("hello\r"), S("hello\r"), false, ALL, false, 0, true },
	{ "bare CR", S("a\rb\r\n.\r\n"), S("a\rb\r\n"), true, ALL, true, 0, true },
	{ "bare LF", S("a\nb\r\n.\r\n"), S("a\nb\r\n"), true, ALL, true, 0, true },
	{ "bare LF at line start", S("a\r\n\nb\r\n.\r\n"), S("a\r\n\nb\r\n"), true, ALL, true, 0, true },
	{ "bare CR before CRLF", S("a\r\r\n.\r\n"), S("a\r\r\n"), true, ALL, true, 0, true },
	{ "dot CR then text", S("a\r\n.\rb\r\n.\r\n"), S("a\r\n\rb\r\n"), true, ALL, true, 0, true },
	{ "dot CR CR LF", S("a\r\n.\r\r\n.\r\n"), S("a\r\n\r\r\n"), true, ALL, true, 0, true },
	{ "dot LF is not an end", S("a\r\n.\n.\r\n"), S("a\r\n\n.\r\n"), false, ALL, true, 0, true },
	{ "NUL bytes are content", S("a\0b\r\n.\r\n"), S("a\0b\r\n"), true, ALL, false, 0, true },
	{ "8-bit bytes are content", S("\xff\xfe\x80\r\n.\r\n"), S("\xff\xfe\x80\r\n"),
	  true, ALL, false, 0, true },
	{ "CRLF at start ends the headers", S("\r\nReceived: x\r\n.\r\n"),
	  S("\r\nReceived: x\r\n"), true, ALL, false, 0, false },
	{ "Received: counted", S("Received: a\r\nreceived: b\r\nRECEIVED:c\r\n"
				 "X-Received: d\r\n Received: e\r\nReceived :f\r\nReceived\r\n"
				 "\r\nReceived: body\r\n.\r\n"),
	  S("Received: a\r\nreceived: b\r\nRECEIVED:c\r\nX-Received: d\r\n Received: e\r\n"
	    "Received :f\r\nReceived\r\n\r\nReceived: body\r\n"), true, ALL, false, 3, false },
	{ "Received: after a dot", S(".Received: a\r\n\r\n.\r\n"), S("Received: a\r\n\r\n"),
	  true, ALL, false, 1, false },
	{ "Received: after a bare LF is not a header", S("X: y\nReceived: z\r\n\r\n.\r\n"),
	  S("X: y\nReceived: z\r\n\r\n"), true, ALL, true, 0, false },
	{ "Received: after a bare CR is not a header", S("X: y\rReceived: z\r\n\r\n.\r\n"),
	  S("X: y\rReceived: z\r\n\r\n"), true, ALL, true, 0, false },
	{ "Received: while headers go on", S("Received: x\r\nReceived: y\r\n.\r\n"),
	  S("Received: x\r\nReceived: y\r\n"), true, ALL, false, 2, true },
	{ "Received: unfinished", S("Received:"), S("Received:"), false, ALL, false, 1, true },
	{ "bare CR line does not end headers", S("\r\r\nReceived: x\r\n.\r\n"),
	  S("\r\r\nReceived: x\r\n"), true, ALL, true, 1, true },
};

#define NCASES (sizeof(cases) / sizeof(cases[0]))

static void
check_case(const struct dcase *c, const struct result *r, const char *how)
{
	size_t consumed = c->consumed == ALL ? c->inlen : c->consumed;

	ck_assert_msg(r->outlen == c->outlen && memcmp(r->out, c->out, c->outlen) == 0,
		      "%s (%s): output differs (%zu bytes, want %zu)", c->name, how,
		      r->outlen, c->outlen);
	ck_assert_msg(r->done == c->done, "%s (%s): done %d", c->name, how, r->done);
	ck_assert_msg(r->consumed == consumed, "%s (%s): consumed %zu, want %zu",
		      c->name, how, r->consumed, consumed);
	ck_assert_msg(r->bare == c->bare, "%s (%s): bare %d", c->name, how, r->bare);
	ck_assert_msg(r->received == c->received, "%s (%s): received %u, want %u",
		      c->name, how, r->received, c->received);
	ck_assert_msg(r->in_headers == c->in_headers, "%s (%s): in_headers %d",
		      c->name, how, r->in_headers);
	ck_assert_msg(r->bytes == r->outlen, "%s (%s): bytes %llu", c->name, how,
		      (unsigned long long)r->bytes);
}

START_TEST(test_table_one_shot)
{
	const struct dcase *c = &cases[_i];
	struct result r;

	feed(c->in, c->inlen, NULL, 0, &r);
	check_case(c, &r, "one shot");
	free(r.out);
}
END_TEST

START_TEST(test_table_byte_at_a_time)
{
	const struct dcase *c = &cases[_i];
	struct result r;
	size_t *cuts = malloc((c->inlen + 1) * sizeof(size_t));
	size_t i;

	for (i = 0; i < c->inlen; i++)
		cuts[i] = i;
	feed(c->in, c->inlen, cuts, c->inlen, &r);
	check_case(c, &r, "byte at a time");
	free(r.out);
	free(cuts);
}
END_TEST

START_TEST(test_table_every_split)
{
	const struct dcase *c = &cases[_i];
	struct result r;
	char how[64];
	size_t cut[2];

	for (cut[0] = 0; cut[0] <= c->inlen; cut[0]++) {
		snprintf(how, sizeof(how), "split at %zu", cut[0]);
		feed(c->in, c->inlen, cut, 1, &r);
		check_case(c, &r, how);
		free(r.out);
		/* and every three-way split for the short ones */
		if (c->inlen > 64)
			continue;
		for (cut[1] = cut[0]; cut[1] <= c->inlen; cut[1]++) {
			snprintf(how, sizeof(how), "split at %zu and %zu", cut[0], cut[1]);
			feed(c->in, c->inlen, cut, 2, &r);
			check_case(c, &r, how);
			free(r.out);
		}
	}
}
END_TEST

/* ---- smuggling: sequences some MTAs take for the end of data ---- */

#define PRE "Subject: s\r\n\r\nbody"
#define SMUGGLED "MAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\nDATA\r\n"

static const struct {
	const char *seq;	/* what comes between PRE and SMUGGLED */
	const char *out;	/* what that becomes in the content */
} smuggle[] = {
	{ "\n.\n", "\n.\n" },
	{ "\n.\r\n", "\n.\r\n" },
	{ "\r.\r", "\r.\r" },
	{ "\r.\r\n", "\r.\r\n" },
	{ "\r\n.\r", "\r\n\r" },
	{ "\r\n.\n", "\r\n\n" },
	{ "\r\n.\r\r\n", "\r\n\r\r\n" },
	{ "\r\n\n.\r\n", "\r\n\n.\r\n" },
	{ "\n\r\n.\n", "\n\r\n\n" },
	{ "\r\r\n.\n", "\r\r\n\n" },
	{ "\n.\r", "\n.\r" },
	{ "\r\n.\n\r\n", "\r\n\n\r\n" },
};

#define NSMUGGLE (sizeof(smuggle) / sizeof(smuggle[0]))

/* The input with the smuggling sequence is all content, never an end. */
START_TEST(test_smuggling_is_content)
{
	char in[256], want[256];
	struct dcase c;
	struct result r;
	size_t *cuts, i;

	snprintf(in, sizeof(in), "%s%s%s", PRE, smuggle[_i].seq, SMUGGLED);
	snprintf(want, sizeof(want), "%s%s%s", PRE, smuggle[_i].out, SMUGGLED);
	c = (struct dcase){ smuggle[_i].seq, in, strlen(in), want, strlen(want),
			    false, ALL, true, 0, false };
	feed(c.in, c.inlen, NULL, 0, &r);
	check_case(&c, &r, "one shot");
	free(r.out);

	cuts = malloc(c.inlen * sizeof(size_t));
	for (i = 0; i < c.inlen; i++)
		cuts[i] = i;
	feed(c.in, c.inlen, cuts, c.inlen, &r);
	check_case(&c, &r, "byte at a time");
	free(r.out);
	free(cuts);

	for (i = 0; i <= c.inlen; i++) {
		feed(c.in, c.inlen, &i, 1, &r);
		check_case(&c, &r, "split");
		free(r.out);
	}
}
END_TEST

/* ...and the real end that follows it is found, and nothing after it. */
START_TEST(test_smuggling_then_real_end)
{
	char in[256], want[256];
	struct dcase c;
	struct result r;
	size_t i;

	snprintf(in, sizeof(in), "%s%s%s.\r\nQUIT\r\n", PRE, smuggle[_i].seq, SMUGGLED);
	snprintf(want, sizeof(want), "%s%s%s", PRE, smuggle[_i].out, SMUGGLED);
	c = (struct dcase){ smuggle[_i].seq, in, strlen(in), want, strlen(want),
			    true, strlen(in) - 6, true, 0, false };
	for (i = 0; i <= c.inlen; i++) {
		feed(c.in, c.inlen, &i, 1, &r);
		check_case(&c, &r, "split");
		free(r.out);
	}
}
END_TEST

/* The late CR after a line-start dot is the one case where a call gives
 * more bytes than it was given: check it stays inside the bound. */
START_TEST(test_late_cr_bound)
{
	struct data_parser p;
	char out[3];
	size_t n, outlen;
	bool done;

	data_parser_init(&p);
	n = data_parse(&p, S(".\r"), out, &outlen, &done);
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(outlen, 0);
	ck_assert(!done);
	n = data_parse(&p, S("x"), out, &outlen, &done);
	ck_assert_uint_eq(n, 1);
	ck_assert_uint_eq(outlen, 2);
	ck_assert_mem_eq(out, "\rx", 2);
	ck_assert(p.bare_cr_lf);
	ck_assert(!done);
	/* a zero-length call changes nothing */
	n = data_parse(&p, "", 0, out, &outlen, &done);
	ck_assert_uint_eq(n, 0);
	ck_assert_uint_eq(outlen, 0);
	ck_assert(!done);
}
END_TEST

/* A long body goes through the fast path in big runs; the result must not
 * depend on where the chunks fall. */
START_TEST(test_large_body_chunked)
{
	size_t len = 0, cap = 1 << 20, i, outlen, n, off;
	char *in = malloc(cap), *out = malloc(cap + 2);
	struct data_parser p;
	bool done = false;
	unsigned seed = 12345;
	size_t total = 0;

	len += (size_t)snprintf(in, cap, "Received: a\r\nSubject: big\r\n\r\n");
	while (len < cap - 200) {
		/* never empty: a stuffed dot alone on its line would end the data */
		size_t linelen = 1 + (seed = seed * 1103515245 + 12345) % 150;

		if (seed % 7 == 0)
			in[len++] = '.';
		for (i = 0; i < linelen; i++)
			in[len++] = (char)('a' + (i % 26));
		in[len++] = '\r';
		in[len++] = '\n';
	}
	memcpy(in + len, ".\r\n", 3);
	len += 3;

	data_parser_init(&p);
	for (off = 0; off < len && !done; off += n) {
		size_t chunk = 1 + (seed = seed * 1103515245 + 12345) % 4096;

		if (chunk > len - off)
			chunk = len - off;
		n = data_parse(&p, in + off, chunk, out + total, &outlen, &done);
		total += outlen;
	}
	ck_assert(done);
	ck_assert_uint_eq(off, len);
	ck_assert(!p.bare_cr_lf);
	ck_assert_uint_eq(p.received, 1);
	ck_assert_uint_eq(p.bytes, total);
	/* no line of the output starts with a dot: every stuffing dot went */
	ck_assert_ptr_null(find(out, total, "\r\n.", 3));
	free(in);
	free(out);
}
END_TEST

/* Random bytes from a small alphabet, split randomly: the split never
 * matters, and the end is exactly the first CR LF "." CR LF. */
START_TEST(test_random_split_invariance)
{
	static const char alpha[] = ".\r\nR:aX";
	unsigned seed = 1;
	char in[96];
	size_t len, i, k, cuts[4], want;
	struct result a, b;
	const char *e;

	for (k = 0; k < 20000; k++) {
		len = (seed = seed * 1103515245 + 12345) % sizeof(in);
		for (i = 0; i < len; i++)
			in[i] = alpha[((seed = seed * 1103515245 + 12345) >> 16) % 7];
		for (i = 0; i < 4; i++)
			cuts[i] = len ? ((seed = seed * 1103515245 + 12345) >> 16) % len : 0;
		/* ascending order for feed() */
		for (i = 1; i < 4; i++)
			for (size_t j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
				size_t t = cuts[j];

				cuts[j] = cuts[j - 1];
				cuts[j - 1] = t;
			}
		feed(in, len, NULL, 0, &a);
		feed(in, len, cuts, 4, &b);
		expect_same(&a, &b, "random split");
		if (len >= 3 && memcmp(in, ".\r\n", 3) == 0)
			want = 3;
		else if ((e = find(in, len, "\r\n.\r\n", 5)) != NULL)
			want = (size_t)(e - in) + 5;
		else
			want = 0;
		ck_assert_msg(a.done == (want != 0), "done at case %zu", k);
		if (want)
			ck_assert_uint_eq(a.consumed, want);
		else
			ck_assert_uint_eq(a.consumed, len);
		free(a.out);
		free(b.out);
	}
}
END_TEST

/* ---- raw mode (BDAT, RFC 3030) ---- */

/*
 * Feeds in[] in raw mode, cut at cuts[] as feed() does, then ends it with
 * data_parse_end(). Raw mode must take every byte it is given and give
 * each back unchanged, and never see an end of data.
 */
static void
feed_raw(const char *in, size_t len, const size_t *cuts, size_t ncuts, struct result *r)
{
	struct data_parser p;
	size_t off = 0, ci = 0, next, chunk, n, outlen;
	char *buf, end[2];
	bool done;

	memset(r, 0, sizeof(*r));
	r->out = malloc(len + 3);
	ck_assert_ptr_nonnull(r->out);
	data_parser_init_raw(&p);
	while (off < len) {
		while (ci < ncuts && cuts[ci] <= off)
			ci++;
		next = ci < ncuts ? cuts[ci] : len;
		chunk = next - off;
		buf = malloc(chunk + 1);
		ck_assert_ptr_nonnull(buf);
		n = data_parse(&p, in + off, chunk, buf, &outlen, &done);
		ck_assert_uint_eq(n, chunk);
		ck_assert_uint_eq(outlen, chunk);
		ck_assert(!done);
		ck_assert(memcmp(buf, in + off, chunk) == 0);
		memcpy(r->out + r->outlen, buf, outlen);
		r->outlen += outlen;
		free(buf);
		off += n;
	}
	n = data_parse_end(&p, end);
	ck_assert_uint_le(n, 2);
	memcpy(r->out + r->outlen, end, n);
	r->outlen += n;
	/* ended, it stays ended */
	ck_assert_uint_eq(data_parse_end(&p, end), 0);
	r->consumed = off;
	r->done = false;
	r->bare = p.bare_cr_lf;
	r->in_headers = p.in_headers;
	r->received = p.received;
	r->bytes = p.bytes;
}

struct rcase {
	const char *name;
	const char *in;
	size_t inlen;
	const char *tail;	/* what data_parse_end adds */
	bool bare;
	unsigned received;
	bool in_headers;
};

static const struct rcase raw_cases[] = {
	{ "empty", S(""), "", false, 0, true },
	{ "simple", S("Subject: x\r\n\r\nhello\r\n"), "", false, 0, false },
	{ "no final CRLF", S("Subject: x\r\n\r\nhello"), "\r\n", false, 0, false },
	{ "dots are content", S(".\r\n..x\r\n.\r\n"), "", false, 0, true },
	{ "the DATA end is content", S("a\r\n.\r\nMAIL FROM:<x@y>\r\n"), "", false, 0, true },
	{ "lone dot at the end", S("a\r\n."), "\r\n", false, 0, true },
	{ "bare LF", S("a\nb\r\n"), "", true, 0, true },
	{ "bare CR", S("a\rb\r\n"), "", true, 0, true },
	{ "final CR is bare", S("a\r"), "\r\n", true, 0, true },
	{ "final CR after a line", S("a\r\nb\r"), "\r\n", true, 0, true },
	{ "final LF is bare", S("a\n"), "\r\n", true, 0, true },
	{ "smuggling sequence", S("x\r\n\n.\n\r\n"), "", true, 0, true },
	{ "Received: counted", S("Received: a\r\nreceived: b\r\nX-Received: c\r\n\r\n"
				 "Received: body\r\n"), "", false, 2, false },
	{ "Received: on the last line", S("Received: a"), "\r\n", false, 1, true },
	{ "Received: line, CRLF ended", S("Received: a\r\n"), "", false, 1, true },
	{ "a dot before Received: is content", S(".Received: a\r\n"), "", false, 0, true },
	{ "NUL and 8-bit", S("a\0\xff\r\n"), "", false, 0, true },
};

#define NRAW (sizeof(raw_cases) / sizeof(raw_cases[0]))

static void
check_raw(const struct rcase *c, const struct result *r, const char *how)
{
	size_t tl = strlen(c->tail);

	ck_assert_msg(r->outlen == c->inlen + tl && memcmp(r->out, c->in, c->inlen) == 0 &&
		      memcmp(r->out + c->inlen, c->tail, tl) == 0,
		      "%s (%s): output differs", c->name, how);
	ck_assert_msg(r->consumed == c->inlen, "%s (%s): consumed %zu", c->name, how,
		      r->consumed);
	ck_assert_msg(r->bare == c->bare, "%s (%s): bare %d", c->name, how, r->bare);
	ck_assert_msg(r->received == c->received, "%s (%s): received %u, want %u",
		      c->name, how, r->received, c->received);
	ck_assert_msg(r->in_headers == c->in_headers, "%s (%s): in_headers %d", c->name, how,
		      r->in_headers);
	ck_assert_msg(r->bytes == r->outlen, "%s (%s): bytes %llu", c->name, how,
		      (unsigned long long)r->bytes);
}

START_TEST(test_raw_table)
{
	const struct rcase *c = &raw_cases[_i];
	struct result r;
	char how[64];
	size_t cut[2];

	feed_raw(c->in, c->inlen, NULL, 0, &r);
	check_raw(c, &r, "one shot");
	free(r.out);
	for (cut[0] = 0; cut[0] <= c->inlen; cut[0]++) {
		for (cut[1] = cut[0]; cut[1] <= c->inlen; cut[1]++) {
			snprintf(how, sizeof(how), "split at %zu and %zu", cut[0], cut[1]);
			feed_raw(c->in, c->inlen, cut, 2, &r);
			check_raw(c, &r, how);
			free(r.out);
		}
	}
}
END_TEST

/*
 * What a DATA client sends for content c: a dot doubled at the start of
 * every line (lines end with CR LF only, as the parser sees them), a CR LF
 * added unless c is empty or ends with one, then "." CR LF.
 */
static size_t
as_data(const char *c, size_t len, char *out)
{
	size_t i, o = 0;

	for (i = 0; i < len; i++) {
		if (c[i] == '.' && (i == 0 || (i >= 2 && c[i - 2] == '\r' && c[i - 1] == '\n')))
			out[o++] = '.';
		out[o++] = c[i];
	}
	if (len > 0 && !(len >= 2 && c[len - 2] == '\r' && c[len - 1] == '\n')) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	memcpy(out + o, ".\r\n", 3);
	return o + 3;
}

/* The same text by BDAT (raw, any chunks) and by DATA (stuffed): the same
 * message, the same bare CR/LF verdict, the same Received: count. */
START_TEST(test_raw_same_as_data)
{
	static const char alpha[] = ".\r\nReceivd:X ";
	unsigned seed = 7;
	char in[80], stuffed[2 * 80 + 8];
	size_t len, slen, i, k, cuts[3];
	struct result raw, dot;

	for (k = 0; k < 20000; k++) {
		len = (seed = seed * 1103515245 + 12345) % sizeof(in);
		for (i = 0; i < len; i++)
			in[i] = alpha[((seed = seed * 1103515245 + 12345) >> 16) %
				      (sizeof(alpha) - 1)];
		if (k % 5 == 0 && len >= 9)
			memcpy(in, "Received:", 9);
		for (i = 0; i < 3; i++)
			cuts[i] = len ? ((seed = seed * 1103515245 + 12345) >> 16) % len : 0;
		if (cuts[0] > cuts[1]) { i = cuts[0]; cuts[0] = cuts[1]; cuts[1] = i; }
		if (cuts[1] > cuts[2]) { i = cuts[1]; cuts[1] = cuts[2]; cuts[2] = i; }
		if (cuts[0] > cuts[1]) { i = cuts[0]; cuts[0] = cuts[1]; cuts[1] = i; }
		slen = as_data(in, len, stuffed);
		feed_raw(in, len, cuts, 3, &raw);
		feed(stuffed, slen, NULL, 0, &dot);
		ck_assert_msg(dot.done && dot.consumed == slen, "case %zu: DATA did not end", k);
		ck_assert_msg(raw.outlen == dot.outlen &&
			      memcmp(raw.out, dot.out, raw.outlen) == 0,
			      "case %zu: BDAT and DATA store different content", k);
		ck_assert_msg(raw.bare == dot.bare, "case %zu: bare %d vs %d", k, raw.bare,
			      dot.bare);
		ck_assert_msg(raw.received == dot.received, "case %zu: received %u vs %u", k,
			      raw.received, dot.received);
		ck_assert_msg(raw.in_headers == dot.in_headers, "case %zu: in_headers", k);
		ck_assert_msg(raw.bytes == dot.bytes, "case %zu: bytes", k);
		free(raw.out);
		free(dot.out);
	}
}
END_TEST

/* data_parse_end in DATA mode adds nothing: the "." line ended the content. */
START_TEST(test_end_in_data_mode)
{
	struct data_parser p;
	char out[4], end[2];
	size_t outlen;
	bool done;

	data_parser_init(&p);
	ck_assert_uint_eq(data_parse(&p, S("abc"), out, &outlen, &done), 3);
	ck_assert_uint_eq(data_parse_end(&p, end), 0);
	ck_assert_uint_eq(p.bytes, 3);
	ck_assert(!p.bare_cr_lf);
}
END_TEST

static Suite *
data_suite(void)
{
	Suite *s = suite_create("data");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_table_one_shot, 0, NCASES);
	tcase_add_loop_test(tc, test_table_byte_at_a_time, 0, NCASES);
	tcase_add_loop_test(tc, test_table_every_split, 0, NCASES);
	tcase_add_loop_test(tc, test_smuggling_is_content, 0, NSMUGGLE);
	tcase_add_loop_test(tc, test_smuggling_then_real_end, 0, NSMUGGLE);
	tcase_add_test(tc, test_late_cr_bound);
	tcase_add_test(tc, test_large_body_chunked);
	tcase_add_test(tc, test_random_split_invariance);
	tcase_add_loop_test(tc, test_raw_table, 0, NRAW);
	tcase_add_test(tc, test_raw_same_as_data);
	tcase_add_test(tc, test_end_in_data_mode);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(data_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
