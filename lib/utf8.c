/*
 * utf8.c - the one UTF-8 decoder of Sorter (RFC 3629), for SMTPUTF8
 * addresses (RFC 6531), map source files and log lines.
 *
 * Pure functions over untrusted bytes: no I/O, no allocation, no state.
 * They must never read past the length they are given and never call
 * well formed what RFC 3629 forbids: overlong forms, UTF-16 surrogates
 * (U+D800..U+DFFF), code points above U+10FFFF, truncated sequences and
 * stray continuation bytes. A "control character" is what Unicode calls
 * one (general category Cc): C0, DEL and C1 (U+0080..U+009F); C1 has a
 * two-byte UTF-8 form that a byte-wise check for < 0x20 would let through.
 */
#include "config.h"

#include <string.h>

#include "lib/lib.h"

size_t
utf8_decode(const char *str, size_t n, uint32_t *cp)
{
	const unsigned char *s = (const unsigned char *)str;
	uint32_t c, min;
	size_t len, i;

	if (n == 0)
		return 0;
	c = s[0];
	if (c < 0x80) {
		len = 1;
		min = 0;
	} else if (c >= 0xc2 && c <= 0xdf) {    /* 0xc0, 0xc1: overlong */
		len = 2;
		min = 0x80;
		c &= 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		min = 0x800;
		c &= 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {    /* 0xf5..: above U+10FFFF */
		len = 4;
		min = 0x10000;
		c &= 0x07;
	} else {
		return 0;               /* a continuation byte, 0xc0, 0xc1, 0xf5..0xff */
	}
	if (len > n)
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	if (cp != NULL)
		*cp = c;
	return len;
}

bool
utf8_is_control(uint32_t cp)
{
	return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
}

bool
utf8_valid(const char *s, size_t n)
{
	uint32_t cp;
	size_t i = 0, k;

	while (i < n) {
		if ((k = utf8_decode(s + i, n - i, &cp)) == 0 || utf8_is_control(cp))
			return false;
		i += k;
	}
	return true;
}

bool
str_has_8bit(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s >= 0x80)
			return true;
	return false;
}

size_t
utf8_sanitize(char *s, size_t n)
{
	uint32_t cp;
	size_t i = 0, k, changed = 0;

	while (i < n) {
		k = utf8_decode(s + i, n - i, &cp);
		if (k > 0 && !utf8_is_control(cp)) {
			i += k;
			continue;
		}
		/* one byte at a time: what follows a bad byte may be good */
		if (k == 0)
			k = 1;
		memset(s + i, '?', k);
		changed += k;
		i += k;
	}
	return changed;
}
