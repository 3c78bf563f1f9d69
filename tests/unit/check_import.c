/*
 * check_import.c - unit tests for `sorterctl import` (queue/import.c): the
 * marker name codec (every state round-trips, malformed names are
 * refused), and queue_import() on spools in a temp dir: images copied byte
 * for byte under new ids, held mail into hold/, status files carried over,
 * torn files quarantined in the source, a second run with nothing to do,
 * each state an interrupted run can leave finished exactly once, and the
 * refusals (its own spool, a source a queue manager holds, no spool).
 */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/lib.h"
#include "queue/queue.h"

#define N_(t) ((int)(sizeof(t) / sizeof((t)[0])))

/* ---- marker names ---- */

START_TEST(test_marker_roundtrip)
{
	char name[IMPORT_MARKER_LEN + 1], o[QID_LEN + 1], n[QID_LEN + 1];

	import_marker_format("1K0Y2Z6DVR70", "1K0Y2Z6DVR7Z", _i, name);
	ck_assert_int_eq(import_marker_parse(name, o, n), _i);
	ck_assert_str_eq(o, "1K0Y2Z6DVR70");
	ck_assert_str_eq(n, "1K0Y2Z6DVR7Z");
	ck_assert_int_le(strlen(name), IMPORT_MARKER_LEN);
}
END_TEST

static const char *const bad_markers[] = {
	"",
	"1K0Y2Z6DVR70",
	"1K0Y2Z6DVR70.1K0Y2Z6DVR7Z",
	"1K0Y2Z6DVR70.1K0Y2Z6DVR7Z.",
	"1K0Y2Z6DVR70.1K0Y2Z6DVR7Z.corrupt",
	"1K0Y2Z6DVR70.1K0Y2Z6DVR7Z.deferred.x",
	"1K0Y2Z6DVR70.1K0Y2Z6DVR7Z.hol",
	"1K0Y2Z6DVR70-1K0Y2Z6DVR7Z.hold",
	"1K0Y2Z6DVR7I.1K0Y2Z6DVR7Z.hold",      /* I is no qid character */
	"1K0Y2Z6DVR70.1K0Y2Z6DVR7.hold",
	"1K0Y2Z6DVR70.1K0Y2Z6DVR7ZZ.hold",
	"1k0y2z6dvr70.1K0Y2Z6DVR7Z.hold",
};

START_TEST(test_marker_malformed)
{
	char o[QID_LEN + 1], n[QID_LEN + 1];

	ck_assert_int_eq(import_marker_parse(bad_markers[_i], o, n), -1);
}
END_TEST

/* ---- spools in a temp dir ---- */

static char top[256], src[300], dst[300];

static void
setup(void)
{
	snprintf(top, sizeof(top), "/tmp/check_import.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(top));
	snprintf(src, sizeof(src), "%s/peer", top);
	snprintf(dst, sizeof(dst), "%s/spool", top);
	ck_assert_int_eq(spool_prepare(src), 0);
	ck_assert_int_eq(spool_prepare(dst), 0);
	qid_init(QID_SLOT_CTL, 0);
}

static void
teardown(void)
{
	char cmd[300];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", top);
	ck_assert_int_eq(system(cmd), 0);
}

/* A queue file image with two recipients, the first one marked delivered;
 * with an id, it has that id record and a check record, as sorterd writes
 * them. */
static void
image_as(struct dstr *d, const char *tag, const char *id)
{
	const char *rcpts[] = { "alice@example.test", "bob@example.test" };
	struct spool_envelope env = {
		.id = id ? id : "0000000000A1", .arrival_usec = 1700000000000000ULL, .client = "127.0.0.1",
		.helo = "peer", .proto = "ESMTP", .sender = "sender@remote.test", .rcpts = rcpts,
		.nrcpt = 2,
	};
	unsigned char end[SPOOL_REC_HDR], check[SPOOL_CHECK_REC];
	char body[64];
	size_t len = (size_t)snprintf(body, sizeof(body), "Subject: %s\r\n\r\nhi\r\n", tag);

	dstr_init(d, 0);
	spool_encode_head(&env, len, d);
	spool_check_encode(check, crc32c(0, d->s, d->len), crc32c(0, body, len));
	dstr_append(d, body, len);
	if (id != NULL)
		dstr_append(d, check, sizeof(check));
	spool_encode_end(end);
	dstr_append(d, end, sizeof(end));
	{
		struct spool_msg m;
		char err[256];

		ck_assert_int_eq(spool_parse((unsigned char *)d->s, d->len, &m, err, sizeof(err)), 0);
		d->s[m.rcpts[0].type_offset] = SPOOL_REC_RCPT_DONE;
		spool_msg_free(&m);
	}
}

static void
image(struct dstr *d, const char *tag)
{
	image_as(d, tag, NULL);
}

static void
put(const char *dir, const char *sub, const char *name, const void *p, size_t n)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, name);
	ck_assert_ptr_nonnull(f = fopen(path, "wb"));
	ck_assert_uint_eq(fwrite(p, 1, n, f), n);
	fclose(f);
}

static char *
get(const char *dir, const char *sub, const char *name, size_t *n)
{
	char path[512], *buf = xmalloc(65536);
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, name);
	if ((f = fopen(path, "rb")) == NULL) {
		free(buf);
		return NULL;
	}
	*n = fread(buf, 1, 65536, f);
	fclose(f);
	return buf;
}

/* The names in dir/sub, sorted, joined by spaces into out. */
static int
names(const char *dir, const char *sub, char *out, size_t outlen)
{
	char path[512], *v[64];
	struct dirent *de;
	int n = 0, i;
	DIR *d;

	out[0] = '\0';
	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	if ((d = opendir(path)) == NULL)
		return 0;
	while ((de = readdir(d)) != NULL && n < 64)
		if (de->d_name[0] != '.')
			v[n++] = xstrdup(de->d_name);
	closedir(d);
	for (i = 1; i < n; i++)         /* insertion sort: a handful of names */
		for (int k = i; k > 0 && strcmp(v[k - 1], v[k]) > 0; k--) {
			char *t = v[k];

			v[k] = v[k - 1];
			v[k - 1] = t;
		}
	for (i = 0; i < n; i++) {
		snprintf(out + strlen(out), outlen - strlen(out), "%s%s", i ? " " : "", v[i]);
		free(v[i]);
	}
	return n;
}

static int
run(struct import_result *r, char *out, size_t outlen)
{
	char err[512];
	FILE *f;
	int rc;

	memset(out, 0, outlen);
	ck_assert_ptr_nonnull(f = fmemopen(out, outlen - 1, "w"));
	rc = queue_import(dst, src, f, r, err, sizeof(err));
	fclose(f);
	if (rc < 0)
		snprintf(out, outlen, "%s", err);
	return rc;
}

/* The new id "OLD -> NEW" gave old in out. */
static void
new_id_of(const char *out, const char *old, char newid[QID_LEN + 1])
{
	const char *p = strstr(out, old);

	ck_assert_msg(p != NULL, "%s not in \"%s\"", old, out);
	ck_assert_msg(strncmp(p + QID_LEN, " -> ", 4) == 0, "%s", out);
	memcpy(newid, p + QID_LEN + 4, QID_LEN);
	newid[QID_LEN] = '\0';
	ck_assert(qid_valid(newid));
}

START_TEST(test_import_states)
{
	struct import_result r;
	struct dstr a, b, c, t, u, v;
	char out[4096], l[1024], na[QID_LEN + 1], nb[QID_LEN + 1], nc[QID_LEN + 1], *got;
	char nt[QID_LEN + 1], p1[512], p2[512];
	const char *status = "attempts\t3\nwarned\t1\ndone\t1\tcarol@example.test\n";
	size_t n;

	image(&a, "a");
	image(&b, "b");
	image(&c, "c");
	put(src, "incoming", "1K0Y2Z6DVR70", a.s, a.len);
	put(src, "deferred", "1K0Y2Z6DVR71", b.s, b.len);
	put(src, "defer", "1K0Y2Z6DVR71", status, strlen(status));
	put(src, "hold", "1K0Y2Z6DVR72", c.s, c.len);
	put(src, "deferred", "1K0Y2Z6DVR73", b.s, b.len / 2);          /* torn */
	put(src, "tmp", "1K0Y2Z6DVR74", a.s, a.len);                   /* never acknowledged */
	/* from an older spool: committed in tmp/, its rename into incoming/ lost */
	image_as(&t, "t", "1K0Y2Z6DVR76");
	put(src, "tmp", "1K0Y2Z6DVR75", t.s, t.len);
	/* committed in a slot, its link into incoming/ lost; and a slot linked
	 * into deferred/, to be marked freed when its name goes */
	image_as(&u, "u", "1K0Y2Z6DVR78");
	put(src, "slots", "1K0Y2Z6DVR77", u.s, u.len);
	image_as(&v, "v", "1K0Y2Z6DVR7A");
	put(src, "slots", "1K0Y2Z6DVR79", v.s, v.len);
	snprintf(p1, sizeof(p1), "%s/slots/1K0Y2Z6DVR79", src);
	snprintf(p2, sizeof(p2), "%s/deferred/1K0Y2Z6DVR7A", src);
	ck_assert_int_eq(link(p1, p2), 0);

	ck_assert_int_eq(run(&r, out, sizeof(out)), 0);
	ck_assert_uint_eq(r.imported, 6);
	ck_assert_uint_eq(r.held, 1);
	ck_assert_uint_eq(r.quarantined, 1);
	ck_assert_uint_eq(r.failed, 0);
	ck_assert_uint_eq(r.resumed, 0);
	new_id_of(out, "1K0Y2Z6DVR70", na);
	new_id_of(out, "1K0Y2Z6DVR71", nb);
	new_id_of(out, "1K0Y2Z6DVR72", nc);
	new_id_of(out, "1K0Y2Z6DVR76", nt);
	ck_assert_ptr_nonnull(got = get(dst, "incoming", nt, &n));
	ck_assert(n == t.len && memcmp(got, t.s, n) == 0);
	free(got);
	dstr_free(&t);
	new_id_of(out, "1K0Y2Z6DVR78", nt);
	ck_assert_ptr_nonnull(got = get(dst, "incoming", nt, &n));
	ck_assert(n == u.len && memcmp(got, u.s, n) == 0);
	free(got);
	dstr_free(&u);
	new_id_of(out, "1K0Y2Z6DVR7A", nt);
	ck_assert_ptr_nonnull(got = get(dst, "incoming", nt, &n));
	ck_assert(n == v.len && memcmp(got, v.s, n) == 0);
	free(got);
	dstr_free(&v);
	/* both slots stay in the source, marked freed: its next start takes
	 * neither for a message */
	ck_assert_ptr_nonnull(got = get(src, "slots", "1K0Y2Z6DVR77", &n));
	ck_assert_int_eq(got[0], SPOOL_FREED);
	free(got);
	ck_assert_ptr_nonnull(got = get(src, "slots", "1K0Y2Z6DVR79", &n));
	ck_assert_int_eq(got[0], SPOOL_FREED);
	free(got);
	ck_assert_int_eq(slots_recover(src, false), 0);
	ck_assert_str_ne(na, nb);
	ck_assert_str_ne(nb, nc);
	ck_assert_ptr_null(strstr(out, "1K0Y2Z6DVR73"));
	ck_assert_ptr_nonnull(strstr(out, " (on hold)"));
	/* copied byte for byte: the delivered mark goes with it */
	ck_assert_ptr_nonnull(got = get(dst, "incoming", na, &n));
	ck_assert(n == a.len && memcmp(got, a.s, n) == 0);
	free(got);
	ck_assert_ptr_nonnull(got = get(dst, "incoming", nb, &n));
	ck_assert(n == b.len && memcmp(got, b.s, n) == 0);
	free(got);
	ck_assert_ptr_nonnull(got = get(dst, "hold", nc, &n));
	ck_assert(n == c.len && memcmp(got, c.s, n) == 0);
	free(got);
	ck_assert_ptr_nonnull(got = get(dst, "defer", nb, &n));
	ck_assert(n == strlen(status) && memcmp(got, status, n) == 0);
	free(got);
	ck_assert_int_eq(names(dst, "import", l, sizeof(l)), 0);
	/* the source keeps only what is not a message to import */
	ck_assert_int_eq(names(src, "incoming", l, sizeof(l)) + names(src, "deferred", l, sizeof(l)) +
			 names(src, "hold", l, sizeof(l)) + names(src, "defer", l, sizeof(l)) +
			 names(src, "importing", l, sizeof(l)), 0);
	names(src, "corrupt", l, sizeof(l));
	ck_assert_str_eq(l, "1K0Y2Z6DVR73");
	names(src, "tmp", l, sizeof(l));
	ck_assert_str_eq(l, "1K0Y2Z6DVR74");

	/* again: nothing to do */
	ck_assert_int_eq(run(&r, out, sizeof(out)), 0);
	ck_assert_uint_eq(r.imported + r.quarantined + r.failed, 0);
	ck_assert_str_eq(out, "");
	ck_assert_int_eq(names(dst, "incoming", l, sizeof(l)), 5);
	dstr_free(&a);
	dstr_free(&b);
	dstr_free(&c);
}
END_TEST

/* Each state a run killed between two steps leaves, finished by the next:
 * 0 marker only; 1 marker, copy and record; 2 marker and record (the copy
 * was made and is since delivered); 3 as 1 with the copy in incoming/. */
START_TEST(test_resume)
{
	static const char *const newids[] = { "1K0Y2Z6DVR8Z", "1K0Y2Z6DVR9Z", "1K0Y2Z6DVRAZ",
					      "1K0Y2Z6DVRBZ" };
	char out[4096], l[1024], marker[IMPORT_MARKER_LEN + 1], rec[512], *got;
	struct import_result r;
	struct dstr a;
	size_t n;
	int k = _i;

	image(&a, "a");
	snprintf(rec, sizeof(rec), "%s/importing", src);
	ck_assert_int_eq(mkdir(rec, 0700), 0);
	snprintf(rec, sizeof(rec), "%s/import", dst);
	ck_assert_int_eq(mkdir(rec, 0700), 0);
	import_marker_format("1K0Y2Z6DVR70", newids[k], 2, marker);
	put(src, "importing", marker, a.s, a.len);
	put(src, "defer", "1K0Y2Z6DVR70", "attempts\t1\n", 11);
	snprintf(rec, sizeof(rec), "%s/deferred/1K0Y2Z6DVR70\n", src);
	if (k == 1) {
		char name[QID_LEN + 8];

		snprintf(name, sizeof(name), "%s.msg", newids[k]);
		put(dst, "import", name, a.s, a.len);
	}
	if (k == 3)
		put(dst, "incoming", newids[k], a.s, a.len);
	if (k >= 1)
		put(dst, "import", newids[k], rec, strlen(rec));

	ck_assert_int_eq(run(&r, out, sizeof(out)), 0);
	ck_assert_uint_eq(r.imported, 1);
	ck_assert_uint_eq(r.resumed, 1);
	ck_assert_ptr_nonnull(strstr(out, newids[k]));
	ck_assert_int_eq(names(src, "importing", l, sizeof(l)) + names(src, "defer", l, sizeof(l)) +
			 names(dst, "import", l, sizeof(l)), 0);
	names(dst, "incoming", l, sizeof(l));
	if (k == 2) {
		ck_assert_str_eq(l, "");        /* not copied a second time */
	} else {
		ck_assert_str_eq(l, newids[k]);
		ck_assert_ptr_nonnull(got = get(dst, "incoming", newids[k], &n));
		ck_assert(n == a.len && memcmp(got, a.s, n) == 0);
		free(got);
	}
	/* the status went with a copy made by this run */
	ck_assert_int_eq(names(dst, "defer", l, sizeof(l)), k == 0 ? 1 : 0);
	ck_assert_int_eq(run(&r, out, sizeof(out)), 0);
	ck_assert_uint_eq(r.imported, 0);
	dstr_free(&a);
}
END_TEST

START_TEST(test_refused)
{
	char out[1024], path[512];
	struct import_result r;
	int fd;

	/* its own spool */
	ck_assert_int_eq(queue_import(dst, dst, stdout, &r, out, sizeof(out)), -1);
	ck_assert_ptr_nonnull(strstr(out, "own spool"));
	/* a queue manager runs on the source */
	snprintf(path, sizeof(path), "%s/qmgr.lock", src);
	ck_assert_int_ge(fd = open(path, O_RDWR | O_CREAT, 0600), 0);
	ck_assert_int_eq(flock(fd, LOCK_EX), 0);
	ck_assert_int_eq(run(&r, out, sizeof(out)), -1);
	ck_assert_ptr_nonnull(strstr(out, "a sorterd runs on it"));
	close(fd);
	ck_assert_int_eq(run(&r, out, sizeof(out)), 0);
	/* no spool at all */
	snprintf(path, sizeof(path), "%s/empty", top);
	ck_assert_int_eq(mkdir(path, 0700), 0);
	ck_assert_int_eq(queue_import(dst, path, stdout, &r, out, sizeof(out)), -1);
	ck_assert_ptr_nonnull(strstr(out, "not a sorter spool"));
}
END_TEST

static Suite *
import_suite(void)
{
	Suite *s = suite_create("import");
	TCase *tc = tcase_create("marker");
	TCase *fs = tcase_create("spool");

	tcase_add_loop_test(tc, test_marker_roundtrip, 0, IMPORT_NSTATES);
	tcase_add_loop_test(tc, test_marker_malformed, 0, N_(bad_markers));
	suite_add_tcase(s, tc);
	tcase_add_checked_fixture(fs, setup, teardown);
	tcase_add_test(fs, test_import_states);
	tcase_add_loop_test(fs, test_resume, 0, 4);
	tcase_add_test(fs, test_refused);
	suite_add_tcase(s, fs);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(import_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
