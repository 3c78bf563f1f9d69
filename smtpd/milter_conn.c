/*
 * milter_conn.c - the milter client's connections: which filters each
 * listener has (milter_conf), and the connection to one filter: connect,
 * timers, failure and its default action, writes, and the framing of the
 * filter's replies, each handed to the conversation (milter.c) whole.
 *
 * It must never block the loop (non-blocking sockets, numeric endpoints),
 * never read a packet past its length field's limit, and never report a
 * failed filter twice.
 */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "lib/lib.h"
#include "lib/metrics.h"
#include "smtpd/milter.h"
#include "smtpd/milter_client.h"
#include "smtpd/smtpd.h"

/* ---- configuration ---- */

struct milter_conf *
milter_conf_new(const struct config *cf, const struct listener *ls, size_t nls)
{
	struct milter_conf *mcf = xcalloc(1, sizeof(*mcf));
	const char *lists[MILTER_MACRO_STAGES] = {
		[MS_CONNECT] = cf->milter_connect_macros, [MS_HELO] = cf->milter_helo_macros,
		[MS_MAIL] = cf->milter_mail_macros, [MS_RCPT] = cf->milter_rcpt_macros,
		[MS_DATA] = cf->milter_data_macros, [MS_EOM] = cf->milter_eom_macros,
		[MS_EOH] = cf->milter_eoh_macros,
	};
	const char *v;
	char why[256];
	size_t i, j;

	mcf->cf = cf;
	mcf->ls = ls;
	mcf->nls = nls;
	mcf->specs = xcalloc(nls ? nls : 1, sizeof(*mcf->specs));
	mcf->nspecs = xcalloc(nls ? nls : 1, sizeof(*mcf->nspecs));
	for (i = 0; i < MILTER_MACRO_STAGES; i++)
		mcf->macros[i] = lists[i] ? xstrdup(lists[i]) : NULL;
	for (i = 0; i < nls; i++) {
		/* the listener as this config declares it: a reload may have changed it */
		v = cf->smtpd_milters;
		for (j = 0; j < cf->nlisten; j++)
			if (strcmp(cf->listen[j].host, ls[i].spec.host) == 0 &&
			    strcmp(cf->listen[j].port, ls[i].spec.port) == 0 &&
			    cf->listen[j].milters != NULL)
				v = cf->listen[j].milters;
		if (milter_specs_parse(v, &mcf->specs[i], &mcf->nspecs[i], why, sizeof(why)) < 0)
			msg_warn("listener %s:%s: %s; no milters", ls[i].spec.host, ls[i].spec.port, why);
	}
	return mcf;
}

void
milter_conf_free(struct milter_conf *mcf)
{
	size_t i;

	if (mcf == NULL)
		return;
	for (i = 0; i < mcf->nls; i++)
		milter_specs_free(mcf->specs[i], mcf->nspecs[i]);
	for (i = 0; i < MILTER_MACRO_STAGES; i++)
		free(mcf->macros[i]);
	free(mcf->specs);
	free(mcf->nspecs);
	free(mcf);
}

/* ---- the connection to one filter ---- */

static int
timeout_of(const struct mconn *m, enum milter_stage st)
{
	const struct config *cf = m->mc->cf;

	if (m->state == MC_CONNECTING)
		return m->spec->connect_timeout ? m->spec->connect_timeout : cf->milter_connect_timeout;
	if (st == MS_HEADER || st == MS_EOH || st == MS_BODY || st == MS_EOM)
		return m->spec->content_timeout ? m->spec->content_timeout : cf->milter_content_timeout;
	return m->spec->command_timeout ? m->spec->command_timeout : cf->milter_command_timeout;
}

void
mconn_arm(struct mconn *m)
{
	struct timeval tv = { timeout_of(m, m->wstage), 0 };

	evtimer_add(m->timer, &tv);
}

static void
disconnect(struct mconn *m)
{
	if (m->bev != NULL) {
		bufferevent_free(m->bev);
		m->bev = NULL;
	}
	if (m->timer != NULL)
		evtimer_del(m->timer);
	m->waiting = m->draining = false;
	m->in_msg = false;
}

/* A filter failed: logged once, disconnected, and its default action is
 * what every stage gets from it from now on (accept: it is left out). */
void
mconn_fail(struct mconn *m, const char *fmt, ...)
{
	struct milter_client *mc = m->mc;
	char why[512];
	va_list ap;

	if (m->state == MC_FAILED)
		return;
	metrics_milter(m->spec->name, m->timed_out ? MMILT_TIMEOUT : MMILT_ERROR);
	m->timed_out = false;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	msg_warn("milter %s: %s; default_action=%s", m->spec->name, why,
		 milter_action_names[m->action]);
	disconnect(m);
	m->state = MC_FAILED;
	if (m->action == MILTER_ACT_ACCEPT)
		m->conn_done = true;
	if (mc->busy)
		milter_kick(mc);
}

/* Sends what mc->out holds to m. */
void
mconn_flush(struct milter_client *mc, struct mconn *m)
{
	if (mc->out.len > 0 && bufferevent_write(m->bev, mc->out.s, mc->out.len) < 0)
		mconn_fail(m, "cannot queue a packet");
	dstr_reset(&mc->out);
}

void
mconn_expect(struct mconn *m, enum milter_stage st)
{
	m->waiting = true;
	m->wstage = st;
	mconn_arm(m);
}

static void on_mread(struct bufferevent *bev, void *arg);
static void on_mwrite(struct bufferevent *bev, void *arg);
static void on_mevent(struct bufferevent *bev, short what, void *arg);

static void
on_mtimer(evutil_socket_t fd, short what, void *arg)
{
	struct mconn *m = arg;

	m->timed_out = true;
	if (m->state == MC_CONNECTING)
		mconn_fail(m, "connect timed out");
	else if (m->draining)
		mconn_fail(m, "cannot send %s within %d s", milter_stage_name(m->wstage),
		      timeout_of(m, m->wstage));
	else
		mconn_fail(m, "no reply to %s within %d s", milter_stage_name(m->wstage),
		      timeout_of(m, m->wstage));
}

void
mconn_connect(struct milter_client *mc, struct mconn *m)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, one = 1;

	memset(&ss, 0, sizeof(ss));
	if (m->spec->family == AF_UNIX) {
		struct sockaddr_un *su = (struct sockaddr_un *)&ss;

		su->sun_family = AF_UNIX;
		snprintf(su->sun_path, sizeof(su->sun_path), "%s", m->spec->path);
		len = sizeof(*su);
	} else if (m->spec->family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)atoi(m->spec->port));
		inet_pton(AF_INET6, m->spec->host, &s6->sin6_addr);
		len = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)atoi(m->spec->port));
		inet_pton(AF_INET, m->spec->host, &s4->sin_addr);
		len = sizeof(*s4);
	}
	fd = socket(m->spec->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		mconn_fail(m, "socket: %s", strerror(errno));
		return;
	}
	/* a request and its reply per step: Nagle's delay would be paid on each */
	if (m->spec->family != AF_UNIX)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	m->bev = bufferevent_socket_new(mc->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (m->bev == NULL) {
		close(fd);
		mconn_fail(m, "cannot set up a connection");
		return;
	}
	bufferevent_setcb(m->bev, on_mread, on_mwrite, on_mevent, m);
	m->state = MC_CONNECTING;
	m->waiting = true;
	m->wstage = MS_OPTNEG;
	mconn_arm(m);
	if (bufferevent_socket_connect(m->bev, (struct sockaddr *)&ss, (int)len) < 0)
		mconn_fail(m, "connect: %s", strerror(errno));
}

static void
on_mevent(struct bufferevent *bev, short what, void *arg)
{
	struct mconn *m = arg;
	struct milter_client *mc = m->mc;
	int err = EVUTIL_SOCKET_ERROR();

	if (what & BEV_EVENT_CONNECTED) {
		m->state = MC_OPTNEG;
		bufferevent_enable(bev, EV_READ | EV_WRITE);
		milter_put_optneg(&mc->out, MILTER_VERSION, MILTER_ACTIONS_OFFERED,
				  MILTER_PROTO_OFFERED);
		mconn_flush(mc, m);
		mconn_arm(m);
		return;
	}
	if (what & BEV_EVENT_EOF)
		mconn_fail(m, m->waiting ? "connection closed during %s" : "connection closed (%s)",
		      milter_stage_name(m->wstage));
	else if (m->state == MC_CONNECTING)
		mconn_fail(m, "connect: %s", evutil_socket_error_to_string(err));
	else
		mconn_fail(m, "%s: %s", milter_stage_name(m->wstage), evutil_socket_error_to_string(err));
}

static void
on_mwrite(struct bufferevent *bev, void *arg)
{
	struct mconn *m = arg;

	if (m->draining) {
		m->draining = false;
		evtimer_del(m->timer);
		milter_kick(m->mc);
	}
}

static void
on_mread(struct bufferevent *bev, void *arg)
{
	struct mconn *m = arg;
	struct milter_client *mc = m->mc;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct milter_reply r;
	unsigned char head[MILTER_LEN_BYTES];
	const char *why;
	size_t pktlen;

	while (m->state != MC_FAILED && evbuffer_get_length(in) >= MILTER_LEN_BYTES) {
		/* the length field first: a bad one is an error before any data */
		evbuffer_copyout(in, head, sizeof(head));
		if (milter_frame(head, sizeof(head), &pktlen, &why) == MILTER_FRAME_ERROR) {
			mconn_fail(m, "%s", why);
			return;
		}
		pktlen = MILTER_LEN_BYTES + (size_t)be32_get(head);
		if (evbuffer_get_length(in) < pktlen)
			return;         /* the rest of the packet is still on its way */
		evbuffer_drain(in, MILTER_LEN_BYTES);
		m->pkt = xrealloc(m->pkt, pktlen - MILTER_LEN_BYTES);
		evbuffer_remove(in, m->pkt, pktlen - MILTER_LEN_BYTES);
		if (milter_reply_parse(m->pkt, pktlen - MILTER_LEN_BYTES, &r, &why) < 0) {
			mconn_fail(m, "malformed reply 0x%02x: %s", m->pkt[0], why);
			return;
		}
		milter_on_reply(mc, m, &r);
	}
}

/* ---- the life of the connection ---- */

void
mconn_init(struct milter_client *mc, struct mconn *m, const struct milter_spec *spec)
{
	m->mc = mc;
	m->spec = spec;
	m->action = spec->default_action >= 0 ? spec->default_action : mc->cf->milter_default_action;
	m->timer = evtimer_new(mc->base, on_mtimer, m);
}

void
mconn_free(struct mconn *m)
{
	struct milter_client *mc = m->mc;
	struct evbuffer *out;

	if (m->bev != NULL && m->state == MC_READY) {
		/* QUIT (after an abort if a message was under way), written now:
		 * the connection is freed right after */
		out = bufferevent_get_output(m->bev);
		if (m->in_msg)
			milter_put(&mc->out, SMFIC_ABORT, NULL, 0);
		milter_put(&mc->out, SMFIC_QUIT, NULL, 0);
		evbuffer_add(out, mc->out.s, mc->out.len);
		dstr_reset(&mc->out);
		(void)evbuffer_write(out, bufferevent_getfd(m->bev));
	}
	disconnect(m);
	if (m->timer != NULL)
		event_free(m->timer);
	for (int j = 0; j < MILTER_MACRO_STAGES; j++)
		free(m->macros[j]);
	free(m->pkt);
}
