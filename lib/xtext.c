/*
 * xtext.c - RFC 3461 xtext, which the DSN parameter codec (dsnparam.c)
 * and the DSNs themselves need. Pure.
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
