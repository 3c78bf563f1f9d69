/*
 * explain.c - `sorterctl route ADDRESS [--json]`: how an address would be
 * routed, step by step, for the admin whose user says "my mail goes
 * nowhere": the maps and whether they answer, the canonical form, the
 * alias expansion tree, the user_map hit (or failover, or rejection), the
 * node and its endpoints, and the reply RCPT would get.
 *
 * It runs the very code smtpd and delivery run (router_check_rcpt and
 * router_resolve); it must never have a resolution logic of its own, or it
 * would explain something other than what happens. It only reads maps.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "router/router.h"

static const char *const map_names[ROUTER_NMAPS] = {
	"alias_map", "user_map", "node_map", "transport_map", "smtp_tls_policy_map"
};

static const char *
verdict_name(enum rcpt_verdict v)
{
	switch (v) {
	case RCPT_ACCEPT:
		return "accept";
	case RCPT_UNKNOWN_USER:
		return "unknown user";
	case RCPT_RELAY_DENIED:
		return "relay denied";
	case RCPT_TEMPFAIL:
		return "temporary failure";
	case RCPT_NO_SMTPUTF8:
		return "node lacks SMTPUTF8";
	case RCPT_WAIT:
		return "lookup under way";
	}
	return "?";
}

static int
verdict_exit(enum rcpt_verdict v)
{
	return v == RCPT_ACCEPT ? 0 : v == RCPT_TEMPFAIL || v == RCPT_WAIT ? 2 : 1;
}

/* ---- text ---- */

/* ---- the live MX list of an smtp:DOMAIN endpoint, asked as delivery would ---- */

struct live {
	struct event_base *base;
	bool done;
	enum dns_mx_status status;
	char err[128];
	struct dns_mx mx[DNS_MX_MAX];
	size_t nmx;
	char addrs[512];
	struct self_addrs self;     /* our listeners, as delivery checks them */
	unsigned short port;        /* the port delivery would connect to */
	bool looped;                /* an address of a host is one of our listeners */
};

static void
on_live_mx(const struct dns_mx_answer *a, void *arg)
{
	struct live *lv = arg;

	lv->done = true;
	lv->status = a->status;
	snprintf(lv->err, sizeof(lv->err), "%s", a->err ? a->err : "");
	lv->nmx = a->nmx < DNS_MX_MAX ? a->nmx : DNS_MX_MAX;
	memcpy(lv->mx, a->mx, lv->nmx * sizeof(lv->mx[0]));
}

static void
on_live_addr(const struct dns_answer *a, void *arg)
{
	struct live *lv = arg;
	char buf[INET6_ADDRSTRLEN];
	size_t i, n = 0;

	lv->done = true;
	lv->addrs[0] = '\0';
	if (a->error) {
		snprintf(lv->addrs, sizeof(lv->addrs), "(%s)", a->err ? a->err : "no address");
		return;
	}
	for (i = 0; i < a->naddrs; i++) {
		struct sockaddr_storage ss = a->addrs[i];
		bool self;

		dns_addr_set_port(&ss, lv->port);
		self = self_addrs_has(&lv->self, &ss);
		lv->looped = lv->looped || self;
		dns_addr_ip(&a->addrs[i], buf, sizeof(buf));
		n += (size_t)snprintf(lv->addrs + n, n < sizeof(lv->addrs) ? sizeof(lv->addrs) - n : 0,
				      "%s%s%s", i ? " " : "", buf, self ? " (this host)" : "");
		if (n >= sizeof(lv->addrs))
			break;
	}
}

static void
live_wait(struct live *lv)
{
	while (!lv->done)
		if (event_base_loop(lv->base, EVLOOP_ONCE) < 0)
			break;
}

static void
text_live_mx(FILE *out, const struct config *cf, const char *domain, unsigned short port)
{
	struct live lv;
	struct dns *d;
	char err[256];
	size_t i;

	memset(&lv, 0, sizeof(lv));
	if ((lv.base = event_base_new()) == NULL)
		return;
	if ((d = dns_new(lv.base, cf->dns_servers, err, sizeof(err))) == NULL) {
		fprintf(out, "    MX %s: %s\n", domain, err);
		event_base_free(lv.base);
		return;
	}
	self_addrs_init(&lv.self, cf->listen, cf->nlisten);
	lv.port = port != 0 ? port : (unsigned short)cf->smtp_port;
	dns_mx_lookup(d, domain, on_live_mx, &lv);
	live_wait(&lv);
	switch (lv.status) {
	case DNS_MX_NXDOMAIN:
		fprintf(out, "    MX %s: domain not found: would bounce 5.1.2\n", domain);
		break;
	case DNS_MX_NULL:
		fprintf(out, "    MX %s: null MX: would bounce 5.1.10\n", domain);
		break;
	case DNS_MX_TEMPFAIL:
		fprintf(out, "    MX %s: lookup failed (%s): would defer 4.4.3\n", domain, lv.err);
		break;
	case DNS_MX_NONE:
		lv.nmx = 1;
		lv.mx[0].pref = 0;
		snprintf(lv.mx[0].host, sizeof(lv.mx[0].host), "%s", domain);
		fprintf(out, "    MX %s: none, the domain's own address:\n", domain);
		/* FALLTHROUGH */
	case DNS_MX_OK:
		for (i = 0; i < lv.nmx; i++) {
			lv.done = false;
			dns_lookup(d, lv.mx[i].host, on_live_addr, &lv);
			live_wait(&lv);
			fprintf(out, "    MX %u %s: %s\n", lv.mx[i].pref, lv.mx[i].host, lv.addrs);
		}
		if (lv.looped)
			fprintf(out, "    (a host at one of our listeners is ourselves: it and every "
				"MX host of its preference or a worse one are not tried; as the best, "
				"a loop: would bounce 5.4.6)\n");
		break;
	}
	self_addrs_free(&lv.self);
	dns_free(d);
	event_base_free(lv.base);
}

static void
text_route(FILE *out, const struct route *rt)
{
	char ep[ENDPOINT_PATH_MAX + 32];
	size_t i;

	fprintf(out, "%s: %s", rt->address[0] ? rt->address : "(none)", route_kind_name(rt->kind));
	switch (rt->kind) {
	case ROUTE_LOCAL:
		if (rt->node[0])
			fprintf(out, ", node %s", rt->node);
		fprintf(out, " (%s), endpoints", route_via_name(rt->via));
		for (i = 0; i < rt->nendpoints; i++) {
			endpoint_format(&rt->endpoints[i], ep, sizeof(ep));
			fprintf(out, " %s", ep);
		}
		break;
	case ROUTE_REMOTE:
		fprintf(out, " by SMTP (%s), endpoints", rt->reason);
		for (i = 0; i < rt->nendpoints; i++) {
			endpoint_format(&rt->endpoints[i], ep, sizeof(ep));
			fprintf(out, " %s", ep);
		}
		break;
	case ROUTE_BOUNCE:
	case ROUTE_TEMPFAIL:
		fprintf(out, " %s %s", rt->status, rt->reason);
		break;
	}
	fputc('\n', out);
}

static void
text_trace(FILE *out, const struct route_trace *t, const struct route_list *l, int depth)
{
	size_t i;

	fprintf(out, "%*s%s\n", 2 + depth * 4, "", t->address);
	for (i = 0; i < t->nnotes; i++)
		fprintf(out, "%*s%s\n", 4 + depth * 4, "", t->notes[i]);
	if (t->route >= 0 && (size_t)t->route < l->n) {
		fprintf(out, "%*s=> ", 4 + depth * 4, "");
		text_route(out, &l->v[t->route]);
	}
	for (i = 0; i < t->nsub; i++)
		text_trace(out, t->sub[i], l, depth + 1);
}

static void
text_report(FILE *out, const struct config *cf, struct router *r, const char *address,
	    enum rcpt_verdict v, const char *why, const struct route_list *l,
	    const struct route_trace *t)
{
	struct map *maps[ROUTER_NMAPS];
	char err[512];
	size_t i;

	fprintf(out, "address: %s\n", address);
	fprintf(out, "maps:\n");
	router_maps(r, maps);
	for (i = 0; i < ROUTER_NMAPS; i++) {
		if (maps[i] == NULL)
			fprintf(out, "  %-14s (not configured)\n", map_names[i]);
		else if (map_ready(maps[i], err, sizeof(err)) == 0)
			fprintf(out, "  %-14s %s (ok)\n", map_names[i], map_spec(maps[i]));
		else
			fprintf(out, "  %-14s %s (unavailable)\n", map_names[i], err);
	}
	fprintf(out, "  %-14s %s\n", "failover_node",
		cf->failover_node ? cf->failover_node : "(none)");
	fprintf(out, "  %-14s %s\n", "delimiter",
		cf->recipient_delimiter ? cf->recipient_delimiter : "(none)");
	fprintf(out, "  %-14s %s\n", "relay_host", cf->relay_host ? cf->relay_host : "(none)");
	fprintf(out, "  %-14s %s\n", "smtp_tls", tls_level_names[cf->smtp_tls_security_level]);
	fprintf(out, "expansion:\n");
	text_trace(out, t, l, 0);
	fprintf(out, "recipients:\n");
	for (i = 0; i < l->n; i++) {
		fprintf(out, "  ");
		text_route(out, &l->v[i]);
		if (l->v[i].kind == ROUTE_REMOTE && l->v[i].nendpoints > 0 && l->v[i].endpoints[0].mx)
			text_live_mx(out, cf, l->v[i].endpoints[0].host, l->v[i].endpoints[0].port);
	}
	fprintf(out, "rcpt: %s %s (%s)\n", rcpt_verdict_status(v), verdict_name(v), why);
}

/* ---- JSON ---- */

static void
json_route(FILE *out, const struct route *rt)
{
	char ep[ENDPOINT_PATH_MAX + 32];
	size_t i;

	fputs("{\"original\": ", out);
	json_put_str(out, rt->original);
	fputs(", \"address\": ", out);
	json_put_str(out, rt->address);
	fputs(", \"kind\": ", out);
	json_put_str(out, route_kind_name(rt->kind));
	fputs(", \"via\": ", out);
	json_put_str(out, route_via_name(rt->via));
	fputs(", \"node\": ", out);
	json_put_str(out, rt->node[0] ? rt->node : NULL);
	fputs(", \"endpoints\": [", out);
	for (i = 0; i < rt->nendpoints; i++) {
		const struct endpoint *e = &rt->endpoints[i];

		endpoint_format(e, ep, sizeof(ep));
		fputs(i ? ", {\"endpoint\": " : "{\"endpoint\": ", out);
		json_put_str(out, ep);
		if (e->kind == EP_UNIX) {
			fputs(", \"path\": ", out);
			json_put_str(out, e->path);
		} else {
			fputs(", \"host\": ", out);
			json_put_str(out, e->host);
			fprintf(out, ", \"port\": %u, \"literal\": %s", e->port,
				e->literal ? "true" : "false");
		}
		fputc('}', out);
	}
	fputs("], \"status\": ", out);
	json_put_str(out, rt->status);
	fputs(", \"reason\": ", out);
	json_put_str(out, rt->reason);
	fputc('}', out);
}

static void
json_trace(FILE *out, const struct route_trace *t)
{
	size_t i;

	fputs("{\"address\": ", out);
	json_put_str(out, t->address);
	fputs(", \"steps\": [", out);
	for (i = 0; i < t->nnotes; i++) {
		if (i)
			fputs(", ", out);
		json_put_str(out, t->notes[i]);
	}
	fputs("], \"route\": ", out);
	if (t->route >= 0)
		fprintf(out, "%ld", t->route);
	else
		fputs("null", out);
	fputs(", \"targets\": [", out);
	for (i = 0; i < t->nsub; i++) {
		if (i)
			fputs(", ", out);
		json_trace(out, t->sub[i]);
	}
	fputs("]}", out);
}

static void
json_report(FILE *out, const struct config *cf, struct router *r, const char *address,
	    enum rcpt_verdict v, const char *why, const struct route_list *l,
	    const struct route_trace *t)
{
	struct map *maps[ROUTER_NMAPS];
	char err[512];
	size_t i;

	fputs("{\"address\": ", out);
	json_put_str(out, address);
	fputs(",\n \"rcpt\": {\"reply\": ", out);
	json_put_str(out, rcpt_verdict_status(v));
	fputs(", \"verdict\": ", out);
	json_put_str(out, verdict_name(v));
	fputs(", \"reason\": ", out);
	json_put_str(out, why);
	fputs("},\n \"maps\": {", out);
	router_maps(r, maps);
	for (i = 0; i < ROUTER_NMAPS; i++) {
		fprintf(out, "%s\"%s\": ", i ? ", " : "", map_names[i]);
		if (maps[i] == NULL) {
			fputs("null", out);
			continue;
		}
		fputs("{\"spec\": ", out);
		json_put_str(out, map_spec(maps[i]));
		if (map_ready(maps[i], err, sizeof(err)) == 0) {
			fputs(", \"ok\": true, \"error\": null}", out);
		} else {
			fputs(", \"ok\": false, \"error\": ", out);
			json_put_str(out, err);
			fputc('}', out);
		}
	}
	fputs("},\n \"failover_node\": ", out);
	json_put_str(out, cf->failover_node);
	fputs(", \"recipient_delimiter\": ", out);
	json_put_str(out, cf->recipient_delimiter);
	fputs(", \"relay_host\": ", out);
	json_put_str(out, cf->relay_host);
	fputs(", \"smtp_tls_security_level\": ", out);
	json_put_str(out, tls_level_names[cf->smtp_tls_security_level]);
	fputs(",\n \"expansion\": ", out);
	json_trace(out, t);
	fputs(",\n \"recipients\": [", out);
	for (i = 0; i < l->n; i++) {
		fputs(i ? ",\n  " : "\n  ", out);
		json_route(out, &l->v[i]);
	}
	fputs("]}\n", out);
}

int
router_explain(const struct config *cf, const char *address, bool json, FILE *out)
{
	struct router *r;
	struct route_list l;
	struct route_trace *t = NULL;
	struct address a;
	enum rcpt_verdict v;
	char err[512], why[512], addr[ADDR_PATH_MAX + 8];
	const char *awhy;
	size_t len = strlen(address);
	int used;

	used = address_parse(address, len, ADDR_ALLOW_POSTMASTER | ADDR_ALLOW_UTF8, &a, &awhy);
	if (used < 0 || (size_t)used != len) {
		if (json) {
			fputs("{\"address\": ", out);
			json_put_str(out, address);
			fputs(", \"error\": ", out);
			json_put_str(out, used < 0 ? awhy : "trailing characters after the address");
			fputs("}\n", out);
		} else {
			fprintf(out, "%s: not an address: %s\n", address,
				used < 0 ? awhy : "trailing characters after the address");
		}
		return 1;
	}
	address_format(&a, addr, sizeof(addr));
	if ((r = router_open(cf, err, sizeof(err))) == NULL) {
		if (json) {
			fputs("{\"address\": ", out);
			json_put_str(out, addr);
			fputs(", \"error\": ", out);
			json_put_str(out, err);
			fputs("}\n", out);
		} else {
			fprintf(out, "%s: cannot route: %s\n", addr, err);
		}
		return 2;
	}
	v = router_check_rcpt(r, addr, why, sizeof(why));
	memset(&l, 0, sizeof(l));
	router_resolve(r, addr, &l, &t);
	if (json)
		json_report(out, cf, r, addr, v, why, &l, t);
	else
		text_report(out, cf, r, addr, v, why, &l, t);
	route_trace_free(t);
	route_list_free(&l);
	router_close(r);
	return verdict_exit(v);
}
