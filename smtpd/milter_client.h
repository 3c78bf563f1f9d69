/*
 * milter_client.h - what the milter client's two files share: the client
 * of one session (the conversation, milter.c) and its connections to the
 * filters (milter_conn.c). Private to them; the session uses milter.h.
 */
#ifndef SORTER_SMTPD_MILTER_CLIENT_H
#define SORTER_SMTPD_MILTER_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/lib.h"
#include "smtpd/milter.h"

struct bufferevent;
struct event;
struct event_base;

struct milter_conf {
	const struct config *cf;
	const struct listener *ls;
	size_t nls;
	struct milter_spec **specs;     /* per listener */
	size_t *nspecs;
	char *macros[MILTER_MACRO_STAGES];
};

enum mstate { MC_NEW, MC_CONNECTING, MC_OPTNEG, MC_READY, MC_FAILED };

struct mconn {
	struct milter_client *mc;
	const struct milter_spec *spec;
	struct bufferevent *bev;
	struct event *timer;
	enum mstate state;
	bool timed_out;                 /* the failure being reported is a timeout (metrics) */
	int action;                     /* enum milter_action on failure */
	bool conn_done;                 /* no more calls this session (accepted, or failed) */
	bool msg_done;                  /* no more calls for this message (accepted) */
	bool in_msg;                    /* MAIL went out, the message is not over */
	bool waiting;                   /* a reply is due ... */
	enum milter_stage wstage;       /* ... to this stage */
	bool draining;                  /* waiting for unsent bytes to go out */
	uint32_t actions, proto;        /* negotiated */
	char *macros[MILTER_MACRO_STAGES]; /* the filter's own macro lists */
	unsigned char *pkt;             /* the packet being decoded */
};

struct milter_client {
	struct event_base *base;
	const struct milter_conf *conf;
	const struct config *cf;
	struct mconn *m;
	size_t n;
	milter_macro_fn macro;
	void *marg;
	struct event *kick;
	struct dstr out;                /* packets being built */

	/* the call in progress */
	bool busy;
	enum milter_stage op;
	size_t cur;                     /* the filter being talked to */
	int phase;                      /* its step within the stage */
	struct dstr cmd;                /* the stage's command packet */
	milter_done_fn done;
	void *done_arg;
	bool concluded;                 /* a result is ready to go out */
	enum milter_verdict verdict;
	struct dstr reply;
	const char *who;
	struct milter_result res;

	/* the transaction */
	bool discard;
	const char *discard_by;

	/* the message */
	const struct milter_source *src;
	size_t limit;
	bool reading;                   /* a read from src is under way */
	struct dstr head;               /* the header section, as it is read */
	struct mhdrs hdrs;              /* as the next filter is shown them */
	uint64_t body_off;              /* where the body starts in src */
	size_t chunk_len;               /* body bytes in chunk, not sent yet */
	bool chunk_ready;
	size_t hi;                      /* next header to send */
	uint64_t bpos;                  /* body bytes sent */
	bool skip_body;
	bool body_cr;
	bool body_over;                 /* the filter's new body passed the limit */
	struct milter_mods all;         /* every filter's edits so far */
	struct milter_mods one;         /* the current filter's */
	unsigned char *chunk;
};

/* ---- milter_conn.c: the connection to one filter ---- */
void mconn_init(struct milter_client *mc, struct mconn *m, const struct milter_spec *spec);
/* Says QUIT (an abort first, in a message) if it can, and frees the connection. */
void mconn_free(struct mconn *m);
void mconn_connect(struct milter_client *mc, struct mconn *m);
/* A filter failed: logged once, disconnected, and its default action is
 * what every stage gets from it from now on (accept: it is left out). */
void mconn_fail(struct mconn *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sends what mc->out holds to m. */
void mconn_flush(struct milter_client *mc, struct mconn *m);
/* A reply to stage st is due: the wait for it starts. */
void mconn_expect(struct mconn *m, enum milter_stage st);
/* (Re)starts the wait for what m owes, by the timeout of its stage. */
void mconn_arm(struct mconn *m);

/* ---- milter.c: the conversation ---- */
/* Goes on with the call in progress, from a fresh loop event. */
void milter_kick(struct milter_client *mc);
/* One decoded reply from m. */
void milter_on_reply(struct milter_client *mc, struct mconn *m, const struct milter_reply *r);

#endif
