/*
 * smtpd.h - the SMTP server: pure parsers for command lines and DATA
 * content, the session state machine, the worker process that runs
 * sessions, and the master that supervises workers.
 */
#ifndef SORTER_SMTPD_H
#define SORTER_SMTPD_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

#include "lib/lib.h"

/* ---- command lines (command.c): pure, no I/O ---- */
enum smtp_verb {
	VERB_UNKNOWN = 0,
	VERB_HELO, VERB_EHLO, VERB_MAIL, VERB_RCPT, VERB_DATA, VERB_RSET,
	VERB_NOOP, VERB_QUIT, VERB_VRFY, VERB_EXPN, VERB_HELP, VERB_STARTTLS,
	VERB_AUTH, VERB_BDAT,
	VERB_MAX
};

enum body_type { BODY_UNSPEC = 0, BODY_7BIT, BODY_8BITMIME };

/* MAIL FROM and RCPT TO parameters (RFC 1870, 6152, 3461) */
struct smtp_params {
	long long size;         /* SIZE=, -1 when absent */
	enum body_type body;
	/* RET= ENVID= / NOTIFY= ORCPT=, parsed by the codec the spool is
	 * written and read with (lib/dsnparam.c): what is accepted is kept */
	struct dsn_sender_params dsn_mail;
	struct dsn_rcpt_params dsn_rcpt;
	bool smtputf8;          /* MAIL FROM's SMTPUTF8 (RFC 6531 3.4) */
};

struct smtp_cmd {
	enum smtp_verb verb;
	const char *arg;        /* points into the parsed line, after the verb and spaces */
	size_t arglen;
	struct address addr;    /* MAIL/RCPT; UTF-8 is parsed (addr.utf8): for MAIL
				 * only with SMTPUTF8, for RCPT the session checks */
	struct smtp_params params;
	uint64_t chunk_size;    /* BDAT: the octets that follow the command line */
	bool chunk_last;        /* BDAT ... LAST */
};

/* Result of parsing one command line (CRLF already removed). */
enum cmd_status {
	CMD_OK = 0,
	CMD_ERR_UNKNOWN,        /* 500 5.5.2 unrecognized command */
	CMD_ERR_SYNTAX,         /* 501 5.5.4 syntax error in parameters */
	CMD_ERR_ADDRESS,        /* 501 5.1.7 (MAIL) / 501 5.1.3 (RCPT) bad address */
	CMD_ERR_PARAM,          /* 555 5.5.4 a parameter this command does not take */
	CMD_ERR_UTF8,           /* 553 5.6.7 a UTF-8 address without SMTPUTF8 */
	CMD_ERR_BDAT,           /* 501 5.5.4, then 421: a line that starts with BDAT but is
				 * not a well-formed BDAT, so the size of the chunk behind
				 * it is unknown and the input cannot be framed any more */
};

/* Parses `line` (len bytes, no CRLF). Fills *cmd; on error also sets *why to
 * a static explanation suited to the reply text. */
enum cmd_status command_parse(const char *line, size_t len, struct smtp_cmd *cmd,
			      const char **why);
const char *verb_name(enum smtp_verb v);
/* A host name or an address literal, fit for Received: (command.c) */
bool helo_valid(const char *s, size_t n);

/* ---- DATA and BDAT content (data.c): pure, no I/O ----
 * End of data is only CRLF "." CRLF. Lines end only with CRLF. A bare CR or
 * a bare LF anywhere in the content is never a line end: it is passed
 * through and flagged, and the message is rejected at the real end of data
 * (554 5.6.0), so no byte sequence can make one DATA carry two messages.
 * A line starting with "." loses that dot (RFC 5321 4.5.2).
 * In raw mode (BDAT, RFC 3030) the content is framed by chunk sizes: every
 * byte is content, out equals in, *done is never set; bare CR / LF and
 * Received: are handled as for DATA. */
enum data_state { DS_LINE_START = 0, DS_DOT, DS_DOT_CR, DS_MID, DS_CR };

struct data_parser {
	enum data_state state;
	bool bare_cr_lf;        /* a bare CR or LF was seen */
	bool in_headers;        /* still in the header section */
	bool header_line_start; /* at the start of a header-section line */
	unsigned received;      /* Received: header count */
	unsigned char hdr_match; /* bytes of "Received:" matched on this header line */
	uint64_t bytes;         /* content bytes produced (after unstuffing) */
	bool raw;               /* BDAT: no dot stuffing, no end of data */
};

void data_parser_init(struct data_parser *p);
void data_parser_init_raw(struct data_parser *p);
/* Consumes up to len bytes of in, appending unstuffed content to out (which
 * must have room for len + 2 bytes) and setting *outlen. Returns the number
 * of input bytes consumed; sets *done when CRLF.CRLF was consumed (the final
 * CRLF of the content is in out, the "." CRLF is not). Bytes after the end
 * are left unconsumed. */
size_t data_parse(struct data_parser *p, const char *in, size_t len,
		  char *out, size_t *outlen, bool *done);
/* Raw mode, after the LAST chunk: writes the CR LF that ends the content
 * when it does not end with one already (as DATA content always does; a
 * final lone CR is bare) and returns how many bytes it wrote (0 or 2).
 * In DATA mode it writes nothing. */
size_t data_parse_end(struct data_parser *p, char out[2]);

/* ---- AUTH bytes (sasl.c): pure, no I/O ---- */
/* Strict base64 (RFC 4648 alphabet, padded, no spaces). Returns 0 with
 * *outlen set, -1 for bad base64, -2 when it decodes to more than outmax
 * bytes. An empty input decodes to nothing. */
int sasl_b64_decode(const char *in, size_t len, unsigned char *out, size_t outmax,
		    size_t *outlen);

enum sasl_plain_status {
	SASL_PLAIN_OK = 0,
	SASL_PLAIN_MALFORMED,   /* not authzid NUL authcid NUL passwd, or an empty field */
	SASL_PLAIN_TOO_LONG,    /* a field does not fit its buffer */
	SASL_PLAIN_AUTHZID,     /* an authorization identity other than the user */
};

/* Splits a decoded PLAIN message (RFC 4616) into user and password, each
 * NUL-terminated. The authorization identity must be empty or the user
 * itself (compared case-insensitively). */
enum sasl_plain_status sasl_plain_parse(const unsigned char *msg, size_t len,
					char *user, size_t usermax,
					char *pass, size_t passmax);

/* ---- the PROXY protocol header (proxy.c): pure, no I/O ----
 * HAProxy's proxy-protocol.txt, v1 (a text line) and v2 (binary), as the
 * first bytes a trusted proxy sends on a listener with proxy=yes. */
#define PROXY_HEADER_MAX (16 + 2048)   /* bytes; a v1 line is at most 107 */

struct sockaddr_storage;
struct proxy_header {
	int version;                    /* 1 or 2 */
	bool local;                     /* v1 UNKNOWN, v2 LOCAL or UNSPEC: no client address
					 * (a health check): the connection's own is used */
	struct sockaddr_storage src, dst; /* the client and the address it connected to
					 * (AF_INET or AF_INET6), when !local */
};

/* The header at the start of buf: its length (> 0) with *h filled; 0 when
 * more bytes are needed (every prefix of a valid header gives 0); -1 when
 * the bytes are not a valid header, with *why static. */
ssize_t proxy_parse(const unsigned char *buf, size_t len, struct proxy_header *h,
		    const char **why);

/* ---- the daemon ---- */
struct listener {
	int fd;
	struct listen_spec spec;
	void *owner;            /* the worker that accepts on it (worker.c) */
};

/* Shared-memory session table, created by the master before forking so that
 * every worker sees every worker's sessions (limits across workers). */
struct session_table;
struct session_table *session_table_create(int nworkers, int max_sessions);
/* Registers a session for `addr` (16 bytes, IPv4 mapped to IPv6) in worker
 * `w`'s slice, in the place w reserved for it if it did (taken, or given
 * back when the client is refused). Clients are counted by address, IPv6
 * ones by /64; a limit of 0 is no limit. Returns a slot number, or -1
 * (total limit), -2 (concurrent sessions of the client) or -3 (its
 * connections in the last minute). */
int session_table_enter(struct session_table *t, int w, const unsigned char addr[16],
			int max_total, int max_per_client, int rate_per_minute, time_t now);
void session_table_leave(struct session_table *t, int w, int slot);
/* Holds a place for the client worker w is about to accept, unless
 * max_total sessions (and places held) are open, all workers together:
 * then false. Two workers can never both accept a client for the last
 * place. The place goes with session_table_enter, or unreserve. */
bool session_table_reserve(struct session_table *t, int w, int max_total);
void session_table_unreserve(struct session_table *t, int w);
/* Forgets every session of worker w (after that worker died). */
void session_table_clear(struct session_table *t, int w);
/* The table's key for a client: 16 bytes, IPv4 mapped to IPv6. */
struct sockaddr;
void client_addr_key(const struct sockaddr *sa, unsigned char key[16]);
/* AUTH failures of a client (IPv6: of its /64) in the last hour; the
 * second call counts one more and returns the new count. */
unsigned session_table_auth_failures(struct session_table *t, const unsigned char addr[16],
				     time_t now);
unsigned session_table_auth_failed(struct session_table *t, const unsigned char addr[16],
				   time_t now);

/* master.c: binds, drops privileges, runs and supervises the children
 * until SIGTERM; returns the exit status. */
int master_main(const char *config_path, struct config *cf);

/* Raises the soft RLIMIT_NOFILE to the hard one (raise) and checks that it
 * fits smtpd_max_sessions (config_fd_need): 0, or -1 with err naming the
 * key. Without raise, checks the hard limit (what `sorterd -t` reports). */
int fd_limit_check(const struct config *cf, bool raise, char *err, size_t errlen);

/* worker.c: runs one smtpd worker until told to stop (or until EOF on
 * master_fd: the master is gone); returns exit status */
int worker_main(struct config *cf, struct listener *ls, size_t nls,
		struct session_table *st, struct counters *ctr, int index, void *tls_ctx,
		int master_fd);

/* logwriter.c: the log writer of `log = FILE`: appends the records of
 * sock to file_fd until SIGTERM or EOF on master_fd, then what is left */
int logwriter_main(int sock, int file_fd, int master_fd);
/* notify.c: one systemd notification ("READY=1", ...) to $NOTIFY_SOCKET,
 * when it is set; never waits, never fails */
void sd_notify_state(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* tls.c: an SSL_CTX for the server side, or NULL with err set */
void *tls_server_ctx(const struct config *cf, char *err, size_t errlen);

#endif
