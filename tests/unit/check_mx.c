/*
 * check_mx.c - unit tests for MX lookup: the answer reader dns_mx_parse()
 * (router/mx.c) on packets built here byte by byte, and dns_mx_lookup()
 * (router/dns.c) against a fake DNS server run in a thread of this process
 * on 127.0.0.1, which answers MX questions from a table. Nothing leaves the
 * loopback interface.
 */
#include "config.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/lib.h"
#include "router/router.h"

/* ---- packets ---- */

struct pkt {
	unsigned char b[8192];
	size_t len;
	unsigned an;
};

static void
put8(struct pkt *p, unsigned v)
{
	ck_assert_uint_lt(p->len, sizeof(p->b));
	p->b[p->len++] = (unsigned char)v;
}

static void
put16(struct pkt *p, unsigned v)
{
	put8(p, v >> 8 & 0xff);
	put8(p, v & 0xff);
}

/* "a.b" -> 1a1b0; "" and "." are the root */
static void
put_name(struct pkt *p, const char *name)
{
	const char *dot;
	size_t n;

	while (*name != '\0' && strcmp(name, ".") != 0) {
		dot = strchr(name, '.');
		n = dot ? (size_t)(dot - name) : strlen(name);
		put8(p, (unsigned)n);
		memcpy(p->b + p->len, name, n);
		p->len += n;
		name += n + (dot ? 1 : 0);
	}
	put8(p, 0);
}

static void
set_an(struct pkt *p)
{
	p->b[6] = (unsigned char)(p->an >> 8);
	p->b[7] = (unsigned char)(p->an & 0xff);
}

/* A response header with rcode and one MX question for qname. */
static void
start(struct pkt *p, const char *qname, unsigned rcode)
{
	memset(p, 0, sizeof(*p));
	put16(p, 0x1234);
	put8(p, 0x81);          /* response, recursion desired */
	put8(p, 0x80 | rcode);  /* recursion available */
	put16(p, 1);
	put16(p, 0);
	put16(p, 0);
	put16(p, 0);
	put_name(p, qname);
	put16(p, 15);
	put16(p, 1);
}

/* A record owned by the question's name (a pointer to offset 12);
 * rdata is written by the caller, then end_rr() sets its length. */
static size_t
begin_rr(struct pkt *p, unsigned type)
{
	put16(p, 0xc00c);
	put16(p, type);
	put16(p, 1);
	put16(p, 0);
	put16(p, 300);
	put16(p, 0);            /* rdlength, set by end_rr */
	p->an++;
	set_an(p);
	return p->len;
}

static void
end_rr(struct pkt *p, size_t rdata)
{
	size_t n = p->len - rdata;

	p->b[rdata - 2] = (unsigned char)(n >> 8);
	p->b[rdata - 1] = (unsigned char)(n & 0xff);
}

static void
add_mx(struct pkt *p, unsigned pref, const char *target)
{
	size_t rd = begin_rr(p, 15);

	put16(p, pref);
	put_name(p, target);
	end_rr(p, rd);
}

static enum dns_mx_status
parse(const struct pkt *p, struct dns_mx *mx, size_t max, size_t *n)
{
	/* an exact-size copy, so that the sanitizers see a read past the end */
	unsigned char *copy = malloc(p->len ? p->len : 1);
	enum dns_mx_status st;

	memcpy(copy, p->b, p->len);
	st = dns_mx_parse(copy, p->len, mx, max, n, NULL, NULL);
	free(copy);
	return st;
}

static unsigned
rnd_zero(void *arg)
{
	return 0;
}

static unsigned
rnd_real(void *arg)
{
	return arc4random();
}

/* ---- dns_mx_parse ---- */

START_TEST(test_two_preferences)
{
	struct pkt p;
	struct dns_mx mx[DNS_MX_MAX];
	size_t n = 99;

	start(&p, "example.test", 0);
	add_mx(&p, 20, "MX2.Example.TEST");
	add_mx(&p, 10, "mx1.example.test");
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_OK);
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(mx[0].pref, 10);
	ck_assert_str_eq(mx[0].host, "mx1.example.test");
	ck_assert_uint_eq(mx[1].pref, 20);
	ck_assert_str_eq(mx[1].host, "mx2.example.test");     /* lower-cased */
}
END_TEST

/* a target compressed against the question's name */
START_TEST(test_compressed_target)
{
	struct pkt p;
	struct dns_mx mx[DNS_MX_MAX];
	size_t n, rd;

	start(&p, "example.test", 0);
	rd = begin_rr(&p, 15);
	put16(&p, 5);
	put8(&p, 4);
	memcpy(p.b + p.len, "mail", 4);
	p.len += 4;
	put16(&p, 0xc00c);
	end_rr(&p, rd);
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_uint_eq(mx[0].pref, 5);
	ck_assert_str_eq(mx[0].host, "mail.example.test");
}
END_TEST

START_TEST(test_equal_fixed)
{
	struct pkt p;
	struct dns_mx mx[DNS_MX_MAX];
	size_t n;

	start(&p, "example.test", 0);
	add_mx(&p, 10, "a.test");
	add_mx(&p, 20, "b.test");
	add_mx(&p, 10, "c.test");
	add_mx(&p, 20, "d.test");
	add_mx(&p, 10, "e.test");
	/* rnd NULL: the packet's order within a preference */
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_OK);
	ck_assert_uint_eq(n, 5);
	ck_assert_str_eq(mx[0].host, "a.test");
	ck_assert_str_eq(mx[1].host, "c.test");
	ck_assert_str_eq(mx[2].host, "e.test");
	ck_assert_str_eq(mx[3].host, "b.test");
	ck_assert_str_eq(mx[4].host, "d.test");
	/* a fake rnd that always says 0: Fisher-Yates from the end, each
	 * element swapped with the first of its run */
	ck_assert_int_eq(dns_mx_parse(p.b, p.len, mx, DNS_MX_MAX, &n, rnd_zero, NULL), DNS_MX_OK);
	ck_assert_uint_eq(n, 5);
	ck_assert_str_eq(mx[0].host, "c.test");
	ck_assert_str_eq(mx[1].host, "e.test");
	ck_assert_str_eq(mx[2].host, "a.test");
	ck_assert_str_eq(mx[3].host, "d.test");
	ck_assert_str_eq(mx[4].host, "b.test");
	ck_assert_uint_eq(mx[2].pref, 10);
	ck_assert_uint_eq(mx[3].pref, 20);
}
END_TEST

START_TEST(test_equal_shuffled)
{
	struct pkt p;
	struct dns_mx mx[DNS_MX_MAX];
	size_t n;
	int run, first_a = 0, first_b = 0;

	start(&p, "example.test", 0);
	add_mx(&p, 30, "z.test");
	add_mx(&p, 10, "a.test");
	add_mx(&p, 10, "b.test");
	for (run = 0; run < 200; run++) {
		ck_assert_int_eq(dns_mx_parse(p.b, p.len, mx, DNS_MX_MAX, &n, rnd_real, NULL),
				 DNS_MX_OK);
		ck_assert_uint_eq(n, 3);
		ck_assert_str_eq(mx[2].host, "z.test");
		if (strcmp(mx[0].host, "a.test") == 0) {
			ck_assert_str_eq(mx[1].host, "b.test");
			first_a++;
		} else {
			ck_assert_str_eq(mx[0].host, "b.test");
			ck_assert_str_eq(mx[1].host, "a.test");
			first_b++;
		}
	}
	ck_assert_int_gt(first_a, 0);
	ck_assert_int_gt(first_b, 0);
}
END_TEST

START_TEST(test_null_mx)
{
	struct pkt p;
	struct dns_mx mx[DNS_MX_MAX];
	size_t n = 99;

	start(&p, "nomail.test", 0);
	add_mx(&p, 0, ".");
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_NULL);
	ck_assert_uint_eq(n, 0);
	/* a lone root target is a null MX whatever its preference */
	start(&p, "nomail.test", 0);
	add_mx(&p, 10, "");
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_NULL);
	/* beside a real host (RFC 7505 forbids it) the root is skipped */
	start(&p, "mixed.test", 0);
	add_mx(&p, 0, ".");
	add_mx(&p, 10, "mx.mixed.test");
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(mx[0].host, "mx.mixed.test");
}
END_TEST

START_TEST(test_no_mx)
{
	struct pkt p;
	struct dns_mx mx[DNS_MX_MAX];
	size_t n = 99, rd;

	start(&p, "example.test", 0);
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_NONE);
	ck_assert_uint_eq(n, 0);
	/* a CNAME alone is no MX */
	rd = begin_rr(&p, 5);
	put_name(&p, "other.test");
	end_rr(&p, rd);
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_NONE);
	/* a CNAME, then the MX of its target: taken */
	add_mx(&p, 7, "mx.other.test");
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(mx[0].host, "mx.other.test");
}
END_TEST

START_TEST(test_rcodes)
{
	struct pkt p;
	struct dns_mx mx[DNS_MX_MAX];
	size_t n = 99;

	start(&p, "nosuch.test", 3);
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_NXDOMAIN);
	ck_assert_uint_eq(n, 0);
	start(&p, "broken.test", 2);    /* SERVFAIL */
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);
	start(&p, "broken.test", 5);    /* REFUSED */
	add_mx(&p, 10, "mx.test");
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);
	start(&p, "example.test", 0);
	add_mx(&p, 10, "mx.test");
	p.b[2] &= 0x7f;                 /* a query, not a response */
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);
	p.b[2] |= 0x80 | 0x02;          /* truncated (TC) */
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);
	ck_assert_uint_eq(n, 0);
}
END_TEST

/* every prefix of a good answer is malformed */
START_TEST(test_truncated)
{
	struct pkt p, q;
	struct dns_mx mx[DNS_MX_MAX];
	size_t n, len;

	start(&p, "example.test", 0);
	add_mx(&p, 10, "mx1.example.test");
	add_mx(&p, 20, "mx2.example.test");
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_OK);
	for (len = 0; len < p.len; len++) {
		q = p;
		q.len = len;
		n = 99;
		ck_assert_msg(parse(&q, mx, DNS_MX_MAX, &n) == DNS_MX_TEMPFAIL,
			      "prefix of %zu bytes", len);
		ck_assert_uint_eq(n, 0);
	}
}
END_TEST

START_TEST(test_malformed)
{
	struct pkt p;
	struct dns_mx mx[DNS_MX_MAX];
	size_t n, rd, i;

	/* a pointer to itself */
	start(&p, "example.test", 0);
	rd = begin_rr(&p, 15);
	put16(&p, 10);
	put16(&p, 0xc000 | (unsigned)p.len);
	end_rr(&p, rd);
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);

	/* a label, then a pointer back to that label */
	start(&p, "example.test", 0);
	rd = begin_rr(&p, 15);
	put16(&p, 10);
	put8(&p, 1);
	put8(&p, 'a');
	put16(&p, 0xc000 | (unsigned)(rd + 2));
	end_rr(&p, rd);
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);

	/* a pointer past the end */
	start(&p, "example.test", 0);
	rd = begin_rr(&p, 15);
	put16(&p, 10);
	put16(&p, 0xc000 | 0x3fff);
	end_rr(&p, rd);
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);

	/* an extended label type (0x40) */
	start(&p, "example.test", 0);
	rd = begin_rr(&p, 15);
	put16(&p, 10);
	put8(&p, 0x41);
	put8(&p, 'a');
	put8(&p, 0);
	end_rr(&p, rd);
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);

	/* rdata too short for a preference and a name */
	start(&p, "example.test", 0);
	rd = begin_rr(&p, 15);
	put16(&p, 10);
	end_rr(&p, rd);
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);

	/* a target running past its rdata */
	start(&p, "example.test", 0);
	add_mx(&p, 10, "mx.example.test");
	p.b[p.len - 20] -= 3;           /* rdlength (low byte) was 2 + 17 */
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);

	/* rdlength past the end of the packet */
	start(&p, "example.test", 0);
	add_mx(&p, 10, "mx.example.test");
	p.b[p.len - 21] = 0x10;         /* rdlength (high byte) */
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);

	/* a name longer than 255 bytes on the wire */
	start(&p, "example.test", 0);
	rd = begin_rr(&p, 15);
	put16(&p, 10);
	for (i = 0; i < 5; i++) {
		put8(&p, 60);
		memset(p.b + p.len, 'a', 60);
		p.len += 60;
	}
	put8(&p, 0);
	end_rr(&p, rd);
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);

	/* more answers announced than present */
	start(&p, "example.test", 0);
	add_mx(&p, 10, "mx.example.test");
	p.an = 2;
	set_an(&p);
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);

	/* trailing bytes after the records are ignored (EDNS and the like
	 * live in later sections this reader does not need) */
	start(&p, "example.test", 0);
	add_mx(&p, 10, "mx.example.test");
	put16(&p, 0xdead);
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_OK);
}
END_TEST

START_TEST(test_insane_hosts)
{
	struct pkt p;
	struct dns_mx mx[DNS_MX_MAX];
	size_t n;

	start(&p, "example.test", 0);
	add_mx(&p, 1, "mx_1.example.test");
	add_mx(&p, 2, "-mx.example.test");
	add_mx(&p, 3, "mx-.example.test");
	add_mx(&p, 4, "192.0.2.1");
	add_mx(&p, 5, "mx\n.example.test");
	add_mx(&p, 6, "mx .example.test");
	add_mx(&p, 7, "m\xc3\xa9.example.test");
	add_mx(&p, 50, "good-1.example.test");
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(mx[0].host, "good-1.example.test");
	ck_assert_uint_eq(mx[0].pref, 50);

	/* a dot inside a label is not a label boundary */
	start(&p, "example.test", 0);
	{
		size_t rd = begin_rr(&p, 15);

		put16(&p, 1);
		put8(&p, 4);
		memcpy(p.b + p.len, "a.bc", 4);
		p.len += 4;
		put8(&p, 0);
		end_rr(&p, rd);
	}
	/* MX records that are all unusable: defer, never the A record */
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_TEMPFAIL);
	ck_assert_uint_eq(n, 0);
}
END_TEST

START_TEST(test_too_many)
{
	struct pkt p;
	struct dns_mx mx[DNS_MX_MAX + 1];
	size_t n, i;
	char host[32];

	start(&p, "big.test", 0);
	for (i = 0; i < DNS_MX_MAX + 8; i++) {
		snprintf(host, sizeof(host), "mx%zu.big.test", i);
		add_mx(&p, (unsigned)(100 - i), host);
	}
	memset(mx, 0x55, sizeof(mx));
	ck_assert_int_eq(parse(&p, mx, DNS_MX_MAX, &n), DNS_MX_OK);
	ck_assert_uint_eq(n, DNS_MX_MAX);
	/* the lowest preferences are kept, in order */
	for (i = 0; i < DNS_MX_MAX; i++) {
		ck_assert_uint_eq(mx[i].pref, 100 - (DNS_MX_MAX + 7) + i);
		snprintf(host, sizeof(host), "mx%zu.big.test", DNS_MX_MAX + 7 - i);
		ck_assert_str_eq(mx[i].host, host);
	}
	ck_assert_uint_eq(mx[DNS_MX_MAX].pref, 0x5555);        /* untouched */

	/* a small max, ties at the cut: the first in the packet stay */
	start(&p, "big.test", 0);
	add_mx(&p, 10, "a.test");
	add_mx(&p, 5, "b.test");
	add_mx(&p, 10, "c.test");
	add_mx(&p, 10, "d.test");
	ck_assert_int_eq(parse(&p, mx, 2, &n), DNS_MX_OK);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(mx[0].host, "b.test");
	ck_assert_str_eq(mx[1].host, "a.test");
}
END_TEST

/* ---- the fake DNS server: MX answers from a table ---- */

enum behaviour { B_ANSWER, B_NODATA, B_SERVFAIL, B_REFUSED, B_BAD, B_SILENT };

struct zone {
	const char *name;
	enum behaviour b;
	unsigned prefs[4];
	const char *hosts[4];
};

static const struct zone zones[] = {
	{ "two.test", B_ANSWER, .prefs = { 20, 10 }, .hosts = { "mx2.two.test", "mx1.two.test" } },
	{ "null.test", B_ANSWER, .prefs = { 0 }, .hosts = { "." } },
	{ "nomx.test", .b = B_NODATA },
	{ "servfail.test", .b = B_SERVFAIL },
	{ "refused.test", .b = B_REFUSED },
	{ "bad.test", .b = B_BAD },
	{ "silent.test", .b = B_SILENT },
	/* "bücher.test" (IDNA) */
	{ "xn--bcher-kva.test", B_ANSWER, .prefs = { 5 }, .hosts = { "mx.xn--bcher-kva.test" } },
};

struct fakedns {
	int fd;
	unsigned short port;
	pthread_t thr;
	volatile bool stop;
	int queries;
};

static void *
dns_main(void *arg)
{
	struct fakedns *d = arg;
	struct pollfd pfd = { d->fd, POLLIN, 0 };
	unsigned char q[512];
	struct pkt r;
	char name[256];
	struct sockaddr_storage from;
	socklen_t flen;
	ssize_t n;
	size_t off, nl, i, rd;
	const struct zone *z;

	while (!d->stop) {
		if (poll(&pfd, 1, 50) != 1)
			continue;
		flen = sizeof(from);
		n = recvfrom(d->fd, q, sizeof(q), 0, (struct sockaddr *)&from, &flen);
		if (n < 17)
			continue;
		d->queries++;
		for (off = 12, nl = 0; off < (size_t)n && q[off] != 0 && nl + q[off] + 2 < sizeof(name);
		     off += q[off] + 1) {
			if (nl)
				name[nl++] = '.';
			memcpy(name + nl, q + off + 1, q[off]);
			nl += q[off];
		}
		name[nl] = '\0';
		off += 5;
		if (off > (size_t)n)
			continue;
		z = NULL;
		for (i = 0; i < sizeof(zones) / sizeof(zones[0]); i++)
			if (strcasecmp(name, zones[i].name) == 0)
				z = &zones[i];
		if (z != NULL && z->b == B_SILENT)
			continue;
		memset(&r, 0, sizeof(r));
		memcpy(r.b, q, off);
		r.len = off;
		r.b[2] = 0x81;
		r.b[3] = 0x80;
		memset(r.b + 6, 0, 6);
		if (z == NULL)
			r.b[3] |= 3;
		else if (z->b == B_SERVFAIL)
			r.b[3] |= 2;
		else if (z->b == B_REFUSED)
			r.b[3] |= 5;
		else if (z->b == B_BAD) {
			rd = begin_rr(&r, 15);
			put8(&r, 1);    /* rdata of one byte */
			end_rr(&r, rd);
		} else if (z->b == B_ANSWER)
			for (i = 0; i < 4 && z->hosts[i]; i++)
				add_mx(&r, z->prefs[i], z->hosts[i]);
		sendto(d->fd, r.b, r.len, 0, (struct sockaddr *)&from, flen);
	}
	return NULL;
}

static void
fakedns_start(struct fakedns *d)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);

	memset(d, 0, sizeof(*d));
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

/* ---- dns_mx_lookup ---- */

struct result {
	int calls;
	enum dns_mx_status status;
	char err[128];
	struct dns_mx mx[DNS_MX_MAX];
	size_t nmx;
	struct event_base *base;
};

static void
on_mx(const struct dns_mx_answer *a, void *arg)
{
	struct result *r = arg;

	r->calls++;
	r->status = a->status;
	snprintf(r->err, sizeof(r->err), "%s", a->err ? a->err : "(null)");
	r->nmx = a->nmx;
	memcpy(r->mx, a->mx, a->nmx * sizeof(a->mx[0]));
	event_base_loopbreak(r->base);
}

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopbreak(arg);
}

static void
run_for(struct event_base *base, int secs)
{
	struct timeval tv = { secs, 0 };
	struct event *t = evtimer_new(base, on_deadline, base);

	evtimer_add(t, &tv);
	event_base_dispatch(base);
	event_free(t);
}

static struct dns *
resolver(struct event_base *base, const struct fakedns *f)
{
	char servers[64], err[256];
	struct dns *d;

	snprintf(servers, sizeof(servers), "127.0.0.1:%u", f->port);
	d = dns_new(base, servers, err, sizeof(err));
	ck_assert_msg(d != NULL, "%s", err);
	return d;
}

/* Looks domain up and runs the loop until the callback (secs at most). */
static void
lookup(struct dns *d, struct result *r, const char *domain, int secs)
{
	struct event_base *base = r->base;

	memset(r, 0, sizeof(*r));
	r->base = base;
	r->status = (enum dns_mx_status)-1;
	dns_mx_lookup(d, domain, on_mx, r);
	ck_assert_int_eq(r->calls, 0);          /* never from inside the call */
	run_for(base, secs);
	ck_assert_msg(r->calls == 1, "%s: %d calls", domain, r->calls);
}

START_TEST(test_lookup)
{
	struct fakedns f;
	struct result r = { .base = event_base_new() };
	struct dns *d;

	fakedns_start(&f);
	d = resolver(r.base, &f);

	lookup(d, &r, "two.test", 5);
	ck_assert_int_eq(r.status, DNS_MX_OK);
	ck_assert_str_eq(r.err, "(null)");
	ck_assert_uint_eq(r.nmx, 2);
	ck_assert_str_eq(r.mx[0].host, "mx1.two.test");
	ck_assert_uint_eq(r.mx[0].pref, 10);
	ck_assert_str_eq(r.mx[1].host, "mx2.two.test");
	ck_assert_uint_eq(r.mx[1].pref, 20);

	lookup(d, &r, "null.test", 5);
	ck_assert_int_eq(r.status, DNS_MX_NULL);
	ck_assert_uint_eq(r.nmx, 0);

	lookup(d, &r, "nomx.test", 5);
	ck_assert_int_eq(r.status, DNS_MX_NONE);

	lookup(d, &r, "nosuch.test", 5);
	ck_assert_int_eq(r.status, DNS_MX_NXDOMAIN);
	ck_assert_str_eq(r.err, "Host or domain name not found");

	lookup(d, &r, "servfail.test", 5);
	ck_assert_int_eq(r.status, DNS_MX_TEMPFAIL);
	ck_assert_str_ne(r.err, "(null)");

	lookup(d, &r, "refused.test", 5);
	ck_assert_int_eq(r.status, DNS_MX_TEMPFAIL);

	lookup(d, &r, "bad.test", 5);
	ck_assert_int_eq(r.status, DNS_MX_TEMPFAIL);

	/* c-ares refuses a label over 63 bytes at once: still from the loop */
	lookup(d, &r, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.test", 5);
	ck_assert_int_eq(r.status, DNS_MX_TEMPFAIL);
	ck_assert_int_ge(f.queries, 7);

	/* a UTF-8 domain is asked by its A-label; one without any is not asked */
	lookup(d, &r, "B\xc3\xbc" "cher.test", 5);
	ck_assert_int_eq(r.status, DNS_MX_OK);
	ck_assert_uint_eq(r.nmx, 1);
	ck_assert_str_eq(r.mx[0].host, "mx.xn--bcher-kva.test");
	{
		int before = f.queries;

		/* a label that starts with a combining mark (U+0301): no IDNA
		 * name at all (UTS #46 4.1 V5) */
		lookup(d, &r, "\xcc\x81" "a.test", 5);
		ck_assert_int_eq(r.status, DNS_MX_NXDOMAIN);
		ck_assert_int_eq(f.queries, before);
	}

	dns_free(d);
	fakedns_stop(&f);
	event_base_free(r.base);
}
END_TEST

/* c-ares tries twice, 3 s then 6 s */
START_TEST(test_timeout)
{
	struct fakedns f;
	struct result r = { .base = event_base_new() };
	struct dns *d;

	fakedns_start(&f);
	d = resolver(r.base, &f);
	lookup(d, &r, "silent.test", 20);
	ck_assert_int_eq(r.status, DNS_MX_TEMPFAIL);
	ck_assert_str_eq(r.err, "timeout");
	ck_assert_int_ge(f.queries, 2);
	dns_free(d);
	fakedns_stop(&f);
	event_base_free(r.base);
}
END_TEST

/* MX and address queries share one handle type and dns_cancel() */
START_TEST(test_cancel)
{
	struct fakedns f;
	struct result r1 = { 0 }, r2 = { 0 }, r3 = { 0 };
	struct event_base *base = event_base_new();
	struct dns *d;

	r1.base = r2.base = r3.base = base;
	fakedns_start(&f);
	d = resolver(base, &f);
	dns_cancel(dns_mx_lookup(d, "two.test", on_mx, &r1));
	dns_mx_lookup(d, "two.test", on_mx, &r2);
	run_for(base, 5);
	ck_assert_int_eq(r1.calls, 0);
	ck_assert_int_eq(r2.calls, 1);
	ck_assert_int_eq(r2.status, DNS_MX_OK);
	run_for(base, 1);
	ck_assert_int_eq(r1.calls, 0);

	/* freeing the resolver drops what is pending, answered or not */
	dns_mx_lookup(d, "silent.test", on_mx, &r3);
	dns_mx_lookup(d, "two.test", on_mx, &r1);
	dns_free(d);
	run_for(base, 1);
	ck_assert_int_eq(r1.calls, 0);
	ck_assert_int_eq(r3.calls, 0);
	fakedns_stop(&f);
	event_base_free(base);
}
END_TEST

static Suite *
mx_suite(void)
{
	Suite *s = suite_create("mx");
	TCase *tc = tcase_create("parse");
	TCase *tl = tcase_create("lookup");

	tcase_add_test(tc, test_two_preferences);
	tcase_add_test(tc, test_compressed_target);
	tcase_add_test(tc, test_equal_fixed);
	tcase_add_test(tc, test_equal_shuffled);
	tcase_add_test(tc, test_null_mx);
	tcase_add_test(tc, test_no_mx);
	tcase_add_test(tc, test_rcodes);
	tcase_add_test(tc, test_truncated);
	tcase_add_test(tc, test_malformed);
	tcase_add_test(tc, test_insane_hosts);
	tcase_add_test(tc, test_too_many);
	suite_add_tcase(s, tc);
	tcase_set_timeout(tl, 30);
	tcase_add_test(tl, test_lookup);
	tcase_add_test(tl, test_timeout);
	tcase_add_test(tl, test_cancel);
	suite_add_tcase(s, tl);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(mx_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
