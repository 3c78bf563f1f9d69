/*
 * check_command.c - unit tests for the SMTP command-line parser
 * (smtpd/command.c): one table of lines with the status, verb, argument,
 * address and ESMTP parameters expected from each.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

#define N_(t) ((int)(sizeof(t) / sizeof((t)[0])))

struct ccase {
	const char *line;
	size_t len;             /* 0: strlen(line) */
	enum cmd_status st;
	enum smtp_verb verb;
	const char *arg;        /* NULL: not checked */
	const char *addr;       /* formatted address; NULL: not checked */
	const char *why;        /* on error: exact reason; NULL: any */
	const char *size;       /* expected SIZE as text; NULL: absent (-1) */
	enum body_type body;
	int ret, notify;
	const char *envid;              /* xtext decoded; NULL: empty */
	const char *orcpt_type, *orcpt; /* orcpt decoded; NULL: empty */
	bool smtputf8;                  /* the SMTPUTF8 parameter */
	bool utf8;                      /* cmd.addr.utf8 */
	const char *chunk;      /* BDAT: expected chunk size as text; NULL: not checked */
	bool last;              /* BDAT: LAST */
};

#define OK CMD_OK
#define UNK CMD_ERR_UNKNOWN
#define SYN CMD_ERR_SYNTAX
#define ADR CMD_ERR_ADDRESS
#define PAR CMD_ERR_PARAM
#define U8 CMD_ERR_UTF8
#define MUST_DECLARE "Must declare SMTPUTF8 to send UTF-8 addresses"
#define BDA CMD_ERR_BDAT

#define ENVID100 "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
#define TYPE64 "x-34567890123456789012345678901234567890123456789012345678901234"
/* an ORCPT value of exactly DSN_ORCPT_MAX (500) characters: TYPE64 ";" 435 */
#define ADDR435 "a012345678901234567890123456789012345678901234567890123456789012345678901234" \
	"5678901234567890123456789012345678901234567890123456789012345678901234567890" \
	"1234567890123456789012345678901234567890123456789012345678901234567890123456" \
	"7890123456789012345678901234567890123456789012345678901234567890123456789012" \
	"3456789012345678901234567890123456789012345678901234567890123456789012345678" \
	"901234567890123456789012345678901234567890123456@x.test"

static const struct ccase cases[] = {
	/* HELO / EHLO */
	{ "HELO mx.example", .st = OK, .verb = VERB_HELO, .arg = "mx.example" },
	{ "EHLO mx.example", .st = OK, .verb = VERB_EHLO, .arg = "mx.example" },
	{ "ehlo [127.0.0.1]", .st = OK, .verb = VERB_EHLO, .arg = "[127.0.0.1]" },
	{ "HeLo  mx.example  ", .st = OK, .verb = VERB_HELO, .arg = "mx.example" },
	{ "EHLO mx.example extra words", .st = OK, .verb = VERB_EHLO,
	  .arg = "mx.example extra words" },
	{ "HELO", .st = SYN, .verb = VERB_HELO, .why = "Syntax: HELO hostname" },
	{ "EHLO", .st = SYN, .verb = VERB_EHLO, .why = "Syntax: EHLO hostname" },
	{ "EHLO   ", .st = SYN, .verb = VERB_EHLO, .why = "Syntax: EHLO hostname" },

	/* MAIL */
	{ "MAIL FROM:<a@b.example>", .st = OK, .verb = VERB_MAIL, .arg = "FROM:<a@b.example>",
	  .addr = "a@b.example" },
	{ "mail from:<a@b.example>", .st = OK, .verb = VERB_MAIL, .arg = "from:<a@b.example>",
	  .addr = "a@b.example" },
	{ "Mail From:<a@b.example>", .st = OK, .verb = VERB_MAIL, .addr = "a@b.example" },
	{ "MAIL FROM: <a@b.example>", .st = OK, .verb = VERB_MAIL, .arg = "FROM: <a@b.example>",
	  .addr = "a@b.example" },
	{ "MAIL FROM:   <a@b.example>   ", .st = OK, .verb = VERB_MAIL,
	  .arg = "FROM:   <a@b.example>", .addr = "a@b.example" },
	{ "MAIL  FROM:<a@b.example>", .st = OK, .verb = VERB_MAIL, .arg = "FROM:<a@b.example>",
	  .addr = "a@b.example" },
	{ "MAIL FROM:a@b.example", .st = OK, .verb = VERB_MAIL, .addr = "a@b.example" },
	{ "MAIL FROM:<>", .st = OK, .verb = VERB_MAIL, .arg = "FROM:<>", .addr = "" },
	{ "MAIL FROM:<@r.example:a@b.example>", .st = OK, .verb = VERB_MAIL,
	  .addr = "a@b.example" },
	{ "MAIL FROM:<\"john doe\"@b.example>", .st = OK, .verb = VERB_MAIL,
	  .addr = "\"john doe\"@b.example" },
	{ "MAIL FROM:", .st = SYN, .verb = VERB_MAIL, .why = "Syntax: MAIL FROM:<address>" },
	{ "MAIL FROM:   ", .st = SYN, .verb = VERB_MAIL, .why = "Syntax: MAIL FROM:<address>" },
	{ "MAIL", .st = SYN, .verb = VERB_MAIL, .why = "Syntax: MAIL FROM:<address>" },
	{ "MAIL TO:<a@b.example>", .st = SYN, .verb = VERB_MAIL,
	  .why = "Syntax: MAIL FROM:<address>" },
	{ "MAIL FROM <a@b.example>", .st = SYN, .verb = VERB_MAIL,
	  .why = "Syntax: MAIL FROM:<address>" },
	{ "MAIL FRO", .st = SYN, .verb = VERB_MAIL, .why = "Syntax: MAIL FROM:<address>" },
	{ "MAIL FROM:<a@>", .st = ADR, .verb = VERB_MAIL, .why = "missing domain" },
	{ "MAIL FROM:<postmaster>", .st = ADR, .verb = VERB_MAIL, .why = "missing domain" },
	/* RFC 6531: UTF-8 only with SMTPUTF8 on the same line */
	{ "MAIL FROM:<j\xc3\xb6rg@b.example>", .st = U8, .verb = VERB_MAIL, .why = MUST_DECLARE },
	{ "MAIL FROM:<a@b\xc3\xa4.example>", .st = U8, .verb = VERB_MAIL, .why = MUST_DECLARE },
	{ "MAIL FROM:<j\xc3\xb6rg@b.example> SIZE=10", .st = U8, .verb = VERB_MAIL,
	  .why = MUST_DECLARE },
	{ "MAIL FROM:<j\xc3\xb6rg@b.example> SMTPUTF8", .st = OK, .verb = VERB_MAIL,
	  .addr = "j\xc3\xb6rg@b.example", .smtputf8 = true, .utf8 = true },
	{ "MAIL FROM:<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.example> smtputf8 SIZE=7",
	  .st = OK, .verb = VERB_MAIL, .smtputf8 = true, .utf8 = true, .size = "7",
	  .addr = "\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.example" },
	{ "MAIL FROM:<\"j\xc3\xb6 rg\"@b.example> BODY=8BITMIME SMTPUTF8", .st = OK,
	  .verb = VERB_MAIL, .addr = "\"j\xc3\xb6 rg\"@b.example", .smtputf8 = true, .utf8 = true,
	  .body = BODY_8BITMIME },
	{ "MAIL FROM:<a@b.example> SMTPUTF8", .st = OK, .verb = VERB_MAIL, .addr = "a@b.example",
	  .smtputf8 = true },
	{ "MAIL FROM:<> SMTPUTF8", .st = OK, .verb = VERB_MAIL, .addr = "", .smtputf8 = true },
	/* not UTF-8 at all, or a control character in it: a syntax error either way */
	{ "MAIL FROM:<j\xc3\xc3rg@b.example> SMTPUTF8", .st = ADR, .verb = VERB_MAIL,
	  .why = "malformed UTF-8 in address" },
	{ "MAIL FROM:<j\xf6rg@b.example>", .st = ADR, .verb = VERB_MAIL,
	  .why = "malformed UTF-8 in address" },
	{ "MAIL FROM:<\xc0\xafx@b.example> SMTPUTF8", .st = ADR, .verb = VERB_MAIL,
	  .why = "malformed UTF-8 in address" },
	{ "MAIL FROM:<\xed\xa0\x80@b.example> SMTPUTF8", .st = ADR, .verb = VERB_MAIL,
	  .why = "malformed UTF-8 in address" },
	{ "MAIL FROM:<\xf4\x90\x80\x80@b.example> SMTPUTF8", .st = ADR, .verb = VERB_MAIL,
	  .why = "malformed UTF-8 in address" },
	{ "MAIL FROM:<a\xc2\x85@b.example> SMTPUTF8", .st = ADR, .verb = VERB_MAIL,
	  .why = "control character in address" },
	{ "MAIL FROM:<a@[1.2.3.\xc3\xa4]> SMTPUTF8", .st = ADR, .verb = VERB_MAIL,
	  .why = "8-bit character in address" },
	{ "MAIL FROM:<a@b.example", .st = ADR, .verb = VERB_MAIL,
	  .why = "missing closing angle bracket" },
	{ "MAIL FROM:<a@b.example>SIZE=1", .st = ADR, .verb = VERB_MAIL,
	  .why = "unexpected text after address" },
	{ "MAILFROM:<a@b.example>", .st = UNK, .verb = VERB_UNKNOWN,
	  .why = "command unrecognized" },

	/* MAIL parameters */
	{ "MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME", .st = OK, .verb = VERB_MAIL,
	  .arg = "FROM:<a@b.example> SIZE=100 BODY=8BITMIME", .addr = "a@b.example", .size = "100",
	  .body = BODY_8BITMIME },
	{ "MAIL FROM:<a@b.example> size=0 body=7bit", .st = OK, .verb = VERB_MAIL, .size = "0",
	  .body = BODY_7BIT },
	{ "MAIL FROM:<a@b.example>  SIZE=5   BODY=7BIT  ", .st = OK, .verb = VERB_MAIL, .size = "5",
	  .body = BODY_7BIT },
	{ "MAIL FROM:a@b.example SIZE=5", .st = OK, .verb = VERB_MAIL, .addr = "a@b.example",
	  .size = "5" },
	{ "MAIL FROM:<> SIZE=5", .st = OK, .verb = VERB_MAIL, .addr = "", .size = "5" },
	{ "MAIL FROM:<a@b.example> SIZE=9223372036854775807", .st = OK, .verb = VERB_MAIL,
	  .size = "9223372036854775807" },
	{ "MAIL FROM:<a@b.example> SIZE=00000000000000000000000000042", .st = OK, .verb = VERB_MAIL,
	  .size = "42" },
	{ "MAIL FROM:<a@b.example> SIZE=9223372036854775808", .st = SYN, .verb = VERB_MAIL,
	  .why = "SIZE value too large" },
	{ "MAIL FROM:<a@b.example> SIZE=99999999999999999999999", .st = SYN, .verb = VERB_MAIL,
	  .why = "SIZE value too large" },
	{ "MAIL FROM:<a@b.example> SIZE=1k", .st = SYN, .verb = VERB_MAIL,
	  .why = "invalid SIZE value" },
	{ "MAIL FROM:<a@b.example> SIZE=-1", .st = SYN, .verb = VERB_MAIL,
	  .why = "invalid SIZE value" },
	{ "MAIL FROM:<a@b.example> SIZE=", .st = SYN, .verb = VERB_MAIL,
	  .why = "missing parameter value" },
	{ "MAIL FROM:<a@b.example> SIZE", .st = SYN, .verb = VERB_MAIL,
	  .why = "missing parameter value" },
	{ "MAIL FROM:<a@b.example> SIZE=1 SIZE=2", .st = SYN, .verb = VERB_MAIL,
	  .why = "duplicate parameter" },
	{ "MAIL FROM:<a@b.example> size=1 SIZE=1", .st = SYN, .verb = VERB_MAIL,
	  .why = "duplicate parameter" },
	{ "MAIL FROM:<a@b.example> BODY=7BIT BODY=8BITMIME", .st = SYN, .verb = VERB_MAIL,
	  .why = "duplicate parameter" },
	{ "MAIL FROM:<a@b.example> BODY=BINARYMIME", .st = SYN, .verb = VERB_MAIL,
	  .why = "unsupported BODY type" },
	{ "MAIL FROM:<a@b.example> BODY=8BIT=MIME", .st = SYN, .verb = VERB_MAIL,
	  .why = "malformed parameter value" },
	{ "MAIL FROM:<a@b.example> BODY=8BITMIM\xc3\x89", .st = SYN, .verb = VERB_MAIL,
	  .why = "malformed parameter value" },
	{ "MAIL FROM:<a@b.example> RET=FULL ENVID=abc+2Bdef", .st = OK, .verb = VERB_MAIL, .ret = 1,
	  .envid = "abc+def" },
	{ "MAIL FROM:<a@b.example> ret=hdrs", .st = OK, .verb = VERB_MAIL, .ret = 2 },
	{ "MAIL FROM:<a@b.example> RET=NONE", .st = SYN, .verb = VERB_MAIL,
	  .why = "invalid RET value" },
	{ "MAIL FROM:<a@b.example> RET=FULL RET=HDRS", .st = SYN, .verb = VERB_MAIL,
	  .why = "duplicate parameter" },
	{ "MAIL FROM:<a@b.example> ENVID=" ENVID100, .st = OK, .verb = VERB_MAIL,
	  .envid = ENVID100 },
	{ "MAIL FROM:<a@b.example> ENVID=" ENVID100 "x", .st = SYN, .verb = VERB_MAIL,
	  .why = "ENVID too long" },
	{ "MAIL FROM:<a@b.example> ENVID=a+2b", .st = SYN, .verb = VERB_MAIL,
	  .why = "malformed xtext hex escape" },
	{ "MAIL FROM:<a@b.example> ENVID=a+2", .st = SYN, .verb = VERB_MAIL,
	  .why = "malformed xtext hex escape" },
	{ "MAIL FROM:<a@b.example> ENVID=a+", .st = SYN, .verb = VERB_MAIL,
	  .why = "malformed xtext hex escape" },
	{ "MAIL FROM:<a@b.example> ENVID=+00", .st = SYN, .verb = VERB_MAIL,
	  .why = "xtext decodes to a control or 8-bit character" },
	{ "MAIL FROM:<a@b.example> ENVID=+20", .st = SYN, .verb = VERB_MAIL,
	  .why = "invalid ENVID value" },
	{ "MAIL FROM:<a@b.example> ENVID=+7F", .st = SYN, .verb = VERB_MAIL,
	  .why = "xtext decodes to a control or 8-bit character" },
	{ "MAIL FROM:<a@b.example> ENVID=+C3+B6", .st = SYN, .verb = VERB_MAIL,
	  .why = "xtext decodes to a control or 8-bit character" },
	{ "MAIL FROM:<a@b.example> ENVID=+7E+21", .st = OK, .verb = VERB_MAIL, .envid = "~!" },
	{ "MAIL FROM:<a@b.example> AUTH=<>", .st = OK, .verb = VERB_MAIL },
	{ "MAIL FROM:<a@b.example> AUTH=user+40example.com", .st = OK, .verb = VERB_MAIL },
	{ "MAIL FROM:<a@b.example> AUTH=<> AUTH=<>", .st = SYN, .verb = VERB_MAIL,
	  .why = "duplicate parameter" },
	{ "MAIL FROM:<a@b.example> FOO=bar", .st = PAR, .verb = VERB_MAIL,
	  .why = "unsupported parameter" },
	{ "MAIL FROM:<a@b.example> SMTPUTF8=yes", .st = SYN, .verb = VERB_MAIL,
	  .why = "parameter takes no value" },
	{ "MAIL FROM:<a@b.example> SMTPUTF8=", .st = SYN, .verb = VERB_MAIL,
	  .why = "parameter takes no value" },
	{ "MAIL FROM:<a@b.example> SMTPUTF8 SMTPUTF8", .st = SYN, .verb = VERB_MAIL,
	  .why = "duplicate parameter" },
	{ "MAIL FROM:<j\xc3\xb6rg@b.example> SMTPUTF8=1", .st = SYN, .verb = VERB_MAIL,
	  .why = "parameter takes no value" },
	{ "RCPT TO:<a@b.example> SMTPUTF8", .st = PAR, .verb = VERB_RCPT,
	  .why = "unsupported parameter" },
	{ "MAIL FROM:<a@b.example> NOTIFY=NEVER", .st = PAR, .verb = VERB_MAIL,
	  .why = "unsupported parameter" },
	{ "MAIL FROM:<a@b.example> ORCPT=rfc822;a@b", .st = PAR, .verb = VERB_MAIL,
	  .why = "unsupported parameter" },
	{ "MAIL FROM:<a@b.example> SIZES=1", .st = PAR, .verb = VERB_MAIL,
	  .why = "unsupported parameter" },
	{ "MAIL FROM:<a@b.example> =x", .st = SYN, .verb = VERB_MAIL,
	  .why = "malformed parameter" },
	{ "MAIL FROM:<a@b.example> -X=1", .st = SYN, .verb = VERB_MAIL,
	  .why = "malformed parameter" },
	{ "MAIL FROM:<a@b.example> SI_ZE=1", .st = SYN, .verb = VERB_MAIL,
	  .why = "malformed parameter" },

	/* RCPT */
	{ "RCPT TO:<u@example.com>", .st = OK, .verb = VERB_RCPT, .arg = "TO:<u@example.com>",
	  .addr = "u@example.com" },
	{ "rcpt to: <u@example.com>", .st = OK, .verb = VERB_RCPT, .arg = "to: <u@example.com>",
	  .addr = "u@example.com" },
	{ "RCPT TO:u@example.com", .st = OK, .verb = VERB_RCPT, .addr = "u@example.com" },
	{ "RCPT TO:<postmaster>", .st = OK, .verb = VERB_RCPT, .arg = "TO:<postmaster>",
	  .addr = "postmaster" },
	{ "RCPT TO:<Postmaster>", .st = OK, .verb = VERB_RCPT, .addr = "postmaster" },
	{ "RCPT TO:<u@[127.0.0.1]>", .st = OK, .verb = VERB_RCPT, .addr = "u@[127.0.0.1]" },
	/* UTF-8: the session knows whether the transaction declared SMTPUTF8 */
	{ "RCPT TO:<j\xc3\xbcrgen@example.test>", .st = OK, .verb = VERB_RCPT,
	  .addr = "j\xc3\xbcrgen@example.test", .utf8 = true },
	{ "RCPT TO:<u@b\xc3\xbc" "cher.example> NOTIFY=NEVER", .st = OK, .verb = VERB_RCPT,
	  .addr = "u@b\xc3\xbc" "cher.example", .utf8 = true, .notify = 8 },
	{ "RCPT TO:<j\xfcrgen@example.test>", .st = ADR, .verb = VERB_RCPT,
	  .why = "malformed UTF-8 in address" },
	{ "RCPT TO:<j\xc3\xbc\xc2\x9frgen@example.test>", .st = ADR, .verb = VERB_RCPT,
	  .why = "control character in address" },
	{ "RCPT TO:<>", .st = ADR, .verb = VERB_RCPT, .why = "null address not allowed here" },
	{ "RCPT TO:<u>", .st = ADR, .verb = VERB_RCPT, .why = "missing domain" },
	{ "RCPT TO:<u@example..com>", .st = ADR, .verb = VERB_RCPT,
	  .why = "empty label in domain" },
	{ "RCPT", .st = SYN, .verb = VERB_RCPT, .why = "Syntax: RCPT TO:<address>" },
	{ "RCPT FROM:<u@example.com>", .st = SYN, .verb = VERB_RCPT,
	  .why = "Syntax: RCPT TO:<address>" },
	{ "RCPT TO:", .st = SYN, .verb = VERB_RCPT, .why = "Syntax: RCPT TO:<address>" },

	/* RCPT parameters */
	{ "RCPT TO:<u@x.example> NOTIFY=SUCCESS,FAILURE", .st = OK, .verb = VERB_RCPT,
	  .addr = "u@x.example", .notify = 3 },
	{ "RCPT TO:<u@x.example> NOTIFY=delay", .st = OK, .verb = VERB_RCPT, .notify = 4 },
	{ "RCPT TO:<u@x.example> NOTIFY=NEVER", .st = OK, .verb = VERB_RCPT, .notify = 8 },
	{ "RCPT TO:<u@x.example> NOTIFY=Delay,Failure,Success", .st = OK, .verb = VERB_RCPT,
	  .notify = 7 },
	{ "RCPT TO:<postmaster> NOTIFY=FAILURE", .st = OK, .verb = VERB_RCPT, .addr = "postmaster",
	  .notify = 2 },
	{ "RCPT TO:<u@x.example> NOTIFY=NEVER,SUCCESS", .st = SYN, .verb = VERB_RCPT,
	  .why = "NOTIFY=NEVER must be alone" },
	{ "RCPT TO:<u@x.example> NOTIFY=DELAY,NEVER", .st = SYN, .verb = VERB_RCPT,
	  .why = "NOTIFY=NEVER must be alone" },
	{ "RCPT TO:<u@x.example> NOTIFY=NEVER,NEVER", .st = SYN, .verb = VERB_RCPT,
	  .why = "invalid NOTIFY value" },
	{ "RCPT TO:<u@x.example> NOTIFY=SUCCESS,SUCCESS", .st = SYN, .verb = VERB_RCPT,
	  .why = "invalid NOTIFY value" },
	{ "RCPT TO:<u@x.example> NOTIFY=SUCCESS,", .st = SYN, .verb = VERB_RCPT,
	  .why = "invalid NOTIFY value" },
	{ "RCPT TO:<u@x.example> NOTIFY=,DELAY", .st = SYN, .verb = VERB_RCPT,
	  .why = "invalid NOTIFY value" },
	{ "RCPT TO:<u@x.example> NOTIFY=SUCCESS,,DELAY", .st = SYN, .verb = VERB_RCPT,
	  .why = "invalid NOTIFY value" },
	{ "RCPT TO:<u@x.example> NOTIFY=BOGUS", .st = SYN, .verb = VERB_RCPT,
	  .why = "invalid NOTIFY value" },
	{ "RCPT TO:<u@x.example> NOTIFY=SUCCESSFUL", .st = SYN, .verb = VERB_RCPT,
	  .why = "invalid NOTIFY value" },
	{ "RCPT TO:<u@x.example> NOTIFY=NEVER NOTIFY=NEVER", .st = SYN, .verb = VERB_RCPT,
	  .why = "duplicate parameter" },
	{ "RCPT TO:<u@x.example> ORCPT=rfc822;u+40x.example", .st = OK, .verb = VERB_RCPT,
	  .orcpt_type = "rfc822", .orcpt = "u@x.example" },
	{ "RCPT TO:<u@x.example> NOTIFY=SUCCESS ORCPT=rfc822;a+20b@x.example", .st = OK,
	  .verb = VERB_RCPT, .notify = 1, .orcpt_type = "rfc822", .orcpt = "a b@x.example" },
	/* what the spool can keep, and not a character more (RFC 3461 4.2) */
	{ "RCPT TO:<u@x.example> NOTIFY=NEVER ORCPT=" TYPE64 ";" ADDR435, .st = OK,
	  .verb = VERB_RCPT, .notify = 8, .orcpt_type = TYPE64, .orcpt = ADDR435 },
	{ "RCPT TO:<u@x.example> NOTIFY=NEVER ORCPT=" TYPE64 ";" ADDR435 "x", .st = SYN,
	  .verb = VERB_RCPT, .why = "ORCPT too long" },
	{ "RCPT TO:<u@x.example> NOTIFY=NEVER ORCPT=" TYPE64 "5;u@x.example", .st = SYN,
	  .verb = VERB_RCPT, .why = "ORCPT address type too long" },
	{ "RCPT TO:<u@x.example> ORCPT=rfc822", .st = SYN, .verb = VERB_RCPT,
	  .why = "invalid ORCPT value" },
	{ "RCPT TO:<u@x.example> ORCPT=;u@x.example", .st = SYN, .verb = VERB_RCPT,
	  .why = "invalid ORCPT value" },
	{ "RCPT TO:<u@x.example> ORCPT=rfc822;", .st = SYN, .verb = VERB_RCPT,
	  .why = "invalid ORCPT value" },
	{ "RCPT TO:<u@x.example> ORCPT=rfc822;a+2", .st = SYN, .verb = VERB_RCPT,
	  .why = "malformed xtext hex escape" },
	{ "RCPT TO:<u@x.example> ORCPT=rfc822;a+0Ab", .st = SYN, .verb = VERB_RCPT,
	  .why = "xtext decodes to a control or 8-bit character" },
	{ "RCPT TO:<u@x.example> ORCPT=rf.c;u@x.example", .st = SYN, .verb = VERB_RCPT,
	  .why = "invalid ORCPT address type" },
	{ "RCPT TO:<u@x.example> ORCPT=rfc822;a ORCPT=rfc822;b", .st = SYN, .verb = VERB_RCPT,
	  .why = "duplicate parameter" },
	{ "RCPT TO:<u@x.example> SIZE=1", .st = PAR, .verb = VERB_RCPT,
	  .why = "unsupported parameter" },
	{ "RCPT TO:<u@x.example> BODY=8BITMIME", .st = PAR, .verb = VERB_RCPT,
	  .why = "unsupported parameter" },

	/* commands without an argument */
	{ "DATA", .st = OK, .verb = VERB_DATA, .arg = "" },
	{ "data", .st = OK, .verb = VERB_DATA, .arg = "" },
	{ "DATA   ", .st = OK, .verb = VERB_DATA, .arg = "" },
	{ "DATA x", .st = SYN, .verb = VERB_DATA, .why = "Syntax: DATA" },
	{ "RSET", .st = OK, .verb = VERB_RSET, .arg = "" },
	{ "RSET now", .st = SYN, .verb = VERB_RSET, .why = "Syntax: RSET" },
	{ "QUIT", .st = OK, .verb = VERB_QUIT, .arg = "" },
	{ "quit", .st = OK, .verb = VERB_QUIT, .arg = "" },
	{ "QUIT bye", .st = SYN, .verb = VERB_QUIT, .why = "Syntax: QUIT" },
	{ "STARTTLS", .st = OK, .verb = VERB_STARTTLS, .arg = "" },
	{ "StartTLS", .st = OK, .verb = VERB_STARTTLS, .arg = "" },
	{ "STARTTLS x", .st = SYN, .verb = VERB_STARTTLS, .why = "Syntax: STARTTLS" },

	/* argument optional */
	{ "NOOP", .st = OK, .verb = VERB_NOOP, .arg = "" },
	{ "NOOP anything at all", .st = OK, .verb = VERB_NOOP, .arg = "anything at all" },
	{ "HELP", .st = OK, .verb = VERB_HELP, .arg = "" },
	{ "help MAIL", .st = OK, .verb = VERB_HELP, .arg = "MAIL" },

	/* BDAT (RFC 3030): a line that starts with BDAT and is not a BDAT
	 * command leaves the chunk size unknown, and gets CMD_ERR_BDAT */
	{ "BDAT 100 LAST", .st = OK, .verb = VERB_BDAT, .arg = "100 LAST", .chunk = "100",
	  .last = true },
	{ "BDAT 0 LAST", .st = OK, .verb = VERB_BDAT, .chunk = "0", .last = true },
	{ "BDAT 0", .st = OK, .verb = VERB_BDAT, .chunk = "0" },
	{ "BDAT 1", .st = OK, .verb = VERB_BDAT, .chunk = "1" },
	{ "bdat 42 last", .st = OK, .verb = VERB_BDAT, .chunk = "42", .last = true },
	{ "BDAT 42 Last", .st = OK, .verb = VERB_BDAT, .chunk = "42", .last = true },
	{ "BDAT   7   LAST  ", .st = OK, .verb = VERB_BDAT, .arg = "7   LAST", .chunk = "7",
	  .last = true },
	{ "BDAT 007", .st = OK, .verb = VERB_BDAT, .chunk = "7" },
	{ "BDAT 9223372036854775807", .st = OK, .verb = VERB_BDAT,
	  .chunk = "9223372036854775807" },
	{ "BDAT 9223372036854775808", .st = BDA, .verb = VERB_BDAT,
	  .why = "BDAT chunk size too large" },
	{ "BDAT 99999999999999999999999", .st = BDA, .verb = VERB_BDAT,
	  .why = "BDAT chunk size too large" },
	{ "BDAT", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "BDAT ", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "BDAT LAST", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "BDAT -1", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "BDAT +1", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "BDAT 1x", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "BDAT 0x10", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "BDAT 1 2", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "BDAT 1 LASTX", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "BDAT 1 LAST LAST", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "BDAT 1 LAS", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "BDAT\t10", .st = BDA, .verb = VERB_BDAT, .why = "invalid character in command" },
	{ "BDAT 10\0", .len = 8, .st = BDA, .verb = VERB_BDAT,
	  .why = "invalid character in command" },
	{ "BDATX 10", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "bdat", .st = BDA, .verb = VERB_BDAT, .why = "Syntax: BDAT count [LAST]" },
	{ "BDA 10", .st = UNK, .verb = VERB_UNKNOWN, .why = "command unrecognized" },

	/* argument required */
	{ "VRFY user", .st = OK, .verb = VERB_VRFY, .arg = "user" },
	{ "VRFY", .st = SYN, .verb = VERB_VRFY, .why = "Syntax: VRFY address" },
	{ "EXPN list", .st = OK, .verb = VERB_EXPN, .arg = "list" },
	{ "expn", .st = SYN, .verb = VERB_EXPN, .why = "Syntax: EXPN list" },
	{ "AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=", .st = OK, .verb = VERB_AUTH,
	  .arg = "PLAIN dGVzdAB0ZXN0AHRlc3Q=" },
	{ "auth login", .st = OK, .verb = VERB_AUTH, .arg = "login" },
	{ "AUTH", .st = SYN, .verb = VERB_AUTH,
	  .why = "Syntax: AUTH mechanism [initial-response]" },

	/* unknown */
	{ "", .st = UNK, .verb = VERB_UNKNOWN, .why = "empty command" },
	{ "FOO", .st = UNK, .verb = VERB_UNKNOWN, .why = "command unrecognized" },
	{ "FOO bar", .st = UNK, .verb = VERB_UNKNOWN, .why = "command unrecognized" },
	{ " HELO x", .st = UNK, .verb = VERB_UNKNOWN, .why = "command unrecognized" },
	{ "HELOx", .st = UNK, .verb = VERB_UNKNOWN, .why = "command unrecognized" },
	{ "HEL", .st = UNK, .verb = VERB_UNKNOWN, .why = "command unrecognized" },
	{ "STARTTLSX", .st = UNK, .verb = VERB_UNKNOWN, .why = "command unrecognized" },
	{ "DATA:", .st = UNK, .verb = VERB_UNKNOWN, .why = "command unrecognized" },
	{ "GET / HTTP/1.0", .st = UNK, .verb = VERB_UNKNOWN, .why = "command unrecognized" },
	{ "D\xc3\x84TA", .st = UNK, .verb = VERB_UNKNOWN, .why = "command unrecognized" },

	/* control characters anywhere */
	{ "HELO a\0b", .len = 8, .st = SYN, .verb = VERB_UNKNOWN,
	  .why = "invalid character in command" },
	{ "\0", .len = 1, .st = SYN, .verb = VERB_UNKNOWN, .why = "invalid character in command" },
	{ "DATA\0", .len = 5, .st = SYN, .verb = VERB_UNKNOWN,
	  .why = "invalid character in command" },
	{ "NOOP\t", .st = SYN, .verb = VERB_UNKNOWN, .why = "invalid character in command" },
	{ "HELO\tx", .st = SYN, .verb = VERB_UNKNOWN, .why = "invalid character in command" },
	{ "DATA\r", .st = SYN, .verb = VERB_UNKNOWN, .why = "invalid character in command" },
	{ "MAIL FROM:<a@b.example>\n", .st = SYN, .verb = VERB_UNKNOWN,
	  .why = "invalid character in command" },
	{ "MAIL FROM:<a@b\x7f.example>", .st = SYN, .verb = VERB_UNKNOWN,
	  .why = "invalid character in command" },
	{ "RCPT TO:<u@x.example> NOTIFY=NEVER\x1b", .st = SYN, .verb = VERB_UNKNOWN,
	  .why = "invalid character in command" },
	/* len is respected */
	{ "QUIT", .len = 3, .st = UNK, .verb = VERB_UNKNOWN, .why = "command unrecognized" },
	{ "QUIT\0garbage", .len = 4, .st = OK, .verb = VERB_QUIT, .arg = "" },
};

/* What the server accepted at MAIL or RCPT is what the queue manager will
 * read: written with the codec and parsed back, the same values. */
static void
check_storable(const struct smtp_params *p)
{
	struct dsn_rcpt_params r;
	struct dsn_sender_params m;
	struct dstr d;

	dstr_init(&d, 0);
	dsn_format_rcpt_params(&p->dsn_rcpt, &d);
	ck_assert_int_eq(dsn_parse_rcpt_params(d.s, &r, NULL), 0);
	ck_assert_int_eq(r.notify, p->dsn_rcpt.notify);
	ck_assert_str_eq(r.orcpt_type, p->dsn_rcpt.orcpt_type);
	ck_assert_str_eq(r.orcpt, p->dsn_rcpt.orcpt);
	dstr_free(&d);
	dsn_format_sender_params(&p->dsn_mail, &d);
	ck_assert_int_eq(dsn_parse_sender_params(d.s, &m, NULL), 0);
	ck_assert_int_eq(m.ret, p->dsn_mail.ret);
	ck_assert_str_eq(m.envid, p->dsn_mail.envid);
	dstr_free(&d);
}

START_TEST(test_command)
{
	const struct ccase *c = &cases[_i];
	size_t len = c->len ? c->len : strlen(c->line);
	struct smtp_cmd cmd;
	const char *why = "unset";
	enum cmd_status st;
	char buf[ADDR_PATH_MAX + 1];
	long long size = -1;

	memset(&cmd, 0x5a, sizeof(cmd));
	st = command_parse(c->line, len, &cmd, &why);
	ck_assert_msg(st == c->st, "case %d \"%s\": status %d (%s), want %d",
		      _i, c->line, (int)st, why ? why : "-", (int)c->st);
	ck_assert_msg(cmd.verb == c->verb, "case %d \"%s\": verb %d, want %d",
		      _i, c->line, (int)cmd.verb, (int)c->verb);
	if (st != CMD_OK) {
		ck_assert_msg(why != NULL, "case %d: error without a reason", _i);
		if (c->why)
			ck_assert_msg(strcmp(why, c->why) == 0,
				      "case %d \"%s\": reason \"%s\", want \"%s\"",
				      _i, c->line, why, c->why);
		return;
	}
	ck_assert_ptr_nonnull(cmd.arg);
	ck_assert(cmd.arg >= c->line && cmd.arg + cmd.arglen <= c->line + len);
	if (c->arg) {
		ck_assert_msg(cmd.arglen == strlen(c->arg) &&
			      memcmp(cmd.arg, c->arg, cmd.arglen) == 0,
			      "case %d \"%s\": arg \"%.*s\", want \"%s\"", _i, c->line,
			      (int)cmd.arglen, cmd.arg, c->arg);
	}
	if (c->addr) {
		address_format(&cmd.addr, buf, sizeof(buf));
		ck_assert_str_eq(buf, c->addr);
		ck_assert_int_eq(cmd.addr.null, c->addr[0] == '\0');
	}
	if (c->size)
		size = strtoll(c->size, NULL, 10);
	ck_assert_msg(cmd.params.size == size, "case %d: size %lld, want %lld", _i,
		      cmd.params.size, size);
	ck_assert_int_eq(cmd.params.body, c->body);
	ck_assert_int_eq(cmd.params.dsn_mail.ret, c->ret);
	ck_assert_int_eq(cmd.params.dsn_rcpt.notify, c->notify);
	ck_assert_str_eq(cmd.params.dsn_mail.envid, c->envid ? c->envid : "");
	ck_assert_str_eq(cmd.params.dsn_rcpt.orcpt_type, c->orcpt_type ? c->orcpt_type : "");
	ck_assert_str_eq(cmd.params.dsn_rcpt.orcpt, c->orcpt ? c->orcpt : "");
	check_storable(&cmd.params);
	ck_assert_int_eq(cmd.params.smtputf8, c->smtputf8);
	if (cmd.verb == VERB_MAIL || cmd.verb == VERB_RCPT)
		ck_assert_int_eq(cmd.addr.utf8, c->utf8);
	if (c->chunk) {
		ck_assert_msg(cmd.chunk_size == strtoull(c->chunk, NULL, 10),
			      "case %d \"%s\": chunk %llu, want %s", _i, c->line,
			      (unsigned long long)cmd.chunk_size, c->chunk);
		ck_assert_int_eq(cmd.chunk_last, c->last);
	}
}
END_TEST

/* every verb by its name, in both cases, with an argument it accepts */
START_TEST(test_every_verb)
{
	static const char *const args[VERB_MAX] = {
		[VERB_HELO] = " x", [VERB_EHLO] = " x", [VERB_MAIL] = " FROM:<>",
		[VERB_RCPT] = " TO:<postmaster>", [VERB_VRFY] = " x", [VERB_EXPN] = " x",
		[VERB_AUTH] = " PLAIN", [VERB_BDAT] = " 0",
	};
	enum smtp_verb v = (enum smtp_verb)_i;
	const char *name = verb_name(v);
	char line[64];
	struct smtp_cmd cmd;
	const char *why;
	size_t i;

	ck_assert_str_ne(name, "UNKNOWN");
	snprintf(line, sizeof(line), "%s%s", name, args[v] ? args[v] : "");
	ck_assert_int_eq(command_parse(line, strlen(line), &cmd, &why), CMD_OK);
	ck_assert_int_eq(cmd.verb, v);
	for (i = 0; line[i] != '\0' && line[i] != ' '; i++)
		line[i] = (char)(line[i] - 'A' + 'a');
	ck_assert_int_eq(command_parse(line, strlen(line), &cmd, &why), CMD_OK);
	ck_assert_int_eq(cmd.verb, v);
}
END_TEST

START_TEST(test_verb_name)
{
	ck_assert_str_eq(verb_name(VERB_HELO), "HELO");
	ck_assert_str_eq(verb_name(VERB_STARTTLS), "STARTTLS");
	ck_assert_str_eq(verb_name(VERB_BDAT), "BDAT");
	ck_assert_str_eq(verb_name(VERB_UNKNOWN), "UNKNOWN");
	ck_assert_str_eq(verb_name(VERB_MAX), "UNKNOWN");
}
END_TEST

START_TEST(test_why_optional)
{
	struct smtp_cmd cmd;

	ck_assert_int_eq(command_parse("FOO", 3, &cmd, NULL), CMD_ERR_UNKNOWN);
	ck_assert_int_eq(command_parse("MAIL FROM:<>", 12, &cmd, NULL), CMD_OK);
}
END_TEST

/* a line of every length from 0 to ADDR_PATH_MAX-ish must be handled
 * without reading beyond it (ASan watches the heap copy) */
START_TEST(test_exact_length)
{
	static const char *const lines[] = {
		"MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME RET=FULL ENVID=x+2By",
		"RCPT TO:<\"q d\"@[IPv6:::1]> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+40b",
		"RCPT TO:<@a.example,@b.example:u@[1.2.3.4]>",
	};
	size_t k, n;

	for (k = 0; k < sizeof(lines) / sizeof(lines[0]); k++) {
		for (n = 0; n <= strlen(lines[k]); n++) {
			char *copy = xmalloc(n ? n : 1);
			struct smtp_cmd cmd;
			const char *why;

			memcpy(copy, lines[k], n);
			(void)command_parse(copy, n, &cmd, &why);
			free(copy);
		}
	}
}
END_TEST

static const struct {
	const char *name;
	bool ok;
} helos[] = {
	{ "client.remote.test", true }, { "localhost", true }, { "mail_1.remote.test", true },
	{ "host.test.", true }, { "123.example", true }, { "192.0.2.1", true },
	{ "[127.0.0.1]", true }, { "[IPv6:::1]", true }, { "[ipv6:2001:db8::1]", true },
	{ "a.b-c.d", true },
	{ "", false }, { ".", false }, { "a..b", false }, { ".lead", false }, { "a b", false },
	{ "a(b)", false }, { "[300.1.1.1]", false }, { "[IPv6:zz]", false }, { "[::1]", false },
	{ "[127.0.0.1", false }, { "[]", false }, { "h\xc3\xa9.test", false },
	{ "x\r\nReceived: y", false }, { "a;b", false },
	{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.test", false },
	{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.test", true },
};

START_TEST(test_helo_valid)
{
	ck_assert_msg(helo_valid(helos[_i].name, strlen(helos[_i].name)) == helos[_i].ok, "%s",
		      helos[_i].name);
}
END_TEST

/* at most 255 bytes */
START_TEST(test_helo_length)
{
	char name[300];
	size_t i;

	for (i = 0; i < sizeof(name); i++)
		name[i] = i % 50 == 49 ? '.' : 'a';
	ck_assert(helo_valid(name, 255));
	ck_assert(!helo_valid(name, 256));
}
END_TEST

/* a NUL inside an address literal is not the literal's end */
START_TEST(test_helo_literal_nul)
{
	static const char v6[] = "[IPv6:::\0\0\0\x15::::::::]", v4[] = "[1.2.3.4\0x]";

	ck_assert(!helo_valid(v6, sizeof(v6) - 1));
	ck_assert(!helo_valid(v4, sizeof(v4) - 1));
	ck_assert(helo_valid("[IPv6:::1]", 10));
}
END_TEST

static Suite *
command_suite(void)
{
	Suite *s = suite_create("command");
	TCase *tc = tcase_create("core");

	tcase_add_loop_test(tc, test_command, 0, N_(cases));
	tcase_add_loop_test(tc, test_every_verb, VERB_UNKNOWN + 1, VERB_MAX);
	tcase_add_test(tc, test_verb_name);
	tcase_add_test(tc, test_why_optional);
	tcase_add_test(tc, test_exact_length);
	tcase_add_loop_test(tc, test_helo_valid, 0, N_(helos));
	tcase_add_test(tc, test_helo_literal_nul);
	tcase_add_test(tc, test_helo_length);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(command_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
