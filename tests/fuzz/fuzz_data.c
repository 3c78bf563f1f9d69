/*
 * fuzz_data.c - libFuzzer target for the DATA content parser.
 *
 * Input: one byte n, then (n % 8) + 1 chunk-size bytes, then the content.
 * The content is parsed once in one call and once in chunks of those sizes
 * (cycled; a size byte 0 makes a zero-length call), and both results must
 * equal a slow reference written straight from the rules in smtpd.h. Each
 * call gets an output buffer of exactly len + 2 bytes, so a write past the
 * documented bound is an AddressSanitizer report.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { \
	if (!(c)) { \
		fprintf(stderr, "fuzz_data: check failed: %s (line %d)\n", #c, __LINE__); \
		abort(); \
	} \
} while (0)

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

static const char *
find(const char *h, size_t hlen, const char *n, size_t nlen)
{
	size_t i;

	for (i = 0; i + nlen <= hlen; i++)
		if (memcmp(h + i, n, nlen) == 0)
			return h + i;
	return NULL;
}

/* nsizes 0 means one call with everything */
static void
run(const char *in, size_t len, const uint8_t *sizes, size_t nsizes, struct result *r)
{
	struct data_parser p;
	size_t off = 0, k = 0, chunk, n, outlen;
	char *buf;
	bool done = false;

	memset(r, 0, sizeof(*r));
	r->out = malloc(len + 1);
	CHECK(r->out != NULL);
	data_parser_init(&p);
	while (!done && (off < len || k == 0)) {
		chunk = nsizes ? sizes[k % nsizes] : len - off;
		k++;
		if (nsizes && chunk == 0) {
			/* an empty call changes nothing, whatever state it finds */
			char none[2];

			n = data_parse(&p, in + off, 0, none, &outlen, &done);
			CHECK(n == 0 && outlen == 0 && !done);
			chunk = 1;
		}
		if (chunk > len - off)
			chunk = len - off;
		buf = malloc(chunk + 2);
		CHECK(buf != NULL);
		n = data_parse(&p, in + off, chunk, buf, &outlen, &done);
		CHECK(n <= chunk);
		CHECK(outlen <= chunk + 2);
		CHECK(done || n == chunk);
		/* output never runs ahead of the input consumed so far */
		CHECK(r->outlen + outlen <= off + n);
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

static bool
line_start(const char *in, size_t i)
{
	return i == 0 || (i >= 2 && in[i - 2] == '\r' && in[i - 1] == '\n');
}

/* The rules, applied with hindsight over the whole input. */
static void
reference(const char *in, size_t len, struct result *r)
{
	const char *e;
	size_t i, end, pos, q;
	static const char rcv[] = "received:";

	memset(r, 0, sizeof(*r));
	r->out = malloc(len + 1);
	CHECK(r->out != NULL);
	if (len >= 3 && memcmp(in, ".\r\n", 3) == 0) {
		r->done = true;
		r->consumed = 3;
		end = 0;
	} else if ((e = find(in, len, "\r\n.\r\n", 5)) != NULL) {
		r->done = true;
		r->consumed = (size_t)(e - in) + 5;
		end = (size_t)(e - in) + 2;
	} else {
		r->consumed = len;
		end = len;
	}
	for (i = 0; i < end; i++) {
		if (in[i] == '.' && line_start(in, i))
			continue;
		/* ".\r" at a line start with nothing after it yet: held back */
		if (in[i] == '\r' && i + 1 == len && i >= 1 && in[i - 1] == '.' &&
		    line_start(in, i - 1))
			continue;
		if (in[i] == '\r' && i + 1 < len && in[i + 1] != '\n')
			r->bare = true;
		if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
			r->bare = true;
		r->out[r->outlen++] = in[i];
	}
	r->bytes = r->outlen;

	/* header section: output lines up to the first empty one */
	r->in_headers = true;
	for (pos = 0; pos < r->outlen; pos = q + 2) {
		e = find(r->out + pos, r->outlen - pos, "\r\n", 2);
		q = e ? (size_t)(e - r->out) : r->outlen;
		if (e && q == pos) {
			r->in_headers = false;
			break;
		}
		if (q - pos >= 9) {
			for (i = 0; i < 9; i++) {
				char c = r->out[pos + i];

				if (c >= 'A' && c <= 'Z')
					c += 'a' - 'A';
				if (c != rcv[i])
					break;
			}
			if (i == 9)
				r->received++;
		}
		if (e == NULL)
			break;
	}
}

static void
same(const struct result *a, const struct result *b)
{
	CHECK(a->outlen == b->outlen);
	CHECK(memcmp(a->out, b->out, a->outlen) == 0);
	CHECK(a->consumed == b->consumed);
	CHECK(a->done == b->done);
	CHECK(a->bare == b->bare);
	CHECK(a->in_headers == b->in_headers);
	CHECK(a->received == b->received);
	CHECK(a->bytes == b->bytes);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct result one, chunked, ref;
	size_t nsizes;
	const char *in;
	size_t len;

	if (size < 1)
		return 0;
	nsizes = (size_t)(data[0] % 8) + 1;
	if (size < 1 + nsizes)
		return 0;
	in = (const char *)data + 1 + nsizes;
	len = size - 1 - nsizes;

	run(in, len, NULL, 0, &one);
	run(in, len, data + 1, nsizes, &chunked);
	reference(in, len, &ref);
	same(&one, &chunked);
	same(&one, &ref);
	/* done means the consumed input ends the data, and nothing else */
	if (one.done)
		CHECK((one.consumed == 3 && memcmp(in, ".\r\n", 3) == 0) ||
		      (one.consumed >= 5 && memcmp(in + one.consumed - 5, "\r\n.\r\n", 5) == 0));
	free(one.out);
	free(chunked.out);
	free(ref.out);
	return 0;
}
