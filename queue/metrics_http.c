/*
 * metrics_http.c - the metrics process: serves GET /metrics (Prometheus
 * text format) on the socket the master bound for metrics_listen, with
 * libevent's evhttp.
 *
 * It runs as the unprivileged user, in a process of its own, so that what
 * an HTTP client sends is parsed where nothing else lives. On each scrape
 * it sums the processes' slabs of the shared metrics region and counts the
 * spool's folders (names and sizes only: it never opens a queue file). It
 * must never write to the spool or to the region's counters of another
 * process. Anything but GET /metrics gets 404 (another path) or 405
 * (another method).
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "lib/lib.h"
#include "lib/metrics.h"
#include "queue/queue.h"

#define HTTP_TIMEOUT_SECONDS 10
#define HTTP_HEADERS_MAX 8192
#define HTTP_BODY_MAX 4096

struct metrics_http {
	const struct config *cf;
	const struct metrics *m;
	struct event_base *base;
	struct evhttp *http;
	struct event *term_ev, *master_ev;
};

/* The spool's folders, the states of sorter_queue_messages */
static const char *const queue_dirs[5] = { "incoming", "active", "deferred", "hold", "corrupt" };

void
metrics_queue_scan(const char *spool_dir, struct metrics_queue *q)
{
	uint64_t now = now_usec(), oldest = 0, t;
	struct dirent *de;
	struct stat sb;
	char path[4096];
	size_t i;
	DIR *d;

	memset(q, 0, sizeof(*q));
	q->valid = true;
	for (i = 0; i < 5; i++) {
		snprintf(path, sizeof(path), "%s/%s", spool_dir, queue_dirs[i]);
		if ((d = opendir(path)) == NULL) {
			q->valid = false;
			continue;
		}
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			if (i < 4 && !qid_valid(de->d_name))
				continue;
			if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
				continue;       /* gone since readdir */
			q->messages[i]++;
			q->bytes[i] += (uint64_t)sb.st_size;
			if (i < 4 && ((t = qid_usec(de->d_name)) < oldest || oldest == 0))
				oldest = t;
		}
		closedir(d);
	}
	if (oldest != 0 && oldest < now)
		q->oldest_age = (double)(now - oldest) / 1e6;
}

/* A short plain-text answer (evhttp_send_error would drop our headers) */
static void
send_plain(struct evhttp_request *req, int code, const char *reason)
{
	struct evkeyvalq *hdrs = evhttp_request_get_output_headers(req);
	struct evbuffer *body = evbuffer_new();

	evhttp_add_header(hdrs, "Content-Type", "text/plain; charset=utf-8");
	evhttp_add_header(hdrs, "Connection", "close");
	if (body != NULL)
		evbuffer_add_printf(body, "%d %s\n", code, reason);
	evhttp_send_reply(req, code, reason, body);
	if (body != NULL)
		evbuffer_free(body);
}

static void
on_request(struct evhttp_request *req, void *arg)
{
	struct metrics_http *h = arg;
	const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
	const char *path = u ? evhttp_uri_get_path(u) : NULL;
	struct evkeyvalq *hdrs = evhttp_request_get_output_headers(req);
	struct metrics_queue q;
	struct evbuffer *body;
	struct dstr out;

	if (path == NULL || strcmp(path, "/metrics") != 0) {
		send_plain(req, HTTP_NOTFOUND, "Not Found");
		return;
	}
	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		evhttp_add_header(hdrs, "Allow", "GET");
		send_plain(req, 405, "Method Not Allowed");
		return;
	}
	metrics_queue_scan(h->cf->spool_dir, &q);
	dstr_init(&out, 0);
	metrics_render(h->m, &q, &out);
	body = evbuffer_new();
	if (body == NULL || evbuffer_add(body, out.s ? out.s : "", out.len) < 0) {
		send_plain(req, HTTP_INTERNAL, "Internal Server Error");
	} else {
		evhttp_add_header(hdrs, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
		evhttp_add_header(hdrs, "Cache-Control", "no-store");
		evhttp_send_reply(req, HTTP_OK, "OK", body);
	}
	if (body != NULL)
		evbuffer_free(body);
	dstr_free(&out);
}

static void
on_term(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopexit(((struct metrics_http *)arg)->base, NULL);
}

static void
on_master_gone(evutil_socket_t fd, short what, void *arg)
{
	struct metrics_http *h = arg;
	ssize_t n;
	char c;

	n = read(fd, &c, 1);
	if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR)))
		return;         /* nothing is ever written: only EOF (or an error) counts */
	event_base_loopexit(h->base, NULL);
}

int
metrics_http_main(const struct config *cf, const struct metrics *m, int listen_fd, int master_fd)
{
	struct metrics_http h;

	memset(&h, 0, sizeof(h));
	h.cf = cf;
	h.m = m;
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	if ((h.base = event_base_new()) == NULL || (h.http = evhttp_new(h.base)) == NULL)
		msg_fatal("metrics: cannot create the event loop");
	/* every method reaches on_request, which answers 405 itself: evhttp
	 * would say 501 for a method it was not told about */
	evhttp_set_allowed_methods(h.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
				   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
				   EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_timeout(h.http, HTTP_TIMEOUT_SECONDS);
	evhttp_set_max_headers_size(h.http, HTTP_HEADERS_MAX);
	evhttp_set_max_body_size(h.http, HTTP_BODY_MAX);
	evhttp_set_gencb(h.http, on_request, &h);
	if (evhttp_accept_socket(h.http, listen_fd) < 0)
		msg_fatal("metrics: cannot accept on the metrics_listen socket");
	h.term_ev = evsignal_new(h.base, SIGTERM, on_term, &h);
	event_add(h.term_ev, NULL);
	h.master_ev = event_new(h.base, master_fd, EV_READ | EV_PERSIST, on_master_gone, &h);
	event_add(h.master_ev, NULL);

	event_base_dispatch(h.base);

	event_free(h.term_ev);
	event_free(h.master_ev);
	evhttp_free(h.http);
	event_base_free(h.base);
	return 0;
}
