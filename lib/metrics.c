/*
 * metrics.c - the shared metrics region (metrics.h) and its Prometheus
 * text exposition.
 *
 * Writers only ever add to their own process's slab with relaxed atomics;
 * the reader sums every slab. A histogram keeps per-bucket counts (not
 * cumulative) and a sum in microseconds; the exposition makes them
 * cumulative from one snapshot, so that within a scrape every bucket is at
 * least the one before it and _count equals the +Inf bucket.
 *
 * This file must never block, allocate or take a lock on the hot path,
 * and never put an unbounded value (an address, a queue id) into a label.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "lib/lib.h"
#include "lib/metrics.h"

#define HBUCKETS 16             /* at most, +Inf included */
#define LSLOTS (METRICS_LISTENERS + 1)  /* the last: listeners past the limit */

enum { MN_NODE, MN_MAP, MN_MILTER, MN_NKINDS };
enum { MV_TLS10, MV_TLS11, MV_TLS12, MV_TLS13, MV_OTHER, MV_N };
enum { MA_PLAIN, MA_LOGIN, MA_OTHER, MA_N };
enum { NAME_FREE, NAME_CLAIMED, NAME_READY };

/* upper bounds in microseconds; the +Inf bucket follows the last */
static const uint64_t commit_bounds[] = {
	500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
};
static const uint64_t delivery_bounds[] = {
	5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,
	10000000, 30000000, 60000000,
};
static const uint64_t map_bounds[] = {
	10, 50, 100, 500, 1000, 5000, 10000, 50000, 100000, 500000, 1000000,
};
#define NB(a) (sizeof(a) / sizeof(a[0]))
_Static_assert(NB(commit_bounds) < HBUCKETS && NB(delivery_bounds) < HBUCKETS &&
	       NB(map_bounds) < HBUCKETS, "a histogram has at most HBUCKETS buckets");

struct hist {
	_Atomic uint64_t bucket[HBUCKETS];
	_Atomic uint64_t sum_usec;
};

/* A process's own counters; a slab starts on its own cache line, so that
 * two processes never write to the same line */
struct slab {
	_Alignas(64) _Atomic int64_t sessions_open[LSLOTS];
	_Atomic uint64_t sessions[LSLOTS];
	_Atomic uint64_t sessions_rejected[LSLOTS][MSR_N];
	_Atomic uint64_t messages[LSLOTS];
	_Atomic uint64_t message_bytes[LSLOTS];
	_Atomic uint64_t messages_rejected[LSLOTS][MMR_N];
	struct hist commit;
	_Atomic uint64_t tls[MTLS_NSIDES][MV_N][2];     /* [..][0] ok, [1] failed */
	_Atomic uint64_t auth[MA_N][MAUTH_N];
	_Atomic uint64_t deliveries[METRICS_NAMES][MTR_N][MDR_N];
	struct hist delivery[METRICS_NAMES];
	_Atomic uint64_t map_lookups[METRICS_NAMES];
	_Atomic uint64_t map_errors[METRICS_NAMES];
	struct hist map[METRICS_NAMES];
	_Atomic uint64_t milter[METRICS_NAMES][MMILT_N];
	_Atomic uint64_t log_dropped;
};

struct name {
	_Atomic uint32_t state;
	char s[METRICS_NAME_MAX + 1];
};

struct metrics {
	uint64_t start_usec;
	unsigned nlisteners;
	char listener[LSLOTS][64];
	char role[LSLOTS][16];
	struct name names[MN_NKINDS][METRICS_NAMES];
	struct slab slab[METRICS_SLABS];
};

/* This process's slab; NULL when not attached. */
static struct metrics *region;
static struct slab *self;

static const char *const session_reject_names[MSR_N] = {
	"max_sessions", "client_limit", "client_rate", "shutdown", "proxy",
};
static const char *const message_reject_names[MMR_N] = {
	"size", "bare_cr_lf", "storage", "milter", "other",
};
static const char *const tls_side_names[MTLS_NSIDES] = { "server", "client" };
static const char *const tls_version_names[MV_N] = {
	"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", "other",
};
static const char *const auth_mech_names[MA_N] = { "PLAIN", "LOGIN", "other" };
static const char *const auth_result_names[MAUTH_N] = { "success", "failure", "tempfail" };
static const char *const transport_names[MTR_N] = { "lmtp", "smtp" };
static const char *const delivery_result_names[MDR_N] = { "delivered", "deferred", "bounced" };
static const char *const milter_result_names[MMILT_N] = {
	"accept", "continue", "reject", "tempfail", "discard", "replycode", "quarantine",
	"error", "timeout",
};
static const char *const role_names[] = { "mx", "submission", "submissions" };

#define ADD(field, n) atomic_fetch_add_explicit(&(field), (n), memory_order_relaxed)
#define GET(field) atomic_load_explicit(&(field), memory_order_relaxed)

/* ---- setting up ---- */

static void
set_listeners(struct metrics *m, const struct listen_spec *ls, size_t n)
{
	size_t i;

	m->nlisteners = n > METRICS_LISTENERS ? METRICS_LISTENERS : (unsigned)n;
	for (i = 0; i < m->nlisteners; i++) {
		snprintf(m->listener[i], sizeof(m->listener[i]), "%s%s%s:%s",
			 strchr(ls[i].host, ':') ? "[" : "", ls[i].host,
			 strchr(ls[i].host, ':') ? "]" : "", ls[i].port);
		snprintf(m->role[i], sizeof(m->role[i]), "%s", role_names[ls[i].role]);
	}
	snprintf(m->listener[METRICS_LISTENERS], sizeof(m->listener[0]), "other");
	snprintf(m->role[METRICS_LISTENERS], sizeof(m->role[0]), "other");
}

struct metrics *
metrics_create(const struct config *cf)
{
	struct metrics *m = mmap(NULL, sizeof(*m), PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (m == MAP_FAILED)
		msg_fatal("mmap metrics (%zu bytes): %s", sizeof(*m), strerror(errno));
	m->start_usec = now_usec();
	set_listeners(m, cf->listen, cf->nlisten);
	return m;
}

struct metrics *
metrics_create_private(const struct listen_spec *ls, size_t n)
{
	size_t size = (sizeof(struct metrics) + 63) / 64 * 64;
	struct metrics *m = aligned_alloc(64, size);

	if (m == NULL)
		msg_fatal("out of memory");
	memset(m, 0, size);
	m->start_usec = now_usec();
	set_listeners(m, ls, n);
	metrics_attach(m, 0);
	return m;
}

void
metrics_attach(struct metrics *m, int slab)
{
	if (m == NULL || slab < 0 || slab >= METRICS_SLABS) {
		region = NULL;
		self = NULL;
		log_count_drops_in(NULL);
		return;
	}
	region = m;
	self = &m->slab[slab];
	log_count_drops_in(&self->log_dropped);
}

void
metrics_slab_gone(struct metrics *m, int slab)
{
	size_t i;

	if (m == NULL || slab < 0 || slab >= METRICS_SLABS)
		return;
	for (i = 0; i < LSLOTS; i++)
		atomic_store(&m->slab[slab].sessions_open[i], 0);
}

/* ---- the hot path ---- */

uint64_t
metrics_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int
lslot(int listener)
{
	return listener < 0 || listener >= (int)region->nlisteners ? METRICS_LISTENERS : listener;
}

static void
hist_add(struct hist *h, const uint64_t *bounds, size_t nb, uint64_t usec)
{
	size_t i;

	for (i = 0; i < nb && usec > bounds[i]; i++)
		;
	ADD(h->bucket[i], 1);
	ADD(h->sum_usec, usec);
}

void
metrics_session_open(int listener)
{
	if (self == NULL)
		return;
	ADD(self->sessions_open[lslot(listener)], 1);
	ADD(self->sessions[lslot(listener)], 1);
}

void
metrics_session_close(int listener)
{
	if (self != NULL)
		ADD(self->sessions_open[lslot(listener)], -1);
}

void
metrics_session_rejected(int listener, enum metrics_session_reject why)
{
	if (self != NULL && why < MSR_N)
		ADD(self->sessions_rejected[lslot(listener)][why], 1);
}

void
metrics_message_accepted(int listener, uint64_t bytes)
{
	if (self == NULL)
		return;
	ADD(self->messages[lslot(listener)], 1);
	ADD(self->message_bytes[lslot(listener)], bytes);
}

void
metrics_message_rejected(int listener, enum metrics_message_reject why)
{
	if (self != NULL && why < MMR_N)
		ADD(self->messages_rejected[lslot(listener)][why], 1);
}

void
metrics_commit_latency(uint64_t usec)
{
	if (self != NULL)
		hist_add(&self->commit, commit_bounds, NB(commit_bounds), usec);
}

void
metrics_tls_handshake(enum metrics_tls_side side, const char *version, bool ok)
{
	int v = MV_OTHER, i;

	if (self == NULL || side >= MTLS_NSIDES)
		return;
	for (i = 0; version != NULL && i < MV_OTHER; i++)
		if (strcmp(version, tls_version_names[i]) == 0)
			v = i;
	ADD(self->tls[side][v][ok ? 0 : 1], 1);
}

void
metrics_auth(const char *mechanism, enum metrics_auth_result r)
{
	int mi = MA_OTHER, i;

	if (self == NULL || r >= MAUTH_N)
		return;
	for (i = 0; mechanism != NULL && i < MA_OTHER; i++)
		if (strcmp(mechanism, auth_mech_names[i]) == 0)
			mi = i;
	ADD(self->auth[mi][r], 1);
}

/*
 * The index of `name` in the kind's table, registering it when new. Slots
 * are claimed with a compare-and-swap, so processes may race: two that
 * register one name at once may get two slots, which the exposition adds
 * up. A slot left half-claimed by a process that died is skipped.
 */
static int
name_id(int kind, const char *name)
{
	struct name *t = region->names[kind];
	char key[METRICS_NAME_MAX + 1];
	uint32_t st;
	int i;

	snprintf(key, sizeof(key), "%s", name);
	for (i = 0; i < METRICS_NAMES - 1; i++) {
		st = atomic_load_explicit(&t[i].state, memory_order_acquire);
		if (st == NAME_READY) {
			if (strcmp(t[i].s, key) == 0)
				return i;
			continue;
		}
		if (st == NAME_CLAIMED)
			continue;
		if (atomic_compare_exchange_strong(&t[i].state, &st, NAME_CLAIMED)) {
			memcpy(t[i].s, key, sizeof(key));
			atomic_store_explicit(&t[i].state, NAME_READY, memory_order_release);
			return i;
		}
		i--;    /* someone else took it just now: look at what it became */
	}
	return METRICS_NAMES - 1;
}

void
metrics_delivery(enum metrics_transport t, const char *node, enum metrics_delivery_result r,
		 uint64_t usec)
{
	int id;

	if (self == NULL || t >= MTR_N || r >= MDR_N)
		return;
	id = name_id(MN_NODE, node ? node : "");
	ADD(self->deliveries[id][t][r], 1);
	hist_add(&self->delivery[id], delivery_bounds, NB(delivery_bounds), usec);
}

int
metrics_map_id(const char *spec)
{
	return self == NULL || spec == NULL ? -1 : name_id(MN_MAP, spec);
}

void
metrics_map_lookup(int id, bool error, uint64_t usec)
{
	if (self == NULL || id < 0 || id >= METRICS_NAMES)
		return;
	ADD(self->map_lookups[id], 1);
	if (error)
		ADD(self->map_errors[id], 1);
	hist_add(&self->map[id], map_bounds, NB(map_bounds), usec);
}

void
metrics_milter(const char *milter, enum metrics_milter_result r)
{
	if (self == NULL || r >= MMILT_N)
		return;
	ADD(self->milter[name_id(MN_MILTER, milter ? milter : "")][r], 1);
}

void
metrics_milter_result(const char *milter, const char *result)
{
	int i;

	for (i = 0; i < MMILT_N; i++)
		if (result != NULL && strcmp(result, milter_result_names[i]) == 0)
			break;
	metrics_milter(milter, i < MMILT_N ? (enum metrics_milter_result)i : MMILT_ERROR);
}

/* ---- the exposition ---- */

/* A label value: \ " and newline escaped; anything that is not UTF-8
 * text becomes '?'. */
static void
put_label(struct dstr *out, const char *name, const char *v)
{
	char buf[2 * METRICS_NAME_MAX + 64];
	size_t i, n = 0;

	for (i = 0; v[i] != '\0' && n + 3 < sizeof(buf); i++) {
		if (v[i] == '\\' || v[i] == '"') {
			buf[n++] = '\\';
			buf[n++] = v[i];
		} else if (v[i] == '\n') {
			buf[n++] = '\\';
			buf[n++] = 'n';
		} else {
			buf[n++] = v[i];
		}
	}
	buf[n] = '\0';
	(void)utf8_sanitize(buf, n);
	dstr_printf(out, "%s%s=\"%s\"", out->len && out->s[out->len - 1] == '{' ? "" : ",", name,
		    buf);
}

static void
family(struct dstr *out, const char *name, const char *type, const char *help)
{
	dstr_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{labels} value; labels is a NULL-terminated list of name, value */
static void
sample(struct dstr *out, const char *name, const char *suffix, const char *const *labels,
       const char *fmt_value)
{
	size_t i;

	dstr_printf(out, "%s%s", name, suffix);
	if (labels != NULL && labels[0] != NULL) {
		dstr_append(out, "{", 1);
		for (i = 0; labels[i] != NULL; i += 2)
			put_label(out, labels[i], labels[i + 1]);
		dstr_append(out, "}", 1);
	}
	dstr_printf(out, " %s\n", fmt_value);
}

static void
sample_u(struct dstr *out, const char *name, const char *const *labels, uint64_t v)
{
	char num[32];

	snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
	sample(out, name, "", labels, num);
}

static void
sample_d(struct dstr *out, const char *name, const char *const *labels, double v)
{
	char num[64];

	snprintf(num, sizeof(num), "%.17g", v);
	sample(out, name, "", labels, num);
}

/* A histogram's series for the summed buckets h[] and sum. */
static void
hist_samples(struct dstr *out, const char *name, const char *const *labels,
	     const uint64_t *bounds, size_t nb, const uint64_t *h, uint64_t sum_usec)
{
	const char *l[16];
	char le[32], num[32];
	uint64_t cum = 0;
	size_t i, k = 0;

	for (k = 0; labels != NULL && labels[k] != NULL && k < 12; k++)
		l[k] = labels[k];
	l[k] = "le";
	l[k + 2] = NULL;
	for (i = 0; i <= nb; i++) {
		cum += h[i];
		if (i < nb)
			snprintf(le, sizeof(le), "%g", (double)bounds[i] / 1e6);
		else
			snprintf(le, sizeof(le), "+Inf");
		l[k + 1] = le;
		snprintf(num, sizeof(num), "%llu", (unsigned long long)cum);
		sample(out, name, "_bucket", l, num);
	}
	l[k] = NULL;
	snprintf(num, sizeof(num), "%.17g", (double)sum_usec / 1e6);
	sample(out, name, "_sum", l, num);
	snprintf(num, sizeof(num), "%llu", (unsigned long long)cum);
	sample(out, name, "_count", l, num);
}

/* Sums one histogram over every slab; offset of the struct hist in a slab */
static void
hist_sum(const struct metrics *m, size_t off, uint64_t *h, uint64_t *sum)
{
	size_t s, i;

	memset(h, 0, HBUCKETS * sizeof(*h));
	*sum = 0;
	for (s = 0; s < METRICS_SLABS; s++) {
		struct hist *x = (struct hist *)(void *)((char *)&m->slab[s] + off);

		for (i = 0; i < HBUCKETS; i++)
			h[i] += GET(x->bucket[i]);
		*sum += GET(x->sum_usec);
	}
}

/* The counter at byte offset off in a slab, summed over every slab */
static uint64_t
slab_sum(const struct metrics *m, size_t off)
{
	uint64_t v = 0;
	size_t s;

	for (s = 0; s < METRICS_SLABS; s++)
		v += GET(*(_Atomic uint64_t *)(void *)((char *)&m->slab[s] + off));
	return v;
}

#define ELT sizeof(_Atomic uint64_t)

/* The names of one kind, with duplicates (a registration race) mapped to
 * their first slot: canon[i] is i's slot, or -1 when unused. */
static void
canonical(const struct metrics *m, int kind, int canon[METRICS_NAMES])
{
	struct name *t = (struct name *)m->names[kind];
	int i, j;

	for (i = 0; i < METRICS_NAMES - 1; i++) {
		canon[i] = -1;
		if (atomic_load_explicit(&t[i].state, memory_order_acquire) != NAME_READY)
			continue;
		canon[i] = i;
		for (j = 0; j < i; j++)
			if (canon[j] == j && strcmp(t[j].s, t[i].s) == 0) {
				canon[i] = j;
				break;
			}
	}
	canon[METRICS_NAMES - 1] = METRICS_NAMES - 1;
}

static const char *
name_of(const struct metrics *m, int kind, int i)
{
	return i == METRICS_NAMES - 1 ? "_other" : m->names[kind][i].s;
}

/* Name slot i's counter: the one at off in each slot's block of `stride`
 * bytes, summed over every slab and every slot that is a duplicate of i */
static uint64_t
name_sum(const struct metrics *m, const int canon[METRICS_NAMES], int i, size_t off,
	 size_t stride)
{
	uint64_t v = 0;
	int j;

	for (j = 0; j < METRICS_NAMES; j++)
		if (canon[j] == i)
			v += slab_sum(m, off + (size_t)j * stride);
	return v;
}

/* A histogram per name of one kind (the struct hist [METRICS_NAMES] at off
 * in a slab), a name's duplicates summed; "_other" only when it has counts */
static void
render_name_hists(const struct metrics *m, struct dstr *out, const int canon[METRICS_NAMES],
		  int kind, size_t off, const char *name, const char *label,
		  const uint64_t *bounds, size_t nb)
{
	uint64_t h[HBUCKETS], hs[HBUCKETS], sum, sums, v;
	const char *l[4];
	size_t b;
	int i, j;

	for (i = 0; i < METRICS_NAMES; i++) {
		if (canon[i] != i)
			continue;
		memset(hs, 0, sizeof(hs));
		sums = 0;
		for (j = 0; j < METRICS_NAMES; j++) {
			if (canon[j] != i)
				continue;
			hist_sum(m, off + (size_t)j * sizeof(struct hist), h, &sum);
			for (b = 0; b < HBUCKETS; b++)
				hs[b] += h[b];
			sums += sum;
		}
		for (b = 0, v = 0; b < HBUCKETS; b++)
			v += hs[b];
		if (v == 0 && i == METRICS_NAMES - 1)
			continue;
		l[0] = label; l[1] = name_of(m, kind, i); l[2] = NULL;
		hist_samples(out, name, l, bounds, nb, hs, sums);
	}
}

/* The counters kept per listener, in the order they are shown: each an
 * array [LSLOTS], or [LSLOTS][nreasons] with a "reason" label */
static const struct {
	const char *name, *help;
	size_t off;
	const char *const *reasons;
	size_t nreasons;
} listener_counters[] = {
	{ "sorter_smtpd_sessions_total", "SMTP sessions accepted.",
	  offsetof(struct slab, sessions), NULL, 0 },
	{ "sorter_smtpd_sessions_rejected_total", "Connections refused before the banner, by reason.",
	  offsetof(struct slab, sessions_rejected), session_reject_names, MSR_N },
	{ "sorter_smtpd_messages_accepted_total", "Messages queued (250 after DATA).",
	  offsetof(struct slab, messages), NULL, 0 },
	{ "sorter_smtpd_message_bytes_total", "Bytes of the messages queued.",
	  offsetof(struct slab, message_bytes), NULL, 0 },
	{ "sorter_smtpd_messages_rejected_total", "Messages refused at the end of DATA, by reason.",
	  offsetof(struct slab, messages_rejected), message_reject_names, MMR_N },
};

static void
render_listeners(const struct metrics *m, struct dstr *out)
{
	const char *l[8];
	int64_t open;
	size_t i, k, c, r, per, n = m->nlisteners;

	/* "other" only exists with more listeners than METRICS_LISTENERS */
	size_t slots[LSLOTS], ns = 0;

	for (i = 0; i < n; i++)
		slots[ns++] = i;
	if (slab_sum(m, offsetof(struct slab, sessions) + METRICS_LISTENERS * ELT) > 0)
		slots[ns++] = METRICS_LISTENERS;

	family(out, "sorter_smtpd_sessions", "gauge", "SMTP sessions open now.");
	for (k = 0; k < ns; k++) {
		i = slots[k];
		open = 0;
		for (size_t s = 0; s < METRICS_SLABS; s++)
			open += GET(m->slab[s].sessions_open[i]);
		l[0] = "listener"; l[1] = m->listener[i]; l[2] = "role"; l[3] = m->role[i]; l[4] = NULL;
		sample_u(out, "sorter_smtpd_sessions", l, open < 0 ? 0 : (uint64_t)open);
	}
	for (c = 0; c < NB(listener_counters); c++) {
		family(out, listener_counters[c].name, "counter", listener_counters[c].help);
		per = listener_counters[c].nreasons ? listener_counters[c].nreasons : 1;
		for (k = 0; k < ns; k++) {
			i = slots[k];
			l[0] = "listener"; l[1] = m->listener[i]; l[2] = "role"; l[3] = m->role[i];
			l[4] = NULL;
			for (r = 0; r < per; r++) {
				if (listener_counters[c].reasons != NULL) {
					l[4] = "reason"; l[5] = listener_counters[c].reasons[r]; l[6] = NULL;
				}
				sample_u(out, listener_counters[c].name, l,
					 slab_sum(m, listener_counters[c].off + (i * per + r) * ELT));
			}
		}
	}
}

static void
render_queue(const struct metrics_queue *q, struct dstr *out)
{
	static const char *const states[5] = { "incoming", "active", "deferred", "hold", "corrupt" };
	const char *l[4] = { "state", NULL, NULL, NULL };
	int i;

	if (q == NULL || !q->valid)
		return;
	family(out, "sorter_queue_messages", "gauge", "Messages in the spool, by state.");
	for (i = 0; i < 5; i++) {
		l[1] = states[i];
		sample_u(out, "sorter_queue_messages", l, q->messages[i]);
	}
	family(out, "sorter_queue_bytes", "gauge", "Bytes of the queue files, by state.");
	for (i = 0; i < 5; i++) {
		l[1] = states[i];
		sample_u(out, "sorter_queue_bytes", l, q->bytes[i]);
	}
	family(out, "sorter_queue_oldest_message_age_seconds", "gauge",
	       "Age of the oldest message waiting (incoming, active, deferred or hold).");
	sample_d(out, "sorter_queue_oldest_message_age_seconds", NULL, q->oldest_age);
}

static void
render_deliveries(const struct metrics *m, struct dstr *out)
{
	int canon[METRICS_NAMES], i, t, r;
	const char *l[8];
	uint64_t v;

	canonical(m, MN_NODE, canon);
	family(out, "sorter_deliveries_total", "counter",
	       "Recipient delivery attempts, by transport, node and result.");
	for (i = 0; i < METRICS_NAMES; i++) {
		if (canon[i] != i)
			continue;
		for (t = 0; t < MTR_N; t++)
			for (r = 0; r < MDR_N; r++) {
				v = name_sum(m, canon, i, offsetof(struct slab, deliveries) +
					     ((size_t)t * MDR_N + (size_t)r) * ELT,
					     sizeof(m->slab[0].deliveries[0]));
				if (v == 0 && i == METRICS_NAMES - 1)
					continue;
				l[0] = "transport"; l[1] = transport_names[t];
				l[2] = "node"; l[3] = name_of(m, MN_NODE, i);
				l[4] = "result"; l[5] = delivery_result_names[r]; l[6] = NULL;
				sample_u(out, "sorter_deliveries_total", l, v);
			}
	}
	family(out, "sorter_delivery_duration_seconds", "histogram",
	       "Time from handing recipients to a transport to their result, by node.");
	render_name_hists(m, out, canon, MN_NODE, offsetof(struct slab, delivery),
			  "sorter_delivery_duration_seconds", "node", delivery_bounds,
			  NB(delivery_bounds));
}

static void
render_maps(const struct metrics *m, struct dstr *out)
{
	int canon[METRICS_NAMES], i;
	uint64_t v, e;
	const char *l[4];

	canonical(m, MN_MAP, canon);
	for (int pass = 0; pass < 2; pass++) {
		if (pass == 0)
			family(out, "sorter_map_lookups_total", "counter", "Map lookups, by map.");
		else
			family(out, "sorter_map_errors_total", "counter",
			       "Map lookups that failed (the map could not answer), by map.");
		for (i = 0; i < METRICS_NAMES; i++) {
			if (canon[i] != i)
				continue;
			v = name_sum(m, canon, i, offsetof(struct slab, map_lookups), ELT);
			e = name_sum(m, canon, i, offsetof(struct slab, map_errors), ELT);
			if (v == 0 && i == METRICS_NAMES - 1)
				continue;
			l[0] = "map"; l[1] = name_of(m, MN_MAP, i); l[2] = NULL;
			sample_u(out, pass ? "sorter_map_errors_total" : "sorter_map_lookups_total",
				 l, pass ? e : v);
		}
	}
	family(out, "sorter_map_lookup_duration_seconds", "histogram", "Map lookup time, by map.");
	render_name_hists(m, out, canon, MN_MAP, offsetof(struct slab, map),
			  "sorter_map_lookup_duration_seconds", "map", map_bounds, NB(map_bounds));
}

static void
render_milters(const struct metrics *m, struct dstr *out)
{
	int canon[METRICS_NAMES], i, r;
	const char *l[6];
	uint64_t v;

	canonical(m, MN_MILTER, canon);
	family(out, "sorter_milter_results_total", "counter", "Milter verdicts, by milter and result.");
	for (i = 0; i < METRICS_NAMES; i++) {
		if (canon[i] != i)
			continue;
		for (r = 0; r < MMILT_N; r++) {
			v = name_sum(m, canon, i, offsetof(struct slab, milter) + (size_t)r * ELT,
				     sizeof(m->slab[0].milter[0]));
			if (v == 0 && i == METRICS_NAMES - 1)
				continue;
			l[0] = "milter"; l[1] = name_of(m, MN_MILTER, i);
			l[2] = "result"; l[3] = milter_result_names[r]; l[4] = NULL;
			sample_u(out, "sorter_milter_results_total", l, v);
		}
	}
}

/* Counters over two labels, in the order they are shown: the one for
 * (a, b) is a * stride_a + b * stride_b counters past off in a slab */
static const struct grid {
	const char *name, *help;
	size_t off;
	const char *label_a;
	const char *const *names_a;
	size_t na, stride_a;
	const char *label_b;
	const char *const *names_b;
	size_t nb, stride_b;
} grid_counters[] = {
	{ "sorter_tls_handshakes_total",
	  "TLS handshakes completed, by side (server: STARTTLS and implicit TLS; client: outbound) and version.",
	  offsetof(struct slab, tls), "side", tls_side_names, MTLS_NSIDES, MV_N * 2,
	  "version", tls_version_names, MV_N, 2 },
	{ "sorter_tls_handshake_failures_total",
	  "TLS handshakes that failed, by side and the version being negotiated.",
	  offsetof(struct slab, tls) + ELT, "side", tls_side_names, MTLS_NSIDES, MV_N * 2,
	  "version", tls_version_names, MV_N, 2 },
	{ "sorter_smtpd_auth_total", "SMTP AUTH attempts, by mechanism and result.",
	  offsetof(struct slab, auth), "mechanism", auth_mech_names, MA_N, MAUTH_N,
	  "result", auth_result_names, MAUTH_N, 1 },
};

static void
render_grid(const struct metrics *m, const struct grid *g, struct dstr *out)
{
	const char *l[6];
	size_t a, b;

	family(out, g->name, "counter", g->help);
	for (a = 0; a < g->na; a++)
		for (b = 0; b < g->nb; b++) {
			l[0] = g->label_a; l[1] = g->names_a[a];
			l[2] = g->label_b; l[3] = g->names_b[b]; l[4] = NULL;
			sample_u(out, g->name, l,
				 slab_sum(m, g->off + (a * g->stride_a + b * g->stride_b) * ELT));
		}
}

void
metrics_render(const struct metrics *m, const struct metrics_queue *q, struct dstr *out)
{
	uint64_t h[HBUCKETS], sum;
	const char *l[6];
	size_t i;

	family(out, "sorter_build_info", "gauge", "Always 1; the version is a label.");
	l[0] = "version"; l[1] = PACKAGE_VERSION; l[2] = NULL;
	sample_u(out, "sorter_build_info", l, 1);
	family(out, "sorter_start_time_seconds", "gauge", "When sorterd started, in seconds since the epoch.");
	sample_d(out, "sorter_start_time_seconds", NULL, (double)(m->start_usec / 1000) / 1e3);

	render_listeners(m, out);

	family(out, "sorter_spool_commit_duration_seconds", "histogram",
	       "Time to make a new queue file durable (write, fsync, rename, directory fsync).");
	hist_sum(m, offsetof(struct slab, commit), h, &sum);
	hist_samples(out, "sorter_spool_commit_duration_seconds", NULL, commit_bounds,
		     NB(commit_bounds), h, sum);

	render_queue(q, out);
	render_deliveries(m, out);
	render_maps(m, out);
	for (i = 0; i < NB(grid_counters); i++)
		render_grid(m, &grid_counters[i], out);
	render_milters(m, out);

	family(out, "sorter_log_lines_dropped_total", "counter",
	       "Log lines dropped because the log sink could not take them at once.");
	sample_u(out, "sorter_log_lines_dropped_total", NULL,
		 slab_sum(m, offsetof(struct slab, log_dropped)));
}
