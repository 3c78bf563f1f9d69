/*
 * fuzz_dsnparam.c - libFuzzer target for the DSN parameter parsers and
 * xtext (queue/dsn.c). Each input is read as recipient params, sender
 * params, xtext and an SMTP reply; whatever is accepted must respect the
 * limits, decode to printable US-ASCII, and survive format -> parse
 * unchanged, and xtext must survive decode -> encode -> decode. The input
 * also goes into a report, as the original message and as a remote reply,
 * and the report must keep its CRLF lines and its boundary. Built by
 * tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "queue/queue.h"

/*
 * run.sh links a fixed list of pure sources; dsn.c is pure as well but is
 * not on it, so it is compiled in here. If it joins that list, drop this.
 */
#include "queue/dsn.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

static void
check_printable(const char *s, int lo)
{
	for (; *s; s++)
		CHECK(*s >= lo && *s <= 126);
}

static void
fuzz_rcpt(const char *s)
{
	struct dsn_rcpt_params p, q;
	const char *why = NULL;
	struct dstr d;
	const char *t;

	if (dsn_parse_rcpt_params(s, &p, &why) < 0) {
		CHECK(why != NULL && why[0] != '\0');
		CHECK(p.notify == 0 && p.orcpt_type[0] == '\0' && p.orcpt[0] == '\0');
		return;
	}
	CHECK(p.notify == DSN_NOTIFY_NEVER || (p.notify & ~7) == 0);
	CHECK(strlen(p.orcpt_type) <= DSN_ADDRTYPE_MAX);
	CHECK(strlen(p.orcpt) <= DSN_ORCPT_MAX);
	CHECK(p.orcpt_type[0] != '\0' || p.orcpt[0] == '\0');
	CHECK(p.orcpt_type[0] == '\0' || p.orcpt[0] != '\0');
	for (t = p.orcpt_type; *t; t++)
		CHECK(is_letdig((unsigned char)*t) || *t == '-');
	check_printable(p.orcpt, 32);

	dstr_init(&d, 0);
	dsn_format_rcpt_params(&p, &d);
	CHECK(dsn_parse_rcpt_params(d.s, &q, &why) == 0);
	CHECK(q.notify == p.notify);
	CHECK(strcmp(q.orcpt_type, p.orcpt_type) == 0);
	CHECK(strcmp(q.orcpt, p.orcpt) == 0);
	dstr_free(&d);
}

static void
fuzz_sender(const char *s)
{
	struct dsn_sender_params p, q;
	const char *why = NULL;
	struct dstr d;

	if (dsn_parse_sender_params(s, &p, &why) < 0) {
		CHECK(why != NULL && why[0] != '\0');
		CHECK(p.ret == 0 && p.envid[0] == '\0' && !p.smtputf8);
		return;
	}
	CHECK(p.ret >= 0 && p.ret <= DSN_RET_HDRS);
	CHECK(strlen(p.envid) <= DSN_ENVID_MAX);
	check_printable(p.envid, 33);

	/* the canonical encoding is never longer, so it still fits the limit */
	dstr_init(&d, 0);
	dsn_format_sender_params(&p, &d);
	CHECK(dsn_parse_sender_params(d.s, &q, &why) == 0);
	CHECK(q.ret == p.ret);
	CHECK(strcmp(q.envid, p.envid) == 0);
	CHECK(q.smtputf8 == p.smtputf8);
	dstr_free(&d);
}

static void
fuzz_xtext(const char *in, size_t n)
{
	char *dec = malloc(n + 1), *again = malloc(n + 1);
	struct dstr enc;
	const char *why = NULL;
	int len, len2;
	size_t i;
	bool printable = true;

	if (dec == NULL || again == NULL)
		abort();
	dstr_init(&enc, 0);
	len = xtext_decode(in, n, dec, n + 1, &why);
	if (len >= 0) {
		CHECK((size_t)len == strlen(dec) && (size_t)len <= n);
		check_printable(dec, 32);
		xtext_encode(dec, (size_t)len, &enc);
		CHECK(enc.len <= n);
		len2 = xtext_decode(enc.len ? enc.s : "", enc.len, again, n + 1, &why);
		CHECK(len2 == len && memcmp(again, dec, (size_t)len) == 0);
	} else {
		CHECK(why != NULL);
	}

	/* raw bytes: encoding then decoding gives them back when printable,
	 * and is refused when not */
	dstr_reset(&enc);
	xtext_encode(in, n, &enc);
	for (i = 0; i < n; i++)
		if ((unsigned char)in[i] < 32 || (unsigned char)in[i] > 126)
			printable = false;
	len = xtext_decode(enc.len ? enc.s : "", enc.len, dec, n + 1, &why);
	if (printable)
		CHECK(len == (int)n && memcmp(dec, in, n) == 0);
	else
		CHECK(len == -1);
	dstr_free(&enc);
	free(dec);
	free(again);
}

static void
fuzz_reply(const char *s)
{
	char status[16];

	memset(status, 'z', sizeof(status));
	if (!dsn_status_from_reply(s, status)) {
		CHECK(status[0] == '\0');
		return;
	}
	CHECK(status_valid(status));
	CHECK(status[0] == s[0]);
}

/* the report stays well-formed whatever the content and reply hold */
static void
fuzz_report(const uint8_t *data, size_t size, const char *s)
{
	struct dsn_report r = { .reporting_mta = "mx.example.test", .queue_id = "0123456789AB",
		.arrival_usec = 1, .sender = "a@example.test", .envid = s,
		.ret = size & 1 ? DSN_RET_HDRS : 0, .kind = (enum dsn_kind)(size % 3),
		.content = data, .content_len = size };
	struct dsn_entry e = { .final_rcpt = s, .orcpt = s, .action = s, .status = s,
		.remote_mta = s, .diagnostic = s, .last_attempt_usec = 2,
		.will_retry_until_usec = 3 };
	struct dstr out;
	const char *b, *q;
	char boundary[80];
	size_t i, n;

	dstr_init(&out, 0);
	dsn_build(&r, &e, 1, s, &out);
	CHECK(out.len >= 2 && out.s[out.len - 2] == '\r' && out.s[out.len - 1] == '\n');
	for (i = 0; i < out.len; i++) {
		if (out.s[i] == '\r')
			CHECK(out.s[i + 1] == '\n');
		if (out.s[i] == '\n')
			CHECK(i > 0 && out.s[i - 1] == '\r');
	}
	b = strstr(out.s, "\r\n\tboundary=\"");
	CHECK(b != NULL);
	b += 13;
	q = strchr(b, '"');
	CHECK(q != NULL && q > b && q - b <= 70);
	snprintf(boundary, sizeof(boundary), "%.*s", (int)(q - b), b);
	/* in the body, the boundary is in the four delimiters and nowhere else */
	q = strstr(out.s, "\r\n\r\n");
	CHECK(q != NULL);
	for (n = 0; (q = memmem(q, out.len - (size_t)(q - out.s), boundary, strlen(boundary)));
	     q++)
		n++;
	CHECK(n == 4);
	dstr_free(&out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy, so that ASan sees any read past the end */
	char *raw = malloc(size ? size : 1);
	char *s = malloc(size + 1);

	if (raw == NULL || s == NULL)
		abort();
	memcpy(raw, data, size);
	memcpy(s, data, size);
	s[size] = '\0';

	fuzz_rcpt(s);
	fuzz_sender(s);
	fuzz_xtext(raw, size);
	fuzz_reply(s);
	fuzz_report(data, size, s);
	free(raw);
	free(s);
	return 0;
}
