/*
 * config.c - the configuration file: one table of parameters, each declared
 * once with its type, default and bounds, and the parser that fills a
 * struct config from "key = value" lines.
 *
 * It must never accept a file it does not fully understand: an unknown key,
 * a value out of bounds or a repeated key stops parsing with "FILE:LINE:
 * reason", so that `sorterd -t` and a reload catch every mistake before any
 * mail sees it. It must never exit or log either: callers decide what an
 * error means (fatal at start, a warning on SIGHUP).
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <unistd.h>

#include "lib/lib.h"

#define CONF_LINE_MAX	8192		/* bytes per line, newline excluded */
#define CONF_FILE_MAX	(16 << 20)	/* a config file is never this big */
#define DOMAIN_MAX	255

enum ptype {
	P_STR,		/* char *; empty means NULL */
	P_INT,		/* int, min..max */
	P_SIZE,		/* long long bytes; k, m, g suffixes (1024-based) */
	P_TIME,		/* int seconds; s, m, h, d suffixes */
	P_LIST,		/* char ** NULL-terminated, count at off2; lower-cased words */
	P_ENUM,		/* an enum stored as int; names[i] is value i */
	P_LISTEN,	/* struct listen_spec *, count at off2; repeatable */
	P_NETS,		/* struct net *, count at off2: ADDR[/BITS] words */
	P_LOG,		/* enum log_sink at off; a file's path (char *) at off2 */
	P_HOSTPORT,	/* struct hostport: HOST:PORT, [IPv6]:PORT or PORT (loopback) */
};

enum pflag {
	F_NONEMPTY = 1,		/* an empty value is an error, not NULL */
	F_REPEAT = 2,		/* may appear more than once */
	F_DEF_HOST = 4,		/* default: the hostname (configured or the system's) */
	F_DOMAIN = 8,		/* a domain name: goes into EHLO, Received: and local_domains */
	F_ZERO_OFF = 16,	/* P_INT: 0 turns the feature off, below min otherwise */
};

struct param {
	const char *name;
	enum ptype type;
	int flags;
	const char *def;	/* parsed like a value from the file; NULL = none */
	long long min, max;	/* P_INT, P_SIZE, P_TIME */
	size_t off;		/* the field in struct config */
	size_t off2;		/* its count, for P_LIST and P_LISTEN */
	const char *const *names; /* P_ENUM */
};

/*
 * The offset macros refuse to compile when a field's C type does not match
 * the parameter type, because the setters write through these offsets.
 */
#define FIELD(f, T) (offsetof(struct config, f) + 0 * sizeof(char[ \
	_Generic(((struct config *)0)->f, T: 1, default: -1)]))
#define STR(f)		FIELD(f, char *)
#define INT(f)		FIELD(f, int)
#define LLONG(f)	FIELD(f, long long)
#define COUNT(f)	FIELD(f, size_t)

_Static_assert(sizeof(enum log_sink) == sizeof(int), "enums are stored as int");

/* syslog(3) facilities by name: what syslog_facility may say */
const char *const syslog_facility_names[] = {
	"mail", "daemon", "user", "local0", "local1", "local2", "local3", "local4", "local5",
	"local6", "local7", NULL,
};
static const int syslog_facility_codes[] = {
	LOG_MAIL, LOG_DAEMON, LOG_USER, LOG_LOCAL0, LOG_LOCAL1, LOG_LOCAL2, LOG_LOCAL3,
	LOG_LOCAL4, LOG_LOCAL5, LOG_LOCAL6, LOG_LOCAL7,
};
_Static_assert(sizeof(syslog_facility_codes) / sizeof(syslog_facility_codes[0]) + 1 ==
	       sizeof(syslog_facility_names) / sizeof(syslog_facility_names[0]),
	       "one code per facility name");
static const char *const yes_no[] = { "no", "yes", NULL };
const char *const tls_level_names[] = { "none", "may", "encrypt", "verify", NULL };

static const struct param params[] = {
	{ "hostname", P_STR, F_NONEMPTY | F_DEF_HOST | F_DOMAIN, NULL, 0, 0, STR(hostname), 0, NULL },
	{ "spool_dir", P_STR, F_NONEMPTY, "/var/spool/sorter", 0, 0, STR(spool_dir), 0, NULL },
	{ "user", P_STR, F_NONEMPTY, "sorter", 0, 0, STR(user), 0, NULL },
	{ "listen", P_LISTEN, F_REPEAT, "0.0.0.0:25 mx", 0, 0,
	  FIELD(listen, struct listen_spec *), COUNT(nlisten), NULL },
	{ "local_domains", P_LIST, F_DEF_HOST | F_DOMAIN, NULL, 0, 0,
	  FIELD(local_domains, char **), COUNT(nlocal_domains), NULL },
	{ "alias_map", P_STR, 0, NULL, 0, 0, STR(alias_map), 0, NULL },
	{ "user_map", P_STR, 0, NULL, 0, 0, STR(user_map), 0, NULL },
	{ "node_map", P_STR, 0, NULL, 0, 0, STR(node_map), 0, NULL },
	{ "failover_node", P_STR, 0, NULL, 0, 0, STR(failover_node), 0, NULL },
	{ "relay_host", P_STR, 0, NULL, 0, 0, STR(relay_host), 0, NULL },
	{ "dns_servers", P_STR, 0, NULL, 0, 0, STR(dns_servers), 0, NULL },
	{ "tls_cert_file", P_STR, 0, NULL, 0, 0, STR(tls_cert_file), 0, NULL },
	{ "tls_key_file", P_STR, 0, NULL, 0, 0, STR(tls_key_file), 0, NULL },
	{ "auth_map", P_STR, 0, NULL, 0, 0, STR(auth_map), 0, NULL },
	{ "sender_login_map", P_STR, 0, NULL, 0, 0, STR(sender_login_map), 0, NULL },
	{ "smtpd_client_auth_failure_limit", P_INT, 0, "5", 1, 100000,
	  INT(smtpd_client_auth_failure_limit), 0, NULL },
	{ "recipient_delimiter", P_STR, 0, NULL, 0, 0, STR(recipient_delimiter), 0, NULL },
	{ "smtp_port", P_INT, 0, "25", 1, 65535, INT(smtp_port), 0, NULL },
	{ "smtp_line_length_limit", P_INT, F_ZERO_OFF, "998", 80, 1000000,
	  INT(smtp_line_length_limit), 0, NULL },
	{ "message_size_limit", P_SIZE, 0, "10240000", 1024, 2147483647LL,
	  LLONG(message_size_limit), 0, NULL },
	{ "log", P_LOG, 0, "stderr", 0, 0, FIELD(log, enum log_sink), STR(log_file), NULL },
	{ "workers", P_INT, 0, "0", 0, CONFIG_WORKERS_MAX, INT(workers), 0, NULL },
	{ "io_threads", P_INT, 0, "16", 1, 256, INT(io_threads), 0, NULL },
	{ "smtpd_max_sessions", P_INT, 0, "100", 1, 100000, INT(smtpd_max_sessions), 0, NULL },
	{ "smtpd_client_connection_limit", P_INT, 0, "50", 1, 100000,
	  INT(smtpd_client_connection_limit), 0, NULL },
	{ "smtpd_client_connection_rate_limit", P_INT, 0, "0", 0, 1000000,
	  INT(smtpd_client_connection_rate_limit), 0, NULL },
	{ "smtpd_client_limit_exceptions", P_NETS, 0, "127.0.0.0/8 ::1/128", 0, 0,
	  FIELD(smtpd_client_limit_exceptions, struct net *),
	  COUNT(nsmtpd_client_limit_exceptions), NULL },
	{ "proxy_networks", P_NETS, 0, NULL, 0, 0, FIELD(proxy_networks, struct net *),
	  COUNT(nproxy_networks), NULL },
	{ "smtpd_proxy_timeout", P_TIME, 0, "10", 1, 3600, INT(smtpd_proxy_timeout), 0, NULL },
	{ "smtpd_recipient_limit", P_INT, 0, "1000", 1, 100000,
	  INT(smtpd_recipient_limit), 0, NULL },
	{ "alias_expansion_limit", P_INT, 0, "1000", 1, 1000000, INT(alias_expansion_limit), 0,
	  NULL },
	{ "smtpd_line_limit", P_INT, 0, "2048", 512, 65536, INT(smtpd_line_limit), 0, NULL },
	{ "smtpd_timeout", P_TIME, 0, "300", 1, 3600, INT(smtpd_timeout), 0, NULL },
	{ "smtpd_data_timeout", P_TIME, 0, "300", 1, 3600, INT(smtpd_data_timeout), 0, NULL },
	{ "smtpd_hard_error_limit", P_INT, 0, "20", 1, 1000, INT(smtpd_hard_error_limit), 0, NULL },
	{ "smtpd_junk_command_limit", P_INT, 0, "100", 1, 100000, INT(smtpd_junk_command_limit),
	  0, NULL },
	{ "smtpd_min_data_rate", P_INT, 0, "500", 0, 1 << 30, INT(smtpd_min_data_rate), 0, NULL },
	{ "smtpd_session_time_limit", P_TIME, 0, "1h", 10, 86400, INT(smtpd_session_time_limit),
	  0, NULL },
	{ "smtpd_helo_strict", P_ENUM, 0, "yes", 0, 0, INT(smtpd_helo_strict), 0, yes_no },
	{ "queue_minfree", P_SIZE, 0, "52428800", 0, 1LL << 50, LLONG(queue_minfree), 0, NULL },
	/* the queue manager and delivery */
	{ "queue_run_delay", P_TIME, 0, "300", 1, 86400, INT(queue_run_delay), 0, NULL },
	{ "minimal_backoff_time", P_TIME, 0, "300", 1, 86400 * 10, INT(minimal_backoff_time), 0, NULL },
	{ "maximal_backoff_time", P_TIME, 0, "4000", 1, 86400 * 10, INT(maximal_backoff_time), 0, NULL },
	{ "maximal_queue_lifetime", P_TIME, 0, "5d", 0, 86400 * 100, INT(maximal_queue_lifetime), 0, NULL },
	{ "bounce_queue_lifetime", P_TIME, 0, "5d", 0, 86400 * 100, INT(bounce_queue_lifetime), 0, NULL },
	{ "delay_warning_time", P_TIME, 0, "4h", 0, 86400 * 100, INT(delay_warning_time), 0, NULL },
	{ "qmgr_message_active_limit", P_INT, 0, "2000", 1, 1000000,
	  INT(qmgr_message_active_limit), 0, NULL },
	{ "qmgr_message_active_bytes", P_SIZE, 0, "256m", 1 << 20, 1LL << 40,
	  LLONG(qmgr_message_active_bytes), 0, NULL },
	{ "bounce_size_limit", P_SIZE, 0, "50000", 1024, 1LL << 30, LLONG(bounce_size_limit),
	  0, NULL },
	{ "lmtp_destination_concurrency_limit", P_INT, 0, "20", 1, 1000,
	  INT(lmtp_destination_concurrency_limit), 0, NULL },
	{ "lmtp_destination_recipient_limit", P_INT, 0, "50", 1, 100000,
	  INT(lmtp_destination_recipient_limit), 0, NULL },
	{ "smtp_destination_concurrency_limit", P_INT, 0, "20", 1, 1000,
	  INT(smtp_destination_concurrency_limit), 0, NULL },
	{ "smtp_destination_recipient_limit", P_INT, 0, "50", 1, 100000,
	  INT(smtp_destination_recipient_limit), 0, NULL },
	{ "transport_map", P_STR, 0, NULL, 0, 0, STR(transport_map), 0, NULL },
	{ "smtp_tls_security_level", P_ENUM, 0, "may", 0, 0, INT(smtp_tls_security_level), 0,
	  tls_level_names },
	{ "smtp_tls_ca_file", P_STR, 0, NULL, 0, 0, STR(smtp_tls_ca_file), 0, NULL },
	{ "smtp_tls_policy_map", P_STR, 0, NULL, 0, 0, STR(smtp_tls_policy_map), 0, NULL },
	{ "lmtp_connect_timeout", P_TIME, 0, "30", 1, 3600, INT(lmtp_connect_timeout), 0, NULL },
	{ "lmtp_timeout", P_TIME, 0, "300", 1, 3600, INT(lmtp_timeout), 0, NULL },
	{ "lmtp_idle_timeout", P_TIME, 0, "10", 1, 3600, INT(lmtp_idle_timeout), 0, NULL },
	{ "endpoint_dead_time", P_TIME, 0, "60", 0, 3600, INT(endpoint_dead_time), 0, NULL },
	{ "node_probe_interval", P_TIME, 0, "30", 0, 86400, INT(node_probe_interval), 0, NULL },
	{ "hopcount_limit", P_INT, 0, "50", 1, 1000, INT(hopcount_limit), 0, NULL },
	{ "bounce_notice_recipient", P_STR, 0, NULL, 0, 0, STR(bounce_notice_recipient), 0, NULL },
	/* operations: logging and metrics */
	{ "syslog_facility", P_ENUM, 0, "mail", 0, 0, INT(syslog_facility), 0,
	  syslog_facility_names },
	{ "syslog_socket", P_STR, F_NONEMPTY, "/dev/log", 0, 0, STR(syslog_socket), 0, NULL },
	{ "metrics_listen", P_HOSTPORT, 0, NULL, 0, 0, FIELD(metrics_listen, struct hostport), 0,
	  NULL },
	/* milters (smtpd/milter.c), named and defaulted as in Postfix */
	{ "smtpd_milters", P_STR, 0, NULL, 0, 0, STR(smtpd_milters), 0, NULL },
	{ "milter_default_action", P_ENUM, 0, "tempfail", 0, 0, INT(milter_default_action), 0,
	  milter_action_names },
	{ "milter_connect_timeout", P_TIME, 0, "30s", 1, 3600, INT(milter_connect_timeout), 0, NULL },
	{ "milter_command_timeout", P_TIME, 0, "30s", 1, 3600, INT(milter_command_timeout), 0, NULL },
	{ "milter_content_timeout", P_TIME, 0, "300s", 1, 3600, INT(milter_content_timeout), 0, NULL },
	{ "milter_connect_macros", P_STR, 0,
	  "j {daemon_name} {daemon_addr} v _ {client_addr} {client_name} {client_port}", 0, 0,
	  STR(milter_connect_macros), 0, NULL },
	{ "milter_helo_macros", P_STR, 0, "{tls_version} {cipher} {cipher_bits} {cert_subject} "
	  "{cert_issuer}", 0, 0, STR(milter_helo_macros), 0, NULL },
	{ "milter_mail_macros", P_STR, 0, "i {auth_type} {auth_authen} {auth_author} {mail_addr} "
	  "{mail_host} {mail_mailer}", 0, 0, STR(milter_mail_macros), 0, NULL },
	{ "milter_rcpt_macros", P_STR, 0, "i {rcpt_addr} {rcpt_host} {rcpt_mailer}", 0, 0,
	  STR(milter_rcpt_macros), 0, NULL },
	{ "milter_data_macros", P_STR, 0, "i", 0, 0, STR(milter_data_macros), 0, NULL },
	{ "milter_end_of_header_macros", P_STR, 0, "i", 0, 0, STR(milter_eoh_macros), 0, NULL },
	{ "milter_end_of_data_macros", P_STR, 0, "i", 0, 0, STR(milter_eom_macros), 0, NULL },
};

#define NPARAMS (sizeof(params) / sizeof(params[0]))

#define AT(cf, off, T) ((T *)(void *)((char *)(cf) + (off)))

/* Values quoted in errors may be anything: keep the message one short,
 * printable line. */
static const char *
show(const char *s, char *buf, size_t buflen)
{
	size_t i, n = 0;

	for (i = 0; s[i] != '\0' && n + 4 < buflen; i++)
		buf[n++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	if (s[i] != '\0') {
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n] = '\0';
	return buf;
}

static int
reason(char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int
reason(char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
	return -1;
}

/* Letters, digits, '-', '.', '_' (seen in real host names), at most 255
 * bytes: nothing that could break a reply line or a header. */
static bool
domain_ok(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > DOMAIN_MAX)
		return false;
	for (i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '.' ||
		      s[i] == '_'))
			return false;
	return true;
}

static bool
is_space(int c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* Trims s in place; returns the start of the trimmed text. */
static char *
trim(char *s)
{
	size_t n;

	while (is_space((unsigned char)*s))
		s++;
	n = strlen(s);
	while (n > 0 && is_space((unsigned char)s[n - 1]))
		s[--n] = '\0';
	return s;
}

/*
 * An optionally signed decimal with one optional suffix character from
 * `units` whose multiplier is in `mult`. Returns 0, 1 (not a number of that
 * kind) or 2 (too large to represent).
 */
static int
parse_scaled(const char *s, const char *units, const long long *mult, long long *out)
{
	const char *u;
	long long v = 0, m = 1;
	bool neg = false;

	if (*s == '-' || *s == '+')
		neg = *s++ == '-';
	if (*s < '0' || *s > '9')
		return 1;
	for (; *s >= '0' && *s <= '9'; s++) {
		if (v > (LLONG_MAX - (*s - '0')) / 10)
			return 2;
		v = v * 10 + (*s - '0');
	}
	if (*s != '\0') {
		if (units == NULL || (u = strchr(units, *s)) == NULL || s[1] != '\0')
			return 1;
		m = mult[u - units];
	}
	if (v > LLONG_MAX / m)
		return 2;
	*out = neg ? -v * m : v * m;
	return 0;
}

static const long long size_mult[] = {
	1LL << 10, 1LL << 10, 1LL << 20, 1LL << 20, 1LL << 30, 1LL << 30,
};
/* lower case only: "M" would be ambiguous between minutes and months */
static const long long time_mult[] = { 1, 60, 3600, 86400 };

static int
set_number(struct config *cf, const struct param *p, const char *v,
	   char *why, size_t whylen)
{
	char shown[80];
	long long n = 0;
	int rc;

	switch (p->type) {
	case P_SIZE:
		rc = parse_scaled(v, "kKmMgG", size_mult, &n);
		if (rc == 1)
			return reason(why, whylen, "%s: '%s' is not a size (use k, m, g)",
				      p->name, show(v, shown, sizeof(shown)));
		break;
	case P_TIME:
		rc = parse_scaled(v, "smhd", time_mult, &n);
		if (rc == 1)
			return reason(why, whylen, "%s: '%s' is not a time (use s, m, h, d)",
				      p->name, show(v, shown, sizeof(shown)));
		break;
	default:
		rc = parse_scaled(v, NULL, NULL, &n);
		if (rc == 1)
			return reason(why, whylen, "%s: '%s' is not a number",
				      p->name, show(v, shown, sizeof(shown)));
		break;
	}
	if (rc == 2 || n > p->max)
		return reason(why, whylen, "%s: %s is above the maximum %lld",
			      p->name, show(v, shown, sizeof(shown)), p->max);
	if (n < p->min && !(n == 0 && (p->flags & F_ZERO_OFF)))
		return reason(why, whylen, "%s: %s is below the minimum %lld%s",
			      p->name, show(v, shown, sizeof(shown)), p->min,
			      p->flags & F_ZERO_OFF ? " (0 turns it off)" : "");
	if (p->type == P_SIZE)
		*AT(cf, p->off, long long) = n;
	else
		*AT(cf, p->off, int) = (int)n;
	return 0;
}

static int
set_list(struct config *cf, const struct param *p, const char *v,
	 char *why, size_t whylen)
{
	char ***listp = AT(cf, p->off, char **);
	size_t *np = AT(cf, p->off2, size_t);
	char shown[80];
	size_t len, i;

	while (*v != '\0') {
		len = strcspn(v, " \t\r\f\v,");
		if (len > 0 && (p->flags & F_DOMAIN) && !domain_ok(v, len)) {
			char *w = xstrndup(v, len);

			reason(why, whylen, "%s: '%s' is not a domain name", p->name,
			       show(w, shown, sizeof(shown)));
			free(w);
			return -1;
		}
		if (len > 0) {
			*listp = xrealloc(*listp, (*np + 2) * sizeof(char *));
			(*listp)[*np] = xstrndup(v, len);
			for (i = 0; i < len; i++)
				if ((*listp)[*np][i] >= 'A' && (*listp)[*np][i] <= 'Z')
					(*listp)[*np][i] += 'a' - 'A';
			(*np)++;
			(*listp)[*np] = NULL;
		}
		v += len;
		v += strspn(v, " \t\r\f\v,");
	}
	/* an explicitly empty list is still a valid NULL-terminated list */
	if (*listp == NULL)
		*listp = xcalloc(1, sizeof(char *));
	return 0;
}

static int
set_enum(struct config *cf, const struct param *p, const char *v,
	 char *why, size_t whylen)
{
	char shown[80], all[128] = "";
	int i;

	for (i = 0; p->names[i] != NULL; i++)
		if (strcmp(v, p->names[i]) == 0) {
			*AT(cf, p->off, int) = i;
			return 0;
		}
	for (i = 0; p->names[i] != NULL; i++)
		snprintf(all + strlen(all), sizeof(all) - strlen(all), "%s%s",
			 i ? " or " : "", p->names[i]);
	return reason(why, whylen, "%s: '%s' is not %s", p->name,
		      show(v, shown, sizeof(shown)), all);
}

/* A milter list (smtpd_milters, milters=) the client can use: 0, or -1
 * with why naming the key. */
static int
check_milter_list(const char *key, const char *v, char *why, size_t whylen)
{
	struct milter_spec *specs;
	char msg[256];
	size_t n;

	if (milter_specs_parse(v, &specs, &n, msg, sizeof(msg)) < 0)
		return reason(why, whylen, "%s: %s", key, msg);
	milter_specs_free(specs, n);
	return 0;
}

/* "HOST:PORT [ROLE]": HOST is dotted IPv4 or [IPv6], stored canonical and
 * without brackets so that two spellings of one address are caught as a
 * repeat here rather than as EADDRINUSE at bind time. */
static int
set_listen(struct config *cf, const struct param *p, const char *v,
	   char *why, size_t whylen)
{
	struct listen_spec **lp = AT(cf, p->off, struct listen_spec *);
	size_t *np = AT(cf, p->off2, size_t);
	char buf[CONF_LINE_MAX + 1], shown[80], host[INET6_ADDRSTRLEN];
	unsigned char bin[16];
	char *addr, *role, *port, *end, *h, *opt, *save;
	const char *milters = NULL;
	int af;
	long long pn;
	enum listen_role r = ROLE_MX;
	bool proxy = false, proxy_seen = false;
	size_t i;

	snprintf(buf, sizeof(buf), "%s", v);
	addr = buf;
	role = addr + strcspn(addr, " \t");
	if (*role != '\0') {
		*role++ = '\0';
		role = trim(role);
	}
	/* options after the role (a first word with '=' is an option, the
	 * role then mx): proxy=yes|no, milters=LIST; any other is refused,
	 * never ignored */
	end = strpbrk(role, " \t");
	if (strchr(role, '=') != NULL && (end == NULL || strchr(role, '=') < end)) {
		end = role;
		role = "";
	} else if (end != NULL) {
		*end++ = '\0';
	}
	if (end != NULL) {
		for (opt = strtok_r(end, " \t", &save); opt != NULL;
		     opt = strtok_r(NULL, " \t", &save)) {
			if (strncmp(opt, "milters=", 8) == 0) {
				if (milters != NULL)
					return reason(why, whylen, "%s: listener option milters= given "
						      "twice", p->name);
				milters = opt + 8;
				if (check_milter_list("listen: milters=", milters, why, whylen) < 0)
					return -1;
				continue;
			}
			if (strncmp(opt, "proxy=", 6) != 0)
				return reason(why, whylen, "%s: listener option '%s' is not supported",
					      p->name, show(opt, shown, sizeof(shown)));
			if (proxy_seen)
				return reason(why, whylen, "%s: listener option proxy= given twice",
					      p->name);
			proxy_seen = true;
			if (strcmp(opt + 6, "yes") == 0)
				proxy = true;
			else if (strcmp(opt + 6, "no") != 0)
				return reason(why, whylen, "%s: proxy: '%s' is not yes or no", p->name,
					      show(opt + 6, shown, sizeof(shown)));
		}
	}
	if (*role == '\0' || strcmp(role, "mx") == 0)
		r = ROLE_MX;
	else if (strcmp(role, "submission") == 0)
		r = ROLE_SUBMISSION;
	else if (strcmp(role, "submissions") == 0)
		r = ROLE_SUBMISSIONS;
	else
		return reason(why, whylen, "%s: role '%s' is not mx, submission or submissions",
			      p->name, show(role, shown, sizeof(shown)));

	if (addr[0] == '[') {
		af = AF_INET6;
		h = addr + 1;
		if ((end = strchr(h, ']')) == NULL || end[1] != ':')
			return reason(why, whylen, "%s: '%s' is not HOST:PORT or [IPv6]:PORT",
				      p->name, show(addr, shown, sizeof(shown)));
		*end = '\0';
		port = end + 2;
	} else {
		af = AF_INET;
		h = addr;
		if ((end = strchr(h, ':')) == NULL)
			return reason(why, whylen, "%s: '%s' is not HOST:PORT or [IPv6]:PORT",
				      p->name, show(addr, shown, sizeof(shown)));
		*end = '\0';
		port = end + 1;
	}
	if (inet_pton(af, h, bin) != 1)
		return reason(why, whylen, "%s: '%s' is not a numeric %s address",
			      p->name, show(h, shown, sizeof(shown)),
			      af == AF_INET ? "IPv4" : "IPv6");
	if (inet_ntop(af, bin, host, sizeof(host)) == NULL)
		msg_panic("inet_ntop: %s", strerror(errno));
	if (port[0] == '+' || port[0] == '-' ||
	    parse_scaled(port, NULL, NULL, &pn) != 0 || pn < 1 || pn > 65535)
		return reason(why, whylen, "%s: port '%s' is not a number in 1..65535",
			      p->name, show(port, shown, sizeof(shown)));
	snprintf(buf, sizeof(buf), "%lld", pn);
	for (i = 0; i < *np; i++)
		if (strcmp((*lp)[i].host, host) == 0 && strcmp((*lp)[i].port, buf) == 0)
			return reason(why, whylen, "%s: %s%s%s:%s is given twice", p->name,
				      af == AF_INET6 ? "[" : "", host,
				      af == AF_INET6 ? "]" : "", buf);
	*lp = xrealloc(*lp, (*np + 1) * sizeof(**lp));
	(*lp)[*np].host = xstrdup(host);
	(*lp)[*np].port = xstrdup(buf);
	(*lp)[*np].role = r;
	(*lp)[*np].proxy = proxy;
	(*lp)[*np].milters = milters ? xstrdup(milters) : NULL;
	(*np)++;
	return 0;
}

/* Sets one parameter from its trimmed value; on error writes the reason
 * (without FILE:LINE) into why and returns -1. */
/* "ADDR[/BITS]" words: dotted IPv4 (stored mapped into IPv6, its bits
 * counted from there) or IPv6; host bits beyond the prefix are cleared. */
static int
set_nets(struct config *cf, const struct param *p, const char *v, char *why, size_t whylen)
{
	struct net **lp = AT(cf, p->off, struct net *);
	size_t *np = AT(cf, p->off2, size_t);
	char word[INET6_ADDRSTRLEN + 8], shown[80], *slash;
	struct net n;
	long long bits;
	size_t len, i;
	bool v4;

	free(*lp);
	*lp = NULL;
	*np = 0;
	while (*v != '\0') {
		len = strcspn(v, " \t\r\f\v,");
		if (len >= sizeof(word))
			len = sizeof(word) - 1;
		memcpy(word, v, len);
		word[len] = '\0';
		v += strcspn(v, " \t\r\f\v,");
		v += strspn(v, " \t\r\f\v,");
		if (len == 0)
			continue;
		memset(&n, 0, sizeof(n));
		if ((slash = strchr(word, '/')) != NULL)
			*slash++ = '\0';
		v4 = strchr(word, ':') == NULL;
		if (v4) {
			n.addr[10] = n.addr[11] = 0xff;
			if (inet_pton(AF_INET, word, n.addr + 12) != 1)
				goto bad;
		} else if (inet_pton(AF_INET6, word, n.addr) != 1)
			goto bad;
		bits = v4 ? 32 : 128;
		if (slash != NULL && (slash[0] < '0' || slash[0] > '9' ||
		    parse_scaled(slash, NULL, NULL, &bits) != 0 || bits > (v4 ? 32 : 128)))
			goto bad;
		n.bits = (unsigned)bits + (v4 ? 96 : 0);
		for (i = n.bits; i < 128; i++)
			n.addr[i / 8] &= (unsigned char)~(0x80u >> (i % 8));
		*lp = xrealloc(*lp, (*np + 1) * sizeof(**lp));
		(*lp)[(*np)++] = n;
	}
	return 0;
bad:
	if (slash != NULL)
		slash[-1] = '/';
	return reason(why, whylen, "%s: '%s' is not ADDRESS or ADDRESS/BITS", p->name,
		      show(word, shown, sizeof(shown)));
}

bool
net_list_match(const struct net *nets, size_t n, const unsigned char addr[16])
{
	size_t i, b;

	for (i = 0; i < n; i++) {
		for (b = 0; b < nets[i].bits; b++)
			if (((addr[b / 8] ^ nets[i].addr[b / 8]) & (0x80u >> (b % 8))) != 0)
				break;
		if (b == nets[i].bits)
			return true;
	}
	return false;
}

/* "stderr", "syslog", or the absolute path of a file */
static int
set_log(struct config *cf, const struct param *p, const char *v, char *why, size_t whylen)
{
	char **path = AT(cf, p->off2, char *);
	int *sink = AT(cf, p->off, int);
	char shown[80];

	free(*path);
	*path = NULL;
	if (strcmp(v, "stderr") == 0)
		*sink = LOG_SINK_STDERR;
	else if (strcmp(v, "syslog") == 0)
		*sink = LOG_SINK_SYSLOG;
	else if (v[0] == '/' && v[strlen(v) - 1] != '/') {
		*sink = LOG_SINK_FILE;
		*path = xstrdup(v);
	} else
		return reason(why, whylen, "%s: '%s' is not stderr, syslog or the absolute path "
			      "of a file", p->name, show(v, shown, sizeof(shown)));
	return 0;
}

/* HOST:PORT with a numeric host, [IPv6]:PORT, or a PORT alone (then on
 * 127.0.0.1: a metrics endpoint is private unless said otherwise) */
static int
set_hostport(struct config *cf, const struct param *p, const char *v, char *why, size_t whylen)
{
	struct hostport *hp = AT(cf, p->off, struct hostport);
	char buf[CONF_LINE_MAX + 1], shown[80], host[INET6_ADDRSTRLEN];
	unsigned char bin[16];
	char *h = NULL, *port, *end;
	long long pn;
	int af = AF_INET;

	snprintf(buf, sizeof(buf), "%s", v);
	if (buf[0] == '[') {
		af = AF_INET6;
		h = buf + 1;
		if ((end = strchr(h, ']')) == NULL || end[1] != ':')
			goto bad;
		*end = '\0';
		port = end + 2;
	} else if ((end = strrchr(buf, ':')) != NULL) {
		h = buf;
		*end = '\0';
		port = end + 1;
	} else {
		port = buf;
	}
	if (h != NULL && inet_pton(af, h, bin) != 1)
		return reason(why, whylen, "%s: '%s' is not a numeric %s address", p->name,
			      show(h, shown, sizeof(shown)), af == AF_INET ? "IPv4" : "IPv6");
	if (port[0] < '0' || port[0] > '9' || parse_scaled(port, NULL, NULL, &pn) != 0 ||
	    pn < 1 || pn > 65535)
		return reason(why, whylen, "%s: port '%s' is not a number in 1..65535", p->name,
			      show(port, shown, sizeof(shown)));
	if (h == NULL)
		snprintf(host, sizeof(host), "127.0.0.1");
	else if (inet_ntop(af, bin, host, sizeof(host)) == NULL)
		msg_panic("inet_ntop: %s", strerror(errno));
	free(hp->host);
	free(hp->port);
	hp->host = xstrdup(host);
	hp->port = xasprintf("%lld", pn);
	return 0;
bad:
	return reason(why, whylen, "%s: '%s' is not HOST:PORT, [IPv6]:PORT or PORT", p->name,
		      show(v, shown, sizeof(shown)));
}

static int
set_param(struct config *cf, const struct param *p, const char *v,
	  char *why, size_t whylen)
{
	char **sp;

	/* only a string or a list can be meaningfully empty */
	if (*v == '\0' && ((p->flags & F_NONEMPTY) ||
	    (p->type != P_STR && p->type != P_LIST)))
		return reason(why, whylen, "%s: missing value", p->name);
	switch (p->type) {
	case P_STR:
		if (*v && (p->flags & F_DOMAIN) && !domain_ok(v, strlen(v))) {
			char shown[80];

			return reason(why, whylen, "%s: '%s' is not a domain name",
				      p->name, show(v, shown, sizeof(shown)));
		}
		sp = AT(cf, p->off, char *);
		free(*sp);
		*sp = *v ? xstrdup(v) : NULL;
		return 0;
	case P_INT:
	case P_SIZE:
	case P_TIME:
		return set_number(cf, p, v, why, whylen);
	case P_LIST:
		return set_list(cf, p, v, why, whylen);
	case P_ENUM:
		return set_enum(cf, p, v, why, whylen);
	case P_LISTEN:
		return set_listen(cf, p, v, why, whylen);
	case P_NETS:
		return set_nets(cf, p, v, why, whylen);
	case P_LOG:
		return set_log(cf, p, v, why, whylen);
	case P_HOSTPORT:
		return set_hostport(cf, p, v, why, whylen);
	}
	msg_panic("config: parameter %s has unknown type %d", p->name, (int)p->type);
}

static const struct param *
find_param(const char *name)
{
	size_t i;

	for (i = 0; i < NPARAMS; i++)
		if (strcmp(params[i].name, name) == 0)
			return &params[i];
	return NULL;
}

static void
system_hostname(char *buf, size_t buflen)
{
	if (gethostname(buf, buflen) < 0)
		buf[0] = '\0';
	buf[buflen - 1] = '\0';
	if (!domain_ok(buf, strlen(buf)))
		snprintf(buf, buflen, "localhost");
}

/* The defaults go through the same setters as the file, so that a bad
 * default in the table is caught by the first test that loads one. */
static void
apply_defaults(struct config *cf, const bool *seen)
{
	char host[256], why[256];
	const char *v;
	size_t i;
	int ncpu;

	for (i = 0; i < NPARAMS; i++) {
		const struct param *p = &params[i];

		if (seen[i])
			continue;
		v = p->def;
		if (p->flags & F_DEF_HOST) {
			if (cf->hostname != NULL) {
				v = cf->hostname;
			} else {
				system_hostname(host, sizeof(host));
				v = host;
			}
		}
		if (v != NULL && set_param(cf, p, v, why, sizeof(why)) < 0)
			msg_panic("config: bad built-in default: %s", why);
	}
	if (cf->workers == 0) {
		/* "one per core", capped by the table's own bound */
		ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
		cf->workers = ncpu < 1 ? 1 : ncpu;
		if (cf->workers > find_param("workers")->max)
			cf->workers = (int)find_param("workers")->max;
	}
}

/* A submission listener that could never log anyone in is refused where it
 * is declared. Returns that line, or 0. */
static unsigned
check_listeners(const struct config *cf, char *why, size_t whylen)
{
	size_t i;

	for (i = 0; i < cf->nlisten; i++) {
		const struct listen_spec *l = &cf->listen[i];

		if (l->proxy && cf->nproxy_networks == 0) {
			snprintf(why, whylen, "listen: proxy=yes needs proxy_networks, the proxies "
				 "allowed to send the header");
			return l->line ? l->line : 1;
		}
		if (l->role == ROLE_MX)
			continue;
		if (cf->tls_cert_file == NULL || cf->tls_key_file == NULL || cf->auth_map == NULL) {
			snprintf(why, whylen, "listen: role %s needs tls_cert_file, tls_key_file "
				 "and auth_map", l->role == ROLE_SUBMISSION ? "submission" : "submissions");
			return l->line ? l->line : 1;
		}
	}
	return 0;
}

/* smtpd_milters and the macro lists, where they are set. Returns that
 * line (1 for a bad default), or 0. */
static unsigned
check_milters(const struct config *cf, char *why, size_t whylen)
{
	static const char *const lists[] = {
		"milter_connect_macros", "milter_helo_macros", "milter_mail_macros",
		"milter_rcpt_macros", "milter_data_macros", "milter_end_of_header_macros",
		"milter_end_of_data_macros",
	};
	const struct param *p;
	char msg[256];
	size_t i;

	p = find_param("smtpd_milters");
	if (check_milter_list(p->name, cf->smtpd_milters, why, whylen) < 0)
		return cf->lines[p - params] ? cf->lines[p - params] : 1;
	for (i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
		p = find_param(lists[i]);
		if (milter_macros_check(*AT(cf, p->off, char *), msg, sizeof(msg)) < 0) {
			snprintf(why, whylen, "%s: %s", p->name, msg);
			return cf->lines[p - params] ? cf->lines[p - params] : 1;
		}
	}
	return 0;
}

static void
set_err(char *err, size_t errlen, const char *name, unsigned line, const char *why)
{
	if (err == NULL || errlen == 0)
		return;
	if (line)
		snprintf(err, errlen, "%s:%u: %s", name, line, why);
	else
		snprintf(err, errlen, "%s: %s", name, why);
}

struct config *
config_parse(const char *name, const char *text, size_t len,
	     char *err, size_t errlen)
{
	struct config *cf = xcalloc(1, sizeof(*cf));
	const char *where = name ? name : "(config)";
	const char *p = text, *end = text + len, *nl;
	char buf[CONF_LINE_MAX + 1], why[512], shown[80];
	char *line, *key, *val, *eq;
	const struct param *pm;
	bool seen[NPARAMS] = { false };
	unsigned lineno = 0;
	size_t n;

	if (err && errlen)
		err[0] = '\0';
	cf->file = name ? xstrdup(name) : NULL;
	cf->lines = xcalloc(NPARAMS, sizeof(*cf->lines));
	while (p < end) {
		lineno++;
		nl = memchr(p, '\n', (size_t)(end - p));
		n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		if (n > CONF_LINE_MAX) {
			snprintf(why, sizeof(why), "line is longer than %d bytes", CONF_LINE_MAX);
			goto fail;
		}
		if (memchr(p, '\0', n) != NULL) {
			snprintf(why, sizeof(why), "line contains a NUL byte");
			goto fail;
		}
		memcpy(buf, p, n);
		buf[n] = '\0';
		p = nl ? nl + 1 : end;

		/* '#' ends the line even inside a value: no quoting exists */
		if ((line = strchr(buf, '#')) != NULL)
			*line = '\0';
		line = trim(buf);
		if (*line == '\0')
			continue;
		if ((eq = strchr(line, '=')) == NULL) {
			snprintf(why, sizeof(why), "missing '='");
			goto fail;
		}
		*eq = '\0';
		key = trim(line);
		val = trim(eq + 1);
		if (*key == '\0') {
			snprintf(why, sizeof(why), "missing parameter name before '='");
			goto fail;
		}
		if ((pm = find_param(key)) == NULL) {
			snprintf(why, sizeof(why), "unknown parameter '%s'",
				 show(key, shown, sizeof(shown)));
			goto fail;
		}
		if (seen[pm - params] && !(pm->flags & F_REPEAT)) {
			snprintf(why, sizeof(why), "duplicate parameter '%s'", pm->name);
			goto fail;
		}
		seen[pm - params] = true;
		cf->lines[pm - params] = lineno;
		if (set_param(cf, pm, val, why, sizeof(why)) < 0)
			goto fail;
		if (pm->type == P_LISTEN)
			cf->listen[cf->nlisten - 1].line = lineno;
	}
	apply_defaults(cf, seen);
	if ((lineno = check_listeners(cf, why, sizeof(why))) != 0)
		goto fail;
	if ((lineno = check_milters(cf, why, sizeof(why))) != 0)
		goto fail;
	return cf;

fail:
	set_err(err, errlen, where, lineno, why);
	config_free(cf);
	return NULL;
}

struct config *
config_load(const char *path, char *err, size_t errlen)
{
	struct config *cf;
	struct dstr text;
	char chunk[65536], why[256];
	ssize_t r;
	int fd;

	if (path == NULL)
		return config_parse(NULL, "", 0, err, errlen);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		snprintf(why, sizeof(why), "cannot read: %s", strerror(errno));
		set_err(err, errlen, path, 0, why);
		return NULL;
	}
	dstr_init(&text, CONF_FILE_MAX);
	for (;;) {
		r = read(fd, chunk, sizeof(chunk));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(why, sizeof(why), "cannot read: %s", strerror(errno));
			goto fail;
		}
		if (r == 0)
			break;
		if (dstr_append(&text, chunk, (size_t)r) < 0) {
			snprintf(why, sizeof(why), "cannot read: larger than %d bytes",
				 CONF_FILE_MAX);
			goto fail;
		}
	}
	close(fd);
	cf = config_parse(path, text.s ? text.s : "", text.len, err, errlen);
	dstr_free(&text);
	return cf;

fail:
	set_err(err, errlen, path, 0, why);
	close(fd);
	dstr_free(&text);
	return NULL;
}

void
config_free(struct config *cf)
{
	size_t i;

	if (cf == NULL)
		return;
	for (i = 0; i < NPARAMS; i++) {
		const struct param *p = &params[i];

		switch (p->type) {
		case P_STR:
			free(*AT(cf, p->off, char *));
			break;
		case P_LIST: {
			char **l = *AT(cf, p->off, char **);
			size_t j, n = *AT(cf, p->off2, size_t);

			for (j = 0; j < n; j++)
				free(l[j]);
			free(l);
			break;
		}
		case P_NETS:
			free(*AT(cf, p->off, struct net *));
			break;
		case P_LOG:
			free(*AT(cf, p->off2, char *));
			break;
		case P_HOSTPORT:
			free(AT(cf, p->off, struct hostport)->host);
			free(AT(cf, p->off, struct hostport)->port);
			break;
		case P_LISTEN: {
			struct listen_spec *l = *AT(cf, p->off, struct listen_spec *);
			size_t j, n = *AT(cf, p->off2, size_t);

			for (j = 0; j < n; j++) {
				free(l[j].host);
				free(l[j].port);
				free(l[j].milters);
			}
			free(l);
			break;
		}
		default:
			break;
		}
	}
	free(cf->lines);
	free(cf->file);
	free(cf);
}

/*
 * What one smtpd worker may hold open at once. smtpd_max_sessions counts
 * every worker together, but nothing stops one worker from taking them
 * all, so each must fit all of them: per session its client's socket and
 * one more (a map connection, the socket of a lookup), plus one per milter
 * of the listener with the most; per I/O thread the queue file of a commit
 * under way; and a fixed part: stdio, the listeners, the event loop's
 * epoll and notify descriptors, the master's pipe, the wake-up socket,
 * spool folders, map files, the log. A worker at rest uses about 15; the
 * fixed part leaves room for maps, LDAP and TLS files on top.
 */
#define FDS_PER_SESSION 2
#define FDS_FIXED 64

static size_t
milter_count(const char *list)
{
	struct milter_spec *v;
	char why[256];
	size_t n;

	if (milter_specs_parse(list, &v, &n, why, sizeof(why)) < 0)
		return 0;
	milter_specs_free(v, n);
	return n;
}

long long
config_fd_need(const struct config *cf)
{
	size_t i, n, most = 0;

	for (i = 0; i < cf->nlisten; i++) {
		n = milter_count(cf->listen[i].milters ? cf->listen[i].milters : cf->smtpd_milters);
		if (n > most)
			most = n;
	}
	return (long long)cf->smtpd_max_sessions * (FDS_PER_SESSION + (long long)most) +
	       cf->io_threads + (long long)cf->nlisten + FDS_FIXED;
}

const char *
config_where(const struct config *cf, const char *key, char *buf, size_t len)
{
	const struct param *p = find_param(key);
	const char *file = cf->file ? cf->file : "(config)";

	if (p == NULL)
		msg_panic("config_where: no parameter %s", key);
	if (cf->lines != NULL && cf->lines[p - params] != 0)
		snprintf(buf, len, "%s:%u", file, cf->lines[p - params]);
	else
		snprintf(buf, len, "%s", file);
	return buf;
}

int
config_syslog_facility(const struct config *cf)
{
	return syslog_facility_codes[cf->syslog_facility];
}

const char *
config_key(size_t i)
{
	return i < NPARAMS ? params[i].name : NULL;
}

const char *
config_key_default(size_t i)
{
	return i < NPARAMS && !(params[i].flags & F_DEF_HOST) ? params[i].def : NULL;
}

bool
config_is_local_domain(const struct config *cf, const char *domain)
{
	size_t i;

	if (cf == NULL || domain == NULL || cf->local_domains == NULL)
		return false;
	for (i = 0; i < cf->nlocal_domains; i++)
		if (strcasecmp(cf->local_domains[i], domain) == 0)
			return true;
	return false;
}
