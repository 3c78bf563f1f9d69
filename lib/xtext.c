/*
 * xtext.c - RFC 3461 pieces that both the SMTP server (parsing MAIL and
 * RCPT parameters) and the queue manager (reading them back from the
 * spool, writing DSNs) need: xtext and the NOTIFY list. Pure.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"

/* case-insensitive comparison of a counted string with a C string */
bool
word_is(const char *s, size_t n, const char *w)
{
	return strlen(w) == n && strncasecmp(s, w, n) == 0;
}

/* RFC 3461 4: hexchar is "+" and two upper-case hex digits */
static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

void
xtext_encode(const char *in, size_t n, struct dstr *out)
{
	static const char hex[] = "0123456789ABCDEF";
	char *buf = xmalloc(n * 3 + 1);
	size_t i, o = 0;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c >= 33 && c <= 126 && c != '+' && c != '=') {
			buf[o++] = (char)c;
		} else {
			buf[o++] = '+';
			buf[o++] = hex[c >> 4];
			buf[o++] = hex[c & 15];
		}
	}
	(void)dstr_append(out, buf, o);
	free(buf);
}

/*
 * Decoded values end up in DSN header fields as plain US-ASCII, so a byte
 * outside space..'~' (a NUL, CR or LF above all) is refused, not passed on.
 */
int
xtext_decode(const char *in, size_t n, char *out, size_t outlen, const char **why)
{
	const char *reason;
	size_t i, o = 0;
	int hi, lo, c;

	for (i = 0; i < n; i++) {
		c = (unsigned char)in[i];
		if (c == '+') {
			if (n - i < 3 || (hi = hexval(in[i + 1])) < 0 ||
			    (lo = hexval(in[i + 2])) < 0) {
				reason = "malformed xtext hex escape";
				goto fail;
			}
			c = hi * 16 + lo;
			if (c < 32 || c > 126) {
				reason = "xtext decodes to a control or 8-bit character";
				goto fail;
			}
			i += 2;
		} else if (c < 33 || c > 126 || c == '=') {
			reason = "invalid character in xtext";
			goto fail;
		}
		if (o + 1 >= outlen) {
			reason = "xtext value too long";
			goto fail;
		}
		out[o++] = (char)c;
	}
	if (outlen == 0) {
		reason = "xtext value too long";
		goto fail;
	}
	out[o] = '\0';
	return (int)o;
fail:
	if (outlen > 0)
		out[0] = '\0';
	if (why != NULL)
		*why = reason;
	return -1;
}

/* "NEVER" alone, or a list of SUCCESS, FAILURE, DELAY, each at most once */
const char *
dsn_notify_parse(const char *v, size_t n, int *notify)
{
	static const struct {
		const char *name;
		int bit;
	} words[] = {
		{ "SUCCESS", DSN_NOTIFY_SUCCESS }, { "FAILURE", DSN_NOTIFY_FAILURE },
		{ "DELAY", DSN_NOTIFY_DELAY }, { "NEVER", DSN_NOTIFY_NEVER },
	};
	const char *end = v + n, *w, *comma;
	int set = 0;
	size_t i;

	for (w = v; ; w = comma + 1) {
		if ((comma = memchr(w, ',', (size_t)(end - w))) == NULL)
			comma = end;
		for (i = 0; i < sizeof(words) / sizeof(words[0]); i++)
			if (word_is(w, (size_t)(comma - w), words[i].name))
				break;
		if (i == sizeof(words) / sizeof(words[0]) || (set & words[i].bit))
			return "invalid NOTIFY value";
		set |= words[i].bit;
		if (comma == end)
			break;
	}
	if ((set & DSN_NOTIFY_NEVER) && set != DSN_NOTIFY_NEVER)
		return "NOTIFY=NEVER must be alone";
	*notify = set;
	return NULL;
}
