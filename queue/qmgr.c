/*
 * qmgr.c - the queue manager: one event loop that takes committed messages
 * from the spool, routes every pending recipient at delivery time, hands
 * each node's share to the LMTP client, and records the results.
 *
 * A message moves incoming/ -> active/ (the rename is the claim: whoever
 * renames it owns it) -> gone, or -> deferred/ with the file's mtime as its
 * next retry time, or -> hold/. A wake-up datagram from a worker carries
 * the id of a new message; it is only a hint: incoming/ is rescanned at
 * start and on a timer, active/ at start (what a crash left in flight is
 * tried again), deferred/ every queue_run_delay.
 *
 * Results become durable before anything acts on them: a bounce's DSN is
 * committed before its recipient is marked bounced; recipient marks are
 * fdatasync'd before the file moves on; a finished file is unlinked and
 * the directory fsync'd (shared) before the next step counts it gone.
 * What a crash can repeat is only what was in flight.
 *
 * This file must never remove a queue file while a recipient in it is
 * still pending, and never block the loop on an fsync (the iopool does).
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/lib.h"
#include "queue/qmgr.h"
#include "queue/queue.h"
#include "router/router.h"

#define INCOMING_SCAN_SECONDS 5

enum outcome { OUT_PENDING, OUT_DELIVERED, OUT_BOUNCED, OUT_DEFERRED, OUT_DONE_BEFORE };

struct qexp {                   /* one final address of a recipient */
	char addr[ADDR_PATH_MAX + 1];
	enum outcome out;
	char status[16];
	char diag[512];
	char relay[300];
	char node[ROUTER_NODE_MAX + 1];
	bool claimed;           /* taken by a transaction */
};

struct qrcpt {
	size_t index;           /* in the spool file */
	struct qexp *exps;      /* one per route in rl */
	size_t nexps;
	struct route_list rl;
	struct dsn_rcpt_params dsn;
};

struct qmsg;

struct qdest {                  /* one LMTP transaction: a message's share for one node */
	struct qmsg *msg;
	struct lmtp_txn txn;
	const char **rcpts;
	struct qexp **exps;
	struct lmtp_rcpt_result *results;
};

struct qmsg {
	struct qmgr *q;
	char id[QID_LEN + 1];
	unsigned char *image;
	size_t len;
	struct spool_msg m;
	struct dsn_sender_params sp;
	struct qstatus st;
	struct qrcpt *r;
	size_t nr;
	int inflight;           /* LMTP transactions and DSN commits under way */
	bool finishing;
	bool hold_req, delete_req;
	bool remove;            /* every recipient final: unlink */
	time_t next_retry;
	uint64_t start_usec;
	struct qmsg *prev, *next;
};

struct qmgr {
	struct config *cf;
	struct counters *ctr;
	struct event_base *base;
	struct router *router;
	struct lmtp_pool *lmtp;
	struct commit_pool *commit;     /* for DSNs */
	struct iopool *io;
	struct dirsync *active_ds, *defer_ds;
	int dirfd[6];                   /* incoming active deferred hold defer corrupt */
	struct qmsg *msgs;
	int nactive;
	bool backlog;                   /* incoming/ had more than we took */
	int wake_fd;
	struct event *wake_ev, *scan_ev, *defer_ev, *term_ev;
	struct control *control;
	bool stopping;
	int lock_fd;
};

enum { D_INCOMING, D_ACTIVE, D_DEFERRED, D_HOLD, D_DEFER, D_CORRUPT };
static const char *const dirnames[] = { "incoming", "active", "deferred", "hold", "defer", "corrupt" };

static void msg_finish(struct qmsg *mq);
static void scan_dir(struct qmgr *q, int d, bool due_only);

/* ---- loading ---- */

static unsigned
count_received(const unsigned char *p, size_t len)
{
	size_t i = 0;
	unsigned n = 0;

	while (i < len) {
		if (p[i] == '\r' && i + 1 < len && p[i + 1] == '\n')
			break;          /* the empty line: end of the header section */
		if (len - i >= 9 && strncasecmp((const char *)p + i, "Received:", 9) == 0)
			n++;
		while (i < len && p[i] != '\n')
			i++;
		i++;
	}
	return n;
}

static bool
sender_is_null(const struct qmsg *mq)
{
	return mq->m.sender[0] == '\0';
}

static void
msg_free(struct qmsg *mq)
{
	size_t i;

	for (i = 0; i < mq->nr; i++) {
		free(mq->r[i].exps);
		route_list_free(&mq->r[i].rl);
	}
	free(mq->r);
	qstatus_free(&mq->st);
	spool_msg_free(&mq->m);
	free(mq->image);
	free(mq);
}

static int
read_whole(int fd, unsigned char **buf, size_t *len)
{
	struct stat sb;
	ssize_t n;
	size_t off = 0;

	if (fstat(fd, &sb) < 0)
		return -1;
	*buf = xmalloc((size_t)sb.st_size + 1);
	while (off < (size_t)sb.st_size) {
		n = read(fd, *buf + off, (size_t)sb.st_size - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	*len = off;
	return 0;
}

static void
exp_set(struct qexp *e, enum outcome out, const char *status, const char *diag)
{
	e->out = out;
	snprintf(e->status, sizeof(e->status), "%s", status);
	snprintf(e->diag, sizeof(e->diag), "%s", diag);
}

