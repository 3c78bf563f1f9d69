/*
 * util.c - queue ids, time formatting and small crash-safe file helpers.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "lib/lib.h"

static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
static unsigned qid_slot;
static uint64_t qid_last;

uint64_t
now_usec(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

void
qid_init(unsigned slot, uint64_t after_usec)
{
	qid_slot = slot & 31;
	qid_last = after_usec;
}

/* ---- CRC-32C ----
 * Slicing by 8 bytes in software; the SSE 4.2 instruction where the CPU
 * has it (checked once, at start). Tables are made before main() runs, so
 * threads only ever read them. */
static uint32_t crc32c_table[8][256];
static bool crc32c_hw;

__attribute__((constructor)) static void
crc32c_init(void)
{
	uint32_t c;
	int i, k;

	for (i = 0; i < 256; i++) {
		c = (uint32_t)i;
		for (k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		crc32c_table[0][i] = c;
	}
	for (i = 0; i < 256; i++)
		for (k = 1; k < 8; k++)
			crc32c_table[k][i] = (crc32c_table[k - 1][i] >> 8) ^
					     crc32c_table[0][crc32c_table[k - 1][i] & 0xff];
#if defined(__x86_64__)
	__builtin_cpu_init();
	crc32c_hw = __builtin_cpu_supports("sse4.2");
#endif
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t
crc32c_sse42(uint32_t crc, const unsigned char *p, size_t len)
{
	uint64_t c = crc, v;

	for (; len >= 8; p += 8, len -= 8) {
		memcpy(&v, p, 8);
		c = __builtin_ia32_crc32di(c, v);
	}
	crc = (uint32_t)c;
	for (; len > 0; p++, len--)
		crc = __builtin_ia32_crc32qi(crc, *p);
	return crc;
}
#endif

uint32_t
crc32c(uint32_t crc, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	uint64_t v;

	crc = ~crc;
#if defined(__x86_64__)
	if (crc32c_hw)
		return ~crc32c_sse42(crc, p, len);
#endif
	for (; len > 0 && ((uintptr_t)p & 7) != 0; p++, len--)
		crc = crc32c_table[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	for (; len >= 8; p += 8, len -= 8) {
		memcpy(&v, p, 8);
		v ^= crc;
		crc = crc32c_table[7][v & 0xff] ^ crc32c_table[6][(v >> 8) & 0xff] ^
		      crc32c_table[5][(v >> 16) & 0xff] ^ crc32c_table[4][(v >> 24) & 0xff] ^
		      crc32c_table[3][(v >> 32) & 0xff] ^ crc32c_table[2][(v >> 40) & 0xff] ^
		      crc32c_table[1][(v >> 48) & 0xff] ^ crc32c_table[0][v >> 56];
	}
#else
	(void)v;
#endif
	for (; len > 0; p++, len--)
		crc = crc32c_table[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/* Not thread-safe: each process issues ids from its event loop only. */
void
qid_next(char out[QID_LEN + 1])
{
	uint64_t t = now_usec();
	int i;

	if (t <= qid_last)
		t = qid_last + 1;
	qid_last = t;
	for (i = QID_LEN - 2; i >= 0; i--) {
		out[i] = b32[t & 31];
		t >>= 5;
	}
	out[QID_LEN - 1] = b32[qid_slot];
	out[QID_LEN] = '\0';
}

bool
qid_valid(const char *s)
{
	size_t i;

	for (i = 0; i < QID_LEN; i++)
		if (s[i] == '\0' || strchr(b32, s[i]) == NULL)
			return false;
	return s[QID_LEN] == '\0';
}

uint64_t
qid_usec(const char *id)
{
	uint64_t t = 0;
	int i;

	for (i = 0; i < QID_LEN - 1; i++)
		t = (t << 5) | (uint64_t)(strchr(b32, id[i]) - b32);
	return t;
}

void
rfc5322_date(time_t t, char *buf, size_t buflen)
{
	struct tm tm;

	localtime_r(&t, &tm);
	if (strftime(buf, buflen, "%a, %d %b %Y %H:%M:%S %z", &tm) == 0 && buflen)
		buf[0] = '\0';
}

static int
fsync_open(const char *path, int flags)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | flags);
	int rc, saved;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	saved = errno;
	close(fd);
	errno = saved;
	return rc;
}

int
fsync_dir(const char *path)
{
	return fsync_open(path, O_DIRECTORY);
}

int
fsync_path(const char *path)
{
	return fsync_open(path, 0);
}

DIR *
dir_read(int dir_fd)
{
	int fd = dir_fd >= 0 ? dup(dir_fd) : -1, saved;
	DIR *d;

	if (fd < 0)
		return NULL;
	if ((d = fdopendir(fd)) == NULL) {
		saved = errno;
		close(fd);
		errno = saved;
		return NULL;
	}
	rewinddir(d);           /* the dup shares dir_fd's position */
	return d;
}

int
write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	ssize_t w;

	while (n > 0) {
		w = write(fd, c, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

int
mkdir_p(const char *path, mode_t mode)
{
	char buf[4096];
	size_t i, len = strlen(path);

	if (len == 0 || len >= sizeof(buf)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(buf, path, len + 1);
	for (i = 1; i <= len; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		buf[i] = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -1;
		if (i < len)
			buf[i] = '/';
	}
	return 0;
}

struct counters *
counters_create(void)
{
	struct counters *c = mmap(NULL, sizeof(*c), PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (c == MAP_FAILED)
		msg_fatal("mmap counters: %s", strerror(errno));
	memset(c, 0, sizeof(*c));
	return c;
}

void
json_put_str(FILE *out, const char *s)
{
	const unsigned char *p;

	if (s == NULL) {
		fputs("null", out);
		return;
	}
	fputc('"', out);
	for (p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(out, "\\%c", *p);
		else if (*p < 0x20 || *p >= 0x7f)
			fprintf(out, "\\u%04x", *p);
		else
			fputc(*p, out);
	}
	fputc('"', out);
}

int
text_line_next(const char **p, const char *end, unsigned long *lineno, size_t max,
	       const char **line, size_t *len, const char **why)
{
	const char *l, *eol;
	size_t n, i;

	while (*p < end) {
		l = *p;
		eol = memchr(l, '\n', (size_t)(end - l));
		(*lineno)++;
		if (eol == NULL) {
			*why = "last line has no newline";
			return -1;
		}
		*p = eol + 1;
		n = (size_t)(eol - l);
		if (n > max) {
			*why = "line too long";
			return -1;
		}
		for (i = 0; i < n; i++)
			if ((unsigned char)l[i] < 0x20 || (unsigned char)l[i] >= 0x7f) {
				*why = "control or 8-bit byte";
				return -1;
			}
		if (n == 0 || l[0] == '#')
			continue;
		*line = l;
		*len = n;
		return 1;
	}
	return 0;
}
