/*
 * canon.c - the pure parsers of the router: the canonical form of an
 * address (lower-cased domain and keys, the recipient_delimiter extension
 * split off) and delivery endpoints (lmtp:HOST:PORT, lmtp:[IP]:PORT,
 * lmtp:unix:PATH, smtp:DOMAIN[:PORT], smtp:[HOST]:PORT).
 *
 * Pure functions over untrusted bytes (addresses from RCPT and alias
 * values, endpoints from node_map): no I/O, no allocation, no state. They
 * must never write past the fixed-size fields of their results, never
 * accept a control character or malformed UTF-8 in an address (UTF-8 is
 * SMTPUTF8's, and only ASCII letters are lower-cased), never an 8-bit byte
 * in an endpoint, and never return an endpoint that would not parse again
 * to the same thing.
 */
#include "config.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "router/router.h"

static bool
is_blank(int c)
{
	return c == ' ' || c == '\t';
}

static void
lower(char *s)
{
	map_fold(s, s, strlen(s));
}

/* ---- endpoints ---- */

static bool
valid_hostname(const char *s, size_t n)
{
	size_t i, label = 0;

	if (n == 0 || n > ADDR_DOMAIN_MAX)
		return false;
	for (i = 0; i < n; i++) {
		char c = s[i];

		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			   (c >= '0' && c <= '9') || (c == '-' && label > 0)) {
			if (++label > 63)
				return false;
		} else {
			return false;
		}
	}
	return s[n - 1] != '.' && s[n - 1] != '-';
}

static int
parse_port(const char *s, size_t n, unsigned short *port)
{
	unsigned long v = 0;
	size_t i;

	if (n == 0 || n > 5)
		return -1;
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v == 0 || v > 65535)
		return -1;
	*port = (unsigned short)v;
	return 0;
}

int
endpoint_parse(const char *s, size_t len, struct endpoint *ep, const char **why)
{
	const char *p, *end = s + len, *hend, *colon;
	char ip[ADDR_DOMAIN_MAX + 1];
	unsigned char bin[16];

	memset(ep, 0, sizeof(*ep));
	ep->tls = -1;
	if (len >= 5 && strncasecmp(s, "smtp:", 5) == 0) {
		ep->proto = EP_SMTP;
		ep->port = 0;           /* smtp_port */
	} else if (len >= 5 && strncasecmp(s, "lmtp:", 5) == 0) {
		ep->proto = EP_LMTP;
		ep->port = 24;
	} else {
		*why = "endpoint does not start with \"lmtp:\" or \"smtp:\"";
		return -1;
	}
	p = s + 5;
	if (ep->proto == EP_LMTP && (size_t)(end - p) >= 5 && strncasecmp(p, "unix:", 5) == 0) {
		p += 5;
		if (p == end || *p != '/') {
			*why = "lmtp:unix: needs an absolute path";
			return -1;
		}
		if ((size_t)(end - p) > ENDPOINT_PATH_MAX) {
			*why = "lmtp:unix: path too long for a socket address";
			return -1;
		}
		for (const char *q = p; q < end; q++)
			if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f || *q == ',') {
				*why = "invalid character in lmtp:unix: path";
				return -1;
			}
		ep->kind = EP_UNIX;
		memcpy(ep->path, p, (size_t)(end - p));
		return 0;
	}
	ep->kind = EP_INET;
	if (p < end && *p == '[') {
		hend = memchr(p, ']', (size_t)(end - p));
		if (hend == NULL) {
			*why = "missing ']' after the address";
			return -1;
		}
		if ((size_t)(hend - p - 1) >= sizeof(ip) || hend == p + 1) {
			*why = "invalid IP address in brackets";
			return -1;
		}
		memcpy(ip, p + 1, (size_t)(hend - p - 1));
		ip[hend - p - 1] = '\0';
		if (inet_pton(AF_INET, ip, bin) == 1 || inet_pton(AF_INET6, ip, bin) == 1) {
			ep->literal = true;
		} else if (ep->proto == EP_SMTP && valid_hostname(ip, strlen(ip))) {
			lower(ip);      /* smtp:[HOST]: this host, no MX lookup */
		} else {
			*why = ep->proto == EP_SMTP ? "invalid host name or IP address in brackets" :
			    "invalid IP address in brackets";
			return -1;
		}
		memcpy(ep->host, ip, strlen(ip) + 1);
		p = hend + 1;
		if (p < end && *p != ':') {
			*why = "expected ':' after ']'";
			return -1;
		}
	} else {
		colon = memchr(p, ':', (size_t)(end - p));
		hend = colon ? colon : end;
		if (!valid_hostname(p, (size_t)(hend - p))) {
			*why = "invalid host name";
			return -1;
		}
		/* "lmtp:unix:24" would read back as a socket path */
		if (hend - p == 4 && strncasecmp(p, "unix", 4) == 0) {
			*why = "host name \"unix\" is taken by lmtp:unix:PATH";
			return -1;
		}
		memcpy(ep->host, p, (size_t)(hend - p));
		lower(ep->host);
		ep->mx = ep->proto == EP_SMTP;  /* smtp:DOMAIN: where its MX records say */
		p = hend;
	}
	if (p < end) {
		/* *p == ':' here */
		if (parse_port(p + 1, (size_t)(end - p - 1), &ep->port) < 0) {
			*why = "invalid port (1-65535)";
			return -1;
		}
	}
	return 0;
}

int
endpoint_parse_list(const char *s, struct endpoint *eps, size_t max, const char **why)
{
	size_t n = 0;
	const char *p = s, *t;

	for (;;) {
		while (*p == ',' || is_blank(*p))
			p++;
		if (*p == '\0')
			break;
		for (t = p; *t != '\0' && *t != ',' && !is_blank(*t); t++)
			;
		if (n == max) {
			*why = "too many endpoints";
			return -1;
		}
		if (endpoint_parse(p, (size_t)(t - p), &eps[n], why) < 0)
			return -1;
		n++;
		p = t;
	}
	if (n == 0) {
		*why = "no endpoint";
		return -1;
	}
	return (int)n;
}

void
endpoint_format(const struct endpoint *ep, char *buf, size_t buflen)
{
	const char *proto = ep->proto == EP_SMTP ? "smtp" : "lmtp";
	char port[8] = "";

	if (ep->port != 0)
		snprintf(port, sizeof(port), ":%u", ep->port);
	if (ep->kind == EP_UNIX)
		snprintf(buf, buflen, "lmtp:unix:%s", ep->path);
	else if (!ep->mx && (ep->literal || ep->proto == EP_SMTP))
		snprintf(buf, buflen, "%s:[%s]%s", proto, ep->host, port);
	else
		snprintf(buf, buflen, "%s:%s%s", proto, ep->host, port);
}

/* ---- canonical form ---- */

int
router_canon(const char *addr, const char *delims, const char *default_domain,
	     struct canon *c, const char **why)
{
	size_t len = strlen(addr), at, i, dlen;
	const char *a;

	memset(c, 0, sizeof(*c));
	if (len == 0) {
		*why = "empty address";
		return -1;
	}
	if (!utf8_valid(addr, len)) {
		*why = "control character or malformed UTF-8 in address";
		return -1;
	}
	a = strrchr(addr, '@');
	if (a == NULL) {
		if (strcasecmp(addr, "postmaster") != 0) {
			*why = "address without a domain";
			return -1;
		}
		if (default_domain == NULL || default_domain[0] == '\0') {
			snprintf(c->address, sizeof(c->address), "%s", addr);
			memcpy(c->key, c->address, sizeof(c->key));
			lower(c->key);
			c->domain_off = len;
			return 0;
		}
		if (len + 1 + strlen(default_domain) > ADDR_PATH_MAX) {
			*why = "address too long";
			return -1;
		}
		snprintf(c->address, sizeof(c->address), "%s@%s", addr, default_domain);
		at = len;
	} else {
		if (len > ADDR_PATH_MAX) {
			*why = "address too long";
			return -1;
		}
		at = (size_t)(a - addr);
		if (at == 0) {
			*why = "empty local part";
			return -1;
		}
		if (at + 1 == len) {
			*why = "empty domain";
			return -1;
		}
		memcpy(c->address, addr, len + 1);
	}
	c->domain_off = at + 1;
	lower(c->address + c->domain_off);
	dlen = strlen(c->address + c->domain_off);
	if (dlen > ADDR_DOMAIN_MAX) {
		*why = "domain too long";
		return -1;
	}
	memcpy(c->key, c->address, sizeof(c->key));
	lower(c->key);
	c->domain_key[0] = '@';
	memcpy(c->domain_key + 1, c->key + c->domain_off, dlen + 1);

	/* the extension: from the first delimiter on, in an unquoted local
	 * part, and never the whole local part */
	if (delims != NULL && delims[0] != '\0' && c->key[0] != '"') {
		for (i = 1; i < at; i++)
			if (strchr(delims, c->key[i]) != NULL)
				break;
		if (i < at)
			snprintf(c->base, sizeof(c->base), "%.*s%s", (int)i, c->key, c->key + at);
	}
	return 0;
}
