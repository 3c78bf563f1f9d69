/*
 * status.c - the per-message status file kept beside a deferred message
 * (defer/ID): attempt count, whether a delay warning went out, each
 * pending recipient's last error, and which alias-expanded addresses of a
 * still pending recipient are already final (so that a retry does not
 * deliver them twice).
 *
 * The queue file itself is never rewritten (only recipient marks change),
 * so this is where what a retry must know lives. It is replaced atomically
 * (temp file, fsync, rename, directory fsync). A missing or unparseable
 * status file only loses history, never mail; one that cannot be read
 * right now is not taken for an empty one (qstatus_read says which).
 *
 * Format, one item per line (TAB separated, no TAB/CR/LF inside fields):
 *   attempts N
 *   warned 0|1
 *   parked SECONDS SINCE   time spent parked (a drained node) in periods that
 *                          ended, and when the one under way began (0: none);
 *                          absent when never parked
 *   error INDEX TEXT       last error of spool recipient INDEX
 *   done INDEX ADDRESS     ADDRESS, expanded from recipient INDEX, is final
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/lib.h"
#include "queue/queue.h"

#define STATUS_MAX (1024 * 1024)

void
qstatus_init(struct qstatus *st)
{
	memset(st, 0, sizeof(*st));
}

void
qstatus_free(struct qstatus *st)
{
	size_t i;

	for (i = 0; i < st->nitems; i++)
		free(st->items[i].text);
	free(st->items);
	qstatus_init(st);
}

static void
add_item(struct qstatus *st, enum qstatus_kind kind, size_t index, const char *text, size_t len)
{
	struct qstatus_item *it;

	st->items = xrealloc(st->items, (st->nitems + 1) * sizeof(*st->items));
	it = &st->items[st->nitems++];
	it->kind = kind;
	it->index = index;
	it->text = xstrndup(text, len);
}

void
qstatus_set_error(struct qstatus *st, size_t index, const char *text)
{
	char clean[512];
	size_t i, n;

	for (n = 0; text[n] && n < sizeof(clean) - 1; n++)
		clean[n] = (text[n] == '\t' || text[n] == '\r' || text[n] == '\n') ? ' ' : text[n];
	clean[n] = '\0';
	for (i = 0; i < st->nitems; i++)
		if (st->items[i].kind == QS_ERROR && st->items[i].index == index) {
			free(st->items[i].text);
			st->items[i].text = xstrdup(clean);
			return;
		}
	add_item(st, QS_ERROR, index, clean, n);
}

void
qstatus_add_done(struct qstatus *st, size_t index, const char *address)
{
	if (!qstatus_is_done(st, index, address))
		add_item(st, QS_DONE, index, address, strlen(address));
}

bool
qstatus_is_done(const struct qstatus *st, size_t index, const char *address)
{
	size_t i;

	for (i = 0; i < st->nitems; i++)
		if (st->items[i].kind == QS_DONE && st->items[i].index == index &&
		    strcmp(st->items[i].text, address) == 0)
			return true;
	return false;
}

unsigned long long
qstatus_parked(const struct qstatus *st, unsigned long long now)
{
	return st->parked + (st->parked_since != 0 && now > st->parked_since ?
			     now - st->parked_since : 0);
}

const char *
qstatus_error(const struct qstatus *st, size_t index)
{
	size_t i;

	for (i = 0; i < st->nitems; i++)
		if (st->items[i].kind == QS_ERROR && st->items[i].index == index)
			return st->items[i].text;
	return NULL;
}

/* A field of decimal digits only (no sign, no space: strtoul would take
 * both), at most max. */
static bool
parse_number(const char *p, size_t n, unsigned long long max, unsigned long long *out)
{
	unsigned long long v = 0;
	size_t i;

	if (n == 0 || n > 20)
		return false;
	for (i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		if (v > (ULLONG_MAX - (unsigned)(p[i] - '0')) / 10)
			return false;
		v = v * 10 + (unsigned)(p[i] - '0');
	}
	if (v > max)
		return false;
	*out = v;
	return true;
}

int
qstatus_parse(const char *buf, size_t len, struct qstatus *st)
{
	const char *p = buf, *end = buf + len, *nl, *tab, *tab2, *numend;
	unsigned long long v;

	qstatus_init(st);
	/* texts are C strings: a NUL would cut one short without a word */
	if (memchr(buf, '\0', len) != NULL)
		return -1;
	while (p < end) {
		nl = memchr(p, '\n', (size_t)(end - p));
		if (nl == NULL)
			goto bad;           /* torn: every line ends in LF */
		tab = memchr(p, '\t', (size_t)(nl - p));
		if (tab == NULL)
			goto bad;
		tab2 = memchr(tab + 1, '\t', (size_t)(nl - tab - 1));
		numend = tab2 ? tab2 : nl;
		if (tab - p == 8 && memcmp(p, "attempts", 8) == 0 && !tab2 &&
		    parse_number(tab + 1, (size_t)(numend - tab - 1), UINT_MAX, &v))
			st->attempts = (unsigned)v;
		else if (tab - p == 6 && memcmp(p, "warned", 6) == 0 && !tab2 &&
			 parse_number(tab + 1, (size_t)(numend - tab - 1), 1, &v))
			st->warned = v != 0;
		else if (tab - p == 6 && memcmp(p, "parked", 6) == 0 && tab2 &&
			 parse_number(tab + 1, (size_t)(numend - tab - 1), UINT32_MAX, &v) &&
			 parse_number(tab2 + 1, (size_t)(nl - tab2 - 1), UINT32_MAX * 2ULL,
				      &st->parked_since))
			st->parked = v;
		else if (tab - p == 5 && memcmp(p, "error", 5) == 0 && tab2 &&
			 parse_number(tab + 1, (size_t)(numend - tab - 1), SIZE_MAX, &v))
			add_item(st, QS_ERROR, (size_t)v, tab2 + 1, (size_t)(nl - tab2 - 1));
		else if (tab - p == 4 && memcmp(p, "done", 4) == 0 && tab2 &&
			 parse_number(tab + 1, (size_t)(numend - tab - 1), SIZE_MAX, &v))
			add_item(st, QS_DONE, (size_t)v, tab2 + 1, (size_t)(nl - tab2 - 1));
		else
			goto bad;
		p = nl + 1;
	}
	return 0;
bad:
	qstatus_free(st);
	return -1;
}

int
qstatus_read(const char *path, struct qstatus *st)
{
	struct dstr d;
	char buf[8192];
	ssize_t n;
	int fd, rc, saved;

	qstatus_init(st);
	/* never through a symlink planted in the spool, never stuck on a FIFO */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return errno == ENOENT ? 0 : -2;
	dstr_init(&d, STATUS_MAX);
	for (;;) {
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (dstr_append(&d, buf, (size_t)n) < 0) {
			/* more than a status file ever holds: not one of ours */
			close(fd);
			dstr_free(&d);
			return -1;
		}
	}
	saved = errno;
	close(fd);
	if (n < 0) {
		/* half a status read as a whole one would forget what is done */
		dstr_free(&d);
		errno = saved;
		return -2;
	}
	rc = qstatus_parse(d.s ? d.s : "", d.len, st);
	dstr_free(&d);
	return rc;
}

void
qstatus_format(const struct qstatus *st, struct dstr *out)
{
	size_t i;

	dstr_printf(out, "attempts\t%u\nwarned\t%d\n", st->attempts, st->warned ? 1 : 0);
	if (st->parked || st->parked_since)
		dstr_printf(out, "parked\t%llu\t%llu\n", st->parked, st->parked_since);
	for (i = 0; i < st->nitems; i++)
		dstr_printf(out, "%s\t%zu\t%s\n", st->items[i].kind == QS_DONE ? "done" : "error",
			    st->items[i].index, st->items[i].text);
}

int
qstatus_write(int dirfd, struct groupsync *ds, const char *id, const struct qstatus *st)
{
	char tmp[QID_LEN + 8];
	struct dstr d;
	int fd, err = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp", id);
	dstr_init(&d, 0);
	qstatus_format(st, &d);
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		dstr_free(&d);
		return errno;
	}
	if (write_all(fd, d.s, d.len) < 0 || fsync(fd) < 0)
		err = errno;
	close(fd);
	dstr_free(&d);
	if (err == 0 && renameat(dirfd, tmp, dirfd, id) < 0)
		err = errno;
	if (err) {
		unlinkat(dirfd, tmp, 0);
		return err;
	}
	return ds ? groupsync_wait(ds) : 0;
}
