/*
 * check_self.c - unit tests for the mail loop check (router/self.c): which
 * addresses and ports are our own listeners. The integration tests can
 * only listen on loopback addresses; the wildcard listeners (0.0.0.0, ::),
 * which stand for every address of the host, are checked here, against
 * this host's interface addresses as getifaddrs() gives them.
 */
#include "config.h"

#include <check.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "lib/lib.h"
#include "router/router.h"

static struct sockaddr_storage
addr(const char *host, unsigned short port)
{
	struct sockaddr_storage ss;

	ck_assert_int_eq(dns_addr_numeric(host, port, &ss), 0);
	return ss;
}

static bool
ours(struct self_addrs *sa, const char *host, unsigned short port)
{
	struct sockaddr_storage ss = addr(host, port);

	return self_addrs_has(sa, &ss);
}

static void
init(struct self_addrs *sa, const char *host, const char *port)
{
	struct listen_spec ls;

	memset(&ls, 0, sizeof(ls));
	ls.host = (char *)host;
	ls.port = (char *)port;
	ls.role = ROLE_MX;
	self_addrs_init(sa, &ls, 1);
}

/* host is one of this host's interface addresses */
static bool
host_has(const char *host)
{
	struct ifaddrs *ifa, *i;
	struct sockaddr_storage want = addr(host, 0);
	bool found = false;

	ck_assert_int_eq(getifaddrs(&ifa), 0);
	for (i = ifa; i != NULL && !found; i = i->ifa_next)
		if (i->ifa_addr != NULL && (i->ifa_addr->sa_family == AF_INET ||
					    i->ifa_addr->sa_family == AF_INET6))
			found = dns_addr_cmp(i->ifa_addr, &want) == 0;
	freeifaddrs(ifa);
	return found;
}

/* An address of the documentation ranges that this host does not have (a
 * test machine may well use one of them) */
static const char *
foreign(int family)
{
	static const char *const v4[] = { "198.51.100.77", "203.0.113.77", "192.0.2.77" };
	static const char *const v6[] = { "2001:db8::77", "2001:db8:1::77" };
	const char *const *v = family == AF_INET ? v4 : v6;
	size_t i, n = family == AF_INET ? 3 : 2;

	for (i = 0; i < n; i++)
		if (!host_has(v[i]))
			return v[i];
	ck_abort_msg("this host has every documentation address tried");
	return NULL;
}

/* A non-loopback address of this host, or "" when it has none */
static void
interface_addr(int family, char *buf, size_t len)
{
	struct ifaddrs *ifa, *i;

	buf[0] = '\0';
	ck_assert_int_eq(getifaddrs(&ifa), 0);
	for (i = ifa; i != NULL; i = i->ifa_next) {
		struct sockaddr_storage ss;
		char ip[64];

		if (i->ifa_addr == NULL || i->ifa_addr->sa_family != family)
			continue;
		memcpy(&ss, i->ifa_addr, dns_addr_len((const struct sockaddr_storage *)i->ifa_addr));
		dns_addr_ip(&ss, ip, sizeof(ip));
		if (strncmp(ip, "127.", 4) == 0 || strcmp(ip, "::1") == 0 ||
		    strncmp(ip, "fe80:", 5) == 0)
			continue;
		snprintf(buf, len, "%s", ip);
		break;
	}
	freeifaddrs(ifa);
}

/* A wildcard listener at 2525 (sa) takes this host's address of family,
 * when it has one, at its port only */
static void
interface_ours(struct self_addrs *sa, int family)
{
	char ip[64];

	interface_addr(family, ip, sizeof(ip));
	if (ip[0] == '\0')
		return;
	ck_assert_msg(ours(sa, ip, 2525), "%s is this host's", ip);
	ck_assert(!ours(sa, ip, 2526));
}

START_TEST(test_exact_listener)
{
	struct self_addrs sa;

	init(&sa, "127.0.0.1", "2525");
	ck_assert(ours(&sa, "127.0.0.1", 2525));
	ck_assert(!ours(&sa, "127.0.0.1", 25));         /* another port: another server */
	ck_assert(!ours(&sa, "127.0.0.2", 2525));       /* not the listener's address */
	ck_assert(!ours(&sa, "::1", 2525));
	ck_assert(!ours(&sa, foreign(AF_INET), 2525));
	self_addrs_free(&sa);
	init(&sa, "::1", "2525");
	ck_assert(ours(&sa, "::1", 2525));
	ck_assert(!ours(&sa, "127.0.0.1", 2525));
	self_addrs_free(&sa);
}
END_TEST

START_TEST(test_ipv4_wildcard)
{
	struct self_addrs sa;

	init(&sa, "0.0.0.0", "2525");
	ck_assert(ours(&sa, "127.0.0.1", 2525));
	ck_assert(ours(&sa, "127.3.2.1", 2525));        /* all of 127/8 is loopback */
	ck_assert(!ours(&sa, "127.0.0.1", 25));
	ck_assert(!ours(&sa, foreign(AF_INET), 2525));
	ck_assert(!ours(&sa, "::1", 2525));             /* an IPv4 socket takes no IPv6 */
	interface_ours(&sa, AF_INET);
	self_addrs_free(&sa);
}
END_TEST

START_TEST(test_ipv6_wildcard)
{
	struct self_addrs sa;

	init(&sa, "::", "2525");
	/* not IPV6_V6ONLY: the socket takes IPv4 too */
	ck_assert(ours(&sa, "127.0.0.1", 2525));
	ck_assert(ours(&sa, "::1", 2525));
	ck_assert(!ours(&sa, "::1", 25));
	ck_assert(!ours(&sa, foreign(AF_INET6), 2525));
	ck_assert(!ours(&sa, foreign(AF_INET), 2525));
	interface_ours(&sa, AF_INET);
	interface_ours(&sa, AF_INET6);
	self_addrs_free(&sa);
}
END_TEST

/* The list is read again when an address is not in it and the list is
 * SELF_REREAD_SECONDS old, not before; an address the host gained after the
 * first read (played by emptying the list) is then ours */
START_TEST(test_interfaces_read_again)
{
	struct self_addrs sa;
	char ip[64];
	size_t n;

	init(&sa, "0.0.0.0", "2525");
	n = sa.nlocal;
	ck_assert_uint_gt(n, 0);                        /* loopback's, at least */
	sa.nlocal = 0;
	ck_assert(!ours(&sa, foreign(AF_INET), 2525));
	ck_assert_uint_eq(sa.nlocal, 0);                /* not read again yet */
	sa.read_at -= SELF_REREAD_SECONDS;
	ck_assert(!ours(&sa, foreign(AF_INET), 2525));
	ck_assert_uint_eq(sa.nlocal, n);                /* read again */
	interface_addr(AF_INET, ip, sizeof(ip));
	if (ip[0] != '\0') {
		sa.nlocal = 0;
		ck_assert(!ours(&sa, ip, 2525));
		sa.read_at -= SELF_REREAD_SECONDS;
		ck_assert_msg(ours(&sa, ip, 2525), "%s is this host's", ip);
	}
	self_addrs_free(&sa);
}
END_TEST

START_TEST(test_no_listener)
{
	struct self_addrs sa;

	self_addrs_init(&sa, NULL, 0);
	ck_assert(!ours(&sa, "127.0.0.1", 25));
	self_addrs_free(&sa);
}
END_TEST

static Suite *
self_suite(void)
{
	Suite *s = suite_create("self");
	TCase *tc = tcase_create("listeners");

	tcase_add_test(tc, test_exact_listener);
	tcase_add_test(tc, test_ipv4_wildcard);
	tcase_add_test(tc, test_ipv6_wildcard);
	tcase_add_test(tc, test_interfaces_read_again);
	tcase_add_test(tc, test_no_listener);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(self_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
