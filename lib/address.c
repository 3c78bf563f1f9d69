/*
 * address.c - the RFC 5321 (4.1.2) Path parser used for MAIL FROM and
 * RCPT TO, and the formatter that turns a parsed address back into
 * "local@domain".
 *
 * With ADDR_ALLOW_UTF8 it is the RFC 6531 (SMTPUTF8) grammar: UTF-8
 * characters are also atext and qtext (local part) and may make up domain
 * labels (U-labels); they are never allowed in an address literal or a
 * quoted pair. The limits stay counted in bytes, 63 per label included,
 * so a U-label is refused where its bytes exceed what its A-label might
 * still fit: the price of doing no IDNA conversion here.
 *
 * This is a pure parser over untrusted bytes: no I/O, no allocation, no
 * state. It must never read past `len`, never accept a control character
 * (C1 included), a byte >= 0x80 without ADDR_ALLOW_UTF8, or UTF-8 that is
 * not well formed, and never accept an address longer than the RFC 5321
 * 4.5.3.1 limits, so that every later consumer (spool records, logs, map
 * keys) can rely on them.
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"

#define LABEL_MAX 63            /* RFC 1035 2.3.4 */

/* parse position; every helper checks `p < end` before reading */
struct cursor {
	const char *p;
	const char *end;
	int flags;
	bool utf8;              /* a UTF-8 character was taken */
};

static bool
is_alpha(int c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool
is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static bool
is_letdig(int c)
{
	return is_alpha(c) || is_digit(c);
}

/* RFC 5322 atext */
static bool
is_atext(int c)
{
	return is_letdig(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* RFC 5321 qtextSMTP: %d32-33 / %d35-91 / %d93-126 */
static bool
is_qtext(int c)
{
	return c >= 32 && c <= 126 && c != '"' && c != '\\';
}

/* RFC 5321 dcontent: %d33-90 / %d94-126 */
static bool
is_dcontent(int c)
{
	return (c >= 33 && c <= 90) || (c >= 94 && c <= 126);
}

/*
 * A byte that is wrong everywhere in an address gets the same reason
 * wherever it appears, so that a client sending UTF-8 learns why.
 * Returns NULL for bytes that are merely out of place.
 */
static const char *
bad_byte(unsigned char c)
{
	if (c >= 0x80)
		return "8-bit character in address";
	if (c < 0x20 || c == 0x7f)
		return "control character in address";
	return NULL;
}

static const char *
misplaced(const struct cursor *c, const char *reason)
{
	const char *b = bad_byte((unsigned char)*c->p);

	return b ? b : reason;
}

/*
 * A byte >= 0x80 where the grammar allows a UTF-8 character: its length
 * when the flags allow UTF-8 and it starts a well-formed character that is
 * not a control (C1), else 0 with *why.
 */
static size_t
utf8_char(struct cursor *c, const char **why)
{
	uint32_t cp;
	size_t n;

	if (!(c->flags & ADDR_ALLOW_UTF8)) {
		*why = "8-bit character in address";
		return 0;
	}
	if ((n = utf8_decode(c->p, (size_t)(c->end - c->p), &cp)) == 0) {
		*why = "malformed UTF-8 in address";
		return 0;
	}
	if (utf8_is_control(cp)) {
		*why = "control character in address";
		return 0;
	}
	c->utf8 = true;
	return n;
}

static bool
at_8bit(const struct cursor *c)
{
	return c->p < c->end && (unsigned char)*c->p >= 0x80;
}

/*
 * Domain = sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str].
 * Stops at the first byte that cannot belong to a domain; the caller
 * decides whether that byte may end the address. Sets *dlen.
 */
static const char *
parse_domain(struct cursor *c, size_t *dlen)
{
	const char *start = c->p;
	const char *label = c->p;
	const char *why;
	size_t n;

	for (;;) {
		if (c->p < c->end && is_letdig((unsigned char)*c->p)) {
			c->p++;
		} else if (at_8bit(c)) {
			/* RFC 6531: sub-domain =/ U-label */
			if ((n = utf8_char(c, &why)) == 0)
				return why;
			c->p += n;
		} else if (c->p < c->end && *c->p == '-') {
			if (c->p == label)
				return "domain label starts with a hyphen";
			c->p++;
		} else if (c->p == label) {
			/* nothing since the start or since the last dot */
			if (c->p < c->end && *c->p == '.')
				return "empty label in domain";
			if (c->p < c->end && (*c->p == '\0' || strchr("> ,:", *c->p) == NULL))
				return misplaced(c, "invalid character in domain");
			return c->p == start ? "missing domain" : "trailing dot in domain";
		} else {
			if (c->p[-1] == '-')
				return "domain label ends with a hyphen";
			if (c->p - label > LABEL_MAX)
				return "domain label too long";
			if (c->p >= c->end || *c->p != '.')
				break;
			c->p++;
			label = c->p;
		}
		if ((size_t)(c->p - start) > ADDR_DOMAIN_MAX)
			return "domain too long";
	}
	*dlen = (size_t)(c->p - start);
	return NULL;
}

/* Snum "." Snum "." Snum "." Snum, each Snum 1*3DIGIT in 0..255 */
static bool
valid_ipv4(const char *s, size_t n)
{
	size_t i = 0;
	int part;

	for (part = 0; part < 4; part++) {
		unsigned v = 0;
		size_t digits = 0;

		if (part > 0) {
			if (i >= n || s[i] != '.')
				return false;
			i++;
		}
		while (i < n && is_digit((unsigned char)s[i]) && digits < 4) {
			v = v * 10 + (unsigned)(s[i] - '0');
			digits++;
			i++;
		}
		if (digits == 0 || digits > 3 || v > 255)
			return false;
	}
	return i == n;
}

/* "[" ( IPv4 / "IPv6:" IPv6 / Ldh-str ":" 1*dcontent ) "]" */
static const char *
parse_literal(struct cursor *c, size_t *dlen)
{
	const char *start = c->p;   /* at '[' */
	const char *in, *colon = NULL;
	size_t n;

	c->p++;
	in = c->p;
	while (c->p < c->end && *c->p != ']') {
		if (!is_dcontent((unsigned char)*c->p))
			return misplaced(c, "invalid character in address literal");
		if (*c->p == ':' && colon == NULL)
			colon = c->p;
		c->p++;
		if ((size_t)(c->p - start) > ADDR_DOMAIN_MAX)
			return "domain too long";
	}
	if (c->p >= c->end)
		return "unterminated address literal";
	n = (size_t)(c->p - in);
	c->p++;         /* the ']' */
	if ((size_t)(c->p - start) > ADDR_DOMAIN_MAX)
		return "domain too long";
	if (n == 0)
		return "empty address literal";
	if (colon == NULL) {
		if (!valid_ipv4(in, n))
			return "invalid IPv4 address literal";
	} else if (colon - in == 4 && strncasecmp(in, "IPv6", 4) == 0) {
		char buf[INET6_ADDRSTRLEN + 1];
		struct in6_addr a6;
		size_t an = n - 5;

		if (an == 0 || an >= sizeof(buf))
			return "invalid IPv6 address literal";
		memcpy(buf, colon + 1, an);
		buf[an] = '\0';
		if (inet_pton(AF_INET6, buf, &a6) != 1)
			return "invalid IPv6 address literal";
	} else {
		/* General-address-literal: Standardized-tag ":" 1*dcontent */
		const char *t;

		if (colon == in || !is_letdig((unsigned char)*in) ||
		    !is_letdig((unsigned char)colon[-1]))
			return "invalid address literal tag";
		for (t = in; t < colon; t++)
			if (!is_letdig((unsigned char)*t) && *t != '-')
				return "invalid address literal tag";
		if (colon + 1 == in + n)
			return "empty address literal";
	}
	*dlen = (size_t)(c->p - start);
	return NULL;
}

/* Local-part = Dot-string / Quoted-string, kept as written */
static const char *
parse_local(struct cursor *c)
{
	const char *start = c->p;
	const char *b;
	size_t n;

	if (c->p < c->end && *c->p == '"') {
		c->p++;
		for (;;) {
			if (c->p >= c->end)
				return "unterminated quoted string";
			if (*c->p == '"')
				break;
			if (*c->p == '\\') {
				/* quoted-pairSMTP = "\" %d32-126 */
				c->p++;
				if (c->p >= c->end)
					return "unterminated quoted string";
				if ((b = bad_byte((unsigned char)*c->p)) != NULL)
					return b;
			} else if (at_8bit(c)) {
				/* RFC 6531: qtextSMTP =/ UTF8-non-ascii */
				if ((n = utf8_char(c, &b)) == 0)
					return b;
				c->p += n - 1;
			} else if (!is_qtext((unsigned char)*c->p)) {
				return misplaced(c, "invalid character in quoted string");
			}
			c->p++;
			if ((size_t)(c->p - start) > ADDR_LOCAL_MAX)
				return "local part too long";
		}
		c->p++;
	} else {
		for (;;) {
			const char *atom = c->p;

			for (;;) {
				if (c->p < c->end && is_atext((unsigned char)*c->p)) {
					c->p++;
				} else if (at_8bit(c)) {
					/* RFC 6531: atext =/ UTF8-non-ascii */
					if ((n = utf8_char(c, &b)) == 0)
						return b;
					c->p += n;
				} else {
					break;
				}
				if ((size_t)(c->p - start) > ADDR_LOCAL_MAX)
					return "local part too long";
			}
			if ((size_t)(c->p - start) > ADDR_LOCAL_MAX)
				return "local part too long";
			if (c->p == atom) {
				if (c->p < c->end && (b = bad_byte((unsigned char)*c->p)) != NULL)
					return b;
				if (c->p == start)
					return c->p < c->end && *c->p == '.'
					    ? "local part starts with a dot"
					    : NULL;     /* empty: the caller says why */
				return c->p < c->end && *c->p == '.'
				    ? "consecutive dots in local part"
				    : "local part ends with a dot";
			}
			if (c->p >= c->end || *c->p != '.')
				break;
			c->p++;
		}
	}
	if ((size_t)(c->p - start) > ADDR_LOCAL_MAX)
		return "local part too long";
	return NULL;
}

/*
 * A-d-l = At-domain *( "," At-domain ) ":", At-domain = "@" Domain.
 * Obsolete (RFC 5321 4.1.1.3, C.): parsed so that old clients work, then
 * dropped.
 */
static const char *
parse_route(struct cursor *c, const char *path)
{
	const char *r;
	size_t dlen;

	for (;;) {
		c->p++;         /* the '@' */
		if ((r = parse_domain(c, &dlen)) != NULL)
			return r;
		if ((size_t)(c->p - path) > ADDR_PATH_MAX)
			return "address too long";
		if (c->p >= c->end)
			return "missing closing angle bracket";
		if (*c->p == ':') {
			c->p++;
			return NULL;
		}
		if (*c->p == '>')
			return "missing local part";
		if (*c->p != ',')
			return misplaced(c, "invalid character in source route");
		c->p++;
		if (c->p >= c->end || *c->p != '@')
			return "invalid source route";
	}
}

static const char *
parse_path(struct cursor *c, int flags, struct address *a)
{
	const char *path = c->p;
	const char *local, *domain = NULL, *r;
	bool angle = false, route = false;
	size_t llen, dlen = 0;

	if (c->p < c->end && *c->p == '<') {
		angle = true;
		c->p++;
		if (c->p < c->end && *c->p == '>') {
			if (!(flags & ADDR_ALLOW_NULL))
				return "null address not allowed here";
			c->p++;
			a->null = true;
			return NULL;
		}
		if (c->p < c->end && *c->p == '@') {
			if ((r = parse_route(c, path)) != NULL)
				return r;
			route = true;
		}
	}
	if (c->p >= c->end || (!angle && *c->p == ' '))
		return "missing address";

	local = c->p;
	if ((r = parse_local(c)) != NULL)
		return r;
	llen = (size_t)(c->p - local);

	if (c->p < c->end && *c->p == '@') {
		if (llen == 0)
			return "missing local part";
		c->p++;
		domain = c->p;
		if (c->p < c->end && *c->p == '[') {
			a->literal = true;
			r = parse_literal(c, &dlen);
		} else {
			r = parse_domain(c, &dlen);
		}
		if (r != NULL)
			return r;
	} else if (c->p >= c->end || *c->p == '>' || (!angle && *c->p == ' ')) {
		/* no domain: only <postmaster> may do that (RFC 5321 4.5.1) */
		if (llen == 0)
			return "missing address";
		if (!(flags & ADDR_ALLOW_POSTMASTER) || route || llen != 10 ||
		    strncasecmp(local, "postmaster", 10) != 0)
			return "missing domain";
	} else {
		return misplaced(c, "invalid character in local part");
	}

	/* what may follow the mailbox */
	if (angle) {
		if (c->p >= c->end)
			return "missing closing angle bracket";
		if (*c->p != '>')
			return misplaced(c, a->literal ? "unexpected text after address literal"
			    : "invalid character in domain");
		c->p++;
	} else if (c->p < c->end && *c->p != ' ') {
		if (*c->p == '>')
			return "missing opening angle bracket";
		return misplaced(c, a->literal ? "unexpected text after address literal"
		    : "invalid character in domain");
	}

	/* 4.5.3.1.3 counts the path with its brackets, even when the client
	 * left them out: the address is written with them later */
	if ((size_t)(c->p - path) + (angle ? 0 : 2) > ADDR_PATH_MAX)
		return "address too long";

	memcpy(a->local, local, llen);
	a->local[llen] = '\0';
	if (dlen)
		memcpy(a->domain, domain, dlen);
	a->domain[dlen] = '\0';
	return NULL;
}

int
address_parse(const char *s, size_t len, int flags, struct address *a,
	      const char **why)
{
	struct cursor c = { s, s + len, flags, false };
	const char *r;

	memset(a, 0, sizeof(*a));
	if ((r = parse_path(&c, flags, a)) != NULL) {
		memset(a, 0, sizeof(*a));
		if (why)
			*why = r;
		return -1;
	}
	a->utf8 = c.utf8;
	if (why)
		*why = NULL;
	return (int)(c.p - s);
}

void
address_format(const struct address *a, char *buf, size_t buflen)
{
	if (buflen == 0)
		return;
	if (a->null)
		buf[0] = '\0';
	else if (a->domain[0] == '\0')
		snprintf(buf, buflen, "postmaster");
	else
		snprintf(buf, buflen, "%s@%s", a->local, a->domain);
}
