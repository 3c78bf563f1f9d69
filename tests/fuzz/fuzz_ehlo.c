/*
 * fuzz_ehlo.c - libFuzzer target for the EHLO/LHLO keyword reader
 * (router/reply.c: ehlo_parse). Whatever the reply, it must stay inside
 * its input and give the same answer twice; a capability is only ever
 * reported when its keyword is in the input; a SIZE limit only with SIZE;
 * and the lines up to any line end offer no capability the whole reply
 * does not. Built by tests/fuzz/run.sh.
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

/* kw (upper-case) occurs in the upper-cased input */
static bool
has(const char *upper, size_t size, const char *kw)
{
	return memmem(upper, size, kw, strlen(kw)) != NULL;
}

#define FLAGS(c) ((c).pipelining << 0 | (c).eightbitmime << 1 | \
		  (c).enhancedstatuscodes << 2 | (c).dsn << 3 | (c).size << 4 | \
		  (c).starttls << 5 | (c).smtputf8 << 6 | (c).chunking << 7)

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy, so that ASan sees any read past the end */
	char *buf = malloc(size ? size : 1), *upper = malloc(size ? size : 1);
	struct ehlo_caps c, again, part;
	const char *lf;
	size_t i;

	if (buf == NULL || upper == NULL) {
		free(buf);
		free(upper);
		return 0;
	}
	memcpy(buf, data, size);
	for (i = 0; i < size; i++)
		upper[i] = (char)(buf[i] >= 'a' && buf[i] <= 'z' ? buf[i] - 'a' + 'A' : buf[i]);

	ehlo_parse(buf, size, &c);
	memset(&again, 0xff, sizeof(again));
	ehlo_parse(buf, size, &again);
	CHECK(FLAGS(c) == FLAGS(again) && c.size_max == again.size_max);
	CHECK(c.size || c.size_max == 0);
	CHECK(!c.pipelining || has(upper, size, "PIPELINING"));
	CHECK(!c.eightbitmime || has(upper, size, "8BITMIME"));
	CHECK(!c.enhancedstatuscodes || has(upper, size, "ENHANCEDSTATUSCODES"));
	CHECK(!c.dsn || has(upper, size, "DSN"));
	CHECK(!c.size || has(upper, size, "SIZE"));
	CHECK(!c.starttls || has(upper, size, "STARTTLS"));
	CHECK(!c.smtputf8 || has(upper, size, "SMTPUTF8"));
	CHECK(!c.chunking || has(upper, size, "CHUNKING"));

	/* a prefix of whole lines offers nothing more */
	if ((lf = memchr(buf, '\n', size)) != NULL && (lf = memchr(lf + 1, '\n',
	    size - (size_t)(lf + 1 - buf))) != NULL) {
		ehlo_parse(buf, (size_t)(lf + 1 - buf), &part);
		CHECK((FLAGS(part) & ~FLAGS(c)) == 0);
	}
	free(buf);
	free(upper);
	return 0;
}
