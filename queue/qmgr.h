/*
 * qmgr.h - what the queue manager's files (qmgr.c: taking messages in,
 * routing and delivering them; outcome.c: recording what came of it)
 * share inside the qmgr process. Not an interface for other modules
 * (that is queue.h).
 */
#ifndef SORTER_QUEUE_QMGR_H
#define SORTER_QUEUE_QMGR_H

#include <stdbool.h>
#include <time.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "router/router.h"

enum outcome { OUT_PENDING, OUT_DELIVERED, OUT_BOUNCED, OUT_DEFERRED, OUT_DONE_BEFORE };

struct qexp {                   /* one final address of a recipient */
	char addr[ADDR_PATH_MAX + 1];
	enum outcome out;
	char status[16];
	char diag[512];
	bool diag_reply;        /* diag is the reply of the server delivered to */
	char relay[300];
	char tls[96];           /* the TLS of the last attempt, for the log */
	bool relayed;           /* handed to an SMTP server without DSN: success is "relayed" */
	bool dsn_passed;        /* handed on with its DSN parameters: the next hop notifies */
	char node[ROUTER_NODE_MAX + 1];
	char dest[ADDR_PATH_MAX + 64];  /* the node name, or the first endpoint: the client's key */
	bool claimed;           /* taken by a transaction */
	bool parked;            /* deferred because its node is drained */
};

struct qrcpt {
	size_t index;           /* in the spool file */
	struct qexp *exps;      /* one per route in rl */
	size_t nexps;
	struct route_list rl;
	struct dsn_rcpt_params dsn;
	char *params;           /* dsn in the codec's form, for the next hop; NULL = none */
};

struct qmsg;

struct qdest {                  /* one transaction: a message's share for one destination */
	struct qmsg *msg;
	struct deliv_txn txn;
	const char **rcpts;
	const char **rcpt_params;
	struct qexp **exps;
	struct deliv_result *results;
	/* expansions of other recipients to an address already in the
	 * transaction (an alias and its member both named): not sent again,
	 * they take the result of exps[dup_of[i]] */
	struct qexp **dups;
	size_t *dup_of;
	size_t ndups;
	uint64_t start_usec;    /* metrics_now() when handed to the client */
	bool smtp;              /* the transport, for the metrics */
};

struct qmsg {
	struct qmgr *q;
	char id[QID_LEN + 1];
	int fd;                 /* the queue file, open: the content is read from it */
	size_t len;             /* the file's size, counted in the active set's bytes */
	unsigned hops;          /* Received: headers, for hopcount_limit */
	struct spool_msg m;
	struct dsn_sender_params sp;
	char *sender_params;    /* the DSN ones of sp in the codec's form, for the next hop
				 * (SMTPUTF8 is the client's to decide); NULL = none */
	bool utf8_headers;      /* received with SMTPUTF8, 8-bit bytes in its headers */
	struct qstatus st;
	struct qrcpt *r;
	size_t nr;
	int inflight;           /* delivery transactions and DSN commits under way */
	bool finishing;
	bool hold_req, delete_req;      /* sorterctl's, set and read on the loop thread only */
	bool eightbit;          /* the content has bytes >= 0x80 */
	bool route_wait;        /* a map lookup is under way: routed again when answered */
	bool resume_req;        /* an undrain came while it was in memory: a deferral
				 * is retried at once, not at next_retry */
	time_t next_retry;
	uint64_t start_usec;
	struct qmsg *prev, *next;
};

struct qmgr {
	struct config *cf;
	struct counters *ctr;
	struct event_base *base;
	struct router *router;
	struct client_pool *client;
	struct commit_pool *commit;     /* for DSNs */
	struct iopool *io;
	struct groupsync *active_ds, *defer_ds;
	int dirfd[QUEUE_NDIRS];         /* incoming active deferred hold defer corrupt */
	struct qmsg *msgs;
	int nactive;
	uint64_t active_bytes;          /* queue file bytes held by the active messages */
	bool backlog;                   /* incoming/ had more than we took */
	int wake_fd;
	struct event *wake_ev, *scan_ev, *catchup_ev, *defer_ev, *term_ev, *master_ev;
	struct control *control;
	struct nodecaps *caps;          /* each LMTP endpoint's last LHLO, for smtpd */
	struct map_waiter *waiter;      /* answers of threaded maps (ldap:) */
	struct nodes *nodes;            /* node health and drains (nodes.c) */
	bool stopping;
	int lock_fd;
};

/* indexes into the folders of queue_open_dirs() */
enum { D_INCOMING, D_ACTIVE, D_DEFERRED, D_HOLD, D_DEFER, D_CORRUPT };

/* qmgr.c */
bool sender_is_null(const struct qmsg *mq);
void msg_free(struct qmsg *mq);
struct qrcpt *rcpt_of(struct qmsg *mq, const struct qexp *e);
void log_result(struct qmsg *mq, const struct qrcpt *qr, const struct qexp *e, const char *what);
/* a message left memory: take more work if some waits */
void msg_release_slot(struct qmgr *q, size_t bytes);

/* deferred mail is retried now (an undrain), and so is mail in memory
 * that is deferred when its attempt ends */
void qmgr_resume(struct qmgr *q);
/* a message just moved to deferred/ is taken in again at once */
void qmgr_retry_now(struct qmgr *q, const char *id);

/* outcome.c: every transaction of the attempt has reported */
void msg_finish(struct qmsg *mq);

/* nodes.c: node health (probes) and drains */
struct nodes;
/* Reads spool_dir/drained (fatal when it cannot be parsed) and starts
 * the probe timer. */
struct nodes *nodes_new(struct qmgr *q);
void nodes_free(struct nodes *ns);
bool nodes_drained(const struct nodes *ns, const char *node);
/* A transaction to node ended; failed: it could not connect or was cut
 * off, and the node's endpoints are probed soon. */
void nodes_delivered(struct nodes *ns, const char *node, const struct endpoint *eps, size_t n,
		     bool failed);
/* The "nodes" control reply: nodestate records (queue.h) */
void nodes_report(struct nodes *ns, struct dstr *out);
/* Drains (on) or undrains node at once; done(arg, ok, text) runs from the
 * loop once the drained set is on disk (ok false: it could not be). */
typedef void nodes_reply_fn(void *arg, bool ok, const char *text);
void nodes_drain(struct nodes *ns, const char *node, bool on, nodes_reply_fn *done, void *arg);

#endif
