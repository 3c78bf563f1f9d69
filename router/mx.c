/*
 * mx.c - the reader of a DNS answer to an MX question (RFC 1035 4.1,
 * RFC 5321 5.1, RFC 7505): which hosts, in which order, or why none.
 *
 * The packet comes from the network through c-ares, which checks only
 * its header and question: every offset, label and compression pointer is
 * checked here, a pointer may only go back before the labels that led to
 * it (so a name always ends), and a name is bounded by RFC 1035's 255
 * bytes. A target that is not a sane host name is skipped rather than
 * handed to the SMTP client, which would put it in logs and DSNs.
 *
 * Pure: no I/O, no allocation, no c-ares, so that it is unit-tested on
 * hand-built packets and fuzzed alone. Randomness comes from the caller.
 */
#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "lib/lib.h"
#include "router/router.h"

#define DNS_HEADER_LEN 12
#define DNS_NAME_WIRE_MAX 255   /* RFC 1035 3.1: a name's wire form, length bytes included */
#define DNS_LABEL_MAX 63
#define DNS_TYPE_MX 15
#define DNS_CLASS_IN 1
#define DNS_RCODE_NXDOMAIN 3

static unsigned
get16(const unsigned char *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

/*
 * Reads the name at off into out (lower-cased, dotted, no trailing dot; ""
 * for the root). *end gets the offset just past the name where it starts
 * (its pointer, if any, included). *sane says whether it is a host name:
 * LDH labels that neither start nor end with a hyphen, not the root, and a
 * last label that is not all digits (an IP address is no host name).
 * 0, or -1 when the packet is malformed.
 */
static int
get_name(const unsigned char *pkt, size_t len, size_t off, char out[ADDR_DOMAIN_MAX + 1],
	 size_t *end, bool *sane)
{
	size_t run = off;       /* where the labels being read started */
	size_t o = 0, wire = 1, i, label;
	bool jumped = false, digits = false;
	unsigned c, ptr;

	*sane = true;
	for (;;) {
		if (off >= len)
			return -1;
		c = pkt[off];
		if ((c & 0xc0) == 0xc0) {
			if (off + 1 >= len)
				return -1;
			ptr = (c & 0x3f) << 8 | pkt[off + 1];
			if (ptr >= run)
				return -1;
			if (!jumped)
				*end = off + 2;
			jumped = true;
			off = run = ptr;
			continue;
		}
		if (c & 0xc0)
			return -1;      /* RFC 6891 extended label types: obsolete */
		if (c == 0)
			break;
		label = c;
		if (off + 1 + label > len || (wire += label + 1) > DNS_NAME_WIRE_MAX)
			return -1;
		off++;
		if (o > 0)
			out[o++] = '.';
		digits = true;
		for (i = 0; i < label; i++) {
			c = pkt[off + i];
			if (c >= 'A' && c <= 'Z')
				c += 'a' - 'A';
			if (c < '0' || c > '9')
				digits = false;
			if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') ||
			    (c == '-' && (i == 0 || i == label - 1)))
				*sane = false;
			/* wire <= 255 keeps the dotted form within 253 bytes */
			out[o++] = (char)c;
		}
		off += label;
	}
	out[o] = '\0';
	if (!jumped)
		*end = off + 1;
	if (o == 0 || digits)
		*sane = false;
	return 0;
}

/* Keeps the max records of lowest preference, ties in the packet's order. */
static void
keep(struct dns_mx *mx, size_t max, size_t *cnt, unsigned pref, const char *host)
{
	size_t i;

	if (max == 0 || (*cnt == max && pref >= mx[max - 1].pref))
		return;
	if (*cnt < max)
		(*cnt)++;
	for (i = *cnt - 1; i > 0 && mx[i - 1].pref > pref; i--)
		mx[i] = mx[i - 1];
	mx[i].pref = (unsigned short)pref;
	memcpy(mx[i].host, host, strlen(host) + 1);
}

/* Fisher-Yates within each run of equal preference. */
static void
shuffle(struct dns_mx *mx, size_t cnt, unsigned (*rnd)(void *), void *arg)
{
	size_t a, b, i, j;
	struct dns_mx t;

	for (a = 0; a < cnt; a = b) {
		for (b = a + 1; b < cnt && mx[b].pref == mx[a].pref; b++)
			;
		for (i = b - 1; i > a; i--) {
			j = a + rnd(arg) % (i - a + 1);
			if (j != i) {
				t = mx[i];
				mx[i] = mx[j];
				mx[j] = t;
			}
		}
	}
}

enum dns_mx_status
dns_mx_parse(const unsigned char *pkt, size_t len, struct dns_mx *mx, size_t max, size_t *n,
	     unsigned (*rnd)(void *), void *arg)
{
	char name[ADDR_DOMAIN_MAX + 1];
	size_t off, end, rdend, cnt = 0;
	unsigned qd, an, i, type, class, rdlen, pref, nrec = 0;
	bool sane, lone_root = false;

	*n = 0;
	if (len < DNS_HEADER_LEN || !(pkt[2] & 0x80))
		return DNS_MX_TEMPFAIL;         /* short, or not a response */
	if ((pkt[3] & 0x0f) == DNS_RCODE_NXDOMAIN)
		return DNS_MX_NXDOMAIN;
	if ((pkt[3] & 0x0f) != 0 || (pkt[2] & 0x02))
		return DNS_MX_TEMPFAIL;         /* an error, or truncated (TC) */
	qd = get16(pkt + 4);
	an = get16(pkt + 6);
	off = DNS_HEADER_LEN;
	for (i = 0; i < qd; i++) {
		if (get_name(pkt, len, off, name, &end, &sane) < 0 || end + 4 > len)
			return DNS_MX_TEMPFAIL;
		off = end + 4;
	}
	for (i = 0; i < an; i++) {
		if (get_name(pkt, len, off, name, &end, &sane) < 0 || end + 10 > len)
			return DNS_MX_TEMPFAIL;
		type = get16(pkt + end);
		class = get16(pkt + end + 2);
		rdlen = get16(pkt + end + 8);
		off = end + 10;
		rdend = off + rdlen;
		if (rdend > len)
			return DNS_MX_TEMPFAIL;
		if (type == DNS_TYPE_MX && class == DNS_CLASS_IN) {
			if (rdlen < 3)
				return DNS_MX_TEMPFAIL;
			pref = get16(pkt + off);
			if (get_name(pkt, len, off + 2, name, &end, &sane) < 0 || end > rdend)
				return DNS_MX_TEMPFAIL;
			nrec++;
			lone_root = nrec == 1 && name[0] == '\0';
			if (sane)
				keep(mx, max, &cnt, pref, name);
		}
		off = rdend;
	}
	if (nrec == 0)
		return DNS_MX_NONE;
	if (nrec == 1 && lone_root)
		return DNS_MX_NULL;
	if (cnt == 0)
		return DNS_MX_TEMPFAIL;         /* MX records, none usable */
	if (rnd != NULL)
		shuffle(mx, cnt, rnd, arg);
	*n = cnt;
	return DNS_MX_OK;
}
