/*
 * milter_proto.c - the milter protocol's bytes (version 6, as libmilter
 * speaks it): packet framing, the commands Sorter sends, the decoding of
 * every reply a filter can send, option negotiation, which reply may come
 * at which stage, and the checking of a filter's own SMTP reply text.
 *
 * Pure: no I/O, no allocation beyond the dstr it appends to. Every packet
 * from a filter is untrusted: nothing here reads past its length, and a
 * packet with a missing NUL, a missing field or a byte too many is an
 * error, never guessed at (tests/unit/check_milter.c, fuzz_milter.c).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "lib/lib.h"
#include "smtpd/milter.h"

static const char *const stage_names[MS_MAX] = {
	[MS_CONNECT] = "CONNECT", [MS_HELO] = "HELO", [MS_MAIL] = "MAIL", [MS_RCPT] = "RCPT",
	[MS_DATA] = "DATA", [MS_EOM] = "END-OF-MESSAGE", [MS_EOH] = "END-OF-HEADERS",
	[MS_HEADER] = "HEADER", [MS_BODY] = "BODY", [MS_OPTNEG] = "OPTNEG",
};

const char *
milter_stage_name(enum milter_stage st)
{
	return (unsigned)st < MS_MAX ? stage_names[st] : "?";
}

enum milter_frame_status
milter_frame(const unsigned char *buf, size_t len, size_t *pktlen, const char **why)
{
	uint32_t n;

	if (len < MILTER_LEN_BYTES)
		return MILTER_FRAME_NEED_MORE;
	n = be32_get(buf);
	if (n == 0) {
		*why = "a packet of length 0";
		return MILTER_FRAME_ERROR;
	}
	if (n > MILTER_PACKET_MAX) {
		*why = "a packet longer than 1 MiB";
		return MILTER_FRAME_ERROR;
	}
	if (len - MILTER_LEN_BYTES < n)
		return MILTER_FRAME_NEED_MORE;
	*pktlen = MILTER_LEN_BYTES + (size_t)n;
	return MILTER_FRAME_OK;
}

/* ---- encoders ---- */

/* Starts a packet: the length is patched in by end_packet(). */
static size_t
begin_packet(struct dstr *out, char cmd)
{
	unsigned char head[MILTER_LEN_BYTES + 1] = { 0, 0, 0, 0, (unsigned char)cmd };
	size_t at = out->len;

	dstr_append(out, head, sizeof(head));
	return at;
}

static void
end_packet(struct dstr *out, size_t at)
{
	be32_put((unsigned char *)out->s + at, (uint32_t)(out->len - at - MILTER_LEN_BYTES));
}

static void
add_str(struct dstr *out, const char *s)
{
	dstr_append(out, s, strlen(s) + 1);
}

void
milter_put(struct dstr *out, char cmd, const void *data, size_t n)
{
	size_t at = begin_packet(out, cmd);

	if (n > 0)
		dstr_append(out, data, n);
	end_packet(out, at);
}

void
milter_put_optneg(struct dstr *out, uint32_t version, uint32_t actions, uint32_t proto)
{
	unsigned char b[12];

	be32_put(b, version);
	be32_put(b + 4, actions);
	be32_put(b + 8, proto);
	milter_put(out, SMFIC_OPTNEG, b, sizeof(b));
}

void
milter_put_connect(struct dstr *out, const char *hostname, char family, uint16_t port,
		   const char *addr)
{
	size_t at = begin_packet(out, SMFIC_CONNECT);
	unsigned char p[2] = { (unsigned char)(port >> 8), (unsigned char)port };

	add_str(out, hostname);
	dstr_append(out, &family, 1);
	if (family != 'U') {
		dstr_append(out, p, 2);         /* network order, as libmilter copies it */
		add_str(out, addr);
	}
	end_packet(out, at);
}

void
milter_put_strings(struct dstr *out, char cmd, const char *const *v, size_t n)
{
	size_t at = begin_packet(out, cmd), i;

	for (i = 0; i < n; i++)
		add_str(out, v[i]);
	end_packet(out, at);
}

void
milter_put_header(struct dstr *out, const char *name, const char *value, size_t vlen)
{
	size_t at = begin_packet(out, SMFIC_HEADER);
	char nul = '\0';

	add_str(out, name);
	dstr_append(out, value, vlen);
	dstr_append(out, &nul, 1);
	end_packet(out, at);
}

void
milter_put_macros(struct dstr *out, char cmd, const char *const *names,
		  const char *const *values, size_t n)
{
	size_t at = begin_packet(out, SMFIC_MACRO), i;

	dstr_append(out, &cmd, 1);
	for (i = 0; i < n; i++) {
		add_str(out, names[i]);
		add_str(out, values[i]);
	}
	end_packet(out, at);
}

/* ---- the decoder ---- */

struct cursor {
	const unsigned char *p;
	size_t left;
	const char **why;
};

static bool
take_str(struct cursor *c, const char **out)
{
	const unsigned char *nul = memchr(c->p, '\0', c->left);

	if (nul == NULL) {
		*c->why = "a string without its NUL";
		return false;
	}
	*out = (const char *)c->p;
	c->left -= (size_t)(nul - c->p) + 1;
	c->p = nul + 1;
	return true;
}

static bool
take32(struct cursor *c, uint32_t *v)
{
	if (c->left < 4) {
		*c->why = "a packet too short for its fields";
		return false;
	}
	*v = be32_get(c->p);
	c->p += 4;
	c->left -= 4;
	return true;
}

static bool
at_end(struct cursor *c)
{
	if (c->left != 0) {
		*c->why = "bytes after the last field";
		return false;
	}
	return true;
}

int
milter_reply_parse(const unsigned char *pkt, size_t len, struct milter_reply *r,
		   const char **why)
{
	struct cursor c = { pkt + 1, len - 1, why };
	uint32_t stage;
	const char *list;

	memset(r, 0, sizeof(*r));
	if (len < 1) {
		*why = "an empty packet";
		return -1;
	}
	r->type = (char)pkt[0];
	switch (r->type) {
	case SMFIR_CONTINUE:
	case SMFIR_ACCEPT:
	case SMFIR_REJECT:
	case SMFIR_TEMPFAIL:
	case SMFIR_DISCARD:
	case SMFIR_SKIP:
	case SMFIR_PROGRESS:
	case SMFIR_SHUTDOWN:
	case SMFIR_CONN_FAIL:
		return at_end(&c) ? 0 : -1;
	case SMFIR_REPLYCODE:
	case SMFIR_QUARANTINE:
	case SMFIR_ADDRCPT:
	case SMFIR_DELRCPT:
		return take_str(&c, &r->text) && at_end(&c) ? 0 : -1;
	case SMFIR_ADDRCPT_PAR:
	case SMFIR_CHGFROM:
		if (!take_str(&c, &r->text))
			return -1;
		if (c.left > 0 && !take_str(&c, &r->args))
			return -1;
		return at_end(&c) ? 0 : -1;
	case SMFIR_INSHEADER:
	case SMFIR_CHGHEADER:
		if (!take32(&c, &r->index))
			return -1;
		/* FALLTHROUGH */
	case SMFIR_ADDHEADER:
		return take_str(&c, &r->name) && take_str(&c, &r->value) && at_end(&c) ? 0 : -1;
	case SMFIR_REPLBODY:
		r->data = c.p;
		r->len = c.left;
		return 0;
	case SMFIR_OPTNEG:
		if (!take32(&c, &r->version) || !take32(&c, &r->actions) || !take32(&c, &r->proto))
			return -1;
		while (c.left > 0) {
			if (!take32(&c, &stage) || !take_str(&c, &list))
				return -1;
			if (stage >= MILTER_MACRO_STAGES) {
				*why = "a macro list for an unknown stage";
				return -1;
			}
			if (r->macros[stage] != NULL) {
				*why = "two macro lists for one stage";
				return -1;
			}
			r->macros[stage] = list;
		}
		return 0;
	default:
		*why = "an unknown reply";
		return -1;
	}
}

int
milter_negotiate(const struct milter_reply *r, uint32_t offered_actions, uint32_t offered_proto,
		 const char **why)
{
	char msg[256];
	int i;

	if (r->type != SMFIR_OPTNEG) {
		*why = "no option negotiation reply";
		return -1;
	}
	/* libmilter answers with the lower of the two versions; 2 is its oldest */
	if (r->version < 2 || r->version > MILTER_VERSION) {
		*why = "an unsupported protocol version";
		return -1;
	}
	if ((r->actions & ~offered_actions) != 0) {
		*why = "actions that were not offered";
		return -1;
	}
	if ((r->proto & ~offered_proto) != 0) {
		*why = "protocol steps that were not offered";
		return -1;
	}
	for (i = 0; i < MILTER_MACRO_STAGES; i++)
		if (r->macros[i] != NULL && milter_macros_check(r->macros[i], msg, sizeof(msg)) < 0) {
			*why = "a malformed macro list";
			return -1;
		}
	return 0;
}

bool
milter_reply_allowed(enum milter_stage st, char type, uint32_t actions)
{
	uint32_t need = 0;

	if (st == MS_OPTNEG)
		return type == SMFIR_OPTNEG;
	switch (type) {
	case SMFIR_CONTINUE:
	case SMFIR_ACCEPT:
	case SMFIR_REJECT:
	case SMFIR_TEMPFAIL:
	case SMFIR_REPLYCODE:
	case SMFIR_PROGRESS:
	case SMFIR_SHUTDOWN:
	case SMFIR_CONN_FAIL:
		return true;
	case SMFIR_DISCARD:
		/* a message decision: from MAIL on */
		return st != MS_CONNECT && st != MS_HELO;
	case SMFIR_SKIP:
		return st == MS_BODY;
	case SMFIR_ADDHEADER:
	case SMFIR_INSHEADER:
		need = SMFIF_ADDHDRS;
		break;
	case SMFIR_CHGHEADER:
		need = SMFIF_CHGHDRS;
		break;
	case SMFIR_REPLBODY:
		need = SMFIF_CHGBODY;
		break;
	case SMFIR_ADDRCPT:
		need = SMFIF_ADDRCPT;
		break;
	case SMFIR_ADDRCPT_PAR:
		need = SMFIF_ADDRCPT_PAR;
		break;
	case SMFIR_DELRCPT:
		need = SMFIF_DELRCPT;
		break;
	case SMFIR_CHGFROM:
		need = SMFIF_CHGFROM;
		break;
	case SMFIR_QUARANTINE:
		need = SMFIF_QUARANTINE;
		break;
	default:
		return false;
	}
	/* edits come at the end of the message only, and only those negotiated */
	return st == MS_EOM && (actions & need) != 0;
}

#define REPLY_LINE_MAX 512

/* "D.D{1,3}.D{1,3}" then a space or the end: its length, else 0 */
static size_t
enhanced_len(const char *s, size_t n)
{
	size_t i = 0, part, digits;

	for (part = 0; part < 3; part++) {
		if (part > 0) {
			if (i >= n || s[i] != '.')
				return 0;
			i++;
		}
		for (digits = 0; i < n && s[i] >= '0' && s[i] <= '9'; i++)
			digits++;
		if (digits == 0 || digits > (part == 0 ? 1 : 3))
			return 0;
	}
	return i == n || s[i] == ' ' ? i : 0;
}

int
milter_replycode(const char *text, struct dstr *out, const char **why)
{
	const char *line = text, *eol;
	size_t n, i, e;
	char code[3];
	bool last;

	if (strlen(text) > MILTER_REPLY_TEXT_MAX) {
		*why = "a reply text longer than 4096 bytes";
		return -1;
	}
	dstr_reset(out);
	for (;;) {
		eol = strstr(line, "\r\n");
		last = eol == NULL;
		n = last ? strlen(line) : (size_t)(eol - line);
		if (n < 3 || n > REPLY_LINE_MAX) {
			*why = "a reply line too short or too long";
			return -1;
		}
		for (i = 0; i < n; i++)
			if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] > 0x7e) {
				*why = "a reply text with a control or 8-bit character";
				return -1;
			}
		if (line == text) {
			if ((line[0] != '4' && line[0] != '5') || line[1] < '0' || line[1] > '9' ||
			    line[2] < '0' || line[2] > '9') {
				*why = "a reply code that is not 4xx or 5xx";
				return -1;
			}
			memcpy(code, line, 3);
		} else if (memcmp(line, code, 3) != 0) {
			*why = "reply lines with different codes";
			return -1;
		}
		if (n > 3 && line[3] != (last ? ' ' : '-')) {
			*why = "a reply line without its ' ' or '-' after the code";
			return -1;
		}
		if (n == 3 && !last) {
			*why = "a reply line without its '-' after the code";
			return -1;
		}
		e = n > 4 ? enhanced_len(line + 4, n - 4) : 0;
		if (e > 0 && line[4] != code[0]) {
			*why = "an enhanced status code of another class than the reply";
			return -1;
		}
		if (out->len > 0)
			dstr_append(out, "\r\n", 2);
		dstr_append(out, line, 3);
		dstr_append(out, last ? " " : "-", 1);
		if (e == 0)     /* RFC 3463 in every reply: a policy refusal when it says none */
			dstr_printf(out, "%c.7.1%s", code[0], n > 4 ? " " : "");
		if (n > 4)
			dstr_append(out, line + 4, n - 4);
		if (last)
			return 0;
		line = eol + 2;
	}
}

size_t
milter_esmtp_args(const char *arg, char *buf, size_t buflen, const char **v, size_t max)
{
	const char *p = strchr(arg, ':');
	size_t n = 0, len, used = 0;
	bool quoted = false;

	if (max == 0)
		return 0;
	v[0] = NULL;
	if (p == NULL)
		return 0;
	for (p++; *p == ' '; p++)
		;
	if (*p == '<') {
		/* the path ends at the first '>' outside a quoted string */
		for (p++; *p != '\0' && (quoted || *p != '>'); p++) {
			if (*p == '\\' && p[1] != '\0')
				p++;
			else if (*p == '"')
				quoted = !quoted;
		}
		if (*p == '>')
			p++;
	} else {
		p += strcspn(p, " ");
	}
	while (*p != '\0' && n + 1 < max) {
		p += strspn(p, " ");
		len = strcspn(p, " ");
		if (len == 0 || used + len + 1 > buflen)
			break;
		memcpy(buf + used, p, len);
		buf[used + len] = '\0';
		v[n++] = buf + used;
		used += len + 1;
		p += len;
	}
	v[n] = NULL;
	return n;
}
