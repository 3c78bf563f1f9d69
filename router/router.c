/*
 * router.c - resolution of a recipient: canonical form, alias expansion,
 * user_map -> node -> node_map endpoints, failover_node; the RCPT-time
 * verdict built on the same resolution.
 *
 * Order for one address (all keys lower-cased):
 *   1. domain not local -> remote (SMTP); alias_map is not consulted: a
 *      local alias may point outside, but outside addresses are final.
 *   2. alias_map: the address, then the address without its delimiter
 *      extension. A hit expands into its targets (commas and/or blanks
 *      between them; a target without '@' gets the alias's domain), each
 *      resolved from step 1. An address already being expanded on the
 *      path from the root (alice -> alice, archive) is not expanded again
 *      but routed as itself: that is the loop check, and it is what makes
 *      "keep a copy" aliases work. An alias key met a second time on
 *      another branch adds nothing (duplicate). Deeper than
 *      ROUTER_ALIAS_DEPTH bounces (5.4.6); more than ROUTER_EXPAND_MAX
 *      addresses visited bounces the rest (5.5.3).
 *   3. user_map: the address, without the extension, then "@domain". The
 *      value is a node name looked up in node_map, or endpoints given
 *      directly ("lmtp:..."). No entry: failover_node, else 5.1.1.
 * Final addresses are de-duplicated (case-insensitively), first one wins.
 *
 * At RCPT time a final address that needs SMTPUTF8 (it or the sender is
 * UTF-8) is not deliverable through a node whose every endpoint is known
 * (nodecaps.c) not to offer it.
 *
 * Must never: turn a lookup that failed into "unknown" (it is a deferral,
 * 4.3.x), allocate on the RCPT path once warm, recurse without the depth
 * bound, or read an address or a map value without its length limit.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "router/router.h"

struct router {
	const struct config *cf;
	size_t fanout;                      /* of the last RCPT-time check */
	struct map *alias, *user, *node, *transport, *tls_policy;
	struct endpoint relay;              /* relay_host as an smtp: endpoint */
	bool has_relay;
	/* failover_node: endpoints given directly, or a node name */
	struct endpoint failover_eps[ROUTER_ENDPOINTS_MAX];
	size_t nfailover_eps;
	char failover_node[ROUTER_NODE_MAX + 1];
	bool has_failover;
	const char *default_domain;         /* for a bare "postmaster" */
	char *aliasval[ROUTER_ALIAS_DEPTH + 1]; /* alias values being expanded, by depth */
	char val[MAP_VALUE_MAX + 1];        /* user_map and node_map values */
	struct dstr expanded;               /* alias keys expanded so far, NUL-separated */
	struct route_list scratch;          /* router_check_rcpt's */
	struct nodecaps *caps;              /* each LMTP endpoint's last LHLO */
};

/* one resolution in progress */
struct resolve {
	struct router *r;
	struct route_list *out;
	const char *original;
	size_t visited;
	bool truncated;
	bool tracing;
	unsigned checked;                   /* maps checked for a rebuild, by bit */
	bool pending;                       /* a lookup answered MAP_PENDING */
	struct route_trace *root;
	const char *anc[ROUTER_ALIAS_DEPTH + 2]; /* alias keys on the path from the root */
};

/* ---- small helpers ---- */

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

/* ---- route lists and traces ---- */

void
route_list_free(struct route_list *l)
{
	free(l->v);
	free(l->eps);
	memset(l, 0, sizeof(*l));
}

static void
route_list_reset(struct route_list *l)
{
	l->n = 0;
	l->neps = 0;
}

static void
trace_note(struct route_trace *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
trace_note(struct route_trace *t, const char *fmt, ...)
{
	va_list ap;
	char line[1024];

	if (t == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	t->notes = xrealloc(t->notes, (t->nnotes + 1) * sizeof(*t->notes));
	t->notes[t->nnotes++] = xstrdup(line);
}

static struct route_trace *
trace_new(struct route_trace *parent, const char *address)
{
	struct route_trace *t = xcalloc(1, sizeof(*t));

	t->address = xstrdup(address);
	t->route = -1;
	if (parent != NULL) {
		parent->sub = xrealloc(parent->sub, (parent->nsub + 1) * sizeof(*parent->sub));
		parent->sub[parent->nsub++] = t;
	}
	return t;
}

void
route_trace_free(struct route_trace *t)
{
	size_t i;

	if (t == NULL)
		return;
	for (i = 0; i < t->nnotes; i++)
		free(t->notes[i]);
	for (i = 0; i < t->nsub; i++)
		route_trace_free(t->sub[i]);
	free(t->notes);
	free(t->sub);
	free(t->address);
	free(t);
}

const char *
route_kind_name(enum route_kind k)
{
	switch (k) {
	case ROUTE_LOCAL:
		return "local";
	case ROUTE_REMOTE:
		return "remote";
	case ROUTE_BOUNCE:
		return "bounce";
	case ROUTE_TEMPFAIL:
		return "tempfail";
	}
	return "?";
}

const char *
route_via_name(enum route_via v)
{
	switch (v) {
	case VIA_NONE:
		return "none";
	case VIA_USER_MAP:
		return "user_map";
	case VIA_DOMAIN:
		return "@domain";
	case VIA_FAILOVER:
		return "failover_node";
	case VIA_NOT_LOCAL:
		return "not local";
	case VIA_TRANSPORT_MAP:
		return "transport_map";
	case VIA_RELAY_HOST:
		return "relay_host";
	case VIA_NO_USER_MAP:
		return "no user_map";
	}
	return "?";
}

/*
 * Adds a final route unless its address is there already. Returns the new
 * route, or NULL for a duplicate. The endpoints are copied into the pool.
 */
static struct route *
add_route(struct resolve *rs, const char *address, enum route_kind kind, enum route_via via,
	  const char *status, struct route_trace *t, const char *fmt, ...)
	__attribute__((format(printf, 7, 8)));

static struct route *
add_route(struct resolve *rs, const char *address, enum route_kind kind, enum route_via via,
	  const char *status, struct route_trace *t, const char *fmt, ...)
{
	struct route_list *l = rs->out;
	struct route *rt;
	va_list ap;
	size_t i;

	for (i = 0; i < l->n; i++)
		if (strcasecmp(l->v[i].address, address) == 0) {
			trace_note(t, "duplicate of an address already routed: dropped");
			return NULL;
		}
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 4;
		l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
	}
	rt = &l->v[l->n];
	memset(rt, 0, sizeof(*rt));
	snprintf(rt->original, sizeof(rt->original), "%s", rs->original);
	snprintf(rt->address, sizeof(rt->address), "%s", address);
	rt->kind = kind;
	rt->via = via;
	snprintf(rt->status, sizeof(rt->status), "%s", status);
	va_start(ap, fmt);
	vsnprintf(rt->reason, sizeof(rt->reason), fmt, ap);
	va_end(ap);
	rt->ep_first = l->neps;
	if (t != NULL)
		t->route = (long)l->n;
	l->n++;
	return rt;
}

static void
add_endpoints(struct resolve *rs, struct route *rt, const struct endpoint *eps, size_t n)
{
	struct route_list *l = rs->out;

	if (l->neps + n > l->epscap) {
		while (l->neps + n > l->epscap)
			l->epscap = l->epscap ? l->epscap * 2 : 8;
		l->eps = xrealloc(l->eps, l->epscap * sizeof(*l->eps));
	}
	memcpy(l->eps + l->neps, eps, n * sizeof(*eps));
	rt->ep_first = l->neps;
	rt->nendpoints = n;
	l->neps += n;
}

/* the pool may have moved while routes were added */
static void
fix_endpoints(struct route_list *l)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		l->v[i].endpoints = l->v[i].nendpoints ? l->eps + l->v[i].ep_first : NULL;
}

/* ---- resolution ---- */

static bool
is_local(const struct router *r, const struct canon *c)
{
	const char *d = c->address + c->domain_off;

	if (*d == '\0')
		return true;            /* bare postmaster with no local domain at all */
	if (*d == '[')
		return false;
	return config_is_local_domain(r->cf, d);
}

/*
 * The first lookup in a map during one resolution checks whether its file
 * was rebuilt; later ones do not: a recipient sees one version of each map
 * and costs one stat() per map, however many keys it needs.
 */
static enum map_status
rlookup(struct resolve *rs, struct map *m, const char *key, char *val, size_t vallen,
	char *err, size_t errlen)
{
	unsigned bit = m == rs->r->alias ? 1u : m == rs->r->user ? 2u : m == rs->r->node ? 4u :
	    m == rs->r->transport ? 8u : 16u;

	enum map_status st;

	if ((rs->checked & bit) == 0) {
		rs->checked |= bit;
		st = map_lookup(m, key, val, vallen, err, errlen);
	} else {
		st = map_get(m, key, val, vallen, err, errlen);
	}
	if (st == MAP_PENDING) {
		/* the resolution goes on as if this one failed (so that other
		 * lookups start meanwhile) and is run again when woken */
		rs->pending = true;
		snprintf(err, errlen, "%s: lookup of %s under way", map_spec(m), key);
		return MAP_TEMPFAIL;
	}
	return st;
}

/* key, then base when there is one; sets *hit to the key that matched */
static enum map_status
lookup2(struct resolve *rs, struct map *m, const struct canon *c, char *val, size_t vallen,
	const char **hit, char *err, size_t errlen)
{
	enum map_status st = rlookup(rs, m, c->key, val, vallen, err, errlen);

	*hit = c->key;
	if (st == MAP_NOTFOUND && c->base[0] != '\0') {
		st = rlookup(rs, m, c->base, val, vallen, err, errlen);
		*hit = c->base;
	}
	return st;
}

/* a user_map value or failover_node: endpoints, or a node name for node_map */
static void
route_node(struct resolve *rs, const char *address, const char *value, enum route_via via,
	   struct route_trace *t)
{
	struct router *r = rs->r;
	struct endpoint eps[ROUTER_ENDPOINTS_MAX];
	char node[ROUTER_NODE_MAX + 1], err[512];
	const char *why, *src = via == VIA_FAILOVER ? "failover_node" :
	    via == VIA_TRANSPORT_MAP ? "transport_map" : "user_map";
	struct route *rt;
	enum map_status st;
	size_t n, i;
	int ne;

	if (strncasecmp(value, "lmtp:", 5) == 0 || strncasecmp(value, "smtp:", 5) == 0) {
		ne = endpoint_parse_list(value, eps, ROUTER_ENDPOINTS_MAX, &why);
		if (ne < 0) {
			trace_note(t, "%s: bad endpoint in \"%.200s\": %s", src, value, why);
			add_route(rs, address, ROUTE_TEMPFAIL, via, "4.3.5", t,
				  "%s: bad endpoint in \"%.100s\": %s", src, value, why);
			return;
		}
		rt = add_route(rs, address, via == VIA_TRANSPORT_MAP ? ROUTE_REMOTE : ROUTE_LOCAL,
			       via, "2.0.0", t, "%s gives the endpoints directly", src);
		if (rt != NULL)
			add_endpoints(rs, rt, eps, (size_t)ne);
		return;
	}
	n = strlen(value);
	for (i = 0; i < n; i++)
		if (is_blank(value[i]) || value[i] == ',')
			break;
	if (n == 0 || n > ROUTER_NODE_MAX || i < n) {
		trace_note(t, "%s: \"%.200s\" is not a node name", src, value);
		add_route(rs, address, ROUTE_TEMPFAIL, via, "4.3.5", t,
			  "%s: \"%.100s\" is not a node name", src, value);
		return;
	}
	memcpy(node, value, n + 1);
	lower(node);
	if (r->node == NULL) {
		trace_note(t, "node %s: no node_map configured", node);
		add_route(rs, address, ROUTE_TEMPFAIL, via, "4.3.5", t,
			  "node %s: no node_map configured", node);
		return;
	}
	st = rlookup(rs, r->node, node, r->val, sizeof(r->val), err, sizeof(err));
	if (st == MAP_TEMPFAIL) {
		trace_note(t, "node_map: lookup of %s failed: %s", node, err);
		add_route(rs, address, ROUTE_TEMPFAIL, via, "4.3.0", t, "%s", err);
		return;
	}
	if (st == MAP_NOTFOUND) {
		trace_note(t, "node_map %s: no entry for node %s", map_spec(r->node), node);
		add_route(rs, address, ROUTE_TEMPFAIL, via, "4.3.5", t,
			  "node %s is not in node_map", node);
		return;
	}
	ne = endpoint_parse_list(r->val, eps, ROUTER_ENDPOINTS_MAX, &why);
	if (ne < 0) {
		trace_note(t, "node_map %s: %s -> %.200s: %s", map_spec(r->node), node, r->val, why);
		add_route(rs, address, ROUTE_TEMPFAIL, via, "4.3.5", t,
			  "node_map: node %s: %s", node, why);
		return;
	}
	trace_note(t, "node_map %s: %s -> %.300s", map_spec(r->node), node, r->val);
	rt = add_route(rs, address, ROUTE_LOCAL, via, "2.0.0", t, "node %s (%s)", node,
		       route_via_name(via));
	if (rt != NULL) {
		snprintf(rt->node, sizeof(rt->node), "%s", node);
		add_endpoints(rs, rt, eps, (size_t)ne);
	}
}

/*
 * smtp_tls_policy_map: the TLS level for the remote route's smtp
 * endpoints, looked up by each endpoint's host (the mail domain of an MX
 * lookup, the relay's name). Returns false (route replaced by a deferral)
 * when the map cannot answer or the entry is not a level.
 */
static bool
tls_policy(struct resolve *rs, struct route *rt, const char *address, struct route_trace *t)
{
	struct router *r = rs->r;
	struct endpoint *ep;
	enum map_status st;
	char err[512];
	size_t i;
	int lv;

	for (i = 0; r->tls_policy != NULL && i < rt->nendpoints; i++) {
		ep = &rs->out->eps[rt->ep_first + i];
		if (ep->proto != EP_SMTP)
			continue;
		st = rlookup(rs, r->tls_policy, ep->host, r->val, sizeof(r->val), err, sizeof(err));
		if (st == MAP_NOTFOUND)
			continue;
		for (lv = 0; st == MAP_FOUND && tls_level_names[lv] != NULL; lv++)
			if (strcasecmp(r->val, tls_level_names[lv]) == 0)
				break;
		if (st == MAP_TEMPFAIL || tls_level_names[lv] == NULL) {
			if (st == MAP_FOUND)
				snprintf(err, sizeof(err), "smtp_tls_policy_map: %s: \"%.100s\" is not "
					 "none, may, encrypt or verify", ep->host, r->val);
			trace_note(t, "%s", err);
			rt->kind = ROUTE_TEMPFAIL;
			rt->nendpoints = 0;
			snprintf(rt->status, sizeof(rt->status), "4.3.0");
			snprintf(rt->reason, sizeof(rt->reason), "%.*s", (int)sizeof(rt->reason) - 1, err);
			return false;
		}
		ep->tls = (signed char)lv;
		trace_note(t, "smtp_tls_policy_map: %s -> %s", ep->host, tls_level_names[lv]);
	}
	(void)address;
	return true;
}

/*
 * A domain that is not local: transport_map (the address, then the
 * domain) first, then relay_host, else the domain's MX hosts (an address
 * literal is that address).
 */
static void
route_remote(struct resolve *rs, const struct canon *c, struct route_trace *t)
{
	struct router *r = rs->r;
	const char *domain = c->address + c->domain_off;
	char err[512];
	struct endpoint ep;
	struct route *rt;
	enum map_status st = MAP_NOTFOUND;
	size_t n;

	trace_note(t, "domain %s is not local: delivered by SMTP", domain);
	if (r->transport != NULL) {
		st = rlookup(rs, r->transport, c->key, r->val, sizeof(r->val), err, sizeof(err));
		if (st == MAP_NOTFOUND)
			st = rlookup(rs, r->transport, c->domain_key + 1, r->val, sizeof(r->val),
				     err, sizeof(err));
		if (st == MAP_TEMPFAIL) {
			trace_note(t, "transport_map: lookup failed: %s", err);
			add_route(rs, c->address, ROUTE_TEMPFAIL, VIA_TRANSPORT_MAP, "4.3.0", t,
				  "%s", err);
			return;
		}
		if (st == MAP_FOUND) {
			size_t before = rs->out->n;

			trace_note(t, "transport_map %s: %.300s", map_spec(r->transport), r->val);
			route_node(rs, c->address, r->val, VIA_TRANSPORT_MAP, t);
			if (rs->out->n > before && rs->out->v[before].kind == ROUTE_REMOTE)
				tls_policy(rs, &rs->out->v[before], c->address, t);
			return;
		}
		trace_note(t, "transport_map %s: no entry", map_spec(r->transport));
	}
	if (r->has_relay) {
		trace_note(t, "relay_host: %s", r->cf->relay_host);
		rt = add_route(rs, c->address, ROUTE_REMOTE, VIA_RELAY_HOST, "2.0.0", t,
			       "relay_host %s", r->cf->relay_host);
		if (rt != NULL) {
			add_endpoints(rs, rt, &r->relay, 1);
			tls_policy(rs, rt, c->address, t);
		}
		return;
	}
	memset(&ep, 0, sizeof(ep));
	ep.kind = EP_INET;
	ep.proto = EP_SMTP;
	n = strlen(domain);
	if (domain[0] == '[' && n > 2 && domain[n - 1] == ']') {
		/* an address literal: that address, no DNS */
		snprintf(ep.host, sizeof(ep.host), "%.*s", (int)(n - 2), domain + 1);
		if (strncasecmp(ep.host, "IPv6:", 5) == 0)
			memmove(ep.host, ep.host + 5, strlen(ep.host + 5) + 1);
		ep.literal = true;
	} else {
		snprintf(ep.host, sizeof(ep.host), "%.*s", (int)(sizeof(ep.host) - 1), domain);
		ep.mx = true;
	}
	ep.tls = -1;
	trace_note(t, "%s", ep.mx ? "MX lookup at delivery time" : "address literal");
	rt = add_route(rs, c->address, ROUTE_REMOTE, VIA_NOT_LOCAL, "2.0.0", t,
		       "domain %s is not local", domain);
	if (rt != NULL) {
		add_endpoints(rs, rt, &ep, 1);
		tls_policy(rs, rt, c->address, t);
	}
}

static void
route_failover(struct resolve *rs, const char *address, struct route_trace *t)
{
	struct router *r = rs->r;
	struct route *rt;

	if (r->nfailover_eps > 0) {
		trace_note(t, "failover_node: %s", r->cf->failover_node);
		rt = add_route(rs, address, ROUTE_LOCAL, VIA_FAILOVER, "2.0.0", t,
			       "failover_node");
		if (rt != NULL)
			add_endpoints(rs, rt, r->failover_eps, r->nfailover_eps);
		return;
	}
	trace_note(t, "failover_node: node %s", r->failover_node);
	route_node(rs, address, r->failover_node, VIA_FAILOVER, t);
}

static void
route_user(struct resolve *rs, const struct canon *c, struct route_trace *t)
{
	struct router *r = rs->r;
	char err[512];
	const char *hit;
	enum map_status st;

	if (r->user == NULL) {
		if (r->has_failover) {
			trace_note(t, "no user_map configured");
			route_failover(rs, c->address, t);
			return;
		}
		trace_note(t, "no user_map and no failover_node: accepted, nowhere to deliver yet");
		add_route(rs, c->address, ROUTE_TEMPFAIL, VIA_NO_USER_MAP, "4.3.5", t,
			  "no user_map and no failover_node: nowhere to deliver");
		return;
	}
	st = lookup2(rs, r->user, c, r->val, sizeof(r->val), &hit, err, sizeof(err));
	if (st == MAP_NOTFOUND && c->domain_key[0] != '\0') {
		st = rlookup(rs, r->user, c->domain_key, r->val, sizeof(r->val), err, sizeof(err));
		hit = c->domain_key;
	}
	if (st == MAP_TEMPFAIL) {
		trace_note(t, "user_map: lookup failed: %s", err);
		add_route(rs, c->address, ROUTE_TEMPFAIL, VIA_NONE, "4.3.0", t, "%s", err);
		return;
	}
	if (st == MAP_FOUND) {
		trace_note(t, "user_map %s: %s -> %.300s", map_spec(r->user), hit, r->val);
		route_node(rs, c->address, r->val, hit == c->domain_key ? VIA_DOMAIN : VIA_USER_MAP, t);
		return;
	}
	trace_note(t, "user_map %s: no entry for %s%s%s or %s", map_spec(r->user), c->key,
		   c->base[0] ? ", " : "", c->base, c->domain_key);
	if (r->has_failover) {
		route_failover(rs, c->address, t);
		return;
	}
	add_route(rs, c->address, ROUTE_BOUNCE, VIA_NONE, "5.1.1", t,
		  "user unknown: not in user_map and no failover_node");
}

/* has this alias key been expanded already in this resolution? */
static bool
expanded_before(struct router *r, const char *key)
{
	size_t off = 0, n;

	while (off < r->expanded.len) {
		n = strlen(r->expanded.s + off);
		if (strcmp(r->expanded.s + off, key) == 0)
			return true;
		off += n + 1;
	}
	return false;
}

static void resolve_one(struct resolve *rs, const char *address, int depth,
			struct route_trace *parent);

/*
 * Expands the alias value held in r->aliasval[depth] (key `hit`, of the
 * address c) target by target.
 */
static void
expand_alias(struct resolve *rs, const struct canon *c, const char *hit, int depth,
	     struct route_trace *t)
{
	struct router *r = rs->r;
	const char *p = r->aliasval[depth], *q, *why;
	const char *domain = c->address + c->domain_off;
	char target[ADDR_PATH_MAX * 2 + 2], fmt[ADDR_PATH_MAX + 8];
	struct address a;
	size_t n;
	bool quoted;
	int used;

	rs->anc[depth] = hit;
	for (;;) {
		while (*p == ',' || is_blank(*p))
			p++;
		if (*p == '\0')
			break;
		/* a target ends at a comma or blank outside double quotes */
		quoted = false;
		for (q = p; *q != '\0'; q++) {
			if (*q == '\\' && quoted && q[1] != '\0')
				q++;
			else if (*q == '"')
				quoted = !quoted;
			else if (!quoted && (*q == ',' || is_blank(*q)))
				break;
		}
		n = (size_t)(q - p);
		if (n > ADDR_PATH_MAX) {
			trace_note(t, "alias target \"%.60s...\" too long", p);
			add_route(rs, "", ROUTE_TEMPFAIL, VIA_NONE, "4.3.5", t,
				  "alias_map: %s: a target is longer than %d bytes", hit,
				  ADDR_PATH_MAX);
			p = q;
			continue;
		}
		/* a bare local part is in the alias's own domain */
		if (memchr(p, '@', n) == NULL)
			snprintf(target, sizeof(target), "%.*s@%s", (int)n, p, domain);
		else
			snprintf(target, sizeof(target), "%.*s", (int)n, p);
		n = strlen(target);
		used = address_parse(target, n, ADDR_ALLOW_POSTMASTER | ADDR_ALLOW_UTF8, &a, &why);
		if (used < 0 || (size_t)used != n) {
			trace_note(t, "alias target \"%s\" is not an address: %s", target,
				   used < 0 ? why : "trailing characters");
			add_route(rs, target, ROUTE_TEMPFAIL, VIA_NONE, "4.3.5", t,
				  "alias_map: %s: target \"%.100s\" is not an address", hit, target);
			p = q;
			continue;
		}
		address_format(&a, fmt, sizeof(fmt));
		resolve_one(rs, fmt, depth + 1, t);
		p = q;
	}
}

static bool
on_path(const struct resolve *rs, int depth, const char *key)
{
	int i;

	for (i = 0; i < depth; i++)
		if (strcmp(rs->anc[i], key) == 0)
			return true;
	return false;
}

static void
resolve_one(struct resolve *rs, const char *address, int depth, struct route_trace *parent)
{
	struct router *r = rs->r;
	struct route_trace *t = NULL;
	struct canon c;
	char err[512];
	const char *why, *hit;
	enum map_status st;

	if (rs->tracing) {
		t = trace_new(parent, address);
		if (depth == 0)
			rs->root = t;
	}
	if (++rs->visited > ROUTER_EXPAND_MAX) {
		trace_note(t, "more than %d addresses in the expansion: not routed",
			   ROUTER_EXPAND_MAX);
		if (!rs->truncated)
			add_route(rs, address, ROUTE_BOUNCE, VIA_NONE, "5.5.3", t,
				  "alias expansion exceeds %d addresses", ROUTER_EXPAND_MAX);
		rs->truncated = true;
		return;
	}
	if (router_canon(address, r->cf->recipient_delimiter, r->default_domain, &c, &why) < 0) {
		trace_note(t, "not an address: %s", why);
		if (depth == 0)
			add_route(rs, address, ROUTE_BOUNCE, VIA_NONE, "5.1.3", t,
				  "bad address: %s", why);
		else
			add_route(rs, address, ROUTE_TEMPFAIL, VIA_NONE, "4.3.5", t,
				  "alias_map: bad target: %s", why);
		return;
	}
	if (c.base[0] != '\0')
		trace_note(t, "canonical: %s (without extension: %s)", c.address, c.base);
	else
		trace_note(t, "canonical: %s", c.address);
	if (!is_local(r, &c)) {
		route_remote(rs, &c, t);
		return;
	}
	if (r->alias != NULL) {
		if (on_path(rs, depth, c.key) || (c.base[0] && on_path(rs, depth, c.base))) {
			trace_note(t, "alias_map: already being expanded above: routed as itself");
		} else {
			if (r->aliasval[depth] == NULL)
				r->aliasval[depth] = xmalloc(MAP_VALUE_MAX + 1);
			st = lookup2(rs, r->alias, &c, r->aliasval[depth], MAP_VALUE_MAX + 1, &hit,
				     err, sizeof(err));
			if (st == MAP_TEMPFAIL) {
				trace_note(t, "alias_map: lookup failed: %s", err);
				add_route(rs, c.address, ROUTE_TEMPFAIL, VIA_NONE, "4.3.0", t,
					  "%s", err);
				return;
			}
			if (st == MAP_FOUND) {
				trace_note(t, "alias_map %s: %s -> %.300s", map_spec(r->alias), hit,
					   r->aliasval[depth]);
				if (expanded_before(r, hit)) {
					trace_note(t, "alias %s was expanded already: duplicate", hit);
					return;
				}
				if (depth >= ROUTER_ALIAS_DEPTH) {
					trace_note(t, "alias nesting deeper than %d: not expanded",
						   ROUTER_ALIAS_DEPTH);
					add_route(rs, c.address, ROUTE_BOUNCE, VIA_NONE, "5.4.6", t,
						  "alias expansion deeper than %d levels",
						  ROUTER_ALIAS_DEPTH);
					return;
				}
				if (dstr_append(&r->expanded, hit, strlen(hit) + 1) < 0)
					msg_panic("resolve: unbounded string refused an append");
				expand_alias(rs, &c, hit, depth, t);
				return;
			}
			trace_note(t, "alias_map %s: no entry", map_spec(r->alias));
		}
	}
	route_user(rs, &c, t);
}

size_t
router_resolve(struct router *r, const char *address, struct route_list *out,
	       struct route_trace **trace)
{
	struct resolve rs;

	route_list_reset(out);
	out->pending = false;
	dstr_reset(&r->expanded);
	memset(&rs, 0, sizeof(rs));
	rs.r = r;
	rs.out = out;
	rs.original = address;
	rs.tracing = trace != NULL;
	resolve_one(&rs, address, 0, NULL);
	out->pending = rs.pending;
	if (trace != NULL)
		*trace = rs.root;
	if (out->n == 0) {
		/* every branch was a duplicate or empty: say so rather than
		 * return nothing */
		add_route(&rs, address, ROUTE_BOUNCE, VIA_NONE, "5.1.1", NULL,
			  "alias expands to no address");
	}
	fix_endpoints(out);
	return out->n;
}

/* ---- the RCPT-time verdict ---- */

const char *
rcpt_verdict_status(enum rcpt_verdict v)
{
	switch (v) {
	case RCPT_ACCEPT:
		return "250 2.1.5";
	case RCPT_UNKNOWN_USER:
		return "550 5.1.1";
	case RCPT_RELAY_DENIED:
		return "554 5.7.1";
	case RCPT_TEMPFAIL:
		return "451 4.3.0";
	case RCPT_NO_SMTPUTF8:
		return "553 5.6.7";
	case RCPT_WAIT:
		return "451 4.3.0";
	}
	return "451 4.3.0";
}

/* Every endpoint of rt is an LMTP endpoint known not to offer SMTPUTF8. */
static bool
route_lacks_smtputf8(struct router *r, const struct route *rt)
{
	size_t i;

	if (rt->kind != ROUTE_LOCAL || rt->nendpoints == 0)
		return false;
	for (i = 0; i < rt->nendpoints; i++)
		if (nodecaps_smtputf8(r->caps, &rt->endpoints[i]) != 0)
			return false;
	return true;
}

size_t
router_rcpt_fanout(const struct router *r)
{
	return r->fanout;
}

enum rcpt_verdict
router_check_rcpt(struct router *r, const char *address, char *why, size_t whylen)
{
	return router_check_rcpt_flags(r, address, 0, why, whylen);
}

enum rcpt_verdict
router_check_rcpt_flags(struct router *r, const char *address, int flags, char *why,
			size_t whylen)
{
	struct route_list *l = &r->scratch;
	const struct route *rt, *temp = NULL, *bounce = NULL, *noutf8 = NULL;
	bool sender_utf8 = (flags & RCPT_SENDER_UTF8) != 0;
	struct canon c;
	const char *cwhy;
	size_t i;

	r->fanout = 1;
	if (router_canon(address, r->cf->recipient_delimiter, r->default_domain, &c, &cwhy) < 0) {
		snprintf(why, whylen, "bad address: %s", cwhy);
		return RCPT_UNKNOWN_USER;
	}
	if (!is_local(r, &c)) {
		snprintf(why, whylen, "relay access denied: %s is not a local domain",
			 c.address + c.domain_off);
		return RCPT_RELAY_DENIED;
	}
	/* without maps the final address is this one: only one that needs
	 * SMTPUTF8 has its node to check */
	if (r->alias == NULL && r->user == NULL && !sender_utf8 && !str_has_8bit(address)) {
		snprintf(why, whylen, "local domain, no user_map");
		return RCPT_ACCEPT;
	}
	router_resolve(r, address, l, NULL);
	r->fanout = l->n;
	for (i = 0; i < l->n; i++) {
		rt = &l->v[i];
		if ((rt->kind == ROUTE_LOCAL || rt->kind == ROUTE_REMOTE ||
		     rt->via == VIA_NO_USER_MAP) &&
		    (sender_utf8 || str_has_8bit(rt->address)) && route_lacks_smtputf8(r, rt)) {
			if (noutf8 == NULL)
				noutf8 = rt;
			continue;
		}
		if (rt->kind == ROUTE_LOCAL || rt->kind == ROUTE_REMOTE ||
		    rt->via == VIA_NO_USER_MAP) {
			if (l->n == 1)
				snprintf(why, whylen, "%s: %s", rt->address, rt->reason);
			else
				snprintf(why, whylen, "%zu addresses after alias expansion, "
					 "first routed: %s", l->n, rt->address);
			return RCPT_ACCEPT;
		}
		if (rt->kind == ROUTE_TEMPFAIL && temp == NULL)
			temp = rt;
		if (rt->kind == ROUTE_BOUNCE && bounce == NULL)
			bounce = rt;
	}
	if (l->pending) {
		snprintf(why, whylen, "%s: a lookup is under way", address);
		return RCPT_WAIT;
	}
	if (temp != NULL) {
		snprintf(why, whylen, "%s: %s", temp->address, temp->reason);
		return RCPT_TEMPFAIL;
	}
	if (noutf8 != NULL) {
		char ep[NODECAPS_KEY_MAX];

		endpoint_format(&noutf8->endpoints[0], ep, sizeof(ep));
		snprintf(why, whylen, "%s: %s%s%s%s%s did not offer SMTPUTF8 in its last LHLO",
			 noutf8->address, noutf8->node[0] ? "node " : "", noutf8->node,
			 noutf8->node[0] ? " (" : "", ep,
			 !noutf8->node[0] ? "" : noutf8->nendpoints > 1 ? ", ...)" : ")");
		return RCPT_NO_SMTPUTF8;
	}
	snprintf(why, whylen, "%s: %s", bounce ? bounce->address : address,
		 bounce ? bounce->reason : "no route");
	return RCPT_UNKNOWN_USER;
}

/* ---- open and close ---- */

/* "FILE:LINE" of the config line that set parameter k, for errors */
#define WHERE(k) config_where(cf, (k), wbuf, sizeof(wbuf))

struct router *
router_open(const struct config *cf, char *err, size_t errlen)
{
	struct router *r = xcalloc(1, sizeof(*r));
	const char *why;
	char e[400], wbuf[300];
	int n;

	r->cf = cf;
	dstr_init(&r->expanded, 0);
	if (cf->spool_dir != NULL)
		r->caps = nodecaps_open(cf->spool_dir);
	if (cf->nlocal_domains > 0 && cf->local_domains != NULL)
		r->default_domain = cf->local_domains[0];
	if (cf->alias_map && (r->alias = map_open(cf->alias_map, e, sizeof(e))) == NULL) {
		snprintf(err, errlen, "%s: alias_map: %s", WHERE("alias_map"), e);
		goto fail;
	}
	if (cf->user_map && (r->user = map_open(cf->user_map, e, sizeof(e))) == NULL) {
		snprintf(err, errlen, "%s: user_map: %s", WHERE("user_map"), e);
		goto fail;
	}
	if (cf->node_map && (r->node = map_open(cf->node_map, e, sizeof(e))) == NULL) {
		snprintf(err, errlen, "%s: node_map: %s", WHERE("node_map"), e);
		goto fail;
	}
	if (cf->transport_map && (r->transport = map_open(cf->transport_map, e, sizeof(e))) == NULL) {
		snprintf(err, errlen, "%s: transport_map: %s", WHERE("transport_map"), e);
		goto fail;
	}
	if (cf->smtp_tls_policy_map &&
	    (r->tls_policy = map_open(cf->smtp_tls_policy_map, e, sizeof(e))) == NULL) {
		snprintf(err, errlen, "%s: smtp_tls_policy_map: %s", WHERE("smtp_tls_policy_map"), e);
		goto fail;
	}
	if (cf->relay_host != NULL && cf->relay_host[0] != '\0') {
		char spec[ADDR_DOMAIN_MAX + 16];

		/* [HOST]:PORT or HOST[:PORT], as an smtp: endpoint would say it */
		snprintf(spec, sizeof(spec), "smtp:%s", cf->relay_host);
		if (endpoint_parse(spec, strlen(spec), &r->relay, &why) < 0) {
			snprintf(err, errlen, "%s: relay_host \"%.100s\": %s", WHERE("relay_host"),
				 cf->relay_host, why);
			goto fail;
		}
		r->has_relay = true;
	}
	if (cf->failover_node != NULL && cf->failover_node[0] != '\0') {
		r->has_failover = true;
		if (strncasecmp(cf->failover_node, "lmtp:", 5) == 0) {
			n = endpoint_parse_list(cf->failover_node, r->failover_eps,
						ROUTER_ENDPOINTS_MAX, &why);
			if (n < 0) {
				snprintf(err, errlen, "%s: failover_node \"%.100s\": %s",
					 WHERE("failover_node"), cf->failover_node, why);
				goto fail;
			}
			r->nfailover_eps = (size_t)n;
		} else {
			size_t len = strlen(cf->failover_node);

			if (len > ROUTER_NODE_MAX || strcspn(cf->failover_node, " \t,") != len) {
				snprintf(err, errlen, "%s: failover_node \"%.100s\": neither "
					 "endpoints (lmtp:...) nor a node name", WHERE("failover_node"),
					 cf->failover_node);
				goto fail;
			}
			if (r->node == NULL) {
				snprintf(err, errlen, "%s: failover_node \"%.100s\" names a node, "
					 "but there is no node_map", WHERE("failover_node"),
					 cf->failover_node);
				goto fail;
			}
			memcpy(r->failover_node, cf->failover_node, len + 1);
			lower(r->failover_node);
		}
	}
	return r;

fail:
	router_close(r);
	return NULL;
}

#undef WHERE

int
router_check_maps(struct router *r, char *err, size_t errlen)
{
	struct { const char *name; struct map *m; } maps[] = {
		{ "alias_map", r->alias }, { "user_map", r->user }, { "node_map", r->node },
		{ "transport_map", r->transport }, { "smtp_tls_policy_map", r->tls_policy },
	};
	char e[400], wbuf[300];
	size_t i;

	for (i = 0; i < sizeof(maps) / sizeof(maps[0]); i++)
		if (maps[i].m != NULL && map_ready(maps[i].m, e, sizeof(e)) < 0) {
			snprintf(err, errlen, "%s: %s %s",
				 config_where(r->cf, maps[i].name, wbuf, sizeof(wbuf)), maps[i].name, e);
			return -1;
		}
	return 0;
}

struct nodes_walk {
	void (*fn)(const char *node, const struct endpoint *eps, size_t neps, void *arg);
	void *arg;
};

static void
node_entry(const char *key, const char *val, void *arg)
{
	struct nodes_walk *w = arg;
	struct endpoint eps[ROUTER_ENDPOINTS_MAX];
	const char *why;
	int n;

	if (strlen(key) > ROUTER_NODE_MAX)
		return;
	n = endpoint_parse_list(val, eps, ROUTER_ENDPOINTS_MAX, &why);
	w->fn(key, eps, n < 0 ? 0 : (size_t)n, w->arg);
}

int
router_nodes(struct router *r,
	     void (*fn)(const char *node, const struct endpoint *eps, size_t neps, void *arg),
	     void *arg, char *err, size_t errlen)
{
	struct nodes_walk w = { fn, arg };

	if (r->node == NULL) {
		snprintf(err, errlen, "no node_map configured");
		return -1;
	}
	return map_each(r->node, node_entry, &w, err, errlen);
}

void
router_set_wakeup(struct router *r, int fd)
{
	map_set_wakeup(r->alias, fd);
	map_set_wakeup(r->user, fd);
	map_set_wakeup(r->node, fd);
	map_set_wakeup(r->transport, fd);
	map_set_wakeup(r->tls_policy, fd);
}

void
router_maps(struct router *r, struct map *maps[ROUTER_NMAPS])
{
	maps[0] = r->alias;
	maps[1] = r->user;
	maps[2] = r->node;
	maps[3] = r->transport;
	maps[4] = r->tls_policy;
}

void
router_close(struct router *r)
{
	int i;

	if (r == NULL)
		return;
	map_close(r->alias);
	map_close(r->user);
	map_close(r->node);
	map_close(r->transport);
	map_close(r->tls_policy);
	for (i = 0; i <= ROUTER_ALIAS_DEPTH; i++)
		free(r->aliasval[i]);
	dstr_free(&r->expanded);
	route_list_free(&r->scratch);
	nodecaps_close(r->caps);
	free(r);
}
