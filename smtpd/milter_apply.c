/*
 * milter_apply.c - the edits filters make at the end of a message: the
 * header section as a list, a filter's header values and body bytes made
 * fit for the spool (CRLF, no bare CR or LF), and the application of the
 * edits to the message and to the envelope before the commit.
 *
 * Pure: the header section is a list, the body bytes; the spool stream
 * (queue/commit.c) writes the result. Nothing a filter sends can put a
 * bare CR or LF, an empty line inside the header section, or a recipient
 * the router refused into a queue file.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "smtpd/milter.h"
#include "smtpd/smtpd.h"

/* ---- the header section ---- */

static bool
name_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && c != ':';
}

static void
add_hdr(struct mhdrs *h, const char *name, size_t nlen, const char *value, size_t vlen)
{
	h->v = xrealloc(h->v, (h->n + 1) * sizeof(*h->v));
	h->v[h->n].name = xstrndup(name, nlen);
	h->v[h->n].value = xstrndup(value, vlen);
	h->n++;
}

/* A header line starting at p (n bytes up to its CRLF): the length of its
 * name, or 0 when it is not "name:" */
static size_t
header_name_len(const char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n && name_char((unsigned char)p[i]); i++)
		;
	return i > 0 && i < n && p[i] == ':' ? i : 0;
}

ssize_t
mhdrs_parse(const char *msg, size_t len, bool complete, struct mhdrs *h)
{
	const char *eol;
	size_t pos = 0, n, start = 0, colon = 0, end = 0;
	bool open = false;     /* a header is being read: msg[start..end) */

	memset(h, 0, sizeof(*h));
	for (;;) {
		eol = pos < len ? memmem(msg + pos, len - pos, "\r\n", 2) : NULL;
		if (eol == NULL && !complete) {
			mhdrs_free(h);
			return -1;
		}
		n = eol ? (size_t)(eol - (msg + pos)) : len - pos;
		if (pos < len && n > 0 && (msg[pos] == ' ' || msg[pos] == '\t') && open) {
			end = pos + n;          /* a continuation of the open header */
		} else {
			if (open)
				add_hdr(h, msg + start, colon - start, msg + colon + 1, end - colon - 1);
			open = false;
			if (pos >= len)
				return (ssize_t)len;
			if (n == 0)
				return (ssize_t)(pos + 2);      /* the empty line */
			if (header_name_len(msg + pos, n) == 0)
				return (ssize_t)pos;            /* not a header: the body begins */
			start = pos;
			colon = pos + header_name_len(msg + pos, n);
			end = pos + n;
			open = true;
		}
		if (eol == NULL) {
			add_hdr(h, msg + start, colon - start, msg + colon + 1, end - colon - 1);
			return (ssize_t)len;
		}
		pos = (size_t)(eol - msg) + 2;
	}
}

void
mhdrs_free(struct mhdrs *h)
{
	size_t i;

	for (i = 0; i < h->n; i++) {
		free(h->v[i].name);
		free(h->v[i].value);
	}
	free(h->v);
	h->v = NULL;
	h->n = 0;
}

void
mhdrs_copy(struct mhdrs *dst, const struct mhdrs *src)
{
	size_t i;

	dst->v = src->n ? xcalloc(src->n, sizeof(*dst->v)) : NULL;
	dst->n = src->n;
	for (i = 0; i < src->n; i++) {
		dst->v[i].name = xstrdup(src->v[i].name);
		dst->v[i].value = xstrdup(src->v[i].value);
	}
}

bool
mhdr_name_ok(const char *name)
{
	size_t i;

	for (i = 0; name[i] != '\0'; i++)
		if (!name_char((unsigned char)name[i]))
			return false;
	return i > 0 && i <= 256;
}

char *
mhdr_value_from_filter(const char *v, bool leadspc)
{
	struct dstr d;
	bool brk = false;
	const unsigned char *p;

	dstr_init(&d, 0);
	dstr_append(&d, leadspc ? "" : " ", leadspc ? 0 : 1);
	for (p = (const unsigned char *)v; *p != '\0'; p++) {
		if (*p == '\r' || *p == '\n') {
			brk = true;     /* CRLF, LF or a lone CR; empty lines fold away */
			continue;
		}
		if ((*p < 0x20 && *p != '\t') || *p == 0x7f) {
			dstr_free(&d);
			return NULL;
		}
		if (brk) {
			dstr_append(&d, (*p == ' ' || *p == '\t') ? "\r\n" : "\r\n\t",
				    (*p == ' ' || *p == '\t') ? 2 : 3);
			brk = false;
		}
		dstr_append(&d, p, 1);
	}
	if (d.s == NULL)
		return xstrdup("");
	return d.s;
}

const char *
mhdr_value_for_filter(const char *value, bool leadspc)
{
	if (!leadspc)
		while (*value == ' ' || *value == '\t')
			value++;
	return value;
}

void
mhdrs_apply(struct mhdrs *h, const struct milter_mod *mod)
{
	size_t i, at, seen = 0;
	uint32_t want;

	switch (mod->type) {
	case MOD_ADDHDR:
		add_hdr(h, mod->name, strlen(mod->name), mod->value, strlen(mod->value));
		return;
	case MOD_INSHDR:
		add_hdr(h, mod->name, strlen(mod->name), mod->value, strlen(mod->value));
		at = mod->index < h->n - 1 ? mod->index : h->n - 1;
		if (at < h->n - 1) {
			struct mhdr nh = h->v[h->n - 1];

			memmove(&h->v[at + 1], &h->v[at], (h->n - 1 - at) * sizeof(*h->v));
			h->v[at] = nh;
		}
		return;
	case MOD_CHGHDR:
		want = mod->index == 0 ? 1 : mod->index;     /* as Sendmail: 0 is the first */
		for (i = 0; i < h->n; i++) {
			if (strcasecmp(h->v[i].name, mod->name) != 0 || ++seen != want)
				continue;
			free(h->v[i].value);
			if (mod->value != NULL) {
				h->v[i].value = xstrdup(mod->value);
				return;
			}
			free(h->v[i].name);
			memmove(&h->v[i], &h->v[i + 1], (h->n - i - 1) * sizeof(*h->v));
			h->n--;
			return;
		}
		/* no such occurrence: a new value is added (libmilter's smfi_chgheader) */
		if (mod->value != NULL)
			add_hdr(h, mod->name, strlen(mod->name), mod->value, strlen(mod->value));
		return;
	default:
		return;
	}
}

/* ---- the body ---- */

int
milter_body_append(struct dstr *out, const unsigned char *p, size_t n, bool *cr)
{
	size_t i, run = 0;

	for (i = 0; i < n; i++) {
		if (*cr) {
			*cr = false;
			if (dstr_append(out, "\r\n", 2) < 0)
				return -1;
			if (p[i] == '\n') {
				run = i + 1;
				continue;
			}
		}
		if (p[i] != '\r' && p[i] != '\n')
			continue;
		if (dstr_append(out, p + run, i - run) < 0)
			return -1;
		if (p[i] == '\r')
			*cr = true;
		else if (dstr_append(out, "\r\n", 2) < 0)
			return -1;
		run = i + 1;
	}
	return dstr_append(out, p + run, n - run) < 0 ? -1 : 0;
}

int
milter_body_finish(struct dstr *out, bool *cr)
{
	if (!*cr)
		return 0;
	*cr = false;
	return dstr_append(out, "\r\n", 2);
}

/* ---- the edits ---- */

void
milter_mods_init(struct milter_mods *m)
{
	memset(m, 0, sizeof(*m));
	dstr_init(&m->body, 0);
}

void
milter_mods_free(struct milter_mods *m)
{
	size_t i;

	for (i = 0; i < m->n; i++) {
		free(m->v[i].name);
		free(m->v[i].value);
		free(m->v[i].addr);
		free(m->v[i].args);
	}
	free(m->v);
	dstr_free(&m->body);
	free(m->quarantine);
	milter_mods_init(m);
}

void
milter_mods_append(struct milter_mods *dst, struct milter_mods *src)
{
	if (src->n > 0) {
		dst->v = xrealloc(dst->v, (dst->n + src->n) * sizeof(*dst->v));
		memcpy(dst->v + dst->n, src->v, src->n * sizeof(*src->v));
		dst->n += src->n;
	}
	free(src->v);
	src->v = NULL;
	src->n = 0;
	if (src->body_replaced) {
		dstr_free(&dst->body);
		dst->body = src->body;
		dst->body_replaced = true;
		dstr_init(&src->body, 0);
		src->body_replaced = false;
	}
	if (src->quarantine != NULL) {
		free(dst->quarantine);
		dst->quarantine = src->quarantine;
		dst->quarantine_by = src->quarantine_by;
		src->quarantine = NULL;
	}
}

void
mhdrs_serialize(const struct mhdrs *h, struct dstr *out)
{
	size_t i;

	for (i = 0; i < h->n; i++) {
		dstr_append(out, h->v[i].name, strlen(h->v[i].name));
		dstr_append(out, ":", 1);
		dstr_append(out, h->v[i].value, strlen(h->v[i].value));
		dstr_append(out, "\r\n", 2);
	}
	dstr_append(out, "\r\n", 2);
}

bool
milter_mods_take_body(struct milter_mods *m, struct dstr *out)
{
	if (!m->body_replaced)
		return false;
	dstr_free(out);
	*out = m->body;
	dstr_init(&m->body, 0);
	m->body_replaced = false;
	return true;
}

bool
milter_mods_any(const struct milter_mods *m)
{
	return m->n > 0 || m->body_replaced || m->quarantine != NULL;
}

/* "address" or "<address>" as a filter names it, without the brackets */
static void
bare_addr(const char *a, char *out, size_t outlen)
{
	size_t n = strlen(a);

	if (n >= 2 && a[0] == '<' && a[n - 1] == '>')
		snprintf(out, outlen, "%.*s", (int)(n - 2), a + 1);
	else
		snprintf(out, outlen, "%s", a);
}

static int
env_fail(char *why, size_t whylen, char cls, const char *fmt, const char *milter, const char *a)
{
	char e[LOG_ESC_SIZE(ADDR_PATH_MAX)];

	why[0] = cls;
	snprintf(why + 1, whylen - 1, fmt, milter, log_esc(a, e, sizeof(e)));
	return -1;
}

/* Parses "VERB:<addr> args" the way the SMTP server parses the client's
 * MAIL and RCPT: one parser for both. */
static bool
parse_path(const char *verb, const char *addr, const char *args, bool smtputf8,
	   struct smtp_cmd *c, char *line, size_t linelen)
{
	const char *why;
	bool add_utf8 = smtputf8 && verb[0] == 'M' &&
			(args == NULL || strcasestr(args, "SMTPUTF8") == NULL);
	int n;

	n = snprintf(line, linelen, "%s<%s>%s%s%s", verb, addr, args && *args ? " " : "",
		     args ? args : "", add_utf8 ? " SMTPUTF8" : "");
	if (n < 0 || (size_t)n >= linelen)
		return false;
	return command_parse(line, (size_t)n, c, &why) == CMD_OK;
}

int
milter_apply_envelope(const struct milter_mods *m, struct milter_envelope *env, char *why,
		      size_t whylen)
{
	char addr[ADDR_PATH_MAX + 8], line[ADDR_PATH_MAX + 2048], want[ADDR_PATH_MAX + 8];
	struct dsn_sender_params sp;
	struct smtp_cmd c;
	size_t i, j, k;
	int rc;

	for (i = 0; i < m->n; i++) {
		const struct milter_mod *mod = &m->v[i];

		switch (mod->type) {
		case MOD_CHGFROM:
			bare_addr(mod->addr, want, sizeof(want));
			if (!parse_path("MAIL FROM:", want, mod->args, env->smtputf8, &c, line,
					sizeof(line)))
				return env_fail(why, whylen, '5', "milter %s: malformed sender <%s>",
						mod->milter, mod->addr);
			address_format(&c.addr, addr, sizeof(addr));
			sp = c.params.dsn_mail;
			sp.smtputf8 = env->smtputf8 || c.params.smtputf8;
			free(*env->sender);
			free(*env->sender_params);
			*env->sender = xstrdup(addr);
			*env->sender_params = spool_sender_params(&sp);
			break;
		case MOD_ADDRCPT:
			bare_addr(mod->addr, want, sizeof(want));
			if (!parse_path("RCPT TO:", want, mod->args, env->smtputf8, &c, line,
					sizeof(line)) || (c.addr.utf8 && !env->smtputf8))
				return env_fail(why, whylen, '5', "milter %s: malformed recipient <%s>",
						mod->milter, mod->addr);
			address_format(&c.addr, addr, sizeof(addr));
			for (j = 0; j < *env->nrcpt; j++) {
				k = spool_rcpt_addr_len((*env->rcpts)[j]);
				if (k == strlen(addr) && strncasecmp((*env->rcpts)[j], addr, k) == 0)
					break;
			}
			if (j < *env->nrcpt)
				break;          /* already a recipient */
			if (*env->nrcpt >= env->rcpt_limit)
				return env_fail(why, whylen, '5', "milter %s: recipient <%s> is one too "
						"many (smtpd_recipient_limit)", mod->milter, addr);
			rc = env->check_rcpt(env->arg, addr, mod->milter);
			if (rc < 0)
				return env_fail(why, whylen, '4', "milter %s: recipient <%s>: "
						"temporary lookup failure", mod->milter, addr);
			if (rc > 0)
				break;
			*env->rcpts = xrealloc(*env->rcpts, (*env->nrcpt + 1) * sizeof(**env->rcpts));
			(*env->rcpts)[(*env->nrcpt)++] = spool_rcpt_text(addr, &c.params.dsn_rcpt);
			break;
		case MOD_DELRCPT:
			bare_addr(mod->addr, want, sizeof(want));
			for (j = 0; j < *env->nrcpt;) {
				k = spool_rcpt_addr_len((*env->rcpts)[j]);
				if (k != strlen(want) || strncasecmp((*env->rcpts)[j], want, k) != 0) {
					j++;
					continue;
				}
				free((*env->rcpts)[j]);
				memmove(&(*env->rcpts)[j], &(*env->rcpts)[j + 1],
					(*env->nrcpt - j - 1) * sizeof(**env->rcpts));
				(*env->nrcpt)--;
			}
			break;
		default:
			break;
		}
	}
	return 0;
}
