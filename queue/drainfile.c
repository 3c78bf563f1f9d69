/*
 * drainfile.c - the set of drained nodes and its file, spool_dir/drained
 * (records of nodestate.c's codec), which must survive a restart: written
 * whole to a temporary file, fsync'd, renamed over the old one, directory
 * fsync'd. The queue manager writes it on an I/O thread; sorterctl, with
 * the daemon down, under the queue manager's lock.
 *
 * A file that cannot be read or parsed is never taken as "nothing
 * drained" silently: the caller gets an error and says so.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/lib.h"
#include "router/router.h"
#include "queue/queue.h"

#define DRAINFILE_MAX (1 << 20)

_Static_assert(NODESTATE_EP_MAX >= NODECAPS_KEY_MAX, "an endpoint fits a record");
_Static_assert(NODESTATE_NODE_MAX == ROUTER_NODE_MAX, "a node name fits a record");

void
drainset_free(struct drainset *d)
{
	free(d->v);
	d->v = NULL;
	d->n = 0;
}

const struct nodestate_rec *
drainset_find(const struct drainset *d, const char *node)
{
	size_t i;

	for (i = 0; i < d->n; i++)
		if (strcmp(d->v[i].node, node) == 0)
			return &d->v[i];
	return NULL;
}

bool
drainset_set(struct drainset *d, const char *node, bool on, unsigned long long now)
{
	size_t i;

	for (i = 0; i < d->n; i++)
		if (strcmp(d->v[i].node, node) == 0)
			break;
	if (on == (i < d->n))
		return false;
	if (!on) {
		d->v[i] = d->v[--d->n];
		return true;
	}
	d->v = xrealloc(d->v, (d->n + 1) * sizeof(*d->v));
	memset(&d->v[d->n], 0, sizeof(d->v[0]));
	d->v[d->n].type = NSR_DRAINED;
	snprintf(d->v[d->n].node, sizeof(d->v[0].node), "%s", node);
	d->v[d->n].since = now;
	d->n++;
	return true;
}

int
drainset_load(const char *spool_dir, struct drainset *d, char *err, size_t errlen)
{
	struct nodestate_source src;
	struct nodestate_rec r;
	struct stat st;
	char path[4096], why[256], *buf;
	size_t len = 0;
	ssize_t n;
	int fd, rc;

	d->v = NULL;
	d->n = 0;
	snprintf(path, sizeof(path), "%s/%s", spool_dir, NODESTATE_FILE);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 && errno == ENOENT)
		return 0;       /* nothing was ever drained */
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > DRAINFILE_MAX) {
		snprintf(err, errlen, "%s: %s", path, fd < 0 ? strerror(errno) :
			 "not a regular file of at most 1 MB");
		if (fd >= 0)
			close(fd);
		return -1;
	}
	buf = xmalloc((size_t)st.st_size + 1);
	while (len < (size_t)st.st_size) {
		n = read(fd, buf + len, (size_t)st.st_size - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	nodestate_source_init(&src, buf, len);
	while ((rc = nodestate_next(&src, &r, why, sizeof(why))) > 0) {
		if (r.type != NSR_DRAINED) {
			snprintf(why, sizeof(why), "line %lu: not a drained record", src.line);
			rc = -1;
			break;
		}
		(void)drainset_set(d, r.node, true, r.since);
	}
	free(buf);
	if (rc < 0) {
		snprintf(err, errlen, "%s: %s", path, why);
		drainset_free(d);
		return -1;
	}
	return 0;
}

int
drainset_save(const char *spool_dir, const struct drainset *d)
{
	char path[4096], tmp[4096];
	struct dstr out;
	size_t i;
	int fd, err = 0;

	snprintf(path, sizeof(path), "%s/%s", spool_dir, NODESTATE_FILE);
	snprintf(tmp, sizeof(tmp), "%s/%s.tmp", spool_dir, NODESTATE_FILE);
	dstr_init(&out, 0);
	dstr_printf(&out, "# drained nodes: their mail waits in the queue (sorterctl undrain)\n");
	for (i = 0; i < d->n; i++)
		nodestate_format(&d->v[i], &out);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		err = errno;
	else if (write_all(fd, out.s, out.len) < 0 || fsync(fd) < 0)
		err = errno ? errno : EIO;
	if (fd >= 0 && close(fd) < 0 && err == 0)
		err = errno;
	if (err == 0 && rename(tmp, path) < 0)
		err = errno;
	if (err == 0 && fsync_dir(spool_dir) < 0)
		err = errno;
	if (err != 0)
		unlink(tmp);
	dstr_free(&out);
	return err;
}
