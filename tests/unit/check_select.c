/*
 * check_select.c - unit tests for queue selection (queue/select.c): the
 * command-line options and their errors, the control request codec (every
 * selection round-trips; malformed, out-of-order, repeated or needlessly
 * escaped forms are refused), and the match of a queue file against each
 * selector: globs, the null sender, pending recipients only, one and the
 * same recipient for --rcpt, --domain and --node together, ages, states.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "queue/queue.h"

#define N_(t) ((int)(sizeof(t) / sizeof((t)[0])))
#define HOUR 3600000000ULL

/* ---- options ---- */

static const struct {
	const char *name, *value;
	int rc;
	const char *err;        /* for rc != 0 */
} optcases[] = {
	{ "--sender", "*@remote.test", 0, NULL },
	{ "--rcpt", "alice@*", 0, NULL },
	{ "--node", "node-a", 0, NULL },
	{ "--domain", "example.org", 0, NULL },
	{ "--older-than", "2h", 0, NULL },
	{ "--older-than", "90", 0, NULL },
	{ "--younger-than", "15m", 0, NULL },
	{ "--younger-than", "3d", 0, NULL },
	{ "--state", "deferred", 0, NULL },
	{ "--state", "active,hold", 0, NULL },
	{ "--older-than", "2x", -1, "--older-than: '2x' is not an age (90, 90s, 15m, 2h, 3d)" },
	{ "--older-than", "h", -1, "--older-than: 'h' is not an age (90, 90s, 15m, 2h, 3d)" },
	{ "--older-than", "-5m", -1, "--older-than: '-5m' is not an age (90, 90s, 15m, 2h, 3d)" },
	{ "--younger-than", "1hh", -1,
	  "--younger-than: '1hh' is not an age (90, 90s, 15m, 2h, 3d)" },
	{ "--older-than", "99999999999999d", -1,
	  "--older-than: '99999999999999d' is not an age (90, 90s, 15m, 2h, 3d)" },
	{ "--state", "bounced", -1, "--state: 'bounced' is not active, deferred or hold" },
	{ "--state", "hold,", -1, NULL },
	{ "--state", ",", -1, NULL },
	{ "--state", "", -1, "--state: no state given" },
	{ "--all", "x", 1, "unknown option --all" },
};

START_TEST(test_options)
{
	struct qselect s;
	char err[256] = "";
	int rc;

	qselect_init(&s);
	rc = qselect_option(&s, optcases[_i].name, optcases[_i].value, err, sizeof(err));
	ck_assert_msg(rc == optcases[_i].rc, "%s %s: %d (%s)", optcases[_i].name,
		      optcases[_i].value, rc, err);
	if (optcases[_i].err != NULL)
		ck_assert_str_eq(err, optcases[_i].err);
	if (rc == 0)
		ck_assert(!qselect_empty(&s));
	qselect_free(&s);
}
END_TEST

START_TEST(test_option_twice)
{
	struct qselect s;
	char err[256];

	qselect_init(&s);
	ck_assert(qselect_empty(&s));
	ck_assert_int_eq(qselect_option(&s, "--sender", "a", err, sizeof(err)), 0);
	ck_assert_int_eq(qselect_option(&s, "--sender", "b", err, sizeof(err)), -1);
	ck_assert_str_eq(err, "--sender given twice");
	ck_assert_int_eq(qselect_option(&s, "--state", "hold", err, sizeof(err)), 0);
	ck_assert_int_eq(qselect_option(&s, "--state", "hold", err, sizeof(err)), -1);
	ck_assert_int_eq(qselect_option(&s, "--older-than", "1", err, sizeof(err)), 0);
	ck_assert_int_eq(qselect_option(&s, "--older-than", "1", err, sizeof(err)), -1);
	ck_assert(qselect_is_option("--younger-than"));
	ck_assert(!qselect_is_option("--json"));
	qselect_free(&s);
}
END_TEST

/* ---- the codec ---- */

static const char *const roundtrips[][2] = {
	/* option list ("name=value;..."), expected encoding */
	{ "", "-" },
	{ "--sender=*@remote.test", "sender=*@remote.test" },
	{ "--sender=a b%c&d=e", "sender=a%20b%25c%26d%3De" },
	{ "--rcpt=j\xc3\xbcrgen@*", "rcpt=j%C3%BCrgen@*" },
	{ "--state=hold,active;--node=n1;--older-than=2h",
	  "node=n1&older=7200&state=active,hold" },
	{ "--younger-than=0;--domain=*.org;--sender=<>", "sender=<>&domain=*.org&younger=0" },
};

static void
apply_list(struct qselect *s, const char *list)
{
	char *copy = xstrdup(list), *save = NULL, *tok, *eq, err[256];

	for (tok = strtok_r(copy, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
		eq = strchr(tok, '=');
		*eq = '\0';
		ck_assert_msg(qselect_option(s, tok, eq + 1, err, sizeof(err)) == 0, "%s", err);
	}
	free(copy);
}

START_TEST(test_roundtrip)
{
	struct qselect s, back;
	struct dstr a, b;
	char err[256];

	qselect_init(&s);
	apply_list(&s, roundtrips[_i][0]);
	dstr_init(&a, 0);
	qselect_encode(&s, &a);
	ck_assert_str_eq(a.s, roundtrips[_i][1]);
	ck_assert_msg(strchr(a.s, ' ') == NULL, "a space in %s", a.s);
	ck_assert_msg(qselect_decode(a.s, a.len, &back, err, sizeof(err)) == 0, "%s: %s", a.s, err);
	dstr_init(&b, 0);
	qselect_encode(&back, &b);
	ck_assert_str_eq(a.s, b.s);
	ck_assert_int_eq(back.older_than, s.older_than);
	ck_assert_int_eq(back.younger_than, s.younger_than);
	ck_assert_uint_eq(back.states, s.states);
	dstr_free(&a);
	dstr_free(&b);
	qselect_free(&s);
	qselect_free(&back);
}
END_TEST

static const char *const malformed[] = {
	"", "sender", "sender=", "=x", "sender=a&", "&sender=a", "sender=a&&rcpt=b",
	"rcpt=a&sender=b",              /* out of order */
	"sender=a&sender=b",            /* twice */
	"bogus=1", "sender=a b", "sender=%2", "sender=%zz", "sender=%41",  /* 'A' needs no escape */
	"sender=%00", "sender=%4a%", "state=bounced", "older=1x", "older=-1", "--", "-x",
	"sender=\xc3\xbc",               /* raw 8-bit */
};

START_TEST(test_malformed)
{
	struct qselect s;
	char err[256] = "";

	ck_assert_msg(qselect_decode(malformed[_i], strlen(malformed[_i]), &s, err, sizeof(err)) < 0,
		      "accepted: %s", malformed[_i]);
	ck_assert(err[0] != '\0');
}
END_TEST

/* ---- matching ---- */

static const char *
nodes_of(void *arg, const char *rcpt, size_t i)
{
	(void)arg;
	/* alice and bob live on node-a, carol on node-b; an alias all@ reaches both */
	if (strncmp(rcpt, "all@", 4) == 0)
		return i == 0 ? "node-a" : i == 1 ? "node-b" : NULL;
	if (i > 0)
		return NULL;
	if (strncmp(rcpt, "alice@", 6) == 0 || strncmp(rcpt, "bob@", 4) == 0)
		return "node-a";
	if (strncmp(rcpt, "carol@", 6) == 0)
		return "node-b";
	return NULL;
}

static struct spool_rcpt rcpts1[] = {
	{ "alice@example.test", NULL, RCPT_PENDING, 0 },
	{ "carol@example.test", NULL, RCPT_DONE, 0 },
	{ "someone@remote.test", NULL, RCPT_PENDING, 0 },
};
static struct spool_rcpt rcpts2[] = {
	{ "all@example.test", NULL, RCPT_PENDING, 0 },
};

static const struct {
	const char *opts;
	int msg;                        /* 1: from Bob, 3 recipients, 2 h old; 2: <>, all@, 10 min */
	unsigned state;
	bool want;
} mcases[] = {
	{ "", 1, QSEL_DEFERRED, true },
	{ "--sender=BOB@Remote.TEST", 1, QSEL_DEFERRED, true },
	{ "--sender=*@remote.test", 1, QSEL_ACTIVE, true },
	{ "--sender=*@other.test", 1, QSEL_ACTIVE, false },
	{ "--sender=<>", 1, QSEL_ACTIVE, false },
	{ "--sender=<>", 2, QSEL_ACTIVE, true },
	{ "--sender=*", 2, QSEL_ACTIVE, true },
	{ "--sender=*@*", 2, QSEL_ACTIVE, false },
	{ "--rcpt=alice@*", 1, QSEL_ACTIVE, true },
	{ "--rcpt=carol@*", 1, QSEL_ACTIVE, false },              /* delivered already */
	{ "--rcpt=*@remote.test", 1, QSEL_ACTIVE, true },
	{ "--domain=remote.test", 1, QSEL_ACTIVE, true },
	{ "--domain=REMOTE.test", 1, QSEL_ACTIVE, true },
	{ "--domain=*.org", 1, QSEL_ACTIVE, false },
	{ "--node=node-a", 1, QSEL_ACTIVE, true },
	{ "--node=node-b", 1, QSEL_ACTIVE, false },               /* carol is done */
	{ "--node=node-b", 2, QSEL_ACTIVE, true },                /* through the alias */
	{ "--node=node-*", 2, QSEL_ACTIVE, true },
	/* one and the same recipient: alice is on node-a but not in remote.test */
	{ "--domain=remote.test;--node=node-a", 1, QSEL_ACTIVE, false },
	{ "--rcpt=alice@*;--node=node-a", 1, QSEL_ACTIVE, true },
	{ "--older-than=1h", 1, QSEL_ACTIVE, true },
	{ "--older-than=3h", 1, QSEL_ACTIVE, false },
	{ "--younger-than=3h", 1, QSEL_ACTIVE, true },
	{ "--younger-than=1h", 1, QSEL_ACTIVE, false },
	{ "--older-than=5m;--younger-than=15m", 2, QSEL_ACTIVE, true },
	{ "--state=deferred", 1, QSEL_DEFERRED, true },
	{ "--state=deferred", 1, QSEL_HOLD, false },
	{ "--state=hold,active", 1, QSEL_HOLD, true },
};

START_TEST(test_match)
{
	struct spool_msg m;
	struct qselect s;
	uint64_t now = 1700000000ULL * 1000000ULL;

	memset(&m, 0, sizeof(m));
	if (mcases[_i].msg == 1) {
		m.sender = (char *)"bob@remote.test";
		m.rcpts = rcpts1;
		m.nrcpt = N_(rcpts1);
		m.arrival_usec = now - 2 * HOUR;
	} else {
		m.sender = (char *)"";
		m.rcpts = rcpts2;
		m.nrcpt = N_(rcpts2);
		m.arrival_usec = now - 10 * 60 * 1000000ULL;
	}
	qselect_init(&s);
	apply_list(&s, mcases[_i].opts);
	ck_assert_msg(qselect_match(&s, mcases[_i].state, &m, now, nodes_of, NULL) == mcases[_i].want,
		      "%s on message %d: not %s", mcases[_i].opts, mcases[_i].msg,
		      mcases[_i].want ? "selected" : "left out");
	qselect_free(&s);
}
END_TEST

static Suite *
select_suite(void)
{
	Suite *s = suite_create("select");
	TCase *tc = tcase_create("core");

	tcase_add_loop_test(tc, test_options, 0, N_(optcases));
	tcase_add_test(tc, test_option_twice);
	tcase_add_loop_test(tc, test_roundtrip, 0, N_(roundtrips));
	tcase_add_loop_test(tc, test_malformed, 0, N_(malformed));
	tcase_add_loop_test(tc, test_match, 0, N_(mcases));
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(select_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
