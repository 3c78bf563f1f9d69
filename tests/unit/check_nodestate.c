/*
 * check_nodestate.c - unit tests for the node records (queue/nodestate.c)
 * and the drained-nodes file (queue/drainfile.c): the codec against a
 * table of lines (accepted with what they say, or refused with the
 * reason), error text made printable on the way out, and the file's life:
 * a missing file is an empty set, a saved set reads back the same, a
 * damaged file is an error (never "nothing drained"), no temporary file
 * is left behind.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/lib.h"
#include "router/router.h"
#include "queue/queue.h"

#define N_(t) ((int)(sizeof(t) / sizeof((t)[0])))
#define S(s) s, sizeof(s) - 1

/* each record as the writer writes it, ';' for its LF, or "ERR:why" */
static void
render(const char *text, size_t len, struct dstr *out)
{
	struct nodestate_source src;
	struct nodestate_rec r;
	char err[256];
	int rc;

	dstr_init(out, 0);
	dstr_append(out, "", 0);
	nodestate_source_init(&src, text, len);
	while ((rc = nodestate_next(&src, &r, err, sizeof(err))) == 1) {
		struct dstr line;

		dstr_init(&line, 0);
		nodestate_format(&r, &line);
		line.s[--line.len] = '\0';
		dstr_printf(out, "%s;", line.s);
		dstr_free(&line);
	}
	if (rc < 0)
		dstr_printf(out, "ERR:%s", err);
}

static const struct {
	const char *text;
	size_t len;
	const char *want;
} cases[] = {
	{ S(""), "" },
	{ S("# comment\n\n"), "" },
	{ S("node node-a\n"), "node node-a;" },
	{ S("drained node-a 1700000000\n"), "drained node-a 1700000000;" },
	{ S("endpoint node-a lmtp:[127.0.0.1]:24 up 1234 1700000000\n"),
	  "endpoint node-a lmtp:[127.0.0.1]:24 up 1234 1700000000;" },
	{ S("endpoint n lmtp:unix:/run/lmtp down 0 5 connect to unix:/run/lmtp: No such file\n"),
	  "endpoint n lmtp:unix:/run/lmtp down 0 5 connect to unix:/run/lmtp: No such file;" },
	{ S("endpoint n lmtp:[127.0.0.1]:24 unknown 0 0\nnode m\n"),
	  "endpoint n lmtp:[127.0.0.1]:24 unknown 0 0;node m;" },
	{ S("node a"), "ERR:line 1: last line has no newline" },
	{ S("nodes a\n"), "ERR:line 1: unknown record type" },
	{ S("node  a\n"), "ERR:line 1: bad node name" },
	{ S("node a \n"), "ERR:line 1: stray bytes at the end" },
	{ S("node a b\n"), "ERR:line 1: stray bytes at the end" },
	{ S("node a\tb\n"), "ERR:line 1: control or 8-bit byte" },
	{ S("node \xc3\xa9\n"), "ERR:line 1: control or 8-bit byte" },
	{ S("node 01234567890123456789012345678901234567890123456789012345678901234\n"),
	  "ERR:line 1: bad node name" },
	{ S("drained a\n"), "ERR:line 1: bad time" },
	{ S("drained a 01\n"), "ERR:line 1: bad time" },
	{ S("drained a 99999999999999999999\n"), "ERR:line 1: bad time" },
	{ S("drained a 1 x\n"), "ERR:line 1: stray bytes at the end" },
	{ S("endpoint a lmtp:[127.0.0.1] up 1 1\n"),
	  "ERR:line 1: endpoint not in its canonical form" },
	{ S("endpoint a lmtp:[127.0.0.1]:24 sideways 1 1\n"), "ERR:line 1: bad state" },
	{ S("endpoint a lmtp:[127.0.0.1]:24 up x 1\n"), "ERR:line 1: bad latency" },
	{ S("endpoint a lmtp:[127.0.0.1]:24 up 1\n"), "ERR:line 1: bad probe time" },
	{ S("endpoint a lmtp:[127.0.0.1]:24 up 1 1 \n"), "ERR:line 1: stray space" },
	{ S("endpoint a lmtp:[127.0.0.1]:24 up 1 1  x\n"), "ERR:line 1: stray space" },
	{ S("endpoint a bogus up 1 1\n"), "ERR:line 1: bad endpoint" },
	{ S("node a\nnode b\nx\n"), "node a;node b;ERR:line 3: unknown record type" },
};

START_TEST(test_codec)
{
	struct dstr got;

	render(cases[_i].text, cases[_i].len, &got);
	ck_assert_msg(strcmp(got.s, cases[_i].want) == 0, "case %d: got \"%s\", want \"%s\"", _i,
		      got.s, cases[_i].want);
	dstr_free(&got);
}
END_TEST

/* the writer makes any error text readable again */
START_TEST(test_error_text)
{
	struct nodestate_rec r, back;
	struct nodestate_source src;
	struct dstr d;
	char err[256];

	memset(&r, 0, sizeof(r));
	r.type = NSR_ENDPOINT;
	strcpy(r.node, "node-a");
	strcpy(r.endpoint, "lmtp:[::1]:24");
	r.health = NODE_EP_DOWN;
	r.since = 7;
	strcpy(r.error, "  bad\r\nbytes \xff here  ");
	dstr_init(&d, 0);
	nodestate_format(&r, &d);
	ck_assert_str_eq(d.s, "endpoint node-a lmtp:[::1]:24 down 0 7 bad??bytes ? here\n");
	nodestate_source_init(&src, d.s, d.len);
	ck_assert_int_eq(nodestate_next(&src, &back, err, sizeof(err)), 1);
	ck_assert_str_eq(back.error, "bad??bytes ? here");
	ck_assert_int_eq(back.health, NODE_EP_DOWN);
	dstr_free(&d);
}
END_TEST

static char dir[] = "/tmp/check_nodestate.XXXXXX";

START_TEST(test_file)
{
	struct drainset d, back;
	char err[512], path[4096];
	FILE *f;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_eq(drainset_load(dir, &d, err, sizeof(err)), 0);
	ck_assert_uint_eq(d.n, 0);
	ck_assert(drainset_set(&d, "node-a", true, 100));
	ck_assert(!drainset_set(&d, "node-a", true, 200));
	ck_assert(drainset_set(&d, "node-b", true, 300));
	ck_assert_int_eq(drainset_save(dir, &d), 0);
	ck_assert_int_eq(drainset_load(dir, &back, err, sizeof(err)), 0);
	ck_assert_uint_eq(back.n, 2);
	ck_assert_uint_eq(drainset_find(&back, "node-a")->since, 100);
	ck_assert_uint_eq(drainset_find(&back, "node-b")->since, 300);
	ck_assert_ptr_null(drainset_find(&back, "node-c"));
	drainset_free(&back);
	ck_assert(drainset_set(&d, "node-a", false, 0));
	ck_assert(!drainset_set(&d, "node-a", false, 0));
	ck_assert_int_eq(drainset_save(dir, &d), 0);
	ck_assert_int_eq(drainset_load(dir, &back, err, sizeof(err)), 0);
	ck_assert_uint_eq(back.n, 1);
	ck_assert_ptr_nonnull(drainset_find(&back, "node-b"));
	drainset_free(&back);
	drainset_free(&d);
	snprintf(path, sizeof(path), "%s/%s.tmp", dir, NODESTATE_FILE);
	ck_assert_int_ne(access(path, F_OK), 0);

	/* damaged: an error naming the file and the line, never an empty set */
	snprintf(path, sizeof(path), "%s/%s", dir, NODESTATE_FILE);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs("drained node-a 1\nnode node-b\n", f);
	fclose(f);
	ck_assert_int_eq(drainset_load(dir, &back, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "line 2: not a drained record") != NULL, "%s", err);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs("drained node-a", f);
	fclose(f);
	ck_assert_int_eq(drainset_load(dir, &back, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "line 1: last line has no newline") != NULL, "%s", err);
	unlink(path);
	rmdir(dir);
}
END_TEST

static Suite *
nodestate_suite(void)
{
	Suite *s = suite_create("nodestate");
	TCase *tc = tcase_create("core");

	tcase_add_loop_test(tc, test_codec, 0, N_(cases));
	tcase_add_test(tc, test_error_text);
	tcase_add_test(tc, test_file);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(nodestate_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
