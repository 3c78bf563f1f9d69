/*
 * check_stream.c - unit tests for the spool stream (queue/commit.c): a
 * message written in pieces as it arrives, with the writer's back-pressure
 * obeyed, commits to a file in incoming/ that the one queue-file reader
 * parses back byte for byte; an aborted one leaves nothing behind; the
 * buffers stay bounded whatever the message's size. For milters: a stream
 * flushed and read back, then committed as an edited message, into hold/
 * for a quarantine.
 */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/lib.h"
#include "queue/queue.h"

struct ctx {
	struct event_base *base;
	bool resumed, done;
	int error;
};

static void
on_resume(void *arg)
{
	struct ctx *c = arg;

	c->resumed = true;
	event_base_loopbreak(c->base);
}

static void
on_done(void *arg, int error)
{
	struct ctx *c = arg;

	c->done = true;
	c->error = error;
	event_base_loopbreak(c->base);
}

/* Whether the n content bytes of f at off are want's. */
static bool
content_is(const struct spool_file *f, size_t off, const void *want, size_t n)
{
	unsigned char *got = xmalloc(n + 1);
	bool same = spool_content_read(f->fd, &f->m, off, got, n) == 0 &&
	    memcmp(got, want, n) == 0;

	free(got);
	return same;
}

static char spool[] = "/tmp/check_stream.XXXXXX";

static void
setup(void)
{
	ck_assert_ptr_nonnull(mkdtemp(spool));
	ck_assert_int_eq(spool_prepare(spool), 0);
}

static void
teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", spool);
	ck_assert_int_eq(system(cmd), 0);
	strcpy(spool, "/tmp/check_stream.XXXXXX");
}

/* The names in directory path, but . and .. */
static size_t
entries(const char *path)
{
	struct dirent *e;
	size_t n = 0;
	DIR *d;

	ck_assert_ptr_nonnull(d = opendir(path));
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static size_t
count(const char *sub)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", spool, sub);
	return entries(path);
}

static void
head(struct dstr *h, const char *id)
{
	const char *rcpts[] = { "alice@example.test" };
	struct spool_envelope env = {
		.id = id, .arrival_usec = 1700000000000000ull, .client = "127.0.0.1", .helo = "c.test",
		.proto = "ESMTP", .sender = "s@remote.test", .rcpts = rcpts, .nrcpt = 1,
	};

	dstr_init(h, 0);
	spool_encode_head(&env, 0, h);
}

/* writes `total` bytes in pieces of `piece`, obeying back-pressure */
static void
stream_message(struct commit_pool *p, struct ctx *c, const char *id, size_t total,
	       size_t piece, bool commit, unsigned char **sent)
{
	struct spool_stream *st;
	struct dstr h;
	unsigned char *buf = xmalloc(total ? total : 1);
	size_t i, n;

	for (i = 0; i < total; i++)
		buf[i] = (unsigned char)("0123456789abcdef\r\n"[(i * 7) % 18]);
	head(&h, id);
	st = spool_stream_open(p, id, &h, on_resume, c);
	dstr_free(&h);
	for (i = 0; i < total; i += n) {
		n = total - i < piece ? total - i : piece;
		if (spool_stream_write(st, buf + i, n)) {
			c->resumed = false;
			while (!c->resumed)
				event_base_loop(c->base, EVLOOP_ONCE);
		}
	}
	ck_assert_uint_eq(spool_stream_content_len(st), total);
	c->done = false;
	if (commit)
		spool_stream_commit(st, on_done);
	else
		spool_stream_abort(st, on_done);
	while (!c->done)
		event_base_loop(c->base, EVLOOP_ONCE);
	*sent = buf;
}

static void
check_sizes(size_t total, size_t piece)
{
	struct ctx c = { 0 };
	struct commit_pool *p;
	struct spool_file f;
	unsigned char *sent;
	char id[QID_LEN + 1], path[256], err[256];

	c.base = event_base_new();
	p = commit_pool_create(c.base, spool, 2, 0);
	qid_next(id);
	stream_message(p, &c, id, total, piece, true, &sent);
	ck_assert_int_eq(c.error, 0);
	ck_assert_uint_eq(count("incoming"), 1);
	ck_assert_uint_eq(count("tmp"), 0);
	snprintf(path, sizeof(path), "%s/incoming/%s", spool, id);
	ck_assert_msg(spool_load(path, NULL, &f, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(f.m.content_len, total);
	ck_assert_uint_eq(f.m.nrcpt, 1);
	ck_assert(content_is(&f, 0, sent, total));
	spool_file_free(&f);
	unlink(path);
	free(sent);
	commit_pool_destroy(p);
	event_base_free(c.base);
}

START_TEST(test_sizes)
{
	static const size_t sizes[][2] = {
		{ 0, 1 }, { 1, 1 }, { 100, 7 }, { 65535, 16384 }, { 65536, 65536 },
		{ 65537, 1000 }, { 1 << 20, 16384 }, { 3 * (1 << 20) + 5, 12345 },
	};

	check_sizes(sizes[_i][0], sizes[_i][1]);
}
END_TEST

START_TEST(test_abort)
{
	struct ctx c = { 0 };
	struct commit_pool *p;
	unsigned char *sent;
	char id[QID_LEN + 1];
	size_t sizes[] = { 0, 10, 200000 };
	size_t i;

	c.base = event_base_new();
	p = commit_pool_create(c.base, spool, 2, 0);
	for (i = 0; i < 3; i++) {
		qid_next(id);
		stream_message(p, &c, id, sizes[i], 4096, false, &sent);
		free(sent);
		ck_assert_int_eq(c.error, 0);
		ck_assert_uint_eq(count("tmp"), 0);
		ck_assert_uint_eq(count("incoming"), 0);
	}
	commit_pool_destroy(p);
	event_base_free(c.base);
}
END_TEST

/* ---- read back and committed edited (milters) ---- */

struct rd {
	struct event_base *base;
	bool done;
	ssize_t got;
	unsigned char buf[70000];
};

static void
on_read(void *arg, const void *data, ssize_t got)
{
	struct rd *r = arg;

	r->done = true;
	r->got = got;
	if (got > 0)
		memcpy(r->buf, data, (size_t)got);
	event_base_loopbreak(r->base);
}

static void
read_at(struct spool_stream *st, struct rd *r, uint64_t off, size_t n)
{
	r->done = false;
	spool_stream_read(st, off, n, on_read, r);
	while (!r->done)
		event_base_loop(r->base, EVLOOP_ONCE);
}

/* A stream flushed, read back in pieces, then committed as an edited
 * message into a slot of its own: its new envelope, new header section and
 * the original body (copied from the stream's slot) or a new one; into
 * hold/ with a reason, and recovered there when that link is lost. */
static void
check_edit(bool new_body, const char *hold)
{
	struct ctx c = { 0 };
	struct rd *r = xcalloc(1, sizeof(*r));
	struct commit_pool *p;
	struct spool_stream *st;
	struct spool_edit *e;
	struct spool_file f;
	struct dstr h, prefix, body;
	const char *rcpts[] = { "bob@example.test", "carol@example.test" };
	char id[QID_LEN + 1], path[256], err[256];
	struct spool_envelope env = {
		.id = id, .arrival_usec = 1700000000000001ull, .client = "127.0.0.1", .helo = "c.test",
		.proto = "ESMTP", .sender = "new@remote.test", .rcpts = rcpts, .nrcpt = 2,
		.hold_reason = hold,
	};
	static const char hdrs[] = "Subject: old\r\nX-Drop: 1\r\n\r\n";
	unsigned char *content;
	size_t total = 200000, i, n;
	struct stat sb, sb2;
	int dfd;

	c.base = r->base = event_base_new();
	p = commit_pool_create(c.base, spool, 2, 0);
	content = xmalloc(total);
	memcpy(content, hdrs, sizeof(hdrs) - 1);
	for (i = sizeof(hdrs) - 1; i < total; i++)
		content[i] = (unsigned char)("0123456789abcdef\r\n"[(i * 5) % 18]);
	qid_next(id);
	head(&h, id);
	st = spool_stream_open(p, id, &h, on_resume, &c);
	dstr_free(&h);
	for (i = 0; i < total; i += n) {
		n = total - i < 7000 ? total - i : 7000;
		if (spool_stream_write(st, content + i, n)) {
			c.resumed = false;
			while (!c.resumed)
				event_base_loop(c.base, EVLOOP_ONCE);
		}
	}
	c.done = false;
	spool_stream_flush(st, on_done);
	while (!c.done)
		event_base_loop(c.base, EVLOOP_ONCE);
	ck_assert_int_eq(c.error, 0);
	/* read back: the start, a middle piece, the end, past the end */
	read_at(st, r, 0, 100);
	ck_assert_int_eq(r->got, 100);
	ck_assert(memcmp(r->buf, content, 100) == 0);
	read_at(st, r, 123456, 65535);
	ck_assert_int_eq(r->got, 65535);
	ck_assert(memcmp(r->buf, content + 123456, 65535) == 0);
	read_at(st, r, total - 10, 65535);
	ck_assert_int_eq(r->got, 10);
	read_at(st, r, total, 100);
	ck_assert_int_eq(r->got, 0);

	dstr_init(&prefix, 0);
	dstr_append(&prefix, "Subject: new\r\n\r\n", 16);
	dstr_init(&body, 0);
	dstr_append(&body, "a new body\r\n", 12);
	e = spool_edit_new(st, &env, &prefix, new_body ? &body : NULL, sizeof(hdrs) - 1);
	ck_assert_uint_eq(spool_edit_content_len(e),
			  16 + (new_body ? 12 : total - (sizeof(hdrs) - 1)));
	c.done = false;
	spool_stream_commit_edited(st, e, on_done);
	while (!c.done)
		event_base_loop(c.base, EVLOOP_ONCE);
	ck_assert_int_eq(c.error, 0);
	ck_assert_uint_eq(count("tmp"), 0);
	ck_assert_uint_eq(count(hold ? "hold" : "incoming"), 1);
	ck_assert_uint_eq(count(hold ? "incoming" : "hold"), 0);
	snprintf(path, sizeof(path), "%s/%s/%s", spool, hold ? "hold" : "incoming", id);
	ck_assert_msg(spool_load(path, NULL, &f, err, sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(f.m.sender, "new@remote.test");
	ck_assert_uint_eq(f.m.nrcpt, 2);
	if (hold)
		ck_assert_str_eq(f.m.hold_reason, hold);
	else
		ck_assert_ptr_null(f.m.hold_reason);
	ck_assert(content_is(&f, 0, "Subject: new\r\n\r\n", 16));
	if (new_body) {
		ck_assert_uint_eq(f.m.content_len, 28);
		ck_assert(content_is(&f, 16, "a new body\r\n", 12));
	} else {
		ck_assert_uint_eq(f.m.content_len, 16 + total - (sizeof(hdrs) - 1));
		ck_assert(content_is(&f, 16, content + sizeof(hdrs) - 1,
				     total - (sizeof(hdrs) - 1)));
	}
	spool_file_free(&f);
	/* the writer goes (its locks with it): a slot a live writer holds is
	 * never recovered from under it */
	commit_pool_destroy(p);
	/* a slot of its own, linked there */
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_uint_eq(sb.st_nlink, 2);
	if (hold) {
		/* its link lost: recovered into hold/, where it was going, not incoming/ */
		ck_assert_int_eq(unlink(path), 0);
		ck_assert_int_eq(slots_recover(spool, false), 1);
		ck_assert_uint_eq(count("incoming"), 0);
		ck_assert_uint_eq(count("hold"), 1);
		ck_assert_int_eq(stat(path, &sb2), 0);
		ck_assert_uint_eq(sb2.st_ino, sb.st_ino);
	}
	snprintf(path, sizeof(path), "%s/%s", spool, hold ? "hold" : "incoming");
	ck_assert_int_ge(dfd = open(path, O_RDONLY | O_DIRECTORY), 0);
	ck_assert_int_eq(spool_remove(dfd, id, false), 0);
	close(dfd);
	ck_assert_int_eq(slots_recover(spool, false), 0);
	dstr_free(&prefix);
	dstr_free(&body);
	free(content);
	event_base_free(c.base);
	free(r);
}

START_TEST(test_edit)
{
	check_edit(false, NULL);
	check_edit(true, NULL);
	check_edit(false, "milter inet:127.0.0.1:1: spam");
}
END_TEST

/* A slot of slots/ named name holding size bytes of 'x'; its inode. */
static ino_t
make_slot(const char *name, size_t size)
{
	char path[256];
	struct stat sb;
	unsigned char *old = xmalloc(size ? size : 1);
	int fd;

	memset(old, 'x', size);
	snprintf(path, sizeof(path), "%s/slots/%s", spool, name);
	ck_assert_int_ge(fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600), 0);
	ck_assert_int_eq(write(fd, old, size), (ssize_t)size);
	ck_assert_int_eq(fstat(fd, &sb), 0);
	close(fd);
	free(old);
	return sb.st_ino;
}

/*
 * Slots: a message is written over a free slot of slots/ (the same inode,
 * hard-linked into incoming/ under its id), its old bytes covered by a
 * padding record; a message bigger than the slot, or one leaving too
 * little room for the padding record's header, grows it to the next
 * RECYCLE_ROUND bytes; with no slot in slots/ a new one is made and padded
 * with zeros. Each loads as the message, whole.
 */
START_TEST(test_recycle)
{
	static const size_t totals[] = { 1000, 100000, 3000, 3000 };
	size_t total = totals[_i], end, want, old_size = 0;
	struct ctx c = { 0 };
	struct commit_pool *p;
	struct spool_file f;
	struct stat sb;
	struct dstr h;
	unsigned char *sent;
	char id[QID_LEN + 1], oldid[QID_LEN + 1], path[256], err[256];
	ino_t ino = 0;

	head(&h, "0000000000A1");       /* as long as any id's */
	/* the records end after the check record and the end marker */
	end = h.len + total + SPOOL_CHECK_REC + SPOOL_REC_HDR;
	dstr_free(&h);
	if (_i < 3) {
		old_size = _i == 0 ? 65536 : _i == 1 ? 16384 : end + 3;
		qid_next(oldid);
		ino = make_slot(oldid, old_size);
	}
	c.base = event_base_new();
	p = commit_pool_create(c.base, spool, 2, 0);
	qid_next(id);
	stream_message(p, &c, id, total, 4096, true, &sent);
	ck_assert_int_eq(c.error, 0);
	ck_assert_uint_eq(count("slots"), 1);
	ck_assert_uint_eq(count("tmp"), 0);
	snprintf(path, sizeof(path), "%s/incoming/%s", spool, id);
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_uint_eq(sb.st_nlink, 2);      /* incoming/ID and slots/NAME */
	if (_i < 3)
		ck_assert_uint_eq(sb.st_ino, ino);      /* the old file, written over */
	if (_i == 0)
		want = old_size;
	else
		want = (end + SPOOL_REC_HDR + RECYCLE_ROUND - 1) / RECYCLE_ROUND * RECYCLE_ROUND;
	ck_assert_uint_eq((uint64_t)sb.st_size, want);
	ck_assert_msg(spool_load(path, NULL, &f, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(f.m.content_len, total);
	ck_assert_uint_eq(f.m.file_size, want);
	ck_assert(content_is(&f, 0, sent, total));
	spool_file_free(&f);
	free(sent);
	commit_pool_destroy(p);
	event_base_free(c.base);
}
END_TEST

/* The name in sub of the file with inode ino, into name; false if none. */
static bool
name_of(const char *sub, ino_t ino, char name[QID_LEN + 1])
{
	char path[256];
	struct dirent *e;
	bool found = false;
	DIR *d;

	snprintf(path, sizeof(path), "%s/%s", spool, sub);
	ck_assert_ptr_nonnull(d = opendir(path));
	while ((e = readdir(d)) != NULL)
		if (e->d_ino == ino && strlen(e->d_name) == QID_LEN) {
			memcpy(name, e->d_name, QID_LEN + 1);
			found = true;
		}
	closedir(d);
	return found;
}

static ino_t
ino_of(const char *sub, const char *name)
{
	char path[256];
	struct stat sb;

	snprintf(path, sizeof(path), "%s/%s/%s", spool, sub, name);
	ck_assert_int_eq(stat(path, &sb), 0);
	return sb.st_ino;
}

static int
first_byte(const char *sub, const char *name)
{
	char path[256];
	unsigned char b;
	int fd;

	snprintf(path, sizeof(path), "%s/%s/%s", spool, sub, name);
	ck_assert_int_ge(fd = open(path, O_RDONLY), 0);
	ck_assert_int_eq(read(fd, &b, 1), 1);
	close(fd);
	return b;
}

/* Slots: a queued slot (two links) is never written; once the queue
 * manager's removal (spool_remove) marks it freed and unlinks its queue
 * name, the pool writes the next message over it. When a commit's link
 * is lost (a crash before it reached the disk), start-up's recovery finds
 * the committed message in its slot and links it again; a freed slot, a
 * slot's old content, a file whose check does not match, a file being
 * made and a slot whose id is queued under another file are never
 * recovered. */
START_TEST(test_slots_and_recovery)
{
	struct ctx c = { 0 };
	struct commit_pool *p;
	struct spool_file f;
	struct stat sb;
	unsigned char *sent, *bytes;
	char a[QID_LEN + 1], b[QID_LEN + 1], cc[QID_LEN + 1], slot[QID_LEN + 1];
	char name[QID_LEN + 1], path[256], err[256];
	ino_t only;
	int fd, ifd;

	qid_next(slot);
	only = make_slot(slot, 100);
	c.base = event_base_new();
	p = commit_pool_create(c.base, spool, 2, 0);
	qid_next(a);
	stream_message(p, &c, a, 5000, 1000, true, &sent);
	ck_assert_int_eq(c.error, 0);
	free(sent);
	ck_assert_uint_eq(ino_of("incoming", a), only);
	/* the only slot is queued: the next message gets a new one */
	qid_next(b);
	stream_message(p, &c, b, 300, 300, true, &sent);
	ck_assert_int_eq(c.error, 0);
	free(sent);
	ck_assert_uint_ne(ino_of("incoming", b), only);
	ck_assert_uint_eq(count("slots"), 2);
	/* delivered: marked freed, its name gone; the next message takes it */
	snprintf(path, sizeof(path), "%s/incoming", spool);
	ck_assert_int_ge(ifd = open(path, O_RDONLY | O_DIRECTORY), 0);
	ck_assert_int_eq(spool_remove(ifd, a, false), 0);
	ck_assert_int_eq(first_byte("slots", slot), SPOOL_FREED);
	ck_assert_uint_eq(count("incoming"), 1);
	qid_next(cc);
	stream_message(p, &c, cc, 2000, 700, true, &sent);
	ck_assert_int_eq(c.error, 0);
	ck_assert_uint_eq(ino_of("incoming", cc), only);
	ck_assert_uint_eq(count("slots"), 2);
	commit_pool_destroy(p);
	ck_assert_uint_eq(count("tmp"), 0);

	/* the link of cc lost: recovered, the same file, whole */
	ck_assert_int_eq(unlinkat(ifd, cc, 0), 0);
	/* a freed slot (a's old place is cc's now: make another) */
	qid_next(name);
	make_slot(name, 4096);
	snprintf(path, sizeof(path), "%s/slots/%s", spool, name);
	ck_assert_int_ge(fd = open(path, O_WRONLY), 0);
	bytes = (unsigned char *)"F";
	ck_assert_int_eq(pwrite(fd, bytes, 1, 0), 1);
	close(fd);
	/* b's slot, its link lost too, but with one byte of its content changed */
	ck_assert(name_of("slots", ino_of("incoming", b), name));
	ck_assert_int_eq(unlinkat(ifd, b, 0), 0);
	snprintf(path, sizeof(path), "%s/slots/%s", spool, name);
	ck_assert_msg(spool_load(path, NULL, &f, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_ge(fd = open(path, O_RDWR), 0);
	bytes = (unsigned char *)"#";
	ck_assert_int_eq(pwrite(fd, bytes, 1, (off_t)(f.m.content_offset + 100)), 1);
	close(fd);
	spool_file_free(&f);
	/* a file being made (zeros), and one bigger than a slot may stay */
	qid_next(name);
	snprintf(path, sizeof(path), "%s/slots/%s", spool, name);
	ck_assert_int_ge(fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600), 0);
	ck_assert_int_eq(ftruncate(fd, 4096), 0);
	close(fd);
	qid_next(name);
	make_slot(name, RECYCLE_FILE_MAX + 1);
	ck_assert_uint_eq(count("slots"), 5);
	ck_assert_uint_eq(count("incoming"), 0);

	/* one a live writer holds (its flock: an older sorterd's worker still
	 * finishing) is left to it, even committed */
	{
		char held[QID_LEN + 1];
		int hfd;

		ck_assert(name_of("slots", only, held));
		snprintf(path, sizeof(path), "%s/slots/%s", spool, held);
		ck_assert_int_ge(hfd = open(path, O_RDONLY), 0);
		ck_assert_int_eq(flock(hfd, LOCK_EX), 0);
		ck_assert_int_eq(slots_recover(spool, false), 0);
		ck_assert_uint_eq(count("incoming"), 0);
		close(hfd);
	}
	/* an import's recovery (no trim) leaves the free ones alone */
	ck_assert_int_eq(slots_recover(spool, false), 1);
	ck_assert_uint_eq(count("incoming"), 1);
	ck_assert_uint_eq(ino_of("incoming", cc), only);
	snprintf(path, sizeof(path), "%s/incoming/%s", spool, cc);
	ck_assert_msg(spool_load(path, NULL, &f, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(spool_check_verify(&f), 1);
	ck_assert_str_eq(f.m.qid, cc);
	ck_assert(content_is(&f, 0, sent, 2000));
	spool_file_free(&f);
	free(sent);
	ck_assert_uint_eq(count("slots"), 5);
	/* queued now: a second recovery finds nothing; the start's trims */
	ck_assert_int_eq(slots_recover(spool, true), 0);
	ck_assert_uint_eq(count("slots"), 4);
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_uint_eq(sb.st_nlink, 2);
	/* a committed slot whose id is queued under another file: not taken */
	ck_assert_int_eq(unlinkat(ifd, cc, 0), 0);
	ck_assert_int_ge(fd = openat(ifd, cc, O_WRONLY | O_CREAT | O_EXCL, 0600), 0);
	close(fd);
	ck_assert_int_eq(slots_recover(spool, true), 0);
	ck_assert_uint_eq(ino_of("incoming", cc) != only, 1);
	close(ifd);
	event_base_free(c.base);
}
END_TEST

/* A new slot of 100 bytes queued in active/ under a new id; returns
 * active/, open. */
static int
queued_slot(char slot[QID_LEN + 1], char id[QID_LEN + 1])
{
	char path[256];
	int dfd;

	snprintf(path, sizeof(path), "%s/active", spool);
	ck_assert_int_ge(dfd = open(path, O_RDONLY | O_DIRECTORY), 0);
	qid_next(slot);
	make_slot(slot, 100);
	qid_next(id);
	snprintf(path, sizeof(path), "%s/slots/%s", spool, slot);
	ck_assert_int_eq(linkat(AT_FDCWD, path, dfd, id, 0), 0);
	return dfd;
}

/* A queue name's removal: a slot's file is marked freed first (its first
 * byte), a file of one link is only unlinked. */
START_TEST(test_spool_remove)
{
	char id[QID_LEN + 1], id2[QID_LEN + 1], slot[QID_LEN + 1];
	int dfd, fd, keep;
	unsigned char byte;

	dfd = queued_slot(slot, id);
	ck_assert_int_eq(spool_remove(dfd, id, false), 0);
	ck_assert_int_eq(first_byte("slots", slot), SPOOL_FREED);
	qid_next(id2);
	ck_assert_int_ge(fd = openat(dfd, id2, O_WRONLY | O_CREAT | O_EXCL, 0600), 0);
	ck_assert_int_eq(write(fd, "V", 1), 1);
	close(fd);
	ck_assert_int_ge(keep = openat(dfd, id2, O_RDONLY), 0);
	ck_assert_int_eq(spool_remove(dfd, id2, false), 0);
	ck_assert_int_eq(pread(keep, &byte, 1, 0), 1);
	ck_assert_int_eq(byte, 'V');
	close(keep);
	ck_assert_uint_eq(count("active"), 0);
	ck_assert_int_eq(spool_remove(dfd, id2, false), -1);
	ck_assert_int_eq(errno, ENOENT);
	close(dfd);
}
END_TEST

/* A slot that cannot be opened to be marked (no descriptor left) keeps
 * its queue name: unmarked and nameless, a start-up would bring it back as
 * a message. Once it can be, it is marked (durably when asked) and goes. */
START_TEST(test_spool_remove_keeps_unmarkable)
{
	char id[QID_LEN + 1], slot[QID_LEN + 1];
	int dfd, fds[256];
	size_t n = 0, i;
	struct rlimit was, low;

	dfd = queued_slot(slot, id);
	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &was), 0);
	low = was;
	low.rlim_cur = 128;     /* few enough to run out of */
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
	while (n < sizeof(fds) / sizeof(fds[0]) && (fds[n] = dup(dfd)) >= 0)
		n++;
	ck_assert_int_eq(errno, EMFILE);
	ck_assert_int_eq(spool_remove(dfd, id, true), -1);
	ck_assert_int_eq(errno, EMFILE);
	for (i = 0; i < n; i++)
		close(fds[i]);
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &was), 0);
	ck_assert_uint_eq(count("active"), 1);
	ck_assert_int_ne(first_byte("slots", slot), SPOOL_FREED);
	ck_assert_int_eq(spool_remove(dfd, id, true), 0);
	ck_assert_int_eq(first_byte("slots", slot), SPOOL_FREED);
	ck_assert_uint_eq(count("active"), 0);
	close(dfd);
}
END_TEST

/* Two pools (two processes: an flock belongs to one open file) never
 * share a slot: one the first holds is not adopted by the second until
 * the first lets go of it (a worker that dies lets go of all of them);
 * an empty slot (an instant old, its maker about to lock it) is never
 * adopted at all. */
START_TEST(test_slots_two_pools)
{
	char path_of_empty[256];
	struct slots *a = slots_open(spool, 0), *b;
	struct slot_ref ra, rb, rb2;
	char name[QID_LEN + 1], n2[QID_LEN + 1], n3[QID_LEN + 1];
	int fd;

	qid_next(name);
	make_slot(name, 100);
	qid_next(n2);
	snprintf(n3, sizeof(n3), "%s", n2);
	ck_assert_int_eq(slot_take(a, n2, &ra), 0);
	ck_assert_str_eq(ra.name, name);        /* adopted, not made */
	ck_assert_uint_eq(ra.size, 100);
	/* b finds none free: it makes one (an empty file is not adopted) */
	qid_next(n2);
	snprintf(path_of_empty, sizeof(path_of_empty), "%s/slots/%s", spool, n2);
	ck_assert_int_ge(fd = open(path_of_empty, O_WRONLY | O_CREAT | O_EXCL, 0600), 0);
	close(fd);
	b = slots_open(spool, 0);
	qid_next(n3);
	ck_assert_int_eq(slot_take(b, n3, &rb), 0);
	ck_assert_str_eq(rb.name, n3);
	ck_assert_uint_eq(rb.size, 0);
	ck_assert_uint_eq(count("slots"), 3);
	/* a lets go (it closes, as a dead worker's locks go): b adopts its slot */
	slot_drop(a, &ra);
	slots_close(a);
	usleep(1100000);        /* b's scan that found none waits a second to look again */
	qid_next(n3);
	ck_assert_int_eq(slot_take(b, n3, &rb2), 0);
	ck_assert_str_eq(rb2.name, name);
	slot_drop(b, &rb);
	slot_drop(b, &rb2);
	slots_close(b);
	ck_assert_uint_eq(count("slots"), 3);
}
END_TEST

/* Every minute a writer unlinks the free slots no one holds beyond
 * RECYCLE_POOL_MAX, and any bigger than RECYCLE_FILE_MAX: a queue that
 * grew and drained keeps no more; a queued slot (two links) and one
 * another pool holds stay. */
START_TEST(test_slots_prune)
{
	struct slots *a = slots_open(spool, 0), *b = slots_open(spool, 0);
	struct slot_ref ra;
	char name[QID_LEN + 1], big[QID_LEN + 1], path[256], path2[256];
	size_t i;

	for (i = 0; i < RECYCLE_POOL_MAX + 5; i++) {
		qid_next(name);
		make_slot(name, 1);
	}
	qid_next(name);
	ck_assert_int_eq(slot_take(a, name, &ra), 0);   /* a holds one */
	qid_next(name);
	make_slot(name, 1);
	snprintf(path, sizeof(path), "%s/slots/%s", spool, name);
	snprintf(path2, sizeof(path2), "%s/incoming/%s", spool, name);
	ck_assert_int_eq(link(path, path2), 0);          /* queued */
	qid_next(big);
	make_slot(big, RECYCLE_FILE_MAX + 1);
	snprintf(path2, sizeof(path2), "%s/slots/%s", spool, big);
	slots_prune(b);
	ck_assert_int_eq(access(path2, F_OK), -1);      /* too big to keep */
	/* besides the held and the queued one, at most RECYCLE_POOL_MAX free
	 * ones (one fewer when the held one counted among them) */
	ck_assert_uint_le(count("slots"), RECYCLE_POOL_MAX + 2);
	ck_assert_uint_ge(count("slots"), RECYCLE_POOL_MAX + 1);
	ck_assert_int_eq(access(path, F_OK), 0);
	snprintf(path, sizeof(path), "%s/slots/%s", spool, ra.name);
	ck_assert_int_eq(access(path, F_OK), 0);
	slot_drop(a, &ra);
	slots_close(a);
	slots_close(b);
}
END_TEST

/* Takes a slot from pool s (new_name if one is made), writes 100 bytes
 * and links it into incoming/ (ifd) under a new id, into id. The slot's
 * name into name. */
static void
queue_one(struct slots *s, int ifd, char id[QID_LEN + 1], char name[QID_LEN + 1])
{
	static const char x[100] = { 'x' };
	struct slot_ref r;
	char new_name[QID_LEN + 1];

	qid_next(new_name);
	ck_assert_int_eq(slot_take(s, new_name, &r), 0);
	ck_assert_int_eq(pwrite(r.fd, x, sizeof(x), 0), (ssize_t)sizeof(x));
	memcpy(name, r.name, QID_LEN + 1);
	qid_next(id);
	ck_assert_int_eq(slot_link(s, &r, ifd, id), 0);
}

/* A pool keeps RECYCLE_OPEN of the slots it queued open, and knows the
 * ones after them by name: a queue deeper than that costs no more open
 * files, and every slot of it is written over again once the queue
 * manager lets go of it, with no new file made. A pool that knows
 * RECYCLE_KNOWN slots forgets the ones still queued and adopts a free
 * slot of slots/ rather than make one. */
START_TEST(test_slots_deep_queue)
{
	enum { N = RECYCLE_OPEN + 44 };
	static char ids[RECYCLE_KNOWN + 1][QID_LEN + 1];
	struct slots *a = slots_open(spool, 0), *b;
	char path[256], name[QID_LEN + 1], free_one[QID_LEN + 1];
	size_t fds, i;
	int ifd;

	snprintf(path, sizeof(path), "%s/incoming", spool);
	ck_assert_int_ge(ifd = open(path, O_RDONLY | O_DIRECTORY), 0);
	fds = entries("/proc/self/fd");
	for (i = 0; i < N; i++)
		queue_one(a, ifd, ids[i], name);
	ck_assert_uint_eq(count("slots"), N);
	ck_assert_uint_eq(entries("/proc/self/fd"), fds + RECYCLE_OPEN);     /* the others by name */
	for (i = 0; i < N; i++)                         /* delivered */
		ck_assert_int_eq(unlinkat(ifd, ids[i], 0), 0);
	for (i = 0; i < N; i++)
		queue_one(a, ifd, ids[i], name);
	ck_assert_uint_eq(count("slots"), N);           /* every one written over */
	ck_assert_uint_eq(count("incoming"), N);
	slots_close(a);

	/* b knows RECYCLE_KNOWN queued slots, and one more it made is queued */
	b = slots_open(spool, 0);
	for (i = 0; i < RECYCLE_KNOWN + 1; i++)
		queue_one(b, ifd, ids[i], name);
	qid_next(free_one);
	make_slot(free_one, 100);
	usleep(1100000);        /* b's scan that found none waits a second to look again */
	queue_one(b, ifd, ids[0], name);
	ck_assert_str_eq(name, free_one);               /* adopted, not made */
	ck_assert_uint_eq(count("slots"), N + RECYCLE_KNOWN + 2);
	slots_close(b);
	close(ifd);
}
END_TEST

/* Overwrites made durable at once share the device cache flush: a round
 * of SHARERS threads, each writing its own slot over and syncing it at the
 * same moment, takes fewer flushes than messages (one that finds others
 * still writing waits for them); each sync returns only once a flush that
 * started after its write completed is done, so the pool's flushed count
 * covers every overwrite. Only where slots are written over in place
 * (ext4 without data journaling, as /tmp is on the machines that run
 * this); elsewhere every sync is an fdatasync and no flush is counted. */
enum { SHARERS = 8, SHARE_ROUNDS = 20, SHARE_BYTES = 8192 };
static struct slots *share_pool;
static struct slot_ref share_refs[SHARERS];
static pthread_barrier_t share_barrier;

static void *
share_round(void *arg)
{
	struct slot_ref *ref = arg;
	static const char page[SHARE_BYTES] = { 'm' };

	pthread_barrier_wait(&share_barrier);
	if (pwrite(ref->fd, page, sizeof(page), 0) != (ssize_t)sizeof(page) ||
	    slot_sync(share_pool, ref) != 0)
		return (void *)1;
	return NULL;
}

START_TEST(test_shared_flush)
{
	pthread_t th[SHARERS];
	char name[QID_LEN + 1];
	uint64_t overwrites, flushes;
	void *failed;
	bool in_place;
	int r, i;

	share_pool = slots_open(spool, 0);
	for (i = 0; i < SHARERS; i++) {
		qid_next(name);
		ck_assert_int_eq(slot_take(share_pool, name, &share_refs[i]), 0);
	}
	/* each slot's first message is fdatasync'd: its length is then known durable */
	ck_assert_int_eq(pthread_barrier_init(&share_barrier, NULL, SHARERS), 0);
	for (r = 0; r <= SHARE_ROUNDS; r++) {
		for (i = 0; i < SHARERS; i++)
			ck_assert_int_eq(pthread_create(&th[i], NULL, share_round, &share_refs[i]), 0);
		for (i = 0; i < SHARERS; i++) {
			ck_assert_int_eq(pthread_join(th[i], &failed), 0);
			ck_assert_ptr_null(failed);
		}
	}
	pthread_barrier_destroy(&share_barrier);
	slots_flush_counts(share_pool, &overwrites, &flushes);
	in_place = share_refs[0].durable == SHARE_BYTES;
	if (in_place) {
		ck_assert_uint_eq(overwrites, SHARERS * SHARE_ROUNDS);
		ck_assert_uint_gt(flushes, 0);
		ck_assert_msg(flushes < overwrites / 2, "%llu flushes for %llu overwrites",
			      (unsigned long long)flushes, (unsigned long long)overwrites);
	} else {
		ck_assert_uint_eq(overwrites, 0);
		ck_assert_uint_eq(flushes, 0);
	}
	for (i = 0; i < SHARERS; i++)
		slot_drop(share_pool, &share_refs[i]);
	slots_close(share_pool);
}
END_TEST

/* The file whose fdatasync flushes the device's cache for overwrites is
 * SPOOL/flush/use, whose run of inode numbers (as many as one block of
 * the inode table can hold: f_bsize / 128) holds no slot, before or after
 * a fill: the slots' inodes, whose times change with every message, never
 * share its block, which an fsync on ext4 without a journal writes
 * whenever it is dirty. Every process uses the same file. A spool whose
 * SPOOL/flush is a file (the earlier layout) gets the folder. Only where
 * slots are written over in place (ext4 without data journaling, as /tmp
 * is where this runs); elsewhere there is no flush file at all. */
START_TEST(test_flush_file_alone)
{
	static char ids[200][QID_LEN + 1];
	char path[PATH_MAX], link[PATH_MAX], want[300];
	struct slots *a, *b;
	struct statfs sf;
	struct stat sb, fb;
	struct dirent *de;
	unsigned long run, mine = 0, slots = 0;
	ino_t ino = 0;
	size_t i;
	DIR *d;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/flush", spool);
	ck_assert_int_ge(fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600), 0);
	close(fd);
	a = slots_open(spool, 0);
	for (i = 0; i < 200; i++)
		qid_next(ids[i]);
	ck_assert_int_eq(slots_fill(spool, 0, ids, 200), 200);
	b = slots_open(spool, 0);       /* another process, after the fill */
	snprintf(want, sizeof(want), "%s/flush/use", spool);
	ck_assert_ptr_nonnull(d = opendir("/proc/self/fd"));
	while ((de = readdir(d)) != NULL) {
		snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
		if ((n = readlink(path, link, sizeof(link) - 1)) <= 0)
			continue;
		link[n] = '\0';
		if (strncmp(link, want, strlen(want)) == 0 && stat(link, &sb) == 0) {
			ck_assert(ino == 0 || ino == sb.st_ino);        /* both use one file */
			ino = sb.st_ino;
			mine++;
		}
	}
	closedir(d);
	snprintf(path, sizeof(path), "%s/slots", spool);
	ck_assert_int_eq(statfs(path, &sf), 0);
	snprintf(path, sizeof(path), "%s/flush", spool);
	ck_assert_int_eq(lstat(path, &fb), 0);
	if (mine == 0) {
		/* no file: slots are fdatasync'd here (not ext4) */
		ck_assert(sf.f_type != EXT4_SUPER_MAGIC || !S_ISDIR(fb.st_mode));
	} else {
		/* each pool's, and a copy for each pool's journal */
		ck_assert_uint_eq(mine, 4);
		ck_assert(S_ISDIR(fb.st_mode));
		ck_assert_int_eq(stat(want, &sb), 0);
		ck_assert_uint_eq(sb.st_ino, ino);
		run = (unsigned long)sf.f_bsize / 128;
		snprintf(path, sizeof(path), "%s/slots", spool);
		ck_assert_ptr_nonnull(d = opendir(path));
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			slots++;
			ck_assert_msg((de->d_ino - 1) / run != (ino - 1) / run,
				      "slot %s (inode %lu) in the run of the flush file (inode %lu)",
				      de->d_name, (unsigned long)de->d_ino, (unsigned long)ino);
		}
		closedir(d);
		/* nor a journal file */
		snprintf(path, sizeof(path), "%s/journal", spool);
		ck_assert_ptr_nonnull(d = opendir(path));
		while ((de = readdir(d)) != NULL)
			if (de->d_name[0] == 'j')
				ck_assert((de->d_ino - 1) / run != (ino - 1) / run);
		closedir(d);
		ck_assert_uint_eq(slots, 200);
	}
	slots_close(a);
	slots_close(b);
}
END_TEST

/* SP/flush/use, linked to an empty file whose inode is the first of its
 * run, made in SP/FOLDER (where the code under test makes its new files)
 * and moved into SP/flush/: ext4 gives a new file the lowest free inode of
 * its folder's group, so the files made next in FOLDER mostly land in that
 * run, as they could beside a flush file chosen by chance. The files made
 * before it go into SP/flush/ too (their inodes stay taken). */
static void
make_flush_use(const char *sp, const char *folder, struct stat *use)
{
	char path[PATH_MAX], made[PATH_MAX], kept[PATH_MAX];
	struct statfs sf;
	unsigned long run;
	int fd, i;

	snprintf(path, sizeof(path), "%s/flush", sp);
	ck_assert_int_eq(mkdir(path, 0700), 0);
	ck_assert_int_eq(statfs(path, &sf), 0);
	run = (unsigned long)sf.f_bsize / 128;
	for (i = 0; i < (int)(3 * run); i++) {
		snprintf(made, sizeof(made), "%s/%s/probe", sp, folder);
		ck_assert_int_ge(fd = open(made, O_WRONLY | O_CREAT | O_EXCL, 0600), 0);
		close(fd);
		ck_assert_int_eq(stat(made, use), 0);
		snprintf(kept, sizeof(kept), "%s/flush/%d", sp, i);
		ck_assert_int_eq(rename(made, kept), 0);
		if ((use->st_ino - 1) % run == 0)
			break;
	}
	snprintf(path, sizeof(path), "%s/flush/use", sp);
	ck_assert_int_eq(link(kept, path), 0);
}

/* SP/slots/ holds nslots slots, none in the run of the flush file (use);
 * returns how many files SP/flush/ holds set aside because they landed
 * there (never more than the run holds). */
static unsigned long
check_flush_run_alone(const char *sp, const struct stat *use, unsigned long nslots)
{
	char path[PATH_MAX];
	struct statfs sf;
	struct dirent *de;
	unsigned long run, slots = 0, kept = 0;
	DIR *d;

	snprintf(path, sizeof(path), "%s/slots", sp);
	ck_assert_int_eq(statfs(path, &sf), 0);
	run = (unsigned long)sf.f_bsize / 128;
	ck_assert_ptr_nonnull(d = opendir(path));
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		slots++;
		ck_assert_msg((de->d_ino - 1) / run != (use->st_ino - 1) / run,
			      "slot %s (inode %lu) in the run of the flush file (inode %lu)",
			      de->d_name, (unsigned long)de->d_ino, (unsigned long)use->st_ino);
	}
	closedir(d);
	ck_assert_uint_eq(slots, nslots);
	snprintf(path, sizeof(path), "%s/flush", sp);
	ck_assert_ptr_nonnull(d = opendir(path));
	while ((de = readdir(d)) != NULL)
		kept += de->d_name[0] == 's';
	closedir(d);
	ck_assert_uint_lt(kept, run + 2);
	return kept;
}

/* Each try in a fresh spool under the test's own: other processes of the
 * machine may take the inodes next to the flush file meanwhile (the other
 * unit tests, run beside this one by make -j, make their files in the
 * same group), and ext4 without a journal passes over inodes freed in the
 * last minutes, so a try where none of the new files landed in its run
 * tested nothing, and the next try makes another. A try costs a few
 * milliseconds; 8 of them all failed once under make -j2 check. */
#define FLUSH_RUN_TRIES 32

static void
fresh_spool(char *sp, size_t size, int try)
{
	snprintf(sp, size, "%s/try%d", spool, try);
	ck_assert_int_eq(spool_prepare(sp), 0);
}

/* A fill never makes a slot in the run of inode numbers of SPOOL/flush/use,
 * even when that run holds free inodes (make_flush_use): a new file that
 * lands there stays in SPOOL/flush/ as an empty file and the fill goes on
 * with another. */
START_TEST(test_fill_avoids_flush_run)
{
	static char ids[64][QID_LEN + 1];
	char sp[PATH_MAX];
	struct stat use;
	unsigned long kept = 0;
	size_t i;
	int try;

	for (try = 0; try < FLUSH_RUN_TRIES && kept == 0; try++) {
		fresh_spool(sp, sizeof(sp), try);
		make_flush_use(sp, "tmp", &use);
		for (i = 0; i < 64; i++)
			qid_next(ids[i]);
		ck_assert_int_eq(slots_fill(sp, 0, ids, 64), 64);
		kept = check_flush_run_alone(sp, &use, 64);
	}
	ck_assert_msg(kept > 0, "in %d tries no new file landed in the flush file's run",
		      FLUSH_RUN_TRIES);
}
END_TEST

/* SP/journal/j0, a journal file an earlier writer left (zeros): the pool
 * opened next takes it rather than making one. */
static void
make_journal(const char *sp)
{
	static const char zeros[1 << 16];
	char path[PATH_MAX + 64];
	uint64_t off;
	int fd;

	snprintf(path, sizeof(path), "%s/journal/j0", sp);
	ck_assert_int_ge(fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600), 0);
	for (off = 0; off < JOURNAL_SIZE; off += sizeof(zeros))
		ck_assert_int_eq(pwrite(fd, zeros, sizeof(zeros), (off_t)off), sizeof(zeros));
	close(fd);
}

/* A pool that finds no free slot makes a new one: never in the flush
 * file's run either (it is set aside in SPOOL/flush/ and the name tried
 * again), so that no slot's inode shares the flush file's block. (The
 * pool's journal is one made before, which would take the run's free
 * inodes itself: next test.) */
START_TEST(test_new_slot_avoids_flush_run)
{
	static struct slot_ref refs[64];
	char sp[PATH_MAX], name[QID_LEN + 1];
	struct stat use;
	struct slots *pool;
	unsigned long kept = 0;
	size_t i;
	int try;

	for (try = 0; try < FLUSH_RUN_TRIES && kept == 0; try++) {
		fresh_spool(sp, sizeof(sp), try);
		make_journal(sp);
		make_flush_use(sp, "slots", &use);
		pool = slots_open(sp, 0);
		for (i = 0; i < 64; i++) {
			qid_next(name);
			ck_assert_int_eq(slot_take(pool, name, &refs[i]), 0);
		}
		kept = check_flush_run_alone(sp, &use, 64);
		for (i = 0; i < 64; i++)
			slot_drop(pool, &refs[i]);
		slots_close(pool);
	}
	ck_assert_msg(kept > 0, "in %d tries no new file landed in the flush file's run",
		      FLUSH_RUN_TRIES);
}
END_TEST

/* A pool's new journal file is never in the flush file's run either: one
 * that lands there stays in SPOOL/journal/ as aside.jN, and the journal is
 * made with another. */
START_TEST(test_new_journal_avoids_flush_run)
{
	char sp[PATH_MAX], path[PATH_MAX + 300];
	struct statfs sf;
	struct dirent *de;
	struct stat use, sb;
	struct slots *pool;
	unsigned long run, kept = 0, journals;
	int try;
	DIR *d;

	for (try = 0; try < FLUSH_RUN_TRIES && kept == 0; try++) {
		fresh_spool(sp, sizeof(sp), try);
		make_flush_use(sp, "journal", &use);
		pool = slots_open(sp, 0);
		snprintf(path, sizeof(path), "%s/journal", sp);
		ck_assert_int_eq(statfs(path, &sf), 0);
		run = (unsigned long)sf.f_bsize / 128;
		journals = 0;
		ck_assert_ptr_nonnull(d = opendir(path));
		while ((de = readdir(d)) != NULL) {
			if (strncmp(de->d_name, "aside.j", 7) == 0) {
				kept++;
				continue;
			}
			if (de->d_name[0] != 'j')
				continue;
			journals++;
			ck_assert_msg((de->d_ino - 1) / run != (use.st_ino - 1) / run,
				      "journal %s (inode %lu) in the run of the flush file "
				      "(inode %lu)", de->d_name, (unsigned long)de->d_ino,
				      (unsigned long)use.st_ino);
			snprintf(path, sizeof(path), "%s/journal/%s", sp, de->d_name);
			ck_assert_int_eq(stat(path, &sb), 0);
			ck_assert_int_eq(sb.st_size, JOURNAL_SIZE);
		}
		closedir(d);
		ck_assert_uint_eq(journals, 1);
		ck_assert_uint_lt(kept, run + 2);
		slots_close(pool);
	}
	ck_assert_msg(kept > 0, "in %d tries no new journal landed in the flush file's run",
		      FLUSH_RUN_TRIES);
}
END_TEST

/* A queue name left on a slot already marked freed (the queue manager
 * stopped between the mark and the unlink): the daemon's reader removes
 * it, never quarantines it as corrupt. */
START_TEST(test_freed_left_in_queue)
{
	struct ctx c = { 0 };
	struct commit_pool *p;
	struct spool_file f;
	unsigned char *sent;
	char id[QID_LEN + 1], path[256];
	int fd;

	c.base = event_base_new();
	p = commit_pool_create(c.base, spool, 2, 0);
	qid_next(id);
	stream_message(p, &c, id, 1000, 1000, true, &sent);
	ck_assert_int_eq(c.error, 0);
	free(sent);
	commit_pool_destroy(p);
	event_base_free(c.base);
	snprintf(path, sizeof(path), "%s/incoming/%s", spool, id);
	ck_assert_int_ge(fd = open(path, O_WRONLY), 0);
	ck_assert_int_eq(pwrite(fd, "F", 1, 0), 1);
	close(fd);
	ck_assert_int_eq(spool_take(spool, path, NULL, &f), -2);
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_uint_eq(count("incoming"), 0);
	ck_assert_uint_eq(count("corrupt"), 0);
	ck_assert_uint_eq(count("slots"), 1);
}
END_TEST

/* The start-up fill: slots/ gets free slots of RECYCLE_ROUND bytes up to
 * the count asked for, through tmp/, and a second fill finds it full. */
START_TEST(test_slots_fill)
{
	char ids[5][QID_LEN + 1], path[256];
	struct stat sb;
	size_t i;

	for (i = 0; i < 5; i++)
		qid_next(ids[i]);
	ck_assert_int_eq(slots_fill(spool, 0, ids, 5), 5);
	ck_assert_uint_eq(count("slots"), 5);
	ck_assert_uint_eq(count("tmp"), 0);
	snprintf(path, sizeof(path), "%s/slots/%s", spool, ids[4]);
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_int_eq(sb.st_size, RECYCLE_ROUND);
	for (i = 0; i < 5; i++)
		qid_next(ids[i]);
	ck_assert_int_eq(slots_fill(spool, 0, ids, 5), 0);
	ck_assert_uint_eq(count("slots"), 5);
}
END_TEST

static Suite *
stream_suite(void)
{
	Suite *s = suite_create("stream");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_sizes, 0, 8);
	tcase_add_test(tc, test_abort);
	tcase_add_loop_test(tc, test_recycle, 0, 4);
	tcase_add_test(tc, test_slots_and_recovery);
	tcase_add_test(tc, test_spool_remove);
	tcase_add_test(tc, test_spool_remove_keeps_unmarkable);
	tcase_add_test(tc, test_slots_fill);
	tcase_add_test(tc, test_slots_two_pools);
	tcase_add_test(tc, test_freed_left_in_queue);
	tcase_add_test(tc, test_slots_prune);
	tcase_add_test(tc, test_slots_deep_queue);
	tcase_add_test(tc, test_shared_flush);
	tcase_add_test(tc, test_flush_file_alone);
	tcase_add_test(tc, test_fill_avoids_flush_run);
	tcase_add_test(tc, test_new_slot_avoids_flush_run);
	tcase_add_test(tc, test_new_journal_avoids_flush_run);
	tcase_add_test(tc, test_edit);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(stream_suite());
	int failed;

	qid_init(3, 0);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
