/*
 * fuzz_bdat.c - libFuzzer target for BDAT framing (RFC 3030): command lines
 * through the command parser (smtpd/command.c), chunk octets through the
 * content parser in raw mode (smtpd/data.c), framed the way the session
 * frames them: a line up to LF, then exactly the octets the BDAT line
 * announced, whatever they hold.
 *
 * Input: byte 0 (bits 0-2: how many segment sizes follow, minus one; bit 3:
 * the mode), the segment sizes, then the payload. The framed stream is fed
 * once whole and once cut into segments of those sizes (cycled; a size 0 is
 * an empty read), and both runs must give the same transcript, the same
 * message octets and the same flags.
 *  - mode 0: the payload is the stream itself (commands, chunks, junk);
 *  - mode 1: the payload is one byte n, n % 8 + 1 chunk sizes, then a
 *    message text, sent as BDAT chunks of those sizes (cycled), the last
 *    with LAST, then QUIT. The framer must take every chunk, store the text
 *    exactly (plus the CR LF that ends a text lacking one), and agree with
 *    the DATA parser fed the same text dot-stuffed: the same content, the
 *    same bare CR / LF verdict, the same Received: count.
 */
#include "config.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { \
	if (!(c)) { \
		fprintf(stderr, "fuzz_bdat: invariant failed: %s (line %d)\n", #c, __LINE__); \
		abort(); \
	} \
} while (0)

#define LINE_MAX_ 512

struct buf {
	char *s;
	size_t len, cap;
};

static void
buf_add(struct buf *b, const void *p, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		b->cap = (b->len + n + 1) * 2;
		b->s = realloc(b->s, b->cap);
		CHECK(b->s != NULL);
	}
	memcpy(b->s + b->len, p, n);
	b->len += n;
}

static void
buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
buf_printf(struct buf *b, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	CHECK(n >= 0 && (size_t)n < sizeof(tmp));
	buf_add(b, tmp, (size_t)n);
}

/* What the session does with its input, minus the I/O and the replies. */
struct framer {
	struct buf pending;     /* received, not yet taken */
	struct data_parser dp;
	bool in_msg;            /* chunks of a message under way */
	bool in_chunk;
	uint64_t left;
	bool last;
	bool closed;            /* a malformed BDAT: nothing more is taken */
	bool long_line;         /* dropping the rest of an over-long line */
	unsigned messages;
	struct buf content;     /* every message's octets, one after the other */
	struct buf log;         /* the transcript */
};

/* Takes chunk octets in raw mode: all of them, unchanged, never an end. */
static void
take_chunk(struct framer *f, const char *p, size_t n)
{
	char *out = malloc(n + 1);
	size_t outlen, used;
	bool done = true;

	CHECK(out != NULL);
	used = data_parse(&f->dp, p, n, out, &outlen, &done);
	CHECK(used == n);
	CHECK(outlen == n);
	CHECK(!done);
	CHECK(memcmp(out, p, n) == 0);
	buf_add(&f->content, out, outlen);
	free(out);
}

static void
chunk_done(struct framer *f)
{
	char end[2];
	size_t n;

	f->in_chunk = false;
	if (!f->last) {
		buf_printf(&f->log, "chunk ok\n");
		return;
	}
	n = data_parse_end(&f->dp, end);
	CHECK(n == 0 || (n == 2 && end[0] == '\r' && end[1] == '\n'));
	buf_add(&f->content, end, n);
	/* ended: the content ends with CR LF, or there is none */
	CHECK(f->dp.bytes == 0 || f->dp.state == DS_LINE_START);
	buf_printf(&f->log, "message %llu bare=%d received=%u\n",
		   (unsigned long long)f->dp.bytes, f->dp.bare_cr_lf, f->dp.received);
	f->in_msg = false;
	f->messages++;
}

static void
command(struct framer *f, const char *line, size_t len)
{
	struct smtp_cmd cmd;
	const char *why = NULL;
	enum cmd_status st;

	st = command_parse(line, len, &cmd, &why);
	if (st == CMD_ERR_BDAT) {
		CHECK(len >= 4 && strncasecmp(line, "BDAT", 4) == 0);
		CHECK(why != NULL && why[0] != '\0');
		buf_printf(&f->log, "malformed BDAT: close\n");
		f->closed = true;
		return;
	}
	if (st != CMD_OK || cmd.verb != VERB_BDAT) {
		/* a BDAT line either parses or closes the session */
		CHECK(!(len >= 4 && strncasecmp(line, "BDAT", 4) == 0));
		buf_printf(&f->log, "cmd %s %d\n", verb_name(cmd.verb), (int)st);
		return;
	}
	CHECK(cmd.chunk_size <= (uint64_t)INT64_MAX);
	buf_printf(&f->log, "BDAT %llu%s\n", (unsigned long long)cmd.chunk_size,
		   cmd.chunk_last ? " LAST" : "");
	if (!f->in_msg) {
		data_parser_init_raw(&f->dp);
		f->in_msg = true;
	}
	f->in_chunk = true;
	f->left = cmd.chunk_size;
	f->last = cmd.chunk_last;
}

/* Everything that can be taken from what has arrived so far. */
static void
run_pending(struct framer *f)
{
	size_t off = 0, n;
	const char *lf;

	while (!f->closed) {
		if (f->in_chunk) {
			n = f->pending.len - off;
			if (n > f->left)
				n = (size_t)f->left;
			take_chunk(f, f->pending.s + off, n);
			off += n;
			f->left -= n;
			if (f->left > 0)
				break;
			chunk_done(f);
			continue;
		}
		lf = memchr(f->pending.s + off, '\n', f->pending.len - off);
		if (lf == NULL) {
			/* as the session: no end in sight, drop it, and the rest when it comes */
			if (f->pending.len - off >= LINE_MAX_) {
				if (!f->long_line)
					buf_printf(&f->log, "line too long\n");
				f->long_line = true;
				off = f->pending.len;
			}
			break;
		}
		n = (size_t)(lf - (f->pending.s + off));
		if (f->long_line || n + 1 > LINE_MAX_) {
			if (!f->long_line)
				buf_printf(&f->log, "line too long\n");
			f->long_line = false;
		} else if (n == 0 || f->pending.s[off + n - 1] != '\r')
			buf_printf(&f->log, "bare LF line\n");
		else
			command(f, f->pending.s + off, n - 1);
		off += n + 1;
	}
	memmove(f->pending.s, f->pending.s + off, f->pending.len - off);
	f->pending.len -= off;
}

/* nsizes 0: the whole stream in one read */
static void
frame(const char *in, size_t len, const uint8_t *sizes, size_t nsizes, struct framer *f)
{
	size_t off = 0, k = 0, n;

	memset(f, 0, sizeof(*f));
	buf_add(&f->pending, "", 0);
	buf_add(&f->content, "", 0);
	buf_add(&f->log, "", 0);
	while (off < len) {
		n = nsizes ? sizes[k++ % nsizes] : len;
		if (n > len - off)
			n = len - off;
		buf_add(&f->pending, in + off, n);
		off += n;
		run_pending(f);
	}
	if (f->in_chunk)
		buf_printf(&f->log, "eof in chunk, %llu left\n", (unsigned long long)f->left);
}

static void
same(const struct framer *a, const struct framer *b)
{
	CHECK(a->log.len == b->log.len && memcmp(a->log.s, b->log.s, a->log.len) == 0);
	CHECK(a->content.len == b->content.len &&
	      memcmp(a->content.s, b->content.s, a->content.len) == 0);
	CHECK(a->messages == b->messages);
	CHECK(a->closed == b->closed);
	CHECK(a->in_chunk == b->in_chunk && a->left == b->left);
	CHECK(a->long_line == b->long_line);
	/* (the part of an over-long line still held depends on the reads; all of
	 * it goes, up to the next LF) */
	if (!a->long_line)
		CHECK(a->pending.len == b->pending.len &&
		      memcmp(a->pending.s, b->pending.s, a->pending.len) == 0);
}

static void
framer_free(struct framer *f)
{
	free(f->pending.s);
	free(f->content.s);
	free(f->log.s);
}

/* What a DATA client sends for text t (see check_data.c): dots doubled at
 * line starts, a CR LF added if t lacks one at its end, then "." CR LF. */
static void
as_data(const char *t, size_t len, struct buf *out)
{
	size_t i;

	for (i = 0; i < len; i++) {
		if (t[i] == '.' && (i == 0 || (i >= 2 && t[i - 2] == '\r' && t[i - 1] == '\n')))
			buf_add(out, ".", 1);
		buf_add(out, t + i, 1);
	}
	if (len > 0 && !(len >= 2 && t[len - 2] == '\r' && t[len - 1] == '\n'))
		buf_add(out, "\r\n", 2);
	buf_add(out, ".\r\n", 3);
}

/* Mode 1: text sent as chunks of the given sizes, then the checks. */
static void
structured(const uint8_t *p, size_t plen, const uint8_t *segs, size_t nsegs)
{
	struct buf stream = { 0 }, dot = { 0 };
	struct framer one, split;
	struct data_parser dp;
	const char *text;
	size_t nsizes, tlen, off = 0, k = 0, n, used, outlen, sum = 0, i;
	char *out;
	bool done;

	if (plen < 1)
		return;
	nsizes = (size_t)(p[0] % 8) + 1;
	if (plen < 1 + nsizes)
		return;
	text = (const char *)p + 1 + nsizes;
	tlen = plen - 1 - nsizes;
	for (i = 0; i < nsizes; i++)
		sum += p[1 + i];
	for (;;) {
		n = sum ? p[1 + k++ % nsizes] : tlen;
		if (n >= tlen - off) {
			buf_printf(&stream, "BDAT %zu LAST\r\n", tlen - off);
			buf_add(&stream, text + off, tlen - off);
			break;
		}
		buf_printf(&stream, "bdat %zu\r\n", n);
		buf_add(&stream, text + off, n);
		off += n;
	}
	buf_add(&stream, "QUIT\r\n", 6);

	frame(stream.s, stream.len, NULL, 0, &one);
	frame(stream.s, stream.len, segs, nsegs, &split);
	same(&one, &split);
	CHECK(!one.closed && !one.in_chunk && !one.in_msg);
	CHECK(one.messages == 1);
	CHECK(one.pending.len == 0);
	/* the transcript ends with the message, then the QUIT */
	CHECK(one.log.len > 12 && memcmp(one.log.s + one.log.len - 12, "\ncmd QUIT 0\n", 12) == 0);
	/* the text, exactly, plus the CR LF that ends it if it had none */
	CHECK(one.content.len >= tlen && memcmp(one.content.s, text, tlen) == 0);
	CHECK(one.content.len - tlen == 0 || one.content.len - tlen == 2);

	/* the same text by DATA: the same message */
	as_data(text, tlen, &dot);
	out = malloc(dot.len + 2);
	CHECK(out != NULL);
	data_parser_init(&dp);
	used = data_parse(&dp, dot.s, dot.len, out, &outlen, &done);
	CHECK(done && used == dot.len);
	CHECK(outlen == one.content.len && memcmp(out, one.content.s, outlen) == 0);
	CHECK(dp.bare_cr_lf == one.dp.bare_cr_lf);
	CHECK(dp.received == one.dp.received);
	CHECK(dp.in_headers == one.dp.in_headers);
	CHECK(dp.bytes == one.dp.bytes);
	free(out);
	free(stream.s);
	free(dot.s);
	framer_free(&one);
	framer_free(&split);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct framer one, split;
	size_t nsegs;
	bool zero = true;
	size_t i;

	if (size < 1)
		return 0;
	nsegs = (size_t)(data[0] % 8) + 1;
	if (size < 1 + nsegs)
		return 0;
	for (i = 0; i < nsegs; i++)
		zero = zero && data[1 + i] == 0;
	if (zero)
		return 0;       /* only empty reads: nothing would ever arrive */
	if (data[0] & 8) {
		structured(data + 1 + nsegs, size - 1 - nsegs, data + 1, nsegs);
		return 0;
	}
	frame((const char *)data + 1 + nsegs, size - 1 - nsegs, NULL, 0, &one);
	frame((const char *)data + 1 + nsegs, size - 1 - nsegs, data + 1, nsegs, &split);
	same(&one, &split);
	framer_free(&one);
	framer_free(&split);
	return 0;
}
