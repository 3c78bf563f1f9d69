/*
 * session_auth.c - the AUTH command (RFC 4954) of an SMTP session: the
 * PLAIN (RFC 4616) and LOGIN exchanges, the wait for the password check,
 * and the growing delay a guesser's address gets.
 *
 * The bytes of the exchange are decoded by sasl.c and the password is
 * checked by auth.c, off the event loop; this file only runs the dialogue.
 * It must never log a password, and never leave one in a buffer it is done
 * with.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>

#include "lib/lib.h"
#include "lib/metrics.h"
#include "smtpd/auth.h"
#include "smtpd/session.h"
#include "smtpd/smtpd.h"

#define AUTH_SESSION_FAILURES 3   /* per session, then 421 */
#define AUTH_DELAY_MAX 30         /* seconds, the longest wait a guesser gets */

static void auth_reply(struct session *s);

void
auth_end(struct session *s)
{
	explicit_bzero(s->auth_user, sizeof(s->auth_user));
	s->auth_step = 0;
	if (s->state == SS_AUTH || s->state == SS_AUTH_WAIT)
		s->state = SS_READY;
}

static void
on_auth_delay(evutil_socket_t fd, short what, void *arg)
{
	auth_reply(arg);
	process_input(arg);
}

static void
on_auth_checked(void *arg, enum auth_result r)
{
	struct session *s = arg;
	const struct config *cf = s->w->cf;
	time_t now = time(NULL);
	unsigned n, over;
	struct timeval tv = { 0, 0 };

	s->auth_busy = false;
	if (s->gone) {
		session_close(s);
		return;
	}
	s->auth_result = r;
	n = r == AUTH_FAIL ? session_table_auth_failed(s->w->st, s->key, now)
			   : session_table_auth_failures(s->w->st, s->key, now);
	if (n > (unsigned)cf->smtpd_client_auth_failure_limit) {
		/* a guesser: every answer to this address comes later and later */
		over = n - (unsigned)cf->smtpd_client_auth_failure_limit;
		tv.tv_sec = over > 5 ? AUTH_DELAY_MAX : 1L << (over - 1);
		if (tv.tv_sec > AUTH_DELAY_MAX)
			tv.tv_sec = AUTH_DELAY_MAX;
		if (s->auth_delay_ev == NULL)
			s->auth_delay_ev = evtimer_new(s->w->base, on_auth_delay, s);
		if (s->auth_delay_ev != NULL) {
			evtimer_add(s->auth_delay_ev, &tv);
			return;
		}
	}
	auth_reply(s);
	process_input(s);
}

static void
auth_reply(struct session *s)
{
	char user[LOG_ESC_SIZE(ADDR_PATH_MAX)], buf[256];

	log_esc(s->auth_user, user, sizeof(user));
	switch (s->auth_result) {
	case AUTH_OK:
		s->login = xstrdup(s->auth_user);
		metrics_auth(s->auth_mech, MAUTH_SUCCESS);
		msg_info("[%s]: AUTH ok, sasl_method=%s, sasl_username=%s", s->addr, s->auth_mech, user);
		reply(s, "235 2.7.0 Authentication successful");
		break;
	case AUTH_FAIL:
		s->auth_failures++;
		metrics_auth(s->auth_mech, MAUTH_FAILURE);
		msg_warn("[%s]: SASL %s authentication failed, sasl_username=%s", s->addr,
			 s->auth_mech, user);
		reply(s, "535 5.7.8 Error: authentication failed");
		break;
	case AUTH_TEMPFAIL:
		metrics_auth(s->auth_mech, MAUTH_TEMPFAIL);
		reply(s, "454 4.7.0 Temporary authentication failure");
		break;
	}
	auth_end(s);
	if (s->auth_failures >= AUTH_SESSION_FAILURES) {
		msg_info("too many AUTH failures from [%s]", s->addr);
		snprintf(buf, sizeof(buf), "421 4.7.0 %s Error: too many authentication failures",
			 s->w->cf->hostname);
		reply_close(s, buf);
	}
}

/* Hands user and password to the checker; the session waits, the loop does not. */
static void
auth_start_check(struct session *s, const char *user, const char *pass)
{
	size_t i;
	bool plausible = user[0] != '\0' && strlen(user) <= ADDR_PATH_MAX;

	for (i = 0; plausible && user[i] != '\0'; i++)
		if ((unsigned char)user[i] <= ' ' || user[i] == 0x7f)
			plausible = false;
	/* an impossible name is looked up too, so that it takes as long */
	snprintf(s->auth_user, sizeof(s->auth_user), "%s", plausible ? user : "");
	s->state = SS_AUTH_WAIT;
	s->auth_busy = true;
	auth_check(s->w->auth, plausible ? user : "-", pass, on_auth_checked, s);
}

/* A base64 response; false (and the reply sent) when it is not one. */
static bool
auth_decode(struct session *s, const char *in, size_t len, unsigned char *out, size_t outmax,
	    size_t *outlen)
{
	if (len == 1 && in[0] == '=') {
		*outlen = 0;            /* RFC 4954 4: "=" is an empty response */
		return true;
	}
	switch (sasl_b64_decode(in, len, out, outmax, outlen)) {
	case 0:
		return true;
	case -2:
		reply_error(s, "500 5.5.6 Authentication exchange line is too long");
		break;
	default:
		reply_error(s, "501 5.5.2 Error: malformed base64 authentication data");
		break;
	}
	auth_end(s);
	return false;
}

static void
auth_plain(struct session *s, const unsigned char *msg, size_t len)
{
	char user[ADDR_PATH_MAX + 2], pass[AUTH_PASS_MAX + 1];

	switch (sasl_plain_parse(msg, len, user, sizeof(user), pass, sizeof(pass))) {
	case SASL_PLAIN_OK:
		auth_start_check(s, user, pass);
		break;
	case SASL_PLAIN_AUTHZID:
	case SASL_PLAIN_TOO_LONG:
	case SASL_PLAIN_MALFORMED:
		/* answered like a wrong password, after the same work */
		auth_start_check(s, "", "");
		break;
	}
	explicit_bzero(pass, sizeof(pass));
}

/* One response line of the exchange (SS_AUTH). */
void
auth_continue(struct session *s, const char *line, size_t len)
{
	unsigned char buf[AUTH_PASS_MAX + ADDR_PATH_MAX * 2 + 8];
	size_t n;

	if (len == 1 && line[0] == '*') {
		auth_end(s);
		reply_error(s, "501 5.0.0 Authentication aborted");
		return;
	}
	if (!auth_decode(s, line, len, buf, sizeof(buf) - 1, &n))
		return;
	buf[n] = '\0';
	if (strcmp(s->auth_mech, "PLAIN") == 0) {
		auth_plain(s, buf, n);
	} else if (s->auth_step == 1) {
		/* LOGIN: the user name; a NUL inside it makes it no name */
		s->auth_user[0] = '\0';
		if (memchr(buf, '\0', n) == NULL && n < sizeof(s->auth_user))
			memcpy(s->auth_user, buf, n + 1);
		s->auth_step = 2;
		reply(s, "334 UGFzc3dvcmQ6");               /* "Password:" */
	} else {
		char user[ADDR_PATH_MAX + 1];

		snprintf(user, sizeof(user), "%s", s->auth_user);
		if (memchr(buf, '\0', n) != NULL || n > AUTH_PASS_MAX)
			user[0] = '\0';
		auth_start_check(s, user, (char *)buf);
	}
	explicit_bzero(buf, sizeof(buf));
}

void
do_auth(struct session *s, struct smtp_cmd *c)
{
	size_t mlen = strcspn(c->arg, " ");
	const char *init = c->arg + mlen;

	if (!submission(s) || s->w->auth == NULL) {
		reply_error(s, "503 5.5.1 Error: authentication not enabled");
		return;
	}
	if (!s->tls) {
		reply_error(s, "530 5.7.0 Must issue a STARTTLS command first");
		return;
	}
	if (s->login != NULL) {
		reply_error(s, "503 5.5.1 Error: already authenticated");
		return;
	}
	if (mlen == 5 && strncasecmp(c->arg, "PLAIN", 5) == 0)
		s->auth_mech = "PLAIN";
	else if (mlen == 5 && strncasecmp(c->arg, "LOGIN", 5) == 0)
		s->auth_mech = "LOGIN";
	else {
		reply_error(s, "504 5.5.4 Error: unsupported authentication mechanism");
		return;
	}
	while (*init == ' ')
		init++;
	s->auth_step = 1;
	if (*init == '\0' || (s->auth_mech[0] == 'P' && strcmp(init, "=") == 0)) {
		/* no initial response (or an empty one to PLAIN): ask for it */
		s->state = SS_AUTH;
		reply(s, "%s", s->auth_mech[0] == 'P' ? "334 " : "334 VXNlcm5hbWU6");
		return;
	}
	s->state = SS_AUTH;
	auth_continue(s, init, strlen(init));
}
