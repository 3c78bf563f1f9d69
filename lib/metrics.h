/*
 * metrics.h - counters, gauges and histograms shared by every sorterd
 * process, and their Prometheus text exposition (metrics.c).
 *
 * The master maps one shared region before it forks. Each process writes
 * only to its own slab (a worker to its process slot's, the queue manager
 * to its own), with relaxed atomic adds: no lock, no shared cache line
 * between workers on the hot path. The metrics process sums the slabs when
 * it is scraped.
 *
 * Label values come from bounded sets only: the configured listeners, node
 * names (node_map keys), map specs, milter names, TLS versions, fixed
 * reasons. Never a queue id or an address. Node, map and milter names are
 * registered in a table of METRICS_NAMES per kind shared by all processes;
 * past that, they are counted under "_other".
 *
 * Every call is a no-op in a process that has not attached (sorterctl,
 * sortermap, unit tests), so library code may call them unconditionally.
 */
#ifndef SORTER_LIB_METRICS_H
#define SORTER_LIB_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/lib.h"

#define METRICS_LISTENERS 32    /* listeners counted one by one; later ones as "other" */
#define METRICS_NAMES 64        /* nodes, maps, milters (each); the last is "_other" */
#define METRICS_NAME_MAX 96     /* bytes of a name kept; longer ones are cut */

/* Process slabs: a worker's is its process slot (0 .. 2*CONFIG_WORKERS_MAX-1) */
enum {
	METRICS_SLAB_QMGR = 2 * CONFIG_WORKERS_MAX,
	METRICS_SLAB_MASTER,
	METRICS_SLAB_HTTP,
	METRICS_SLAB_LOG,
	METRICS_SLABS
};

/* Why a connection was refused before its banner */
enum metrics_session_reject {
	MSR_MAX_SESSIONS,       /* smtpd_max_sessions */
	MSR_CLIENT_LIMIT,       /* smtpd_client_connection_limit */
	MSR_CLIENT_RATE,        /* smtpd_client_connection_rate_limit */
	MSR_SHUTDOWN,           /* the worker is draining */
	MSR_PROXY,              /* proxy=yes: not from proxy_networks, a bad or late header */
	MSR_N
};

/* Why a message was refused at the end of DATA (or BDAT LAST) */
enum metrics_message_reject {
	MMR_SIZE,               /* message_size_limit */
	MMR_BARE_CR_LF,         /* bare CR or LF in the content */
	MMR_STORAGE,            /* the spool commit failed */
	MMR_MILTER,             /* a milter said no */
	MMR_OTHER,
	MMR_N
};

enum metrics_tls_side { MTLS_SERVER, MTLS_CLIENT, MTLS_NSIDES };
enum metrics_auth_result { MAUTH_SUCCESS, MAUTH_FAILURE, MAUTH_TEMPFAIL, MAUTH_N };
enum metrics_transport { MTR_LMTP, MTR_SMTP, MTR_N };
enum metrics_delivery_result { MDR_DELIVERED, MDR_DEFERRED, MDR_BOUNCED, MDR_N };
/* What a milter answered (or that it could not be asked) */
enum metrics_milter_result {
	MMILT_ACCEPT, MMILT_CONTINUE, MMILT_REJECT, MMILT_TEMPFAIL, MMILT_DISCARD,
	MMILT_REPLYCODE, MMILT_QUARANTINE, MMILT_ERROR, MMILT_TIMEOUT, MMILT_N
};

struct metrics;                 /* the shared region */

/* ---- setting up (master) ---- */
/* Maps the region and records the listeners' labels (config order). */
struct metrics *metrics_create(const struct config *cf);
/* The calling process writes to slab `slab` from now on; its dropped log
 * lines are counted there too. */
void metrics_attach(struct metrics *m, int slab);
/* A process that used `slab` is gone: its gauges (open sessions) go to 0.
 * Counters stay: they only ever grow. */
void metrics_slab_gone(struct metrics *m, int slab);

/* ---- the hot path: any attached process, any thread ---- */
/* A monotonic clock in microseconds, for the durations below */
uint64_t metrics_now(void);
void metrics_session_open(int listener);
void metrics_session_close(int listener);
void metrics_session_rejected(int listener, enum metrics_session_reject why);
void metrics_message_accepted(int listener, uint64_t bytes);
void metrics_message_rejected(int listener, enum metrics_message_reject why);
void metrics_commit_latency(uint64_t usec);
/* version: SSL_get_version()'s text ("TLSv1.3"); others count as "other" */
void metrics_tls_handshake(enum metrics_tls_side side, const char *version, bool ok);
/* mechanism: "PLAIN", "LOGIN"; others count as "other" */
void metrics_auth(const char *mechanism, enum metrics_auth_result r);
/* node: a node name, or "" (an SMTP next hop, an endpoint without a name) */
void metrics_delivery(enum metrics_transport t, const char *node,
		      enum metrics_delivery_result r, uint64_t usec);
/* A map (by its spec) has an id, taken once when it is opened; -1 = not counted */
int metrics_map_id(const char *spec);
void metrics_map_lookup(int map_id, bool error, uint64_t usec);
void metrics_milter(const char *milter, enum metrics_milter_result r);
/* the same, by the result's name ("accept", "tempfail", ...; others are "error") */
void metrics_milter_result(const char *milter, const char *result);

/* ---- reading (the metrics process) ---- */
/* What the spool looks like now, gathered by the caller. */
struct metrics_queue {
	bool valid;                     /* false: the spool could not be read */
	uint64_t messages[5], bytes[5]; /* incoming active deferred hold corrupt */
	double oldest_age;              /* seconds; 0 when the queue is empty */
};
/* Appends the Prometheus text exposition (format 0.0.4) of every family. */
void metrics_render(const struct metrics *m, const struct metrics_queue *q, struct dstr *out);

/* For tests: a region in private memory (free() it) with the given
 * listeners, attached to slab 0. */
struct metrics *metrics_create_private(const struct listen_spec *ls, size_t n);

#endif
