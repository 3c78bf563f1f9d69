/*
 * fsrec.c - an LD_PRELOAD recorder of the file system calls that make a
 * queue file durable, for tests/integration/test_durability.py.
 *
 * It wraps open/openat (and their 64-bit and _FORTIFY_SOURCE names),
 * write/pwrite/writev/pwritev, fsync/fdatasync, sync_file_range,
 * rename/renameat/renameat2,
 * link/linkat, unlink/unlinkat and close, calls the real function (the next one in the
 * symbol search order: libc, or ASan's interceptor chain when libasan comes
 * first in LD_PRELOAD), and appends one line per call to the file named by
 * $FSREC_LOG:
 *
 *   t0=NS t1=NS pid=P tid=T call=NAME fd=N ino=DEV:INO off=O len=L ret=R
 *   errno=E path=P path2=P head=HEX direct=D segs=LEN:HEX,...
 *
 * t0 and t1 are CLOCK_MONOTONIC nanoseconds before and after the real call
 * (the clock of Python's time.monotonic_ns()). fd is the descriptor used,
 * or the one an open returned; ino is the device and inode of that
 * descriptor (of the source file for rename/unlink), read before a close,
 * rename or unlink and after an open; path is where the descriptor points
 * (/proc/self/fd/N), or a name made absolute against its directory
 * descriptor; path2 is a rename's or a link's target. off is the call's
 * offset (for write and writev, the file position of a regular file not
 * opened O_APPEND), or -1; len is the byte count asked for. Spaces, '%' and control bytes in
 * paths are written as %XX. head is a write's first bytes (of its first buffer, for the
 * vectored ones); segs, for a vectored write, each buffer's length and first bytes (- for
 * other calls), SEG_CAP of them at most; direct is 1 when the descriptor is O_DIRECT (a
 * write on it returns once the device has the bytes), else 0.
 *
 * Each line goes out in one write(2) to the log opened with O_APPEND (opened
 * and closed around each line with raw system calls, so that a process that
 * closes every descriptor cannot lose or misdirect it), so the forked
 * processes and threads of sorterd can share one log. The recorder holds no
 * lock and allocates nothing; a thread-local flag keeps it from recording
 * itself. It must never change what the wrapped call does or returns, errno
 * included. Without $FSREC_LOG it only passes calls through.
 *
 * One knob changes when a call happens, never what it does: with
 * $FSREC_SLOW_RENAME=SUBSTRING:MSEC, a recorded rename or link whose target path
 * contains SUBSTRING sleeps MSEC milliseconds first (a slow disk, to widen
 * a race a test proves closed).
 *
 * And one changes what the wall clock says: with $FSREC_CLOCK_BACK=SECONDS,
 * gettimeofday, time and clock_gettime(CLOCK_REALTIME) answer SECONDS
 * earlier (a clock set back, as by an NTP step, between two runs). Other
 * clocks are left alone.
 *
 * And with $FSREC_NO_DIRECT=1, statx answers that no file takes direct I/O
 * (no STATX_DIOALIGN), as on a file system without it; with
 * $FSREC_DIRECT_EINVAL=1, a vectored write on an O_DIRECT descriptor fails
 * with EINVAL, as where the device refuses what it was told it takes.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#undef _FORTIFY_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define PATH_CAP 1024           /* bytes of a path kept in a record */
#define HEAD_CAP 64
#define SEG_CAP 32              /* buffers of a vectored write recorded */
#define LINE_CAP (4 * PATH_CAP + 2 * HEAD_CAP + SEG_CAP * (2 * HEAD_CAP + 24) + 512)

static char log_path[PATH_MAX];
static int log_state;           /* 0 not looked at, 1 recording, -1 off */
static __thread int in_recorder;

/* The real functions, looked up once (a race only looks one up twice). */
static void *
real_fn(void **slot, const char *name)
{
	void *f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);

	if (f == NULL) {
		f = dlsym(RTLD_NEXT, name);
		if (f == NULL)
			abort();        /* no such function below us: nothing sane to do */
		__atomic_store_n(slot, f, __ATOMIC_RELEASE);
	}
	return f;
}

/* real_NAME: the next NAME, of the wrapper's own type */
#define REAL(name) \
	static void *real_##name##_slot; \
	__typeof__(&name) real_##name = (__typeof__(&name))real_fn(&real_##name##_slot, #name)

static void
log_init(void)
{
	const char *p;

	if (log_state != 0)
		return;
	p = getenv("FSREC_LOG");
	if (p == NULL || *p == '\0' || strlen(p) >= sizeof(log_path)) {
		log_state = -1;
		return;
	}
	memcpy(log_path, p, strlen(p) + 1);
	log_state = 1;
}

__attribute__((constructor)) static void
fsrec_init(void)
{
	log_init();
}

/* Enters the recorder: false when this thread is in it already, or when
 * nothing is recorded. */
static int
rec_enter(void)
{
	if (in_recorder)
		return 0;
	log_init();
	if (log_state != 1)
		return 0;
	in_recorder = 1;
	return 1;
}

static unsigned long long
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

/* ---- one record ---- */

struct rec {
	unsigned long long t0, t1;
	const char *call;
	int fd;
	unsigned long long dev, ino;
	long long off, len, ret;
	int err;
	char path[PATH_CAP];
	char path2[PATH_CAP];
	unsigned char head[HEAD_CAP];   /* a write's first bytes */
	size_t headn;
	int direct;                     /* its descriptor is O_DIRECT */
	int nsegs;                      /* a vectored write's buffers, SEG_CAP at most */
	long long seglen[SEG_CAP];
	unsigned char seghead[SEG_CAP][HEAD_CAP];
};

/* the data of the write about to be recorded (HEAD), for rec_start */
static __thread const unsigned char *next_head;
static __thread size_t next_head_n;
#define HEAD(b, n) (next_head = (const unsigned char *)(b), next_head_n = (n))
/* and the buffers of the vectored write about to be recorded (HEADV) */
static __thread const struct iovec *next_iov;
static __thread int next_iovcnt;
#define HEADV(v, cnt) \
	(next_iov = (v), next_iovcnt = (cnt), \
	 (cnt) > 0 ? HEAD((v)[0].iov_base, (v)[0].iov_len) : (next_head = NULL, (size_t)0))

struct line {
	char buf[LINE_CAP];
	size_t len;
};

static void
put_str(struct line *l, const char *s)
{
	while (*s && l->len < sizeof(l->buf) - 1)
		l->buf[l->len++] = *s++;
}

static void
put_path(struct line *l, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	unsigned char c;

	if (*s == '\0') {
		put_str(l, "-");
		return;
	}
	for (; *s && l->len < sizeof(l->buf) - 4; s++) {
		c = (unsigned char)*s;
		if (c <= ' ' || c == '%' || c == 0x7f) {
			l->buf[l->len++] = '%';
			l->buf[l->len++] = hex[c >> 4];
			l->buf[l->len++] = hex[c & 15];
		} else {
			l->buf[l->len++] = (char)c;
		}
	}
}

static void
put_hex(struct line *l, const unsigned char *p, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	if (n == 0) {
		put_str(l, "-");
		return;
	}
	for (i = 0; i < n && l->len < sizeof(l->buf) - 3; i++) {
		l->buf[l->len++] = hex[p[i] >> 4];
		l->buf[l->len++] = hex[p[i] & 15];
	}
}

static void
put_num(struct line *l, long long v)
{
	char tmp[24];
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
	int n = 0;

	do
		tmp[n++] = (char)('0' + u % 10);
	while ((u /= 10) != 0);
	if (v < 0)
		tmp[n++] = '-';
	while (n > 0 && l->len < sizeof(l->buf) - 1)
		l->buf[l->len++] = tmp[--n];
}

static void
put_unum(struct line *l, unsigned long long u)
{
	char tmp[24];
	int n = 0;

	do
		tmp[n++] = (char)('0' + u % 10);
	while ((u /= 10) != 0);
	while (n > 0 && l->len < sizeof(l->buf) - 1)
		l->buf[l->len++] = tmp[--n];
}

static void
rec_write(const struct rec *r)
{
	struct line l;
	long fd;
	int i;

	l.len = 0;
	put_str(&l, "t0=");
	put_unum(&l, r->t0);
	put_str(&l, " t1=");
	put_unum(&l, r->t1);
	put_str(&l, " pid=");
	put_num(&l, (long long)getpid());
	put_str(&l, " tid=");
	put_num(&l, (long long)syscall(SYS_gettid));
	put_str(&l, " call=");
	put_str(&l, r->call);
	put_str(&l, " fd=");
	put_num(&l, r->fd);
	put_str(&l, " ino=");
	put_unum(&l, r->dev);
	put_str(&l, ":");
	put_unum(&l, r->ino);
	put_str(&l, " off=");
	put_num(&l, r->off);
	put_str(&l, " len=");
	put_num(&l, r->len);
	put_str(&l, " ret=");
	put_num(&l, r->ret);
	put_str(&l, " errno=");
	put_num(&l, r->err);
	put_str(&l, " path=");
	put_path(&l, r->path);
	put_str(&l, " path2=");
	put_path(&l, r->path2);
	put_str(&l, " head=");
	put_hex(&l, r->head, r->headn);
	put_str(&l, " direct=");
	put_num(&l, r->direct);
	put_str(&l, " segs=");
	if (r->nsegs == 0)
		put_str(&l, "-");
	for (i = 0; i < r->nsegs; i++) {
		if (i > 0)
			put_str(&l, ",");
		put_num(&l, r->seglen[i]);
		put_str(&l, ":");
		put_hex(&l, r->seghead[i],
			r->seglen[i] < HEAD_CAP ? (size_t)r->seglen[i] : HEAD_CAP);
	}
	l.buf[l.len++] = '\n';

	fd = syscall(SYS_openat, AT_FDCWD, log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
		     0666);
	if (fd < 0)
		return;
	(void)syscall(SYS_write, fd, l.buf, l.len);
	(void)syscall(SYS_close, fd);
}

/* ---- what a descriptor or a name points at ---- */

static void
fd_path(int fd, char *out)
{
	char link[64];
	ssize_t n;

	if (fd == AT_FDCWD)
		snprintf(link, sizeof(link), "/proc/self/cwd");
	else
		snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, out, PATH_CAP - 1);
	out[n < 0 ? 0 : n] = '\0';
}

static void
fd_ino(struct rec *r, int fd)
{
	struct stat st;

	if (fd >= 0 && fstat(fd, &st) == 0) {
		r->dev = (unsigned long long)st.st_dev;
		r->ino = (unsigned long long)st.st_ino;
	}
}

static void
fd_info(struct rec *r, int fd)
{
	fd_ino(r, fd);
	if (fd >= 0)
		fd_path(fd, r->path);
}

/* name relative to dirfd, made absolute, into out; its inode into r when
 * want_ino (before the call changes it) */
static void
name_info(struct rec *r, int dirfd, const char *name, char *out, int want_ino)
{
	struct stat st;
	size_t n;

	if (name == NULL) {
		out[0] = '\0';
		return;
	}
	if (want_ino && fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		r->dev = (unsigned long long)st.st_dev;
		r->ino = (unsigned long long)st.st_ino;
	}
	if (name[0] == '/') {
		snprintf(out, PATH_CAP, "%s", name);
		return;
	}
	fd_path(dirfd, out);
	n = strlen(out);
	snprintf(out + n, PATH_CAP - n, "/%s", name);
}

static void
rec_start(struct rec *r, const char *call, int fd)
{
	r->call = call;
	r->fd = fd;
	r->dev = r->ino = 0;
	r->off = -1;
	r->len = -1;
	r->ret = 0;
	r->err = 0;
	r->path[0] = '\0';
	r->path2[0] = '\0';
	r->headn = next_head == NULL ? 0 : next_head_n < HEAD_CAP ? next_head_n : HEAD_CAP;
	if (r->headn > 0)
		memcpy(r->head, next_head, r->headn);
	next_head = NULL;
	r->direct = 0;
	r->nsegs = 0;
	for (; next_iov != NULL && r->nsegs < next_iovcnt && r->nsegs < SEG_CAP; r->nsegs++) {
		r->seglen[r->nsegs] = (long long)next_iov[r->nsegs].iov_len;
		memcpy(r->seghead[r->nsegs], next_iov[r->nsegs].iov_base,
		       next_iov[r->nsegs].iov_len < HEAD_CAP ? next_iov[r->nsegs].iov_len : HEAD_CAP);
	}
	next_iov = NULL;
	r->t0 = now_ns();
}

/* after the real call: the result; errno is the call's again on return */
static void
rec_end(struct rec *r, long long ret, int err)
{
	r->t1 = now_ns();
	r->ret = ret;
	r->err = ret < 0 ? err : 0;
	rec_write(r);
	in_recorder = 0;
	errno = err;
}

static long long
iov_len(const struct iovec *iov, int n)
{
	long long sum = 0;
	int i;

	for (i = 0; iov != NULL && i < n; i++)
		sum += (long long)iov[i].iov_len;
	return sum;
}

/* ---- open ---- */

static int
needs_mode(int flags)
{
#ifdef O_TMPFILE
	if ((flags & O_TMPFILE) == O_TMPFILE)
		return 1;
#endif
	return (flags & O_CREAT) != 0;
}

#define OPEN_BODY(name, at, dirfd_expr) \
	do { \
		mode_t mode = 0; \
		unsigned long long t0; \
		int ret, err, on; \
		if (needs_mode(flags)) { \
			va_list ap; \
			va_start(ap, flags); \
			mode = (mode_t)va_arg(ap, int); \
			va_end(ap); \
		} \
		on = rec_enter(); \
		t0 = now_ns(); \
		ret = at; \
		err = errno; \
		if (!on) \
			return ret; \
		return rec_open_t(#name, dirfd_expr, path, flags, mode, ret, err, t0); \
	} while (0)

static int
rec_open_t(const char *call, int dirfd, const char *path, int flags, mode_t mode, int ret,
	   int err, unsigned long long t0)
{
	struct rec r;

	rec_start(&r, call, ret);
	r.t0 = t0;
	if (ret >= 0)
		fd_info(&r, ret);
	else
		name_info(&r, dirfd, path, r.path, 0);
	r.len = flags;  /* an open's flags, in the length field */
	(void)mode;
	rec_end(&r, ret, err);
	return ret;
}

int open(const char *path, int flags, ...);
int open64(const char *path, int flags, ...);
int openat(int dirfd, const char *path, int flags, ...);
int openat64(int dirfd, const char *path, int flags, ...);
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

int
open(const char *path, int flags, ...)
{
	REAL(open);
	OPEN_BODY(open, real_open(path, flags, mode), AT_FDCWD);
}

int
open64(const char *path, int flags, ...)
{
	REAL(open64);
	OPEN_BODY(open64, real_open64(path, flags, mode), AT_FDCWD);
}

int
openat(int dirfd, const char *path, int flags, ...)
{
	REAL(openat);
	OPEN_BODY(openat, real_openat(dirfd, path, flags, mode), dirfd);
}

int
openat64(int dirfd, const char *path, int flags, ...)
{
	REAL(openat64);
	OPEN_BODY(openat64, real_openat64(dirfd, path, flags, mode), dirfd);
}

/* the _FORTIFY_SOURCE entry points take no mode: they refuse O_CREAT */
int
__open_2(const char *path, int flags)
{
	REAL(__open_2);
	int ret, err, on = rec_enter();
	unsigned long long t0 = now_ns();

	ret = real___open_2(path, flags);
	err = errno;
	if (!on)
		return ret;
	return rec_open_t("open", AT_FDCWD, path, flags, 0, ret, err, t0);
}

int
__open64_2(const char *path, int flags)
{
	REAL(__open64_2);
	int ret, err, on = rec_enter();
	unsigned long long t0 = now_ns();

	ret = real___open64_2(path, flags);
	err = errno;
	if (!on)
		return ret;
	return rec_open_t("open64", AT_FDCWD, path, flags, 0, ret, err, t0);
}

int
__openat_2(int dirfd, const char *path, int flags)
{
	REAL(__openat_2);
	int ret, err, on = rec_enter();
	unsigned long long t0 = now_ns();

	ret = real___openat_2(dirfd, path, flags);
	err = errno;
	if (!on)
		return ret;
	return rec_open_t("openat", dirfd, path, flags, 0, ret, err, t0);
}

int
__openat64_2(int dirfd, const char *path, int flags)
{
	REAL(__openat64_2);
	int ret, err, on = rec_enter();
	unsigned long long t0 = now_ns();

	ret = real___openat64_2(dirfd, path, flags);
	err = errno;
	if (!on)
		return ret;
	return rec_open_t("openat64", dirfd, path, flags, 0, ret, err, t0);
}

/* ---- close ---- */

int
close(int fd)
{
	REAL(close);
	struct rec r;
	int ret, err;

	if (!rec_enter())
		return real_close(fd);
	rec_start(&r, "close", fd);
	fd_info(&r, fd);
	r.t0 = now_ns();
	ret = real_close(fd);
	err = errno;
	rec_end(&r, ret, err);
	return ret;
}

/* ---- writes ---- */

/* the common part of every call on one descriptor: call is the real call,
 * made between t0 and t1 */
#define FD_CALL(name, fdv, offv, lenv, call) \
	do { \
		struct rec r; \
		long long ret; \
		int err; \
		if (!rec_enter()) { \
			next_head = NULL; \
			next_iov = NULL; \
			return call; \
		} \
		rec_start(&r, name, fdv); \
		fd_info(&r, fdv); \
		r.direct = fd_direct(fdv); \
		r.off = (offv); \
		r.len = (lenv); \
		r.t0 = now_ns(); \
		ret = (long long)(call); \
		err = errno; \
		rec_end(&r, ret, err); \
		return ret; \
	} while (0)

/* whether fd is O_DIRECT (errno kept) */
static int
fd_direct(int fd)
{
	int saved = errno, fl = fcntl(fd, F_GETFL);

	errno = saved;
	return fl >= 0 && (fl & O_DIRECT) ? 1 : 0;
}

/* $FSREC_DIRECT_EINVAL: whether a vectored write on fd is refused */
static int
direct_refused(int fd)
{
	const char *knob = getenv("FSREC_DIRECT_EINVAL");

	return knob != NULL && strcmp(knob, "1") == 0 && fd_direct(fd);
}

#define REFUSED_OR(fd, call) (direct_refused(fd) ? (errno = EINVAL, (ssize_t)-1) : (call))

/* where a write without an offset goes: the file position of a regular
 * file not opened O_APPEND, else -1 (errno kept) */
static long long
file_pos(int fd)
{
	int saved = errno, fl = fcntl(fd, F_GETFL);
	struct stat sb;
	off_t pos = -1;

	if (fl >= 0 && !(fl & O_APPEND) && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode))
		pos = lseek(fd, 0, SEEK_CUR);
	errno = saved;
	return (long long)pos;
}

ssize_t
write(int fd, const void *buf, size_t n)
{
	REAL(write);

	HEAD(buf, n);
	FD_CALL("write", fd, file_pos(fd), (long long)n, real_write(fd, buf, n));
}

ssize_t
pwrite(int fd, const void *buf, size_t n, off_t off)
{
	REAL(pwrite);

	HEAD(buf, n);
	FD_CALL("pwrite", fd, (long long)off, (long long)n, real_pwrite(fd, buf, n, off));
}

ssize_t
pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
	REAL(pwrite64);

	HEAD(buf, n);
	FD_CALL("pwrite64", fd, (long long)off, (long long)n, real_pwrite64(fd, buf, n, off));
}

ssize_t
writev(int fd, const struct iovec *iov, int cnt)
{
	REAL(writev);

	HEADV(iov, cnt);
	FD_CALL("writev", fd, file_pos(fd), iov_len(iov, cnt), real_writev(fd, iov, cnt));
}

ssize_t
pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
	REAL(pwritev);

	HEADV(iov, cnt);
	FD_CALL("pwritev", fd, (long long)off, iov_len(iov, cnt),
		REFUSED_OR(fd, real_pwritev(fd, iov, cnt, off)));
}

ssize_t
pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off)
{
	REAL(pwritev64);

	HEADV(iov, cnt);
	FD_CALL("pwritev64", fd, (long long)off, iov_len(iov, cnt),
		REFUSED_OR(fd, real_pwritev64(fd, iov, cnt, off)));
}

ssize_t
pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
	REAL(pwritev2);

	HEADV(iov, cnt);
	FD_CALL("pwritev2", fd, (long long)off, iov_len(iov, cnt),
		REFUSED_OR(fd, real_pwritev2(fd, iov, cnt, off, flags)));
}

/* ---- syncs ---- */

int
fsync(int fd)
{
	REAL(fsync);

	FD_CALL("fsync", fd, -1, -1, real_fsync(fd));
}

int
fdatasync(int fd)
{
	REAL(fdatasync);

	FD_CALL("fdatasync", fd, -1, -1, real_fdatasync(fd));
}

/* recorded as sync_file_range when it writes and waits (WAIT_BEFORE,
 * WRITE and WAIT_AFTER), else as sync_file_range_partial; off and len
 * are its offset and byte count (0: to the end of the file) */
int
sync_file_range(int fd, off_t off, off_t n, unsigned int flags)
{
	const unsigned int all = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
				 SYNC_FILE_RANGE_WAIT_AFTER;

	REAL(sync_file_range);

	FD_CALL((flags & all) == all ? "sync_file_range" : "sync_file_range_partial", fd,
		(long long)off, (long long)n, real_sync_file_range(fd, off, n, flags));
}

/* ---- names: rename, unlink ---- */

/* $FSREC_SLOW_RENAME: sleeps before a rename to a matching target */
static void
slow_rename(const char *target)
{
	const char *knob = getenv("FSREC_SLOW_RENAME"), *colon;
	char sub[256];
	size_t n;
	long ms;
	struct timespec ts;

	if (knob == NULL || (colon = strrchr(knob, ':')) == NULL)
		return;
	n = (size_t)(colon - knob);
	if (n == 0 || n >= sizeof(sub))
		return;
	memcpy(sub, knob, n);
	sub[n] = '\0';
	if (strstr(target, sub) == NULL || (ms = strtol(colon + 1, NULL, 10)) <= 0)
		return;
	ts.tv_sec = ms / 1000;
	ts.tv_nsec = (ms % 1000) * 1000000L;
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

#define NAME_CALL(name, olddir, oldp, newdir, newp, call) \
	do { \
		struct rec r; \
		long long ret; \
		int err, saved_errno = errno; \
		if (!rec_enter()) \
			return call; \
		rec_start(&r, name, olddir); \
		name_info(&r, olddir, oldp, r.path, 1); \
		name_info(&r, newdir, newp, r.path2, 0); \
		slow_rename(r.path2);   /* an unlink's is "" */ \
		errno = saved_errno; \
		r.t0 = now_ns(); \
		ret = (long long)(call); \
		err = errno; \
		rec_end(&r, ret, err); \
		return (int)ret; \
	} while (0)

int
rename(const char *from, const char *to)
{
	REAL(rename);

	NAME_CALL("rename", AT_FDCWD, from, AT_FDCWD, to, real_rename(from, to));
}

int
renameat(int fromdir, const char *from, int todir, const char *to)
{
	REAL(renameat);

	NAME_CALL("renameat", fromdir, from, todir, to, real_renameat(fromdir, from, todir, to));
}

int
renameat2(int fromdir, const char *from, int todir, const char *to, unsigned int flags)
{
	REAL(renameat2);

	NAME_CALL("renameat2", fromdir, from, todir, to,
		  real_renameat2(fromdir, from, todir, to, flags));
}

int
link(const char *from, const char *to)
{
	REAL(link);

	NAME_CALL("link", AT_FDCWD, from, AT_FDCWD, to, real_link(from, to));
}

int
linkat(int fromdir, const char *from, int todir, const char *to, int flags)
{
	REAL(linkat);

	NAME_CALL("linkat", fromdir, from, todir, to, real_linkat(fromdir, from, todir, to, flags));
}

int
unlink(const char *path)
{
	REAL(unlink);

	NAME_CALL("unlink", AT_FDCWD, path, AT_FDCWD, NULL, real_unlink(path));
}

int
unlinkat(int dirfd, const char *path, int flags)
{
	REAL(unlinkat);

	NAME_CALL("unlinkat", dirfd, path, AT_FDCWD, NULL, real_unlinkat(dirfd, path, flags));
}

/* ---- the wall clock: $FSREC_CLOCK_BACK ---- */

static long long
clock_back_sec(void)
{
	const char *knob = getenv("FSREC_CLOCK_BACK");

	return knob != NULL ? strtoll(knob, NULL, 10) : 0;
}

int
clock_gettime(clockid_t id, struct timespec *ts)
{
	REAL(clock_gettime);
	int rc = real_clock_gettime(id, ts);

	if (rc == 0 && id == CLOCK_REALTIME)
		ts->tv_sec -= (time_t)clock_back_sec();
	return rc;
}

int
gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
	REAL(gettimeofday);
	int rc = real_gettimeofday(tv, tz);

	if (rc == 0)
		tv->tv_sec -= (time_t)clock_back_sec();
	return rc;
}

time_t
time(time_t *out)
{
	REAL(time);
	time_t t = real_time(NULL);

	if (t != (time_t)-1)
		t -= (time_t)clock_back_sec();
	if (out != NULL)
		*out = t;
	return t;
}

/* ---- direct I/O: $FSREC_NO_DIRECT ---- */

int
statx(int dirfd, const char *restrict path, int flags, unsigned int mask,
      struct statx *restrict sx)
{
	REAL(statx);
	const char *knob = getenv("FSREC_NO_DIRECT");
	int rc = real_statx(dirfd, path, flags, mask, sx);

	if (rc == 0 && knob != NULL && strcmp(knob, "1") == 0) {
		sx->stx_mask &= ~(unsigned int)STATX_DIOALIGN;
		sx->stx_dio_mem_align = sx->stx_dio_offset_align = 0;
	}
	return rc;
}
