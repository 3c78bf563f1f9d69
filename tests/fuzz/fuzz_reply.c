/*
 * fuzz_reply.c - libFuzzer target for the client-side wire formats
 * (router/reply.c). The reply parser must stay inside its input, keep its
 * limits, and give the same answer for the reply alone; the EHLO keyword
 * reader must survive anything; the DATA encoder must never let a bare CR
 * or LF out, must end with the only CR LF "." CR LF, must not depend on
 * how its input is split, and must decode back to the input with its line
 * ends made CR LF. Built by tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "router/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

static void
check_reply(const char *in, size_t size)
{
	struct reply r, again;
	const char *why = NULL;
	ssize_t n = reply_parse(in, size, &r, &why);
	size_t i, start, len;

	CHECK(n >= -1 && n <= (ssize_t)size);
	if (n < 0) {
		CHECK(why != NULL && why[0] != '\0');
		return;
	}
	if (n == 0)
		return;
	CHECK(r.code >= 200 && r.code <= 599);
	CHECK(r.nlines >= 1 && r.nlines <= REPLY_LINES_MAX);
	CHECK(in[n - 1] == '\n');
	len = strlen(r.text);
	CHECK(len < sizeof(r.text));
	for (i = 0; i < len; i++)
		CHECK(r.text[i] >= 0x20 && r.text[i] <= 0x7e);
	if (r.status[0] != '\0') {
		CHECK(r.status[0] == '0' + r.code / 100);
		CHECK(strlen(r.status) >= 5 && strlen(r.status) <= 9);
	}
	/* every line within the limit and with the same code */
	for (start = 0, i = 0; i < (size_t)n; i++)
		if (in[i] == '\n') {
			CHECK(i + 1 - start <= REPLY_LINE_MAX);
			CHECK(memcmp(in + start, in, 3) == 0);
			start = i + 1;
		}
	/* the reply alone parses the same */
	CHECK(reply_parse(in, (size_t)n, &again, &why) == n);
	CHECK(again.code == r.code && strcmp(again.status, r.status) == 0);
	CHECK(strcmp(again.text, r.text) == 0 && again.nlines == r.nlines);
}

static size_t
encode(const unsigned char *in, size_t size, size_t cut, size_t limit, unsigned char *out)
{
	struct dotstuff d;
	size_t o = 0;

	dotstuff_init(&d, limit);
	o += dotstuff(&d, in, cut, out + o);
	o += dotstuff(&d, in + cut, size - cut, out + o);
	o += dotstuff_end(&d, out + o);
	return o;
}

/* CR LF, bare CR and bare LF each become CR LF; a last line gets one */
static size_t
normalise(const unsigned char *in, size_t size, unsigned char *out)
{
	size_t i, o = 0;

	for (i = 0; i < size; i++) {
		if (in[i] == '\r' || in[i] == '\n') {
			if (in[i] == '\r' && i + 1 < size && in[i + 1] == '\n')
				i++;
			out[o++] = '\r';
			out[o++] = '\n';
		} else {
			out[o++] = in[i];
		}
	}
	if (o > 0 && out[o - 1] != '\n') {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	return o;
}

/* What a line limit must make of enc, the encoding without one: each line,
 * its stuffed dot first, in pieces of the limit's length, the first of
 * limit bytes and each next one SP and limit - 1; the end of data as it is. */
static size_t
wrap_ref(const unsigned char *enc, size_t n, size_t limit, unsigned char *out)
{
	size_t i = 0, o = 0, end, piece;

	while (i < n - 3) {
		end = (size_t)((const unsigned char *)memchr(enc + i, '\n', n - i) - enc) - 1;
		if (enc[i] == '.')
			out[o++] = enc[i++];
		piece = limit;
		while (i < end) {
			size_t k = end - i < piece ? end - i : piece;

			memcpy(out + o, enc + i, k);
			o += k;
			i += k;
			if (i < end) {
				memcpy(out + o, "\r\n ", 3);
				o += 3;
				piece = limit - 1;
			}
		}
		memcpy(out + o, "\r\n", 2);
		o += 2;
		i = end + 2;
	}
	memcpy(out + o, ".\r\n", 3);
	return o + 3;
}

/* a line limit from the input (4 to 11), at two cuts: as the reference */
static void
check_line_limit(const unsigned char *in, size_t size, const unsigned char *enc, size_t n)
{
	size_t limit = size ? 4 + in[size - 1] % 8 : 4, cap = 4 * size + 16, na, nb, nr;
	size_t cut = size ? in[0] % (size + 1) : 0;
	unsigned char *a = malloc(cap), *b = malloc(cap), *r = malloc(cap);

	CHECK(a && b && r);
	na = encode(in, size, 0, limit, a);
	nb = encode(in, size, cut, limit, b);
	CHECK(na == nb && memcmp(a, b, na) == 0);
	CHECK(na <= 2 * size + 5);
	nr = wrap_ref(enc, n, limit, r);
	CHECK(na == nr && memcmp(a, r, na) == 0);
	free(a);
	free(b);
	free(r);
}

static void
check_dotstuff(const unsigned char *in, size_t size)
{
	unsigned char *a = malloc(2 * size + 8), *b = malloc(2 * size + 8);
	unsigned char *norm = malloc(2 * size + 8), *dec = malloc(2 * size + 8);
	size_t na, nb, nn, nd = 0, i, cut = size ? in[0] % (size + 1) : 0;
	bool line_start = true;

	CHECK(a && b && norm && dec);
	na = encode(in, size, 0, 0, a);
	nb = encode(in, size, cut, 0, b);
	CHECK(na == nb && memcmp(a, b, na) == 0);
	CHECK(na <= 2 * size + 5);
	CHECK(na >= 3 && memcmp(a + na - 3, ".\r\n", 3) == 0);
	CHECK(na == 3 || (na >= 5 && memcmp(a + na - 5, "\r\n", 2) == 0));
	for (i = 0; i < na; i++) {
		if (a[i] == '\r')
			CHECK(i + 1 < na && a[i + 1] == '\n');
		if (a[i] == '\n')
			CHECK(i > 0 && a[i - 1] == '\r');
	}
	/* decode: a line starting with "." loses it; the last line is "." */
	for (i = 0; i < na - 3; i++) {
		if (line_start && a[i] == '.') {
			CHECK(i + 1 < na - 3 && a[i + 1] == '.');
			i++;
		}
		dec[nd++] = a[i];
		line_start = a[i] == '\n';
	}
	CHECK(line_start);
	nn = normalise(in, size, norm);
	CHECK(nd == nn && memcmp(dec, norm, nn) == 0);
	check_line_limit(in, size, a, na);
	free(a);
	free(b);
	free(norm);
	free(dec);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy, so that ASan sees any read past the end */
	char *buf = malloc(size ? size : 1);
	struct ehlo_caps caps;

	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	check_reply(buf, size);
	ehlo_parse(buf, size, &caps);
	CHECK(caps.size || caps.size_max == 0);
	check_dotstuff((const unsigned char *)buf, size);
	free(buf);
	return 0;
}
