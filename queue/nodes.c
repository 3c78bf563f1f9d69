/*
 * nodes.c - node health and drains, inside the queue manager.
 *
 * Health: every endpoint of every node in node_map is probed through the
 * delivery client (client_probe: connect, greeting, LHLO, QUIT) a second
 * after start and every node_probe_interval (0: neither), and a second
 * after a delivery to its node failed to connect or was cut off. Each endpoint keeps its state (up, down,
 * unknown), last error, LHLO latency and last probe time; the LHLO's
 * capabilities go to spool_dir/nodecaps as a delivery's do. A probe's
 * verdict also feeds the client's list of failed endpoints, so deliveries
 * try an endpoint that is up before one that is down. A node_map that
 * cannot be listed (ldap:) is probed as far as deliveries made its nodes
 * known.
 *
 * Drains: a drained node's recipients are parked (deferred with "node N
 * is drained", never expired, never bounced) until it is undrained. The
 * set lives in spool_dir/drained (drainfile.c), written on an I/O thread,
 * one write at a time; a request is answered once the write that carries
 * it is durable.
 *
 * This file must never block the loop on the disk, and never free an
 * endpoint whose probe is under way (its answer would find it gone).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "router/router.h"
#include "queue/qmgr.h"

#define PROBE_FIRST_SECONDS 1   /* the first round, after start */
#define PROBE_SOON_SECONDS 1    /* after a failed delivery */

struct nodeep {
	struct nodes *ns;
	char node[ROUTER_NODE_MAX + 1];
	struct endpoint ep;
	char key[NODESTATE_EP_MAX];
	enum node_ep_health health;
	char error[512];
	uint64_t latency_usec;
	time_t probed;
	bool probing;           /* a probe is under way: its answer comes back here */
	bool gone;              /* left node_map while probed: freed by the answer */
	bool seen;              /* in the last listing of node_map */
	bool soon;              /* a delivery failed: probe at the next soon_ev */
	struct nodeep *next;
};

struct drainreq {
	nodes_reply_fn *done;
	void *arg;
	char node[ROUTER_NODE_MAX + 1];
	bool on, changed;
	struct drainreq *next;
};

struct drainjob {
	struct nodes *ns;
	struct drainset snap;   /* what is written */
	int err;
};

struct nodes {
	struct qmgr *q;
	struct nodeep *eps;
	struct drainset drained;
	struct event *timer_ev, *soon_ev;
	bool writing;
	struct drainreq *waiting, *carried;     /* for the next write; in the one under way */
};

/* ---- endpoints ---- */

static struct nodeep *
ep_find(struct nodes *ns, const char *node, const struct endpoint *ep, bool create)
{
	char key[NODESTATE_EP_MAX];
	struct nodeep *e, **tail;

	endpoint_format(ep, key, sizeof(key));
	for (tail = &ns->eps; (e = *tail) != NULL; tail = &e->next)
		if (!e->gone && strcmp(e->node, node) == 0 && strcmp(e->key, key) == 0)
			return e;
	if (!create || !nodestate_name_ok(node, strlen(node)))
		return NULL;
	e = xcalloc(1, sizeof(*e));
	e->ns = ns;
	snprintf(e->node, sizeof(e->node), "%s", node);
	e->ep = *ep;
	memcpy(e->key, key, sizeof(key));
	*tail = e;              /* at the end: the report keeps node_map's order */
	return e;
}

static void
ep_unlink(struct nodes *ns, struct nodeep *x)
{
	struct nodeep **pp;

	for (pp = &ns->eps; *pp != NULL; pp = &(*pp)->next)
		if (*pp == x) {
			*pp = x->next;
			return;
		}
}

static void
on_probe(const struct client_probe_result *r, void *arg)
{
	struct nodeep *e = arg;
	enum node_ep_health was = e->health;

	e->probing = false;
	if (e->gone) {
		ep_unlink(e->ns, e);
		free(e);
		return;
	}
	e->probed = time(NULL);
	e->health = r->up ? NODE_EP_UP : NODE_EP_DOWN;
	if (r->up) {
		e->latency_usec = r->latency_usec;
		e->error[0] = '\0';
	} else {
		snprintf(e->error, sizeof(e->error), "%s", r->error[0] ? r->error : "no answer");
	}
	if (e->health == was)
		return;
	if (r->up)
		msg_info("node %s: endpoint %s is up (LHLO answered in %.1f ms)", e->node, e->key,
			 (double)r->latency_usec / 1000.0);
	else
		msg_warn("node %s: endpoint %s is down: %s", e->node, e->key, e->error);
}

static void
probe(struct nodes *ns, struct nodeep *e)
{
	if (e->probing || e->gone)
		return;
	e->probing = true;
	e->soon = false;
	client_probe(ns->q->client, &e->ep, on_probe, e);
}

static void
on_listed(const char *node, const struct endpoint *eps, size_t neps, void *arg)
{
	struct nodes *ns = arg;
	struct nodeep *e;
	size_t i;

	for (i = 0; i < neps; i++)
		if (eps[i].proto == EP_LMTP && (e = ep_find(ns, node, &eps[i], true)) != NULL)
			e->seen = true;
}

/* Lists node_map, forgetting what left it (a map that cannot be listed
 * forgets nothing). */
static void
list_nodes(struct nodes *ns)
{
	struct nodeep *e, *next;
	char err[512];

	for (e = ns->eps; e != NULL; e = e->next)
		e->seen = false;
	if (router_nodes(ns->q->router, on_listed, ns, err, sizeof(err)) == 0) {
		for (e = ns->eps; e != NULL; e = next) {
			next = e->next;
			if (e->seen || e->gone)
				continue;
			if (e->probing) {
				e->gone = true;
				continue;
			}
			ep_unlink(ns, e);
			free(e);
		}
	}
}

static void
probe_round(struct nodes *ns)
{
	struct nodeep *e;

	list_nodes(ns);
	for (e = ns->eps; e != NULL; e = e->next)
		probe(ns, e);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct nodes *ns = arg;
	struct timeval tv = { ns->q->cf->node_probe_interval, 0 };

	probe_round(ns);
	if (ns->q->cf->node_probe_interval > 0)
		evtimer_add(ns->timer_ev, &tv);
}

static void
on_soon(evutil_socket_t fd, short what, void *arg)
{
	struct nodes *ns = arg;
	struct nodeep *e;

	for (e = ns->eps; e != NULL; e = e->next)
		if (e->soon)
			probe(ns, e);
}

void
nodes_delivered(struct nodes *ns, const char *node, const struct endpoint *eps, size_t n,
		bool failed)
{
	struct timeval tv = { PROBE_SOON_SECONDS, 0 };
	struct nodeep *e;
	size_t i;

	if (ns == NULL || node[0] == '\0')
		return;
	/* known from now on, even when node_map cannot be listed */
	for (i = 0; i < n; i++)
		if (eps[i].proto == EP_LMTP && (e = ep_find(ns, node, &eps[i], true)) != NULL)
			e->soon = e->soon || failed;
	if (failed && !evtimer_pending(ns->soon_ev, NULL))
		evtimer_add(ns->soon_ev, &tv);
}

/* ---- the report ---- */

static bool
reported(struct nodes *ns, const struct nodeep *upto, const char *node)
{
	const struct nodeep *e;

	for (e = ns->eps; e != upto; e = e->next)
		if (!e->gone && strcmp(e->node, node) == 0)
			return true;
	return false;
}

static void
report_node(struct nodes *ns, const char *node, struct dstr *out)
{
	struct nodestate_rec r;
	const struct nodestate_rec *d;
	struct nodeep *e;

	memset(&r, 0, sizeof(r));
	r.type = NSR_NODE;
	snprintf(r.node, sizeof(r.node), "%s", node);
	nodestate_format(&r, out);
	for (e = ns->eps; e != NULL; e = e->next) {
		if (e->gone || strcmp(e->node, node) != 0)
			continue;
		r.type = NSR_ENDPOINT;
		snprintf(r.endpoint, sizeof(r.endpoint), "%s", e->key);
		r.health = e->health;
		r.latency_usec = e->health == NODE_EP_UP ? e->latency_usec : 0;
		r.since = (unsigned long long)e->probed;
		snprintf(r.error, sizeof(r.error), "%s", e->error);
		nodestate_format(&r, out);
	}
	if ((d = drainset_find(&ns->drained, node)) != NULL)
		nodestate_format(d, out);
}

void
nodes_report(struct nodes *ns, struct dstr *out)
{
	struct nodeep *e;
	size_t i;

	list_nodes(ns);         /* node_map as it is now; states as last probed */
	for (e = ns->eps; e != NULL; e = e->next)
		if (!e->gone && !reported(ns, e, e->node))
			report_node(ns, e->node, out);
	for (i = 0; i < ns->drained.n; i++) {
		for (e = ns->eps; e != NULL; e = e->next)
			if (!e->gone && strcmp(e->node, ns->drained.v[i].node) == 0)
				break;
		if (e == NULL)
			report_node(ns, ns->drained.v[i].node, out);
	}
}

/* ---- drains ---- */

bool
nodes_drained(const struct nodes *ns, const char *node)
{
	return ns != NULL && node[0] != '\0' && drainset_find(&ns->drained, node) != NULL;
}

static void drain_write(struct nodes *ns);

static void
drain_work(void *arg)
{
	struct drainjob *j = arg;

	j->err = drainset_save(j->ns->q->cf->spool_dir, &j->snap);
}

static void
drain_written(void *arg)
{
	struct drainjob *j = arg;
	struct nodes *ns = j->ns;
	struct drainreq *r;
	struct dstr text;
	char path[4096];

	ns->writing = false;
	snprintf(path, sizeof(path), "%s/%s", ns->q->cf->spool_dir, NODESTATE_FILE);
	if (j->err)
		msg_warn("cannot write %s: %s; the drained nodes are kept in memory only",
			 path, strerror(j->err));
	while ((r = ns->carried) != NULL) {
		ns->carried = r->next;
		dstr_init(&text, 0);
		if (!r->changed)
			dstr_printf(&text, "node %s: %s\n", r->node,
				    r->on ? "already drained" : "not drained");
		else
			dstr_printf(&text, "node %s: %s\n", r->node, r->on ?
				    "drained: its mail waits in the queue" :
				    "undrained: its mail is being delivered");
		if (j->err)
			dstr_printf(&text, "%s: %s: a restart would not know this\n", path,
				    strerror(j->err));
		r->done(r->arg, j->err == 0, text.s);
		dstr_free(&text);
		free(r);
	}
	drainset_free(&j->snap);
	free(j);
	if (ns->waiting != NULL)
		drain_write(ns);
}

/* Writes the set as it is now for the requests waiting. */
static void
drain_write(struct nodes *ns)
{
	struct drainjob *j = xcalloc(1, sizeof(*j));

	j->ns = ns;
	j->snap.n = ns->drained.n;
	j->snap.v = xcalloc(ns->drained.n + 1, sizeof(*j->snap.v));
	memcpy(j->snap.v, ns->drained.v, ns->drained.n * sizeof(*j->snap.v));
	ns->carried = ns->waiting;
	ns->waiting = NULL;
	ns->writing = true;
	iopool_run(ns->q->io, drain_work, drain_written, j);
}

void
nodes_drain(struct nodes *ns, const char *node, bool on, nodes_reply_fn *done, void *arg)
{
	struct drainreq *r = xcalloc(1, sizeof(*r)), **tail;

	snprintf(r->node, sizeof(r->node), "%s", node);
	r->on = on;
	r->done = done;
	r->arg = arg;
	r->changed = drainset_set(&ns->drained, node, on, (unsigned long long)time(NULL));
	if (r->changed && on)
		msg_info("node %s drained: deliveries to it are parked", node);
	else if (r->changed) {
		msg_info("node %s undrained: deliveries to it resume", node);
		qmgr_resume(ns->q);
	}
	for (tail = &ns->waiting; *tail != NULL; tail = &(*tail)->next)
		;
	*tail = r;
	if (!ns->writing)
		drain_write(ns);
}

/* ---- life ---- */

struct nodes *
nodes_new(struct qmgr *q)
{
	struct nodes *ns = xcalloc(1, sizeof(*ns));
	struct timeval tv = { PROBE_FIRST_SECONDS, 0 };
	char err[4200];
	size_t i;

	ns->q = q;
	if (drainset_load(q->cf->spool_dir, &ns->drained, err, sizeof(err)) < 0)
		msg_fatal("%s: fix or remove it (it lists the drained nodes)", err);
	for (i = 0; i < ns->drained.n; i++)
		msg_info("node %s is drained: deliveries to it are parked", ns->drained.v[i].node);
	ns->timer_ev = evtimer_new(q->base, on_timer, ns);
	ns->soon_ev = evtimer_new(q->base, on_soon, ns);
	if (ns->timer_ev == NULL || ns->soon_ev == NULL)
		msg_fatal("nodes: cannot create events");
	if (q->cf->node_probe_interval > 0)
		evtimer_add(ns->timer_ev, &tv);
	return ns;
}

/* After client_pool_free (which answers the probes under way) and
 * iopool_destroy (which finishes the writes). */
void
nodes_free(struct nodes *ns)
{
	struct nodeep *e;
	struct drainreq *r;

	if (ns == NULL)
		return;
	event_free(ns->timer_ev);
	event_free(ns->soon_ev);
	while ((e = ns->eps) != NULL) {
		ns->eps = e->next;
		free(e);
	}
	while ((r = ns->waiting) != NULL) {
		ns->waiting = r->next;
		free(r);
	}
	drainset_free(&ns->drained);
	free(ns);
}
