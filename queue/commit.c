/*
 * commit.c - the durable commit of new queue files, off the event loop.
 *
 * On an I/O thread the file is written into tmp/, fsync'd, renamed into
 * incoming/ (hold/ for a message quarantined as it arrived), and covered
 * by a directory fsync of that folder that started after the rename (a
 * dirsync, shared with concurrent commits). Only then
 * does the job's callback run in the event loop, and only then may a 250
 * be sent.
 *
 * This file must never let a job report success before its directory entry
 * is durable, and never leave a half-written file in incoming/.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lib/lib.h"
#include "queue/queue.h"

struct commit_pool {
	struct iopool *io;
	int tmp_fd;
	struct dirsync *incoming;
	struct dirsync *hold;
};

static int
writev_all(int fd, struct iovec *iov, int n)
{
	ssize_t w;

	while (n > 0) {
		w = writev(fd, iov, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

static int
commit_one(struct commit_pool *p, struct commit_job *job)
{
	unsigned char end[SPOOL_REC_HDR];
	struct dirsync *dir = job->hold ? p->hold : p->incoming;
	int ifd = dirsync_fd(dir);
	struct iovec iov[3];
	int fd, err;

	spool_encode_end(end);
	fd = openat(p->tmp_fd, job->id, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return errno;
	iov[0].iov_base = job->head.s;
	iov[0].iov_len = job->head.len;
	iov[1].iov_base = job->content.s;
	iov[1].iov_len = job->content.len;
	iov[2].iov_base = end;
	iov[2].iov_len = sizeof(end);
	if (writev_all(fd, iov, 3) < 0 || fsync(fd) < 0) {
		err = errno;
		close(fd);
		unlinkat(p->tmp_fd, job->id, 0);
		return err;
	}
	if (close(fd) < 0) {
		err = errno;
		unlinkat(p->tmp_fd, job->id, 0);
		return err;
	}
	if (renameat2(p->tmp_fd, job->id, ifd, job->id, RENAME_NOREPLACE) < 0) {
		err = errno;
		unlinkat(p->tmp_fd, job->id, 0);
		return err;
	}
	err = dirsync_wait(dir);
	if (err) {
		/* The file may or may not survive a crash: do not acknowledge it,
		 * and take it back so it is not delivered behind the client's back. */
		if (unlinkat(ifd, job->id, 0) < 0)
			msg_warn("%s: cannot remove unacknowledged queue file: %s",
				 job->id, strerror(errno));
	}
	return err;
}

static void
commit_work(void *arg)
{
	struct commit_job *job = arg;

	job->error = commit_one(job->pool, job);
}

static void
commit_finished(void *arg)
{
	struct commit_job *job = arg;

	job->done(job, job->arg);
}

struct commit_pool *
commit_pool_create(struct event_base *base, const char *spool_dir, int nthreads)
{
	struct commit_pool *p = xcalloc(1, sizeof(*p));
	char path[4096];

	snprintf(path, sizeof(path), "%s/tmp", spool_dir);
	p->tmp_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (p->tmp_fd < 0)
		msg_fatal("open %s: %s", path, strerror(errno));
	snprintf(path, sizeof(path), "%s/incoming", spool_dir);
	p->incoming = dirsync_open(path);
	snprintf(path, sizeof(path), "%s/hold", spool_dir);
	p->hold = dirsync_open(path);
	p->io = iopool_create(base, nthreads);
	return p;
}

void
commit_submit(struct commit_pool *p, struct commit_job *job)
{
	job->error = 0;
	job->pool = p;
	iopool_run(p->io, commit_work, commit_finished, job);
}

void
commit_pool_destroy(struct commit_pool *p)
{
	iopool_destroy(p->io);
	dirsync_close(p->incoming);
	dirsync_close(p->hold);
	close(p->tmp_fd);
	free(p);
}
