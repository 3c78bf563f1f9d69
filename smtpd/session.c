/*
 * session.c - one SMTP session (RFC 5321) on a libevent bufferevent: its
 * life (connect, TLS, timeouts, close), the command loop with the verb
 * table, and the envelope's commands (HELO/EHLO, MAIL, RCPT, STARTTLS, RSET
 * and the rest). The content (session_content.c), BDAT (session_bdat.c),
 * AUTH (session_auth.c) and the milters (session_milter.c) have files of
 * their own; session.h is what they share.
 *
 * Input is taken one complete line at a time (or, during DATA, one chunk at
 * a time through the pure DATA parser; a BDAT chunk is counted off by its
 * size, through the same parser in raw mode); replies are queued in order
 * and go out when the input buffer is exhausted, which is PIPELINING (RFC
 * 2920). A message is acknowledged with 250 only from the commit callback,
 * i.e. after its queue file and directory entry are durable.
 *
 * This file must never answer 250 to DATA or BDAT LAST before the commit
 * completed, never act on bytes that arrived before a TLS handshake, never
 * let one DATA carry more than one message, and never take a chunk's octets
 * for commands.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "lib/lib.h"
#include "lib/metrics.h"
#include "queue/queue.h"
#include "router/router.h"
#include "smtpd/auth.h"
#include "smtpd/milter.h"
#include "smtpd/session.h"
#include "smtpd/smtpd.h"

#define PIPELINE_OUTPUT_MAX (64 * 1024)   /* stop reading while replies pile up */
/* at most this much client input waits in memory; with the spool stream's
 * two buffers it bounds what one session's message costs, whatever its size */
#define READ_HIGH_WATER (64 * 1024)

/* in which states a verb may be used; else 503 */
#define ST(x) (1u << (x))
#define ANY (ST(SS_INIT) | ST(SS_READY) | ST(SS_MAIL) | ST(SS_RCPT) | ST(SS_BDAT))

static void lookup_wait(struct session *s);

void
reply(struct session *s, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	va_list ap;

	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

/* Queues a final reply and closes once it has been written. */
void
reply_close(struct session *s, const char *text)
{
	reply(s, "%s", text);
	s->state = SS_CLOSING;
	bufferevent_disable(s->bev, EV_READ);
}

/* An error reply: counted towards smtpd_hard_error_limit. */
void
reply_error(struct session *s, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	va_list ap;
	char buf[256];

	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
	if (++s->errors >= s->w->cf->smtpd_hard_error_limit) {
		msg_info("too many errors after %s from [%s]", s->state == SS_DATA ? "DATA" : "command",
			 s->addr);
		snprintf(buf, sizeof(buf), "421 4.7.0 %s Error: too many errors", s->w->cf->hostname);
		reply_close(s, buf);
	}
}

void
transaction_reset(struct session *s)
{
	size_t i;

	free(s->sender);
	free(s->sender_params);
	s->sender = s->sender_params = NULL;
	s->smtputf8 = false;
	for (i = 0; i < s->nrcpt; i++) {
		free(s->rcpts[i]);
		free(s->rcpt_canon[i]);
	}
	free(s->rcpts);
	free(s->rcpt_canon);
	s->rcpts = s->rcpt_canon = NULL;
	s->nrcpt = 0;
	s->expanded = 0;
	s->id[0] = '\0';
	if (s->stream != NULL && !s->committing)
		spool_stream_abort(s->stream, stream_dropped);   /* removed on a thread */
	if (!s->committing)
		s->stream = NULL;
	s->paused = false;
	s->too_big = false;
	free(s->hold_reason);
	s->hold_reason = NULL;
	spool_edit_free(s->edit);
	s->edit = NULL;
	milter_abort(s->mc);
	if (s->state != SS_INIT && s->state != SS_CLOSING)
		s->state = SS_READY;
}

/* RFC 3848 protocol names for Received: */
const char *
proto_name(const struct session *s)
{
	if (!s->esmtp)
		return "SMTP";
	if (s->smtputf8)        /* RFC 6531 3.7.3, with RFC 3848's S and A */
		return s->login ? (s->tls ? "UTF8SMTPSA" : "UTF8SMTPA")
				: (s->tls ? "UTF8SMTPS" : "UTF8SMTP");
	if (s->login)
		return s->tls ? "ESMTPSA" : "ESMTPA";
	return s->tls ? "ESMTPS" : "ESMTP";
}

/* a submission listener, with or without implicit TLS */
bool
submission(const struct session *s)
{
	return s->listener->spec.role != ROLE_MX;
}

/* AUTH is offered: submission, under TLS, with a password map */
static bool
auth_offered(const struct session *s)
{
	return submission(s) && s->tls && s->w->auth != NULL;
}

void
set_read_timeout(struct session *s, int secs)
{
	struct timeval rt = { secs, 0 }, wt = { s->w->cf->smtpd_timeout, 0 };

	s->read_timeout_usec = (uint64_t)secs * 1000000u;
	s->read_armed_usec = metrics_now();
	/* under TLS the socket's stream has the write timeout (tls_wrap) */
	bufferevent_set_timeouts(s->bev, &rt, s->tls ? NULL : &wt);
}

/* ---- command handlers ---- */

/* What goes into Received: of a HELO name Sorter was told to take anyway:
 * at most 255 bytes of host-name characters, the rest replaced. */
char *
helo_sanitize(const char *in, size_t n)
{
	char *out = xmalloc(n > 255 ? 256 : n + 1);
	size_t i;

	for (i = 0; i < n && i < 255; i++) {
		unsigned char c = (unsigned char)in[i];

		out[i] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			 c == '-' || c == '.' || c == '_' || c == ':' || c == '[' || c == ']' ? (char)c
												: '?';
	}
	out[i] = '\0';
	return out;
}

static void
do_helo(struct session *s, struct smtp_cmd *c)
{
	const struct config *cf = s->w->cf;

	if (!helo_valid(c->arg, c->arglen) && cf->smtpd_helo_strict) {
		char *shown = helo_sanitize(c->arg, c->arglen > 64 ? 64 : c->arglen);

		msg_info("reject: %s from [%s]: 501 5.5.2 <%s>: Helo command rejected: Invalid name",
			 c->verb == VERB_EHLO ? "EHLO" : "HELO", s->addr, shown);
		reply_error(s, "501 5.5.2 <%s>: Helo command rejected: Invalid name", shown);
		free(shown);
		return;
	}
	if (milter_hook(s, MS_HELO, c))
		return;
	transaction_reset(s);
	free(s->helo);
	s->helo = helo_sanitize(c->arg, c->arglen);
	s->esmtp = c->verb == VERB_EHLO;
	s->state = SS_READY;
	if (!s->esmtp) {
		reply(s, "250 %s", cf->hostname);
		return;
	}
	reply(s, "250-%s", cf->hostname);
	reply(s, "250-PIPELINING");
	reply(s, "250-SIZE %lld", cf->message_size_limit);
	if (s->w->tls_ctx && !s->tls)
		reply(s, "250-STARTTLS");
	if (auth_offered(s))
		reply(s, "250-AUTH PLAIN LOGIN");
	reply(s, "250-ENHANCEDSTATUSCODES");
	reply(s, "250-8BITMIME");
	reply(s, "250-SMTPUTF8");
	reply(s, "250-CHUNKING");
	reply(s, "250 DSN");
}

static bool
spool_has_room(struct session *s, long long want)
{
	struct statvfs sv;
	unsigned long long avail;

	if (statvfs(s->w->cf->spool_dir, &sv) < 0)
		return true;            /* the commit will tell */
	avail = (unsigned long long)sv.f_bavail * sv.f_frsize;
	return avail >= (unsigned long long)s->w->cf->queue_minfree + (unsigned long long)(want > 0 ? want : 0);
}

/* Submission: TLS, then a login, then only senders that login owns. */
static bool
submission_sender_ok(struct session *s, const char *sender)
{
	char why[256], e1[LOG_ESC_SIZE(ADDR_PATH_MAX)], e2[LOG_ESC_SIZE(ADDR_PATH_MAX)];

	if (!s->tls) {
		reply_error(s, "530 5.7.0 Must issue a STARTTLS command first");
		return false;
	}
	if (s->login == NULL) {
		reply_error(s, "530 5.7.0 Authentication required");
		return false;
	}
	if (sender[0] == '\0') {
		msg_info("reject: MAIL from [%s]: null sender from sasl_username=%s", s->addr,
			 log_esc(s->login, e1, sizeof(e1)));
		reply_error(s, "553 5.7.1 <>: Sender address rejected: not owned by user %s", s->login);
		return false;
	}
	switch (auth_sender_owned(s->w->auth, s->login, sender, why, sizeof(why))) {
	case SENDER_OWNED:
		return true;
	case SENDER_NOT_OWNED:
		msg_info("reject: MAIL from [%s]: 553 5.7.1 <%s>: Sender address rejected: "
			 "not owned by user %s", s->addr, log_esc(sender, e1, sizeof(e1)),
			 log_esc(s->login, e2, sizeof(e2)));
		reply_error(s, "553 5.7.1 <%s>: Sender address rejected: not owned by user %s",
			    sender, s->login);
		return false;
	case SENDER_TEMPFAIL:
		msg_warn("MAIL from [%s]: sender_login_map: %s", s->addr, why);
		reply(s, "451 4.3.0 <%s>: Temporary lookup failure", sender);
		return false;
	case SENDER_WAIT:
		lookup_wait(s);
		return false;
	}
	return false;
}

static void
do_mail(struct session *s, struct smtp_cmd *c)
{
	char buf[ADDR_PATH_MAX + 8];
	struct dsn_sender_params sp;

	address_format(&c->addr, buf, sizeof(buf));
	if (submission(s) && !submission_sender_ok(s, buf))
		return;
	if (c->params.size > s->w->cf->message_size_limit) {
		reply_error(s, "552 5.3.4 Message size exceeds fixed limit");
		return;
	}
	if (!spool_has_room(s, c->params.size)) {
		msg_warn("not enough free space in %s for mail from [%s]", s->w->cf->spool_dir, s->addr);
		reply_error(s, "452 4.3.1 Insufficient system storage");
		return;
	}
	if (milter_hook(s, MS_MAIL, c))
		return;
	s->sender = xstrdup(buf);
	/* the spool's one codec for them (lib/dsnparam.c) */
	sp = c->params.dsn_mail;
	sp.smtputf8 = s->smtputf8 = c->params.smtputf8;
	s->sender_params = spool_sender_params(&sp);
	s->state = SS_MAIL;
	reply(s, "250 2.1.0 Ok");
}

static void
do_rcpt(struct session *s, struct smtp_cmd *c)
{
	const struct config *cf = s->w->cf;
	char addr[ADDR_PATH_MAX + 8], why[512];
	char e1[LOG_ESC_SIZE(ADDR_PATH_MAX + 8)], e2[LOG_ESC_SIZE(ADDR_PATH_MAX + 8)];
	struct canon canon;
	const char *cwhy;
	size_t i, fanout;

	if (s->nrcpt >= (size_t)cf->smtpd_recipient_limit) {
		reply(s, "452 4.5.3 Error: too many recipients");
		return;
	}
	if (c->addr.utf8 && !s->smtputf8) {
		reply_error(s, "553 5.6.7 Must declare SMTPUTF8 to send UTF-8 addresses");
		return;
	}
	address_format(&c->addr, addr, sizeof(addr));
	/* the router answers in-process, from read-only map handles */
	switch (router_check_rcpt_flags(s->w->router, addr,
	    str_has_8bit(s->sender) ? RCPT_SENDER_UTF8 : 0, why, sizeof(why))) {
	case RCPT_ACCEPT:
		break;
	case RCPT_NO_SMTPUTF8:
		msg_info("reject: RCPT from [%s]: 553 5.6.7 <%s>: %s; from=<%s> to=<%s>",
			 s->addr, log_esc(addr, e1, sizeof(e1)), why, log_esc(s->sender, e2, sizeof(e2)),
			 e1);
		reply_error(s, "553 5.6.7 <%s>: Recipient address rejected: "
			    "its mailbox server does not support SMTPUTF8", addr);
		return;
	case RCPT_RELAY_DENIED:
		if (s->login != NULL)
			break;          /* an authenticated user relays */
		msg_info("reject: RCPT from [%s]: 554 5.7.1 <%s>: Relay access denied; from=<%s> to=<%s>",
			 s->addr, log_esc(addr, e1, sizeof(e1)), log_esc(s->sender, e2, sizeof(e2)), e1);
		reply_error(s, "554 5.7.1 <%s>: Relay access denied", addr);
		return;
	case RCPT_UNKNOWN_USER:
		msg_info("reject: RCPT from [%s]: 550 5.1.1 <%s>: User unknown (%s); from=<%s> to=<%s>",
			 s->addr, log_esc(addr, e1, sizeof(e1)), why, log_esc(s->sender, e2, sizeof(e2)), e1);
		reply_error(s, "550 5.1.1 <%s>: Recipient address rejected: User unknown", addr);
		return;
	case RCPT_TEMPFAIL:
		msg_warn("RCPT from [%s]: 451 4.3.0 <%s>: %s", s->addr, log_esc(addr, e1, sizeof(e1)), why);
		reply(s, "451 4.3.0 <%s>: Temporary lookup failure", addr);
		return;
	case RCPT_WAIT:
		lookup_wait(s);
		return;
	}
	/* the same recipient twice is kept once (the first one's parameters) */
	if (router_canon(addr, NULL, NULL, &canon, &cwhy) == 0) {
		for (i = 0; i < s->nrcpt; i++)
			if (strcmp(s->rcpt_canon[i], canon.address) == 0) {
				reply(s, "250 2.1.5 Ok");
				return;
			}
	} else
		snprintf(canon.address, sizeof(canon.address), "%.*s", ADDR_PATH_MAX, addr);
	/* what one message may become: alias expansion is capped per message */
	fanout = router_rcpt_fanout(s->w->router);
	if (s->expanded + fanout > (uint64_t)cf->alias_expansion_limit) {
		msg_info("reject: RCPT from [%s]: 452 4.5.3 <%s>: %zu more addresses after alias "
			 "expansion than alias_expansion_limit=%d allows", s->addr,
			 log_esc(addr, e1, sizeof(e1)), fanout, cf->alias_expansion_limit);
		reply(s, "452 4.5.3 Error: too many recipients after alias expansion");
		return;
	}
	/* counted once the milters said yes: a recipient they are asked
	 * about comes through here again with their answer */
	if (milter_hook(s, MS_RCPT, c))
		return;
	s->expanded += fanout;
	s->rcpts = xrealloc(s->rcpts, (s->nrcpt + 1) * sizeof(*s->rcpts));
	s->rcpt_canon = xrealloc(s->rcpt_canon, (s->nrcpt + 1) * sizeof(*s->rcpt_canon));
	s->rcpt_canon[s->nrcpt] = xstrdup(canon.address);
	s->rcpts[s->nrcpt++] = spool_rcpt_text(addr, &c->params.dsn_rcpt);
	s->state = SS_RCPT;
	reply(s, "250 2.1.5 Ok");
}

static void
do_rset(struct session *s, struct smtp_cmd *c)
{
	transaction_reset(s);
	reply(s, "250 2.0.0 Ok");
}

static void
do_noop(struct session *s, struct smtp_cmd *c)
{
	reply(s, "250 2.0.0 Ok");
}

static void
do_quit(struct session *s, struct smtp_cmd *c)
{
	reply_close(s, "221 2.0.0 Bye");
}

static void
do_vrfy(struct session *s, struct smtp_cmd *c)
{
	reply(s, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
}

static void
do_help(struct session *s, struct smtp_cmd *c)
{
	reply(s, "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP%s%s",
	      s->w->tls_ctx && !s->tls ? " STARTTLS" : "", auth_offered(s) ? " AUTH" : "");
}

static void
do_not_implemented(struct session *s, struct smtp_cmd *c)
{
	reply_error(s, "502 5.5.1 Error: command not implemented");
}

static void on_event(struct bufferevent *bev, short what, void *arg);
static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);

/*
 * Replies not yet on the wire. Under TLS the filter encrypts what is queued
 * on it into the socket's own stream at once, so its output is near empty
 * even when the client reads nothing: what piles up is counted there.
 */
static size_t
output_backlog(const struct session *s, struct evbuffer *out)
{
	struct bufferevent *under = s->tls ? bufferevent_get_underlying(s->bev) : NULL;

	return evbuffer_get_length(out) +
	       (under != NULL ? evbuffer_get_length(bufferevent_get_output(under)) : 0);
}

static void
on_backlog_gone(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;

	if (s->state != SS_CLOSING)
		process_input(s);
}

/* The socket's output under TLS changed: once a backlog that stopped
 * reading is half gone, reading resumes (from the loop: this runs inside
 * libevent's write path). */
static void
on_socket_output(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct session *s = arg;

	if (s->backlogged && info->n_deleted > 0 &&
	    evbuffer_get_length(buf) <= PIPELINE_OUTPUT_MAX / 2) {
		s->backlogged = false;
		event_active(s->backlog_ev, EV_TIMEOUT, 0);
	}
}

/* Puts a TLS server filter on the session's stream: what is queued on it
 * from now on goes out after the handshake. False when it cannot. */
static bool
tls_wrap(struct session *s, SSL *ssl)
{
	struct timeval wt = { s->w->cf->smtpd_timeout, 0 };
	struct bufferevent *tbev;

	if (s->backlog_ev == NULL &&
	    (s->backlog_ev = event_new(s->w->base, -1, 0, on_backlog_gone, s)) == NULL) {
		SSL_free(ssl);
		return false;
	}
	/* deferred callbacks: the filter reads from the socket's stream as
	 * soon as its input goes below the high-water mark, inside the drain
	 * of a line; a callback run there would enter process_input (or free
	 * the session, at EOF) under the very call that drained it */
	tbev = bufferevent_openssl_filter_new(s->w->base, s->bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
					      BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (tbev == NULL) {
		SSL_free(ssl);
		return false;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(tbev, 1);
	evbuffer_add_cb(bufferevent_get_output(s->bev), on_socket_output, s);
	/* Timeouts under TLS: the filter's read timeout follows the
	 * session's state (set_read_timeout), as in plaintext; the socket's
	 * stream keeping the plaintext one would cut a DATA pause that
	 * smtpd_data_timeout allows, and its read, once timed out, would stay
	 * off when the filter's is turned back on. The write timeout is the
	 * socket's, where unread replies wait: the filter's fires after each
	 * write, with nothing left to write. */
	bufferevent_set_timeouts(s->bev, NULL, &wt);
	s->bev = tbev;
	s->tls = true;
	bufferevent_setcb(tbev, on_read, on_write, on_event, s);
	bufferevent_setwatermark(tbev, EV_READ, 0, READ_HIGH_WATER);
	set_read_timeout(s, s->w->cf->smtpd_timeout);
	bufferevent_enable(tbev, EV_READ | EV_WRITE);
	return true;
}

static void
do_starttls(struct session *s, struct smtp_cmd *c)
{
	SSL *ssl;

	if (s->tls) {
		reply_error(s, "503 5.5.1 Error: TLS already active");
		return;
	}
	if (s->w->tls_ctx == NULL) {
		reply_error(s, "502 5.5.1 Error: command not implemented");
		return;
	}
	ssl = SSL_new(s->w->tls_ctx);
	if (ssl == NULL) {
		reply(s, "454 4.7.0 TLS not available due to local problem");
		return;
	}
	reply(s, "220 2.0.0 Ready to start TLS");
	/* RFC 3207 5 / CVE-2011-0411: nothing sent before the handshake counts */
	evbuffer_drain(bufferevent_get_input(s->bev), evbuffer_get_length(bufferevent_get_input(s->bev)));
	if (!tls_wrap(s, ssl)) {
		reply_close(s, "421 4.7.0 TLS not available due to local problem");
		return;
	}
	/* forget everything learned before TLS */
	transaction_reset(s);
	free(s->helo);
	s->helo = NULL;
	s->esmtp = false;
	s->state = SS_INIT;
}

/* One table: handler, the states in which the verb is allowed, and whether
 * it moves no mail (counted against smtpd_junk_command_limit). */
static const struct {
	void (*fn)(struct session *, struct smtp_cmd *);
	unsigned states;
	const char *out_of_state;   /* the 503 text */
	bool junk;
} verbs[VERB_MAX] = {
	[VERB_HELO] = { do_helo, ANY, NULL },
	[VERB_EHLO] = { do_helo, ANY, NULL },
	[VERB_MAIL] = { do_mail, ST(SS_READY), NULL },
	[VERB_RCPT] = { do_rcpt, ST(SS_MAIL) | ST(SS_RCPT), "503 5.5.1 Error: need MAIL command" },
	[VERB_DATA] = { do_data, ST(SS_RCPT), NULL },
	[VERB_RSET] = { do_rset, ANY, NULL, true },
	[VERB_NOOP] = { do_noop, ANY, NULL, true },
	[VERB_QUIT] = { do_quit, ANY, NULL, false },
	[VERB_VRFY] = { do_vrfy, ANY, NULL, true },
	[VERB_EXPN] = { do_not_implemented, ANY, NULL, true },
	[VERB_HELP] = { do_help, ANY, NULL, true },
	[VERB_STARTTLS] = { do_starttls, ST(SS_INIT) | ST(SS_READY), "503 5.5.1 Error: MAIL transaction in progress" },
	[VERB_AUTH] = { do_auth, ST(SS_READY), "503 5.5.1 Error: MAIL transaction in progress" },
	/* BDAT checks the state itself: a refused chunk must still be read */
	[VERB_BDAT] = { do_bdat, ANY, NULL },
};

const char *
out_of_state_text(struct session *s, enum smtp_verb v)
{
	if (s->state == SS_INIT && v != VERB_STARTTLS)
		return "503 5.5.1 Error: send HELO/EHLO first";
	if (v == VERB_MAIL)
		return "503 5.5.1 Error: nested MAIL command";
	if (s->state == SS_BDAT)   /* RFC 3030 3: no DATA, nor anything else, amid chunks */
		return v == VERB_DATA ? "503 5.5.1 Error: DATA in a BDAT transaction"
				      : "503 5.5.1 Error: BDAT transaction in progress";
	if (v == VERB_DATA || v == VERB_BDAT)
		return s->state == SS_MAIL ? "503 5.5.1 Error: need RCPT command"
					   : "503 5.5.1 Error: need MAIL command";
	return verbs[v].out_of_state ? verbs[v].out_of_state : "503 5.5.1 Error: bad sequence of commands";
}

static void
dispatch(struct session *s, const char *line, size_t len)
{
	struct smtp_cmd cmd;
	const char *why = "";
	enum cmd_status st;

	st = command_parse(line, len, &cmd, &why);
	switch (st) {
	case CMD_OK:
		break;
	case CMD_ERR_UNKNOWN:
		reply_error(s, "500 5.5.2 Error: command not recognized");
		return;
	case CMD_ERR_SYNTAX:
		reply_error(s, "501 5.5.4 Syntax error: %s", why);
		return;
	case CMD_ERR_ADDRESS:
		if (cmd.verb == VERB_MAIL)
			reply_error(s, "501 5.1.7 Bad sender address syntax: %s", why);
		else
			reply_error(s, "501 5.1.3 Bad recipient address syntax: %s", why);
		return;
	case CMD_ERR_PARAM:
		reply_error(s, "555 5.5.4 Unsupported option: %s", why);
		return;
	case CMD_ERR_UTF8:
		reply_error(s, "553 5.6.7 %s", why);
		return;
	case CMD_ERR_BDAT: {
		/* the chunk's size is unknown: what follows can't be told from commands */
		char buf[256];

		msg_info("malformed BDAT from [%s]: closing", s->addr);
		reply(s, "501 5.5.4 Error: %s", why);
		snprintf(buf, sizeof(buf), "421 4.5.0 %s Error: BDAT chunk size unknown, closing",
			 s->w->cf->hostname);
		transaction_reset(s);
		reply_close(s, buf);
		return;
	}
	}
	if (cmd.verb <= VERB_UNKNOWN || cmd.verb >= VERB_MAX || verbs[cmd.verb].fn == NULL) {
		reply_error(s, "500 5.5.2 Error: command not recognized");
		return;
	}
	if (!(verbs[cmd.verb].states & ST(s->state))) {
		reply_error(s, "%s", out_of_state_text(s, cmd.verb));
		return;
	}
	s->line_len = len;
	if (verbs[cmd.verb].junk && ++s->junk > (unsigned)s->w->cf->smtpd_junk_command_limit) {
		char buf[256];

		msg_info("too many junk commands from [%s] (smtpd_junk_command_limit=%d)", s->addr,
			 s->w->cf->smtpd_junk_command_limit);
		snprintf(buf, sizeof(buf), "421 4.7.0 %s Error: too many junk commands",
			 s->w->cf->hostname);
		transaction_reset(s);
		reply_close(s, buf);
		return;
	}
	verbs[cmd.verb].fn(s, &cmd);
}

/* Runs the handler of c's verb again, past dispatch()'s checks: the
 * milters let the command through. */
void
verb_run(struct session *s, struct smtp_cmd *c)
{
	verbs[c->verb].fn(s, c);
}

static const char *
drain_text(const struct session *s)
{
	return s->drain_reply ? s->drain_reply
			      : "421 4.3.2 Service shutting down, closing transmission channel";
}

/* An over-long line: in an AUTH exchange (or an AUTH command) it ends the
 * exchange with RFC 4954's reply. */
static void
line_too_long(struct session *s, struct evbuffer *in)
{
	char head[5];

	if (s->state == SS_AUTH ||
	    (evbuffer_copyout(in, head, sizeof(head)) == (ev_ssize_t)sizeof(head) &&
	     strncasecmp(head, "AUTH ", sizeof(head)) == 0)) {
		auth_end(s);
		reply_error(s, "500 5.5.6 Authentication exchange line is too long");
		return;
	}
	reply_error(s, "500 5.5.2 Error: line too long");
}

void
process_input(struct session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	struct evbuffer *out = bufferevent_get_output(s->bev);
	const struct config *cf = s->w->cf;
	struct evbuffer_ptr p;
	size_t eol_len, len, limit = (size_t)cf->smtpd_line_limit;

	for (;;) {
		if (s->state == SS_COMMIT || s->state == SS_AUTH_WAIT || s->state == SS_CLOSING ||
		    s->state == SS_LOOKUP_WAIT || s->paused || s->milter_busy)
			return;
		if (output_backlog(s, out) > PIPELINE_OUTPUT_MAX) {
			s->backlogged = true;   /* on_write, or under TLS on_socket_output,
						 * resumes once the client reads */
			return;
		}
		if (s->in_chunk) {
			if (take_chunk(s, in)) {
				end_of_chunk(s);
				continue;
			}
			if (s->chunk_refused == NULL)
				data_rate_check(s);
			else if (s->drain)      /* no transaction to finish: end now */
				reply_close(s, drain_text(s));
			return;
		}
		if (s->state == SS_DATA) {
			if (!take_data(s, in)) {
				data_rate_check(s);
				return;
			}
			end_of_data(s);
			continue;
		}
		if (evbuffer_get_length(in) == 0) {
			if (s->drain && s->state <= SS_READY)
				reply_close(s, drain_text(s));
			return;
		}
		p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (p.pos < 0) {
			if (evbuffer_get_length(in) >= limit) {
				/* no end in sight: drop what we have, the rest when it comes */
				if (!s->long_line)
					line_too_long(s, in);
				evbuffer_drain(in, evbuffer_get_length(in));
				s->long_line = true;
			}
			return;
		}
		len = (size_t)p.pos;
		if (s->long_line || len + 1 > limit) {
			if (!s->long_line)
				line_too_long(s, in);
			evbuffer_drain(in, len + 1);
			s->long_line = false;
			continue;
		}
		evbuffer_remove(in, s->linebuf, len + 1);
		if (len == 0 || s->linebuf[len - 1] != '\r') {
			reply_error(s, "500 5.5.2 Error: bare <LF> received; lines must end with <CR><LF>");
			continue;
		}
		len--;
		s->linebuf[len] = '\0';
		if (s->state == SS_AUTH) {
			auth_continue(s, s->linebuf, len);
			explicit_bzero(s->linebuf, len);
			continue;
		}
		if (s->drain && s->state <= SS_READY) {
			reply_close(s, drain_text(s));
			return;
		}
		dispatch(s, s->linebuf, len);
		/* an AUTH command's initial response carries the password;
		 * a line waiting for a lookup is run again from linebuf */
		if (len >= 4 && strncasecmp(s->linebuf, "AUTH", 4) == 0 &&
		    s->state != SS_LOOKUP_WAIT)
			explicit_bzero(s->linebuf, len);
	}
}

/* ---- commands that wait for a lookup ----
 * A handler that meets a lookup under way (an ldap: map) has changed
 * nothing yet: the session stops reading, and the same command line runs
 * again from the start when an answer arrives or a second passes (the
 * map answers a failure once its timeout is over). */

static void
lookup_wait(struct session *s)
{
	s->wait_from = s->state;
	s->state = SS_LOOKUP_WAIT;
	map_waiter_busy(s->w->waiter, true);
}

void
session_lookup_retry(struct worker *w)
{
	struct session *s, *next;
	bool waiting = false;

	for (s = w->sessions; s; s = next) {
		next = s->next;
		if (s->state != SS_LOOKUP_WAIT)
			continue;
		s->state = s->wait_from;
		dispatch(s, s->linebuf, s->line_len);
		if (s->state == SS_LOOKUP_WAIT)
			waiting = true;
		else
			process_input(s);
	}
	map_waiter_busy(w->waiter, waiting);
}

/* ---- events ---- */

static void
on_read(struct bufferevent *bev, void *arg)
{
	process_input(arg);
}

/*
 * Closing a TLS session: when the filter's write callback runs, the last
 * replies have only been encrypted into the socket layer's output buffer;
 * closing now would discard them (a sender that pipelined "." and QUIT then
 * never sees its 250 and delivers again). So close_notify is queued behind
 * them, and the socket is closed once that buffer is on the wire, the client
 * hangs up, or smtpd_timeout passes.
 */
static void
on_flushed(evutil_socket_t fd, short what, void *arg)
{
	session_close(arg);
}

static void
on_tls_output(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct session *s = arg;

	/* inside libevent's write path: close from the loop, not from here */
	if (evbuffer_get_length(buf) == 0)
		event_active(s->flush_ev, EV_TIMEOUT, 0);
}

static void
on_closing_event(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;

	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
		event_active(s->flush_ev, EV_TIMEOUT, 0);
}

static void
close_after_flush(struct session *s)
{
	struct bufferevent *under = s->tls ? bufferevent_get_underlying(s->bev) : NULL;
	struct evbuffer *out;
	struct timeval tv = { s->w->cf->smtpd_timeout, 0 };
	SSL *ssl;

	if (under == NULL) {
		session_close(s);       /* plain: the output buffer is on the wire already */
		return;
	}
	if (s->flush_ev != NULL)
		return;                 /* already waiting */
	ssl = bufferevent_openssl_get_ssl(s->bev);
	if (ssl != NULL && SSL_is_init_finished(ssl))
		(void)SSL_shutdown(ssl);        /* close_notify, behind the last reply */
	out = bufferevent_get_output(under);
	if (evbuffer_get_length(out) == 0) {
		session_close(s);
		return;
	}
	s->flush_ev = event_new(s->w->base, -1, 0, on_flushed, s);
	if (s->flush_ev == NULL) {
		session_close(s);
		return;
	}
	bufferevent_setcb(s->bev, NULL, NULL, on_closing_event, s);
	evbuffer_add_cb(out, on_tls_output, s);
	event_add(s->flush_ev, &tv);
}

static void
on_write(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;

	if (s->state == SS_CLOSING) {
		close_after_flush(s);
		return;
	}
	process_input(s);
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	char buf[256];

	if (what & BEV_EVENT_CONNECTED) {
		SSL *ssl = bufferevent_openssl_get_ssl(bev);

		if (ssl) {
			snprintf(s->tls_desc, sizeof(s->tls_desc), "%s with cipher %s",
				 SSL_get_version(ssl), SSL_get_cipher_name(ssl));
			msg_info("TLS established from [%s]: %s", s->addr, s->tls_desc);
			metrics_tls_handshake(MTLS_SERVER, SSL_get_version(ssl), true);
		}
		return;
	}
	if ((what & BEV_EVENT_TIMEOUT) && s->milter_busy) {
		/* the client waits for the milters, whose own timeouts bound that */
		bufferevent_enable(bev, EV_READ);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		if ((what & BEV_EVENT_READING) && !(what & BEV_EVENT_WRITING) &&
		    metrics_now() - s->read_armed_usec < s->read_timeout_usec) {
			/* it went off in the same turn of the loop that set it
			 * again (a commit done just then): no timeout */
			bufferevent_enable(bev, EV_READ);
			return;
		}
		if ((s->state == SS_COMMIT || s->auth_busy) && (what & BEV_EVENT_READING)) {
			/* the client waits for the answer to its last command
			 * (a slow disk, a slow password check): its silence
			 * is no timeout; the answer comes when that is done */
			bufferevent_enable(bev, EV_READ);
			return;
		}
		msg_info("timeout after %s from [%s]", s->state == SS_DATA ? "DATA" :
			 s->state == SS_COMMIT ? "END-OF-MESSAGE" :
			 s->in_chunk ? "BDAT" : "command", s->addr);
		if (s->state == SS_COMMIT || s->auth_busy) {
			/* it does not read: it is gone, once that is done */
			s->gone = true;
			bufferevent_disable(bev, EV_READ | EV_WRITE);
			return;
		}
		if (s->state == SS_CLOSING) {
			session_close(s);       /* the client does not read its last reply */
			return;
		}
		snprintf(buf, sizeof(buf), "421 4.4.2 %s Error: timeout exceeded", s->w->cf->hostname);
		transaction_reset(s);
		reply_close(s, buf);
		bufferevent_enable(s->bev, EV_WRITE);
		return;
	}
	if (bufferevent_openssl_get_ssl(bev) != NULL && s->tls_desc[0] == '\0' && !s->tls_failed) {
		/* the handshake never completed */
		s->tls_failed = true;
		metrics_tls_handshake(MTLS_SERVER, SSL_get_version(bufferevent_openssl_get_ssl(bev)),
				      false);
	}
	if (what & BEV_EVENT_ERROR) {
		unsigned long e;

		while ((e = bufferevent_get_openssl_error(bev)) != 0) {
			ERR_error_string_n(e, buf, sizeof(buf));
			msg_info("TLS error from [%s]: %s", s->addr, buf);
		}
	}
	/* EOF or error: the client is gone */
	if (s->state == SS_COMMIT && (what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
		/* it only stopped sending (shutdown, or a TLS close_notify
		 * after a pipelined QUIT): it may still read its 250, and
		 * what it sent before is answered; then the session ends */
		s->read_eof = true;
		bufferevent_disable(bev, EV_READ);
		return;
	}
	if (s->state == SS_COMMIT || s->auth_busy) {
		s->gone = true;
		bufferevent_disable(bev, EV_READ | EV_WRITE);
		return;
	}
	if (s->state == SS_DATA || s->state == SS_BDAT)
		msg_info("%s: lost connection after %s from [%s]", s->id,
			 s->state == SS_DATA ? "DATA" : "BDAT", s->addr);
	session_close(s);
}

/* ---- life cycle ---- */

/* smtpd_session_time_limit: the session ends at its next command boundary
 * (a transaction in progress finishes; slow content meets the data rate).
 * A transaction gets smtpd_timeout more to finish: one kept open with
 * recipients or NOOPs, each within smtpd_timeout, ends then. */
static void
on_time_limit(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	struct timeval grace = { s->w->cf->smtpd_timeout, 0 };

	if (s->drain && s->drain_reply != NULL) {
		/* the grace is over */
		if (s->state == SS_MAIL || s->state == SS_RCPT ||
		    (s->state == SS_BDAT && !s->in_chunk)) {
			msg_info("session time limit: transaction not finished in %ds more from [%s]",
				 s->w->cf->smtpd_timeout, s->addr);
			reply_close(s, s->drain_reply);
			bufferevent_enable(s->bev, EV_WRITE);
		}
		return;
	}
	msg_info("session time limit (smtpd_session_time_limit=%d) reached for [%s]",
		 s->w->cf->smtpd_session_time_limit, s->addr);
	s->drain = true;
	s->drain_reply = "421 4.4.2 Error: session time limit exceeded";
	if (s->state <= SS_READY && evbuffer_get_length(bufferevent_get_input(s->bev)) == 0) {
		reply_close(s, s->drain_reply);
		bufferevent_enable(s->bev, EV_WRITE);
		return;
	}
	evtimer_add(s->limit_ev, &grace);
}

void
session_start(struct worker *w, int fd, const struct sockaddr *sa, socklen_t salen,
	      const struct listener *l, int table_slot)
{
	struct session *s = xcalloc(1, sizeof(*s));

	s->w = w;
	s->listener = l;
	s->table_slot = table_slot;
	s->state = SS_INIT;
	s->linebuf = xmalloc((size_t)w->cf->smtpd_line_limit + 1);
	if (sa->sa_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, s->addr, sizeof(s->addr));
		s->port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, s->addr, sizeof(s->addr));
		s->port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	} else
		snprintf(s->addr, sizeof(s->addr), "unknown");
	s->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		close(fd);
		session_table_leave(w->st, w->index, table_slot);
		free(s->linebuf);
		free(s);
		return;
	}
	s->next = w->sessions;
	if (w->sessions)
		w->sessions->prev = s;
	w->sessions = s;
	w->nsessions++;
	commit_pool_set_writers(w->commit, (unsigned)w->nsessions);
	metrics_session_open((int)(l - w->ls));
	client_addr_key(sa, s->key);
	bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, READ_HIGH_WATER);
	set_read_timeout(s, w->cf->smtpd_timeout);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	msg_info("connect from [%s]", s->addr);
	if ((s->limit_ev = evtimer_new(w->base, on_time_limit, s)) != NULL) {
		struct timeval tv = { w->cf->smtpd_session_time_limit, 0 };

		evtimer_add(s->limit_ev, &tv);
	}
	if (l->spec.role == ROLE_SUBMISSIONS) {
		/* RFC 8314 implicit TLS: the banner is the first thing encrypted */
		SSL *ssl = w->tls_ctx ? SSL_new(w->tls_ctx) : NULL;

		if (ssl == NULL || !tls_wrap(s, ssl)) {
			msg_warn("cannot start TLS for [%s] on a submissions listener", s->addr);
			session_close(s);
			return;
		}
	}
	(void)salen;
	s->mc = milter_client_new(w->base, w->milters, l, session_macro, s);
	if (milter_hook(s, MS_CONNECT, NULL))
		return;         /* greeted once the milters have seen the connection */
	greet(s);
}

void
greet(struct session *s)
{
	reply(s, "220 %s ESMTP Sorter", s->w->cf->hostname);
}

void
session_close(struct session *s)
{
	struct worker *w = s->w;

	if (s->committing || s->auth_busy) {
		/* a commit or a password check is in flight: it finishes and then closes */
		s->gone = true;
		return;
	}
	msg_info("disconnect from [%s] messages=%u", s->addr, s->n_msgs);
	transaction_reset(s);
	milter_client_free(s->mc);      /* a stage in progress is dropped */
	s->mc = NULL;
	free(s->milter_deny);
	free(s->milter_refusal);
	if (s->flush_ev) {
		evbuffer_remove_cb(bufferevent_get_output(bufferevent_get_underlying(s->bev)),
				   on_tls_output, s);
		event_free(s->flush_ev);
	}
	if (s->backlog_ev) {
		if (s->tls)
			evbuffer_remove_cb(bufferevent_get_output(bufferevent_get_underlying(s->bev)),
					   on_socket_output, s);
		event_free(s->backlog_ev);
	}
	if (s->bev)
		bufferevent_free(s->bev);
	if (s->prev)
		s->prev->next = s->next;
	else
		w->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	w->nsessions--;
	commit_pool_set_writers(w->commit, (unsigned)w->nsessions);
	metrics_session_close((int)(s->listener - w->ls));
	session_table_leave(w->st, w->index, s->table_slot);
	free(s->helo);
	free(s->login);
	if (s->limit_ev)
		event_free(s->limit_ev);
	if (s->auth_delay_ev)
		event_free(s->auth_delay_ev);
	explicit_bzero(s->auth_user, sizeof(s->auth_user));
	free(s->linebuf);
	free(s);
	if (w->draining && w->nsessions == 0)
		event_base_loopexit(w->base, NULL);
}

void
session_drain_all(struct worker *w)
{
	struct session *s, *next;

	for (s = w->sessions; s; s = next) {
		next = s->next;
		s->drain = true;
		if (s->state <= SS_READY && evbuffer_get_length(bufferevent_get_input(s->bev)) == 0)
			reply_close(s, "421 4.3.2 Service shutting down, closing transmission channel");
	}
}

void
session_end_all(struct worker *w)
{
	struct session *s, *next;

	for (s = w->sessions; s; s = next) {
		next = s->next;
		s->drain = true;
		if (s->state != SS_COMMIT && s->state != SS_CLOSING)
			reply_close(s, "421 4.3.2 Service shutting down, closing transmission channel");
	}
}
