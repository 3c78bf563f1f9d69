/*
 * proxy.c - the PROXY protocol header (HAProxy's proxy-protocol.txt,
 * versions 1 and 2): what a load balancer in front of a listener with
 * proxy=yes sends first, to say who the real client is.
 *
 * A pure parser over untrusted bytes: no I/O, no allocation. It answers
 * the same whatever the bytes arrived in (a prefix of a valid header
 * always asks for more), never reads past len, and accepts only what the
 * specification allows: a v1 line of at most 107 bytes ending in CR LF
 * with addresses and ports in their canonical forms, a v2 block with the
 * right signature, version 2, a known command, TCP over IPv4 or IPv6 (or
 * no address: LOCAL, UNSPEC) and well-formed TLVs, at most
 * PROXY_HEADER_MAX bytes in all. Whatever it cannot vouch for is an error:
 * a client's address is never half-parsed.
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "smtpd/smtpd.h"

static const unsigned char v2sig[12] = {
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
};

#define V1_MAX 107                /* the whole line, CR LF included */

static ssize_t
bad(const char **why, const char *reason)
{
	*why = reason;
	return -1;
}

/* A decimal port, 0..65535, without a leading zero. */
static bool
v1_port(const char *s, size_t n, unsigned short *port)
{
	unsigned long v = 0;
	size_t i;

	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return false;
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v > 65535)
		return false;
	*port = (unsigned short)v;
	return true;
}

/* An address of family af, in the form inet_ntop writes it back (so
 * "127.000.0.1" or an IPv4-mapped spelling of a TCP4 address is refused). */
static bool
v1_addr(int af, const char *s, size_t n, struct sockaddr_storage *ss, unsigned short port)
{
	char buf[INET6_ADDRSTRLEN + 1], back[INET6_ADDRSTRLEN + 1];
	unsigned char bin[16];

	if (n == 0 || n >= sizeof(buf))
		return false;
	memcpy(buf, s, n);
	buf[n] = '\0';
	if (inet_pton(af, buf, bin) != 1 || inet_ntop(af, bin, back, sizeof(back)) == NULL)
		return false;
	if (af == AF_INET && strcmp(buf, back) != 0)
		return false;
	memset(ss, 0, sizeof(*ss));
	if (af == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, bin, 4);
		sin->sin_port = htons(port);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		sin6->sin6_family = AF_INET6;
		memcpy(&sin6->sin6_addr, bin, 16);
		sin6->sin6_port = htons(port);
	}
	return true;
}

static ssize_t
parse_v1(const unsigned char *buf, size_t len, struct proxy_header *h, const char **why)
{
	const char *p = (const char *)buf, *f[6];
	size_t fl[6], n, i, nf = 0, end;
	unsigned short sport, dport;
	int af;

	n = len < 6 ? len : 6;
	if (memcmp(buf, "PROXY ", n) != 0)
		return bad(why, "not a PROXY protocol header");
	for (end = 0; end < len && end < V1_MAX; end++) {
		if (buf[end] == '\n')
			return bad(why, "v1 header: a bare LF");
		if (buf[end] == '\r')
			break;
		if (buf[end] < 0x20 || buf[end] > 0x7e)
			return bad(why, "v1 header: a byte that is not printable ASCII");
	}
	if (end == V1_MAX || (end + 1 >= V1_MAX && end < len))
		return bad(why, "v1 header: no CR LF within 107 bytes");
	if (end + 1 >= len)
		return 0;       /* the CR LF (or the rest of the line) is still to come */
	if (buf[end + 1] != '\n')
		return bad(why, "v1 header: CR without LF");
	/* fields after "PROXY ", separated by single spaces */
	for (i = 6; i <= end && nf < 6;) {
		size_t s = i;

		while (i < end && buf[i] != ' ')
			i++;
		f[nf] = p + s;
		fl[nf] = i - s;
		nf++;
		if (i == end)
			break;
		i++;            /* the space */
		if (i == end)
			return bad(why, "v1 header: a space before CR LF");
	}
	if (nf == 0 || fl[0] == 0)
		return bad(why, "v1 header: no protocol");
	memset(h, 0, sizeof(*h));
	h->version = 1;
	if (fl[0] == 7 && memcmp(f[0], "UNKNOWN", 7) == 0) {
		/* anything may follow UNKNOWN: the connection's own address is used */
		h->local = true;
		return (ssize_t)(end + 2);
	}
	if (fl[0] == 4 && memcmp(f[0], "TCP4", 4) == 0)
		af = AF_INET;
	else if (fl[0] == 4 && memcmp(f[0], "TCP6", 4) == 0)
		af = AF_INET6;
	else
		return bad(why, "v1 header: protocol is not TCP4, TCP6 or UNKNOWN");
	if (nf != 5 || f[4] + fl[4] != p + end)
		return bad(why, "v1 header: not PROTO SRC DST SPORT DPORT");
	for (i = 1; i < 5; i++)
		if (fl[i] == 0)
			return bad(why, "v1 header: an empty field");
	if (!v1_port(f[3], fl[3], &sport) || !v1_port(f[4], fl[4], &dport))
		return bad(why, "v1 header: a port is not a number in 0..65535");
	if (!v1_addr(af, f[1], fl[1], &h->src, sport) || !v1_addr(af, f[2], fl[2], &h->dst, dport))
		return bad(why, af == AF_INET ? "v1 header: an address is not dotted IPv4"
					      : "v1 header: an address is not IPv6");
	return (ssize_t)(end + 2);
}

static ssize_t
parse_v2(const unsigned char *buf, size_t len, struct proxy_header *h, const char **why)
{
	size_t n = len < sizeof(v2sig) ? len : sizeof(v2sig), total, body, off, tl;
	unsigned cmd, fam;

	if (memcmp(buf, v2sig, n) != 0)
		return bad(why, "not a PROXY protocol header");
	if (len >= 13 && (buf[12] >> 4) != 2)
		return bad(why, "v2 header: version is not 2");
	if (len >= 13 && (buf[12] & 0x0f) > 1)
		return bad(why, "v2 header: command is not LOCAL or PROXY");
	if (len >= 14) {
		fam = buf[13];
		if (fam != 0x00 && fam != 0x11 && fam != 0x21)
			return bad(why, "v2 header: not TCP over IPv4 or IPv6");
	}
	if (len < 16)
		return 0;
	body = (size_t)buf[14] << 8 | buf[15];
	total = 16 + body;
	if (total > PROXY_HEADER_MAX)
		return bad(why, "v2 header: longer than the limit");
	cmd = buf[12] & 0x0f;
	fam = buf[13];
	off = fam == 0x11 ? 12 : fam == 0x21 ? 36 : 0;
	if (body < off)
		return bad(why, "v2 header: too short for its addresses");
	if (len < total)
		return 0;
	/* TLVs: type, 16-bit length, value; they must fill the rest exactly */
	for (tl = 16 + off; tl < total;) {
		if (total - tl < 3)
			return bad(why, "v2 header: a truncated TLV");
		n = (size_t)buf[tl + 1] << 8 | buf[tl + 2];
		if (n > total - tl - 3)
			return bad(why, "v2 header: a TLV longer than the header");
		tl += 3 + n;
	}
	memset(h, 0, sizeof(*h));
	h->version = 2;
	if (cmd == 0 || fam == 0x00) {
		/* LOCAL (the proxy's own health check) or no address given */
		h->local = true;
		return (ssize_t)total;
	}
	if (fam == 0x11) {
		struct sockaddr_in *s = (struct sockaddr_in *)&h->src, *d = (struct sockaddr_in *)&h->dst;

		s->sin_family = d->sin_family = AF_INET;
		memcpy(&s->sin_addr, buf + 16, 4);
		memcpy(&d->sin_addr, buf + 20, 4);
		memcpy(&s->sin_port, buf + 24, 2);
		memcpy(&d->sin_port, buf + 26, 2);
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&h->src;
		struct sockaddr_in6 *d = (struct sockaddr_in6 *)&h->dst;

		s->sin6_family = d->sin6_family = AF_INET6;
		memcpy(&s->sin6_addr, buf + 16, 16);
		memcpy(&d->sin6_addr, buf + 32, 16);
		memcpy(&s->sin6_port, buf + 48, 2);
		memcpy(&d->sin6_port, buf + 50, 2);
	}
	return (ssize_t)total;
}

ssize_t
proxy_parse(const unsigned char *buf, size_t len, struct proxy_header *h, const char **why)
{
	*why = "";
	if (len == 0)
		return 0;
	if (buf[0] == 'P')
		return parse_v1(buf, len, h, why);
	if (buf[0] == v2sig[0])
		return parse_v2(buf, len, h, why);
	return bad(why, "not a PROXY protocol header");
}
