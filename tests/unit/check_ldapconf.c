/*
 * check_ldapconf.c - unit tests for the ldap: map settings file and the
 * query filter expansion (router/ldapconf.c), table-driven; and for the
 * cache of the ldap: backend (router/map_ldap.c) against a server that
 * cannot be reached: a failure is never "not found", and a lookup never
 * waits longer than the map's timeout.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "lib/lib.h"
#include "router/router.h"

#define S(x) x, sizeof(x) - 1

/* The settings as one line, for comparing. */
static void
render(const struct ldap_settings *s, struct dstr *out)
{
	size_t i;

	dstr_init(out, 0);
	dstr_append(out, "", 0);
	for (i = 0; i < s->nuris; i++)
		dstr_printf(out, "%s%s", i ? " " : "uris=", s->uris[i]);
	dstr_printf(out, ";base=%s;scope=%d;filter=%s;attrs=", s->search_base, (int)s->scope,
		    s->query_filter);
	for (i = 0; i < s->nattrs; i++)
		dstr_printf(out, "%s%s", i ? "," : "", s->attrs[i]);
	if (s->attrs[s->nattrs] != NULL)
		dstr_printf(out, "(not NULL-terminated)");
	dstr_printf(out, ";bind=%d;dn=%s;pw=%s;tls=%d;timeout=%d;ttl=%d/%d;size=%d;threads=%d",
		    s->bind, s->bind_dn ? s->bind_dn : "-", s->bind_pw ? s->bind_pw : "-",
		    s->start_tls, s->timeout, s->cache_ttl, s->negative_cache_ttl, s->cache_size,
		    s->lookup_threads);
}

static const struct {
	const char *text;
	size_t len;
	const char *want;       /* render(), or "ERR:" and the message */
} cases[] = {
	{ S("search_base = dc=example,dc=test\n"),
	  "uris=ldap://localhost:389;base=dc=example,dc=test;scope=2;"
	  "filter=(mailacceptinggeneralid=%s);attrs=maildrop;bind=1;dn=-;pw=-;tls=0;timeout=10;"
	  "ttl=60/10;size=100000;threads=4" },
	{ S("# users\nserver_host = ldap://127.0.0.1:3389, ldap://127.0.0.2:3389\n"
	    "search_base = ou=people,dc=example,dc=test\nscope = one\n"
	    "query_filter = (&(objectClass=inetOrgPerson)(mail=%s))\n"
	    "result_attribute = departmentNumber mailHost\n"
	    "bind_dn = cn=reader,dc=example,dc=test\nbind_pw = s3cr#t\nstart_tls = yes\n"
	    "timeout = 2s\ncache_ttl = 5m\nnegative_cache_ttl = 0\ncache_size = 10\n"
	    "lookup_threads = 8\nversion = 3\n"),
	  "uris=ldap://127.0.0.1:3389 ldap://127.0.0.2:3389;base=ou=people,dc=example,dc=test;"
	  "scope=1;filter=(&(objectClass=inetOrgPerson)(mail=%s));attrs=departmentNumber,mailHost;"
	  "bind=1;dn=cn=reader,dc=example,dc=test;pw=s3cr#t;tls=1;timeout=2;ttl=300/0;size=10;"
	  "threads=8" },
	/* bare hosts get ldap:// and server_port; continuation lines; CRLF */
	{ S("server_host = ldap1.example.test\r\n  ldap2.example.test:1389\r\n"
	    "server_port = 3389\r\nsearch_base =\r\n"),
	  "uris=ldap://ldap1.example.test:3389 ldap://ldap2.example.test:1389;base=;scope=2;"
	  "filter=(mailacceptinggeneralid=%s);attrs=maildrop;bind=1;dn=-;pw=-;tls=0;timeout=10;"
	  "ttl=60/10;size=100000;threads=4" },
	{ S("search_base = o=x\nquery_filter = (|(mail=%s)\n\t(mailAlternateAddress=%s))\n"),
	  "uris=ldap://localhost:389;base=o=x;scope=2;"
	  "filter=(|(mail=%s) (mailAlternateAddress=%s));attrs=maildrop;bind=1;dn=-;pw=-;tls=0;"
	  "timeout=10;ttl=60/10;size=100000;threads=4" },
	{ S("server_host = ldapi://%2Frun%2Fslapd%2Fldapi ldaps://h:636\nsearch_base = o=x\n"
	    "bind = no\n"),
	  "uris=ldapi://%2Frun%2Fslapd%2Fldapi ldaps://h:636;base=o=x;scope=2;"
	  "filter=(mailacceptinggeneralid=%s);attrs=maildrop;bind=0;dn=-;pw=-;tls=0;timeout=10;"
	  "ttl=60/10;size=100000;threads=4" },
	/* errors */
	{ S("server_host = h\n"), "ERR:t.cf: search_base is not set" },
	{ S("search_base = o=x\nsearch_base = o=y\n"), "ERR:t.cf:2: duplicate key 'search_base'" },
	{ S("search_base = o=x\nfoo = 1\n"), "ERR:t.cf:2: unknown key 'foo'" },
	{ S("search_base = o=x\ndomain = example.test\n"), "ERR:t.cf:2: 'domain' is not supported" },
	{ S("search_base\n"), "ERR:t.cf:1: missing '='" },
	{ S("  search_base = o=x\n"), "ERR:t.cf:1: continuation line without a key before it" },
	{ S("search_base = o=x\nscope = subtree\n"), "ERR:t.cf:2: scope: 'subtree' is not sub, one or base" },
	{ S("search_base = o=x\nquery_filter = mail=%s\n"),
	  "ERR:t.cf:2: query_filter: 'mail=%s' must start with '('" },
	{ S("search_base = o=x\nquery_filter = (mail=%x)\n"),
	  "ERR:t.cf:2: query_filter: '(mail=%x)' only %s, %u, %d and %% may follow '%'" },
	{ S("search_base = o=x\nquery_filter = (&(mail=%s)\n"),
	  "ERR:t.cf:2: query_filter: '(&(mail=%s)' has an unbalanced '('" },
	{ S("search_base = o=x\nquery_filter = (mail=%s))\n"),
	  "ERR:t.cf:2: query_filter: '(mail=%s))' has an unbalanced ')'" },
	{ S("search_base = o=x\nresult_attribute = mail, a b\n"),
	  "uris=ldap://localhost:389;base=o=x;scope=2;filter=(mailacceptinggeneralid=%s);"
	  "attrs=mail,a,b;bind=1;dn=-;pw=-;tls=0;timeout=10;ttl=60/10;size=100000;threads=4" },
	{ S("search_base = o=x\nresult_attribute = ma(il\n"),
	  "ERR:t.cf:2: result_attribute: 'ma(il' is not an attribute name" },
	{ S("search_base = o=x\nresult_attribute = ,\n"), "ERR:t.cf:2: result_attribute: no attribute" },
	{ S("search_base = o=x\ntimeout = 0\n"), "ERR:t.cf:2: timeout: '0' is not a time in 1s..300s" },
	{ S("search_base = o=x\ntimeout = 10x\n"), "ERR:t.cf:2: timeout: '10x' is not a time in 1s..300s" },
	{ S("search_base = o=x\ncache_ttl = 2d\n"), "ERR:t.cf:2: cache_ttl: '2d' is not a time in 0..1d" },
	{ S("search_base = o=x\nlookup_threads = 0\n"),
	  "ERR:t.cf:2: lookup_threads: '0' is not a number in 1..64" },
	{ S("search_base = o=x\nserver_port = 70000\n"), "ERR:t.cf:2: server_port: '70000' is not a port" },
	{ S("search_base = o=x\nversion = 2\n"), "ERR:t.cf:2: version: only LDAP version 3 is spoken" },
	{ S("search_base = o=x\nstart_tls = maybe\n"), "ERR:t.cf:2: start_tls: 'maybe' is not yes or no" },
	{ S("search_base = o=x\nbind_pw = x\n"), "ERR:t.cf: bind_pw is set but bind_dn is not" },
	{ S("search_base = o=x\ntimeout =\n"), "ERR:t.cf:2: timeout: missing value" },
	{ S("search_base = o=\x01x\n"), "ERR:t.cf:1: control character 0x01" },
	{ S("search_base = o=x\0\n"), "ERR:t.cf:1: NUL byte" },
	{ S("search_base = o=x\nserver_host = , ,\n"), "ERR:t.cf: server_host: no server" },
	{ S("search_base = o=x\nserver_host = a b c d e f g h i j k l m n o p q\n"),
	  "ERR:t.cf: server_host: more than 16 servers" },
};

START_TEST(test_settings)
{
	struct ldap_settings s;
	struct dstr out;
	char err[256];

	if (ldap_settings_parse("t.cf", cases[_i].text, cases[_i].len, &s, err, sizeof(err)) < 0) {
		dstr_init(&out, 0);
		dstr_printf(&out, "ERR:%s", err);
		/* a failed parse leaves nothing behind */
		ck_assert_uint_eq(s.nuris, 0);
		ck_assert_ptr_null(s.query_filter);
	} else {
		render(&s, &out);
		ldap_settings_free(&s);
	}
	ck_assert_msg(strcmp(out.s, cases[_i].want) == 0, "case %d:\n got %s\nwant %s", _i, out.s,
		      cases[_i].want);
	dstr_free(&out);
}
END_TEST

static const struct {
	const char *filter, *key;
	int rc;
	const char *want;
} filters[] = {
	{ "(mail=%s)", "alice@example.test", 1, "(mail=alice@example.test)" },
	{ "(&(uid=%u)(dc=%d))", "alice@example.test", 1, "(&(uid=alice)(dc=example.test))" },
	{ "(uid=%u)", "node-a", 1, "(uid=node-a)" },            /* not an address: the whole key */
	{ "(dc=%d)", "node-a", 0, "" },                         /* no domain: not asked */
	{ "(uid=%u)", "@example.test", 0, "" },                 /* empty local part: not asked */
	{ "(mail=%s)", "@example.test", 1, "(mail=@example.test)" },
	{ "(dc=%d)", "@example.test", 1, "(dc=example.test)" },
	{ "(dc=%d)", "a@", 0, "" },
	{ "(&(mail=%s)(x=100%%))", "a@b", 1, "(&(mail=a@b)(x=100%))" },
	/* RFC 4515: the key can never add a filter of its own */
	{ "(mail=%s)", "*)(mail=*", 1, "(mail=\\2a\\29\\28mail=\\2a)" },
	{ "(mail=%s)", "a\\b@c", 1, "(mail=a\\5cb@c)" },
	{ "(uid=%u)", "\"a(b)\"@c", 1, "(uid=\"a\\28b\\29\")" },
	{ "(cn=%s)", "j\xc3\xbcrgen@example.test", 1, "(cn=j\xc3\xbcrgen@example.test)" },
	{ "(mail=%s)", "a@example.test", -1, "" },              /* too long for 16 bytes */
};

START_TEST(test_filter)
{
	char out[512];
	size_t len = _i == (int)(sizeof(filters) / sizeof(filters[0])) - 1 ? 16 : sizeof(out);
	int rc;

	rc = ldap_filter_expand(filters[_i].filter, filters[_i].key, out, len);
	ck_assert_msg(rc == filters[_i].rc, "case %d: rc %d", _i, rc);
	if (rc == 1)
		ck_assert_str_eq(out, filters[_i].want);
}
END_TEST

/* A map whose only server refuses connections: every lookup fails
 * temporarily, never "not found", with or without a wake-up descriptor. */
START_TEST(test_unreachable)
{
	char dir[] = "/tmp/check_ldap.XXXXXX", path[256], spec[300], val[64], err[256];
	enum map_status st;
	struct map *m;
	uint64_t n;
	time_t t0;
	FILE *f;
	int fd, i;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/u.cf", dir);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	/* port 1 on loopback: nothing listens there, the connect is refused */
	fprintf(f, "server_host = ldap://127.0.0.1:1\nsearch_base = o=x\ntimeout = 2\n"
		"query_filter = (mail=%%s)\nresult_attribute = mail\nlookup_threads = 2\n");
	fclose(f);
	snprintf(spec, sizeof(spec), "ldap:%s", path);
	m = map_open(spec, err, sizeof(err));
	ck_assert_msg(m != NULL, "%s", err);
	ck_assert(map_thread_safe(m));
	t0 = time(NULL);
	st = map_lookup(m, "alice@example.test", val, sizeof(val), err, sizeof(err));
	ck_assert_int_eq(st, MAP_TEMPFAIL);
	ck_assert_msg(strstr(err, "no LDAP server reachable") != NULL, "%s", err);
	ck_assert_int_le(time(NULL) - t0, 3);
	/* %d without a domain: not found without asking anyone */
	/* with a wake-up descriptor: pending first, then the same failure */
	fd = eventfd(0, 0);
	ck_assert_int_ge(fd, 0);
	map_set_wakeup(m, fd);
	st = map_lookup(m, "bob@example.test", val, sizeof(val), err, sizeof(err));
	ck_assert_int_eq(st, MAP_PENDING);
	ck_assert_int_eq(read(fd, &n, sizeof(n)), (int)sizeof(n));     /* the answer came */
	for (i = 0; i < 2 && st == MAP_PENDING; i++)
		st = map_lookup(m, "bob@example.test", val, sizeof(val), err, sizeof(err));
	ck_assert_int_eq(st, MAP_TEMPFAIL);
	map_set_wakeup(m, -1);
	map_close(m);
	close(fd);
	unlink(path);
	rmdir(dir);
}
END_TEST

/* The router over such a map, on an event loop's terms: RCPT_WAIT and a
 * pending resolution first, then, once woken, 451 and a deferral, never
 * "unknown user". */
START_TEST(test_router_wait)
{
	char dir[] = "/tmp/check_ldap.XXXXXX", path[256], text[600], err[512], why[512];
	struct route_list rl = { 0 };
	struct router *r;
	struct config *cf;
	enum rcpt_verdict v;
	uint64_t n;
	FILE *f;
	int fd, i;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/u.cf", dir);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "server_host = ldap://127.0.0.1:1\nsearch_base = o=x\ntimeout = 2\n"
		"query_filter = (mail=%%s)\nresult_attribute = ou\nlookup_threads = 1\n");
	fclose(f);
	snprintf(text, sizeof(text), "local_domains = example.test\nuser_map = ldap:%s\n"
		 "node_map = ldap:%s\n", path, path);
	cf = config_parse("t.conf", text, strlen(text), err, sizeof(err));
	ck_assert_msg(cf != NULL, "%s", err);
	r = router_open(cf, err, sizeof(err));
	ck_assert_msg(r != NULL, "%s", err);
	fd = eventfd(0, 0);
	router_set_wakeup(r, fd);
	v = router_check_rcpt(r, "alice@example.test", why, sizeof(why));
	ck_assert_int_eq(v, RCPT_WAIT);
	ck_assert_int_eq(read(fd, &n, sizeof(n)), (int)sizeof(n));
	for (i = 0; i < 3 && v == RCPT_WAIT; i++)
		v = router_check_rcpt(r, "alice@example.test", why, sizeof(why));
	ck_assert_msg(v == RCPT_TEMPFAIL, "%d: %s", (int)v, why);
	ck_assert_str_eq(rcpt_verdict_status(v), "451 4.3.0");
	/* delivery time: pending, then a deferral with 4.3.0 */
	router_resolve(r, "bob@example.test", &rl, NULL);
	ck_assert(rl.pending);
	ck_assert_int_eq(read(fd, &n, sizeof(n)), (int)sizeof(n));
	router_resolve(r, "bob@example.test", &rl, NULL);
	ck_assert(!rl.pending);
	ck_assert_uint_eq(rl.n, 1);
	ck_assert_int_eq(rl.v[0].kind, ROUTE_TEMPFAIL);
	ck_assert_str_eq(rl.v[0].status, "4.3.0");
	route_list_free(&rl);
	router_set_wakeup(r, -1);
	router_close(r);
	config_free(cf);
	close(fd);
	unlink(path);
	rmdir(dir);
}
END_TEST

/* A settings file that cannot be used is an error where the map is named. */
START_TEST(test_bad_file)
{
	char err[512];

	ck_assert_ptr_null(map_open("ldap:/nonexistent/sorter-ldap.cf", err, sizeof(err)));
	ck_assert_msg(strstr(err, "cannot read /nonexistent/sorter-ldap.cf") != NULL, "%s", err);
}
END_TEST

static Suite *
ldapconf_suite(void)
{
	Suite *s = suite_create("ldapconf");
	TCase *tc = tcase_create("parse");
	TCase *tm = tcase_create("map");

	tcase_add_loop_test(tc, test_settings, 0, sizeof(cases) / sizeof(cases[0]));
	tcase_add_loop_test(tc, test_filter, 0, sizeof(filters) / sizeof(filters[0]));
	suite_add_tcase(s, tc);
	tcase_set_timeout(tm, 20);
	tcase_add_test(tm, test_unreachable);
	tcase_add_test(tm, test_bad_file);
	tcase_add_test(tm, test_router_wait);
	suite_add_tcase(s, tm);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(ldapconf_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
