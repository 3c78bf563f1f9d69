/*
 * alloc.c - allocation that never returns NULL, and the bounded dynamic
 * string used wherever bytes of unknown length are collected.
 * Running out of memory is an environment failure: msg_fatal.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"

void *
xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		msg_fatal("out of memory allocating %zu bytes", n);
	return p;
}

void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (p == NULL)
		msg_fatal("out of memory allocating %zu x %zu bytes", n, size);
	return p;
}

void *
xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);

	if (q == NULL)
		msg_fatal("out of memory reallocating %zu bytes", n);
	return q;
}

char *
xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

char *
xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);

	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *
xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;

	va_start(ap, fmt);
	if (vasprintf(&p, fmt, ap) < 0)
		msg_fatal("out of memory formatting a string");
	va_end(ap);
	return p;
}

void
dstr_init(struct dstr *d, size_t limit)
{
	d->s = NULL;
	d->len = 0;
	d->cap = 0;
	d->limit = limit;
}

static int
dstr_reserve(struct dstr *d, size_t n)
{
	size_t want;

	if (d->limit && (n > d->limit || d->len > d->limit - n))
		return -1;
	want = d->len + n + 1;
	if (want <= d->cap)
		return 0;
	if (d->cap == 0)
		d->cap = 64;
	while (d->cap < want)
		d->cap *= 2;
	d->s = xrealloc(d->s, d->cap);
	return 0;
}

int
dstr_append(struct dstr *d, const void *p, size_t n)
{
	if (dstr_reserve(d, n) < 0)
		return -1;
	if (n)
		memcpy(d->s + d->len, p, n);
	d->len += n;
	d->s[d->len] = '\0';
	return 0;
}

int
dstr_printf(struct dstr *d, const char *fmt, ...)
{
	va_list ap;
	int n;
	char small[256];

	va_start(ap, fmt);
	n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -1;
	if ((size_t)n < sizeof(small))
		return dstr_append(d, small, (size_t)n);
	if (dstr_reserve(d, (size_t)n) < 0)
		return -1;
	va_start(ap, fmt);
	vsnprintf(d->s + d->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	d->len += (size_t)n;
	return 0;
}

void
dstr_reset(struct dstr *d)
{
	d->len = 0;
	if (d->s)
		d->s[0] = '\0';
}

void
dstr_free(struct dstr *d)
{
	free(d->s);
	dstr_init(d, d->limit);
}
