/*
 * session.h - what the smtpd worker and its sessions share inside one
 * worker process, and what the files of one SMTP session share: the
 * session itself, and the functions each of them offers the others
 * (session.c, session_content.c, session_bdat.c, session_auth.c,
 * session_milter.c). Not an interface for other modules (that is smtpd.h).
 */
#ifndef SORTER_SMTPD_SESSION_H
#define SORTER_SMTPD_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "smtpd/auth.h"
#include "smtpd/milter.h"
#include "smtpd/smtpd.h"

struct bufferevent;
struct event;
struct evbuffer;
struct event_base;
struct session;

struct worker {
	struct config *cf;
	struct event_base *base;
	struct commit_pool *commit;
	struct session_table *st;
	struct counters *ctr;
	struct router *router;         /* RCPT-time lookups */
	struct auth *auth;             /* AUTH checks; NULL without a submission listener */
	struct map_waiter *waiter;     /* answers of threaded maps (ldap:) wake sessions */
	struct proxy_wait *proxies;    /* connections whose PROXY header is awaited */
	int nproxies;
	struct milter_conf *milters;   /* each listener's milters (milter_conn.c) */
	int wake_fd;                   /* datagrams to the queue manager */
	int index;
	void *tls_ctx;                 /* SSL_CTX, or NULL when TLS is off */
	struct listener *ls;
	size_t nls;
	struct event **lev;            /* one accept event per listener */
	struct event *sigterm_ev, *sigusr2_ev, *drain_timer;
	int master_fd;                 /* read end of the master's pipe: EOF = master gone */
	struct event *master_ev, *accept_resume_ev;
	unsigned long accept_failures; /* since the last warning */
	uint64_t accept_warned_usec;   /* when that warning went out */
	uint64_t full_warned_usec;     /* when "smtpd_max_sessions reached" went out */
	struct session *sessions;      /* doubly linked, for draining */
	int nsessions;
	bool draining;
};

/* ---- one SMTP session ---- */

enum sstate {
	SS_INIT,        /* no HELO/EHLO yet */
	SS_READY,       /* greeted, no transaction */
	SS_MAIL,        /* MAIL accepted */
	SS_RCPT,        /* at least one RCPT accepted */
	SS_BDAT,        /* BDAT chunks taken, more to come (RFC 3030) */
	SS_DATA,        /* reading content */
	SS_COMMIT,      /* content complete, waiting for the spool */
	SS_AUTH,        /* AUTH: waiting for the client's next response line */
	SS_AUTH_WAIT,   /* AUTH: the password is being checked */
	SS_CLOSING,     /* final reply queued; close once it is written */
	SS_LOOKUP_WAIT, /* the command in linebuf waits for a map lookup (ldap:) */
};

struct session {
	struct worker *w;
	struct bufferevent *bev;
	struct session *prev, *next;
	const struct listener *listener;
	int table_slot;
	enum sstate state;
	char addr[INET6_ADDRSTRLEN];
	char *helo;
	bool esmtp;
	bool tls;
	char tls_desc[160];            /* "TLSv1.3 with cipher ..." */
	bool tls_failed;               /* its handshake failure was counted */
	int errors;
	bool long_line;                /* discarding the rest of an over-long line */
	bool drain;                    /* end at the next command boundary ... */
	const char *drain_reply;       /* ... with this 421 (NULL: shutting down) */
	struct event *limit_ev;        /* smtpd_session_time_limit */
	unsigned junk;                 /* NOOP, RSET, VRFY, HELP since the last message */
	uint64_t data_start;           /* when DATA content began, usec */
	bool gone;                     /* the client went away during a commit */
	bool read_eof;                 /* it stopped sending during a commit: once the rest
					* is answered, the session ends */
	uint64_t read_timeout_usec;    /* set_read_timeout: the read timeout ... */
	uint64_t read_armed_usec;      /* ... and when it was set (metrics_now()) */
	struct event *flush_ev;        /* TLS close: fires when the socket's output is written */
	bool backlogged;               /* reading stopped: replies pile up unread */
	struct event *backlog_ev;      /* TLS: the socket's output went down (on_socket_output) */
	unsigned char key[16];         /* the client's address in session-table form */

	/* AUTH (RFC 4954) */
	char *login;                   /* the authenticated user, or NULL */
	const char *auth_mech;         /* "PLAIN" or "LOGIN" */
	int auth_step;                 /* LOGIN: 1 = user name next, 2 = password next */
	char auth_user[ADDR_PATH_MAX + 1];
	int auth_failures;
	bool auth_busy;                /* a password check is in flight */
	enum auth_result auth_result;
	struct event *auth_delay_ev;   /* a guesser's reply waits for this */

	/* the transaction */
	char *sender;
	char *sender_params;
	bool smtputf8;                 /* MAIL FROM declared SMTPUTF8 (RFC 6531) */
	char **rcpts;
	char **rcpt_canon;             /* each recipient's canonical form, for duplicates */
	size_t nrcpt;
	uint64_t expanded;             /* addresses the recipients expand to, in all */
	char id[QID_LEN + 1];
	struct data_parser dp;
	bool too_big;
	struct spool_stream *stream;   /* the content on its way into the spool */
	bool paused;                   /* the stream's buffers are full: wait for it */
	bool committing;               /* the stream is being committed */
	uint64_t msg_size;             /* the committed content's size, for the log */

	/* the BDAT chunk being read: its octets are content, never commands */
	bool in_chunk;
	uint64_t chunk_size, chunk_left;
	bool chunk_last;
	const char *chunk_refused;     /* the error reply of a chunk read only to be dropped */

	/* counters for the disconnect line */
	unsigned n_msgs;
	char *linebuf;
	size_t line_len;               /* of the command being dispatched */
	enum sstate wait_from;         /* SS_LOOKUP_WAIT: the state to run it again in */

	/* milters (session_milter.c): a stage waits for their answer, then its
	 * handler runs again and goes on */
	struct milter_client *mc;
	bool milter_busy;
	int milter_wait;               /* the stage asked, + 1 (0: none) */
	int milter_passed;             /* the stage they let through, + 1 */
	struct smtp_cmd milter_cmd;    /* its command (arg points into linebuf) */
	char *milter_deny;             /* refused at connect: MAIL gets this reply */
	char *milter_refusal;          /* a refused first BDAT: its chunk's reply */
	char *hold_reason;             /* quarantined: the message goes to hold/ */
	struct spool_edit *edit;       /* the filters' edits: committed in place of the stream */
	struct milter_source milter_src;
	unsigned port;                 /* the client's */
	char macro_buf[512];
};

/* session.c: replies, the command loop and the session's life */
void reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Queues a final reply and closes once it has been written. */
void reply_close(struct session *s, const char *text);
/* An error reply: counted towards smtpd_hard_error_limit. */
void reply_error(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* a submission listener, with or without implicit TLS */
bool submission(const struct session *s);
/* Takes the client's input for as long as the state lets it. */
void process_input(struct session *s);
/* Frees the session, or (a commit or a password check in flight) marks it
 * gone, to be closed when that is over. */
void session_close(struct session *s);
/* Forgets the transaction (an unfinished message's file is removed);
 * back to SS_READY unless not greeted yet or closing. */
void transaction_reset(struct session *s);
/* RFC 3848 protocol names for Received: */
const char *proto_name(const struct session *s);
void set_read_timeout(struct session *s, int secs);
/* The name a HELO gets in Received: and at the milters. */
char *helo_sanitize(const char *in, size_t n);
/* Runs the handler of c's verb again: the milters let it through. */
void verb_run(struct session *s, struct smtp_cmd *c);
/* The 220 banner. */
void greet(struct session *s);
/* The 503 reply to verb v in the session's state. */
const char *out_of_state_text(struct session *s, enum smtp_verb v);

/* session_content.c: the content into the spool, the end of data */
void do_data(struct session *s, struct smtp_cmd *c);
/* The envelope the spool records, from the session's transaction
 * (hold_reason: NULL, or why the message goes to hold/). */
void session_envelope(const struct session *s, const char *hold_reason,
		      struct spool_envelope *env);
/* The content of a new message, by DATA or (raw) by BDAT. */
void content_start(struct session *s, bool raw);
/* Streams parsed content into the spool, up to message_size_limit. */
void content_add(struct session *s, const char *p, size_t n);
/* Feeds buffered DATA content to the parser; true at the end of data. */
bool take_data(struct session *s, struct evbuffer *in);
/* The message passed message_size_limit: refused, with its transaction. */
void content_too_big(struct session *s);
/* The checks, the milters, then the commit; its reply comes from commit_done. */
void end_of_data(struct session *s);
/* smtpd_min_data_rate: ends a session whose content trickles in. */
void data_rate_check(struct session *s);
/* An aborted message's stream is done: nothing to tell anybody. */
void stream_dropped(void *arg, int error);

/* session_bdat.c: BDAT (RFC 3030) */
void do_bdat(struct session *s, struct smtp_cmd *c);
/* The octets of c's chunk come next: content, or, with a `refused` reply,
 * read and dropped (a chunk is never taken for commands). */
void chunk_begin(struct session *s, const struct smtp_cmd *c, const char *refused);
/* Takes what is buffered of the current chunk; true once it is all in. */
bool take_chunk(struct session *s, struct evbuffer *in);
/* The reply to a BDAT, once its chunk is in. */
void end_of_chunk(struct session *s);

/* session_milter.c: the milters' part in a session */
/* Hands stage st to the milters: true when the session now waits for them
 * (the caller returns), false when there is nothing to ask. */
bool milter_hook(struct session *s, enum milter_stage st, struct smtp_cmd *c);
/* The value of milter macro `name` in session arg; NULL when it has none. */
const char *session_macro(void *arg, const char *name);

/* session_auth.c: AUTH (RFC 4954) */
void do_auth(struct session *s, struct smtp_cmd *c);
/* One response line of the exchange (SS_AUTH). */
void auth_continue(struct session *s, const char *line, size_t len);
/* Ends the exchange: forgets the user name, back to SS_READY. */
void auth_end(struct session *s);

/* session.c, for the worker */
/* Takes over a connected socket; never fails (a session that cannot be set
 * up is closed with a 421). */
void session_start(struct worker *w, int fd, const struct sockaddr *sa, socklen_t salen,
		   const struct listener *l, int table_slot);
/* Runs again the commands that wait for a map lookup (the waiter's retry). */
void session_lookup_retry(struct worker *w);
/* Asks every session to end at its next command boundary. */
void session_drain_all(struct worker *w);
/* Ends every session now with a 421, except those waiting for a spool
 * commit: they get its reply first, then the 421. */
void session_end_all(struct worker *w);

#endif
