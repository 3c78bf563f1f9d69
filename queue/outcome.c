/*
 * outcome.c - what the queue manager does once a delivery attempt has
 * ended: DSNs for what bounced, was delayed or asked for success notices
 * (committed before anything counts as final), then the durable record on
 * an I/O thread: recipient marks, the status file and a move to deferred/
 * or hold/, or the removal of a finished file.
 *
 * This file must never mark a recipient bounced before its DSN is queued,
 * and never remove a file while a recipient in it is pending.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "router/router.h"
#include "queue/qmgr.h"

/* ---- finishing an attempt ---- */

struct dsnjob {
	struct qmsg *mq;
	int kind;
	struct qexp **exps;     /* the expansions this DSN reports */
	size_t n;
};

static bool
notify_wants(const struct qrcpt *qr, int bit)
{
	if (qr->dsn.notify == 0)        /* RFC 3461 default: FAILURE, DELAY */
		return bit == DSN_NOTIFY_FAILURE || bit == DSN_NOTIFY_DELAY;
	if (qr->dsn.notify & DSN_NOTIFY_NEVER)
		return false;
	return (qr->dsn.notify & bit) != 0;
}

static void disk_phase(struct qmsg *mq);

static void
dsn_committed(struct commit_job *job, void *arg)
{
	struct dsnjob *dj = arg;
	struct qmsg *mq = dj->mq;
	size_t i;

	if (job->error == 0) {
		msg_info("%s: sender %s notification: %s", mq->id,
			 dj->kind == DSN_FAILURE ? "non-delivery" :
			 dj->kind == DSN_DELAY ? "delay" : "delivery", job->id);
		atomic_fetch_add(&mq->q->ctr->dsn_sent, 1);
		/* the new message is ours to deliver: take it now */
		qmgr_pickup(mq->q, job->id);
	} else {
		msg_warn("%s: cannot queue a DSN: %s", mq->id, strerror(job->error));
		/* without its DSN a bounce is not final: try again later */
		for (i = 0; i < dj->n; i++)
			if (dj->exps[i]->out == OUT_BOUNCED)
				dj->exps[i]->out = OUT_DEFERRED;
		if (dj->kind == DSN_DELAY)
			mq->st.warned = false;
	}
	dstr_free(&job->head);
	dstr_free(&job->content);
	free(job);
	free(dj->exps);
	free(dj);
	if (--mq->inflight == 0)
		disk_phase(mq);
}

/* Seconds since arrival, less the time spent parked (a drained node):
 * what the queue lifetime, delay notices and the backoff count. A clock
 * set back behind the arrival makes it 0, not a lifetime long gone. */
static uint64_t
msg_age(const struct qmsg *mq)
{
	uint64_t now = now_usec();
	uint64_t age = now > mq->m.arrival_usec ? (now - mq->m.arrival_usec) / 1000000u : 0;
	uint64_t parked = qstatus_parked(&mq->st, (unsigned long long)time(NULL));

	return age > parked ? age - parked : 0;
}

/* How long the message may stay in the queue, in seconds of msg_age. */
static int
msg_lifetime(const struct qmsg *mq)
{
	const struct config *cf = mq->q->cf;

	return sender_is_null(mq) ? cf->bounce_queue_lifetime : cf->maximal_queue_lifetime;
}

/* Queues one DSN about the listed expansions, to `to` from <>. */
static void
queue_dsn(struct qmsg *mq, int kind, struct qexp **exps, size_t n, const char *to)
{
	struct qmgr *q = mq->q;
	struct dsn_entry *ents = xcalloc(n, sizeof(*ents));
	struct dsn_report rep;
	struct spool_envelope env;
	struct commit_job *job = xcalloc(1, sizeof(*job));
	struct dsnjob *dj = xcalloc(1, sizeof(*dj));
	uint64_t now = now_usec(), age = msg_age(mq), life = (uint64_t)msg_lifetime(mq);
	char mid[64];
	const char *rcpt = to;
	unsigned char *payload;
	size_t i, plen;

	memset(&rep, 0, sizeof(rep));
	rep.reporting_mta = q->cf->hostname;
	rep.queue_id = mq->id;
	rep.arrival_usec = mq->m.arrival_usec;
	rep.sender = to;
	rep.envid = mq->sp.envid[0] ? mq->sp.envid : NULL;
	rep.ret = mq->sp.ret;
	rep.kind = kind;
	/* the whole message goes back only when it is small; a bigger one is
	 * returned as its header section, read from at most the first
	 * bounce_size_limit bytes (as Postfix's bounce_size_limit) */
	plen = mq->m.content_len;
	if (plen > (size_t)q->cf->bounce_size_limit) {
		plen = (size_t)q->cf->bounce_size_limit;
		rep.ret = DSN_RET_HDRS;
	}
	payload = xmalloc(plen + 1);
	if (spool_content_read(mq->fd, &mq->m, 0, payload, plen) < 0) {
		/* the report goes out all the same, without the message */
		msg_warn("%s: cannot read the content for a DSN: %s", mq->id, strerror(errno));
		plen = 0;
	}
	rep.content = payload;
	rep.content_len = plen;
	for (i = 0; i < n; i++) {
		struct qrcpt *qr = rcpt_of(mq, exps[i]);

		ents[i].final_rcpt = exps[i]->addr;
		if (qr->dsn.orcpt[0]) {
			ents[i].orcpt_type = qr->dsn.orcpt_type;
			ents[i].orcpt = qr->dsn.orcpt;
		}
		ents[i].action = kind == DSN_FAILURE ? "failed" : kind == DSN_DELAY ? "delayed" :
		    exps[i]->relayed ? "relayed" : "delivered";
		ents[i].status = exps[i]->status;
		ents[i].remote_mta = exps[i]->relay[0] ? exps[i]->relay : NULL;
		ents[i].diagnostic = exps[i]->diag[0] ? exps[i]->diag : NULL;
		ents[i].diagnostic_is_reply = exps[i]->diag_reply;
		ents[i].last_attempt_usec = now;
		/* the lifetime's end moves on by the time spent parked */
		if (kind == DSN_DELAY)
			ents[i].will_retry_until_usec = now + (life > age ? life - age : 0) * 1000000u;
	}
	qid_next(job->id);
	snprintf(mid, sizeof(mid), "%s.%s", job->id, mq->id);
	dstr_init(&job->content, 0);
	dsn_build(&rep, ents, n, mid, &job->content);
	free(payload);
	free(ents);
	memset(&env, 0, sizeof(env));
	env.id = job->id;
	env.arrival_usec = now;
	env.client = "127.0.0.1";
	env.helo = q->cf->hostname;
	env.proto = "DSN";
	env.sender = "";
	env.rcpts = &rcpt;
	env.nrcpt = 1;
	dstr_init(&job->head, 0);
	spool_encode_head(&env, job->content.len, &job->head);
	job->done = dsn_committed;
	job->arg = dj;
	dj->mq = mq;
	dj->kind = kind;
	dj->exps = xcalloc(n, sizeof(*dj->exps));
	memcpy(dj->exps, exps, n * sizeof(*exps));
	dj->n = n;
	mq->inflight++;
	commit_submit(q->commit, job);
}

void
msg_finish(struct qmsg *mq)
{
	struct qmgr *q = mq->q;
	uint64_t age = msg_age(mq);
	int lifetime = msg_lifetime(mq);
	struct qexp **fail, **delay, **succ;
	size_t nfail = 0, ndelay = 0, nsucc = 0, total = 0, i, k;
	const char *to;

	for (i = 0; i < mq->nr; i++)
		total += mq->r[i].nexps;
	fail = xcalloc(total + 1, sizeof(*fail));
	delay = xcalloc(total + 1, sizeof(*delay));
	succ = xcalloc(total + 1, sizeof(*succ));
	for (i = 0; i < mq->nr; i++) {
		struct qrcpt *qr = &mq->r[i];

		for (k = 0; k < qr->nexps; k++) {
			struct qexp *e = &qr->exps[k];

			/* a parked recipient (its node is drained) waits on
			 * purpose: it never expires, and its sender hears nothing */
			if (e->out == OUT_DEFERRED && !e->parked && lifetime > 0 &&
			    age >= (uint64_t)lifetime) {
				char d[sizeof(e->diag) + 64];

				snprintf(d, sizeof(d), "delivery time expired; last error: %s", e->diag);
				snprintf(e->diag, sizeof(e->diag), "%.*s", (int)sizeof(e->diag) - 1, d);
				e->diag_reply = false;
				e->out = OUT_BOUNCED;
			}
			if (e->out == OUT_DEFERRED) {
				atomic_fetch_add(&q->ctr->deferred, 1);
				log_result(mq, qr, e, "deferred");
				if (!e->parked && notify_wants(qr, DSN_NOTIFY_DELAY))
					delay[ndelay++] = e;
			} else if (e->out == OUT_BOUNCED) {
				atomic_fetch_add(&q->ctr->bounced, 1);
				log_result(mq, qr, e, "bounced");
				if (notify_wants(qr, DSN_NOTIFY_FAILURE))
					fail[nfail++] = e;
			} else if (e->out == OUT_DELIVERED && notify_wants(qr, DSN_NOTIFY_SUCCESS) &&
				   !e->dsn_passed) {
				/* passed on with NOTIFY: the next hop sends the success DSN */
				succ[nsucc++] = e;
			}
		}
	}
	mq->inflight++;         /* held while DSNs are queued */
	to = mq->m.sender;
	if (sender_is_null(mq)) {
		/* never bounce a bounce: the postmaster gets failures, or nobody */
		if (nfail && q->cf->bounce_notice_recipient)
			queue_dsn(mq, DSN_FAILURE, fail, nfail, q->cf->bounce_notice_recipient);
		else if (nfail)
			msg_info("%s: undeliverable DSN discarded (null sender, no bounce_notice_recipient)",
				 mq->id);
	} else {
		if (nfail)
			queue_dsn(mq, DSN_FAILURE, fail, nfail, to);
		if (nsucc)
			queue_dsn(mq, DSN_SUCCESS, succ, nsucc, to);
		if (ndelay && !mq->st.warned && q->cf->delay_warning_time > 0 &&
		    age >= (uint64_t)q->cf->delay_warning_time) {
			mq->st.warned = true;
			queue_dsn(mq, DSN_DELAY, delay, ndelay, to);
		}
	}
	free(fail);
	free(delay);
	free(succ);
	if (--mq->inflight == 0)
		disk_phase(mq);
}

/* ---- making the results durable (on an I/O thread) ----
 *
 * What becomes of the file (its fate) is decided on the loop thread when
 * the job is made, from the results and the administrator's requests
 * (hold_req, delete_req) as they stand then; the I/O thread reads only the
 * job. A request that arrives while the job runs is compared with that
 * fate when the job is done and, if the job did not already do it, is
 * carried out by a follow-up job on the file where the first one left it.
 * So a `sorterctl hold` or `delete` answered "will be held/removed" is
 * never lost to a result being written at the same moment. */

enum qfate {
	QFATE_DEFER,            /* to deferred/, its status beside it */
	QFATE_HOLD,             /* to hold/, its status beside it */
	QFATE_REMOVE,           /* every recipient final: unlinked */
	QFATE_DELETE,           /* the administrator's delete: unlinked */
};

struct diskjob {
	struct qmsg *mq;
	enum qfate fate;        /* decided on the loop thread */
	size_t *offsets;        /* recipient records that became final */
	char *types;
	size_t nmarks;
	int err;
	bool parked_any;        /* some recipient waits on a drained node */
	/* a follow-up for a late request: the operation, and what it said */
	bool late;
	enum queue_op late_op;
	struct dstr late_out;
};

static void
disk_work(void *arg)
{
	struct diskjob *dj = arg;
	struct qmsg *mq = dj->mq;
	struct qmgr *q = mq->q;
	int afd = q->dirfd[D_ACTIVE], fd, to, err = 0;
	struct timespec ts[2];
	size_t i;

	if (dj->fate == QFATE_REMOVE || dj->fate == QFATE_DELETE) {
		/* every recipient is final (or the admin said so): the name
		 * goes, and a slot is marked freed, to be written over by a new
		 * message (recycle.c). A delivered message's removal is not
		 * waited for (as under Postfix): a power failure can bring back
		 * what was delivered in the last seconds, to be delivered again,
		 * never lost. The administrator's delete is made durable. */
		err = spool_remove(afd, mq->id, dj->fate == QFATE_DELETE) < 0 ? errno : 0;
		if (err == ENOENT)
			err = 0;
		unlinkat(q->dirfd[D_DEFER], mq->id, 0);
		if (err == 0 && dj->fate == QFATE_DELETE)
			err = groupsync_wait(q->active_ds);
		dj->err = err;
		return;
	}
	/* recipients that became final: marks first, durable, then the status */
	if (dj->nmarks) {
		fd = openat(afd, mq->id, O_WRONLY | O_CLOEXEC);
		if (fd < 0) {
			dj->err = errno;
			return;
		}
		for (i = 0; i < dj->nmarks && err == 0; i++)
			if (pwrite(fd, &dj->types[i], 1, (off_t)dj->offsets[i]) != 1)
				err = errno ? errno : EIO;
		if (err == 0 && fdatasync(fd) < 0)
			err = errno;
		close(fd);
		if (err) {
			dj->err = err;
			return;
		}
	}
	/* a file of the same name there (planted, or left over) is neither
	 * replaced nor given this message's status: the message stays in
	 * active/, retried at the next queue run */
	to = q->dirfd[dj->fate == QFATE_HOLD ? D_HOLD : D_DEFERRED];
	if (faccessat(to, mq->id, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
		dj->err = EEXIST;
		return;
	}
	err = qstatus_write(q->dirfd[D_DEFER], q->defer_ds, mq->id, &mq->st);
	if (err) {
		dj->err = err;
		return;
	}
	ts[0].tv_sec = ts[1].tv_sec = mq->next_retry;
	ts[0].tv_nsec = ts[1].tv_nsec = 0;
	utimensat(afd, mq->id, ts, 0);
	if (renameat2(afd, mq->id, to, mq->id, RENAME_NOREPLACE) < 0)
		dj->err = errno;
}

/* The follow-up: the same file operation sorterctl uses when the message
 * is not in memory, wherever the first job left the file. */
static void
late_work(void *arg)
{
	struct diskjob *dj = arg;
	struct qmsg *mq = dj->mq;

	dstr_reset(&dj->late_out);
	if (queue_op_offline(mq->q->dirfd, dj->late_op, mq->id, &dj->late_out, NULL) < 0) {
		dj->err = EIO;
		return;
	}
	dj->err = 0;
	dj->fate = dj->late_op == QOP_DELETE ? QFATE_DELETE : QFATE_HOLD;
}

/* A request the finished job did not carry out: *op, what must follow. */
static bool
late_request(const struct qmsg *mq, const struct diskjob *dj, enum queue_op *op)
{
	bool gone = dj->err == 0 && (dj->fate == QFATE_REMOVE || dj->fate == QFATE_DELETE);
	bool held = dj->err == 0 && dj->fate == QFATE_HOLD;

	if (dj->late && dj->err)
		return false;   /* a follow-up that failed is logged, not tried again */
	if (mq->delete_req && !gone) {
		*op = QOP_DELETE;
		return true;
	}
	if (mq->hold_req && !gone && !held) {
		*op = QOP_HOLD;
		return true;
	}
	return false;
}

static void
disk_done(void *arg)
{
	struct diskjob *dj = arg;
	struct qmsg *mq = dj->mq;
	struct qmgr *q = mq->q;
	enum queue_op op;
	char id[QID_LEN + 1];
	bool retry;

	if (dj->late && dj->err)
		msg_warn("%s: cannot carry out the %s request: %s", mq->id,
			 dj->late_op == QOP_DELETE ? "delete" : "hold",
			 dj->late_out.s ? dj->late_out.s : "failed");
	else if (dj->late)
		;       /* queue_op_offline() said what it did */
	else if (dj->err == EEXIST)
		msg_warn("%s: %s/%s exists already: the message stays in active/", mq->id,
			 dj->fate == QFATE_HOLD ? "hold" : "deferred", mq->id);
	else if (dj->err)
		msg_warn("%s: cannot record delivery results: %s (the message stays in active/)",
			 mq->id, strerror(dj->err));
	else if (dj->fate == QFATE_DELETE)
		msg_info("%s: removed by the administrator", mq->id);
	else if (dj->fate == QFATE_REMOVE)
		msg_info("%s: removed", mq->id);
	else if (dj->fate == QFATE_HOLD)
		msg_info("%s: placed on hold", mq->id);
	if (late_request(mq, dj, &op)) {
		/* the message stays in memory (so in q->msgs) until this is done:
		 * nothing else picks the file up meanwhile */
		dj->late = true;
		dj->late_op = op;
		iopool_run(q->io, late_work, disk_done, dj);
		return;
	}
	if (mq->prev)
		mq->prev->next = mq->next;
	else
		q->msgs = mq->next;
	if (mq->next)
		mq->next->prev = mq->prev;
	retry = !dj->late && !dj->err && dj->fate == QFATE_DEFER && dj->parked_any &&
		mq->resume_req;
	snprintf(id, sizeof(id), "%s", mq->id);
	dstr_free(&dj->late_out);
	free(dj->offsets);
	free(dj->types);
	free(dj);
	msg_release_slot(q, mq->len);
	msg_free(mq);
	if (retry)
		qmgr_retry_now(q, id);
}

/* Parked recipients only: no backoff that grows with age (an undrain
 * retries them at once anyway), a look every minimal_backoff_time in case
 * the maps moved them elsewhere. */
static time_t
next_retry(const struct qmgr *q, const struct qmsg *mq, bool parked)
{
	time_t now = time(NULL);
	uint64_t b = parked ? 0 : msg_age(mq);

	if (b < (uint64_t)q->cf->minimal_backoff_time)
		b = (uint64_t)q->cf->minimal_backoff_time;
	if (b > (uint64_t)q->cf->maximal_backoff_time)
		b = (uint64_t)q->cf->maximal_backoff_time;
	return now + (time_t)b;
}

static void
disk_phase(struct qmsg *mq)
{
	struct diskjob *dj = xcalloc(1, sizeof(*dj));
	size_t i, k, pending = 0;
	bool parked = true;     /* every recipient still pending is parked */

	dj->mq = mq;
	dj->offsets = xcalloc(mq->nr + 1, sizeof(*dj->offsets));
	dj->types = xcalloc(mq->nr + 1, 1);
	for (i = 0; i < mq->nr; i++) {
		struct qrcpt *qr = &mq->r[i];
		bool final = true, bounced = false;
		const char *err = NULL;

		for (k = 0; k < qr->nexps; k++) {
			struct qexp *e = &qr->exps[k];

			if (e->out == OUT_DEFERRED || e->out == OUT_PENDING) {
				final = false;
				err = e->diag;
				parked = parked && e->parked;
				dj->parked_any = dj->parked_any || e->parked;
			} else if (e->out == OUT_BOUNCED) {
				bounced = true;
			}
		}
		if (qr->nexps == 0) {
			final = false;
			err = "no route";
			parked = false;
		}
		if (final) {
			dj->offsets[dj->nmarks] = mq->m.rcpts[qr->index].type_offset;
			dj->types[dj->nmarks] = bounced ? SPOOL_REC_RCPT_BOUNCED : SPOOL_REC_RCPT_DONE;
			dj->nmarks++;
			continue;
		}
		pending++;
		/* a partly final alias expansion: remember what is done */
		for (k = 0; k < qr->nexps; k++)
			if (qr->exps[k].out == OUT_DELIVERED || qr->exps[k].out == OUT_BOUNCED)
				qstatus_add_done(&mq->st, qr->index, qr->exps[k].addr);
		qstatus_set_error(&mq->st, qr->index, err ? err : "deferred");
	}
	if (pending) {
		if (!parked)
			mq->st.attempts++;
		mq->next_retry = next_retry(mq->q, mq, parked);
	}
	/* a parked period starts with the first attempt that parks all that
	 * is pending, and ends with the first that does not */
	if (pending && parked && mq->st.parked_since == 0)
		mq->st.parked_since = (unsigned long long)time(NULL);
	else if (!(pending && parked) && mq->st.parked_since != 0) {
		mq->st.parked = qstatus_parked(&mq->st, (unsigned long long)time(NULL));
		mq->st.parked_since = 0;
	}
	/* the requests as they stand now; later ones are disk_done()'s */
	dj->fate = mq->delete_req ? QFATE_DELETE : pending == 0 ? QFATE_REMOVE :
		   mq->hold_req ? QFATE_HOLD : QFATE_DEFER;
	dstr_init(&dj->late_out, 0);
	iopool_run(mq->q->io, disk_work, disk_done, dj);
}
