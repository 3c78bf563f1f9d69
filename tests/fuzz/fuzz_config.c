/*
 * fuzz_config.c - libFuzzer target for the configuration parser: any bytes
 * either give a config whose every value is inside its declared bounds, or
 * an error that names the file; everything is freed either way.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { \
	if (!(c)) { \
		fprintf(stderr, "fuzz_config: check failed: %s (line %d)\n", #c, __LINE__); \
		abort(); \
	} \
} while (0)

#define IN(v, lo, hi) ((v) >= (lo) && (v) <= (hi))

/* a value as stored: NULL, or trimmed text without comment or newline */
static void
check_value(const char *v)
{
	size_t n;

	if (v == NULL)
		return;
	n = strlen(v);
	CHECK(n > 0);
	CHECK(strpbrk(v, "#\n") == NULL);
	CHECK(v[0] != ' ' && v[0] != '\t' && v[n - 1] != ' ' && v[n - 1] != '\t');
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[512];
	struct config *cf;
	size_t i;

	memset(err, 'x', sizeof(err));
	cf = config_parse("fuzz.conf", (const char *)data, size, err, sizeof(err));
	CHECK(memchr(err, '\0', sizeof(err)) != NULL);
	if (cf == NULL) {
		CHECK(strncmp(err, "fuzz.conf:", 10) == 0);
		CHECK(strlen(err) > 10);
		return 0;
	}
	CHECK(err[0] == '\0');
	CHECK(cf->file != NULL && strcmp(cf->file, "fuzz.conf") == 0);
	CHECK(cf->hostname != NULL && cf->hostname[0] != '\0');
	CHECK(cf->spool_dir != NULL && cf->spool_dir[0] != '\0');
	CHECK(cf->user != NULL && cf->user[0] != '\0');
	check_value(cf->hostname);
	check_value(cf->spool_dir);
	check_value(cf->user);
	check_value(cf->alias_map);
	check_value(cf->user_map);
	check_value(cf->node_map);
	check_value(cf->failover_node);
	check_value(cf->relay_host);
	check_value(cf->recipient_delimiter);
	check_value(cf->dns_servers);
	check_value(cf->tls_cert_file);
	check_value(cf->tls_key_file);
	check_value(cf->auth_map);
	CHECK(cf->nlisten >= 1);
	for (i = 0; i < cf->nlisten; i++) {
		CHECK(cf->listen[i].host != NULL && cf->listen[i].port != NULL);
		CHECK(IN(atoi(cf->listen[i].port), 1, 65535));
		CHECK(cf->listen[i].role == ROLE_MX || cf->listen[i].role == ROLE_SUBMISSION ||
		      cf->listen[i].role == ROLE_SUBMISSIONS);
	}
	CHECK(cf->local_domains != NULL);
	for (i = 0; i < cf->nlocal_domains; i++) {
		CHECK(cf->local_domains[i] != NULL && cf->local_domains[i][0] != '\0');
		CHECK(strpbrk(cf->local_domains[i], " \t,#ABCDEFGHIJKLMNOPQRSTUVWXYZ") == NULL);
		CHECK(config_is_local_domain(cf, cf->local_domains[i]));
	}
	CHECK(cf->local_domains[cf->nlocal_domains] == NULL);
	CHECK(IN(cf->smtp_port, 1, 65535));
	CHECK(IN(cf->message_size_limit, 1024, 2147483647LL));
	CHECK(cf->log == LOG_SINK_STDERR || cf->log == LOG_SINK_SYSLOG ||
	      (cf->log == LOG_SINK_FILE && cf->log_file != NULL && cf->log_file[0] == '/'));
	CHECK(IN(cf->workers, 1, CONFIG_WORKERS_MAX));
	CHECK(IN(cf->io_threads, 1, 256));
	CHECK(IN(cf->smtpd_max_sessions, 1, 100000));
	CHECK(IN(cf->smtpd_client_connection_limit, 1, 100000));
	CHECK(IN(cf->smtpd_recipient_limit, 1, 100000));
	CHECK(IN(cf->smtpd_line_limit, 512, 65536));
	CHECK(IN(cf->smtpd_timeout, 1, 3600));
	CHECK(IN(cf->smtpd_data_timeout, 1, 3600));
	CHECK(IN(cf->smtpd_hard_error_limit, 1, 1000));
	CHECK(IN(cf->queue_minfree, 0, 1LL << 50));
	config_free(cf);
	return 0;
}
