/*
 * fuzz_sasl.c - libFuzzer target for the AUTH decoders (smtpd/sasl.c):
 * strict base64 and the PLAIN message. Decoding never writes past its
 * bound, gives at most 3 bytes per 4 characters, accepts only the base64
 * alphabet, and what it accepts survives an encode/decode round trip; a
 * PLAIN message is split only into fields that are in the input, without
 * NULs, and an authorization identity is only ever the user itself.
 * Built by tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "smtpd/smtpd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

static void
check_plain(const unsigned char *msg, size_t len)
{
	char user[40], pass[40];
	enum sasl_plain_status st = sasl_plain_parse(msg, len, user, sizeof(user), pass, sizeof(pass));
	size_t ul, pl;

	if (st != SASL_PLAIN_OK)
		return;
	ul = strlen(user);
	pl = strlen(pass);
	CHECK(ul > 0 && pl > 0);
	CHECK(ul < sizeof(user) && pl < sizeof(pass));
	/* the message ends with NUL user NUL pass */
	CHECK(len >= ul + pl + 2);
	CHECK(memcmp(msg + len - pl, pass, pl) == 0);
	CHECK(msg[len - pl - 1] == '\0');
	CHECK(memcmp(msg + len - pl - 1 - ul, user, ul) == 0);
	CHECK(msg[len - pl - 2 - ul] == '\0');
	/* an authzid is empty or the user */
	CHECK(len == ul + pl + 2 ||
	      (len == 2 * ul + pl + 2 && strncasecmp((const char *)msg, user, ul) == 0));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned char out[4096 + 8], again[4096 + 8];
	char enc[8192];
	size_t n, m, i, bound;
	int rc;

	if (size > 4096)
		return 0;
	bound = size ? data[0] % 64 : 0;
	/* a tight bound first: nothing may be written past it */
	memset(out, 0xa5, sizeof(out));
	rc = sasl_b64_decode((const char *)data, size, out, bound, &n);
	if (rc == 0)
		CHECK(n <= bound);
	for (i = bound; i < sizeof(out) && i < bound + 8; i++)
		CHECK(out[i] == 0xa5);

	rc = sasl_b64_decode((const char *)data, size, out, 4096, &n);
	if (rc != 0) {
		CHECK(rc == -1);
		check_plain(data, size);
		return 0;
	}
	CHECK(size % 4 == 0);
	CHECK(n <= size / 4 * 3 && n + 2 >= size / 4 * 3);
	for (i = 0; i < size; i++)
		CHECK(data[i] != ' ' && data[i] != '\n' && data[i] != '\r' && data[i] != '\0');
	/* what decoded, once re-encoded, decodes to the same bytes */
	EVP_EncodeBlock((unsigned char *)enc, out, (int)n);
	CHECK(sasl_b64_decode(enc, strlen(enc), again, sizeof(again), &m) == 0);
	CHECK(m == n && memcmp(again, out, n) == 0);
	check_plain(out, n);
	return 0;
}
