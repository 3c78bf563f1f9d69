/*
 * dsn.c - delivery status notifications: the RFC 3464 report the queue
 * manager sends back to a sender, as an RFC 6522 multipart/report. (The
 * RFC 3461 parameters it reports on have their codec in lib/dsnparam.c.)
 *
 * Pure: no I/O, no clock except for the report's own Date:. It must never
 * read past a string it was given, never let a byte from a remote reply or
 * from the original message break the report's structure (header lines,
 * MIME boundary, CRLF line ends), and never re-wrap the original message.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "lib/lib.h"
#include "queue/queue.h"

#define WRAP_SOFT 76            /* keep generated lines below 78 where a space allows */
#define LINE_HARD 998           /* RFC 5322 2.1.1, never exceeded */
#define VALUE_MAX 4096          /* a longer field value (a chatty reply) is cut */
#define BOUNDARY_MAX 70         /* RFC 2046 5.1.1 */

static bool
is_letdig(int c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* ---- status codes ---- */

/* Length of the RFC 3463 code class "." subject "." detail at s, or 0 */
static size_t
status_len(const char *s)
{
	size_t i = 0, k;
	int part;

	if (s[0] != '2' && s[0] != '4' && s[0] != '5')
		return 0;
	i = 1;
	for (part = 0; part < 2; part++) {
		if (s[i] != '.')
			return 0;
		i++;
		for (k = 0; k < 3 && s[i] >= '0' && s[i] <= '9'; k++)
			i++;
		if (k == 0)
			return 0;
	}
	return s[i] >= '0' && s[i] <= '9' ? 0 : i;
}

static bool
status_valid(const char *s)
{
	size_t n = s != NULL ? status_len(s) : 0;

	return n > 0 && s[n] == '\0';
}

bool
dsn_status_from_reply(const char *reply, char status[16])
{
	const char *p;
	size_t n;

	status[0] = '\0';
	if (reply == NULL || (reply[0] != '2' && reply[0] != '4' && reply[0] != '5') ||
	    reply[1] < '0' || reply[1] > '9' || reply[2] < '0' || reply[2] > '9' ||
	    (reply[3] != '\0' && reply[3] != ' ' && reply[3] != '-'))
		return false;
	p = reply[3] == '\0' ? reply + 3 : reply + 4;
	while (*p == ' ')
		p++;
	n = status_len(p);
	/* RFC 3463 2: a code whose class disagrees with the reply is not trusted */
	if (n > 0 && (p[n] == '\0' || p[n] == ' ' || p[n] == '\t' || p[n] == '\r' ||
		      p[n] == '\n') && p[0] == reply[0]) {
		memcpy(status, p, n);
		status[n] = '\0';
	} else {
		snprintf(status, 16, "%c.0.0", reply[0]);
	}
	return true;
}

/* ---- the report ---- */

static const char *
str(const char *s)
{
	return s != NULL ? s : "";
}

/*
 * A copy of s fit for a header field or a line of text: CR, LF and other
 * controls become spaces, 8-bit bytes "?", runs of spaces one space, and
 * outer spaces go. A remote reply must not be able to add a header line.
 */
static char *
clean(const char *s)
{
	size_t n, i, o = 0;
	char *out;

	s = str(s);
	n = strnlen(s, VALUE_MAX);
	out = xmalloc(n + 1);

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 32 || c == 127)
			c = ' ';
		else if (c > 127)
			c = '?';
		if (c == ' ' && (o == 0 || out[o - 1] == ' '))
			continue;
		out[o++] = (char)c;
	}
	while (o > 0 && out[o - 1] == ' ')
		o--;
	out[o] = '\0';
	return out;
}

static void
put(struct dstr *out, const char *s)
{
	(void)dstr_append(out, s, strlen(s));
}

/*
 * Appends prefix and text as one logical line, broken at spaces so that
 * lines stay under WRAP_SOFT where a space allows and under LINE_HARD
 * always; each continuation starts with indent. With indent " " this is
 * RFC 5322 folding: the break space becomes CRLF SP, so unfolding gives
 * back the value. text comes from clean(): no controls, single spaces.
 */
static void
put_wrapped(struct dstr *out, const char *prefix, const char *text, const char *indent)
{
	size_t col = strlen(prefix), ind = strlen(indent), n = strlen(text);
	const char *t = text;

	put(out, prefix);
	while (n > 0) {
		size_t room = col < WRAP_SOFT ? WRAP_SOFT - col : 0;
		size_t hard = col < LINE_HARD - 1 ? LINE_HARD - col : 1, brk = 0, i;

		if (n <= room)
			break;
		for (i = room < n - 1 ? room : n - 1; i > 0 && brk == 0; i--)
			if (t[i] == ' ')
				brk = i;
		for (i = room + 1; i < n && i < hard && brk == 0; i++)
			if (t[i] == ' ')
				brk = i;
		if (brk == 0) {
			if (n <= hard)
				break;
			/* no space early enough: a forced break, the only kind
			 * that adds a space to the value */
			(void)dstr_append(out, t, hard);
			t += hard;
			n -= hard;
		} else {
			(void)dstr_append(out, t, brk);
			t += brk + 1;
			n -= brk + 1;
		}
		put(out, "\r\n");
		put(out, indent);
		col = ind;
	}
	(void)dstr_append(out, t, n);
	put(out, "\r\n");
}

/* "Name: value" folded; value cleaned first */
static void
put_field(struct dstr *out, const char *name, const char *value)
{
	char *v = clean(value);
	char *prefix = xasprintf("%s: ", name);

	put_wrapped(out, prefix, v, " ");
	free(prefix);
	free(v);
}

static void
put_date_field(struct dstr *out, const char *name, uint64_t usec)
{
	char date[64];

	rfc5322_date((time_t)(usec / 1000000u), date, sizeof(date));
	dstr_printf(out, "%s: %s\r\n", name, date);
}

/*
 * Length of the header section at the start of the content: header lines
 * and their continuations, up to the empty line or the first line that is
 * not a header field. Only this much is returned for RET=HDRS, so a message
 * that lacks the empty line still does not give its body away.
 */
static size_t
header_section_len(const unsigned char *c, size_t len)
{
	size_t pos = 0, end, next, i;
	const unsigned char *nl;

	while (pos < len) {
		nl = memchr(c + pos, '\n', len - pos);
		next = nl != NULL ? (size_t)(nl - c) + 1 : len;
		end = nl != NULL ? (size_t)(nl - c) : len;
		if (end > pos && c[end - 1] == '\r')
			end--;
		if (end == pos)
			break;
		if (c[pos] == ' ' || c[pos] == '\t') {
			if (pos == 0)
				break;
		} else {
			for (i = pos; i < end && c[i] > 32 && c[i] < 127 && c[i] != ':'; i++)
				;
			if (i == pos || i == end || c[i] != ':')
				break;
		}
		pos = next;
	}
	return pos;
}

/*
 * The Content-Transfer-Encoding a part must be labelled with so that it
 * stays valid as passed through: NULL for 7bit, "8bit" for 8-bit bytes in
 * lines of legal length, "binary" once a line is too long (RFC 2045 2.7-2.9).
 */
static const char *
content_encoding(const unsigned char *c, size_t len)
{
	size_t i, line = 0;
	bool eight = false;

	for (i = 0; i < len; i++) {
		if (c[i] == '\r' || c[i] == '\n') {
			line = 0;
			continue;
		}
		if (c[i] > 127)
			eight = true;
		if (++line > LINE_HARD)
			return "binary";
	}
	return eight ? "8bit" : NULL;
}

/*
 * Appends content with every line ended by CRLF: a bare CR or a bare LF (a
 * stored message never has one, but a report must never carry one either)
 * becomes CRLF, and a last line without an end gets one.
 */
static void
put_content(struct dstr *out, const unsigned char *c, size_t len)
{
	size_t i, run = 0;

	if (len == 0)
		return;
	for (i = 0; i < len; i++) {
		if (c[i] == '\r' && i + 1 < len && c[i + 1] == '\n') {
			i++;
			continue;
		}
		if (c[i] != '\r' && c[i] != '\n')
			continue;
		(void)dstr_append(out, c + run, i - run);
		put(out, "\r\n");
		run = i + 1;
	}
	(void)dstr_append(out, c + run, len - run);
	if (c[len - 1] != '\n' && c[len - 1] != '\r')
		put(out, "\r\n");
}

/* MIME bchars without space (RFC 2046 5.1.1); anything else becomes "-" */
static void
boundary_safe(char *s)
{
	for (; *s; s++)
		if (!is_letdig((unsigned char)*s) && strchr("'()+_,-./:=?", *s) == NULL)
			*s = '-';
}

/*
 * The boundary is the queue id, a counter and our hostname; the counter
 * goes up until the string occurs in none of the parts, so nothing the
 * sender or a remote server wrote can end a part early.
 */
static void
choose_boundary(const struct dsn_report *r, const struct dstr *text,
		const struct dstr *status, const unsigned char *payload, size_t plen,
		char *b, size_t blen)
{
	unsigned counter;
	size_t n;

	for (counter = 0; ; counter++) {
		snprintf(b, blen, "%.*s.%u/%s", QID_LEN, r->queue_id ? r->queue_id : "NOQUEUE",
			 counter, str(r->reporting_mta));
		boundary_safe(b);
		n = strlen(b);
		if ((text->len == 0 || memmem(text->s, text->len, b, n) == NULL) &&
		    (status->len == 0 || memmem(status->s, status->len, b, n) == NULL) &&
		    (plen == 0 || memmem(payload, plen, b, n) == NULL))
			return;
	}
}

static const char *const actions[] = { "failed", "delayed", "delivered", "relayed", "expanded" };

/* The entry's action if it is one RFC 3464 2.3.3 names, else the report's */
static const char *
entry_action(const struct dsn_report *r, const struct dsn_entry *e)
{
	size_t i;

	for (i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
		if (e->action != NULL && strcmp(e->action, actions[i]) == 0)
			return actions[i];
	return r->kind == DSN_FAILURE ? "failed" : r->kind == DSN_DELAY ? "delayed" : "delivered";
}

static const char *
entry_status(const struct dsn_report *r, const struct dsn_entry *e)
{
	const char *action = entry_action(r, e);

	if (status_valid(e->status))
		return e->status;
	return strcmp(action, "failed") == 0 ? "5.0.0" :
	    strcmp(action, "delayed") == 0 ? "4.0.0" : "2.0.0";
}

/* One paragraph of prose, wrapped; the values in it come from clean().
 * Continuation lines start with indent. */
static void
put_para(struct dstr *t, const char *indent, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		msg_fatal("out of memory formatting a report");
	va_end(ap);
	put_wrapped(t, "", s, indent);
	free(s);
}

static void
build_text(const struct dsn_report *r, const struct dsn_entry *e, size_t n,
	   const char *host, struct dstr *t)
{
	char *contact = r->postmaster ? clean(r->postmaster) : xstrdup("postmaster");
	char date[64] = "";
	size_t i;

	put_para(t, "", "This is the mail system at host %s.", host);
	put(t, "\r\n");
	switch (r->kind) {
	case DSN_DELAY:
		put(t, "THIS IS A WARNING ONLY. YOU DO NOT NEED TO SEND YOUR MESSAGE AGAIN.\r\n\r\n");
		for (i = 0; i < n && e[i].will_retry_until_usec == 0; i++)
			;
		if (i < n)
			rfc5322_date((time_t)(e[i].will_retry_until_usec / 1000000u),
				     date, sizeof(date));
		put_para(t, "", "Your message could not be delivered yet to the recipients "
			 "listed below. Delivery is being retried%s%s; you will hear "
			 "from us again if it finally fails.", date[0] ? " until " : "", date);
		break;
	case DSN_SUCCESS:
		put_para(t, "", "Your message was delivered to the recipients listed below. "
			 "If it went into a mailbox, you will hear nothing more about it; "
			 "if it was passed on to a system that does not report delivery, "
			 "you may still hear from that system.");
		break;
	default:
		put_para(t, "", "Your message could not be delivered to one or more of its "
			 "recipients, for the reasons given below. This is a permanent "
			 "failure: the message will not be tried again. %s",
			 r->ret == DSN_RET_HDRS ? "The header section of your message is attached." :
			 "Your message is attached.");
		break;
	}
	put(t, "\r\n");
	put_para(t, "", "For help, please write to %s and include this report.", contact);
	free(contact);

	for (i = 0; i < n; i++) {
		char *addr = clean(e[i].final_rcpt), *mta = clean(e[i].remote_mta);
		char *diag = clean(e[i].diagnostic);

		put(t, "\r\n");
		if (diag[0] && mta[0])
			put_para(t, "    ", "<%s>: host %s said: %s", addr, mta, diag);
		else if (diag[0])
			put_para(t, "    ", "<%s>: %s", addr, diag);
		else
			put_para(t, "    ", "<%s>: %s (%s)%s%s", addr, entry_action(r, &e[i]),
				 entry_status(r, &e[i]), mta[0] ? " by host " : "", mta);
		free(diag);
		free(mta);
		free(addr);
	}
}

/*
 * A recipient field's value: "rfc822; ADDRESS", or for an SMTPUTF8 address
 * RFC 6533's "utf-8; " with utf-8-addr-xtext, which keeps the report 7-bit:
 * printable ASCII except "+", "=" and backslash as it is, every other
 * character as \x{HEX}.
 */
static char *
recipient_value(const char *addr)
{
	struct dstr d;
	uint32_t cp;
	size_t i, k, n;

	addr = str(addr);
	if (!str_has_8bit(addr))
		return xasprintf("rfc822; %s", addr);
	n = strlen(addr);
	dstr_init(&d, 0);
	dstr_printf(&d, "utf-8; ");
	for (i = 0; i < n; i += k) {
		if ((k = utf8_decode(addr + i, n - i, &cp)) == 0) {
			k = 1;
			cp = 0xfffd;    /* the spool holds only UTF-8: not expected */
		}
		if (cp > 0x20 && cp < 0x7f && cp != '+' && cp != '=' && cp != '\\')
			(void)dstr_append(&d, addr + i, 1);
		else
			dstr_printf(&d, "\\x{%X}", (unsigned)cp);
	}
	return d.s;
}

static void
build_status(const struct dsn_report *r, const struct dsn_entry *e, size_t n,
	     const char *host, struct dstr *s)
{
	size_t i;
	char *v;

	v = xasprintf("dns; %s", host);
	put_field(s, "Reporting-MTA", v);
	free(v);
	if (r->queue_id != NULL)
		put_field(s, "X-Queue-ID", r->queue_id);
	if (r->envid != NULL && r->envid[0] != '\0')
		put_field(s, "Original-Envelope-Id", r->envid);
	if (r->arrival_usec)
		put_date_field(s, "Arrival-Date", r->arrival_usec);

	for (i = 0; i < n; i++) {
		put(s, "\r\n");
		v = recipient_value(e[i].final_rcpt);
		put_field(s, "Final-Recipient", v);
		free(v);
		if (e[i].orcpt != NULL && e[i].orcpt[0] != '\0') {
			v = xasprintf("%s; %s", e[i].orcpt_type && e[i].orcpt_type[0] ?
				      e[i].orcpt_type : "rfc822", e[i].orcpt);
			put_field(s, "Original-Recipient", v);
			free(v);
		}
		dstr_printf(s, "Action: %s\r\n", entry_action(r, &e[i]));
		dstr_printf(s, "Status: %s\r\n", entry_status(r, &e[i]));
		if (e[i].remote_mta != NULL && e[i].remote_mta[0] != '\0') {
			v = xasprintf("dns; %s", e[i].remote_mta);
			put_field(s, "Remote-MTA", v);
			free(v);
		}
		if (e[i].diagnostic != NULL && e[i].diagnostic[0] != '\0') {
			/* RFC 3464 2.3.6: "smtp" types an SMTP reply; other
			 * words are the reporting MTA's own, X- typed */
			v = xasprintf("%s; %s", e[i].diagnostic_is_reply ? "smtp" : "X-Sorter",
				      e[i].diagnostic);
			put_field(s, "Diagnostic-Code", v);
			free(v);
		}
		if (e[i].last_attempt_usec)
			put_date_field(s, "Last-Attempt-Date", e[i].last_attempt_usec);
		if (r->kind == DSN_DELAY && e[i].will_retry_until_usec)
			put_date_field(s, "Will-Retry-Until", e[i].will_retry_until_usec);
	}
}

void
dsn_build(const struct dsn_report *r, const struct dsn_entry *e, size_t n,
	  const char *message_id_unique, struct dstr *out)
{
	static const char *const subjects[] = {
		[DSN_FAILURE] = "Undelivered Mail Returned to Sender",
		[DSN_DELAY] = "Delayed Mail (still being retried)",
		[DSN_SUCCESS] = "Successful Mail Delivery Report",
	};
	struct dstr text, status;
	char *host = clean(r->reporting_mta), *v, date[64], b[BOUNDARY_MAX + 1];
	const unsigned char *payload = r->content;
	size_t plen = r->content != NULL ? r->content_len : 0;
	bool full = r->kind == DSN_FAILURE && r->ret != DSN_RET_HDRS;
	const char *cte;

	if (out->limit != 0)
		msg_panic("dsn_build: the output string must not have a limit");
	if (!full)
		plen = header_section_len(payload, plen);
	cte = content_encoding(payload, plen);

	dstr_init(&text, 0);
	dstr_init(&status, 0);
	build_text(r, e, n, host, &text);
	build_status(r, e, n, host, &status);
	choose_boundary(r, &text, &status, payload, plen, b, sizeof(b));

	rfc5322_date(time(NULL), date, sizeof(date));
	dstr_printf(out, "Date: %s\r\n", date);
	v = xasprintf("Mail Delivery System <MAILER-DAEMON@%s>", host);
	put_field(out, "From", v);
	free(v);
	v = xasprintf("<%s>", str(r->sender));
	put_field(out, "To", v);
	free(v);
	dstr_printf(out, "Subject: %s\r\n", subjects[r->kind == DSN_DELAY ? DSN_DELAY :
				r->kind == DSN_SUCCESS ? DSN_SUCCESS : DSN_FAILURE]);
	v = xasprintf("<%s@%s>", str(message_id_unique), host);
	put_field(out, "Message-ID", v);
	free(v);
	/* RFC 3834 5: no vacation reply or other automatic answer to this */
	put(out, "Auto-Submitted: auto-replied\r\n");
	put(out, "MIME-Version: 1.0\r\n");
	dstr_printf(out, "Content-Type: multipart/report; report-type=delivery-status;\r\n"
		    "\tboundary=\"%s\"\r\n", b);
	if (cte != NULL)
		dstr_printf(out, "Content-Transfer-Encoding: %s\r\n", cte);
	put(out, "\r\nThis is a MIME-encapsulated message.\r\n");

	dstr_printf(out, "\r\n--%s\r\n", b);
	put(out, "Content-Description: Notification\r\n"
	    "Content-Type: text/plain; charset=us-ascii\r\n\r\n");
	(void)dstr_append(out, text.s, text.len);

	dstr_printf(out, "\r\n--%s\r\n", b);
	dstr_printf(out, "Content-Description: %s\r\n", r->kind == DSN_DELAY ? "Delay report" :
		    r->kind == DSN_SUCCESS ? "Delivery report" : "Failure report");
	put(out, "Content-Type: message/delivery-status\r\n\r\n");
	(void)dstr_append(out, status.s, status.len);

	dstr_printf(out, "\r\n--%s\r\n", b);
	if (full)
		put(out, "Content-Description: Undelivered Message\r\n"
		    "Content-Type: message/rfc822\r\n");
	else
		dstr_printf(out, "Content-Description: %s Message Headers\r\n"
			    "Content-Type: text/rfc822-headers\r\n",
			    r->kind == DSN_FAILURE ? "Undelivered" :
			    r->kind == DSN_DELAY ? "Delayed" : "Delivered");
	if (cte != NULL)
		dstr_printf(out, "Content-Transfer-Encoding: %s\r\n", cte);
	put(out, "\r\n");
	put_content(out, payload, plen);
	dstr_printf(out, "\r\n--%s--\r\n", b);

	dstr_free(&text);
	dstr_free(&status);
	free(host);
}
