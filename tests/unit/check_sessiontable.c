/*
 * check_sessiontable.c - unit tests for the shared session table
 * (smtpd/sessiontable.c): the total and per-client limits (IPv6 clients
 * counted by /64), the per-minute connection rate, AUTH failure counts and
 * their expiry, and net_list_match (lib/config.c) for the exceptions.
 */
#include "config.h"

#include <arpa/inet.h>
#include <check.h>
#include <string.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

static void
key(const char *ip, unsigned char k[16])
{
	memset(k, 0, 16);
	if (strchr(ip, ':') == NULL) {
		k[10] = k[11] = 0xff;
		ck_assert_int_eq(inet_pton(AF_INET, ip, k + 12), 1);
	} else
		ck_assert_int_eq(inet_pton(AF_INET6, ip, k), 1);
}

START_TEST(test_per_client_ipv6_by_64)
{
	struct session_table *t = session_table_create(2, 10);
	unsigned char a[16], b[16], c[16], v4a[16], v4b[16];

	key("2001:db8:1:2::1", a);
	key("2001:db8:1:2:ffff::9", b);          /* same /64 */
	key("2001:db8:1:3::1", c);               /* the next /64 */
	key("192.0.2.1", v4a);
	key("192.0.2.2", v4b);
	ck_assert_int_ge(session_table_enter(t, 0, a, 100, 2, 0, 1000), 0);
	ck_assert_int_ge(session_table_enter(t, 1, b, 100, 2, 0, 1000), 0);
	ck_assert_int_eq(session_table_enter(t, 0, a, 100, 2, 0, 1000), -2);
	ck_assert_int_eq(session_table_enter(t, 1, b, 100, 2, 0, 1000), -2);
	ck_assert_int_ge(session_table_enter(t, 0, c, 100, 2, 0, 1000), 0);
	/* IPv4 addresses are each their own client */
	ck_assert_int_ge(session_table_enter(t, 0, v4a, 100, 1, 0, 1000), 0);
	ck_assert_int_ge(session_table_enter(t, 0, v4b, 100, 1, 0, 1000), 0);
	ck_assert_int_eq(session_table_enter(t, 0, v4a, 100, 1, 0, 1000), -2);
	/* no per-client limit (an exempt client) */
	ck_assert_int_ge(session_table_enter(t, 0, v4a, 100, 0, 0, 1000), 0);
	/* the total still holds */
	ck_assert_int_eq(session_table_enter(t, 1, c, 6, 0, 0, 1000), -1);
}
END_TEST

/* A worker holds a place before it accepts a client: two workers can
 * never both accept a client for the last place (the second one's client
 * waits in the listen queue). A refused client gives its place back; a
 * place given back, or a dead worker's, is free again. */
START_TEST(test_reserve)
{
	struct session_table *t = session_table_create(2, 10);
	unsigned char a[16], b[16];
	int s0;

	key("192.0.2.1", a);
	key("192.0.2.2", b);
	ck_assert_int_ge(s0 = session_table_enter(t, 0, a, 2, 0, 0, 1000), 0);
	/* one place left: the first worker to ask gets it, the other waits */
	ck_assert(session_table_reserve(t, 1, 2));
	ck_assert(!session_table_reserve(t, 0, 2));
	ck_assert_int_ge(session_table_enter(t, 1, b, 2, 0, 0, 1000), 0);
	ck_assert(!session_table_reserve(t, 0, 2));
	/* a session ends: its place is one worker's again */
	session_table_leave(t, 0, s0);
	ck_assert(session_table_reserve(t, 0, 2));
	ck_assert(!session_table_reserve(t, 1, 2));
	/* an accept that failed gives it back */
	session_table_unreserve(t, 0);
	ck_assert(session_table_reserve(t, 1, 2));
	/* a client refused for its own limit gives it back too */
	ck_assert_int_eq(session_table_enter(t, 1, b, 2, 1, 0, 1000), -2);
	ck_assert(session_table_reserve(t, 0, 2));
	/* a worker that died holding a place: cleared with its sessions */
	session_table_clear(t, 0);
	ck_assert(session_table_reserve(t, 1, 2));
	ck_assert_int_ge(session_table_enter(t, 1, a, 2, 0, 0, 1000), 0);
	ck_assert(!session_table_reserve(t, 0, 2));
}
END_TEST

START_TEST(test_rate)
{
	struct session_table *t = session_table_create(2, 100);
	unsigned char a[16], b[16];
	int i;

	key("192.0.2.1", a);
	key("2001:db8::1", b);
	for (i = 0; i < 3; i++)
		ck_assert_int_ge(session_table_enter(t, i % 2, a, 100, 0, 3, 1000 + i), 0);
	ck_assert_int_eq(session_table_enter(t, 0, a, 100, 0, 3, 1030), -3);
	ck_assert_int_ge(session_table_enter(t, 0, b, 100, 0, 3, 1030), 0);
	/* a new minute */
	ck_assert_int_ge(session_table_enter(t, 1, a, 100, 0, 3, 1061), 0);
	/* no rate limit */
	for (i = 0; i < 10; i++)
		ck_assert_int_ge(session_table_enter(t, 0, b, 100, 0, 0, 1062), 0);
}
END_TEST

START_TEST(test_auth_failures)
{
	struct session_table *t = session_table_create(1, 10);
	unsigned char a[16], a2[16], b[16];

	key("2001:db8:5:5::1", a);
	key("2001:db8:5:5::2", a2);
	key("192.0.2.7", b);
	ck_assert_uint_eq(session_table_auth_failures(t, a, 1000), 0);
	ck_assert_uint_eq(session_table_auth_failed(t, a, 1000), 1);
	ck_assert_uint_eq(session_table_auth_failed(t, a2, 1001), 2);   /* same /64 */
	ck_assert_uint_eq(session_table_auth_failures(t, a, 1002), 2);
	ck_assert_uint_eq(session_table_auth_failures(t, b, 1002), 0);
	/* an hour after the last failure it is forgotten */
	ck_assert_uint_eq(session_table_auth_failures(t, a, 1001 + 3600), 2);
	ck_assert_uint_eq(session_table_auth_failures(t, a, 1001 + 3601), 0);
	ck_assert_uint_eq(session_table_auth_failed(t, a, 1001 + 3602), 1);
}
END_TEST

/* many clients: the table forgets the oldest, never fails */
START_TEST(test_many_clients)
{
	struct session_table *t = session_table_create(1, 10);
	unsigned char k[16];
	unsigned i;

	memset(k, 0, sizeof(k));
	k[10] = k[11] = 0xff;
	for (i = 0; i < 100000; i++) {
		memcpy(k + 12, &i, 4);
		ck_assert_uint_eq(session_table_auth_failed(t, k, 1000 + i / 100), 1);
	}
	ck_assert_uint_eq(session_table_auth_failed(t, k, 2000), 2);
}
END_TEST

START_TEST(test_nets)
{
	char err[256];
	struct config *cf;
	unsigned char k[16];

	cf = config_parse("t.conf", "smtpd_client_limit_exceptions = 10.0.0.0/8, 192.0.2.7 "
			  "2001:db8::/32 ::1\n", 72, err, sizeof(err));
	ck_assert_msg(cf != NULL, "%s", err);
	ck_assert_uint_eq(cf->nsmtpd_client_limit_exceptions, 4);
#define IN(ip, want) do { key(ip, k); ck_assert_msg(net_list_match( \
	cf->smtpd_client_limit_exceptions, cf->nsmtpd_client_limit_exceptions, k) == (want), ip); \
} while (0)
	IN("10.1.2.3", true);
	IN("11.0.0.1", false);
	IN("192.0.2.7", true);
	IN("192.0.2.8", false);
	IN("2001:db8:ffff::1", true);
	IN("2001:db9::1", false);
	IN("::1", true);
	IN("::2", false);
	config_free(cf);
	/* the default: loopback */
	cf = config_parse("t.conf", "", 0, err, sizeof(err));
	IN("127.0.0.1", true);
	IN("127.255.0.9", true);
	IN("::1", true);
	IN("192.0.2.1", false);
	config_free(cf);
	cf = config_parse("t.conf", "smtpd_client_limit_exceptions = 10.0.0.0/33\n", 44, err,
			  sizeof(err));
	ck_assert_ptr_null(cf);
	ck_assert_str_eq(err, "t.conf:1: smtpd_client_limit_exceptions: '10.0.0.0/33' is not "
			 "ADDRESS or ADDRESS/BITS");
	cf = config_parse("t.conf", "smtpd_client_limit_exceptions = example.test\n", 45, err,
			  sizeof(err));
	ck_assert_ptr_null(cf);
}
END_TEST

static Suite *
table_suite(void)
{
	Suite *s = suite_create("sessiontable");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_per_client_ipv6_by_64);
	tcase_add_test(tc, test_reserve);
	tcase_add_test(tc, test_rate);
	tcase_add_test(tc, test_auth_failures);
	tcase_add_test(tc, test_many_clients);
	tcase_add_test(tc, test_nets);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(table_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
