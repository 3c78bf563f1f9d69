/*
 * fuzz_canon.c - libFuzzer target for address canonicalisation and
 * endpoint parsing (router/canon.c): whatever reaches the router from an
 * alias value, a RCPT or node_map must come out within the limits the map
 * keys and delivery code rely on, or be refused with a reason.
 *
 * Input: first byte selects the delimiter set, the rest is the text.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lib/lib.h"
#include "router/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const delimsets[] = { NULL, "", "+", "+-", "@", "\"", "+.=" };

static void
check_canon(const char *s, const char *delims)
{
	struct canon c;
	const char *why = NULL;
	size_t i, al, kl, bl;

	if (router_canon(s, delims, "example.test", &c, &why) < 0) {
		if (why == NULL || why[0] == '\0')
			__builtin_trap();
		return;
	}
	al = strnlen(c.address, sizeof(c.address));
	kl = strnlen(c.key, sizeof(c.key));
	bl = strnlen(c.base, sizeof(c.base));
	if (al > ADDR_PATH_MAX || kl != al || bl >= al || c.domain_off > al)
		__builtin_trap();
	/* UTF-8 passes through, well formed and without controls */
	if (!utf8_valid(c.address, al) || !utf8_valid(c.key, kl))
		__builtin_trap();
	/* the key is the address lower-cased; the domain is lower-case already */
	for (i = 0; i < al; i++) {
		char lc = (c.address[i] >= 'A' && c.address[i] <= 'Z') ?
			  (char)(c.address[i] - 'A' + 'a') : c.address[i];

		if (c.key[i] != lc)
			__builtin_trap();
		if (i >= c.domain_off && c.address[i] != c.key[i])
			__builtin_trap();
	}
	/* the base is a prefix of the local part plus the same domain */
	if (bl > 0) {
		size_t dl = kl - c.domain_off + 1;   /* "@domain" */

		if (bl < dl + 1 || memcmp(c.base + bl - dl, c.key + c.domain_off - 1, dl) != 0 ||
		    memcmp(c.base, c.key, bl - dl) != 0)
			__builtin_trap();
	}
	if (c.domain_key[0] != '\0' && strcmp(c.domain_key + 1, c.key + c.domain_off) != 0)
		__builtin_trap();
}

static void
check_endpoints(const char *s)
{
	struct endpoint eps[ROUTER_ENDPOINTS_MAX];
	char buf[ENDPOINT_PATH_MAX + ADDR_DOMAIN_MAX + 32];
	const char *why = NULL;
	struct endpoint again;
	int n, i;

	n = endpoint_parse_list(s, eps, ROUTER_ENDPOINTS_MAX, &why);
	if (n < 0) {
		if (why == NULL)
			__builtin_trap();
		return;
	}
	if (n == 0 || n > ROUTER_ENDPOINTS_MAX)
		__builtin_trap();
	for (i = 0; i < n; i++) {
		/* formatting and parsing again gives the same endpoint */
		endpoint_format(&eps[i], buf, sizeof(buf));
		if (endpoint_parse(buf, strlen(buf), &again, &why) < 0 ||
		    again.kind != eps[i].kind || again.port != eps[i].port ||
		    again.literal != eps[i].literal || again.proto != eps[i].proto ||
		    again.mx != eps[i].mx || strcmp(again.host, eps[i].host) != 0 ||
		    strcmp(again.path, eps[i].path) != 0)
			__builtin_trap();
		/* only an smtp endpoint leaves its port to smtp_port */
		if (eps[i].kind == EP_INET && ((eps[i].port == 0 && eps[i].proto != EP_SMTP) ||
					       eps[i].host[0] == '\0'))
			__builtin_trap();
		if (eps[i].mx && (eps[i].proto != EP_SMTP || eps[i].literal))
			__builtin_trap();
		if (eps[i].kind == EP_UNIX && eps[i].path[0] != '/')
			__builtin_trap();
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char s[1024];

	if (size < 1 || size > sizeof(s))
		return 0;
	memcpy(s, data + 1, size - 1);
	s[size - 1] = '\0';
	check_canon(s, delimsets[data[0] % (sizeof(delimsets) / sizeof(delimsets[0]))]);
	check_endpoints(s);
	return 0;
}
