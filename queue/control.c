/*
 * control.c - queue control: the control socket the queue manager serves
 * to sorterctl, the client side of it, and the file-level operations that
 * sorterctl performs itself when the daemon is down (under the queue
 * manager's lock, so the two never act on the spool at once).
 *
 * The socket lives in the spool (spool_dir/control, mode 0600): only the
 * spool's owner (and root) may steer the queue. A request is one line,
 * "VERB [ARG...]"; the reply's first line is "ok" or "error: reason", then
 * free text; the server closes the connection after it. "VERB --select SEL"
 * (select.c's codec) selects in the spool and acts on what it selected in
 * the same turn of the queue manager's loop.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "queue/qmgr.h"

#define CONTROL_LINE_MAX 4096
#define CONTROL_REPLY_MAX (16 * 1024 * 1024)

static const char *const dirnames[QUEUE_NDIRS] = {
	"incoming", "active", "deferred", "hold", "defer", "corrupt",
};

int
queue_open_dirs(const char *spool_dir, int fds[QUEUE_NDIRS])
{
	char path[4096];
	int i, saved;

	for (i = 0; i < QUEUE_NDIRS; i++) {
		snprintf(path, sizeof(path), "%s/%s", spool_dir, dirnames[i]);
		fds[i] = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		if (fds[i] < 0) {
			saved = errno;
			while (i-- > 0)
				close(fds[i]);
			errno = saved;
			return -1;
		}
	}
	return 0;
}

void
queue_close_dirs(int fds[QUEUE_NDIRS])
{
	int i;

	for (i = 0; i < QUEUE_NDIRS; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

/* Which queue folder holds id: D_* or -1; *regular says whether it is a
 * plain file (a symlink planted in the spool is never followed). */
static int
locate(const int fds[QUEUE_NDIRS], const char *id, bool *regular)
{
	static const int order[] = { D_INCOMING, D_ACTIVE, D_DEFERRED, D_HOLD };
	struct stat sb;
	size_t i;

	for (i = 0; i < sizeof(order) / sizeof(order[0]); i++)
		if (fstatat(fds[order[i]], id, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
			*regular = S_ISREG(sb.st_mode);
			return order[i];
		}
	return -1;
}

/* Folder d changed: fsynced now, or left to queue_batch_end */
static int
dir_changed(const int fds[QUEUE_NDIRS], int d, struct queue_batch *b)
{
	if (b == NULL)
		return fsync(fds[d]);
	b->unsynced |= 1u << d;
	return 0;
}

/* Moves id from folder `from` to folder `to`, never over a file of that
 * name (a second message under one id would be lost): 0, or -1 with a
 * line in out. */
static int
move(const int fds[QUEUE_NDIRS], int from, int to, const char *id, struct dstr *out)
{
	if (renameat2(fds[from], id, fds[to], id, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno == EEXIST)
		dstr_printf(out, "%s: %s/%s exists already: left in %s/\n", id, dirnames[to], id,
			    dirnames[from]);
	else
		dstr_printf(out, "%s: %s\n", id, strerror(errno));
	return -1;
}

/* The end of a delete: its name (and its status file) gone */
static int
removed(const int fds[QUEUE_NDIRS], int d, const char *id, struct dstr *out,
	struct queue_batch *b)
{
	if (unlinkat(fds[d], id, 0) < 0 || dir_changed(fds, d, b) < 0)
		return -1;
	unlinkat(fds[D_DEFER], id, 0);
	msg_info("%s: removed by the administrator", id);
	dstr_printf(out, "%s: removed\n", id);
	return 0;
}

/* The batch's deletes: their marks made durable together, then their names
 * removed (each folder synced later, once) */
static void
batch_deletes(const int fds[QUEUE_NDIRS], struct queue_batch *b, struct dstr *out)
{
	int marked[QUEUE_BATCH_MARKS], errs[QUEUE_BATCH_MARKS];
	size_t i, k = 0;

	for (i = 0; i < b->n; i++)
		if (b->rm[i].fd >= 0)
			marked[k++] = b->rm[i].fd;
	slots_sync_marks(fds[D_DEFERRED], marked, k, errs);
	for (i = k = 0; i < b->n; i++) {
		int err = b->rm[i].fd >= 0 ? errs[k++] : 0;

		if (b->rm[i].fd >= 0)
			close(b->rm[i].fd);
		if (err == 0 && removed(fds, b->rm[i].d, b->rm[i].id, out, b) < 0)
			err = errno;
		if (err != 0) {
			dstr_printf(out, "%s: %s\n", b->rm[i].id, strerror(err));
			b->failed = true;
		}
	}
	b->n = 0;
}

int
queue_batch_end(const int fds[QUEUE_NDIRS], struct queue_batch *b, struct dstr *out)
{
	int d, rc = 0;

	if (b->n > 0)
		batch_deletes(fds, b, out);
	for (d = 0; d < QUEUE_NDIRS; d++) {
		if ((b->unsynced & (1u << d)) && fsync(fds[d]) < 0) {
			dstr_printf(out, "%s/: fsync: %s: the changes above may not survive a "
				    "crash\n", dirnames[d], strerror(errno));
			rc = -1;
		}
	}
	b->unsynced = 0;
	return rc < 0 || b->failed ? -1 : 0;
}

int
queue_op_offline(const int fds[QUEUE_NDIRS], enum queue_op op, const char *id,
		 struct dstr *out, struct queue_batch *b)
{
	struct timespec ts[2] = { { 0, 0 }, { 0, 0 } };
	bool regular = false;
	int d = locate(fds, id, &regular), fd, err;

	if (d < 0) {
		dstr_printf(out, "%s: no such message in the queue\n", id);
		return -1;
	}
	if (!regular) {
		dstr_printf(out, "%s: not a regular file (a symbolic link?): left alone\n", id);
		return -1;
	}
	switch (op) {
	case QOP_DELETE:
		if (spool_mark_freed(fds[d], id, &fd) < 0)
			goto fail;
		if (b == NULL) {
			err = fd >= 0 && fdatasync(fd) < 0 ? errno : 0;
			if (fd >= 0)
				close(fd);
			errno = err;
			if (err != 0 || removed(fds, d, id, out, NULL) < 0)
				goto fail;
			return 0;
		}
		if (b->n == QUEUE_BATCH_MARKS)
			batch_deletes(fds, b, out);
		b->rm[b->n].d = (signed char)d;
		b->rm[b->n].fd = fd;
		snprintf(b->rm[b->n].id, sizeof(b->rm[b->n].id), "%s", id);
		b->n++;
		return 0;
	case QOP_HOLD:
		if (d == D_HOLD) {
			dstr_printf(out, "%s: already on hold\n", id);
			return 0;
		}
		if (move(fds, d, D_HOLD, id, out) < 0)
			return -1;
		if (dir_changed(fds, D_HOLD, b) < 0)
			goto fail;
		msg_info("%s: placed on hold", id);
		dstr_printf(out, "%s: placed on hold\n", id);
		return 0;
	case QOP_RELEASE:
		if (d != D_HOLD) {
			dstr_printf(out, "%s: not on hold\n", id);
			return -1;
		}
		if (move(fds, D_HOLD, D_INCOMING, id, out) < 0)
			return -1;
		if (dir_changed(fds, D_INCOMING, b) < 0)
			goto fail;
		msg_info("%s: released from hold", id);
		dstr_printf(out, "%s: released\n", id);
		return 0;
	case QOP_FLUSH:
		if (d != D_DEFERRED) {
			dstr_printf(out, "%s: not deferred\n", id);
			return d == D_HOLD ? -1 : 0;
		}
		/* due now: the queue manager picks it up at its next queue run or start */
		if (utimensat(fds[D_DEFERRED], id, ts, AT_SYMLINK_NOFOLLOW) < 0)
			goto fail;
		dstr_printf(out, "%s: will be retried\n", id);
		return 0;
	}
	return -1;
fail:
	dstr_printf(out, "%s: %s\n", id, strerror(errno));
	return -1;
}

void
queue_count_dirs(const int fds[QUEUE_NDIRS], struct dstr *out)
{
	static const int which[] = { D_INCOMING, D_ACTIVE, D_DEFERRED, D_HOLD, D_CORRUPT };
	struct dirent *de;
	size_t i, n;
	DIR *dir;

	for (i = 0; i < sizeof(which) / sizeof(which[0]); i++) {
		n = 0;
		if ((dir = dir_read(fds[which[i]])) != NULL) {
			while ((de = readdir(dir)) != NULL)
				if (de->d_name[0] != '.' && strchr(de->d_name, '.') == NULL)
					n++;
			closedir(dir);
		}
		dstr_printf(out, "queue_%s %zu\n", dirnames[which[i]], n);
	}
}

/* ---- server (inside the queue manager) ---- */

struct batch {
	struct qmgr *q;
	struct queue_batch *qb;
};

static int
act_in_qmgr(void *arg, enum queue_op op, const char *id, struct dstr *out)
{
	struct batch *b = arg;

	return qmgr_control(b->q, op, id, out, b->qb);
}

/* Selection and action in one go: nothing else runs on the loop meanwhile.
 * The folders are synced once, by the caller (qmgr_control_sync). */
static int
qmgr_select(struct qmgr *q, enum queue_op op, const struct qselect *sel, struct dstr *out,
	    struct queue_batch *qb)
{
	struct qselect_router *qr = qselect_router_new(q->router);
	struct batch b = { q, qb };
	int rc;

	rc = qselect_apply(q->cf->spool_dir, sel, op, qselect_router_node, qr, act_in_qmgr, &b, out);
	qselect_router_free(qr);
	return rc;
}

struct control {
	struct qmgr *q;
	struct evconnlistener *lev;
	char path[108];
};

/* A drain's answer, once the drained set is on disk. */
static void
drain_answered(void *arg, bool ok, const char *text)
{
	struct bufferevent *bev = arg;
	struct dstr out;

	dstr_init(&out, 0);
	dstr_printf(&out, "%s\n%s", ok ? "ok" : "error: not recorded on disk", text);
	bufferevent_write(bev, out.s, out.len);
	dstr_free(&out);
}

/* Returns false when the answer comes later (drain, undrain). */
static bool
control_run(struct control *c, char *line, struct dstr *out, struct bufferevent *bev)
{
	char *argv[256], *save = NULL, *tok;
	struct dstr body;
	int argc = 0, i, failed = 0;
	struct queue_batch qb;
	enum queue_op op;

	memset(&qb, 0, sizeof(qb));
	for (tok = strtok_r(line, " \t", &save); tok && argc < 256; tok = strtok_r(NULL, " \t", &save))
		argv[argc++] = tok;
	dstr_init(&body, CONTROL_REPLY_MAX);
	if (argc == 0) {
		dstr_printf(out, "error: empty request\n");
		return true;
	}
	if (strcmp(argv[0], "stats") == 0) {
		qmgr_stats(c->q, &body);
		dstr_printf(out, "ok\n%s", body.s ? body.s : "");
		dstr_free(&body);
		return true;
	}
	if (strcmp(argv[0], "nodes") == 0 && argc == 1) {
		nodes_report(c->q->nodes, &body);
		dstr_printf(out, "ok\n%s", body.s ? body.s : "");
		dstr_free(&body);
		return true;
	}
	if (strcmp(argv[0], "drain") == 0 || strcmp(argv[0], "undrain") == 0) {
		if (argc != 2 || !nodestate_name_ok(argv[1], strlen(argv[1]))) {
			dstr_printf(out, "error: %s needs one node name (printable ASCII, at most "
				    "%d bytes)\n", argv[0], NODESTATE_NODE_MAX);
			return true;
		}
		nodes_drain(c->q->nodes, argv[1], argv[0][0] == 'd', drain_answered, bev);
		return false;
	}
	if (strcmp(argv[0], "delete") == 0)
		op = QOP_DELETE;
	else if (strcmp(argv[0], "hold") == 0)
		op = QOP_HOLD;
	else if (strcmp(argv[0], "release") == 0)
		op = QOP_RELEASE;
	else if (strcmp(argv[0], "flush") == 0)
		op = QOP_FLUSH;
	else {
		dstr_printf(out, "error: unknown request '%s'\n", argv[0]);
		return true;
	}
	if (argc == 3 && strcmp(argv[1], "--select") == 0) {
		struct qselect sel;
		char why[256];

		if (qselect_decode(argv[2], strlen(argv[2]), &sel, why, sizeof(why)) < 0) {
			dstr_printf(out, "error: %s\n", why);
			return true;
		}
		failed = qmgr_select(c->q, op, &sel, &body, &qb) < 0;
		qselect_free(&sel);
		argc = 1;       /* no ids follow */
	} else if (op == QOP_FLUSH && argc == 1) {
		qmgr_control(c->q, op, NULL, &body, NULL);
	} else if (argc == 1) {
		dstr_printf(out, "error: %s needs a queue id\n", argv[0]);
		return true;
	}
	for (i = 1; i < argc; i++) {
		if (!qid_valid(argv[i])) {
			dstr_printf(&body, "%s: not a queue id\n", argv[i]);
			failed++;
			continue;
		}
		if (qmgr_control(c->q, op, argv[i], &body, &qb) < 0)
			failed++;
	}
	/* the reply says done only once it is on disk */
	if (qmgr_control_sync(c->q, &qb, &body) < 0)
		failed++;
	dstr_printf(out, "%s\n%s", failed ? "error: some requests failed" : "ok",
		    body.s ? body.s : "");
	dstr_free(&body);
	return true;
}

static void
on_control_read(struct bufferevent *bev, void *arg)
{
	struct control *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct dstr out;
	size_t len;
	char *line;

	line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF);
	if (line == NULL) {
		if (evbuffer_get_length(in) > CONTROL_LINE_MAX)
			bufferevent_free(bev);
		return;
	}
	dstr_init(&out, 0);
	/* reading stops before an answer that comes later: with nothing to
	 * read or write, no event of this connection fires meanwhile */
	bufferevent_disable(bev, EV_READ);
	if (control_run(c, line, &out, bev))
		bufferevent_write(bev, out.s, out.len);
	free(line);
	dstr_free(&out);
}

static void
on_control_write(struct bufferevent *bev, void *arg)
{
	if (!(bufferevent_get_enabled(bev) & EV_READ))
		bufferevent_free(bev);          /* the reply is out */
}

static void
on_control_event(struct bufferevent *bev, short what, void *arg)
{
	bufferevent_free(bev);
}

static void
on_control_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
		  void *arg)
{
	struct bufferevent *bev;
	struct timeval tv = { 30, 0 };

	bev = bufferevent_socket_new(evconnlistener_get_base(l), fd, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		close(fd);
		return;
	}
	bufferevent_setcb(bev, on_control_read, on_control_write, on_control_event, arg);
	bufferevent_set_timeouts(bev, &tv, &tv);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
}

struct control *
control_start(struct qmgr *q, struct event_base *base, const char *spool_dir)
{
	struct control *c = xcalloc(1, sizeof(*c));
	struct sockaddr_un sun;
	mode_t old;

	c->q = q;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/control", spool_dir) >=
	    sizeof(sun.sun_path))
		msg_fatal("spool_dir %s: path too long for a socket", spool_dir);
	snprintf(c->path, sizeof(c->path), "%s", sun.sun_path);
	unlink(sun.sun_path);
	old = umask(077);
	c->lev = evconnlistener_new_bind(base, on_control_accept, c,
					 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16,
					 (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (c->lev == NULL)
		msg_fatal("control socket %s: %s", sun.sun_path, strerror(errno));
	chmod(sun.sun_path, 0600);
	return c;
}

void
control_stop(struct control *c)
{
	evconnlistener_free(c->lev);
	unlink(c->path);
	free(c);
}

/* ---- client (sorterctl) ---- */

int
control_request(const char *spool_dir, const char *line, struct dstr *out, bool *ok)
{
	struct sockaddr_un sun;
	char buf[8192];
	ssize_t n;
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/control", spool_dir);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	if (send(fd, line, strlen(line), MSG_NOSIGNAL) < 0 || send(fd, "\n", 1, MSG_NOSIGNAL) < 0) {
		close(fd);
		return -1;
	}
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		dstr_append(out, buf, (size_t)n);
	close(fd);
	if (out->len == 0) {
		/* closed without an answer: it died, or is dying */
		errno = ECONNRESET;
		return -1;
	}
	*ok = strncmp(out->s, "ok\n", 3) == 0;
	return 0;
}

/* ---- the workers' wake-up hint ---- */

void
qmgr_wake(const char *spool_dir, int *fd, const char *id)
{
	struct sockaddr_un sun;

	if (*fd < 0)
		*fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (*fd < 0)
		return;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/qmgr.sock", spool_dir);
	/* a lost hint costs at most one incoming/ scan period */
	(void)sendto(*fd, id, strlen(id), MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&sun,
		     sizeof(sun));
}
