/*
 * lib.h - the shared library of Sorter: allocation, diagnostics and logging,
 * bounded strings, the configuration table, RFC 5321 address parsing, queue
 * ids and small file-system helpers.
 *
 * Nothing here does network I/O or blocks on anything but the local disk.
 */
#ifndef SORTER_LIB_H
#define SORTER_LIB_H

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>
#include <time.h>

/* ---- allocation: never returns NULL (alloc.c) ---- */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- dynamic string with a hard limit (alloc.c) ----
 * Appends past `limit` bytes are refused (return -1) and leave the string
 * as it was; `limit` 0 means "bounded only by memory". */
struct dstr {
	char *s;      /* always NUL-terminated once anything was appended */
	size_t len;
	size_t cap;
	size_t limit;
};
void dstr_init(struct dstr *d, size_t limit);
int dstr_append(struct dstr *d, const void *p, size_t n);
int dstr_printf(struct dstr *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void dstr_reset(struct dstr *d);
void dstr_free(struct dstr *d);

/* ---- diagnostics and logging (log.c) ----
 * Log lines are written with one non-blocking write each; when the sink
 * cannot take a line it is dropped and counted, never waited for. */
enum log_sink { LOG_SINK_STDERR, LOG_SINK_SYSLOG, LOG_SINK_FILE };
/* stderr; syslog (log_set_syslog first); or a file, whose lines go one per
 * record to the descriptor of log_set_fd (a SOCK_SEQPACKET socket that the
 * log writer process empties into the file) */
void log_open(const char *progname, enum log_sink sink);
void log_set_syslog(int facility, const char *socket_path);
void log_set_fd(int fd);
/* Each dropped line is also counted in *counter (NULL: no longer). */
void log_count_drops_in(_Atomic uint64_t *counter);
void log_set_progname(const char *progname);
void msg_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void msg_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* the environment is broken: log and exit(1) */
void msg_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* a bug: log and abort() */
void msg_panic(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
uint64_t log_dropped(void);
/* Client-given text (an address, a login) for a log line: control bytes,
 * '"', ',', '<', '>' and '\\' become \xHH, so that no field of the line can
 * be forged; UTF-8 passes. out must hold LOG_ESC_SIZE(strlen(in)) bytes or
 * the text is cut. Returns out. */
#define LOG_ESC_SIZE(n) (4 * (n) + 1)
const char *log_esc(const char *in, char *out, size_t outlen);

/* ---- configuration (config.c) ----
 * Every parameter is declared once in config.c's table with its type,
 * default and bounds. */
/* mx: no AUTH, local domains only; submission: STARTTLS, then AUTH, then
 * any domain; submissions: the same over implicit TLS (RFC 8314) */
enum listen_role { ROLE_MX, ROLE_SUBMISSION, ROLE_SUBMISSIONS };

struct listen_spec {
	char *host;               /* numeric address */
	char *port;               /* numeric port */
	enum listen_role role;
	bool proxy;               /* proxy=yes: a PROXY protocol header comes first */
	char *milters;            /* milters= option: NULL = smtpd_milters, "" = none */
	unsigned line;            /* where the config file says so, for errors */
};

/* A network: IPv4 as IPv4-mapped IPv6, bits counted on the 128 */
struct net {
	unsigned char addr[16];
	unsigned bits;
};
/* A numeric address and port to listen on (metrics_listen); NULLs = none */
struct hostport {
	char *host;
	char *port;
};

/* Is addr (16 bytes, IPv4 mapped) inside one of the n networks? */
bool net_list_match(const struct net *nets, size_t n, const unsigned char addr[16]);
/* smtpd worker processes at most. Each has a process slot whose number is
 * its queue id slot (util.c), and a reload starts a new generation while
 * the old one drains, so the master keeps twice this many slots; queue id
 * slots 30 and 31 are the queue manager's and sorterctl's. */
#define CONFIG_WORKERS_MAX 15

struct config {
	char *file;                     /* path it was read from, or NULL */
	unsigned *lines;                /* per parameter: the line that set it, 0 = default */
	char *hostname;
	char *spool_dir;
	char *user;
	struct listen_spec *listen;
	size_t nlisten;
	char **local_domains;           /* lower-cased, NULL-terminated */
	size_t nlocal_domains;
	char *alias_map, *user_map, *node_map, *failover_node;
	char *relay_host;
	int smtp_port;
	int smtp_line_length_limit;     /* longest line sent over SMTP; 0 = no limit */
	char *recipient_delimiter;
	char *dns_servers;
	char *tls_cert_file, *tls_key_file;
	char *auth_map;                 /* login (full address) -> crypt(3) hash */
	char *sender_login_map;         /* sender | @domain -> logins allowed to use it */
	int smtpd_client_auth_failure_limit; /* AUTH failures per client before replies slow down */
	long long message_size_limit;   /* bytes */
	enum log_sink log;
	int workers;                    /* smtpd worker processes; 0 = one per core */
	int io_threads;                 /* spool commit threads per worker */
	int smtpd_max_sessions;         /* concurrent sessions, all workers together */
	int smtpd_client_connection_limit; /* concurrent sessions per client address */
	int smtpd_client_connection_rate_limit; /* connections per client per minute; 0 = none */
	struct net *smtpd_client_limit_exceptions; /* exempt from the per-client limits */
	size_t nsmtpd_client_limit_exceptions;
	struct net *proxy_networks;     /* may send a PROXY header to a proxy=yes listener */
	size_t nproxy_networks;
	int smtpd_proxy_timeout;        /* seconds for that header to arrive */
	int smtpd_recipient_limit;      /* recipients per message */
	int alias_expansion_limit;      /* addresses one message's recipients may expand to */
	int smtpd_line_limit;           /* command line length, CRLF included */
	int smtpd_timeout;              /* seconds waiting for a command */
	int smtpd_data_timeout;         /* seconds waiting for DATA content */
	int smtpd_hard_error_limit;     /* errors per session before disconnect */
	int smtpd_junk_command_limit;   /* NOOP, RSET, VRFY, HELP per message before 421 */
	int smtpd_min_data_rate;        /* bytes/s of DATA or BDAT after the first 30 s; 0 = none */
	int smtpd_session_time_limit;   /* seconds a session may last, ended at a command boundary */
	int smtpd_helo_strict;          /* 1: HELO must be a host name or an address literal */
	long long queue_minfree;        /* bytes that must stay free on the spool fs */
	/* queue manager and delivery */
	int queue_run_delay;            /* seconds between scans of deferred/ */
	int minimal_backoff_time, maximal_backoff_time;  /* retry spacing, seconds */
	int maximal_queue_lifetime;     /* seconds before a deferred recipient bounces */
	int bounce_queue_lifetime;      /* the same for DSNs (null sender) */
	int delay_warning_time;         /* seconds before a delay DSN; 0 = never */
	int qmgr_message_active_limit;  /* messages held in memory at once */
	long long qmgr_message_active_bytes; /* their queue files' bytes at most (one may exceed) */
	long long bounce_size_limit;    /* a DSN returns a bigger message's headers only */
	int lmtp_destination_concurrency_limit; /* connections per node */
	int lmtp_destination_recipient_limit;   /* recipients per LMTP transaction */
	int smtp_destination_concurrency_limit; /* connections per remote destination */
	int smtp_destination_recipient_limit;   /* recipients per SMTP transaction */
	char *transport_map;            /* domain | address -> smtp:... | lmtp:... | node */
	int smtp_tls_security_level;    /* enum tls_level */
	char *smtp_tls_ca_file;         /* trust anchors for verify; NULL = the system's */
	char *smtp_tls_policy_map;      /* domain -> none|may|encrypt|verify */
	int lmtp_connect_timeout, lmtp_timeout, lmtp_idle_timeout;
	int endpoint_dead_time;         /* seconds a failed endpoint is skipped */
	int node_probe_interval;        /* seconds between LHLO probes of node_map's
					 * endpoints; 0 = only after a failure */
	int hopcount_limit;             /* Received: headers before 5.4.6 */
	char *bounce_notice_recipient;  /* gets DSNs that cannot be returned; NULL = drop */
	/* operations */
	char *log_file;                 /* log = /path: the file; else NULL */
	int syslog_facility;            /* index into syslog_facility_names */
	char *syslog_socket;            /* log = syslog: where syslogd listens */
	struct hostport metrics_listen; /* GET /metrics; host NULL = off */
	/* milters (smtpd/milter.c) */
	char *smtpd_milters;            /* endpoints for listeners without milters= */
	int milter_default_action;      /* enum milter_action, when a milter fails */
	int milter_connect_timeout, milter_command_timeout, milter_content_timeout;
	/* macro names sent per stage; NULL = none */
	char *milter_connect_macros, *milter_helo_macros, *milter_mail_macros;
	char *milter_rcpt_macros, *milter_data_macros, *milter_eoh_macros, *milter_eom_macros;
};
extern const char *const syslog_facility_names[];
/* syslog(3)'s code (LOG_MAIL, ...) for cf->syslog_facility */
int config_syslog_facility(const struct config *cf);
/* The name of the i-th parameter of the table, NULL past the last: for
 * the test that keeps sorter.conf(5) complete */
const char *config_key(size_t i);
/* Its default as the file would spell it; NULL when it has none (or it is
 * the host's name) */
const char *config_key_default(size_t i);

/* STARTTLS levels of the SMTP client, by name in tls_level_names (NULL-ended);
 * smtp_tls_security_level and smtp_tls_policy_map values. */
enum tls_level { TLS_NONE, TLS_MAY, TLS_ENCRYPT, TLS_VERIFY };
extern const char *const tls_level_names[];

/* Parses `path` (or built-in defaults when path is NULL). On error returns
 * NULL and writes "FILE:LINE: reason" into err. */
struct config *config_load(const char *path, char *err, size_t errlen);
/* Same, from a string; `name` is used in error messages. */
struct config *config_parse(const char *name, const char *text, size_t len,
			    char *err, size_t errlen);
void config_free(struct config *cf);
/* Where parameter key was set, for an error about its value: "FILE:LINE",
 * or "FILE" when it has its default ("(config)" without a file). */
const char *config_where(const struct config *cf, const char *key, char *buf, size_t len);
bool config_is_local_domain(const struct config *cf, const char *domain);
/* File descriptors one smtpd worker may need at once for this config
 * (smtpd_max_sessions, io_threads, listeners), to compare with RLIMIT_NOFILE
 * once the pool of queue files (RECYCLE_FDS, queue.h) is added. */
long long config_fd_need(const struct config *cf);

/* ---- milter endpoints and macro lists (milterspec.c): pure ---- */
enum milter_action { MILTER_ACT_TEMPFAIL, MILTER_ACT_ACCEPT, MILTER_ACT_REJECT };
extern const char *const milter_action_names[];   /* by enum milter_action, NULL-ended */

struct milter_spec {
	char *name;                /* as written, for logs: "inet:127.0.0.1:8891" */
	int family;                /* AF_INET, AF_INET6 or AF_UNIX */
	char *host, *port;         /* inet: numeric, canonical */
	char *path;                /* unix */
	/* Postfix's { endpoint, key=value } options; 0 / -1 = the global keys */
	int connect_timeout, command_timeout, content_timeout;
	int default_action;
};

/* "inet:HOST:PORT", "inet:[IPV6]:PORT", "inet6:[IPV6]:PORT", "inet:PORT@HOST",
 * "unix:/PATH", or "{ ENDPOINT, connect_timeout=10s, default_action=accept }",
 * separated by commas or spaces. 0 with the list (maybe empty), or -1 with why. */
int milter_specs_parse(const char *s, struct milter_spec **out, size_t *n, char *why,
		       size_t whylen);
void milter_specs_free(struct milter_spec *v, size_t n);
/* A macro name: one printable character, or {name} */
bool milter_macro_name_ok(const char *w, size_t n);
/* A list of them, separated by spaces or commas: 0, or -1 with why */
int milter_macros_check(const char *s, char *why, size_t whylen);

/* ---- UTF-8 (utf8.c): pure ----
 * Well formed = RFC 3629: no overlong forms, no surrogates, nothing above
 * U+10FFFF, no truncated sequence. Control characters are C0, DEL and C1. */
/* The character at s (n bytes available): its length (1..4) with *cp set
 * (cp may be NULL), or 0 when the bytes there are not well-formed UTF-8. */
size_t utf8_decode(const char *s, size_t n, uint32_t *cp);
bool utf8_is_control(uint32_t cp);
/* n bytes of well-formed UTF-8 without a control character */
bool utf8_valid(const char *s, size_t n);
/* the NUL-terminated s has a byte >= 0x80 */
bool str_has_8bit(const char *s);
/* Every byte of s that is not part of a well-formed, non-control UTF-8
 * character becomes '?', in place; returns how many did. */
size_t utf8_sanitize(char *s, size_t n);

/* ---- RFC 5321 addresses (address.c) ---- */
#define ADDR_LOCAL_MAX 64       /* RFC 5321 4.5.3.1.1 */
#define ADDR_DOMAIN_MAX 255     /* RFC 5321 4.5.3.1.2 */
#define ADDR_PATH_MAX 256       /* RFC 5321 4.5.3.1.3 */

struct address {
	char local[ADDR_LOCAL_MAX + 3];   /* as written (quoted form kept) */
	char domain[ADDR_DOMAIN_MAX + 1]; /* as written; "" for <> and <postmaster> */
	bool null;                        /* the null path <> */
	bool literal;                     /* domain is an address literal [..] */
	bool utf8;                        /* the path has UTF-8 (ADDR_ALLOW_UTF8 only) */
};

enum addr_flags {
	ADDR_ALLOW_NULL = 1,        /* <> is acceptable (MAIL FROM) */
	ADDR_ALLOW_POSTMASTER = 2,  /* bare <postmaster> is acceptable (RCPT TO) */
	ADDR_ALLOW_UTF8 = 4,        /* RFC 6531: UTF-8 in the local part and domain
				     * (well formed, no control characters) */
};

/* Parses an RFC 5321 Path ("<" [A-d-l ":"] Mailbox ">") at the start of s;
 * a missing pair of angle brackets is tolerated. On success returns the
 * number of bytes consumed and fills *a; on error returns -1 and points
 * *why at a static reason. Source routes are parsed and discarded. */
int address_parse(const char *s, size_t len, int flags, struct address *a,
		  const char **why);
/* Writes local@domain (or "" for the null path) into buf. */
void address_format(const struct address *a, char *buf, size_t buflen);

/* ---- RFC 3461 DSN parameters (dsnparam.c): the one codec, pure ----
 * The SMTP server parses MAIL and RCPT values with the *_parse functions
 * and writes the spool with the formatters; the queue manager reads the
 * spool with dsn_parse_*_params. Whatever parses formats back to a string
 * that parses to the same value. */
#define DSN_NOTIFY_SUCCESS 1
#define DSN_NOTIFY_FAILURE 2
#define DSN_NOTIFY_DELAY 4
#define DSN_NOTIFY_NEVER 8
#define DSN_RET_FULL 1
#define DSN_RET_HDRS 2
#define DSN_ENVID_MAX 100         /* RFC 3461 4.4, xtext form */
#define DSN_ORCPT_MAX 500         /* RFC 3461 4.2: the whole ORCPT value */
#define DSN_ADDRTYPE_MAX 64

struct dsn_rcpt_params {
	int notify;                             /* bit set; 0 = not given */
	char orcpt_type[DSN_ADDRTYPE_MAX + 1];  /* e.g. "rfc822"; "" = no ORCPT */
	char orcpt[DSN_ORCPT_MAX + 1];          /* xtext decoded */
};

struct dsn_sender_params {
	int ret;                                /* 0 not given, DSN_RET_FULL, DSN_RET_HDRS */
	char envid[DSN_ENVID_MAX + 1];          /* xtext decoded; "" = not given */
	bool smtputf8;                          /* SMTPUTF8 (RFC 6531) was declared */
};

/* One value (the text after "KEYWORD=", n bytes): NULL with the field of
 * *p set, or a static reason. NOTIFY is "NEVER" alone, or SUCCESS, FAILURE,
 * DELAY each at most once, comma separated. */
const char *dsn_notify_parse(const char *v, size_t n, int *notify);
const char *dsn_orcpt_parse(const char *v, size_t n, struct dsn_rcpt_params *p);
const char *dsn_ret_parse(const char *v, size_t n, int *ret);
const char *dsn_envid_parse(const char *v, size_t n, struct dsn_sender_params *p);
/* The spool form of a recipient's params ("NOTIFY=... ORCPT=type;xtext")
 * or the sender's ("RET=... ENVID=xtext SMTPUTF8"); s may be NULL or "". Return 0,
 * or -1 with *p zeroed and *why (if why is not NULL) set to a static
 * reason. */
int dsn_parse_rcpt_params(const char *s, struct dsn_rcpt_params *p, const char **why);
int dsn_parse_sender_params(const char *s, struct dsn_sender_params *p, const char **why);
/* The inverse: append the spool form of *p to out (nothing when empty). */
void dsn_format_rcpt_params(const struct dsn_rcpt_params *p, struct dstr *out);
void dsn_format_sender_params(const struct dsn_sender_params *p, struct dstr *out);

/* RFC 3461 4 xtext. xtext_encode appends the encoding of n bytes to out in
 * one piece (nothing when out's limit refuses it). xtext_decode accepts only
 * xchar and "+" with two upper-case hex digits, decoding to printable
 * US-ASCII or space; it writes a NUL-terminated result into out and returns
 * its length, or -1 with *why set (malformed, or longer than outlen - 1). */
void xtext_encode(const char *in, size_t n, struct dstr *out);
int xtext_decode(const char *in, size_t n, char *out, size_t outlen, const char **why);
/* a counted string equals the C string w, ignoring ASCII case */
bool word_is(const char *s, size_t n, const char *w);

/* ---- queue ids and time (util.c) ----
 * Ids are 12 characters of Crockford base32: 11 for the microseconds since
 * the epoch (monotonic within a process) and 1 for the issuing process's
 * slot, so they sort by time. qid_init's after_usec is the time of the
 * newest id already in the spool (spool_newest_qid): the process's ids
 * come after it, so an id is never issued twice even when the clock was
 * set back between two runs. */
#define QID_LEN 12
void qid_init(unsigned slot, uint64_t after_usec);
void qid_next(char out[QID_LEN + 1]);
bool qid_valid(const char *s);

/* The next line of a small strict text file of ours (spool_dir/nodecaps,
 * spool_dir/drained, the queue manager's node report): every line ends
 * with LF and holds printable ASCII only; empty lines and "#" lines are
 * skipped. *p moves past what was read, *lineno counts the lines. Returns
 * 1 with the line (without its LF) in *line and *len, 0 at the end, or -1
 * with *why when a line breaks those rules or is longer than max. */
int text_line_next(const char **p, const char *end, unsigned long *lineno, size_t max,
		   const char **line, size_t *len, const char **why);
/* CRC-32C (Castagnoli, as in iSCSI and ext4): crc32c(0, buf, len) for a
 * whole buffer, or pass the previous result to continue over the next
 * piece. The queue files' check record (queue.h). Thread-safe. */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);
/* When a valid id was issued: microseconds since the epoch */
uint64_t qid_usec(const char *id);
uint64_t now_usec(void);
/* RFC 5322 date-time for Received: and logs */
void rfc5322_date(time_t t, char *buf, size_t buflen);

/* ---- counters shared by all sorterd processes (util.c) ----
 * One anonymous shared mapping made by the master before it forks, so that
 * `sorterctl stats` sees the sum of every process's work. */
struct counters {
	_Atomic uint64_t connections;      /* SMTP sessions accepted */
	_Atomic uint64_t refused;          /* connections refused by a session limit */
	_Atomic uint64_t messages_in;      /* messages queued (250 after DATA) */
	_Atomic uint64_t rejected;         /* messages refused at end of DATA */
	_Atomic uint64_t delivered;        /* recipients delivered */
	_Atomic uint64_t deferred;         /* recipient deferrals */
	_Atomic uint64_t bounced;          /* recipients bounced */
	_Atomic uint64_t dsn_sent;         /* DSNs queued */
};
struct counters *counters_create(void);

/* ---- file system (util.c) ---- */
int fsync_dir(const char *path);
int fsync_path(const char *path);      /* e.g. a file Berkeley DB wrote */
int write_all(int fd, const void *p, size_t n);
/* A directory stream over the folder open at dir_fd, from its first entry
 * (on a dup: closedir() leaves dir_fd open); NULL with errno. */
DIR *dir_read(int dir_fd);
/* s as a JSON string ("null" for NULL): '"' and '\\' escaped, control
 * and non-ASCII bytes as \u00XX, so any bytes give valid JSON. */
void json_put_str(FILE *out, const char *s);
int mkdir_p(const char *path, mode_t mode);

/* Big-endian numbers in byte buffers: queue records, the journal, milter
 * packets. */
static inline uint32_t
be32_get(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void
be32_put(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static inline uint64_t
be64_get(const unsigned char *p)
{
	return (uint64_t)be32_get(p) << 32 | be32_get(p + 4);
}

static inline void
be64_put(unsigned char *p, uint64_t v)
{
	be32_put(p, (uint32_t)(v >> 32));
	be32_put(p + 4, (uint32_t)v);
}

#endif
