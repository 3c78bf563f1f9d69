/*
 * fuzz_address.c - libFuzzer target for the RFC 5321 path parser
 * (lib/address.c). Each input is parsed with every combination of flags,
 * and whatever is accepted must respect the length limits, contain only
 * printable ASCII (with ADDR_ALLOW_UTF8: well-formed UTF-8 without control
 * characters, flagged as such exactly when there is some), and read back
 * to itself once formatted. Built by tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

static void
check_printable(const char *s, bool utf8)
{
	CHECK(utf8_valid(s, strlen(s)));
	for (; *s; s++)
		CHECK(utf8 ? (unsigned char)*s >= 0x20 : (*s >= 0x20 && *s <= 0x7e));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy, so that ASan sees any read past the end */
	char *in = malloc(size ? size : 1);
	struct address base, a, b;
	const char *why;
	char out[ADDR_PATH_MAX + 8], again[ADDR_PATH_MAX + 8];
	int flags, r, base_r, r2;
	size_t n;

	if (in == NULL)
		return 0;
	memcpy(in, data, size);
	base_r = address_parse(in, size, 0, &base, &why);
	for (flags = 0; flags <= (ADDR_ALLOW_NULL | ADDR_ALLOW_POSTMASTER | ADDR_ALLOW_UTF8);
	     flags++) {
		why = NULL;
		r = address_parse(in, size, flags, &a, &why);
		if (r < 0) {
			CHECK(r == -1);
			CHECK(why != NULL && why[0] != '\0');
			/* the flags only ever widen what is accepted */
			CHECK(base_r < 0);
			continue;
		}
		CHECK(r > 0 && (size_t)r <= size);
		if (base_r >= 0) {
			CHECK(r == base_r);
			CHECK(strcmp(a.local, base.local) == 0);
			CHECK(strcmp(a.domain, base.domain) == 0);
		}
		CHECK(strlen(a.local) <= ADDR_LOCAL_MAX);
		CHECK(strlen(a.domain) <= ADDR_DOMAIN_MAX);
		check_printable(a.local, flags & ADDR_ALLOW_UTF8);
		check_printable(a.domain, flags & ADDR_ALLOW_UTF8);
		/* utf8 exactly when the path taken has 8-bit bytes */
		for (n = 0; n < (size_t)r && (unsigned char)in[n] < 0x80; n++)
			;
		CHECK(a.utf8 == (n < (size_t)r));
		CHECK(!a.utf8 || (flags & ADDR_ALLOW_UTF8));
		if (a.null) {
			CHECK(flags & ADDR_ALLOW_NULL);
			CHECK(a.local[0] == '\0' && a.domain[0] == '\0');
		} else {
			CHECK(a.local[0] != '\0');
			if (a.domain[0] == '\0')
				CHECK(flags & ADDR_ALLOW_POSTMASTER);
		}
		CHECK(a.literal == (a.domain[0] == '['));

		address_format(&a, out, sizeof(out));
		n = strlen(out);
		/* written back with its brackets it still fits the path limit */
		CHECK(n + 2 <= ADDR_PATH_MAX);

		/* what we write, we read back as the same address */
		snprintf(again, sizeof(again), "<%s>", out);
		r2 = address_parse(again, n + 2, flags, &b, &why);
		CHECK(r2 == (int)(n + 2));
		CHECK(b.null == a.null && b.literal == a.literal);
		CHECK(b.utf8 == (a.utf8 && (str_has_8bit(a.local) || str_has_8bit(a.domain))));
		address_format(&b, again, sizeof(again));
		CHECK(strcmp(again, out) == 0);
	}
	free(in);
	return 0;
}
