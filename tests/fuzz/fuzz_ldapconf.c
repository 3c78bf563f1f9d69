/*
 * fuzz_ldapconf.c - libFuzzer target for the ldap: map settings file and
 * the query filter expansion (router/ldapconf.c). A settings file is
 * parsed or refused with "NAME:LINE: reason", never read past its end;
 * what parses has a server, a filter and NULL-terminated attributes; and
 * a key, however hostile, expands into a filter whose parentheses are
 * exactly the template's (RFC 4515 escaping: no key can add a clause).
 * The first input byte picks the mode. Built by tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"
#include "router/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

static size_t
count(const char *s, char c)
{
	size_t n = 0;

	for (; *s; s++)
		if (*s == c)
			n++;
	return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const templates[] = {
		"(mail=%s)", "(&(uid=%u)(dc=%d))", "(|(mail=%s)(alias=%s))", "(cn=%%%s%%)",
	};
	struct ldap_settings s;
	char err[256], out[1024], *key;
	const char *t;
	size_t i;
	int rc;

	if (size == 0)
		return 0;
	if (data[0] & 1) {
		rc = ldap_settings_parse("f", (const char *)data + 1, size - 1, &s, err, sizeof(err));
		if (rc < 0) {
			CHECK(strncmp(err, "f", 1) == 0 && memchr(err, '\0', sizeof(err)) != NULL);
			CHECK(s.nuris == 0 && s.query_filter == NULL);
			return 0;
		}
		CHECK(s.nuris >= 1 && s.nuris <= LDAPC_URIS_MAX && s.query_filter != NULL);
		CHECK(s.nattrs >= 1 && s.attrs[s.nattrs] == NULL && s.search_base != NULL);
		CHECK(s.timeout >= 1 && s.lookup_threads >= 1);
		for (i = 0; i < s.nuris; i++)
			CHECK(strncasecmp(s.uris[i], "ldap", 4) == 0);
		/* the file's own filter, with a key from the rest of the input */
		rc = ldap_filter_expand(s.query_filter, "k@example.test", out, sizeof(out));
		CHECK(rc >= -1 && rc <= 1);
		ldap_settings_free(&s);
		return 0;
	}
	t = templates[(data[0] >> 1) % 4];
	key = malloc(size);
	memcpy(key, data + 1, size - 1);
	key[size - 1] = '\0';
	rc = ldap_filter_expand(t, key, out, sizeof(out));
	CHECK(rc >= -1 && rc <= 1);
	if (rc == 1) {
		CHECK(strlen(out) < sizeof(out));
		CHECK(count(out, '(') == count(t, '(') && count(out, ')') == count(t, ')'));
		CHECK(count(out, '*') == 0);
	}
	/* a buffer too small is refused, never overrun */
	rc = ldap_filter_expand(t, key, out, 8);
	CHECK(rc <= 0 || strlen(out) < 8);
	free(key);
	return 0;
}
