/*
 * qmgr.c - the queue manager: one event loop that takes committed messages
 * from the spool, routes every pending recipient at delivery time, hands
 * each node's share to the LMTP client, and records the results.
 *
 * A message moves incoming/ -> active/ (the rename is the claim: whoever
 * renames it owns it) -> gone, or -> deferred/ with the file's mtime as its
 * next retry time, or -> hold/. A wake-up datagram from a worker carries
 * the id of a new message; it is only a hint: incoming/ is rescanned at
 * start and on a timer, active/ at start and with each queue run (what a
 * crash or a failed write left there is tried again), deferred/ every
 * queue_run_delay.
 *
 * Results become durable before anything acts on them (outcome.c): a
 * bounce's DSN is committed before its recipient is marked bounced;
 * recipient marks are fdatasync'd before the file moves on. A finished
 * file's name is removed (a slot marked freed first: spool_remove) without
 * waiting for the disk: a
 * process crash repeats only what was in flight, a power failure also
 * what finished in the last seconds (delivered again, never lost).
 *
 * When the master dies (EOF on its pipe) the queue manager takes nothing
 * new, gives the deliveries under way MASTER_GONE_GRACE_SECONDS to finish
 * and be recorded, and exits, so that the queue manager of a new sorterd,
 * waiting for qmgr.lock, takes over soon; what was still in flight stays
 * in active/ and is tried again by it.
 *
 * This file must never block the loop on an fsync (the iopool does).
 * Spool files are opened with O_NOFOLLOW: a symlink planted in the spool
 * never leads out of it.
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
#include "lib/metrics.h"
#include "queue/queue.h"
#include "router/router.h"
#include "queue/qmgr.h"

#define INCOMING_SCAN_SECONDS 5
#define CATCHUP_SCAN_MSEC 250   /* after hints: a hint lost to a full socket waits this long */
#define STOP_GRACE_SECONDS 10
#define MASTER_GONE_GRACE_SECONDS 5

static void scan_dir(struct qmgr *q, int d, bool due_only);

/* ---- loading ---- */

/*
 * What the qmgr must know of a message's content before it routes it: its
 * hop count, whether it has 8-bit bytes, and whether its header section
 * has. The content is read once, in CONTENT_SCAN pieces, never held whole.
 * The header checks look at the first piece only: a header section longer
 * than that counts the Received: fields in it (far more than any
 * hopcount_limit), and is taken to be 8-bit when the content is.
 */
#define CONTENT_SCAN (256 * 1024)

/* The length of the header section at the start of p (up to and with the
 * empty line), or len when it does not end within p. */
static size_t
header_end(const unsigned char *p, size_t len)
{
	size_t i = 0;

	while (i < len) {
		if (p[i] == '\r' && i + 1 < len && p[i + 1] == '\n')
			return i + 2;   /* the empty line */
		while (i < len && p[i] != '\n')
			i++;
		i++;
	}
	return len;
}

static unsigned
count_received(const unsigned char *p, size_t len)
{
	size_t i = 0;
	unsigned n = 0;

	while (i < len) {
		if (len - i >= 9 && strncasecmp((const char *)p + i, "Received:", 9) == 0)
			n++;
		while (i < len && p[i] != '\n')
			i++;
		i++;
	}
	return n;
}

static bool
has_8bit(const unsigned char *p, size_t len)
{
	size_t i = 0;
	uint64_t w, acc = 0;

	/* eight bytes at a time: any high bit in any of them */
	for (; i + 8 <= len; i += 8) {
		memcpy(&w, p + i, 8);
		acc |= w;
		if ((i & 4095) == 4088 && (acc & 0x8080808080808080ull))
			return true;
	}
	if (acc & 0x8080808080808080ull)
		return true;
	for (; i < len; i++)
		if (p[i] & 0x80)
			return true;
	return false;
}

/* Fills mq->hops, eightbit and utf8_headers from the file. Returns 0, or
 * -1 with errno when the content cannot be read now. */
static int
scan_content(struct qmsg *mq)
{
	static unsigned char buf[CONTENT_SCAN];        /* the loop's, one scan at a time */
	size_t off = 0, n, hlen = 0;
	bool hdr8 = false, hdr_done = false;

	mq->eightbit = false;
	while (off < mq->m.content_len) {
		n = mq->m.content_len - off;
		if (n > CONTENT_SCAN)
			n = CONTENT_SCAN;
		if (spool_content_read(mq->fd, &mq->m, off, buf, n) < 0)
			return -1;
		if (off == 0) {
			hlen = header_end(buf, n);
			hdr_done = hlen < n || n == mq->m.content_len;
			mq->hops = count_received(buf, hlen);
			hdr8 = has_8bit(buf, hlen);
		}
		if (!mq->eightbit)
			mq->eightbit = has_8bit(buf, n);
		if (mq->eightbit && (hdr8 || hdr_done))
			break;  /* nothing more to learn */
		off += n;
	}
	/* a header section past the first piece: 8-bit if the content is */
	if (!hdr_done)
		hdr8 = mq->eightbit;
	mq->utf8_headers = mq->sp.smtputf8 && hdr8;
	return 0;
}

bool
sender_is_null(const struct qmsg *mq)
{
	return mq->m.sender[0] == '\0';
}

static void routes_free(struct qmsg *mq);

void
msg_free(struct qmsg *mq)
{
	routes_free(mq);
	free(mq->sender_params);
	qstatus_free(&mq->st);
	spool_msg_free(&mq->m);
	if (mq->fd >= 0)
		close(mq->fd);
	free(mq);
}

static void
exp_set(struct qexp *e, enum outcome out, const char *status, const char *diag)
{
	e->out = out;
	snprintf(e->status, sizeof(e->status), "%s", status);
	snprintf(e->diag, sizeof(e->diag), "%s", diag);
	e->diag_reply = false;
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

void
log_result(struct qmsg *mq, const struct qrcpt *qr, const struct qexp *e, const char *what)
{
	const char *orig = mq->m.rcpts[qr->index].addr;
	uint64_t now = now_usec();
	double delay = now > mq->m.arrival_usec ? (double)(now - mq->m.arrival_usec) / 1e6 : 0;
	char to[LOG_ESC_SIZE(ADDR_PATH_MAX)], oto[LOG_ESC_SIZE(ADDR_PATH_MAX)];

	/* addresses escaped: a quoted local part cannot forge a field */
	msg_info("%s: to=<%s>%s%s%s, node=%s, relay=%s, delay=%.2f%s%s, dsn=%s, status=%s (%s)",
		 mq->id, log_esc(e->addr, to, sizeof(to)), strcmp(orig, e->addr) ? ", orig_to=<" : "",
		 strcmp(orig, e->addr) ? log_esc(orig, oto, sizeof(oto)) : "",
		 strcmp(orig, e->addr) ? ">" : "",
		 e->node[0] ? e->node : "none", e->relay[0] ? e->relay : "none", delay,
		 e->tls[0] ? ", tls=" : "", e->tls, e->status, what, e->diag);
}

struct qrcpt *
rcpt_of(struct qmsg *mq, const struct qexp *e)
{
	size_t i;

	for (i = 0; i < mq->nr; i++)
		if (e >= mq->r[i].exps && e < mq->r[i].exps + mq->r[i].nexps)
			return &mq->r[i];
	msg_panic("%s: expansion without a recipient", mq->id);
}

static void
dest_done(struct deliv_txn *txn, void *arg)
{
	struct qdest *qd = arg;
	struct qmsg *mq = qd->msg;
	uint64_t took = metrics_now() - qd->start_usec;
	bool failed = false;
	size_t i;

	for (i = 0; i < txn->nrcpt; i++) {
		struct qexp *e = qd->exps[i];
		struct deliv_result *res = &qd->results[i];
		int cls = res->code / 100;

		metrics_delivery(qd->smtp ? MTR_SMTP : MTR_LMTP, e->node,
				 cls == 2 ? MDR_DELIVERED : cls == 5 ? MDR_BOUNCED : MDR_DEFERRED, took);
		snprintf(e->relay, sizeof(e->relay), "%s", res->relay);
		snprintf(e->tls, sizeof(e->tls), "%s", res->tls);
		e->relayed = res->relayed;
		e->dsn_passed = res->dsn_passed;
		snprintf(e->diag, sizeof(e->diag), "%d %s%s%.400s", res->code, res->status,
			 res->status[0] ? " " : "", res->text);
		e->diag_reply = res->remote_said;
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
			/* no server answered: is the node down? */
			failed = failed || !res->remote_said;
		}
	}
	for (i = 0; i < qd->ndups; i++) {
		struct qexp *e = qd->dups[i];
		const struct qexp *like = qd->exps[qd->dup_of[i]];

		e->out = like->out;
		snprintf(e->status, sizeof(e->status), "%s", like->status);
		snprintf(e->diag, sizeof(e->diag), "%s", like->diag);
		e->diag_reply = like->diag_reply;
		snprintf(e->relay, sizeof(e->relay), "%s", like->relay);
		snprintf(e->tls, sizeof(e->tls), "%s", like->tls);
		e->relayed = like->relayed;
		e->dsn_passed = like->dsn_passed;
		if (e->out == OUT_DELIVERED) {
			atomic_fetch_add(&mq->q->ctr->delivered, 1);
			log_result(mq, rcpt_of(mq, e), e, "sent");
		}
	}
	if (txn->nrcpt > 0 && qd->exps[0]->node[0]) {
		/* one destination per transaction: its first recipient's route */
		struct qrcpt *qr = rcpt_of(mq, qd->exps[0]);
		const struct route *rt = &qr->rl.v[qd->exps[0] - qr->exps];

		nodes_delivered(mq->q->nodes, qd->exps[0]->node, rt->endpoints, rt->nendpoints,
				failed);
	}
	free(qd->rcpts);
	free(qd->rcpt_params);
	free(qd->exps);
	free(qd->results);
	free(qd->dups);
	free(qd->dup_of);
	free(qd);
	if (--mq->inflight == 0)
		msg_finish(mq);
}

/*
 * A transaction's addresses by hash (open addressing, at most half full):
 * each expansion for its destination is looked up there, one copy per
 * mailbox, in a probe or two however long the list (one of thousands to
 * one node meets a transaction's limit of addresses each time).
 */
struct addrset {
	size_t *slot;           /* index + 1 into rcpts; 0: empty */
	size_t mask;
	const char **rcpts;
};

static void
addrset_init(struct addrset *set, size_t max, const char **rcpts)
{
	size_t cap = 16;

	while (cap < 2 * max)
		cap *= 2;
	set->slot = xcalloc(cap, sizeof(*set->slot));
	set->mask = cap - 1;
	set->rcpts = rcpts;
}

/* Where addr is (*found) or would go. */
static size_t
addrset_find(const struct addrset *set, const char *addr, bool *found)
{
	size_t h = 14695981039346656037u, i;    /* FNV-1a */
	const unsigned char *p;

	for (p = (const unsigned char *)addr; *p; p++)
		h = (h ^ *p) * 1099511628211u;
	for (i = h & set->mask; set->slot[i] != 0; i = (i + 1) & set->mask)
		if (strcmp(set->rcpts[set->slot[i] - 1], addr) == 0) {
			*found = true;
			return i;
		}
	*found = false;
	return i;
}

static void
msg_deliver(struct qmsg *mq)
{
	struct qmgr *q = mq->q;
	struct addrset seen;
	size_t i, k, a, b, n, limit;

	mq->inflight++;         /* held until every transaction has started */
	for (i = 0; i < mq->nr; i++) {
		for (k = 0; k < mq->r[i].nexps; k++) {
			struct qexp *e = &mq->r[i].exps[k];
			struct route *rt = &mq->r[i].rl.v[k];
			struct qdest *qd;

			if (e->out != OUT_PENDING || e->claimed)
				continue;
			/* this expansion and later ones for the same destination, up to
			 * the transport's recipients per transaction; the rest go in
			 * further transactions */
			limit = (size_t)(rt->endpoints[0].proto == EP_SMTP ?
					 q->cf->smtp_destination_recipient_limit :
					 q->cf->lmtp_destination_recipient_limit);
			n = 0;
			for (a = i; a < mq->nr; a++)
				for (b = 0; b < mq->r[a].nexps; b++)
					if (mq->r[a].exps[b].out == OUT_PENDING && !mq->r[a].exps[b].claimed &&
					    strcmp(mq->r[a].exps[b].dest, e->dest) == 0)
						n++;
			if (n > limit)
				n = limit;
			qd = xcalloc(1, sizeof(*qd));
			qd->msg = mq;
			qd->rcpts = xcalloc(n, sizeof(*qd->rcpts));
			qd->rcpt_params = xcalloc(n, sizeof(*qd->rcpt_params));
			qd->exps = xcalloc(n, sizeof(*qd->exps));
			qd->results = xcalloc(n, sizeof(*qd->results));
			addrset_init(&seen, n, qd->rcpts);
			n = 0;
			for (a = i; a < mq->nr; a++) {
				for (b = 0; b < mq->r[a].nexps; b++) {
					struct qexp *x = &mq->r[a].exps[b];
					size_t at;
					bool dup;

					if (x->out != OUT_PENDING || x->claimed || strcmp(x->dest, e->dest) != 0)
						continue;
					/* one copy per mailbox, as Postfix's duplicate
					 * filter does: a second recipient that leads to
					 * an address already sent takes its result */
					at = addrset_find(&seen, x->addr, &dup);
					if (dup) {
						qd->dups = xrealloc(qd->dups, (qd->ndups + 1) * sizeof(*qd->dups));
						qd->dup_of = xrealloc(qd->dup_of,
								      (qd->ndups + 1) * sizeof(*qd->dup_of));
						qd->dups[qd->ndups] = x;
						qd->dup_of[qd->ndups++] = seen.slot[at] - 1;
						x->claimed = true;
						continue;
					}
					if (n == limit)
						continue;
					x->claimed = true;
					qd->rcpts[n] = x->addr;
					qd->rcpt_params[n] = mq->r[a].params;
					qd->exps[n] = x;
					seen.slot[at] = ++n;
				}
			}
			free(seen.slot);
			qd->txn.sender = mq->m.sender;
			qd->txn.sender_params = mq->sender_params;
			qd->txn.smtputf8 = mq->sp.smtputf8;
			qd->txn.utf8_headers = mq->utf8_headers;
			qd->txn.rcpt_params = qd->rcpt_params;
			qd->txn.rcpts = qd->rcpts;
			qd->txn.nrcpt = n;
			qd->txn.content_fd = mq->fd;
			qd->txn.content_offset = mq->m.content_offset;
			qd->txn.content_len = mq->m.content_len;
			qd->txn.eightbit = mq->eightbit;
			qd->txn.results = qd->results;
			qd->txn.done = dest_done;
			qd->txn.arg = qd;
			qd->smtp = rt->endpoints[0].proto == EP_SMTP;
			qd->start_usec = metrics_now();
			mq->inflight++;
			client_deliver(q->client, e->dest, rt->endpoints, rt->nendpoints, &qd->txn);
		}
	}
	if (--mq->inflight == 0)
		msg_finish(mq);
}

static void
routes_free(struct qmsg *mq)
{
	size_t i;

	for (i = 0; i < mq->nr; i++) {
		free(mq->r[i].exps);
		free(mq->r[i].params);
		route_list_free(&mq->r[i].rl);
	}
	free(mq->r);
	mq->r = NULL;
	mq->nr = 0;
}

/* Routes every pending recipient: fills mq->r. When a map lookup is under
 * way (ldap:) the message waits (route_wait) and is routed again, whole,
 * once an answer arrives: nothing has been delivered yet. */
static void
msg_route(struct qmsg *mq)
{
	struct qrcpt *qr;
	struct route *rt;
	struct dstr d;
	size_t i, k;
	unsigned hops;
	const char *why;

	routes_free(mq);
	mq->route_wait = false;
	hops = mq->hops;
	mq->r = xcalloc(mq->m.nrcpt, sizeof(*mq->r));
	for (i = 0; i < mq->m.nrcpt; i++) {
		if (mq->m.rcpts[i].state != RCPT_PENDING)
			continue;
		qr = &mq->r[mq->nr++];
		qr->index = i;
		/* the codec the SMTP server wrote them with: a failure here is a
		 * damaged file, said in the log, never a silent default */
		if (dsn_parse_rcpt_params(mq->m.rcpts[i].params, &qr->dsn, &why) < 0)
			msg_warn("%s: DSN parameters \"%.100s\" of <%s> ignored: %s", mq->id,
				 mq->m.rcpts[i].params, mq->m.rcpts[i].addr, why);
		/* the next hop gets them as the codec writes them, never raw */
		dstr_init(&d, 0);
		dsn_format_rcpt_params(&qr->dsn, &d);
		qr->params = d.s;       /* NULL when there are none */
		if (hops > (unsigned)mq->q->cf->hopcount_limit) {
			qr->exps = xcalloc(1, sizeof(*qr->exps));
			qr->nexps = 1;
			snprintf(qr->exps[0].addr, sizeof(qr->exps[0].addr), "%s", mq->m.rcpts[i].addr);
			exp_set(&qr->exps[0], OUT_BOUNCED, "5.4.6",
				"mail forwarding loop: too many Received: headers");
			continue;
		}
		router_resolve(mq->q->router, mq->m.rcpts[i].addr, &qr->rl, NULL);
		if (qr->rl.pending)
			mq->route_wait = true;
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
			case ROUTE_REMOTE:
				if (rt->nendpoints == 0) {
					exp_set(e, OUT_DEFERRED, "4.3.0", "no endpoints for this destination");
					break;
				}
				if (rt->kind == ROUTE_LOCAL && nodes_drained(mq->q->nodes, rt->node)) {
					/* RFC 3463 X.3.2: the host of the mailbox takes
					 * no messages; parked until it is undrained */
					char parked_why[ROUTER_NODE_MAX + 32];

					snprintf(parked_why, sizeof(parked_why), "node %s is drained", rt->node);
					exp_set(e, OUT_DEFERRED, "4.3.2", parked_why);
					e->parked = true;
					break;
				}
				e->out = OUT_PENDING;
				dest_key(rt, e->dest, sizeof(e->dest));
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

/* ---- slots ---- */

struct prefill {
	const char *spool_dir;
	uint64_t minfree;
	char ids[RECYCLE_PREFILL][QID_LEN + 1];
	int made, err;
};

static void
prefill_work(void *arg)
{
	struct prefill *p = arg;

	p->made = slots_fill(p->spool_dir, p->minfree, p->ids, RECYCLE_PREFILL);
	p->err = p->made < 0 ? errno : 0;
}

static void
prefill_done(void *arg)
{
	struct prefill *p = arg;

	if (p->made < 0)
		msg_warn("cannot make free slots in slots/: %s", strerror(p->err));
	free(p);
}

/* slots/ gets its first free slots on an I/O thread, while mail already
 * flows (a writer that finds none makes a new one, as always). */
static void
prefill_start(struct qmgr *q)
{
	struct prefill *p = xcalloc(1, sizeof(*p));
	size_t i;

	p->spool_dir = q->cf->spool_dir;
	p->minfree = (uint64_t)q->cf->queue_minfree;
	for (i = 0; i < RECYCLE_PREFILL; i++)
		qid_next(p->ids[i]);     /* on the loop: ids are not made on threads */
	iopool_run(q->io, prefill_work, prefill_done, p);
}

/* ---- taking messages in ---- */

/* The active set is bounded by count and by bytes (the bytes of the files
 * being delivered, which are read again for each transaction; only their
 * records are held in memory): past either bound new messages wait in
 * incoming/ until it has shrunk to half. */
static bool
active_full(const struct qmgr *q)
{
	return q->nactive >= q->cf->qmgr_message_active_limit ||
	       (q->nactive > 0 && q->active_bytes >= (uint64_t)q->cf->qmgr_message_active_bytes);
}

void
msg_release_slot(struct qmgr *q, size_t bytes)
{
	q->nactive--;
	q->active_bytes -= bytes;
	if (q->backlog && q->nactive < q->cf->qmgr_message_active_limit / 2 + 1 &&
	    q->active_bytes <= (uint64_t)q->cf->qmgr_message_active_bytes / 2) {
		q->backlog = false;
		scan_dir(q, D_INCOMING, false);
	}
	if (q->stopping && q->nactive == 0)
		event_base_loopexit(q->base, NULL);
}

/*
 * A queue name whose slot holds another message: after a power failure,
 * the removal of a finished message's name can be lost while the slot,
 * marked freed and written over by a new message, kept the new data (its
 * sync does not wait for the names). The slot is that message's: it is
 * linked into incoming/ under its own id, if it has no name there yet,
 * and the stale name and its status file go (read as this message's,
 * they would skip recipients the old one had done). The new link is not
 * waited for: lost with the stale name, it leaves the slot with one link,
 * which slots_recover links back at the next start. An imported file
 * keeps its old id inside under a new name, but it is no slot (one link).
 */
static bool
stale_name(struct qmgr *q, const char *id, const struct spool_file *f)
{
	struct stat sb;

	if (f->m.qid[0] == '\0' || strcmp(f->m.qid, id) == 0 || !qid_valid(f->m.qid) ||
	    fstat(f->fd, &sb) < 0 || sb.st_nlink < 2)
		return false;
	if (linkat(q->dirfd[D_ACTIVE], id, q->dirfd[D_INCOMING], f->m.qid, 0) < 0 &&
	    errno != EEXIST) {
		msg_warn("%s: its slot holds message %s, which cannot be linked into incoming/: "
			 "%s; left in active/", id, f->m.qid, strerror(errno));
		return true;
	}
	msg_warn("%s: a stale queue name (a removal lost to a crash): its slot holds message "
		 "%s, queued under its own id", id, f->m.qid);
	unlinkat(q->dirfd[D_DEFER], id, 0);
	unlinkat(q->dirfd[D_ACTIVE], id, 0);
	return true;
}

/* Claims `id` from folder `from` (rename into active/, unless it is there
 * already) and starts its delivery. Returns 0, or -1 when it was not there
 * or the active limit is reached (then the backlog flag is set). */
static int
msg_load(struct qmgr *q, int from, const char *id)
{
	struct spool_file f;
	struct qstatus st;
	struct qmsg *mq;
	char path[4096];
	const char *why;
	int rc;

	if (q->stopping)
		return -1;
	if (active_full(q)) {
		q->backlog = true;
		return -1;
	}
	if (from != D_ACTIVE &&
	    renameat2(q->dirfd[from], id, q->dirfd[D_ACTIVE], id, RENAME_NOREPLACE) < 0) {
		/* gone, or someone else took it; never over another file */
		if (errno == EEXIST)
			msg_warn("%s: active/%s exists already: left where it is", id, id);
		return -1;
	}
	/* a file that cannot be read now stays in active/: the next scan of
	 * active/ tries again; only one that does not parse goes to corrupt/ */
	snprintf(path, sizeof(path), "%s/active/%s", q->cf->spool_dir, id);
	if (spool_take(q->cf->spool_dir, path, NULL, &f) < 0)
		return -1;
	if (stale_name(q, id, &f)) {
		spool_file_free(&f);
		return -1;
	}
	snprintf(path, sizeof(path), "%s/defer/%s", q->cf->spool_dir, id);
	if ((rc = qstatus_read(path, &st)) == -2) {
		msg_warn("%s: read %s: %s; left in active/, to be read again later", id, path,
			 strerror(errno));
		spool_file_free(&f);
		return -1;
	}
	if (rc < 0)
		msg_warn("%s: unparseable status file %s ignored", id, path);
	mq = xcalloc(1, sizeof(*mq));
	mq->q = q;
	snprintf(mq->id, sizeof(mq->id), "%s", id);
	mq->fd = f.fd;
	mq->len = f.m.file_size;
	mq->m = f.m;
	free(f.head);
	mq->st = st;
	if (dsn_parse_sender_params(mq->m.sender_params, &mq->sp, &why) < 0)
		msg_warn("%s: sender DSN parameters \"%.100s\" ignored: %s", id,
			 mq->m.sender_params, why);
	{
		struct dsn_sender_params dp = mq->sp;

		dp.smtputf8 = false;    /* the client decides on SMTPUTF8 itself */
		mq->sender_params = spool_sender_params(&dp);
	}
	mq->start_usec = now_usec();
	if (scan_content(mq) < 0) {
		/* left in active/: the next scan of active/ tries again */
		msg_warn("%s: read its content: %s; left in active/, to be read again later",
			 id, strerror(errno));
		msg_free(mq);
		return -1;
	}
	mq->next = q->msgs;
	if (q->msgs)
		q->msgs->prev = mq;
	q->msgs = mq;
	q->nactive++;
	q->active_bytes += mq->len;
	msg_route(mq);
	if (mq->route_wait) {
		map_waiter_busy(q->waiter, true);
		return 0;
	}
	msg_deliver(mq);
	return 0;
}

/* An ldap: answer arrived (or a second passed): route the waiting
 * messages again; those now routed are delivered. */
static void
on_lookup_answer(void *arg)
{
	struct qmgr *q = arg;
	struct qmsg *mq, *next;
	bool waiting = false;

	for (mq = q->msgs; mq; mq = next) {
		next = mq->next;
		if (!mq->route_wait)
			continue;
		msg_route(mq);
		if (mq->route_wait)
			waiting = true;
		else
			msg_deliver(mq);
	}
	map_waiter_busy(q->waiter, waiting);
}

void
qmgr_pickup(struct qmgr *q, const char *id)
{
	if (qid_valid(id))
		(void)msg_load(q, D_INCOMING, id);
}

static struct qmsg *
find_active(struct qmgr *q, const char *id)
{
	struct qmsg *mq;

	for (mq = q->msgs; mq; mq = mq->next)
		if (strcmp(mq->id, id) == 0)
			return mq;
	return NULL;
}

static int
strcmp_ptr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Picks up every file in folder d (deferred/: only those due, by mtime). */
static void
scan_dir(struct qmgr *q, int d, bool due_only)
{
	char **ids = NULL;
	size_t n = 0, cap = 0, i;
	struct dirent *de;
	struct stat sb;
	time_t now = time(NULL);
	DIR *dir;

	if ((dir = dir_read(q->dirfd[d])) == NULL)
		return;
	while ((de = readdir(dir)) != NULL) {
		if (!qid_valid(de->d_name))
			continue;
		if (d == D_ACTIVE && find_active(q, de->d_name))
			continue;       /* being delivered right now */
		if (due_only && (fstatat(q->dirfd[d], de->d_name, &sb, 0) < 0 || sb.st_mtime > now))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			ids = xrealloc(ids, cap * sizeof(*ids));
		}
		ids[n++] = xstrdup(de->d_name);
	}
	closedir(dir);
	/* oldest first: ids sort by arrival */
	if (n > 1)
		qsort(ids, n, sizeof(*ids), strcmp_ptr);
	for (i = 0; i < n; i++) {
		if (active_full(q)) {
			q->backlog = d == D_INCOMING || q->backlog;
			free(ids[i]);
			continue;
		}
		(void)msg_load(q, d, ids[i]);
		free(ids[i]);
	}
	free(ids);
}

/* ---- control (called by control.c for sorterctl) ---- */

int
qmgr_control(struct qmgr *q, enum queue_op op, const char *id, struct dstr *out,
	     struct queue_batch *batch)
{
	struct qmsg *mq = id ? find_active(q, id) : NULL;
	int rc;

	switch (op) {
	case QOP_DELETE:
		if (mq) {
			mq->delete_req = true;
			dstr_printf(out, "%s: will be removed when the delivery under way ends\n", id);
			return 0;
		}
		return queue_op_offline(q->dirfd, op, id, out, batch);
	case QOP_HOLD:
		if (mq) {
			mq->hold_req = true;
			dstr_printf(out, "%s: will be held when the delivery under way ends\n", id);
			return 0;
		}
		return queue_op_offline(q->dirfd, op, id, out, batch);
	case QOP_RELEASE:
		if (mq) {
			/* its file may be on its way to hold/ right now: releasing
			 * it from there would load a second copy beside this one */
			dstr_printf(out, "%s: delivery under way, not on hold%s\n", id,
				    mq->hold_req ? " yet" : "");
			return -1;
		}
		rc = queue_op_offline(q->dirfd, op, id, out, batch);
		if (rc == 0 && batch == NULL)
			qmgr_pickup(q, id);     /* in a batch: once synced */
		return rc;
	case QOP_FLUSH:
		if (id == NULL) {
			scan_dir(q, D_DEFERRED, false);
			scan_dir(q, D_INCOMING, false);
			dstr_printf(out, "deferred mail is being retried\n");
			return 0;
		}
		if (mq) {
			dstr_printf(out, "%s: delivery under way\n", id);
			return 0;
		}
		if (msg_load(q, D_DEFERRED, id) == 0 || msg_load(q, D_INCOMING, id) == 0) {
			dstr_printf(out, "%s: being retried\n", id);
			return 0;
		}
		/* say why: a full active queue takes no message, a held one waits */
		if (active_full(q) && (faccessat(q->dirfd[D_DEFERRED], id, F_OK, 0) == 0 ||
				       faccessat(q->dirfd[D_INCOMING], id, F_OK, 0) == 0))
			dstr_printf(out, "%s: not retried: the active queue is full (%d messages "
				    "in delivery); flush it again later\n", id, q->nactive);
		else if (faccessat(q->dirfd[D_HOLD], id, F_OK, 0) == 0)
			dstr_printf(out, "%s: on hold; release it to deliver it\n", id);
		else
			dstr_printf(out, "%s: not in the deferred queue\n", id);
		return -1;
	}
	return -1;
}

int
qmgr_control_sync(struct qmgr *q, struct queue_batch *batch, struct dstr *out)
{
	bool released = batch->unsynced & (1u << D_INCOMING);

	if (queue_batch_end(q->dirfd, batch, out) < 0)
		return -1;
	if (released)           /* delivered from now */
		scan_dir(q, D_INCOMING, false);
	return 0;
}

void
qmgr_resume(struct qmgr *q)
{
	struct qmsg *mq;

	/* an attempt under way may still park its recipients (routed before
	 * the undrain, or its results not yet on disk): the scan below cannot
	 * see it, so it is retried when it lands in deferred/ */
	for (mq = q->msgs; mq != NULL; mq = mq->next)
		mq->resume_req = true;
	scan_dir(q, D_DEFERRED, false);
	scan_dir(q, D_INCOMING, false);
}

void
qmgr_retry_now(struct qmgr *q, const char *id)
{
	(void)msg_load(q, D_DEFERRED, id);
}

void
qmgr_stats(struct qmgr *q, struct dstr *out)
{
	struct counters *c = q->ctr;

	dstr_printf(out, "connections %llu\nconnections_refused %llu\nmessages_in %llu\n"
		    "messages_rejected %llu\nrcpts_delivered %llu\nrcpt_deferrals %llu\n"
		    "rcpts_bounced %llu\ndsns_queued %llu\nmessages_active_in_memory %d\n",
		    (unsigned long long)c->connections, (unsigned long long)c->refused,
		    (unsigned long long)c->messages_in, (unsigned long long)c->rejected,
		    (unsigned long long)c->delivered, (unsigned long long)c->deferred,
		    (unsigned long long)c->bounced, (unsigned long long)c->dsn_sent, q->nactive);
	queue_count_dirs(q->dirfd, out);
	dstr_printf(out, "log_lines_dropped %llu\n", (unsigned long long)log_dropped());
}

/* ---- events ---- */

static void
on_wake(evutil_socket_t fd, short what, void *arg)
{
	struct qmgr *q = arg;
	char buf[64];
	ssize_t n;
	int i;

	struct timeval tv = { 0, CATCHUP_SCAN_MSEC * 1000 };

	for (i = 0; i < 256; i++) {
		n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
		if (n <= 0)
			break;
		buf[n] = '\0';
		qmgr_pickup(q, buf);
	}
	/* while hints arrive, workers may find the socket full (a datagram
	 * queue holds few): a scan soon after picks up what they could not say */
	if (i > 0 && !evtimer_pending(q->catchup_ev, NULL))
		evtimer_add(q->catchup_ev, &tv);
}

static void
on_scan(evutil_socket_t fd, short what, void *arg)
{
	scan_dir(arg, D_INCOMING, false);
}

static void
on_defer_scan(evutil_socket_t fd, short what, void *arg)
{
	/* a message whose results could not be recorded stays in active/:
	 * it is tried again here rather than only at the next start */
	scan_dir(arg, D_ACTIVE, false);
	scan_dir(arg, D_DEFERRED, true);
}

static void
qmgr_stop(struct qmgr *q, int grace_seconds)
{
	struct timeval grace = { grace_seconds, 0 };

	q->stopping = true;
	if (q->nactive == 0) {
		event_base_loopexit(q->base, NULL);
		return;
	}
	/* deliveries still under way after the grace period stay in active/
	 * and are retried at the next start */
	msg_info("stopping after %d messages in delivery", q->nactive);
	event_base_loopexit(q->base, &grace);
}

static void
on_term(evutil_socket_t fd, short what, void *arg)
{
	qmgr_stop(arg, STOP_GRACE_SECONDS);
}

static void
on_master_gone(evutil_socket_t fd, short what, void *arg)
{
	struct qmgr *q = arg;
	ssize_t n;
	char c;

	n = read(fd, &c, 1);
	if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR)))
		return;         /* nothing is ever written: only EOF (or an error) counts */
	event_del(q->master_ev);
	msg_warn("the master process is gone: finishing %d message%s in delivery, then exiting",
		 q->nactive, q->nactive == 1 ? "" : "s");
	qmgr_stop(q, MASTER_GONE_GRACE_SECONDS);
}

/* The client saw an LHLO reply: smtpd workers learn it through the file. */
static void
on_hello_caps(const struct endpoint *ep, const struct ehlo_caps *caps, void *arg)
{
	struct qmgr *q = arg;
	char name[NODECAPS_KEY_MAX];

	if (ep->proto != EP_LMTP)
		return;
	if (nodecaps_record(q->caps, ep, caps, (unsigned long long)time(NULL)) == 1) {
		endpoint_format(ep, name, sizeof(name));
		msg_info("%s: LHLO capabilities recorded: smtputf8=%s, 8bitmime=%s, pipelining=%s",
			 name, caps->smtputf8 ? "yes" : "no", caps->eightbitmime ? "yes" : "no",
			 caps->pipelining ? "yes" : "no");
	}
}

static int
wake_socket(const char *spool_dir)
{
	struct sockaddr_un sun;
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/qmgr.sock", spool_dir) >=
	    sizeof(sun.sun_path))
		msg_fatal("spool_dir %s: path too long for a socket", spool_dir);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		msg_fatal("socket: %s", strerror(errno));
	unlink(sun.sun_path);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
		msg_fatal("bind %s: %s", sun.sun_path, strerror(errno));
	chmod(sun.sun_path, 0600);
	return fd;
}

int
qmgr_main(struct config *cf, struct counters *ctr, int master_fd)
{
	struct qmgr q;
	struct client_settings ls;
	struct timeval scan_tv = { INCOMING_SCAN_SECONDS, 0 }, defer_tv = { cf->queue_run_delay, 0 };
	char err[512], path[4096];

	memset(&q, 0, sizeof(q));
	q.cf = cf;
	q.ctr = ctr;
	qid_init(QID_SLOT_QMGR, spool_newest_qid(cf->spool_dir));
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	snprintf(path, sizeof(path), "%s/qmgr.lock", cf->spool_dir);
	q.lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (q.lock_fd < 0 || flock(q.lock_fd, LOCK_EX) < 0)
		msg_fatal("lock %s: %s", path, strerror(errno));
	if (queue_open_dirs(cf->spool_dir, q.dirfd) < 0)
		msg_fatal("open the spool %s: %s", cf->spool_dir, strerror(errno));
	snprintf(path, sizeof(path), "%s/active", cf->spool_dir);
	q.active_ds = groupsync_open_dir(path);
	snprintf(path, sizeof(path), "%s/defer", cf->spool_dir);
	q.defer_ds = groupsync_open_dir(path);
	q.base = event_base_new();
	if (q.base == NULL)
		msg_fatal("cannot create event loop");
	q.router = router_open(cf, err, sizeof(err));
	if (q.router == NULL)
		msg_fatal("router: %s", err);
	q.waiter = map_waiter_new(q.base, on_lookup_answer, &q);
	router_set_wakeup(q.router, map_waiter_fd(q.waiter));
	memset(&ls, 0, sizeof(ls));
	ls.per_dest_concurrency = cf->lmtp_destination_concurrency_limit;
	ls.smtp_per_dest_concurrency = cf->smtp_destination_concurrency_limit;
	ls.smtp_port = (unsigned short)cf->smtp_port;
	ls.smtp_line_length_limit = cf->smtp_line_length_limit;
	ls.smtp_tls_level = (enum tls_level)cf->smtp_tls_security_level;
	ls.smtp_tls_ca_file = cf->smtp_tls_ca_file;
	ls.connect_timeout = cf->lmtp_connect_timeout;
	ls.cmd_timeout = cf->lmtp_timeout;
	ls.data_timeout = cf->lmtp_timeout * 2;
	ls.idle_timeout = cf->lmtp_idle_timeout;
	ls.dead_endpoint_seconds = cf->endpoint_dead_time;
	ls.helo_name = cf->hostname;
	ls.self = cf->listen;
	ls.nself = cf->nlisten;
	ls.dns_servers = cf->dns_servers;
	q.caps = nodecaps_open(cf->spool_dir);
	nodecaps_load(q.caps);
	ls.hello_caps = on_hello_caps;
	ls.hello_caps_arg = &q;
	q.client = client_pool_new(q.base, &ls);
	q.commit = commit_pool_create(q.base, cf->spool_dir, 4, (uint64_t)cf->queue_minfree);
	q.io = iopool_create(q.base, 8);
	prefill_start(&q);

	q.wake_fd = wake_socket(cf->spool_dir);
	q.wake_ev = event_new(q.base, q.wake_fd, EV_READ | EV_PERSIST, on_wake, &q);
	event_add(q.wake_ev, NULL);
	q.scan_ev = event_new(q.base, -1, EV_PERSIST, on_scan, &q);
	q.catchup_ev = evtimer_new(q.base, on_scan, &q);
	event_add(q.scan_ev, &scan_tv);
	q.defer_ev = event_new(q.base, -1, EV_PERSIST, on_defer_scan, &q);
	event_add(q.defer_ev, &defer_tv);
	q.term_ev = evsignal_new(q.base, SIGTERM, on_term, &q);
	event_add(q.term_ev, NULL);
	q.master_ev = event_new(q.base, master_fd, EV_READ | EV_PERSIST, on_master_gone, &q);
	event_add(q.master_ev, NULL);
	q.nodes = nodes_new(&q);
	q.control = control_start(&q, q.base, cf->spool_dir);

	/* what a crash left in flight, then what waits, then what is due */
	scan_dir(&q, D_ACTIVE, false);
	scan_dir(&q, D_INCOMING, false);
	scan_dir(&q, D_DEFERRED, true);

	event_base_dispatch(q.base);

	control_stop(q.control);
	client_pool_free(q.client);
	commit_pool_destroy(q.commit);
	iopool_destroy(q.io);
	nodes_free(q.nodes);
	event_free(q.wake_ev);
	event_free(q.scan_ev);
	event_free(q.catchup_ev);
	event_free(q.defer_ev);
	event_free(q.term_ev);
	event_free(q.master_ev);
	close(q.wake_fd);
	router_set_wakeup(q.router, -1);
	map_waiter_free(q.waiter);
	router_close(q.router);
	nodecaps_close(q.caps);
	groupsync_close(q.active_ds);
	groupsync_close(q.defer_ds);
	queue_close_dirs(q.dirfd);
	event_base_free(q.base);
	close(q.lock_fd);
	return 0;
}
