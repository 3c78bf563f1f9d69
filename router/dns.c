/*
 * dns.c - a small asynchronous resolver: c-ares driven from a libevent
 * loop. Each socket c-ares opens gets an event while c-ares wants to read
 * or write it, and one timer runs c-ares' own retransmissions and
 * timeouts while queries are pending.
 *
 * Answers are handed over from the loop, never from inside dns_lookup()
 * (c-ares answers some names, e.g. from /etc/hosts, before its call
 * returns), so a caller's state is never changed under its feet.
 *
 * It must never block: no getaddrinfo(3), no waiting for a server. A query
 * kind is a kind of struct dns_query plus its c-ares callback: addresses
 * (ares_getaddrinfo) and MX (ares_query, its answer read by mx.c); both
 * share one handle, one hand-over from the loop, and dns_cancel().
 * The address helpers at the end serve the callers: numeric addresses
 * that need no lookup, ports, and the "IP:PORT" form used in logs.
 *
 * A name with UTF-8 labels (an SMTPUTF8 address's domain) is asked in its
 * IDNA A-label form (libidn2: IDNA2008 with the UTS #46 mapping, as
 * Postfix asks); one that has none is answered "not found".
 */
#include "config.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <ares.h>
#include <event2/event.h>
#include <idn2.h>

#include "lib/lib.h"
#include "router/router.h"

#define DNS_TIMEOUT_MS 3000     /* per try; c-ares then tries the next server */
#define DNS_TRIES 2
#define DNS_SERVERS_MAX 1024    /* bytes of a dns_servers value */

struct sockev {
	ares_socket_t fd;
	struct event *ev;
	struct sockev *next;
};

enum query_kind { Q_ADDR, Q_MX };

struct dns_query {
	struct dns *dns;
	enum query_kind kind;
	dns_callback *cb;               /* Q_ADDR */
	dns_mx_callback *mxcb;          /* Q_MX */
	void *arg;
	bool cancelled;         /* the caller is gone; drop the answer */
	bool answered;          /* c-ares is done with it; ev delivers the answer */
	struct event *ev;
	union {
		struct {
			struct dns_answer ans;
			struct sockaddr_storage addrs[DNS_ADDRS_MAX];
		} a;
		struct {
			struct dns_mx_answer ans;
			struct dns_mx mx[DNS_MX_MAX];
		} m;
	} u;
	char err[128];
	struct dns_query *prev, *next;
};

struct dns {
	struct event_base *base;
	ares_channel channel;
	struct sockev *socks;
	struct event *timer;
	unsigned pending;       /* queries c-ares still holds */
	struct dns_query *queries;      /* every live query */
	bool freeing;
};

static void dns_timer_update(struct dns *d);

static void
on_sock(evutil_socket_t fd, short what, void *arg)
{
	struct dns *d = arg;

	ares_process_fd(d->channel, (what & EV_READ) ? fd : ARES_SOCKET_BAD,
			(what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
	dns_timer_update(d);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct dns *d = arg;

	ares_process_fd(d->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	dns_timer_update(d);
}

/* c-ares says which of its sockets it wants to read or write */
static void
sock_state(void *arg, ares_socket_t fd, int readable, int writable)
{
	struct dns *d = arg;
	struct sockev **pp, *s;
	short what = (short)((readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));

	for (pp = &d->socks; (s = *pp) != NULL; pp = &s->next)
		if (s->fd == fd)
			break;
	if (s != NULL) {
		event_free(s->ev);
		s->ev = NULL;
		if (what == 0) {
			*pp = s->next;
			free(s);
			return;
		}
	} else {
		if (what == 0)
			return;
		s = xcalloc(1, sizeof(*s));
		s->fd = fd;
		s->next = d->socks;
		d->socks = s;
	}
	s->ev = event_new(d->base, fd, what | EV_PERSIST, on_sock, d);
	if (s->ev == NULL || event_add(s->ev, NULL) < 0)
		msg_fatal("dns: cannot watch a resolver socket");
}

static void
dns_timer_update(struct dns *d)
{
	struct timeval tv, *tvp;

	if (d->pending == 0) {
		evtimer_del(d->timer);
		return;
	}
	tvp = ares_timeout(d->channel, NULL, &tv);
	if (tvp == NULL) {
		evtimer_del(d->timer);
		return;
	}
	evtimer_add(d->timer, tvp);
}

/* "127.0.0.1:5353 [::1]:53" -> "127.0.0.1:5353,[::1]:53" */
static int
set_servers(struct dns *d, const char *servers, char *err, size_t errlen)
{
	char csv[DNS_SERVERS_MAX];
	size_t i, o = 0;
	bool sep = false;
	int rc;

	for (i = 0; servers[i] != '\0'; i++) {
		if (servers[i] == ',' || servers[i] == ' ' || servers[i] == '\t') {
			sep = o > 0;
			continue;
		}
		if (o + 2 >= sizeof(csv)) {
			snprintf(err, errlen, "dns_servers too long");
			return -1;
		}
		if (sep)
			csv[o++] = ',';
		sep = false;
		csv[o++] = servers[i];
	}
	csv[o] = '\0';
	if (o == 0)
		return 0;
	if ((rc = ares_set_servers_ports_csv(d->channel, csv)) != ARES_SUCCESS) {
		snprintf(err, errlen, "dns_servers \"%s\": %s", servers, ares_strerror(rc));
		return -1;
	}
	return 0;
}

struct dns *
dns_new(struct event_base *base, const char *servers, char *err, size_t errlen)
{
	struct dns *d;
	struct ares_options o;
	int rc;

	if ((rc = ares_library_init(ARES_LIB_INIT_ALL)) != ARES_SUCCESS) {
		snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
		return NULL;
	}
	d = xcalloc(1, sizeof(*d));
	d->base = base;
	memset(&o, 0, sizeof(o));
	o.sock_state_cb = sock_state;
	o.sock_state_cb_data = d;
	o.timeout = DNS_TIMEOUT_MS;
	o.tries = DNS_TRIES;
	rc = ares_init_options(&d->channel, &o,
			       ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
		free(d);
		ares_library_cleanup();
		return NULL;
	}
	if ((d->timer = evtimer_new(base, on_timer, d)) == NULL)
		msg_fatal("dns: cannot create a timer");
	if (servers != NULL && set_servers(d, servers, err, errlen) < 0) {
		dns_free(d);
		return NULL;
	}
	return d;
}

static void
query_free(struct dns_query *q)
{
	struct dns *d = q->dns;

	if (q->prev)
		q->prev->next = q->next;
	else
		d->queries = q->next;
	if (q->next)
		q->next->prev = q->prev;
	if (q->ev)
		event_free(q->ev);
	free(q);
}

void
dns_free(struct dns *d)
{
	struct sockev *s;

	if (d == NULL)
		return;
	d->freeing = true;
	/* runs the callbacks of what c-ares holds, which free those queries */
	ares_destroy(d->channel);
	while (d->queries)
		query_free(d->queries);
	while ((s = d->socks) != NULL) {
		d->socks = s->next;
		if (s->ev)
			event_free(s->ev);
		free(s);
	}
	event_free(d->timer);
	free(d);
	ares_library_cleanup();
}

static void
on_answer_mx(struct dns_query *q)
{
	dns_mx_callback *cb = q->mxcb;
	void *cbarg = q->arg;
	bool cancelled = q->cancelled;
	struct dns_mx mx[DNS_MX_MAX];
	char err[sizeof(q->err)];
	struct dns_mx_answer ans = q->u.m.ans;

	memcpy(mx, q->u.m.mx, ans.nmx * sizeof(mx[0]));
	memcpy(err, q->err, sizeof(err));
	ans.mx = mx;
	ans.err = ans.status == DNS_MX_OK ? NULL : err;
	query_free(q);
	if (!cancelled)
		cb(&ans, cbarg);
}

static void
on_answer(evutil_socket_t fd, short what, void *arg)
{
	struct dns_query *q = arg;
	dns_callback *cb = q->cb;
	void *cbarg = q->arg;
	bool cancelled = q->cancelled;
	struct sockaddr_storage addrs[DNS_ADDRS_MAX];
	char err[sizeof(q->err)];
	struct dns_answer ans;

	/* the query is gone before the callback runs, so the callback may do
	 * anything: look up again, cancel, even free the resolver */
	if (q->kind == Q_MX) {
		on_answer_mx(q);
		return;
	}
	ans = q->u.a.ans;
	memcpy(addrs, q->u.a.addrs, sizeof(addrs));
	memcpy(err, q->err, sizeof(err));
	ans.addrs = addrs;
	ans.err = ans.error ? err : NULL;
	query_free(q);
	if (!cancelled)
		cb(&ans, cbarg);
}

/* Keeps IPv4 addresses first and the server's order within a family. */
static void
take_addresses(struct dns_query *q, const struct ares_addrinfo *ai)
{
	const struct ares_addrinfo_node *n;
	int pass, fam;

	q->u.a.ans.naddrs = 0;
	for (pass = 0; pass < 2; pass++) {
		fam = pass == 0 ? AF_INET : AF_INET6;
		for (n = ai ? ai->nodes : NULL; n != NULL; n = n->ai_next) {
			if (q->u.a.ans.naddrs >= DNS_ADDRS_MAX)
				return;
			if (n->ai_family != fam || n->ai_addr == NULL ||
			    (size_t)n->ai_addrlen > sizeof(q->u.a.addrs[0]))
				continue;
			memset(&q->u.a.addrs[q->u.a.ans.naddrs], 0, sizeof(q->u.a.addrs[0]));
			memcpy(&q->u.a.addrs[q->u.a.ans.naddrs], n->ai_addr, n->ai_addrlen);
			dns_addr_set_port(&q->u.a.addrs[q->u.a.ans.naddrs], 0);
			q->u.a.ans.naddrs++;
		}
	}
}

static void
on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
	struct dns_query *q = arg;
	struct dns *d = q->dns;

	d->pending--;
	if (q->cancelled || d->freeing || status == ARES_EDESTRUCTION) {
		if (ai)
			ares_freeaddrinfo(ai);
		query_free(q);
		return;
	}
	if (status == ARES_SUCCESS)
		take_addresses(q, ai);
	if (ai)
		ares_freeaddrinfo(ai);
	if (status == ARES_SUCCESS && q->u.a.ans.naddrs == 0)
		status = ARES_ENODATA;
	if (status != ARES_SUCCESS) {
		q->u.a.ans.error = status;
		q->u.a.ans.notfound = status == ARES_ENOTFOUND || status == ARES_ENODATA ||
			status == ARES_ENONAME;
		snprintf(q->err, sizeof(q->err), "%s",
			 q->u.a.ans.notfound ? "host not found" :
			 status == ARES_ETIMEOUT ? "timeout" : ares_strerror(status));
		q->u.a.ans.err = q->err;
	}
	q->answered = true;
	event_active(q->ev, EV_TIMEOUT, 0);
}

static struct dns_query *
query_new(struct dns *d, enum query_kind kind, void *arg)
{
	struct dns_query *q = xcalloc(1, sizeof(*q));

	q->dns = d;
	q->kind = kind;
	q->arg = arg;
	if ((q->ev = event_new(d->base, -1, 0, on_answer, q)) == NULL)
		msg_fatal("dns: cannot create an event");
	q->next = d->queries;
	if (d->queries)
		d->queries->prev = q;
	d->queries = q;
	return q;
}

/* The name to ask for: name itself when it is ASCII, else its A-label
 * form in *alloc (the caller frees it), or NULL when it has none. */
static const char *
ascii_name(const char *name, char **alloc)
{
	const unsigned char *p;
	int rc;

	*alloc = NULL;
	for (p = (const unsigned char *)name; *p != '\0' && *p < 0x80; p++)
		;
	if (*p == '\0')
		return name;
	rc = idn2_to_ascii_8z(name, alloc, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
	if (rc != IDN2_OK)      /* as Postfix: a name valid only the old way */
		rc = idn2_to_ascii_8z(name, alloc, IDN2_NFC_INPUT | IDN2_TRANSITIONAL);
	if (rc != IDN2_OK) {
		*alloc = NULL;
		return NULL;
	}
	return *alloc;
}

struct dns_query *
dns_lookup(struct dns *d, const char *host, dns_callback *cb, void *arg)
{
	struct dns_query *q = query_new(d, Q_ADDR, arg);
	struct ares_addrinfo_hints h;
	const char *name;
	char *alloc;

	q->cb = cb;
	memset(&h, 0, sizeof(h));
	h.ai_family = AF_UNSPEC;
	h.ai_socktype = SOCK_STREAM;
	h.ai_flags = ARES_AI_NOSORT;
	d->pending++;
	if ((name = ascii_name(host, &alloc)) == NULL) {
		on_addrinfo(q, ARES_ENOTFOUND, 0, NULL);        /* answered from the loop */
		snprintf(q->err, sizeof(q->err), "not a valid international domain name");
		return q;
	}
	ares_getaddrinfo(d->channel, name, NULL, &h, on_addrinfo, q);
	idn2_free(alloc);
	dns_timer_update(d);
	return q;
}

/* Equal preferences in a random order, so that load spreads over them
 * (RFC 5321 5.1). */
static unsigned
mx_random(void *arg)
{
	return arc4random();
}

static void
on_mx(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_query *q = arg;
	struct dns *d = q->dns;
	struct dns_mx_answer *a = &q->u.m.ans;
	const char *err = NULL;

	d->pending--;
	if (q->cancelled || d->freeing || status == ARES_EDESTRUCTION) {
		query_free(q);
		return;
	}
	a->nmx = 0;
	switch (status) {
	case ARES_SUCCESS:
		if (abuf == NULL || alen < 0) {
			a->status = DNS_MX_TEMPFAIL;
			break;
		}
		a->status = dns_mx_parse(abuf, (size_t)alen, q->u.m.mx, DNS_MX_MAX, &a->nmx,
					 mx_random, NULL);
		break;
	case ARES_ENOTFOUND:
		a->status = DNS_MX_NXDOMAIN;
		break;
	case ARES_ENODATA:
		a->status = DNS_MX_NONE;
		break;
	default:
		a->status = DNS_MX_TEMPFAIL;
		err = status == ARES_ETIMEOUT ? "timeout" : ares_strerror(status);
		break;
	}
	if (err == NULL)
		switch (a->status) {
		case DNS_MX_OK:
			break;
		case DNS_MX_NONE:
			err = "no MX records";
			break;
		case DNS_MX_NULL:
			err = "null MX: the domain accepts no mail";
			break;
		case DNS_MX_NXDOMAIN:
			err = "Host or domain name not found";
			break;
		case DNS_MX_TEMPFAIL:
			err = "malformed or unusable MX answer";
			break;
		}
	snprintf(q->err, sizeof(q->err), "%s", err ? err : "");
	q->answered = true;
	event_active(q->ev, EV_TIMEOUT, 0);
}

struct dns_query *
dns_mx_lookup(struct dns *d, const char *domain, dns_mx_callback *cb, void *arg)
{
	struct dns_query *q = query_new(d, Q_MX, arg);
	const char *name;
	char *alloc;

	q->mxcb = cb;
	d->pending++;
	if ((name = ascii_name(domain, &alloc)) == NULL) {
		on_mx(q, ARES_ENOTFOUND, 0, NULL, 0);           /* answered from the loop */
		return q;
	}
	/* ares_query, not ares_search: a mail domain is never relative */
	ares_query(d->channel, name, ns_c_in, ns_t_mx, on_mx, q);
	idn2_free(alloc);
	dns_timer_update(d);
	return q;
}

void
dns_cancel(struct dns_query *q)
{
	if (q == NULL)
		return;
	if (q->answered)
		query_free(q);
	else
		q->cancelled = true;    /* on_addrinfo or on_mx frees it */
}

/* ---- addresses ---- */

int
dns_addr_cmp(const void *x, const void *y)
{
	const struct sockaddr_storage *a = x, *b = y;

	if (a->ss_family != b->ss_family)
		return a->ss_family < b->ss_family ? -1 : 1;
	if (a->ss_family == AF_INET)
		return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
			      &((const struct sockaddr_in *)b)->sin_addr, 4);
	if (a->ss_family == AF_INET6)
		return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
			      &((const struct sockaddr_in6 *)b)->sin6_addr, 16);
	return 0;
}

size_t
dns_addr_len(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return sizeof(struct sockaddr_in);
	if (ss->ss_family == AF_INET6)
		return sizeof(struct sockaddr_in6);
	return sizeof(struct sockaddr_un);
}

void
dns_addr_set_port(struct sockaddr_storage *ss, unsigned short port)
{
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons(port);
	else if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

int
dns_addr_numeric(const char *host, unsigned short port, struct sockaddr_storage *ss)
{
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, host, &s4->sin_addr) == 1)
		s4->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1)
		s6->sin6_family = AF_INET6;
	else
		return -1;
	dns_addr_set_port(ss, port);
	return 0;
}

void
dns_addr_ip(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	const void *a = ss->ss_family == AF_INET ?
	    (const void *)&((const struct sockaddr_in *)ss)->sin_addr :
	    (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;

	if ((ss->ss_family != AF_INET && ss->ss_family != AF_INET6) ||
	    inet_ntop(ss->ss_family, a, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "?");
}

void
dns_addr_format(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
	const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

	if (ss->ss_family == AF_UNIX)
		snprintf(buf, len, "unix:%s", ((const struct sockaddr_un *)ss)->sun_path);
	else if (ss->ss_family == AF_INET && inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip)))
		snprintf(buf, len, "%s:%u", ip, ntohs(s4->sin_port));
	else if (ss->ss_family == AF_INET6 && inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip)))
		snprintf(buf, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
	else
		snprintf(buf, len, "unknown");
}
