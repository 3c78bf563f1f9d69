/*
 * logwriter.c - the log writer process of `log = FILE`.
 *
 * Every sorterd process sends its log lines, one record each, into a
 * SOCK_SEQPACKET socket pair without waiting (lib/log.c); this process
 * takes them out and appends them to the file the master opened for it.
 * A file system that stalls stalls this process only: the socket fills and
 * the senders drop and count lines, mail goes on. On SIGHUP the master
 * opens the file again (logrotate moved it) and starts a new writer; this
 * one then empties the socket of what it can take without waiting, and
 * exits. It runs as the unprivileged user and never opens a file itself.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

#define LOGW_BATCH (64 * 1024)          /* bytes gathered before one write */
#define LOGW_RECORD_MAX 4096            /* log.c's lines are shorter */
#define LOGW_ERROR_EVERY_SECONDS 60

static volatile sig_atomic_t stop_requested;

static void
on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

/* Writes buf out; a failing file is said on stderr at most once a minute
 * (our own log would come back here) and its lines are dropped. */
static void
flush_batch(int file_fd, struct dstr *buf, time_t *last_error)
{
	time_t now;

	if (buf->len == 0)
		return;
	if (write_all(file_fd, buf->s, buf->len) < 0) {
		now = time(NULL);
		if (now - *last_error >= LOGW_ERROR_EVERY_SECONDS) {
			fprintf(stderr, "sorterd/log: cannot write the log file: %s\n", strerror(errno));
			*last_error = now;
		}
	}
	dstr_reset(buf);
}

/* Takes every record the socket holds now; returns false at EOF. */
static bool
drain(int sock, int file_fd, struct dstr *buf, time_t *last_error)
{
	char rec[LOGW_RECORD_MAX];
	ssize_t n;

	for (;;) {
		n = recv(sock, rec, sizeof(rec), MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		if (n == 0)
			return false;
		dstr_append(buf, rec, (size_t)n);
		if (buf->len >= LOGW_BATCH)
			flush_batch(file_fd, buf, last_error);
	}
	flush_batch(file_fd, buf, last_error);
	return true;
}

int
logwriter_main(int sock, int file_fd, int master_fd)
{
	struct pollfd pfd[2];
	struct sigaction sa;
	struct dstr buf;
	time_t last_error = 0;
	char c;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop;        /* no SA_RESTART: poll returns */
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	dstr_init(&buf, 0);
	pfd[0].fd = sock;
	pfd[0].events = POLLIN;
	pfd[1].fd = master_fd;
	pfd[1].events = POLLIN;
	while (!stop_requested) {
		pfd[0].revents = pfd[1].revents = 0;
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[0].revents && !drain(sock, file_fd, &buf, &last_error))
			break;
		/* nothing is ever written to the master's pipe: EOF = it is gone */
		if (pfd[1].revents) {
			ssize_t n = read(master_fd, &c, 1);

			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				break;
		}
	}
	/* the last words of every process, as far as they are there now */
	(void)drain(sock, file_fd, &buf, &last_error);
	dstr_free(&buf);
	close(file_fd);
	return 0;
}
