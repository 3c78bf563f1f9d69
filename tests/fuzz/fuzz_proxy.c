/*
 * fuzz_proxy.c - libFuzzer target for the PROXY protocol header parser
 * (smtpd/proxy.c). Bytes from a proxy, or from anyone who reached a
 * proxy=yes listener, must be parsed or refused, never read past their
 * length; a header found is never longer than the input or the limit and
 * names an IPv4 or IPv6 client unless it says it has none; and the answer
 * does not depend on how the bytes arrived: every prefix of a header asks
 * for more, and bytes after it change nothing. Built by tests/fuzz/run.sh.
 */
#include "config.h"

#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtpd/smtpd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_header h, h2;
	const char *why, *why2;
	unsigned char *copy;
	ssize_t rc, rc2;
	size_t k;

	/* an exact-size copy: ASan sees any read past the end */
	copy = malloc(size ? size : 1);
	memcpy(copy, data, size);
	rc = proxy_parse(copy, size, &h, &why);
	CHECK(rc >= -1 && rc <= (ssize_t)size && rc <= PROXY_HEADER_MAX);
	if (rc < 0)
		CHECK(why != NULL && why[0] != '\0');
	if (rc > 0) {
		CHECK(h.version == 1 || h.version == 2);
		CHECK(h.local || h.src.ss_family == AF_INET || h.src.ss_family == AF_INET6);
		CHECK(h.local || h.src.ss_family == h.dst.ss_family);
		if (h.version == 1)
			CHECK(rc <= 107 && copy[rc - 2] == '\r' && copy[rc - 1] == '\n');
		/* every prefix asks for more */
		for (k = 0; k < (size_t)rc; k += 1 + k / 8) {
			rc2 = proxy_parse(copy, k, &h2, &why2);
			CHECK(rc2 == 0);
		}
		/* what follows the header does not change it */
		rc2 = proxy_parse(copy, (size_t)rc, &h2, &why2);
		CHECK(rc2 == rc && h2.local == h.local && memcmp(&h2.src, &h.src, sizeof(h.src)) == 0);
	}
	if (rc == 0 && size > 0) {
		/* more is wanted: it can never be more than the limit */
		CHECK(size < PROXY_HEADER_MAX);
	}
	free(copy);
	return 0;
}
