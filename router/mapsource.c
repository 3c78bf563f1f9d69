/*
 * mapsource.c - the parser of map source files: "key value" lines, '#'
 * comment lines, keys case-folded. sortermap feeds it a whole file and
 * writes what it returns into a map.
 *
 * A pure parser over untrusted bytes: no I/O, no allocation, no state but
 * the cursor. It must never read outside the buffer, never accept a key or
 * value longer than the limits in router.h (the reader's buffers are sized
 * by them), and never let a byte that could not appear in an address, a
 * node name or an endpoint into a map: UTF-8 (SMTPUTF8 addresses) is
 * taken only well formed and without control characters.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "router/router.h"

static bool
is_blank(int c)
{
	return c == ' ' || c == '\t';
}

static int
fail(const struct mapsource *s, char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int
fail(const struct mapsource *s, char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (errlen == 0)
		return -1;
	n = snprintf(err, errlen, "%s:%lu: ", s->name, s->line);
	if (n >= 0 && (size_t)n < errlen) {
		va_start(ap, fmt);
		vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -1;
}

void
mapsource_init(struct mapsource *s, const char *name, const char *buf, size_t len)
{
	s->name = name;
	s->p = buf;
	s->end = buf + len;
	s->line = 0;
}

int
mapsource_next(struct mapsource *s, struct map_entry *e, char *err, size_t errlen)
{
	const char *line, *eol, *p, *key, *v, *vend;
	size_t i, n, k;

	while (s->p < s->end) {
		line = s->p;
		eol = memchr(line, '\n', (size_t)(s->end - line));
		if (eol == NULL)
			eol = s->end;
		s->p = eol < s->end ? eol + 1 : eol;
		s->line++;
		if (eol > line && eol[-1] == '\r')
			eol--;

		n = (size_t)(eol - line);
		for (i = 0; i < n; i += k) {
			unsigned char c = (unsigned char)line[i];
			uint32_t cp;

			k = 1;
			if (c == '\0')
				return fail(s, err, errlen, "NUL byte");
			if (c == '\r')
				return fail(s, err, errlen, "carriage return inside a line");
			if ((c < 0x20 && c != '\t') || c == 0x7f)
				return fail(s, err, errlen, "control character 0x%02x", c);
			if (c > 0x7f) {
				if ((k = utf8_decode(line + i, n - i, &cp)) == 0)
					return fail(s, err, errlen, "malformed UTF-8 at byte 0x%02x", c);
				if (utf8_is_control(cp))
					return fail(s, err, errlen, "control character U+%04X",
						    (unsigned)cp);
			}
		}

		for (p = line; p < eol && is_blank(*p); p++)
			;
		if (p == eol || *p == '#')
			continue;
		for (key = p; p < eol && !is_blank(*p); p++)
			;
		if ((size_t)(p - key) > MAP_KEY_MAX)
			return fail(s, err, errlen, "key longer than %d bytes", MAP_KEY_MAX);
		e->keylen = (size_t)(p - key);
		map_fold(e->key, key, e->keylen);
		e->key[e->keylen] = '\0';

		for (v = p; v < eol && is_blank(*v); v++)
			;
		for (vend = eol; vend > v && is_blank(vend[-1]); vend--)
			;
		if (v == vend)
			return fail(s, err, errlen, "no value after key \"%.100s\"", e->key);
		if ((size_t)(vend - v) > MAP_VALUE_MAX)
			return fail(s, err, errlen, "value longer than %d bytes", MAP_VALUE_MAX);
		e->value = v;
		e->valuelen = (size_t)(vend - v);
		e->line = s->line;
		return 1;
	}
	return 0;
}

void
map_fold(char *dst, const char *src, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		char c = src[i];

		dst[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
	}
}
