/*
 * spool.c - the queue file format: encoding a new message's records,
 * parsing a file image back, reading one from disk, preparing the spool
 * folders and moving bad files aside.
 *
 * spool_parse() is a pure function over bytes that may have been torn by a
 * crash or damaged on disk: it must never read outside the buffer it is
 * given, never trust a length field, and always say precisely what is wrong.
 * spool_load() is the only reader of queue files (the queue manager, the
 * start-up check and sorterctl all use it), so that a file that cannot be
 * read right now (EIO, ENOMEM, EMFILE...) is never taken for a damaged one:
 * only a parse error moves a file to corrupt/. Nothing here may delete a
 * queue file.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/lib.h"
#include "queue/queue.h"

/* The folders spool_prepare() creates, besides spool_dir itself. */
static const char *const spool_subdirs[] = {
	"tmp", "incoming", "active", "deferred", "hold", "corrupt", "defer",
};

/* ---- writer ---- */

static void
put_rec_hdr(struct dstr *out, int type, size_t len)
{
	unsigned char h[SPOOL_REC_HDR];

	/* A record longer than the length field can express would be read
	 * back as a different, shorter record: that is a bug upstream. */
	if (len > UINT32_MAX)
		msg_panic("spool record '%c' too long: %zu bytes", type, len);
	h[0] = (unsigned char)type;
	h[1] = (unsigned char)(len >> 24);
	h[2] = (unsigned char)(len >> 16);
	h[3] = (unsigned char)(len >> 8);
	h[4] = (unsigned char)len;
	if (dstr_append(out, h, sizeof(h)) < 0)
		msg_panic("spool head exceeds its buffer limit");
}

static void
put_rec(struct dstr *out, int type, const char *text)
{
	size_t len;

	if (text == NULL)
		text = "";
	len = strlen(text);
	put_rec_hdr(out, type, len);
	if (dstr_append(out, text, len) < 0)
		msg_panic("spool head exceeds its buffer limit");
}

void
spool_encode_head(const struct spool_envelope *env, size_t content_len,
		  struct dstr *out)
{
	char t[24];
	size_t i;

	snprintf(t, sizeof(t), "%llu", (unsigned long long)env->arrival_usec);
	put_rec(out, SPOOL_REC_VERSION, SPOOL_VERSION);
	put_rec(out, SPOOL_REC_TIME, t);
	put_rec(out, SPOOL_REC_CLIENT, env->client);
	put_rec(out, SPOOL_REC_HELO, env->helo);
	put_rec(out, SPOOL_REC_PROTO, env->proto);
	put_rec(out, SPOOL_REC_SENDER, env->sender);
	if (env->sender_params != NULL)
		put_rec(out, SPOOL_REC_SPARAM, env->sender_params);
	if (env->hold_reason != NULL)
		put_rec(out, SPOOL_REC_HOLD, env->hold_reason);
	for (i = 0; i < env->nrcpt; i++)
		put_rec(out, SPOOL_REC_RCPT, env->rcpts[i]);
	put_rec_hdr(out, SPOOL_REC_CONTENT, content_len);
}

char *
spool_rcpt_text(const char *addr, const struct dsn_rcpt_params *p)
{
	struct dstr d;

	dstr_init(&d, 0);
	(void)dstr_append(&d, addr, strlen(addr));
	if (p != NULL && (p->notify || p->orcpt_type[0])) {
		(void)dstr_append(&d, " ", 1);
		dsn_format_rcpt_params(p, &d);
	}
	return d.s;
}

char *
spool_sender_params(const struct dsn_sender_params *p)
{
	struct dstr d;

	dstr_init(&d, 0);
	dsn_format_sender_params(p, &d);
	return d.s;             /* NULL when nothing was written */
}

void
spool_encode_end(unsigned char out[SPOOL_REC_HDR])
{
	out[0] = SPOOL_REC_END;
	out[1] = out[2] = out[3] = out[4] = 0;
}

/* ---- parser ---- */

void
spool_msg_free(struct spool_msg *m)
{
	size_t i;

	free(m->client);
	free(m->helo);
	free(m->proto);
	free(m->sender);
	free(m->sender_params);
	free(m->hold_reason);
	for (i = 0; i < m->nrcpt; i++) {
		free(m->rcpts[i].addr);
		free(m->rcpts[i].params);
	}
	free(m->rcpts);
	memset(m, 0, sizeof(*m));
}

/* Record types are shown as 'X' when printable, else as a hex byte, so a
 * reason never carries control characters into a log line. */
static const char *
type_name(int type, char buf[8])
{
	if (type > 0x20 && type < 0x7f)
		snprintf(buf, 8, "'%c'", type);
	else
		snprintf(buf, 8, "0x%02x", (unsigned)type);
	return buf;
}

/* A short, printable excerpt of bytes from a damaged file for a reason. */
static const char *
printable(const unsigned char *p, size_t len, char *buf, size_t buflen)
{
	size_t i, n = len < buflen - 1 ? len : buflen - 1;

	for (i = 0; i < n; i++)
		buf[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
	buf[n] = '\0';
	return buf;
}

/* The address ends at the first space outside a quoted local part
 * ("john smith"@example.test is one address). */
static size_t
rcpt_addr_len(const char *s, size_t len)
{
	bool quoted = false;
	size_t i;

	for (i = 0; i < len; i++) {
		if (quoted && s[i] == '\\' && i + 1 < len)
			i++;
		else if (s[i] == '"')
			quoted = !quoted;
		else if (s[i] == ' ' && !quoted)
			break;
	}
	return i;
}

size_t
spool_rcpt_addr_len(const char *r)
{
	return rcpt_addr_len(r, strlen(r));
}

static int
parse_time(const unsigned char *p, size_t len, uint64_t *out)
{
	uint64_t v = 0;
	size_t i;

	if (len == 0 || len > 20)
		return -1;
	for (i = 0; i < len; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		if (v > (UINT64_MAX - (uint64_t)(p[i] - '0')) / 10)
			return -1;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	*out = v;
	return 0;
}

static void
add_rcpt(struct spool_msg *m, size_t *cap, const char *text, size_t len,
	 enum rcpt_state state, size_t type_offset)
{
	struct spool_rcpt *r;
	size_t alen = rcpt_addr_len(text, len);

	if (m->nrcpt == *cap) {
		*cap = *cap ? *cap * 2 : 4;
		m->rcpts = xrealloc(m->rcpts, *cap * sizeof(*m->rcpts));
	}
	r = &m->rcpts[m->nrcpt++];
	r->addr = xstrndup(text, alen);
	r->params = alen < len ? xstrndup(text + alen + 1, len - alen - 1) : NULL;
	r->state = state;
	r->type_offset = type_offset;
}

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); goto fail; } while (0)

int
spool_parse(const unsigned char *buf, size_t len, struct spool_msg *m,
	    char *err, size_t errlen)
{
	size_t off = 0, rlen, cap = 0, left;
	const unsigned char *data;
	bool have_time = false, have_content = false, have_end = false;
	char **field, tn[8], tv[20];
	int type;

	memset(m, 0, sizeof(*m));
	if (errlen)
		err[0] = '\0';
	if (len == 0)
		FAIL("torn: empty file");
	while (off < len) {
		left = len - off;
		if (have_end)
			FAIL("%zu trailing bytes after the end marker, from offset %zu", left, off);
		if (left < SPOOL_REC_HDR)
			FAIL("torn: record header at offset %zu cut short (%zu of %d bytes)",
			     off, left, SPOOL_REC_HDR);
		type = buf[off];
		rlen = (size_t)buf[off + 1] << 24 | (size_t)buf[off + 2] << 16 |
		       (size_t)buf[off + 3] << 8 | (size_t)buf[off + 4];
		left -= SPOOL_REC_HDR;
		data = buf + off + SPOOL_REC_HDR;
		/* the length is checked against what remains: no sum can overflow */
		if (rlen > left)
			FAIL("record %s at offset %zu runs past end of file (length %zu, %zu bytes left)",
			     type_name(type, tn), off, rlen, left);
		if (off == 0 && type != SPOOL_REC_VERSION)
			FAIL("first record is %s, not the version record", type_name(type, tn));
		if (have_content && type == SPOOL_REC_CONTENT)
			FAIL("duplicate record 'M' at offset %zu", off);
		if (have_content && type != SPOOL_REC_END)
			FAIL("record %s at offset %zu after the content", type_name(type, tn), off);
		if (type != SPOOL_REC_CONTENT && memchr(data, '\0', rlen) != NULL)
			FAIL("NUL byte in record %s at offset %zu", type_name(type, tn), off);

		field = NULL;
		switch (type) {
		case SPOOL_REC_VERSION:
			if (off != 0)
				FAIL("second version record at offset %zu", off);
			if (rlen != strlen(SPOOL_VERSION) || memcmp(data, SPOOL_VERSION, rlen) != 0)
				FAIL("unsupported spool version \"%s\"",
				     printable(data, rlen, tv, sizeof(tv)));
			break;
		case SPOOL_REC_TIME:
			if (have_time)
				FAIL("duplicate record 'T' at offset %zu", off);
			if (parse_time(data, rlen, &m->arrival_usec) < 0)
				FAIL("bad arrival time in record 'T' at offset %zu", off);
			have_time = true;
			break;
		case SPOOL_REC_CLIENT:
			field = &m->client;
			break;
		case SPOOL_REC_HELO:
			field = &m->helo;
			break;
		case SPOOL_REC_PROTO:
			field = &m->proto;
			break;
		case SPOOL_REC_SENDER:
			field = &m->sender;
			break;
		case SPOOL_REC_SPARAM:
			field = &m->sender_params;
			break;
		case SPOOL_REC_HOLD:
			field = &m->hold_reason;
			break;
		case SPOOL_REC_RCPT:
		case SPOOL_REC_RCPT_DONE:
		case SPOOL_REC_RCPT_BOUNCED:
		case SPOOL_REC_RCPT_DELETED:
			if (rlen == 0 || rcpt_addr_len((const char *)data, rlen) == 0)
				FAIL("empty recipient address in record %s at offset %zu",
				     type_name(type, tn), off);
			add_rcpt(m, &cap, (const char *)data, rlen,
				 type == SPOOL_REC_RCPT ? RCPT_PENDING :
				 type == SPOOL_REC_RCPT_DONE ? RCPT_DONE :
				 type == SPOOL_REC_RCPT_BOUNCED ? RCPT_BOUNCED : RCPT_DELETED,
				 off);
			break;
		case SPOOL_REC_CONTENT:
			if (m->nrcpt == 0)
				FAIL("no recipient records before the content");
			m->content_offset = off + SPOOL_REC_HDR;
			m->content_len = rlen;
			have_content = true;
			break;
		case SPOOL_REC_END:
			if (!have_content)
				FAIL("end marker at offset %zu before the content", off);
			if (rlen != 0)
				FAIL("end marker at offset %zu has length %zu", off, rlen);
			have_end = true;
			break;
		default:
			FAIL("unknown record type 0x%02x at offset %zu", (unsigned)type, off);
		}
		if (field != NULL) {
			if (*field != NULL)
				FAIL("duplicate record %s at offset %zu", type_name(type, tn), off);
			*field = xstrndup((const char *)data, rlen);
		}
		off += SPOOL_REC_HDR + rlen;
	}
	if (!have_end)
		FAIL("torn: no end marker");
	if (!have_time)
		FAIL("no arrival time record 'T'");
	if (m->sender == NULL)
		FAIL("no sender record 'S'");
	/* Optional text records read back as "" so that callers never meet NULL
	 * where the writer always puts something. */
	if (m->client == NULL)
		m->client = xstrdup("");
	if (m->helo == NULL)
		m->helo = xstrdup("");
	if (m->proto == NULL)
		m->proto = xstrdup("");
	m->file_size = len;
	return 0;

fail:
	spool_msg_free(m);
	return -1;
}

#undef FAIL

/* ---- files ---- */

static const char *
base_name(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? s + 1 : path;
}

/* Reads a whole file with rd. The size is taken from fstat but reading
 * goes on to end of file, so a file that changes meanwhile is never cut
 * short. A failed read is an error, never an early end of file: a short
 * image would parse as torn and send a good file to corrupt/. */
static int
slurp(int fd, spool_read_fn rd, unsigned char **bufp, size_t *lenp)
{
	struct stat st;
	unsigned char *buf;
	size_t cap, len = 0;
	ssize_t n;
	int saved;

	if (fstat(fd, &st) < 0)
		return -1;
	if (!S_ISREG(st.st_mode)) {
		errno = EINVAL;
		return -1;
	}
	if ((unsigned long long)st.st_size >= SIZE_MAX / 4) {
		errno = EFBIG;
		return -1;
	}
	cap = (size_t)st.st_size + 1;
	buf = xmalloc(cap);
	for (;;) {
		if (len == cap) {
			if (cap >= SIZE_MAX / 4) {
				free(buf);
				errno = EFBIG;
				return -1;
			}
			cap *= 2;
			buf = xrealloc(buf, cap);
		}
		n = rd(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			saved = errno;
			free(buf);
			errno = saved ? saved : EIO;
			return -1;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	*bufp = buf;
	*lenp = len;
	return 0;
}

int
spool_load(const char *path, spool_read_fn rd, struct spool_file *f, char *err, size_t errlen)
{
	return spool_load_as(path, base_name(path), rd, f, err, errlen);
}

int
spool_load_as(const char *path, const char *name, spool_read_fn rd, struct spool_file *f,
	      char *err, size_t errlen)
{
	struct stat st;
	int fd, saved;

	memset(f, 0, sizeof(*f));
	if (!qid_valid(name)) {
		snprintf(err, errlen, "file name is not a queue id");
		return -1;
	}
	/* never through a link planted in the spool, and no FIFO may hang us */
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)) < 0) {
		saved = errno;
		snprintf(err, errlen, "open %s: %s", path, strerror(saved));
		errno = saved;
		if (saved == ELOOP) {
			snprintf(err, errlen, "a symbolic link, not a queue file");
			return -1;
		}
		return -2;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		saved = errno;
		close(fd);
		snprintf(err, errlen, "not a regular file");
		errno = saved;
		return -1;
	}
	if (slurp(fd, rd ? rd : read, &f->image, &f->len) < 0) {
		saved = errno;
		close(fd);
		snprintf(err, errlen, "read %s: %s", path, strerror(saved));
		errno = saved;
		return -2;
	}
	close(fd);
	if (spool_parse(f->image, f->len, &f->m, err, errlen) < 0) {
		free(f->image);
		memset(f, 0, sizeof(*f));
		return -1;
	}
	memcpy(f->m.id, name, QID_LEN + 1);
	return 0;
}

void
spool_file_free(struct spool_file *f)
{
	spool_msg_free(&f->m);
	free(f->image);
	memset(f, 0, sizeof(*f));
}

int
spool_take(const char *spool_dir, const char *path, spool_read_fn rd, struct spool_file *f)
{
	char err[512];
	int rc = spool_load(path, rd, f, err, sizeof(err)), saved = errno;

	if (rc == -1)
		spool_quarantine(spool_dir, path, err);
	else if (rc == -2 && saved != ENOENT)   /* gone: someone else took it */
		msg_warn("%s; left in place, to be read again later", err);
	errno = saved;
	return rc;
}

int
spool_prepare(const char *spool_dir)
{
	char path[4096];
	struct stat st;
	size_t i;

	if (mkdir_p(spool_dir, 0700) < 0)
		return -1;
	for (i = 0; i < sizeof(spool_subdirs) / sizeof(spool_subdirs[0]); i++) {
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", spool_dir,
				     spool_subdirs[i]) >= sizeof(path)) {
			errno = ENAMETOOLONG;
			return -1;
		}
		if (mkdir(path, 0700) < 0) {
			if (errno != EEXIST)
				return -1;
			/* a plain file in its place would only fail later, and less clearly */
			if (stat(path, &st) < 0)
				return -1;
			if (!S_ISDIR(st.st_mode)) {
				errno = ENOTDIR;
				return -1;
			}
		}
	}
	return 0;
}

void
spool_quarantine(const char *spool_dir, const char *path, const char *why)
{
	const char *name = base_name(path);
	const char *who = qid_valid(name) ? name : path;
	char dir[4096], dest[4096];
	struct stat st;
	int n, len;

	if ((size_t)snprintf(dir, sizeof(dir), "%s/corrupt", spool_dir) >= sizeof(dir)) {
		msg_warn("%s: cannot move to corrupt/: spool path too long (%s)", who, why);
		return;
	}
	if (mkdir_p(dir, 0700) < 0) {
		msg_warn("%s: cannot create %s: %s (%s)", who, dir, strerror(errno), why);
		return;
	}
	/* A file already there under the same name is evidence too: never
	 * replace it, pick the next free suffix instead. Only one process
	 * quarantines a given file, so check-then-rename does not race. */
	for (n = 0; n < 1000; n++) {
		if (n == 0)
			len = snprintf(dest, sizeof(dest), "%s/%s", dir, name);
		else
			len = snprintf(dest, sizeof(dest), "%s/%s.%d", dir, name, n);
		if (len < 0 || (size_t)len >= sizeof(dest)) {
			msg_warn("%s: cannot move to corrupt/: path too long (%s)", who, why);
			return;
		}
		if (lstat(dest, &st) < 0 && errno == ENOENT)
			break;
	}
	if (n == 1000) {
		msg_warn("%s: cannot move to corrupt/: too many files named %s there (%s)",
			 who, name, why);
		return;
	}
	if (rename(path, dest) < 0) {
		msg_warn("%s: cannot move %s to corrupt/: %s (%s)", who, path,
			 strerror(errno), why);
		return;
	}
	if (fsync_dir(dir) < 0)
		msg_warn("%s: fsync %s: %s", who, dir, strerror(errno));
	msg_warn("%s: moved to corrupt/: %s", who, why);
}
