/*
 * iopool.c - disk work off the event loop, and shared directory fsyncs.
 *
 * An iopool runs work functions on a few threads and delivers each
 * completion back to the event loop that owns the pool (through a pipe the
 * loop watches), in completion order. The loop never waits for the disk.
 *
 * A groupsync makes changes to one file or directory durable in batches:
 * a thread that changed a directory (rename, unlink) calls
 * groupsync_wait(), which returns only after an fsync of the directory
 * that *started after that change* has completed. Whoever finds no fsync
 * running starts one covering every change made so far; the rest wait for
 * it. N commits, a few fsyncs. The slot pool (recycle.c) shares its
 * device cache flushes the same way: a write announced before it starts
 * (groupsync_writing) and waited for once it is done (groupsync_written),
 * so that a flush about to start can wait a little for the writes under
 * way, to cover them too.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/lib.h"
#include "queue/queue.h"

struct iotask {
	void (*work)(void *);
	void (*done)(void *);
	void *arg;
	struct iopool *pool;
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
	size_t deferred;                /* tasks handed on, not yet finished */
	pthread_cond_t drained;         /* for iopool_destroy: none is */
	int notify[2];
	struct event *notify_ev;
};

/* the task this thread runs, and whether its work() handed it on (the
 * task itself may be finished and freed by then: never looked at again) */
static __thread struct iotask *current_task;
static __thread bool current_deferred;

/* Under the lock: t joins the finished ones; the loop is told when it is
 * the first. */
static void
finished(struct iopool *p, struct iotask *t)
{
	char c = 1;

	t->next = p->finished;
	p->finished = t;
	if (t->next == NULL)
		while (write(p->notify[1], &c, 1) < 0 && errno == EINTR)
			;
}

struct iotask *
iopool_defer(void)
{
	struct iotask *t = current_task;

	if (t == NULL)
		msg_panic("iopool_defer outside of a task");
	pthread_mutex_lock(&t->pool->lock);
	current_deferred = true;
	t->pool->deferred++;
	pthread_mutex_unlock(&t->pool->lock);
	return t;
}

void
iopool_undefer(struct iotask *t)
{
	pthread_mutex_lock(&t->pool->lock);
	current_deferred = false;
	t->pool->deferred--;
	pthread_mutex_unlock(&t->pool->lock);
}

void
iopool_finish(struct iotask *t)
{
	struct iopool *p = t->pool;

	pthread_mutex_lock(&p->lock);
	p->deferred--;
	finished(p, t);
	if (p->deferred == 0 && p->stopping)
		pthread_cond_signal(&p->drained);
	pthread_mutex_unlock(&p->lock);
}

static void *
iopool_thread(void *arg)
{
	struct iopool *p = arg;
	struct iotask *t;

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

		current_task = t;
		current_deferred = false;
		t->work(t->arg);
		current_task = NULL;

		pthread_mutex_lock(&p->lock);
		if (!current_deferred)
			finished(p, t);
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
	pthread_cond_init(&p->drained, NULL);
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
	t->pool = p;
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
	pthread_mutex_lock(&p->lock);
	while (p->deferred > 0)
		pthread_cond_wait(&p->drained, &p->lock);
	pthread_mutex_unlock(&p->lock);
	iopool_run_finished(p);
	event_free(p->notify_ev);
	close(p->notify[0]);
	close(p->notify[1]);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
	pthread_cond_destroy(&p->drained);
	free(p->threads);
	free(p);
}

struct groupsync {
	int fd;
	bool datasync;                  /* fdatasync, else fsync */
	unsigned gather_usec;
	pthread_mutex_t lock;
	pthread_cond_t cond;            /* a write or a sync completed */
	unsigned writing;               /* writes under way (groupsync_writing) */
	uint64_t ready;                 /* changes and completed writes announced */
	uint64_t synced;                /* the first this many are covered by a completed sync */
	bool syncing;
	uint64_t nsyncs;                /* syncs that succeeded */
};

struct groupsync *
groupsync_new(int fd, bool datasync, unsigned gather_usec)
{
	struct groupsync *g = xcalloc(1, sizeof(*g));
	pthread_condattr_t ca;

	g->fd = fd;
	g->datasync = datasync;
	g->gather_usec = gather_usec;
	pthread_mutex_init(&g->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g->cond, &ca);
	pthread_condattr_destroy(&ca);
	return g;
}

struct groupsync *
groupsync_open_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		msg_fatal("open %s: %s", path, strerror(errno));
	return groupsync_new(fd, false, 0);
}

int
groupsync_fd(const struct groupsync *g)
{
	return g->fd;
}

/*
 * Returns once announcement seq is covered: a sync that started after it
 * has completed. Whoever finds no sync running starts one covering every
 * announcement so far; the rest wait for it. While writes are under way
 * (a few hundred microseconds), the one about to sync first waits for
 * them, gather_usec at most, so that one sync covers them too. Called
 * with the lock held; 0 or an errno value from the sync.
 */
static int
wait_covered(struct groupsync *g, uint64_t seq)
{
	struct timespec deadline;
	bool gathered = g->gather_usec == 0;
	uint64_t upto;
	int err = 0;

	if (!gathered) {
		clock_gettime(CLOCK_MONOTONIC, &deadline);
		deadline.tv_nsec += (long)g->gather_usec * 1000L;
		deadline.tv_sec += deadline.tv_nsec / 1000000000L;
		deadline.tv_nsec %= 1000000000L;
	}
	while (g->synced < seq) {
		if (g->syncing) {
			pthread_cond_wait(&g->cond, &g->lock);
			continue;
		}
		if (g->writing > 0 && !gathered) {
			/* woken or not, the state is looked at again: another
			 * may have started the sync meanwhile */
			gathered = pthread_cond_timedwait(&g->cond, &g->lock, &deadline) == ETIMEDOUT;
			continue;
		}
		g->syncing = true;
		upto = g->ready;
		pthread_mutex_unlock(&g->lock);
		err = (g->datasync ? fdatasync(g->fd) : fsync(g->fd)) < 0 ? errno : 0;
		pthread_mutex_lock(&g->lock);
		g->syncing = false;
		if (err == 0) {
			g->nsyncs++;
			if (upto > g->synced)
				g->synced = upto;
		}
		pthread_cond_broadcast(&g->cond);
		if (err != 0)
			break;
	}
	return err;
}

int
groupsync_wait(struct groupsync *g)
{
	int err;

	pthread_mutex_lock(&g->lock);
	err = wait_covered(g, ++g->ready);
	pthread_mutex_unlock(&g->lock);
	return err;
}

void
groupsync_writing(struct groupsync *g)
{
	pthread_mutex_lock(&g->lock);
	g->writing++;
	pthread_mutex_unlock(&g->lock);
}

int
groupsync_written(struct groupsync *g, bool ok)
{
	int err = 0;

	pthread_mutex_lock(&g->lock);
	g->writing--;
	if (ok)
		err = wait_covered(g, ++g->ready);
	else
		pthread_cond_broadcast(&g->cond);       /* one fewer under way */
	pthread_mutex_unlock(&g->lock);
	return err;
}

void
groupsync_counts(struct groupsync *g, uint64_t *covered, uint64_t *syncs)
{
	pthread_mutex_lock(&g->lock);
	*covered = g->synced;
	*syncs = g->nsyncs;
	pthread_mutex_unlock(&g->lock);
}

void
groupsync_close(struct groupsync *g)
{
	if (g == NULL)
		return;
	close(g->fd);
	pthread_mutex_destroy(&g->lock);
	pthread_cond_destroy(&g->cond);
	free(g);
}
