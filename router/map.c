/*
 * map.c - maps: key -> value tables named "type:arg" in the config, behind
 * one small backend vtable, with the Berkeley DB 5.3 hash: and btree:
 * backends (PATH.db, as sortermap builds it); ldap: is in map_ldap.c.
 *
 * On-disk convention shared with sortermap: keys are ASCII lower-cased and
 * stored without a trailing NUL; values are stored as written, without a
 * trailing NUL, and never contain one. A lookup lower-cases its key the
 * same way (map_fold), so case never matters.
 *
 * Reload: before each lookup the backing file is stat()ed once (map_get
 * skips that, for a caller that checked a moment ago). When its device,
 * inode, size or mtime differ from the open handle's, the new file is
 * opened first and only then replaces the old handle, so the map keeps
 * answering from the old file until the new one is usable (sortermap
 * replaces files by rename, so a half-written file is never seen). A file
 * that failed to open is not tried again until it changes.
 *
 * Building (sortermap): the whole source is parsed before anything is
 * written; the new database goes to a temporary file in the map's own
 * directory (so that rename is atomic), is flushed, fsync'd, renamed over
 * PATH.db and the directory is fsync'd. A reader thus only ever sees a
 * complete old file or a complete new one.
 *
 * This file must never modify a map file in place, never answer "not
 * found" when it could not look (that is MAP_TEMPFAIL: a wrong reject is
 * worse than a deferral), and never log more than once per change of a
 * map's state.
 */
#include "config.h"

#include <db.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/metrics.h"
#include "router/router.h"

#define READ_CACHE_MIN (256 << 10)     /* BDB's default: enough for small maps */
#define READ_CACHE_MAX (32 << 20)      /* per process and map */

struct map {
	const struct map_backend *be;
	char *spec;                 /* as configured, for messages */
	char *arg;                  /* what follows "type:" */
	void *h;                    /* the open handle, or NULL */
	struct map_stamp cur;       /* of h */
	struct map_stamp bad;       /* of a file that failed to open */
	bool have_bad;
	bool warned_gone;           /* "cannot stat, kept the open map" logged */
	char err[320];              /* why h is NULL (when it is) */
	int metrics_id;             /* lookups are counted under the spec */
};

/* ---- Berkeley DB backends ---- */

/* BDB reports details through a callback without a handle argument; the
 * last message of this thread is kept to explain a failed open. */
static _Thread_local char db_lasterr[256];

static void
db_errcall(const DB_ENV *env, const char *pfx, const char *msg)
{
	snprintf(db_lasterr, sizeof(db_lasterr), "%s", msg);
}

static char *
db_path(const char *arg)
{
	return xasprintf("%s.db", arg);
}

static void
stamp_from(struct map_stamp *st, const struct stat *sb)
{
	memset(st, 0, sizeof(*st));
	st->dev = sb->st_dev;
	st->ino = sb->st_ino;
	st->size = sb->st_size;
	st->mtime = sb->st_mtim;
}

static void *
db_open_type(const char *arg, DBTYPE type, struct map_stamp *st, char *err, size_t errlen)
{
	char *path = db_path(arg);
	DB *db = NULL;
	DBTYPE got;
	struct stat sb;
	int ret, fd;

	db_lasterr[0] = '\0';
	if ((ret = db_create(&db, NULL, 0)) != 0) {
		snprintf(err, errlen, "cannot create a Berkeley DB handle: %s", db_strerror(ret));
		free(path);
		return NULL;
	}
	db->set_errcall(db, db_errcall);
	/* BDB's cache in front of the OS page cache: a small map is read
	 * once and then served without a system call; a big one keeps its
	 * hottest pages, at a bounded cost per process */
	if (stat(path, &sb) == 0 && sb.st_size > READ_CACHE_MIN)
		db->set_cachesize(db, 0, (u_int32_t)(sb.st_size < READ_CACHE_MAX ?
						    sb.st_size + (64 << 10) : READ_CACHE_MAX), 1);
	ret = db->open(db, NULL, path, NULL, DB_UNKNOWN, DB_RDONLY, 0);
	if (ret != 0) {
		if (ret == EINVAL || ret == ENOENT || ret == EACCES || db_lasterr[0] == '\0')
			snprintf(err, errlen, "cannot open %s: %s", path,
				 ret == EINVAL ? "not a Berkeley DB file" : db_strerror(ret));
		else
			snprintf(err, errlen, "cannot open %s: %s", path, db_lasterr);
		goto fail;
	}
	if ((ret = db->get_type(db, &got)) != 0 || got != type) {
		snprintf(err, errlen, "cannot open %s: it is not a %s database", path,
			 type == DB_HASH ? "hash" : "btree");
		goto fail;
	}
	if ((ret = db->fd(db, &fd)) != 0 || fstat(fd, &sb) < 0) {
		snprintf(err, errlen, "cannot open %s: cannot stat it", path);
		goto fail;
	}
	stamp_from(st, &sb);
	free(path);
	return db;

fail:
	db->close(db, 0);
	free(path);
	return NULL;
}

static void *
hash_open(const char *arg, struct map_stamp *st, char *err, size_t errlen)
{
	return db_open_type(arg, DB_HASH, st, err, errlen);
}

static void *
btree_open(const char *arg, struct map_stamp *st, char *err, size_t errlen)
{
	return db_open_type(arg, DB_BTREE, st, err, errlen);
}

static enum map_status
db_lookup(void *h, const char *key, size_t keylen, char *val, size_t vallen,
	  char *err, size_t errlen)
{
	DB *db = h;
	DBT k, v;
	int ret;

	if (vallen == 0)
		msg_panic("db_lookup: no room for a value");
	memset(&k, 0, sizeof(k));
	memset(&v, 0, sizeof(v));
	k.data = (void *)(uintptr_t)key;
	k.size = (u_int32_t)keylen;
	v.data = val;
	v.ulen = (u_int32_t)(vallen - 1);
	v.flags = DB_DBT_USERMEM;
	ret = db->get(db, NULL, &k, &v, 0);
	if (ret == DB_NOTFOUND)
		return MAP_NOTFOUND;
	if (ret == DB_BUFFER_SMALL) {
		snprintf(err, errlen, "value of \"%.100s\" longer than %zu bytes", key, vallen - 1);
		return MAP_TEMPFAIL;
	}
	if (ret != 0) {
		snprintf(err, errlen, "lookup of \"%.100s\": %s", key, db_strerror(ret));
		return MAP_TEMPFAIL;
	}
	if (memchr(val, '\0', v.size) != NULL) {
		snprintf(err, errlen, "value of \"%.100s\" holds a NUL byte", key);
		return MAP_TEMPFAIL;
	}
	val[v.size] = '\0';
	return MAP_FOUND;
}

/* on the lookup path: no allocation */
static int
db_stamp(const char *arg, struct map_stamp *st)
{
	char path[PATH_MAX];
	struct stat sb;

	if ((size_t)snprintf(path, sizeof(path), "%s.db", arg) >= sizeof(path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if (stat(path, &sb) < 0)
		return -1;
	stamp_from(st, &sb);
	return 0;
}

static void
db_close(void *h)
{
	DB *db = h;

	db->close(db, 0);
}

static int
db_each(void *h, void (*fn)(const char *key, const char *val, void *arg), void *arg,
	char *err, size_t errlen)
{
	DB *db = h;
	DBC *cur;
	DBT k, v;
	char key[MAP_KEY_MAX + 1], *val = xmalloc(MAP_VALUE_MAX + 1);
	int ret;

	if ((ret = db->cursor(db, NULL, &cur, 0)) != 0) {
		snprintf(err, errlen, "cursor: %s", db_strerror(ret));
		free(val);
		return -1;
	}
	memset(&k, 0, sizeof(k));
	memset(&v, 0, sizeof(v));
	while ((ret = cur->get(cur, &k, &v, DB_NEXT)) == 0) {
		/* what sortermap writes fits; anything else is skipped */
		if (k.size > MAP_KEY_MAX || v.size > MAP_VALUE_MAX ||
		    memchr(k.data, '\0', k.size) || memchr(v.data, '\0', v.size))
			continue;
		memcpy(key, k.data, k.size);
		key[k.size] = '\0';
		memcpy(val, v.data, v.size);
		val[v.size] = '\0';
		fn(key, val, arg);
	}
	cur->close(cur);
	free(val);
	if (ret != DB_NOTFOUND) {
		snprintf(err, errlen, "listing: %s", db_strerror(ret));
		return -1;
	}
	return 0;
}

/* The first line holding key, for "duplicate key" messages. */
static unsigned long
first_line_of(const char *name, const char *src, size_t len, const char *key)
{
	struct mapsource ms;
	struct map_entry e;
	char err[64];

	mapsource_init(&ms, name, src, len);
	while (mapsource_next(&ms, &e, err, sizeof(err)) == 1)
		if (strcmp(e.key, key) == 0)
			return e.line;
	return 0;
}

static long
db_build_type(const char *arg, DBTYPE type, const char *name, const char *src, size_t len,
	      const struct stat *like, char *err, size_t errlen)
{
	struct mapsource ms;
	struct map_entry e;
	size_t count = 0, bytes = 0;
	char *dbpath, *tmp, *dir;
	u_int32_t cache;
	mode_t mode = like ? like->st_mode & 0666 : 0644;
	DB *db = NULL;
	DBT k, v;
	int ret, rc;

	/* pass 1: the whole source must parse before anything is written */
	mapsource_init(&ms, name, src, len);
	while ((rc = mapsource_next(&ms, &e, err, errlen)) == 1) {
		count++;
		bytes += e.keylen + e.valuelen;
	}
	if (rc < 0)
		return -1;

	dbpath = db_path(arg);
	tmp = xasprintf("%s.tmp.%ld", dbpath, (long)getpid());
	(void)unlink(tmp);              /* left by a crashed run with our pid */
	if ((ret = db_create(&db, NULL, 0)) != 0) {
		snprintf(err, errlen, "cannot create a Berkeley DB handle: %s", db_strerror(ret));
		db = NULL;
		goto fail;
	}
	db_lasterr[0] = '\0';
	db->set_errcall(db, db_errcall);
	/* a cache that holds the whole database keeps the build in memory
	 * until the final flush: a million entries take seconds, not minutes */
	cache = (u_int32_t)(bytes * 3 + count * 48 + (4u << 20));
	if (bytes > (100u << 20) || cache > (512u << 20))
		cache = 512u << 20;
	/* BDB's own hash fill factor and table growth measured best: presizing
	 * (set_h_nelem) made the file larger and the build no faster */
	db->set_cachesize(db, 0, cache, 1);
	db->set_pagesize(db, 4096);
	ret = db->open(db, NULL, tmp, NULL, type, DB_CREATE | DB_EXCL, (int)mode);
	if (ret != 0) {
		snprintf(err, errlen, "cannot create %s: %s", tmp,
			 db_lasterr[0] ? db_lasterr : db_strerror(ret));
		goto fail;
	}

	/* pass 2: write */
	mapsource_init(&ms, name, src, len);
	memset(&k, 0, sizeof(k));
	memset(&v, 0, sizeof(v));
	while (mapsource_next(&ms, &e, err, errlen) == 1) {
		k.data = e.key;
		k.size = (u_int32_t)e.keylen;
		v.data = (void *)(uintptr_t)e.value;
		v.size = (u_int32_t)e.valuelen;
		ret = db->put(db, NULL, &k, &v, DB_NOOVERWRITE);
		if (ret == DB_KEYEXIST) {
			snprintf(err, errlen, "%s:%lu: duplicate key \"%.100s\" (first on line %lu)",
				 name, e.line, e.key, first_line_of(name, src, len, e.key));
			goto fail;
		}
		if (ret != 0) {
			snprintf(err, errlen, "cannot write %s: %s", tmp, db_strerror(ret));
			goto fail;
		}
	}
	ret = db->close(db, 0);
	db = NULL;
	if (ret != 0) {
		snprintf(err, errlen, "cannot write %s: %s", tmp, db_strerror(ret));
		goto fail;
	}
	/* exactly the source's mode whatever the umask: maps may be private */
	if (chmod(tmp, mode) < 0 ||
	    (like != NULL && geteuid() == 0 && chown(tmp, like->st_uid, like->st_gid) < 0) ||
	    fsync_path(tmp) < 0) {
		snprintf(err, errlen, "cannot finish %s: %s", tmp, strerror(errno));
		goto fail;
	}
	if (rename(tmp, dbpath) < 0) {
		snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, dbpath, strerror(errno));
		goto fail;
	}
	dir = xstrdup(dbpath);
	rc = fsync_dir(dirname(dir));
	free(dir);
	if (rc < 0) {
		/* renamed, but perhaps not durably: an error all the same */
		snprintf(err, errlen, "cannot fsync the directory of %s: %s", dbpath,
			 strerror(errno));
		free(tmp);
		free(dbpath);
		return -1;
	}
	free(tmp);
	free(dbpath);
	return (long)count;

fail:
	if (db != NULL)
		db->close(db, DB_NOSYNC);
	(void)unlink(tmp);
	free(tmp);
	free(dbpath);
	return -1;
}

static long
hash_build(const char *arg, const char *name, const char *src, size_t len,
	   const struct stat *like, char *err, size_t errlen)
{
	return db_build_type(arg, DB_HASH, name, src, len, like, err, errlen);
}

static long
btree_build(const char *arg, const char *name, const char *src, size_t len,
	    const struct stat *like, char *err, size_t errlen)
{
	return db_build_type(arg, DB_BTREE, name, src, len, like, err, errlen);
}

static const struct map_backend hash_backend = {
	"hash", hash_open, db_lookup, db_stamp, db_close, hash_build, NULL, db_each,
};
static const struct map_backend btree_backend = {
	"btree", btree_open, db_lookup, db_stamp, db_close, btree_build, NULL, db_each,
};
static const struct map_backend *const backends[] = {
	&hash_backend, &btree_backend, &map_ldap_backend,
};

/* ---- the generic layer ---- */

static bool
same_stamp(const struct map_stamp *a, const struct map_stamp *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* "type:arg" (type: lower-case letters) or a bare path (a hash) -> backend
 * and arg; NULL with err */
static const struct map_backend *
parse_spec(const char *spec, const char **arg, char *err, size_t errlen)
{
	const struct map_backend *be = backends[0];
	size_t i, n = strspn(spec, "abcdefghijklmnopqrstuvwxyz");
	const char *colon = n > 0 && spec[n] == ':' ? spec + n : NULL;

	*arg = spec;
	if (colon != NULL) {
		be = NULL;
		for (i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
			if (strlen(backends[i]->type) == (size_t)(colon - spec) &&
			    strncmp(backends[i]->type, spec, (size_t)(colon - spec)) == 0)
				be = backends[i];
		if (be == NULL) {
			snprintf(err, errlen, "%s: unknown map type \"%.*s\" (known: hash, btree, ldap)",
				 spec, (int)(colon - spec), spec);
			return NULL;
		}
		*arg = colon + 1;
	}
	if (**arg == '\0') {
		snprintf(err, errlen, "%s: no file name", spec);
		return NULL;
	}
	return be;
}

struct map *
map_open(const char *spec, char *err, size_t errlen)
{
	const struct map_backend *be;
	const char *arg;
	struct map *m;

	if ((be = parse_spec(spec, &arg, err, errlen)) == NULL)
		return NULL;
	m = xcalloc(1, sizeof(*m));
	m->be = be;
	m->spec = xstrdup(spec);
	m->arg = xstrdup(arg);
	m->metrics_id = metrics_map_id(spec);
	snprintf(m->err, sizeof(m->err), "not opened yet");
	m->h = be->open(m->arg, &m->cur, m->err, sizeof(m->err));
	if (m->h == NULL && be->stamp == NULL) {
		/* a backend without a file to wait for (ldap:) fails only on
		 * its settings: a config error, said where the map is named */
		snprintf(err, errlen, "%s: %s", spec, m->err);
		map_close(m);
		return NULL;
	}
	if (m->h == NULL && be->stamp && be->stamp(m->arg, &m->bad) == 0)
		m->have_bad = true;
	if (m->h == NULL)
		msg_warn("%s: %s; lookups fail temporarily until it can be opened", m->spec, m->err);
	return m;
}

long
map_build(const char *spec, const char *name, const char *src, size_t len,
	  const struct stat *like, char *err, size_t errlen)
{
	const struct map_backend *be;
	const char *arg;

	if ((be = parse_spec(spec, &arg, err, errlen)) == NULL)
		return -1;
	if (be->build == NULL) {
		snprintf(err, errlen, "%s: %s maps are not built by sortermap", spec, be->type);
		return -1;
	}
	return be->build(arg, name, src, len, like, err, errlen);
}

/*
 * Brings the handle up to date with the file. Returns 0 when a handle can
 * answer, -1 (m->err set) when none can.
 */
static int
map_refresh(struct map *m)
{
	struct map_stamp st;
	char err[sizeof(m->err)];
	void *nh;

	if (m->be->stamp == NULL) {
		if (m->h == NULL)
			m->h = m->be->open(m->arg, &m->cur, m->err, sizeof(m->err));
		return m->h ? 0 : -1;
	}
	if (m->be->stamp(m->arg, &st) < 0) {
		if (m->h != NULL) {
			/* replaced by something we cannot see (yet): the open
			 * file is still the last good version */
			if (!m->warned_gone)
				msg_warn("%s: cannot stat its file (%s); still using the open one",
					 m->spec, strerror(errno));
			m->warned_gone = true;
			return 0;
		}
		snprintf(err, sizeof(err), "cannot open %s.db: %s", m->arg, strerror(errno));
		if (strcmp(err, m->err) != 0)
			msg_warn("%s: %s", m->spec, err);
		memcpy(m->err, err, sizeof(err));
		m->have_bad = false;
		return -1;
	}
	m->warned_gone = false;
	if (m->h != NULL && same_stamp(&st, &m->cur))
		return 0;
	if (m->have_bad && same_stamp(&st, &m->bad))
		return m->h ? 0 : -1;
	nh = m->be->open(m->arg, &st, err, sizeof(err));
	if (nh == NULL) {
		/* remember the stamp stat() saw: retried only once it changes */
		if (m->be->stamp(m->arg, &m->bad) == 0)
			m->have_bad = true;
		msg_warn("%s: %s%s", m->spec, err,
			 m->h ? "; still using the previous version" : "");
		if (m->h == NULL)
			memcpy(m->err, err, sizeof(err));
		return m->h ? 0 : -1;
	}
	if (m->h != NULL) {
		m->be->close(m->h);
		msg_info("%s: reopened after a change", m->spec);
	} else {
		msg_info("%s: opened", m->spec);
	}
	m->h = nh;
	m->cur = st;
	m->have_bad = false;
	return 0;
}

enum map_status
map_lookup(struct map *m, const char *key, char *val, size_t vallen, char *err, size_t errlen)
{
	if (map_refresh(m) < 0) {
		snprintf(err, errlen, "%s: %s", m->spec, m->err);
		metrics_map_lookup(m->metrics_id, true, 0);
		return MAP_TEMPFAIL;
	}
	return map_get(m, key, val, vallen, err, errlen);
}

enum map_status
map_get(struct map *m, const char *key, char *val, size_t vallen, char *err, size_t errlen)
{
	char k[MAP_KEY_MAX + 1], why[256];
	size_t n = strlen(key);
	enum map_status st;
	uint64_t t0;

	if (m->h == NULL) {
		snprintf(err, errlen, "%s: %s", m->spec, m->err);
		metrics_map_lookup(m->metrics_id, true, 0);
		return MAP_TEMPFAIL;
	}
	if (n > MAP_KEY_MAX)
		return MAP_NOTFOUND;    /* no such key can have been stored */
	map_fold(k, key, n);
	k[n] = '\0';
	t0 = metrics_now();
	st = m->be->lookup(m->h, k, n, val, vallen, why, sizeof(why));
	/* a pending answer (ldap:) is asked again when it has come: counted then */
	if (st != MAP_PENDING)
		metrics_map_lookup(m->metrics_id, st == MAP_TEMPFAIL, metrics_now() - t0);
	if (st == MAP_TEMPFAIL)
		snprintf(err, errlen, "%s: %s", m->spec, why);
	return st;
}

int
map_each(struct map *m, void (*fn)(const char *key, const char *val, void *arg), void *arg,
	 char *err, size_t errlen)
{
	char why[256];

	if (m->be->each == NULL) {
		snprintf(err, errlen, "%s: a map of this type cannot be listed", m->spec);
		return -1;
	}
	if (map_refresh(m) < 0) {
		snprintf(err, errlen, "%s: %s", m->spec, m->err);
		return -1;
	}
	if (m->be->each(m->h, fn, arg, why, sizeof(why)) < 0) {
		snprintf(err, errlen, "%s: %s", m->spec, why);
		return -1;
	}
	return 0;
}

int
map_ready(struct map *m, char *err, size_t errlen)
{
	if (map_refresh(m) < 0) {
		snprintf(err, errlen, "%s: %s", m->spec, m->err);
		return -1;
	}
	return 0;
}

void
map_set_wakeup(struct map *m, int fd)
{
	if (m != NULL && m->be->set_wakeup != NULL && m->h != NULL)
		m->be->set_wakeup(m->h, fd);
}

bool
map_thread_safe(const struct map *m)
{
	return m != NULL && m->be->set_wakeup != NULL && m->h != NULL;
}

const char *
map_spec(const struct map *m)
{
	return m->spec;
}

void
map_close(struct map *m)
{
	if (m == NULL)
		return;
	if (m->h != NULL)
		m->be->close(m->h);
	free(m->spec);
	free(m->arg);
	free(m);
}
