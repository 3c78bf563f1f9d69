/*
 * reply.c - the wire formats of the client side of SMTP and LMTP: the
 * reply parser (RFC 5321 4.2), the EHLO/LHLO keyword reader, and the
 * encoder that turns spooled content into DATA (dot stuffing, RFC 5321
 * 4.5.2).
 *
 * A reply comes from a server we do not control: every line is bounded,
 * the number of lines is bounded, and what is kept of the text is reduced
 * to printable ASCII, because it ends up in logs and in DSNs. The encoder
 * must never let a bare CR or a bare LF reach the wire, whatever the
 * content holds, so that no receiver can find an end of data we did not
 * mean (SMTP smuggling).
 *
 * Nothing here allocates or does I/O.
 */
#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include "lib/lib.h"
#include "router/router.h"

#define SIZE_DIGITS_MAX 19      /* fits an unsigned long long */

/*
 * Checks the first n bytes of a line, the whole line without its CR LF or,
 * when `partial`, what has arrived of it: the code, the separator, and that
 * the code is the one of the first line (*code, 0 before it is known).
 * 0 when all is well so far, else -1.
 */
static int
check_prefix(const char *line, size_t n, bool partial, int *code, const char **why)
{
	int c;

	if (n > 0 && (line[0] < '2' || line[0] > '5'))
		goto badcode;
	if (n > 1 && (line[1] < '0' || line[1] > '9'))
		goto badcode;
	if (n > 2 && (line[2] < '0' || line[2] > '9'))
		goto badcode;
	if (n > 3 && line[3] != ' ' && line[3] != '-' &&
	    !(partial && n == 4 && line[3] == '\r')) {
		*why = "malformed reply line";
		return -1;
	}
	if (n < 3)
		return 0;
	c = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	if (*code != 0 && c != *code) {
		*why = "reply code changes between lines";
		return -1;
	}
	*code = c;
	return 0;
badcode:
	*why = "malformed reply code";
	return -1;
}

/* Length of an RFC 3463 status at the start of t whose class is `class`,
 * followed by a blank or the end; 0 when there is none. */
static size_t
status_len(const char *t, size_t n, char class)
{
	size_t i = 0, part, digits;

	if (n < 5 || t[0] != class || t[1] != '.')
		return 0;
	i = 2;
	for (part = 0; part < 2; part++) {
		digits = 0;
		while (i < n && t[i] >= '0' && t[i] <= '9' && digits < 4) {
			i++;
			digits++;
		}
		if (digits == 0 || digits > 3)
			return 0;
		if (part == 0) {
			if (i >= n || t[i] != '.')
				return 0;
			i++;
		}
	}
	if (i < n && t[i] != ' ')
		return 0;
	return i;
}

/* Appends n bytes of text, made printable, to r->text; silently truncates. */
static void
text_append(struct reply *r, size_t *tlen, const char *t, size_t n)
{
	size_t i;
	unsigned char c;

	if (n == 0)
		return;
	if (*tlen > 0 && *tlen < sizeof(r->text) - 1)
		r->text[(*tlen)++] = ' ';
	for (i = 0; i < n && *tlen < sizeof(r->text) - 1; i++) {
		c = (unsigned char)t[i];
		if (c == '\t')
			c = ' ';
		else if (c < 0x20 || c > 0x7e)
			c = '?';
		r->text[(*tlen)++] = (char)c;
	}
	r->text[*tlen] = '\0';
}

ssize_t
reply_parse(const char *buf, size_t len, struct reply *r, const char **why)
{
	size_t off = 0, avail, n, tlen = 0, slen;
	const char *line, *lf, *t;
	int code = 0;
	bool last;

	memset(r, 0, sizeof(*r));
	*why = NULL;
	for (;;) {
		line = buf + off;
		avail = len - off;
		lf = memchr(line, '\n', avail < REPLY_LINE_MAX ? avail : REPLY_LINE_MAX);
		if (lf == NULL) {
			if (avail >= REPLY_LINE_MAX) {
				*why = "reply line too long";
				return -1;
			}
			/* refuse garbage now rather than wait for more of it */
			if (check_prefix(line, avail, true, &code, why) < 0)
				return -1;
			return 0;
		}
		n = (size_t)(lf - line);
		if (n > 0 && line[n - 1] == '\r')
			n--;
		if (n < 3) {
			*why = "reply line too short";
			return -1;
		}
		if (check_prefix(line, n, false, &code, why) < 0)
			return -1;
		last = n == 3 || line[3] == ' ';
		t = n > 4 ? line + 4 : line + n;
		n = n > 4 ? n - 4 : 0;
		if (r->nlines == 0 && (slen = status_len(t, n, line[0])) > 0 && slen < sizeof(r->status))
			memcpy(r->status, t, slen);
		if (r->status[0] != '\0' && (slen = strlen(r->status)) <= n &&
		    memcmp(t, r->status, slen) == 0 && (slen == n || t[slen] == ' ')) {
			t += slen;
			n -= slen;
			while (n > 0 && *t == ' ') {
				t++;
				n--;
			}
		}
		text_append(r, &tlen, t, n);
		r->nlines++;
		off = (size_t)(lf - buf) + 1;
		if (last) {
			r->code = code;
			return (ssize_t)off;
		}
		if (r->nlines >= REPLY_LINES_MAX) {
			*why = "too many reply lines";
			return -1;
		}
	}
}

/* A keyword line's text (after "250-" or "250 "), t of n bytes. */
static void
ehlo_keyword(const char *t, size_t n, struct ehlo_caps *c)
{
	size_t k = 0, i;
	unsigned long long v = 0;
	const char *arg;

	while (k < n && t[k] != ' ')
		k++;
#define IS(kw) (k == sizeof(kw) - 1 && strncasecmp(t, kw, k) == 0)
	if (IS("PIPELINING"))
		c->pipelining = true;
	else if (IS("8BITMIME"))
		c->eightbitmime = true;
	else if (IS("ENHANCEDSTATUSCODES"))
		c->enhancedstatuscodes = true;
	else if (IS("DSN"))
		c->dsn = true;
	else if (IS("STARTTLS"))
		c->starttls = true;
	else if (IS("SMTPUTF8"))
		c->smtputf8 = true;
	else if (IS("CHUNKING"))
		c->chunking = true;
	else if (IS("SIZE")) {
		c->size = true;
		c->size_max = 0;
		arg = t + k;
		n -= k;
		while (n > 0 && *arg == ' ') {
			arg++;
			n--;
		}
		/* a limit we cannot read is treated as none: the server
		 * still refuses what is too big, with a reply we report */
		for (i = 0; i < n && arg[i] >= '0' && arg[i] <= '9'; i++) {
			if (i >= SIZE_DIGITS_MAX)
				return;
			v = v * 10 + (unsigned long long)(arg[i] - '0');
		}
		if (i > 0 && (i == n || arg[i] == ' '))
			c->size_max = v;
	}
#undef IS
}

void
ehlo_parse(const char *buf, size_t len, struct ehlo_caps *c)
{
	size_t off = 0, n;
	const char *line, *lf;
	bool first = true;

	memset(c, 0, sizeof(*c));
	while (off < len) {
		line = buf + off;
		lf = memchr(line, '\n', len - off);
		n = lf ? (size_t)(lf - line) : len - off;
		off += n + (lf ? 1 : 0);
		if (n > 0 && line[n - 1] == '\r')
			n--;
		if (first) {
			first = false;
			continue;
		}
		if (n > 4)
			ehlo_keyword(line + 4, n - 4, c);
	}
}

void
dotstuff_init(struct dotstuff *d, size_t line_limit)
{
	d->mid_line = false;
	d->cr = false;
	d->col = 0;
	d->limit = line_limit > 0 && line_limit < 4 ? 4 : line_limit;
}

size_t
dotstuff(struct dotstuff *d, const unsigned char *in, size_t len, unsigned char *out)
{
	const unsigned char *cr, *lf;
	size_t i = 0, o = 0, end;
	unsigned char c;

	while (i < len) {
		c = in[i];
		if (d->cr) {
			/* the CR read before this byte ends a line either way:
			 * with this LF, or alone (then it becomes CR LF) */
			d->cr = false;
			out[o++] = '\r';
			out[o++] = '\n';
			d->mid_line = false;
			d->col = 0;
			if (c == '\n') {
				i++;
				continue;
			}
		}
		if (c == '\r') {
			d->cr = true;
			i++;
			continue;
		}
		if (c == '\n') {
			out[o++] = '\r';
			out[o++] = '\n';
			d->mid_line = false;
			d->col = 0;
			i++;
			continue;
		}
		if (c == '.' && !d->mid_line)
			out[o++] = '.';
		/* the rest of the line up to its CR or LF goes as it is, in one
		 * copy, or in pieces of the limit with CR LF SP between them */
		cr = memchr(in + i, '\r', len - i);
		end = cr != NULL ? (size_t)(cr - in) : len;
		lf = memchr(in + i, '\n', end - i);
		if (lf != NULL)
			end = (size_t)(lf - in);
		while (i < end) {
			size_t run = end - i;

			if (d->limit > 0) {
				if (d->col >= d->limit) {
					out[o++] = '\r';
					out[o++] = '\n';
					out[o++] = ' ';
					d->col = 1;
				}
				if (run > d->limit - d->col)
					run = d->limit - d->col;
			}
			memcpy(out + o, in + i, run);
			o += run;
			i += run;
			d->col += run;
		}
		d->mid_line = true;
	}
	return o;
}

size_t
dotstuff_end(struct dotstuff *d, unsigned char out[5])
{
	size_t o = 0;

	if (d->cr || d->mid_line) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	d->cr = false;
	d->mid_line = false;
	d->col = 0;
	out[o++] = '.';
	out[o++] = '\r';
	out[o++] = '\n';
	return o;
}
