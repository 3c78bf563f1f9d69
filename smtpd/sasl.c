/*
 * sasl.c - the bytes of AUTH (RFC 4954): strict base64 and the PLAIN
 * message (RFC 4616). Pure functions, no I/O, no allocation.
 *
 * Base64 here is strict: only the RFC 4648 alphabet, a length that is a
 * multiple of four, '=' only as the final one or two characters, no spaces,
 * so that a client's garbage is answered 501 instead of being half-decoded.
 * The decoding itself is OpenSSL's.
 */
#include "config.h"

#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "smtpd/smtpd.h"

static bool
b64_char(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/';
}

int
sasl_b64_decode(const char *in, size_t len, unsigned char *out, size_t outmax, size_t *outlen)
{
	size_t i, pad = 0, need;
	int n;

	*outlen = 0;
	if (len == 0)
		return 0;
	if (len % 4 != 0)
		return -1;
	if (in[len - 1] == '=')
		pad = in[len - 2] == '=' ? 2 : 1;
	for (i = 0; i < len - pad; i++)
		if (!b64_char((unsigned char)in[i]))
			return -1;
	need = len / 4 * 3;
	if (need - pad > outmax)
		return -2;
	if (need > outmax) {
		/* OpenSSL writes the padding's zero bytes too: decode the last
		 * quantum into a scratch buffer */
		unsigned char last[3];

		if (len > 4 && EVP_DecodeBlock(out, (const unsigned char *)in, (int)(len - 4)) < 0)
			return -1;
		if (EVP_DecodeBlock(last, (const unsigned char *)in + len - 4, 4) != 3)
			return -1;
		memcpy(out + need - 3, last, 3 - pad);
	} else {
		n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
		if (n < 0 || (size_t)n != need)
			return -1;
	}
	*outlen = need - pad;
	return 0;
}

enum sasl_plain_status
sasl_plain_parse(const unsigned char *msg, size_t len, char *user, size_t usermax,
		 char *pass, size_t passmax)
{
	const unsigned char *nul1, *nul2;
	size_t zlen, ulen, plen;

	nul1 = memchr(msg, '\0', len);
	if (nul1 == NULL)
		return SASL_PLAIN_MALFORMED;
	nul2 = memchr(nul1 + 1, '\0', len - (size_t)(nul1 + 1 - msg));
	if (nul2 == NULL)
		return SASL_PLAIN_MALFORMED;
	zlen = (size_t)(nul1 - msg);
	ulen = (size_t)(nul2 - nul1 - 1);
	plen = len - (size_t)(nul2 + 1 - msg);
	if (memchr(nul2 + 1, '\0', plen) != NULL)
		return SASL_PLAIN_MALFORMED;
	if (ulen == 0 || plen == 0)
		return SASL_PLAIN_MALFORMED;
	if (ulen >= usermax || plen >= passmax)
		return SASL_PLAIN_TOO_LONG;
	memcpy(user, nul1 + 1, ulen);
	user[ulen] = '\0';
	/* an authorization identity other than the login is not granted */
	if (zlen != 0 && (zlen != ulen || strncasecmp((const char *)msg, user, ulen) != 0)) {
		user[0] = '\0';
		return SASL_PLAIN_AUTHZID;
	}
	memcpy(pass, nul2 + 1, plen);
	pass[plen] = '\0';
	return SASL_PLAIN_OK;
}
