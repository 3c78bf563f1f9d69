/*
 * check_nodecaps.c - unit tests for the file of each LMTP endpoint's last
 * LHLO capabilities (router/nodecaps.c): the codec against a table of
 * lines (accepted with what they say, or refused with the reason), its
 * round trip, and the file's life: written only when something changed,
 * replaced atomically, seen by another reader at once, kept across a
 * restart of the writer, never left half-written.
 */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/lib.h"
#include "router/router.h"

#define N_(t) ((int)(sizeof(t) / sizeof((t)[0])))
#define S(s) s, sizeof(s) - 1

/* each entry as "ENDPOINT SINCE KEYWORDS;", or "ERR:why" */
static void
render(const char *text, size_t len, struct dstr *out)
{
	struct nodecaps_source src;
	struct nodecaps_entry e;
	char err[256];
	int rc;

	dstr_init(out, 0);
	dstr_append(out, "", 0);
	nodecaps_source_init(&src, text, len);
	while ((rc = nodecaps_next(&src, &e, err, sizeof(err))) == 1) {
		struct dstr line;

		dstr_init(&line, 0);
		nodecaps_format(&e, &line);
		line.s[--line.len] = '\0';      /* the LF */
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
	{ S("# a comment\n\n"), "" },
	{ S("lmtp:[127.0.0.1]:24 1700000000 PIPELINING SMTPUTF8\n"),
	  "lmtp:[127.0.0.1]:24 1700000000 PIPELINING SMTPUTF8;" },
	{ S("lmtp:[127.0.0.1]:24 5\n"), "lmtp:[127.0.0.1]:24 5;" },
	/* written back in one order, SIZE last */
	{ S("lmtp:node-a.example.test:2424 7 SIZE=1000 CHUNKING 8BITMIME DSN STARTTLS "
	    "ENHANCEDSTATUSCODES\n"),
	  "lmtp:node-a.example.test:2424 7 8BITMIME ENHANCEDSTATUSCODES DSN STARTTLS CHUNKING "
	  "SIZE=1000;" },
	{ S("lmtp:unix:/run/dovecot/lmtp 0 SIZE\n"), "lmtp:unix:/run/dovecot/lmtp 0 SIZE;" },
	{ S("lmtp:[::1]:24 1 SMTPUTF8\nlmtp:[::1]:25 2\n"),
	  "lmtp:[::1]:24 1 SMTPUTF8;lmtp:[::1]:25 2;" },
	/* keywords of a newer writer are skipped */
	{ S("lmtp:[::1]:24 1 XFUTURE SMTPUTF8 X-OTHER=1\n"), "lmtp:[::1]:24 1 SMTPUTF8;" },
	/* refused: the whole file then counts as nothing known */
	{ S("lmtp:[::1]:24 1 SMTPUTF8"), "ERR:line 1: last line has no newline" },
	{ S("lmtp:[::1]:24\n"), "ERR:line 1: no time after the endpoint" },
	{ S("lmtp:[::1]:24 x1\n"), "ERR:line 1: bad time" },
	{ S("lmtp:[::1]:24 99999999999999999999999\n"), "ERR:line 1: bad time" },
	{ S("lmtp:[::1]:24 1  SMTPUTF8\n"), "ERR:line 1: stray space" },
	{ S("lmtp:[::1]:24 1 SMTPUTF8 \n"), "ERR:line 1: stray space" },
	{ S("lmtp:[::1]:24 1 smtputf8\n"), "lmtp:[::1]:24 1 SMTPUTF8;" },
	{ S("lmtp:[::1]:24 1 bad!word\n"), "ERR:line 1: bad capability keyword" },
	{ S("lmtp:[::1]:24 1 SIZE=\n"), "ERR:line 1: bad SIZE value" },
	{ S("lmtp:[::1]:24 1 SIZE=0\n"), "ERR:line 1: bad SIZE value" },
	{ S("lmtp:[::1]:24 1 SIZE=12k\n"), "ERR:line 1: bad SIZE value" },
	{ S("smtp:[192.0.2.1]:25 1\n"), "ERR:line 1: not an lmtp endpoint" },
	{ S("garbage 1\n"), "ERR:line 1: not an lmtp endpoint" },
	{ S("lmtp:[127.0.0.1] 1\n"), "ERR:line 1: endpoint not in its canonical form" },
	{ S("LMTP:[::1]:24 1\n"), "ERR:line 1: endpoint not in its canonical form" },
	{ S("lmtp:[::1]:24 1\nlmtp:[::1]:24 1 \xc3\xa4\n"),
	  "lmtp:[::1]:24 1;ERR:line 2: control or 8-bit byte" },
	{ S("lmtp:[::1]:24 1\r\n"), "ERR:line 1: control or 8-bit byte" },
	{ S("lmtp:[::1]:24 1\0\n"), "ERR:line 1: control or 8-bit byte" },
};

START_TEST(test_codec)
{
	struct dstr out;

	render(cases[_i].text, cases[_i].len, &out);
	ck_assert_msg(strcmp(out.s, cases[_i].want) == 0, "case %d: got \"%s\", want \"%s\"",
		      _i, out.s, cases[_i].want);
	dstr_free(&out);
}
END_TEST

START_TEST(test_line_limit)
{
	struct dstr text, out;
	char want[64];

	dstr_init(&text, 0);
	dstr_printf(&text, "lmtp:[::1]:24 1");
	while (text.len <= NODECAPS_LINE_MAX)
		dstr_printf(&text, " X");
	dstr_printf(&text, "\n");
	render(text.s, text.len, &out);
	snprintf(want, sizeof(want), "ERR:line 1: line too long");
	ck_assert_str_eq(out.s, want);
	dstr_free(&out);
	dstr_free(&text);
}
END_TEST

/* ---- the file ---- */

static char dir[64];

static void
make_dir(void)
{
	snprintf(dir, sizeof(dir), "/tmp/check_nodecaps.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void
remove_dir(void)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char path[512];

	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		unlink(path);
	}
	closedir(d);
	rmdir(dir);
}

static struct endpoint
ep_of(const char *spec)
{
	struct endpoint ep;
	const char *why;

	ck_assert_int_eq(endpoint_parse(spec, strlen(spec), &ep, &why), 0);
	return ep;
}

static size_t
files(void)
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

START_TEST(test_file)
{
	struct nodecaps *w, *rd, *w2;
	struct endpoint a = ep_of("lmtp:[127.0.0.1]:2401"), b = ep_of("lmtp:node-b.test:24");
	struct endpoint s = ep_of("smtp:[127.0.0.1]:25");
	struct ehlo_caps with, without;
	struct stat st1, st2;
	char *path;

	make_dir();
	path = xasprintf("%s/%s", dir, NODECAPS_FILE);
	memset(&with, 0, sizeof(with));
	with.pipelining = with.smtputf8 = true;
	without = with;
	without.smtputf8 = false;

	w = nodecaps_open(dir);
	rd = nodecaps_open(dir);
	nodecaps_load(w);                               /* no file yet: nothing known */
	ck_assert_int_eq(nodecaps_smtputf8(rd, &a), -1);
	ck_assert_int_eq(nodecaps_record(w, &a, &with, 100), 1);
	ck_assert_int_eq(nodecaps_smtputf8(rd, &a), 1);
	ck_assert_int_eq(nodecaps_smtputf8(rd, &b), -1);
	/* the same again: the file is left alone */
	ck_assert_int_eq(stat(path, &st1), 0);
	ck_assert_int_eq(nodecaps_record(w, &a, &with, 200), 0);
	ck_assert_int_eq(stat(path, &st2), 0);
	ck_assert(st1.st_ino == st2.st_ino && st1.st_mtim.tv_nsec == st2.st_mtim.tv_nsec);
	/* a change replaces it (a new inode: the reader notices within the second) */
	ck_assert_int_eq(nodecaps_record(w, &a, &without, 300), 1);
	ck_assert_int_eq(stat(path, &st2), 0);
	ck_assert(st1.st_ino != st2.st_ino);
	ck_assert_int_eq(nodecaps_smtputf8(rd, &a), 0);
	ck_assert_int_eq(nodecaps_record(w, &b, &with, 400), 1);
	ck_assert_int_eq(nodecaps_smtputf8(rd, &b), 1);
	/* SMTP endpoints are not recorded, nor asked about */
	ck_assert_int_eq(nodecaps_record(w, &s, &with, 500), 0);
	ck_assert_int_eq(nodecaps_smtputf8(rd, &s), -1);
	ck_assert_uint_eq(files(), 1);                  /* no temporary file left */
	nodecaps_close(w);

	/* a new writer (a restarted queue manager) starts from the file */
	w2 = nodecaps_open(dir);
	nodecaps_load(w2);
	ck_assert_int_eq(stat(path, &st1), 0);
	ck_assert_int_eq(nodecaps_record(w2, &a, &without, 600), 0);
	ck_assert_int_eq(stat(path, &st2), 0);
	ck_assert(st1.st_ino == st2.st_ino);
	ck_assert_int_eq(nodecaps_record(w2, &a, &with, 700), 1);
	ck_assert_int_eq(nodecaps_smtputf8(rd, &a), 1);
	ck_assert_int_eq(nodecaps_smtputf8(rd, &b), 1);
	nodecaps_close(w2);
	nodecaps_close(rd);
	free(path);
	remove_dir();
}
END_TEST

/* the table is bounded: the entry unchanged the longest makes room */
START_TEST(test_full)
{
	struct nodecaps *w, *rd;
	struct ehlo_caps caps;
	struct endpoint ep;
	char spec[64];
	int i;

	make_dir();
	memset(&caps, 0, sizeof(caps));
	w = nodecaps_open(dir);
	rd = nodecaps_open(dir);
	for (i = 0; i < NODECAPS_MAX; i++) {
		snprintf(spec, sizeof(spec), "lmtp:[10.0.%d.%d]:24", i / 256, i % 256);
		ep = ep_of(spec);
		ck_assert_int_eq(nodecaps_record(w, &ep, &caps, (unsigned long long)(1000 - i % 1000)), 1);
	}
	ep = ep_of("lmtp:[10.9.9.9]:24");
	caps.smtputf8 = true;
	ck_assert_int_eq(nodecaps_record(w, &ep, &caps, 5000), 1);
	ck_assert_int_eq(nodecaps_smtputf8(rd, &ep), 1);
	/* 10.0.3.231 (i = 999) had the smallest time, 1: it went */
	ep = ep_of("lmtp:[10.0.3.231]:24");
	ck_assert_int_eq(nodecaps_smtputf8(rd, &ep), -1);
	ep = ep_of("lmtp:[10.0.0.0]:24");
	ck_assert_int_eq(nodecaps_smtputf8(rd, &ep), 0);
	nodecaps_close(w);
	nodecaps_close(rd);
	remove_dir();
}
END_TEST

static Suite *
nodecaps_suite(void)
{
	Suite *s = suite_create("nodecaps");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_codec, 0, N_(cases));
	tcase_add_test(tc, test_line_limit);
	tcase_add_test(tc, test_file);
	tcase_add_test(tc, test_full);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(nodecaps_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
