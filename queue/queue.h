/*
 * queue.h - the spool: its on-disk record format, the durable commit of new
 * messages (I/O threads, group directory fsync), and reading it back.
 *
 * Spool layout under spool_dir:
 *   slots/     the files new messages are written into (recycle.c), for
 *              good: a queued message's file is also linked under its id
 *              in a queue folder; a free one (one link) is written over
 *   tmp/       whole files being written (DSNs, the start-up fill), removed
 *              at start
 *   incoming/  committed messages waiting for the queue manager
 *   active/ deferred/ hold/   queue manager states
 *   corrupt/   files that failed to parse, moved aside (never deleted)
 *   defer/     status beside a deferred message (status.c), same name
 *   import/    `sorterctl import` at work (import.c): copies being made and
 *              the records of copies made; the daemon never looks inside
 *   journal/   the writers' journals (journal.c): copies of new messages,
 *              made durable together, until their slots are finished or
 *              synced; start-up writes back what a crash lost
 *
 * A queue file is a sequence of records: one type byte, a 4-byte big-endian
 * length, then that many bytes. The last record is SPOOL_REC_END with length
 * 0; a file without it, or with a record running past the end of the file,
 * is torn. A slot may be longer than its message: then one SPOOL_REC_PAD
 * record follows the end marker and covers the rest exactly (its bytes are
 * the file's old content, never looked at). The only in-place changes ever
 * made to a committed file are the type byte of a recipient record
 * (SPOOL_REC_RCPT -> a final state), and, once it is finished, its first
 * byte (SPOOL_FREED, spool_remove).
 *
 * Every writer also puts the message's queue id in the file (SPOOL_REC_ID)
 * and a check record (SPOOL_REC_CHECK) between the content and the end
 * marker: CRC-32C of the bytes before the content (each recipient record's
 * type byte counted as SPOOL_REC_RCPT, so marks do not change it) and of
 * the content. A message written into a slot is committed where it was
 * written (recycle.c): after a crash, a slot whose id record names an id
 * the queue does not hold and whose check matches is a committed message
 * (spool_committed_in_tmp). Files without these records (older spools,
 * other writers) are read as before; an older spool's messages committed
 * in tmp/ (under another name than their id) are recovered the same way.
 */
#ifndef SORTER_QUEUE_H
#define SORTER_QUEUE_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdbool.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "lib/lib.h"

struct event_base;

#define SPOOL_VERSION "1"

enum spool_rec {
	SPOOL_REC_VERSION = 'V',   /* "1" */
	SPOOL_REC_ID = 'I',        /* the message's queue id (optional, at most once) */
	SPOOL_REC_TIME = 'T',      /* arrival, microseconds since the epoch, decimal */
	SPOOL_REC_CLIENT = 'C',    /* client address, e.g. "127.0.0.1" */
	SPOOL_REC_HELO = 'H',      /* HELO/EHLO argument */
	SPOOL_REC_PROTO = 'P',     /* "SMTP", "ESMTP", "ESMTPS", ... */
	SPOOL_REC_SENDER = 'S',    /* envelope sender, "" for <> */
	SPOOL_REC_SPARAM = 's',    /* sender parameters: "RET=FULL ENVID=... SMTPUTF8"
				    * (dsn_parse_sender_params) */
	SPOOL_REC_HOLD = 'Q',      /* why the message was put on hold as it arrived (a
				    * milter's quarantine); it was committed into hold/ */
	SPOOL_REC_RCPT = 'R',      /* pending recipient: "address" [SP params] */
	SPOOL_REC_RCPT_DONE = 'D', /* recipient delivered (in-place type change) */
	SPOOL_REC_RCPT_BOUNCED = 'B', /* recipient bounced, DSN queued */
	SPOOL_REC_RCPT_DELETED = 'X', /* recipient removed by the admin */
	SPOOL_REC_CONTENT = 'M',   /* the message, CRLF line ends, Received: first */
	SPOOL_REC_CHECK = 'K',     /* optional, right before the end marker: 16 lowercase
				    * hex digits, the CRC-32C of the head, then of the
				    * content (spool_check_encode) */
	SPOOL_REC_END = 'E',       /* end marker, length 0 */
	SPOOL_REC_PAD = 'Z',       /* after the end marker only, to the end of the file:
				    * what a slot held before, never read */
};

#define SPOOL_REC_HDR 5          /* type + 4-byte length */

/* What a new message needs to become a queue file. */
struct spool_envelope {
	const char *id;            /* the queue id (SPOOL_REC_ID) */
	uint64_t arrival_usec;
	const char *client;
	const char *helo;
	const char *proto;
	const char *sender;        /* "" for <> */
	const char *sender_params; /* may be NULL */
	const char **rcpts;        /* "address" or "address params" */
	size_t nrcpt;
	const char *hold_reason;   /* NULL, or why it goes to hold/ (SPOOL_REC_HOLD) */
};

/* Appends the records before the content, including the content record's
 * header for a content of content_len bytes. */
void spool_encode_head(const struct spool_envelope *env, size_t content_len,
		       struct dstr *out);
/* The text of a recipient record: the address, then its DSN parameters in
 * the codec's form (lib/dsnparam.c; p may be NULL). Never NULL. */
char *spool_rcpt_text(const char *addr, const struct dsn_rcpt_params *p);
/* The length of the address at the start of such a text ("ADDR PARAMS"):
 * a quoted local part may hold spaces. */
size_t spool_rcpt_addr_len(const char *r);
/* The sender's DSN parameters in the codec's form; NULL when none. */
char *spool_sender_params(const struct dsn_sender_params *p);
/* The end-marker record (SPOOL_REC_HDR bytes) */
void spool_encode_end(unsigned char out[SPOOL_REC_HDR]);
/* The check record (SPOOL_CHECK_REC bytes) for a head whose CRC-32C is
 * head_crc (over its bytes up to the content, as written: every recipient
 * record still SPOOL_REC_RCPT) and a content whose CRC-32C is content_crc. */
#define SPOOL_CHECK_LEN 16
#define SPOOL_CHECK_REC (SPOOL_REC_HDR + SPOOL_CHECK_LEN)
void spool_check_encode(unsigned char out[SPOOL_CHECK_REC], uint32_t head_crc,
			uint32_t content_crc);
/* The header of a padding record of len bytes (SPOOL_REC_HDR bytes) */
void spool_encode_pad(unsigned char out[SPOOL_REC_HDR], size_t len);

enum rcpt_state { RCPT_PENDING, RCPT_DONE, RCPT_BOUNCED, RCPT_DELETED };

struct spool_rcpt {
	char *addr;                /* the address */
	char *params;              /* may be NULL */
	enum rcpt_state state;
	size_t type_offset;        /* file offset of this record's type byte */
};

struct spool_msg {
	char id[QID_LEN + 1];
	uint64_t arrival_usec;
	char *client, *helo, *proto;
	char *sender;
	char *sender_params;
	char *hold_reason;         /* SPOOL_REC_HOLD, or NULL */
	struct spool_rcpt *rcpts;
	size_t nrcpt;
	size_t content_offset;     /* file offset of the content */
	size_t content_len;
	size_t file_size;
	char qid[QID_LEN + 1];     /* SPOOL_REC_ID, or "" when the file has none */
	bool has_check;            /* SPOOL_REC_CHECK is there: */
	uint32_t check_head, check_content;
};

/* Parses a whole queue file image. Returns 0, or -1 with a reason in err
 * ("torn: no end marker", "record at offset N runs past end of file", ...).
 * Never reads outside buf. */
int spool_parse(const unsigned char *buf, size_t len, struct spool_msg *m,
		char *err, size_t errlen);
void spool_msg_free(struct spool_msg *m);

/* A queue file opened for reading: its records, parsed, and the file kept
 * open for its content, which stays on disk (spool_content_read). */
struct spool_file {
	unsigned char *head;       /* the first head_len bytes: the records */
	size_t head_len;
	int fd;                    /* the open file; -1 when none */
	struct spool_msg m;        /* m.id is the file's name */
};

/* read(2), or what a test puts in its place to make reads fail */
typedef ssize_t (*spool_read_fn)(int fd, void *buf, size_t n);

/* The one reader of queue files: opens the file at path, reads (with rd;
 * NULL = read(2)) and parses its records up to the content and the end
 * marker after it, and keeps it open. Returns 0; -1 when it is corrupt or
 * torn (err says why); -2 when it cannot be read now (errno set, err says
 * what). Only -1 is a reason to move a file aside; -2 is tried again. */
int spool_load(const char *path, spool_read_fn rd, struct spool_file *f,
	       char *err, size_t errlen);
/* The same for a file whose name is not its queue id (a message being
 * imported, importing/OLDID.NEWID.STATE: import.c); id names it. */
int spool_load_as(const char *path, const char *id, spool_read_fn rd, struct spool_file *f,
		  char *err, size_t errlen);
/* What spool_load() reads first (16 KiB: all the records of most files);
 * then more, doubling, up to the content. Tests make it small. */
extern size_t spool_head_first;
/* Reads n content bytes from offset off of the content (0 = its first
 * byte) of a file spool_load() opened as fd. Returns 0, or -1 with errno
 * (EIO when the file ends early). */
int spool_content_read(int fd, const struct spool_msg *m, size_t off, void *buf, size_t n);
void spool_file_free(struct spool_file *f);
/* Whether a file spool_load() opened matches its check record: 1 when it
 * has one and both CRCs match (recipient marks aside), 0 when it has none
 * or they differ, -1 when its bytes cannot be read (errno set). */
int spool_check_verify(const struct spool_file *f);
/* Whether the file at path, named NAME (a slot, or from an older spool a
 * file of tmp/), is a committed message: it parses, its check matches and
 * its id record names an id other than NAME. Returns 1 with the file
 * loaded into f (its id in f->m.qid), 0 when it is not (a file being or
 * never finished being written, or a freed slot), -2 when it cannot be
 * read. */
int spool_committed_in_tmp(const char *path, struct spool_file *f);
/* The first byte of a finished slot (spool_remove) */
#define SPOOL_FREED 'F'
/* Removes the queue name id of dir_fd's folder; a slot's file (one with
 * another link, in slots/) is marked freed first, and when `durable`, that
 * mark is fdatasync'd before the name goes (a deletion a crash must not
 * undo); the name's removal itself is never waited for here. A file that
 * cannot be opened or marked keeps its name. 0, or -1 with errno. */
int spool_remove(int dir_fd, const char *id, bool durable);
/* spool_remove's first half, for a batch of removals: if id names a slot's
 * file, it is marked freed and *marked is its descriptor, open for
 * slots_sync_marks (the caller closes it), else -1. 0 (the name may go),
 * or -1 with errno (it must stay). */
int spool_mark_freed(int dir_fd, const char *id, int *marked);
/* Whether the open queue file fd was marked freed. */
bool spool_is_freed(int fd);
/* spool_load() for the daemon: a corrupt file is moved to corrupt/
 * (spool_quarantine), an unreadable one is left where it is and logged, a
 * freed one (its removal cut short) is unlinked (-2, errno ENOENT). The
 * same return values. */
int spool_take(const char *spool_dir, const char *path, spool_read_fn rd,
	       struct spool_file *f);

/* Creates spool_dir and its folders (0700). Returns 0 or -1 with errno. */
int spool_prepare(const char *spool_dir);
/* The issue time (qid_usec) of the newest queue id that names a file in
 * the spool's folders, 0 when there is none: qid_init's after_usec. */
uint64_t spool_newest_qid(const char *spool_dir);
/* Moves a bad file into corrupt/ and logs why. */
void spool_quarantine(const char *spool_dir, const char *path, const char *why);

/* ---- disk work off the event loop (iopool.c) ----
 * work() runs on a pool thread; done() then runs in the loop's thread. */
struct iopool;
struct iopool *iopool_create(struct event_base *base, int nthreads);
void iopool_run(struct iopool *p, void (*work)(void *), void (*done)(void *), void *arg);
/* Called by a work() that hands its task on (to a journal's thread): the
 * task's done() waits for iopool_finish(task), from any thread, instead of
 * the end of work(). */
struct iotask;
struct iotask *iopool_defer(void);
/* the work() that deferred t ends it after all */
void iopool_undefer(struct iotask *t);
void iopool_finish(struct iotask *t);
/* Finishes queued work (and deferred tasks), runs the pending done()
 * calls, joins the threads. */
void iopool_destroy(struct iopool *p);

/* Shared syncs of one file or directory (iopool.c). Thread-safe.
 * groupsync_wait(), called after changing it (a rename or unlink in a
 * directory), returns 0 once an fsync (with datasync, an fdatasync) of it
 * that began after the change has completed, else an errno value.
 * groupsync_writing() announces a write that will want such a sync when
 * it ends; groupsync_written() says it ended: if ok, it returns as
 * groupsync_wait() does, where a sync about to start first waits up to
 * gather_usec for the writes still under way, to cover them too. */
struct groupsync;
struct groupsync *groupsync_new(int fd, bool datasync, unsigned gather_usec);
/* a directory's, fsync'd, no gathering; exits if it cannot be opened */
struct groupsync *groupsync_open_dir(const char *path);
int groupsync_fd(const struct groupsync *g);
int groupsync_wait(struct groupsync *g);
void groupsync_writing(struct groupsync *g);
int groupsync_written(struct groupsync *g, bool ok);
/* announcements covered by a completed sync, and the syncs that succeeded */
void groupsync_counts(struct groupsync *g, uint64_t *covered, uint64_t *syncs);
/* closes its descriptor too */
void groupsync_close(struct groupsync *g);

/* ---- durable commit (commit.c) ----
 * A job is written to tmp/, fsync'd, renamed into incoming/ and covered by
 * an fsync of incoming/ on a pool thread; its callback then runs in the
 * event loop that owns the pool. Renames that finish before one directory
 * fsync starts all share it. */
struct commit_pool;

struct commit_job {
	/* filled by the submitter */
	struct dstr head;          /* spool_encode_head() output */
	struct dstr content;       /* the message (the job owns both) */
	char id[QID_LEN + 1];      /* assigned by the submitter (qid_next) */
	void (*done)(struct commit_job *job, void *arg);
	void *arg;
	/* filled by the pool */
	int error;                 /* 0 = durable; else an errno value */
	struct commit_pool *pool;
	uint64_t submitted_usec;   /* for the commit latency histogram */
};

/* minfree: queue_minfree, for the pool's free slots (slots_open) */
struct commit_pool *commit_pool_create(struct event_base *base, const char *spool_dir,
				       int nthreads, uint64_t minfree);
void commit_submit(struct commit_pool *p, struct commit_job *job);
/* How many sessions may commit through p now (the worker's open sessions):
 * how many entries its journal's sync waits for (journal_set_writers). */
void commit_pool_set_writers(struct commit_pool *p, unsigned n);
/* Waits for queued jobs, joins the threads. */
void commit_pool_destroy(struct commit_pool *p);

/*
 * A message streamed into the spool as its content arrives (commit.c). The
 * head is spool_encode_head()'s output (its content length is filled in at
 * the commit). Writes are buffered and handed to an I/O thread in chunks,
 * one at a time: spool_stream_write() returns true when the caller must
 * stop feeding it until `resume` runs. Then exactly one of commit (durable
 * in incoming/, done(arg, 0), or done(arg, errno) with nothing left
 * behind) or abort (the file removed, done(arg, 0)); the stream frees
 * itself after done returns and must not be used again. A write error is
 * kept and reported by the commit.
 */
struct spool_stream;
typedef void spool_stream_cb(void *arg);
typedef void spool_stream_done_cb(void *arg, int error);
struct spool_stream *spool_stream_open(struct commit_pool *p, const char *id,
				       const struct dstr *head, spool_stream_cb *resume,
				       void *arg);
bool spool_stream_write(struct spool_stream *st, const void *data, size_t len);
uint64_t spool_stream_content_len(const struct spool_stream *st);
void spool_stream_commit(struct spool_stream *st, spool_stream_done_cb *done);
void spool_stream_abort(struct spool_stream *st, spool_stream_done_cb *done);

/*
 * What milters need of a stream before its commit. A flush writes what the
 * stream holds into its file and calls done(arg, error) once that is done
 * (nothing more may be written then). A read takes up to n content bytes
 * at off (the content's own offsets) from the file on a thread, one read at
 * a time, and hands them to done(arg, data, count or -errno) on the loop;
 * a stream ended meanwhile never calls it. An edit is a message committed
 * in the stream's place: env's envelope (hold_reason set: into hold/), the
 * new header section prefix, then body, or with body NULL the stream's own
 * content from body_off on; the dstrs are taken over. The commit then
 * goes as spool_stream_commit() (the edit is the stream's from then on).
 */
struct spool_edit;
void spool_stream_flush(struct spool_stream *st, spool_stream_done_cb *done);
void spool_stream_read(struct spool_stream *st, uint64_t off, size_t n,
		       void (*done)(void *arg, const void *data, ssize_t got), void *arg);
struct spool_edit *spool_edit_new(const struct spool_stream *st,
				  const struct spool_envelope *env, struct dstr *prefix,
				  struct dstr *body, uint64_t body_off);
uint64_t spool_edit_content_len(const struct spool_edit *e);
void spool_edit_free(struct spool_edit *e);
void spool_stream_commit_edited(struct spool_stream *st, struct spool_edit *e,
				spool_stream_done_cb *done);

/* ---- the queue manager (qmgr.c) and its control socket (control.c) ---- */
#define QID_SLOT_QMGR 30         /* qid process slot of the queue manager */
#define QID_SLOT_CTL 31          /* qid process slot of sorterctl and tools */

struct qmgr;
struct control;

/* Runs the queue manager until SIGTERM, or until EOF on master_fd (the
 * master is gone); returns the exit status. */
int qmgr_main(struct config *cf, struct counters *ctr, int master_fd);
/* A hint that incoming/ID was committed. */
void qmgr_pickup(struct qmgr *q, const char *id);
/* The wake-up a worker sends after a commit (best effort, never blocks). */
void qmgr_wake(const char *spool_dir, int *fd, const char *id);

enum queue_op { QOP_DELETE, QOP_HOLD, QOP_RELEASE, QOP_FLUSH };
struct queue_batch;

/* Acts on message id (NULL = all, for flush) on behalf of sorterctl; a
 * line per message into out. 0 or -1. batch as for queue_op_offline:
 * non-NULL, a batch that qmgr_control_sync ends (a release is picked up
 * then, once on disk). */
int qmgr_control(struct qmgr *q, enum queue_op op, const char *id, struct dstr *out,
		 struct queue_batch *batch);
/* Ends a batch of qmgr_control calls (queue_batch_end), then takes in what
 * it released. 0, or -1 with a line in out. */
int qmgr_control_sync(struct qmgr *q, struct queue_batch *batch, struct dstr *out);
void qmgr_stats(struct qmgr *q, struct dstr *out);

/* The folders an operation needs, open: incoming active deferred hold
 * defer corrupt (that order). */
/* ---- queue files used again: slots (recycle.c) ---- */

#define RECYCLE_ROUND (16 * 1024)       /* a new queue file is padded to a multiple */
#define RECYCLE_POOL_MAX 1024           /* free slots kept across a start */
#define RECYCLE_FILE_MAX (256 * 1024)   /* bigger ones are unlinked */
#define RECYCLE_PREFILL 1024            /* free slots after a start, at least */
#define RECYCLE_KNOWN 1024              /* slots a writer's pool keeps track of */
#define RECYCLE_OPEN 256                /* a queued slot past this many open is known by name */
#define RECYCLE_ADOPT 32                /* free slots of slots/ a pool adopts per scan */
/* Descriptors a writer's pool may hold beyond the slots its sessions are
 * writing: queued slots kept open, and one scan's adoptions. */
#define RECYCLE_FDS (RECYCLE_OPEN + RECYCLE_ADOPT)
#define RECYCLE_RESERVE (64ULL << 20)   /* free space beyond queue_minfree free slots leave */

/* Slots (recycle.c): the files new messages are written into, under
 * slots/ for good. One pool per process, used from I/O threads. */
struct slots;
/* a journal commit's end (journal.c): 0, or an errno value */
typedef void journal_done_cb(void *arg, int err);
/* minfree: free slots stay only while the file system has that and
 * RECYCLE_RESERVE more free. */
struct slots *slots_open(const char *spool_dir, uint64_t minfree);
/* Lets go of every slot (their locks); nothing on disk changes. */
void slots_close(struct slots *s);
/* journal_set_writers for the pool's journal, if it has one */
void slots_set_writers(struct slots *s, unsigned n);
struct slot_ref {
	char name[QID_LEN + 1];    /* in slots/ */
	int fd;                    /* O_RDWR, locked: the pool's, never closed by the caller */
	uint64_t size;             /* the file's length when taken (0: a new slot) */
	uint64_t durable;          /* slot_sync: bytes from its start an fdatasync of this
				    * pool made durable, its length then (0: none) */
	bool owned;                /* kept in the pool (else closed when given back) */
	uint64_t jticket;          /* slot_commit: its journal entry's seq (0: none) */
};
/* Unlinks the free slots of slots/ no one holds beyond RECYCLE_POOL_MAX
 * or bigger than RECYCLE_FILE_MAX (all of them while the file system is
 * short of minfree and RECYCLE_RESERVE). slot_take() calls it every
 * minute. */
void slots_prune(struct slots *s);
/* On a thread: a slot for a new message into out, its name durable;
 * new_name (an unused queue id) names it if a new one must be made.
 * Returns 0, or -1 with errno. */
int slot_take(struct slots *s, const char *new_name, struct slot_ref *out);
/* Makes what was written into ref's slot durable: 0, or -1 with errno.
 * A slot that has not grown past the length an fdatasync of this pool
 * made durable is written over in place: sync_file_range() writes its
 * data and waits for it, then an fdatasync of spool_dir/flush/use flushes the
 * device's write cache (only on a file system that overwrites in place:
 * ext4 without data journaling). Any other slot is fdatasync'd, and on
 * such a file system its length recorded as durable; after an error, the
 * slot's next message is fdatasync'd. The flush is shared: one serves
 * every overwrite of the pool whose write completed before it started,
 * and one about to start waits (1 ms at most) for the pool's overwrites
 * still being written. */
int slot_sync(struct slots *s, struct slot_ref *ref);
/* Whether the file system of dir_fd writes a file's data over the blocks
 * it has (ext4 without data journaling or DAX), so that an overwrite is
 * made durable by sync_file_range() and a flush of the device's cache. */
bool slots_overwrite_in_place(int dir_fd);
/* Whether the data of the open file fd lives in its blocks (neither in its
 * inode nor journaled): on such a file system, written over in place. */
bool slot_data_in_place(int fd);
/* Makes the freed marks (spool_mark_freed) of the n files fds durable
 * (dir_fd: a folder of their spool): one cache flush for them all where
 * the file system overwrites in place, else an fdatasync each. errs[i]
 * gets fds[i]'s errno, or 0. */
void slots_sync_marks(int dir_fd, const int *fds, size_t n, int *errs);
/* The pool's overwrites made durable so far by slot_sync, and the device
 * cache flushes they took. */
void slots_flush_counts(struct slots *s, uint64_t *overwrites, uint64_t *flushes);
/* After the commit's slot_sync: the slot is linked into dir_fd's folder
 * as id (not made durable: slots_recover finds it). 0, or -1 with errno
 * (the slot is free again). Either way ref is given back. */
int slot_link(struct slots *s, struct slot_ref *ref, int dir_fd, const char *id);
/* Makes the message written into ref's slot, id, whose records end at
 * offset len (after its end marker), durable: by the pool's journal when it
 * has one and len is at most JOURNAL_BODY_MAX (journal.c), else slot_sync.
 * 0, or -1 with errno. */
int slot_commit(struct slots *s, struct slot_ref *ref, const char *id, uint64_t len);
/* slot_commit's other half, for a caller that must not wait: when the
 * pool's journal takes the message (true), done(arg, err) follows on the
 * journal's thread once it is durable or that failed; false: the caller
 * uses slot_commit. iov[0..iovcnt), when not NULL, are the len bytes as
 * they were written into the slot (the journal then does not read them
 * back). */
bool slot_commit_async(struct slots *s, struct slot_ref *ref, const char *id, uint64_t len,
		       const struct iovec *iov, int iovcnt, journal_done_cb *done, void *arg);
/* An unused or abandoned slot goes back to the pool, marked freed (its
 * first byte, not made durable): what it holds is never taken for a
 * committed message, not even a whole one whose sync failed and was
 * refused to its client; nothing when ref holds none (fd -1). */
void slot_drop(struct slots *s, struct slot_ref *ref);
/* What a crash left in spool_dir/slots/: a committed message whose id has
 * no name in the queue's folders is linked into incoming/, or hold/ when a
 * milter quarantined it (fsync'd). With
 * trim (the daemon's start, before any writer runs), free slots beyond
 * RECYCLE_POOL_MAX, empty or bigger than RECYCLE_FILE_MAX are unlinked,
 * and an older spool's free/ goes. Returns how many messages it
 * recovered, or -1 with errno. */
int slots_recover(const char *spool_dir, bool trim);
/* Adds free slots to slots/ up to n (each RECYCLE_ROUND zero bytes,
 * fdatasync'd, made in tmp/ and renamed in whole), named from ids (n
 * unused queue ids), while the file system has minfree and
 * RECYCLE_RESERVE more free. Slow (a new file's fsync each): for an I/O
 * thread. Returns how many it made, or -1 with errno. */
int slots_fill(const char *spool_dir, uint64_t minfree, char (*ids)[QID_LEN + 1], size_t n);
/* What a crash left in spool_dir/tmp/ (files being written, and from an
 * older spool, messages committed in tmp/: spool_committed_in_tmp, renamed
 * into incoming/ under their id, incoming/ fsync'd); the rest, with
 * remove_rest, is removed. For the start of the daemon, before any writer
 * runs, and for an import. Returns how many messages it recovered, or -1
 * with errno. */
int recycle_recover_tmp(const char *spool_dir, bool remove_rest);
/* Covers a file of size bytes whose records end at offset end (after the
 * end marker) with a padding record to its end; a file shorter than that
 * plus a record header grows to the next RECYCLE_ROUND bytes, zeros
 * written. Returns 0, or -1 with errno. */
int recycle_pad(int fd, uint64_t end, uint64_t size);

/* ---- a writer's journal (journal.c) ---- */
#define JOURNAL_SIZE (8ULL << 20)       /* the ring file's length */
#define JOURNAL_HDR_LEN 64              /* the header record */
#define JOURNAL_HDR_SIZE 4096           /* where the first entry goes */
#define JOURNAL_BOOT_LEN 36             /* /proc/sys/kernel/random/boot_id */
#define JOURNAL_ENTRY_HDR 64
#define JOURNAL_ALIGN 64                /* entries start at multiples of this (or of the
					 * device's direct I/O alignment, a multiple) */
#define JOURNAL_BODY_MAX (64U << 10)    /* bigger messages are synced in their slot */
#define JOURNAL_BATCH 16                /* a sync waits for at most this many entries, */
#define JOURNAL_WRITERS_PER_ENTRY 3     /* one per this many writers (journal_set_writers), */
#define JOURNAL_LINGER_USEC 2000        /* or this long after the first one */
#define JOURNAL_WRITE_IOV 32            /* entries per write of the syncer at most */
#define JOURNAL_PIN_NSEC 2000000000ULL  /* an entry still needed this long has its slot synced */
struct journal;
struct journal_entry {
	uint32_t body_len;
	uint64_t epoch, seq, tail;
	char slot[QID_LEN + 1];
	char id[QID_LEN + 1];
	const unsigned char *body;      /* parse: points into the parsed bytes */
};
/* The journal of this writer: an unlocked one of spool_dir/journal/
 * (whatever its last owner left made durable first, journal_recover's way)
 * or a new one; NULL when it cannot be had (the caller syncs slots).
 * flush_fd: the spool's flush file (recycle.c); avoid(ino, ctx): an inode
 * a new journal file must not have (it is set aside). */
struct journal *journal_open(const char *spool_dir, int slots_dfd, int flush_fd,
			     bool (*avoid)(ino_t, void *), void *ctx);
void journal_close(struct journal *j);
/* On a thread: the len bytes at the start of the slot open on slot_fd
 * (iov[0..iovcnt) when not NULL: those bytes as written), message id,
 * copied into the journal, to be made durable with the entries
 * written beside it by the journal's thread, which then calls done(arg, 0),
 * or done(arg, errno) when that failed. -1 with errno (and no done call)
 * when the entry could not be written. On 0, *ticket names the entry for
 * journal_linked(), which must follow once the message is linked into the
 * queue, or refused: the ring does not come round to it before. */
int journal_commit_async(struct journal *j, int slot_fd, const char *slot, const char *id,
			 uint64_t len, const struct iovec *iov, int iovcnt, uint64_t *ticket,
			 journal_done_cb *done, void *arg);
/* The same, returning once the entry is durable: 0, or -1 with errno. */
int journal_commit(struct journal *j, int slot_fd, const char *slot, const char *id,
		   uint64_t len, uint64_t *ticket);
void journal_linked(struct journal *j, uint64_t ticket);
/* How many writers may have entries under way (the sessions of the
 * worker); a sync waits for a third of them (JOURNAL_WRITERS_PER_ENTRY), at
 * most JOURNAL_BATCH, no longer than JOURNAL_LINGER_USEC. */
void journal_set_writers(struct journal *j, unsigned n);
/* At the daemon's start, before the slots are looked at: what the
 * journals no live writer holds say is made durable, or restored (see
 * journal.c). 0, or -1 with errno (logged). */
int journal_recover(const char *spool_dir);
/* The codec, for journal.c and its fuzz target */
uint64_t journal_entry_size(uint64_t body_len);
void journal_entry_encode(unsigned char hdr[JOURNAL_ENTRY_HDR], const struct journal_entry *e,
			  const void *body);
int journal_entry_parse(const unsigned char *p, size_t avail, struct journal_entry *e);
void journal_header_encode(unsigned char out[JOURNAL_HDR_LEN], uint64_t epoch, const char *boot);
int journal_header_parse(const unsigned char *p, size_t avail, uint64_t *epoch,
			 char boot[JOURNAL_BOOT_LEN + 1]);
int journal_file_id(const unsigned char *p, size_t n, char id[QID_LEN + 1], bool *freed);

#define QUEUE_NDIRS 6
int queue_open_dirs(const char *spool_dir, int fds[QUEUE_NDIRS]);
void queue_close_dirs(int fds[QUEUE_NDIRS]);
/* A batch of queue operations (one sorterctl request) whose changes reach
 * the disk together, at queue_batch_end: each folder it changed is fsynced
 * once, and the messages it deletes are marked freed at once, their marks
 * made durable together (slots_sync_marks), and only then their names
 * removed. Zeroed to begin. */
#define QUEUE_BATCH_MARKS 256
struct queue_batch {
	unsigned unsynced;              /* a bit per D_* folder changed */
	size_t n;                       /* deletes waiting for their marks */
	struct {
		signed char d;          /* the folder */
		int fd;                 /* the marked slot, or -1 */
		char id[QID_LEN + 1];
	} rm[QUEUE_BATCH_MARKS];
	bool failed;                    /* a delete failed at its end */
};
/* The file-level operation, for a message nobody is delivering: hold
 * moves it to hold/, release from hold/ to incoming/, delete removes it
 * (with its status file), flush makes a deferred message due now. With
 * batch NULL the change is on disk when it returns; else it is on disk
 * only after queue_batch_end (a delete's line is written then). */
int queue_op_offline(const int fds[QUEUE_NDIRS], enum queue_op op, const char *id,
		     struct dstr *out, struct queue_batch *batch);
/* Ends a batch: its deletes done, its folders fsynced. 0, or -1 with a
 * line in out. */
int queue_batch_end(const int fds[QUEUE_NDIRS], struct queue_batch *batch, struct dstr *out);
void queue_count_dirs(const int fds[QUEUE_NDIRS], struct dstr *out);

/* Control socket (spool_dir/control, owner only): one request line
 * "VERB [ARG...]", a reply whose first line is "ok" or "error: ...". */
struct control *control_start(struct qmgr *q, struct event_base *base, const char *spool_dir);
void control_stop(struct control *c);
/* Client side: 0 = answered (reply in out; its status in *ok), -1 = nobody
 * listens (errno set). */
int control_request(const char *spool_dir, const char *line, struct dstr *out, bool *ok);

/* ---- queue selection (select.c) ----
 * --sender, --rcpt, --node, --domain (fnmatch globs, ASCII case folded;
 * recipients: pending ones, all criteria on one recipient), --older-than,
 * --younger-than (90, 90s, 15m, 2h, 3d), --state (active,deferred,hold). */
#define QSEL_ACTIVE 1            /* incoming/ and active/ */
#define QSEL_DEFERRED 2
#define QSEL_HOLD 4

struct qselect {
	char *sender, *rcpt, *node, *domain;    /* NULL = any */
	long long older_than, younger_than;     /* seconds; -1 = any */
	unsigned states;                        /* QSEL_* bits; 0 = any */
};

void qselect_init(struct qselect *s);
void qselect_free(struct qselect *s);
bool qselect_empty(const struct qselect *s);
bool qselect_is_option(const char *name);
/* One command-line option and its value: 0, -1 (bad value: err says why)
 * or 1 (not a selection option). */
int qselect_option(struct qselect *s, const char *name, const char *value, char *err,
		   size_t errlen);
/* The control request form (one word, no space): "key=value&..." or "-" */
void qselect_encode(const struct qselect *s, struct dstr *out);
int qselect_decode(const char *in, size_t n, struct qselect *s, char *err, size_t errlen);
/* The i-th node name of rcpt's routes, NULL past the last */
typedef const char *(*qselect_node_fn)(void *arg, const char *rcpt, size_t i);
bool qselect_match(const struct qselect *s, unsigned state, const struct spool_msg *m,
		   uint64_t now_usec, qselect_node_fn node_of, void *arg);
/* node_of through a router (qselect_router_node with the handle as arg) */
struct router;
struct qselect_router;
struct qselect_router *qselect_router_new(struct router *r);
void qselect_router_free(struct qselect_router *qr);
const char *qselect_router_node(void *arg, const char *rcpt, size_t i);
/* The ids of the queue files that match, oldest first (free each and the
 * array). Files that cannot be read or parsed are not selected. 0, or -1
 * with errno when a folder cannot be read. */
int qselect_scan(const char *spool_dir, const struct qselect *s, qselect_node_fn node_of,
		 void *arg, char ***ids, size_t *n);
/* Selects (only in the states op can act on: release what is held, flush
 * what is deferred, hold what is not held) and calls act for each id; a
 * line per message from act, then "N messages removed" (placed on hold,
 * released, to be retried). 0, or -1 when act failed for some (or the
 * spool could not be read). */
typedef int (*qselect_act_fn)(void *arg, enum queue_op op, const char *id, struct dstr *out);
int qselect_apply(const char *spool_dir, const struct qselect *sel, enum queue_op op,
		  qselect_node_fn node_of, void *node_arg, qselect_act_fn act, void *act_arg,
		  struct dstr *out);

/* ---- node health and drains (nodestate.c: the codec, pure) ----
 * Records "node NODE", "drained NODE SINCE" and "endpoint NODE ENDPOINT
 * STATE LATENCY_USEC PROBED [ERROR]", one per line (format in nodestate.c):
 * the file spool_dir/drained holds drained records; the control request
 * "nodes" is answered with all three. */
#define NODESTATE_FILE "drained"
#define NODESTATE_LINE_MAX 2048
#define NODESTATE_EP_MAX 400            /* >= NODECAPS_KEY_MAX (router.h) */
#define NODESTATE_NODE_MAX 64           /* = ROUTER_NODE_MAX (router.h) */

enum node_ep_health { NODE_EP_UNKNOWN, NODE_EP_UP, NODE_EP_DOWN };
enum nodestate_type { NSR_NODE, NSR_DRAINED, NSR_ENDPOINT };

struct nodestate_rec {
	enum nodestate_type type;
	char node[NODESTATE_NODE_MAX + 1];
	unsigned long long since;       /* drained: since when; endpoint: last probe, 0 = none */
	char endpoint[NODESTATE_EP_MAX];
	enum node_ep_health health;
	unsigned long long latency_usec;
	char error[512];
};

struct nodestate_source {
	const char *p, *end;
	unsigned long line;             /* lines consumed so far */
};

/* 1 = a record in *r, 0 = end, -1 = a malformed line ("line N: why"). */
void nodestate_source_init(struct nodestate_source *s, const char *buf, size_t len);
int nodestate_next(struct nodestate_source *s, struct nodestate_rec *r, char *err, size_t errlen);
/* Appends r as one line; error text is made printable and trimmed. */
void nodestate_format(const struct nodestate_rec *r, struct dstr *out);
/* A node name these records can carry (and drain takes) */
bool nodestate_name_ok(const char *s, size_t n);
const char *nodestate_health_name(enum node_ep_health h);

/* The drained nodes (drainfile.c): load and save spool_dir/drained (save
 * is durable: temporary file, fsync, rename, directory fsync; it blocks). */
struct drainset {
	struct nodestate_rec *v;        /* NSR_DRAINED records */
	size_t n;
};
/* A missing file is an empty set: 0. -1 with err when it cannot be read
 * or parsed. */
int drainset_load(const char *spool_dir, struct drainset *d, char *err, size_t errlen);
/* 0, or an errno */
int drainset_save(const char *spool_dir, const struct drainset *d);
const struct nodestate_rec *drainset_find(const struct drainset *d, const char *node);
/* Adds (on) or removes node; true when that changed the set */
bool drainset_set(struct drainset *d, const char *node, bool on, unsigned long long now);
void drainset_free(struct drainset *d);

/* ---- sorterctl queue --summary (summary.c) ----
 * Messages, recipients, bytes and the oldest arrival by state, by node and
 * by remote domain (pending recipients only). */
struct qsummary;
struct qsummary *qsummary_new(const struct config *cf);
void qsummary_add(struct qsummary *s, unsigned state, const struct spool_msg *m, uint64_t now,
		  qselect_node_fn node_of, void *arg);
void qsummary_print(struct qsummary *s, bool json, FILE *out);
void qsummary_free(struct qsummary *s);
/* The i-th node row: false past the last */
bool qsummary_node(const struct qsummary *s, size_t i, const char **name,
		   unsigned long long *messages, unsigned long long *recipients);
/* sorterctl nodes (ctlnodes.c): the daemon's report (reply, NULL when it
 * does not run: node_map through r, the drained file) with each endpoint's
 * capabilities (spool_dir/nodecaps) and each node's queued mail (sum). */
int ctl_nodes(const struct config *cf, const char *reply, struct router *r,
	      const struct qsummary *sum, bool json, FILE *out);

/* ---- the metrics process (metrics_http.c) ---- */
struct metrics;
struct metrics_queue;
/* Serves GET /metrics on listen_fd until SIGTERM or EOF on master_fd. */
int metrics_http_main(const struct config *cf, const struct metrics *m, int listen_fd,
		      int master_fd);
/* Counts and sizes the spool's folders; the oldest id's age. */
void metrics_queue_scan(const char *spool_dir, struct metrics_queue *q);

/* ---- per-message status of deferred mail (status.c) ---- */
enum qstatus_kind { QS_ERROR, QS_DONE };

struct qstatus_item {
	enum qstatus_kind kind;
	size_t index;              /* spool recipient index */
	char *text;                /* error text, or the final expanded address */
};

struct qstatus {
	unsigned attempts;
	bool warned;               /* a delay DSN went out */
	/* time its recipients spent parked (their node drained), which the
	 * queue lifetime and the delay notices do not count: seconds of the
	 * periods that ended, and the start of the one under way (0: none) */
	unsigned long long parked;
	unsigned long long parked_since;
	struct qstatus_item *items;
	size_t nitems;
};

void qstatus_init(struct qstatus *st);
/* The seconds spent parked up to now */
unsigned long long qstatus_parked(const struct qstatus *st, unsigned long long now);
void qstatus_free(struct qstatus *st);
void qstatus_set_error(struct qstatus *st, size_t index, const char *text);
const char *qstatus_error(const struct qstatus *st, size_t index);
void qstatus_add_done(struct qstatus *st, size_t index, const char *address);
bool qstatus_is_done(const struct qstatus *st, size_t index, const char *address);
/* 0 (also for a missing file: empty status), -1 for a bad file (only
 * history is lost: go on without it), -2 when it cannot be read now
 * (errno set: try again later rather than act on half a status). */
int qstatus_read(const char *path, struct qstatus *st);
int qstatus_parse(const char *buf, size_t len, struct qstatus *st);
void qstatus_format(const struct qstatus *st, struct dstr *out);
/* Atomically replaces dirfd/id; with ds, waits for the directory fsync.
 * Returns 0 or an errno value. */
int qstatus_write(int dirfd, struct groupsync *ds, const char *id, const struct qstatus *st);

/* ---- taking over another sorter's spool (import.c) ----
 * Each message of the peer's spool src is copied in under a fresh id of
 * this spool and removed from src once the copy is durable; held messages
 * stay held, recipient marks and the status file go with the message. A
 * message on its way is renamed in src to importing/OLDID.NEWID.STATE
 * first, and the copy is recorded in import/NEWID here before it is
 * visible, so that a run cut short at any point is finished by the next
 * one without a message delivered twice (import.c explains the steps). */
#define IMPORT_NSTATES 4         /* incoming active deferred hold */
extern const char *const import_states[IMPORT_NSTATES];
#define IMPORT_MARKER_LEN (2 * QID_LEN + 2 + 8)
/* "OLDID.NEWID.STATE" into out (IMPORT_MARKER_LEN + 1 bytes) */
void import_marker_format(const char *oldid, const char *newid, int state, char *out);
/* The reverse: the state's index, or -1 when name is no marker. */
int import_marker_parse(const char *name, char oldid[QID_LEN + 1], char newid[QID_LEN + 1]);

struct import_result {
	unsigned imported;         /* copied in (held ones included) */
	unsigned held;             /* of those, into hold/ */
	unsigned resumed;          /* of those, finished after an interrupted run */
	unsigned quarantined;      /* torn or corrupt: moved to src's corrupt/ */
	unsigned failed;           /* left in src (an error was printed) */
};

/* Imports src into spool_dir, a line "OLDID -> NEWID" per message on out,
 * errors on stderr. 0, or -1 when it could not start (err says why:
 * src is no spool, is this spool, a queue manager runs on it, ...). */
int queue_import(const char *spool_dir, const char *src, FILE *out, struct import_result *res,
		 char *err, size_t errlen);

/* ---- DSN (dsn.c) ----
 * RFC 3464 delivery status notifications built as RFC 6522 multipart/report
 * messages (the RFC 3461 parameters: lib.h, dsnparam.c). Pure: no I/O, and
 * nothing here decides who gets a DSN (that is the queue manager's). */
enum dsn_kind { DSN_FAILURE, DSN_DELAY, DSN_SUCCESS };

struct dsn_report {
	const char *reporting_mta;      /* our hostname */
	const char *queue_id;           /* of the original message */
	uint64_t arrival_usec;
	const char *sender;             /* the original envelope sender: the DSN's To: */
	const char *envid;              /* decoded, or NULL */
	int ret;                        /* DSN_RET_FULL, DSN_RET_HDRS, 0 = FULL */
	enum dsn_kind kind;
	const char *postmaster;         /* named in the text as the contact; NULL = "postmaster" */
	const unsigned char *content;   /* the message as stored: CRLF lines, our Received: first */
	size_t content_len;
};

struct dsn_entry {
	const char *final_rcpt;         /* the address */
	const char *orcpt_type, *orcpt; /* decoded; may be NULL */
	const char *action;             /* "failed", "delayed", "delivered", "relayed", "expanded" */
	const char *status;             /* "5.1.1" */
	const char *remote_mta;         /* may be NULL */
	const char *diagnostic;         /* why; may be NULL */
	bool diagnostic_is_reply;       /* diagnostic is a server's SMTP/LMTP reply ("smtp;"),
					 * not Sorter's own words ("X-Sorter;") */
	uint64_t last_attempt_usec;     /* 0 = omit */
	uint64_t will_retry_until_usec; /* delays only; 0 = omit */
};

/* Appends a complete RFC 5322 message (CRLF line ends, never a bare CR or
 * LF) reporting on the n entries; the Message-ID is
 * <message_id_unique@reporting_mta>. out must have no limit. */
void dsn_build(const struct dsn_report *r, const struct dsn_entry *e, size_t n,
	       const char *message_id_unique, struct dstr *out);
/* The enhanced status code of an SMTP/LMTP reply ("550 5.1.1 ..." ->
 * "5.1.1"), or "2.0.0"/"4.0.0"/"5.0.0" from the reply code when the text
 * has none. Returns false (status "") when reply does not start with a
 * 2xx, 4xx or 5xx reply code. */
bool dsn_status_from_reply(const char *reply, char status[16]);

#endif
