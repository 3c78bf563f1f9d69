/*
 * select.c - queue selection: which messages `sorterctl queue`, `hold`,
 * `release`, `delete` and `flush` act on when given --sender, --rcpt,
 * --node, --domain, --older-than, --younger-than or --state.
 *
 * Three parts: the command-line options (qselect_option), the one codec
 * of a selection in a control request (qselect_encode / qselect_decode,
 * strict: what encodes decodes to the same selection, anything else is
 * refused), and the match of one parsed queue file (qselect_match). These
 * are pure. Then the scan that reads the spool's folders and returns the
 * ids that match, used by sorterctl with the daemon down and by the queue
 * manager with it up (so the selection is made and applied in one turn of
 * its loop, with nothing in between).
 *
 * Patterns are fnmatch(3) globs, ASCII case folded; a recipient matches
 * only while it is still pending. The scan never changes the spool.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "router/router.h"

#define QSEL_VALUE_MAX 1024     /* bytes of one pattern */
#define QSEL_AGE_MAX 10000000000LL      /* seconds: three centuries */

static const struct {
	const char *name;
	unsigned bit;
} state_names[] = {
	{ "active", QSEL_ACTIVE },
	{ "deferred", QSEL_DEFERRED },
	{ "hold", QSEL_HOLD },
};

void
qselect_init(struct qselect *s)
{
	memset(s, 0, sizeof(*s));
	s->older_than = s->younger_than = -1;
}

void
qselect_free(struct qselect *s)
{
	free(s->sender);
	free(s->rcpt);
	free(s->node);
	free(s->domain);
	qselect_init(s);
}

bool
qselect_empty(const struct qselect *s)
{
	return s->sender == NULL && s->rcpt == NULL && s->node == NULL && s->domain == NULL &&
	       s->older_than < 0 && s->younger_than < 0 && s->states == 0;
}

/* 90, 90s, 15m, 2h, 3d */
static int
parse_age(const char *v, long long *out)
{
	long long n = 0, mult = 1;
	const char *p = v;

	if (*p < '0' || *p > '9')
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (n > QSEL_AGE_MAX)
			return -1;
		n = n * 10 + (*p - '0');
	}
	switch (*p) {
	case '\0':
	case 's':
		break;
	case 'm':
		mult = 60;
		break;
	case 'h':
		mult = 3600;
		break;
	case 'd':
		mult = 86400;
		break;
	default:
		return -1;
	}
	if ((*p != '\0' && p[1] != '\0') || n > QSEL_AGE_MAX / mult)
		return -1;
	*out = n * mult;
	return 0;
}

static int
parse_states(const char *v, unsigned *out, char *err, size_t errlen)
{
	const char *p = v;
	size_t n, i;

	*out = 0;
	while (*p) {
		n = strcspn(p, ",");
		for (i = 0; i < sizeof(state_names) / sizeof(state_names[0]); i++)
			if (strlen(state_names[i].name) == n && strncmp(p, state_names[i].name, n) == 0)
				break;
		if (n == 0 || i == sizeof(state_names) / sizeof(state_names[0])) {
			snprintf(err, errlen, "--state: '%.*s' is not active, deferred or hold",
				 (int)(n > 64 ? 64 : n), p);
			return -1;
		}
		*out |= state_names[i].bit;
		p += n;
		if (*p == ',' && *++p == '\0') {
			snprintf(err, errlen, "--state: '%.64s' ends with a comma", v);
			return -1;
		}
	}
	if (*out == 0) {
		snprintf(err, errlen, "--state: no state given");
		return -1;
	}
	return 0;
}

static int
set_pattern(char **field, const char *name, const char *v, char *err, size_t errlen)
{
	if (*field != NULL) {
		snprintf(err, errlen, "%s given twice", name);
		return -1;
	}
	if (*v == '\0') {
		snprintf(err, errlen, "%s: an empty pattern (the null sender is <>)", name);
		return -1;
	}
	if (strlen(v) > QSEL_VALUE_MAX) {
		snprintf(err, errlen, "%s: longer than %d bytes", name, QSEL_VALUE_MAX);
		return -1;
	}
	*field = xstrdup(v);
	return 0;
}

int
qselect_option(struct qselect *s, const char *name, const char *v, char *err, size_t errlen)
{
	long long *age;

	if (strcmp(name, "--sender") == 0)
		return set_pattern(&s->sender, name, v, err, errlen);
	if (strcmp(name, "--rcpt") == 0)
		return set_pattern(&s->rcpt, name, v, err, errlen);
	if (strcmp(name, "--node") == 0)
		return set_pattern(&s->node, name, v, err, errlen);
	if (strcmp(name, "--domain") == 0)
		return set_pattern(&s->domain, name, v, err, errlen);
	if (strcmp(name, "--state") == 0) {
		if (s->states != 0) {
			snprintf(err, errlen, "--state given twice");
			return -1;
		}
		return parse_states(v, &s->states, err, errlen);
	}
	if (strcmp(name, "--older-than") == 0 || strcmp(name, "--younger-than") == 0) {
		age = name[2] == 'o' ? &s->older_than : &s->younger_than;
		if (*age >= 0) {
			snprintf(err, errlen, "%s given twice", name);
			return -1;
		}
		if (parse_age(v, age) < 0) {
			snprintf(err, errlen, "%s: '%.64s' is not an age (90, 90s, 15m, 2h, 3d)",
				 name, v);
			return -1;
		}
		return 0;
	}
	snprintf(err, errlen, "unknown option %.64s", name);
	return 1;
}

bool
qselect_is_option(const char *name)
{
	static const char *const names[] = {
		"--sender", "--rcpt", "--node", "--domain", "--state", "--older-than",
		"--younger-than",
	};
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	return false;
}

/* ---- the control request codec ----
 * "key=value&key=value", keys in a fixed order, each at most once; a value
 * has %XX (upper-case hex) for every byte outside '!'..'~' and for '%',
 * '&' and '='. An empty selection is "-". */

static void
put_value(struct dstr *out, const char *key, const char *v)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p;

	dstr_printf(out, "%s%s=", out->len && out->s[out->len - 1] != ' ' ? "&" : "", key);
	for (p = (const unsigned char *)v; *p; p++) {
		if (*p <= ' ' || *p > '~' || *p == '%' || *p == '&' || *p == '=') {
			char e[3] = { '%', hex[*p >> 4], hex[*p & 15] };

			dstr_append(out, e, 3);
		} else
			dstr_append(out, p, 1);
	}
}

void
qselect_encode(const struct qselect *s, struct dstr *out)
{
	char num[32];
	size_t i, start = out->len;

	if (s->sender)
		put_value(out, "sender", s->sender);
	if (s->rcpt)
		put_value(out, "rcpt", s->rcpt);
	if (s->node)
		put_value(out, "node", s->node);
	if (s->domain)
		put_value(out, "domain", s->domain);
	if (s->older_than >= 0) {
		snprintf(num, sizeof(num), "%lld", s->older_than);
		put_value(out, "older", num);
	}
	if (s->younger_than >= 0) {
		snprintf(num, sizeof(num), "%lld", s->younger_than);
		put_value(out, "younger", num);
	}
	if (s->states) {
		char st[64] = "";

		for (i = 0; i < sizeof(state_names) / sizeof(state_names[0]); i++)
			if (s->states & state_names[i].bit)
				snprintf(st + strlen(st), sizeof(st) - strlen(st), "%s%s",
					 st[0] ? "," : "", state_names[i].name);
		put_value(out, "state", st);
	}
	if (out->len == start)
		dstr_append(out, "-", 1);
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* One value, n bytes of encoded text, into a new string; NULL when malformed */
static char *
get_value(const char *in, size_t n)
{
	char *v = xmalloc(n + 1);
	size_t i, o = 0;
	int h, l;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c == '%') {
			if (i + 2 >= n)
				goto bad;
			if ((h = hexval(in[i + 1])) < 0 || (l = hexval(in[i + 2])) < 0)
				goto bad;
			c = (unsigned char)(h << 4 | l);
			/* only what the encoder escapes may be escaped, and it must be */
			if (!(c <= ' ' || c > '~' || c == '%' || c == '&' || c == '=') || c == '\0')
				goto bad;
			v[o++] = (char)c;
			i += 2;
		} else if (c <= ' ' || c > '~' || c == '&' || c == '=') {
			goto bad;
		} else
			v[o++] = (char)c;
	}
	v[o] = '\0';
	return v;
bad:
	free(v);
	return NULL;
}

int
qselect_decode(const char *in, size_t n, struct qselect *s, char *err, size_t errlen)
{
	static const char *const order[] = {
		"sender", "rcpt", "node", "domain", "older", "younger", "state",
	};
	const char *p = in, *end = in + n, *amp, *eq;
	size_t k = 0, klen;
	char *v;
	int rc;

	qselect_init(s);
	if (n == 1 && in[0] == '-')
		return 0;
	if (n == 0)
		goto bad;
	while (p < end) {
		amp = memchr(p, '&', (size_t)(end - p));
		if (amp == NULL)
			amp = end;
		eq = memchr(p, '=', (size_t)(amp - p));
		if (eq == NULL)
			goto bad;
		klen = (size_t)(eq - p);
		/* keys in the encoder's order, each once */
		while (k < sizeof(order) / sizeof(order[0]) &&
		       !(strlen(order[k]) == klen && strncmp(p, order[k], klen) == 0))
			k++;
		if (k == sizeof(order) / sizeof(order[0]))
			goto bad;
		if ((v = get_value(eq + 1, (size_t)(amp - eq - 1))) == NULL)
			goto bad;
		switch (k) {
		case 0: rc = set_pattern(&s->sender, "sender", v, err, errlen); break;
		case 1: rc = set_pattern(&s->rcpt, "rcpt", v, err, errlen); break;
		case 2: rc = set_pattern(&s->node, "node", v, err, errlen); break;
		case 3: rc = set_pattern(&s->domain, "domain", v, err, errlen); break;
		case 4: rc = qselect_option(s, "--older-than", v, err, errlen); break;
		case 5: rc = qselect_option(s, "--younger-than", v, err, errlen); break;
		default: rc = qselect_option(s, "--state", v, err, errlen); break;
		}
		free(v);
		if (rc != 0)
			goto fail;
		k++;
		p = amp == end ? end : amp + 1;
		if (amp != end && p == end)
			goto bad;       /* a trailing '&' */
	}
	return 0;
bad:
	snprintf(err, errlen, "malformed selection");
fail:
	qselect_free(s);
	return -1;
}

/* ---- matching ---- */

static bool
glob(const char *pattern, const char *s)
{
	return fnmatch(pattern, s, FNM_CASEFOLD) == 0;
}

static const char *
domain_of(const char *addr)
{
	const char *at = strrchr(addr, '@');

	return at ? at + 1 : "";
}

bool
qselect_match(const struct qselect *s, unsigned state, const struct spool_msg *m,
	      uint64_t now, qselect_node_fn node_of, void *arg)
{
	long long age = now > m->arrival_usec ? (long long)((now - m->arrival_usec) / 1000000u) : 0;
	bool rcpt_ok = s->rcpt == NULL, domain_ok = s->domain == NULL, node_ok = s->node == NULL;
	const char *node;
	size_t i, k;

	if (s->states != 0 && !(s->states & state))
		return false;
	if (s->older_than >= 0 && age < s->older_than)
		return false;
	if (s->younger_than >= 0 && age >= s->younger_than)
		return false;
	if (s->sender != NULL) {
		/* "<>" names the null sender (and only it) */
		if (m->sender[0] == '\0' ? strcmp(s->sender, "<>") != 0 && !glob(s->sender, "")
					  : strcmp(s->sender, "<>") == 0 || !glob(s->sender, m->sender))
			return false;
	}
	for (i = 0; i < m->nrcpt && !(rcpt_ok && domain_ok && node_ok); i++) {
		const char *a = m->rcpts[i].addr;

		if (m->rcpts[i].state != RCPT_PENDING)
			continue;
		/* the criteria hold for one and the same recipient */
		if (s->rcpt != NULL && !glob(s->rcpt, a))
			continue;
		if (s->domain != NULL && !glob(s->domain, domain_of(a)))
			continue;
		if (s->node != NULL) {
			if (node_of == NULL)
				continue;
			for (k = 0; (node = node_of(arg, a, k)) != NULL; k++)
				if (strcasecmp(node, s->node) == 0 || glob(s->node, node))
					break;
			if (node == NULL)
				continue;
		}
		rcpt_ok = domain_ok = node_ok = true;
	}
	return rcpt_ok && domain_ok && node_ok;
}

/* ---- nodes through the router ---- */

struct qselect_router {
	struct router *r;
	struct route_list rl;
	char last[ADDR_PATH_MAX + 1];
	bool have;
};

struct qselect_router *
qselect_router_new(struct router *r)
{
	struct qselect_router *qr = xcalloc(1, sizeof(*qr));

	qr->r = r;
	return qr;
}

void
qselect_router_free(struct qselect_router *qr)
{
	if (qr == NULL)
		return;
	route_list_free(&qr->rl);
	free(qr);
}

/* The node names of the routes of rcpt, one by one: a route without a
 * node (a remote domain, endpoints named directly) has none. */
const char *
qselect_router_node(void *arg, const char *rcpt, size_t i)
{
	struct qselect_router *qr = arg;
	size_t k, seen = 0;

	if (!qr->have || strcmp(qr->last, rcpt) != 0) {
		router_resolve(qr->r, rcpt, &qr->rl, NULL);
		snprintf(qr->last, sizeof(qr->last), "%s", rcpt);
		qr->have = true;
	}
	for (k = 0; k < qr->rl.n; k++)
		if (qr->rl.v[k].node[0] != '\0' && seen++ == i)
			return qr->rl.v[k].node;
	return NULL;
}

/* ---- the scan ---- */

static const struct {
	const char *dir;
	unsigned state;
} scan_dirs[] = {
	{ "incoming", QSEL_ACTIVE },
	{ "active", QSEL_ACTIVE },
	{ "deferred", QSEL_DEFERRED },
	{ "hold", QSEL_HOLD },
};
#define NSCAN (sizeof(scan_dirs) / sizeof(scan_dirs[0]))

static int
strcmp_ptr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int
qselect_scan(const char *spool_dir, const struct qselect *s, qselect_node_fn node_of,
	     void *arg, char ***ids_out, size_t *n_out)
{
	char **ids = NULL, path[4096], err[256];
	size_t n = 0, cap = 0, i;
	uint64_t now = now_usec();
	struct spool_file f;
	struct dirent *de;
	DIR *d;

	*ids_out = NULL;
	*n_out = 0;
	for (i = 0; i < NSCAN; i++) {
		if (s->states != 0 && !(s->states & scan_dirs[i].state))
			continue;
		snprintf(path, sizeof(path), "%s/%s", spool_dir, scan_dirs[i].dir);
		if ((d = opendir(path)) == NULL)
			goto fail;
		while ((de = readdir(d)) != NULL) {
			if (!qid_valid(de->d_name))
				continue;
			snprintf(path, sizeof(path), "%s/%s/%s", spool_dir, scan_dirs[i].dir,
				 de->d_name);
			/* gone since readdir, corrupt or unreadable: not selected */
			if (spool_load(path, NULL, &f, err, sizeof(err)) != 0)
				continue;
			if (qselect_match(s, scan_dirs[i].state, &f.m, now, node_of, arg)) {
				if (n == cap) {
					cap = cap ? cap * 2 : 64;
					ids = xrealloc(ids, cap * sizeof(*ids));
				}
				ids[n++] = xstrdup(de->d_name);
			}
			spool_file_free(&f);
		}
		closedir(d);
	}
	/* oldest first; a message seen in two folders (it moved meanwhile) once */
	if (n > 1)
		qsort(ids, n, sizeof(*ids), strcmp_ptr);
	for (i = cap = 0; i < n; i++) {
		if (cap > 0 && strcmp(ids[cap - 1], ids[i]) == 0) {
			free(ids[i]);
			continue;
		}
		ids[cap++] = ids[i];
	}
	*ids_out = ids;
	*n_out = cap;
	return 0;
fail:
	for (i = 0; i < n; i++)
		free(ids[i]);
	free(ids);
	return -1;
}

/* ---- select, then act ---- */

int
qselect_apply(const char *spool_dir, const struct qselect *sel, enum queue_op op,
	      qselect_node_fn node_of, void *node_arg, qselect_act_fn act, void *act_arg,
	      struct dstr *out)
{
	static const char *const done_words[] = {
		[QOP_DELETE] = "removed", [QOP_HOLD] = "placed on hold",
		[QOP_RELEASE] = "released", [QOP_FLUSH] = "to be retried",
	};
	/* what each operation can act on: a selection never asks to release
	 * what is not held, or to flush what is not deferred */
	static const unsigned applicable[] = {
		[QOP_DELETE] = QSEL_ACTIVE | QSEL_DEFERRED | QSEL_HOLD,
		[QOP_HOLD] = QSEL_ACTIVE | QSEL_DEFERRED,
		[QOP_RELEASE] = QSEL_HOLD,
		[QOP_FLUSH] = QSEL_DEFERRED,
	};
	struct qselect s = *sel;
	char **ids = NULL;
	size_t n = 0, i, touched = 0, failed = 0;

	s.states = sel->states ? sel->states & applicable[op] : applicable[op];
	if (s.states != 0 && qselect_scan(spool_dir, &s, node_of, node_arg, &ids, &n) < 0) {
		dstr_printf(out, "cannot read the spool %s: %s\n", spool_dir, strerror(errno));
		return -1;
	}
	for (i = 0; i < n; i++) {
		if (act(act_arg, op, ids[i], out) == 0)
			touched++;
		else
			failed++;
		free(ids[i]);
	}
	free(ids);
	dstr_printf(out, "%zu message%s %s%s\n", touched, touched == 1 ? "" : "s", done_words[op],
		    failed ? "; see above for the others" : "");
	return failed ? -1 : 0;
}
