/*
 * ctlnodes.c - `sorterctl nodes [--json]`: each node, its endpoints with
 * their state (up, down, unknown), last error, LHLO latency and last probe
 * as the queue manager knows them (the "nodes" control reply, read with
 * nodestate.c's codec), the capabilities of each endpoint's last LHLO
 * (spool_dir/nodecaps), whether the node is drained, and the mail queued
 * for it (pending recipients routing to it, summary.c). With the daemon
 * down: the nodes of node_map, states unknown, drains from the drained
 * file, and it says so.
 *
 * It reads; it never changes the spool.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/lib.h"
#include "router/router.h"
#include "queue/queue.h"

struct vnode {
	char name[NODESTATE_NODE_MAX + 1];
	const struct nodestate_rec *drained;
	const struct nodestate_rec **eps;
	size_t neps;
	unsigned long long messages, recipients;
};

struct view {
	struct vnode *v;
	size_t n;
	struct nodestate_rec *recs;     /* what the nodes point into */
	size_t nrecs, caprecs;
};

static struct vnode *
vnode(struct view *w, const char *name)
{
	size_t i;

	for (i = 0; i < w->n; i++)
		if (strcmp(w->v[i].name, name) == 0)
			return &w->v[i];
	w->v = xrealloc(w->v, (w->n + 1) * sizeof(*w->v));
	memset(&w->v[w->n], 0, sizeof(w->v[0]));
	snprintf(w->v[w->n].name, sizeof(w->v[0].name), "%s", name);
	return &w->v[w->n++];
}

static void
add_rec(struct view *w, const struct nodestate_rec *r)
{
	if (w->nrecs == w->caprecs) {
		w->caprecs = w->caprecs ? w->caprecs * 2 : 32;
		w->recs = xrealloc(w->recs, w->caprecs * sizeof(*w->recs));
	}
	w->recs[w->nrecs++] = *r;
}

/* Nodes point into recs only once every record is in (recs moves). */
static void
build(struct view *w)
{
	struct vnode *n;
	size_t i;

	for (i = 0; i < w->nrecs; i++) {
		n = vnode(w, w->recs[i].node);
		if (w->recs[i].type == NSR_DRAINED)
			n->drained = &w->recs[i];
		else if (w->recs[i].type == NSR_ENDPOINT) {
			n->eps = xrealloc(n->eps, (n->neps + 1) * sizeof(*n->eps));
			n->eps[n->neps++] = &w->recs[i];
		}
	}
}

static void
on_listed(const char *node, const struct endpoint *eps, size_t neps, void *arg)
{
	struct view *w = arg;
	struct nodestate_rec r;
	size_t i;

	if (!nodestate_name_ok(node, strlen(node)))
		return;
	memset(&r, 0, sizeof(r));
	r.type = NSR_NODE;
	snprintf(r.node, sizeof(r.node), "%s", node);
	add_rec(w, &r);
	for (i = 0; i < neps; i++) {
		if (eps[i].proto != EP_LMTP)
			continue;
		r.type = NSR_ENDPOINT;
		endpoint_format(&eps[i], r.endpoint, sizeof(r.endpoint));
		r.health = NODE_EP_UNKNOWN;
		add_rec(w, &r);
	}
}

static void
put_time(FILE *out, unsigned long long t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	char buf[64];

	if (gmtime_r(&tt, &tm) != NULL && strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm))
		fputs(buf, out);
	else
		fprintf(out, "%llu", t);
}

static void
print_text(const struct view *w, struct nodecaps *nc, bool running, FILE *out)
{
	const struct nodecaps_entry *ce;
	const struct nodestate_rec *e;
	time_t now = time(NULL);
	size_t i, k;

	if (!running)
		fprintf(out, "sorterd is not running: endpoint states are unknown (nodes from "
			"node_map, capabilities from the last LHLO seen, queued mail from the spool)\n");
	if (w->n == 0)
		fprintf(out, "No nodes\n");
	for (i = 0; i < w->n; i++) {
		const struct vnode *n = &w->v[i];

		fprintf(out, "%s: %s, queued %llu message%s, %llu recipient%s", n->name,
			n->drained ? "DRAINED" : "active", n->messages, n->messages == 1 ? "" : "s",
			n->recipients, n->recipients == 1 ? "" : "s");
		if (n->drained) {
			fputs(", drained since ", out);
			put_time(out, n->drained->since);
		}
		fputc('\n', out);
		if (n->neps == 0)
			fprintf(out, "  (no LMTP endpoint known)\n");
		for (k = 0; k < n->neps; k++) {
			e = n->eps[k];
			fprintf(out, "  %s  %s", e->endpoint, nodestate_health_name(e->health));
			if (e->health == NODE_EP_UP)
				fprintf(out, "  latency %.1f ms", (double)e->latency_usec / 1000.0);
			if (e->since > 0)
				fprintf(out, "  probed %llds ago", (long long)now - (long long)e->since);
			ce = nodecaps_get(nc, e->endpoint);
			if (ce == NULL) {
				fputs("  caps unknown", out);
			} else {
				fputs("  caps", out);
				if (ce->caps.size && ce->caps.size_max)
					fprintf(out, " SIZE=%llu", ce->caps.size_max);
				else if (ce->caps.size)
					fputs(" SIZE", out);
				if (ce->caps.eightbitmime)
					fputs(" 8BITMIME", out);
				if (ce->caps.smtputf8)
					fputs(" SMTPUTF8", out);
				if (ce->caps.pipelining)
					fputs(" PIPELINING", out);
			}
			if (e->error[0])
				fprintf(out, "\n    last error: %s", e->error);
			fputc('\n', out);
		}
	}
}

static void
print_json(const struct view *w, struct nodecaps *nc, bool running, FILE *out)
{
	const struct nodecaps_entry *ce;
	const struct nodestate_rec *e;
	size_t i, k;

	fprintf(out, "{\"daemon_running\": %s, \"nodes\": [", running ? "true" : "false");
	for (i = 0; i < w->n; i++) {
		const struct vnode *n = &w->v[i];

		fprintf(out, "%s\n  {\"node\": ", i ? "," : "");
		json_put_str(out, n->name);
		fprintf(out, ", \"drained\": %s, \"drained_since\": ", n->drained ? "true" : "false");
		if (n->drained)
			fprintf(out, "%llu", n->drained->since);
		else
			fputs("null", out);
		fprintf(out, ", \"queued_messages\": %llu, \"queued_recipients\": %llu, "
			"\"endpoints\": [", n->messages, n->recipients);
		for (k = 0; k < n->neps; k++) {
			e = n->eps[k];
			fprintf(out, "%s\n    {\"endpoint\": ", k ? "," : "");
			json_put_str(out, e->endpoint);
			fprintf(out, ", \"state\": \"%s\", \"last_error\": ",
				nodestate_health_name(e->health));
			json_put_str(out, e->error[0] ? e->error : NULL);
			fputs(", \"latency_ms\": ", out);
			if (e->health == NODE_EP_UP)
				fprintf(out, "%.3f", (double)e->latency_usec / 1000.0);
			else
				fputs("null", out);
			fputs(", \"last_probe\": ", out);
			if (e->since)
				fprintf(out, "%llu", e->since);
			else
				fputs("null", out);
			fputs(", \"capabilities\": ", out);
			if ((ce = nodecaps_get(nc, e->endpoint)) == NULL) {
				fputs("null", out);
			} else {
				fprintf(out, "{\"SIZE\": %s, \"size_max\": ",
					ce->caps.size ? "true" : "false");
				if (ce->caps.size && ce->caps.size_max)
					fprintf(out, "%llu", ce->caps.size_max);
				else
					fputs("null", out);
				fprintf(out, ", \"8BITMIME\": %s, \"SMTPUTF8\": %s, \"PIPELINING\": %s}",
					ce->caps.eightbitmime ? "true" : "false",
					ce->caps.smtputf8 ? "true" : "false",
					ce->caps.pipelining ? "true" : "false");
			}
			fputc('}', out);
		}
		fputs(n->neps ? "\n  ]}" : "]}", out);
	}
	fputs(w->n ? "\n]}\n" : "]}\n", out);
}

int
ctl_nodes(const struct config *cf, const char *reply, struct router *r,
	  const struct qsummary *sum, bool json, FILE *out)
{
	struct view w;
	struct nodestate_source src;
	struct nodestate_rec rec;
	struct drainset ds;
	struct nodecaps *nc;
	const char *name;
	unsigned long long msgs, rcpts;
	char err[4200];
	size_t i;
	int rc = 0, got;

	memset(&w, 0, sizeof(w));
	if (reply != NULL) {
		nodestate_source_init(&src, reply, strlen(reply));
		while ((got = nodestate_next(&src, &rec, err, sizeof(err))) > 0)
			add_rec(&w, &rec);
		if (got < 0) {
			fprintf(stderr, "sorterctl: the queue manager's nodes report: %s\n", err);
			rc = 1;
		}
	} else {
		if (r == NULL || router_nodes(r, on_listed, &w, err, sizeof(err)) < 0) {
			fprintf(stderr, "sorterctl: cannot list the nodes: %s\n",
				r == NULL ? "no router" : err);
			rc = 1;
		}
		if (drainset_load(cf->spool_dir, &ds, err, sizeof(err)) < 0) {
			fprintf(stderr, "sorterctl: %s\n", err);
			rc = 1;
		} else {
			for (i = 0; i < ds.n; i++)
				add_rec(&w, &ds.v[i]);
			drainset_free(&ds);
		}
	}
	build(&w);
	for (i = 0; sum != NULL && qsummary_node(sum, i, &name, &msgs, &rcpts); i++) {
		struct vnode *n;

		if (!nodestate_name_ok(name, strlen(name)))
			continue;
		n = vnode(&w, name);
		n->messages = msgs;
		n->recipients = rcpts;
	}
	nc = nodecaps_open(cf->spool_dir);
	if (json)
		print_json(&w, nc, reply != NULL, out);
	else
		print_text(&w, nc, reply != NULL, out);
	nodecaps_close(nc);
	for (i = 0; i < w.n; i++)
		free(w.v[i].eps);
	free(w.v);
	free(w.recs);
	return rc;
}
