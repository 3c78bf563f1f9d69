/*
 * map_ldap.c - the ldap: map backend: lookups against an LDAP directory
 * (OpenLDAP libldap) on lookup threads, behind a cache.
 *
 * One handle = one settings file (ldapconf.c), its cache and its threads.
 * Each thread holds its own connection, opened on first use: the URIs of
 * server_host are tried in order (the first that connects and binds
 * wins), a connection that fails is dropped and opened again, and when
 * every server failed nobody tries again before a backoff (0.5 s, doubled
 * up to 10 s) runs out: meanwhile lookups fail at once.
 *
 * The cache holds each key's last answer: found (cache_ttl), not found
 * (negative_cache_ttl) or failed (no longer than the hold below). A key
 * not in the cache, or whose answer is stale, is queued for the threads
 * once, however many ask; those who ask meanwhile get MAP_PENDING (a
 * caller with a wake-up descriptor, an event loop) or wait for it (a
 * caller without, bounded by `timeout`). An answer is kept at least
 * HOLD_MIN_MS (and twice the time it took) whatever the TTLs, so that the
 * caller that asked, which retries its whole resolution when woken, finds
 * it. A request older than `timeout` is a temporary failure, answered or
 * not: a slow or stopped server costs each session `timeout`, never more,
 * and never stalls what the cache or other maps can answer.
 *
 * This file must never answer MAP_NOTFOUND for a key it could not look up
 * (that would be a 550 for a user who may exist), never block the caller
 * longer than `timeout`, never free the handle while a thread still uses
 * it (the last one out frees it), and never log a password.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ldap.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "router/router.h"

#define HOLD_MIN_MS 1000          /* an answer lives at least this long */
#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 10000
#define QUEUE_MAX 10000           /* keys waiting for a thread */
#define FILTER_MAX 2048

enum lstate { LE_QUEUED, LE_RUNNING, LE_DONE };

struct lentry {
	char *key;
	enum lstate state;
	enum map_status st;       /* LE_DONE: FOUND, NOTFOUND or TEMPFAIL */
	char *val;                /* FOUND */
	char *err;                /* TEMPFAIL */
	uint64_t asked;           /* ms (monotonic) of the current request */
	uint64_t expires;         /* ms: LE_DONE answers until then */
	int waiters;              /* blocking callers waiting on it: not evicted meanwhile */
	struct lentry *hnext;     /* hash chain */
	struct lentry *prev, *next; /* the queue (LE_QUEUED) or the age list (LE_DONE) */
};

struct llist {
	struct lentry *head, *tail;
	size_t n;
};

struct lmap {
	struct ldap_settings cf;
	char *name;               /* the settings file, for messages */
	pthread_mutex_t mu;
	pthread_cond_t work;      /* the queue got a key, or closing */
	pthread_cond_t done;      /* an answer arrived */
	struct lentry **tab;
	size_t tabsize, n;
	struct llist queue;       /* LE_QUEUED, oldest first */
	struct llist aged;        /* LE_DONE, oldest answer first */
	int wake_fd;
	int refs;                 /* the owner and every thread still running */
	bool closing;
	uint64_t down_until;      /* ms: every server failed; no connection attempt before */
	unsigned backoff_ms;
	bool down_logged;
	long uri_logged;          /* the server last said to be in use, or -1 */
	char down_err[300];
};

struct lconn {
	LDAP *ld;
	size_t uri;               /* which server_host entry it is connected to */
};

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- the cache: a hash table, a request queue and an age list ---- */

static size_t
hash_key(const char *k, size_t size)
{
	uint64_t h = 1469598103934665603ULL;   /* FNV-1a */

	for (; *k; k++) {
		h ^= (unsigned char)*k;
		h *= 1099511628211ULL;
	}
	return (size_t)(h % size);
}

static void
list_push(struct llist *l, struct lentry *e)
{
	e->next = NULL;
	e->prev = l->tail;
	if (l->tail)
		l->tail->next = e;
	else
		l->head = e;
	l->tail = e;
	l->n++;
}

static void
list_unlink(struct llist *l, struct lentry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		l->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		l->tail = e->prev;
	e->prev = e->next = NULL;
	l->n--;
}

static struct lentry *
find(struct lmap *m, const char *key)
{
	struct lentry *e;

	for (e = m->tab[hash_key(key, m->tabsize)]; e; e = e->hnext)
		if (strcmp(e->key, key) == 0)
			return e;
	return NULL;
}

static void
entry_free(struct lentry *e)
{
	free(e->key);
	free(e->val);
	free(e->err);
	free(e);
}

static void
forget(struct lmap *m, struct lentry *e)
{
	struct lentry **pp = &m->tab[hash_key(e->key, m->tabsize)];

	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	m->n--;
	entry_free(e);
}

/* Drops the oldest answers beyond cache_size (never a request under way,
 * never one a blocking caller waits for). */
static void
evict(struct lmap *m, uint64_t now)
{
	struct lentry *e = m->aged.head, *next;

	while (e != NULL && m->n > (size_t)m->cf.cache_size) {
		next = e->next;
		if (e->waiters == 0 && now >= e->expires) {
			list_unlink(&m->aged, e);
			forget(m, e);
		} else if (e->waiters == 0 && m->n > (size_t)m->cf.cache_size * 2 + 1000) {
			/* far over the size with fresh answers only: the oldest go too */
			list_unlink(&m->aged, e);
			forget(m, e);
		}
		e = next;
	}
}

static void
wake(struct lmap *m)
{
	uint64_t one = 1;

	/* under the lock: close() sets wake_fd to -1 before the owner may
	 * close the descriptor, so a thread never writes to a reused one */
	if (m->wake_fd >= 0 && write(m->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		(void)0;        /* a full counter is still a wake-up */
}

/* Records an answer for e (the lock held). */
static void
fill(struct lmap *m, struct lentry *e, enum map_status st, const char *val, const char *err)
{
	uint64_t now = now_ms(), took = now - e->asked, hold = HOLD_MIN_MS + 2 * took;
	uint64_t ttl = st == MAP_FOUND ? (uint64_t)m->cf.cache_ttl * 1000 :
	    st == MAP_NOTFOUND ? (uint64_t)m->cf.negative_cache_ttl * 1000 : 0;

	free(e->val);
	free(e->err);
	e->val = st == MAP_FOUND ? xstrdup(val) : NULL;
	e->err = st == MAP_TEMPFAIL ? xstrdup(err) : NULL;
	e->st = st;
	e->state = LE_DONE;
	e->expires = now + (ttl > hold ? ttl : hold);
	list_push(&m->aged, e);
	pthread_cond_broadcast(&m->done);
	wake(m);
}

/* ---- LDAP, on a lookup thread ---- */

static void
conn_drop(struct lconn *c)
{
	if (c->ld != NULL)
		ldap_unbind_ext_s(c->ld, NULL, NULL);
	c->ld = NULL;
}

/* "uri: reason (server's diagnostic)" */
static void
ldap_why(LDAP *ld, const char *uri, int rc, char *err, size_t errlen)
{
	char *diag = NULL;

	if (ld != NULL)
		(void)ldap_get_option(ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diag);
	snprintf(err, errlen, "%s: %s%s%s%s", uri, ldap_err2string(rc), diag && *diag ? " (" : "",
		 diag && *diag ? diag : "", diag && *diag ? ")" : "");
	if (diag != NULL)
		ldap_memfree(diag);
}

/* One server: initialise, options, StartTLS, bind. */
static LDAP *
conn_try(struct lmap *m, const char *uri, char *err, size_t errlen)
{
	struct timeval tv = { m->cf.timeout, 0 };
	int version = LDAP_VERSION3, rc, req;
	struct berval cred;
	LDAP *ld = NULL;

	if ((rc = ldap_initialize(&ld, uri)) != LDAP_SUCCESS) {
		ldap_why(NULL, uri, rc, err, errlen);
		return NULL;
	}
	(void)ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &version);
	(void)ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &tv);
	(void)ldap_set_option(ld, LDAP_OPT_TIMEOUT, &tv);
	(void)ldap_set_option(ld, LDAP_OPT_TIMELIMIT, &m->cf.timeout);
	(void)ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
	(void)ldap_set_option(ld, LDAP_OPT_RESTART, LDAP_OPT_ON);
	if (m->cf.tls_ca_cert_file != NULL)
		(void)ldap_set_option(ld, LDAP_OPT_X_TLS_CACERTFILE, m->cf.tls_ca_cert_file);
	req = m->cf.tls_require_cert ? LDAP_OPT_X_TLS_DEMAND : LDAP_OPT_X_TLS_NEVER;
	(void)ldap_set_option(ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &req);
	req = 0;
	(void)ldap_set_option(ld, LDAP_OPT_X_TLS_NEWCTX, &req);
	if ((rc = ldap_connect(ld)) != LDAP_SUCCESS)
		goto fail;
	if (m->cf.start_tls && strncasecmp(uri, "ldaps:", 6) != 0 &&
	    (rc = ldap_start_tls_s(ld, NULL, NULL)) != LDAP_SUCCESS)
		goto fail;
	if (m->cf.bind) {
		cred.bv_val = m->cf.bind_pw ? m->cf.bind_pw : "";
		cred.bv_len = strlen(cred.bv_val);
		rc = ldap_sasl_bind_s(ld, m->cf.bind_dn ? m->cf.bind_dn : "", LDAP_SASL_SIMPLE, &cred,
				      NULL, NULL, NULL);
		if (rc != LDAP_SUCCESS)
			goto fail;
	}
	return ld;

fail:
	ldap_why(ld, uri, rc, err, errlen);
	ldap_unbind_ext_s(ld, NULL, NULL);
	return NULL;
}

/* A connection for this thread: 0, or -1 with err (every server failed,
 * or the backoff after that has not run out). */
static int
conn_open(struct lmap *m, struct lconn *c, char *err, size_t errlen)
{
	char why[600] = "", one[256];
	uint64_t now = now_ms();
	size_t i, n;
	LDAP *ld;

	if (c->ld != NULL)
		return 0;
	pthread_mutex_lock(&m->mu);
	if (now < m->down_until) {
		snprintf(err, errlen, "no LDAP server reachable (%s); next attempt in %llu ms",
			 m->down_err, (unsigned long long)(m->down_until - now));
		pthread_mutex_unlock(&m->mu);
		return -1;
	}
	pthread_mutex_unlock(&m->mu);
	for (i = 0; i < m->cf.nuris; i++) {
		if ((ld = conn_try(m, m->cf.uris[i], one, sizeof(one))) == NULL) {
			/* the failures so far, for the line that says what happened */
			n = strlen(why);
			if (n + 3 < sizeof(why))
				snprintf(why + n, sizeof(why) - n, "%s%.250s", n ? "; " : "", one);
			continue;
		}
		c->ld = ld;
		c->uri = i;
		pthread_mutex_lock(&m->mu);
		/* one line per change of server, not one per thread */
		if (m->down_logged || (long)i != m->uri_logged)
			msg_info("ldap:%s: connected to %s%s%s%s", m->name, m->cf.uris[i],
				 why[0] ? " (" : "", why, why[0] ? ")" : "");
		m->uri_logged = (long)i;
		m->down_logged = false;
		m->backoff_ms = 0;
		m->down_until = 0;
		pthread_mutex_unlock(&m->mu);
		return 0;
	}
	pthread_mutex_lock(&m->mu);
	m->backoff_ms = m->backoff_ms == 0 ? BACKOFF_MIN_MS :
	    m->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : m->backoff_ms * 2;
	m->down_until = now_ms() + m->backoff_ms;
	snprintf(m->down_err, sizeof(m->down_err), "%.290s", why);
	if (!m->down_logged)
		msg_warn("ldap:%s: no server of server_host answers (%s); lookups fail temporarily",
			 m->name, why);
	m->down_logged = true;
	pthread_mutex_unlock(&m->mu);
	snprintf(err, errlen, "no LDAP server reachable (%.400s)", why);
	return -1;
}

/* Appends the values of one entry's result attributes to out. 0, or -1
 * with err (a value that could not be used: the lookup fails, it does not
 * guess). */
static int
collect(struct lmap *m, LDAP *ld, LDAPMessage *ent, struct dstr *out, char *err, size_t errlen)
{
	struct berval **vals;
	size_t a, i;

	for (a = 0; a < m->cf.nattrs; a++) {
		if ((vals = ldap_get_values_len(ld, ent, m->cf.attrs[a])) == NULL)
			continue;
		for (i = 0; vals[i] != NULL; i++) {
			if (vals[i]->bv_len == 0)
				continue;
			if (!utf8_valid(vals[i]->bv_val, vals[i]->bv_len)) {
				snprintf(err, errlen, "a value of %s is not printable UTF-8",
					 m->cf.attrs[a]);
				ldap_value_free_len(vals);
				return -1;
			}
			if ((out->len > 0 && dstr_append(out, ",", 1) < 0) ||
			    dstr_append(out, vals[i]->bv_val, vals[i]->bv_len) < 0) {
				snprintf(err, errlen, "the values are longer than %d bytes", MAP_VALUE_MAX);
				ldap_value_free_len(vals);
				return -1;
			}
		}
		ldap_value_free_len(vals);
	}
	return 0;
}

static bool
conn_lost(int rc)
{
	return rc == LDAP_SERVER_DOWN || rc == LDAP_CONNECT_ERROR || rc == LDAP_TIMEOUT ||
	       rc == LDAP_UNAVAILABLE || rc == LDAP_BUSY || rc == LDAP_UNWILLING_TO_PERFORM ||
	       rc == LDAP_TIMELIMIT_EXCEEDED || rc == LDAP_OTHER || rc == LDAP_LOCAL_ERROR ||
	       rc == LDAP_ENCODING_ERROR || rc == LDAP_DECODING_ERROR;
}

/* The lookup itself. FOUND (val set), NOTFOUND or TEMPFAIL (err). */
static enum map_status
query(struct lmap *m, struct lconn *c, const char *key, struct dstr *val, char *err, size_t errlen)
{
	static const int scopes[] = {
		[LDAPC_SCOPE_BASE] = LDAP_SCOPE_BASE,
		[LDAPC_SCOPE_ONE] = LDAP_SCOPE_ONELEVEL,
		[LDAPC_SCOPE_SUB] = LDAP_SCOPE_SUBTREE,
	};
	char filter[FILTER_MAX];
	struct timeval tv = { m->cf.timeout, 0 };
	LDAPMessage *res = NULL, *ent;
	int rc, attempt;

	rc = ldap_filter_expand(m->cf.query_filter, key, filter, sizeof(filter));
	if (rc == 0)
		return MAP_NOTFOUND;
	if (rc < 0) {
		snprintf(err, errlen, "the query filter for \"%.100s\" is too long", key);
		return MAP_TEMPFAIL;
	}
	for (attempt = 0; attempt < 2; attempt++) {
		if (conn_open(m, c, err, errlen) < 0)
			return MAP_TEMPFAIL;
		rc = ldap_search_ext_s(c->ld, m->cf.search_base, scopes[m->cf.scope], filter,
				       m->cf.attrs, 0, NULL, NULL, &tv, m->cf.size_limit, &res);
		if (rc == LDAP_SUCCESS || rc == LDAP_NO_SUCH_OBJECT)
			break;
		ldap_why(c->ld, m->cf.uris[c->uri], rc, err, errlen);
		if (res != NULL)
			ldap_msgfree(res);
		res = NULL;
		if (!conn_lost(rc))
			return MAP_TEMPFAIL;    /* sizelimit, a bad filter: the same next time */
		conn_drop(c);
		/* a connection the server closed meanwhile (a restart) is opened
		 * again at once; a timeout is not tried twice */
		if (rc != LDAP_SERVER_DOWN && rc != LDAP_CONNECT_ERROR)
			return MAP_TEMPFAIL;
	}
	if (attempt == 2)
		return MAP_TEMPFAIL;
	if (rc == LDAP_NO_SUCH_OBJECT) {
		if (res != NULL)
			ldap_msgfree(res);
		return MAP_NOTFOUND;    /* no search_base: nothing under it either */
	}
	dstr_reset(val);
	for (ent = ldap_first_entry(c->ld, res); ent != NULL; ent = ldap_next_entry(c->ld, ent))
		if (collect(m, c->ld, ent, val, err, errlen) < 0) {
			ldap_msgfree(res);
			return MAP_TEMPFAIL;
		}
	ldap_msgfree(res);
	return val->len > 0 ? MAP_FOUND : MAP_NOTFOUND;
}

static void lmap_free(struct lmap *m);

static void *
lookup_thread(void *arg)
{
	struct lmap *m = arg;
	struct lconn c = { NULL, 0 };
	struct lentry *e;
	struct dstr val;
	char key[MAP_KEY_MAX + 1], err[512];
	enum map_status st;
	bool last;

	dstr_init(&val, MAP_VALUE_MAX);
	pthread_mutex_lock(&m->mu);
	for (;;) {
		while (!m->closing && m->queue.head == NULL)
			pthread_cond_wait(&m->work, &m->mu);
		if (m->closing)
			break;
		e = m->queue.head;
		list_unlink(&m->queue, e);
		if (now_ms() - e->asked >= (uint64_t)m->cf.timeout * 1000) {
			/* every caller has given up on it already */
			fill(m, e, MAP_TEMPFAIL, NULL, "no lookup thread free within timeout");
			continue;
		}
		e->state = LE_RUNNING;
		snprintf(key, sizeof(key), "%s", e->key);
		pthread_mutex_unlock(&m->mu);
		st = query(m, &c, key, &val, err, sizeof(err));
		pthread_mutex_lock(&m->mu);
		fill(m, e, st, val.s ? val.s : "", err);
	}
	last = --m->refs == 0;
	pthread_mutex_unlock(&m->mu);
	conn_drop(&c);
	dstr_free(&val);
	if (last)
		lmap_free(m);
	return NULL;
}

/* ---- the backend ---- */

static void
lmap_free(struct lmap *m)
{
	struct lentry *e, *next;
	size_t i;

	for (i = 0; i < m->tabsize; i++)
		for (e = m->tab[i]; e; e = next) {
			next = e->hnext;
			entry_free(e);
		}
	free(m->tab);
	pthread_mutex_destroy(&m->mu);
	pthread_cond_destroy(&m->work);
	pthread_cond_destroy(&m->done);
	ldap_settings_free(&m->cf);
	free(m->name);
	free(m);
}

static int
read_file(const char *path, struct dstr *out, char *err, size_t errlen)
{
	char buf[8192];
	ssize_t r;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
		return -1;
	}
	dstr_init(out, LDAPC_FILE_MAX);
	for (;;) {
		r = read(fd, buf, sizeof(buf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		if (dstr_append(out, buf, (size_t)r) < 0) {
			snprintf(err, errlen, "%s: larger than %d bytes", path, LDAPC_FILE_MAX);
			close(fd);
			dstr_free(out);
			return -1;
		}
	}
	if (r < 0) {
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
		close(fd);
		dstr_free(out);
		return -1;
	}
	close(fd);
	explicit_bzero(buf, sizeof(buf));
	return 0;
}

static void *
lmap_open(const char *arg, struct map_stamp *st, char *err, size_t errlen)
{
	struct lmap *m;
	struct dstr text;
	pthread_condattr_t ca;
	pthread_attr_t ta;
	pthread_t t;
	int i, started = 0, version;

	if (read_file(arg, &text, err, errlen) < 0)
		return NULL;
	m = xcalloc(1, sizeof(*m));
	if (ldap_settings_parse(arg, text.s ? text.s : "", text.len, &m->cf, err, errlen) < 0) {
		if (text.s)
			explicit_bzero(text.s, text.len);
		dstr_free(&text);
		free(m);
		return NULL;
	}
	if (text.s)
		explicit_bzero(text.s, text.len);
	dstr_free(&text);
	m->name = xstrdup(arg);
	m->wake_fd = -1;
	m->uri_logged = 0;      /* the first server in use needs no word */
	m->tabsize = 1024;
	while (m->tabsize < (size_t)m->cf.cache_size && m->tabsize < (1u << 20))
		m->tabsize *= 2;
	m->tab = xcalloc(m->tabsize, sizeof(*m->tab));
	pthread_mutex_init(&m->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&m->work, NULL);
	pthread_cond_init(&m->done, &ca);
	pthread_condattr_destroy(&ca);
	m->refs = 1;
	/* libldap sets itself up on first use, SASL's plugins included (their
	 * lookups leave an error buffer in the calling thread): done here,
	 * in the opening thread, not in a detached lookup thread that may
	 * still be on its way out when the process ends */
	(void)ldap_get_option(NULL, LDAP_OPT_PROTOCOL_VERSION, &version);
	pthread_attr_init(&ta);
	pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
	for (i = 0; i < m->cf.lookup_threads; i++) {
		pthread_mutex_lock(&m->mu);
		m->refs++;
		pthread_mutex_unlock(&m->mu);
		if (pthread_create(&t, &ta, lookup_thread, m) != 0) {
			pthread_mutex_lock(&m->mu);
			m->refs--;
			pthread_mutex_unlock(&m->mu);
			break;
		}
		started++;
	}
	pthread_attr_destroy(&ta);
	if (started == 0)
		msg_fatal("ldap:%s: cannot start a lookup thread", arg);
	(void)st;
	return m;
}

static void
lmap_close(void *h)
{
	struct lmap *m = h;
	bool last;

	pthread_mutex_lock(&m->mu);
	m->closing = true;
	m->wake_fd = -1;
	last = --m->refs == 0;
	pthread_cond_broadcast(&m->work);
	pthread_mutex_unlock(&m->mu);
	/* a thread still inside a search finishes it (at most timeout) and
	 * frees the handle as the last one out */
	if (last)
		lmap_free(m);
}

static void
lmap_set_wakeup(void *h, int fd)
{
	struct lmap *m = h;

	pthread_mutex_lock(&m->mu);
	m->wake_fd = fd;
	pthread_mutex_unlock(&m->mu);
}

/* Gives out e's answer (the lock held). */
static enum map_status
serve(const struct lentry *e, const char *key, char *val, size_t vallen, char *err, size_t errlen)
{
	size_t n;

	switch (e->st) {
	case MAP_FOUND:
		n = strlen(e->val);
		if (n >= vallen) {
			snprintf(err, errlen, "value of \"%.100s\" longer than %zu bytes", key, vallen - 1);
			return MAP_TEMPFAIL;
		}
		memcpy(val, e->val, n + 1);
		return MAP_FOUND;
	case MAP_TEMPFAIL:
		snprintf(err, errlen, "%s", e->err ? e->err : "lookup failed");
		return MAP_TEMPFAIL;
	default:
		return MAP_NOTFOUND;
	}
}

static enum map_status
lmap_lookup(void *h, const char *key, size_t keylen, char *val, size_t vallen,
	    char *err, size_t errlen)
{
	struct lmap *m = h;
	char filter[FILTER_MAX];
	uint64_t now = now_ms(), timeout = (uint64_t)m->cf.timeout * 1000, deadline;
	struct lentry *e;
	enum map_status st;
	struct timespec ts;
	int rc;

	if (vallen == 0)
		msg_panic("lmap_lookup: no room for a value");
	/* keys a filter can never ask about are not even queued */
	rc = ldap_filter_expand(m->cf.query_filter, key, filter, sizeof(filter));
	if (rc == 0)
		return MAP_NOTFOUND;
	if (rc < 0) {
		snprintf(err, errlen, "the query filter for \"%.100s\" is too long", key);
		return MAP_TEMPFAIL;
	}
	pthread_mutex_lock(&m->mu);
	e = find(m, key);
	if (e != NULL && e->state == LE_DONE && now < e->expires) {
		st = serve(e, key, val, vallen, err, errlen);
		pthread_mutex_unlock(&m->mu);
		return st;
	}
	if (e != NULL && e->state == LE_DONE) {
		/* stale: asked again, the old answer dropped */
		list_unlink(&m->aged, e);
		e->state = LE_QUEUED;
		e->asked = now;
		list_push(&m->queue, e);
		pthread_cond_signal(&m->work);
	} else if (e != NULL) {
		if (now - e->asked >= timeout) {
			pthread_mutex_unlock(&m->mu);
			snprintf(err, errlen, "no answer from the LDAP server within %d s",
				 m->cf.timeout);
			return MAP_TEMPFAIL;
		}
	} else {
		if (m->queue.n >= QUEUE_MAX) {
			pthread_mutex_unlock(&m->mu);
			snprintf(err, errlen, "%d lookups wait already", QUEUE_MAX);
			return MAP_TEMPFAIL;
		}
		e = xcalloc(1, sizeof(*e));
		e->key = xstrndup(key, keylen);
		e->state = LE_QUEUED;
		e->asked = now;
		e->hnext = m->tab[hash_key(e->key, m->tabsize)];
		m->tab[hash_key(e->key, m->tabsize)] = e;
		m->n++;
		list_push(&m->queue, e);
		pthread_cond_signal(&m->work);
		evict(m, now);
	}
	if (m->wake_fd >= 0) {
		pthread_mutex_unlock(&m->mu);
		snprintf(err, errlen, "lookup of \"%.100s\" under way", key);
		return MAP_PENDING;
	}
	/* a caller without an event loop: wait, as long as the request may take */
	deadline = e->asked + timeout;
	ts.tv_sec = (time_t)(deadline / 1000);
	ts.tv_nsec = (long)(deadline % 1000) * 1000000;
	e->waiters++;
	while (e->state != LE_DONE)
		if (pthread_cond_timedwait(&m->done, &m->mu, &ts) == ETIMEDOUT)
			break;
	e->waiters--;
	if (e->state == LE_DONE)
		st = serve(e, key, val, vallen, err, errlen);
	else {
		snprintf(err, errlen, "no answer from the LDAP server within %d s", m->cf.timeout);
		st = MAP_TEMPFAIL;
	}
	pthread_mutex_unlock(&m->mu);
	return st;
}

const struct map_backend map_ldap_backend = {
	"ldap", lmap_open, lmap_lookup, NULL, lmap_close, NULL, lmap_set_wakeup, NULL,
};
