/*
 * fuzz_milter.c - libFuzzer target for what a milter filter can send
 * (smtpd/milter_proto.c, smtpd/milter_apply.c). The input is a stream of
 * packets as read from a filter's socket. Framing must stay inside the
 * input; the decoder must refuse or decode every packet with strings that
 * end inside it; negotiation and the reply-code check must survive
 * anything, and a reply they pass is a well-formed 4xx/5xx reply with no
 * bare CR or LF; header edits made of the packets, applied to a message,
 * must give a header section that parses back to exactly the edited
 * list, with no bare CR or LF, the body after it untouched; a new body
 * must come out with CRLF line ends only, whatever its pieces. Built by
 * tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "smtpd/milter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

static const char base_msg[] =
	"Received: from x by y; Mon, 1 Jan 2026 00:00:00 +0000\r\n"
	"Subject: fuzz\r\n"
	"X-Folded: one\r\n\ttwo\r\n"
	"\r\n"
	"the body\r\n.\r\n";
#define BODY_AT 93      /* where base_msg's body starts */

/* every CR is followed by LF and every LF follows a CR */
static void
check_crlf(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (s[i] == '\r')
			CHECK(i + 1 < n && s[i + 1] == '\n');
		if (s[i] == '\n')
			CHECK(i > 0 && s[i - 1] == '\r');
	}
}

static bool
inside(const void *p, const uint8_t *pkt, size_t len)
{
	return (const uint8_t *)p >= pkt && (const uint8_t *)p < pkt + len;
}

static void
check_reply(const uint8_t *pkt, size_t len, struct milter_mods *mods, bool *cr)
{
	struct milter_reply r;
	struct milter_mod m;
	struct dstr out;
	const char *why = NULL, *p;
	int st;

	if (milter_reply_parse(pkt, len, &r, &why) < 0) {
		CHECK(why != NULL);
		return;
	}
	CHECK(r.type == (char)pkt[0]);
	if (r.text) {
		CHECK(inside(r.text, pkt, len));
		CHECK(inside(r.text + strlen(r.text), pkt, len));
	}
	if (r.args)
		CHECK(inside(r.args + strlen(r.args), pkt, len));
	if (r.name) {
		CHECK(inside(r.name + strlen(r.name), pkt, len));
		CHECK(inside(r.value + strlen(r.value), pkt, len));
	}
	for (st = 0; st < MS_MAX; st++)
		(void)milter_reply_allowed((enum milter_stage)st, r.type, r.actions);
	switch (r.type) {
	case SMFIR_OPTNEG:
		(void)milter_negotiate(&r, MILTER_ACTIONS_OFFERED, MILTER_PROTO_OFFERED, &why);
		break;
	case SMFIR_REPLYCODE:
		dstr_init(&out, 0);
		if (milter_replycode(r.text, &out, &why) == 0) {
			CHECK(out.len >= 9);
			CHECK(out.s[0] == '4' || out.s[0] == '5');
			CHECK(out.s[4] == out.s[0] && out.s[5] == '.');   /* an enhanced code */
			check_crlf(out.s, out.len);
			CHECK(memcmp(out.s + out.len - 2, "\r\n", 2) != 0);
		}
		dstr_free(&out);
		break;
	case SMFIR_ADDHEADER:
	case SMFIR_INSHEADER:
	case SMFIR_CHGHEADER:
		if (!mhdr_name_ok(r.name) || mods->n >= 64)
			break;
		memset(&m, 0, sizeof(m));
		m.type = r.type == SMFIR_ADDHEADER ? MOD_ADDHDR :
			 r.type == SMFIR_INSHEADER ? MOD_INSHDR : MOD_CHGHDR;
		m.index = r.index;
		if (!(m.type == MOD_CHGHDR && r.value[0] == '\0')) {
			m.value = mhdr_value_from_filter(r.value, (r.index & 1) != 0);
			if (m.value == NULL)
				break;
			check_crlf(m.value, strlen(m.value));
			/* a line break only ever starts a continuation line */
			for (p = strstr(m.value, "\r\n"); p != NULL; p = strstr(p + 2, "\r\n"))
				CHECK(p[2] == ' ' || p[2] == '\t');
		}
		m.name = xstrdup(r.name);
		mods->v = xrealloc(mods->v, (mods->n + 1) * sizeof(*mods->v));
		mods->v[mods->n++] = m;
		break;
	case SMFIR_REPLBODY:
		if (!mods->body_replaced) {
			mods->body_replaced = true;
			dstr_free(&mods->body);
			dstr_init(&mods->body, 1 << 20);
		}
		(void)milter_body_append(&mods->body, r.data, r.len, cr);
		break;
	default:
		break;
	}
}

/* The edits applied: the section they make parses back to the edited
 * list, and a new body has CRLF line ends only. */
static void
check_apply(struct milter_mods *mods, bool *cr)
{
	struct mhdrs want, got;
	struct dstr c;
	ssize_t body;
	size_t i;

	if (mods->body_replaced && milter_body_finish(&mods->body, cr) == 0)
		check_crlf(mods->body.s ? mods->body.s : "", mods->body.len);
	CHECK(mhdrs_parse(base_msg, sizeof(base_msg) - 1, true, &want) == BODY_AT);
	for (i = 0; i < mods->n; i++)
		mhdrs_apply(&want, &mods->v[i]);
	dstr_init(&c, 0);
	mhdrs_serialize(&want, &c);
	dstr_append(&c, base_msg + BODY_AT, sizeof(base_msg) - 1 - BODY_AT);
	check_crlf(c.s, c.len);
	body = mhdrs_parse(c.s, c.len, true, &got);
	CHECK(body > 0);
	CHECK(got.n == want.n);
	for (i = 0; i < got.n; i++) {
		CHECK(strcmp(got.v[i].name, want.v[i].name) == 0);
		CHECK(strcmp(got.v[i].value, want.v[i].value) == 0);
	}
	CHECK(strcmp(c.s + body, base_msg + BODY_AT) == 0);
	mhdrs_free(&got);
	mhdrs_free(&want);
	dstr_free(&c);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct milter_mods mods;
	const char *why = NULL, *v[16];
	char args[256], text[300];
	size_t pktlen, off = 0, n;
	bool cr = false;

	milter_mods_init(&mods);
	while (off < size) {
		switch (milter_frame(data + off, size - off, &pktlen, &why)) {
		case MILTER_FRAME_NEED_MORE:
			off = size;
			continue;
		case MILTER_FRAME_ERROR:
			CHECK(why != NULL);
			off = size;
			continue;
		case MILTER_FRAME_OK:
			break;
		}
		CHECK(pktlen > MILTER_LEN_BYTES && pktlen <= size - off);
		check_reply(data + off + MILTER_LEN_BYTES, pktlen - MILTER_LEN_BYTES, &mods, &cr);
		off += pktlen;
	}
	check_apply(&mods, &cr);
	milter_mods_free(&mods);

	/* a MAIL or RCPT argument split into its parameters */
	n = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
	memcpy(text, data, n);
	text[n] = '\0';
	n = milter_esmtp_args(text, args, sizeof(args), v, 16);
	CHECK(n < 16 && v[n] == NULL);
	while (n-- > 0)
		CHECK(v[n][0] != '\0' && strchr(v[n], ' ') == NULL);
	return 0;
}
