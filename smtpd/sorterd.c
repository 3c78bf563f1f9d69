/*
 * sorterd.c - the daemon's command line: `sorterd [-c FILE]` runs in the
 * foreground, `sorterd -t [-c FILE]` checks the configuration and opens
 * every map it names.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "lib/lib.h"
#include "router/router.h"
#include "smtpd/auth.h"
#include "smtpd/smtpd.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif

static void
usage(void)
{
	fprintf(stderr, "usage: sorterd [-t] [-c FILE]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	const char *path = SYSCONFDIR "/sorter/sorter.conf";
	struct router *r;
	struct config *cf;
	char err[512];
	bool check = false;
	int ch;

	while ((ch = getopt(argc, argv, "c:th")) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
			break;
		case 't':
			check = true;
			break;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	cf = config_load(path, err, sizeof(err));
	if (cf == NULL) {
		fprintf(stderr, "sorterd: %s\n", err);
		return 1;
	}
	if (check) {
		if (cf->tls_cert_file || cf->tls_key_file) {
			SSL_CTX *ctx = tls_server_ctx(cf, err, sizeof(err));

			if (ctx == NULL) {
				fprintf(stderr, "sorterd: %s: %s\n", path, err);
				config_free(cf);
				return 1;
			}
			SSL_CTX_free(ctx);
		}
		if (fd_limit_check(cf, false, err, sizeof(err)) < 0) {
			fprintf(stderr, "sorterd: %s: %s\n", path, err);
			config_free(cf);
			return 1;
		}
		/* every map it names must open now, not fail its first lookup */
		if ((r = router_open(cf, err, sizeof(err))) == NULL ||
		    router_check_maps(r, err, sizeof(err)) < 0) {
			fprintf(stderr, "sorterd: %s\n", err);
			router_close(r);
			config_free(cf);
			return 1;
		}
		router_close(r);
		if (auth_check_maps(cf, err, sizeof(err)) < 0) {
			fprintf(stderr, "sorterd: %s\n", err);
			config_free(cf);
			return 1;
		}
		printf("sorterd: %s: configuration ok\n", path);
		config_free(cf);
		return 0;
	}
	return master_main(path, cf);
}
