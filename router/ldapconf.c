/*
 * ldapconf.c - the settings file of an ldap: map (Postfix ldap_table(5)
 * style) and the expansion of its query_filter for one key.
 *
 * Pure: no I/O, no libldap. map_ldap.c reads the file and hands the bytes
 * here; the unit tests and the fuzz target call these functions directly.
 *
 * It must never accept a file it does not fully understand (an unknown or
 * repeated key, a value out of bounds: "FILE:LINE: reason"), never put a
 * key's bytes into a filter unescaped (RFC 4515: a key holding "*)(" must
 * not widen the search), and never write past the output buffer.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "router/router.h"

#define LDAP_CONF_LINE_MAX 4096         /* bytes in one logical line */

static int
fail(char *err, size_t errlen, const char *name, unsigned long line, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static int
fail(char *err, size_t errlen, const char *name, unsigned long line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (errlen == 0)
		return -1;
	n = line ? snprintf(err, errlen, "%s:%lu: ", name, line) : snprintf(err, errlen, "%s: ", name);
	if (n >= 0 && (size_t)n < errlen) {
		va_start(ap, fmt);
		vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static bool
is_space(int c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/* A value shown in an error: printable ASCII, cut. */
static const char *
shown(const char *s, char *buf, size_t len)
{
	size_t i, n = 0;

	for (i = 0; s[i] != '\0' && n + 4 < len; i++)
		buf[n++] = (s[i] > 0x20 && s[i] < 0x7f) ? s[i] : '?';
	if (s[i] != '\0') {
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n] = '\0';
	return buf;
}

/* seconds, with an optional s, m or h */
static int
parse_secs(const char *v, long min, long max, int *out)
{
	long n = 0, mult = 1;
	const char *p = v;

	if (*p < '0' || *p > '9')
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		n = n * 10 + (*p - '0');
		if (n > 100000000L)
			return -1;
	}
	if (*p == 's' || *p == 'm' || *p == 'h') {
		mult = *p == 's' ? 1 : *p == 'm' ? 60 : 3600;
		p++;
	}
	if (*p != '\0' || n * mult < min || n * mult > max)
		return -1;
	*out = (int)(n * mult);
	return 0;
}

/* a plain decimal number */
static int
parse_num(const char *v, long min, long max, int *out)
{
	if (v[0] == '\0' || strspn(v, "0123456789") != strlen(v))
		return -1;
	return parse_secs(v, min, max, out);
}

static int
parse_bool(const char *v, bool *out)
{
	if (strcasecmp(v, "yes") == 0 || strcasecmp(v, "true") == 0 || strcmp(v, "1") == 0)
		*out = true;
	else if (strcasecmp(v, "no") == 0 || strcasecmp(v, "false") == 0 || strcmp(v, "0") == 0)
		*out = false;
	else
		return -1;
	return 0;
}

/* Words separated by commas and/or blanks, into v (at most max). */
static int
split_words(const char *s, char **v, size_t max, size_t *n)
{
	size_t len;

	*n = 0;
	for (;;) {
		s += strspn(s, " \t,");
		if (*s == '\0')
			return 0;
		len = strcspn(s, " \t,");
		if (*n == max)
			return -1;
		v[(*n)++] = xstrndup(s, len);
		s += len;
	}
}

/* a URI as libldap takes it: ldap://, ldaps:// or ldapi://, or a bare
 * HOST[:PORT] that gets ldap:// and server_port */
static char *
make_uri(const char *word, int port)
{
	if (strncasecmp(word, "ldap://", 7) == 0 || strncasecmp(word, "ldaps://", 8) == 0 ||
	    strncasecmp(word, "ldapi://", 8) == 0)
		return xstrdup(word);
	if (strchr(word, ':') != NULL && word[0] != '[')
		return xasprintf("ldap://%s", word);
	if (word[0] == '[' && strstr(word, "]:") != NULL)
		return xasprintf("ldap://%s", word);
	return xasprintf("ldap://%s:%d", word, port);
}

/* A filter template is usable: balanced parentheses around it, and only
 * %s %u %d %% escapes. */
static const char *
check_filter(const char *f)
{
	int depth = 0;
	size_t i;

	if (f[0] != '(')
		return "must start with '('";
	for (i = 0; f[i] != '\0'; i++) {
		if (f[i] == '%') {
			if (f[i + 1] != 's' && f[i + 1] != 'u' && f[i + 1] != 'd' && f[i + 1] != '%')
				return "only %s, %u, %d and %% may follow '%'";
			i++;
			continue;
		}
		if ((unsigned char)f[i] < 0x20 || f[i] == 0x7f)
			return "holds a control character";
		if (f[i] == '(')
			depth++;
		else if (f[i] == ')' && --depth < 0)
			return "has an unbalanced ')'";
	}
	if (depth != 0)
		return "has an unbalanced '('";
	return NULL;
}

enum lkey {
	K_SERVER_HOST, K_SERVER_PORT, K_SEARCH_BASE, K_SCOPE, K_QUERY_FILTER, K_RESULT_ATTRIBUTE,
	K_BIND, K_BIND_DN, K_BIND_PW, K_START_TLS, K_TLS_CA_CERT_FILE, K_TLS_REQUIRE_CERT,
	K_VERSION, K_TIMEOUT, K_CACHE_TTL, K_NEGATIVE_CACHE_TTL, K_CACHE_SIZE, K_LOOKUP_THREADS,
	K_SIZE_LIMIT, K_MAX
};

static const char *const key_names[K_MAX] = {
	"server_host", "server_port", "search_base", "scope", "query_filter", "result_attribute",
	"bind", "bind_dn", "bind_pw", "start_tls", "tls_ca_cert_file", "tls_require_cert",
	"version", "timeout", "cache_ttl", "negative_cache_ttl", "cache_size", "lookup_threads",
	"size_limit",
};

/* Postfix ldap_table(5) keys that change a lookup's answer: refused, so
 * that a file written for Postfix never gives a different answer here
 * without a word */
static const char *const unsupported[] = {
	"domain", "result_format", "special_result_attribute", "terminal_result_attribute",
	"leaf_result_attribute", "dereference", "chase_referrals", "recursion_limit",
	"expansion_limit", "sasl_mechs", "sasl_authz_id", NULL,
};

static int
set_value(struct ldap_settings *s, enum lkey k, const char *v, const char *name,
	  unsigned long line, char *err, size_t errlen, char **hosts)
{
	char sh[80];
	int n;

	switch (k) {
	case K_SERVER_HOST:
		free(*hosts);
		*hosts = xstrdup(v);
		return 0;
	case K_SERVER_PORT:
		if (parse_num(v, 1, 65535, &n) < 0)
			return fail(err, errlen, name, line, "server_port: '%s' is not a port",
				    shown(v, sh, sizeof(sh)));
		s->server_port = n;
		return 0;
	case K_SEARCH_BASE:
		free(s->search_base);
		s->search_base = xstrdup(v);
		return 0;
	case K_SCOPE:
		if (strcasecmp(v, "sub") == 0)
			s->scope = LDAPC_SCOPE_SUB;
		else if (strcasecmp(v, "one") == 0)
			s->scope = LDAPC_SCOPE_ONE;
		else if (strcasecmp(v, "base") == 0)
			s->scope = LDAPC_SCOPE_BASE;
		else
			return fail(err, errlen, name, line, "scope: '%s' is not sub, one or base",
				    shown(v, sh, sizeof(sh)));
		return 0;
	case K_QUERY_FILTER: {
		const char *why = check_filter(v);

		if (why != NULL)
			return fail(err, errlen, name, line, "query_filter: '%s' %s",
				    shown(v, sh, sizeof(sh)), why);
		free(s->query_filter);
		s->query_filter = xstrdup(v);
		return 0;
	}
	case K_RESULT_ATTRIBUTE: {
		size_t i;

		for (i = 0; i < s->nattrs; i++)
			free(s->attrs[i]);
		if (split_words(v, s->attrs, LDAPC_ATTRS_MAX, &s->nattrs) < 0)
			return fail(err, errlen, name, line, "result_attribute: more than %d attributes",
				    LDAPC_ATTRS_MAX);
		s->attrs[s->nattrs] = NULL;
		if (s->nattrs == 0)
			return fail(err, errlen, name, line, "result_attribute: no attribute");
		for (i = 0; i < s->nattrs; i++)
			if (strspn(s->attrs[i], "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
				   "0123456789-;.") != strlen(s->attrs[i]))
				return fail(err, errlen, name, line,
					    "result_attribute: '%s' is not an attribute name",
					    shown(s->attrs[i], sh, sizeof(sh)));
		return 0;
	}
	case K_BIND:
		if (parse_bool(v, &s->bind) < 0)
			return fail(err, errlen, name, line, "bind: '%s' is not yes or no",
				    shown(v, sh, sizeof(sh)));
		return 0;
	case K_BIND_DN:
		free(s->bind_dn);
		s->bind_dn = xstrdup(v);
		return 0;
	case K_BIND_PW:
		free(s->bind_pw);
		s->bind_pw = xstrdup(v);
		return 0;
	case K_START_TLS:
		if (parse_bool(v, &s->start_tls) < 0)
			return fail(err, errlen, name, line, "start_tls: '%s' is not yes or no",
				    shown(v, sh, sizeof(sh)));
		return 0;
	case K_TLS_CA_CERT_FILE:
		free(s->tls_ca_cert_file);
		s->tls_ca_cert_file = xstrdup(v);
		return 0;
	case K_TLS_REQUIRE_CERT:
		if (parse_bool(v, &s->tls_require_cert) < 0)
			return fail(err, errlen, name, line, "tls_require_cert: '%s' is not yes or no",
				    shown(v, sh, sizeof(sh)));
		return 0;
	case K_VERSION:
		if (strcmp(v, "3") != 0)
			return fail(err, errlen, name, line, "version: only LDAP version 3 is spoken");
		return 0;
	case K_TIMEOUT:
		if (parse_secs(v, 1, 300, &s->timeout) < 0)
			return fail(err, errlen, name, line, "timeout: '%s' is not a time in 1s..300s",
				    shown(v, sh, sizeof(sh)));
		return 0;
	case K_CACHE_TTL:
		if (parse_secs(v, 0, 86400, &s->cache_ttl) < 0)
			return fail(err, errlen, name, line, "cache_ttl: '%s' is not a time in 0..1d",
				    shown(v, sh, sizeof(sh)));
		return 0;
	case K_NEGATIVE_CACHE_TTL:
		if (parse_secs(v, 0, 86400, &s->negative_cache_ttl) < 0)
			return fail(err, errlen, name, line,
				    "negative_cache_ttl: '%s' is not a time in 0..1d",
				    shown(v, sh, sizeof(sh)));
		return 0;
	case K_CACHE_SIZE:
		if (parse_num(v, 0, 10000000, &n) < 0)
			return fail(err, errlen, name, line, "cache_size: '%s' is not a number in "
				    "0..10000000", shown(v, sh, sizeof(sh)));
		s->cache_size = n;
		return 0;
	case K_LOOKUP_THREADS:
		if (parse_num(v, 1, LDAPC_THREADS_MAX, &n) < 0)
			return fail(err, errlen, name, line, "lookup_threads: '%s' is not a number in "
				    "1..%d", shown(v, sh, sizeof(sh)), LDAPC_THREADS_MAX);
		s->lookup_threads = n;
		return 0;
	case K_SIZE_LIMIT:
		if (parse_num(v, 0, 100000, &n) < 0)
			return fail(err, errlen, name, line, "size_limit: '%s' is not a number in "
				    "0..100000", shown(v, sh, sizeof(sh)));
		s->size_limit = n;
		return 0;
	case K_MAX:
		break;
	}
	msg_panic("ldap settings: key %d", (int)k);
}

static void
set_defaults(struct ldap_settings *s)
{
	memset(s, 0, sizeof(*s));
	s->server_port = 389;
	s->scope = LDAPC_SCOPE_SUB;
	s->query_filter = xstrdup("(mailacceptinggeneralid=%s)");
	s->attrs[0] = xstrdup("maildrop");
	s->nattrs = 1;
	s->bind = true;
	s->tls_require_cert = true;
	s->timeout = 10;
	s->cache_ttl = 60;
	s->negative_cache_ttl = 10;
	s->cache_size = 100000;
	s->lookup_threads = 4;
	s->size_limit = 0;
}

/* one logical line ("key = value", continuation lines joined) */
static int
take_line(struct ldap_settings *s, char *buf, const char *name, unsigned long line,
	  bool *seen, char *err, size_t errlen, char **hosts)
{
	char *eq, *key, *val, sh[80];
	size_t n, i;

	if ((eq = strchr(buf, '=')) == NULL)
		return fail(err, errlen, name, line, "missing '='");
	*eq = '\0';
	key = buf;
	while (is_space((unsigned char)*key))
		key++;
	n = strlen(key);
	while (n > 0 && is_space((unsigned char)key[n - 1]))
		key[--n] = '\0';
	val = eq + 1;
	while (is_space((unsigned char)*val))
		val++;
	n = strlen(val);
	while (n > 0 && is_space((unsigned char)val[n - 1]))
		val[--n] = '\0';
	if (*key == '\0')
		return fail(err, errlen, name, line, "missing key before '='");
	for (i = 0; i < K_MAX; i++)
		if (strcmp(key, key_names[i]) == 0)
			break;
	if (i == K_MAX) {
		size_t u;

		for (u = 0; unsupported[u] != NULL; u++)
			if (strcmp(key, unsupported[u]) == 0)
				return fail(err, errlen, name, line, "'%s' is not supported", key);
		return fail(err, errlen, name, line, "unknown key '%s'", shown(key, sh, sizeof(sh)));
	}
	if (seen[i])
		return fail(err, errlen, name, line, "duplicate key '%s'", key);
	seen[i] = true;
	if (*val == '\0' && i != K_SEARCH_BASE && i != K_BIND_DN && i != K_BIND_PW)
		return fail(err, errlen, name, line, "%s: missing value", key);
	return set_value(s, (enum lkey)i, val, name, line, err, errlen, hosts);
}

int
ldap_settings_parse(const char *name, const char *text, size_t len, struct ldap_settings *s,
		    char *err, size_t errlen)
{
	const char *p = text, *end = text + len, *nl;
	char buf[LDAP_CONF_LINE_MAX + 1], *hosts = NULL, *words[LDAPC_URIS_MAX];
	bool seen[K_MAX] = { false };
	unsigned long lineno = 0, start = 0;
	size_t n, used = 0, i, nw;
	bool have = false;

	set_defaults(s);
	for (;;) {
		const char *line;
		size_t ln, k;
		bool cont;

		if (p >= end) {
			if (have && take_line(s, buf, name, start, seen, err, errlen, &hosts) < 0)
				goto fail;
			break;
		}
		lineno++;
		nl = memchr(p, '\n', (size_t)(end - p));
		ln = nl ? (size_t)(nl - p) : (size_t)(end - p);
		line = p;
		p = nl ? nl + 1 : end;
		if (ln > 0 && line[ln - 1] == '\r')
			ln--;           /* CR LF line ends */
		if (memchr(line, '\0', ln) != NULL) {
			fail(err, errlen, name, lineno, "NUL byte");
			goto fail;
		}
		for (k = 0; k < ln; k++)
			if (((unsigned char)line[k] < 0x20 && line[k] != '\t' && line[k] != '\r') ||
			    line[k] == 0x7f) {
				fail(err, errlen, name, lineno, "control character 0x%02x",
				     (unsigned char)line[k]);
				goto fail;
			}
		for (k = 0; k < ln; k += n) {
			uint32_t cp;

			n = 1;
			if (line[k] == '\t')
				continue;
			if ((n = utf8_decode(line + k, ln - k, &cp)) == 0 || utf8_is_control(cp)) {
				fail(err, errlen, name, lineno, "malformed UTF-8 or a control character");
				goto fail;
			}
		}
		k = 0;
		while (k < ln && is_space((unsigned char)line[k]))
			k++;
		if (k == ln || line[k] == '#')
			continue;       /* blank or comment: does not end a continued line */
		cont = k > 0;
		if (cont && !have) {
			fail(err, errlen, name, lineno, "continuation line without a key before it");
			goto fail;
		}
		if (!cont && have) {
			if (take_line(s, buf, name, start, seen, err, errlen, &hosts) < 0)
				goto fail;
			have = false;
		}
		n = ln - k;
		if ((have ? used + 1 : 0) + n > LDAP_CONF_LINE_MAX) {
			fail(err, errlen, name, lineno, "line longer than %d bytes", LDAP_CONF_LINE_MAX);
			goto fail;
		}
		if (!have) {
			used = 0;
			start = lineno;
			have = true;
		} else {
			buf[used++] = ' ';
		}
		memcpy(buf + used, line + k, n);
		used += n;
		buf[used] = '\0';
	}
	if (!seen[K_SEARCH_BASE]) {
		fail(err, errlen, name, 0, "search_base is not set");
		goto fail;
	}
	if (hosts == NULL)
		hosts = xstrdup("localhost");
	if (split_words(hosts, words, LDAPC_URIS_MAX, &nw) < 0) {
		for (i = 0; i < LDAPC_URIS_MAX; i++)
			free(words[i]);
		fail(err, errlen, name, 0, "server_host: more than %d servers", LDAPC_URIS_MAX);
		goto fail;
	}
	if (nw == 0) {
		fail(err, errlen, name, 0, "server_host: no server");
		goto fail;
	}
	for (i = 0; i < nw; i++) {
		size_t k;

		for (k = 0; words[i][k] != '\0'; k++)
			if ((unsigned char)words[i][k] <= 0x20 || (unsigned char)words[i][k] >= 0x7f)
				break;
		if (words[i][k] != '\0') {
			char sh[80];

			fail(err, errlen, name, 0, "server_host: '%s' is not a host or an LDAP URI",
			     shown(words[i], sh, sizeof(sh)));
			for (; i < nw; i++)
				free(words[i]);
			goto fail;
		}
		s->uris[s->nuris++] = make_uri(words[i], s->server_port);
		free(words[i]);
	}
	if (s->bind_pw != NULL && (s->bind_dn == NULL || s->bind_dn[0] == '\0')) {
		fail(err, errlen, name, 0, "bind_pw is set but bind_dn is not");
		goto fail;
	}
	free(hosts);
	return 0;

fail:
	free(hosts);
	ldap_settings_free(s);
	return -1;
}

void
ldap_settings_free(struct ldap_settings *s)
{
	size_t i;

	for (i = 0; i < s->nuris; i++)
		free(s->uris[i]);
	for (i = 0; i < s->nattrs; i++)
		free(s->attrs[i]);
	free(s->search_base);
	free(s->query_filter);
	free(s->bind_dn);
	if (s->bind_pw != NULL)
		explicit_bzero(s->bind_pw, strlen(s->bind_pw));
	free(s->bind_pw);
	free(s->tls_ca_cert_file);
	memset(s, 0, sizeof(*s));
}

/* appends n bytes of v, escaped for a filter value (RFC 4515 3) */
static bool
put_escaped(char *out, size_t outlen, size_t *o, const char *v, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)v[i];

		if (c == '*' || c == '(' || c == ')' || c == '\\' || c == '\0') {
			if (*o + 3 >= outlen)
				return false;
			out[(*o)++] = '\\';
			out[(*o)++] = hex[c >> 4];
			out[(*o)++] = hex[c & 15];
		} else {
			if (*o + 1 >= outlen)
				return false;
			out[(*o)++] = (char)c;
		}
	}
	return true;
}

int
ldap_filter_expand(const char *filter, const char *key, char *out, size_t outlen)
{
	const char *at = strrchr(key, '@');
	size_t o = 0, klen = strlen(key);
	const char *f;

	if (outlen == 0)
		return -1;
	for (f = filter; *f != '\0'; f++) {
		if (*f != '%') {
			if (o + 1 >= outlen)
				return -1;
			out[o++] = *f;
			continue;
		}
		f++;
		switch (*f) {
		case 's':
			if (!put_escaped(out, outlen, &o, key, klen))
				return -1;
			break;
		case 'u':
			/* Postfix: the local part, or the whole key when it is not
			 * an address; an empty local part ("@domain") is never asked */
			if (at != NULL && at == key)
				return 0;
			if (!put_escaped(out, outlen, &o, key, at ? (size_t)(at - key) : klen))
				return -1;
			break;
		case 'd':
			/* a key without a domain is never asked with %d */
			if (at == NULL || at[1] == '\0')
				return 0;
			if (!put_escaped(out, outlen, &o, at + 1, strlen(at + 1)))
				return -1;
			break;
		case '%':
			if (o + 1 >= outlen)
				return -1;
			out[o++] = '%';
			break;
		default:
			/* refused when the file was read; a stray one ends the filter */
			return -1;
		}
	}
	out[o] = '\0';
	return 1;
}
