/*
 * milter.c - the milter client's conversation: one SMTP session's stages
 * taken through its listener's filters, driven from the worker's event
 * loop, and the results handed back to the session. The connections to
 * the filters are milter_conn.c's.
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
 * This file must never block the loop, never call the session back from
 * inside one of the session's own calls (results go out from a fresh loop
 * event), and never let a filter's bytes reach the message without
 * milter_apply.c's checks.
 */
#include "config.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "lib/lib.h"
#include "lib/metrics.h"
#include "smtpd/milter.h"
#include "smtpd/milter_client.h"
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
	milter_kick(mc);
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
			mconn_fail(m, "a header name that is not printable ASCII without ':'");
			return false;
		}
		if (!(mod.type == MOD_CHGHDR && r->value[0] == '\0') &&
		    (mod.value = mhdr_value_from_filter(r->value, leadspc)) == NULL) {
			mconn_fail(m, "a value of header %s with control characters", r->name);
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
			mconn_fail(m, "an address or its parameters too long");
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

/* One decoded reply from m. */
void
milter_on_reply(struct milter_client *mc, struct mconn *m, const struct milter_reply *r)
{
	struct dstr text;
	const char *why;
	enum milter_stage st = m->wstage;
	int i;

	if (!m->waiting || m->state == MC_CONNECTING) {
		mconn_fail(m, "a reply (0x%02x) when none was due", (unsigned char)r->type);
		return;
	}
	if (!milter_reply_allowed(st, r->type, m->actions)) {
		mconn_fail(m, "reply 0x%02x ('%c') is not allowed at %s", (unsigned char)r->type,
		      r->type, milter_stage_name(st));
		return;
	}
	if (verdict_metric(r->type) >= 0)
		metrics_milter(m->spec->name, (enum metrics_milter_result)verdict_metric(r->type));
	switch (r->type) {
	case SMFIR_PROGRESS:
		mconn_arm(m);         /* still working: the wait starts again */
		return;
	case SMFIR_OPTNEG:
		if (milter_negotiate(r, MILTER_ACTIONS_OFFERED, MILTER_PROTO_OFFERED, &why) < 0) {
			mconn_fail(m, "option negotiation: %s", why);
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
			milter_kick(mc);
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
				milter_kick(mc);
				return;
			}
			m->in_msg = false;      /* libmilter has left the message */
		}
		next_filter(mc);
		milter_kick(mc);
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
				mconn_fail(m, "reply code: %s", why);
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
		mconn_fail(m, "the filter is shutting down");
		return;
	default:
		/* an edit: more replies follow until the final one */
		(void)mod_from_reply(mc, m, r);
		return;
	}
	m->waiting = false;
	evtimer_del(m->timer);
	milter_kick(mc);
}

/* ---- the stages ---- */

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

static void
send_cmd(struct milter_client *mc, struct mconn *m, enum milter_stage st)
{
	put_macros(mc, m, st);
	dstr_append(&mc->out, mc->cmd.s, mc->cmd.len);
	mconn_flush(mc, m);
	if (st == MS_MAIL)
		m->in_msg = true;
	if (m->state == MC_FAILED)
		return;
	if (m->proto & stage_nr[st])
		next_filter(mc);        /* it said it will not answer this step */
	else
		mconn_expect(m, st);
}

/* Sends a packet no reply is waited for; pauses while too much is unsent. */
static bool
sent_unanswered(struct milter_client *mc, struct mconn *m)
{
	mconn_flush(mc, m);
	if (m->state == MC_FAILED)
		return false;
	if (evbuffer_get_length(bufferevent_get_output(m->bev)) > DRAIN_AT) {
		m->draining = true;
		m->wstage = MS_BODY;
		mconn_arm(m);
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
	milter_kick(mc);
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
				mconn_flush(mc, m);
				if (m->state != MC_FAILED)
					mconn_expect(m, MS_HEADER);
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
				mconn_flush(mc, m);
				if (m->state != MC_FAILED)
					mconn_expect(m, MS_EOH);
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
				mconn_flush(mc, m);
				if (m->state != MC_FAILED)
					mconn_expect(m, MS_BODY);
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
		mconn_flush(mc, m);
		if (m->state != MC_FAILED)
			mconn_expect(m, MS_EOM);
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
				mconn_connect(mc, m);
			else    /* the connection was refused before its turn came */
				next_filter(mc);
			continue;
		}
		if (m->state != MC_READY) {
			mconn_fail(m, "not ready");
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

void
milter_kick(struct milter_client *mc)
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
	for (i = 0; i < mc->n; i++)
		mconn_init(mc, &mc->m[i], &mcf->specs[li][i]);
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
	size_t i;

	if (mc == NULL)
		return;
	for (i = 0; i < mc->n; i++)
		mconn_free(&mc->m[i]);
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
	milter_kick(mc);
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
	milter_kick(mc);
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
		mconn_flush(mc, m);
	}
}
