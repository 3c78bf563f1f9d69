/*
 * worker.c - an smtpd worker process: accepts connections on the listeners
 * inherited from the master and runs their sessions in one event loop.
 *
 * SIGTERM: stop accepting, let sessions finish their transaction (they get
 * 421 at their next command boundary), exit when none is left or after a
 * grace period. SIGUSR2 (a reload retired this worker): stop accepting and
 * exit once the open sessions have ended on their own; their clients never
 * notice the reload. A worker holds nothing that a crash could lose after
 * a 250.
 *
 * The master may die without a word (kill -9): the read end of its pipe then
 * reports EOF, and the worker closes its copies of the listeners at once (so
 * that a new sorterd can bind), ends its sessions (a commit under way still
 * gets its reply) and exits within MASTER_GONE_EXIT_SECONDS.
 *
 * On a proxy=yes listener the connection's first bytes are a PROXY protocol
 * header, accepted only from proxy_networks; the session starts, and the
 * per-client limits count, once it has named the real client.
 *
 * When descriptors run out (EMFILE, ENFILE) a pending connection cannot be
 * taken and the listener stays readable: accepting pauses for a second
 * instead of spinning, and the warning goes out at most once a second.
 */
#include "config.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "lib/lib.h"
#include "lib/metrics.h"
#include "queue/queue.h"
#include "router/router.h"
#include "smtpd/auth.h"
#include "smtpd/milter.h"
#include "smtpd/session.h"
#include "smtpd/smtpd.h"

#define DRAIN_GRACE_SECONDS 60
#define MASTER_GONE_EXIT_SECONDS 5      /* commits finish in far less */
#define ACCEPTS_PER_WAKEUP 32
#define ACCEPT_PAUSE_MSEC 1000
#define ACCEPT_WARN_USEC 1000000
#define FULL_PAUSE_MSEC 10              /* smtpd_max_sessions reached: look again after */
#define FULL_WARN_USEC 60000000

static void
client_ip(const struct sockaddr *sa, char *buf, size_t len)
{
	const void *a = sa->sa_family == AF_INET6 ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
						  : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;

	if (inet_ntop(sa->sa_family, a, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "unknown");
}

static void
refuse(int fd, const char *host, const char *why)
{
	char buf[512];
	int n;

	n = snprintf(buf, sizeof(buf), "421 4.7.0 %s Error: %s\r\n", host, why);
	/* best effort: the socket is non-blocking and fresh, the line fits */
	if (n > 0 && send(fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		(void)0;
	close(fd);
}

static void
listeners_off(struct worker *w)
{
	size_t i;

	for (i = 0; i < w->nls; i++)
		event_del(w->lev[i]);
}

static void
on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	size_t i;

	if (w->draining)
		return;
	for (i = 0; i < w->nls; i++)
		event_add(w->lev[i], NULL);
}

/* accept() failed for want of a resource (descriptors, memory): the
 * connection stays in the backlog and the listener stays readable, so
 * trying again at once would spin. The count says how bad it was. */
static void
accept_pause(struct worker *w, int err)
{
	struct timeval tv = { ACCEPT_PAUSE_MSEC / 1000, (ACCEPT_PAUSE_MSEC % 1000) * 1000 };
	uint64_t now = now_usec();

	w->accept_failures++;
	if (w->accept_warned_usec == 0 || now - w->accept_warned_usec >= ACCEPT_WARN_USEC) {
		msg_warn("accept: %s: %lu failure%s since the last warning; accepting again in %d ms"
			 " (%d sessions open here; see smtpd_max_sessions and RLIMIT_NOFILE)",
			 strerror(err), w->accept_failures, w->accept_failures == 1 ? "" : "s",
			 ACCEPT_PAUSE_MSEC, w->nsessions);
		w->accept_failures = 0;
		w->accept_warned_usec = now;
	}
	listeners_off(w);
	evtimer_add(w->accept_resume_ev, &tv);
}

/* The client's address is known (the peer's, or the one a PROXY header
 * gave): the per-client limits count it, and its session starts. */
static void
admit(struct worker *w, int fd, struct listener *l, const struct sockaddr_storage *ss,
      socklen_t sl)
{
	unsigned char key[16];
	char ip[INET6_ADDRSTRLEN];
	bool exempt;
	int slot;

	client_addr_key((const struct sockaddr *)ss, key);
	/* trusted networks (an internal relay, a load test) have no per-client limits */
	exempt = net_list_match(w->cf->smtpd_client_limit_exceptions,
				w->cf->nsmtpd_client_limit_exceptions, key);
	slot = session_table_enter(w->st, w->index, key, w->cf->smtpd_max_sessions,
				   exempt ? 0 : w->cf->smtpd_client_connection_limit,
				   exempt ? 0 : w->cf->smtpd_client_connection_rate_limit,
				   time(NULL));
	if (slot == -1) {
		msg_warn("too many sessions (smtpd_max_sessions=%d): refusing a client",
			 w->cf->smtpd_max_sessions);
		refuse(fd, w->cf->hostname, "too many connections");
		atomic_fetch_add(&w->ctr->refused, 1);
		metrics_session_rejected((int)(l - w->ls), MSR_MAX_SESSIONS);
		return;
	}
	if (slot < 0) {
		client_ip((const struct sockaddr *)ss, ip, sizeof(ip));
		if (slot == -2)
			msg_warn("too many sessions from [%s] (smtpd_client_connection_limit=%d)",
				 ip, w->cf->smtpd_client_connection_limit);
		else
			msg_warn("too many connections from [%s] in a minute "
				 "(smtpd_client_connection_rate_limit=%d)",
				 ip, w->cf->smtpd_client_connection_rate_limit);
		refuse(fd, w->cf->hostname, slot == -2 ? "too many connections from your address"
			: "too many connections per minute from your address");
		atomic_fetch_add(&w->ctr->refused, 1);
		metrics_session_rejected((int)(l - w->ls), slot == -2 ? MSR_CLIENT_LIMIT : MSR_CLIENT_RATE);
		return;
	}
	atomic_fetch_add(&w->ctr->connections, 1);
	session_start(w, fd, (const struct sockaddr *)ss, sl, l, slot);
}

/* ---- PROXY protocol (listen ... proxy=yes) ----
 * The header is read here, before any session exists: the session, its
 * logs, Received: and the per-client limits see only the real client.
 * The socket is peeked (edge-triggered, so an incomplete header waits for
 * more bytes without spinning) and exactly the header is taken from it:
 * whatever follows stays for the session. */

struct proxy_wait {
	struct worker *w;
	struct listener *l;
	int fd;
	struct sockaddr_storage peer;
	char ip[INET6_ADDRSTRLEN];
	struct event *ev;
	uint64_t deadline;              /* usec */
	struct proxy_wait *prev, *next;
};

static void
proxy_end(struct proxy_wait *pw)
{
	struct worker *w = pw->w;

	if (pw->prev)
		pw->prev->next = pw->next;
	else
		w->proxies = pw->next;
	if (pw->next)
		pw->next->prev = pw->prev;
	w->nproxies--;
	event_free(pw->ev);
	free(pw);
}

static void
on_proxy_read(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_wait *pw = arg;
	struct worker *w = pw->w;
	unsigned char buf[PROXY_HEADER_MAX];
	struct proxy_header h;
	struct sockaddr_storage client;
	const char *why;
	char ip[INET6_ADDRSTRLEN];
	ssize_t n, hl;

	/* the persistent event's timer restarts with each wake-up: the
	 * deadline is what bounds a header that trickles in */
	if (what & EV_TIMEOUT || now_usec() >= pw->deadline) {
		msg_warn("timeout waiting for the PROXY protocol header from [%s]", pw->ip);
		refuse(pw->fd, w->cf->hostname, "timeout waiting for the PROXY protocol header");
		metrics_session_rejected((int)(pw->l - w->ls), MSR_PROXY);
		proxy_end(pw);
		return;
	}
	n = recv(fd, buf, sizeof(buf), MSG_PEEK);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n <= 0) {
		/* a proxy's connection check: connect, then close */
		close(pw->fd);
		proxy_end(pw);
		return;
	}
	hl = proxy_parse(buf, (size_t)n, &h, &why);
	if (hl < 0) {
		msg_warn("malformed PROXY protocol header from [%s]: %s", pw->ip, why);
		refuse(pw->fd, w->cf->hostname, "malformed PROXY protocol header");
		metrics_session_rejected((int)(pw->l - w->ls), MSR_PROXY);
		proxy_end(pw);
		return;
	}
	if (hl == 0)
		return;         /* the next edge comes with the next bytes */
	if (recv(fd, buf, (size_t)hl, 0) != hl) {
		msg_warn("[%s]: cannot take the PROXY protocol header: %s", pw->ip, strerror(errno));
		close(pw->fd);
		proxy_end(pw);
		return;
	}
	fd = pw->fd;
	if (h.local) {
		client = pw->peer;      /* the proxy's own check: its session says so */
	} else {
		client = h.src;
		client_ip((struct sockaddr *)&client, ip, sizeof(ip));
		msg_info("PROXY v%d from [%s]: client [%s]", h.version, pw->ip, ip);
	}
	if (w->draining) {
		refuse(fd, w->cf->hostname, "service shutting down");
		metrics_session_rejected((int)(pw->l - w->ls), MSR_SHUTDOWN);
		proxy_end(pw);
		return;
	}
	{
		struct listener *l = pw->l;

		proxy_end(pw);
		admit(w, fd, l, &client, client.ss_family == AF_INET6 ?
		      sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
	}
}

static void
proxy_begin(struct worker *w, int fd, struct listener *l, const struct sockaddr_storage *ss)
{
	struct timeval tv = { w->cf->smtpd_proxy_timeout, 0 };
	unsigned char key[16];
	struct proxy_wait *pw;
	char ip[INET6_ADDRSTRLEN];

	client_ip((const struct sockaddr *)ss, ip, sizeof(ip));
	client_addr_key((const struct sockaddr *)ss, key);
	if (!net_list_match(w->cf->proxy_networks, w->cf->nproxy_networks, key)) {
		msg_warn("connection from [%s] to a proxy=yes listener: not in proxy_networks, "
			 "refused", ip);
		refuse(fd, w->cf->hostname, "PROXY protocol not allowed from your address");
		atomic_fetch_add(&w->ctr->refused, 1);
		metrics_session_rejected((int)(l - w->ls), MSR_PROXY);
		return;
	}
	if (w->nproxies >= w->cf->smtpd_max_sessions) {
		msg_warn("too many connections waiting for a PROXY header (smtpd_max_sessions=%d)",
			 w->cf->smtpd_max_sessions);
		refuse(fd, w->cf->hostname, "too many connections");
		atomic_fetch_add(&w->ctr->refused, 1);
		metrics_session_rejected((int)(l - w->ls), MSR_MAX_SESSIONS);
		return;
	}
	pw = xcalloc(1, sizeof(*pw));
	pw->w = w;
	pw->l = l;
	pw->fd = fd;
	pw->peer = *ss;
	snprintf(pw->ip, sizeof(pw->ip), "%s", ip);
	pw->deadline = now_usec() + (uint64_t)w->cf->smtpd_proxy_timeout * 1000000;
	pw->ev = event_new(w->base, fd, EV_READ | EV_ET | EV_PERSIST, on_proxy_read, pw);
	if (pw->ev == NULL)
		msg_fatal("cannot create an event");
	pw->next = w->proxies;
	if (w->proxies)
		w->proxies->prev = pw;
	w->proxies = pw;
	w->nproxies++;
	event_add(pw->ev, &tv);
}

static void
on_accept(evutil_socket_t lfd, short what, void *arg)
{
	struct listener *l = arg;
	struct worker *w = l->owner;
	struct sockaddr_storage ss;
	socklen_t sl;
	int fd, i;

	for (i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
		/* at smtpd_max_sessions, new clients wait in the listen queue (as
		 * with Postfix's process limit) until a session ends, instead of
		 * being refused: a burst from a sender's pool of connections, or
		 * a session that reconnects at once after its QUIT, goes through */
		if (!session_table_reserve(w->st, w->index, w->cf->smtpd_max_sessions)) {
			struct timeval tv = { 0, FULL_PAUSE_MSEC * 1000 };
			uint64_t now = now_usec();

			if (w->full_warned_usec == 0 || now - w->full_warned_usec >= FULL_WARN_USEC) {
				msg_warn("smtpd_max_sessions=%d reached: new clients wait until a "
					 "session ends", w->cf->smtpd_max_sessions);
				w->full_warned_usec = now;
			}
			listeners_off(w);
			evtimer_add(w->accept_resume_ev, &tv);
			return;
		}
		sl = sizeof(ss);
		fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			session_table_unreserve(w->st, w->index);
			if (errno == ECONNABORTED || errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				accept_pause(w, errno);
			return;
		}
		if (w->draining) {
			session_table_unreserve(w->st, w->index);
			refuse(fd, w->cf->hostname, "service shutting down");
			metrics_session_rejected((int)(l - w->ls), MSR_SHUTDOWN);
			continue;
		}
		if (l->spec.proxy) {
			/* a PROXY client is counted once its header names it (admit) */
			session_table_unreserve(w->st, w->index);
			proxy_begin(w, fd, l, &ss);
		} else {
			admit(w, fd, l, &ss, sl);       /* in the place reserved */
		}
	}
}

static void
on_lookup_answer(void *arg)
{
	session_lookup_retry(arg);
}

static void
on_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	msg_warn("drain grace period over with %d sessions open; exiting", w->nsessions);
	event_base_loopexit(w->base, NULL);
}

/* EOF on the master's pipe: nobody supervises this worker any more and a
 * new sorterd may be starting. The listeners close now (they are shared
 * with the other workers: the port is free once every one has closed
 * them), the sessions end, and the worker exits within a bound. */
static void
on_master_gone(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	struct timeval tv = { MASTER_GONE_EXIT_SECONDS, 0 };
	ssize_t n;
	char c;
	size_t i;

	n = read(fd, &c, 1);
	if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR)))
		return;         /* nothing is ever written: only EOF (or an error) counts */
	event_del(w->master_ev);
	msg_warn("the master process is gone: closing the listeners, ending %d session%s",
		 w->nsessions, w->nsessions == 1 ? "" : "s");
	w->draining = true;
	listeners_off(w);
	evtimer_del(w->accept_resume_ev);
	for (i = 0; i < w->nls; i++) {
		close(w->ls[i].fd);
		w->ls[i].fd = -1;
	}
	session_end_all(w);
	if (w->nsessions == 0) {
		event_base_loopexit(w->base, NULL);
		return;
	}
	/* a client that never reads its 421 does not hold the worker */
	if (w->drain_timer)
		event_free(w->drain_timer);
	w->drain_timer = evtimer_new(w->base, on_drain_timeout, w);
	evtimer_add(w->drain_timer, &tv);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct worker *w = arg;
	struct timeval tv = { DRAIN_GRACE_SECONDS, 0 };

	if (!w->draining) {
		w->draining = true;
		listeners_off(w);
		evtimer_del(w->accept_resume_ev);
	}
	if (sig == SIGUSR2) {
		if (w->nsessions == 0)
			event_base_loopexit(w->base, NULL);
		return;
	}
	if (w->drain_timer)
		return;
	session_drain_all(w);
	if (w->nsessions == 0) {
		event_base_loopexit(w->base, NULL);
		return;
	}
	w->drain_timer = evtimer_new(w->base, on_drain_timeout, w);
	evtimer_add(w->drain_timer, &tv);
}

int
worker_main(struct config *cf, struct listener *ls, size_t nls, struct session_table *st,
	    struct counters *ctr, int index, void *tls_ctx, int master_fd)
{
	struct worker w;
	char err[512];
	size_t i;

	memset(&w, 0, sizeof(w));
	w.cf = cf;
	w.st = st;
	w.ctr = ctr;
	w.wake_fd = -1;
	w.index = index;
	w.tls_ctx = tls_ctx;
	w.ls = ls;
	w.nls = nls;
	w.master_fd = master_fd;
	qid_init((unsigned)index, spool_newest_qid(cf->spool_dir));
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	w.base = event_base_new();
	if (w.base == NULL)
		msg_fatal("cannot create event loop");
	w.commit = commit_pool_create(w.base, cf->spool_dir, cf->io_threads,
				      (uint64_t)cf->queue_minfree);
	w.router = router_open(cf, err, sizeof(err));
	if (w.router == NULL)
		msg_fatal("router: %s", err);
	for (i = 0; i < nls && w.auth == NULL; i++)
		if (ls[i].spec.role != ROLE_MX && (w.auth = auth_new(w.base, cf, err, sizeof(err))) == NULL)
			msg_fatal("auth: %s", err);
	/* ldap: maps answer later: RCPT and MAIL wait for them, the loop does not */
	w.waiter = map_waiter_new(w.base, on_lookup_answer, &w);
	router_set_wakeup(w.router, map_waiter_fd(w.waiter));
	auth_set_wakeup(w.auth, map_waiter_fd(w.waiter));
	w.milters = milter_conf_new(cf, ls, nls);
	w.lev = xcalloc(nls, sizeof(*w.lev));
	for (i = 0; i < nls; i++) {
		ls[i].owner = &w;
		w.lev[i] = event_new(w.base, ls[i].fd, EV_READ | EV_PERSIST, on_accept, &ls[i]);
		event_add(w.lev[i], NULL);
	}
	w.sigterm_ev = evsignal_new(w.base, SIGTERM, on_signal, &w);
	event_add(w.sigterm_ev, NULL);
	w.sigusr2_ev = evsignal_new(w.base, SIGUSR2, on_signal, &w);
	event_add(w.sigusr2_ev, NULL);
	w.accept_resume_ev = evtimer_new(w.base, on_accept_resume, &w);
	w.master_ev = event_new(w.base, master_fd, EV_READ | EV_PERSIST, on_master_gone, &w);
	event_add(w.master_ev, NULL);

	event_base_dispatch(w.base);

	while (w.proxies != NULL) {
		close(w.proxies->fd);
		proxy_end(w.proxies);
	}
	commit_pool_destroy(w.commit);
	router_set_wakeup(w.router, -1);
	auth_set_wakeup(w.auth, -1);
	map_waiter_free(w.waiter);
	auth_free(w.auth);
	milter_conf_free(w.milters);
	for (i = 0; i < nls; i++)
		event_free(w.lev[i]);
	free(w.lev);
	event_free(w.sigterm_ev);
	event_free(w.sigusr2_ev);
	event_free(w.accept_resume_ev);
	event_free(w.master_ev);
	if (w.drain_timer)
		event_free(w.drain_timer);
	event_base_free(w.base);
	router_close(w.router);
	if (w.wake_fd >= 0)
		close(w.wake_fd);
	return 0;
}
