/*
 * dsnparam.c - the one codec of RFC 3461 DSN parameters: NOTIFY and ORCPT
 * of a recipient, RET and ENVID of a sender. The SMTP server parses them
 * with it at MAIL and RCPT (one value at a time, as the command parser
 * meets them), writes them into the spool with it, and the queue manager
 * reads them back with it, so that whatever the server accepted is
 * exactly what the queue manager acts on.
 *
 * The sender's record also keeps SMTPUTF8 (RFC 6531), the MAIL parameter
 * that is a keyword alone. The spool form is the SMTP form: SP-separated
 * KEYWORD=value (or KEYWORD), xtext encoded, with canonical keywords and
 * order. Pure: no I/O. It must never
 * accept a value that its own formatter cannot write back to the same
 * value (the fuzz targets check that), and never read past a string.
 */
#include "config.h"

#include <string.h>

#include "lib/lib.h"

static bool
is_letdig(int c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* ---- one value at a time ---- */

/* "NEVER" alone, or a list of SUCCESS, FAILURE, DELAY, each at most once */
const char *
dsn_notify_parse(const char *v, size_t n, int *notify)
{
	static const struct {
		const char *name;
		int bit;
	} words[] = {
		{ "SUCCESS", DSN_NOTIFY_SUCCESS }, { "FAILURE", DSN_NOTIFY_FAILURE },
		{ "DELAY", DSN_NOTIFY_DELAY }, { "NEVER", DSN_NOTIFY_NEVER },
	};
	const char *end = v + n, *w, *comma;
	int set = 0;
	size_t i;

	for (w = v; ; w = comma + 1) {
		if ((comma = memchr(w, ',', (size_t)(end - w))) == NULL)
			comma = end;
		for (i = 0; i < sizeof(words) / sizeof(words[0]); i++)
			if (word_is(w, (size_t)(comma - w), words[i].name))
				break;
		if (i == sizeof(words) / sizeof(words[0]) || (set & words[i].bit))
			return "invalid NOTIFY value";
		set |= words[i].bit;
		if (comma == end)
			break;
	}
	if ((set & DSN_NOTIFY_NEVER) && set != DSN_NOTIFY_NEVER)
		return "NOTIFY=NEVER must be alone";
	*notify = set;
	return NULL;
}

/* addr-type ";" xtext (RFC 3461 4.2): at most DSN_ORCPT_MAX characters in
 * all, the type an atom of at most DSN_ADDRTYPE_MAX, the address printable
 * US-ASCII or space once decoded. */
const char *
dsn_orcpt_parse(const char *v, size_t n, struct dsn_rcpt_params *p)
{
	const char *semi = memchr(v, ';', n), *t, *why;

	if (n > DSN_ORCPT_MAX)
		return "ORCPT too long";
	if (semi == NULL || semi == v || semi + 1 == v + n)
		return "invalid ORCPT value";
	if ((size_t)(semi - v) > DSN_ADDRTYPE_MAX)
		return "ORCPT address type too long";
	for (t = v; t < semi; t++)
		if (!is_letdig((unsigned char)*t) && *t != '-')
			return "invalid ORCPT address type";
	if (xtext_decode(semi + 1, (size_t)(v + n - semi - 1), p->orcpt,
			 sizeof(p->orcpt), &why) < 0) {
		p->orcpt_type[0] = '\0';
		return why;
	}
	memcpy(p->orcpt_type, v, (size_t)(semi - v));
	p->orcpt_type[semi - v] = '\0';
	return NULL;
}

const char *
dsn_ret_parse(const char *v, size_t n, int *ret)
{
	if (word_is(v, n, "FULL"))
		*ret = DSN_RET_FULL;
	else if (word_is(v, n, "HDRS"))
		*ret = DSN_RET_HDRS;
	else
		return "invalid RET value";
	return NULL;
}

/* RFC 3461 4.4: at most DSN_ENVID_MAX characters of xtext, decoding to
 * printable US-ASCII (no space) */
const char *
dsn_envid_parse(const char *v, size_t n, struct dsn_sender_params *p)
{
	const char *why;

	if (n > DSN_ENVID_MAX)
		return "ENVID too long";
	if (xtext_decode(v, n, p->envid, sizeof(p->envid), &why) < 0)
		return why;
	if (strchr(p->envid, ' ') != NULL) {
		p->envid[0] = '\0';
		return "invalid ENVID value";
	}
	return NULL;
}

/* ---- the spool form ---- */

struct param {
	const char *key, *val;
	size_t klen, vlen;
};

/*
 * Takes the next SP-separated "KEYWORD=value" or "KEYWORD" (val NULL) off
 * *sp. Returns 1 with a pair, 0 at the end of the string, -1 when the word
 * is of neither form.
 */
static int
next_param(const char **sp, struct param *pr, const char **why)
{
	const char *s = *sp, *eq;
	size_t n;

	while (*s == ' ')
		s++;
	if (*s == '\0') {
		*sp = s;
		return 0;
	}
	n = strcspn(s, " ");
	*sp = s + n;
	eq = memchr(s, '=', n);
	if (eq == s || (eq != NULL && eq + 1 == s + n)) {
		*why = eq == s ? "missing parameter keyword" : "missing parameter value";
		return -1;
	}
	pr->key = s;
	pr->klen = eq != NULL ? (size_t)(eq - s) : n;
	pr->val = eq != NULL ? eq + 1 : NULL;
	pr->vlen = eq != NULL ? n - pr->klen - 1 : 0;
	return 1;
}

int
dsn_parse_rcpt_params(const char *s, struct dsn_rcpt_params *p, const char **why)
{
	const char *reason = NULL;
	struct param pr;
	bool seen_notify = false, seen_orcpt = false;

	memset(p, 0, sizeof(*p));
	if (s == NULL)
		return 0;
	while (reason == NULL && next_param(&s, &pr, &reason) > 0) {
		if (pr.val == NULL) {
			reason = "missing parameter value";
		} else if (word_is(pr.key, pr.klen, "NOTIFY")) {
			if (seen_notify)
				reason = "duplicate NOTIFY";
			else
				reason = dsn_notify_parse(pr.val, pr.vlen, &p->notify);
			seen_notify = true;
		} else if (word_is(pr.key, pr.klen, "ORCPT")) {
			if (seen_orcpt)
				reason = "duplicate ORCPT";
			else
				reason = dsn_orcpt_parse(pr.val, pr.vlen, p);
			seen_orcpt = true;
		} else {
			reason = "unknown recipient DSN parameter";
		}
	}
	if (reason != NULL) {
		memset(p, 0, sizeof(*p));
		if (why != NULL)
			*why = reason;
		return -1;
	}
	return 0;
}

int
dsn_parse_sender_params(const char *s, struct dsn_sender_params *p, const char **why)
{
	const char *reason = NULL;
	struct param pr;
	bool seen_envid = false;

	memset(p, 0, sizeof(*p));
	if (s == NULL)
		return 0;
	while (reason == NULL && next_param(&s, &pr, &reason) > 0) {
		if (word_is(pr.key, pr.klen, "SMTPUTF8")) {
			/* RFC 6531 3.4: the keyword alone */
			if (pr.val != NULL)
				reason = "SMTPUTF8 takes no value";
			else if (p->smtputf8)
				reason = "duplicate SMTPUTF8";
			p->smtputf8 = true;
		} else if (pr.val == NULL) {
			reason = "missing parameter value";
		} else if (word_is(pr.key, pr.klen, "RET")) {
			if (p->ret != 0)
				reason = "duplicate RET";
			else
				reason = dsn_ret_parse(pr.val, pr.vlen, &p->ret);
		} else if (word_is(pr.key, pr.klen, "ENVID")) {
			if (seen_envid)
				reason = "duplicate ENVID";
			else
				reason = dsn_envid_parse(pr.val, pr.vlen, p);
			seen_envid = true;
		} else {
			reason = "unknown sender DSN parameter";
		}
	}
	if (reason != NULL) {
		memset(p, 0, sizeof(*p));
		if (why != NULL)
			*why = reason;
		return -1;
	}
	return 0;
}

/* NEVER, or SUCCESS,FAILURE,DELAY in that order; then ORCPT */
void
dsn_format_rcpt_params(const struct dsn_rcpt_params *p, struct dstr *out)
{
	struct dstr d;

	dstr_init(&d, 0);
	if (p->notify) {
		dstr_printf(&d, "NOTIFY=%s%s%s%s",
		    (p->notify & DSN_NOTIFY_NEVER) ? "NEVER," : "",
		    (p->notify & DSN_NOTIFY_SUCCESS) ? "SUCCESS," : "",
		    (p->notify & DSN_NOTIFY_FAILURE) ? "FAILURE," : "",
		    (p->notify & DSN_NOTIFY_DELAY) ? "DELAY," : "");
		d.s[--d.len] = '\0';
	}
	if (p->orcpt_type[0] != '\0') {
		dstr_printf(&d, "%sORCPT=%s;", d.len ? " " : "", p->orcpt_type);
		xtext_encode(p->orcpt, strlen(p->orcpt), &d);
	}
	if (d.len)
		(void)dstr_append(out, d.s, d.len);
	dstr_free(&d);
}

void
dsn_format_sender_params(const struct dsn_sender_params *p, struct dstr *out)
{
	struct dstr d;

	dstr_init(&d, 0);
	if (p->ret == DSN_RET_FULL || p->ret == DSN_RET_HDRS)
		dstr_printf(&d, "RET=%s", p->ret == DSN_RET_FULL ? "FULL" : "HDRS");
	if (p->envid[0] != '\0') {
		dstr_printf(&d, "%sENVID=", d.len ? " " : "");
		xtext_encode(p->envid, strlen(p->envid), &d);
	}
	if (p->smtputf8)
		dstr_printf(&d, "%sSMTPUTF8", d.len ? " " : "");
	if (d.len)
		(void)dstr_append(out, d.s, d.len);
	dstr_free(&d);
}
