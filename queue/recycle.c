/*
 * recycle.c - queue files used again.
 *
 * A delivered message's file is not unlinked: the queue manager renames it
 * into free/, and a new message is written over one taken from there by
 * the SMTP server's I/O threads. Overwriting blocks a file already has
 * costs the disk a data write and a cache flush at the fdatasync; a new
 * file costs a file system journal commit for its inode and blocks as well
 * (on ext4 many times more: see tests/bench/fsync-rate), and so does every
 * directory fsync.
 *
 * A writer claims files in batches: each is renamed from free/ into tmp/
 * under the name it has (two writers never share one), and an fsync of
 * free/ and one of tmp/ make the batch durable before anything is written
 * into them (commit.c). The new message is then committed where it is
 * written: the file's data, fdatasync'd, is all its 250 waits for, since
 * the name it has was durable before. The rename into incoming/ that follows is not
 * waited for: after a crash, a file in tmp/ whose id record names another
 * id than its own name and whose check record matches is such a message
 * (spool_committed_in_tmp), and start-up moves it into incoming/
 * (recycle_recover_tmp); anything else in tmp/ was never acknowledged and
 * goes. That is why only a file whose id record is its own name may enter
 * free/: its old content, under its own name in tmp/, is never taken for a
 * message. Removals (the rename into free/) are not made durable by
 * themselves: the next claim's fsync covers them before the file is
 * written again. The old bytes past the new message are covered by a
 * padding record (queue.h) and never read; a new file is padded with zeros
 * up to the next RECYCLE_ROUND bytes, so that the next message written
 * over it finds its blocks there. At start the queue manager fills free/
 * with RECYCLE_PREFILL such files, so that a new spool is fast from its
 * first message. free/ keeps files only while the file system has
 * queue_minfree and RECYCLE_RESERVE more free; short of that, what it
 * holds is given back. free/ holds at most RECYCLE_POOL_MAX
 * files of at most RECYCLE_FILE_MAX bytes; the rest are unlinked. free/
 * is nobody's queue: nothing there is read, listed or delivered.
 *
 * Both sides run on I/O threads: everything here is under one mutex.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "lib/lib.h"
#include "queue/queue.h"

#define NAMES_MAX 64            /* names a writer reads from free/ at once */

struct recycler {
	int free_fd;                    /* free/ */
	int tmp_fd;                     /* tmp/, where new files for free/ are made */
	uint64_t minfree;               /* queue_minfree: free/ never eats into it */
	pthread_mutex_t lock;
	char names[NAMES_MAX][QID_LEN + 1];     /* the writer's: seen in free/, not taken yet */
	size_t nnames;
	uint64_t empty_until_usec;      /* found free/ empty: do not look again before */
	size_t count;                   /* the queue manager's: files in free/, at most */
	uint64_t recount_after_usec;
};

struct recycler *
recycler_open(const char *spool_dir, uint64_t minfree)
{
	struct recycler *r = xcalloc(1, sizeof(*r));
	char path[4096];

	r->minfree = minfree;
	snprintf(path, sizeof(path), "%s/free", spool_dir);
	r->free_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (r->free_fd < 0)
		msg_fatal("open %s: %s", path, strerror(errno));
	snprintf(path, sizeof(path), "%s/tmp", spool_dir);
	r->tmp_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (r->tmp_fd < 0)
		msg_fatal("open %s: %s", path, strerror(errno));
	pthread_mutex_init(&r->lock, NULL);
	r->count = RECYCLE_POOL_MAX;    /* unknown: counted before the first file goes in */
	return r;
}

void
recycler_close(struct recycler *r)
{
	if (r == NULL)
		return;
	close(r->free_fd);
	close(r->tmp_fd);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

/* Up to max names of files in free/ into names; returns how many. With
 * names NULL, counts them all. */
static size_t
read_free(int free_fd, char (*names)[QID_LEN + 1], size_t max)
{
	struct dirent *de;
	size_t n = 0;
	DIR *d;
	int fd = dup(free_fd);

	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	rewinddir(d);
	while ((de = readdir(d)) != NULL && (names == NULL || n < max)) {
		if (!qid_valid(de->d_name))
			continue;
		if (names != NULL)
			memcpy(names[n], de->d_name, QID_LEN + 1);
		n++;
	}
	closedir(d);
	return n;
}

/* Whether the file system has room for free/ to keep a file: more free
 * than queue_minfree plus RECYCLE_RESERVE, so that recycled files never
 * stand between a new message and the disk. */
static bool
room(const struct recycler *r)
{
	struct statvfs sv;

	if (fstatvfs(r->free_fd, &sv) < 0)
		return false;
	return (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize >= r->minfree + RECYCLE_RESERVE;
}

/* Short of room: up to NAMES_MAX files of free/ are unlinked. */
static void
release(struct recycler *r)
{
	char names[NAMES_MAX][QID_LEN + 1];
	size_t n = read_free(r->free_fd, names, NAMES_MAX), i;

	for (i = 0; i < n; i++)
		unlinkat(r->free_fd, names[i], 0);
}

size_t
recycle_claim(struct recycler *r, int tmp_fd, char (*names)[QID_LEN + 1], size_t max)
{
	char name[QID_LEN + 1];
	uint64_t now;
	size_t n = 0;

	if (r == NULL)
		return 0;
	pthread_mutex_lock(&r->lock);
	while (n < max) {
		if (r->nnames == 0) {
			now = now_usec();
			if (now < r->empty_until_usec)
				break;
			r->nnames = read_free(r->free_fd, r->names, NAMES_MAX);
			if (r->nnames == 0) {
				r->empty_until_usec = now + 100000;
				break;
			}
		}
		memcpy(name, r->names[--r->nnames], sizeof(name));
		/* another worker may have taken it: then the next one */
		if (renameat2(r->free_fd, name, tmp_fd, name, RENAME_NOREPLACE) < 0)
			continue;
		memcpy(names[n++], name, sizeof(name));
	}
	pthread_mutex_unlock(&r->lock);
	return n;
}

int
recycle_recover_tmp(const char *spool_dir, bool remove_rest)
{
	char path[4096], dpath[4096];
	struct spool_file f;
	struct dirent *de;
	int tfd, ifd, found = 0, rc;
	DIR *d;

	snprintf(path, sizeof(path), "%s/tmp", spool_dir);
	snprintf(dpath, sizeof(dpath), "%s/incoming", spool_dir);
	if ((d = opendir(path)) == NULL)
		return -1;
	tfd = dirfd(d);
	if ((ifd = open(dpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		closedir(d);
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/tmp/%s", spool_dir, de->d_name);
		rc = qid_valid(de->d_name) ? spool_committed_in_tmp(path, &f) : 0;
		if (rc == 1) {
			if (renameat2(tfd, de->d_name, ifd, f.m.qid, RENAME_NOREPLACE) == 0) {
				msg_info("%s: recovered from %s (committed, its rename into "
					 "incoming/ lost)", f.m.qid, path);
				found++;
			} else {
				msg_warn("%s: cannot recover %s into incoming/: %s; left in tmp/",
					 f.m.qid, path, strerror(errno));
			}
			spool_file_free(&f);
			continue;
		}
		if (rc == -2) {
			msg_warn("cannot read %s: %s; left in tmp/", path, strerror(errno));
			continue;
		}
		if (remove_rest && unlinkat(tfd, de->d_name, 0) == 0)
			msg_info("removed unacknowledged file %s", path);
	}
	closedir(d);
	if (found > 0 && fsync(ifd) < 0)
		msg_warn("fsync %s: %s", dpath, strerror(errno));
	close(ifd);
	return found;
}

int
recycle_pad(int fd, uint64_t end, uint64_t size)
{
	static const char zeros[RECYCLE_ROUND];
	unsigned char hdr[SPOOL_REC_HDR];
	uint64_t want, off;
	size_t n;
	ssize_t w;

	if (size == end)
		return 0;
	if (size >= end + SPOOL_REC_HDR) {
		/* the old bytes stay, covered */
		want = size;
	} else {
		/* a new file, one the message outgrew, or too little room for the
		 * header: to the next boundary, zeros written */
		want = (end + SPOOL_REC_HDR + RECYCLE_ROUND - 1) / RECYCLE_ROUND * RECYCLE_ROUND;
	}
	spool_encode_pad(hdr, (size_t)(want - end - SPOOL_REC_HDR));
	if (pwrite(fd, hdr, sizeof(hdr), (off_t)end) != (ssize_t)sizeof(hdr))
		return -1;
	for (off = size > end + SPOOL_REC_HDR ? size : end + SPOOL_REC_HDR; off < want;
	     off += (uint64_t)w) {
		n = want - off < sizeof(zeros) ? (size_t)(want - off) : sizeof(zeros);
		w = pwrite(fd, zeros, n, (off_t)off);
		if (w < 0 && errno == EINTR) {
			w = 0;
			continue;
		}
		if (w <= 0)
			return -1;
	}
	return 0;
}

int
recycle_put(struct recycler *r, int from_fd, const char *id, const char *id_rec,
	    uint64_t size)
{
	uint64_t now;
	bool keep = false;

	if (strcmp(id_rec, id) != 0)
		return unlinkat(from_fd, id, 0);       /* imported, or written before id records */
	if (r != NULL && size <= RECYCLE_FILE_MAX && !room(r)) {
		release(r);
		return unlinkat(from_fd, id, 0);
	}
	if (r != NULL && size <= RECYCLE_FILE_MAX) {
		pthread_mutex_lock(&r->lock);
		now = now_usec();
		if (r->count >= RECYCLE_POOL_MAX && now >= r->recount_after_usec) {
			/* writers take files without saying so: the count only ever
			 * overstates; count again when it says full, at most every
			 * 20 ms (a readdir of at most RECYCLE_POOL_MAX names) */
			r->count = read_free(r->free_fd, NULL, 0);
			r->recount_after_usec = now + 20000;
		}
		if (r->count < RECYCLE_POOL_MAX) {
			r->count++;
			keep = true;
		}
		pthread_mutex_unlock(&r->lock);
	}
	if (keep && renameat2(from_fd, id, r->free_fd, id, RENAME_NOREPLACE) == 0)
		return 0;
	return unlinkat(from_fd, id, 0);
}

int
recycle_fill(struct recycler *r, char (*ids)[QID_LEN + 1], size_t n)
{
	static const char zeros[RECYCLE_ROUND];
	size_t have = read_free(r->free_fd, NULL, 0), made = 0, i;
	int fd, err;

	for (i = 0; i < n && have + made < n && room(r); i++) {
		/* made in tmp/ (start-up removes it there), complete before
		 * free/ shows it: a writer must never take a file still growing */
		fd = openat(r->tmp_fd, ids[i], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0)
			return -1;
		err = write_all(fd, zeros, sizeof(zeros)) < 0 || fdatasync(fd) < 0;
		if (close(fd) < 0)
			err = 1;
		if (err || renameat2(r->tmp_fd, ids[i], r->free_fd, ids[i], RENAME_NOREPLACE) < 0) {
			int saved = errno;

			unlinkat(r->tmp_fd, ids[i], 0);
			errno = saved;
			return -1;
		}
		made++;
	}
	pthread_mutex_lock(&r->lock);
	r->count = RECYCLE_POOL_MAX;    /* counted again when next needed */
	pthread_mutex_unlock(&r->lock);
	return (int)made;
}
