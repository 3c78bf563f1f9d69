/*
 * milterspec.c - milter endpoint lists and macro name lists as the config
 * file writes them (smtpd_milters, a listener's milters=, milter_*_macros):
 * pure parsers, shared by the config check, so that `sorterd -t` refuses
 * what the smtpd workers could not use, and by the milter client.
 *
 * Endpoints are numeric: the milter client runs on a worker's event loop,
 * where a DNS lookup would block every session of the worker.
 *
 * This file must never do I/O, and never accept an endpoint it cannot
 * connect to as written.
 */
#include "config.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "lib/lib.h"

const char *const milter_action_names[] = { "tempfail", "accept", "reject", NULL };

#define SPEC_TEXT_MAX 1024

static int
fail(char *why, size_t whylen, const char *fmt, const char *arg)
{
	char shown[80];
	size_t i, n = 0;

	for (i = 0; arg[i] != '\0' && n + 4 < sizeof(shown); i++)
		shown[n++] = (arg[i] >= 0x20 && arg[i] < 0x7f) ? arg[i] : '?';
	if (arg[i] != '\0') {
		memcpy(shown + n, "...", 3);
		n += 3;
	}
	shown[n] = '\0';
	snprintf(why, whylen, fmt, shown);
	return -1;
}

static bool
port_ok(const char *p)
{
	long v = 0;

	if (*p == '\0' || strlen(p) > 5)
		return false;
	for (; *p; p++) {
		if (*p < '0' || *p > '9')
			return false;
		v = v * 10 + (*p - '0');
	}
	return v >= 1 && v <= 65535;
}

/* "inet:HOST:PORT", "inet:[V6]:PORT", "inet:PORT@HOST", "inet6:[V6]:PORT",
 * "inet6:PORT@V6", "unix:/PATH" (or "local:/PATH") into *sp. */
static int
parse_endpoint(const char *text, struct milter_spec *sp, char *why, size_t whylen)
{
	char buf[SPEC_TEXT_MAX + 1], bin[16], canon[INET6_ADDRSTRLEN];
	char *rest, *host, *port, *at;
	bool six;

	if (strlen(text) > SPEC_TEXT_MAX)
		return fail(why, whylen, "milter '%s' is too long", text);
	snprintf(buf, sizeof(buf), "%s", text);
	if (strncmp(buf, "unix:", 5) == 0 || strncmp(buf, "local:", 6) == 0) {
		rest = buf + (buf[0] == 'u' ? 5 : 6);
		if (rest[0] != '/')
			return fail(why, whylen, "milter '%s': the socket path must be absolute", text);
		if (strlen(rest) >= sizeof(((struct sockaddr_un *)0)->sun_path))
			return fail(why, whylen, "milter '%s': the socket path is too long", text);
		sp->family = AF_UNIX;
		sp->path = xstrdup(rest);
	} else if (strncmp(buf, "inet:", 5) == 0 || strncmp(buf, "inet6:", 6) == 0) {
		six = buf[4] == '6';
		rest = buf + (six ? 6 : 5);
		if ((at = strchr(rest, '@')) != NULL) {
			/* Sendmail's PORT@HOST */
			*at = '\0';
			port = rest;
			host = at + 1;
			if (host[0] == '[' && host[strlen(host) - 1] == ']') {
				host[strlen(host) - 1] = '\0';
				host++;
			}
		} else if (rest[0] == '[') {
			host = rest + 1;
			if ((port = strchr(host, ']')) == NULL || port[1] != ':')
				return fail(why, whylen, "milter '%s' is not inet:[ADDRESS]:PORT", text);
			*port = '\0';
			port += 2;
		} else {
			host = rest;
			if ((port = strrchr(host, ':')) == NULL)
				return fail(why, whylen, "milter '%s' is not inet:HOST:PORT", text);
			*port++ = '\0';
		}
		if (inet_pton(AF_INET, host, bin) == 1 && !six)
			sp->family = AF_INET;
		else if (inet_pton(AF_INET6, host, bin) == 1)
			sp->family = AF_INET6;
		else
			return fail(why, whylen, "milter '%s': the host must be a numeric address", text);
		if (!port_ok(port))
			return fail(why, whylen, "milter '%s': the port is not a number in 1..65535", text);
		if (inet_ntop(sp->family, bin, canon, sizeof(canon)) == NULL)
			return fail(why, whylen, "milter '%s': bad address", text);
		sp->host = xstrdup(canon);
		sp->port = xstrdup(port);
	} else {
		return fail(why, whylen, "milter '%s' is not inet:HOST:PORT, inet6:[ADDRESS]:PORT "
			    "or unix:PATH", text);
	}
	sp->name = xstrdup(text);
	return 0;
}

/* "10", "10s", "2m", "1h": seconds in 1..3600, or -1 */
static int
parse_secs(const char *v)
{
	long n = 0;
	int mult = 1;

	if (*v < '0' || *v > '9')
		return -1;
	for (; *v >= '0' && *v <= '9'; v++) {
		n = n * 10 + (*v - '0');
		if (n > 3600)
			return -1;
	}
	if (*v == 's')
		v++;
	else if (*v == 'm')
		mult = 60, v++;
	else if (*v == 'h')
		mult = 3600, v++;
	if (*v != '\0' || n * mult < 1 || n * mult > 3600)
		return -1;
	return (int)(n * mult);
}

/* One "key=value" inside braces. */
static int
parse_option(const char *opt, struct milter_spec *sp, char *why, size_t whylen)
{
	const char *eq = strchr(opt, '=');
	const char *v = eq ? eq + 1 : "";
	size_t klen = eq ? (size_t)(eq - opt) : strlen(opt);
	int *slot = NULL, i;

	if (klen == 15 && strncmp(opt, "connect_timeout", klen) == 0)
		slot = &sp->connect_timeout;
	else if (klen == 15 && strncmp(opt, "command_timeout", klen) == 0)
		slot = &sp->command_timeout;
	else if (klen == 15 && strncmp(opt, "content_timeout", klen) == 0)
		slot = &sp->content_timeout;
	if (slot != NULL) {
		if ((*slot = parse_secs(v)) < 0)
			return fail(why, whylen, "milter option '%s': a time in 1s..1h", opt);
		return 0;
	}
	if (klen == 14 && strncmp(opt, "default_action", klen) == 0) {
		for (i = 0; milter_action_names[i] != NULL; i++)
			if (strcmp(v, milter_action_names[i]) == 0) {
				sp->default_action = i;
				return 0;
			}
		return fail(why, whylen, "milter option '%s': not tempfail, accept or reject", opt);
	}
	return fail(why, whylen, "unknown milter option '%s' (connect_timeout, command_timeout, "
		    "content_timeout, default_action)", opt);
}

static void
spec_clear(struct milter_spec *sp)
{
	free(sp->name);
	free(sp->host);
	free(sp->port);
	free(sp->path);
	memset(sp, 0, sizeof(*sp));
}

static bool
is_sep(char c)
{
	return c == ' ' || c == '\t' || c == ',';
}

int
milter_specs_parse(const char *s, struct milter_spec **out, size_t *nout, char *why, size_t whylen)
{
	struct milter_spec *v = NULL, sp;
	size_t n = 0, len;
	char word[SPEC_TEXT_MAX + 1], group[SPEC_TEXT_MAX + 1];
	const char *p = s ? s : "", *end, *q;
	bool first;

	while (*p != '\0') {
		while (is_sep(*p))
			p++;
		if (*p == '\0')
			break;
		memset(&sp, 0, sizeof(sp));
		sp.default_action = -1;
		if (*p == '{') {
			/* Postfix's { endpoint, key=value, ... } */
			if ((end = strchr(p, '}')) == NULL) {
				fail(why, whylen, "milter '%s': no closing '}'", p);
				goto bad;
			}
			len = (size_t)(end - p - 1);
			if (len > SPEC_TEXT_MAX) {
				fail(why, whylen, "milter '%s' is too long", p);
				goto bad;
			}
			memcpy(group, p + 1, len);
			group[len] = '\0';
			p = end + 1;
			first = true;
			for (q = group; *q != '\0';) {
				while (is_sep(*q))
					q++;
				if (*q == '\0')
					break;
				len = strcspn(q, " \t,");
				memcpy(word, q, len);
				word[len] = '\0';
				q += len;
				if (strchr(word, '{') != NULL) {
					fail(why, whylen, "milter '%s': braces do not nest", word);
					goto bad_spec;
				}
				if (first ? parse_endpoint(word, &sp, why, whylen) < 0
					  : parse_option(word, &sp, why, whylen) < 0)
					goto bad_spec;
				first = false;
			}
			if (first) {
				snprintf(why, whylen, "milter '{}' names no endpoint");
				goto bad;
			}
		} else {
			len = strcspn(p, " \t,");
			if (len > SPEC_TEXT_MAX) {
				fail(why, whylen, "milter '%s' is too long", p);
				goto bad;
			}
			memcpy(word, p, len);
			word[len] = '\0';
			p += len;
			if (strchr(word, '}') != NULL) {
				fail(why, whylen, "milter '%s': '}' without '{'", word);
				goto bad;
			}
			if (parse_endpoint(word, &sp, why, whylen) < 0)
				goto bad;
		}
		v = xrealloc(v, (n + 1) * sizeof(*v));
		v[n++] = sp;
	}
	*out = v;
	*nout = n;
	return 0;

bad_spec:
	spec_clear(&sp);
bad:
	milter_specs_free(v, n);
	*out = NULL;
	*nout = 0;
	return -1;
}

void
milter_specs_free(struct milter_spec *v, size_t n)
{
	size_t i;

	for (i = 0; v != NULL && i < n; i++)
		spec_clear(&v[i]);
	free(v);
}

bool
milter_macro_name_ok(const char *w, size_t n)
{
	size_t i;

	if (n == 1)
		return w[0] > 0x20 && w[0] < 0x7f && w[0] != '{' && w[0] != '}';
	if (n < 3 || n > 64 || w[0] != '{' || w[n - 1] != '}')
		return false;
	for (i = 1; i < n - 1; i++)
		if (!((w[i] >= 'a' && w[i] <= 'z') || (w[i] >= 'A' && w[i] <= 'Z') ||
		      (w[i] >= '0' && w[i] <= '9') || w[i] == '_' || w[i] == '-' || w[i] == '.'))
			return false;
	return true;
}

int
milter_macros_check(const char *s, char *why, size_t whylen)
{
	char word[80];
	size_t n;

	while (s != NULL && *s != '\0') {
		s += strspn(s, " \t,");
		n = strcspn(s, " \t,");
		if (n == 0)
			break;
		if (!milter_macro_name_ok(s, n)) {
			snprintf(word, sizeof(word), "%.*s", n > 60 ? 60 : (int)n, s);
			return fail(why, whylen, "'%s' is not a macro name (one character, or {name})",
				    word);
		}
		s += n;
	}
	return 0;
}
