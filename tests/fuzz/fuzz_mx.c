/*
 * fuzz_mx.c - libFuzzer target for the MX answer reader (router/mx.c).
 * Whatever the packet, dns_mx_parse() must stay inside it, write no more
 * than max entries, hand back hosts only with OK, in non-decreasing
 * preference order, each a non-empty lower-case host name; a shuffle may
 * change the hosts' order but never the preferences'; and a smaller max
 * keeps the same lowest preferences. Built by tests/fuzz/run.sh.
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

/* a deterministic stand-in for arc4random */
static unsigned
rnd_step(void *arg)
{
	unsigned *s = arg;

	*s = *s * 1103515245u + 12345u;
	return *s >> 8;
}

static void
check_answer(enum dns_mx_status st, const struct dns_mx *mx, size_t max, size_t n)
{
	size_t i, j, len;
	const char *h;

	CHECK(st == DNS_MX_OK || st == DNS_MX_NONE || st == DNS_MX_NULL ||
	      st == DNS_MX_NXDOMAIN || st == DNS_MX_TEMPFAIL);
	CHECK(n <= max);
	CHECK(st == DNS_MX_OK ? n >= 1 : n == 0);
	for (i = 0; i < n; i++) {
		if (i > 0)
			CHECK(mx[i - 1].pref <= mx[i].pref);
		h = mx[i].host;
		len = strnlen(h, sizeof(mx[i].host));
		CHECK(len > 0 && len < sizeof(mx[i].host));
		CHECK(h[0] != '.' && h[len - 1] != '.');
		for (j = 0; j < len; j++)
			CHECK((h[j] >= 'a' && h[j] <= 'z') || (h[j] >= '0' && h[j] <= '9') ||
			      h[j] == '-' || (h[j] == '.' && h[j + 1] != '.'));
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy, so that ASan sees any read past the end */
	unsigned char *pkt = malloc(size ? size : 1);
	struct dns_mx mx[DNS_MX_MAX + 1], shuf[DNS_MX_MAX], few[4 + 1];
	size_t n, ns, nf, i, max = size ? 1 + data[0] % 4 : 1;
	enum dns_mx_status st;
	unsigned seed = size ? data[size - 1] : 0;

	if (pkt == NULL)
		return 0;
	memcpy(pkt, data, size);
	memset(mx, 0x5a, sizeof(mx));
	st = dns_mx_parse(pkt, size, mx, DNS_MX_MAX, &n, NULL, NULL);
	check_answer(st, mx, DNS_MX_MAX, n);
	CHECK(mx[DNS_MX_MAX].pref == 0x5a5a && mx[DNS_MX_MAX].host[0] == 0x5a);

	/* shuffled: the same status and preferences, the same hosts per preference */
	CHECK(dns_mx_parse(pkt, size, shuf, DNS_MX_MAX, &ns, rnd_step, &seed) == st);
	check_answer(st, shuf, DNS_MX_MAX, ns);
	CHECK(ns == n);
	for (i = 0; i < n; i++) {
		size_t j;
		bool found = false;

		CHECK(shuf[i].pref == mx[i].pref);
		for (j = 0; j < n && !found; j++)
			found = mx[j].pref == shuf[i].pref && strcmp(mx[j].host, shuf[i].host) == 0;
		CHECK(found);
	}

	/* fewer kept: the lowest preferences, the same status */
	memset(few, 0x5a, sizeof(few));
	CHECK(dns_mx_parse(pkt, size, few, max, &nf, NULL, NULL) == st);
	check_answer(st, few, max, nf);
	CHECK(few[max].pref == 0x5a5a);
	CHECK(nf == (n < max ? n : max));
	for (i = 0; i < nf; i++)
		CHECK(few[i].pref == mx[i].pref);
	free(pkt);
	return 0;
}
