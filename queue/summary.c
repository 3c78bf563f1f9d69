/*
 * summary.c - `sorterctl queue --summary`: the shape of the queue, as
 * Postfix's qshape shows it, built in. Messages, recipients and bytes by
 * state, by node (the node each pending recipient routes to) and by remote
 * domain (pending recipients outside local_domains), with the oldest
 * message of each; plain text or JSON.
 *
 * It only adds up what the caller read (sorterctl.c reads the spool); it
 * never touches the spool itself.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"
#include "queue/queue.h"

struct qshape_row {
	char *name;
	unsigned long long messages, recipients, bytes;
	uint64_t oldest_usec;           /* arrival of the oldest; 0 = none */
};

struct qshape_table {
	struct qshape_row *rows;
	size_t n;
};

struct qsummary {
	const struct config *cf;
	uint64_t now;
	struct qshape_table states, nodes, domains;
	struct qshape_row total;
};

static struct qshape_row *
row(struct qshape_table *t, const char *name)
{
	size_t i;

	for (i = 0; i < t->n; i++)
		if (strcasecmp(t->rows[i].name, name) == 0)
			return &t->rows[i];
	t->rows = xrealloc(t->rows, (t->n + 1) * sizeof(*t->rows));
	memset(&t->rows[t->n], 0, sizeof(t->rows[0]));
	t->rows[t->n].name = xstrdup(name);
	return &t->rows[t->n++];
}

static void
count(struct qshape_row *r, unsigned long long rcpts, unsigned long long bytes, uint64_t arrival)
{
	r->messages++;
	r->recipients += rcpts;
	r->bytes += bytes;
	if (r->oldest_usec == 0 || arrival < r->oldest_usec)
		r->oldest_usec = arrival;
}

struct qsummary *
qsummary_new(const struct config *cf)
{
	struct qsummary *s = xcalloc(1, sizeof(*s));

	s->cf = cf;
	s->now = now_usec();
	/* the states always show, in pipeline order, even when empty */
	(void)row(&s->states, "active");
	(void)row(&s->states, "deferred");
	(void)row(&s->states, "hold");
	return s;
}

/* A name seen once per message in a table: its recipients in that row */
struct seen {
	const char *name;
	unsigned long long rcpts;
};

static void
seen_add(struct seen **v, size_t *n, const char *name)
{
	size_t i;

	for (i = 0; i < *n; i++)
		if (strcasecmp((*v)[i].name, name) == 0) {
			(*v)[i].rcpts++;
			return;
		}
	*v = xrealloc(*v, (*n + 1) * sizeof(**v));
	(*v)[*n].name = name;
	(*v)[*n].rcpts = 1;
	(*n)++;
}

void
qsummary_add(struct qsummary *s, unsigned state, const struct spool_msg *m, uint64_t now,
	     qselect_node_fn node_of, void *arg)
{
	const char *sname = state == QSEL_HOLD ? "hold" : state == QSEL_DEFERRED ? "deferred" :
			    "active";
	struct seen *nodes = NULL, *domains = NULL;
	size_t nn = 0, nd = 0, i, k;
	unsigned long long pending = 0;
	char **keep = NULL;
	size_t nkeep = 0;
	const char *node, *at;

	for (i = 0; i < m->nrcpt; i++) {
		const char *a = m->rcpts[i].addr;

		if (m->rcpts[i].state != RCPT_PENDING)
			continue;
		pending++;
		at = strrchr(a, '@');
		if (at != NULL && !config_is_local_domain(s->cf, at + 1))
			seen_add(&domains, &nd, at + 1);
		for (k = 0; node_of != NULL && (node = node_of(arg, a, k)) != NULL; k++) {
			/* the router reuses its buffers: keep the names */
			keep = xrealloc(keep, (nkeep + 1) * sizeof(*keep));
			keep[nkeep] = xstrdup(node);
			seen_add(&nodes, &nn, keep[nkeep++]);
		}
	}
	count(row(&s->states, sname), pending, m->content_len, m->arrival_usec);
	count(&s->total, pending, m->content_len, m->arrival_usec);
	for (i = 0; i < nn; i++)
		count(row(&s->nodes, nodes[i].name), nodes[i].rcpts, m->content_len, m->arrival_usec);
	for (i = 0; i < nd; i++)
		count(row(&s->domains, domains[i].name), domains[i].rcpts, m->content_len,
		      m->arrival_usec);
	for (i = 0; i < nkeep; i++)
		free(keep[i]);
	free(keep);
	free(nodes);
	free(domains);
	(void)now;
}

static int
by_messages(const void *a, const void *b)
{
	const struct qshape_row *x = a, *y = b;

	if (x->messages != y->messages)
		return x->messages < y->messages ? 1 : -1;
	return strcmp(x->name, y->name);
}

static long long
age_of(const struct qsummary *s, const struct qshape_row *r)
{
	return r->oldest_usec == 0 || r->oldest_usec > s->now ? -1 :
	       (long long)((s->now - r->oldest_usec) / 1000000u);
}

/* 95s, 12m, 3h 5m, 2d 4h */
static const char *
human_age(long long secs, char *buf, size_t len)
{
	if (secs < 0)
		snprintf(buf, len, "-");
	else if (secs < 120)
		snprintf(buf, len, "%llds", secs);
	else if (secs < 7200)
		snprintf(buf, len, "%lldm", secs / 60);
	else if (secs < 172800)
		snprintf(buf, len, "%lldh %lldm", secs / 3600, secs % 3600 / 60);
	else
		snprintf(buf, len, "%lldd %lldh", secs / 86400, secs % 86400 / 3600);
	return buf;
}

static void
print_table(const struct qsummary *s, const char *title, const struct qshape_table *t, FILE *out)
{
	char age[32];
	size_t i;

	if (title != NULL)
		fprintf(out, "%-32s %9s %10s %12s  %s\n", title, "messages", "recipients", "bytes",
			"oldest");
	for (i = 0; i < t->n; i++) {
		const struct qshape_row *r = &t->rows[i];

		fprintf(out, "%-32s %9llu %10llu %12llu  %s\n", r->name, r->messages, r->recipients,
			r->bytes, human_age(age_of(s, r), age, sizeof(age)));
	}
}

static void
json_str(FILE *out, const char *v)
{
	fputc('"', out);
	for (; *v; v++) {
		unsigned char c = (unsigned char)*v;

		if (c == '"' || c == '\\')
			fprintf(out, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			fprintf(out, "\\u%04x", c);
		else
			fputc(c, out);
	}
	fputc('"', out);
}

static void
json_row(const struct qsummary *s, const struct qshape_row *r, FILE *out)
{
	long long a = age_of(s, r);

	fprintf(out, "{\"messages\":%llu,\"recipients\":%llu,\"bytes\":%llu,\"oldest_age\":",
		r->messages, r->recipients, r->bytes);
	if (a < 0)
		fputs("null}", out);
	else
		fprintf(out, "%lld}", a);
}

static void
json_table(const struct qsummary *s, const char *key, const struct qshape_table *t, FILE *out)
{
	size_t i;

	fprintf(out, ",\"%s\":{", key);
	for (i = 0; i < t->n; i++) {
		if (i)
			fputc(',', out);
		json_str(out, t->rows[i].name);
		fputc(':', out);
		json_row(s, &t->rows[i], out);
	}
	fputc('}', out);
}

void
qsummary_print(struct qsummary *s, bool json, FILE *out)
{
	struct qshape_row total = s->total;

	total.name = (char *)"total";
	if (s->nodes.n > 1)
		qsort(s->nodes.rows, s->nodes.n, sizeof(s->nodes.rows[0]), by_messages);
	if (s->domains.n > 1)
		qsort(s->domains.rows, s->domains.n, sizeof(s->domains.rows[0]), by_messages);
	if (json) {
		fputs("{\"total\":", out);
		json_row(s, &total, out);
		json_table(s, "states", &s->states, out);
		json_table(s, "nodes", &s->nodes, out);
		json_table(s, "domains", &s->domains, out);
		fputs("}\n", out);
		return;
	}
	print_table(s, "State", &s->states, out);
	print_table(s, NULL, &(struct qshape_table){ &total, 1 }, out);
	fputc('\n', out);
	print_table(s, "Node", &s->nodes, out);
	fputc('\n', out);
	print_table(s, "Remote domain", &s->domains, out);
}

static void
table_free(struct qshape_table *t)
{
	size_t i;

	for (i = 0; i < t->n; i++)
		free(t->rows[i].name);
	free(t->rows);
}

void
qsummary_free(struct qsummary *s)
{
	table_free(&s->states);
	table_free(&s->nodes);
	table_free(&s->domains);
	free(s);
}

bool
qsummary_node(const struct qsummary *s, size_t i, const char **name,
	      unsigned long long *messages, unsigned long long *recipients)
{
	if (i >= s->nodes.n)
		return false;
	*name = s->nodes.rows[i].name;
	*messages = s->nodes.rows[i].messages;
	*recipients = s->nodes.rows[i].recipients;
	return true;
}
