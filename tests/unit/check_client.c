/*
 * check_client.c - unit tests for the LMTP client (router/client.c) and the
 * resolver under it (router/dns.c), against fake servers run in threads
 * of this process: an LMTP server on 127.0.0.1 (or a UNIX socket) that
 * follows a small script and records what it saw, and a DNS server on
 * 127.0.0.1 that answers A queries from a table. Nothing leaves the
 * loopback interface.
 *
 * A real Dovecot node can be added: SORTER_TEST_LMTP_NODE=127.0.0.1:PORT
 * SORTER_TEST_LMTP_RCPT=user1@example.test delivers one message there.
 */
#include "config.h"

#include <arpa/inet.h>
#include <check.h>
#include <sys/mman.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/lib.h"
#include "router/router.h"

/* ---- the fake LMTP server ---- */

struct script {
	const char *greeting;   /* NULL: "220 fake LMTP" */
	bool pipelining, eightbitmime;
	const char *size;       /* SIZE argument offered; NULL: none */
	const char *mail_reply; /* NULL: "250 2.1.0 Ok" */
	const char *data_reply; /* NULL: 354, or 503 with no recipient */
	int greet_delay_ms;
	int dot_delay_ms;       /* before the replies after the content */
	bool close_after_mail;  /* drops the connection instead of answering MAIL */
	bool close_after_data;  /* drops it after the replies to a message */
};

#define THREADS_MAX 64

struct fake {
	int lfd;
	unsigned short port;
	char path[108];         /* UNIX socket, or "" */
	struct script sc;
	pthread_t acceptor, conns[THREADS_MAX];
	int nthreads;
	volatile bool stop;
	pthread_mutex_t mu;
	int nconn, active, max_active, nmail, nmsg;
	bool violation;         /* a command arrived early without PIPELINING */
	bool grouped;           /* MAIL..DATA arrived in one go */
	struct dstr log;        /* every command line, LF-terminated */
	struct dstr data;       /* raw content of the last message, ".\r\n" included */
};

struct sess {
	struct fake *f;
	int fd;
	char buf[4 << 20];      /* a whole message fits */
	size_t len;
};

static void
say(struct sess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
say(struct sess *s, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
	va_end(ap);
	memcpy(line + n, "\r\n", 2);
	(void)write_all(s->fd, line, (size_t)n + 2);
}

/* Reads what arrives within ms milliseconds into the buffer; -1 on EOF. */
static int
fill(struct sess *s, int ms)
{
	struct pollfd p = { s->fd, POLLIN, 0 };
	ssize_t n;

	while (poll(&p, 1, ms) == 1) {
		if (s->len == sizeof(s->buf))
			return 0;
		n = read(s->fd, s->buf + s->len, sizeof(s->buf) - s->len);
		if (n <= 0)
			return -1;
		s->len += (size_t)n;
		ms = 0;
	}
	return 0;
}

/* One CR LF line into line (without CR LF); -1 when the client is gone. */
static int
get_line(struct sess *s, char *line, size_t max)
{
	char *e;
	size_t n;

	while ((e = memmem(s->buf, s->len, "\r\n", 2)) == NULL) {
		if (s->f->stop || fill(s, 100) < 0)
			return -1;
	}
	n = (size_t)(e - s->buf);
	snprintf(line, max, "%.*s", (int)n, s->buf);
	memmove(s->buf, e + 2, s->len - n - 2);
	s->len -= n + 2;
	return 0;
}

static const char *
rcpt_reply(const char *addr)
{
	if (strncmp(addr, "<rej", 4) == 0)
		return "550 5.1.1 user unknown";
	return "250 2.1.5 Ok";
}

static void
dot_reply(struct sess *s, const char *addr)
{
	if (strncmp(addr, "<full", 5) == 0)
		say(s, "452 4.2.2 %s mailbox full", addr);
	else if (strncmp(addr, "<bad", 4) == 0)
		say(s, "550-5.6.0 %s content\r\n550 5.6.0 rejected", addr);
	else
		say(s, "250 2.0.0 %s delivered", addr);
}

static void
session(struct sess *s)
{
	struct fake *f = s->f;
	const struct script *sc = &f->sc;
	char line[2048], acc[32][300], *e;
	int nacc = 0, i;
	bool in_txn = false;

	if (sc->greet_delay_ms)
		usleep((useconds_t)sc->greet_delay_ms * 1000);
	say(s, "%s", sc->greeting ? sc->greeting : "220 fake LMTP");
	while (get_line(s, line, sizeof(line)) == 0) {
		/* give a client that sends ahead the time to do it */
		if (fill(s, 30) < 0 && s->len == 0)
			return;
		pthread_mutex_lock(&f->mu);
		dstr_printf(&f->log, "%s\n", line);
		if (!sc->pipelining && s->len > 0)
			f->violation = true;
		if (sc->pipelining && strncmp(line, "MAIL", 4) == 0 &&
		    memmem(s->buf, s->len, "DATA\r\n", 6) != NULL)
			f->grouped = true;
		pthread_mutex_unlock(&f->mu);
		if (strncmp(line, "LHLO ", 5) == 0) {
			say(s, "250-fake.example%s%s%s%s\r\n250 ENHANCEDSTATUSCODES",
			    sc->pipelining ? "\r\n250-PIPELINING" : "",
			    sc->eightbitmime ? "\r\n250-8BITMIME" : "",
			    sc->size ? "\r\n250-SIZE " : "", sc->size ? sc->size : "");
		} else if (strncmp(line, "MAIL FROM:", 10) == 0) {
			if (sc->close_after_mail)
				return;
			pthread_mutex_lock(&f->mu);
			f->nmail++;
			pthread_mutex_unlock(&f->mu);
			say(s, "%s", sc->mail_reply ? sc->mail_reply : "250 2.1.0 Ok");
			in_txn = sc->mail_reply == NULL;
			nacc = 0;
		} else if (strncmp(line, "RCPT TO:", 8) == 0) {
			if (!in_txn) {
				say(s, "503 5.5.1 need MAIL");
				continue;
			}
			say(s, "%s", rcpt_reply(line + 8));
			if (rcpt_reply(line + 8)[0] == '2' && nacc < 32)
				snprintf(acc[nacc++], sizeof(acc[0]), "%.*s",
					 (int)sizeof(acc[0]) - 1, line + 8);
		} else if (strcmp(line, "DATA") == 0) {
			if (sc->data_reply && nacc > 0) {
				say(s, "%s", sc->data_reply);
				continue;
			}
			if (nacc == 0) {
				say(s, "503 5.5.1 no valid recipients");
				continue;
			}
			say(s, "354 go ahead");
			while ((e = memmem(s->buf, s->len, "\r\n.\r\n", 5)) == NULL &&
			       !(s->len >= 3 && memcmp(s->buf, ".\r\n", 3) == 0))
				if (f->stop || fill(s, 100) < 0)
					return;
			i = e ? (int)(e - s->buf) + 5 : 3;
			pthread_mutex_lock(&f->mu);
			dstr_reset(&f->data);
			dstr_append(&f->data, s->buf, (size_t)i);
			f->nmsg++;
			pthread_mutex_unlock(&f->mu);
			memmove(s->buf, s->buf + i, s->len - (size_t)i);
			s->len -= (size_t)i;
			if (sc->dot_delay_ms)
				usleep((useconds_t)sc->dot_delay_ms * 1000);
			for (i = 0; i < nacc; i++)
				dot_reply(s, acc[i]);
			if (sc->close_after_data)
				return;
			in_txn = false;
			nacc = 0;
		} else if (strcmp(line, "RSET") == 0) {
			in_txn = false;
			nacc = 0;
			say(s, "250 2.0.0 Ok");
		} else if (strcmp(line, "QUIT") == 0) {
			say(s, "221 2.0.0 Bye");
			return;
		} else {
			say(s, "500 5.5.2 what?");
		}
	}
}

static void *
conn_main(void *arg)
{
	struct sess *s = arg;
	struct fake *f = s->f;

	session(s);
	close(s->fd);
	pthread_mutex_lock(&f->mu);
	f->active--;
	pthread_mutex_unlock(&f->mu);
	free(s);
	return NULL;
}

static void *
accept_main(void *arg)
{
	struct fake *f = arg;
	struct pollfd p = { f->lfd, POLLIN, 0 };
	struct sess *s;
	int fd;

	while (!f->stop) {
		if (poll(&p, 1, 50) != 1 || (fd = accept(f->lfd, NULL, NULL)) < 0)
			continue;
		s = calloc(1, sizeof(*s));
		s->f = f;
		s->fd = fd;
		pthread_mutex_lock(&f->mu);
		f->nconn++;
		if (++f->active > f->max_active)
			f->max_active = f->active;
		pthread_mutex_unlock(&f->mu);
		if (f->nthreads >= THREADS_MAX)
			abort();
		pthread_create(&f->conns[f->nthreads++], NULL, conn_main, s);
	}
	return NULL;
}

static void
fake_start_on(struct fake *f, const struct script *sc, const char *ip, unsigned short port,
	      const char *path)
{
	struct sockaddr_in sin;
	struct sockaddr_un sun;
	socklen_t len = sizeof(sin);

	memset(f, 0, sizeof(*f));
	if (sc)
		f->sc = *sc;
	pthread_mutex_init(&f->mu, NULL);
	dstr_init(&f->log, 0);
	dstr_init(&f->data, 0);
	if (path) {
		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		snprintf(f->path, sizeof(f->path), "%s", path);
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
		unlink(path);
		f->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
		ck_assert_int_eq(bind(f->lfd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	} else {
		memset(&sin, 0, sizeof(sin));
		sin.sin_family = AF_INET;
		sin.sin_port = htons(port);
		inet_pton(AF_INET, ip, &sin.sin_addr);
		f->lfd = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(f->lfd, SOL_SOCKET, SO_REUSEADDR, &(int){ 1 }, sizeof(int));
		ck_assert_int_eq(bind(f->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
		getsockname(f->lfd, (struct sockaddr *)&sin, &len);
		f->port = ntohs(sin.sin_port);
	}
	ck_assert_int_eq(listen(f->lfd, 16), 0);
	pthread_create(&f->acceptor, NULL, accept_main, f);
}

static void
fake_start(struct fake *f, const struct script *sc)
{
	fake_start_on(f, sc, "127.0.0.1", 0, NULL);
}

static void
fake_stop(struct fake *f)
{
	int i;

	f->stop = true;
	pthread_join(f->acceptor, NULL);
	for (i = 0; i < f->nthreads; i++)
		pthread_join(f->conns[i], NULL);
	close(f->lfd);
	if (f->path[0])
		unlink(f->path);
	dstr_free(&f->log);
	dstr_free(&f->data);
	pthread_mutex_destroy(&f->mu);
}

/* A port on 127.0.0.1 where nothing listens. */
static unsigned short
dead_port(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	getsockname(fd, (struct sockaddr *)&sin, &len);
	close(fd);
	return ntohs(sin.sin_port);
}

/* ---- the fake DNS server: A records from a table, no AAAA ---- */

struct fakedns {
	int fd;
	unsigned short port;
	pthread_t thr;
	volatile bool stop;
	const char *name;       /* the one name it knows */
	const char *addrs[4];   /* its A records */
	int queries;
};

static void *
dns_main(void *arg)
{
	struct fakedns *d = arg;
	struct pollfd p = { d->fd, POLLIN, 0 };
	unsigned char q[512], r[512], name[256];
	struct sockaddr_storage from;
	socklen_t flen;
	ssize_t n;
	size_t off, o, nl = 0, i;
	unsigned qtype, an = 0;

	while (!d->stop) {
		if (poll(&p, 1, 50) != 1)
			continue;
		flen = sizeof(from);
		n = recvfrom(d->fd, q, sizeof(q), 0, (struct sockaddr *)&from, &flen);
		if (n < 17)
			continue;
		d->queries++;
		/* the question name, dotted */
		for (off = 12, nl = 0; off < (size_t)n && q[off] != 0; off += q[off] + 1) {
			if (nl)
				name[nl++] = '.';
			memcpy(name + nl, q + off + 1, q[off]);
			nl += q[off];
		}
		name[nl] = '\0';
		off++;
		qtype = (unsigned)(q[off] << 8 | q[off + 1]);
		off += 4;
		memcpy(r, q, off);
		r[2] = 0x81;    /* response, recursion desired */
		r[3] = 0x80;    /* recursion available, NOERROR */
		an = 0;
		o = off;
		if (strcasecmp((char *)name, d->name) != 0) {
			r[3] |= 3;      /* NXDOMAIN */
		} else if (qtype == 1) {
			for (i = 0; i < 4 && d->addrs[i]; i++, an++) {
				memcpy(r + o, "\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04", 12);
				inet_pton(AF_INET, d->addrs[i], r + o + 12);
				o += 16;
			}
		}
		r[6] = 0;
		r[7] = (unsigned char)an;
		memset(r + 8, 0, 4);
		sendto(d->fd, r, o, 0, (struct sockaddr *)&from, flen);
	}
	return NULL;
}

static void
fakedns_start(struct fakedns *d)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);

	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	d->fd = socket(AF_INET, SOCK_DGRAM, 0);
	ck_assert_int_eq(bind(d->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	getsockname(d->fd, (struct sockaddr *)&sin, &len);
	d->port = ntohs(sin.sin_port);
	pthread_create(&d->thr, NULL, dns_main, d);
}

static void
fakedns_stop(struct fakedns *d)
{
	d->stop = true;
	pthread_join(d->thr, NULL);
	close(d->fd);
}

/* ---- the client side ---- */

struct run {
	struct event_base *base;
	int ndone, want;
	bool in_deliver;        /* client_deliver() is on the stack */
	bool early;             /* a done callback ran from inside client_deliver() */
};

struct msg {
	struct deliv_txn txn;
	struct deliv_result res[8];
	const char *rcpts[8];
	struct run *run;
	int done;
};

static void
on_txn_done(struct deliv_txn *t, void *arg)
{
	struct msg *m = arg;

	m->done++;
	if (m->run->in_deliver)
		m->run->early = true;
	if (++m->run->ndone >= m->run->want)
		event_base_loopbreak(m->run->base);
}

/* An anonymous file holding 7 bytes of records, then content. */
static int
content_file(const char *content)
{
	int fd = memfd_create("content", MFD_CLOEXEC);
	size_t n = strlen(content);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, "RECORDS", 7), 7);
	ck_assert_int_eq(write(fd, content, n), (ssize_t)n);
	return fd;
}

static void
msg_init(struct msg *m, struct run *r, const char *content, const char *r1, const char *r2,
	 const char *r3)
{
	memset(m, 0, sizeof(*m));
	m->run = r;
	m->rcpts[0] = r1;
	m->rcpts[1] = r2;
	m->rcpts[2] = r3;
	m->txn.nrcpt = r3 ? 3 : r2 ? 2 : 1;
	m->txn.sender = "sender@remote.test";
	m->txn.rcpts = m->rcpts;
	/* the content at an offset of a file, as in a queue file */
	m->txn.content_fd = content_file(content);
	m->txn.content_offset = 7;
	m->txn.content_len = strlen(content);
	m->txn.results = m->res;
	m->txn.done = on_txn_done;
	m->txn.arg = m;
}

static struct endpoint
ep_inet(unsigned short port)
{
	struct endpoint ep;

	memset(&ep, 0, sizeof(ep));
	ep.kind = EP_INET;
	ep.literal = true;
	snprintf(ep.host, sizeof(ep.host), "127.0.0.1");
	ep.port = port;
	return ep;
}

static void
deliver(struct run *r, struct client_pool *p, const char *dest, const struct endpoint *eps,
	size_t neps, struct msg *m)
{
	r->in_deliver = true;
	client_deliver(p, dest, eps, neps, &m->txn);
	r->in_deliver = false;
}

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopbreak(arg);
}

/* Runs the loop for at most secs seconds, or until something breaks it. */
static void
run_for(struct event_base *base, int secs)
{
	struct timeval tv = { secs, 0 };
	struct event *t = evtimer_new(base, on_deadline, base);

	evtimer_add(t, &tv);
	event_base_dispatch(base);
	event_free(t);
}

/* Runs the loop until `want` transactions are done (10 s at most). */
static void
run_until(struct run *r, int want)
{
	r->want = want;
	if (r->ndone >= want)
		return;
	run_for(r->base, 10);
	ck_assert_msg(r->ndone >= want, "only %d of %d transactions done", r->ndone, want);
	ck_assert(!r->early);
}

static struct client_settings
settings(void)
{
	struct client_settings s;

	memset(&s, 0, sizeof(s));
	s.helo_name = "sorter.test";
	s.connect_timeout = 5;
	s.cmd_timeout = 5;
	s.data_timeout = 5;
	return s;
}

static void
check_result(const struct deliv_result *res, int code, const char *status,
	     const char *text_part, const char *relay)
{
	ck_assert_msg(res->code == code, "code %d, want %d (%s %s)", res->code, code,
		      res->status, res->text);
	ck_assert_str_eq(res->status, status);
	if (text_part)
		ck_assert_msg(strstr(res->text, text_part) != NULL, "text \"%s\" lacks \"%s\"",
			      res->text, text_part);
	if (relay)
		ck_assert_str_eq(res->relay, relay);
}

static const char *
relay_of(const struct fake *f)
{
	static char buf[64];

	snprintf(buf, sizeof(buf), "127.0.0.1:%u", f->port);
	return buf;
}

static const char body[] = "Subject: test\r\n\r\nhello\r\n";

/* ---- tests ---- */

START_TEST(test_rcpt_rejected)
{
	struct script sc = { .pipelining = _i == 1 };
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p = client_pool_new(r.base, &set);
	struct fake f;
	struct endpoint ep;
	struct msg m;

	fake_start(&f, &sc);
	ep = ep_inet(f.port);
	msg_init(&m, &r, body, "alice@example.test", "reject@example.test", NULL);
	deliver(&r, p, "node-a", &ep, 1, &m);
	ck_assert_int_eq(m.done, 0);
	run_until(&r, 1);
	ck_assert_int_eq(m.done, 1);
	check_result(&m.res[0], 250, "2.0.0", "<alice@example.test> delivered", relay_of(&f));
	check_result(&m.res[1], 550, "5.1.1", "user unknown", relay_of(&f));
	ck_assert_int_eq(f.nmsg, 1);
	ck_assert_str_eq(f.data.s, "Subject: test\r\n\r\nhello\r\n.\r\n");
	ck_assert_ptr_nonnull(strstr(f.log.s, "LHLO sorter.test\n"
				     "MAIL FROM:<sender@remote.test>\n"
				     "RCPT TO:<alice@example.test>\n"
				     "RCPT TO:<reject@example.test>\nDATA\n"));
	/* PIPELINING used exactly when offered */
	ck_assert(!f.violation);
	ck_assert(f.grouped == sc.pipelining);
	client_pool_free(p);
	fake_stop(&f);
	event_base_free(r.base);
}
END_TEST

/* replies after the content, one per accepted recipient, in order */
START_TEST(test_data_replies)
{
	struct script sc = { .pipelining = _i == 1 };
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p = client_pool_new(r.base, &set);
	struct fake f;
	struct endpoint ep;
	struct msg m;

	fake_start(&f, &sc);
	ep = ep_inet(f.port);
	msg_init(&m, &r, body, "full@example.test", "ok@example.test", "bad@example.test");
	deliver(&r, p, "node-a", &ep, 1, &m);
	run_until(&r, 1);
	check_result(&m.res[0], 452, "4.2.2", "mailbox full", relay_of(&f));
	check_result(&m.res[1], 250, "2.0.0", "<ok@example.test> delivered", relay_of(&f));
	check_result(&m.res[2], 550, "5.6.0", "<bad@example.test> content rejected", NULL);
	ck_assert(!f.violation);
	client_pool_free(p);
	fake_stop(&f);
	event_base_free(r.base);
}
END_TEST

/* a rejected MAIL or DATA answers for the recipients it concerns */
START_TEST(test_mail_data_rejected)
{
	struct script sc = { .pipelining = _i % 2 == 1 };
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p;
	struct fake f;
	struct endpoint ep;
	struct msg m;

	if (_i < 2)
		sc.mail_reply = "451 4.3.0 try later";
	else
		sc.data_reply = "554 5.3.0 no thanks";
	fake_start(&f, &sc);
	p = client_pool_new(r.base, &set);
	ep = ep_inet(f.port);
	msg_init(&m, &r, body, "a@example.test", "reject@example.test", NULL);
	deliver(&r, p, "node-a", &ep, 1, &m);
	run_until(&r, 1);
	if (_i < 2) {
		check_result(&m.res[0], 451, "4.3.0", "try later", relay_of(&f));
		check_result(&m.res[1], 451, "4.3.0", "try later", relay_of(&f));
	} else {
		check_result(&m.res[0], 554, "5.3.0", "no thanks", relay_of(&f));
		check_result(&m.res[1], 550, "5.1.1", "user unknown", relay_of(&f));
	}
	ck_assert_int_eq(f.nmsg, 0);
	ck_assert(!f.violation);
	client_pool_free(p);
	fake_stop(&f);
	event_base_free(r.base);
}
END_TEST

struct stuffcase {
	const char *in, *wire;
};

static const struct stuffcase stuffcases[] = {
	{ ".x\r\n", "..x\r\n.\r\n" },
	{ "a\r\n.\r\n..\r\nb\r\n", "a\r\n..\r\n...\r\nb\r\n.\r\n" },
	{ "no final line end", "no final line end\r\n.\r\n" },
	{ "bare\nlf\rcr\r\n", "bare\r\nlf\r\ncr\r\n.\r\n" },
	{ "a\n.\nb\r\n", "a\r\n..\r\nb\r\n.\r\n" },
};

START_TEST(test_dotstuff_wire)
{
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p = client_pool_new(r.base, &set);
	struct fake f;
	struct endpoint ep;
	struct msg m;

	fake_start(&f, NULL);
	ep = ep_inet(f.port);
	msg_init(&m, &r, stuffcases[_i].in, "a@example.test", NULL, NULL);
	deliver(&r, p, "node-a", &ep, 1, &m);
	run_until(&r, 1);
	check_result(&m.res[0], 250, "2.0.0", NULL, NULL);
	ck_assert_int_eq(f.nmsg, 1);
	ck_assert_str_eq(f.data.s, stuffcases[_i].wire);
	client_pool_free(p);
	fake_stop(&f);
	event_base_free(r.base);
}
END_TEST

/* a message much larger than the output buffer arrives whole */
START_TEST(test_big_message)
{
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p = client_pool_new(r.base, &set);
	struct fake f;
	struct endpoint ep;
	struct msg m;
	struct dstr in, wire;
	int i;

	dstr_init(&in, 0);
	dstr_init(&wire, 0);
	for (i = 0; i < 20000; i++) {
		dstr_printf(&in, "%sline %d of a big message\r\n", i % 3 ? "" : ".", i);
		dstr_printf(&wire, "%sline %d of a big message\r\n", i % 3 ? "" : "..", i);
	}
	dstr_append(&wire, ".\r\n", 3);
	fake_start(&f, NULL);
	ep = ep_inet(f.port);
	msg_init(&m, &r, in.s, "a@example.test", NULL, NULL);
	deliver(&r, p, "node-a", &ep, 1, &m);
	run_until(&r, 1);
	check_result(&m.res[0], 250, "2.0.0", NULL, NULL);
	ck_assert_uint_eq(f.data.len, wire.len);
	ck_assert(memcmp(f.data.s, wire.s, wire.len) == 0);
	client_pool_free(p);
	fake_stop(&f);
	dstr_free(&in);
	dstr_free(&wire);
	event_base_free(r.base);
}
END_TEST

/* A queue file that cannot be read in the middle of the content: the
 * connection ends without the end of data (the server keeps nothing) and
 * every recipient is deferred, saying why. */
START_TEST(test_unreadable_content)
{
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p = client_pool_new(r.base, &set);
	struct fake f;
	struct endpoint ep;
	struct msg m;
	struct dstr in;
	int i;

	dstr_init(&in, 0);
	for (i = 0; i < 20000; i++)
		dstr_printf(&in, "line %d of a message cut short on disk\r\n", i);
	fake_start(&f, NULL);
	ep = ep_inet(f.port);
	msg_init(&m, &r, in.s, "a@example.test", "b@example.test", NULL);
	/* the file ends 100 kB before the content does */
	ck_assert_int_eq(ftruncate(m.txn.content_fd, (off_t)(7 + in.len - 100000)), 0);
	deliver(&r, p, "node-a", &ep, 1, &m);
	run_until(&r, 1);
	check_result(&m.res[0], 451, "4.3.0", "cannot read the queue file: it ends early", NULL);
	check_result(&m.res[1], 451, "4.3.0", "cannot read the queue file: it ends early", NULL);
	ck_assert_int_eq(f.nmsg, 0);
	client_pool_free(p);
	fake_stop(&f);
	dstr_free(&in);
	event_base_free(r.base);
}
END_TEST

/* The first endpoint fails (refused, or a bad greeting), the second takes
 * the mail, and the first is skipped for the next transactions until its
 * dead time is over. */
START_TEST(test_failover)
{
	struct script bad = { .greeting = "554 5.3.2 not now" };
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p;
	struct fake f1, f2;
	struct endpoint eps[2];
	struct msg m1, m2, m3;

	set.dead_endpoint_seconds = 1;
	p = client_pool_new(r.base, &set);
	fake_start(&f1, &bad);
	fake_start(&f2, NULL);
	eps[0] = ep_inet(_i == 0 ? dead_port() : f1.port);
	eps[1] = ep_inet(f2.port);
	msg_init(&m1, &r, body, "a@example.test", "b@example.test", NULL);
	deliver(&r, p, "node-a", eps, 2, &m1);
	run_until(&r, 1);
	check_result(&m1.res[0], 250, "2.0.0", NULL, relay_of(&f2));
	check_result(&m1.res[1], 250, "2.0.0", NULL, relay_of(&f2));
	ck_assert_int_eq(f1.nconn, _i == 0 ? 0 : 1);
	ck_assert_int_eq(f2.nconn, 1);

	/* another destination, so no connection is reused: still skipped */
	msg_init(&m2, &r, body, "a@example.test", NULL, NULL);
	deliver(&r, p, "node-b", eps, 2, &m2);
	run_until(&r, 2);
	check_result(&m2.res[0], 250, "2.0.0", NULL, relay_of(&f2));
	ck_assert_int_eq(f1.nconn, _i == 0 ? 0 : 1);
	ck_assert_int_eq(f2.nconn, 2);

	/* dead time over: tried first again */
	sleep(2);
	msg_init(&m3, &r, body, "a@example.test", NULL, NULL);
	deliver(&r, p, "node-c", eps, 2, &m3);
	run_until(&r, 3);
	check_result(&m3.res[0], 250, "2.0.0", NULL, relay_of(&f2));
	if (_i == 1)
		ck_assert_int_eq(f1.nconn, 2);
	ck_assert_int_eq(f2.nconn, 3);
	client_pool_free(p);
	fake_stop(&f1);
	fake_stop(&f2);
	event_base_free(r.base);
}
END_TEST

/* every endpoint down, in various ways: each recipient gets 451 4.4.1 */
START_TEST(test_all_down)
{
	struct script sc = { 0 };
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p;
	struct fake f;
	struct endpoint eps[2];
	struct msg m;
	char want[200];
	unsigned short port;

	set.cmd_timeout = 1;
	if (_i == 1)
		sc.close_after_mail = true;
	if (_i == 2)
		sc.greet_delay_ms = 2500;
	fake_start(&f, &sc);
	p = client_pool_new(r.base, &set);
	port = dead_port();
	eps[0] = ep_inet(_i == 0 ? dead_port() : f.port);
	eps[1] = ep_inet(port);
	msg_init(&m, &r, body, "a@example.test", "b@example.test", NULL);
	deliver(&r, p, "node-a", eps, _i == 0 ? 2 : 1, &m);
	run_until(&r, 1);
	if (_i == 0)
		snprintf(want, sizeof(want), "connect to 127.0.0.1:%u: Connection refused", port);
	else if (_i == 1)
		snprintf(want, sizeof(want), "lost connection with 127.0.0.1:%u while sending MAIL FROM",
			 f.port);
	else
		snprintf(want, sizeof(want), "timeout with 127.0.0.1:%u while receiving the initial "
			 "server greeting", f.port);
	check_result(&m.res[0], 451, "4.4.1", want, "");
	check_result(&m.res[1], 451, "4.4.1", want, "");
	ck_assert_int_eq(f.nmsg, 0);
	client_pool_free(p);
	fake_stop(&f);
	event_base_free(r.base);
}
END_TEST

/* two transactions, one connection; RSET only after an unclean one */
START_TEST(test_reuse)
{
	struct script sc = { .pipelining = _i == 1 };
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p = client_pool_new(r.base, &set);
	struct fake f;
	struct endpoint ep;
	struct msg m1, m2, m3;

	fake_start(&f, &sc);
	ep = ep_inet(f.port);
	msg_init(&m1, &r, body, "a@example.test", NULL, NULL);
	deliver(&r, p, "node-a", &ep, 1, &m1);
	run_until(&r, 1);
	msg_init(&m2, &r, body, "reject@example.test", NULL, NULL);
	deliver(&r, p, "node-a", &ep, 1, &m2);
	run_until(&r, 2);
	msg_init(&m3, &r, body, "c@example.test", NULL, NULL);
	deliver(&r, p, "node-a", &ep, 1, &m3);
	run_until(&r, 3);
	check_result(&m1.res[0], 250, "2.0.0", NULL, NULL);
	check_result(&m2.res[0], 550, "5.1.1", NULL, NULL);
	check_result(&m3.res[0], 250, "2.0.0", NULL, NULL);
	ck_assert_int_eq(f.nconn, 1);
	ck_assert_int_eq(f.nmsg, 2);
	/* clean after the first: no RSET; the second left MAIL open: RSET */
	ck_assert_ptr_nonnull(strstr(f.log.s, "DATA\nMAIL FROM:<sender@remote.test>\n"
				     "RCPT TO:<reject@example.test>\n"));
	ck_assert_ptr_nonnull(strstr(f.log.s, "RCPT TO:<reject@example.test>\n"));
	ck_assert_ptr_nonnull(strstr(f.log.s, "RSET\nMAIL FROM:<sender@remote.test>\n"
				     "RCPT TO:<c@example.test>\n"));
	ck_assert(!f.violation);
	client_pool_free(p);
	fake_stop(&f);
	event_base_free(r.base);
}
END_TEST

/* A server closed the idle connection: the next transaction gets a new
 * one, and the endpoint is not blamed for it. */
START_TEST(test_stale_connection)
{
	struct script sc = { .close_after_data = true, .pipelining = _i == 1 };
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p = client_pool_new(r.base, &set);
	struct fake f, f2;
	struct endpoint eps[2];
	struct msg m1, m2, m3;

	fake_start(&f, &sc);
	fake_start(&f2, NULL);
	eps[0] = ep_inet(f.port);
	eps[1] = ep_inet(f2.port);
	msg_init(&m1, &r, body, "a@example.test", NULL, NULL);
	deliver(&r, p, "node-a", eps, 2, &m1);
	run_until(&r, 1);
	usleep(200 * 1000);
	msg_init(&m2, &r, body, "a@example.test", NULL, NULL);
	deliver(&r, p, "node-a", eps, 2, &m2);
	run_until(&r, 2);
	msg_init(&m3, &r, body, "a@example.test", NULL, NULL);
	deliver(&r, p, "node-b", eps, 2, &m3);
	run_until(&r, 3);
	check_result(&m1.res[0], 250, "2.0.0", NULL, relay_of(&f));
	check_result(&m2.res[0], 250, "2.0.0", NULL, relay_of(&f));
	check_result(&m3.res[0], 250, "2.0.0", NULL, relay_of(&f));
	ck_assert_int_eq(f.nconn, 3);
	ck_assert_int_eq(f2.nconn, 0);
	client_pool_free(p);
	fake_stop(&f);
	fake_stop(&f2);
	event_base_free(r.base);
}
END_TEST

/* an idle connection is closed after idle_timeout; the next one is new */
START_TEST(test_idle_timeout)
{
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p;
	struct fake f;
	struct endpoint ep;
	struct msg m1, m2;
	set.idle_timeout = 1;
	p = client_pool_new(r.base, &set);
	fake_start(&f, NULL);
	ep = ep_inet(f.port);
	msg_init(&m1, &r, body, "a@example.test", NULL, NULL);
	deliver(&r, p, "node-a", &ep, 1, &m1);
	run_until(&r, 1);
	run_for(r.base, 2);
	ck_assert_int_eq(f.active, 0);
	msg_init(&m2, &r, body, "a@example.test", NULL, NULL);
	deliver(&r, p, "node-a", &ep, 1, &m2);
	run_until(&r, 2);
	check_result(&m2.res[0], 250, "2.0.0", NULL, NULL);
	ck_assert_int_eq(f.nconn, 2);
	client_pool_free(p);
	fake_stop(&f);
	event_base_free(r.base);
}
END_TEST

/* 5 transactions, at most 2 connections; the others wait their turn */
START_TEST(test_concurrency)
{
	struct script sc = { .pipelining = true, .dot_delay_ms = 200 };
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p;
	struct fake f;
	struct endpoint ep;
	struct msg m[5];
	int i;

	set.per_dest_concurrency = 2;
	p = client_pool_new(r.base, &set);
	fake_start(&f, &sc);
	ep = ep_inet(f.port);
	for (i = 0; i < 5; i++) {
		msg_init(&m[i], &r, body, "a@example.test", NULL, NULL);
		deliver(&r, p, "node-a", &ep, 1, &m[i]);
	}
	run_until(&r, 5);
	for (i = 0; i < 5; i++)
		check_result(&m[i].res[0], 250, "2.0.0", NULL, NULL);
	ck_assert_int_eq(f.nmsg, 5);
	ck_assert_int_eq(f.max_active, 2);
	ck_assert_int_eq(f.nconn, 2);
	client_pool_free(p);
	fake_stop(&f);
	event_base_free(r.base);
}
END_TEST

/* SIZE: too big is refused here, 552 5.3.4, without a MAIL; else SIZE= */
START_TEST(test_size)
{
	struct script sc = { .size = "100", .eightbitmime = _i == 1 };
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p = client_pool_new(r.base, &set);
	struct fake f;
	struct endpoint ep;
	struct msg m1, m2;
	char big[201];

	memset(big, 'x', 200);
	big[200] = '\0';
	fake_start(&f, &sc);
	ep = ep_inet(f.port);
	msg_init(&m1, &r, big, "a@example.test", "b@example.test", NULL);
	deliver(&r, p, "node-a", &ep, 1, &m1);
	run_until(&r, 1);
	check_result(&m1.res[0], 552, "5.3.4", "message size 200 exceeds size limit 100",
		     relay_of(&f));
	check_result(&m1.res[1], 552, "5.3.4", NULL, NULL);
	ck_assert_int_eq(f.nmail, 0);
	msg_init(&m2, &r, body, "a@example.test", NULL, NULL);
	m2.txn.eightbit = true;
	deliver(&r, p, "node-a", &ep, 1, &m2);
	run_until(&r, 2);
	check_result(&m2.res[0], 250, "2.0.0", NULL, NULL);
	ck_assert_int_eq(f.nconn, 1);
	if (_i == 1)
		ck_assert_ptr_nonnull(strstr(f.log.s, "MAIL FROM:<sender@remote.test> SIZE=24 "
					     "BODY=8BITMIME\n"));
	else
		ck_assert_ptr_nonnull(strstr(f.log.s, "MAIL FROM:<sender@remote.test> SIZE=24\n"));
	client_pool_free(p);
	fake_stop(&f);
	event_base_free(r.base);
}
END_TEST

START_TEST(test_unix_socket)
{
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p = client_pool_new(r.base, &set);
	struct fake f;
	struct endpoint ep;
	struct msg m;
	char path[64], relay[80];

	snprintf(path, sizeof(path), "/tmp/check_client.%d.sock", (int)getpid());
	fake_start_on(&f, NULL, NULL, 0, path);
	memset(&ep, 0, sizeof(ep));
	ep.kind = EP_UNIX;
	snprintf(ep.path, sizeof(ep.path), "%s", path);
	msg_init(&m, &r, body, "a@example.test", NULL, NULL);
	m.txn.sender = "";
	deliver(&r, p, "node-u", &ep, 1, &m);
	run_until(&r, 1);
	snprintf(relay, sizeof(relay), "unix:%s", path);
	check_result(&m.res[0], 250, "2.0.0", NULL, relay);
	ck_assert_ptr_nonnull(strstr(f.log.s, "MAIL FROM:<>\n"));
	client_pool_free(p);
	fake_stop(&f);
	event_base_free(r.base);
}
END_TEST

/* nothing to do still reports from the loop; shutdown fails what waits */
START_TEST(test_edges)
{
	struct script sc = { .greet_delay_ms = 300 };
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p = client_pool_new(r.base, &set);
	struct fake f;
	struct endpoint ep;
	struct msg m1, m2, m3;

	msg_init(&m1, &r, body, "a@example.test", NULL, NULL);
	deliver(&r, p, "node-a", NULL, 0, &m1);
	ck_assert_int_eq(m1.done, 0);
	run_until(&r, 1);
	check_result(&m1.res[0], 451, "4.3.5", "no endpoint", NULL);

	/* bad address bytes never reach the wire */
	fake_start(&f, &sc);
	ep = ep_inet(f.port);
	msg_init(&m2, &r, body, "a@example.test\r\nRSET", "ok@example.test", NULL);
	deliver(&r, p, "node-a", &ep, 1, &m2);
	run_until(&r, 2);
	check_result(&m2.res[0], 501, "5.1.3", NULL, NULL);
	check_result(&m2.res[1], 250, "2.0.0", NULL, NULL);

	msg_init(&m3, &r, body, "a@example.test", NULL, NULL);
	deliver(&r, p, "node-b", &ep, 1, &m3);
	client_pool_free(p);
	ck_assert_int_eq(m3.done, 1);
	check_result(&m3.res[0], 451, "4.3.0", "shutting down", NULL);
	fake_stop(&f);
	event_base_free(r.base);
}
END_TEST

static struct event_base *dns_base;

static void
on_dns_answer(const struct dns_answer *a, void *arg)
{
	struct dns_answer *out = arg;
	static struct sockaddr_storage addrs[DNS_ADDRS_MAX];

	*out = *a;
	memcpy(addrs, a->addrs, a->naddrs * sizeof(addrs[0]));
	out->addrs = addrs;
	out->err = a->err ? "set" : NULL;
	event_base_loopbreak(dns_base);
}

START_TEST(test_dns)
{
	struct fakedns d = { .name = "multi.test", .addrs = { "127.0.0.1", "127.0.0.2" } };
	struct dns_answer a1, a2;
	struct dns *dns;
	char servers[64], err[256], ip[64];

	dns_base = event_base_new();
	fakedns_start(&d);
	snprintf(servers, sizeof(servers), " 127.0.0.1:%u ", d.port);
	dns = dns_new(dns_base, servers, err, sizeof(err));
	ck_assert_msg(dns != NULL, "%s", err);
	memset(&a1, 0xff, sizeof(a1));
	memset(&a2, 0xff, sizeof(a2));
	dns_lookup(dns, "multi.test", on_dns_answer, &a1);
	ck_assert_int_ne(a1.error, 0);          /* not from inside dns_lookup */
	run_for(dns_base, 5);
	ck_assert_int_eq(a1.error, 0);
	ck_assert_uint_eq(a1.naddrs, 2);
	inet_ntop(AF_INET, &((struct sockaddr_in *)&a1.addrs[0])->sin_addr, ip, sizeof(ip));
	ck_assert_str_eq(ip, "127.0.0.1");
	inet_ntop(AF_INET, &((struct sockaddr_in *)&a1.addrs[1])->sin_addr, ip, sizeof(ip));
	ck_assert_str_eq(ip, "127.0.0.2");

	dns_lookup(dns, "nosuch.test", on_dns_answer, &a2);
	run_for(dns_base, 5);
	ck_assert_int_ne(a2.error, 0);
	ck_assert(a2.notfound);
	ck_assert_ptr_nonnull(a2.err);
	ck_assert_int_ge(d.queries, 2);

	/* /etc/hosts answers too, still from the loop */
	memset(&a1, 0xff, sizeof(a1));
	dns_lookup(dns, "localhost", on_dns_answer, &a1);
	ck_assert_int_ne(a1.error, 0);
	run_for(dns_base, 5);
	ck_assert_int_eq(a1.error, 0);
	ck_assert_uint_ge(a1.naddrs, 1);
	dns_addr_format(&a1.addrs[0], ip, sizeof(ip));
	ck_assert_msg(strcmp(ip, "127.0.0.1:0") == 0 || strcmp(ip, "[::1]:0") == 0, "%s", ip);

	/* a cancelled lookup never calls back; freeing drops pending ones */
	memset(&a1, 0xff, sizeof(a1));
	memset(&a2, 0xff, sizeof(a2));
	dns_cancel(dns_lookup(dns, "multi.test", on_dns_answer, &a1));
	dns_lookup(dns, "multi.test", on_dns_answer, &a2);
	dns_free(dns);
	run_for(dns_base, 1);
	ck_assert_int_eq(a1.error, -1);
	ck_assert_int_eq(a2.error, -1);
	ck_assert_ptr_null(dns_new(dns_base, "not-an-address", err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "dns_servers"));
	fakedns_stop(&d);
	event_base_free(dns_base);
}
END_TEST

struct acase {
	const char *host;
	const char *form;       /* NULL: not numeric */
};

static const struct acase acases[] = {
	{ "127.0.0.1", "127.0.0.1:24" },
	{ "192.0.2.10", "192.0.2.10:24" },
	{ "::1", "[::1]:24" },
	{ "2001:db8::1", "[2001:db8::1]:24" },
	{ "[::1]", NULL },
	{ "node.test", NULL },
	{ "127.0.0.1:24", NULL },
	{ "", NULL },
};

START_TEST(test_addr_helpers)
{
	struct sockaddr_storage ss;
	char buf[80];
	int rc = dns_addr_numeric(acases[_i].host, 24, &ss);

	if (acases[_i].form == NULL) {
		ck_assert_int_eq(rc, -1);
		return;
	}
	ck_assert_int_eq(rc, 0);
	dns_addr_format(&ss, buf, sizeof(buf));
	ck_assert_str_eq(buf, acases[_i].form);
	ck_assert_uint_eq(dns_addr_len(&ss), ss.ss_family == AF_INET ?
			  sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
}
END_TEST

/* A name with two addresses: used in turn, and the next one when one is down. */
START_TEST(test_dns_round_robin)
{
	struct fakedns d = { .name = "node.test", .addrs = { "127.0.0.1", "127.0.0.2" } };
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p;
	struct fake f1, f2;
	struct endpoint ep;
	struct msg m[4];
	char servers[64], relay2[64];
	int i;

	fakedns_start(&d);
	snprintf(servers, sizeof(servers), "127.0.0.1:%u", d.port);
	set.dns_servers = servers;
	p = client_pool_new(r.base, &set);
	fake_start(&f1, NULL);
	fake_start_on(&f2, NULL, "127.0.0.2", f1.port, NULL);
	memset(&ep, 0, sizeof(ep));
	ep.kind = EP_INET;
	snprintf(ep.host, sizeof(ep.host), "node.test");
	ep.port = f1.port;
	/* different destinations: one new connection each */
	for (i = 0; i < 2; i++) {
		char dest[16];

		snprintf(dest, sizeof(dest), "node-%d", i);
		msg_init(&m[i], &r, body, "a@example.test", NULL, NULL);
		deliver(&r, p, dest, &ep, 1, &m[i]);
		run_until(&r, i + 1);
		check_result(&m[i].res[0], 250, "2.0.0", NULL, NULL);
	}
	ck_assert_int_eq(f1.nconn, 1);
	ck_assert_int_eq(f2.nconn, 1);
	/* one address down: the other one answers, whichever comes first */
	fake_stop(&f1);
	snprintf(relay2, sizeof(relay2), "127.0.0.2:%u", f2.port);
	for (i = 2; i < 4; i++) {
		char dest[16];

		snprintf(dest, sizeof(dest), "node-%d", i);
		msg_init(&m[i], &r, body, "a@example.test", NULL, NULL);
		deliver(&r, p, dest, &ep, 1, &m[i]);
		run_until(&r, i + 1);
		check_result(&m[i].res[0], 250, "2.0.0", NULL, relay2);
	}
	ck_assert_int_eq(f2.nconn, 3);
	client_pool_free(p);
	fake_stop(&f2);
	fakedns_stop(&d);
	event_base_free(r.base);
}
END_TEST

/* optional: a real LMTP node, e.g. a private Dovecot */
START_TEST(test_real_node)
{
	const char *node = getenv("SORTER_TEST_LMTP_NODE");
	const char *rcpt = getenv("SORTER_TEST_LMTP_RCPT");
	struct client_settings set = settings();
	struct run r = { event_base_new(), 0, 0, false, false };
	struct client_pool *p;
	struct endpoint ep;
	struct msg m;
	const char *colon;

	if (node == NULL || rcpt == NULL || (colon = strrchr(node, ':')) == NULL) {
		event_base_free(r.base);
		return;
	}
	p = client_pool_new(r.base, &set);
	memset(&ep, 0, sizeof(ep));
	ep.kind = EP_INET;
	ep.literal = true;
	snprintf(ep.host, sizeof(ep.host), "%.*s", (int)(colon - node), node);
	ep.port = (unsigned short)atoi(colon + 1);
	msg_init(&m, &r, "Subject: check_client\r\n\r\n.dot line\r\nbody\r\n", rcpt,
		 "nosuchuser@example.test", NULL);
	deliver(&r, p, "real", &ep, 1, &m);
	run_until(&r, 1);
	fprintf(stderr, "real node: %d %s %s / %d %s %s\n", m.res[0].code, m.res[0].status,
		m.res[0].text, m.res[1].code, m.res[1].status, m.res[1].text);
	ck_assert_int_eq(m.res[0].code / 100, 2);
	ck_assert_int_eq(m.res[1].code / 100, 5);
	client_pool_free(p);
	event_base_free(r.base);
}
END_TEST

static Suite *
lmtp_suite(void)
{
	Suite *s = suite_create("lmtp");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_rcpt_rejected, 0, 2);
	tcase_add_loop_test(tc, test_data_replies, 0, 2);
	tcase_add_loop_test(tc, test_mail_data_rejected, 0, 4);
	tcase_add_loop_test(tc, test_dotstuff_wire, 0, (int)(sizeof(stuffcases) / sizeof(stuffcases[0])));
	tcase_add_test(tc, test_big_message);
	tcase_add_test(tc, test_unreadable_content);
	tcase_add_loop_test(tc, test_failover, 0, 2);
	tcase_add_loop_test(tc, test_all_down, 0, 3);
	tcase_add_loop_test(tc, test_reuse, 0, 2);
	tcase_add_loop_test(tc, test_stale_connection, 0, 2);
	tcase_add_test(tc, test_idle_timeout);
	tcase_add_test(tc, test_concurrency);
	tcase_add_loop_test(tc, test_size, 0, 2);
	tcase_add_test(tc, test_unix_socket);
	tcase_add_test(tc, test_edges);
	tcase_add_test(tc, test_dns);
	tcase_add_loop_test(tc, test_addr_helpers, 0, (int)(sizeof(acases) / sizeof(acases[0])));
	tcase_add_test(tc, test_dns_round_robin);
	tcase_add_test(tc, test_real_node);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(lmtp_suite());
	int failed;

	/* the fake servers write to clients that may be gone */
	signal(SIGPIPE, SIG_IGN);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
