/*
 * milter.c - the milter client: one SMTP session's connections to its
 * listener's filters, driven from the worker's event loop.
 *
 * Each stage goes to the filters in configured order, one packet and one
 * awaited reply at a time (pipelining commands to a filter is unsafe: after
 * a refusal libmilter silently drops what follows). At the end of the
 * message each filter in turn is shown the headers and body as the filters
 * before it left them, and its edits are collected, so that the session
 * can apply them all before the commit.
 *
 * Waits are bounded by the connect, command and content timeouts; a filter
 * that is down, slow or talks nonsense gets its default action, is logged
 * once and is not asked again in this session.
 *
 * This file must never block the loop (sockets are non-blocking, the
 * endpoints numeric), never call the session back from inside one of the
 * session's own calls (results go out from a fresh loop event), and never
 * let a filter's bytes reach the message without milter_apply.c's checks.
 */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
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
#include "smtpd/smtpd.h"

#define DRAIN_AT (256 * 1024)     /* pause unanswered writes while this much is unsent */

static const char *const default_reply[] = {
	[MILTER_REJECT] = "550 5.7.1 Command rejected",
	[MILTER_TEMPFAIL] = "451 4.7.1 Service unavailable - try again later",
};

/* the command byte a stage's macros are sent for */
static const char stage_cmd[MILTER_MACRO_STAGES] = {
	[MS_CONNECT] = SMFIC_CONNECT, [MS_HELO] = SMFIC_HELO, [MS_MAIL] = SMFIC_MAIL,
	[MS_RCPT] = SMFIC_RCPT, [MS_DATA] = SMFIC_DATA, [MS_EOM] = SMFIC_BODYEOB,
	[MS_EOH] = SMFIC_EOH,
};

/* the steps a filter may skip (SMFIP_NO*) or leave unanswered (SMFIP_NR_*) */
static const uint32_t stage_no[MS_MAX] = {
	[MS_CONNECT] = SMFIP_NOCONNECT, [MS_HELO] = SMFIP_NOHELO, [MS_MAIL] = SMFIP_NOMAIL,
	[MS_RCPT] = SMFIP_NORCPT, [MS_DATA] = SMFIP_NODATA, [MS_EOH] = SMFIP_NOEOH,
	[MS_HEADER] = SMFIP_NOHDRS, [MS_BODY] = SMFIP_NOBODY,
};
static const uint32_t stage_nr[MS_MAX] = {
	[MS_CONNECT] = SMFIP_NR_CONN, [MS_HELO] = SMFIP_NR_HELO, [MS_MAIL] = SMFIP_NR_MAIL,
	[MS_RCPT] = SMFIP_NR_RCPT, [MS_DATA] = SMFIP_NR_DATA, [MS_EOH] = SMFIP_NR_EOH,
	[MS_HEADER] = SMFIP_NR_HDR, [MS_BODY] = SMFIP_NR_BODY,
};

struct milter_conf {
	const struct config *cf;
	const struct listener *ls;
	size_t nls;
	struct milter_spec **specs;     /* per listener */
	size_t *nspecs;
	char *macros[MILTER_MACRO_STAGES];
};

enum mstate { MC_NEW, MC_CONNECTING, MC_OPTNEG, MC_READY, MC_FAILED };

struct mconn {
	struct milter_client *mc;
	const struct milter_spec *spec;
	struct bufferevent *bev;
	struct event *timer;
	enum mstate state;
	bool timed_out;                 /* the failure being reported is a timeout (metrics) */
	int action;                     /* enum milter_action on failure */
	bool conn_done;                 /* no more calls this session (accepted, or failed) */
	bool msg_done;                  /* no more calls for this message (accepted) */
	bool in_msg;                    /* MAIL went out, the message is not over */
	bool waiting;                   /* a reply is due ... */
	enum milter_stage wstage;       /* ... to this stage */
	bool draining;                  /* waiting for unsent bytes to go out */
	uint32_t actions, proto;        /* negotiated */
	char *macros[MILTER_MACRO_STAGES]; /* the filter's own macro lists */
	unsigned char *pkt;             /* the packet being decoded */
};

struct milter_client {
	struct event_base *base;
	const struct milter_conf *conf;
	const struct config *cf;
	struct mconn *m;
	size_t n;
	milter_macro_fn macro;
	void *marg;
	struct event *kick;
	struct dstr out;                /* packets being built */

	/* the call in progress */
	bool busy;
	enum milter_stage op;
	size_t cur;                     /* the filter being talked to */
	int phase;                      /* its step within the stage */
	struct dstr cmd;                /* the stage's command packet */
	milter_done_fn done;
	void *done_arg;
	bool concluded;                 /* a result is ready to go out */
	enum milter_verdict verdict;
	struct dstr reply;
	const char *who;
	struct milter_result res;

	/* the transaction */
	bool discard;
	const char *discard_by;

	/* the message */
	const struct milter_source *src;
	size_t limit;
	bool reading;                   /* a read from src is under way */
	struct dstr head;               /* the header section, as it is read */
	struct mhdrs hdrs;              /* as the next filter is shown them */
	uint64_t body_off;              /* where the body starts in src */
	size_t chunk_len;               /* body bytes in chunk, not sent yet */
	bool chunk_ready;
	size_t hi;                      /* next header to send */
	uint64_t bpos;                  /* body bytes sent */
	bool skip_body;
	bool body_cr;
	bool body_over;                 /* the filter's new body passed the limit */
	struct milter_mods all;         /* every filter's edits so far */
	struct milter_mods one;         /* the current filter's */
	unsigned char *chunk;
};

static void kick(struct milter_client *mc);

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

static void
arm(struct mconn *m)
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
static void
mfail(struct mconn *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
mfail(struct mconn *m, const char *fmt, ...)
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
		kick(mc);
}

/* Sends what mc->out holds to m. */
static void
flush_out(struct milter_client *mc, struct mconn *m)
{
	if (mc->out.len > 0 && bufferevent_write(m->bev, mc->out.s, mc->out.len) < 0)
		mfail(m, "cannot queue a packet");
	dstr_reset(&mc->out);
}

static void
expect(struct mconn *m, enum milter_stage st)
{
	m->waiting = true;
	m->wstage = st;
	arm(m);
}

/* The stage's macros (the filter's own list if it gave one), before its command */
static void
put_macros(struct milter_client *mc, struct mconn *m, enum milter_stage st)
{
	const char *list = m->macros[st] ? m->macros[st] : mc->conf->macros[st];
	const char *names[64], *values[64];
	char buf[4096], bare[80];
	size_t n = 0, len, used = 0;
	const char *v;

	while (list != NULL && *list != '\0' && n < 64) {
		list += strspn(list, " \t,");
		len = strcspn(list, " \t,");
		if (len == 0 || len + 1 > sizeof(buf) - used)
			break;
		memcpy(buf + used, list, len);
		buf[used + len] = '\0';
		list += len;
		if (len > 2 && buf[used] == '{')
			snprintf(bare, sizeof(bare), "%.*s", (int)(len - 2), buf + used + 1);
		else
			snprintf(bare, sizeof(bare), "%s", buf + used);
		if ((v = mc->macro(mc->marg, bare)) == NULL)
			continue;
		names[n] = buf + used;
		values[n++] = v;
		used += len + 1;
		/* the value is used before the next call: the session may reuse its buffer */
		if (strlen(v) + 1 > sizeof(buf) - used)
			break;
		memcpy(buf + used, v, strlen(v) + 1);
		values[n - 1] = buf + used;
		used += strlen(v) + 1;
	}
	if (n > 0)
		milter_put_macros(&mc->out, stage_cmd[st], names, values, n);
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
		mfail(m, "connect timed out");
	else if (m->draining)
		mfail(m, "cannot send %s within %d s", milter_stage_name(m->wstage),
		      timeout_of(m, m->wstage));
	else
		mfail(m, "no reply to %s within %d s", milter_stage_name(m->wstage),
		      timeout_of(m, m->wstage));
}

static void
start_connect(struct milter_client *mc, struct mconn *m)
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
		mfail(m, "socket: %s", strerror(errno));
		return;
	}
	/* a request and its reply per step: Nagle's delay would be paid on each */
	if (m->spec->family != AF_UNIX)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	m->bev = bufferevent_socket_new(mc->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (m->bev == NULL) {
		close(fd);
		mfail(m, "cannot set up a connection");
		return;
	}
	bufferevent_setcb(m->bev, on_mread, on_mwrite, on_mevent, m);
	m->state = MC_CONNECTING;
	m->waiting = true;
	m->wstage = MS_OPTNEG;
	arm(m);
	if (bufferevent_socket_connect(m->bev, (struct sockaddr *)&ss, (int)len) < 0)
		mfail(m, "connect: %s", strerror(errno));
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
		flush_out(mc, m);
		arm(m);
		return;
	}
	if (what & BEV_EVENT_EOF)
		mfail(m, m->waiting ? "connection closed during %s" : "connection closed (%s)",
		      milter_stage_name(m->wstage));
	else if (m->state == MC_CONNECTING)
		mfail(m, "connect: %s", evutil_socket_error_to_string(err));
	else
		mfail(m, "%s: %s", milter_stage_name(m->wstage), evutil_socket_error_to_string(err));
}

static void
on_mwrite(struct bufferevent *bev, void *arg)
{
	struct mconn *m = arg;

	if (m->draining) {
		m->draining = false;
		evtimer_del(m->timer);
		kick(m->mc);
	}
}

/* ---- results ---- */

static void
conclude(struct milter_client *mc, enum milter_verdict v, const char *reply, const char *who)
{
	if (mc->concluded)
		return;
	mc->concluded = true;
	mc->verdict = v;
	dstr_reset(&mc->reply);
	if (reply != NULL)
		dstr_printf(&mc->reply, "%s", reply);
	mc->who = who;
	kick(mc);
}

/* to the next filter, with the message state of a fresh one */
static void
next_filter(struct milter_client *mc)
{
	mc->cur++;
	mc->phase = 0;
	mc->hi = 0;
	mc->bpos = 0;
	mc->skip_body = false;
	mc->body_cr = false;
	mc->body_over = false;
	mc->chunk_ready = false;
	milter_mods_free(&mc->one);
}

/* A filter's end of message went through: its edits become what the next
 * filter sees, and part of the result. */
static void
end_filter(struct milter_client *mc, struct mconn *m)
{
	struct dstr *b = &mc->one.body;
	size_t i;

	/* a new body ends with a line, as the spool's content does */
	if (mc->one.body_replaced && !mc->body_over &&
	    (milter_body_finish(b, &mc->body_cr) < 0 ||
	     (b->len > 0 && (b->len < 2 || memcmp(b->s + b->len - 2, "\r\n", 2) != 0) &&
	      dstr_append(b, "\r\n", 2) < 0)))
		mc->body_over = true;
	if (mc->body_over) {
		/* no fault of the client's, but it would be the same on every retry */
		msg_info("milter %s: the replaced body exceeds message_size_limit", m->spec->name);
		m->in_msg = false;
		conclude(mc, MILTER_REJECT, "552 5.3.4 Error: message file too big", m->spec->name);
		return;
	}
	for (i = 0; i < mc->one.n; i++)
		mhdrs_apply(&mc->hdrs, &mc->one.v[i]);
	milter_mods_append(&mc->all, &mc->one);
	m->in_msg = false;
	next_filter(mc);
}

static bool
mod_from_reply(struct milter_client *mc, struct mconn *m, const struct milter_reply *r)
{
	struct milter_mod mod;
	bool leadspc = (m->proto & SMFIP_HDR_LEADSPC) != 0;
	size_t i;

	memset(&mod, 0, sizeof(mod));
	mod.milter = m->spec->name;
	switch (r->type) {
	case SMFIR_ADDHEADER:
	case SMFIR_INSHEADER:
	case SMFIR_CHGHEADER:
		mod.type = r->type == SMFIR_ADDHEADER ? MOD_ADDHDR :
			   r->type == SMFIR_INSHEADER ? MOD_INSHDR : MOD_CHGHDR;
		mod.index = r->index;
		if (!mhdr_name_ok(r->name)) {
			mfail(m, "a header name that is not printable ASCII without ':'");
			return false;
		}
		if (!(mod.type == MOD_CHGHDR && r->value[0] == '\0') &&
		    (mod.value = mhdr_value_from_filter(r->value, leadspc)) == NULL) {
			mfail(m, "a value of header %s with control characters", r->name);
			return false;
		}
		mod.name = xstrdup(r->name);
		break;
	case SMFIR_REPLBODY:
		if (!mc->one.body_replaced) {
			mc->one.body_replaced = true;
			dstr_free(&mc->one.body);
			dstr_init(&mc->one.body, mc->limit);
			mc->body_cr = false;
		}
		/* past the limit the rest is read and dropped; the end of the message
		 * refuses it */
		if (!mc->body_over &&
		    milter_body_append(&mc->one.body, r->data, r->len, &mc->body_cr) < 0) {
			mc->body_over = true;
			dstr_free(&mc->one.body);
		}
		return true;
	case SMFIR_QUARANTINE:
		free(mc->one.quarantine);
		mc->one.quarantine = xstrndup(r->text, strnlen(r->text, 200));
		for (i = 0; mc->one.quarantine[i] != '\0'; i++)
			if ((unsigned char)mc->one.quarantine[i] < 0x20 ||
			    (unsigned char)mc->one.quarantine[i] > 0x7e)
				mc->one.quarantine[i] = '?';
		if (mc->one.quarantine[0] == '\0') {
			free(mc->one.quarantine);
			mc->one.quarantine = xstrdup("quarantined by a milter");
		}
		mc->one.quarantine_by = m->spec->name;
		return true;
	case SMFIR_CHGFROM:
	case SMFIR_ADDRCPT:
	case SMFIR_ADDRCPT_PAR:
	case SMFIR_DELRCPT:
		mod.type = r->type == SMFIR_CHGFROM ? MOD_CHGFROM :
			   r->type == SMFIR_DELRCPT ? MOD_DELRCPT : MOD_ADDRCPT;
		if (strlen(r->text) > ADDR_PATH_MAX + 2 || (r->args && strlen(r->args) > 1024)) {
			mfail(m, "an address or its parameters too long");
			return false;
		}
		mod.addr = xstrdup(r->text);
		mod.args = r->args && r->args[0] ? xstrdup(r->args) : NULL;
		break;
	default:
		return true;
	}
	mc->one.v = xrealloc(mc->one.v, (mc->one.n + 1) * sizeof(*mc->one.v));
	mc->one.v[mc->one.n++] = mod;
	return true;
}

/* One decoded reply from m. */
/* The sorter_milter_results_total result of a reply; -1 for the others */
static int
verdict_metric(char type)
{
	switch (type) {
	case SMFIR_CONTINUE:
		return MMILT_CONTINUE;
	case SMFIR_ACCEPT:
		return MMILT_ACCEPT;
	case SMFIR_REJECT:
		return MMILT_REJECT;
	case SMFIR_TEMPFAIL:
	case SMFIR_CONN_FAIL:
		return MMILT_TEMPFAIL;
	case SMFIR_REPLYCODE:
		return MMILT_REPLYCODE;
	case SMFIR_DISCARD:
		return MMILT_DISCARD;
	case SMFIR_QUARANTINE:
		return MMILT_QUARANTINE;
	}
	return -1;
}

static void
on_reply(struct milter_client *mc, struct mconn *m, const struct milter_reply *r)
{
	struct dstr text;
	const char *why;
	enum milter_stage st = m->wstage;
	int i;

	if (!m->waiting || m->state == MC_CONNECTING) {
		mfail(m, "a reply (0x%02x) when none was due", (unsigned char)r->type);
		return;
	}
	if (!milter_reply_allowed(st, r->type, m->actions)) {
		mfail(m, "reply 0x%02x ('%c') is not allowed at %s", (unsigned char)r->type,
		      r->type, milter_stage_name(st));
		return;
	}
	if (verdict_metric(r->type) >= 0)
		metrics_milter(m->spec->name, (enum metrics_milter_result)verdict_metric(r->type));
	switch (r->type) {
	case SMFIR_PROGRESS:
		arm(m);         /* still working: the wait starts again */
		return;
	case SMFIR_OPTNEG:
		if (milter_negotiate(r, MILTER_ACTIONS_OFFERED, MILTER_PROTO_OFFERED, &why) < 0) {
			mfail(m, "option negotiation: %s", why);
			return;
		}
		m->actions = r->actions;
		m->proto = r->proto;
		for (i = 0; i < MILTER_MACRO_STAGES; i++)
			if (r->macros[i] != NULL)
				m->macros[i] = xstrdup(r->macros[i]);
		m->state = MC_READY;
		break;
	case SMFIR_CONTINUE:
		if (st == MS_EOM) {
			m->waiting = false;
			evtimer_del(m->timer);
			end_filter(mc, m);
			kick(mc);
			return;
		}
		if (st != MS_HEADER && st != MS_EOH && st != MS_BODY)
			next_filter(mc);
		break;
	case SMFIR_ACCEPT:
		m->waiting = false;
		evtimer_del(m->timer);
		if (st == MS_CONNECT || st == MS_HELO) {
			m->conn_done = true;
		} else {
			m->msg_done = true;
			if (st == MS_EOM) {
				end_filter(mc, m);      /* the edits made before count */
				kick(mc);
				return;
			}
			m->in_msg = false;      /* libmilter has left the message */
		}
		next_filter(mc);
		kick(mc);
		return;
	case SMFIR_REJECT:
	case SMFIR_TEMPFAIL:
	case SMFIR_REPLYCODE:
	case SMFIR_CONN_FAIL:
		m->waiting = false;
		evtimer_del(m->timer);
		if (st != MS_RCPT)
			m->in_msg = false;
		if (r->type == SMFIR_REPLYCODE) {
			dstr_init(&text, 0);
			if (milter_replycode(r->text, &text, &why) < 0) {
				dstr_free(&text);
				mfail(m, "reply code: %s", why);
				return;
			}
			conclude(mc, text.s[0] == '4' ? MILTER_TEMPFAIL : MILTER_REJECT, text.s,
				 m->spec->name);
			dstr_free(&text);
		} else {
			conclude(mc, r->type == SMFIR_REJECT ? MILTER_REJECT : MILTER_TEMPFAIL,
				 default_reply[r->type == SMFIR_REJECT ? MILTER_REJECT : MILTER_TEMPFAIL],
				 m->spec->name);
		}
		return;
	case SMFIR_DISCARD:
		m->waiting = false;
		evtimer_del(m->timer);
		if (st != MS_RCPT)
			m->in_msg = false;
		mc->discard = true;
		mc->discard_by = m->spec->name;
		/* in the envelope the dialogue goes on; the message goes nowhere */
		conclude(mc, st == MS_MAIL || st == MS_RCPT || st == MS_DATA ? MILTER_CONTINUE
									     : MILTER_DISCARD,
			 NULL, m->spec->name);
		return;
	case SMFIR_SKIP:
		mc->skip_body = true;
		break;
	case SMFIR_SHUTDOWN:
		mfail(m, "the filter is shutting down");
		return;
	default:
		/* an edit: more replies follow until the final one */
		(void)mod_from_reply(mc, m, r);
		return;
	}
	m->waiting = false;
	evtimer_del(m->timer);
	kick(mc);
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
			mfail(m, "%s", why);
			return;
		}
		pktlen = MILTER_LEN_BYTES + ((size_t)head[0] << 24 | (size_t)head[1] << 16 |
					     (size_t)head[2] << 8 | head[3]);
		if (evbuffer_get_length(in) < pktlen)
			return;         /* the rest of the packet is still on its way */
		evbuffer_drain(in, MILTER_LEN_BYTES);
		m->pkt = xrealloc(m->pkt, pktlen - MILTER_LEN_BYTES);
		evbuffer_remove(in, m->pkt, pktlen - MILTER_LEN_BYTES);
		if (milter_reply_parse(m->pkt, pktlen - MILTER_LEN_BYTES, &r, &why) < 0) {
			mfail(m, "malformed reply 0x%02x: %s", m->pkt[0], why);
			return;
		}
		on_reply(mc, m, &r);
	}
}

/* ---- the stages ---- */

static void
send_cmd(struct milter_client *mc, struct mconn *m, enum milter_stage st)
{
	put_macros(mc, m, st);
	dstr_append(&mc->out, mc->cmd.s, mc->cmd.len);
	flush_out(mc, m);
	if (st == MS_MAIL)
		m->in_msg = true;
	if (m->state == MC_FAILED)
		return;
	if (m->proto & stage_nr[st])
		next_filter(mc);        /* it said it will not answer this step */
	else
		expect(m, st);
}

/* Sends a packet no reply is waited for; pauses while too much is unsent. */
static bool
sent_unanswered(struct milter_client *mc, struct mconn *m)
{
	flush_out(mc, m);
	if (m->state == MC_FAILED)
		return false;
	if (evbuffer_get_length(bufferevent_get_output(m->bev)) > DRAIN_AT) {
		m->draining = true;
		m->wstage = MS_BODY;
		arm(m);
		return false;
	}
	return true;
}

static void
on_body_read(void *arg, const void *data, ssize_t got)
{
	struct milter_client *mc = arg;

	mc->reading = false;
	if (got < 0) {
		conclude(mc, MILTER_TEMPFAIL, "451 4.3.0 Error: cannot read the message", NULL);
		return;
	}
	memcpy(mc->chunk, data, (size_t)got);
	mc->chunk_len = (size_t)got;
	mc->chunk_ready = true;
	kick(mc);
}

/* The next piece of the body as this filter is to see it: from the edits
 * of the filters before it (in memory), or read from the message (then it
 * comes later: false). */
static bool
body_chunk(struct milter_client *mc)
{
	uint64_t len;
	size_t n = MILTER_CHUNK_MAX;

	if (mc->chunk_ready)
		return true;
	if (mc->all.body_replaced) {
		len = mc->all.body.len;
		if (n > len - mc->bpos)
			n = (size_t)(len - mc->bpos);
		memcpy(mc->chunk, mc->all.body.s + mc->bpos, n);
		mc->chunk_len = n;
		mc->chunk_ready = true;
		return true;
	}
	mc->reading = true;
	mc->src->read(mc->src->arg, mc->body_off + mc->bpos, n, on_body_read, mc);
	return false;
}

/* One filter's part of the message, from where it stands, until it has
 * to wait for the filter. */
static void
step_message(struct milter_client *mc, struct mconn *m)
{
	const struct mhdr *h;

	switch (mc->phase) {
	case 0:         /* headers */
		while (!(m->proto & SMFIP_NOHDRS) && mc->hi < mc->hdrs.n) {
			h = &mc->hdrs.v[mc->hi++];
			const char *v = mhdr_value_for_filter(h->value,
							      (m->proto & SMFIP_HDR_LEADSPC) != 0);

			milter_put_header(&mc->out, h->name, v, strlen(v));
			if (!(m->proto & SMFIP_NR_HDR)) {
				flush_out(mc, m);
				if (m->state != MC_FAILED)
					expect(m, MS_HEADER);
				return;
			}
			if (!sent_unanswered(mc, m))
				return;
		}
		mc->phase = 1;
		/* FALLTHROUGH */
	case 1:         /* end of headers */
		mc->phase = 2;
		if (!(m->proto & SMFIP_NOEOH)) {
			put_macros(mc, m, MS_EOH);
			milter_put(&mc->out, SMFIC_EOH, NULL, 0);
			if (!(m->proto & SMFIP_NR_EOH)) {
				flush_out(mc, m);
				if (m->state != MC_FAILED)
					expect(m, MS_EOH);
				return;
			}
			if (!sent_unanswered(mc, m))
				return;
		}
		/* FALLTHROUGH */
	case 2:         /* body */
		while (!(m->proto & SMFIP_NOBODY) && !mc->skip_body) {
			if (!body_chunk(mc))
				return;         /* on_body_read() goes on */
			mc->chunk_ready = false;
			if (mc->chunk_len == 0)
				break;
			mc->bpos += mc->chunk_len;
			milter_put(&mc->out, SMFIC_BODY, mc->chunk, mc->chunk_len);
			if (!(m->proto & SMFIP_NR_BODY)) {
				flush_out(mc, m);
				if (m->state != MC_FAILED)
					expect(m, MS_BODY);
				return;
			}
			if (!sent_unanswered(mc, m))
				return;
		}
		mc->phase = 3;
		/* FALLTHROUGH */
	default:        /* end of message: the edits, then the verdict */
		put_macros(mc, m, MS_EOM);
		milter_put(&mc->out, SMFIC_BODYEOB, NULL, 0);
		flush_out(mc, m);
		if (m->state != MC_FAILED)
			expect(m, MS_EOM);
		return;
	}
}

/* Hands the result to the session: the last thing done for this call. */
static void
deliver(struct milter_client *mc)
{
	milter_done_fn done = mc->done;
	void *arg = mc->done_arg;

	mc->busy = false;
	mc->concluded = false;
	mc->res.verdict = mc->verdict;
	mc->res.reply = mc->reply.len ? mc->reply.s : NULL;
	mc->res.milter = mc->who;
	mc->res.mods = mc->op == MS_EOM ? &mc->all : NULL;
	mc->res.headers = mc->op == MS_EOM ? &mc->hdrs : NULL;
	mc->res.body_off = mc->body_off;
	done(arg, &mc->res);
}

static void
advance(struct milter_client *mc)
{
	struct mconn *m;

	while (mc->busy) {
		if (mc->concluded) {
			deliver(mc);
			return;
		}
		if (mc->cur >= mc->n) {
			conclude(mc, MILTER_CONTINUE, NULL, NULL);
			continue;
		}
		if (mc->reading)
			return;         /* the message is being read: its callback goes on */
		m = &mc->m[mc->cur];
		if (m->waiting || m->draining)
			return;
		if (m->conn_done || (mc->op != MS_CONNECT && mc->op != MS_HELO && m->msg_done)) {
			next_filter(mc);
			continue;
		}
		if (m->state == MC_FAILED && mc->op == MS_HELO) {
			/* a refusal waits for MAIL: a client that cannot even greet
			 * would only try again at once */
			next_filter(mc);
			continue;
		}
		if (m->state == MC_FAILED) {
			/* its default action, at every stage from the failure on */
			conclude(mc, m->action == MILTER_ACT_REJECT ? MILTER_REJECT : MILTER_TEMPFAIL,
				 default_reply[m->action == MILTER_ACT_REJECT ? MILTER_REJECT
									      : MILTER_TEMPFAIL],
				 m->spec->name);
			continue;
		}
		if (m->state == MC_NEW) {
			if (mc->op == MS_CONNECT)
				start_connect(mc, m);
			else    /* the connection was refused before its turn came */
				next_filter(mc);
			continue;
		}
		if (m->state != MC_READY) {
			mfail(m, "not ready");
			continue;
		}
		if (mc->op == MS_EOM) {
			step_message(mc, m);
			continue;
		}
		if (m->proto & stage_no[mc->op]) {
			next_filter(mc);        /* it asked not to be shown this step */
			continue;
		}
		send_cmd(mc, m, mc->op);
	}
}

static void
on_kick(evutil_socket_t fd, short what, void *arg)
{
	advance(arg);
}

static void
kick(struct milter_client *mc)
{
	event_active(mc->kick, EV_TIMEOUT, 0);
}

/* ---- the session's side ---- */

struct milter_client *
milter_client_new(struct event_base *base, const struct milter_conf *mcf,
		  const struct listener *l, milter_macro_fn macro, void *arg)
{
	struct milter_client *mc;
	size_t li, i;

	if (mcf == NULL || l < mcf->ls || l >= mcf->ls + mcf->nls)
		return NULL;
	li = (size_t)(l - mcf->ls);
	if (mcf->nspecs[li] == 0)
		return NULL;
	mc = xcalloc(1, sizeof(*mc));
	mc->base = base;
	mc->conf = mcf;
	mc->cf = mcf->cf;
	mc->macro = macro;
	mc->marg = arg;
	mc->n = mcf->nspecs[li];
	mc->m = xcalloc(mc->n, sizeof(*mc->m));
	for (i = 0; i < mc->n; i++) {
		mc->m[i].mc = mc;
		mc->m[i].spec = &mcf->specs[li][i];
		mc->m[i].action = mcf->specs[li][i].default_action >= 0 ?
				  mcf->specs[li][i].default_action : mc->cf->milter_default_action;
		mc->m[i].timer = evtimer_new(base, on_mtimer, &mc->m[i]);
	}
	mc->kick = event_new(base, -1, 0, on_kick, mc);
	dstr_init(&mc->out, 0);
	dstr_init(&mc->cmd, 0);
	dstr_init(&mc->reply, 0);
	dstr_init(&mc->head, 0);
	milter_mods_init(&mc->all);
	milter_mods_init(&mc->one);
	return mc;
}

void
milter_client_free(struct milter_client *mc)
{
	struct evbuffer *out;
	size_t i;

	if (mc == NULL)
		return;
	for (i = 0; i < mc->n; i++) {
		struct mconn *m = &mc->m[i];

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
	free(mc->m);
	event_free(mc->kick);
	dstr_free(&mc->out);
	dstr_free(&mc->cmd);
	dstr_free(&mc->reply);
	mhdrs_free(&mc->hdrs);
	dstr_free(&mc->head);
	milter_mods_free(&mc->all);
	milter_mods_free(&mc->one);
	free(mc->chunk);
	free(mc);
}

static void
start(struct milter_client *mc, enum milter_stage op, milter_done_fn done, void *arg)
{
	if (mc->busy)
		msg_panic("milter: a call while another is in progress");
	mc->busy = true;
	mc->op = op;
	mc->cur = 0;
	mc->phase = 0;
	mc->concluded = false;
	mc->done = done;
	mc->done_arg = arg;
	mc->who = NULL;
	dstr_reset(&mc->reply);
	/* once a filter discarded the message, the others are not asked about it */
	if (mc->discard && (op == MS_RCPT || op == MS_DATA))
		conclude(mc, MILTER_CONTINUE, NULL, NULL);
	kick(mc);
}

void
milter_connect(struct milter_client *mc, const char *addr, int family, unsigned port,
	       milter_done_fn done, void *arg)
{
	dstr_reset(&mc->cmd);
	milter_put_connect(&mc->cmd, "unknown",
			   family == AF_INET ? '4' : family == AF_INET6 ? '6' : 'U',
			   (uint16_t)port, addr);
	start(mc, MS_CONNECT, done, arg);
}

void
milter_helo(struct milter_client *mc, const char *helo, milter_done_fn done, void *arg)
{
	milter_abort(mc);       /* a HELO ends the transaction: the filters hear it first */
	dstr_reset(&mc->cmd);
	milter_put_strings(&mc->cmd, SMFIC_HELO, &helo, 1);
	start(mc, MS_HELO, done, arg);
}

static void
envelope(struct milter_client *mc, char cmd, const char *addr, const char *const *args)
{
	const char *v[66];
	char path[ADDR_PATH_MAX + 8];
	size_t n = 0;

	snprintf(path, sizeof(path), "<%s>", addr);
	v[n++] = path;
	while (args != NULL && args[n - 1] != NULL && n < 65) {
		v[n] = args[n - 1];
		n++;
	}
	dstr_reset(&mc->cmd);
	milter_put_strings(&mc->cmd, cmd, v, n);
}

void
milter_mail(struct milter_client *mc, const char *sender, const char *const *args,
	    milter_done_fn done, void *arg)
{
	size_t i;

	/* a transaction some filters are still in (a refused one): over first */
	milter_abort(mc);
	for (i = 0; i < mc->n; i++)
		mc->m[i].msg_done = false;
	envelope(mc, SMFIC_MAIL, sender, args);
	start(mc, MS_MAIL, done, arg);
}

void
milter_rcpt(struct milter_client *mc, const char *rcpt, const char *const *args,
	    milter_done_fn done, void *arg)
{
	envelope(mc, SMFIC_RCPT, rcpt, args);
	start(mc, MS_RCPT, done, arg);
}

void
milter_data(struct milter_client *mc, milter_done_fn done, void *arg)
{
	dstr_reset(&mc->cmd);
	milter_put(&mc->cmd, SMFIC_DATA, NULL, 0);
	start(mc, MS_DATA, done, arg);
}

/* The header section, read in pieces until its end is in: then the
 * filters are shown the message. */
static void
on_head_read(void *arg, const void *data, ssize_t got)
{
	struct milter_client *mc = arg;
	ssize_t body;

	mc->reading = false;
	if (got < 0) {
		conclude(mc, MILTER_TEMPFAIL, "451 4.3.0 Error: cannot read the message", NULL);
		return;
	}
	dstr_append(&mc->head, data, (size_t)got);
	body = mhdrs_parse(mc->head.s ? mc->head.s : "", mc->head.len,
			   got == 0 || mc->head.len >= mc->src->len, &mc->hdrs);
	if (body < 0) {
		mc->reading = true;
		mc->src->read(mc->src->arg, mc->head.len, MILTER_CHUNK_MAX, on_head_read, mc);
		return;
	}
	mc->body_off = (uint64_t)body;
	dstr_free(&mc->head);
	kick(mc);
}

void
milter_message(struct milter_client *mc, const struct milter_source *src, size_t limit,
	       milter_done_fn done, void *arg)
{
	mhdrs_free(&mc->hdrs);
	milter_mods_free(&mc->all);
	milter_mods_free(&mc->one);
	mc->src = src;
	mc->limit = limit;
	mc->body_off = 0;
	if (mc->chunk == NULL)
		mc->chunk = xmalloc(MILTER_CHUNK_MAX);
	start(mc, MS_EOM, done, arg);
	mc->hi = 0;
	mc->bpos = 0;
	mc->skip_body = false;
	mc->body_cr = false;
	mc->body_over = false;
	mc->chunk_ready = false;
	if (mc->discard) {
		conclude(mc, MILTER_DISCARD, NULL, mc->discard_by);
		return;
	}
	dstr_free(&mc->head);
	dstr_init(&mc->head, 0);
	mc->reading = true;
	src->read(src->arg, 0, MILTER_CHUNK_MAX, on_head_read, mc);
}

void
milter_abort(struct milter_client *mc)
{
	size_t i;

	if (mc == NULL || mc->busy)
		return;
	mc->discard = false;
	mc->discard_by = NULL;
	for (i = 0; i < mc->n; i++) {
		struct mconn *m = &mc->m[i];

		if (!m->in_msg || m->state != MC_READY)
			continue;
		m->in_msg = false;
		milter_put(&mc->out, SMFIC_ABORT, NULL, 0);
		flush_out(mc, m);
	}
}
