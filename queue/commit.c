/*
 * commit.c - the durable commit of new queue files, off the event loop.
 *
 * A pool thread writes the file into tmp/, fsyncs it, renames it into
 * incoming/ and then makes sure a directory fsync of incoming/ that
 * *started after the rename* has completed. Only then does the job's
 * callback run (in the event loop), and only then may a 250 be sent.
 *
 * Directory fsyncs are shared: whichever thread finds none running starts
 * one covering every rename done so far, and the others wait for it. With
 * many sessions committing at once this turns N directory fsyncs into a
 * few, and the file fsyncs themselves overlap in the file system's journal.
 *
 * This file must never let a job report success before its directory entry
 * is durable, and never leave a half-written file in incoming/.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/lib.h"
#include "queue/queue.h"

struct commit_pool {
	struct event_base *base;
	int tmp_fd, incoming_fd;       /* directory descriptors */
	pthread_t *threads;
	int nthreads;

	pthread_mutex_t lock;
	pthread_cond_t work;           /* jobs queued or stopping */
	struct commit_job *head, *tail;
	bool stopping;

	struct commit_job *done;       /* finished, waiting for the loop */
	int notify[2];                 /* pool -> loop wake-up pipe */
	struct event *notify_ev;

	/* directory fsync sharing */
	pthread_cond_t synced;
	uint64_t renamed;              /* renames completed */
	uint64_t synced_upto;          /* renames covered by a completed dir fsync */
	bool syncing;
	int sync_error;
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

/* Waits until a directory fsync that began after rename number `seq` has
 * completed. Returns 0 or an errno value. */
static int
dir_sync(struct commit_pool *p, uint64_t seq)
{
	uint64_t upto;
	int err = 0;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		if (p->synced_upto >= seq) {
			err = 0;
			break;
		}
		if (p->syncing) {
			pthread_cond_wait(&p->synced, &p->lock);
			continue;
		}
		p->syncing = true;
		upto = p->renamed;
		pthread_mutex_unlock(&p->lock);
		err = fsync(p->incoming_fd) < 0 ? errno : 0;
		pthread_mutex_lock(&p->lock);
		p->syncing = false;
		if (err == 0)
			p->synced_upto = upto;
		pthread_cond_broadcast(&p->synced);
		if (err)
			break;
	}
	pthread_mutex_unlock(&p->lock);
	return err;
}

static int
commit_one(struct commit_pool *p, struct commit_job *job)
{
	unsigned char end[SPOOL_REC_HDR];
	struct iovec iov[3];
	uint64_t seq;
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
	if (renameat2(p->tmp_fd, job->id, p->incoming_fd, job->id, RENAME_NOREPLACE) < 0) {
		err = errno;
		unlinkat(p->tmp_fd, job->id, 0);
		return err;
	}
	pthread_mutex_lock(&p->lock);
	seq = ++p->renamed;
	pthread_mutex_unlock(&p->lock);
	err = dir_sync(p, seq);
	if (err) {
		/* The file may or may not survive a crash: do not acknowledge it,
		 * and take it back so it is not delivered behind the client's back. */
		if (unlinkat(p->incoming_fd, job->id, 0) < 0)
			msg_warn("%s: cannot remove unacknowledged queue file: %s",
				 job->id, strerror(errno));
	}
	return err;
}

static void *
commit_thread(void *arg)
{
	struct commit_pool *p = arg;
	struct commit_job *job;
	char c = 1;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (p->head == NULL && !p->stopping)
			pthread_cond_wait(&p->work, &p->lock);
		if (p->head == NULL)
			break;
		job = p->head;
		p->head = job->next;
		if (p->head == NULL)
			p->tail = NULL;
		pthread_mutex_unlock(&p->lock);

		job->error = commit_one(p, job);

		pthread_mutex_lock(&p->lock);
		job->next = p->done;
		p->done = job;
		if (job->next == NULL) {
			/* first one on an empty list: wake the loop */
			while (write(p->notify[1], &c, 1) < 0 && errno == EINTR)
				;
		}
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

static void
run_done(struct commit_pool *p)
{
	struct commit_job *list, *next, *rev = NULL;

	pthread_mutex_lock(&p->lock);
	list = p->done;
	p->done = NULL;
	pthread_mutex_unlock(&p->lock);
	/* reverse into completion order */
	for (; list; list = next) {
		next = list->next;
		list->next = rev;
		rev = list;
	}
	for (; rev; rev = next) {
		next = rev->next;
		rev->done(rev, rev->arg);
	}
}

static void
on_notify(evutil_socket_t fd, short what, void *arg)
{
	char buf[64];

	while (read(fd, buf, sizeof(buf)) > 0)
		;
	run_done(arg);
}

static int
open_dir(const char *spool_dir, const char *sub)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", spool_dir, sub);
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		msg_fatal("open %s: %s", path, strerror(errno));
	return fd;
}

struct commit_pool *
commit_pool_create(struct event_base *base, const char *spool_dir, int nthreads)
{
	struct commit_pool *p = xcalloc(1, sizeof(*p));
	int i;

	p->base = base;
	p->tmp_fd = open_dir(spool_dir, "tmp");
	p->incoming_fd = open_dir(spool_dir, "incoming");
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->work, NULL);
	pthread_cond_init(&p->synced, NULL);
	if (pipe2(p->notify, O_NONBLOCK | O_CLOEXEC) < 0)
		msg_fatal("pipe: %s", strerror(errno));
	p->notify_ev = event_new(base, p->notify[0], EV_READ | EV_PERSIST, on_notify, p);
	event_add(p->notify_ev, NULL);
	p->nthreads = nthreads < 1 ? 1 : nthreads;
	p->threads = xcalloc((size_t)p->nthreads, sizeof(*p->threads));
	for (i = 0; i < p->nthreads; i++)
		if (pthread_create(&p->threads[i], NULL, commit_thread, p) != 0)
			msg_fatal("cannot start spool commit thread");
	return p;
}

void
commit_submit(struct commit_pool *p, struct commit_job *job)
{
	job->next = NULL;
	job->error = 0;
	pthread_mutex_lock(&p->lock);
	if (p->tail)
		p->tail->next = job;
	else
		p->head = job;
	p->tail = job;
	pthread_cond_signal(&p->work);
	pthread_mutex_unlock(&p->lock);
}

void
commit_pool_destroy(struct commit_pool *p)
{
	int i;

	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->lock);
	for (i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	run_done(p);
	event_free(p->notify_ev);
	close(p->notify[0]);
	close(p->notify[1]);
	close(p->tmp_fd);
	close(p->incoming_fd);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->work);
	pthread_cond_destroy(&p->synced);
	free(p->threads);
	free(p);
}
