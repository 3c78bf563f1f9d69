/*
 * iopool.c - disk work off the event loop, and shared directory fsyncs.
 *
 * An iopool runs work functions on a few threads and delivers each
 * completion back to the event loop that owns the pool (through a pipe the
 * loop watches), in completion order. The loop never waits for the disk.
 *
 * A dirsync makes directory changes (renames, unlinks) durable in batches:
 * a thread that changed the directory calls dirsync_wait(), which returns
 * only after an fsync of the directory that *started after that change*
 * has completed. Whoever finds no fsync running starts one covering every
 * change made so far; the rest wait for it. N commits, a few fsyncs.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/lib.h"
#include "queue/queue.h"

struct iotask {
	void (*work)(void *);
	void (*done)(void *);
	void *arg;
	struct iotask *next;
};

struct iopool {
	pthread_t *threads;
	int nthreads;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct iotask *head, *tail;     /* waiting for a thread */
	struct iotask *finished;        /* waiting for the loop, newest first */
	bool stopping;
	int notify[2];
	struct event *notify_ev;
};

static void *
iopool_thread(void *arg)
{
	struct iopool *p = arg;
	struct iotask *t;
	char c = 1;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (p->head == NULL && !p->stopping)
			pthread_cond_wait(&p->cond, &p->lock);
		if (p->head == NULL)
			break;
		t = p->head;
		p->head = t->next;
		if (p->head == NULL)
			p->tail = NULL;
		pthread_mutex_unlock(&p->lock);

		t->work(t->arg);

		pthread_mutex_lock(&p->lock);
		t->next = p->finished;
		p->finished = t;
		if (t->next == NULL)
			while (write(p->notify[1], &c, 1) < 0 && errno == EINTR)
				;
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

static void
iopool_run_finished(struct iopool *p)
{
	struct iotask *list, *next, *rev = NULL;

	pthread_mutex_lock(&p->lock);
	list = p->finished;
	p->finished = NULL;
	pthread_mutex_unlock(&p->lock);
	for (; list; list = next) {
		next = list->next;
		list->next = rev;
		rev = list;
	}
	for (; rev; rev = next) {
		next = rev->next;
		if (rev->done)
			rev->done(rev->arg);
		free(rev);
	}
}

static void
on_notify(evutil_socket_t fd, short what, void *arg)
{
	char buf[64];

	while (read(fd, buf, sizeof(buf)) > 0)
		;
	iopool_run_finished(arg);
}

struct iopool *
iopool_create(struct event_base *base, int nthreads)
{
	struct iopool *p = xcalloc(1, sizeof(*p));
	int i;

	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	if (pipe2(p->notify, O_NONBLOCK | O_CLOEXEC) < 0)
		msg_fatal("pipe: %s", strerror(errno));
	p->notify_ev = event_new(base, p->notify[0], EV_READ | EV_PERSIST, on_notify, p);
	event_add(p->notify_ev, NULL);
	p->nthreads = nthreads < 1 ? 1 : nthreads;
	p->threads = xcalloc((size_t)p->nthreads, sizeof(*p->threads));
	for (i = 0; i < p->nthreads; i++)
		if (pthread_create(&p->threads[i], NULL, iopool_thread, p) != 0)
			msg_fatal("cannot start an I/O thread");
	return p;
}

void
iopool_run(struct iopool *p, void (*work)(void *), void (*done)(void *), void *arg)
{
	struct iotask *t = xmalloc(sizeof(*t));

	t->work = work;
	t->done = done;
	t->arg = arg;
	t->next = NULL;
	pthread_mutex_lock(&p->lock);
	if (p->tail)
		p->tail->next = t;
	else
		p->head = t;
	p->tail = t;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

void
iopool_destroy(struct iopool *p)
{
	int i;

	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	for (i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	iopool_run_finished(p);
	event_free(p->notify_ev);
	close(p->notify[0]);
	close(p->notify[1]);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
	free(p->threads);
	free(p);
}

struct dirsync {
	int fd;
	pthread_mutex_t lock;
	pthread_cond_t synced;
	uint64_t changes;               /* changes announced */
	uint64_t synced_upto;           /* changes covered by a completed fsync */
	bool syncing;
};

struct dirsync *
dirsync_open(const char *path)
{
	struct dirsync *d = xcalloc(1, sizeof(*d));

	d->fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (d->fd < 0)
		msg_fatal("open %s: %s", path, strerror(errno));
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->synced, NULL);
	return d;
}

int
dirsync_fd(const struct dirsync *d)
{
	return d->fd;
}

int
dirsync_wait(struct dirsync *d)
{
	uint64_t seq, upto;
	int err = 0;

	pthread_mutex_lock(&d->lock);
	seq = ++d->changes;
	while (d->synced_upto < seq) {
		if (d->syncing) {
			pthread_cond_wait(&d->synced, &d->lock);
			continue;
		}
		d->syncing = true;
		upto = d->changes;
		pthread_mutex_unlock(&d->lock);
		err = fsync(d->fd) < 0 ? errno : 0;
		pthread_mutex_lock(&d->lock);
		d->syncing = false;
		if (err == 0)
			d->synced_upto = upto;
		pthread_cond_broadcast(&d->synced);
		if (err)
			break;
	}
	pthread_mutex_unlock(&d->lock);
	return err;
}

void
dirsync_close(struct dirsync *d)
{
	close(d->fd);
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->synced);
	free(d);
}
