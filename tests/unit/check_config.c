/*
 * check_config.c - unit tests for the configuration parser (lib/config.c):
 * defaults, every parameter type with its suffixes and bounds, listen
 * forms, comments, and the exact "FILE:LINE: reason" of each error.
 */
#include "config.h"

#include <check.h>
#include <syslog.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/lib.h"

#define S(x) x, sizeof(x) - 1

static struct config *
parse(const char *text, char *err, size_t errlen)
{
	return config_parse("t.conf", text, strlen(text), err, errlen);
}

static int
expected_workers(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > CONFIG_WORKERS_MAX ? CONFIG_WORKERS_MAX : (int)n;
}

START_TEST(test_defaults)
{
	char err[256] = "untouched", host[256] = "";
	struct config *cf = config_load(NULL, err, sizeof(err));
	size_t i;

	ck_assert_ptr_nonnull(cf);
	ck_assert_ptr_null(cf->file);
	if (gethostname(host, sizeof(host)) < 0 || host[0] == '\0')
		strcpy(host, "localhost");
	ck_assert_str_eq(cf->hostname, host);
	ck_assert_str_eq(cf->spool_dir, "/var/spool/sorter");
	ck_assert_str_eq(cf->user, "sorter");
	ck_assert_uint_eq(cf->nlisten, 1);
	ck_assert_str_eq(cf->listen[0].host, "0.0.0.0");
	ck_assert_str_eq(cf->listen[0].port, "25");
	ck_assert_int_eq(cf->listen[0].role, ROLE_MX);
	ck_assert_uint_eq(cf->nlocal_domains, 1);
	for (i = 0; host[i]; i++)
		host[i] = (char)tolower((unsigned char)host[i]);
	ck_assert_str_eq(cf->local_domains[0], host);
	ck_assert_ptr_null(cf->local_domains[1]);
	ck_assert(config_is_local_domain(cf, cf->hostname));
	ck_assert_ptr_null(cf->alias_map);
	ck_assert_ptr_null(cf->user_map);
	ck_assert_ptr_null(cf->node_map);
	ck_assert_ptr_null(cf->failover_node);
	ck_assert_ptr_null(cf->relay_host);
	ck_assert_ptr_null(cf->dns_servers);
	ck_assert_ptr_null(cf->tls_cert_file);
	ck_assert_ptr_null(cf->tls_key_file);
	ck_assert_ptr_null(cf->auth_map);
	ck_assert_ptr_null(cf->recipient_delimiter);
	ck_assert_int_eq(cf->smtp_port, 25);
	ck_assert_int_eq(cf->smtp_line_length_limit, 998);
	ck_assert_int_eq(cf->message_size_limit, 10240000);
	ck_assert_int_eq(cf->log, LOG_SINK_STDERR);
	ck_assert_int_eq(cf->workers, expected_workers());
	ck_assert_int_eq(cf->io_threads, 16);
	ck_assert_int_eq(cf->smtpd_max_sessions, 100);
	ck_assert_int_eq(cf->smtpd_client_connection_limit, 50);
	ck_assert_int_eq(cf->smtpd_recipient_limit, 1000);
	ck_assert_int_eq(cf->smtpd_line_limit, 2048);
	ck_assert_int_eq(cf->smtpd_timeout, 300);
	ck_assert_int_eq(cf->smtpd_data_timeout, 300);
	ck_assert_int_eq(cf->smtpd_hard_error_limit, 20);
	ck_assert_int_eq(cf->queue_minfree, 52428800);
	config_free(cf);

	/* an empty file or one of comments gives the same defaults */
	cf = parse("# nothing\n\n   \t\n  # indented comment\n", err, sizeof(err));
	ck_assert_ptr_nonnull(cf);
	ck_assert_str_eq(cf->file, "t.conf");
	ck_assert_int_eq(cf->smtpd_timeout, 300);
	ck_assert_uint_eq(cf->nlisten, 1);
	config_free(cf);
}
END_TEST

/* ---- numbers: int, size, time ---- */

struct numcase {
	const char *text;
	size_t off;		/* field in struct config */
	bool is_llong;		/* long long field, else int */
	long long want;
};

#define INTF(f) offsetof(struct config, f), false
#define LLF(f) offsetof(struct config, f), true

static const struct numcase numcases[] = {
	{ "smtp_port = 2525", INTF(smtp_port), 2525 },
	{ "smtp_port = 1", INTF(smtp_port), 1 },
	{ "smtp_port = 65535", INTF(smtp_port), 65535 },
	{ "smtp_port = +7", INTF(smtp_port), 7 },
	{ "smtp_line_length_limit = 0", INTF(smtp_line_length_limit), 0 },
	{ "smtp_line_length_limit = 80", INTF(smtp_line_length_limit), 80 },
	{ "workers = 3", INTF(workers), 3 },
	{ "workers = 15", INTF(workers), 15 },
	{ "io_threads = 256", INTF(io_threads), 256 },
	{ "smtpd_max_sessions = 100000", INTF(smtpd_max_sessions), 100000 },
	{ "smtpd_client_connection_limit = 1", INTF(smtpd_client_connection_limit), 1 },
	{ "smtpd_recipient_limit = 5", INTF(smtpd_recipient_limit), 5 },
	{ "smtpd_line_limit = 512", INTF(smtpd_line_limit), 512 },
	{ "smtpd_hard_error_limit = 1000", INTF(smtpd_hard_error_limit), 1000 },
	{ "message_size_limit = 1024", LLF(message_size_limit), 1024 },
	{ "message_size_limit = 1k", LLF(message_size_limit), 1024 },
	{ "message_size_limit = 2K", LLF(message_size_limit), 2048 },
	{ "message_size_limit = 25m", LLF(message_size_limit), 25LL << 20 },
	{ "message_size_limit = 25M", LLF(message_size_limit), 25LL << 20 },
	{ "message_size_limit = 1g", LLF(message_size_limit), 1LL << 30 },
	{ "message_size_limit = 1G", LLF(message_size_limit), 1LL << 30 },
	{ "message_size_limit = 2147483647", LLF(message_size_limit), 2147483647LL },
	{ "queue_minfree = 0", LLF(queue_minfree), 0 },
	{ "queue_minfree = 1048576g", LLF(queue_minfree), 1LL << 50 },
	{ "queue_minfree = 100m", LLF(queue_minfree), 100LL << 20 },
	{ "smtpd_timeout = 1", INTF(smtpd_timeout), 1 },
	{ "smtpd_timeout = 45s", INTF(smtpd_timeout), 45 },
	{ "smtpd_timeout = 5m", INTF(smtpd_timeout), 300 },
	{ "smtpd_timeout = 1h", INTF(smtpd_timeout), 3600 },
	{ "smtpd_data_timeout = 10m", INTF(smtpd_data_timeout), 600 },
	{ "smtpd_data_timeout=3600s", INTF(smtpd_data_timeout), 3600 },
	{ "  smtpd_timeout\t=\t2m  # two minutes", INTF(smtpd_timeout), 120 },
};

START_TEST(test_numbers)
{
	const struct numcase *c = &numcases[_i];
	char err[256] = "";
	struct config *cf = parse(c->text, err, sizeof(err));
	long long got;

	ck_assert_msg(cf != NULL, "%s: %s", c->text, err);
	got = c->is_llong ? *(long long *)(void *)((char *)cf + c->off)
			  : *(int *)(void *)((char *)cf + c->off);
	ck_assert_msg(got == c->want, "%s: got %lld, want %lld", c->text, got, c->want);
	config_free(cf);
}
END_TEST

/* ---- errors: the exact message, FILE:LINE first ---- */

struct errcase {
	const char *text;
	const char *err;
};

static const struct errcase errcases[] = {
	{ "# comment\nhostnme = x\n", "t.conf:2: unknown parameter 'hostnme'" },
	{ "Hostname = x", "t.conf:1: unknown parameter 'Hostname'" },
	{ "\n\nhostname x\n", "t.conf:3: missing '='" },
	{ "hostname # = x\n", "t.conf:1: missing '='" },
	{ " = x\n", "t.conf:1: missing parameter name before '='" },
	{ "hostname = a\nhostname = b\n", "t.conf:2: duplicate parameter 'hostname'" },
	{ "smtpd_timeout = 1\nsmtpd_timeout = 1\n", "t.conf:2: duplicate parameter 'smtpd_timeout'" },
	{ "local_domains = a\nlocal_domains = b\n", "t.conf:2: duplicate parameter 'local_domains'" },
	{ "hostname =\n", "t.conf:1: hostname: missing value" },
	{ "hostname = mx 1\n", "t.conf:1: hostname: 'mx 1' is not a domain name" },
	{ "hostname = a,b\n", "t.conf:1: hostname: 'a,b' is not a domain name" },
	{ "hostname = mx\xc3\xa9\n", "t.conf:1: hostname: 'mx?" "?' is not a domain name" },
	{ "local_domains = ok.test bad/x\n", "t.conf:1: local_domains: 'bad/x' is not a domain name" },
	{ "spool_dir = # none\n", "t.conf:1: spool_dir: missing value" },
	{ "user=", "t.conf:1: user: missing value" },
	{ "smtp_port =", "t.conf:1: smtp_port: missing value" },
	{ "smtp_port = 0", "t.conf:1: smtp_port: 0 is below the minimum 1" },
	{ "smtp_line_length_limit = 79",
	  "t.conf:1: smtp_line_length_limit: 79 is below the minimum 80 (0 turns it off)" },
	{ "smtp_line_length_limit = -1",
	  "t.conf:1: smtp_line_length_limit: -1 is below the minimum 80 (0 turns it off)" },
	{ "smtp_port = 65536", "t.conf:1: smtp_port: 65536 is above the maximum 65535" },
	{ "smtp_port = 25x", "t.conf:1: smtp_port: '25x' is not a number" },
	{ "smtp_port = x", "t.conf:1: smtp_port: 'x' is not a number" },
	{ "smtp_port = 2 5", "t.conf:1: smtp_port: '2 5' is not a number" },
	{ "smtp_port = 25k", "t.conf:1: smtp_port: '25k' is not a number" },
	{ "smtp_port = -", "t.conf:1: smtp_port: '-' is not a number" },
	{ "smtp_port = 99999999999999999999999",
	  "t.conf:1: smtp_port: 99999999999999999999999 is above the maximum 65535" },
	{ "workers = -1", "t.conf:1: workers: -1 is below the minimum 0" },
	{ "workers = 16", "t.conf:1: workers: 16 is above the maximum 15" },
	{ "workers = 64", "t.conf:1: workers: 64 is above the maximum 15" },
	{ "io_threads = 0", "t.conf:1: io_threads: 0 is below the minimum 1" },
	{ "io_threads = 257", "t.conf:1: io_threads: 257 is above the maximum 256" },
	{ "\n\n\nsmtpd_recipient_limit = 0", "t.conf:4: smtpd_recipient_limit: 0 is below the minimum 1" },
	{ "smtpd_max_sessions = 100001",
	  "t.conf:1: smtpd_max_sessions: 100001 is above the maximum 100000" },
	{ "smtpd_client_connection_limit = 0",
	  "t.conf:1: smtpd_client_connection_limit: 0 is below the minimum 1" },
	{ "smtpd_line_limit = 511", "t.conf:1: smtpd_line_limit: 511 is below the minimum 512" },
	{ "smtpd_line_limit = 65537", "t.conf:1: smtpd_line_limit: 65537 is above the maximum 65536" },
	{ "smtpd_hard_error_limit = 0", "t.conf:1: smtpd_hard_error_limit: 0 is below the minimum 1" },
	{ "message_size_limit = 1023", "t.conf:1: message_size_limit: 1023 is below the minimum 1024" },
	{ "message_size_limit = 2g",
	  "t.conf:1: message_size_limit: 2g is above the maximum 2147483647" },
	{ "message_size_limit = 10x",
	  "t.conf:1: message_size_limit: '10x' is not a size (use k, m, g)" },
	{ "message_size_limit = 10kb",
	  "t.conf:1: message_size_limit: '10kb' is not a size (use k, m, g)" },
	{ "message_size_limit = k", "t.conf:1: message_size_limit: 'k' is not a size (use k, m, g)" },
	{ "queue_minfree = 1048577g",
	  "t.conf:1: queue_minfree: 1048577g is above the maximum 1125899906842624" },
	{ "queue_minfree = 9999999999999999999g",
	  "t.conf:1: queue_minfree: 9999999999999999999g is above the maximum 1125899906842624" },
	{ "\n\n\n\n\n\n\n\nsmtpd_timeout = 5x",
	  "t.conf:9: smtpd_timeout: '5x' is not a time (use s, m, h, d)" },
	{ "smtpd_timeout = 5M", "t.conf:1: smtpd_timeout: '5M' is not a time (use s, m, h, d)" },
	{ "smtpd_timeout = 1d", "t.conf:1: smtpd_timeout: 1d is above the maximum 3600" },
	{ "smtpd_timeout = 0s", "t.conf:1: smtpd_timeout: 0s is below the minimum 1" },
	{ "smtpd_data_timeout = 61m", "t.conf:1: smtpd_data_timeout: 61m is above the maximum 3600" },
	{ "log = file", "t.conf:1: log: 'file' is not stderr, syslog or the absolute path of a file" },
	{ "log = Syslog",
	  "t.conf:1: log: 'Syslog' is not stderr, syslog or the absolute path of a file" },
	{ "log = /var/log/", "t.conf:1: log: '/var/log/' is not stderr, syslog or the absolute path "
	  "of a file" },
	{ "syslog_facility = local8",
	  "t.conf:1: syslog_facility: 'local8' is not mail or daemon or user or local0 or local1 or "
	  "local2 or local3 or local4 or local5 or local6 or local7" },
	{ "syslog_socket =", "t.conf:1: syslog_socket: missing value" },
	{ "log =", "t.conf:1: log: missing value" },
	{ "listen =", "t.conf:1: listen: missing value" },
	{ "listen = 127.0.0.1", "t.conf:1: listen: '127.0.0.1' is not HOST:PORT or [IPv6]:PORT" },
	{ "listen = [::1]", "t.conf:1: listen: '[::1]' is not HOST:PORT or [IPv6]:PORT" },
	{ "listen = [::1:25", "t.conf:1: listen: '[::1:25' is not HOST:PORT or [IPv6]:PORT" },
	{ "listen = localhost:25", "t.conf:1: listen: 'localhost' is not a numeric IPv4 address" },
	{ "listen = 127.0.0.256:25", "t.conf:1: listen: '127.0.0.256' is not a numeric IPv4 address" },
	{ "listen = ::1:25", "t.conf:1: listen: '' is not a numeric IPv4 address" },
	{ "listen = [127.0.0.1]:25", "t.conf:1: listen: '127.0.0.1' is not a numeric IPv6 address" },
	{ "listen = [::g]:25", "t.conf:1: listen: '::g' is not a numeric IPv6 address" },
	{ "listen = 127.0.0.1:0", "t.conf:1: listen: port '0' is not a number in 1..65535" },
	{ "listen = 127.0.0.1:65536", "t.conf:1: listen: port '65536' is not a number in 1..65535" },
	{ "listen = 127.0.0.1:", "t.conf:1: listen: port '' is not a number in 1..65535" },
	{ "listen = 127.0.0.1:smtp", "t.conf:1: listen: port 'smtp' is not a number in 1..65535" },
	{ "listen = 127.0.0.1:+25", "t.conf:1: listen: port '+25' is not a number in 1..65535" },
	{ "listen = [::1]:-1", "t.conf:1: listen: port '-1' is not a number in 1..65535" },
	{ "listen = 127.0.0.1:25 relay", "t.conf:1: listen: role 'relay' is not mx, submission or submissions" },
	{ "listen = 127.0.0.1:25 MX", "t.conf:1: listen: role 'MX' is not mx, submission or submissions" },
	{ "listen = 127.0.0.1:25 mx extra",
	  "t.conf:1: listen: listener option 'extra' is not supported" },
	/* features that do not exist yet are refused, never silently accepted */
	{ "listen = 127.0.0.1:25 mx proxy=yes milters=x",
	  "t.conf:1: listen: milters=: milter 'x' is not inet:HOST:PORT, inet6:[ADDRESS]:PORT or "
	  "unix:PATH" },
	/* PROXY protocol: only from proxy_networks, so those must be given */
	{ "listen = 127.0.0.1:25 mx proxy=yes",
	  "t.conf:1: listen: proxy=yes needs proxy_networks, the proxies allowed to send the header" },
	{ "listen = 127.0.0.1:25 mx proxy=YES",
	  "t.conf:1: listen: proxy: 'YES' is not yes or no" },
	{ "listen = 127.0.0.1:25 mx proxy=yes proxy=no",
	  "t.conf:1: listen: listener option proxy= given twice" },
	{ "listen = 127.0.0.1:25 mx proxy",
	  "t.conf:1: listen: listener option 'proxy' is not supported" },
	{ "proxy_networks = 127.0.0.1/33", "t.conf:1: proxy_networks: '127.0.0.1/33' is not ADDRESS "
	  "or ADDRESS/BITS" },
	{ "smtpd_proxy_timeout = 0", "t.conf:1: smtpd_proxy_timeout: 0 is below the minimum 1" },
	{ "metrics_listen = localhost:9155",
	  "t.conf:1: metrics_listen: 'localhost' is not a numeric IPv4 address" },
	{ "metrics_listen = 127.0.0.1:0",
	  "t.conf:1: metrics_listen: port '0' is not a number in 1..65535" },
	{ "metrics_listen = 127.0.0.1:http",
	  "t.conf:1: metrics_listen: port 'http' is not a number in 1..65535" },
	{ "metrics_listen = [::1",
	  "t.conf:1: metrics_listen: '[::1' is not HOST:PORT, [IPv6]:PORT or PORT" },
	{ "metrics_listen =", "t.conf:1: metrics_listen: missing value" },
	{ "listen = 127.0.0.1:25 mx milters=unix:/m proxy=maybe",
	  "t.conf:1: listen: proxy: 'maybe' is not yes or no" },
	{ "listen = 127.0.0.1:25 mx milters=unix:/m other=1",
	  "t.conf:1: listen: listener option 'other=1' is not supported" },
	/* milters: endpoints the client can connect to without a lookup */
	{ "listen = 127.0.0.1:25 mx milters=inet:127.0.0.1:1 milters=unix:/m",
	  "t.conf:1: listen: listener option milters= given twice" },
	{ "listen = 127.0.0.1:25 mx milters=inet:localhost:8891",
	  "t.conf:1: listen: milters=: milter 'inet:localhost:8891': the host must be a numeric "
	  "address" },
	{ "\nsmtpd_milters = inet:localhost:8891",
	  "t.conf:2: smtpd_milters: milter 'inet:localhost:8891': the host must be a numeric "
	  "address" },
	{ "smtpd_milters = inet:127.0.0.1", "t.conf:1: smtpd_milters: milter 'inet:127.0.0.1' is "
	  "not inet:HOST:PORT" },
	{ "smtpd_milters = inet:127.0.0.1:0", "t.conf:1: smtpd_milters: milter 'inet:127.0.0.1:0': "
	  "the port is not a number in 1..65535" },
	{ "smtpd_milters = inet:[::1:25", "t.conf:1: smtpd_milters: milter 'inet:[::1:25' is not "
	  "inet:[ADDRESS]:PORT" },
	{ "smtpd_milters = inet6:127.0.0.1:25", "t.conf:1: smtpd_milters: milter "
	  "'inet6:127.0.0.1:25': the host must be a numeric address" },
	{ "smtpd_milters = unix:milter.sock", "t.conf:1: smtpd_milters: milter 'unix:milter.sock': "
	  "the socket path must be absolute" },
	{ "smtpd_milters = tcp:1.2.3.4:5", "t.conf:1: smtpd_milters: milter 'tcp:1.2.3.4:5' is not "
	  "inet:HOST:PORT, inet6:[ADDRESS]:PORT or unix:PATH" },
	{ "smtpd_milters = { inet:127.0.0.1:1, default_action=bounce }", "t.conf:1: smtpd_milters: "
	  "milter option 'default_action=bounce': not tempfail, accept or reject" },
	{ "smtpd_milters = { inet:127.0.0.1:1, command_timeout=2h }", "t.conf:1: smtpd_milters: "
	  "milter option 'command_timeout=2h': a time in 1s..1h" },
	{ "smtpd_milters = { inet:127.0.0.1:1, protocol=6 }", "t.conf:1: smtpd_milters: unknown "
	  "milter option 'protocol=6' (connect_timeout, command_timeout, content_timeout, "
	  "default_action)" },
	{ "smtpd_milters = { inet:127.0.0.1:1", "t.conf:1: smtpd_milters: milter "
	  "'{ inet:127.0.0.1:1': no closing '}'" },
	{ "smtpd_milters = { }", "t.conf:1: smtpd_milters: milter '{}' names no endpoint" },
	{ "milter_default_action = bounce",
	  "t.conf:1: milter_default_action: 'bounce' is not tempfail or accept or reject" },
	{ "milter_command_timeout = 0", "t.conf:1: milter_command_timeout: 0 is below the minimum 1" },
	{ "\n\nmilter_rcpt_macros = i {rcpt_addr} {bad name}",
	  "t.conf:3: milter_rcpt_macros: '{bad' is not a macro name (one character, or {name})" },
	{ "milter_mail_macros = {}", "t.conf:1: milter_mail_macros: '{}' is not a macro name (one "
	  "character, or {name})" },
	{ "listen = 127.0.0.1:25\nlisten = 127.0.0.1:0025 submission",
	  "t.conf:2: listen: 127.0.0.1:25 is given twice" },
	{ "listen = [::1]:25\nlisten = [0:0::1]:25", "t.conf:2: listen: [::1]:25 is given twice" },
	{ "local_domains = a\nuser = x\nfoo = 1\n", "t.conf:3: unknown parameter 'foo'" },
	{ "hostname = ok\nbad\x01key = 1\n", "t.conf:2: unknown parameter 'bad?key'" },
	/* the first error wins: line 1, not line 2 */
	{ "smtp_port = 0\nnope = 1\n", "t.conf:1: smtp_port: 0 is below the minimum 1" },
};

START_TEST(test_errors)
{
	const struct errcase *c = &errcases[_i];
	char err[256] = "";
	struct config *cf = parse(c->text, err, sizeof(err));

	ck_assert_msg(cf == NULL, "accepted: %s", c->text);
	ck_assert_str_eq(err, c->err);
}
END_TEST

/* ---- strings, comments, whitespace ---- */

struct strcase {
	const char *text;
	size_t off;
	const char *want;	/* NULL: the field must be NULL */
};

#define SF(f) offsetof(struct config, f)

static const struct strcase strcases[] = {
	{ "hostname = mx1.example.test", SF(hostname), "mx1.example.test" },
	{ "hostname=mx1", SF(hostname), "mx1" },
	{ "\t hostname \t = \t MX1.Example.Test \t\r", SF(hostname), "MX1.Example.Test" },
	{ "spool_dir = /tmp/spool # where", SF(spool_dir), "/tmp/spool" },
	{ "user = mail", SF(user), "mail" },
	{ "relay_host = [10.0.0.1]:25", SF(relay_host), "[10.0.0.1]:25" },
	{ "relay_host =", SF(relay_host), NULL },
	{ "relay_host =                 # optional", SF(relay_host), NULL },
	{ "relay_host = a#b", SF(relay_host), "a" },
	{ "relay_host = a = b", SF(relay_host), "a = b" },
	{ "alias_map = hash:/etc/sorter/aliases", SF(alias_map), "hash:/etc/sorter/aliases" },
	{ "user_map = hash:/etc/sorter/user_map", SF(user_map), "hash:/etc/sorter/user_map" },
	{ "node_map = hash:/etc/sorter/node_map", SF(node_map), "hash:/etc/sorter/node_map" },
	{ "failover_node = lmtp:[127.0.0.1]:24", SF(failover_node), "lmtp:[127.0.0.1]:24" },
	{ "dns_servers = 127.0.0.1:5353", SF(dns_servers), "127.0.0.1:5353" },
	{ "tls_cert_file = /c.pem", SF(tls_cert_file), "/c.pem" },
	{ "tls_key_file = /k.pem", SF(tls_key_file), "/k.pem" },
	{ "auth_map = hash:/p", SF(auth_map), "hash:/p" },
	{ "recipient_delimiter = +", SF(recipient_delimiter), "+" },
	{ "recipient_delimiter = -\r\n", SF(recipient_delimiter), "-" },
};

START_TEST(test_strings)
{
	const struct strcase *c = &strcases[_i];
	char err[256] = "";
	struct config *cf = parse(c->text, err, sizeof(err));
	const char *got;

	ck_assert_msg(cf != NULL, "%s: %s", c->text, err);
	got = *(char **)(void *)((char *)cf + c->off);
	if (c->want == NULL)
		ck_assert_msg(got == NULL, "%s: got '%s'", c->text, got);
	else
		ck_assert_str_eq(got, c->want);
	config_free(cf);
}
END_TEST

START_TEST(test_log_enum)
{
	char err[256] = "";
	struct config *cf = parse("log = syslog", err, sizeof(err));

	ck_assert_ptr_nonnull(cf);
	ck_assert_int_eq(cf->log, LOG_SINK_SYSLOG);
	config_free(cf);
	cf = parse("log = stderr", err, sizeof(err));
	ck_assert_ptr_nonnull(cf);
	ck_assert_int_eq(cf->log, LOG_SINK_STDERR);
	ck_assert_ptr_null(cf->log_file);
	ck_assert_int_eq(config_syslog_facility(cf), LOG_MAIL);
	ck_assert_str_eq(cf->syslog_socket, "/dev/log");
	config_free(cf);
	cf = parse("log = /var/log/sorter.log\nsyslog_facility = local3", err, sizeof(err));
	ck_assert_msg(cf != NULL, "%s", err);
	ck_assert_int_eq(cf->log, LOG_SINK_FILE);
	ck_assert_str_eq(cf->log_file, "/var/log/sorter.log");
	ck_assert_int_eq(config_syslog_facility(cf), LOG_LOCAL3);
	config_free(cf);
}
END_TEST

/* metrics_listen: off by default, loopback when only a port is given */
START_TEST(test_metrics_listen)
{
	static const struct { const char *text, *host, *port; } cases[] = {
		{ "", NULL, NULL },
		{ "metrics_listen = 9155", "127.0.0.1", "9155" },
		{ "metrics_listen = 0.0.0.0:09155", "0.0.0.0", "9155" },
		{ "metrics_listen = [::1]:9155", "::1", "9155" },
		{ "metrics_listen = [0:0::1]:80", "::1", "80" },
	};
	char err[256] = "";
	struct config *cf;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cf = parse(cases[i].text, err, sizeof(err));
		ck_assert_msg(cf != NULL, "%s: %s", cases[i].text, err);
		if (cases[i].host == NULL) {
			ck_assert_ptr_null(cf->metrics_listen.host);
			ck_assert_ptr_null(cf->metrics_listen.port);
		} else {
			ck_assert_str_eq(cf->metrics_listen.host, cases[i].host);
			ck_assert_str_eq(cf->metrics_listen.port, cases[i].port);
		}
		config_free(cf);
	}
}
END_TEST

START_TEST(test_local_domains)
{
	char err[256] = "";
	struct config *cf;

	cf = parse("hostname = MX.Example.TEST\nlocal_domains = Example.TEST, example.org,,x.test\t"
		   "y.test , \n", err, sizeof(err));
	ck_assert_msg(cf != NULL, "%s", err);
	ck_assert_uint_eq(cf->nlocal_domains, 4);
	ck_assert_str_eq(cf->local_domains[0], "example.test");
	ck_assert_str_eq(cf->local_domains[1], "example.org");
	ck_assert_str_eq(cf->local_domains[2], "x.test");
	ck_assert_str_eq(cf->local_domains[3], "y.test");
	ck_assert_ptr_null(cf->local_domains[4]);
	ck_assert(config_is_local_domain(cf, "example.test"));
	ck_assert(config_is_local_domain(cf, "EXAMPLE.org"));
	ck_assert(config_is_local_domain(cf, "Y.Test"));
	ck_assert(!config_is_local_domain(cf, "mx.example.test"));
	ck_assert(!config_is_local_domain(cf, "example"));
	ck_assert(!config_is_local_domain(cf, "example.test."));
	ck_assert(!config_is_local_domain(cf, "sub.example.org"));
	ck_assert(!config_is_local_domain(cf, ""));
	ck_assert(!config_is_local_domain(cf, NULL));
	config_free(cf);

	/* 255 bytes is the most a domain may have */
	{
		char text[300];

		snprintf(text, sizeof(text), "local_domains = x %0255d", 0);
		cf = parse(text, err, sizeof(err));
		ck_assert_msg(cf != NULL, "%s", err);
		ck_assert_uint_eq(strlen(cf->local_domains[1]), 255);
		config_free(cf);
		snprintf(text, sizeof(text), "hostname = %0256d", 0);
		cf = parse(text, err, sizeof(err));
		ck_assert_ptr_null(cf);
		ck_assert_str_eq(err, "t.conf:1: hostname: '000000000000000000000000000000000000"
				 "0000000000000000000000000000000000000000...' is not a domain name");
	}

	/* default: the configured hostname, lower-cased */
	cf = parse("hostname = MX.Example.TEST\n", err, sizeof(err));
	ck_assert_ptr_nonnull(cf);
	ck_assert_uint_eq(cf->nlocal_domains, 1);
	ck_assert_str_eq(cf->local_domains[0], "mx.example.test");
	ck_assert_str_eq(cf->hostname, "MX.Example.TEST");
	ck_assert(config_is_local_domain(cf, "mx.example.TEST"));
	config_free(cf);

	/* explicitly empty: nothing is local (fails closed: no open relay) */
	cf = parse("local_domains =\n", err, sizeof(err));
	ck_assert_ptr_nonnull(cf);
	ck_assert_uint_eq(cf->nlocal_domains, 0);
	ck_assert_ptr_nonnull(cf->local_domains);
	ck_assert_ptr_null(cf->local_domains[0]);
	ck_assert(!config_is_local_domain(cf, cf->hostname));
	config_free(cf);
}
END_TEST

/* ---- listen ---- */

START_TEST(test_listen)
{
	char err[256] = "";
	struct config *cf;

	cf = parse("listen = 0.0.0.0:25 mx\n"
		   "listen = 0.0.0.0:587 submission  # STARTTLS, AUTH\n"
		   "listen = [::1]:2525\n"
		   "listen = [::]:25 mx\n"
		   "listen = 127.0.0.1:10025\tsubmission\n"
		   "listen = [2001:DB8:0:0::1]:65535 submission\n"
		   "listen = 127.0.0.1:465 submissions\n"
		   "tls_cert_file = /c.pem\ntls_key_file = /k.pem\nauth_map = hash:/p\n",
		   err, sizeof(err));
	ck_assert_msg(cf != NULL, "%s", err);
	ck_assert_uint_eq(cf->nlisten, 7);
	ck_assert_int_eq(cf->listen[6].role, ROLE_SUBMISSIONS);
	ck_assert_uint_eq(cf->listen[6].line, 7);
	ck_assert_str_eq(cf->listen[0].host, "0.0.0.0");
	ck_assert_str_eq(cf->listen[0].port, "25");
	ck_assert_int_eq(cf->listen[0].role, ROLE_MX);
	ck_assert_str_eq(cf->listen[1].host, "0.0.0.0");
	ck_assert_str_eq(cf->listen[1].port, "587");
	ck_assert_int_eq(cf->listen[1].role, ROLE_SUBMISSION);
	ck_assert_str_eq(cf->listen[2].host, "::1");
	ck_assert_str_eq(cf->listen[2].port, "2525");
	ck_assert_int_eq(cf->listen[2].role, ROLE_MX);
	ck_assert_str_eq(cf->listen[3].host, "::");
	ck_assert_int_eq(cf->listen[3].role, ROLE_MX);
	ck_assert_str_eq(cf->listen[4].host, "127.0.0.1");
	ck_assert_str_eq(cf->listen[4].port, "10025");
	ck_assert_int_eq(cf->listen[4].role, ROLE_SUBMISSION);
	/* stored canonical */
	ck_assert_str_eq(cf->listen[5].host, "2001:db8::1");
	ck_assert_str_eq(cf->listen[5].port, "65535");
	config_free(cf);

	/* a submission listener that could never log anyone in: at its own line */
	cf = parse("listen = 127.0.0.1:25\nlisten = 127.0.0.1:587 submission\n"
		   "tls_cert_file = /c.pem\ntls_key_file = /k.pem\n", err, sizeof(err));
	ck_assert_ptr_null(cf);
	ck_assert_str_eq(err, "t.conf:2: listen: role submission needs tls_cert_file, "
			 "tls_key_file and auth_map");
	cf = parse("auth_map = hash:/p\nlisten = 127.0.0.1:465 submissions\n", err, sizeof(err));
	ck_assert_ptr_null(cf);
	ck_assert_str_eq(err, "t.conf:2: listen: role submissions needs tls_cert_file, "
			 "tls_key_file and auth_map");

	/* one explicit listener replaces the default one */
	cf = parse("listen = 127.0.0.1:2525", err, sizeof(err));
	ck_assert_ptr_nonnull(cf);
	ck_assert_uint_eq(cf->nlisten, 1);
	ck_assert_str_eq(cf->listen[0].host, "127.0.0.1");
	ck_assert_str_eq(cf->listen[0].port, "2525");
	config_free(cf);

	/* the same port on different addresses is fine */
	cf = parse("listen = 127.0.0.1:25\nlisten = 127.0.0.2:25\n", err, sizeof(err));
	ck_assert_ptr_nonnull(cf);
	ck_assert_uint_eq(cf->nlisten, 2);
	ck_assert(!cf->listen[0].proxy);
	config_free(cf);

	/* proxy=yes behind a load balancer, from proxy_networks only */
	cf = parse("listen = 127.0.0.1:25 mx proxy=yes\nlisten = 127.0.0.1:26 mx proxy=no\n"
		   "listen = 127.0.0.1:27 proxy=yes\n"
		   "proxy_networks = 10.0.0.10 192.0.2.0/24, ::1\nsmtpd_proxy_timeout = 5s\n",
		   err, sizeof(err));
	ck_assert_msg(cf != NULL, "%s", err);
	ck_assert(cf->listen[0].proxy);
	ck_assert(!cf->listen[1].proxy);
	/* a bare option where the role would be is an option, the role mx */
	ck_assert_int_eq(cf->listen[2].role, ROLE_MX);
	ck_assert_uint_eq(cf->nproxy_networks, 3);
	ck_assert_uint_eq(cf->proxy_networks[0].bits, 128);
	ck_assert_int_eq(cf->smtpd_proxy_timeout, 5);
	config_free(cf);

	/* milters=: this listener's own list; empty = none, absent = smtpd_milters */
	cf = parse("listen = 127.0.0.1:25 mx milters=inet:127.0.0.1:8891,unix:/run/m.sock\n"
		   "listen = 127.0.0.1:26 mx\tmilters=\n"
		   "listen = 127.0.0.1:27 mx\n"
		   "listen = 127.0.0.1:28 milters={inet:[::1]:1,default_action=accept}\n",
		   err, sizeof(err));
	ck_assert_msg(cf != NULL, "%s", err);
	ck_assert_str_eq(cf->listen[0].milters, "inet:127.0.0.1:8891,unix:/run/m.sock");
	ck_assert_str_eq(cf->listen[1].milters, "");
	ck_assert_ptr_null(cf->listen[2].milters);
	ck_assert_int_eq(cf->listen[3].role, ROLE_MX);
	ck_assert_str_eq(cf->listen[3].milters, "{inet:[::1]:1,default_action=accept}");
	config_free(cf);
}
END_TEST

/* ---- milter endpoint lists (lib/milterspec.c) ---- */

START_TEST(test_milter_specs)
{
	struct milter_spec *v;
	char why[256];
	size_t n;

	ck_assert_int_eq(milter_specs_parse("inet:127.0.0.1:8891, inet:[::1]:10 unix:/run/a.sock,"
					    "inet:8892@127.0.0.2 inet6:[0:0::1]:9 local:/b",
					    &v, &n, why, sizeof(why)), 0);
	ck_assert_uint_eq(n, 6);
	ck_assert_int_eq(v[0].family, AF_INET);
	ck_assert_str_eq(v[0].host, "127.0.0.1");
	ck_assert_str_eq(v[0].port, "8891");
	ck_assert_str_eq(v[0].name, "inet:127.0.0.1:8891");
	ck_assert_int_eq(v[0].default_action, -1);
	ck_assert_int_eq(v[0].command_timeout, 0);
	ck_assert_int_eq(v[1].family, AF_INET6);
	ck_assert_str_eq(v[1].host, "::1");
	ck_assert_int_eq(v[2].family, AF_UNIX);
	ck_assert_str_eq(v[2].path, "/run/a.sock");
	ck_assert_str_eq(v[3].host, "127.0.0.2");
	ck_assert_str_eq(v[3].port, "8892");
	ck_assert_int_eq(v[4].family, AF_INET6);
	ck_assert_str_eq(v[4].host, "::1");
	ck_assert_str_eq(v[5].path, "/b");
	milter_specs_free(v, n);

	ck_assert_int_eq(milter_specs_parse("{ inet:127.0.0.1:1, connect_timeout=5s, "
					    "command_timeout=2m, content_timeout=1h, "
					    "default_action=accept }, {unix:/x,default_action=reject}",
					    &v, &n, why, sizeof(why)), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(v[0].connect_timeout, 5);
	ck_assert_int_eq(v[0].command_timeout, 120);
	ck_assert_int_eq(v[0].content_timeout, 3600);
	ck_assert_int_eq(v[0].default_action, MILTER_ACT_ACCEPT);
	ck_assert_int_eq(v[1].default_action, MILTER_ACT_REJECT);
	milter_specs_free(v, n);

	ck_assert_int_eq(milter_specs_parse("", &v, &n, why, sizeof(why)), 0);
	ck_assert_uint_eq(n, 0);
	milter_specs_free(v, n);
	ck_assert_int_eq(milter_specs_parse(NULL, &v, &n, why, sizeof(why)), 0);
	ck_assert_uint_eq(n, 0);
	/* an error after good entries frees them */
	ck_assert_int_eq(milter_specs_parse("unix:/a {unix:/b,connect_timeout=x}", &v, &n, why,
					    sizeof(why)), -1);
	ck_assert_ptr_null(v);
	ck_assert_int_eq(milter_specs_parse("unix:/a}", &v, &n, why, sizeof(why)), -1);

	ck_assert(milter_macro_name_ok("j", 1));
	ck_assert(milter_macro_name_ok("{daemon_name}", 13));
	ck_assert(!milter_macro_name_ok("{}", 2));
	ck_assert(!milter_macro_name_ok("{a b}", 5));
	ck_assert(!milter_macro_name_ok("ab", 2));
	ck_assert_int_eq(milter_macros_check("j, {a} _ v", why, sizeof(why)), 0);
	ck_assert_int_eq(milter_macros_check("", why, sizeof(why)), 0);
}
END_TEST

/* ---- line limits and NUL bytes ---- */

START_TEST(test_long_lines_and_nul)
{
	char err[256] = "";
	size_t n = 8192 + 64;
	char *text = malloc(n);
	struct config *cf;

	/* a line of exactly 8192 bytes (newline not counted) is accepted */
	memset(text, ' ', n);
	memcpy(text, "hostname = a\n#", 14);
	text[13 + 8192] = '\n';
	cf = config_parse("t.conf", text, 13 + 8193, err, sizeof(err));
	ck_assert_msg(cf != NULL, "%s", err);
	config_free(cf);
	/* one more byte is not */
	text[13 + 8192] = ' ';
	text[13 + 8193] = '\n';
	cf = config_parse("t.conf", text, 13 + 8194, err, sizeof(err));
	ck_assert_ptr_null(cf);
	ck_assert_str_eq(err, "t.conf:2: line is longer than 8192 bytes");
	/* ... also as the last line without a newline */
	cf = config_parse("t.conf", text, 13 + 8193, err, sizeof(err));
	ck_assert_ptr_null(cf);
	ck_assert_str_eq(err, "t.conf:2: line is longer than 8192 bytes");
	free(text);

	cf = config_parse("t.conf", S("user = x\nhostname = a\0b\n"), err, sizeof(err));
	ck_assert_ptr_null(cf);
	ck_assert_str_eq(err, "t.conf:2: line contains a NUL byte");
	/* inside a comment too: the file is not text */
	cf = config_parse("t.conf", S("# a\0b\n"), err, sizeof(err));
	ck_assert_ptr_null(cf);
	ck_assert_str_eq(err, "t.conf:1: line contains a NUL byte");
	/* no text after the last newline, and no newline at the end: both fine */
	cf = config_parse("t.conf", S("user = x"), err, sizeof(err));
	ck_assert_ptr_nonnull(cf);
	ck_assert_str_eq(cf->user, "x");
	config_free(cf);
}
END_TEST

START_TEST(test_err_buffer)
{
	char err[12];
	struct config *cf;

	/* a short buffer is truncated, never overrun */
	memset(err, 'x', sizeof(err));
	cf = parse("nosuch = 1", err, sizeof(err));
	ck_assert_ptr_null(cf);
	ck_assert_str_eq(err, "t.conf:1: u");
	/* no buffer at all is allowed */
	cf = parse("nosuch = 1", NULL, 0);
	ck_assert_ptr_null(cf);
	/* a file without a name is reported by a placeholder */
	cf = config_parse(NULL, S("nosuch = 1"), err, sizeof(err));
	ck_assert_ptr_null(cf);
	ck_assert_str_eq(err, "(config):1:");
}
END_TEST

/* ---- files ---- */

static const char example[] =
	"hostname        = mx1.example.test\n"
	"spool_dir       = /var/spool/sorter\n"
	"user            = sorter                        # dropped to after binding\n"
	"listen          = 0.0.0.0:25 mx                 # inbound from remote MTAs\n"
	"listen          = 0.0.0.0:587 submission        # STARTTLS, then AUTH, then relay\n"
	"local_domains   = example.test example.org\n"
	"alias_map       = hash:/etc/sorter/aliases      # address -> address[, address ...]\n"
	"user_map        = hash:/etc/sorter/user_map     # address or @domain -> node name\n"
	"node_map        = hash:/etc/sorter/node_map     # node name -> lmtp:HOST:PORT\n"
	"failover_node   = lmtp:[127.0.0.1]:24           # optional\n"
	"relay_host      =                               # optional smarthost\n"
	"smtp_port       = 25                            # port for MX delivery\n"
	"recipient_delimiter = +                         # optional\n"
	"dns_servers     = 127.0.0.1:5353                # optional\n"
	"tls_cert_file   = /etc/sorter/tls/cert.pem\n"
	"tls_key_file    = /etc/sorter/tls/key.pem\n"
	"auth_map        = hash:/etc/sorter/passwd       # full address -> crypt(3) hash\n"
	"message_size_limit = 26214400\n"
	"log             = stderr                        # or syslog\n"
	"workers = 2\nio_threads = 4\nsmtpd_max_sessions = 10\n"
	"smtpd_client_connection_limit = 5\nsmtpd_recipient_limit = 100\n"
	"smtpd_line_limit = 1000\nsmtpd_timeout = 5m\nsmtpd_data_timeout = 10m\n"
	"smtpd_hard_error_limit = 10\nqueue_minfree = 1g\n";

/* where a key was set, for errors found after parsing (sorterd -t's maps) */
START_TEST(test_where)
{
	static const char text[] = "# maps\n\nuser_map = hash:/x/users\n"
				   "listen = 127.0.0.1:25 mx\nlisten = 127.0.0.1:26 mx\n";
	struct config *cf;
	char err[256], buf[64];

	cf = config_parse("t.conf", text, strlen(text), err, sizeof(err));
	ck_assert_msg(cf != NULL, "%s", err);
	ck_assert_str_eq(config_where(cf, "user_map", buf, sizeof(buf)), "t.conf:3");
	ck_assert_str_eq(config_where(cf, "listen", buf, sizeof(buf)), "t.conf:5");
	ck_assert_str_eq(config_where(cf, "node_map", buf, sizeof(buf)), "t.conf");
	config_free(cf);
	cf = config_parse(NULL, "", 0, err, sizeof(err));
	ck_assert_str_eq(config_where(cf, "user_map", buf, sizeof(buf)), "(config)");
	config_free(cf);
}
END_TEST

START_TEST(test_load_file)
{
	char path[] = "/tmp/check_config.XXXXXX", err[512] = "", want[600];
	struct config *cf;
	int fd = mkstemp(path);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write_all(fd, example, strlen(example)), 0);
	close(fd);
	cf = config_load(path, err, sizeof(err));
	ck_assert_msg(cf != NULL, "%s", err);
	ck_assert_str_eq(cf->file, path);
	ck_assert_str_eq(cf->hostname, "mx1.example.test");
	ck_assert_uint_eq(cf->nlisten, 2);
	ck_assert_int_eq(cf->listen[1].role, ROLE_SUBMISSION);
	ck_assert_uint_eq(cf->nlocal_domains, 2);
	ck_assert(config_is_local_domain(cf, "example.org"));
	ck_assert(!config_is_local_domain(cf, "mx1.example.test"));
	ck_assert_str_eq(cf->failover_node, "lmtp:[127.0.0.1]:24");
	ck_assert_ptr_null(cf->relay_host);
	ck_assert_str_eq(cf->recipient_delimiter, "+");
	ck_assert_int_eq(cf->message_size_limit, 26214400);
	ck_assert_int_eq(cf->workers, 2);
	ck_assert_int_eq(cf->smtpd_timeout, 300);
	ck_assert_int_eq(cf->smtpd_data_timeout, 600);
	ck_assert_int_eq(cf->queue_minfree, 1LL << 30);
	config_free(cf);

	/* errors in a file name the file */
	fd = open(path, O_WRONLY | O_TRUNC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write_all(fd, S("user = x\nhostnme = y\n")), 0);
	close(fd);
	cf = config_load(path, err, sizeof(err));
	ck_assert_ptr_null(cf);
	snprintf(want, sizeof(want), "%s:2: unknown parameter 'hostnme'", path);
	ck_assert_str_eq(err, want);

	unlink(path);
	cf = config_load(path, err, sizeof(err));
	ck_assert_ptr_null(cf);
	snprintf(want, sizeof(want), "%s: cannot read: %s", path, strerror(ENOENT));
	ck_assert_str_eq(err, want);

	cf = config_load("/tmp", err, sizeof(err));
	ck_assert_ptr_null(cf);
	snprintf(want, sizeof(want), "/tmp: cannot read: %s", strerror(EISDIR));
	ck_assert_str_eq(err, want);
}
END_TEST

/* descriptors per worker: 2 per session + io_threads + listeners + 64 */
static const struct {
	const char *text;
	long long need;
} fdcases[] = {
	{ "", 100 * 2 + 16 + 1 + 64 },
	{ "smtpd_max_sessions = 1\nio_threads = 1\n", 2 + 1 + 1 + 64 },
	{ "smtpd_max_sessions = 100000\nio_threads = 256\n", 200000 + 256 + 1 + 64 },
	{ "listen = 127.0.0.1:25 mx\nlisten = 127.0.0.1:2525 mx\n"
	  "smtpd_max_sessions = 10\n", 20 + 16 + 2 + 64 },
	/* one more per milter of the listener with the most */
	{ "smtpd_milters = unix:/a unix:/b\nlisten = 127.0.0.1:25 mx milters=unix:/c\n"
	  "listen = 127.0.0.1:2525 mx\nsmtpd_max_sessions = 10\n", 40 + 16 + 2 + 64 },
	{ "smtpd_milters = unix:/a\nlisten = 127.0.0.1:25 mx milters=unix:/c,unix:/d,unix:/e\n"
	  "smtpd_max_sessions = 10\n", 50 + 16 + 1 + 64 },
};

START_TEST(test_fd_need)
{
	char err[256];
	struct config *cf = parse(fdcases[_i].text, err, sizeof(err));

	ck_assert_msg(cf != NULL, "%s", err);
	ck_assert_int_eq(config_fd_need(cf), fdcases[_i].need);
	config_free(cf);
}
END_TEST

static Suite *
config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_defaults);
	tcase_add_loop_test(tc, test_numbers, 0, sizeof(numcases) / sizeof(numcases[0]));
	tcase_add_loop_test(tc, test_errors, 0, sizeof(errcases) / sizeof(errcases[0]));
	tcase_add_loop_test(tc, test_strings, 0, sizeof(strcases) / sizeof(strcases[0]));
	tcase_add_test(tc, test_log_enum);
	tcase_add_test(tc, test_metrics_listen);
	tcase_add_test(tc, test_local_domains);
	tcase_add_test(tc, test_listen);
	tcase_add_test(tc, test_milter_specs);
	tcase_add_test(tc, test_long_lines_and_nul);
	tcase_add_test(tc, test_err_buffer);
	tcase_add_test(tc, test_load_file);
	tcase_add_loop_test(tc, test_fd_need, 0, sizeof(fdcases) / sizeof(fdcases[0]));
	tcase_add_test(tc, test_where);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(config_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
