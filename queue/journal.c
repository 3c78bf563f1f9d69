/*
 * journal.c - several new messages made durable by one device write.
 *
 * A message written into a slot (recycle.c) needs its bytes on stable
 * storage before its 250. Made durable where it stands, each message costs
 * the device one write request of its own, since slots lie apart on the
 * disk. A writer's journal is one file of SPOOL/journal/ that only its
 * process writes (it holds an flock on it): each new message up to
 * JOURNAL_BODY_MAX is copied from its slot into the journal as one entry,
 * right after the one before. The journal's own thread (syncer_main) then
 * makes every entry so far durable at once: it writes their bytes to the
 * device itself, with direct I/O, from the entries' own buffers (where the
 * file has no direct I/O, each writer puts its entry in the page cache and
 * a sync_file_range of the journal writes them), then flushes the device's
 * cache (the spool's flush file's fdatasync, recycle.c); only then is each
 * message linked into the queue and its 250 sent. Entries written together
 * lie together, so one write request carries them all: the device sees a
 * write and a flush per batch, not per message, and the I/O threads hand
 * their commits over instead of each sleeping until its own sync is done.
 * With direct I/O an entry starts at, and is padded to, a multiple of the
 * device's alignment (512 bytes on most disks). The slot itself is not synced;
 * the kernel writes it back in its own time, or never when the message is
 * delivered before that.
 *
 * The journal is a ring: a file of JOURNAL_SIZE bytes, written in full
 * (zeros) and fdatasync'd when it is made, so that entries overwrite
 * blocks it has and need no metadata to be durable (ext4 without data
 * journaling, as for slots: slots_overwrite_in_place). It starts with a
 * header block (epoch, boot id), then entries aligned to JOURNAL_ALIGN:
 *
 *   "SJE1", body length (4), epoch (8), seq (8), tail (8), slot name
 *   (QID_LEN + 1), message id (QID_LEN + 1), 2 zero bytes, CRC-32C (4) of
 *   those 60 bytes and the body; then the body: the slot's bytes from its
 *   start to its end marker.
 *
 * seq is a CLOCK_MONOTONIC time, strictly growing within a journal; tail
 * is the seq of the oldest entry still needed when this one was written.
 * An entry is no longer needed (released) once its message is finished
 * (its slot has lost its queue name: one link) or its slot was fdatasync'd.
 * The writer releases from the oldest entry on: those found finished as it
 * writes new ones, and before the ring comes round to an entry still
 * needed, that entry's slot is fdatasync'd.
 *
 * After a crash (journal_recover: the master's start-up, before the
 * queue's slots are looked at; and a writer that takes a journal its
 * earlier owner left): the entries of the header's epoch whose CRC matches
 * and whose seq is at least the tail of the newest are the needed ones.
 *   - Same boot (the header's boot id is this boot's): the page cache
 *     still holds every slot as written, so a slot that holds the entry's
 *     message (its id, not freed) is fdatasync'd, and any other entry's
 *     message was finished.
 *   - Another boot (a power failure, or a reboot): for each slot, only
 *     the newest entry naming it counts (an older one's message was freed
 *     before the slot was written again). A slot that holds the message
 *     whole (it parses, its check matches) is fdatasync'd; one that holds
 *     it freed was finished; otherwise the entry's body is the message: it
 *     is written to tmp/ID, fsync'd, and renamed over its queue name
 *     (incoming/, active/, deferred/ or hold/), or into incoming/ (hold/
 *     for a quarantined one) when it has none. A message the crash caught
 *     finished but not yet forgotten may so come back, to be delivered
 *     again; one acknowledged is never lost.
 * Then the header gets a new epoch and this boot's id, fdatasync'd: the
 * old entries are void.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/lib.h"
#include "queue/queue.h"

#define RELEASE_PER_COMMIT 2    /* finished entries looked at per commit */

struct jent {
	uint64_t seq, off, end;
	char slot[QID_LEN + 1];
	char id[QID_LEN + 1];
	bool written;           /* its write and sync are over, or failed */
	bool linked;            /* its queue name was made (or refused) */
};

/* an entry waiting for the syncer, at the end of its buffer (one allocation) */
struct jwait {
	uint64_t seq;
	uint64_t off, size;     /* where it goes in the file */
	unsigned char *buf;     /* its bytes */
	bool direct;            /* for the syncer to write; else written by its writer */
	journal_done_cb *done;
	void *arg;
	struct jwait *next;
};

struct journal {
	int fd;                         /* O_DIRECT when direct */
	bool direct;                    /* the syncer writes the entries (direct I/O) */
	size_t align;                   /* entries start at multiples of this */
	size_t mem_align;               /* and their buffers at multiples of this */
	int slots_dfd;                  /* not ours */
	int flush_fd;                   /* a dup of the spool's flush file */
	char name[64];
	char path[4096];                /* for the log */
	pthread_mutex_t lock;
	pthread_cond_t cond;            /* an entry was synced or linked */
	pthread_cond_t wake;            /* for the syncer: entries to sync, or stop */
	pthread_t syncer;
	struct jwait *pending, **pending_tail;
	size_t npending;
	uint64_t pending_since;         /* CLOCK_MONOTONIC ns of the first pending */
	bool stopping;
	unsigned writers;               /* journal_set_writers */
	uint64_t epoch;
	uint64_t head;                  /* where the next entry goes */
	uint64_t last_seq;
	struct jent *q;                 /* entries not released, oldest first (a ring) */
	size_t qcap, qfirst, qn;
	uint64_t forced;                /* slots fdatasync'd for the ring */
	uint64_t rounds, forced_logged; /* for its log line */
};

/* ---- helpers ---- */

static void
this_boot(char boot[JOURNAL_BOOT_LEN + 1])
{
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, boot, JOURNAL_BOOT_LEN) : -1;

	if (fd >= 0)
		close(fd);
	if (n < 0)
		n = 0;
	memset(boot + n, 0, (size_t)(JOURNAL_BOOT_LEN + 1 - n));
	/* without one, every start is taken for another boot: the careful way */
	if (n == 0)
		snprintf(boot, JOURNAL_BOOT_LEN + 1, "unknown-%ld", (long)getpid());
}

static void
monotonic_cond_init(pthread_cond_t *c)
{
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(c, &ca);
	pthread_condattr_destroy(&ca);
}

static uint64_t
mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int
pwrite_full(int fd, const void *buf, size_t n, off_t off)
{
	const char *p = buf;
	ssize_t w;

	while (n > 0) {
		w = pwrite(fd, p, n, off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			if (w == 0)
				errno = EIO;
			return -1;
		}
		p += w;
		n -= (size_t)w;
		off += w;
	}
	return 0;
}

static ssize_t
pread_full(int fd, void *buf, size_t n, off_t off)
{
	char *p = buf;
	size_t got = 0;
	ssize_t r;

	while (got < n) {
		r = pread(fd, p + got, n - got, off + (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

/* Whether the slot NAME of slots_dfd holds the message id, marked freed
 * or not as freed_mark says; 1 yes (*fd_out open on it when fd_out), 0 no,
 * -1 cannot tell (errno). */
static int
slot_has(int slots_dfd, const char *name, const char *id, bool freed_mark, int *fd_out)
{
	unsigned char buf[512];
	char got[QID_LEN + 1];
	bool freed;
	ssize_t n;
	int fd = openat(slots_dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);

	if (fd < 0)
		return errno == ENOENT ? 0 : -1;
	n = pread_full(fd, buf, sizeof(buf), 0);
	if (n < 0) {
		close(fd);
		return -1;
	}
	if (journal_file_id(buf, (size_t)n, got, &freed) < 0 || freed != freed_mark ||
	    strcmp(got, id) != 0) {
		close(fd);
		return 0;
	}
	if (fd_out)
		*fd_out = fd;
	else
		close(fd);
	return 1;
}

/* ---- the writer ---- */

static struct jent *
qat(struct journal *j, size_t i)
{
	return &j->q[(j->qfirst + i) % j->qcap];
}

static void
qpop(struct journal *j)
{
	j->qfirst = (j->qfirst + 1) % j->qcap;
	j->qn--;
}

static struct jent *
qpush(struct journal *j)
{
	struct jent *nq;
	size_t i;

	if (j->qn == j->qcap) {
		nq = xcalloc(j->qcap * 2, sizeof(*nq));
		for (i = 0; i < j->qn; i++)
			nq[i] = *qat(j, i);
		free(j->q);
		j->q = nq;
		j->qfirst = 0;
		j->qcap *= 2;
	}
	j->qn++;
	return qat(j, j->qn - 1);
}

/* Under the lock: the entry of seq, or NULL (released). The ring holds
 * its entries in the order of their seqs. */
static struct jent *
find_entry(struct journal *j, uint64_t seq)
{
	size_t lo = 0, hi = j->qn, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (qat(j, mid)->seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < j->qn && qat(j, lo)->seq == seq ? qat(j, lo) : NULL;
}

/* Under the lock: the oldest entry, written, released if its message is
 * finished (its slot has one link: no queue name) or, when force, once its
 * slot is fdatasync'd. 1 released, 0 not (still needed, or not yet
 * written), -1 a sync failed (errno). */
static int
release_oldest(struct journal *j, bool force)
{
	struct jent *e = qat(j, 0);
	struct stat sb;
	int fd = -1, rc;

	if (!e->written || !e->linked)
		return 0;
	if (fstatat(j->slots_dfd, e->slot, &sb, AT_SYMLINK_NOFOLLOW) == 0 && sb.st_nlink < 2) {
		qpop(j);
		return 1;
	}
	if (!force)
		return 0;
	rc = slot_has(j->slots_dfd, e->slot, e->id, false, &fd);
	if (rc < 0)
		return -1;
	if (rc == 1) {
		rc = fdatasync(fd);
		close(fd);
		if (rc < 0)
			return -1;
		j->forced++;
	}
	qpop(j);
	return 1;
}

/* Under the lock: the oldest entry released, once written and linked (if
 * it is not, this waits for a change and returns, for the caller to look
 * again). 0, or -1 (errno) when its slot's sync failed. */
static int
release_front(struct journal *j)
{
	struct jent *e = qat(j, 0);

	if (!e->written || !e->linked) {
		pthread_cond_wait(&j->cond, &j->lock);
		return 0;
	}
	return release_oldest(j, true) < 0 ? -1 : 0;
}

/* Under the lock: makes room for an entry of size bytes at the head. Near
 * the file's end the ring goes round to the start; the entries between the
 * head and the end are then older than any the new round will write, and
 * are released first. Then so is every entry the new one will write over.
 * Another thread may move the head while this one waits: each step looks
 * at the state afresh. */
static int
make_room(struct journal *j, uint64_t size)
{
	const struct jent *e;

	for (;;) {
		e = j->qn > 0 ? qat(j, 0) : NULL;
		if (j->head + size > JOURNAL_SIZE) {
			if (e == NULL || e->off < j->head) {
				j->head = JOURNAL_HDR_SIZE;
				j->rounds++;
				/* a queue that outgrows the ring costs a sync each */
				if (j->forced > j->forced_logged)
					msg_info("%s: round %llu done, %llu of its entries' slots "
						 "synced for it (their messages still queued)",
						 j->path, (unsigned long long)j->rounds,
						 (unsigned long long)(j->forced - j->forced_logged));
				j->forced_logged = j->forced;
			} else if (release_front(j) < 0)
				return -1;
			continue;
		}
		if (e == NULL || !(e->off < j->head + size && e->end > j->head))
			return 0;
		if (release_front(j) < 0)
			return -1;
	}
}

/* The len bytes of iov[0..iovcnt) copied to dst: 0, or -1 when they are
 * not len bytes. */
static int
copy_iov(unsigned char *dst, uint64_t len, const struct iovec *iov, int iovcnt)
{
	uint64_t got = 0;
	int i;

	for (i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > len - got)
			return -1;
		memcpy(dst + got, iov[i].iov_base, iov[i].iov_len);
		got += iov[i].iov_len;
	}
	return got == len ? 0 : -1;
}

/* The bytes an entry of a body of len takes in j's file: its encoded
 * size (journal_entry_size), padded with zeros to j's alignment. */
static uint64_t
entry_span(const struct journal *j, uint64_t len)
{
	uint64_t size = journal_entry_size(len);

	return (size + j->align - 1) / j->align * j->align;
}

/* Under the lock: how many entries a sync waits for (see syncer_main). */
static size_t
batch_target(const struct journal *j)
{
	size_t n = j->writers / JOURNAL_WRITERS_PER_ENTRY;

	return n < 1 ? 1 : n > JOURNAL_BATCH ? JOURNAL_BATCH : n;
}

void
journal_set_writers(struct journal *j, unsigned n)
{
	pthread_mutex_lock(&j->lock);
	j->writers = n;
	pthread_mutex_unlock(&j->lock);
}

int
journal_commit_async(struct journal *j, int slot_fd, const char *slot, const char *id,
		     uint64_t len, const struct iovec *iov, int iovcnt, uint64_t *ticket,
		     journal_done_cb *done, void *arg)
{
	struct journal_entry je;
	struct jwait *w;
	unsigned char *buf;
	uint64_t size = entry_span(j, len), seq, off;
	struct jent *e;
	bool direct;
	ssize_t n;
	int err = 0, i;
	void *p;

	*ticket = 0;
	if (len == 0 || len > JOURNAL_BODY_MAX) {
		errno = EFBIG;
		return -1;
	}
	if ((err = posix_memalign(&p, j->mem_align, (size_t)size + sizeof(*w))) != 0)
		msg_fatal("out of memory: %s", strerror(err));
	buf = p;
	w = (struct jwait *)(buf + size);       /* size: a multiple of JOURNAL_ALIGN */
	if (iov != NULL && copy_iov(buf + JOURNAL_ENTRY_HDR, len, iov, iovcnt) < 0) {
		free(buf);
		errno = EINVAL;
		return -1;
	}
	if (iov == NULL &&
	    (n = pread_full(slot_fd, buf + JOURNAL_ENTRY_HDR, (size_t)len, 0)) != (ssize_t)len) {
		err = n < 0 ? errno : EIO;
		free(buf);
		errno = err;
		return -1;
	}
	memset(buf + JOURNAL_ENTRY_HDR + len, 0, (size_t)(size - JOURNAL_ENTRY_HDR - len));

	pthread_mutex_lock(&j->lock);
	for (i = 0; i < RELEASE_PER_COMMIT && j->qn > 0; i++)
		if (release_oldest(j, false) != 1)
			break;
	if (make_room(j, size) < 0) {
		err = errno ? errno : EIO;
		pthread_mutex_unlock(&j->lock);
		free(buf);
		errno = err;
		return -1;
	}
	seq = mono_ns();
	if (seq <= j->last_seq)
		seq = j->last_seq + 1;
	j->last_seq = seq;
	*ticket = seq;          /* before done() can run: it may read it */
	off = j->head;
	j->head += size;
	e = qpush(j);
	e->seq = seq;
	e->off = off;
	e->end = off + size;
	snprintf(e->slot, sizeof(e->slot), "%s", slot);
	snprintf(e->id, sizeof(e->id), "%s", id);
	e->written = e->linked = false;
	je.body_len = (uint32_t)len;
	je.epoch = j->epoch;
	je.seq = seq;
	je.tail = qat(j, 0)->seq;
	snprintf(je.slot, sizeof(je.slot), "%s", slot);
	snprintf(je.id, sizeof(je.id), "%s", id);
	direct = j->direct;
	pthread_mutex_unlock(&j->lock);

	journal_entry_encode(buf, &je, buf + JOURNAL_ENTRY_HDR);
	/* with direct I/O the syncer writes it; else into the page cache here,
	 * for the syncer's sync_file_range */
	if (!direct && pwrite_full(j->fd, buf, (size_t)size, (off_t)off) < 0)
		err = errno ? errno : EIO;

	pthread_mutex_lock(&j->lock);
	if (err != 0) {
		/* not needed: its message gets no 250 from it */
		e = find_entry(j, seq);
		if (e)
			e->written = e->linked = true;
		pthread_cond_broadcast(&j->cond);
		pthread_mutex_unlock(&j->lock);
		free(buf);
		*ticket = 0;
		errno = err;
		return -1;
	}
	w->seq = seq;
	w->off = off;
	w->size = size;
	w->buf = buf;
	w->direct = direct;
	w->done = done;
	w->arg = arg;
	w->next = NULL;
	if (j->npending == 0)
		j->pending_since = mono_ns();
	*j->pending_tail = w;
	j->pending_tail = &w->next;
	j->npending++;
	if (j->npending == 1 || j->npending >= batch_target(j))
		pthread_cond_signal(&j->wake);
	pthread_mutex_unlock(&j->lock);
	return 0;
}

/*
 * Under the lock, on the syncer: an oldest entry still needed
 * JOURNAL_PIN_NSEC after it was written (its message stays queued: deferred,
 * or its node is down) would keep every later one needed after a reboot,
 * finished or not, and what a power failure can bring back to be delivered
 * again would grow to the whole ring. So its slot is fdatasync'd (outside
 * the lock) and it is released: one such sync per batch at most.
 */
static void
unpin(struct journal *j)
{
	char slot[QID_LEN + 1], id[QID_LEN + 1];
	struct jent *e;
	uint64_t seq;
	int fd, rc;

	if (j->qn == 0)
		return;
	e = qat(j, 0);
	if (!e->written || !e->linked || mono_ns() - e->seq < JOURNAL_PIN_NSEC ||
	    release_oldest(j, false) == 1)
		return;
	memcpy(slot, e->slot, sizeof(slot));
	memcpy(id, e->id, sizeof(id));
	seq = e->seq;
	pthread_mutex_unlock(&j->lock);
	rc = slot_has(j->slots_dfd, slot, id, false, &fd);
	if (rc == 1) {
		rc = fdatasync(fd) < 0 ? -1 : 1;
		close(fd);
	}
	pthread_mutex_lock(&j->lock);
	if (rc >= 0 && j->qn > 0 && qat(j, 0)->seq == seq) {
		qpop(j);
		j->forced += rc == 1;
	}
}

static int
cmp_off(const void *a, const void *b)
{
	const struct jwait *x = *(struct jwait *const *)a, *y = *(struct jwait *const *)b;

	return x->off < y->off ? -1 : x->off > y->off;
}

/*
 * On the syncer, outside the lock: the entries of list it writes itself
 * (direct) written where they go, each run of entries that lie side by
 * side in the file by one pwritev of at most JOURNAL_WRITE_IOV of them. On
 * the O_DIRECT descriptor each returns once the device has the bytes (in
 * its cache: the flush follows). 0, or an errno value.
 */
static int
write_entries(struct journal *j, struct jwait *list)
{
	struct iovec iov[JOURNAL_WRITE_IOV];
	struct jwait **v, *w;
	size_t n = 0, i, k;
	uint64_t off, len;
	ssize_t got;
	int err = 0;

	for (w = list; w; w = w->next)
		n += w->direct;
	if (n == 0)
		return 0;
	v = xmalloc(n * sizeof(*v));
	n = 0;
	for (w = list; w; w = w->next)
		if (w->direct)
			v[n++] = w;
	/* in the order of the file: a round of the ring splits them */
	qsort(v, n, sizeof(*v), cmp_off);
	for (i = 0; i < n && err == 0; i = k) {
		off = v[i]->off;
		len = 0;
		for (k = i; k < n && k - i < JOURNAL_WRITE_IOV && v[k]->off == off + len; k++) {
			iov[k - i].iov_base = v[k]->buf;
			iov[k - i].iov_len = (size_t)v[k]->size;
			len += v[k]->size;
		}
		do
			got = pwritev(j->fd, iov, (int)(k - i), (off_t)off);
		while (got < 0 && errno == EINTR);
		if (got < 0)
			err = errno ? errno : EIO;
		else if ((uint64_t)got != len)
			err = EIO;      /* a short direct write: the slots are synced */
	}
	free(v);
	return err;
}

/* On the syncer, after a direct write the file refused (EINVAL): entries
 * go through the page cache from now on, as where direct I/O is not had. */
static void
stop_direct(struct journal *j)
{
	int fl = fcntl(j->fd, F_GETFL);

	pthread_mutex_lock(&j->lock);
	if (j->direct && fl >= 0 && fcntl(j->fd, F_SETFL, fl & ~O_DIRECT) == 0) {
		j->direct = false;
		msg_warn("%s: a direct write refused (%s); written through the page cache "
			 "from now on", j->path, strerror(EINVAL));
	}
	pthread_mutex_unlock(&j->lock);
}

/*
 * The syncer: the entries written so far made durable at once. With
 * direct I/O (j->direct) it writes their bytes itself, straight from each
 * entry's buffer to the device, one request for the batch; otherwise each
 * writer put its entry in the page cache and a sync_file_range of the
 * journal (its dirty pages, which lie together) writes them. Then the
 * flush file's fdatasync flushes the device's cache, and each one's
 * done() is called, in the order written. When its last sync served more
 * than one entry, it first waits up to JOURNAL_LINGER_USEC after the first
 * entry for more, so that one sync serves several: a millisecond or two of
 * a message's time for fewer device requests and fewer wake-ups. How many
 * it waits for follows how many writers there are (batch_target): one
 * for every JOURNAL_WRITERS_PER_ENTRY of them, up to JOURNAL_BATCH. With
 * few, a sync that waited for most of them would leave the worker idle;
 * with many, the rest keep it busy meanwhile, and a bigger batch saves
 * more. A lone sender's messages are synced at once.
 */
static void *
syncer_main(void *arg)
{
	struct journal *j = arg;
	struct jwait *list, *w, *next;
	struct timespec until;
	size_t last_batch = 0;
	bool direct, paged;
	uint64_t at;
	struct jent *e;
	int err;

	pthread_mutex_lock(&j->lock);
	for (;;) {
		while (j->npending == 0 && !j->stopping)
			pthread_cond_wait(&j->wake, &j->lock);
		if (j->npending == 0)
			break;
		/* a lone sender is not kept waiting: only when the last sync
		 * served several is the next one worth waiting for */
		at = j->pending_since + JOURNAL_LINGER_USEC * 1000ULL;
		until.tv_sec = (time_t)(at / 1000000000ULL);
		until.tv_nsec = (long)(at % 1000000000ULL);
		while (last_batch > 1 && j->npending < batch_target(j) && !j->stopping &&
		       pthread_cond_timedwait(&j->wake, &j->lock, &until) != ETIMEDOUT)
			;
		last_batch = j->npending;
		list = j->pending;
		j->pending = NULL;
		j->pending_tail = &j->pending;
		j->npending = 0;
		direct = j->direct;
		pthread_mutex_unlock(&j->lock);

		paged = !direct;
		for (w = list; w && !paged; w = w->next)
			paged = !w->direct;
		err = write_entries(j, list);
		if (err == EINVAL && direct)
			stop_direct(j);
		if (err == 0 && paged &&
		    sync_file_range(j->fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
				    SYNC_FILE_RANGE_WAIT_AFTER) < 0)
			err = errno ? errno : EIO;
		if (err == 0 && fdatasync(j->flush_fd) < 0)
			err = errno ? errno : EIO;

		pthread_mutex_lock(&j->lock);
		for (w = list; w; w = w->next) {
			if ((e = find_entry(j, w->seq)) != NULL) {
				e->written = true;
				if (err != 0)
					e->linked = true;   /* its slot is synced instead */
			}
		}
		pthread_cond_broadcast(&j->cond);
		pthread_mutex_unlock(&j->lock);
		for (w = list; w; w = next) {
			next = w->next;
			w->done(w->arg, err);
			free(w->buf);   /* and w */
		}
		pthread_mutex_lock(&j->lock);
		unpin(j);
	}
	pthread_mutex_unlock(&j->lock);
	return NULL;
}

struct blocking {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
	int err;
};

static void
blocking_done(void *arg, int err)
{
	struct blocking *b = arg;

	pthread_mutex_lock(&b->lock);
	b->done = true;
	b->err = err;
	pthread_cond_signal(&b->cond);
	pthread_mutex_unlock(&b->lock);
}

int
journal_commit(struct journal *j, int slot_fd, const char *slot, const char *id,
	       uint64_t len, uint64_t *ticket)
{
	struct blocking b = { .done = false, .err = 0 };
	int rc;

	pthread_mutex_init(&b.lock, NULL);
	pthread_cond_init(&b.cond, NULL);
	rc = journal_commit_async(j, slot_fd, slot, id, len, NULL, 0, ticket, blocking_done, &b);
	if (rc == 0) {
		pthread_mutex_lock(&b.lock);
		while (!b.done)
			pthread_cond_wait(&b.cond, &b.lock);
		pthread_mutex_unlock(&b.lock);
		if (b.err != 0) {
			errno = b.err;
			rc = -1;
		}
	}
	pthread_mutex_destroy(&b.lock);
	pthread_cond_destroy(&b.cond);
	return rc;
}

void
journal_linked(struct journal *j, uint64_t ticket)
{
	struct jent *e;

	pthread_mutex_lock(&j->lock);
	if ((e = find_entry(j, ticket)) != NULL)
		e->linked = true;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
}


/* ---- recovery ---- */

struct found {
	struct journal_entry e;
	int jfd;
	unsigned char *body;    /* a copy */
};

struct jfile {
	int fd;
	char name[64];
	bool same_boot;
	bool ok;
};

/* The needed entries of the journal open on fd (its header's epoch, CRC
 * matching, seq at least the newest's tail), appended to *v. */
static int
read_entries(int fd, bool *same_boot, struct found **v, size_t *n, size_t *cap, int jfd_index)
{
	char boot[JOURNAL_BOOT_LEN + 1], mine[JOURNAL_BOOT_LEN + 1];
	unsigned char *map;
	struct journal_entry e;
	struct stat sb;
	uint64_t epoch, off, tail = 0, newest = 0;
	size_t first = *n, i, k;
	ssize_t got;

	if (fstat(fd, &sb) < 0)
		return -1;
	if (sb.st_size < JOURNAL_HDR_SIZE) {
		*same_boot = true;
		return 0;
	}
	map = xmalloc((size_t)sb.st_size);
	got = pread_full(fd, map, (size_t)sb.st_size, 0);
	if (got < 0) {
		free(map);
		return -1;
	}
	if (journal_header_parse(map, (size_t)got, &epoch, boot) < 0) {
		/* never written to, or its header torn while it held nothing */
		*same_boot = true;
		free(map);
		return 0;
	}
	this_boot(mine);
	*same_boot = strcmp(boot, mine) == 0;
	for (off = JOURNAL_HDR_SIZE; off + JOURNAL_ENTRY_HDR <= (uint64_t)got;) {
		if (journal_entry_parse(map + off, (size_t)got - (size_t)off, &e) < 0 ||
		    e.epoch != epoch) {
			off += JOURNAL_ALIGN;
			continue;
		}
		if (*n == *cap) {
			*cap = *cap ? *cap * 2 : 64;
			*v = xrealloc(*v, *cap * sizeof(**v));
		}
		(*v)[*n].e = e;
		(*v)[*n].jfd = jfd_index;
		(*v)[*n].body = xmalloc(e.body_len);
		memcpy((*v)[*n].body, e.body, e.body_len);
		(*v)[*n].e.body = (*v)[*n].body;
		(*n)++;
		if (e.seq > newest) {
			newest = e.seq;
			tail = e.tail;
		}
		off += journal_entry_size(e.body_len);
	}
	free(map);
	/* only the needed ones stay */
	for (i = k = first; i < *n; i++) {
		if ((*v)[i].e.seq >= tail)
			(*v)[k++] = (*v)[i];
		else
			free((*v)[i].body);
	}
	*n = k;
	return 0;
}

static int
cmp_seq_desc(const void *a, const void *b)
{
	const struct found *x = a, *y = b;

	return x->e.seq < y->e.seq ? 1 : x->e.seq > y->e.seq ? -1 : 0;
}

/* The folder of the queue name id, or NULL. */
static const char *
queued_in(const char *spool_dir, const char *id, int *dfd)
{
	static const char *const dirs[] = { "incoming", "active", "deferred", "hold" };
	char path[4096];
	size_t i;
	int fd;

	for (i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", spool_dir, dirs[i]);
		if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
			continue;
		if (faccessat(fd, id, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
			*dfd = fd;
			return dirs[i];
		}
		close(fd);
	}
	return NULL;
}

/* The entry's body written to tmp/ID, fsync'd, renamed over its queue name
 * or into incoming/ (hold/ when it was quarantined), the folder fsync'd. */
static int
restore(const char *spool_dir, const struct journal_entry *e)
{
	char path[4096], tmp[4096], err[256];
	const char *into;
	struct spool_file f;
	int fd, dfd = -1, rc, saved;

	snprintf(tmp, sizeof(tmp), "%s/tmp/%s", spool_dir, e->id);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -1;
	rc = pwrite_full(fd, e->body, e->body_len, 0) < 0 || fsync(fd) < 0 ? -1 : 0;
	saved = errno;
	close(fd);
	if (rc < 0)
		goto fail;
	into = queued_in(spool_dir, e->id, &dfd);
	if (into == NULL) {
		rc = spool_load_as(tmp, e->id, NULL, &f, err, sizeof(err));
		into = rc == 0 && f.m.hold_reason != NULL ? "hold" : "incoming";
		if (rc == 0)
			spool_file_free(&f);
		snprintf(path, sizeof(path), "%s/%s", spool_dir, into);
		if ((dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
			saved = errno;
			goto fail;
		}
	}
	snprintf(path, sizeof(path), "%s/%s/%s", spool_dir, into, e->id);
	rc = rename(tmp, path) < 0 || fsync(dfd) < 0 ? -1 : 0;
	saved = errno;
	close(dfd);
	if (rc < 0)
		goto fail;
	msg_info("%s: restored from the journal into %s/ (its slot %s lost it in a crash)",
		 e->id, into, e->slot);
	return 0;
fail:
	unlink(tmp);
	errno = saved;
	return -1;
}

/* Whether the slot holds the entry's message whole (it parses, its check
 * matches, its id is the entry's): 1, 0 no, -1 cannot tell. */
static int
slot_whole(const char *spool_dir, const struct journal_entry *e)
{
	char path[4096];
	struct spool_file f;
	int rc;

	snprintf(path, sizeof(path), "%s/slots/%s", spool_dir, e->slot);
	rc = spool_committed_in_tmp(path, &f);
	if (rc == -2)
		return errno == ENOENT ? 0 : -1;
	if (rc != 1)
		return 0;
	rc = strcmp(f.m.qid, e->id) == 0;
	spool_file_free(&f);
	return rc;
}

/* One needed entry; newer says a newer entry of another message named the
 * same slot. */
static int
recover_entry(const char *spool_dir, int slots_dfd, const struct journal_entry *e,
	      bool same_boot, bool newer)
{
	int fd, rc;

	if (same_boot) {
		/* the page cache is as the writers left it */
		rc = slot_has(slots_dfd, e->slot, e->id, false, &fd);
		if (rc != 1)
			return rc;
		rc = fdatasync(fd);
		close(fd);
		return rc;
	}
	if (newer)
		return 0;
	rc = slot_whole(spool_dir, e);
	if (rc < 0)
		return -1;
	if (rc == 1) {
		if ((fd = openat(slots_dfd, e->slot, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
			return -1;
		rc = fdatasync(fd);
		close(fd);
		return rc;
	}
	/* freed with this id: it was finished */
	if (slot_has(slots_dfd, e->slot, e->id, true, NULL) == 1)
		return 0;
	return restore(spool_dir, e);
}

/* A new epoch and this boot's id in the header, fdatasync'd. */
static int
new_epoch(int fd, uint64_t *epoch)
{
	unsigned char hdr[JOURNAL_HDR_LEN];
	char boot[JOURNAL_BOOT_LEN + 1], old_boot[JOURNAL_BOOT_LEN + 1];
	uint64_t old = 0;

	if (pread_full(fd, hdr, sizeof(hdr), 0) == (ssize_t)sizeof(hdr) &&
	    journal_header_parse(hdr, sizeof(hdr), &old, old_boot) < 0)
		old = 0;
	/* never an epoch used before, even after a torn header */
	*epoch = old + 1 > mono_ns() ? old + 1 : mono_ns();
	this_boot(boot);
	journal_header_encode(hdr, *epoch, boot);
	if (pwrite_full(fd, hdr, sizeof(hdr), 0) < 0 || fdatasync(fd) < 0)
		return -1;
	return 0;
}

/* The journals of files[0..nf): their needed entries handled together,
 * then each one's epoch renewed. */
static int
recover_files(const char *spool_dir, struct jfile *files, size_t nf)
{
	struct found *v = NULL;
	size_t n = 0, cap = 0, i, k;
	char path[4096];
	uint64_t epoch;
	bool newer;
	int slots_dfd, err = 0;

	snprintf(path, sizeof(path), "%s/slots", spool_dir);
	if ((slots_dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		return -1;
	for (i = 0; i < nf; i++) {
		files[i].ok = read_entries(files[i].fd, &files[i].same_boot, &v, &n, &cap, (int)i) == 0;
		if (!files[i].ok) {
			msg_warn("%s/journal/%s: %s", spool_dir, files[i].name, strerror(errno));
			err = err ? err : errno;
		}
	}
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_seq_desc);
	for (i = 0; i < n; i++) {
		newer = false;
		for (k = 0; k < i && !newer; k++)
			newer = strcmp(v[k].e.slot, v[i].e.slot) == 0;
		if (recover_entry(spool_dir, slots_dfd, &v[i].e, files[v[i].jfd].same_boot,
				  newer) < 0) {
			msg_warn("%s: recover it from %s/journal/%s: %s", v[i].e.id, spool_dir,
				 files[v[i].jfd].name, strerror(errno));
			files[v[i].jfd].ok = false;
			err = err ? err : errno;
		}
	}
	for (i = 0; i < n; i++)
		free(v[i].body);
	free(v);
	close(slots_dfd);
	/* a journal whose entries were all handled is void from now on */
	for (i = 0; i < nf; i++)
		if (files[i].ok && new_epoch(files[i].fd, &epoch) < 0) {
			msg_warn("%s/journal/%s: %s", spool_dir, files[i].name, strerror(errno));
			err = err ? err : errno;
		}
	if (err) {
		errno = err;
		return -1;
	}
	return 0;
}

static bool
journal_name(const char *s)
{
	size_t i;

	if (s[0] != 'j' || s[1] == '\0' || strlen(s) > 20)
		return false;
	for (i = 1; s[i]; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

/* The next journal file of the folder d that no live writer holds: open,
 * locked, its name in name[64]; or -1 when there is none left. */
static int
next_unheld(DIR *d, char name[64], struct stat *sb)
{
	struct dirent *de;
	int fd;

	while ((de = readdir(d)) != NULL) {
		if (!journal_name(de->d_name))
			continue;
		fd = openat(dirfd(d), de->d_name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0)
			continue;
		if (flock(fd, LOCK_EX | LOCK_NB) == 0 && fstat(fd, sb) == 0 &&
		    S_ISREG(sb->st_mode)) {
			snprintf(name, 64, "%.20s", de->d_name);
			return fd;
		}
		close(fd);
	}
	return -1;
}

int
journal_recover(const char *spool_dir)
{
	struct jfile *files = NULL;
	size_t nf = 0, cap = 0, i;
	char path[4096], name[64];
	struct stat sb;
	int fd, rc;
	DIR *d;

	snprintf(path, sizeof(path), "%s/journal", spool_dir);
	if ((d = opendir(path)) == NULL)
		return errno == ENOENT ? 0 : -1;
	while ((fd = next_unheld(d, name, &sb)) >= 0) {
		if (nf == cap) {
			cap = cap ? cap * 2 : 8;
			files = xrealloc(files, cap * sizeof(*files));
		}
		files[nf].fd = fd;
		snprintf(files[nf].name, sizeof(files[nf].name), "%s", name);
		nf++;
	}
	closedir(d);
	rc = nf > 0 ? recover_files(spool_dir, files, nf) : 0;
	for (i = 0; i < nf; i++)
		close(files[i].fd);
	free(files);
	return rc;
}

/* ---- opening one ---- */

/* The unnamed file fd given a name of the folder dfd: prefix and the
 * first number free (into name), not yet fsync'd into it. 0, or -1. */
static int
give_name(int fd, int dfd, const char *prefix, char *name, size_t namelen)
{
	char proc[64];
	unsigned k;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	for (k = 0; k < 100000; k++) {
		snprintf(name, namelen, "%s%u", prefix, k);
		if (linkat(AT_FDCWD, proc, dfd, name, AT_SYMLINK_FOLLOW) == 0)
			return 0;
		if (errno != EEXIST)
			return -1;
	}
	errno = EEXIST;
	return -1;
}

/* A new journal file of JOURNAL_SIZE zero bytes, fdatasync'd and locked
 * before it is given its name (fsync'd into dfd): no one sees it
 * unfinished, and a writer killed while making it leaves nothing behind.
 * Its descriptor, or -1. */
static int
make_file(int dfd, char *name, size_t namelen, bool (*avoid)(ino_t, void *), void *ctx)
{
	static const char zeros[1 << 16];
	char aside[64];
	struct stat sb;
	uint64_t off;
	int fd = -1, tries;

	for (tries = 0; tries < 64; tries++) {
		fd = openat(dfd, ".", O_RDWR | O_TMPFILE | O_CLOEXEC, 0600);
		if (fd < 0)
			return -1;
		if (fstat(fd, &sb) < 0)
			goto fail;
		if (avoid == NULL || !avoid(sb.st_ino, ctx))
			break;
		/* an inode the flush file must not share its block with: kept,
		 * under a name no one takes for a journal, so that it stays
		 * taken */
		(void)give_name(fd, dfd, "aside.j", aside, sizeof(aside));
		close(fd);
		fd = -1;
	}
	if (fd < 0) {
		errno = ENOSPC;
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0)
		goto fail;
	for (off = 0; off < JOURNAL_SIZE; off += sizeof(zeros))
		if (pwrite_full(fd, zeros, sizeof(zeros), (off_t)off) < 0)
			goto fail;
	if (fdatasync(fd) < 0 || give_name(fd, dfd, "j", name, namelen) < 0)
		goto fail;
	if (fsync(dfd) < 0) {
		(void)unlinkat(dfd, name, 0);
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return -1;
}

static bool
pow2_upto(uint32_t v, uint32_t max)
{
	return v != 0 && v <= max && (v & (v - 1)) == 0;
}

/* Direct I/O for j's file where it has it (statx's STATX_DIOALIGN; ext4
 * gives none where data does not go straight to the device: data
 * journaling, DAX, encryption without inline crypto): its descriptor made
 * O_DIRECT, entries and their buffers aligned as the device needs. Else
 * entries go through the page cache. */
static void
try_direct(struct journal *j)
{
	struct statx sx;
	int fl;

	if (statx(j->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) < 0 ||
	    !(sx.stx_mask & STATX_DIOALIGN) ||
	    !pow2_upto(sx.stx_dio_offset_align, JOURNAL_HDR_SIZE) ||
	    !pow2_upto(sx.stx_dio_mem_align, JOURNAL_HDR_SIZE))
		return;
	if ((fl = fcntl(j->fd, F_GETFL)) < 0 || fcntl(j->fd, F_SETFL, fl | O_DIRECT) < 0)
		return;
	j->direct = true;
	if (sx.stx_dio_offset_align > j->align)
		j->align = sx.stx_dio_offset_align;
	if (sx.stx_dio_mem_align > j->mem_align)
		j->mem_align = sx.stx_dio_mem_align;
}

struct journal *
journal_open(const char *spool_dir, int slots_dfd, int flush_fd,
	     bool (*avoid)(ino_t, void *), void *ctx)
{
	struct journal *j;
	struct jfile jf;
	char path[4096], name[64];
	struct stat sb;
	int fd;
	DIR *d;

	snprintf(path, sizeof(path), "%s/journal", spool_dir);
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return NULL;
	if ((d = opendir(path)) == NULL)
		return NULL;
	/* one an earlier writer left, else a new one */
	while ((fd = next_unheld(d, name, &sb)) >= 0 && sb.st_size != JOURNAL_SIZE)
		close(fd);
	if (fd >= 0) {
		jf.fd = fd;
		snprintf(jf.name, sizeof(jf.name), "%s", name);
		if (recover_files(spool_dir, &jf, 1) < 0) {
			close(fd);
			closedir(d);
			return NULL;
		}
	} else {
		fd = make_file(dirfd(d), name, sizeof(name), avoid, ctx);
		if (fd < 0) {
			closedir(d);
			return NULL;
		}
	}
	closedir(d);
	if (!slot_data_in_place(fd)) {
		close(fd);
		return NULL;
	}
	j = xcalloc(1, sizeof(*j));
	j->fd = fd;
	j->slots_dfd = slots_dfd;
	snprintf(j->name, sizeof(j->name), "%s", name);
	snprintf(j->path, sizeof(j->path), "%s/journal/%s", spool_dir, name);
	if (new_epoch(fd, &j->epoch) < 0) {
		close(fd);
		free(j);
		return NULL;
	}
	if ((j->flush_fd = dup(flush_fd)) < 0) {
		close(fd);
		free(j);
		return NULL;
	}
	pthread_mutex_init(&j->lock, NULL);
	pthread_cond_init(&j->cond, NULL);
	monotonic_cond_init(&j->wake);
	j->pending_tail = &j->pending;
	j->align = JOURNAL_ALIGN;
	j->mem_align = JOURNAL_ALIGN;
	try_direct(j);
	j->head = JOURNAL_HDR_SIZE;
	j->qcap = 256;
	j->q = xcalloc(j->qcap, sizeof(*j->q));
	if (pthread_create(&j->syncer, NULL, syncer_main, j) != 0)
		msg_fatal("cannot start the journal's thread");
	return j;
}

void
journal_close(struct journal *j)
{
	if (j == NULL)
		return;
	pthread_mutex_lock(&j->lock);
	j->stopping = true;             /* after the entries pending */
	pthread_cond_signal(&j->wake);
	pthread_mutex_unlock(&j->lock);
	pthread_join(j->syncer, NULL);
	close(j->flush_fd);
	close(j->fd);           /* its lock goes with it */
	pthread_mutex_destroy(&j->lock);
	pthread_cond_destroy(&j->cond);
	pthread_cond_destroy(&j->wake);
	free(j->q);
	free(j);
}
