/*
 * client.c - the delivery client: LMTP (RFC 2033) to the mailbox nodes and
 * SMTP (RFC 5321) to other domains' MXes and relays, one state machine for
 * both. What differs between the two transports is a row of `transports`
 * (the greeting verb, one reply per recipient after the content or one for
 * all, STARTTLS, HELO fallback); the rest is shared. A pool of connections
 * on the caller's libevent loop, kept per destination (a node name, a
 * relay, a mail domain), reused for the next transaction to the same
 * destination, and capped in number; transactions beyond the cap wait in a
 * FIFO per destination.
 *
 * One connection slot carries one transaction at a time through the
 * destination's endpoints: an smtp:DOMAIN endpoint becomes the hosts of
 * the domain's MX records (preference order), DNS (dns.c) gives each host
 * name's addresses, every address of a name is tried from a rotating
 * start, and the next endpoint when a connection fails (refused, timeout,
 * a greeting that is not 220). An endpoint or address that failed is tried
 * last for dead_endpoint_seconds. Each recipient ends with exactly one
 * result: the server's reply to its RCPT, to DATA, or after the content;
 * or one made up here (451 4.4.1 when no server could answer, the DNS
 * verdicts for a domain: 5.1.2, 5.1.10, 4.4.3, 5.4.6, and 5.4.4 when none
 * of its mail hosts has an address). A reply that is no answer to its
 * command (a 250 to DATA, a 3xx to RCPT) ends the connection: its
 * recipients go on to the next address. 552 to RCPT is taken for 452.
 *
 * It must never block, never send a bare CR or LF (reply.c's encoder
 * makes every line end CR LF), never send a message larger than the
 * server's SIZE, never send 8-bit content to an SMTP server that did not
 * offer 8BITMIME, never send a recipient that needs SMTPUTF8 (RFC 6531:
 * a UTF-8 address, or a UTF-8 header section received with SMTPUTF8) to
 * a server that did not offer it, never act on bytes a server sent before the TLS
 * handshake, and never call a done callback from inside client_deliver:
 * results go out through a deferred event. No logging per message: the
 * queue manager logs results; an endpoint failure is warned about once
 * per dead period.
 *
 * Opportunistic TLS (level may) never makes mail undeliverable where
 * plaintext works: a STARTTLS refused with 4xx/5xx goes on in plaintext on
 * the same connection, and a failed TLS handshake (an error, the server
 * closing, a timeout) is followed by one new connection to the same
 * address without STARTTLS, with a warning naming the host and the error.
 * The levels encrypt and verify fail the address instead.
 */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "lib/lib.h"
#include "lib/metrics.h"
#include "router/router.h"

#define CONTENT_CHUNK (64 * 1024)       /* content bytes encoded at a time */
#define OUTPUT_LOW_WATER (64 * 1024)    /* more content is encoded below this */
#define EPKEY_MAX (ADDR_DOMAIN_MAX + ENDPOINT_PATH_MAX + 32)
#define ERR_MAX 512

/* What one transport does its own way; everything else is shared. */
struct transport {
	const char *hello;              /* the greeting command */
	bool reply_per_rcpt;            /* after the content: one reply per accepted recipient */
	bool starttls;                  /* STARTTLS when offered, per smtp_tls_security_level */
	bool helo_fallback;             /* a refused EHLO is followed by HELO */
	bool strict_8bit;               /* 8-bit content needs 8BITMIME from the server */
	bool pass_dsn;                  /* NOTIFY, ORCPT, RET, ENVID when DSN is offered */
};

static const struct transport transports[] = {
	[EP_LMTP] = { "LHLO", true, false, false, false, false },
	[EP_SMTP] = { "EHLO", false, true, true, true, true },
};

enum cstate {
	CS_RESOLVING,           /* waiting for DNS */
	CS_CONNECTING,
	CS_GREETING,            /* waiting for the 220 */
	CS_LHLO,                /* LHLO, EHLO or HELO sent */
	CS_STARTTLS,            /* STARTTLS sent */
	CS_HANDSHAKE,           /* TLS handshake under way */
	CS_TXN,                 /* RSET, MAIL, RCPT..., DATA and their replies */
	CS_CONTENT,             /* the message, then one reply per accepted recipient */
	CS_IDLE,                /* connected, no transaction */
};

/* What the pool remembers of an endpoint, an address or a host name. */
struct epstate {
	char key[EPKEY_MAX];
	uint64_t dead_until;    /* metrics_now() microseconds: monotonic, so a clock step
				 * neither revives nor buries an endpoint */
	unsigned rr;            /* next first address, for a host name */
	struct epstate *next;
};

struct job {
	struct client_pool *pool;
	struct deliv_txn *txn;
	struct endpoint *eps;
	size_t neps;
	size_t *order;          /* eps in the order to try them; NULL: not started */
	size_t next_ep;         /* in order */
	const struct endpoint *ep;      /* being tried */
	char epname[EPKEY_MAX];
	struct sockaddr_storage addrs[DNS_ADDRS_MAX];
	size_t naddrs, next_addr;
	bool fresh_retry;       /* retried once after a reused connection broke */
	char err[ERR_MAX];      /* the last connection-level failure */
	/* endpoints given up on: hosts of an MX answer that have no address
	 * (DNS said so), and all others; when every one given up on is of the
	 * first kind, the failure is permanent (conn_try) */
	size_t nnotfound, nother;
	bool ep_notfound;       /* the endpoint being tried has no address */
	bool looped;            /* an MX host was ourselves: it and those after it skipped */
	/* MX hosts of one preference are all looked up before any of them is
	 * tried (group_check): those before checked_to (in order) were */
	size_t checked_to, gc_next;
	char mx_domain[256];    /* the domain of the MX answer, for the loop's message */
	/* a probe (client_probe) instead of a transaction: txn is NULL */
	client_probe_cb *probe;
	void *probe_arg;
	uint64_t hello_usec;    /* when the greeting command went out */
	struct client_probe_result pres;
	struct job *next;
};

struct conn {
	struct client_pool *pool;
	struct dest *dest;
	enum cstate state;
	struct bufferevent *bev;
	struct dns_query *dq;
	struct job *job;
	const struct transport *tp;
	struct ehlo_caps caps;
	bool helo_sent;         /* EHLO was refused: HELO instead */
	bool tls_on;            /* the session runs over TLS */
	bool plain;             /* no STARTTLS: the retry after a failed handshake at may */
	struct sockaddr_storage addr;   /* the address connected to */
	signed char tls_level;  /* the endpoint's smtp_tls_policy_map level, or -1 */
	char tls[96];           /* the session's TLS version and cipher, for the results */
	char peer[ADDR_DOMAIN_MAX + 1]; /* the host name connected to (TLS verify) */
	char relay[RELAY_MAX];
	bool reused;            /* the transaction is not the connection's first */
	bool need_rset;         /* the last transaction did not end cleanly */
	bool answered;          /* a reply of this transaction arrived */
	struct {                /* the transaction; conn_txn_reset() clears it */
		bool rset;      /* it starts with RSET */
		size_t *rcpts, nrcpt;   /* txn indices of the recipients it carries */
		size_t *acc, nacc, nacc_done;   /* accepted ones; their replies so far */
		size_t nsteps, sent, replied;
		bool mail_failed;
		size_t content_off;
		bool content_end;       /* the final "." is in the output */
		bool utf8;              /* MAIL FROM carries SMTPUTF8 */
		bool dsn;               /* DSN parameters are passed on */
		struct dotstuff ds;
	} tx;
	struct conn *prev, *next;
};

struct dest {
	char *name;
	const struct transport *tp;
	struct conn *conns;
	unsigned nconn;
	struct job *head, *tail;        /* waiting */
	struct dest *next;
};

struct client_pool {
	struct event_base *base;
	struct client_settings set;
	char *helo_name, *dns_servers;
	struct dns *dns;
	SSL_CTX *tls_ctx;               /* SMTP STARTTLS; NULL when it could not be made */
	struct dest *dests;
	struct epstate *states;
	struct job *done_head, *done_tail;
	struct event *done_ev;          /* reports finished transactions */
	struct event *kick_ev;          /* gives waiting transactions a connection */
	struct self_addrs self;         /* our listeners: an MX host there is a loop */
};

static void conn_try(struct conn *c);
static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void relay_name(const struct transport *tp, const struct endpoint *ep,
		       const struct sockaddr_storage *ss, char *buf, size_t len);
static bool conn_begin_txn(struct conn *c);
static void conn_give_up(struct conn *c, int code, const char *status, const char *text);
static int conn_connect(struct conn *c, const struct sockaddr_storage *ss);
static void fmtbuf(char *buf, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* snprintf that may cut the text short: messages are bounded on purpose */
static void
fmtbuf(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
}

/* ---- endpoint state ---- */

static struct epstate *
epstate(struct client_pool *p, const char *key, bool create)
{
	struct epstate *s;

	for (s = p->states; s != NULL; s = s->next)
		if (strcmp(s->key, key) == 0)
			return s;
	if (!create)
		return NULL;
	s = xcalloc(1, sizeof(*s));
	snprintf(s->key, sizeof(s->key), "%s", key);
	s->next = p->states;
	p->states = s;
	return s;
}

static bool
is_dead(struct client_pool *p, const char *key)
{
	struct epstate *s = epstate(p, key, false);

	return s != NULL && s->dead_until > metrics_now();
}

/* Marks key dead; warns when it was alive and `warn`. */
static void
mark_dead(struct client_pool *p, const char *key, bool warn, const char *why)
{
	struct epstate *s;
	uint64_t now = metrics_now();

	if (p->set.dead_endpoint_seconds == 0)
		return;         /* never set aside */
	s = epstate(p, key, true);
	if (warn && s->dead_until <= now)
		msg_warn("%s failed, tried last for %ds: %s", key,
			 p->set.dead_endpoint_seconds, why);
	s->dead_until = now + (uint64_t)p->set.dead_endpoint_seconds * 1000000u;
}

/* ---- results and finished transactions ---- */

static void
set_result(struct deliv_result *res, int code, const char *status, const char *text,
	   const char *relay)
{
	res->code = code;
	if (status != NULL && status[0] != '\0')
		snprintf(res->status, sizeof(res->status), "%s", status);
	else
		snprintf(res->status, sizeof(res->status), "%d.0.0", code / 100);
	snprintf(res->text, sizeof(res->text), "%s", text);
	snprintf(res->relay, sizeof(res->relay), "%s", relay);
}

static void
reply_result(struct conn *c, size_t i, const struct reply *r)
{
	struct deliv_result *res = &c->job->txn->results[i];

	set_result(res, r->code, r->status, r->text, c->relay);
	res->remote_said = true;
	res->dsn_passed = !c->tp->reply_per_rcpt && c->tx.dsn;
	res->relayed = !c->tp->reply_per_rcpt && !c->tx.dsn;
	snprintf(res->tls, sizeof(res->tls), "%s", c->tls);
}

static void
schedule_kick(struct client_pool *p)
{
	event_active(p->kick_ev, EV_TIMEOUT, 0);
}

/* The recipients still without a result get code/status/text; the
 * transaction is reported from the loop. */
static void
job_finish(struct job *j, int code, const char *status, const char *text)
{
	struct client_pool *p = j->pool;
	size_t i;

	if (j->txn == NULL && !j->pres.up)       /* a probe that failed */
		snprintf(j->pres.error, sizeof(j->pres.error), "%s", text);
	for (i = 0; j->txn != NULL && i < j->txn->nrcpt; i++)
		if (j->txn->results[i].code == 0)
			set_result(&j->txn->results[i], code, status, text, "");
	free(j->eps);
	free(j->order);
	j->eps = NULL;
	j->order = NULL;
	j->next = NULL;
	if (p->done_tail)
		p->done_tail->next = j;
	else
		p->done_head = j;
	p->done_tail = j;
	event_active(p->done_ev, EV_TIMEOUT, 0);
}

/* One transaction per run, so a done callback may free the pool. */
static void
on_done(evutil_socket_t fd, short what, void *arg)
{
	struct client_pool *p = arg;
	struct job *j = p->done_head;
	struct deliv_txn *txn;

	if (j == NULL)
		return;
	p->done_head = j->next;
	if (p->done_head == NULL)
		p->done_tail = NULL;
	else
		event_active(p->done_ev, EV_TIMEOUT, 0);
	if (j->probe != NULL) {
		j->probe(&j->pres, j->probe_arg);
		free(j);
		return;
	}
	txn = j->txn;
	free(j);
	txn->done(txn, txn->arg);
}

/* ---- connections ---- */

static void
conn_txn_reset(struct conn *c)
{
	free(c->tx.rcpts);
	free(c->tx.acc);
	memset(&c->tx, 0, sizeof(c->tx));
}

static void
conn_close_socket(struct conn *c)
{
	if (c->bev) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	if (c->dq) {
		dns_cancel(c->dq);
		c->dq = NULL;
	}
	conn_txn_reset(c);
}

/* A polite end for a healthy idle connection, never waited for. */
static void
conn_quit(struct conn *c)
{
	if (c->state == CS_IDLE && c->bev != NULL && !c->tls_on)
		(void)send(bufferevent_getfd(c->bev), "QUIT\r\n", 6, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* Forgets a slot that has no transaction. */
static void
conn_free(struct conn *c)
{
	struct dest *d = c->dest;
	struct client_pool *p = c->pool;

	conn_close_socket(c);
	if (c->prev)
		c->prev->next = c->next;
	else
		d->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	d->nconn--;
	free(c);
	schedule_kick(p);
}

static void
set_timeouts(struct conn *c, int read_secs, int write_secs)
{
	struct timeval rt = { read_secs, 0 }, wt = { write_secs, 0 };

	bufferevent_set_timeouts(c->bev, read_secs ? &rt : NULL, write_secs ? &wt : NULL);
}

static const char *
phase(const struct conn *c)
{
	size_t off = c->tx.rset ? 1 : 0;

	switch (c->state) {
	case CS_GREETING:
		return "receiving the initial server greeting";
	case CS_LHLO:
		return c->helo_sent ? "sending HELO" :
		    c->tp == &transports[EP_SMTP] ? "sending EHLO" : "sending LHLO";
	case CS_STARTTLS:
		return "sending STARTTLS";
	case CS_HANDSHAKE:
		return "performing the TLS handshake";
	case CS_TXN:
		if (c->tx.replied < off)
			return "sending RSET";
		if (c->tx.replied == off)
			return "sending MAIL FROM";
		if (c->tx.replied <= off + c->tx.nrcpt)
			return "sending RCPT TO";
		return "sending DATA";
	case CS_CONTENT:
		return c->tx.content_end ? "sending end of data" : "sending message body";
	default:
		return "connecting";
	}
}

/*
 * The connection failed (why says how): the socket goes, and the slot
 * tries the transaction's next address or endpoint for the recipients
 * still without a result. A reused connection that breaks before any
 * reply was most likely closed by the server while idle: that is retried
 * once from the first endpoint, without blaming the endpoint.
 */
static void
conn_fail(struct conn *c, const char *why)
{
	struct job *j = c->job;
	bool stale = c->reused && !c->answered && j != NULL && !j->fresh_retry;

	if (!stale)
		mark_dead(c->pool, c->relay, j != NULL && j->ep != NULL && j->naddrs > 1, why);
	conn_close_socket(c);
	c->reused = false;
	c->need_rset = false;
	if (j == NULL) {
		conn_free(c);
		return;
	}
	snprintf(j->err, sizeof(j->err), "%s", why);
	if (stale) {            /* from the first endpoint again */
		j->fresh_retry = true;
		j->nother++;    /* a server was reached: not a name without address */
		free(j->order);
		j->order = NULL;
	}
	conn_try(c);
}

/* Ends the transaction on c; keeps the connection when `keep` and it is
 * in a known state. Returns false when c is gone. */
static bool
txn_end(struct conn *c, bool keep, bool clean)
{
	struct job *j = c->job;

	c->job = NULL;
	conn_txn_reset(c);
	job_finish(j, 451, "4.3.0", "no reply from the server");
	if (!keep || evbuffer_get_length(bufferevent_get_input(c->bev)) > 0) {
		conn_free(c);
		return false;
	}
	c->need_rset = !clean;
	c->reused = true;
	c->state = CS_IDLE;
	set_timeouts(c, c->pool->set.idle_timeout, 0);
	schedule_kick(c->pool);
	return true;
}

static void
send_step(struct conn *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	struct deliv_txn *t = c->job->txn;
	size_t i = c->tx.sent++, off = c->tx.rset ? 1 : 0;

	if (i < off) {
		evbuffer_add(out, "RSET\r\n", 6);
	} else if (i == off) {
		evbuffer_add_printf(out, "MAIL FROM:<%s>", t->sender ? t->sender : "");
		if (c->caps.size)
			evbuffer_add_printf(out, " SIZE=%zu", t->content_len);
		if (t->eightbit && c->caps.eightbitmime)
			evbuffer_add_printf(out, " BODY=8BITMIME");
		if (c->tx.utf8)
			evbuffer_add_printf(out, " SMTPUTF8");
		if (c->tx.dsn && t->sender_params != NULL && t->sender_params[0] != '\0')
			evbuffer_add_printf(out, " %s", t->sender_params);
		evbuffer_add(out, "\r\n", 2);
	} else if (i <= off + c->tx.nrcpt) {
		size_t k = c->tx.rcpts[i - off - 1];

		evbuffer_add_printf(out, "RCPT TO:<%s>", t->rcpts[k]);
		if (c->tx.dsn && t->rcpt_params != NULL && t->rcpt_params[k] != NULL &&
		    t->rcpt_params[k][0] != '\0')
			evbuffer_add_printf(out, " %s", t->rcpt_params[k]);
		evbuffer_add(out, "\r\n", 2);
	} else {
		evbuffer_add(out, "DATA\r\n", 6);
	}
}

/* An address goes into a command line as it is: a control character in
 * it could end the line early and start another command. */
static bool
no_controls(const char *a)
{
	const unsigned char *s;

	for (s = (const unsigned char *)(a ? a : ""); *s; s++)
		if (*s < 0x20 || *s == 0x7f)
			return false;
	return true;
}

static bool
has_utf8(const char *a)
{
	const unsigned char *s;

	for (s = (const unsigned char *)(a ? a : ""); *s; s++)
		if (*s >= 0x80)
			return true;
	return false;
}

/* Every recipient of the transaction not answered yet gets this result. */
static void
fail_all(struct conn *c, int code, const char *status, const char *text)
{
	struct deliv_txn *t = c->job->txn;
	size_t i;

	for (i = 0; i < c->tx.nrcpt; i++)
		set_result(&t->results[c->tx.rcpts[i]], code, status, text, c->relay);
	c->tx.nrcpt = 0;
}

/* Starts the transaction of c->job on the connection c, ready for it.
 * Returns false when c is gone. */
static bool
conn_begin_txn(struct conn *c)
{
	struct deliv_txn *t = c->job->txn;
	char text[256];
	size_t i, k;
	bool sender_utf8;

	conn_txn_reset(c);
	c->answered = false;
	c->tx.rcpts = xcalloc(t->nrcpt, sizeof(*c->tx.rcpts));
	c->tx.acc = xcalloc(t->nrcpt, sizeof(*c->tx.acc));
	for (i = 0; i < t->nrcpt; i++) {
		if (t->results[i].code != 0)
			continue;
		if (!no_controls(t->rcpts[i]))
			set_result(&t->results[i], 501, "5.1.3", "bad recipient address syntax", "");
		else
			c->tx.rcpts[c->tx.nrcpt++] = i;
	}
	if (!no_controls(t->sender)) {
		for (i = 0; i < c->tx.nrcpt; i++)
			set_result(&t->results[c->tx.rcpts[i]], 501, "5.1.7",
				   "bad sender address syntax", "");
		c->tx.nrcpt = 0;
	}
	if (c->tx.nrcpt > 0 && c->caps.size && c->caps.size_max > 0 &&
	    t->content_len > c->caps.size_max) {
		fmtbuf(text, sizeof(text), "message size %zu exceeds size limit %llu of server %s",
		       t->content_len, c->caps.size_max, c->relay);
		fail_all(c, 552, "5.3.4", text);
	}
	if (c->tx.nrcpt > 0 && t->eightbit && c->tp->strict_8bit && !c->caps.eightbitmime) {
		/* RFC 6152: no 8-bit content to a server that did not offer 8BITMIME */
		fmtbuf(text, sizeof(text), "message has 8-bit content, but server %s does not "
		       "offer 8BITMIME and the content cannot be converted", c->relay);
		fail_all(c, 554, "5.6.3", text);
	}
	/* RFC 6531 3.4: what needs SMTPUTF8 goes only to a server offering it,
	 * per recipient: an ASCII recipient of an ASCII message still goes */
	sender_utf8 = has_utf8(t->sender);
	c->tx.utf8 = t->smtputf8 || sender_utf8;
	fmtbuf(text, sizeof(text), "SMTPUTF8 is required, but was not offered by %s", c->relay);
	for (i = k = 0; i < c->tx.nrcpt; i++) {
		size_t r = c->tx.rcpts[i];
		bool rcpt_utf8 = has_utf8(t->rcpts[r]);

		if ((sender_utf8 || t->utf8_headers || rcpt_utf8) && !c->caps.smtputf8) {
			set_result(&t->results[r], 553, "5.6.7", text, c->relay);
			continue;
		}
		c->tx.utf8 = c->tx.utf8 || rcpt_utf8;
		c->tx.rcpts[k++] = r;
	}
	c->tx.nrcpt = k;
	c->tx.utf8 = c->tx.utf8 && c->caps.smtputf8;
	c->tx.dsn = c->tp->pass_dsn && c->caps.dsn;
	if (c->tx.nrcpt == 0)
		return txn_end(c, true, !c->need_rset);
	c->tx.rset = c->need_rset;
	c->tx.nsteps = (c->tx.rset ? 1 : 0) + 1 + c->tx.nrcpt + 1;
	c->state = CS_TXN;
	set_timeouts(c, c->pool->set.cmd_timeout, c->pool->set.cmd_timeout);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	if (c->caps.pipelining)
		while (c->tx.sent < c->tx.nsteps)
			send_step(c);
	else
		send_step(c);
	return true;
}

/* Reads and encodes content while the output is short; then the end of
 * data. A queue file that cannot be read ends the connection without the
 * end of data, so the server keeps nothing. Returns false when c is gone. */
static bool
content_fill(struct conn *c)
{
	static unsigned char raw[CONTENT_CHUNK];
	struct evbuffer *out = bufferevent_get_output(c->bev);
	struct deliv_txn *t = c->job->txn;
	struct evbuffer_iovec v;
	unsigned char end[5];
	char text[256];
	size_t n, got;
	ssize_t r;

	while (!c->tx.content_end && evbuffer_get_length(out) < OUTPUT_LOW_WATER) {
		n = t->content_len - c->tx.content_off;
		if (n == 0) {
			evbuffer_add(out, end, dotstuff_end(&c->tx.ds, end));
			c->tx.content_end = true;
			break;
		}
		if (n > CONTENT_CHUNK)
			n = CONTENT_CHUNK;
		for (got = 0; got < n; got += (size_t)r) {
			r = pread(t->content_fd, raw + got, n - got,
				  (off_t)(t->content_offset + c->tx.content_off + got));
			if (r < 0 && errno == EINTR) {
				r = 0;
				continue;
			}
			if (r <= 0) {
				fmtbuf(text, sizeof(text), "cannot read the queue file: %s",
				       r < 0 ? strerror(errno) : "it ends early");
				msg_warn("%s: %s", c->relay, text);
				conn_give_up(c, 451, "4.3.0", text);
				return false;
			}
		}
		if (evbuffer_reserve_space(out, (ev_ssize_t)(2 * n + 2), &v, 1) < 1)
			msg_fatal("lmtp: out of memory for message content");
		v.iov_len = dotstuff(&c->tx.ds, raw, n, v.iov_base);
		if (evbuffer_commit_space(out, &v, 1) < 0)
			msg_panic("lmtp: evbuffer_commit_space failed");
		c->tx.content_off += n;
	}
	/* progress restarts the clock: a big message may take long in all */
	set_timeouts(c, c->pool->set.data_timeout, c->pool->set.data_timeout);
	return true;
}

/* The connection fails because of the server's reply r: "host X said:
 * 554 5.7.1 go away (in reply to LHLO command)". Returns false. */
static bool
fail_reply(struct conn *c, const struct reply *r, const char *verb, const char *ctx)
{
	char buf[ERR_MAX];

	fmtbuf(buf, sizeof(buf), "host %s %s: %d%s%s%s%s%s%s%s", c->relay, verb, r->code,
	       r->status[0] ? " " : "", r->status, r->text[0] ? " " : "", r->text,
	       ctx ? " (" : "", ctx ? ctx : "", ctx ? ")" : "");
	conn_fail(c, buf);
	return false;
}

/* A reply to RSET, MAIL, RCPT or DATA. Returns false when c is gone. */
static bool
txn_reply(struct conn *c, const struct reply *r)
{
	size_t i = c->tx.replied++, off = c->tx.rset ? 1 : 0, k;
	bool ok = r->code / 100 == 2, data = i > off + c->tx.nrcpt;
	struct reply r552;

	/* RFC 5321 4.2: RSET, MAIL and RCPT succeed with 2xx, DATA with 354;
	 * anything else but 4xx and 5xx means the server lost track (or an
	 * extra reply under pipelining): taken for a success it could mark
	 * recipients delivered that were never sent, so the connection goes
	 * and they are tried again */
	if (!(data ? r->code == 354 : ok) && r->code / 100 != 4 && r->code / 100 != 5)
		return fail_reply(c, r, "said", i < off ? "in reply to RSET command, a protocol error" :
				  i == off ? "in reply to MAIL FROM command, a protocol error" :
				  !data ? "in reply to RCPT TO command, a protocol error" :
				  "in reply to DATA command, a protocol error");
	if (i > off && !data && r->code == 552) {
		/* RFC 5321 4.5.3.1.10: 552 to RCPT from old servers means
		 * "too many recipients", to be tried again */
		r552 = *r;
		r552.code = 452;
		if (r552.status[0] == '5')
			r552.status[0] = '4';
		r = &r552;
	}
	if (i < off) {
		if (!ok)
			return fail_reply(c, r, "said", "in reply to RSET command");
	} else if (i == off) {
		if (!ok) {
			c->tx.mail_failed = true;
			for (k = 0; k < c->tx.nrcpt; k++)
				reply_result(c, c->tx.rcpts[k], r);
			if (!c->caps.pipelining)
				return txn_end(c, true, true);
		}
	} else if (i <= off + c->tx.nrcpt) {
		k = c->tx.rcpts[i - off - 1];
		if (c->tx.mail_failed)
			;
		else if (ok)
			c->tx.acc[c->tx.nacc++] = k;
		else
			reply_result(c, k, r);
		if (!c->caps.pipelining && i == off + c->tx.nrcpt && c->tx.nacc == 0)
			return txn_end(c, true, false);
	} else {
		if (r->code == 354) {
			if (c->tx.nacc == 0)       /* nothing to send: the server lost track */
				return txn_end(c, false, false);
			c->state = CS_CONTENT;
			/* SMTP lines past the limit are broken; LMTP to our own
			 * nodes keeps the message as it came */
			dotstuff_init(&c->tx.ds, c->tp->reply_per_rcpt ? 0 :
				      (size_t)c->pool->set.smtp_line_length_limit);
			return content_fill(c);
		}
		for (k = 0; k < c->tx.nacc; k++)
			reply_result(c, c->tx.acc[k], r);
		return txn_end(c, true, false);
	}
	if (c->tx.sent < c->tx.nsteps && c->tx.sent == c->tx.replied)
		send_step(c);
	return true;
}

static void
send_hello(struct conn *c)
{
	evbuffer_add_printf(bufferevent_get_output(c->bev), "%s %s\r\n",
			    c->helo_sent ? "HELO" : c->tp->hello, c->pool->helo_name);
	if (c->job != NULL)
		c->job->hello_usec = metrics_now();
	memset(&c->caps, 0, sizeof(c->caps));
	c->state = CS_LHLO;
}

static enum tls_level
conn_tls_level(const struct conn *c)
{
	if (!c->tp->starttls || c->plain)
		return TLS_NONE;
	return c->tls_level >= 0 ? (enum tls_level)c->tls_level : c->pool->set.smtp_tls_level;
}

/* The server answered LHLO/EHLO/HELO: STARTTLS first when it applies, then
 * the transaction. Returns false when c is gone. */
static bool
after_hello(struct conn *c)
{
	enum tls_level lv = conn_tls_level(c);
	char buf[ERR_MAX];

	if (!c->tls_on && lv != TLS_NONE) {
		if (c->caps.starttls && c->pool->tls_ctx != NULL) {
			evbuffer_add(bufferevent_get_output(c->bev), "STARTTLS\r\n", 10);
			c->state = CS_STARTTLS;
			return true;
		}
		if (lv >= TLS_ENCRYPT) {
			fmtbuf(buf, sizeof(buf), "TLS is required, but was not offered by host %s",
			       c->relay);
			conn_fail(c, buf);
			return false;
		}
	}
	return conn_begin_txn(c);
}

/*
 * STARTTLS was accepted but TLS could not be set up (why says how): at
 * level may the same address gets one new connection without STARTTLS,
 * and the transaction goes there in plaintext. Returns false when the
 * level asks for TLS (or this already was the plaintext retry): the
 * caller fails the connection as usual.
 */
static bool
tls_fallback(struct conn *c, const char *why)
{
	struct job *j = c->job;
	struct sockaddr_storage ss;

	if (j == NULL || c->plain || conn_tls_level(c) != TLS_MAY)
		return false;
	msg_warn("%s; retrying %s without STARTTLS, in plaintext (smtp_tls_security_level may)",
		 why, c->relay);
	memcpy(&ss, &c->addr, sizeof(ss));
	conn_close_socket(c);
	c->reused = false;
	c->need_rset = false;
	if (conn_connect(c, &ss) < 0) {         /* j->err says why */
		mark_dead(c->pool, c->relay, j->naddrs > 1, j->err);
		conn_try(c);
		return true;
	}
	c->plain = true;
	return true;
}

/* 220 to STARTTLS: the session goes through a TLS filter from here on.
 * Returns false when c is gone. */
static bool
start_tls(struct conn *c)
{
	struct bufferevent *tbev;
	unsigned char bin[16];
	char buf[ERR_MAX];
	SSL *ssl;

	if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0) {
		/* bytes after the 220 would be read as if they came over TLS */
		fmtbuf(buf, sizeof(buf), "host %s sent data after its reply to STARTTLS", c->relay);
		if (!tls_fallback(c, buf))
			conn_fail(c, buf);
		return false;
	}
	if ((ssl = SSL_new(c->pool->tls_ctx)) == NULL) {
		fmtbuf(buf, sizeof(buf), "cannot start TLS with %s: out of memory", c->relay);
		if (!tls_fallback(c, buf))
			conn_fail(c, buf);
		return false;
	}
	if (c->peer[0] != '\0' && inet_pton(AF_INET, c->peer, bin) != 1 &&
	    inet_pton(AF_INET6, c->peer, bin) != 1)
		SSL_set_tlsext_host_name(ssl, c->peer);
	if (conn_tls_level(c) == TLS_VERIFY) {
		/* the certificate must name the host we looked up (the MX host) */
		SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (c->peer[0] == '\0' || SSL_set1_host(ssl, c->peer) != 1) {
			SSL_free(ssl);
			fmtbuf(buf, sizeof(buf), "cannot verify %s: no host name", c->relay);
			conn_fail(c, buf);
			return false;
		}
	}
	tbev = bufferevent_openssl_filter_new(c->pool->base, c->bev, ssl,
					      BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (tbev == NULL) {
		SSL_free(ssl);
		fmtbuf(buf, sizeof(buf), "cannot start TLS with %s", c->relay);
		if (!tls_fallback(c, buf))
			conn_fail(c, buf);
		return false;
	}
	c->bev = tbev;
	bufferevent_setcb(tbev, on_read, on_write, on_event, c);
	bufferevent_setwatermark(tbev, EV_WRITE, OUTPUT_LOW_WATER / 2, 0);
	set_timeouts(c, c->pool->set.cmd_timeout, c->pool->set.cmd_timeout);
	bufferevent_enable(tbev, EV_READ | EV_WRITE);
	c->state = CS_HANDSHAKE;
	return true;
}

/* The handshake completed: check the peer as the level asks, then EHLO
 * again (RFC 3207 4.2: what was learned before TLS is forgotten). */
static void
tls_established(struct conn *c)
{
	SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
	long vr = SSL_get_verify_result(ssl);
	bool verify = conn_tls_level(c) == TLS_VERIFY;
	bool verified = verify && vr == X509_V_OK && SSL_get0_peer_certificate(ssl) != NULL;
	char buf[ERR_MAX];

	metrics_tls_handshake(MTLS_CLIENT, SSL_get_version(ssl), true);
	if (verify && !verified) {
		fmtbuf(buf, sizeof(buf), "server certificate not verified for %s: %s", c->relay,
		       SSL_get0_peer_certificate(ssl) == NULL ? "no certificate" :
		       X509_verify_cert_error_string(vr));
		conn_fail(c, buf);
		return;
	}
	snprintf(c->tls, sizeof(c->tls), "%s/%s/%s", SSL_get_version(ssl),
		 SSL_get_cipher_name(ssl), verified ? "verified" : "unverified");
	c->tls_on = true;
	send_hello(c);
}

/*
 * A probe's LHLO was answered: the endpoint is up. It is taken off the
 * dead list (deliveries try it in its turn again), the connection ends
 * with QUIT, and the result goes out from the loop. Returns false: c is
 * gone.
 */
static bool
probe_end(struct conn *c)
{
	struct job *j = c->job;
	struct epstate *s;

	j->pres.up = true;
	j->pres.latency_usec = metrics_now() - j->hello_usec;
	j->pres.caps = c->caps;
	j->pres.error[0] = '\0';
	snprintf(j->pres.relay, sizeof(j->pres.relay), "%s", c->relay);
	if ((s = epstate(c->pool, c->relay, false)) != NULL)
		s->dead_until = 0;
	if ((s = epstate(c->pool, j->epname, false)) != NULL)
		s->dead_until = 0;
	c->job = NULL;
	c->state = CS_IDLE;
	conn_quit(c);
	job_finish(j, 250, "2.0.0", "");
	conn_free(c);
	return false;
}

/* Returns false when c is gone. */
static bool
handle_reply(struct conn *c, const struct reply *r)
{
	char buf[ERR_MAX];

	switch (c->state) {
	case CS_GREETING:
		if (r->code != 220)
			return fail_reply(c, r, "refused to talk to me", NULL);
		send_hello(c);
		return true;
	case CS_LHLO:
		if (r->code / 100 != 2) {
			if (c->tp->helo_fallback && !c->helo_sent && r->code / 100 == 5) {
				c->helo_sent = true;    /* RFC 5321 3.2: an old server */
				send_hello(c);
				return true;
			}
			fmtbuf(buf, sizeof(buf), "in reply to %s command",
			       c->helo_sent ? "HELO" : c->tp->hello);
			return fail_reply(c, r, "said", buf);
		}
		if (!c->helo_sent && c->pool->set.hello_caps != NULL && c->job != NULL &&
		    c->job->ep != NULL)
			c->pool->set.hello_caps(c->job->ep, &c->caps, c->pool->set.hello_caps_arg);
		if (c->job != NULL && c->job->probe != NULL)
			return probe_end(c);
		return after_hello(c);
	case CS_STARTTLS:
		if (r->code == 220)
			return start_tls(c);
		if (conn_tls_level(c) >= TLS_ENCRYPT)
			return fail_reply(c, r, "said", "in reply to STARTTLS command");
		/* may: on in plaintext, on this connection (RFC 3207 4) */
		msg_warn("host %s refused STARTTLS: %d%s%s%s%s; delivering in plaintext "
			 "(smtp_tls_security_level may)", c->relay, r->code, r->status[0] ? " " : "",
			 r->status, r->text[0] ? " " : "", r->text);
		return conn_begin_txn(c);
	case CS_TXN:
		c->answered = true;
		return txn_reply(c, r);
	case CS_CONTENT:
		c->answered = true;
		if (!c->tx.content_end || c->tx.nacc_done >= c->tx.nacc)
			return fail_reply(c, r, "said", "while sending message body");
		if (c->tp->reply_per_rcpt)
			reply_result(c, c->tx.acc[c->tx.nacc_done++], r);
		else    /* SMTP: one reply speaks for every accepted recipient */
			while (c->tx.nacc_done < c->tx.nacc)
				reply_result(c, c->tx.acc[c->tx.nacc_done++], r);
		if (c->tx.nacc_done == c->tx.nacc)
			return txn_end(c, true, true);
		return true;
	default:
		snprintf(buf, sizeof(buf), "unexpected reply from %s while %s", c->relay, phase(c));
		conn_fail(c, buf);
		return false;
	}
}

static void
on_read(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in;
	struct reply r;
	const char *why;
	char buf[ERR_MAX];
	size_t len;
	ssize_t n;
	unsigned char *p;

	/* the buffer is looked up each time: STARTTLS replaces the bufferevent */
	while ((len = evbuffer_get_length(in = bufferevent_get_input(c->bev))) > 0) {
		if (c->state == CS_IDLE) {
			/* between transactions a server only speaks to say it
			 * is closing (421), or when confused: drop it either way */
			conn_free(c);
			return;
		}
		if (len > REPLY_LINE_MAX * REPLY_LINES_MAX)
			len = REPLY_LINE_MAX * REPLY_LINES_MAX;
		p = evbuffer_pullup(in, (ev_ssize_t)len);
		n = reply_parse((const char *)p, len, &r, &why);
		if (n == 0)
			return;
		if (n < 0) {
			snprintf(buf, sizeof(buf), "malformed reply from %s while %s: %s",
				 c->relay, phase(c), why);
			conn_fail(c, buf);
			return;
		}
		if (c->state == CS_LHLO && !c->helo_sent && r.code / 100 == 2)
			ehlo_parse((const char *)p, (size_t)n, &c->caps);
		evbuffer_drain(in, (size_t)n);
		if (!handle_reply(c, &r))
			return;
	}
}

static void
on_write(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	if (c->state == CS_CONTENT && !c->tx.content_end)
		(void)content_fill(c);
}

static const char *
tls_error(struct bufferevent *bev)
{
	static char buf[256];
	unsigned long e = bufferevent_get_openssl_error(bev);

	if (e == 0)
		return "connection closed";
	ERR_error_string_n(e, buf, sizeof(buf));
	while (bufferevent_get_openssl_error(bev) != 0)
		;
	return buf;
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	char buf[ERR_MAX];
	int err = EVUTIL_SOCKET_ERROR();

	if ((what & BEV_EVENT_CONNECTED) && c->state == CS_HANDSHAKE) {
		tls_established(c);
		return;
	}
	if (what & BEV_EVENT_CONNECTED) {
		c->state = CS_GREETING;
		set_timeouts(c, c->pool->set.cmd_timeout, c->pool->set.cmd_timeout);
		bufferevent_enable(c->bev, EV_READ | EV_WRITE);
		return;
	}
	if (c->state == CS_IDLE) {
		if (what & BEV_EVENT_TIMEOUT)
			conn_quit(c);
		conn_free(c);
		return;
	}
	if (c->state == CS_HANDSHAKE)
		metrics_tls_handshake(MTLS_CLIENT, SSL_get_version(bufferevent_openssl_get_ssl(bev)),
				      false);
	if (c->state == CS_CONNECTING)
		snprintf(buf, sizeof(buf), "connect to %s: %s", c->relay,
			 (what & BEV_EVENT_TIMEOUT) ? "Connection timed out" :
			 err ? strerror(err) : "Connection failed");
	else if (what & BEV_EVENT_TIMEOUT)
		snprintf(buf, sizeof(buf), "timeout with %s while %s", c->relay, phase(c));
	else if (c->state == CS_HANDSHAKE)
		fmtbuf(buf, sizeof(buf), "TLS handshake with %s failed: %s", c->relay,
		       tls_error(c->bev));
	else
		snprintf(buf, sizeof(buf), "lost connection with %s while %s", c->relay, phase(c));
	if (c->state == CS_HANDSHAKE && tls_fallback(c, buf))
		return;
	conn_fail(c, buf);
}

/* Starts connecting to ss; -1 with j->err set when it failed at once. */
static int
conn_connect(struct conn *c, const struct sockaddr_storage *ss)
{
	struct job *j = c->job;
	int fd;

	relay_name(c->tp, j->ep, ss, c->relay, sizeof(c->relay));
	snprintf(c->peer, sizeof(c->peer), "%s", j->ep != NULL ? j->ep->host : "");
	memcpy(&c->addr, ss, sizeof(c->addr));
	c->tls_on = false;
	c->plain = false;
	c->tls_level = j->ep != NULL ? j->ep->tls : -1;
	c->helo_sent = false;
	c->tls[0] = '\0';
	fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || (connect(fd, (const struct sockaddr *)ss,
			       (socklen_t)dns_addr_len(ss)) < 0 && errno != EINPROGRESS)) {
		snprintf(j->err, sizeof(j->err), "connect to %s: %s", c->relay, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if ((c->bev = bufferevent_socket_new(c->pool->base, fd, BEV_OPT_CLOSE_ON_FREE)) == NULL)
		msg_fatal("lmtp: cannot create a bufferevent");
	bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, OUTPUT_LOW_WATER / 2, 0);
	c->state = CS_CONNECTING;
	/* the connect timeout is the write timeout until it completes */
	set_timeouts(c, c->pool->set.connect_timeout, c->pool->set.connect_timeout);
	if (bufferevent_socket_connect(c->bev, NULL, 0) < 0)
		msg_fatal("lmtp: bufferevent_socket_connect failed");
	return 0;
}

/* Orders the endpoints: those alive in list order, then the dead ones. */
static void
job_start_eps(struct job *j)
{
	char name[EPKEY_MAX];
	size_t i, n = 0;
	int pass;

	free(j->order);
	j->order = xcalloc(j->neps, sizeof(*j->order));
	for (pass = 0; pass < 2; pass++)
		for (i = 0; i < j->neps; i++) {
			endpoint_format(&j->eps[i], name, sizeof(name));
			if (is_dead(j->pool, name) == (pass == 1))
				j->order[n++] = i;
		}
	j->next_ep = j->checked_to = 0;
	j->ep = NULL;
	j->naddrs = j->next_addr = 0;
}

/*
 * The name of an address in results, logs and the dead-endpoint table
 * (one form for all three, so a failed address is found again): LMTP
 * "127.0.0.1:24"; SMTP Postfix's "mx1.remote.test[127.0.0.2]:25".
 */
static void
relay_name(const struct transport *tp, const struct endpoint *ep,
	   const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];
	unsigned port;

	if (tp != &transports[EP_SMTP] || ep == NULL) {
		dns_addr_format(ss, buf, len);
		return;
	}
	/* sin_port and sin6_port sit at the same offset */
	port = ntohs(((const struct sockaddr_in *)ss)->sin_port);
	dns_addr_ip(ss, ip, sizeof(ip));
	fmtbuf(buf, len, "%s[%s]:%u", ep->host, ip, port);
}

static unsigned short
ep_port(const struct client_pool *p, const struct endpoint *ep)
{
	return ep->port != 0 ? ep->port : p->set.smtp_port;
}

/* The slot ends its transaction with one verdict for every recipient
 * without a result (a DNS verdict on the whole domain). */
static void
conn_give_up(struct conn *c, int code, const char *status, const char *text)
{
	struct job *j = c->job;

	c->job = NULL;
	job_finish(j, code, status, text);
	conn_free(c);
}

/*
 * The answer for an smtp:DOMAIN endpoint: its MX hosts (or the domain
 * itself when it has none) take its place, followed by the endpoints not
 * tried yet. A host that is this host ends the list there, with every
 * host of its preference or a worse one (RFC 5321 5.1): what is left is
 * better than us, or the mail would loop.
 */
static void
on_mx(const struct dns_mx_answer *a, void *arg)
{
	struct conn *c = arg;
	struct job *j = c->job;
	struct endpoint *eps, mxep = *j->ep;
	char text[ERR_MAX];
	size_t i, n = 0, nmx = a->nmx;

	c->dq = NULL;
	switch (a->status) {
	case DNS_MX_NXDOMAIN:
		fmtbuf(text, sizeof(text), "Host or domain name not found. Name service error "
		       "for name=%s type=MX: Host not found", mxep.host);
		conn_give_up(c, 550, "5.1.2", text);
		return;
	case DNS_MX_NULL:
		fmtbuf(text, sizeof(text), "Domain %s does not accept mail (nullMX)", mxep.host);
		conn_give_up(c, 556, "5.1.10", text);
		return;
	case DNS_MX_TEMPFAIL:
		fmtbuf(text, sizeof(text), "Host or domain name not found. Name service error "
		       "for name=%s type=MX: %s", mxep.host, a->err ? a->err : "try again");
		if (j->next_ep < j->neps) {
			/* a temporary failure: the endpoints after it get their turn */
			snprintf(j->err, sizeof(j->err), "%s", text);
			j->nother++;
			j->ep = NULL;
			conn_try(c);
			return;
		}
		conn_give_up(c, 451, "4.4.3", text);
		return;
	case DNS_MX_NONE:
	case DNS_MX_OK:
		break;
	}
	snprintf(j->mx_domain, sizeof(j->mx_domain), "%s", mxep.host);
	if (a->status == DNS_MX_OK) {
		for (i = 0; i < a->nmx; i++)
			if (strcasecmp(a->mx[i].host, c->pool->helo_name) == 0)
				break;
		if (i < a->nmx) {
			nmx = i;
			while (nmx > 0 && a->mx[nmx - 1].pref >= a->mx[i].pref)
				nmx--;
			if (nmx == 0) {
				fmtbuf(text, sizeof(text), "mail for %s loops back to myself",
				       mxep.host);
				conn_give_up(c, 554, "5.4.6", text);
				return;
			}
		}
	}
	eps = xcalloc((a->status == DNS_MX_OK ? nmx : 1) + j->neps, sizeof(*eps));
	if (a->status == DNS_MX_NONE) {
		eps[n] = mxep;
		eps[n].mx = false;
		eps[n++].mx_host = true;
	}
	for (i = 0; a->status == DNS_MX_OK && i < nmx; i++) {
		eps[n] = mxep;
		eps[n].mx = false;
		eps[n].mx_host = true;
		eps[n].mx_pref = a->mx[i].pref;
		snprintf(eps[n].host, sizeof(eps[n].host), "%s", a->mx[i].host);
		n++;
	}
	for (i = j->next_ep; i < j->neps; i++)
		eps[n++] = j->eps[j->order[i]];
	free(j->eps);
	free(j->order);
	j->eps = eps;
	j->neps = n;
	j->order = xcalloc(n, sizeof(*j->order));
	for (i = 0; i < n; i++)
		j->order[i] = i;
	j->next_ep = j->checked_to = 0;
	j->ep = NULL;
	j->naddrs = j->next_addr = 0;
	conn_try(c);
}

static void
on_dns(const struct dns_answer *a, void *arg)
{
	struct conn *c = arg;
	struct job *j = c->job;
	struct sockaddr_storage live[DNS_ADDRS_MAX], dead[DNS_ADDRS_MAX], sorted[DNS_ADDRS_MAX];
	char name[RELAY_MAX];
	size_t i, k, nlive = 0, ndead = 0;
	struct epstate *st;

	c->dq = NULL;
	if (a->error) {
		fmtbuf(j->err, sizeof(j->err), "connect to %s:%u: %s", j->ep->host,
		       ep_port(c->pool, j->ep), a->err);
		j->ep_notfound = a->notfound;
		conn_try(c);
		return;
	}
	/* round robin: each lookup starts one address further, in an order
	 * of our own (a server that rotates its answers, as dnsmasq does,
	 * would otherwise cancel the rotation out: always the same first) */
	snprintf(name, sizeof(name), "dns:%s", j->ep->host);
	st = epstate(c->pool, name, true);
	memcpy(sorted, a->addrs, a->naddrs * sizeof(sorted[0]));
	qsort(sorted, a->naddrs, sizeof(sorted[0]), dns_addr_cmp);
	for (i = 0; i < a->naddrs; i++) {
		k = (st->rr + i) % a->naddrs;
		memcpy(&live[nlive], &sorted[k], sizeof(live[0]));
		dns_addr_set_port(&live[nlive], ep_port(c->pool, j->ep));
		relay_name(c->tp, j->ep, &live[nlive], name, sizeof(name));
		if (is_dead(c->pool, name))
			memcpy(&dead[ndead++], &live[nlive], sizeof(live[0]));
		else
			nlive++;
	}
	st->rr++;
	memcpy(j->addrs, live, nlive * sizeof(live[0]));
	memcpy(j->addrs + nlive, dead, ndead * sizeof(dead[0]));
	j->naddrs = nlive + ndead;
	j->next_addr = 0;
	conn_try(c);
}

/* Fills j->addrs for ep without DNS; false when DNS is needed. */
static bool
ep_addresses(struct job *j, const struct endpoint *ep)
{
	struct sockaddr_un *su = (struct sockaddr_un *)&j->addrs[0];

	memset(&j->addrs[0], 0, sizeof(j->addrs[0]));
	j->naddrs = 1;
	if (ep->kind == EP_UNIX) {
		su->sun_family = AF_UNIX;
		snprintf(su->sun_path, sizeof(su->sun_path), "%s", ep->path);
		return true;
	}
	if (dns_addr_numeric(ep->host, ep_port(j->pool, ep), &j->addrs[0]) == 0)
		return true;
	j->naddrs = 0;
	if (!ep->literal)
		return false;
	fmtbuf(j->err, sizeof(j->err), "connect to %s: bad address", j->epname);
	return true;
}

/* ---- our own addresses: the mail loop ---- */

/* One of the addresses of the endpoint being tried (j->addrs) is ours. */
static bool
any_self(const struct job *j)
{
	size_t i;

	for (i = 0; i < j->naddrs; i++)
		if (self_addrs_has(&j->pool->self, &j->addrs[i]))
			return true;
	return false;
}

/* An MX host is ourselves: it and every MX host after it, of its
 * preference or a worse one, are not tried (RFC 5321 5.1). */
static void
skip_self(struct job *j)
{
	j->looped = true;
	while (j->next_ep < j->neps && j->eps[j->order[j->next_ep]].mx_host)
		j->next_ep++;
	j->ep = NULL;
	j->naddrs = j->next_addr = 0;
}

static void on_group_dns(const struct dns_answer *a, void *arg);

/* Looks up the next host of the group being checked, or ends the check. */
static void
group_next(struct conn *c)
{
	struct job *j = c->job;

	if (j->gc_next >= j->checked_to) {
		conn_try(c);
		return;
	}
	c->state = CS_RESOLVING;
	c->dq = dns_lookup(c->pool->dns, j->eps[j->order[j->gc_next++]].host, on_group_dns, c);
}

static void
on_group_dns(const struct dns_answer *a, void *arg)
{
	struct conn *c = arg;
	struct job *j = c->job;
	struct sockaddr_storage ss;
	size_t i;

	c->dq = NULL;
	for (i = 0; a->error == 0 && i < a->naddrs; i++) {
		memcpy(&ss, &a->addrs[i], sizeof(ss));
		dns_addr_set_port(&ss, ep_port(c->pool, &j->eps[j->order[j->gc_next - 1]]));
		if (self_addrs_has(&c->pool->self, &ss)) {
			skip_self(j);
			conn_try(c);
			return;
		}
	}
	/* a failed lookup is left to the host's own turn */
	group_next(c);
}

/*
 * Before the first of several MX hosts of one preference is tried, the
 * addresses of all of them are looked up: if one of them is ourselves,
 * none of them is tried (RFC 5321 5.1 drops the MX records of our
 * preference and worse ones), not just those after us in the random
 * order. True when a lookup is under way (its answer goes on).
 */
static bool
group_check(struct conn *c)
{
	struct job *j = c->job;
	const struct endpoint *ep = &j->eps[j->order[j->next_ep]];
	size_t end = j->next_ep + 1;

	if (!ep->mx_host || j->next_ep < j->checked_to)
		return false;
	while (end < j->neps && j->eps[j->order[end]].mx_host &&
	       j->eps[j->order[end]].mx_pref == ep->mx_pref)
		end++;
	j->checked_to = end;
	if (end - j->next_ep < 2 || c->pool->dns == NULL)
		return false;
	j->gc_next = j->next_ep;
	group_next(c);
	return true;
}

/*
 * Moves the slot c on to the transaction's next address, or the next
 * endpoint; when there is none left, the recipients without a result get
 * 451 4.4.1 and the slot goes.
 */
static void
conn_try(struct conn *c)
{
	struct job *j = c->job;
	struct client_pool *p = c->pool;
	char err[ERR_MAX];
	size_t i;

	for (i = 0; j->txn != NULL && i < j->txn->nrcpt && j->txn->results[i].code != 0; i++)
		;
	if (j->txn != NULL && i == j->txn->nrcpt) {     /* every recipient has its answer */
		c->job = NULL;
		job_finish(j, 451, "4.3.0", "");
		conn_free(c);
		return;
	}
	if (j->order == NULL)
		job_start_eps(j);
	for (;;) {
		if (j->ep != NULL && j->next_addr < j->naddrs) {
			const struct sockaddr_storage *ss = &j->addrs[j->next_addr++];

			if (j->next_addr == 1 && j->ep->mx_host && any_self(j)) {
				/* RFC 5321 5.1: this MX host is ourselves (one of
				 * its addresses is); the ones after it (no better
				 * preference) are not tried */
				skip_self(j);
				continue;
			}
			if (conn_connect(c, ss) == 0)
				return;
			mark_dead(p, c->relay, j->naddrs > 1, j->err);
			continue;
		}
		if (j->ep != NULL) {
			mark_dead(p, j->epname, true, j->err);
			if (j->ep_notfound && j->ep->mx_host)
				j->nnotfound++;
			else
				j->nother++;
			j->ep = NULL;
		}
		j->ep_notfound = false;
		if (j->next_ep >= j->neps)
			break;
		if (group_check(c))
			return;
		j->ep = &j->eps[j->order[j->next_ep++]];
		endpoint_format(j->ep, j->epname, sizeof(j->epname));
		j->next_addr = 0;
		if (!j->ep->mx && ep_addresses(j, j->ep))
			continue;
		if (p->dns == NULL && (p->dns = dns_new(p->base, p->dns_servers, err,
							sizeof(err))) == NULL) {
			fmtbuf(j->err, sizeof(j->err), "connect to %s: %s", j->epname, err);
			continue;
		}
		c->state = CS_RESOLVING;
		if (j->ep->mx)
			c->dq = dns_mx_lookup(p->dns, j->ep->host, on_mx, c);
		else
			c->dq = dns_lookup(p->dns, j->ep->host, on_dns, c);
		return;
	}
	c->job = NULL;
	if (j->looped && j->nnotfound == 0 && j->nother == 0) {
		/* the best MX host is ourselves (as Postfix says it) */
		fmtbuf(j->err, sizeof(j->err), "mail for %s loops back to myself", j->mx_domain);
		job_finish(j, 554, "5.4.6", j->err);
	} else if (j->nnotfound > 0 && j->nother == 0)
		/* RFC 5321 5.1: the domain's mail hosts (or the domain itself,
		 * without MX records) have no address at all: no retry will
		 * find one (Postfix: "Host or domain name not found") */
		job_finish(j, 550, "5.4.4", j->err);
	else
		job_finish(j, 451, "4.4.1", j->err[0] ? j->err : "no endpoint");
	conn_free(c);
}

/* Gives waiting transactions an idle connection or a new slot. */
static void
dest_dispatch(struct client_pool *p, struct dest *d)
{
	struct conn *c;
	struct job *j;

	while ((j = d->head) != NULL) {
		for (c = d->conns; c != NULL; c = c->next)
			if (c->state == CS_IDLE)
				break;
		if (c == NULL && d->nconn >= (unsigned)(d->tp == &transports[EP_SMTP] ?
		    p->set.smtp_per_dest_concurrency : p->set.per_dest_concurrency))
			return;
		d->head = j->next;
		if (d->head == NULL)
			d->tail = NULL;
		if (c != NULL) {
			c->job = j;
			conn_begin_txn(c);
			continue;
		}
		c = xcalloc(1, sizeof(*c));
		c->pool = p;
		c->dest = d;
		c->tp = d->tp;
		c->job = j;
		c->next = d->conns;
		if (d->conns)
			d->conns->prev = c;
		d->conns = c;
		d->nconn++;
		conn_try(c);
	}
}

static void
on_kick(evutil_socket_t fd, short what, void *arg)
{
	struct client_pool *p = arg;
	struct dest *d;

	for (d = p->dests; d != NULL; d = d->next)
		if (d->head != NULL)
			dest_dispatch(p, d);
}

/* ---- the pool ---- */

static SSL_CTX *
client_tls_ctx(const char *ca_file)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	char buf[256];

	if (ctx == NULL) {
		msg_warn("smtp: cannot create a TLS context: STARTTLS is off");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* the chain is checked after the handshake, as the level asks */
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	if (ca_file != NULL && ca_file[0] != '\0') {
		if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
			ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
			msg_warn("smtp_tls_ca_file %s: %s: no server can be verified", ca_file, buf);
		}
	} else {
		SSL_CTX_set_default_verify_paths(ctx);
	}
	ERR_clear_error();
	return ctx;
}

struct client_pool *
client_pool_new(struct event_base *base, const struct client_settings *s)
{
	struct client_pool *p = xcalloc(1, sizeof(*p));
	char host[256];

	p->base = base;
	p->set = *s;
#define DEFAULT(f, v) if (p->set.f <= 0) p->set.f = (v)
	DEFAULT(per_dest_concurrency, 20);
	DEFAULT(smtp_per_dest_concurrency, 20);
	DEFAULT(smtp_port, 25);
	DEFAULT(connect_timeout, 30);
	DEFAULT(cmd_timeout, 300);
	DEFAULT(data_timeout, 600);
	DEFAULT(idle_timeout, 10);
#undef DEFAULT
	if (p->set.dead_endpoint_seconds < 0)
		p->set.dead_endpoint_seconds = 60;
	if (s->helo_name != NULL && s->helo_name[0] != '\0' && no_controls(s->helo_name))
		p->helo_name = xstrdup(s->helo_name);
	else if (gethostname(host, sizeof(host)) == 0 && memchr(host, '\0', sizeof(host)))
		p->helo_name = xstrdup(host);
	else
		p->helo_name = xstrdup("localhost");
	p->dns_servers = s->dns_servers ? xstrdup(s->dns_servers) : NULL;
	p->set.helo_name = p->helo_name;
	p->set.dns_servers = p->dns_servers;
	/* also with level none: smtp_tls_policy_map may ask for TLS per destination */
	p->tls_ctx = client_tls_ctx(s->smtp_tls_ca_file);
	p->set.smtp_tls_ca_file = NULL;
	self_addrs_init(&p->self, s->self, s->self != NULL ? s->nself : 0);
	p->set.self = NULL;
	p->set.nself = 0;
	p->done_ev = event_new(base, -1, 0, on_done, p);
	p->kick_ev = event_new(base, -1, 0, on_kick, p);
	if (p->done_ev == NULL || p->kick_ev == NULL)
		msg_fatal("lmtp: cannot create events");
	return p;
}

void
client_pool_free(struct client_pool *p)
{
	struct dest *d;
	struct conn *c;
	struct job *j, *done;

	if (p == NULL)
		return;
	while ((d = p->dests) != NULL) {
		p->dests = d->next;
		while ((c = d->conns) != NULL) {
			if ((j = c->job) != NULL) {
				c->job = NULL;
				job_finish(j, 451, "4.3.0", "delivery client shutting down");
			}
			conn_quit(c);
			conn_close_socket(c);
			d->conns = c->next;
			free(c);
		}
		while ((j = d->head) != NULL) {
			d->head = j->next;
			job_finish(j, 451, "4.3.0", "delivery client shutting down");
		}
		free(d->name);
		free(d);
	}
	dns_free(p->dns);
	SSL_CTX_free(p->tls_ctx);
	while (p->states) {
		struct epstate *s = p->states;

		p->states = s->next;
		free(s);
	}
	done = p->done_head;
	event_free(p->done_ev);
	event_free(p->kick_ev);
	free(p->helo_name);
	self_addrs_free(&p->self);
	free(p->dns_servers);
	free(p);
	while ((j = done) != NULL) {
		struct deliv_txn *t = j->txn;

		done = j->next;
		if (j->probe != NULL)
			j->probe(&j->pres, j->probe_arg);
		free(j);
		if (t != NULL)
			t->done(t, t->arg);
	}
}

/* Queues job j for destination name (made on first use, with the transport
 * of proto); connections start from the loop, so nothing happens in here. */
static void
enqueue(struct client_pool *p, const char *name, enum endpoint_proto proto, struct job *j)
{
	struct dest *d;

	for (d = p->dests; d != NULL; d = d->next)
		if (strcmp(d->name, name) == 0)
			break;
	if (d == NULL) {
		d = xcalloc(1, sizeof(*d));
		d->name = xstrdup(name);
		d->tp = &transports[proto == EP_SMTP ? EP_SMTP : EP_LMTP];
		d->next = p->dests;
		p->dests = d;
	}
	if (d->tail)
		d->tail->next = j;
	else
		d->head = j;
	d->tail = j;
	schedule_kick(p);
}

void
client_deliver(struct client_pool *p, const char *dest, const struct endpoint *eps,
	     size_t neps, struct deliv_txn *txn)
{
	struct job *j = xcalloc(1, sizeof(*j));
	size_t i;

	j->pool = p;
	j->txn = txn;
	for (i = 0; i < txn->nrcpt; i++)
		memset(&txn->results[i], 0, sizeof(txn->results[i]));
	if (neps == 0 || txn->nrcpt == 0) {
		snprintf(j->err, sizeof(j->err), "no endpoint for destination %s", dest);
		job_finish(j, 451, "4.3.5", j->err);
		return;
	}
	j->eps = xcalloc(neps, sizeof(*eps));
	memcpy(j->eps, eps, neps * sizeof(*eps));
	j->neps = neps;
	enqueue(p, dest, eps[0].proto, j);
}

void
client_probe(struct client_pool *p, const struct endpoint *ep, client_probe_cb *cb, void *arg)
{
	struct job *j = xcalloc(1, sizeof(*j));
	char name[EPKEY_MAX + 8];

	j->pool = p;
	j->probe = cb;
	j->probe_arg = arg;
	j->eps = xcalloc(1, sizeof(*j->eps));
	j->eps[0] = *ep;
	j->neps = 1;
	endpoint_format(ep, j->pres.endpoint, sizeof(j->pres.endpoint));
	/* a destination of its own: never an idle delivery connection, never
	 * a place in the deliveries' queue */
	snprintf(name, sizeof(name), "probe %s", j->pres.endpoint);
	enqueue(p, name, ep->proto, j);
}
