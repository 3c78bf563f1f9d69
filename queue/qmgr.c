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

static void
dest_key(const struct route *rt, char *key, size_t len)
{
	if (rt->node[0])
		snprintf(key, len, "%s", rt->node);
	else
		endpoint_format(&rt->endpoints[0], key, len);
}

/* ---- delivery ---- */

static void
log_result(struct qmsg *mq, const struct qrcpt *qr, const struct qexp *e, const char *what)
{
	const char *orig = mq->m.rcpts[qr->index].addr;
	double delay = (double)(now_usec() - mq->m.arrival_usec) / 1e6;

	msg_info("%s: to=<%s>%s%s%s, node=%s, relay=%s, delay=%.2f, dsn=%s, status=%s (%s)",
		 mq->id, e->addr, strcmp(orig, e->addr) ? ", orig_to=<" : "",
		 strcmp(orig, e->addr) ? orig : "", strcmp(orig, e->addr) ? ">" : "",
		 e->node[0] ? e->node : "none", e->relay[0] ? e->relay : "none", delay,
		 e->status, what, e->diag);
}

static struct qrcpt *
rcpt_of(struct qmsg *mq, const struct qexp *e)
{
	size_t i;

	for (i = 0; i < mq->nr; i++)
		if (e >= mq->r[i].exps && e < mq->r[i].exps + mq->r[i].nexps)
			return &mq->r[i];
	msg_panic("%s: expansion without a recipient", mq->id);
}

static void
dest_done(struct lmtp_txn *txn, void *arg)
{
	struct qdest *qd = arg;
	struct qmsg *mq = qd->msg;
	size_t i;

	for (i = 0; i < txn->nrcpt; i++) {
		struct qexp *e = qd->exps[i];
		struct lmtp_rcpt_result *res = &qd->results[i];
		int cls = res->code / 100;

		snprintf(e->relay, sizeof(e->relay), "%s", res->relay);
		snprintf(e->diag, sizeof(e->diag), "%s", res->text);
		if (res->status[0])
			snprintf(e->status, sizeof(e->status), "%s", res->status);
		else
			snprintf(e->status, sizeof(e->status), "%d.0.0", cls == 2 ? 2 : cls == 5 ? 5 : 4);
		if (cls == 2) {
			e->out = OUT_DELIVERED;
			atomic_fetch_add(&mq->q->ctr->delivered, 1);
			log_result(mq, rcpt_of(mq, e), e, "sent");
		} else if (cls == 5) {
			e->out = OUT_BOUNCED;
		} else {
			e->out = OUT_DEFERRED;
		}
	}
	free(qd->rcpts);
	free(qd->exps);
	free(qd->results);
	free(qd);
	if (--mq->inflight == 0)
		msg_finish(mq);
}

static void
msg_deliver(struct qmsg *mq)
{
	struct qmgr *q = mq->q;
	size_t i, k, a, b, n;
	char key[ADDR_PATH_MAX + 64], key2[ADDR_PATH_MAX + 64];

	mq->inflight++;         /* held until every transaction has started */
	for (i = 0; i < mq->nr; i++) {
		for (k = 0; k < mq->r[i].nexps; k++) {
			struct qexp *e = &mq->r[i].exps[k];
			struct route *rt = &mq->r[i].rl.v[k];
			struct qdest *qd;

			if (e->out != OUT_PENDING || e->claimed)
				continue;
			dest_key(rt, key, sizeof(key));
			n = 0;
			for (a = i; a < mq->nr; a++)
				for (b = 0; b < mq->r[a].nexps; b++)
					if (mq->r[a].exps[b].out == OUT_PENDING && !mq->r[a].exps[b].claimed)
						n++;
			qd = xcalloc(1, sizeof(*qd));
			qd->msg = mq;
			qd->rcpts = xcalloc(n, sizeof(*qd->rcpts));
			qd->exps = xcalloc(n, sizeof(*qd->exps));
			qd->results = xcalloc(n, sizeof(*qd->results));
			n = 0;
			for (a = i; a < mq->nr; a++) {
				for (b = 0; b < mq->r[a].nexps; b++) {
					struct qexp *x = &mq->r[a].exps[b];

					if (x->out != OUT_PENDING || x->claimed)
						continue;
					dest_key(&mq->r[a].rl.v[b], key2, sizeof(key2));
					if (strcmp(key, key2) != 0)
						continue;
					x->claimed = true;
					qd->rcpts[n] = x->addr;
					qd->exps[n] = x;
					n++;
				}
			}
			qd->txn.sender = mq->m.sender;
			qd->txn.rcpts = qd->rcpts;
			qd->txn.nrcpt = n;
			qd->txn.content = mq->image + mq->m.content_offset;
			qd->txn.content_len = mq->m.content_len;
			qd->txn.results = qd->results;
			qd->txn.done = dest_done;
			qd->txn.arg = qd;
			mq->inflight++;
			lmtp_deliver(q->lmtp, key, rt->endpoints, rt->nendpoints, &qd->txn);
		}
	}
	if (--mq->inflight == 0)
		msg_finish(mq);
}

/* Routes every pending recipient: fills mq->r. */
static void
msg_route(struct qmsg *mq)
{
	struct qrcpt *qr;
	struct route *rt;
	size_t i, k;
	unsigned hops;
	const char *why;

	hops = count_received(mq->image + mq->m.content_offset, mq->m.content_len);
	mq->r = xcalloc(mq->m.nrcpt, sizeof(*mq->r));
	for (i = 0; i < mq->m.nrcpt; i++) {
		if (mq->m.rcpts[i].state != RCPT_PENDING)
			continue;
		qr = &mq->r[mq->nr++];
		qr->index = i;
		if (mq->m.rcpts[i].params == NULL ||
		    dsn_parse_rcpt_params(mq->m.rcpts[i].params, &qr->dsn, &why) < 0)
			memset(&qr->dsn, 0, sizeof(qr->dsn));
		if (hops > (unsigned)mq->q->cf->hopcount_limit) {
			qr->exps = xcalloc(1, sizeof(*qr->exps));
			qr->nexps = 1;
			snprintf(qr->exps[0].addr, sizeof(qr->exps[0].addr), "%s", mq->m.rcpts[i].addr);
			exp_set(&qr->exps[0], OUT_BOUNCED, "5.4.6",
				"mail forwarding loop: too many Received: headers");
			continue;
		}
		router_resolve(mq->q->router, mq->m.rcpts[i].addr, &qr->rl, NULL);
		qr->nexps = qr->rl.n;
		qr->exps = xcalloc(qr->nexps ? qr->nexps : 1, sizeof(*qr->exps));
		for (k = 0; k < qr->nexps; k++) {
			struct qexp *e = &qr->exps[k];

			rt = &qr->rl.v[k];
			snprintf(e->addr, sizeof(e->addr), "%s", rt->address);
			snprintf(e->node, sizeof(e->node), "%s", rt->node);
			if (qstatus_is_done(&mq->st, i, e->addr)) {
				e->out = OUT_DONE_BEFORE;
				continue;
			}
			switch (rt->kind) {
			case ROUTE_LOCAL:
				e->out = rt->nendpoints ? OUT_PENDING : OUT_DEFERRED;
				if (!rt->nendpoints)
					exp_set(e, OUT_DEFERRED, "4.3.0", "node has no endpoints");
				break;
			case ROUTE_REMOTE:
				exp_set(e, OUT_DEFERRED, "4.4.0",
					"no transport for other domains: the SMTP client is not available");
				break;
			case ROUTE_BOUNCE:
				exp_set(e, OUT_BOUNCED, rt->status[0] ? rt->status : "5.1.1", rt->reason);
				break;
			case ROUTE_TEMPFAIL:
				exp_set(e, OUT_DEFERRED, rt->status[0] ? rt->status : "4.3.0", rt->reason);
				break;
			}
		}
	}
}
