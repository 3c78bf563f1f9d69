/*
 * import.c - `sorterctl import DIR`: this sorter takes over the spool of a
 * dead peer (its disk moved over, or its spool on shared storage). Every
 * message in DIR's incoming/ active/ deferred/ hold/ (and any that its
 * crash left committed in a slot: slots_recover) is copied into this
 * spool under a fresh id of this spool, with its recipient marks (the
 * file is copied byte for byte, in pieces, once spool_load() has accepted it)
 * and its status file (the alias-expanded addresses already delivered),
 * into incoming/, or hold/ when it was held; then it is removed from DIR.
 *
 * The steps for one message DIR/STATE/OLDID, NEWID being an id nothing in
 * this spool uses:
 *   1. rename it to DIR/importing/OLDID.NEWID.STATE (its marker), fsync:
 *      the message itself now names its new id;
 *   2. DIR/defer/OLDID, if any, becomes defer/NEWID here; the file is
 *      copied to import/NEWID.msg, fsync, fsync import/;
 *   3. the record import/NEWID ("DIR/STATE/OLDID"): written as
 *      import/NEWID.rec, fsync, renamed, fsync import/ (so that a record
 *      is there whole or not at all);
 *   4. import/NEWID.msg renamed to incoming/NEWID (hold/NEWID), fsync:
 *      from here this spool's queue manager may deliver it;
 *   5. DIR/defer/OLDID and the marker removed, fsync;
 *   6. the record removed.
 * A run that finds a marker (an earlier run was cut short) reads the
 * record: there, the copy was made (and is maybe delivered already), so
 * only step 4 if its file is still in import/, then 5 and 6 remain; not
 * there, nothing of the copy is visible, and steps 2 to 6 run again from
 * the marker. So no kill at any point makes a message delivered twice or
 * lost; only a power failure between the rename of step 4 and its
 * directory fsync (a rename not yet on disk, the queue manager quick
 * enough to deliver the file meanwhile) could repeat one.
 *
 * DIR's qmgr.lock is held throughout (a peer that comes back waits for
 * us; one still running makes us refuse), and import/ of this spool too
 * (one import at a time here, so that ids issued in this process are the
 * only new ones with its slot).
 *
 * This file must never remove anything from DIR before the copy is
 * durable here, never expose a file spool_load() refuses (that goes to
 * DIR's corrupt/, with the reason on stderr), and never reuse an id this
 * spool holds.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/lib.h"
#include "queue/queue.h"

#define STATE_INCOMING 0
#define STATE_HOLD 3

/* ---- the importer ---- */

struct importer {
	const char *spool_dir;
	char src[PATH_MAX];
	int src_fd, src_state[IMPORT_NSTATES], src_importing, src_defer, src_lock;
	int dst_state[IMPORT_NSTATES], dst_defer, dst_import;
	int wake_fd;
	FILE *out;
	struct import_result *res;
};

static int
open_dir_at(int at, const char *name)
{
	return openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* 0 or an errno value */
static int
dsync(int fd)
{
	return fd >= 0 && fsync(fd) < 0 ? errno : 0;
}

static bool
exists_at(int dirfd, const char *name)
{
	struct stat st;

	return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT;
}

/* Whether id is taken here in a way that a copy under it would clash
 * with: a queue file, or the record of a copy made. */
static bool
id_visible(const struct importer *im, const char *id)
{
	int i;

	for (i = 0; i < IMPORT_NSTATES; i++)
		if (exists_at(im->dst_state[i], id))
			return true;
	return exists_at(im->dst_import, id);
}

static void
fresh_id(const struct importer *im, char id[QID_LEN + 1])
{
	char name[QID_LEN + 8];

	for (;;) {
		qid_next(id);
		snprintf(name, sizeof(name), "%s.msg", id);
		if (!id_visible(im, id) && !exists_at(im->dst_defer, id) &&
		    !exists_at(im->dst_import, name))
			return;
	}
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in dirfd that pass keep(), sorted (oldest ids first). */
static char **
list_dir(int dirfd, bool (*keep)(const char *), size_t *n)
{
	char **v = NULL;
	size_t cap = 0;
	struct dirent *de;
	DIR *d;

	*n = 0;
	if ((d = dir_read(dirfd)) == NULL)
		return NULL;
	while ((de = readdir(d)) != NULL) {
		if (!keep(de->d_name))
			continue;
		if (*n == cap) {
			cap = cap ? cap * 2 : 64;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[(*n)++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (*n > 1)
		qsort(v, *n, sizeof(*v), cmp_names);
	return v;
}

static void
free_list(char **v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static bool
keep_qid(const char *name)
{
	return qid_valid(name);
}

static bool
keep_any(const char *name)
{
	return name[0] != '.';
}

/* name in dirfd holding the n bytes at p, whole or not at all: written
 * as name.rec, fsync'd, renamed (the caller fsyncs the folder). 0 or an
 * errno value (nothing left behind). */
static int
write_file(int dirfd, const char *name, const void *p, size_t n)
{
	char tmp[NAME_MAX + 1];
	int fd, err = 0;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.rec", name) >= sizeof(tmp))
		return ENAMETOOLONG;
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return errno;
	if (write_all(fd, p, n) < 0 || fsync(fd) < 0)
		err = errno;
	if (close(fd) < 0 && err == 0)
		err = errno;
	if (err == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		err = errno;
	if (err)
		unlinkat(dirfd, tmp, 0);
	return err;
}

static void
fail(struct importer *im, const char *oldid, const char *what, int err)
{
	fprintf(stderr, "sorterctl: %s: %s: %s\n", oldid, what, strerror(err));
	im->res->failed++;
}

/* Step 4: import/NEWID.msg becomes a queue file here. 0 or an errno value. */
static int
place(struct importer *im, const char *newid, int state)
{
	char name[QID_LEN + 8];
	int dst = im->dst_state[state == STATE_HOLD ? STATE_HOLD : STATE_INCOMING];

	snprintf(name, sizeof(name), "%s.msg", newid);
	if (renameat2(im->dst_import, name, dst, newid, RENAME_NOREPLACE) < 0)
		return errno;
	return dsync(dst);
}

/* Copies the n bytes of the open file src into a new file, fsync'd, in
 * pieces; 0 or an errno value (nothing left behind). */
static int
copy_file(int dirfd, const char *name, int src, size_t n)
{
	static char buf[65536];
	size_t off, k;
	ssize_t r;
	int fd, err = 0;

	fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return errno;
	for (off = 0; off < n && err == 0; off += (size_t)r) {
		k = n - off < sizeof(buf) ? n - off : sizeof(buf);
		r = pread(src, buf, k, (off_t)off);
		if (r < 0 && errno == EINTR) {
			r = 0;
			continue;
		}
		if (r <= 0)
			err = r < 0 ? errno : EIO;      /* a queue file never shrinks */
		else if (write_all(fd, buf, (size_t)r) < 0)
			err = errno;
	}
	if (err == 0 && fsync(fd) < 0)
		err = errno;
	if (close(fd) < 0 && err == 0)
		err = errno;
	if (err)
		unlinkat(dirfd, name, 0);
	return err;
}

/* Steps 2 to 4. 0, or -1 (reported; the marker stays for the next run). */
static int
copy_in(struct importer *im, const char *oldid, const char *newid, int state,
	const struct spool_file *f, const struct qstatus *st, bool have_status)
{
	char name[QID_LEN + 8], rec[PATH_MAX + 64];
	int err, n;

	if (have_status && ((err = qstatus_write(im->dst_defer, NULL, newid, st)) != 0 ||
			    (err = dsync(im->dst_defer)) != 0)) {
		fail(im, oldid, "write its status file into defer/", err);
		return -1;
	}
	snprintf(name, sizeof(name), "%s.msg", newid);
	if ((err = copy_file(im->dst_import, name, f->fd, f->m.file_size)) != 0 ||
	    (err = dsync(im->dst_import)) != 0) {
		fail(im, oldid, "write its copy into import/", err);
		goto undo;
	}
	n = snprintf(rec, sizeof(rec), "%s/%s/%s\n", im->src, import_states[state], oldid);
	if ((err = write_file(im->dst_import, newid, rec, (size_t)n)) != 0 ||
	    (err = dsync(im->dst_import)) != 0) {
		fail(im, oldid, "write the record of its copy into import/", err);
		unlinkat(im->dst_import, newid, 0);
		goto undo;
	}
	if ((err = place(im, newid, state)) != 0) {
		/* the record stays: the next run finishes step 4 from it */
		fail(im, oldid, state == STATE_HOLD ? "move its copy into hold/" :
		     "move its copy into incoming/", err);
		return -1;
	}
	return 0;
undo:
	unlinkat(im->dst_import, name, 0);
	if (have_status)
		unlinkat(im->dst_defer, newid, 0);
	return -1;
}

/* Steps 5 and 6. 0 or -1 (reported). */
static int
remove_source(struct importer *im, const char *oldid, const char *newid, const char *marker)
{
	int err;

	if (im->src_defer >= 0 && unlinkat(im->src_defer, oldid, 0) < 0 && errno != ENOENT) {
		fail(im, oldid, "copied in, but its status file stays in the source", errno);
		return -1;
	}
	if ((err = dsync(im->src_defer)) != 0 ||
	    (spool_remove(im->src_importing, marker, true) < 0 && (err = errno) != ENOENT) ||
	    (err = dsync(im->src_importing)) != 0) {
		fail(im, oldid, "copied in, but not removed from the source (run again to finish)",
		     err ? err : errno);
		return -1;
	}
	unlinkat(im->dst_import, newid, 0);
	return 0;
}

static void
done(struct importer *im, const char *oldid, const char *newid, int state, bool resumed)
{
	fprintf(im->out, "%s -> %s%s%s\n", oldid, newid, state == STATE_HOLD ? " (on hold)" : "",
		resumed ? " (finishing an interrupted import)" : "");
	fflush(im->out);
	im->res->imported++;
	if (state == STATE_HOLD)
		im->res->held++;
	else
		qmgr_wake(im->spool_dir, &im->wake_fd, newid);
	if (resumed)
		im->res->resumed++;
}

/* Loads the message at path (named oldid) and its status. 0; 1 when it
 * was quarantined or is gone; -1 on an error (reported). */
static int
load(struct importer *im, const char *path, const char *oldid, struct spool_file *f,
     struct qstatus *st, bool *have_status)
{
	char why[512], spath[PATH_MAX + 32];
	int rc;

	rc = spool_load_as(path, oldid, NULL, f, why, sizeof(why));
	if (rc == -1) {
		/* spool_quarantine's warning says where and why */
		spool_quarantine(im->src, path, why);
		im->res->quarantined++;
		return 1;
	}
	if (rc == -2) {
		if (errno == ENOENT)
			return 1;
		fprintf(stderr, "sorterctl: %s: %s; left in place\n", oldid, why);
		im->res->failed++;
		return -1;
	}
	snprintf(spath, sizeof(spath), "%s/defer/%s", im->src, oldid);
	*have_status = im->src_defer >= 0 && exists_at(im->src_defer, oldid);
	rc = *have_status ? qstatus_read(spath, st) : (qstatus_init(st), 0);
	if (rc == -2) {
		fail(im, oldid, "read its status file", errno);
		spool_file_free(f);
		return -1;
	}
	if (rc == -1) {
		msg_warn("%s: unparseable status file %s ignored", oldid, spath);
		*have_status = false;
	}
	return 0;
}

/* A message left by an interrupted run, at DIR/importing/marker. */
static void
resume(struct importer *im, const char *marker)
{
	char oldid[QID_LEN + 1], newid[QID_LEN + 1], path[PATH_MAX + 64], name[QID_LEN + 8];
	struct spool_file f;
	struct qstatus st;
	bool have_status = false;
	int state, err;

	if ((state = import_marker_parse(marker, oldid, newid)) < 0) {
		fprintf(stderr, "sorterctl: %s/importing/%s: not a message being imported; "
			"left alone\n", im->src, marker);
		im->res->failed++;
		return;
	}
	if (exists_at(im->dst_import, newid)) {
		/* the copy was made: at most its last move is missing */
		snprintf(name, sizeof(name), "%s.msg", newid);
		if (exists_at(im->dst_import, name) && (err = place(im, newid, state)) != 0) {
			fail(im, oldid, "move its copy out of import/", err);
			return;
		}
		if (remove_source(im, oldid, newid, marker) == 0)
			done(im, oldid, newid, state, true);
		return;
	}
	snprintf(path, sizeof(path), "%s/importing/%s", im->src, marker);
	if (load(im, path, oldid, &f, &st, &have_status) != 0)
		return;
	if (id_visible(im, newid)) {
		fprintf(stderr, "sorterctl: %s: its new id %s is taken in %s meanwhile; left in "
			"%s/importing/\n", oldid, newid, im->spool_dir, im->src);
		im->res->failed++;
	} else if (copy_in(im, oldid, newid, state, &f, &st, have_status) == 0 &&
		   remove_source(im, oldid, newid, marker) == 0) {
		done(im, oldid, newid, state, true);
	}
	qstatus_free(&st);
	spool_file_free(&f);
}

/* A message at DIR/STATE/oldid. */
static void
import_one(struct importer *im, int state, const char *oldid)
{
	char newid[QID_LEN + 1], marker[IMPORT_MARKER_LEN + 1], path[PATH_MAX + 64];
	struct spool_file f;
	struct qstatus st;
	bool have_status = false;
	int err;

	snprintf(path, sizeof(path), "%s/%s/%s", im->src, import_states[state], oldid);
	if (load(im, path, oldid, &f, &st, &have_status) != 0)
		return;
	fresh_id(im, newid);
	import_marker_format(oldid, newid, state, marker);
	if (renameat(im->src_state[state], oldid, im->src_importing, marker) < 0) {
		if (errno != ENOENT)
			fail(im, oldid, "rename into importing/", errno);
	} else if ((err = dsync(im->src_importing)) != 0 ||
		   (err = dsync(im->src_state[state])) != 0) {
		fail(im, oldid, "fsync the source folders", err);
	} else if (copy_in(im, oldid, newid, state, &f, &st, have_status) == 0 &&
		   remove_source(im, oldid, newid, marker) == 0) {
		done(im, oldid, newid, state, false);
	}
	qstatus_free(&st);
	spool_file_free(&f);
}

/* Records of copies made from this source whose marker is gone (a run cut
 * short between steps 5 and 6): harmless, but removed. */
static void
drop_stale_records(struct importer *im)
{
	char **recs, **markers, buf[PATH_MAX + 64], oldid[QID_LEN + 1], newid[QID_LEN + 1];
	size_t nrec, nmark, i, k, prefix = strlen(im->src);
	ssize_t n;
	bool live;
	int fd;

	recs = list_dir(im->dst_import, keep_qid, &nrec);
	if (nrec == 0) {
		free_list(recs, nrec);
		return;
	}
	markers = list_dir(im->src_importing, keep_any, &nmark);
	for (i = 0; i < nrec; i++) {
		fd = openat(im->dst_import, recs[i], O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			continue;
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n <= 0)
			continue;
		buf[n] = '\0';
		if ((size_t)n <= prefix || memcmp(buf, im->src, prefix) != 0 || buf[prefix] != '/')
			continue;       /* another source's: its own run decides */
		for (live = false, k = 0; k < nmark && !live; k++)
			live = import_marker_parse(markers[k], oldid, newid) >= 0 &&
			       strcmp(newid, recs[i]) == 0;
		if (!live)
			unlinkat(im->dst_import, recs[i], 0);
	}
	free_list(markers, nmark);
	free_list(recs, nrec);
}

static void
importer_close(struct importer *im)
{
	int i;

	for (i = 0; i < IMPORT_NSTATES; i++) {
		if (im->src_state[i] >= 0)
			close(im->src_state[i]);
		if (im->dst_state[i] >= 0)
			close(im->dst_state[i]);
	}
	if (im->src_importing >= 0)
		close(im->src_importing);
	if (im->src_defer >= 0)
		close(im->src_defer);
	if (im->src_lock >= 0)
		close(im->src_lock);
	if (im->src_fd >= 0)
		close(im->src_fd);
	if (im->dst_defer >= 0)
		close(im->dst_defer);
	if (im->dst_import >= 0)
		close(im->dst_import);
	if (im->wake_fd >= 0)
		close(im->wake_fd);
}

#define ERR(...) do { snprintf(err, errlen, __VA_ARGS__); goto fail; } while (0)

/* Opens both spools and takes the locks. */
static int
importer_open(struct importer *im, const char *spool_dir, const char *src, char *err,
	      size_t errlen)
{
	struct stat a, b;
	int i, fd, found = 0;

	if (realpath(src, im->src) == NULL)
		ERR("%s: %s", src, strerror(errno));
	if ((im->src_fd = open_dir_at(AT_FDCWD, im->src)) < 0)
		ERR("open %s: %s", im->src, strerror(errno));
	if (spool_prepare(spool_dir) < 0)
		ERR("prepare the spool %s: %s", spool_dir, strerror(errno));
	if ((fd = open_dir_at(AT_FDCWD, spool_dir)) < 0)
		ERR("open %s: %s", spool_dir, strerror(errno));
	if (fstat(fd, &a) < 0 || fstat(im->src_fd, &b) < 0 ||
	    (a.st_dev == b.st_dev && a.st_ino == b.st_ino)) {
		close(fd);
		ERR("%s is this sorter's own spool", im->src);
	}
	if (mkdirat(fd, "import", 0700) < 0 && errno != EEXIST) {
		close(fd);
		ERR("create %s/import: %s", spool_dir, strerror(errno));
	}
	for (i = 0; i < IMPORT_NSTATES; i++)
		im->dst_state[i] = open_dir_at(fd, import_states[i]);
	im->dst_defer = open_dir_at(fd, "defer");
	im->dst_import = open_dir_at(fd, "import");
	close(fd);
	for (i = 0; i < IMPORT_NSTATES; i++)
		if (im->dst_state[i] < 0)
			ERR("open %s/%s: %s", spool_dir, import_states[i], strerror(errno));
	if (im->dst_defer < 0 || im->dst_import < 0)
		ERR("open %s/%s: %s", spool_dir, im->dst_defer < 0 ? "defer" : "import",
		    strerror(errno));
	if (flock(im->dst_import, LOCK_EX | LOCK_NB) < 0)
		ERR("another import into %s is running (%s/import is locked)", spool_dir,
		    spool_dir);

	for (i = 0; i < IMPORT_NSTATES; i++) {
		im->src_state[i] = open_dir_at(im->src_fd, import_states[i]);
		if (im->src_state[i] >= 0)
			found++;
		else if (errno != ENOENT)
			ERR("open %s/%s: %s", im->src, import_states[i], strerror(errno));
	}
	im->src_importing = open_dir_at(im->src_fd, "importing");
	if (found == 0 && im->src_importing < 0)
		ERR("%s has no incoming/, active/, deferred/ or hold/: not a sorter spool", im->src);
	/* a queue manager running on the source holds its lock; one starting
	 * later waits for ours */
	im->src_lock = openat(im->src_fd, "qmgr.lock", O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (im->src_lock < 0 && errno != ENOENT)
		ERR("open %s/qmgr.lock: %s", im->src, strerror(errno));
	if (flock(im->src_lock >= 0 ? im->src_lock : im->src_fd, LOCK_EX | LOCK_NB) < 0)
		ERR("%s is in use: %s", im->src, im->src_lock >= 0 ?
		    "a sorterd runs on it (its qmgr.lock is held); stop it first" :
		    "another import of it is running");
	if (im->src_importing < 0) {
		if (mkdirat(im->src_fd, "importing", 0700) < 0 && errno != EEXIST)
			ERR("create %s/importing: %s", im->src, strerror(errno));
		if ((im->src_importing = open_dir_at(im->src_fd, "importing")) < 0)
			ERR("open %s/importing: %s", im->src, strerror(errno));
		if (dsync(im->src_fd) != 0)
			ERR("fsync %s: %s", im->src, strerror(errno));
	}
	im->src_defer = open_dir_at(im->src_fd, "defer");
	if (im->src_defer < 0 && errno != ENOENT)
		ERR("open %s/defer: %s", im->src, strerror(errno));
	return 0;
fail:
	return -1;
}

#undef ERR

int
queue_import(const char *spool_dir, const char *src, FILE *out, struct import_result *res,
	     char *err, size_t errlen)
{
	struct importer im;
	char **names;
	size_t n, k;
	int i;

	memset(&im, 0, sizeof(im));
	memset(res, 0, sizeof(*res));
	im.spool_dir = spool_dir;
	im.out = out;
	im.res = res;
	im.wake_fd = -1;
	im.src_fd = im.src_importing = im.src_defer = im.src_lock = -1;
	im.dst_defer = im.dst_import = -1;
	for (i = 0; i < IMPORT_NSTATES; i++)
		im.src_state[i] = im.dst_state[i] = -1;
	if (importer_open(&im, spool_dir, src, err, errlen) < 0) {
		importer_close(&im);
		return -1;
	}
	/* what the peer's crash left committed (in a slot, its link into
	 * incoming/ lost; in its journal, its slot's writes lost; or, from an
	 * older spool, in tmp/) goes to its incoming/ first, as its own start
	 * would do */
	if (im.src_state[STATE_INCOMING] >= 0 && recycle_recover_tmp(src, false) < 0 &&
	    errno != ENOENT) {
		snprintf(err, errlen, "recover %s/tmp: %s", src, strerror(errno));
		importer_close(&im);
		return -1;
	}
	if (im.src_state[STATE_INCOMING] >= 0 && journal_recover(src) < 0) {
		snprintf(err, errlen, "recover %s/journal: %s", src, strerror(errno));
		importer_close(&im);
		return -1;
	}
	if (im.src_state[STATE_INCOMING] >= 0 && slots_recover(src, false) < 0) {
		snprintf(err, errlen, "recover %s/slots: %s", src, strerror(errno));
		importer_close(&im);
		return -1;
	}
	/* what an interrupted run left first, then the queue in pipeline order */
	names = list_dir(im.src_importing, keep_any, &n);
	for (k = 0; k < n; k++)
		resume(&im, names[k]);
	free_list(names, n);
	for (i = 0; i < IMPORT_NSTATES; i++) {
		names = list_dir(im.src_state[i], keep_qid, &n);
		for (k = 0; k < n; k++)
			import_one(&im, i, names[k]);
		free_list(names, n);
	}
	drop_stale_records(&im);
	importer_close(&im);
	return 0;
}
