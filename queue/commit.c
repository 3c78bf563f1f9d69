/*
 * commit.c - the durable commit of new queue files, off the event loop.
 *
 * On an I/O thread a new file is written into tmp/, fsync'd, renamed into
 * incoming/, and covered by a directory fsync of incoming/ that started
 * after the rename (groupsync_wait, shared with concurrent commits). Only then
 * does the job's callback run in the event loop, and only then may a 250
 * be sent.
 *
 * A spool stream takes a message whose content is still arriving, and
 * needs less: it writes into a slot (recycle.c), a file of slots/ whose
 * name was durable before the stream wrote a byte. The envelope and then
 * the content go into it in chunks as they come, one write at a time per
 * message on an I/O thread, from at most two bounded buffers (one filling,
 * one being written), so a message's size never decides the memory it
 * takes. At the end the content record's length is written in place, then
 * the check and end records; the message's id and check records (queue.h)
 * make it a committed message where it stands once its data is durable
 * (slot_sync: an fdatasync, or for an overwrite on ext4 a sync_file_range
 * and a cache flush). The hard link into incoming/ follows, not waited for
 * (recycle.c says how a crash is recovered from).
 *
 * Milters read a stream's content back before its commit (flush, then
 * reads on a thread), and what they edit is committed in the stream's
 * place: a second slot gets the new envelope, the new header section and
 * the body (new, or copied from the stream's slot), and is committed as a
 * stream's message is (slot_sync, link into incoming/, or hold/ for a
 * quarantine: recycle.c brings a lost link back there). The stream's
 * slot, never committed, is free again.
 *
 * This file must never let a job report success before its message is
 * durable and findable, and never leave a half-written file in incoming/.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lib/lib.h"
#include "lib/metrics.h"
#include "queue/queue.h"

struct commit_pool {
	struct iopool *io;
	struct slots *slots;        /* where streams write */
	int tmp_fd;
	struct groupsync *incoming;
	int hold_fd;                /* where quarantined edits are linked */
};

#define STREAM_CHUNK (64 * 1024)    /* bytes handed to a thread at once */

struct spool_stream {
	struct commit_pool *pool;
	char id[QID_LEN + 1];
	char new_name[QID_LEN + 1]; /* for a new slot, if one must be made */
	struct slot_ref slot;       /* the slot written into: fd -1 until the first write
				     * job took one, and again once it is given back */
	struct dstr head;           /* the records before the content, for the check */
	uint32_t content_crc;       /* of the content written so far */
	uint64_t off;               /* where the next write goes */
	uint64_t content_hdr;       /* offset of the content record's header */
	uint64_t content_len;       /* content bytes taken so far */
	struct dstr fill;           /* filled by the loop */
	struct dstr busy;           /* being written by a thread */
	bool writing;               /* a job is on a thread */
	bool want_resume;           /* the caller waits for room */
	enum { STREAM_OPEN, STREAM_COMMIT, STREAM_ABORT, STREAM_EDITED } end;
	bool final;                 /* the last job was submitted */
	int error;                  /* the first error, an errno value */
	spool_stream_cb *resume;
	spool_stream_done_cb *done;
	void *arg;
	uint64_t commit_usec;       /* metrics_now() at the end of data */
	spool_stream_done_cb *flushed; /* a flush waits for the writes */
	bool reading;               /* a read is on a thread */
	struct spool_edit *edit;    /* STREAM_EDITED: what is committed instead */
	struct iotask *task;        /* the final job, while the journal has it */
};

/* An edited message, committed in a stream's place. */
struct spool_edit {
	struct dstr head;           /* the new envelope, its content length filled in */
	struct dstr prefix;         /* the new header section */
	struct dstr body;           /* the new body, when body_new */
	bool body_new;
	uint64_t body_off;          /* else the stream's content from here to its end */
	uint64_t content_len;
	bool hold;                  /* into hold/ */
	char slot_name[QID_LEN + 1]; /* for a new slot, if one must be made */
};

/* writes all of iov at off */
static int
pwritev_all(int fd, struct iovec *iov, int n, off_t off)
{
	ssize_t w;

	while (n > 0) {
		w = pwritev(fd, iov, n, off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		off += w;
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

static int
commit_one(struct commit_pool *p, struct commit_job *job)
{
	unsigned char end[SPOOL_REC_HDR], check[SPOOL_CHECK_REC];
	int ifd = groupsync_fd(p->incoming);
	struct iovec iov[4];
	int fd, err;

	spool_check_encode(check, crc32c(0, job->head.s, job->head.len),
			   crc32c(0, job->content.s, job->content.len));
	spool_encode_end(end);
	fd = openat(p->tmp_fd, job->id, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return errno;
	iov[0].iov_base = job->head.s;
	iov[0].iov_len = job->head.len;
	iov[1].iov_base = job->content.s;
	iov[1].iov_len = job->content.len;
	iov[2].iov_base = check;
	iov[2].iov_len = sizeof(check);
	iov[3].iov_base = end;
	iov[3].iov_len = sizeof(end);
	if (pwritev_all(fd, iov, 4, 0) < 0 || fsync(fd) < 0) {
		err = errno;
		close(fd);
		unlinkat(p->tmp_fd, job->id, 0);
		return err;
	}
	if (close(fd) < 0) {
		err = errno;
		unlinkat(p->tmp_fd, job->id, 0);
		return err;
	}
	if (renameat2(p->tmp_fd, job->id, ifd, job->id, RENAME_NOREPLACE) < 0) {
		err = errno;
		unlinkat(p->tmp_fd, job->id, 0);
		return err;
	}
	err = groupsync_wait(p->incoming);
	if (err) {
		/* The file may or may not survive a crash: do not acknowledge it,
		 * and take it back so it is not delivered behind the client's back. */
		if (unlinkat(ifd, job->id, 0) < 0)
			msg_warn("%s: cannot remove unacknowledged queue file: %s",
				 job->id, strerror(errno));
	}
	return err;
}

static void
commit_work(void *arg)
{
	struct commit_job *job = arg;

	job->error = commit_one(job->pool, job);
}

static void
commit_finished(void *arg)
{
	struct commit_job *job = arg;

	if (job->error == 0)
		metrics_commit_latency(metrics_now() - job->submitted_usec);
	job->done(job, job->arg);
}

struct commit_pool *
commit_pool_create(struct event_base *base, const char *spool_dir, int nthreads,
		   uint64_t minfree)
{
	struct commit_pool *p = xcalloc(1, sizeof(*p));
	char path[4096];

	snprintf(path, sizeof(path), "%s/tmp", spool_dir);
	p->tmp_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (p->tmp_fd < 0)
		msg_fatal("open %s: %s", path, strerror(errno));
	snprintf(path, sizeof(path), "%s/incoming", spool_dir);
	p->incoming = groupsync_open_dir(path);
	snprintf(path, sizeof(path), "%s/hold", spool_dir);
	p->hold_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (p->hold_fd < 0)
		msg_fatal("open %s: %s", path, strerror(errno));
	p->io = iopool_create(base, nthreads);
	p->slots = slots_open(spool_dir, minfree);
	return p;
}

void
commit_submit(struct commit_pool *p, struct commit_job *job)
{
	job->error = 0;
	job->pool = p;
	job->submitted_usec = metrics_now();
	iopool_run(p->io, commit_work, commit_finished, job);
}

void
commit_pool_set_writers(struct commit_pool *p, unsigned n)
{
	slots_set_writers(p->slots, n);
}

void
commit_pool_destroy(struct commit_pool *p)
{
	iopool_destroy(p->io);
	groupsync_close(p->incoming);
	close(p->hold_fd);
	slots_close(p->slots);
	close(p->tmp_fd);
	free(p);
}

/* ---- streams ---- */

static int
pwrite_all(int fd, const char *buf, size_t len, uint64_t off)
{
	ssize_t w;

	while (len > 0) {
		w = pwrite(fd, buf, len, (off_t)off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += w;
		len -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

/* on a thread: the busy buffer goes to the file */
static void
stream_write_work(void *arg)
{
	struct spool_stream *st = arg;
	uint64_t cstart = st->content_hdr + SPOOL_REC_HDR, skip;

	if (st->error)
		return;
	if (st->slot.fd < 0) {
		if (slot_take(st->pool->slots, st->new_name, &st->slot) < 0) {
			st->error = errno ? errno : EIO;
			return;
		}
	}
	if (pwrite_all(st->slot.fd, st->busy.s, st->busy.len, st->off) < 0) {
		st->error = errno ? errno : EIO;
		return;
	}
	if (st->off + st->busy.len > cstart) {
		skip = st->off < cstart ? cstart - st->off : 0;
		st->content_crc = crc32c(st->content_crc, st->busy.s + skip,
					 st->busy.len - (size_t)skip);
	}
}

static void stream_final(struct spool_stream *st);
static void stream_written(void *arg);
static void stream_edit_work(struct spool_stream *st);

static void
stream_start_write(struct spool_stream *st)
{
	struct dstr t = st->busy;

	st->busy = st->fill;
	st->fill = t;
	dstr_reset(&st->fill);
	st->writing = true;
	iopool_run(st->pool->io, stream_write_work, stream_written, st);
}

/* on the loop */
static void
stream_written(void *arg)
{
	struct spool_stream *st = arg;

	st->writing = false;
	st->off += st->busy.len;
	dstr_reset(&st->busy);
	if (st->end != STREAM_OPEN) {
		stream_final(st);
		return;
	}
	if (st->flushed != NULL) {
		spool_stream_done_cb *done = st->flushed;

		if (st->fill.len > 0) {
			stream_start_write(st);
			return;
		}
		st->flushed = NULL;
		done(st->arg, st->error);
		return;
	}
	if (st->fill.len >= STREAM_CHUNK)
		stream_start_write(st);
	if (st->want_resume && !(st->writing && st->fill.len >= STREAM_CHUNK)) {
		st->want_resume = false;
		st->resume(st->arg);
	}
}

/* on a thread, at the end of a message none of which was written yet (the
 * head and all the content are in the busy buffer): a slot is taken and
 * the message written into it with one call, the content length in place,
 * the check, the end and the padding's header (or, for a slot shorter than
 * that, the padding after it); iov[0..2] then point at the message's
 * records up to its end marker (the head and content, the check, the end) */
static int
stream_write_whole(struct spool_stream *st, const unsigned char len[4], unsigned char *check,
		   const unsigned char *end, struct iovec iov[4])
{
	uint64_t cstart = st->content_hdr + SPOOL_REC_HDR, stop;
	unsigned char pad[SPOOL_REC_HDR];
	int n = 3;

	if (slot_take(st->pool->slots, st->new_name, &st->slot) < 0)
		return -1;
	memcpy(st->busy.s + st->content_hdr + 1, len, 4);
	st->content_crc = crc32c(0, st->busy.s + cstart, st->busy.len - (size_t)cstart);
	spool_check_encode(check, crc32c(0, st->head.s, st->head.len), st->content_crc);
	stop = st->busy.len + SPOOL_CHECK_REC + SPOOL_REC_HDR;
	iov[0].iov_base = st->busy.s;
	iov[0].iov_len = st->busy.len;
	iov[1].iov_base = check;
	iov[1].iov_len = SPOOL_CHECK_REC;
	iov[2].iov_base = (void *)end;
	iov[2].iov_len = SPOOL_REC_HDR;
	if (st->slot.size >= stop + SPOOL_REC_HDR) {
		/* the old bytes after it stay, covered */
		spool_encode_pad(pad, (size_t)(st->slot.size - stop - SPOOL_REC_HDR));
		iov[n].iov_base = pad;
		iov[n++].iov_len = sizeof(pad);
	}
	if (pwritev_all(st->slot.fd, iov, n, 0) < 0)
		return -1;
	st->off = st->busy.len;
	if (st->slot.size != stop && st->slot.size < stop + SPOOL_REC_HDR)
		return recycle_pad(st->slot.fd, stop, st->slot.size);
	return 0;
}

/* committed; the link (not waited for) hands it to the queue manager */
static void
stream_link(struct spool_stream *st)
{
	if (slot_link(st->pool->slots, &st->slot, groupsync_fd(st->pool->incoming), st->id) < 0)
		st->error = errno ? errno : EIO;
}

/* On the journal's thread, once the stream's entry is durable (err 0) or
 * its sync failed: then the slot is synced instead. The final job ends
 * here. */
static void
stream_journaled(void *arg, int err)
{
	struct spool_stream *st = arg;
	struct iotask *t = st->task;

	if (err != 0 && slot_sync(st->pool->slots, &st->slot) < 0) {
		st->error = errno ? errno : EIO;
		slot_drop(st->pool->slots, &st->slot);
	} else
		stream_link(st);
	iopool_finish(t);       /* st may be gone from here on */
}

/* on a thread: the rest, the content length, the check and the end;
 * slot_sync, and the link into incoming/; or, for an abort, the slot given
 * back */
static void
stream_final_work(void *arg)
{
	struct spool_stream *st = arg;
	unsigned char end[SPOOL_REC_HDR], len[4], check[SPOOL_CHECK_REC];
	struct iovec iov[4];
	uint64_t stop;
	int niov = 0;

	if (st->end == STREAM_ABORT || st->error) {
		slot_drop(st->pool->slots, &st->slot);
		return;
	}
	if (st->end == STREAM_EDITED) {
		stream_edit_work(st);
		return;
	}
	spool_encode_end(end);
	be32_put(len, (uint32_t)st->content_len);
	memcpy(st->head.s + st->content_hdr + 1, len, sizeof(len));
	/* where the message's records end, after its end marker */
	stop = st->off + st->busy.len + sizeof(check) + sizeof(end);
	if (st->off == 0 && st->slot.fd < 0) {
		/* nothing written yet: the whole message in one write */
		if (stream_write_whole(st, len, check, end, iov) < 0) {
			st->error = errno ? errno : EIO;
			goto fail;
		}
		niov = 3;       /* the bytes up to stop, for the journal's copy */
	} else {
		stream_write_work(st);  /* the last bytes */
		if (st->error)
			goto fail;
		st->off += st->busy.len;
		spool_check_encode(check, crc32c(0, st->head.s, st->head.len), st->content_crc);
		if (pwrite_all(st->slot.fd, (const char *)check, sizeof(check), st->off) < 0 ||
		    pwrite_all(st->slot.fd, (const char *)end, sizeof(end),
			       st->off + sizeof(check)) < 0 ||
		    recycle_pad(st->slot.fd, st->off + sizeof(check) + sizeof(end),
				st->slot.size) < 0 ||
		    pwrite_all(st->slot.fd, (const char *)len, sizeof(len), st->content_hdr + 1) < 0) {
			st->error = errno ? errno : EIO;
			goto fail;
		}
	}
	/* the data and the length made durable, all a reader needs: in the
	 * journal, whose thread then ends this job (stream_journaled); or in
	 * the slot, whose name was durable before its first write */
	st->task = iopool_defer();
	if (slot_commit_async(st->pool->slots, &st->slot, st->id, stop, niov ? iov : NULL, niov,
			      stream_journaled, st))
		return;
	iopool_undefer(st->task);
	st->task = NULL;
	if (slot_commit(st->pool->slots, &st->slot, st->id, stop) < 0) {
		st->error = errno ? errno : EIO;
		goto fail;
	}
	stream_link(st);
	return;
fail:
	slot_drop(st->pool->slots, &st->slot);
}

static void
stream_finished(void *arg)
{
	struct spool_stream *st = arg;
	int error = st->end == STREAM_ABORT ? 0 : st->error;

	if (st->end == STREAM_COMMIT && error == 0)
		metrics_commit_latency(metrics_now() - st->commit_usec);
	st->done(st->arg, error);
	dstr_free(&st->fill);
	dstr_free(&st->busy);
	dstr_free(&st->head);
	spool_edit_free(st->edit);
	free(st);
}

static void
stream_final(struct spool_stream *st)
{
	struct dstr t;

	if (st->final || st->writing || st->reading)
		return;                 /* stream_written() or read_done() comes back here */
	st->final = true;
	/* the last bytes go with the final job */
	t = st->busy;
	st->busy = st->fill;
	st->fill = t;
	iopool_run(st->pool->io, stream_final_work, stream_finished, st);
}

struct spool_stream *
spool_stream_open(struct commit_pool *p, const char *id, const struct dstr *head,
		  spool_stream_cb *resume, void *arg)
{
	struct spool_stream *st = xcalloc(1, sizeof(*st));

	if (head->len < SPOOL_REC_HDR || (unsigned char)head->s[head->len - SPOOL_REC_HDR] !=
	    SPOOL_REC_CONTENT)
		msg_panic("spool_stream_open: the head must end with the content record's header");
	st->pool = p;
	snprintf(st->id, sizeof(st->id), "%s", id);
	st->slot.fd = -1;
	qid_next(st->new_name);
	st->content_hdr = head->len - SPOOL_REC_HDR;
	dstr_init(&st->fill, 0);
	dstr_init(&st->busy, 0);
	dstr_init(&st->head, 0);
	(void)dstr_append(&st->fill, head->s, head->len);
	(void)dstr_append(&st->head, head->s, head->len);
	st->resume = resume;
	st->arg = arg;
	return st;
}

bool
spool_stream_write(struct spool_stream *st, const void *data, size_t len)
{
	if (st->end != STREAM_OPEN)
		msg_panic("%s: spool_stream_write after the end", st->id);
	if (st->content_len + len > UINT32_MAX) {
		st->error = EFBIG;      /* the record's length field would not hold it */
		return false;
	}
	st->content_len += len;
	if (!st->error)
		(void)dstr_append(&st->fill, data, len);
	if (st->error)
		dstr_reset(&st->fill);  /* the message fails anyway: keep nothing */
	if (st->fill.len >= STREAM_CHUNK && !st->writing)
		stream_start_write(st);
	if (st->writing && st->fill.len >= STREAM_CHUNK) {
		st->want_resume = true;
		return true;
	}
	return false;
}

uint64_t
spool_stream_content_len(const struct spool_stream *st)
{
	return st->content_len;
}

void
spool_stream_commit(struct spool_stream *st, spool_stream_done_cb *done)
{
	st->done = done;
	st->end = STREAM_COMMIT;
	st->commit_usec = metrics_now();
	stream_final(st);
}

void
spool_stream_abort(struct spool_stream *st, spool_stream_done_cb *done)
{
	st->done = done;
	st->end = STREAM_ABORT;
	st->want_resume = false;
	stream_final(st);
}

/* ---- reading back, and committing an edited message (milters) ---- */

void
spool_stream_flush(struct spool_stream *st, spool_stream_done_cb *done)
{
	st->flushed = done;
	st->want_resume = false;
	if (!st->writing)
		stream_start_write(st); /* what is left, maybe nothing: a thread answers */
}

struct read_job {
	struct spool_stream *st;
	uint64_t off;
	size_t n;
	ssize_t got;                /* or -errno */
	char *buf;                  /* the job's own: the reader may be gone by then */
	void (*done)(void *arg, const void *data, ssize_t got);
	void *arg;
};

static void
read_work(void *arg)
{
	struct read_job *rj = arg;
	struct spool_stream *st = rj->st;
	ssize_t r;

	if (st->slot.fd < 0) {
		rj->got = -EBADF;       /* nothing was written: flushed first, always */
		return;
	}
	do
		r = pread(st->slot.fd, rj->buf, rj->n,
			  (off_t)(st->content_hdr + SPOOL_REC_HDR + rj->off));
	while (r < 0 && errno == EINTR);
	rj->got = r < 0 ? -errno : r;
}

static void
read_done(void *arg)
{
	struct read_job *rj = arg;
	struct spool_stream *st = rj->st;

	st->reading = false;
	if (st->end == STREAM_OPEN)
		rj->done(rj->arg, rj->buf, rj->got);
	else
		stream_final(st);       /* ended meanwhile: nobody waits for these bytes */
	free(rj->buf);
	free(rj);
}

void
spool_stream_read(struct spool_stream *st, uint64_t off, size_t n,
		  void (*done)(void *arg, const void *data, ssize_t got), void *arg)
{
	struct read_job *rj = xcalloc(1, sizeof(*rj));

	if (st->reading || st->writing)
		msg_panic("%s: spool_stream_read while another read or a write is under way", st->id);
	if (off > st->content_len)
		off = st->content_len;
	if (n > st->content_len - off)
		n = (size_t)(st->content_len - off);
	rj->st = st;
	rj->off = off;
	rj->n = n;
	rj->buf = xmalloc(n ? n : 1);
	rj->done = done;
	rj->arg = arg;
	st->reading = true;
	iopool_run(st->pool->io, read_work, read_done, rj);
}

struct spool_edit *
spool_edit_new(const struct spool_stream *st, const struct spool_envelope *env,
	       struct dstr *prefix, struct dstr *body, uint64_t body_off)
{
	struct spool_edit *e = xcalloc(1, sizeof(*e));

	e->prefix = *prefix;
	dstr_init(prefix, 0);
	e->body_new = body != NULL;
	if (body != NULL) {
		e->body = *body;
		dstr_init(body, 0);
	} else {
		dstr_init(&e->body, 0);
	}
	e->body_off = body_off < st->content_len ? body_off : st->content_len;
	e->content_len = e->prefix.len + (e->body_new ? e->body.len : st->content_len - e->body_off);
	e->hold = env->hold_reason != NULL;
	qid_next(e->slot_name);         /* on the loop: ids are not made on threads */
	dstr_init(&e->head, 0);
	spool_encode_head(env, (size_t)e->content_len, &e->head);
	return e;
}

uint64_t
spool_edit_content_len(const struct spool_edit *e)
{
	return e->content_len;
}

void
spool_edit_free(struct spool_edit *e)
{
	if (e == NULL)
		return;
	dstr_free(&e->head);
	dstr_free(&e->prefix);
	dstr_free(&e->body);
	free(e);
}

/* on a thread: the edited message into a slot of its own (the stream's
 * slot holds the original, which it reads from), committed the way a
 * stream's message is: slot_sync, then the link (not waited for) into
 * incoming/, or hold/ for a quarantine (its envelope says so, and a
 * start-up that finds the link lost puts it back there). The stream's
 * slot, never committed, is free again. */
static void
stream_edit_work(struct spool_stream *st)
{
	struct spool_edit *e = st->edit;
	unsigned char end[SPOOL_REC_HDR], check[SPOOL_CHECK_REC];
	struct slot_ref ns = { .fd = -1 };
	char *buf = NULL;
	uint64_t off, from, left;
	uint32_t crc;
	ssize_t r;
	size_t n;
	int dfd = e->hold ? st->pool->hold_fd : groupsync_fd(st->pool->incoming);

	stream_write_work(st);          /* the last bytes of the original, if any */
	if (st->error)
		goto fail;
	if (slot_take(st->pool->slots, e->slot_name, &ns) < 0)
		goto fail_new;
	off = 0;
	if (pwrite_all(ns.fd, e->head.s, e->head.len, off) < 0 ||
	    pwrite_all(ns.fd, e->prefix.s, e->prefix.len, off + e->head.len) < 0)
		goto fail_new;
	off += e->head.len + e->prefix.len;
	crc = crc32c(0, e->prefix.s, e->prefix.len);
	if (e->body_new) {
		if (pwrite_all(ns.fd, e->body.s, e->body.len, off) < 0)
			goto fail_new;
		off += e->body.len;
		crc = crc32c(crc, e->body.s, e->body.len);
	} else {
		if (st->slot.fd < 0) {
			errno = EBADF;
			goto fail_new;
		}
		buf = xmalloc(STREAM_CHUNK);
		from = st->content_hdr + SPOOL_REC_HDR + e->body_off;
		for (left = st->content_len - e->body_off; left > 0; left -= (uint64_t)r) {
			n = left < STREAM_CHUNK ? (size_t)left : STREAM_CHUNK;
			r = pread(st->slot.fd, buf, n, (off_t)from);
			if (r < 0 && errno == EINTR) {
				r = 0;
				continue;
			}
			if (r <= 0) {
				errno = r < 0 ? errno : EIO;    /* the file was cut short */
				goto fail_new;
			}
			if (pwrite_all(ns.fd, buf, (size_t)r, off) < 0)
				goto fail_new;
			crc = crc32c(crc, buf, (size_t)r);
			from += (uint64_t)r;
			off += (uint64_t)r;
		}
		free(buf);
		buf = NULL;
	}
	spool_check_encode(check, crc32c(0, e->head.s, e->head.len), crc);
	spool_encode_end(end);
	if (pwrite_all(ns.fd, (const char *)check, sizeof(check), off) < 0 ||
	    pwrite_all(ns.fd, (const char *)end, sizeof(end), off + sizeof(check)) < 0 ||
	    recycle_pad(ns.fd, off + sizeof(check) + sizeof(end), ns.size) < 0 ||
	    slot_commit(st->pool->slots, &ns, st->id, off + sizeof(check) + sizeof(end)) < 0)
		goto fail_new;
	/* the edit takes the original's place; the original was never committed */
	slot_drop(st->pool->slots, &st->slot);
	if (slot_link(st->pool->slots, &ns, dfd, st->id) < 0)
		st->error = errno ? errno : EIO;
	return;
fail_new:
	st->error = errno ? errno : EIO;
	free(buf);
	slot_drop(st->pool->slots, &ns);
fail:
	slot_drop(st->pool->slots, &st->slot);
}

void
spool_stream_commit_edited(struct spool_stream *st, struct spool_edit *e,
			   spool_stream_done_cb *done)
{
	st->edit = e;
	st->done = done;
	st->end = STREAM_EDITED;
	stream_final(st);
}
