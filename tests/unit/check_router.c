/*
 * check_router.c - unit tests for the router (router/router.c, canon.c,
 * map.c, explain.c): canonical forms, endpoints, alias loops, depth limit,
 * duplicates, delimiter, @domain fallback, failover, case folding, missing
 * and broken map files, rebuilding a map under an open router, the atomic
 * build, and the explanation's exit codes.
 *
 * Each test builds its maps with map_build() in its own temp directory.
 */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/lib.h"
#include "router/router.h"

/* ---- fixtures ---- */

static char dir[64];

static void
make_dir(void)
{
	snprintf(dir, sizeof(dir), "/tmp/check_router.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void
remove_dir(void)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char path[512];

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		unlink(path);
	}
	closedir(d);
	rmdir(dir);
}

static char *
path_of(const char *name)
{
	return xasprintf("%s/%s", dir, name);
}

/* writes the source NAME and builds NAME.db (type "hash" or "btree") */
static void
build_map(const char *type, const char *name, const char *text)
{
	char *path = path_of(name), *spec = xasprintf("%s:%s", type, path), err[512];
	struct stat sb;
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_msg(map_build(spec, path, text, strlen(text), &sb, err, sizeof(err)) >= 0,
		      "map_build %s: %s", spec, err);
	free(spec);
	free(path);
}

static const char aliases[] =
	"# aliases of the tests\n"
	"info@example.test      alice, bob@example.test\n"
	"loop1@example.test     loop2@example.test\n"
	"loop2@example.test     loop1@example.test\n"
	"self@example.test      self@example.test, alice@example.test\n"
	"fwd@example.test       someone@remote.test\n"
	"dups@example.test      alice@example.test,ALICE@Example.Test  info@example.test\n"
	"list@example.test      info, dups, info\n"
	"mixed@example.test     alice, ghost@example.test\n"
	"ghosts@example.test    ghost1, ghost2\n"
	"badtarget@example.test alice, @@nope\n"
	"tag@example.test       alice+tag@example.test\n"
	"postmaster@example.test alice\n"
	"Upper@Example.Test     bob\n"
	"empty@example.test     ,,,\n"
	"d0@example.test d1\nd1@example.test d2\nd2@example.test d3\nd3@example.test d4\n"
	"d4@example.test d5\nd5@example.test d6\nd6@example.test d7\nd7@example.test d8\n"
	"d8@example.test d9\nd9@example.test d10\nd10@example.test d11\n"
	"d11@example.test d12\nd12@example.test d13\nd13@example.test d14\n"
	"d14@example.test d15\nd15@example.test d16\nd16@example.test d17\n"
	"d17@example.test d18\nd18@example.test d19\nd19@example.test d20\n"
	"d20@example.test d21\nd21@example.test d22\n";

static const char users[] =
	"alice@example.test    node-a\n"
	"BOB@example.test      Node-B\n"
	"self@example.test     node-a\n"
	"loop1@example.test    node-a\n"
	"d22@example.test      node-a\n"
	"@example.org          node-b\n"
	"carol@example.test    lmtp:unix:/run/carol.sock\n"
	"orphan@example.test   node-gone\n"
	"nb@example.test       node-bad\n"
	"two@example.test      node-a node-b\n"
	"ext+x@example.test    node-b\n";

static const char nodes[] =
	"node-a    lmtp:[127.0.0.1]:24\n"
	"node-b    lmtp:Mail-B.example.test:2424, lmtp:[::1]\n"
	"node-bad  lmtp:nope:0\n";

static struct config *
load_config(const char *extra)
{
	char err[512];
	char *text = xasprintf("local_domains = example.test example.org\n"
			       "recipient_delimiter = +\n%s", extra);
	struct config *cf = config_parse("test.conf", text, strlen(text), err, sizeof(err));

	ck_assert_msg(cf != NULL, "config: %s", err);
	free(text);
	return cf;
}

/* the standard maps, and a config naming them plus `extra` lines */
static struct config *
standard(const char *extra)
{
	char *more;
	struct config *cf;

	build_map("hash", "aliases", aliases);
	build_map("hash", "users", users);
	build_map("btree", "nodes", nodes);
	more = xasprintf("alias_map = hash:%s/aliases\nuser_map = hash:%s/users\n"
			 "node_map = btree:%s/nodes\n%s", dir, dir, dir, extra);
	cf = load_config(more);
	free(more);
	return cf;
}

static struct router *
open_router(const struct config *cf)
{
	char err[512];
	struct router *r = router_open(cf, err, sizeof(err));

	ck_assert_msg(r != NULL, "router_open: %s", err);
	return r;
}

/* "kind address [node] [endpoints...] [status]" per route, " | " between */
static void
summary(const struct route_list *l, struct dstr *out)
{
	char ep[200];
	size_t i, j;

	dstr_reset(out);
	dstr_append(out, "", 0);
	for (i = 0; i < l->n; i++) {
		const struct route *rt = &l->v[i];

		dstr_printf(out, "%s%s %s", i ? " | " : "", route_kind_name(rt->kind), rt->address);
		if (rt->kind == ROUTE_LOCAL) {
			ck_assert_uint_gt(rt->nendpoints, 0);
			dstr_printf(out, " %s", rt->node[0] ? rt->node : "-");
			for (j = 0; j < rt->nendpoints; j++) {
				endpoint_format(&rt->endpoints[j], ep, sizeof(ep));
				dstr_printf(out, " %s", ep);
			}
			dstr_printf(out, " (%s)", route_via_name(rt->via));
		} else if (rt->kind != ROUTE_REMOTE) {
			dstr_printf(out, " %s", rt->status);
		}
	}
}

#define A "lmtp:[127.0.0.1]:24"
#define B "lmtp:mail-b.example.test:2424 lmtp:[::1]:24"

static const struct {
	const char *address;
	enum rcpt_verdict verdict;
	const char *routes;
} resolve_cases[] = {
	{ "alice@example.test", RCPT_ACCEPT, "local alice@example.test node-a " A " (user_map)" },
	/* case folding: keys in any case, the local part kept for the envelope */
	{ "Alice@EXAMPLE.Test", RCPT_ACCEPT, "local Alice@example.test node-a " A " (user_map)" },
	{ "bob@example.test", RCPT_ACCEPT, "local bob@example.test node-b " B " (user_map)" },
	/* delimiter: the extension stays in the address, the lookup drops it */
	{ "alice+news@example.test", RCPT_ACCEPT,
	  "local alice+news@example.test node-a " A " (user_map)" },
	{ "alice+a+b@example.test", RCPT_ACCEPT,
	  "local alice+a+b@example.test node-a " A " (user_map)" },
	/* the full address wins over the one without extension */
	{ "ext+x@example.test", RCPT_ACCEPT, "local ext+x@example.test node-b " B " (user_map)" },
	{ "ext+y@example.test", RCPT_UNKNOWN_USER, "bounce ext+y@example.test 5.1.1" },
	{ "+x@example.test", RCPT_UNKNOWN_USER, "bounce +x@example.test 5.1.1" },
	/* @domain fallback */
	{ "anyone@example.org", RCPT_ACCEPT, "local anyone@example.org node-b " B " (@domain)" },
	{ "anyone@EXAMPLE.ORG", RCPT_ACCEPT, "local anyone@example.org node-b " B " (@domain)" },
	{ "ghost@example.test", RCPT_UNKNOWN_USER, "bounce ghost@example.test 5.1.1" },
	{ "someone@remote.test", RCPT_RELAY_DENIED, "remote someone@remote.test" },
	{ "x@[127.0.0.1]", RCPT_RELAY_DENIED, "remote x@[127.0.0.1]" },
	{ "x@example.test.evil", RCPT_RELAY_DENIED, "remote x@example.test.evil" },
	{ "carol@example.test", RCPT_ACCEPT,
	  "local carol@example.test - lmtp:unix:/run/carol.sock (user_map)" },
	/* aliases */
	{ "info@example.test", RCPT_ACCEPT, "local alice@example.test node-a " A " (user_map) | "
	  "local bob@example.test node-b " B " (user_map)" },
	{ "INFO@example.test", RCPT_ACCEPT, "local alice@example.test node-a " A " (user_map) | "
	  "local bob@example.test node-b " B " (user_map)" },
	{ "info+x@example.test", RCPT_ACCEPT, "local alice@example.test node-a " A " (user_map) | "
	  "local bob@example.test node-b " B " (user_map)" },
	{ "upper@example.test", RCPT_ACCEPT, "local bob@example.test node-b " B " (user_map)" },
	{ "fwd@example.test", RCPT_ACCEPT, "remote someone@remote.test" },
	/* loops: an address on its own expansion path is routed as itself */
	{ "loop1@example.test", RCPT_ACCEPT, "local loop1@example.test node-a " A " (user_map)" },
	{ "loop2@example.test", RCPT_UNKNOWN_USER, "bounce loop2@example.test 5.1.1" },
	{ "self@example.test", RCPT_ACCEPT, "local self@example.test node-a " A " (user_map) | "
	  "local alice@example.test node-a " A " (user_map)" },
	/* duplicates: by address (case-insensitively), and by alias */
	{ "dups@example.test", RCPT_ACCEPT, "local alice@example.test node-a " A " (user_map) | "
	  "local bob@example.test node-b " B " (user_map)" },
	{ "list@example.test", RCPT_ACCEPT, "local alice@example.test node-a " A " (user_map) | "
	  "local bob@example.test node-b " B " (user_map)" },
	/* one good target is enough at RCPT; the other bounces at delivery */
	{ "mixed@example.test", RCPT_ACCEPT, "local alice@example.test node-a " A " (user_map) | "
	  "bounce ghost@example.test 5.1.1" },
	{ "ghosts@example.test", RCPT_UNKNOWN_USER,
	  "bounce ghost1@example.test 5.1.1 | bounce ghost2@example.test 5.1.1" },
	{ "badtarget@example.test", RCPT_ACCEPT, "local alice@example.test node-a " A " (user_map) | "
	  "tempfail @@nope 4.3.5" },
	{ "tag@example.test", RCPT_ACCEPT,
	  "local alice+tag@example.test node-a " A " (user_map)" },
	{ "empty@example.test", RCPT_UNKNOWN_USER, "bounce empty@example.test 5.1.1" },
	/* depth: d0 -> d1 -> ... -> d22 is 22 levels, more than allowed */
	{ "d0@example.test", RCPT_UNKNOWN_USER, "bounce d20@example.test 5.4.6" },
	{ "d5@example.test", RCPT_ACCEPT, "local d22@example.test node-a " A " (user_map)" },
	/* bare postmaster is local, in the first local domain */
	{ "postmaster", RCPT_ACCEPT, "local alice@example.test node-a " A " (user_map)" },
	{ "PostMaster", RCPT_ACCEPT, "local alice@example.test node-a " A " (user_map)" },
	/* map inconsistencies are deferrals, never rejections */
	{ "orphan@example.test", RCPT_TEMPFAIL, "tempfail orphan@example.test 4.3.5" },
	{ "nb@example.test", RCPT_TEMPFAIL, "tempfail nb@example.test 4.3.5" },
	{ "two@example.test", RCPT_TEMPFAIL, "tempfail two@example.test 4.3.5" },
};

START_TEST(test_resolve)
{
	struct config *cf;
	struct router *r;
	struct route_list l;
	struct dstr got;
	char why[512];
	enum rcpt_verdict v;
	int i;

	make_dir();
	cf = standard("");
	r = open_router(cf);
	memset(&l, 0, sizeof(l));
	dstr_init(&got, 0);
	/* twice: the second round runs on warm, reused buffers */
	for (i = 0; i < 2; i++) {
		const char *a = resolve_cases[_i].address;

		ck_assert_uint_ge(router_resolve(r, a, &l, NULL), 1);
		summary(&l, &got);
		ck_assert_msg(strcmp(got.s, resolve_cases[_i].routes) == 0,
			      "%s: got\n  %s\nwant\n  %s", a, got.s, resolve_cases[_i].routes);
		ck_assert_str_eq(l.v[0].original, a);
		why[0] = '\0';
		v = router_check_rcpt(r, a, why, sizeof(why));
		ck_assert_msg(v == resolve_cases[_i].verdict, "%s: verdict %s, want %s (%s)", a,
			      rcpt_verdict_status(v),
			      rcpt_verdict_status(resolve_cases[_i].verdict), why);
		ck_assert_msg(why[0] != '\0', "%s: no reason given", a);
	}
	dstr_free(&got);
	route_list_free(&l);
	router_close(r);
	config_free(cf);
	remove_dir();
}
END_TEST

/* reasons name what happened */
START_TEST(test_reasons)
{
	struct config *cf;
	struct router *r;
	char why[512];

	make_dir();
	cf = standard("");
	r = open_router(cf);
	ck_assert_int_eq(router_check_rcpt(r, "orphan@example.test", why, sizeof(why)),
			 RCPT_TEMPFAIL);
	ck_assert_ptr_nonnull(strstr(why, "node node-gone is not in node_map"));
	ck_assert_int_eq(router_check_rcpt(r, "d0@example.test", why, sizeof(why)),
			 RCPT_UNKNOWN_USER);
	ck_assert_ptr_nonnull(strstr(why, "deeper than 20"));
	ck_assert_int_eq(router_check_rcpt(r, "x@remote.test", why, sizeof(why)),
			 RCPT_RELAY_DENIED);
	ck_assert_ptr_nonnull(strstr(why, "remote.test is not a local domain"));
	ck_assert_int_eq(router_check_rcpt(r, "ghost@example.test", why, sizeof(why)),
			 RCPT_UNKNOWN_USER);
	ck_assert_ptr_nonnull(strstr(why, "user unknown"));
	router_close(r);
	config_free(cf);
	remove_dir();
}
END_TEST

static const struct {
	const char *failover;
	const char *ghost;        /* how ghost@example.test is routed */
} failover_cases[] = {
	{ "lmtp:[127.0.0.1]:2424", "local ghost@example.test - lmtp:[127.0.0.1]:2424 (failover_node)" },
	{ "lmtp:unix:/run/f.sock, lmtp:[::1]:24",
	  "local ghost@example.test - lmtp:unix:/run/f.sock lmtp:[::1]:24 (failover_node)" },
	{ "Node-B", "local ghost@example.test node-b " B " (failover_node)" },
	{ "node-gone", "tempfail ghost@example.test 4.3.5" },
};

START_TEST(test_failover)
{
	struct config *cf;
	struct router *r;
	struct route_list l;
	struct dstr got;
	char *extra = xasprintf("failover_node = %s\n", failover_cases[_i].failover), why[256];
	enum rcpt_verdict v;

	make_dir();
	cf = standard(extra);
	r = open_router(cf);
	memset(&l, 0, sizeof(l));
	dstr_init(&got, 0);
	router_resolve(r, "ghost@example.test", &l, NULL);
	summary(&l, &got);
	ck_assert_str_eq(got.s, failover_cases[_i].ghost);
	v = router_check_rcpt(r, "ghost@example.test", why, sizeof(why));
	ck_assert_int_eq(v, _i == 3 ? RCPT_TEMPFAIL : RCPT_ACCEPT);
	/* a mapped user still goes to its own node */
	router_resolve(r, "alice@example.test", &l, NULL);
	summary(&l, &got);
	ck_assert_str_eq(got.s, "local alice@example.test node-a " A " (user_map)");
	/* and a remote address is still not ours */
	ck_assert_int_eq(router_check_rcpt(r, "a@remote.test", why, sizeof(why)),
			 RCPT_RELAY_DENIED);
	dstr_free(&got);
	route_list_free(&l);
	router_close(r);
	config_free(cf);
	remove_dir();
	free(extra);
}
END_TEST

/* what router_open refuses: things that can never work */
START_TEST(test_open_errors)
{
	static const struct {
		const char *conf;
		const char *err;
	} cases[] = {
		{ "user_map = ldapx:/x\n",
		  "test.conf:3: user_map: ldapx:/x: unknown map type \"ldapx\" (known: hash, btree, ldap)" },
		{ "alias_map = hash:\n", "test.conf:3: alias_map: hash:: no file name" },
		{ "# a comment\n\nfailover_node = lmtp:[1.2.3]:24\n",
		  "test.conf:5: failover_node \"lmtp:[1.2.3]:24\": invalid IP address in brackets" },
		{ "failover_node = node-x\n",
		  "test.conf:3: failover_node \"node-x\" names a node, but there is no node_map" },
	};
	struct config *cf;
	char err[512];
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cf = load_config(cases[i].conf);
		ck_assert_ptr_null(router_open(cf, err, sizeof(err)));
		ck_assert_str_eq(err, cases[i].err);
		config_free(cf);
	}
}
END_TEST

/* ---- SMTPUTF8 at RCPT time: each LMTP endpoint's last LHLO (nodecaps) ---- */

static void
record_caps(struct nodecaps *w, const char *ep_spec, bool smtputf8)
{
	struct endpoint ep;
	struct ehlo_caps caps;
	const char *why;

	ck_assert_int_eq(endpoint_parse(ep_spec, strlen(ep_spec), &ep, &why), 0);
	memset(&caps, 0, sizeof(caps));
	caps.pipelining = caps.eightbitmime = true;
	caps.smtputf8 = smtputf8;
	ck_assert_int_ge(nodecaps_record(w, &ep, &caps, 1700000000), 0);
}

#define JU "j\xc3\xbcrgen@example.test"
#define YH "\xe7\x94\xa8\xe6\x88\xb7@example.test"

START_TEST(test_smtputf8_rcpt)
{
	struct config *cf;
	struct router *r;
	struct nodecaps *w;
	char why[512], *more, *path;
	FILE *f;

	make_dir();
	build_map("hash", "users",
		  "J\xc3\x9cRGEN@example.test node-a\n"   /* found as jÜrgen: ASCII folding only */
		  YH " node-b\n"
		  "ascii@example.test node-a\n"
		  "bee@example.test node-b\n");
	build_map("hash", "aliases",
		  "list@example.test " JU ", bee\n"
		  "to-utf8@example.test " YH "\n");
	build_map("btree", "nodes", nodes);
	more = xasprintf("alias_map = hash:%s/aliases\nuser_map = hash:%s/users\n"
			 "node_map = btree:%s/nodes\nspool_dir = %s\n", dir, dir, dir, dir);
	cf = load_config(more);
	free(more);
	r = open_router(cf);

	/* nothing known yet: accepted, the queue manager decides */
	ck_assert_int_eq(router_check_rcpt(r, "j\xc3\x9crgen@example.test", why, sizeof(why)),
			 RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt(r, JU, why, sizeof(why)), RCPT_UNKNOWN_USER);
	ck_assert_int_eq(router_check_rcpt(r, YH, why, sizeof(why)), RCPT_ACCEPT);

	/* node-a's endpoint did not offer SMTPUTF8 */
	w = nodecaps_open(dir);
	nodecaps_load(w);
	record_caps(w, "lmtp:[127.0.0.1]:24", false);
	ck_assert_int_eq(router_check_rcpt(r, "j\xc3\x9crgen@example.test", why, sizeof(why)),
			 RCPT_NO_SMTPUTF8);
	ck_assert_str_eq(rcpt_verdict_status(RCPT_NO_SMTPUTF8), "553 5.6.7");
	ck_assert_msg(strstr(why, "node node-a (lmtp:[127.0.0.1]:24) did not offer SMTPUTF8") != NULL,
		      "why: %s", why);
	/* an ASCII recipient on that node needs it only with a UTF-8 sender */
	ck_assert_int_eq(router_check_rcpt_flags(r, "ascii@example.test", 0, why, sizeof(why)),
			 RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt_flags(r, "ascii@example.test", RCPT_SENDER_UTF8, why,
						 sizeof(why)), RCPT_NO_SMTPUTF8);
	/* an alias: one target that can be delivered is enough */
	ck_assert_int_eq(router_check_rcpt(r, "list@example.test", why, sizeof(why)),
			 RCPT_ACCEPT);
	/* node-b: one endpoint lacks it, the other is unknown: accepted */
	record_caps(w, "lmtp:mail-b.example.test:2424", false);
	ck_assert_int_eq(router_check_rcpt(r, YH, why, sizeof(why)), RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt(r, "to-utf8@example.test", why, sizeof(why)),
			 RCPT_ACCEPT);
	/* both known to lack it: refused, through an alias too */
	record_caps(w, "lmtp:[::1]:24", false);
	ck_assert_int_eq(router_check_rcpt(r, YH, why, sizeof(why)), RCPT_NO_SMTPUTF8);
	ck_assert_int_eq(router_check_rcpt(r, "to-utf8@example.test", why, sizeof(why)),
			 RCPT_NO_SMTPUTF8);
	ck_assert_int_eq(router_check_rcpt_flags(r, "list@example.test", RCPT_SENDER_UTF8, why,
						 sizeof(why)), RCPT_NO_SMTPUTF8);
	ck_assert_int_eq(router_check_rcpt_flags(r, "bee@example.test", 0, why, sizeof(why)),
			 RCPT_ACCEPT);
	/* a node that starts offering it is seen at once: the file was replaced */
	record_caps(w, "lmtp:[127.0.0.1]:24", true);
	ck_assert_int_eq(router_check_rcpt(r, "j\xc3\x9crgen@example.test", why, sizeof(why)),
			 RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt_flags(r, "ascii@example.test", RCPT_SENDER_UTF8, why,
						 sizeof(why)), RCPT_ACCEPT);
	/* a damaged file: nothing known, nothing refused */
	path = path_of(NODECAPS_FILE);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	/* (read leniently, these lines would refuse YH) */
	fputs("lmtp:[::1]:24 1 PIPELINING\nlmtp:mail-b.example.test:2424 1\ngarbage\n", f);
	fclose(f);
	ck_assert_int_eq(router_check_rcpt(r, YH, why, sizeof(why)), RCPT_ACCEPT);
	/* and gone: the same */
	unlink(path);
	ck_assert_int_eq(router_check_rcpt(r, YH, why, sizeof(why)), RCPT_ACCEPT);
	free(path);
	nodecaps_close(w);
	router_close(r);
	config_free(cf);
	remove_dir();
}
END_TEST

/* without maps the address is final: only a UTF-8 one has a node to check */
START_TEST(test_smtputf8_failover)
{
	struct config *cf;
	struct router *r;
	struct nodecaps *w;
	char why[512], *more;

	make_dir();
	more = xasprintf("failover_node = lmtp:[127.0.0.1]:2525\nspool_dir = %s\n", dir);
	cf = load_config(more);
	free(more);
	r = open_router(cf);
	w = nodecaps_open(dir);
	record_caps(w, "lmtp:[127.0.0.1]:2525", false);
	ck_assert_int_eq(router_check_rcpt(r, "anyone@example.test", why, sizeof(why)),
			 RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt(r, JU, why, sizeof(why)), RCPT_NO_SMTPUTF8);
	ck_assert_ptr_nonnull(strstr(why, "lmtp:[127.0.0.1]:2525 did not offer SMTPUTF8"));
	ck_assert_int_eq(router_check_rcpt_flags(r, "anyone@example.test", RCPT_SENDER_UTF8,
						 why, sizeof(why)), RCPT_NO_SMTPUTF8);
	nodecaps_close(w);
	router_close(r);
	config_free(cf);
	remove_dir();
}
END_TEST

/* no maps: issue 2's behaviour, every local recipient is accepted */
START_TEST(test_no_maps)
{
	struct config *cf = load_config("");
	struct router *r = open_router(cf);
	struct route_list l;
	char why[256];

	ck_assert_int_eq(router_check_rcpt(r, "anyone@example.test", why, sizeof(why)),
			 RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt(r, "anyone@EXAMPLE.ORG", why, sizeof(why)),
			 RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt(r, "postmaster", why, sizeof(why)), RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt(r, "a@remote.test", why, sizeof(why)),
			 RCPT_RELAY_DENIED);
	ck_assert_int_eq(router_check_maps(r, why, sizeof(why)), 0);
	/* at delivery: nowhere to go yet, so it waits */
	memset(&l, 0, sizeof(l));
	ck_assert_uint_eq(router_resolve(r, "anyone@example.test", &l, NULL), 1);
	ck_assert_int_eq(l.v[0].kind, ROUTE_TEMPFAIL);
	ck_assert_int_eq(l.v[0].via, VIA_NO_USER_MAP);
	route_list_free(&l);
	router_close(r);
	config_free(cf);
}
END_TEST

/* aliases without a user_map: targets are accepted like any local address */
START_TEST(test_aliases_only)
{
	struct config *cf;
	struct router *r;
	char *extra, why[256];

	make_dir();
	build_map("hash", "aliases", aliases);
	extra = xasprintf("alias_map = hash:%s/aliases\n", dir);
	cf = load_config(extra);
	r = open_router(cf);
	ck_assert_int_eq(router_check_rcpt(r, "info@example.test", why, sizeof(why)), RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt(r, "nobody@example.test", why, sizeof(why)),
			 RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt(r, "fwd@example.test", why, sizeof(why)), RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt(r, "d0@example.test", why, sizeof(why)),
			 RCPT_UNKNOWN_USER);
	router_close(r);
	config_free(cf);
	free(extra);
	remove_dir();
}
END_TEST

/* a missing map: open works, lookups defer, and it is used once it appears */
START_TEST(test_missing_map)
{
	struct config *cf;
	struct router *r;
	struct route_list l;
	char *extra, why[512], *want;

	make_dir();
	build_map("btree", "nodes", nodes);
	extra = xasprintf("user_map = hash:%s/users\nnode_map = btree:%s/nodes\n", dir, dir);
	cf = load_config(extra);
	r = open_router(cf);
	ck_assert_int_eq(router_check_rcpt(r, "alice@example.test", why, sizeof(why)),
			 RCPT_TEMPFAIL);
	ck_assert_int_eq(router_check_rcpt(r, "ghost@example.test", why, sizeof(why)),
			 RCPT_TEMPFAIL);
	ck_assert_int_eq(router_check_maps(r, why, sizeof(why)), -1);
	want = xasprintf("test.conf:3: user_map hash:%s/users: cannot open %s/users.db: %s", dir, dir,
			 strerror(ENOENT));
	ck_assert_str_eq(why, want);
	memset(&l, 0, sizeof(l));
	router_resolve(r, "alice@example.test", &l, NULL);
	ck_assert_int_eq(l.v[0].kind, ROUTE_TEMPFAIL);
	ck_assert_str_eq(l.v[0].status, "4.3.0");
	/* remote addresses do not need the map */
	ck_assert_int_eq(router_check_rcpt(r, "x@remote.test", why, sizeof(why)),
			 RCPT_RELAY_DENIED);

	build_map("hash", "users", users);
	ck_assert_int_eq(router_check_rcpt(r, "alice@example.test", why, sizeof(why)),
			 RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt(r, "ghost@example.test", why, sizeof(why)),
			 RCPT_UNKNOWN_USER);
	ck_assert_int_eq(router_check_maps(r, why, sizeof(why)), 0);
	route_list_free(&l);
	router_close(r);
	config_free(cf);
	free(extra);
	free(want);
	remove_dir();
}
END_TEST

static void
write_file(const char *name, const char *text)
{
	char *path = path_of(name);
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
	free(path);
}

/* rebuilt maps are used at the next lookup; a broken replacement is not */
START_TEST(test_reload)
{
	struct config *cf;
	struct router *r;
	struct route_list l;
	struct dstr got;
	char why[512], *db, *tmp;

	make_dir();
	cf = standard("");
	r = open_router(cf);
	memset(&l, 0, sizeof(l));
	dstr_init(&got, 0);
	ck_assert_int_eq(router_check_rcpt(r, "dave@example.test", why, sizeof(why)),
			 RCPT_UNKNOWN_USER);

	/* one user_map line moves one mailbox; a new line adds one */
	build_map("hash", "users", "alice@example.test node-b\ndave@example.test node-a\n");
	router_resolve(r, "alice@example.test", &l, NULL);
	summary(&l, &got);
	ck_assert_str_eq(got.s, "local alice@example.test node-b " B " (user_map)");
	ck_assert_int_eq(router_check_rcpt(r, "dave@example.test", why, sizeof(why)),
			 RCPT_ACCEPT);

	/* one node_map line moves every user of the node */
	build_map("btree", "nodes", "node-a lmtp:[10.0.0.9]:24\nnode-b lmtp:unix:/run/b\n");
	router_resolve(r, "dave@example.test", &l, NULL);
	summary(&l, &got);
	ck_assert_str_eq(got.s, "local dave@example.test node-a lmtp:[10.0.0.9]:24 (user_map)");
	router_resolve(r, "alice@example.test", &l, NULL);
	summary(&l, &got);
	ck_assert_str_eq(got.s, "local alice@example.test node-b lmtp:unix:/run/b (user_map)");

	/* garbage renamed over the map: the open version keeps answering */
	write_file("garbage", "this is not a Berkeley DB file, not at all........\n");
	tmp = path_of("garbage");
	db = path_of("users.db");
	ck_assert_int_eq(rename(tmp, db), 0);
	ck_assert_int_eq(router_check_rcpt(r, "dave@example.test", why, sizeof(why)),
			 RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt(r, "ghost@example.test", why, sizeof(why)),
			 RCPT_UNKNOWN_USER);
	/* removed: still the open version */
	ck_assert_int_eq(unlink(db), 0);
	ck_assert_int_eq(router_check_rcpt(r, "dave@example.test", why, sizeof(why)),
			 RCPT_ACCEPT);
	/* and a good one again */
	build_map("hash", "users", "erin@example.test node-a\n");
	ck_assert_int_eq(router_check_rcpt(r, "erin@example.test", why, sizeof(why)),
			 RCPT_ACCEPT);
	ck_assert_int_eq(router_check_rcpt(r, "dave@example.test", why, sizeof(why)),
			 RCPT_UNKNOWN_USER);

	free(tmp);
	free(db);
	dstr_free(&got);
	route_list_free(&l);
	router_close(r);
	config_free(cf);
	remove_dir();
}
END_TEST

/* a map that is not a database at all, or of the wrong type: defer */
START_TEST(test_broken_map)
{
	struct config *cf;
	struct router *r;
	char *extra, why[512];

	make_dir();
	write_file("users.db", "not a database\n");
	build_map("hash", "nodes", nodes);
	extra = xasprintf("user_map = hash:%s/users\nnode_map = btree:%s/nodes\n", dir, dir);
	cf = load_config(extra);
	r = open_router(cf);
	ck_assert_int_eq(router_check_rcpt(r, "alice@example.test", why, sizeof(why)),
			 RCPT_TEMPFAIL);
	ck_assert_ptr_nonnull(strstr(why, "users.db"));
	/* user_map is fixed; node_map is a hash where a btree was configured */
	build_map("hash", "users", users);
	ck_assert_int_eq(router_check_rcpt(r, "alice@example.test", why, sizeof(why)),
			 RCPT_TEMPFAIL);
	ck_assert_ptr_nonnull(strstr(why, "not a btree database"));
	ck_assert_int_eq(router_check_rcpt(r, "ghost@example.test", why, sizeof(why)),
			 RCPT_UNKNOWN_USER);
	router_close(r);
	config_free(cf);
	free(extra);
	remove_dir();
}
END_TEST

static size_t
count_files(void)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	size_t n = 0;

	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* a failed build leaves the old map and no temporary file */
START_TEST(test_build_atomic)
{
	static const struct {
		const char *text;
		const char *err;  /* after "DIR/m:" */
	} bad[] = {
		{ "a 1\nb\n", "2: no value after key \"b\"" },
		{ "a 1\nb 2\nA 3\n", "3: duplicate key \"a\" (first on line 1)" },
		{ "a 1\n\xff 2\n", "2: malformed UTF-8 at byte 0xff" },
	};
	char *path, *spec, *want, err[512], val[64];
	struct map *m;
	struct stat sb;
	size_t i, n;

	make_dir();
	build_map("hash", "m", "k old\n");
	path = path_of("m");
	spec = xasprintf("hash:%s", path);
	m = map_open(spec, err, sizeof(err));
	ck_assert_ptr_nonnull(m);
	n = count_files();
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_int_eq(map_build(spec, path, bad[i].text, strlen(bad[i].text), NULL,
					   err, sizeof(err)), -1);
		want = xasprintf("%s:%s", path, bad[i].err);
		ck_assert_str_eq(err, want);
		free(want);
		ck_assert_uint_eq(count_files(), n);
		ck_assert_int_eq(map_lookup(m, "k", val, sizeof(val), err, sizeof(err)), MAP_FOUND);
		ck_assert_str_eq(val, "old");
	}
	/* the mode follows the source's; the count is returned */
	ck_assert_int_eq(stat(path, &sb), 0);
	sb.st_mode = (sb.st_mode & ~0777u) | 0640;
	ck_assert_int_eq(map_build(spec, path, "k new\nK2 v2\n", 12, &sb, err, sizeof(err)), 2);
	free(path);
	path = path_of("m.db");
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_uint_eq(sb.st_mode & 0777, 0640);
	ck_assert_uint_eq(count_files(), n);
	ck_assert_int_eq(map_lookup(m, "K", val, sizeof(val), err, sizeof(err)), MAP_FOUND);
	ck_assert_str_eq(val, "new");
	ck_assert_int_eq(map_lookup(m, "k2", val, sizeof(val), err, sizeof(err)), MAP_FOUND);
	ck_assert_str_eq(val, "v2");
	/* a value that does not fit the caller's buffer is not cut short */
	ck_assert_int_eq(map_lookup(m, "k2", val, 2, err, sizeof(err)), MAP_TEMPFAIL);
	ck_assert_int_eq(map_lookup(m, "k3", val, sizeof(val), err, sizeof(err)), MAP_NOTFOUND);
	map_close(m);
	free(path);
	free(spec);
	remove_dir();
}
END_TEST

static const struct {
	const char *in;
	const char *out;        /* endpoint_format, or "ERR:why" */
} endpoint_cases[] = {
	{ "lmtp:[127.0.0.1]:24", "lmtp:[127.0.0.1]:24" },
	{ "LMTP:[127.0.0.1]:2424", "lmtp:[127.0.0.1]:2424" },
	{ "lmtp:[::1]:24", "lmtp:[::1]:24" },
	{ "lmtp:[2001:db8::7]", "lmtp:[2001:db8::7]:24" },
	{ "lmtp:Node-A.Example.Test:2003", "lmtp:node-a.example.test:2003" },
	{ "lmtp:localhost", "lmtp:localhost:24" },
	{ "lmtp:unix:/run/dovecot/lmtp", "lmtp:unix:/run/dovecot/lmtp" },
	{ "lmtp:a:65535", "lmtp:a:65535" },
	{ "smtp:remote.test", "smtp:remote.test" },
	{ "SMTP:Remote.Test:2525", "smtp:remote.test:2525" },
	{ "smtp:[mx1.remote.test]:587", "smtp:[mx1.remote.test]:587" },
	{ "smtp:[mx1.remote.test]", "smtp:[mx1.remote.test]" },
	{ "smtp:[127.0.0.9]:2525", "smtp:[127.0.0.9]:2525" },
	{ "smtp:[::1]", "smtp:[::1]" },
	{ "smtp:[bad_host]:25", "ERR:invalid host name or IP address in brackets" },
	{ "esmtp:host:25", "ERR:endpoint does not start with \"lmtp:\" or \"smtp:\"" },
	{ "lmtp:", "ERR:invalid host name" },
	{ "lmtp:host:0", "ERR:invalid port (1-65535)" },
	{ "lmtp:host:65536", "ERR:invalid port (1-65535)" },
	{ "lmtp:host:", "ERR:invalid port (1-65535)" },
	{ "lmtp:host:24x", "ERR:invalid port (1-65535)" },
	{ "lmtp:host:000024", "ERR:invalid port (1-65535)" },
	{ "lmtp:-host:24", "ERR:invalid host name" },
	{ "lmtp:host-.x:24", "ERR:invalid host name" },
	{ "lmtp:a..b:24", "ERR:invalid host name" },
	{ "lmtp:a_b:24", "ERR:invalid host name" },
	{ "lmtp:[1.2.3.4", "ERR:missing ']' after the address" },
	{ "lmtp:[]:24", "ERR:invalid IP address in brackets" },
	{ "lmtp:[1.2.3.256]:24", "ERR:invalid IP address in brackets" },
	{ "lmtp:[host]:24", "ERR:invalid IP address in brackets" },
	{ "lmtp:[1.2.3.4]x", "ERR:expected ':' after ']'" },
	{ "lmtp:unix:run/x", "ERR:lmtp:unix: needs an absolute path" },
	{ "lmtp:unix:", "ERR:lmtp:unix: needs an absolute path" },
	{ "lmtp:unix", "ERR:host name \"unix\" is taken by lmtp:unix:PATH" },
	{ "lmtp:UNIX:24", "ERR:lmtp:unix: needs an absolute path" },
	{ "lmtp:unix.example.test:24", "lmtp:unix.example.test:24" },
	{ "lmtp:unix:/a\x01", "ERR:invalid character in lmtp:unix: path" },
	{ "lmtp:unix:/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "ERR:lmtp:unix: path too long for a "
	  "socket address" },
};

START_TEST(test_endpoint)
{
	struct endpoint ep;
	const char *why;
	char buf[200];
	const char *in = endpoint_cases[_i].in;

	if (endpoint_parse(in, strlen(in), &ep, &why) == 0)
		endpoint_format(&ep, buf, sizeof(buf));
	else
		snprintf(buf, sizeof(buf), "ERR:%s", why);
	ck_assert_str_eq(buf, endpoint_cases[_i].out);
}
END_TEST

START_TEST(test_endpoint_list)
{
	struct endpoint eps[ROUTER_ENDPOINTS_MAX + 1];
	struct dstr many;
	const char *why;
	int i;

	ck_assert_int_eq(endpoint_parse_list("lmtp:a:1,lmtp:b:2  , ,lmtp:unix:/c", eps, 4, &why), 3);
	ck_assert_str_eq(eps[1].host, "b");
	ck_assert_int_eq(eps[2].kind, EP_UNIX);
	ck_assert_int_eq(endpoint_parse_list(" , ", eps, 4, &why), -1);
	ck_assert_str_eq(why, "no endpoint");
	ck_assert_int_eq(endpoint_parse_list("lmtp:a:1 lmtp:b:x", eps, 4, &why), -1);
	ck_assert_str_eq(why, "invalid port (1-65535)");
	dstr_init(&many, 0);
	for (i = 0; i <= ROUTER_ENDPOINTS_MAX; i++)
		dstr_printf(&many, "lmtp:h%d:24 ", i);
	ck_assert_int_eq(endpoint_parse_list(many.s, eps, ROUTER_ENDPOINTS_MAX, &why), -1);
	ck_assert_str_eq(why, "too many endpoints");
	dstr_free(&many);
}
END_TEST

static const struct {
	const char *in;
	const char *delims;
	const char *out;        /* "address key base domain_key", or "ERR:why" */
} canon_cases[] = {
	{ "alice@example.test", "+", "alice@example.test alice@example.test - @example.test" },
	{ "Alice@Example.TEST", NULL, "Alice@example.test alice@example.test - @example.test" },
	{ "Alice+News@Example.TEST", "+",
	  "Alice+News@example.test alice+news@example.test alice@example.test @example.test" },
	{ "a-b+c@x", "+-", "a-b+c@x a-b+c@x a@x @x" },
	{ "+a@x", "+", "+a@x +a@x - @x" },
	{ "a+@x", "+", "a+@x a+@x a@x @x" },
	{ "\"a+b\"@x", "+", "\"a+b\"@x \"a+b\"@x - @x" },
	{ "\"a@b\"@X", NULL, "\"a@b\"@x \"a@b\"@x - @x" },
	{ "x@[127.0.0.1]", NULL, "x@[127.0.0.1] x@[127.0.0.1] - @[127.0.0.1]" },
	{ "postmaster", "+", "postmaster@dflt.test postmaster@dflt.test - @dflt.test" },
	{ "POSTMASTER", NULL, "POSTMASTER@dflt.test postmaster@dflt.test - @dflt.test" },
	{ "alice", NULL, "ERR:address without a domain" },
	{ "", NULL, "ERR:empty address" },
	{ "@x", NULL, "ERR:empty local part" },
	{ "a@", NULL, "ERR:empty domain" },
	{ "a b@x\x01", NULL, "ERR:control character or malformed UTF-8 in address" },
	{ "caf\xe9@x", NULL, "ERR:control character or malformed UTF-8 in address" },
	{ "a\xc2\x85@x", NULL, "ERR:control character or malformed UTF-8 in address" },
	/* UTF-8: only ASCII letters are lower-cased */
	{ "J\xc3\x9cRGEN+x@B\xc3\x9c" "CHER.Test", "+",
	  "J\xc3\x9cRGEN+x@b\xc3\x9c" "cher.test j\xc3\x9crgen+x@b\xc3\x9c" "cher.test "
	  "j\xc3\x9crgen@b\xc3\x9c" "cher.test @b\xc3\x9c" "cher.test" },
};

START_TEST(test_canon)
{
	struct canon c;
	const char *why;
	char buf[2048];

	if (router_canon(canon_cases[_i].in, canon_cases[_i].delims, "dflt.test", &c, &why) == 0)
		snprintf(buf, sizeof(buf), "%s %s %s %s", c.address, c.key,
			 c.base[0] ? c.base : "-", c.domain_key);
	else
		snprintf(buf, sizeof(buf), "ERR:%s", why);
	ck_assert_str_eq(buf, canon_cases[_i].out);
}
END_TEST

START_TEST(test_canon_limits)
{
	struct canon c;
	const char *why;
	char addr[ADDR_PATH_MAX + 2];

	memset(addr, 'a', sizeof(addr));
	addr[0] = 'l';
	addr[1] = '@';
	addr[ADDR_PATH_MAX] = '\0';             /* exactly the limit */
	ck_assert_int_eq(router_canon(addr, "+", NULL, &c, &why), 0);
	ck_assert_uint_eq(strlen(c.address), ADDR_PATH_MAX);
	ck_assert_uint_eq(strlen(c.domain_key), ADDR_PATH_MAX - 1);
	memset(addr, 'a', sizeof(addr));
	addr[60] = '@';
	addr[ADDR_PATH_MAX + 1] = '\0';
	ck_assert_int_eq(router_canon(addr, "+", NULL, &c, &why), -1);
	ck_assert_str_eq(why, "address too long");
	/* a default domain that makes postmaster too long */
	memset(addr, 'd', sizeof(addr));
	addr[ADDR_PATH_MAX - 10] = '\0';
	ck_assert_int_eq(router_canon("postmaster", NULL, addr, &c, &why), -1);
	ck_assert_str_eq(why, "address too long");
	/* bare postmaster without any local domain stays bare */
	ck_assert_int_eq(router_canon("postmaster", NULL, NULL, &c, &why), 0);
	ck_assert_str_eq(c.address, "postmaster");
	ck_assert_str_eq(c.domain_key, "");
}
END_TEST

/* a wide alias fan-out is bounded */
START_TEST(test_expand_limit)
{
	struct dstr text;
	struct config *cf;
	struct router *r;
	struct route_list l;
	char *extra, why[256];
	int i, j;

	make_dir();
	dstr_init(&text, 0);
	/* big -> l0..l39, each l -> 40 addresses: 1600 finals */
	dstr_printf(&text, "big@example.test");
	for (i = 0; i < 40; i++)
		dstr_printf(&text, " l%d", i);
	dstr_printf(&text, "\n");
	for (i = 0; i < 40; i++) {
		dstr_printf(&text, "l%d@example.test", i);
		for (j = 0; j < 40; j++)
			dstr_printf(&text, " u%d.%d", i, j);
		dstr_printf(&text, "\n");
	}
	build_map("hash", "aliases", text.s);
	extra = xasprintf("alias_map = hash:%s/aliases\n", dir);
	cf = load_config(extra);
	r = open_router(cf);
	memset(&l, 0, sizeof(l));
	router_resolve(r, "big@example.test", &l, NULL);
	ck_assert_uint_lt(l.n, ROUTER_EXPAND_MAX + 1);
	ck_assert_uint_gt(l.n, ROUTER_EXPAND_MAX - 50);
	ck_assert_int_eq(l.v[l.n - 1].kind, ROUTE_BOUNCE);
	ck_assert_str_eq(l.v[l.n - 1].status, "5.5.3");
	ck_assert_int_eq(router_check_rcpt(r, "big@example.test", why, sizeof(why)), RCPT_ACCEPT);
	route_list_free(&l);
	router_close(r);
	config_free(cf);
	dstr_free(&text);
	free(extra);
	remove_dir();
}
END_TEST

/* a diamond-shaped alias graph: each alias is expanded once, so 15 levels
 * of two ways each cost 30 lookups, not 2^15 */
START_TEST(test_diamond)
{
	struct dstr text;
	struct config *cf;
	struct router *r;
	struct route_list l;
	char *extra;
	int i;

	make_dir();
	dstr_init(&text, 0);
	for (i = 0; i < 15; i++) {
		dstr_printf(&text, "a%d@example.test a%d, b%d\n", i, i + 1, i + 1);
		dstr_printf(&text, "b%d@example.test a%d b%d\n", i, i + 1, i + 1);
	}
	dstr_printf(&text, "a15@example.test end\nb15@example.test end\n");
	build_map("hash", "aliases", text.s);
	extra = xasprintf("alias_map = hash:%s/aliases\n", dir);
	cf = load_config(extra);
	r = open_router(cf);
	memset(&l, 0, sizeof(l));
	ck_assert_uint_eq(router_resolve(r, "a0@example.test", &l, NULL), 1);
	ck_assert_str_eq(l.v[0].address, "end@example.test");
	ck_assert_int_eq(l.v[0].via, VIA_NO_USER_MAP);
	route_list_free(&l);
	router_close(r);
	config_free(cf);
	dstr_free(&text);
	free(extra);
	remove_dir();
}
END_TEST

/* the trace: one node per address reached, in order, with the route */
START_TEST(test_trace)
{
	struct config *cf;
	struct router *r;
	struct route_list l;
	struct route_trace *t = NULL;
	size_t i;
	bool alias_note = false;

	make_dir();
	cf = standard("");
	r = open_router(cf);
	memset(&l, 0, sizeof(l));
	ck_assert_uint_eq(router_resolve(r, "self@example.test", &l, &t), 2);
	ck_assert_ptr_nonnull(t);
	ck_assert_str_eq(t->address, "self@example.test");
	ck_assert_int_eq(t->route, -1);
	for (i = 0; i < t->nnotes; i++)
		if (strstr(t->notes[i], "self@example.test -> self@example.test, alice"))
			alias_note = true;
	ck_assert(alias_note);
	ck_assert_uint_eq(t->nsub, 2);
	ck_assert_str_eq(t->sub[0]->address, "self@example.test");
	ck_assert_int_eq(t->sub[0]->route, 0);
	ck_assert_str_eq(t->sub[1]->address, "alice@example.test");
	ck_assert_int_eq(t->sub[1]->route, 1);
	route_trace_free(t);
	/* a bad address still gets a trace */
	t = NULL;
	ck_assert_uint_eq(router_resolve(r, "nodomain", &l, &t), 1);
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(l.v[0].kind, ROUTE_BOUNCE);
	ck_assert_str_eq(l.v[0].status, "5.1.3");
	route_trace_free(t);
	route_list_free(&l);
	router_close(r);
	config_free(cf);
	remove_dir();
}
END_TEST

static const struct {
	const char *address;
	bool json;
	int status;
	const char *has[4];
} explain_cases[] = {
	{ "alice+x@example.test", false, 0,
	  { "canonical: alice+x@example.test (without extension: alice@example.test)",
	    "node_map btree:", "=> alice+x@example.test: local, node node-a (user_map), "
	    "endpoints lmtp:[127.0.0.1]:24", "rcpt: 250 2.1.5 accept" } },
	{ "<info@example.test>", false, 0,
	  { "alias_map hash:", "info@example.test -> alice, bob@example.test",
	    "\n      bob@example.test\n", "rcpt: 250 2.1.5" } },
	{ "fwd@example.test", false, 0,
	  { "domain remote.test is not local", "someone@remote.test: remote by SMTP", NULL } },
	{ "ghost@example.test", false, 1,
	  { "no entry for ghost@example.test or @example.test",
	    "ghost@example.test: bounce 5.1.1 user unknown", "rcpt: 550 5.1.1 unknown user" } },
	{ "x@remote.test", false, 1, { "rcpt: 554 5.7.1 relay denied", NULL } },
	{ "orphan@example.test", false, 2, { "rcpt: 451 4.3.0 temporary failure", NULL } },
	{ "not an address", false, 1, { "not an address: ", NULL } },
	{ "carol@example.test", true, 0,
	  { "\"kind\": \"local\", \"via\": \"user_map\", \"node\": null",
	    "{\"endpoint\": \"lmtp:unix:/run/carol.sock\", \"path\": \"/run/carol.sock\"}",
	    "\"rcpt\": {\"reply\": \"250 2.1.5\", \"verdict\": \"accept\"", NULL } },
	{ "mixed@example.test", true, 0,
	  { "\"targets\": [{\"address\": \"alice@example.test\"",
	    "\"kind\": \"bounce\"", "\"status\": \"5.1.1\"", NULL } },
	{ "a\"b@example.test", true, 1, { "{\"address\": \"a\\\"b@example.test\", \"error\": ", NULL } },
};

START_TEST(test_explain)
{
	struct config *cf;
	char *buf = NULL;
	size_t len = 0, i;
	FILE *out;
	int rc;

	make_dir();
	cf = standard("");
	out = open_memstream(&buf, &len);
	rc = router_explain(cf, explain_cases[_i].address, explain_cases[_i].json, out);
	fclose(out);
	ck_assert_msg(rc == explain_cases[_i].status, "%s: exit %d\n%s",
		      explain_cases[_i].address, rc, buf);
	for (i = 0; i < 4 && explain_cases[_i].has[i]; i++)
		ck_assert_msg(strstr(buf, explain_cases[_i].has[i]) != NULL,
			      "%s: no \"%s\" in\n%s", explain_cases[_i].address,
			      explain_cases[_i].has[i], buf);
	free(buf);
	config_free(cf);
	remove_dir();
}
END_TEST

static Suite *
router_suite(void)
{
	Suite *s = suite_create("router");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_resolve, 0, sizeof(resolve_cases) / sizeof(resolve_cases[0]));
	tcase_add_test(tc, test_reasons);
	tcase_add_loop_test(tc, test_failover, 0,
			    sizeof(failover_cases) / sizeof(failover_cases[0]));
	tcase_add_test(tc, test_open_errors);
	tcase_add_test(tc, test_no_maps);
	tcase_add_test(tc, test_smtputf8_rcpt);
	tcase_add_test(tc, test_smtputf8_failover);
	tcase_add_test(tc, test_aliases_only);
	tcase_add_test(tc, test_missing_map);
	tcase_add_test(tc, test_reload);
	tcase_add_test(tc, test_broken_map);
	tcase_add_test(tc, test_build_atomic);
	tcase_add_loop_test(tc, test_endpoint, 0,
			    sizeof(endpoint_cases) / sizeof(endpoint_cases[0]));
	tcase_add_test(tc, test_endpoint_list);
	tcase_add_loop_test(tc, test_canon, 0, sizeof(canon_cases) / sizeof(canon_cases[0]));
	tcase_add_test(tc, test_canon_limits);
	tcase_add_test(tc, test_expand_limit);
	tcase_add_test(tc, test_diamond);
	tcase_add_test(tc, test_trace);
	tcase_add_loop_test(tc, test_explain, 0, sizeof(explain_cases) / sizeof(explain_cases[0]));
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(router_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
