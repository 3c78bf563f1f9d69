/*
 * mapwait.c - how an event loop waits for maps that answer later (ldap:):
 * one eventfd the maps' lookup threads write to, one event on the loop
 * that reads it and calls the owner back, and a one-second tick while
 * something waits, so that a lookup past its timeout is noticed even when
 * no answer ever comes.
 *
 * It must never block the loop (the descriptor is non-blocking) and never
 * call back from a lookup thread: only the loop's thread calls retry().
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "router/router.h"

struct map_waiter {
	int fd;
	struct event *ev, *tick;
	bool busy;
	void (*retry)(void *arg);
	void *arg;
};

static void
on_answer(evutil_socket_t fd, short what, void *arg)
{
	struct map_waiter *w = arg;
	uint64_t n;

	if (what & EV_READ)
		while (read(w->fd, &n, sizeof(n)) == (ssize_t)sizeof(n))
			;
	w->retry(w->arg);
}

struct map_waiter *
map_waiter_new(struct event_base *base, void (*retry)(void *arg), void *arg)
{
	struct map_waiter *w = xcalloc(1, sizeof(*w));

	w->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->fd < 0)
		msg_fatal("eventfd: %s", strerror(errno));
	w->retry = retry;
	w->arg = arg;
	w->ev = event_new(base, w->fd, EV_READ | EV_PERSIST, on_answer, w);
	w->tick = event_new(base, -1, EV_PERSIST, on_answer, w);
	if (w->ev == NULL || w->tick == NULL)
		msg_fatal("cannot create the map wake-up events");
	event_add(w->ev, NULL);
	return w;
}

int
map_waiter_fd(const struct map_waiter *w)
{
	return w->fd;
}

void
map_waiter_busy(struct map_waiter *w, bool busy)
{
	struct timeval tv = { 1, 0 };

	if (busy == w->busy)
		return;
	w->busy = busy;
	if (busy)
		event_add(w->tick, &tv);
	else
		event_del(w->tick);
}

void
map_waiter_free(struct map_waiter *w)
{
	if (w == NULL)
		return;
	event_free(w->ev);
	event_free(w->tick);
	close(w->fd);
	free(w);
}
