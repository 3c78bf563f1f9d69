/*
 * router.h - the router: where does a recipient's mail go?
 *
 * Maps (one small backend vtable; Berkeley DB hash: and btree: now, ldap:
 * later), the parser of map source files, address canonicalisation, alias
 * expansion, user_map -> node -> node_map endpoint resolution, the RCPT-time
 * check, the delivery-time resolve and the explanation that `sorterctl
 * route` prints.
 *
 * RCPT time and delivery time run the same resolution, so they give the same
 * answer unless the maps changed in between (delivery then follows the new
 * maps: that is how a moved mailbox is followed).
 *
 * A router and its maps are read-only handles owned by one thread of one
 * process: open them after fork(), in the thread that uses them. A router
 * keeps a pointer to the config it was opened with; on a config reload open
 * a new router and close the old one.
 *
 * Map files: key and value are stored without a trailing NUL; keys are
 * lower-cased (ASCII) by sortermap when written and by map_lookup() before
 * reading, so lookups are case-insensitive on both sides. Keys and values
 * may be UTF-8 (SMTPUTF8 addresses); only ASCII letters are case-folded,
 * so "JÜRGEN@" finds "jÜrgen@", not "jürgen@".
 */
#ifndef SORTER_ROUTER_H
#define SORTER_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include "lib/lib.h"

/* ---- limits, set here once ---- */
#define MAP_KEY_MAX 512           /* bytes in a map key */
#define MAP_VALUE_MAX 8192        /* bytes in a map value (an alias list) */
#define ROUTER_NODE_MAX 64        /* bytes in a node name */
#define ROUTER_ENDPOINTS_MAX 16   /* endpoints of one node */
#define ROUTER_ALIAS_DEPTH 20     /* nested alias expansions */
#define ROUTER_EXPAND_MAX 1000    /* addresses visited while expanding one recipient */
#define ENDPOINT_PATH_MAX 107     /* sizeof(sun_path) - 1 */

/* ---- maps (map.c) ---- */
enum map_status {
	MAP_TEMPFAIL = -1,        /* the map cannot answer now: defer, never guess */
	MAP_NOTFOUND = 0,
	MAP_FOUND = 1,
	MAP_PENDING = 2,          /* asked, answer to come (only after map_set_wakeup): ask
				   * again once the wake-up descriptor was written to */
};

/* What a map's backing file looked like when it was opened: a different
 * stamp means the file was rebuilt and is reopened. */
struct map_stamp {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
};

/*
 * A backend. `arg` is what follows "type:" in the map's spec. Handles are
 * read-only. A backend without a file (ldap:) leaves `stamp` NULL and
 * reconnects by itself inside lookup().
 */
struct map_backend {
	const char *type;
	/* NULL with err set on failure; fills *st for file backends */
	void *(*open)(const char *arg, struct map_stamp *st, char *err, size_t errlen);
	/* key is lower-cased already; a found value is copied NUL-terminated
	 * into val (vallen bytes with the NUL); too long = MAP_TEMPFAIL */
	enum map_status (*lookup)(void *h, const char *key, size_t keylen,
				  char *val, size_t vallen, char *err, size_t errlen);
	/* the backing file's stamp now; -1 with errno when it cannot be seen */
	int (*stamp)(const char *arg, struct map_stamp *st);
	void (*close)(void *h);
	/* writes every entry of the source into a new map that replaces the
	 * old one atomically (NULL: the backend is not built by sortermap) */
	long (*build)(const char *arg, const char *name, const char *src, size_t len,
		      const struct stat *like, char *err, size_t errlen);
	/* NULL for a backend that answers at once. Else its lookups may go
	 * to lookup threads: with fd >= 0, one that cannot be answered from
	 * the cache returns MAP_PENDING and an 8-byte counter increment
	 * (eventfd style) is written to fd when some answer arrives; with
	 * fd -1 (the default) it waits for the answer, at most the map's own
	 * timeout. Such a handle may be looked up from several threads. */
	void (*set_wakeup)(void *h, int fd);
	/* NULL when the map cannot be listed (ldap:). Else calls fn for each
	 * entry, key and value NUL-terminated; 0, or -1 with err. */
	int (*each)(void *h, void (*fn)(const char *key, const char *val, void *arg), void *arg,
		    char *err, size_t errlen);
};

struct map;

/* "hash:PATH" and "btree:PATH" read PATH.db; a spec without "type:" is a
 * hash. Returns NULL (err set) only for a spec it cannot understand: a
 * missing or unreadable file is not an error here, its lookups answer
 * MAP_TEMPFAIL until the file can be opened. */
struct map *map_open(const char *spec, char *err, size_t errlen);
/* Looks key up (case-insensitively). Checks once whether the file was
 * rebuilt and, if so, switches to the new file; until the new one is open
 * the old handle keeps answering. On MAP_TEMPFAIL err says why. */
enum map_status map_lookup(struct map *m, const char *key, char *val, size_t vallen,
			   char *err, size_t errlen);
/* The same without the check for a rebuilt file, for a caller that looked
 * the map up a moment ago (several keys for one recipient). */
enum map_status map_get(struct map *m, const char *key, char *val, size_t vallen,
			char *err, size_t errlen);
/* See map_backend.set_wakeup: fd >= 0 makes lookups of a threaded map
 * (ldap:) return MAP_PENDING instead of waiting; no effect on the others. */
void map_set_wakeup(struct map *m, int fd);
/* The map may be looked up from any thread (its backend has lookup threads
 * and a locked cache); a Berkeley DB map may not. */
bool map_thread_safe(const struct map *m);
/* 0 when the map can answer right now, else -1 with the reason (sorterd -t). */
int map_ready(struct map *m, char *err, size_t errlen);
const char *map_spec(const struct map *m);
/* Every entry of the map (after the check for a rebuilt file), for small
 * maps that are listed (node_map for `sorterctl nodes`): 0, or -1 with err
 * when the map cannot be read or listed (ldap:). */
int map_each(struct map *m, void (*fn)(const char *key, const char *val, void *arg), void *arg,
	     char *err, size_t errlen);
void map_close(struct map *m);
/*
 * Compiles map source text (len bytes, read from the file `name`) into the
 * map `spec` for sortermap: parsed whole first, written to a temporary file
 * beside the map, fsync'd, renamed over it, directory fsync'd. The new map
 * gets the mode (and, for root, the owner) of `like`. Returns the number of
 * entries, or -1 with err ("NAME:LINE: reason" for a syntax error or a
 * duplicate key); on any error the old map is left as it was.
 */
long map_build(const char *spec, const char *name, const char *src, size_t len,
	       const struct stat *like, char *err, size_t errlen);

/* ---- ldap: maps (ldapconf.c: the settings file and the filter, pure;
 * map_ldap.c: lookup threads, cache, libldap) ----
 * "ldap:FILE" names a file of "key = value" lines in the style of
 * Postfix's ldap_table(5) ('#' comment lines, a line starting with a blank
 * continues the one before): server_host (URIs or HOST[:PORT], several =
 * failover, tried in order), server_port (389), search_base (required),
 * scope (sub | one | base), query_filter ("(mailacceptinggeneralid=%s)";
 * %s the key, %u its local part, %d its domain, %% a '%'; each escaped per
 * RFC 4515), result_attribute ("maildrop"; several attributes and values
 * are joined with ','), bind (yes), bind_dn, bind_pw, start_tls (no),
 * tls_ca_cert_file, tls_require_cert (yes), version (3 only), timeout
 * (10s: connect, bind and each search), cache_ttl (60s), negative_cache_ttl
 * (10s), cache_size (100000 keys), lookup_threads (4), size_limit (0 =
 * none). Unknown keys, and Postfix keys not implemented, are errors. */
#define LDAPC_URIS_MAX 16
#define LDAPC_ATTRS_MAX 16
#define LDAPC_THREADS_MAX 64
#define LDAPC_FILE_MAX (64 << 10)
enum ldapc_scope { LDAPC_SCOPE_BASE, LDAPC_SCOPE_ONE, LDAPC_SCOPE_SUB };

struct ldap_settings {
	char *uris[LDAPC_URIS_MAX];
	size_t nuris;
	int server_port;
	char *search_base;
	enum ldapc_scope scope;
	char *query_filter;
	char *attrs[LDAPC_ATTRS_MAX + 1];   /* NULL-terminated, as libldap takes them */
	size_t nattrs;
	bool bind;
	char *bind_dn, *bind_pw;            /* NULL: anonymous */
	bool start_tls;
	char *tls_ca_cert_file;
	bool tls_require_cert;
	int timeout;                        /* seconds */
	int cache_ttl, negative_cache_ttl;  /* seconds */
	int cache_size;
	int lookup_threads;
	int size_limit;
};

/* Parses the file's text (name for messages). 0, or -1 with "NAME:LINE:
 * reason" (s is then empty). Free with ldap_settings_free. */
int ldap_settings_parse(const char *name, const char *text, size_t len, struct ldap_settings *s,
			char *err, size_t errlen);
void ldap_settings_free(struct ldap_settings *s);
/* The filter for key: 1 with out set; 0 when the key is never asked with
 * this filter (%d and no domain, %u and an empty local part: not found
 * without a query, as Postfix does); -1 when it does not fit. */
int ldap_filter_expand(const char *filter, const char *key, char *out, size_t outlen);
/* The backend (map_ldap.c), for map.c's table. */
extern const struct map_backend map_ldap_backend;

struct event_base;

/* ---- waiting for threaded maps on an event loop (mapwait.c) ----
 * The descriptor given to map_set_wakeup/router_set_wakeup (an eventfd),
 * watched on a libevent loop: `retry(arg)` runs when a map wrote to it (an
 * answer arrived) and, while map_waiter_busy(w, true), once a second (a
 * request past its map's timeout is then answered as failed). The owner
 * keeps its own list of what waits and retries it from there. Unhook the
 * maps (router_set_wakeup(r, -1), or close them) before freeing. */
struct map_waiter;
struct map_waiter *map_waiter_new(struct event_base *base, void (*retry)(void *arg), void *arg);
int map_waiter_fd(const struct map_waiter *w);
void map_waiter_busy(struct map_waiter *w, bool busy);
void map_waiter_free(struct map_waiter *w);

/* ---- map source files (mapsource.c): pure, no I/O ----
 * One entry per line: key, blanks, value. Leading and trailing blanks are
 * ignored, a line whose first non-blank byte is '#' is a comment, blank
 * lines are skipped, LF or CRLF ends a line. '#' elsewhere is data (it is a
 * valid address character). Keys are lower-cased (ASCII letters only).
 * UTF-8 is data; NUL, control characters other than TAB (DEL and C1
 * included) and bytes that are not well-formed UTF-8 are errors. */
struct mapsource {
	const char *name;         /* file name for error messages */
	const char *p, *end;
	unsigned long line;       /* lines consumed so far */
};

struct map_entry {
	char key[MAP_KEY_MAX + 1];  /* lower-cased, NUL-terminated */
	size_t keylen;
	const char *value;          /* points into the source; not NUL-terminated */
	size_t valuelen;
	unsigned long line;
};

/* ASCII lower-casing of n bytes (dst may be src): what every key goes
 * through, on the way into a map and on the way to a lookup. */
void map_fold(char *dst, const char *src, size_t n);

void mapsource_init(struct mapsource *s, const char *name, const char *buf, size_t len);
/* 1 = an entry in *e; 0 = end of input; -1 = syntax error, err holds
 * "NAME:LINE: reason". */
int mapsource_next(struct mapsource *s, struct map_entry *e, char *err, size_t errlen);

/* ---- endpoints (canon.c): pure ----
 * lmtp:HOST:PORT, lmtp:[IP]:PORT, lmtp:unix:/PATH (PORT defaults to 24);
 * smtp:DOMAIN[:PORT] (the hosts of DOMAIN's MX records, RFC 5321 5.1),
 * smtp:[HOST]:PORT and smtp:[IP]:PORT (that host, no MX lookup; Postfix's
 * convention); an smtp PORT defaults to smtp_port. */
enum endpoint_kind { EP_INET, EP_UNIX };
enum endpoint_proto { EP_LMTP, EP_SMTP };

struct endpoint {
	enum endpoint_kind kind;
	enum endpoint_proto proto;
	bool literal;                       /* [IP]: no DNS lookup */
	bool mx;                            /* smtp:DOMAIN: look up its MX records */
	bool mx_host;                       /* a host an MX lookup gave (or the domain
					     * itself, without MX records): set by the client */
	unsigned short mx_pref;             /* with mx_host: its MX preference (0 without
					     * MX records) */
	signed char tls;                    /* enum tls_level from smtp_tls_policy_map, or -1:
					     * smtp_tls_security_level (set by the router) */
	char host[ADDR_DOMAIN_MAX + 1];     /* DNS name, or the IP without brackets */
	unsigned short port;                /* 0: smtp_port */
	char path[ENDPOINT_PATH_MAX + 1];   /* EP_UNIX */
};

/* One endpoint of len bytes. 0, or -1 with *why static. */
int endpoint_parse(const char *s, size_t len, struct endpoint *ep, const char **why);
/* A list separated by commas and/or blanks: the number parsed (>= 1), or
 * -1 with *why. */
int endpoint_parse_list(const char *s, struct endpoint *eps, size_t max, const char **why);
/* Back to the "lmtp:..." / "smtp:..." form. */
void endpoint_format(const struct endpoint *ep, char *buf, size_t buflen);

/* ---- canonical form of an address (canon.c): pure ----
 * The domain is lower-cased for the envelope; keys are all lower-case
 * (ASCII letters; UTF-8 is kept as it is).
 * With recipient delimiters (each byte of `delims` is one), the extension
 * from the first delimiter in an unquoted local part on is removed for
 * `base`. A bare "postmaster" gets `default_domain`. */
struct canon {
	char address[ADDR_PATH_MAX + 1];      /* envelope form: local as written, domain lower-cased */
	char key[ADDR_PATH_MAX + 1];          /* first lookup key */
	char base[ADDR_PATH_MAX + 1];         /* key without the extension; "" when none */
	char domain_key[ADDR_DOMAIN_MAX + 2]; /* "@domain"; "" when there is no domain */
	size_t domain_off;                    /* where the domain starts in address and key */
};

/* 0, or -1 with *why static. */
int router_canon(const char *addr, const char *delims, const char *default_domain,
		 struct canon *c, const char **why);

/* ---- resolution (router.c) ---- */
enum route_kind {
	ROUTE_LOCAL,      /* deliver by LMTP to `endpoints`, in order */
	ROUTE_REMOTE,     /* not a local domain: `endpoints` (transport_map, relay_host, or
			   * smtp:DOMAIN for an MX lookup) */
	ROUTE_BOUNCE,     /* permanent: send a DSN */
	ROUTE_TEMPFAIL,   /* a map cannot answer or is inconsistent: defer */
};

enum route_via {
	VIA_NONE,         /* no route found (see kind and reason) */
	VIA_USER_MAP,     /* user_map entry for the address */
	VIA_DOMAIN,       /* user_map entry for "@domain" */
	VIA_FAILOVER,     /* failover_node */
	VIA_NOT_LOCAL,    /* the domain is not local: its MX hosts (smtp:DOMAIN) */
	VIA_TRANSPORT_MAP, /* transport_map entry for the address or its domain */
	VIA_RELAY_HOST,   /* relay_host */
	VIA_NO_USER_MAP,  /* ROUTE_TEMPFAIL: no user_map and no failover_node; such a
			   * recipient is accepted at RCPT and waits for a route */
};

struct route {
	char original[ADDR_PATH_MAX + 1];   /* the address that was resolved */
	char address[ADDR_PATH_MAX + 1];    /* the final envelope address */
	enum route_kind kind;
	enum route_via via;
	char node[ROUTER_NODE_MAX + 1];     /* node name; "" when the map gave endpoints */
	struct endpoint *endpoints;         /* ROUTE_LOCAL: at least one */
	size_t nendpoints;
	char status[8];                     /* RFC 3463 code: "2.0.0", "5.1.1", "4.3.0", ... */
	char reason[256];                   /* what was found, or why it failed */
	size_t ep_first;                    /* internal: index in the list's endpoint pool */
};

/* A list can be reused across calls: each resolve resets it, keeping its
 * memory. Zero-initialised is valid. */
struct route_list {
	struct route *v;
	size_t n, cap;
	struct endpoint *eps;               /* the pool route.endpoints point into */
	size_t neps, epscap;
	bool pending;                       /* a map lookup is under way (MAP_PENDING): the
					     * routes are not final; resolve again when woken */
};

void route_list_free(struct route_list *l);

/* How each address was reached and looked up, for `sorterctl route`. */
struct route_trace {
	char *address;                      /* as reached: the original or an alias target */
	char **notes;                       /* one line per step, in order */
	size_t nnotes;
	struct route_trace **sub;           /* what its alias expanded to */
	size_t nsub;
	long route;                         /* index of the route it produced, or -1 */
};

void route_trace_free(struct route_trace *t);

struct router;

/* Opens the maps named by cf (alias_map, user_map, node_map,
 * transport_map) and checks failover_node and relay_host. NULL with err set only for what can never work (a map
 * spec or failover_node it cannot understand); a missing map file is not
 * fatal. cf must outlive the router. */
struct router *router_open(const struct config *cf, char *err, size_t errlen);
void router_close(struct router *r);
/* The maps for reports: alias_map, user_map, node_map, transport_map,
 * smtp_tls_policy_map (NULL when not configured). */
#define ROUTER_NMAPS 5
void router_maps(struct router *r, struct map *maps[ROUTER_NMAPS]);
/* Each node of node_map with its endpoints (those of an entry that does
 * not parse: none), in the map's order: 0, or -1 with err when there is
 * no node_map or it cannot be listed. */
int router_nodes(struct router *r,
		 void (*fn)(const char *node, const struct endpoint *eps, size_t neps, void *arg),
		 void *arg, char *err, size_t errlen);
/* Every map of the router answers MAP_PENDING rather than wait (see
 * map_set_wakeup); fd -1 = wait again. */
void router_set_wakeup(struct router *r, int fd);
/* 0 when every configured map can answer now, else -1 with the first
 * problem, "user_map hash:/x: cannot open /x.db: ..." (for sorterd -t). */
int router_check_maps(struct router *r, char *err, size_t errlen);

enum rcpt_verdict {
	RCPT_ACCEPT,          /* 250 2.1.5 */
	RCPT_UNKNOWN_USER,    /* 550 5.1.1 */
	RCPT_RELAY_DENIED,    /* 554 5.7.1 */
	RCPT_TEMPFAIL,        /* 451 4.3.0 */
	RCPT_NO_SMTPUTF8,     /* 553 5.6.7: needs SMTPUTF8, its node is known to lack it */
	RCPT_WAIT,            /* a lookup is under way (router_set_wakeup): ask again when woken */
};

/* "250 2.1.5", "550 5.1.1", "554 5.7.1", "451 4.3.0" or "553 5.6.7"
 * (RCPT_WAIT: "451 4.3.0", what it becomes when the wait ends) */
const char *rcpt_verdict_status(enum rcpt_verdict v);

/* router_check_rcpt_flags: the transaction's sender is a UTF-8 address */
#define RCPT_SENDER_UTF8 1

/*
 * The RCPT-time question for a parsed "local@domain" (or "postmaster").
 * No allocation once the router is warm. `why` gets a reason for the log
 * (it may name map files: keep it out of replies).
 * - a domain that is not local: RCPT_RELAY_DENIED (a client allowed to
 *   relay, e.g. after AUTH, treats that as accepted);
 * - no alias_map and no user_map: every local recipient is accepted;
 * - else the recipient is accepted when its resolution yields at least one
 *   deliverable address; otherwise a temporary failure if any lookup
 *   failed, else unknown user.
 */
enum rcpt_verdict router_check_rcpt(struct router *r, const char *address,
				    char *why, size_t whylen);
/*
 * The same, knowing more of the transaction (RCPT_SENDER_UTF8). A final
 * address needs SMTPUTF8 when it or the sender is UTF-8 (RFC 6531: both go
 * to the node as they are). Such an address counts as deliverable unless
 * every endpoint of its route is an LMTP endpoint whose last LHLO, as the
 * queue manager recorded it (spool_dir/nodecaps), lacked SMTPUTF8: unknown
 * never refuses. When nothing else is deliverable or temporarily failing,
 * RCPT_NO_SMTPUTF8. A transaction that declared SMTPUTF8 with an ASCII
 * envelope is not refused here: only its header section, not seen yet,
 * could need it, and the queue manager decides that at delivery time.
 */
enum rcpt_verdict router_check_rcpt_flags(struct router *r, const char *address, int flags,
					  char *why, size_t whylen);
/* How many final addresses the last RCPT-time check resolved its recipient
 * to after alias expansion (1 when it was not expanded or not resolved):
 * smtpd caps what one message may become (alias_expansion_limit). */
size_t router_rcpt_fanout(const struct router *r);

/*
 * Delivery time: resolves `address` into out (reset first), one route per
 * final address after alias expansion and duplicate removal; always at
 * least one. When trace is not NULL, *trace gets the steps (free it with
 * route_trace_free). Returns out->n.
 */
size_t router_resolve(struct router *r, const char *address, struct route_list *out,
		      struct route_trace **trace);

const char *route_kind_name(enum route_kind k);   /* "local", "remote", ... */
const char *route_via_name(enum route_via v);     /* "user_map", "@domain", ... */

/* ---- sorterctl route (explain.c) ----
 * Prints how `address` is routed: maps, canonical form, alias expansion
 * tree, user_map hit or failover or rejection, node, endpoints, and the
 * RCPT reply; as JSON with `json`. Returns the exit status: 0 accepted at
 * RCPT, 1 rejected (or not an address), 2 temporary failure (or the maps
 * cannot be opened at all). */
int router_explain(const struct config *cf, const char *address, bool json, FILE *out);

struct event_base;
struct sockaddr_storage;

/* ---- replies and content encoding (reply.c): pure, no I/O ----
 * An SMTP/LMTP reply (RFC 5321 4.2): "250-..." lines, then "250 ...".
 * A line ends with LF (a CR before it is dropped); the code must be the
 * same on every line. */
#define REPLY_LINE_MAX 2048       /* bytes in one reply line, CR LF included */
#define REPLY_LINES_MAX 100       /* lines in one reply */
#define REPLY_TEXT_MAX 1024       /* bytes kept of a reply's text, NUL included */

struct reply {
	int code;                       /* 200..599 */
	char status[16];                /* RFC 3463 "5.1.1"; "" when the reply has none */
	char text[REPLY_TEXT_MAX];      /* the lines' texts without code and status, joined
					 * by one space; printable ASCII only, truncated */
	unsigned nlines;
};

/* Parses the reply at the start of buf. Returns the number of bytes it
 * takes (> 0) and fills *r; 0 when more input is needed; -1 when it is
 * malformed (bad code, codes differing between lines, a line longer than
 * REPLY_LINE_MAX, more than REPLY_LINES_MAX lines), with *why static. */
ssize_t reply_parse(const char *buf, size_t len, struct reply *r, const char **why);

/* What an EHLO/LHLO reply offers (RFC 2920, 1870, 6152, 2034, 3461,
 * 3207, 6531, 3030). */
struct ehlo_caps {
	bool pipelining;
	bool eightbitmime;
	bool enhancedstatuscodes;
	bool dsn;
	bool starttls;
	bool smtputf8;
	bool chunking;                  /* BDAT offered */
	bool size;                      /* SIZE offered */
	unsigned long long size_max;    /* its limit; 0 = none stated */
};

/* Reads the keyword lines of a complete reply (buf, len: the bytes that
 * reply_parse took); the first line, the server's name, is skipped. */
void ehlo_parse(const char *buf, size_t len, struct ehlo_caps *c);

/* ---- each LMTP endpoint's last LHLO (nodecaps.c) ----
 * The queue manager records what every LMTP endpoint offered in the file
 * spool_dir/nodecaps; smtpd workers read it to refuse at RCPT time what
 * the node could not take (RFC 6531 SMTPUTF8). One line per endpoint:
 *   ENDPOINT SP SINCE *(SP KEYWORD) LF
 * ENDPOINT as endpoint_format() writes an lmtp: endpoint, SINCE the Unix
 * time it was first seen offering exactly this, KEYWORDs PIPELINING,
 * 8BITMIME, ENHANCEDSTATUSCODES, DSN, STARTTLS, SMTPUTF8, CHUNKING, SIZE or
 * SIZE=N (unknown upper-case keywords are skipped); lines starting with
 * '#' are comments. Printable ASCII only. */
#define NODECAPS_FILE "nodecaps"
#define NODECAPS_MAX 1024                 /* endpoints in the file */
#define NODECAPS_LINE_MAX 1024            /* bytes in a line, LF excluded */
#define NODECAPS_KEY_MAX (ENDPOINT_PATH_MAX + ADDR_DOMAIN_MAX + 32)

struct nodecaps_entry {
	char endpoint[NODECAPS_KEY_MAX];
	unsigned long long since;
	struct ehlo_caps caps;
};

struct nodecaps_source {
	const char *p, *end;
	unsigned long line;                 /* lines consumed so far */
};

/* The codec, pure. nodecaps_next: 1 = an entry in *e, 0 = end, -1 = a
 * malformed line ("line N: reason" in err). nodecaps_format appends one
 * line that nodecaps_next reads back the same. */
void nodecaps_source_init(struct nodecaps_source *s, const char *buf, size_t len);
int nodecaps_next(struct nodecaps_source *s, struct nodecaps_entry *e, char *err, size_t errlen);
void nodecaps_format(const struct nodecaps_entry *e, struct dstr *out);
bool nodecaps_equal(const struct ehlo_caps *a, const struct ehlo_caps *b);

struct nodecaps;
/* A handle on spool_dir/nodecaps; reads nothing yet, never fails. */
struct nodecaps *nodecaps_open(const char *spool_dir);
void nodecaps_close(struct nodecaps *nc);
/* Reader: 1 when ep's last LHLO offered SMTPUTF8, 0 when it did not, -1
 * when nothing is known (not lmtp, never seen, no file, a damaged file).
 * One stat() per call; the file is read again only when it was replaced. */
int nodecaps_smtputf8(struct nodecaps *nc, const struct endpoint *ep);
/* Reader: the entry of the endpoint written as key (endpoint_format), or
 * NULL when nothing is known; valid until the next call. */
const struct nodecaps_entry *nodecaps_get(struct nodecaps *nc, const char *key);
/* Writer (the queue manager): reads the file as it is now, once at start;
 * then records what ep offered, rewriting the file (temporary file +
 * rename) only when that differs from what it holds. 1 = written, 0 = no
 * change (or not lmtp), -1 = the write failed (warned). */
void nodecaps_load(struct nodecaps *nc);
int nodecaps_record(struct nodecaps *nc, const struct endpoint *ep, const struct ehlo_caps *caps,
		    unsigned long long now);

/* Message content to the DATA wire form: a "." at the start of a line is
 * doubled, every line ends with CR LF (a bare CR or bare LF becomes CR LF,
 * so none is ever sent), and dotstuff_end() adds the last line's CR LF if
 * missing and the final "." CR LF. Any split of the input gives the same
 * output. */
struct dotstuff {
	bool mid_line;                  /* bytes were written since the last CR LF */
	bool cr;                        /* a CR was read and not written yet */
	size_t col;                     /* bytes of the line written so far (no stuffed dot) */
	size_t limit;                   /* the longest line written; 0 = no limit */
};

/* line_limit: a line longer than this many bytes (CR LF and a stuffed dot
 * not counted) is broken by CR LF SP, as Postfix's smtp_line_length_limit
 * does: the first piece has line_limit bytes, each next one SP and
 * line_limit - 1. 0 sends lines as they are; 1 to 3 are taken as 4 (the
 * bound on out below needs it). */
void dotstuff_init(struct dotstuff *d, size_t line_limit);
/* Encodes len bytes of in into out, which must have room for 2 * len + 2
 * bytes; returns the bytes written. */
size_t dotstuff(struct dotstuff *d, const unsigned char *in, size_t len, unsigned char *out);
/* Writes the end of data (at most 5 bytes) into out; returns its length. */
size_t dotstuff_end(struct dotstuff *d, unsigned char out[5]);

/* ---- DNS (dns.c): c-ares on the caller's libevent loop ----
 * One resolver per event loop and thread. Callbacks always run from the
 * loop, never inside dns_lookup(). */
#define DNS_ADDRS_MAX 16          /* addresses kept from one answer */

struct dns;
struct dns_query;

struct dns_answer {
	int error;                      /* 0; else no usable answer, see err */
	bool notfound;                  /* the name has no address (permanent: NXDOMAIN or
					 * no A/AAAA records) */
	const char *err;                /* "host not found", "timeout", ... */
	const struct sockaddr_storage *addrs;   /* port 0, in the server's order */
	size_t naddrs;
};

typedef void dns_callback(const struct dns_answer *a, void *arg);

/* servers: NULL or "" = /etc/resolv.conf; else "IP[:PORT]" or
 * "[IPv6]:PORT", several separated by commas or blanks. NULL with err set
 * when the resolver cannot be set up. */
struct dns *dns_new(struct event_base *base, const char *servers, char *err, size_t errlen);
/* Pending queries end without their callbacks. */
void dns_free(struct dns *d);
/* A and AAAA lookup of host (the addresses of both families, IPv4 first
 * when the server gives both). The query handle is valid until its
 * callback runs or it is cancelled. */
struct dns_query *dns_lookup(struct dns *d, const char *host, dns_callback *cb, void *arg);
/* The callback will not run. Cancels either kind of query. */
void dns_cancel(struct dns_query *q);

/* ---- MX lookup (dns.c) and the MX answer parser (mx.c: pure, no I/O) ---- */
#define DNS_MX_MAX 16             /* MX hosts kept from one answer */

struct dns_mx {
	unsigned short pref;
	char host[ADDR_DOMAIN_MAX + 1];   /* lower-case, no trailing dot */
};

enum dns_mx_status {
	DNS_MX_OK,        /* mx[0..nmx-1]: preference order, equal preferences in random order */
	DNS_MX_NONE,      /* the domain exists and has no MX: deliver to its own A/AAAA (RFC 5321 5.1) */
	DNS_MX_NULL,      /* RFC 7505 null MX ("0 ."): the domain accepts no mail -> bounce 5.1.10 */
	DNS_MX_NXDOMAIN,  /* the domain does not exist -> bounce 5.1.2 */
	DNS_MX_TEMPFAIL,  /* SERVFAIL, timeout, refused, malformed answer -> defer 4.4.3 */
};

struct dns_mx_answer {
	enum dns_mx_status status;
	const char *err;                  /* for logs/diagnostics: "Host not found", "timeout", ... */
	const struct dns_mx *mx;
	size_t nmx;
};

typedef void dns_mx_callback(const struct dns_mx_answer *a, void *arg);

/* MX lookup of domain; the callback always runs from the loop, never inside
 * this call; the handle is cancellable with dns_cancel() like dns_lookup()'s. */
struct dns_query *dns_mx_lookup(struct dns *d, const char *domain, dns_mx_callback *cb, void *arg);

/*
 * Pure, no I/O: a DNS response packet (as c-ares hands it to an ares_query
 * callback) for an MX question, into mx (at most max entries; extra ones
 * dropped), sorted by preference with equal preferences shuffled with
 * rnd(arg) (rnd NULL: keep the packet's order). Returns the status as above
 * (DNS_MX_NULL when the answer is a null MX; DNS_MX_NONE for an answer with
 * no MX records; DNS_MX_TEMPFAIL for a malformed packet), *n set.
 *
 * Details: an RCODE of NXDOMAIN gives DNS_MX_NXDOMAIN, any other error
 * RCODE DNS_MX_TEMPFAIL. MX records of class IN in the answer section are
 * read whatever their owner name (as c-ares does; CNAMEs there are
 * skipped). A null MX is a lone MX record whose target is the root; beside
 * other records such a target is skipped. Targets that are not sane host
 * names (LDH labels, not all-numeric at the end) are skipped; when MX
 * records were there but none could be kept the answer is DNS_MX_TEMPFAIL,
 * never DNS_MX_NONE (that would send mail to the domain's own address).
 * When more than max records are usable, those with the lowest preferences
 * are kept (ties: the packet's first).
 */
enum dns_mx_status dns_mx_parse(const unsigned char *pkt, size_t len, struct dns_mx *mx,
				size_t max, size_t *n, unsigned (*rnd)(void *), void *arg);
/* Addresses: the length connect() wants, by family (AF_UNIX included);
 * setting the port; a numeric IPv4 or IPv6 address, which needs no
 * lookup (0, or -1 when host is not one); and the form used in logs and
 * results: "127.0.0.1:24", "[::1]:24", "unix:/path". */
size_t dns_addr_len(const struct sockaddr_storage *ss);
void dns_addr_set_port(struct sockaddr_storage *ss, unsigned short port);
int dns_addr_numeric(const char *host, unsigned short port, struct sockaddr_storage *ss);
void dns_addr_format(const struct sockaddr_storage *ss, char *buf, size_t len);
/* The IP address alone ("127.0.0.1", "::1"); "?" for any other family. */
void dns_addr_ip(const struct sockaddr_storage *ss, char *buf, size_t len);
/* Orders addresses by family, then address; the port is not compared */
int dns_addr_cmp(const void *a, const void *b);

/* ---- our own listeners (self.c): the mail loop check of RFC 5321 5.1 ---- */
#define SELF_REREAD_SECONDS 60     /* the interface addresses may be this old */
struct self_addrs {
	struct sockaddr_storage *listen;  /* the listeners' addresses and ports */
	size_t nlisten;
	struct sockaddr_storage *local;   /* this host's addresses, for a wildcard listener */
	size_t nlocal;
	time_t read_at;                   /* when local was read (CLOCK_MONOTONIC seconds) */
};
/* The listeners of ls[0..n), and this host's interface addresses as they are now */
void self_addrs_init(struct self_addrs *sa, const struct listen_spec *ls, size_t n);
/* ss (address and port) is one of our listeners: connecting to it is a
 * loop. May read the interface addresses again (self.c says when). */
bool self_addrs_has(struct self_addrs *sa, const struct sockaddr_storage *ss);
void self_addrs_free(struct self_addrs *sa);

/* ---- the delivery client (client.c): LMTP and SMTP, a pool on the caller's loop ----
 * One client state machine for both transports; what differs between them
 * is a row of a small table (the greeting verb, one reply per recipient
 * after DATA or one for all, STARTTLS, HELO fallback, 8BITMIME, DSN). Connections are
 * kept per destination (a node name, a relay, a mail domain), reused, and
 * capped in number per transport; transactions beyond the cap wait in a
 * FIFO per destination. An smtp:DOMAIN endpoint is replaced by the hosts
 * of DOMAIN's MX records (c-ares, on the same loop). */
struct client_settings {
	int per_dest_concurrency;       /* LMTP connections per destination; 0 = 20 */
	int smtp_per_dest_concurrency;  /* SMTP connections per destination; 0 = 20 */
	int connect_timeout;            /* seconds; 0 = 30 */
	int cmd_timeout;                /* seconds per command reply; 0 = 300 */
	int data_timeout;               /* seconds for content and its replies; 0 = 600 */
	int idle_timeout;               /* seconds an unused connection is kept; 0 = 10 */
	int dead_endpoint_seconds;      /* a failed endpoint is tried last this long (0: never
	                                 * set aside); negative = 60 */
	const char *helo_name;          /* LHLO/EHLO argument; NULL = the host name */
	const char *dns_servers;        /* as for dns_new() */
	unsigned short smtp_port;       /* for smtp endpoints without a port; 0 = 25 */
	int smtp_line_length_limit;     /* SMTP content: longer lines are broken (CR LF SP);
					 * 0 = sent as they are. LMTP lines always are */
	enum tls_level smtp_tls_level;  /* STARTTLS on SMTP connections */
	const char *smtp_tls_ca_file;   /* trust anchors for TLS_VERIFY; NULL = the system's */
	/* sorterd's own listeners (listen =): an MX host reached at one of
	 * them is ourselves, a mail loop (a wildcard address stands for every
	 * address of this host); NULL/0 = none */
	const struct listen_spec *self;
	size_t nself;
	/* NULL, or called with what an endpoint offered each time a new
	 * connection's LHLO/EHLO (not HELO) is answered */
	void (*hello_caps)(const struct endpoint *ep, const struct ehlo_caps *caps, void *arg);
	void *hello_caps_arg;
};

#define RELAY_MAX 300

struct deliv_result {
	int code;                       /* reply code, or one made up here (451, 552) */
	char status[16];                /* "2.1.5"; "X.0.0" when the server gave none */
	char text[512];
	char relay[RELAY_MAX];          /* LMTP "127.0.0.1:24", "[::1]:24", "unix:/path";
					 * SMTP "mx1.remote.test[127.0.0.2]:25"; "" when no
					 * server was reached (the DSN then has no Remote-MTA) */
	char tls[96];                   /* "TLSv1.3 TLS_AES_256_GCM_SHA384 verified" or "" */
	bool remote_said;               /* code and text are the server's own reply */
	bool relayed;                   /* SMTP: the next hop did not take the DSN
					 * parameters (RFC 3461 4.1: a success is "relayed") */
	bool dsn_passed;                /* SMTP: the next hop took them and reports itself */
};

struct deliv_txn {
	const char *sender;             /* may be "" */
	const char *sender_params;      /* "RET=HDRS ENVID=..." (DSN ones only), or NULL */
	const char *const *rcpts;
	const char *const *rcpt_params; /* "NOTIFY=... ORCPT=..." per recipient, or NULL */
	size_t nrcpt;
	/* the content, CR LF lines as spooled, not dot-stuffed: content_len
	 * bytes at content_offset of the open queue file content_fd, read in
	 * pieces as the socket takes them */
	int content_fd;
	size_t content_offset;
	size_t content_len;
	bool eightbit;                  /* BODY=8BITMIME when the server offers it */
	/* RFC 6531: SMTPUTF8 goes on MAIL FROM when the server offers it and the
	 * message was received with it or has a UTF-8 envelope. A recipient
	 * needs it when its address or the sender is UTF-8, or every recipient
	 * does (utf8_headers); to a server without it, such a recipient gets
	 * 553 5.6.7 and the others go on without. */
	bool smtputf8;                  /* the message was received with SMTPUTF8 */
	bool utf8_headers;              /* and its header section has 8-bit bytes */
	struct deliv_result *results;   /* nrcpt entries, filled here */
	void (*done)(struct deliv_txn *txn, void *arg);
	void *arg;
};

struct client_pool;

struct client_pool *client_pool_new(struct event_base *base, const struct client_settings *s);
/* Closes every connection; transactions not reported yet get 4xx results
 * for the recipients without one and their done callbacks run from here.
 * Never call it from a done callback. */
void client_pool_free(struct client_pool *p);
/*
 * Delivers txn to dest through eps (tried in order, a failed one skipped
 * for a while; copied, so they need not outlive the call; all of one
 * transport, lmtp or smtp). Every recipient
 * gets a result; done then runs from the event loop, never from inside
 * this call. txn and what it points to must stay valid until then.
 * Results: 2xx delivered, 4xx defer, 5xx bounce.
 */
void client_deliver(struct client_pool *p, const char *dest, const struct endpoint *eps,
		  size_t neps, struct deliv_txn *txn);

/*
 * A health probe of one endpoint: connect (each address of a DNS name in
 * turn, until one answers), greeting, LHLO (EHLO for smtp), QUIT. Up when
 * the greeting command is answered 2xx; its capabilities then go to
 * hello_caps as a delivery's would, and the endpoint leaves the list of
 * failed ones (deliveries try it in its turn again); a failure puts it
 * there, as a delivery's failure does. cb runs from the loop, never from
 * inside this call, once; at client_pool_free a probe under way reports
 * down.
 */
struct client_probe_result {
	char endpoint[ADDR_DOMAIN_MAX + ENDPOINT_PATH_MAX + 32];  /* endpoint_format() */
	bool up;
	char relay[RELAY_MAX];          /* the address that answered */
	char error[512];                /* why not, when down */
	uint64_t latency_usec;          /* from the greeting command to its reply */
	struct ehlo_caps caps;
};

typedef void client_probe_cb(const struct client_probe_result *r, void *arg);
void client_probe(struct client_pool *p, const struct endpoint *ep, client_probe_cb *cb, void *arg);

#endif
