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
 * only a parse error moves a file to corrupt/. It reads the records and
 * the end marker, never the content: the content stays on disk, read in
 * pieces by whoever sends or shows it (spool_content_read), so no reader
 * holds a whole message in memory. Nothing here deletes a queue file but
 * a finished message's name: spool_remove(), and spool_take() for a name
 * whose slot was marked freed (a removal a stop interrupted).
 */
#include "config.h"

#include <dirent.h>
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
	"tmp", "incoming", "active", "deferred", "hold", "corrupt", "defer", "slots",
	"journal",
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
	be32_put(h + 1, (uint32_t)len);
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
	if (env->id == NULL || !qid_valid(env->id))
		msg_panic("spool_encode_head: no queue id");
	put_rec(out, SPOOL_REC_VERSION, SPOOL_VERSION);
	put_rec(out, SPOOL_REC_ID, env->id);
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

void
spool_check_encode(unsigned char out[SPOOL_CHECK_REC], uint32_t head_crc, uint32_t content_crc)
{
	static const char hex[] = "0123456789abcdef";
	int i;

	out[0] = SPOOL_REC_CHECK;
	out[1] = out[2] = out[3] = 0;
	out[4] = SPOOL_CHECK_LEN;
	for (i = 0; i < 8; i++) {
		out[SPOOL_REC_HDR + i] = (unsigned char)hex[(head_crc >> (28 - 4 * i)) & 15];
		out[SPOOL_REC_HDR + 8 + i] = (unsigned char)hex[(content_crc >> (28 - 4 * i)) & 15];
	}
}

void
spool_encode_pad(unsigned char out[SPOOL_REC_HDR], size_t len)
{
	if (len > UINT32_MAX)
		msg_panic("spool padding too long: %zu bytes", len);
	out[0] = SPOOL_REC_PAD;
	be32_put(out + 1, (uint32_t)len);
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

/* 8 lowercase hex digits */
static int
parse_hex32(const unsigned char *p, uint32_t *out)
{
	uint32_t v = 0;
	int i;

	for (i = 0; i < 8; i++) {
		if (p[i] >= '0' && p[i] <= '9')
			v = v << 4 | (uint32_t)(p[i] - '0');
		else if (p[i] >= 'a' && p[i] <= 'f')
			v = v << 4 | (uint32_t)(p[i] - 'a' + 10);
		else
			return -1;
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

/*
 * What the parser sees of a file of file_len bytes: its first head_len
 * bytes and, once the content record is known, the bytes from tail_off to
 * the end. The content itself is never looked at, so a file can be parsed
 * without reading it (spool_load), and a whole image is the case where the
 * head is everything (spool_parse).
 */
struct view {
	const unsigned char *head;
	size_t head_len;
	const unsigned char *tail;      /* NULL until read */
	size_t tail_off, tail_len;
	size_t file_len;
};

/* n bytes at file offset off, or NULL when they are not in the view */
static const unsigned char *
view_at(const struct view *v, size_t off, size_t n)
{
	if (off <= v->head_len && n <= v->head_len - off)
		return v->head + off;
	if (v->tail != NULL && off >= v->tail_off && off - v->tail_off <= v->tail_len &&
	    n <= v->tail_len - (off - v->tail_off))
		return v->tail + (off - v->tail_off);
	return NULL;
}

enum { PARSE_OK = 0, PARSE_BAD = -1, PARSE_MORE_HEAD = 1, PARSE_NEED_TAIL = 2 };

/*
 * Parses the records in view v. Returns PARSE_OK or PARSE_BAD (err says
 * why), or asks for more: PARSE_MORE_HEAD when a record before the content
 * runs past the head, PARSE_NEED_TAIL (m->content_offset and content_len
 * set) when the records after the content are needed. Lengths are checked
 * against the file's length, so no offset sum can overflow.
 */
static int
parse_view(const struct view *v, struct spool_msg *m, char *err, size_t errlen)
{
	size_t off = 0, rlen, cap = 0, left, len = v->file_len;
	const unsigned char *hdr, *data;
	bool have_time = false, have_content = false, have_end = false, have_pad = false;
	bool have_id = false;
	char **field, tn[8], tv[20];
	int type;

	memset(m, 0, sizeof(*m));
	if (errlen)
		err[0] = '\0';
	if (len == 0)
		FAIL("torn: empty file");
	while (off < len) {
		left = len - off;
		if (have_pad)
			FAIL("%zu trailing bytes after the padding, from offset %zu", left, off);
		if (have_end && (left < SPOOL_REC_HDR ||
		    ((hdr = view_at(v, off, 1)) != NULL && hdr[0] != SPOOL_REC_PAD)))
			FAIL("%zu trailing bytes after the end marker, from offset %zu", left, off);
		if (left < SPOOL_REC_HDR)
			FAIL("torn: record header at offset %zu cut short (%zu of %d bytes)",
			     off, left, SPOOL_REC_HDR);
		if ((hdr = view_at(v, off, SPOOL_REC_HDR)) == NULL)
			goto more;
		type = hdr[0];
		rlen = be32_get(hdr + 1);
		left -= SPOOL_REC_HDR;
		/* the length is checked against what remains: no sum can overflow */
		if (rlen > left)
			FAIL("record %s at offset %zu runs past end of file (length %zu, %zu bytes left)",
			     type_name(type, tn), off, rlen, left);
		if (off == 0 && type != SPOOL_REC_VERSION)
			FAIL("first record is %s, not the version record", type_name(type, tn));
		if (have_content && type == SPOOL_REC_CONTENT)
			FAIL("duplicate record 'M' at offset %zu", off);
		if (have_content && type != SPOOL_REC_END && !(have_end && type == SPOOL_REC_PAD) &&
		    !(type == SPOOL_REC_CHECK && !m->has_check && !have_end))
			FAIL("record %s at offset %zu after the content", type_name(type, tn), off);
		if (m->has_check && !have_end && type != SPOOL_REC_END)
			FAIL("record %s at offset %zu after the check record", type_name(type, tn), off);
		/* before their data is asked for: the reader reads only so much
		 * after the content */
		if (type == SPOOL_REC_END && rlen != 0)
			FAIL("end marker at offset %zu has length %zu", off, rlen);
		if (type == SPOOL_REC_CHECK && rlen != SPOOL_CHECK_LEN)
			FAIL("bad check record at offset %zu", off);
		data = NULL;
		if (type != SPOOL_REC_CONTENT && type != SPOOL_REC_PAD) {
			if ((data = view_at(v, off + SPOOL_REC_HDR, rlen)) == NULL)
				goto more;
			if (memchr(data, '\0', rlen) != NULL)
				FAIL("NUL byte in record %s at offset %zu", type_name(type, tn), off);
		}

		field = NULL;
		switch (type) {
		case SPOOL_REC_VERSION:
			if (off != 0)
				FAIL("second version record at offset %zu", off);
			if (rlen != strlen(SPOOL_VERSION) || memcmp(data, SPOOL_VERSION, rlen) != 0)
				FAIL("unsupported spool version \"%s\"",
				     printable(data, rlen, tv, sizeof(tv)));
			break;
		case SPOOL_REC_ID:
			if (have_id)
				FAIL("duplicate record 'I' at offset %zu", off);
			if (rlen != QID_LEN)
				FAIL("bad queue id in record 'I' at offset %zu", off);
			memcpy(m->qid, data, QID_LEN);
			m->qid[QID_LEN] = '\0';
			if (!qid_valid(m->qid))
				FAIL("bad queue id in record 'I' at offset %zu", off);
			have_id = true;
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
		case SPOOL_REC_CHECK:
			if (!have_content)
				FAIL("check record at offset %zu before the content", off);
			if (rlen != SPOOL_CHECK_LEN || parse_hex32(data, &m->check_head) < 0 ||
			    parse_hex32(data + 8, &m->check_content) < 0)
				FAIL("bad check record at offset %zu", off);
			m->has_check = true;
			break;
		case SPOOL_REC_END:
			if (!have_content)
				FAIL("end marker at offset %zu before the content", off);
			have_end = true;
			break;
		case SPOOL_REC_PAD:
			if (!have_end)
				FAIL("padding record at offset %zu before the end marker", off);
			have_pad = true;
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
	return PARSE_OK;

more:
	{
		size_t co = m->content_offset, cl = m->content_len;
		bool tail = have_content && v->tail == NULL;

		spool_msg_free(m);
		if (!tail)
			return PARSE_MORE_HEAD;
		m->content_offset = co;
		m->content_len = cl;
		return PARSE_NEED_TAIL;
	}
fail:
	spool_msg_free(m);
	return PARSE_BAD;
}

int
spool_parse(const unsigned char *buf, size_t len, struct spool_msg *m,
	    char *err, size_t errlen)
{
	struct view v = { buf, len, NULL, len, 0, len };

	/* the head is the whole image: nothing can be missing from the view */
	if (parse_view(&v, m, err, errlen) != PARSE_OK) {
		if (errlen && err[0] == '\0')
			snprintf(err, errlen, "internal error: incomplete view");
		return -1;
	}
	return 0;
}

#undef FAIL

/* ---- files ---- */

static const char *
base_name(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? s + 1 : path;
}

/*
 * Reads n bytes at file offset off with rd. A failed read is an error,
 * never an early end of file: a short image would parse as torn and send a
 * good file to corrupt/. A file that ends before n bytes changed while it
 * was being read (queue files are never cut short): EAGAIN, read it again
 * later.
 */
static int
read_at(int fd, spool_read_fn rd, unsigned char *buf, size_t n, size_t off)
{
	size_t got = 0;
	ssize_t r;

	if (lseek(fd, (off_t)off, SEEK_SET) < 0)
		return -1;
	while (got < n) {
		r = rd(fd, buf + got, n - got);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == 0)
				errno = EIO;
			return -1;
		}
		if (r == 0) {
			errno = EAGAIN;
			return -1;
		}
		got += (size_t)r;
	}
	return 0;
}

size_t spool_head_first = 16 * 1024;

int
spool_load(const char *path, spool_read_fn rd, struct spool_file *f, char *err, size_t errlen)
{
	return spool_load_as(path, base_name(path), rd, f, err, errlen);
}

int
spool_load_as(const char *path, const char *name, spool_read_fn rd, struct spool_file *f,
	      char *err, size_t errlen)
{
	unsigned char *tail = NULL;
	struct stat st;
	struct view v;
	size_t size, cap;
	int saved, rc;

	memset(f, 0, sizeof(*f));
	f->fd = -1;
	if (!qid_valid(name)) {
		snprintf(err, errlen, "file name is not a queue id");
		return -1;
	}
	if (rd == NULL)
		rd = read;
	/* never through a link planted in the spool, and no FIFO may hang us */
	if ((f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)) < 0) {
		saved = errno;
		snprintf(err, errlen, "open %s: %s", path, strerror(saved));
		errno = saved;
		if (saved == ELOOP) {
			snprintf(err, errlen, "a symbolic link, not a queue file");
			return -1;
		}
		return -2;
	}
	if (fstat(f->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		saved = errno;
		spool_file_free(f);
		snprintf(err, errlen, "not a regular file");
		errno = saved;
		return -1;
	}
	if ((unsigned long long)st.st_size >= SIZE_MAX / 4) {
		spool_file_free(f);
		snprintf(err, errlen, "read %s: %s", path, strerror(EFBIG));
		errno = EFBIG;
		return -2;
	}
	size = (size_t)st.st_size;
	memset(&v, 0, sizeof(v));
	v.file_len = size;
	cap = size < spool_head_first ? size : spool_head_first;
	if (cap == 0 && size > 0)
		cap = 1;
	for (;;) {
		if (cap > f->head_len) {
			f->head = xrealloc(f->head, cap ? cap : 1);
			if (read_at(f->fd, rd, f->head + f->head_len, cap - f->head_len,
				    f->head_len) < 0)
				goto read_error;
			f->head_len = cap;
		}
		v.head = f->head;
		v.head_len = f->head_len;
		rc = parse_view(&v, &f->m, err, errlen);
		if (rc == PARSE_OK)
			break;
		if (rc == PARSE_BAD)
			goto bad;
		if (rc == PARSE_MORE_HEAD && f->head_len < size && tail == NULL) {
			cap = f->head_len > size / 2 ? size : 2 * f->head_len;
			continue;
		}
		if (rc == PARSE_NEED_TAIL && tail == NULL) {
			/* the check record, the end marker and a padding record's
			 * header: never more */
			v.tail_off = f->m.content_offset + f->m.content_len;
			spool_msg_free(&f->m);
			v.tail_len = size - v.tail_off;
			if (v.tail_len > SPOOL_CHECK_REC + 2 * SPOOL_REC_HDR)
				v.tail_len = SPOOL_CHECK_REC + 2 * SPOOL_REC_HDR;
			tail = xmalloc(v.tail_len + 1);
			if (read_at(f->fd, rd, tail, v.tail_len, v.tail_off) < 0)
				goto read_error;
			v.tail = tail;
			continue;
		}
		msg_panic("spool_load: %s: the parser asks for bytes it was given", path);
	}
	free(tail);
	memcpy(f->m.id, name, QID_LEN + 1);
	return 0;

read_error:
	saved = errno;
	free(tail);
	spool_file_free(f);
	snprintf(err, errlen, "read %s: %s", path, strerror(saved));
	errno = saved;
	return -2;
bad:
	free(tail);
	spool_file_free(f);
	return -1;
}

int
spool_content_read(int fd, const struct spool_msg *m, size_t off, void *buf, size_t n)
{
	size_t got = 0;
	ssize_t r;

	if (off > m->content_len || n > m->content_len - off)
		msg_panic("spool_content_read: %zu bytes at %zu of %zu", n, off, m->content_len);
	while (got < n) {
		r = pread(fd, (char *)buf + got, n - got, (off_t)(m->content_offset + off + got));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0) {
			errno = EIO;    /* a queue file is never cut short */
			return -1;
		}
		got += (size_t)r;
	}
	return 0;
}

void
spool_file_free(struct spool_file *f)
{
	spool_msg_free(&f->m);
	free(f->head);
	if (f->fd >= 0)
		close(f->fd);
	memset(f, 0, sizeof(*f));
	f->fd = -1;
}

int
spool_check_verify(const struct spool_file *f)
{
	const struct spool_msg *m = &f->m;
	static const unsigned char rcpt = SPOOL_REC_RCPT;
	unsigned char *buf;
	uint32_t crc = 0;
	size_t from = 0, i, off, n;
	int rc = 1;

	if (!m->has_check || f->head_len < m->content_offset)
		return 0;
	/* the head, each recipient's type byte read as pending (marks are
	 * the one change made to a committed file); they come in file order */
	for (i = 0; i < m->nrcpt; i++) {
		crc = crc32c(crc, f->head + from, m->rcpts[i].type_offset - from);
		crc = crc32c(crc, &rcpt, 1);
		from = m->rcpts[i].type_offset + 1;
	}
	crc = crc32c(crc, f->head + from, m->content_offset - from);
	if (crc != m->check_head)
		return 0;
	buf = xmalloc(64 * 1024);
	crc = 0;
	for (off = 0; off < m->content_len; off += n) {
		n = m->content_len - off < 64 * 1024 ? m->content_len - off : 64 * 1024;
		if (spool_content_read(f->fd, m, off, buf, n) < 0) {
			rc = -1;
			break;
		}
		crc = crc32c(crc, buf, n);
	}
	free(buf);
	if (rc == 1 && crc != m->check_content)
		rc = 0;
	return rc;
}

int
spool_committed_in_tmp(const char *path, struct spool_file *f)
{
	char err[256];
	int rc = spool_load(path, NULL, f, err, sizeof(err));

	if (rc == -2)
		return -2;
	if (rc < 0)
		return 0;
	if (f->m.qid[0] != '\0' && strcmp(f->m.qid, f->m.id) != 0 &&
	    (rc = spool_check_verify(f)) == 1)
		return 1;
	spool_file_free(f);
	return rc < 0 ? -2 : 0;
}

/* ---- a finished message's name ---- */

int
spool_mark_freed(int dir_fd, const char *id, int *marked)
{
	static const char freed = SPOOL_FREED;
	struct stat sb;
	int fd = openat(dir_fd, id, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK), err = 0;
	ssize_t w;

	/* a slot (another link in slots/): marked before the name goes, so
	 * that a start-up never takes it for a message whose link was lost.
	 * A file that could not be looked at (out of descriptors, say) keeps
	 * its name: unmarked, its slot would come back as a message. A
	 * symbolic link (ELOOP) or a FIFO (ENXIO) is no slot: its name goes. */
	*marked = -1;
	if (fd < 0)
		return errno == ELOOP || errno == ENXIO ? 0 : -1;
	if (fstat(fd, &sb) < 0)
		err = errno;
	else if (S_ISREG(sb.st_mode) && sb.st_nlink > 1) {
		w = pwrite(fd, &freed, 1, 0);
		if (w != 1)
			err = w < 0 ? errno : EIO;
		else {
			*marked = fd;
			return 0;
		}
	}
	close(fd);
	errno = err;
	return err != 0 ? -1 : 0;
}

int
spool_remove(int dir_fd, const char *id, bool durable)
{
	int fd, err = 0;

	if (spool_mark_freed(dir_fd, id, &fd) < 0)
		return -1;
	if (fd >= 0) {
		if (durable && fdatasync(fd) < 0)
			err = errno;
		close(fd);
	}
	if (err != 0) {
		errno = err;
		return -1;
	}
	return unlinkat(dir_fd, id, 0);
}

bool
spool_is_freed(int fd)
{
	unsigned char c;

	return pread(fd, &c, 1, 0) == 1 && c == SPOOL_FREED;
}

int
spool_take(const char *spool_dir, const char *path, spool_read_fn rd, struct spool_file *f)
{
	char err[512];
	int rc = spool_load(path, rd, f, err, sizeof(err)), saved = errno, fd;
	bool freed = false;

	if (rc == -1 && (fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)) >= 0) {
		freed = spool_is_freed(fd);
		close(fd);
	}
	if (freed && unlink(path) == 0) {
		/* its removal was under way when the queue manager stopped */
		msg_info("%s: finished before a restart: removed", path);
		saved = ENOENT;
		rc = -2;
	} else if (rc == -1) {
		spool_quarantine(spool_dir, path, err);
	}
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

uint64_t
spool_newest_qid(const char *spool_dir)
{
	/* where a name is a queue id; corrupt/ adds ".N" to a name taken */
	static const char *const named[] = {
		"incoming", "active", "deferred", "hold", "defer", "corrupt",
	};
	char path[4096], id[QID_LEN + 1];
	uint64_t newest = 0, t;
	struct dirent *de;
	size_t i;
	DIR *d;

	for (i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", spool_dir, named[i]);
		if ((d = opendir(path)) == NULL)
			continue;
		while ((de = readdir(d)) != NULL) {
			if (strnlen(de->d_name, QID_LEN) < QID_LEN)
				continue;
			memcpy(id, de->d_name, QID_LEN);
			id[QID_LEN] = '\0';
			if (qid_valid(id) && (de->d_name[QID_LEN] == '\0' ||
					      de->d_name[QID_LEN] == '.') &&
			    (t = qid_usec(id)) > newest)
				newest = t;
		}
		closedir(d);
	}
	return newest;
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
