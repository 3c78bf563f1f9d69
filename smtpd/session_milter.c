/*
 * session_milter.c - an SMTP session's side of its milters (milter.c):
 * the stages handed to them, the macros they are told, the message shown
 * to them from its spool file, and what comes back; at the end of the
 * message, the filters' edits applied to the envelope and the content
 * before the commit.
 *
 * A handler calls milter_hook() where it would accept the command: the
 * session then waits (milter_busy: no input is taken, as during a commit)
 * and on_milter() either sends the filters' refusal or runs the handler
 * again, which then goes on past the hook (milter_passed).
 *
 * It must never let a filter's addition bypass the RCPT checks, nor an
 * edited message pass message_size_limit by more than MILTER_EDIT_ROOM.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>

#include "lib/lib.h"
#include "lib/metrics.h"
#include "queue/queue.h"
#include "router/router.h"
#include "smtpd/milter.h"
#include "smtpd/session.h"
#include "smtpd/smtpd.h"

static const char *
role_name(const struct session *s)
{
	return s->listener->spec.role == ROLE_MX ? "mx" :
	       s->listener->spec.role == ROLE_SUBMISSION ? "submission" : "submissions";
}

/* The address of the MAIL or RCPT being asked about, else the sender's */
static const char *
macro_addr(struct session *s, enum milter_stage st)
{
	if (s->milter_wait == (int)st + 1) {
		address_format(&s->milter_cmd.addr, s->macro_buf, sizeof(s->macro_buf));
		return s->macro_buf;
	}
	return st == MS_MAIL ? s->sender : NULL;
}

/* Postfix's macros, from what the session knows (milter_*_macros say which
 * go with which stage); NULL when it has no value. */
const char *
session_macro(void *arg, const char *name)
{
	struct session *s = arg;
	char *b = s->macro_buf;
	size_t bl = sizeof(s->macro_buf);
	SSL *ssl = s->tls ? bufferevent_openssl_get_ssl(s->bev) : NULL;
	const char *a, *at;

	if (strcmp(name, "j") == 0)
		return s->w->cf->hostname;
	if (strcmp(name, "v") == 0)
		return "Sorter " PACKAGE_VERSION;
	if (strcmp(name, "_") == 0) {
		snprintf(b, bl, "unknown [%s]", s->addr);
		return b;
	}
	if (strcmp(name, "daemon_name") == 0)
		return role_name(s);
	if (strcmp(name, "daemon_addr") == 0)
		return s->listener->spec.host;
	if (strcmp(name, "daemon_port") == 0)
		return s->listener->spec.port;
	if (strcmp(name, "client_addr") == 0)
		return s->addr;
	if (strcmp(name, "client_name") == 0 || strcmp(name, "client_ptr") == 0)
		return "unknown";       /* no reverse lookups here */
	if (strcmp(name, "client_port") == 0) {
		snprintf(b, bl, "%u", s->port);
		return b;
	}
	if (strcmp(name, "i") == 0)
		return s->id[0] ? s->id : NULL;
	if (strcmp(name, "auth_type") == 0)
		return s->login ? s->auth_mech : NULL;
	if (strcmp(name, "auth_authen") == 0)
		return s->login;
	if (ssl != NULL && strcmp(name, "tls_version") == 0)
		return SSL_get_version(ssl);
	if (ssl != NULL && strcmp(name, "cipher") == 0)
		return SSL_get_cipher_name(ssl);
	if (ssl != NULL && strcmp(name, "cipher_bits") == 0) {
		snprintf(b, bl, "%d", SSL_get_cipher_bits(ssl, NULL));
		return b;
	}
	if (strcmp(name, "mail_addr") == 0 || strcmp(name, "mail_host") == 0 ||
	    strcmp(name, "rcpt_addr") == 0 || strcmp(name, "rcpt_host") == 0) {
		a = macro_addr(s, name[0] == 'm' ? MS_MAIL : MS_RCPT);
		if (a == NULL || strstr(name, "host") == NULL)
			return a;
		return (at = strrchr(a, '@')) != NULL ? at + 1 : NULL;
	}
	return NULL;
}

/* The milters read the message back from its spool file */
static void
content_read(void *arg, uint64_t off, size_t n, milter_read_done *done, void *done_arg)
{
	struct session *s = arg;

	spool_stream_read(s->stream, off, n, done, done_arg);
}

static void on_milter(void *arg, const struct milter_result *r);

/* The content is in its file: the milters can be shown it. */
static void
content_flushed(void *arg, int error)
{
	struct session *s = arg;

	if (error != 0) {
		struct milter_result r = { MILTER_TEMPFAIL, "451 4.3.0 Error: queue file write error",
					   NULL, NULL, NULL, 0 };

		msg_warn("%s: queue file write error: %s", s->id, strerror(error));
		on_milter(s, &r);
		return;
	}
	s->milter_src.read = content_read;
	s->milter_src.len = spool_stream_content_len(s->stream);
	s->milter_src.arg = s;
	milter_message(s->mc, &s->milter_src,
		       (size_t)s->w->cf->message_size_limit + MILTER_EDIT_ROOM, on_milter, s);
}

/* Hands stage st to the milters: true when the session now waits for them
 * (the caller returns), false when there is nothing to ask (no milters, or
 * they already let this command through). */
bool
milter_hook(struct session *s, enum milter_stage st, struct smtp_cmd *c)
{
	char addr[ADDR_PATH_MAX + 8], argbuf[1024], *helo;
	const char *args[33];

	if (s->mc == NULL)
		return false;
	if (s->milter_passed == (int)st + 1) {
		s->milter_passed = 0;
		return false;
	}
	if (st == MS_MAIL && s->milter_deny != NULL) {
		/* the connection was refused: every transaction is */
		if (s->milter_deny[0] == '5')
			reply_error(s, "%s", s->milter_deny);
		else
			reply(s, "%s", s->milter_deny);
		return true;
	}
	if (c != NULL)
		s->milter_cmd = *c;
	s->milter_wait = (int)st + 1;
	s->milter_busy = true;
	switch (st) {
	case MS_CONNECT:
		milter_connect(s->mc, s->addr, strchr(s->addr, ':') ? AF_INET6 : AF_INET, s->port,
			       on_milter, s);
		break;
	case MS_HELO:
		helo = helo_sanitize(c->arg, c->arglen);
		milter_helo(s->mc, helo, on_milter, s);
		free(helo);
		break;
	case MS_MAIL:
	case MS_RCPT:
		if (st == MS_MAIL && s->id[0] == '\0')
			qid_next(s->id);        /* macro i from MAIL on, as in Postfix */
		address_format(&c->addr, addr, sizeof(addr));
		milter_esmtp_args(c->arg, argbuf, sizeof(argbuf), args, 33);
		(st == MS_MAIL ? milter_mail : milter_rcpt)(s->mc, addr, args, on_milter, s);
		break;
	case MS_DATA:
		milter_data(s->mc, on_milter, s);
		break;
	default:
		spool_stream_flush(s->stream, content_flushed);
		break;
	}
	return true;
}

/* A recipient a filter adds is checked as an RCPT would be */
static int
milter_check_rcpt(void *arg, const char *addr, const char *milter)
{
	struct session *s = arg;
	char why[512], e1[LOG_ESC_SIZE(ADDR_PATH_MAX + 8)];

	switch (router_check_rcpt_flags(s->w->router, addr,
	    str_has_8bit(s->sender) ? RCPT_SENDER_UTF8 : 0, why, sizeof(why))) {
	case RCPT_ACCEPT:
		return 0;
	case RCPT_RELAY_DENIED:
		if (s->login != NULL)
			return 0;
		snprintf(why, sizeof(why), "Relay access denied");
		break;
	case RCPT_TEMPFAIL:
		msg_warn("%s: milter %s: added recipient <%s>: %s", s->id, milter,
			 log_esc(addr, e1, sizeof(e1)), why);
		return -1;
	default:
		break;
	}
	msg_info("%s: milter %s: added recipient <%s> refused: %s", s->id, milter,
		 log_esc(addr, e1, sizeof(e1)), why);
	return 1;
}

/* The end of the message: the filters' edits go into the content and the
 * envelope, and the commit follows (end_of_data again). */
static void
milter_message_done(struct session *s, const struct milter_result *r)
{
	char why[512], from[LOG_ESC_SIZE(ADDR_PATH_MAX)];
	struct milter_envelope env = {
		&s->sender, &s->sender_params, &s->rcpts, &s->nrcpt, s->smtputf8,
		(size_t)s->w->cf->smtpd_recipient_limit, milter_check_rcpt, s,
	};
	struct spool_envelope senv;
	struct dstr prefix, body;
	char addr[ADDR_PATH_MAX + 8];
	bool new_body;
	size_t i;
	int rc;

	log_esc(s->sender, from, sizeof(from));
	if (r->verdict == MILTER_DISCARD) {
		msg_info("%s: milter-discard: END-OF-MESSAGE from [%s]: milter %s triggers DISCARD "
			 "action; from=<%s>", s->id, s->addr, r->milter, from);
		goto accepted;
	}
	/* the recipients may change: their canonical forms are made again after */
	for (i = 0; i < s->nrcpt; i++)
		free(s->rcpt_canon[i]);
	free(s->rcpt_canon);
	s->rcpt_canon = NULL;
	rc = milter_apply_envelope(r->mods, &env, why, sizeof(why));
	s->rcpt_canon = xcalloc(s->nrcpt ? s->nrcpt : 1, sizeof(*s->rcpt_canon));
	for (i = 0; i < s->nrcpt; i++) {
		struct canon canon;
		const char *cwhy;
		size_t n = spool_rcpt_addr_len(s->rcpts[i]);

		snprintf(addr, sizeof(addr), "%.*s", (int)n, s->rcpts[i]);
		if (router_canon(addr, NULL, NULL, &canon, &cwhy) < 0)
			snprintf(canon.address, sizeof(canon.address), "%.*s", ADDR_PATH_MAX, addr);
		s->rcpt_canon[i] = xstrdup(canon.address);
	}
	if (rc < 0) {
		msg_warn("%s: %s", s->id, why + 1);
		reply(s, why[0] == '4' ? "451 4.3.0 <%s>: Temporary lookup failure"
				       : "451 4.7.1 Error: a mail filter sent a change that cannot "
					 "be applied%s", "");
		transaction_reset(s);
		return;
	}
	if (s->nrcpt == 0) {
		msg_info("%s: milter-discard: END-OF-MESSAGE from [%s]: the milters removed every "
			 "recipient; from=<%s>", s->id, s->addr, from);
		goto accepted;
	}
	if (r->mods->quarantine != NULL) {
		s->hold_reason = xasprintf("milter %s: %s", r->mods->quarantine_by,
					   r->mods->quarantine);
		msg_info("%s: milter-hold: END-OF-MESSAGE from [%s]: %s; from=<%s>", s->id, s->addr,
			 s->hold_reason, from);
	}
	if (milter_mods_any(r->mods)) {
		/* the edited message is committed in place of the one streamed */
		dstr_init(&prefix, 0);
		dstr_init(&body, 0);
		mhdrs_serialize(r->headers, &prefix);
		new_body = milter_mods_take_body(r->mods, &body);
		session_envelope(s, s->hold_reason, &senv);
		spool_edit_free(s->edit);
		s->edit = spool_edit_new(s->stream, &senv, &prefix, new_body ? &body : NULL,
					 r->body_off);
		dstr_free(&prefix);
		dstr_free(&body);
		if (spool_edit_content_len(s->edit) >
		    (uint64_t)s->w->cf->message_size_limit + MILTER_EDIT_ROOM) {
			msg_info("%s: reject: message from [%s]: the edited message exceeds "
				 "message_size_limit", s->id, s->addr);
			reply_error(s, "552 5.3.4 Error: message file too big");
			atomic_fetch_add(&s->w->ctr->rejected, 1);
			transaction_reset(s);
			return;
		}
	}
	s->milter_passed = MS_EOM + 1;
	end_of_data(s);
	s->milter_passed = 0;
	return;

accepted:
	/* the client is told it was taken: it was, and went nowhere */
	reply(s, "250 2.0.0 Ok: queued as %s", s->id);
	s->n_msgs++;
	s->junk = 0;
	transaction_reset(s);
}

static void
on_milter(void *arg, const struct milter_result *r)
{
	struct session *s = arg;
	enum milter_stage st = (enum milter_stage)(s->milter_wait - 1);
	char from[LOG_ESC_SIZE(ADDR_PATH_MAX)] = "", to[LOG_ESC_SIZE(ADDR_PATH_MAX)] = "";
	char addr[ADDR_PATH_MAX + 8];

	s->milter_busy = false;
	if (s->state == SS_CLOSING) {
		s->milter_wait = 0;
		return;                 /* a 421 went out meanwhile */
	}
	if (st == MS_EOM) {
		s->milter_wait = 0;
		if (r->verdict == MILTER_CONTINUE || r->verdict == MILTER_DISCARD)
			milter_message_done(s, r);
	} else if (st == MS_CONNECT) {
		s->milter_wait = 0;
		if (r->verdict == MILTER_REJECT || r->verdict == MILTER_TEMPFAIL) {
			msg_info("NOQUEUE: milter-reject: CONNECT from [%s]: %s (milter %s)", s->addr,
				 r->reply, r->milter);
			s->milter_deny = xstrdup(r->reply);
		}
		greet(s);
	} else if (r->verdict == MILTER_CONTINUE) {
		s->milter_passed = (int)st + 1;
		/* the handler again, past its hook this time; the macros no longer
		 * need the pending command */
		s->milter_wait = 0;
		verb_run(s, &s->milter_cmd);
		/* spent, even if the handler refused the command for a reason of
		 * its own: the next command is asked about again; unless the
		 * command waits for a map lookup and will run once more */
		if (s->state != SS_LOOKUP_WAIT)
			s->milter_passed = 0;
	}
	if (r->verdict == MILTER_REJECT || r->verdict == MILTER_TEMPFAIL) {
		if (st != MS_CONNECT) {
			if (st == MS_MAIL || st == MS_RCPT)
				address_format(&s->milter_cmd.addr, addr, sizeof(addr));
			if (s->sender != NULL)
				log_esc(s->sender, from, sizeof(from));
			else if (st == MS_MAIL)
				log_esc(addr, from, sizeof(from));
			if (st == MS_RCPT)
				log_esc(addr, to, sizeof(to));
			msg_info("%s: milter-reject: %s from [%s]: %s (milter %s); from=<%s>%s%s%s",
				 s->id[0] ? s->id : "NOQUEUE", milter_stage_name(st), s->addr, r->reply,
				 r->milter ? r->milter : "-", from, to[0] ? " to=<" : "", to,
				 to[0] ? ">" : "");
			s->milter_wait = 0;
			if (st == MS_DATA && s->milter_cmd.verb == VERB_BDAT) {
				/* the chunk comes anyway: it is read and dropped, and
				 * this is its reply (end_of_chunk) */
				free(s->milter_refusal);
				s->milter_refusal = xstrdup(r->reply);
				chunk_begin(s, &s->milter_cmd, s->milter_refusal);
			} else if (r->reply[0] == '5') {
				reply_error(s, "%s", r->reply);
			} else {
				reply(s, "%s", r->reply);
			}
			if (st == MS_EOM) {
				atomic_fetch_add(&s->w->ctr->rejected, 1);
				metrics_message_rejected((int)(s->listener - s->w->ls), MMR_MILTER);
				transaction_reset(s);
			}
		}
	}
	process_input(s);
}
