/*
 * auth.c - who may log in, and which senders a login may use.
 *
 * Passwords are checked against auth_map (login -> crypt(3) hash) with
 * crypt_r on a worker's own small thread pool, never on the event loop:
 * a yescrypt hash costs milliseconds of CPU, and the other sessions of the
 * worker must not wait for it. An unknown login costs the same work (a
 * hash of the same kind made at start) and gets the same answer as a wrong
 * password, so neither timing nor reply tells which logins exist.
 *
 * This file must never log a password, and never leave one in memory it
 * gives back.
 */
#include "config.h"

#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "router/router.h"
#include "smtpd/auth.h"

#define AUTH_THREADS 2
#define AUTH_NICE 10      /* hashing yields the CPU to the event loops */
#define HASH_MAX 512

struct auth {
	struct iopool *pool;
	struct map *auth_map;
	struct map *sender_login_map;       /* NULL: a login sends only as itself */
	char dummy[CRYPT_OUTPUT_SIZE];      /* checked for unknown logins */
};

struct auth_job {
	char hash[HASH_MAX];
	char pass[AUTH_PASS_MAX + 1];
	struct map *map;                    /* auth_map to look up on the pool thread (ldap:) */
	const char *dummy;
	char login[ADDR_PATH_MAX + 2];
	bool known;
	enum auth_result result;
	auth_done_fn *done;
	void *arg;
};

struct auth *
auth_new(struct event_base *base, const struct config *cf, char *err, size_t errlen)
{
	struct auth *a = xcalloc(1, sizeof(*a));
	struct crypt_data *cd;
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];

	if (cf->auth_map != NULL && (a->auth_map = map_open(cf->auth_map, err, errlen)) == NULL)
		goto fail;
	if (cf->sender_login_map != NULL &&
	    (a->sender_login_map = map_open(cf->sender_login_map, err, errlen)) == NULL)
		goto fail;
	if (crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof(salt)) == NULL) {
		snprintf(err, errlen, "crypt_gensalt: yescrypt is not available");
		goto fail;
	}
	cd = xcalloc(1, sizeof(*cd));
	if (crypt_r("no password is this", salt, cd) == NULL || cd->output[0] == '*') {
		snprintf(err, errlen, "crypt: yescrypt is not available");
		free(cd);
		goto fail;
	}
	snprintf(a->dummy, sizeof(a->dummy), "%s", cd->output);
	free(cd);
	a->pool = iopool_create(base, AUTH_THREADS);
	return a;

fail:
	if (a->auth_map)
		map_close(a->auth_map);
	free(a);
	return NULL;
}

int
auth_check_maps(const struct config *cf, char *err, size_t errlen)
{
	const char *names[] = { "auth_map", "sender_login_map" };
	const char *specs[] = { cf->auth_map, cf->sender_login_map };
	char e[400], where[300];
	struct map *m;
	size_t i;
	int rc = 0;

	for (i = 0; i < 2 && rc == 0; i++) {
		if (specs[i] == NULL)
			continue;
		if ((m = map_open(specs[i], e, sizeof(e))) == NULL || map_ready(m, e, sizeof(e)) < 0) {
			snprintf(err, errlen, "%s: %s %s",
				 config_where(cf, names[i], where, sizeof(where)), names[i], e);
			rc = -1;
		}
		if (m != NULL)
			map_close(m);
	}
	return rc;
}

void
auth_free(struct auth *a)
{
	if (a == NULL)
		return;
	iopool_destroy(a->pool);
	if (a->auth_map)
		map_close(a->auth_map);
	if (a->sender_login_map)
		map_close(a->sender_login_map);
	free(a);
}

/* On a pool thread: an auth_map that may wait for its server (ldap:) is
 * looked up here, never on the loop; the wait is bounded by its timeout.
 * -1 when the lookup failed (the result is set). */
static int
lookup_work(struct auth_job *j)
{
	char err[256];

	switch (map_lookup(j->map, j->login, j->hash, sizeof(j->hash), err, sizeof(err))) {
	case MAP_FOUND:
		j->known = true;
		return 0;
	case MAP_NOTFOUND:
		snprintf(j->hash, sizeof(j->hash), "%s", j->dummy);
		return 0;
	case MAP_TEMPFAIL:
	case MAP_PENDING:
		break;
	}
	msg_warn("auth_map %s: %s", map_spec(j->map), err);
	explicit_bzero(j->pass, sizeof(j->pass));
	j->result = AUTH_TEMPFAIL;
	return -1;
}

/* on a pool thread */
static void
check_work(void *arg)
{
	static __thread bool niced;
	struct auth_job *j = arg;
	struct crypt_data *cd;
	const char *out;
	size_t n;

	/* A yescrypt hash is tens of milliseconds of CPU. At a lower priority
	 * (Linux: per thread) a burst of logins slows the logins, not the
	 * sessions of every event loop on the machine. */
	if (!niced) {
		(void)setpriority(PRIO_PROCESS, (id_t)gettid(), AUTH_NICE);
		niced = true;
	}
	if (j->map != NULL && lookup_work(j) < 0)
		return;
	n = strlen(j->hash);
	cd = xcalloc(1, sizeof(*cd));
	out = crypt_r(j->pass, j->hash, cd);
	j->result = AUTH_FAIL;
	if (j->known && out != NULL && out[0] != '*' && strlen(out) == n &&
	    CRYPTO_memcmp(out, j->hash, n) == 0)
		j->result = AUTH_OK;
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	explicit_bzero(j->pass, sizeof(j->pass));
}

static void
nothing_to_do(void *arg)
{
	(void)arg;
}

/* on the loop */
static void
check_done(void *arg)
{
	struct auth_job *j = arg;

	j->done(j->arg, j->result);
	free(j);
}

void
auth_check(struct auth *a, const char *login, const char *pass, auth_done_fn *done, void *arg)
{
	struct auth_job *j = xcalloc(1, sizeof(*j));
	char err[256];

	j->done = done;
	j->arg = arg;
	snprintf(j->pass, sizeof(j->pass), "%s", pass);
	if (map_thread_safe(a->auth_map)) {
		j->map = a->auth_map;
		j->dummy = a->dummy;
		snprintf(j->login, sizeof(j->login), "%s", login);
		iopool_run(a->pool, check_work, check_done, j);
		return;
	}
	switch (map_lookup(a->auth_map, login, j->hash, sizeof(j->hash), err, sizeof(err))) {
	case MAP_FOUND:
		/* a locked account ("!...", "*") fails in crypt like a wrong password */
		j->known = true;
		break;
	case MAP_NOTFOUND:
		snprintf(j->hash, sizeof(j->hash), "%s", a->dummy);
		break;
	case MAP_TEMPFAIL:
	case MAP_PENDING:
		msg_warn("auth_map %s: %s", map_spec(a->auth_map), err);
		explicit_bzero(j->pass, sizeof(j->pass));
		j->result = AUTH_TEMPFAIL;
		/* answered from the loop like every other result, never from here */
		iopool_run(a->pool, nothing_to_do, check_done, j);
		return;
	}
	iopool_run(a->pool, check_work, check_done, j);
}

int
auth_hash_password(const char *pass, char *out, size_t outlen)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd;
	int rc = -1;

	if (crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof(salt)) == NULL)
		return -1;
	cd = xcalloc(1, sizeof(*cd));
	if (crypt_r(pass, salt, cd) != NULL && cd->output[0] != '*' &&
	    strlen(cd->output) < outlen) {
		memcpy(out, cd->output, strlen(cd->output) + 1);
		rc = 0;
	}
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return rc;
}

static bool
login_in_list(const char *list, const char *login)
{
	size_t n, want = strlen(login);
	const char *p = list;

	while (*p != '\0') {
		p += strspn(p, " \t,");
		n = strcspn(p, " \t,");
		if (n == want && strncasecmp(p, login, n) == 0)
			return true;
		p += n;
	}
	return false;
}

enum sender_verdict
auth_sender_owned(struct auth *a, const char *login, const char *sender, char *why, size_t whylen)
{
	char val[4096], key[ADDR_PATH_MAX + 2];
	const char *at;
	enum map_status st;

	if (strcasecmp(login, sender) == 0)
		return SENDER_OWNED;
	if (a->sender_login_map == NULL || sender[0] == '\0')
		return SENDER_NOT_OWNED;
	st = map_lookup(a->sender_login_map, sender, val, sizeof(val), why, whylen);
	if (st == MAP_NOTFOUND && (at = strrchr(sender, '@')) != NULL) {
		snprintf(key, sizeof(key), "%s", at);
		st = map_get(a->sender_login_map, key, val, sizeof(val), why, whylen);
	}
	if (st == MAP_PENDING)
		return SENDER_WAIT;
	if (st == MAP_TEMPFAIL)
		return SENDER_TEMPFAIL;
	if (st == MAP_FOUND && login_in_list(val, login))
		return SENDER_OWNED;
	return SENDER_NOT_OWNED;
}

void
auth_set_wakeup(struct auth *a, int fd)
{
	if (a != NULL)
		map_set_wakeup(a->sender_login_map, fd);
}
