/*
 * session.h - what the smtpd worker and its sessions share inside one
 * worker process. Not an interface for other modules (that is smtpd.h).
 */
#ifndef SORTER_SMTPD_SESSION_H
#define SORTER_SMTPD_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "smtpd/smtpd.h"

struct event_base;
struct session;

struct worker {
	struct config *cf;
	struct event_base *base;
	struct commit_pool *commit;
	struct session_table *st;
	struct counters *ctr;
	struct router *router;         /* RCPT-time lookups */
	struct auth *auth;             /* AUTH checks; NULL without a submission listener */
	struct map_waiter *waiter;     /* answers of threaded maps (ldap:) wake sessions */
	struct proxy_wait *proxies;    /* connections whose PROXY header is awaited */
	int nproxies;
	struct milter_conf *milters;   /* each listener's milters (milter.c) */
	int wake_fd;                   /* datagrams to the queue manager */
	int index;
	void *tls_ctx;                 /* SSL_CTX, or NULL when TLS is off */
	struct listener *ls;
	size_t nls;
	struct event **lev;            /* one accept event per listener */
	struct event *sigterm_ev, *sigusr2_ev, *drain_timer;
	int master_fd;                 /* read end of the master's pipe: EOF = master gone */
	struct event *master_ev, *accept_resume_ev;
	unsigned long accept_failures; /* since the last warning */
	uint64_t accept_warned_usec;   /* when that warning went out */
	struct session *sessions;      /* doubly linked, for draining */
	int nsessions;
	bool draining;
};

/* Takes over a connected socket; never fails (a session that cannot be set
 * up is closed with a 421). */
void session_start(struct worker *w, int fd, const struct sockaddr *sa, socklen_t salen,
		   const struct listener *l, int table_slot);
/* Runs again the commands that wait for a map lookup (the waiter's retry). */
void session_lookup_retry(struct worker *w);
/* Asks every session to end at its next command boundary. */
void session_drain_all(struct worker *w);
/* Ends every session now with a 421, except those waiting for a spool
 * commit: they get its reply first, then the 421. */
void session_end_all(struct worker *w);

#endif
