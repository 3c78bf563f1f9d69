/*
 * check_proxy.c - unit tests for the PROXY protocol header parser
 * (smtpd/proxy.c): v1 lines and v2 blocks, table-driven, each valid one
 * also fed in every split to show that a prefix only ever asks for more.
 */
#include "config.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtpd/smtpd.h"

#define S(x) (const unsigned char *)(x), sizeof(x) - 1
#define SIG "\r\n\r\n\0\r\nQUIT\n"

/* A header as "v1 SRC:PORT" / "v2 LOCAL"..., for comparing. */
static void
render(const struct proxy_header *h, char *out, size_t len)
{
	char ip[INET6_ADDRSTRLEN];
	unsigned port;

	if (h->local) {
		snprintf(out, len, "v%d local", h->version);
		return;
	}
	if (h->src.ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)&h->src;

		inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
		port = ntohs(s->sin_port);
	} else {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&h->src;

		inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
		port = ntohs(s->sin6_port);
	}
	snprintf(out, len, "v%d %s:%u", h->version, ip, port);
}

static const struct {
	const unsigned char *in;
	size_t len;
	ssize_t rc;             /* what the whole input gives */
	const char *want;       /* render(), or the reason */
} cases[] = {
	/* v1 */
	{ S("PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\n"), 40, "v1 192.0.2.7:5555" },
	{ S("PROXY TCP6 2001:db8::7 ::1 65535 25\r\n"), 37, "v1 2001:db8::7:65535" },
	{ S("PROXY UNKNOWN\r\n"), 15, "v1 local" },
	{ S("PROXY UNKNOWN ffff::1 ::1 1 2\r\n"), 31, "v1 local" },
	{ S("PROXY TCP4 192.0.2.7 127.0.0.1 0 25\r\nEHLO x\r\n"), 37, "v1 192.0.2.7:0" },
	{ S("PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r"), 0, "" },
	{ S("PROXY TCP4 192.0"), 0, "" },
	{ S("PROX"), 0, "" },
	{ S("PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\n"), -1, "v1 header: a bare LF" },
	{ S("PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\rX"), -1, "v1 header: CR without LF" },
	{ S("PROXY TCP4 192.0.2.7 127.0.0.1 05555 25\r\n"), -1,
	  "v1 header: a port is not a number in 0..65535" },
	{ S("PROXY TCP4 192.0.2.7 127.0.0.1 65536 25\r\n"), -1,
	  "v1 header: a port is not a number in 0..65535" },
	{ S("PROXY TCP4 192.0.2.7 127.0.0.1 -1 25\r\n"), -1,
	  "v1 header: a port is not a number in 0..65535" },
	{ S("PROXY TCP4 192.000.2.7 127.0.0.1 1 25\r\n"), -1,
	  "v1 header: an address is not dotted IPv4" },
	{ S("PROXY TCP4 ::1 127.0.0.1 1 25\r\n"), -1, "v1 header: an address is not dotted IPv4" },
	{ S("PROXY TCP6 192.0.2.7 ::1 1 25\r\n"), -1, "v1 header: an address is not IPv6" },
	{ S("PROXY TCP4 192.0.2.7  127.0.0.1 1\r\n"), -1, "v1 header: an empty field" },
	{ S("PROXY TCP4 192.0.2.7 127.0.0.1 1\r\n"), -1,
	  "v1 header: not PROTO SRC DST SPORT DPORT" },
	{ S("PROXY TCP4 192.0.2.7 127.0.0.1 1 25 9\r\n"), -1,
	  "v1 header: not PROTO SRC DST SPORT DPORT" },
	{ S("PROXY TCP4 192.0.2.7 127.0.0.1 1 25 \r\n"), -1, "v1 header: a space before CR LF" },
	{ S("PROXY UDP4 192.0.2.7 127.0.0.1 1 25\r\n"), -1,
	  "v1 header: protocol is not TCP4, TCP6 or UNKNOWN" },
	{ S("PROXY \r\n"), -1, "v1 header: no protocol" },
	{ S("PROXY TCP4 192.0.2.7\t127.0.0.1 1 25\r\n"), -1,
	  "v1 header: a byte that is not printable ASCII" },
	{ S("proxy TCP4 192.0.2.7 127.0.0.1 1 25\r\n"), -1, "not a PROXY protocol header" },
	{ S("PROXY UNKNOWN 01234567890123456789012345678901234567890123456789"
	    "012345678901234567890123456789012345678901\r\n"), -1,
	  "v1 header: no CR LF within 107 bytes" },
	{ S("PROXY UNKNOWN 01234567890123456789012345678901234567890123456789"
	    "01234567890123456789012345678901234567890\r\n"), 107, "v1 local" },
	{ S("EHLO client\r\n"), -1, "not a PROXY protocol header" },
	{ S("\x16\x03\x01"), -1, "not a PROXY protocol header" },
	/* v2 */
	{ S(SIG "\x21\x11\x00\x0c" "\xc6\x33\x64\x09" "\x7f\x00\x00\x01" "\x12\x34\x00\x19"), 28,
	  "v2 198.51.100.9:4660" },
	{ S(SIG "\x21\x21\x00\x24" "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x07"
	    "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01" "\x00\x50\x00\x19"), 52, "v2 2001:db8::7:80" },
	{ S(SIG "\x20\x00\x00\x00"), 16, "v2 local" },                  /* LOCAL */
	{ S(SIG "\x20\x11\x00\x0c" "\xc6\x33\x64\x09" "\x7f\x00\x00\x01" "\x12\x34\x00\x19"), 28,
	  "v2 local" },                                                 /* LOCAL with addresses */
	{ S(SIG "\x21\x00\x00\x00"), 16, "v2 local" },                  /* UNSPEC */
	/* TLVs: a NOOP with 2 bytes, then one with none */
	{ S(SIG "\x21\x11\x00\x14" "\xc6\x33\x64\x09" "\x7f\x00\x00\x01" "\x12\x34\x00\x19"
	    "\x04\x00\x02" "ab" "\x04\x00\x00"), 36, "v2 198.51.100.9:4660" },
	{ S(SIG "\x21\x11\x00\x0e" "\xc6\x33\x64\x09" "\x7f\x00\x00\x01" "\x12\x34\x00\x19"
	    "\x04\x00"), -1, "v2 header: a truncated TLV" },
	{ S(SIG "\x21\x11\x00\x10" "\xc6\x33\x64\x09" "\x7f\x00\x00\x01" "\x12\x34\x00\x19"
	    "\x04\x00\x05" "a"), -1, "v2 header: a TLV longer than the header" },
	{ S(SIG "\x21\x11\x00\x0c" "\xc6\x33"), 0, "" },
	{ S(SIG "\x21\x11"), 0, "" },
	{ S("\r\n\r\n\0\r\n"), 0, "" },
	{ S(SIG "\x11\x11\x00\x0c"), -1, "v2 header: version is not 2" },
	{ S(SIG "\x22\x11\x00\x0c"), -1, "v2 header: command is not LOCAL or PROXY" },
	{ S(SIG "\x21\x12\x00\x0c"), -1, "v2 header: not TCP over IPv4 or IPv6" },   /* UDP */
	{ S(SIG "\x21\x31\x00\xd8"), -1, "v2 header: not TCP over IPv4 or IPv6" },   /* UNIX */
	{ S(SIG "\x21\x11\x00\x08" "\xc6\x33\x64\x09" "\x7f\x00\x00\x01"), -1,
	  "v2 header: too short for its addresses" },
	{ S(SIG "\x21\x11\xff\xff"), -1, "v2 header: longer than the limit" },
	{ S("\r\n\r\nX"), -1, "not a PROXY protocol header" },
};

START_TEST(test_table)
{
	struct proxy_header h;
	const char *why = NULL;
	char got[128];
	ssize_t rc;

	rc = proxy_parse(cases[_i].in, cases[_i].len, &h, &why);
	ck_assert_msg(rc == cases[_i].rc, "case %d: rc %zd, want %zd (%s)", _i, rc, cases[_i].rc, why);
	if (rc > 0) {
		render(&h, got, sizeof(got));
		ck_assert_str_eq(got, cases[_i].want);
	} else if (rc < 0) {
		ck_assert_str_eq(why, cases[_i].want);
	}
}
END_TEST

/* Every prefix of a header that parses asks for more, never fails. */
START_TEST(test_prefixes)
{
	struct proxy_header h;
	const char *why;
	size_t n;
	ssize_t rc;

	if (cases[_i].rc <= 0)
		return;
	for (n = 0; n < (size_t)cases[_i].rc; n++) {
		rc = proxy_parse(cases[_i].in, n, &h, &why);
		ck_assert_msg(rc == 0, "case %d: prefix of %zu bytes gives %zd (%s)", _i, n, rc, why);
	}
}
END_TEST

static Suite *
proxy_suite(void)
{
	Suite *s = suite_create("proxy");
	TCase *tc = tcase_create("parse");
	size_t n = sizeof(cases) / sizeof(cases[0]);

	tcase_add_loop_test(tc, test_table, 0, (int)n);
	tcase_add_loop_test(tc, test_prefixes, 0, (int)n);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(proxy_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
