/*
 * tls.c - the server-side TLS context for STARTTLS.
 *
 * Loaded by the master, which keeps root to read key files that are often
 * readable by root only (again on SIGHUP), and inherited by the workers. TLS 1.2 is the floor,
 * with ECDHE key exchange and AEAD ciphers only.
 */
#include "config.h"

#include <stdio.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

#define TLS12_CIPHERS \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

static void
ssl_err(char *err, size_t errlen, const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char buf[256];

	ERR_error_string_n(e, buf, sizeof(buf));
	snprintf(err, errlen, "%s %s: %s", what, file, e ? buf : "unknown error");
	ERR_clear_error();
}

void *
tls_server_ctx(const struct config *cf, char *err, size_t errlen)
{
	SSL_CTX *ctx;

	if (cf->tls_cert_file == NULL || cf->tls_key_file == NULL) {
		snprintf(err, errlen, "tls_cert_file and tls_key_file must both be set");
		return NULL;
	}
	ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		ssl_err(err, errlen, "cannot create TLS context", "");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* TLS 1.2: forward secrecy and AEAD only (Mozilla's "intermediate" without
	 * DHE); TLS 1.3 suites are OpenSSL's, all AEAD */
	if (SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1) {
		ssl_err(err, errlen, "cannot set the TLS 1.2 cipher list", "");
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
				 SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (SSL_CTX_use_certificate_chain_file(ctx, cf->tls_cert_file) != 1) {
		ssl_err(err, errlen, "cannot load certificate", cf->tls_cert_file);
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, cf->tls_key_file, SSL_FILETYPE_PEM) != 1) {
		ssl_err(err, errlen, "cannot load private key", cf->tls_key_file);
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		ssl_err(err, errlen, "private key does not match certificate", cf->tls_key_file);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}
