/*
 * command.c - the SMTP command-line parser: verb, argument, and for MAIL
 * and RCPT the path and ESMTP parameters (RFC 5321 4.1.1, RFC 1870 SIZE,
 * RFC 6152 8BITMIME, RFC 3461 DSN, RFC 4954 AUTH=, RFC 6531 SMTPUTF8), and
 * BDAT's chunk size (RFC 3030).
 *
 * Paths are parsed with the RFC 6531 grammar (UTF-8 allowed, well formed,
 * no control characters): a MAIL whose path has UTF-8 must carry SMTPUTF8
 * on the same line (CMD_ERR_UTF8 otherwise); for a RCPT that depends on
 * the transaction, so the session decides from cmd->addr.utf8.
 *
 * A pure function over one line whose CRLF the caller has removed: no I/O,
 * no allocation, no state, no knowledge of the session. It decides only
 * whether the line is well formed; whether the command is allowed now
 * (state, limits, policy) is the session's business. It must never read
 * outside the line and never accept a control character, so that nothing
 * downstream (logs, spool records) can be fed one through a command.
 */
#include "config.h"

#include <arpa/inet.h>
#include <limits.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

enum arg_rule { ARG_NONE, ARG_OPTIONAL, ARG_REQUIRED };

typedef enum cmd_status (*arg_parser)(const char *arg, size_t len,
				      struct smtp_cmd *cmd, const char **why);

static enum cmd_status parse_mail(const char *, size_t, struct smtp_cmd *, const char **);
static enum cmd_status parse_rcpt(const char *, size_t, struct smtp_cmd *, const char **);
static enum cmd_status parse_bdat(const char *, size_t, struct smtp_cmd *, const char **);

/* The one table of verbs. `usage` is the reason given for a missing or
 * unexpected argument. */
static const struct verb_def {
	const char *name;
	enum smtp_verb verb;
	enum arg_rule arg;
	arg_parser parse;       /* NULL: the argument is taken as it is */
	const char *usage;
} verbs[] = {
	{ "HELO", VERB_HELO, ARG_REQUIRED, NULL, "Syntax: HELO hostname" },
	{ "EHLO", VERB_EHLO, ARG_REQUIRED, NULL, "Syntax: EHLO hostname" },
	{ "MAIL", VERB_MAIL, ARG_REQUIRED, parse_mail, "Syntax: MAIL FROM:<address>" },
	{ "RCPT", VERB_RCPT, ARG_REQUIRED, parse_rcpt, "Syntax: RCPT TO:<address>" },
	{ "DATA", VERB_DATA, ARG_NONE, NULL, "Syntax: DATA" },
	{ "RSET", VERB_RSET, ARG_NONE, NULL, "Syntax: RSET" },
	{ "NOOP", VERB_NOOP, ARG_OPTIONAL, NULL, NULL },
	{ "QUIT", VERB_QUIT, ARG_NONE, NULL, "Syntax: QUIT" },
	{ "VRFY", VERB_VRFY, ARG_REQUIRED, NULL, "Syntax: VRFY address" },
	{ "EXPN", VERB_EXPN, ARG_REQUIRED, NULL, "Syntax: EXPN list" },
	{ "HELP", VERB_HELP, ARG_OPTIONAL, NULL, NULL },
	{ "STARTTLS", VERB_STARTTLS, ARG_NONE, NULL, "Syntax: STARTTLS" },
	{ "AUTH", VERB_AUTH, ARG_REQUIRED, NULL, "Syntax: AUTH mechanism [initial-response]" },
	{ "BDAT", VERB_BDAT, ARG_REQUIRED, parse_bdat, "Syntax: BDAT count [LAST]" },
};

#define NVERBS (sizeof(verbs) / sizeof(verbs[0]))

/* ---- ESMTP parameters ---- */

typedef const char *(*param_parser)(const char *v, size_t n, struct smtp_params *p);

static const char *param_size(const char *, size_t, struct smtp_params *);
static const char *param_body(const char *, size_t, struct smtp_params *);
static const char *param_ret(const char *, size_t, struct smtp_params *);
static const char *param_envid(const char *, size_t, struct smtp_params *);
static const char *param_auth(const char *, size_t, struct smtp_params *);
static const char *param_notify(const char *, size_t, struct smtp_params *);
static const char *param_orcpt(const char *, size_t, struct smtp_params *);
static const char *param_smtputf8(const char *, size_t, struct smtp_params *);

/* Each parameter may appear once per command. */
static const struct param_def {
	const char *name;
	enum smtp_verb verb;    /* the command it belongs to */
	param_parser parse;     /* returns NULL or why the value is bad */
	bool no_value;          /* a keyword alone; else a value is required */
} params[] = {
	{ "SIZE", VERB_MAIL, param_size, false },
	{ "BODY", VERB_MAIL, param_body, false },
	{ "RET", VERB_MAIL, param_ret, false },
	{ "ENVID", VERB_MAIL, param_envid, false },
	{ "AUTH", VERB_MAIL, param_auth, false },
	{ "SMTPUTF8", VERB_MAIL, param_smtputf8, true },
	{ "NOTIFY", VERB_RCPT, param_notify, false },
	{ "ORCPT", VERB_RCPT, param_orcpt, false },
};

#define NPARAMS (sizeof(params) / sizeof(params[0]))

static bool
is_letdig(int c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static const char *
param_size(const char *v, size_t n, struct smtp_params *p)
{
	long long size = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		if (v[i] < '0' || v[i] > '9')
			return "invalid SIZE value";
		if (size > (LLONG_MAX - (v[i] - '0')) / 10)
			return "SIZE value too large";
		size = size * 10 + (v[i] - '0');
	}
	p->size = size;
	return NULL;
}

static const char *
param_body(const char *v, size_t n, struct smtp_params *p)
{
	if (word_is(v, n, "7BIT"))
		p->body = BODY_7BIT;
	else if (word_is(v, n, "8BITMIME"))
		p->body = BODY_8BITMIME;
	else
		return "unsupported BODY type";
	return NULL;
}

/* RFC 3461: the DSN codec's own value parsers, so that nothing is
 * accepted here that the spool cannot keep */
static const char *
param_ret(const char *v, size_t n, struct smtp_params *p)
{
	return dsn_ret_parse(v, n, &p->dsn_mail.ret);
}

static const char *
param_envid(const char *v, size_t n, struct smtp_params *p)
{
	return dsn_envid_parse(v, n, &p->dsn_mail);
}

/* RFC 4954 5: accepted and ignored, the identity comes from our own AUTH */
static const char *
param_auth(const char *v, size_t n, struct smtp_params *p)
{
	return NULL;
}

static const char *
param_notify(const char *v, size_t n, struct smtp_params *p)
{
	return dsn_notify_parse(v, n, &p->dsn_rcpt.notify);
}

static const char *
param_orcpt(const char *v, size_t n, struct smtp_params *p)
{
	return dsn_orcpt_parse(v, n, &p->dsn_rcpt);
}

/* RFC 6531 3.4: a keyword without a value */
static const char *
param_smtputf8(const char *v, size_t n, struct smtp_params *p)
{
	p->smtputf8 = true;
	return NULL;
}

/*
 * Mail-parameters: SP-separated esmtp-param = esmtp-keyword ["=" esmtp-value]
 * (RFC 5321 4.1.2). `s` starts right after the path. A well-formed keyword
 * this verb does not take is CMD_ERR_PARAM (555); anything malformed, a
 * duplicate, or a value its parameter refuses is CMD_ERR_SYNTAX (501).
 */
static enum cmd_status
parse_params(const char *s, size_t len, struct smtp_cmd *cmd, const char **why)
{
	const char *p = s, *end = s + len;
	unsigned seen = 0;

	if (p < end && *p != ' ') {
		*why = "unexpected text after address";
		return CMD_ERR_ADDRESS;
	}
	while (p < end) {
		const char *kw, *eq, *tok_end, *v;
		size_t i;

		while (p < end && *p == ' ')
			p++;
		if (p == end)
			break;
		kw = p;
		while (p < end && *p != ' ')
			p++;
		tok_end = p;
		if ((eq = memchr(kw, '=', (size_t)(tok_end - kw))) == NULL)
			eq = tok_end;

		/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
		if (eq == kw || !is_letdig((unsigned char)*kw)) {
			*why = "malformed parameter";
			return CMD_ERR_SYNTAX;
		}
		for (v = kw; v < eq; v++) {
			if (!is_letdig((unsigned char)*v) && *v != '-') {
				*why = "malformed parameter";
				return CMD_ERR_SYNTAX;
			}
		}
		for (i = 0; i < NPARAMS; i++)
			if (params[i].verb == cmd->verb &&
			    word_is(kw, (size_t)(eq - kw), params[i].name))
				break;
		if (i == NPARAMS) {
			*why = "unsupported parameter";
			return CMD_ERR_PARAM;
		}
		if (seen & (1u << i)) {
			*why = "duplicate parameter";
			return CMD_ERR_SYNTAX;
		}
		seen |= 1u << i;

		if (params[i].no_value) {
			if (eq != tok_end) {
				*why = "parameter takes no value";
				return CMD_ERR_SYNTAX;
			}
			(void)params[i].parse(NULL, 0, &cmd->params);
			continue;
		}
		/* esmtp-value = 1*(%d33-60 / %d62-126) */
		if (eq == tok_end || eq + 1 == tok_end) {
			*why = "missing parameter value";
			return CMD_ERR_SYNTAX;
		}
		for (v = eq + 1; v < tok_end; v++) {
			if ((unsigned char)*v < 33 || (unsigned char)*v > 126 || *v == '=') {
				*why = "malformed parameter value";
				return CMD_ERR_SYNTAX;
			}
		}
		if ((*why = params[i].parse(eq + 1, (size_t)(tok_end - eq - 1),
					    &cmd->params)) != NULL)
			return CMD_ERR_SYNTAX;
	}
	return CMD_OK;
}

/* "FROM:" / "TO:", optional spaces, a path, parameters */
static enum cmd_status
parse_path_arg(const char *arg, size_t len, const char *prefix, int flags,
	       struct smtp_cmd *cmd, const char **why)
{
	size_t plen = strlen(prefix), i;
	int n;

	if (len < plen || strncasecmp(arg, prefix, plen) != 0)
		return CMD_ERR_SYNTAX;
	/* RFC 5321 says no space here; many clients send one anyway */
	for (i = plen; i < len && arg[i] == ' '; i++)
		;
	if (i == len)
		return CMD_ERR_SYNTAX;
	if ((n = address_parse(arg + i, len - i, flags | ADDR_ALLOW_UTF8, &cmd->addr, why)) < 0)
		return CMD_ERR_ADDRESS;
	i += (size_t)n;
	return parse_params(arg + i, len - i, cmd, why);
}

static enum cmd_status
parse_mail(const char *arg, size_t len, struct smtp_cmd *cmd, const char **why)
{
	enum cmd_status st = parse_path_arg(arg, len, "FROM:", ADDR_ALLOW_NULL, cmd, why);

	/* RFC 6531 3.4: UTF-8 in the envelope only in a declared transaction */
	if (st == CMD_OK && cmd->addr.utf8 && !cmd->params.smtputf8) {
		*why = "Must declare SMTPUTF8 to send UTF-8 addresses";
		return CMD_ERR_UTF8;
	}
	return st;
}

static enum cmd_status
parse_rcpt(const char *arg, size_t len, struct smtp_cmd *cmd, const char **why)
{
	return parse_path_arg(arg, len, "TO:", ADDR_ALLOW_POSTMASTER, cmd, why);
}

/*
 * "BDAT" SP chunk-size [SP "LAST"], chunk-size = 1*DIGIT (RFC 3030 3).
 * Spaces are taken as loosely as for the other verbs; a size must fit in
 * 63 bits (nobody sends more, and the reader counts it down in 64).
 */
static enum cmd_status
parse_bdat(const char *arg, size_t len, struct smtp_cmd *cmd, const char **why)
{
	const char *p = arg, *end = arg + len;
	uint64_t n = 0;

	if (p == end || *p < '0' || *p > '9')
		return CMD_ERR_SYNTAX;
	for (; p < end && *p >= '0' && *p <= '9'; p++) {
		if (n > ((uint64_t)LLONG_MAX - (uint64_t)(*p - '0')) / 10) {
			*why = "BDAT chunk size too large";
			return CMD_ERR_SYNTAX;
		}
		n = n * 10 + (uint64_t)(*p - '0');
	}
	cmd->chunk_size = n;
	cmd->chunk_last = false;
	if (p == end)
		return CMD_OK;
	if (*p != ' ')
		return CMD_ERR_SYNTAX;
	while (p < end && *p == ' ')
		p++;
	if (!word_is(p, (size_t)(end - p), "LAST"))
		return CMD_ERR_SYNTAX;
	cmd->chunk_last = true;
	return CMD_OK;
}

static enum cmd_status parse_line(const char *line, size_t len, struct smtp_cmd *cmd,
				  const char **why);

/*
 * A BDAT line is followed by the octets of its chunk. When the line cannot
 * be parsed, their number is unknown and whatever follows could be content
 * as well as commands: such a line gets its own status, on which the
 * session gives up (RFC 3030 leaves no way to resynchronise). Any line that
 * starts with "BDAT" counts, as a client that sent "BDAT\t10" or "BDAT 1x"
 * may well have meant a chunk.
 */
enum cmd_status
command_parse(const char *line, size_t len, struct smtp_cmd *cmd, const char **why)
{
	const char *ignored;
	enum cmd_status st;

	if (why == NULL)
		why = &ignored;
	st = parse_line(line, len, cmd, why);
	if (st != CMD_OK && len >= 4 && strncasecmp(line, "BDAT", 4) == 0) {
		cmd->verb = VERB_BDAT;
		if (st != CMD_ERR_SYNTAX)
			*why = "Syntax: BDAT count [LAST]";
		st = CMD_ERR_BDAT;
	}
	return st;
}

static enum cmd_status
parse_line(const char *line, size_t len, struct smtp_cmd *cmd, const char **why)
{
	const struct verb_def *d = NULL;
	const char *ignored, *end = line + len, *p;
	enum cmd_status st;
	size_t i, vlen;

	if (why == NULL)
		why = &ignored;
	*why = NULL;
	memset(cmd, 0, sizeof(*cmd));
	cmd->verb = VERB_UNKNOWN;
	cmd->params.size = -1;
	cmd->arg = line;

	if (len == 0) {
		*why = "empty command";
		return CMD_ERR_UNKNOWN;
	}
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)line[i];

		if (c < 0x20 || c == 0x7f) {
			*why = "invalid character in command";
			return CMD_ERR_SYNTAX;
		}
	}

	/* the verb ends at the first space or at the end of the line */
	for (p = line; p < end && *p != ' '; p++)
		;
	vlen = (size_t)(p - line);
	for (i = 0; i < NVERBS; i++) {
		if (word_is(line, vlen, verbs[i].name)) {
			d = &verbs[i];
			break;
		}
	}
	if (d == NULL) {
		*why = "command unrecognized";
		return CMD_ERR_UNKNOWN;
	}
	cmd->verb = d->verb;

	while (p < end && *p == ' ')
		p++;
	while (end > p && end[-1] == ' ')
		end--;
	cmd->arg = p;
	cmd->arglen = (size_t)(end - p);

	if ((d->arg == ARG_NONE && cmd->arglen > 0) ||
	    (d->arg == ARG_REQUIRED && cmd->arglen == 0)) {
		*why = d->usage;
		return CMD_ERR_SYNTAX;
	}
	if (d->parse == NULL)
		return CMD_OK;
	st = d->parse(cmd->arg, cmd->arglen, cmd, why);
	if (st == CMD_ERR_SYNTAX && *why == NULL)
		*why = d->usage;
	if (st != CMD_OK && *why == NULL)
		msg_panic("command_parse: %s: error without a reason", d->name);
	return st;
}

const char *
verb_name(enum smtp_verb v)
{
	size_t i;

	for (i = 0; i < NVERBS; i++)
		if (verbs[i].verb == v)
			return verbs[i].name;
	return "UNKNOWN";
}

/*
 * A HELO/EHLO argument Sorter takes (Postfix's reject_invalid_helo_hostname):
 * a host name (labels of letters, digits, '-' and '_', 1 to 63 bytes each,
 * at most 255 bytes, one trailing dot allowed) or an address literal,
 * [IPv4] or [IPv6:...] (RFC 5321 4.1.3).
 */
bool
helo_valid(const char *s, size_t n)
{
	char lit[INET6_ADDRSTRLEN + 8];
	unsigned char bin[16];
	size_t i, label = 0;

	if (n == 0 || n > 255)
		return false;
	if (s[0] == '[') {
		if (n < 3 || s[n - 1] != ']' || n - 2 >= sizeof(lit))
			return false;
		memcpy(lit, s + 1, n - 2);
		lit[n - 2] = '\0';
		if (strlen(lit) != n - 2)
			return false;   /* a NUL inside would hide what follows it */
		if (strncasecmp(lit, "IPv6:", 5) == 0)
			return inet_pton(AF_INET6, lit + 5, bin) == 1;
		return inet_pton(AF_INET, lit, bin) == 1;
	}
	for (i = 0; i < n; i++) {
		if (s[i] == '.') {
			if (label == 0)
				return false;   /* empty label, or a leading dot */
			label = 0;
			continue;
		}
		if (!is_letdig((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
			return false;
		if (++label > 63)
			return false;
	}
	return true;
}
