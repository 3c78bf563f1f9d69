/*
 * log.c - diagnostics and Postfix-style log lines.
 *
 * Each line goes out in one write(2) on a non-blocking descriptor: stderr,
 * a datagram socket to syslogd (/dev/log, syslog_socket), or for `log =
 * FILE` a SOCK_SEQPACKET socket that the log writer process empties into
 * the file (a disk that stalls stalls that process only). A sink that
 * cannot take the line right now loses it and the loss is counted: logging
 * must never hold up mail.
 * Lines are capped below PIPE_BUF so that processes sharing stderr never
 * interleave inside a line. A line carries no control character and no
 * byte that is not part of well-formed UTF-8.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "lib/lib.h"

#define LOG_LINE_MAX 2048

static char progname[64] = "sorter";
static enum log_sink sink = LOG_SINK_STDERR;
static int syslog_fd = -1;
static int facility = LOG_MAIL;
static char syslog_path[108] = "/dev/log";
static int file_fd = -1;
static _Atomic uint64_t dropped;
static _Atomic uint64_t dropped_reported;
static _Atomic(_Atomic uint64_t *) drop_counter;

void
log_set_syslog(int fac, const char *path)
{
	facility = fac;
	snprintf(syslog_path, sizeof(syslog_path), "%s", path ? path : "/dev/log");
}

void
log_set_fd(int fd)
{
	file_fd = fd;
}

void
log_count_drops_in(_Atomic uint64_t *counter)
{
	atomic_store(&drop_counter, counter);
}

void
log_set_progname(const char *name)
{
	snprintf(progname, sizeof(progname), "%s", name);
}

void
log_open(const char *name, enum log_sink s)
{
	int fl;

	log_set_progname(name);
	sink = s;
	if (s == LOG_SINK_SYSLOG) {
		struct sockaddr_un sun;

		if (syslog_fd >= 0)
			close(syslog_fd);
		syslog_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", syslog_path);
		if (syslog_fd >= 0 &&
		    connect(syslog_fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
			close(syslog_fd);
			syslog_fd = -1;
		}
		if (syslog_fd < 0)
			sink = LOG_SINK_STDERR;
	}
	if (s == LOG_SINK_FILE && file_fd < 0)
		sink = LOG_SINK_STDERR;
	if (sink == LOG_SINK_STDERR) {
		fl = fcntl(STDERR_FILENO, F_GETFL);
		if (fl >= 0 && !(fl & O_NONBLOCK))
			(void)fcntl(STDERR_FILENO, F_SETFL, fl | O_NONBLOCK);
	}
}

uint64_t
log_dropped(void)
{
	return atomic_load(&dropped);
}

static int
emit(const char *line, size_t len)
{
	ssize_t n;

	if (sink == LOG_SINK_SYSLOG && syslog_fd >= 0)
		n = send(syslog_fd, line, len, MSG_DONTWAIT | MSG_NOSIGNAL);
	else if (sink == LOG_SINK_FILE)
		n = send(file_fd, line, len, MSG_DONTWAIT | MSG_NOSIGNAL);
	else
		n = write(STDERR_FILENO, line, len);
	return n == (ssize_t)len ? 0 : -1;
}

/* What a line in a log file starts with: the local time, to the
 * microsecond, as RFC 3339 says */
static size_t
file_stamp(char *buf, size_t len)
{
	struct timeval tv;
	struct tm tm;
	char date[32], zone[8];

	gettimeofday(&tv, NULL);
	if (localtime_r(&tv.tv_sec, &tm) == NULL ||
	    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm) == 0 ||
	    strftime(zone, sizeof(zone), "%z", &tm) != 5)
		return 0;
	return (size_t)snprintf(buf, len, "%s.%06ld%.3s:%s ", date, (long)tv.tv_usec, zone,
				zone + 3);
}

static void
count_drop(void)
{
	_Atomic uint64_t *c = atomic_load(&drop_counter);

	atomic_fetch_add(&dropped, 1);
	if (c != NULL)
		atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static void
vlog(int prio, const char *prefix, const char *fmt, va_list ap)
{
	char line[LOG_LINE_MAX], stamp[64] = "";
	size_t off = 0, cap = sizeof(line) - 1;
	int n;
	uint64_t d, r;

	if (sink == LOG_SINK_FILE && file_stamp(stamp, sizeof(stamp)) == 0)
		stamp[0] = '\0';
	if (sink == LOG_SINK_SYSLOG)
		n = snprintf(line, cap, "<%d>%s[%ld]: %s", facility | prio, progname,
			     (long)getpid(), prefix);
	else if (sink == LOG_SINK_FILE)
		n = snprintf(line, cap, "%s%s[%ld]: %s", stamp, progname, (long)getpid(), prefix);
	else
		n = snprintf(line, cap, "%s[%ld]: %s", progname, (long)getpid(), prefix);
	if (n > 0)
		off = (size_t)n < cap ? (size_t)n : cap;
	n = vsnprintf(line + off, cap - off, fmt, ap);
	if (n > 0)
		off += (size_t)n < cap - off ? (size_t)n : cap - off - 1;
	/* one line per event: never let a newline inside split it */
	for (size_t i = 0; i < off; i++)
		if (line[i] == '\n' || line[i] == '\r')
			line[i] = ' ';
	/* UTF-8 (SMTPUTF8 addresses) is kept; other control characters, C1
	 * included, and bytes that are not UTF-8 become '?', so that a line is
	 * always text a log reader can take */
	(void)utf8_sanitize(line, off);
	if (sink != LOG_SINK_SYSLOG)
		line[off++] = '\n';
	if (emit(line, off) < 0) {
		count_drop();
		return;
	}
	/* the sink took a line again: say how many were lost */
	d = atomic_load(&dropped);
	r = atomic_load(&dropped_reported);
	if (d != r && atomic_compare_exchange_strong(&dropped_reported, &r, d)) {
		if (sink == LOG_SINK_SYSLOG)
			n = snprintf(line, cap, "<%d>%s[%ld]: warning: %llu log lines dropped: log sink was full",
				     facility | LOG_WARNING, progname, (long)getpid(),
				     (unsigned long long)(d - r));
		else
			n = snprintf(line, cap, "%s%s[%ld]: warning: %llu log lines dropped: log sink was full\n",
				     stamp, progname, (long)getpid(), (unsigned long long)(d - r));
		if (n > 0)
			(void)emit(line, (size_t)n < cap ? (size_t)n : cap);
	}
}

void
msg_info(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_INFO, "", fmt, ap);
	va_end(ap);
}

void
msg_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_WARNING, "warning: ", fmt, ap);
	va_end(ap);
}

void
msg_fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_CRIT, "fatal: ", fmt, ap);
	va_end(ap);
	exit(1);
}

void
msg_panic(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_CRIT, "panic: ", fmt, ap);
	va_end(ap);
	abort();
}

const char *
log_esc(const char *in, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	if (outlen == 0)
		return "";
	for (; in != NULL && *in != '\0' && o + 5 <= outlen; in++) {
		unsigned char c = (unsigned char)*in;

		if (c < 0x20 || c == 0x7f || c == '"' || c == ',' || c == '<' || c == '>' ||
		    c == '\\') {
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		} else
			out[o++] = (char)c;
	}
	out[o] = '\0';
	return out;
}
