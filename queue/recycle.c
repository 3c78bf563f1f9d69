/*
 * recycle.c - queue files used again: slots.
 *
 * A stream (commit.c) writes a new message into a slot: a file of slots/
 * that keeps its name there for good. The message is committed where it is
 * written: its data made durable (slot_sync) is all its 250 waits for,
 * since the slot's name in slots/ was durable before its first message.
 * The first message a pool writes into a slot, and one that makes it
 * longer, is fdatasync'd; after that, on ext4 without data journaling, a
 * message that fits in the slot's length is an overwrite of blocks the
 * file has on disk, made durable without its inode (whose new times an
 * fdatasync would write there, one more device write per message):
 * sync_file_range() writes the slot's data and waits for it, and an
 * fdatasync of a file of SPOOL/flush/, never written and alone in its
 * block of the inode table (open_flush_file), then only flushes the
 * device's write cache, which makes every write completed before it
 * durable: one such flush serves every overwrite of the pool completed
 * before it started (overwrite_sync). Where the pool has a journal
 * (journal.c), a message of up to JOURNAL_BODY_MAX is made durable as a
 * copy there instead (slot_commit, slot_commit_async), several to one
 * device write, and its slot is not synced at all. Slots are written from
 * their start, never past their end and never cut short, so no slot has a
 * hole under its length. A hard link under the message's id in incoming/ then hands
 * it to the queue manager; that link is not waited for. When the message
 * is finished, whoever removes its queue name (the queue manager,
 * `sorterctl delete`, an import) first marks the file freed (spool_remove:
 * its first byte becomes SPOOL_FREED), then unlinks the name; the slot,
 * down to one link, is free for the next message. Nothing of this is
 * fsync'd: slots/ itself never changes while mail flows, so an fdatasync
 * of a slot finds no directory of its own to write (on ext4 without a
 * journal, an fsync of a file that entered a directory writes that
 * directory too: a rename-based pool paid that on every message).
 *
 * After a crash (slots_recover, at start before any writer runs, and for
 * an import): a slot that parses, whose check record matches and whose id
 * has no name in incoming/, active/, deferred/ or hold/ is a committed
 * message whose link was lost: it is linked into incoming/ under its id.
 * A freed slot does not parse (its first byte), a slot being written does
 * not match its check, so neither is ever taken for a message; a power
 * failure that loses a freed mark brings back a delivered message, to be
 * delivered again, never lost.
 *
 * Who may write a slot: the process that holds an flock(2) on it. A
 * writer's pool (struct slots, one per process) knows up to RECYCLE_KNOWN
 * slots: free ones and one per stream being written, open and locked, and
 * the ones it queued (two links), polled until the queue manager's
 * removal brings them back to one link. A queued slot stays open and
 * locked while the pool holds no more than RECYCLE_OPEN descriptors; past
 * that it is known by name alone (a deep queue costs no more open files),
 * and once free it is opened and locked again (adopt), unless another
 * pool was quicker. A pool that knows RECYCLE_KNOWN slots forgets the
 * queued ones its poll finds still queued (a deferred message's, or a
 * queue deeper than that): freed, they are for any pool's scan. When it
 * has none free it adopts unlocked free slots from slots/ (a scan, at most
 * every SLOTS_SCAN_USEC after one that found none), and failing that
 * makes a new one (O_EXCL, never in the flush file's run, then a shared
 * fsync of slots/ before its first message is acknowledged). A process
 * that dies lets go of its locks, and its slots are adopted by the others.
 * A slot bigger than RECYCLE_FILE_MAX, or any free slot while the file
 * system is short of queue_minfree and RECYCLE_RESERVE, is unlinked when
 * found free; every minute a writer unlinks the unlocked free slots beyond
 * RECYCLE_POOL_MAX or bigger than RECYCLE_FILE_MAX (slots_prune: a queue
 * that grew and drained keeps no more); at start slots/ is trimmed the
 * same way (slots_recover), and the queue manager fills it up to
 * RECYCLE_PREFILL (slots_fill). A slot is longer than its message most of
 * the time:
 * the old bytes past the end marker are covered by a padding record
 * (queue.h) and never read.
 *
 * The pool's state is under one mutex; it runs on I/O threads.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "lib/lib.h"
#include "queue/queue.h"

#define SLOTS_POLL 64                   /* queued slots looked at per take */
#define SLOTS_SCAN_USEC 1000000         /* after a scan that found none, the next */
#define SLOTS_PRUNE_USEC (60 * 1000000ULL) /* slots_prune at most this often */
#define ROOM_USEC 1000000               /* a pool asks the file system for room this often */
#define FLUSH_GATHER_USEC 1000          /* a flush waits this long at most for writes under way */

enum slot_state { SLOT_FREE, SLOT_BUSY, SLOT_QUEUED };

struct slot {
	char name[QID_LEN + 1];
	int fd;                 /* O_RDWR, flock'd; -1 for a queued one known by name */
	enum slot_state state;
	uint64_t durable;       /* slot_sync: the length an fdatasync of ours made durable */
};

struct slots {
	int dir_fd;                     /* slots/ */
	struct groupsync *ds;           /* its shared fsync, for new slots */
	uint64_t minfree;
	pthread_mutex_t lock;
	struct slot v[RECYCLE_KNOWN];
	size_t n;
	size_t nopen;                   /* of them, with a descriptor */
	size_t cursor;                  /* where the next poll of queued slots starts */
	uint64_t scan_after_usec;
	uint64_t prune_after_usec;
	bool room;                      /* room(), as of room_until_usec - ROOM_USEC */
	uint64_t room_until_usec;
	/* when overwrites are synced in place (slot_sync): the shared
	 * fdatasync of a file of SPOOL/flush/ (overwrite_sync); else NULL */
	struct groupsync *flush;
	int flush_dfd;                  /* SPOOL/flush/, with flush; else -1 */
	ino_t flush_ino;                /* its use: no new slot in its run (set_aside) */
	unsigned long flush_run;
	/* with flush: the pool's journal (journal.c), NULL when it has none */
	struct journal *journal;
};

/*
 * Whether the file system of dir_fd writes a file's data over the blocks
 * it has, so that an overwrite made durable needs no metadata: ext4
 * without data journaling (data=journal puts data through the journal)
 * and without DAX, as its options in /proc/fs/ext4/DEVICE/options say
 * (that file lists every option in force, the defaults included). Any
 * other file system, or options that cannot be read, get fdatasync alone.
 */
bool
slots_overwrite_in_place(int dir_fd)
{
	char path[128], link[PATH_MAX], line[256];
	struct statfs sf;
	struct stat sb;
	const char *dev;
	bool ok = true;
	ssize_t n;
	FILE *f;

	if (fstatfs(dir_fd, &sf) < 0 || sf.f_type != EXT4_SUPER_MAGIC || fstat(dir_fd, &sb) < 0)
		return false;
	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u", major(sb.st_dev), minor(sb.st_dev));
	if ((n = readlink(path, link, sizeof(link) - 1)) <= 0)
		return false;
	link[n] = '\0';
	dev = strrchr(link, '/');
	dev = dev != NULL ? dev + 1 : link;
	if (snprintf(path, sizeof(path), "/proc/fs/ext4/%s/options", dev) >= (int)sizeof(path) ||
	    (f = fopen(path, "re")) == NULL)
		return false;
	while (fgets(line, sizeof(line), f) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		if (strcmp(line, "data=journal") == 0 || strncmp(line, "dax", 3) == 0)
			ok = false;
	}
	fclose(f);
	return ok;
}

/*
 * The file whose fdatasync flushes the device's write cache for
 * slot_sync: SPOOL/flush/use, on the device of slots/ (dir_fd), never
 * written. On ext4 without a journal every fsync of a file also writes the
 * block of the inode table that holds its inode, when that block is dirty:
 * a block shared with slots, whose times change with every overwrite,
 * would cost each flush one more device write. So the first process to
 * need it makes empty files in SPOOL/flush/ (FLUSH_FILES_MAX at most) and
 * links as `use` the one whose run of inode numbers (flush_run(): every
 * inode of one block of the inode table lies in one run, whatever the
 * inode size) holds the most of them and no slot; no new slot is ever
 * made in that run (set_aside: the start-up fill and a pool's new slot).
 * A spool of an earlier layout, where SPOOL/flush was the file itself,
 * gets the folder. -1 when no file can be had.
 */
#define FLUSH_FILES_MAX 256

/* Inode numbers per run: as many as one block of the inode table holds
 * at most (inodes are 128 bytes at least). */
static unsigned long
flush_run(int fd)
{
	struct statfs sf;

	if (fstatfs(fd, &sf) < 0 || sf.f_bsize < 128)
		return 1;
	return (unsigned long)sf.f_bsize / 128;
}

/* Whether inodes a and b lie in one run: in one block of the inode table. */
static bool
same_run(ino_t a, ino_t b, unsigned long run)
{
	return (a - 1) / run == (b - 1) / run;
}

/* The inode numbers of the entries of folder fd (only those named by a
 * number when numeric, that number then into names), max at most: their
 * count. */
static size_t
list_inos(int fd, bool numeric, ino_t *inos, long *names, size_t max)
{
	struct dirent *de;
	size_t n = 0;
	char *end;
	long v;
	DIR *d;

	if ((d = dir_read(fd)) == NULL)
		return 0;
	while ((de = readdir(d)) != NULL && n < max) {
		if (de->d_name[0] == '.')
			continue;
		v = strtol(de->d_name, &end, 10);
		if (numeric && (de->d_name[0] < '0' || de->d_name[0] > '9' || *end != '\0'))
			continue;
		inos[n] = de->d_ino;
		if (names != NULL)
			names[n] = numeric ? v : -1;
		n++;
	}
	closedir(d);
	return n;
}

/* Under SPOOL/flush/ (ffd): `use` made if missing, linked to the file of
 * the best run (see above). */
static void
flush_choose(int ffd, int sfd)
{
	size_t slots_max = RECYCLE_KNOWN * 8, n, nslots, j, k, own, best_own = 0;
	ino_t *slot_inos, inos[FLUSH_FILES_MAX];
	long names[FLUSH_FILES_MAX], best = -1, nfiles = 0, i;
	unsigned long run = flush_run(ffd);
	char name[32];
	bool clash;
	int fd;

	if (faccessat(ffd, "use", F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		return;
	slot_inos = xcalloc(slots_max, sizeof(*slot_inos));
	nslots = list_inos(sfd, false, slot_inos, NULL, slots_max);
	for (;;) {
		n = list_inos(ffd, true, inos, names, FLUSH_FILES_MAX);
		for (j = 0; j < n; j++) {
			if (names[j] + 1 > nfiles)
				nfiles = names[j] + 1;
			for (own = 0, k = 0; k < n; k++)
				own += same_run(inos[k], inos[j], run);
			for (clash = false, k = 0; k < nslots && !clash; k++)
				clash = same_run(slot_inos[k], inos[j], run);
			if (!clash && own > best_own) {
				best_own = own;
				best = names[j];
			}
		}
		if (best_own >= run || nfiles >= FLUSH_FILES_MAX)
			break;
		for (i = nfiles; i < nfiles + (long)run && i < FLUSH_FILES_MAX; i++) {
			snprintf(name, sizeof(name), "%ld", i);
			fd = openat(ffd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
			if (fd >= 0)
				close(fd);
			else if (errno != EEXIST)
				break;
		}
		if (i < nfiles + (long)run && i < FLUSH_FILES_MAX)
			break;                  /* cannot make files: the best so far */
	}
	if (best < 0) {
		best = 0;
		if ((fd = openat(ffd, "0", O_WRONLY | O_CREAT | O_CLOEXEC, 0600)) >= 0)
			close(fd);
	}
	snprintf(name, sizeof(name), "%ld", best);
	(void)linkat(ffd, name, ffd, "use", 0);         /* EEXIST: another chose */
	free(slot_inos);
}

/* SPOOL/flush/ opened into *ffd, and the inode of its `use` with the run
 * it is in; 0 (and *ffd -1) when there is none. */
static ino_t
flush_use_ino(const char *spool_dir, int *ffd, unsigned long *run)
{
	char path[4096];
	struct stat sb;

	snprintf(path, sizeof(path), "%s/flush", spool_dir);
	if ((*ffd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
		return 0;
	if (fstatat(*ffd, "use", &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(sb.st_mode)) {
		*run = flush_run(*ffd);
		return sb.st_ino;
	}
	close(*ffd);
	*ffd = -1;
	return 0;
}

/* Whether inode ino lies in the run of inode use_ino (0: none): in the
 * block of the inode table that holds the flush file. */
static bool
in_flush_run(ino_t ino, ino_t use_ino, unsigned long run)
{
	return use_ino != 0 && same_run(ino, use_ino, run);
}

/* journal_open's avoid: a new journal file's inode in the flush file's run */
static bool
journal_avoid(ino_t ino, void *arg)
{
	const struct slots *s = arg;

	return in_flush_run(ino, s->flush_ino, s->flush_run);
}

/* A new file name of folder dfd whose inode landed in the flush file's
 * run: kept there as an empty file of SPOOL/flush/ (flush_dfd), named
 * s<name>.<k>, never a slot, so that its inode stays taken; the name is
 * free to be tried again. Unlinked if it cannot be moved. */
static void
set_aside(int dfd, const char *name, int flush_dfd, unsigned long k)
{
	char kept[QID_LEN + 32];

	snprintf(kept, sizeof(kept), "s%s.%lu", name, k);
	if (flush_dfd < 0 || renameat(dfd, name, flush_dfd, kept) < 0)
		unlinkat(dfd, name, 0);
}

/* SPOOL/flush/use opened for its fdatasync, and SPOOL/flush/ into
 * *flush_dfd; -1 (and *flush_dfd -1) when it cannot be had. */
static int
open_flush_file(const char *spool_dir, int dir_fd, int *flush_dfd)
{
	char path[4096];
	struct stat a, b;
	int ffd, fd;

	snprintf(path, sizeof(path), "%s/flush", spool_dir);
	if (lstat(path, &a) == 0 && !S_ISDIR(a.st_mode))
		(void)unlink(path);             /* the earlier layout's file */
	if ((mkdir(path, 0700) < 0 && errno != EEXIST) ||
	    (ffd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
		msg_warn("%s: %s; slots are fdatasync'd", path, strerror(errno));
		return -1;
	}
	flush_choose(ffd, dir_fd);
	fd = openat(ffd, "use", O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		msg_warn("open %s/use: %s; slots are fdatasync'd", path, strerror(errno));
		close(ffd);
		return -1;
	}
	if (fstat(fd, &a) < 0 || fstat(dir_fd, &b) < 0 || a.st_dev != b.st_dev ||
	    !S_ISREG(a.st_mode)) {
		close(fd);
		close(ffd);
		return -1;
	}
	*flush_dfd = ffd;
	return fd;
}

struct slots *
slots_open(const char *spool_dir, uint64_t minfree)
{
	struct slots *s = xcalloc(1, sizeof(*s));
	char path[4096];
	struct stat sb;
	int fd;

	snprintf(path, sizeof(path), "%s/slots", spool_dir);
	s->dir_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dir_fd < 0)
		msg_fatal("open %s: %s", path, strerror(errno));
	s->ds = groupsync_open_dir(path);
	s->minfree = minfree;
	s->flush_dfd = -1;
	if (slots_overwrite_in_place(s->dir_fd) &&
	    (fd = open_flush_file(spool_dir, s->dir_fd, &s->flush_dfd)) >= 0) {
		s->flush = groupsync_new(fd, true, FLUSH_GATHER_USEC);
		s->flush_run = flush_run(fd);
		s->flush_ino = fstat(fd, &sb) == 0 ? sb.st_ino : 0;
		s->journal = journal_open(spool_dir, s->dir_fd, fd, journal_avoid, s);
		if (s->journal == NULL)
			msg_warn("%s/journal: %s; every new message is synced in its slot",
				 spool_dir, strerror(errno));
	}
	pthread_mutex_init(&s->lock, NULL);
	return s;
}

void
slots_set_writers(struct slots *s, unsigned n)
{
	if (s->journal != NULL)
		journal_set_writers(s->journal, n);
}

void
slots_close(struct slots *s)
{
	size_t i;

	if (s == NULL)
		return;
	for (i = 0; i < s->n; i++)
		if (s->v[i].fd >= 0)
			close(s->v[i].fd);      /* the locks go with them */
	groupsync_close(s->ds);
	journal_close(s->journal);
	close(s->dir_fd);
	groupsync_close(s->flush);
	if (s->flush_dfd >= 0)
		close(s->flush_dfd);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* Whether free slots may stay: the file system has queue_minfree and
 * RECYCLE_RESERVE more free, so that they never stand between a new
 * message and the disk. */
static bool
room(int dir_fd, uint64_t minfree)
{
	struct statvfs sv;

	if (fstatvfs(dir_fd, &sv) < 0)
		return false;
	return (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize >= minfree + RECYCLE_RESERVE;
}

/* Under the lock: room() for the pool, asked at most every ROOM_USEC
 * (it is asked on each reuse of a slot). */
static bool
pool_room(struct slots *s)
{
	uint64_t now = now_usec();

	if (now >= s->room_until_usec) {
		s->room = room(s->dir_fd, s->minfree);
		s->room_until_usec = now + ROOM_USEC;
	}
	return s->room;
}

/* Whether sb is a free slot's: a regular file of one link and some bytes
 * (an empty one may have been made an instant ago, its maker about to
 * lock it: only its maker uses it). */
static bool
looks_free(const struct stat *sb)
{
	return S_ISREG(sb->st_mode) && sb->st_nlink == 1 && sb->st_size > 0;
}

/* Under the lock: a free slot of ours found too big, or kept while space
 * is short, is unlinked rather than used. */
static bool
slot_unwanted(struct slots *s, const struct stat *sb)
{
	return (uint64_t)sb->st_size > RECYCLE_FILE_MAX || !pool_room(s);
}

/* Under the lock, with room: the slot name (fd, locked) joins the pool;
 * nothing of it is known durable to this pool yet (slot_sync). */
static void
keep(struct slots *s, const char *name, int fd, enum slot_state state)
{
	memcpy(s->v[s->n].name, name, QID_LEN + 1);
	s->v[s->n].fd = fd;
	s->v[s->n].state = state;
	s->v[s->n].durable = 0;
	s->n++;
	s->nopen++;
}

static void
forget(struct slots *s, size_t i, bool unlink_it)
{
	if (unlink_it)
		unlinkat(s->dir_fd, s->v[i].name, 0);
	if (s->v[i].fd >= 0) {
		close(s->v[i].fd);
		s->nopen--;
	}
	s->v[i] = s->v[--s->n];
	if (s->cursor >= s->n)
		s->cursor = 0;
}

/* Opens and locks slots/name; the descriptor if it is a free slot no one
 * else holds (its stat into sb), else -1. */
static int
adopt(int dir_fd, const char *name, struct stat *sb)
{
	int fd = openat(dir_fd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);

	if (fd < 0)
		return -1;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0 || fstat(fd, sb) < 0 || !looks_free(sb)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* The stat of slots/name if it looks free (most are queued, two links: a
 * stat says so without an open). */
static bool
listed_free(int dir_fd, const char *name, struct stat *sb)
{
	return qid_valid(name) && fstatat(dir_fd, name, sb, AT_SYMLINK_NOFOLLOW) == 0 &&
	       looks_free(sb);
}

/* Under the lock: up to RECYCLE_ADOPT unlocked free slots of slots/ become
 * ours (an flock taken on a slot we hold already fails: a lock belongs to
 * one open file). */
static void
scan(struct slots *s)
{
	struct dirent *de;
	struct stat sb;
	size_t got = 0;
	DIR *d;
	int fd;

	if ((d = dir_read(s->dir_fd)) == NULL)
		return;
	while (got < RECYCLE_ADOPT && s->n < RECYCLE_KNOWN && (de = readdir(d)) != NULL) {
		if (!listed_free(s->dir_fd, de->d_name, &sb) ||
		    (fd = adopt(s->dir_fd, de->d_name, &sb)) < 0)
			continue;
		if (slot_unwanted(s, &sb)) {
			unlinkat(s->dir_fd, de->d_name, 0);
			close(fd);
			continue;
		}
		keep(s, de->d_name, fd, SLOT_FREE);
		got++;
	}
	closedir(d);
	/* whoever made them (slots_fill renames them in), their names are
	 * durable before a message is written into one */
	if (got > 0 && groupsync_wait(s->ds) != 0)
		while (got-- > 0)
			forget(s, s->n - 1, false);
}

static void
give(struct slots *s, size_t i, const struct stat *sb, struct slot_ref *out)
{
	s->v[i].state = SLOT_BUSY;
	memcpy(out->name, s->v[i].name, QID_LEN + 1);
	out->fd = s->v[i].fd;
	out->size = (uint64_t)sb->st_size;
	out->durable = s->v[i].durable;
	out->jticket = 0;
	out->owned = true;
}

/* Under the lock: whether our queued slot i is free again, open and
 * locked (one known by name opened and locked anew), its stat into sb.
 * One still queued is forgotten while the pool is full; one known by name
 * that is gone, or taken by another pool, is forgotten (i then names
 * another slot, or none). */
static bool
released(struct slots *s, size_t i, struct stat *sb)
{
	int fd = s->v[i].fd;
	bool queued;

	if (fd >= 0)
		queued = fstat(fd, sb) < 0 || sb->st_nlink > 1;
	else    /* a name that cannot be looked at is for adopt() to judge */
		queued = fstatat(s->dir_fd, s->v[i].name, sb, AT_SYMLINK_NOFOLLOW) == 0 &&
			 sb->st_nlink > 1;
	if (queued) {
		if (s->n >= RECYCLE_KNOWN)
			forget(s, i, false);
		return false;
	}
	if (fd >= 0)
		return true;
	if ((fd = adopt(s->dir_fd, s->v[i].name, sb)) < 0) {
		forget(s, i, false);
		return false;
	}
	s->v[i].fd = fd;
	s->nopen++;
	return true;
}

/* Under the lock: a free slot of ours, one of our queued slots the queue
 * manager let go of, or an adopted one; false when there is none. */
static bool
take_known(struct slots *s, struct slot_ref *out)
{
	struct stat sb;
	size_t i, k, tries;
	uint64_t now;

	for (i = 0; i < s->n; i++)
		if (s->v[i].state == SLOT_FREE && fstat(s->v[i].fd, &sb) == 0) {
			give(s, i, &sb, out);
			return true;
		}
	for (tries = 0; tries < SLOTS_POLL && s->n > 0; tries++) {
		k = s->cursor++ % s->n;
		if (s->v[k].state != SLOT_QUEUED || !released(s, k, &sb))
			continue;
		if (slot_unwanted(s, &sb)) {
			forget(s, k, true);
			continue;
		}
		give(s, k, &sb, out);
		return true;
	}
	now = now_usec();
	if (s->n < RECYCLE_KNOWN && now >= s->scan_after_usec) {
		size_t before = s->n;

		scan(s);
		/* what the scan adopted is free */
		if (s->n > before && fstat(s->v[before].fd, &sb) == 0) {
			give(s, before, &sb, out);
			return true;
		}
		if (s->n == before)
			s->scan_after_usec = now + SLOTS_SCAN_USEC;
	}
	return false;
}

void
slots_prune(struct slots *s)
{
	struct dirent *de;
	struct stat sb;
	size_t nfree = 0, max = room(s->dir_fd, s->minfree) ? RECYCLE_POOL_MAX : 0;
	DIR *d;
	int fd;

	if ((d = dir_read(s->dir_fd)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (!listed_free(s->dir_fd, de->d_name, &sb))
			continue;
		if ((uint64_t)sb.st_size <= RECYCLE_FILE_MAX && nfree++ < max)
			continue;
		/* locked first: a slot someone holds is theirs */
		if ((fd = adopt(s->dir_fd, de->d_name, &sb)) >= 0) {
			unlinkat(s->dir_fd, de->d_name, 0);
			close(fd);
		}
	}
	closedir(d);
}

int
slot_take(struct slots *s, const char *new_name, struct slot_ref *out)
{
	struct stat sb;
	unsigned long clashes = 0;
	uint64_t now;
	int fd, err;

	pthread_mutex_lock(&s->lock);
	now = now_usec();
	if (now >= s->prune_after_usec) {
		if (s->prune_after_usec != 0)
			slots_prune(s);
		s->prune_after_usec = now + SLOTS_PRUNE_USEC;
	}
	if (take_known(s, out)) {
		pthread_mutex_unlock(&s->lock);
		return 0;
	}
	pthread_mutex_unlock(&s->lock);
	/* a new slot: its name durable before its first message is; never in
	 * the flush file's run (once locked, it is ours to set aside) */
	for (;;) {
		fd = openat(s->dir_fd, new_name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0)
			return -1;
		err = flock(fd, LOCK_EX | LOCK_NB) < 0 ? errno : 0;
		if (err || clashes > s->flush_run || fstat(fd, &sb) < 0 ||
		    !in_flush_run(sb.st_ino, s->flush_ino, s->flush_run))
			break;
		set_aside(s->dir_fd, new_name, s->flush_dfd, clashes++);
		close(fd);
	}
	if (err == 0)
		err = groupsync_wait(s->ds);
	if (err) {
		unlinkat(s->dir_fd, new_name, 0);
		close(fd);
		errno = err;
		return -1;
	}
	memcpy(out->name, new_name, QID_LEN + 1);
	out->fd = fd;
	out->size = 0;
	out->durable = 0;
	out->jticket = 0;
	out->owned = false;
	pthread_mutex_lock(&s->lock);
	if (s->n < RECYCLE_KNOWN) {
		keep(s, new_name, fd, SLOT_BUSY);
		out->owned = true;
	}
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* Under the lock: the index of ref's slot in the pool, or -1. */
static ssize_t
find(const struct slots *s, const struct slot_ref *ref)
{
	size_t i;

	for (i = 0; i < s->n; i++)
		if (s->v[i].fd == ref->fd && strcmp(s->v[i].name, ref->name) == 0)
			return (ssize_t)i;
	return -1;
}

/*
 * An overwrite made durable: the data written in place and waited for,
 * then the device's cache flushed by an fdatasync of the flush file that
 * started after the write completed. That flush is shared (groupsync):
 * one makes every overwrite of the pool completed before it durable, and
 * one about to start waits FLUSH_GATHER_USEC at most for the overwrites
 * of the pool still being written (a few hundred microseconds), where
 * each would have paid its own device request.
 */
static int
overwrite_sync(struct slots *s, int fd, off_t len)
{
	int err = 0, flush_err;

	groupsync_writing(s->flush);
	if (sync_file_range(fd, 0, len, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
			    SYNC_FILE_RANGE_WAIT_AFTER) < 0)
		err = errno;
	flush_err = groupsync_written(s->flush, err == 0);
	if (err == 0)
		err = flush_err;
	errno = err;
	return err != 0 ? -1 : 0;
}

void
slots_flush_counts(struct slots *s, uint64_t *overwrites, uint64_t *flushes)
{
	*overwrites = *flushes = 0;
	if (s->flush != NULL)
		groupsync_counts(s->flush, overwrites, flushes);
}

int
slot_commit(struct slots *s, struct slot_ref *ref, const char *id, uint64_t len)
{
	ref->jticket = 0;
	if (s->journal != NULL && len <= JOURNAL_BODY_MAX &&
	    journal_commit(s->journal, ref->fd, ref->name, id, len, &ref->jticket) == 0)
		return 0;
	/* a failed entry: let go of it at once, the slot is synced instead */
	if (ref->jticket != 0)
		journal_linked(s->journal, ref->jticket);
	ref->jticket = 0;
	return slot_sync(s, ref);
}

bool
slot_commit_async(struct slots *s, struct slot_ref *ref, const char *id, uint64_t len,
		  const struct iovec *iov, int iovcnt, journal_done_cb *done, void *arg)
{
	ref->jticket = 0;
	return s->journal != NULL && len <= JOURNAL_BODY_MAX &&
	       journal_commit_async(s->journal, ref->fd, ref->name, id, len, iov, iovcnt,
				    &ref->jticket, done, arg) == 0;
}


int
slot_sync(struct slots *s, struct slot_ref *ref)
{
	struct stat sb;

	if (fstat(ref->fd, &sb) < 0)
		return -1;
	if (s->flush != NULL && ref->durable > 0 && (uint64_t)sb.st_size <= ref->durable) {
		if (overwrite_sync(s, ref->fd, sb.st_size) == 0)
			return 0;
		ref->durable = 0;       /* after an error, the next message is fdatasync'd */
		return -1;
	}
	if (fdatasync(ref->fd) < 0) {
		ref->durable = 0;
		return -1;
	}
	/* from now on, up to st_size, the slot is written over in place */
	if (s->flush != NULL && slot_data_in_place(ref->fd))
		ref->durable = (uint64_t)sb.st_size;
	return 0;
}

bool
slot_data_in_place(int fd)
{
	int flags;

	return ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 &&
	       !(flags & (FS_INLINE_DATA_FL | FS_JOURNAL_DATA_FL));
}

void
slots_sync_marks(int dir_fd, const int *fds, size_t n, int *errs)
{
	size_t i, last = n;
	int err;

	/* every write under way at once, then each waited for */
	for (i = 0; i < n; i++)
		(void)sync_file_range(fds[i], 0, 1, SYNC_FILE_RANGE_WRITE);
	if (!slots_overwrite_in_place(dir_fd)) {
		for (i = 0; i < n; i++)
			errs[i] = fdatasync(fds[i]) < 0 ? errno : 0;
		return;
	}
	for (i = 0; i < n; i++) {
		if (!slot_data_in_place(fds[i]))
			errs[i] = fdatasync(fds[i]) < 0 ? errno : 0;
		else if (sync_file_range(fds[i], 0, 1, SYNC_FILE_RANGE_WAIT_BEFORE |
					 SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) < 0)
			errs[i] = errno;
		else {
			errs[i] = -1;   /* written: durable with the flush below */
			last = i;
		}
	}
	/* its data written, the file's fdatasync only flushes the device's
	 * cache (the new times of its inode are no data): every write
	 * completed before it is durable */
	err = last < n && fdatasync(fds[last]) < 0 ? errno : 0;
	for (i = 0; i < n; i++)
		if (errs[i] == -1)
			errs[i] = err;
}

int
slot_link(struct slots *s, struct slot_ref *ref, int dir_fd, const char *id)
{
	static const char freed = SPOOL_FREED;
	ssize_t i;
	int rc = linkat(s->dir_fd, ref->name, dir_fd, id, 0), saved = errno;

	/* refused, so never to be recovered as a message after a crash */
	if (rc < 0)
		(void)pwrite(ref->fd, &freed, 1, 0);
	if (ref->jticket != 0)
		journal_linked(s->journal, ref->jticket);
	ref->jticket = 0;
	pthread_mutex_lock(&s->lock);
	i = ref->owned ? find(s, ref) : -1;
	if (i >= 0) {
		s->v[i].state = rc == 0 ? SLOT_QUEUED : SLOT_FREE;
		s->v[i].durable = ref->durable;
	}
	if (i < 0) {
		close(ref->fd);
	} else if (rc == 0 && s->nopen > RECYCLE_OPEN) {
		/* known by name: the queue's link keeps it from every scan,
		 * and the poll opens it again once free */
		close(ref->fd);
		s->v[i].fd = -1;
		s->nopen--;
	}
	pthread_mutex_unlock(&s->lock);
	ref->fd = -1;
	errno = saved;
	return rc;
}

void
slot_drop(struct slots *s, struct slot_ref *ref)
{
	static const char freed = SPOOL_FREED;
	struct stat sb;
	ssize_t i;

	if (ref->fd < 0)
		return;
	(void)pwrite(ref->fd, &freed, 1, 0);
	if (ref->jticket != 0)
		journal_linked(s->journal, ref->jticket);
	ref->jticket = 0;
	pthread_mutex_lock(&s->lock);
	i = ref->owned ? find(s, ref) : -1;
	if (i >= 0 && (fstat(ref->fd, &sb) < 0 || slot_unwanted(s, &sb)))
		forget(s, (size_t)i, true);
	else if (i >= 0) {
		s->v[i].state = SLOT_FREE;
		s->v[i].durable = ref->durable;
	} else
		close(ref->fd);         /* unlocked: someone's scan adopts it */
	pthread_mutex_unlock(&s->lock);
	ref->fd = -1;
}

/* ---- start-up ---- */

/* The ids with a name in the queue's folders, sorted. */
static size_t
queued_ids(const char *spool_dir, char (**ids)[QID_LEN + 1])
{
	static const char *const dirs[] = { "incoming", "active", "deferred", "hold" };
	char path[4096];
	struct dirent *de;
	size_t n = 0, cap = 0, i;
	DIR *d;

	*ids = NULL;
	for (i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", spool_dir, dirs[i]);
		if ((d = opendir(path)) == NULL)
			continue;
		while ((de = readdir(d)) != NULL) {
			if (!qid_valid(de->d_name))
				continue;
			if (n == cap) {
				cap = cap ? cap * 2 : 256;
				*ids = xrealloc(*ids, cap * sizeof(**ids));
			}
			memcpy((*ids)[n++], de->d_name, QID_LEN + 1);
		}
		closedir(d);
	}
	if (n > 1)
		qsort(*ids, n, sizeof(**ids), (int (*)(const void *, const void *))strcmp);
	return n;
}

static int
cmp_id(const void *key, const void *elem)
{
	return strcmp(key, elem);
}

static bool
queued(const char *id, char (*ids)[QID_LEN + 1], size_t nids)
{
	return nids > 0 && bsearch(id, ids, nids, sizeof(*ids), cmp_id) != NULL;
}

/* An older spool's free/ (files kept to be written over): gone. */
static void
remove_old_free(const char *spool_dir)
{
	char path[4096];
	struct dirent *de;
	DIR *d;

	snprintf(path, sizeof(path), "%s/free", spool_dir);
	if ((d = opendir(path)) == NULL)
		return;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			unlinkat(dirfd(d), de->d_name, 0);
	closedir(d);
	if (rmdir(path) == 0)
		msg_info("removed %s (an older spool's; slots/ holds its kind now)", path);
}

/* slots_recover for one slot of one link, under its lock: a committed
 * message whose queue name was lost is linked back, a free one is kept or
 * (trim) unlinked. */
static void
recover_slot(const char *spool_dir, int sfd, const char *name, const struct stat *sb,
	     char (*ids)[QID_LEN + 1], size_t nids, const int qfd[2], int found[2], bool trim,
	     size_t *nfree)
{
	static const char *const into[2] = { "incoming", "hold" };
	char path[4096];
	struct spool_file f;
	int rc, i;

	snprintf(path, sizeof(path), "%s/slots/%s", spool_dir, name);
	rc = spool_committed_in_tmp(path, &f);
	if (rc == 1 && !queued(f.m.qid, ids, nids)) {
		/* a message a milter quarantined goes back where it was going */
		i = f.m.hold_reason != NULL;
		if (linkat(sfd, name, qfd[i], f.m.qid, 0) == 0) {
			msg_info("%s: recovered from %s (committed, its link into "
				 "%s/ lost)", f.m.qid, path, into[i]);
			found[i]++;
		} else {
			msg_warn("%s: cannot recover %s into %s/: %s", f.m.qid,
				 path, into[i], strerror(errno));
		}
		spool_file_free(&f);
		return;
	}
	if (rc == 1)
		spool_file_free(&f);
	if (rc == -2) {
		msg_warn("cannot read %s: %s; left alone", path, strerror(errno));
		return;
	}
	/* free */
	if (trim && (*nfree >= RECYCLE_POOL_MAX || sb->st_size == 0 ||
		     (uint64_t)sb->st_size > RECYCLE_FILE_MAX))
		unlinkat(sfd, name, 0);
	else
		(*nfree)++;
}

int
slots_recover(const char *spool_dir, bool trim)
{
	char path[4096], (*ids)[QID_LEN + 1];
	size_t nids = queued_ids(spool_dir, &ids), nfree = 0;
	struct dirent *de;
	struct stat sb;
	int sfd, lfd, qfd[2] = { -1, -1 }, found[2] = { 0, 0 }, err = 0, i;
	static const char *const into[2] = { "incoming", "hold" };
	DIR *d;

	if (trim)
		remove_old_free(spool_dir);
	snprintf(path, sizeof(path), "%s/slots", spool_dir);
	if ((d = opendir(path)) == NULL) {
		free(ids);
		return errno == ENOENT && !trim ? 0 : -1;
	}
	sfd = dirfd(d);
	for (i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s/%s", spool_dir, into[i]);
		if ((qfd[i] = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
			if (i > 0)
				close(qfd[0]);
			closedir(d);
			free(ids);
			return -1;
		}
	}
	while ((de = readdir(d)) != NULL) {
		if (!qid_valid(de->d_name))
			continue;
		if (fstatat(sfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(sb.st_mode))
			continue;
		if (sb.st_nlink > 1)
			continue;       /* queued */
		/* one a live process holds (a writer of a sorterd that is
		 * still finishing its sessions, or of this one during an
		 * import) is that process's to write, link or free */
		if ((lfd = openat(sfd, de->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW |
				  O_NONBLOCK)) < 0)
			continue;
		if (flock(lfd, LOCK_EX | LOCK_NB) == 0)
			recover_slot(spool_dir, sfd, de->d_name, &sb, ids, nids, qfd, found, trim,
				     &nfree);
		close(lfd);
	}
	free(ids);
	for (i = 0; i < 2; i++) {
		if (found[i] > 0 && fsync(qfd[i]) < 0 && err == 0)
			err = errno;
		close(qfd[i]);
	}
	closedir(d);
	if (err) {
		errno = err;
		return -1;
	}
	return found[0] + found[1];
}

int
slots_fill(const char *spool_dir, uint64_t minfree, char (*ids)[QID_LEN + 1], size_t n)
{
	static const char zeros[RECYCLE_ROUND];
	char path[4096];
	struct dirent *de;
	struct stat sb;
	size_t have = 0, made = 0, i;
	unsigned long run = 1, clashes = 0;
	ino_t use_ino;
	int sfd, tfd, ffd, fd, err = 0;
	DIR *d;

	snprintf(path, sizeof(path), "%s/slots", spool_dir);
	if ((d = opendir(path)) == NULL)
		return -1;
	sfd = dirfd(d);
	while ((de = readdir(d)) != NULL)
		if (qid_valid(de->d_name) &&
		    fstatat(sfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && sb.st_nlink == 1)
			have++;
	snprintf(path, sizeof(path), "%s/tmp", spool_dir);
	if ((tfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		closedir(d);
		return -1;
	}
	use_ino = flush_use_ino(spool_dir, &ffd, &run);
	for (i = 0; i < n && have + made < n && room(sfd, minfree); i++) {
		/* made in tmp/ (start-up removes it there), whole before slots/
		 * shows it: a writer must never take a file still growing */
		fd = openat(tfd, ids[i], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0) {
			err = errno;
			break;
		}
		if (clashes <= run && fstat(fd, &sb) == 0 && in_flush_run(sb.st_ino, use_ino, run)) {
			/* the id is tried again */
			close(fd);
			set_aside(tfd, ids[i], ffd, clashes++);
			i--;
			continue;
		}
		if (write_all(fd, zeros, sizeof(zeros)) < 0 || fdatasync(fd) < 0)
			err = errno;
		if (close(fd) < 0 && err == 0)
			err = errno;
		if (err || renameat2(tfd, ids[i], sfd, ids[i], RENAME_NOREPLACE) < 0) {
			err = err ? err : errno;
			unlinkat(tfd, ids[i], 0);
			break;
		}
		made++;
	}
	/* both folders: on a file system without a journal a rename is two
	 * directory writes, and tmp/ must not keep the name */
	if (made > 0 && err == 0 && (fsync(tfd) < 0 || fsync(sfd) < 0))
		err = errno;
	if (ffd >= 0)
		close(ffd);
	close(tfd);
	closedir(d);
	if (err) {
		errno = err;
		return -1;
	}
	return (int)made;
}

/* ---- what a crash left in tmp/ ---- */

int
recycle_recover_tmp(const char *spool_dir, bool remove_rest)
{
	char path[4096], dpath[4096];
	struct spool_file f;
	struct dirent *de;
	int tfd, ifd, found = 0, rc;
	DIR *d;

	snprintf(path, sizeof(path), "%s/tmp", spool_dir);
	snprintf(dpath, sizeof(dpath), "%s/incoming", spool_dir);
	if ((d = opendir(path)) == NULL)
		return -1;
	tfd = dirfd(d);
	if ((ifd = open(dpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		closedir(d);
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/tmp/%s", spool_dir, de->d_name);
		rc = qid_valid(de->d_name) ? spool_committed_in_tmp(path, &f) : 0;
		if (rc == 1) {
			if (renameat2(tfd, de->d_name, ifd, f.m.qid, RENAME_NOREPLACE) == 0) {
				msg_info("%s: recovered from %s (committed, its rename into "
					 "incoming/ lost)", f.m.qid, path);
				found++;
			} else {
				msg_warn("%s: cannot recover %s into incoming/: %s; left in tmp/",
					 f.m.qid, path, strerror(errno));
			}
			spool_file_free(&f);
			continue;
		}
		if (rc == -2) {
			msg_warn("cannot read %s: %s; left in tmp/", path, strerror(errno));
			continue;
		}
		if (remove_rest && unlinkat(tfd, de->d_name, 0) == 0)
			msg_info("removed unacknowledged file %s", path);
	}
	closedir(d);
	if (found > 0 && fsync(ifd) < 0)
		msg_warn("fsync %s: %s", dpath, strerror(errno));
	close(ifd);
	return found;
}

/* ---- padding ---- */

int
recycle_pad(int fd, uint64_t end, uint64_t size)
{
	static const char zeros[RECYCLE_ROUND];
	unsigned char hdr[SPOOL_REC_HDR];
	uint64_t want, off;
	size_t n;
	ssize_t w;

	if (size == end)
		return 0;
	if (size >= end + SPOOL_REC_HDR) {
		/* the old bytes stay, covered */
		want = size;
	} else {
		/* a new file, one the message outgrew, or too little room for the
		 * header: to the next boundary, zeros written */
		want = (end + SPOOL_REC_HDR + RECYCLE_ROUND - 1) / RECYCLE_ROUND * RECYCLE_ROUND;
	}
	spool_encode_pad(hdr, (size_t)(want - end - SPOOL_REC_HDR));
	if ((w = pwrite(fd, hdr, sizeof(hdr), (off_t)end)) != (ssize_t)sizeof(hdr)) {
		if (w >= 0)
			errno = ENOSPC;         /* short: the file system is full */
		return -1;
	}
	for (off = size > end + SPOOL_REC_HDR ? size : end + SPOOL_REC_HDR; off < want;
	     off += (uint64_t)w) {
		n = want - off < sizeof(zeros) ? (size_t)(want - off) : sizeof(zeros);
		w = pwrite(fd, zeros, n, (off_t)off);
		if (w < 0 && errno == EINTR) {
			w = 0;
			continue;
		}
		if (w <= 0) {
			if (w == 0)
				errno = ENOSPC;
			return -1;
		}
	}
	return 0;
}
