/*
 * nodecaps.c - what each LMTP endpoint offered in its last LHLO, shared
 * between the queue manager (which runs the LMTP client and sees every
 * LHLO reply) and the smtpd workers (separate processes, which refuse at
 * RCPT time a recipient that needs SMTPUTF8 when its node is known to
 * lack it, instead of accepting it and bouncing it later).
 *
 * Between them is one small text file, spool_dir/nodecaps (format in
 * router.h). The qmgr rewrites it, temporary file then rename, only when
 * an endpoint's capabilities differ from what the file says, so it is
 * written a handful of times in a node's life, not per message. A reader
 * stat()s it per question and reads it again only when it was replaced
 * (the rename gives it a new inode), so a question costs one stat().
 *
 * Why a file and not a probe from the worker: the qmgr talks to the nodes
 * anyway, a worker would otherwise need a client of its own and RCPT
 * replies that wait for it. What is not known yet (a node never connected
 * to, a file lost) is "unknown", and unknown never refuses: the qmgr then
 * decides at delivery time (553 5.6.7 bounce if the node lacks SMTPUTF8).
 * That is also why the file is a cache and never fsync'd: losing it costs
 * nothing but refusals turning back into bounces.
 *
 * The codec (nodecaps_next, nodecaps_format) is pure and fuzzed. The file
 * part must never block on anything but a small local file, never trust
 * the file (a damaged one reads as "nothing known", warned about once),
 * and never leave a half-written file under the real name.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "router/router.h"

#define NODECAPS_FILE_MAX (NODECAPS_MAX * NODECAPS_LINE_MAX)

/* The boolean keywords, in the order they are written. */
static const struct {
	const char *name;
	size_t off;
} keywords[] = {
	{ "PIPELINING", offsetof(struct ehlo_caps, pipelining) },
	{ "8BITMIME", offsetof(struct ehlo_caps, eightbitmime) },
	{ "ENHANCEDSTATUSCODES", offsetof(struct ehlo_caps, enhancedstatuscodes) },
	{ "DSN", offsetof(struct ehlo_caps, dsn) },
	{ "STARTTLS", offsetof(struct ehlo_caps, starttls) },
	{ "SMTPUTF8", offsetof(struct ehlo_caps, smtputf8) },
	{ "CHUNKING", offsetof(struct ehlo_caps, chunking) },
};

#define NKEYWORDS (sizeof(keywords) / sizeof(keywords[0]))

static bool *
kw_field(struct ehlo_caps *c, size_t i)
{
	return (bool *)((char *)c + keywords[i].off);
}

/* ---- the codec: pure ---- */

void
nodecaps_source_init(struct nodecaps_source *s, const char *buf, size_t len)
{
	s->p = buf;
	s->end = buf + len;
	s->line = 0;
}

static int
fail(const struct nodecaps_source *s, char *err, size_t errlen, const char *why)
{
	snprintf(err, errlen, "line %lu: %s", s->line, why);
	return -1;
}

/* decimal without sign, at most 20 digits, no overflow */
static bool
parse_u64(const char *t, size_t n, unsigned long long *v)
{
	size_t i;

	*v = 0;
	if (n == 0 || n > 20)
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

static bool
caps_keyword(const char *t, size_t n, struct ehlo_caps *c, const char **why)
{
	unsigned long long v;
	size_t i;

	for (i = 0; i < NKEYWORDS; i++)
		if (word_is(t, n, keywords[i].name)) {
			*kw_field(c, i) = true;
			return true;
		}
	if (word_is(t, n, "SIZE")) {
		c->size = true;
		return true;
	}
	if (n >= 5 && strncasecmp(t, "SIZE=", 5) == 0) {
		if (!parse_u64(t + 5, n - 5, &v) || v == 0) {
			*why = "bad SIZE value";
			return false;
		}
		c->size = true;
		c->size_max = v;
		return true;
	}
	/* a keyword of a newer writer: ignored, if it looks like one */
	for (i = 0; i < n; i++)
		if (!((t[i] >= 'A' && t[i] <= 'Z') || (t[i] >= '0' && t[i] <= '9') ||
		      t[i] == '-' || t[i] == '='))
			break;
	if (i < n || n == 0) {
		*why = "bad capability keyword";
		return false;
	}
	return true;
}

int
nodecaps_next(struct nodecaps_source *s, struct nodecaps_entry *e, char *err, size_t errlen)
{
	const char *line, *eol, *p, *t, *why = NULL;
	char canon[NODECAPS_KEY_MAX];
	struct endpoint ep;
	size_t n;
	int rc;

	rc = text_line_next(&s->p, s->end, &s->line, NODECAPS_LINE_MAX, &line, &n, &why);
	if (rc <= 0)
		return rc < 0 ? fail(s, err, errlen, why) : 0;
	eol = line + n;
	memset(e, 0, sizeof(*e));
	/* the endpoint, in the form endpoint_format() writes */
	for (p = line; p < eol && *p != ' '; p++)
		;
	if ((size_t)(p - line) >= sizeof(e->endpoint) ||
	    endpoint_parse(line, (size_t)(p - line), &ep, &why) < 0 || ep.proto != EP_LMTP)
		return fail(s, err, errlen, "not an lmtp endpoint");
	endpoint_format(&ep, canon, sizeof(canon));
	if (strlen(canon) != (size_t)(p - line) || memcmp(canon, line, (size_t)(p - line)) != 0)
		return fail(s, err, errlen, "endpoint not in its canonical form");
	memcpy(e->endpoint, canon, strlen(canon) + 1);
	if (p == eol || *p++ != ' ')
		return fail(s, err, errlen, "no time after the endpoint");
	for (t = p; p < eol && *p != ' '; p++)
		;
	if (!parse_u64(t, (size_t)(p - t), &e->since))
		return fail(s, err, errlen, "bad time");
	while (p < eol) {
		if (*p++ != ' ' || p == eol || *p == ' ')
			return fail(s, err, errlen, "stray space");
		for (t = p; p < eol && *p != ' '; p++)
			;
		if (!caps_keyword(t, (size_t)(p - t), &e->caps, &why))
			return fail(s, err, errlen, why);
	}
	return 1;
}

void
nodecaps_format(const struct nodecaps_entry *e, struct dstr *out)
{
	size_t i;

	dstr_printf(out, "%s %llu", e->endpoint, (unsigned long long)e->since);
	for (i = 0; i < NKEYWORDS; i++)
		if (*kw_field((struct ehlo_caps *)&e->caps, i))
			dstr_printf(out, " %s", keywords[i].name);
	if (e->caps.size && e->caps.size_max > 0)
		dstr_printf(out, " SIZE=%llu", e->caps.size_max);
	else if (e->caps.size)
		dstr_printf(out, " SIZE");
	dstr_printf(out, "\n");
}

bool
nodecaps_equal(const struct ehlo_caps *a, const struct ehlo_caps *b)
{
	size_t i;

	for (i = 0; i < NKEYWORDS; i++)
		if (*kw_field((struct ehlo_caps *)a, i) != *kw_field((struct ehlo_caps *)b, i))
			return false;
	return a->size == b->size && (!a->size || a->size_max == b->size_max);
}

/* ---- the table and its file ---- */

struct nodecaps {
	char *path, *tmp;
	struct nodecaps_entry *v;
	size_t n;
	bool have_stamp;                /* the file existed when last read */
	struct map_stamp stamp;
	bool warned;                    /* about the file with this stamp */
};

struct nodecaps *
nodecaps_open(const char *spool_dir)
{
	struct nodecaps *nc = xcalloc(1, sizeof(*nc));

	nc->path = xasprintf("%s/%s", spool_dir, NODECAPS_FILE);
	nc->tmp = xasprintf("%s/%s.tmp", spool_dir, NODECAPS_FILE);
	nc->v = xcalloc(NODECAPS_MAX, sizeof(*nc->v));
	return nc;
}

void
nodecaps_close(struct nodecaps *nc)
{
	if (nc == NULL)
		return;
	free(nc->path);
	free(nc->tmp);
	free(nc->v);
	free(nc);
}

static bool
same_stamp(const struct map_stamp *a, const struct stat *st)
{
	return a->dev == st->st_dev && a->ino == st->st_ino && a->size == st->st_size &&
	    a->mtime.tv_sec == st->st_mtim.tv_sec && a->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

static void
set_stamp(struct nodecaps *nc, const struct stat *st)
{
	nc->have_stamp = true;
	nc->stamp.dev = st->st_dev;
	nc->stamp.ino = st->st_ino;
	nc->stamp.size = st->st_size;
	nc->stamp.mtime = st->st_mtim;
}

/* Parses buf into the table; on a damaged file the table stays empty. */
static void
load(struct nodecaps *nc, const char *buf, size_t len)
{
	struct nodecaps_source src;
	struct nodecaps_entry e;
	char err[256];
	int rc;

	nc->n = 0;
	nodecaps_source_init(&src, buf, len);
	while ((rc = nodecaps_next(&src, &e, err, sizeof(err))) > 0) {
		if (nc->n == NODECAPS_MAX) {
			snprintf(err, sizeof(err), "more than %d endpoints", NODECAPS_MAX);
			rc = -1;
			break;
		}
		nc->v[nc->n++] = e;
	}
	if (rc < 0) {
		nc->n = 0;
		if (!nc->warned)
			msg_warn("%s: %s: ignored, nothing is known about the nodes' "
				 "capabilities until the queue manager rewrites it", nc->path, err);
		nc->warned = true;
	}
}

/* Reads the file again when it was replaced since the last look. */
static void
refresh(struct nodecaps *nc)
{
	struct stat st;
	char *buf;
	ssize_t r;
	size_t len = 0;
	int fd;

	if (stat(nc->path, &st) < 0) {
		nc->n = 0;              /* none yet, or gone: nothing known */
		nc->have_stamp = false;
		return;
	}
	if (nc->have_stamp && same_stamp(&nc->stamp, &st))
		return;
	nc->warned = false;
	fd = open(nc->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    st.st_size > NODECAPS_FILE_MAX) {
		if (fd >= 0)
			close(fd);
		nc->n = 0;
		set_stamp(nc, &st);
		if (!nc->warned)
			msg_warn("%s: cannot read it (%s): nothing is known about the nodes' "
				 "capabilities", nc->path, fd < 0 ? strerror(errno) : "not a small file");
		nc->warned = true;
		return;
	}
	buf = xmalloc((size_t)st.st_size + 1);
	while (len < (size_t)st.st_size) {
		r = read(fd, buf + len, (size_t)st.st_size - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	set_stamp(nc, &st);
	load(nc, buf, len);
	free(buf);
}

static struct nodecaps_entry *
find(struct nodecaps *nc, const char *key)
{
	size_t i;

	for (i = 0; i < nc->n; i++)
		if (strcmp(nc->v[i].endpoint, key) == 0)
			return &nc->v[i];
	return NULL;
}

int
nodecaps_smtputf8(struct nodecaps *nc, const struct endpoint *ep)
{
	struct nodecaps_entry *e;
	char key[NODECAPS_KEY_MAX];

	if (nc == NULL || ep->proto != EP_LMTP)
		return -1;
	refresh(nc);
	endpoint_format(ep, key, sizeof(key));
	e = find(nc, key);
	return e == NULL ? -1 : e->caps.smtputf8 ? 1 : 0;
}

const struct nodecaps_entry *
nodecaps_get(struct nodecaps *nc, const char *key)
{
	refresh(nc);
	return find(nc, key);
}

void
nodecaps_load(struct nodecaps *nc)
{
	refresh(nc);
}

/* Writes the table: temporary file, then rename over the real name. */
static int
write_file(struct nodecaps *nc)
{
	struct dstr d;
	struct stat st;
	size_t i;
	int fd, rc = -1;

	dstr_init(&d, 0);
	dstr_printf(&d, "# endpoint since capabilities: what each LMTP endpoint offered in its\n"
		    "# last LHLO; written by the queue manager, read by the smtpd workers\n");
	for (i = 0; i < nc->n; i++)
		nodecaps_format(&nc->v[i], &d);
	fd = open(nc->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd >= 0 && write_all(fd, d.s, d.len) == 0) {
		if (close(fd) == 0 && rename(nc->tmp, nc->path) == 0)
			rc = 0;
	} else if (fd >= 0) {
		close(fd);
	}
	if (rc < 0) {
		msg_warn("cannot write %s: %s", nc->path, strerror(errno));
		unlink(nc->tmp);
	} else if (stat(nc->path, &st) == 0) {
		set_stamp(nc, &st);     /* our own write is not news */
	}
	dstr_free(&d);
	return rc;
}

int
nodecaps_record(struct nodecaps *nc, const struct endpoint *ep, const struct ehlo_caps *caps,
		unsigned long long now)
{
	struct nodecaps_entry *e;
	char key[NODECAPS_KEY_MAX];
	size_t i, oldest = 0;

	if (nc == NULL || ep->proto != EP_LMTP)
		return 0;
	endpoint_format(ep, key, sizeof(key));
	e = find(nc, key);
	if (e != NULL && nodecaps_equal(&e->caps, caps))
		return 0;
	if (e == NULL) {
		if (nc->n == NODECAPS_MAX) {
			/* the entry unchanged the longest goes: most likely a
			 * node that left node_map */
			for (i = 1; i < nc->n; i++)
				if (nc->v[i].since < nc->v[oldest].since)
					oldest = i;
			e = &nc->v[oldest];
		} else {
			e = &nc->v[nc->n++];
		}
		memset(e, 0, sizeof(*e));
		snprintf(e->endpoint, sizeof(e->endpoint), "%s", key);
	}
	e->caps = *caps;
	e->since = now;
	return write_file(nc) == 0 ? 1 : -1;
}
