/*
 * nodestate.c - the one codec of what the queue manager knows about the
 * nodes: which are drained (the file spool_dir/drained, which must survive
 * a restart) and each endpoint's health (the reply to the control request
 * "nodes", which sorterctl prints). Both are lines of the same records,
 * so there is one reader and one writer for them:
 *
 *   node NODE
 *   drained NODE SINCE
 *   endpoint NODE ENDPOINT STATE LATENCY_USEC PROBED [ERROR...]
 *
 * NODE is 1 to ROUTER_NODE_MAX printable ASCII bytes without a space;
 * ENDPOINT an endpoint as endpoint_format() writes it; STATE up, down or
 * unknown; SINCE and PROBED Unix times (PROBED 0: never probed);
 * LATENCY_USEC the last LHLO's, 0 when none; ERROR the rest of the line,
 * printable ASCII. Lines end with LF; '#' starts a comment line.
 *
 * Pure: no I/O. It must never read outside the buffer, never accept a
 * byte the writer could not have written, and every record it accepts
 * must be written back the same (tests/fuzz/fuzz_nodestate.c checks it).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "lib/lib.h"
#include "router/router.h"
#include "queue/queue.h"

static const char *const health_names[] = {
	[NODE_EP_UNKNOWN] = "unknown", [NODE_EP_UP] = "up", [NODE_EP_DOWN] = "down",
};

const char *
nodestate_health_name(enum node_ep_health h)
{
	return health_names[h];
}

bool
nodestate_name_ok(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > ROUTER_NODE_MAX)
		return false;
	for (i = 0; i < n; i++)
		if (s[i] <= ' ' || s[i] >= 0x7f)
			return false;
	return true;
}

void
nodestate_source_init(struct nodestate_source *s, const char *buf, size_t len)
{
	s->p = buf;
	s->end = buf + len;
	s->line = 0;
}

static int
fail(const struct nodestate_source *s, char *err, size_t errlen, const char *why)
{
	snprintf(err, errlen, "line %lu: %s", s->line, why);
	return -1;
}

/* The next space-separated word of [*p, end): its start and length. */
static bool
word(const char **p, const char *end, const char **w, size_t *n)
{
	const char *q = *p;

	if (q >= end || *q == ' ')
		return false;
	*w = q;
	while (q < end && *q != ' ')
		q++;
	*n = (size_t)(q - *w);
	if (q < end)
		q++;            /* the space */
	*p = q;
	return true;
}

static bool
parse_u64(const char *t, size_t n, unsigned long long *v)
{
	size_t i;

	*v = 0;
	if (n == 0 || n > 20 || (n > 1 && t[0] == '0'))
		return false;
	for (i = 0; i < n; i++) {
		if (t[i] < '0' || t[i] > '9')
			return false;
		if (*v > (~0ULL - (unsigned long long)(t[i] - '0')) / 10)
			return false;
		*v = *v * 10 + (unsigned long long)(t[i] - '0');
	}
	return true;
}

int
nodestate_next(struct nodestate_source *s, struct nodestate_rec *r, char *err, size_t errlen)
{
	const char *line, *eol, *p, *w, *why;
	char canon[NODESTATE_EP_MAX];
	struct endpoint ep;
	size_t n, i;
	int rc;

	rc = text_line_next(&s->p, s->end, &s->line, NODESTATE_LINE_MAX, &line, &n, &why);
	if (rc <= 0)
		return rc < 0 ? fail(s, err, errlen, why) : 0;
	eol = line + n;
	memset(r, 0, sizeof(*r));
	p = line;
	if (!word(&p, eol, &w, &n))
		return fail(s, err, errlen, "no record type");
	if (n == 4 && memcmp(w, "node", 4) == 0)
		r->type = NSR_NODE;
	else if (n == 7 && memcmp(w, "drained", 7) == 0)
		r->type = NSR_DRAINED;
	else if (n == 8 && memcmp(w, "endpoint", 8) == 0)
		r->type = NSR_ENDPOINT;
	else
		return fail(s, err, errlen, "unknown record type");
	if (!word(&p, eol, &w, &n) || !nodestate_name_ok(w, n))
		return fail(s, err, errlen, "bad node name");
	memcpy(r->node, w, n);
	if (r->type == NSR_DRAINED) {
		if (!word(&p, eol, &w, &n) || !parse_u64(w, n, &r->since))
			return fail(s, err, errlen, "bad time");
	} else if (r->type == NSR_ENDPOINT) {
		if (!word(&p, eol, &w, &n) || n >= sizeof(r->endpoint) ||
		    endpoint_parse(w, n, &ep, &why) < 0)
			return fail(s, err, errlen, "bad endpoint");
		endpoint_format(&ep, canon, sizeof(canon));
		if (strlen(canon) != n || memcmp(canon, w, n) != 0)
			return fail(s, err, errlen, "endpoint not in its canonical form");
		memcpy(r->endpoint, w, n);
		if (!word(&p, eol, &w, &n))
			return fail(s, err, errlen, "no state");
		for (i = 0; i < sizeof(health_names) / sizeof(health_names[0]); i++)
			if (strlen(health_names[i]) == n && memcmp(health_names[i], w, n) == 0)
				break;
		if (i == sizeof(health_names) / sizeof(health_names[0]))
			return fail(s, err, errlen, "bad state");
		r->health = (enum node_ep_health)i;
		if (!word(&p, eol, &w, &n) || !parse_u64(w, n, &r->latency_usec))
			return fail(s, err, errlen, "bad latency");
		if (!word(&p, eol, &w, &n) || !parse_u64(w, n, &r->since))
			return fail(s, err, errlen, "bad probe time");
		if (eol[-1] == ' ' || (p < eol && p[0] == ' '))
			return fail(s, err, errlen, "stray space");
		n = (size_t)(eol - p);
		if (n >= sizeof(r->error))
			return fail(s, err, errlen, "error text too long");
		memcpy(r->error, p, n);
		return 1;
	}
	if (p != eol || eol[-1] == ' ')
		return fail(s, err, errlen, "stray bytes at the end");
	return 1;
}

/* Error text as the reader takes it: printable ASCII, no space at either
 * end, bounded. */
static void
put_error(struct dstr *out, const char *e)
{
	char buf[sizeof(((struct nodestate_rec *)0)->error)];
	size_t n = 0, i;

	while (*e == ' ')
		e++;
	for (i = 0; e[i] && n < sizeof(buf) - 1; i++)
		buf[n++] = (unsigned char)e[i] < 0x20 || (unsigned char)e[i] >= 0x7f ? '?' : e[i];
	while (n > 0 && buf[n - 1] == ' ')
		n--;
	buf[n] = '\0';
	if (n > 0)
		dstr_printf(out, " %s", buf);
}

void
nodestate_format(const struct nodestate_rec *r, struct dstr *out)
{
	switch (r->type) {
	case NSR_NODE:
		dstr_printf(out, "node %s\n", r->node);
		break;
	case NSR_DRAINED:
		dstr_printf(out, "drained %s %llu\n", r->node, r->since);
		break;
	case NSR_ENDPOINT:
		dstr_printf(out, "endpoint %s %s %s %llu %llu", r->node, r->endpoint,
			    health_names[r->health], r->latency_usec, r->since);
		put_error(out, r->error);
		dstr_printf(out, "\n");
		break;
	}
}
