/*
 * fuzz_command.c - libFuzzer target for the SMTP command-line parser
 * (smtpd/command.c). Checks that every result is consistent with the
 * line it came from: arguments inside the line, no control character
 * accepted, limits on the stored parameter values, DSN parameters that
 * round-trip through the spool's codec (format -> parse -> format), UTF-8
 * in a MAIL path only with SMTPUTF8 and always well formed, and an
 * accepted MAIL or RCPT address that parses back the same when written
 * canonically.
 * Built by tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

/* What was accepted at MAIL or RCPT survives the spool: written with the
 * DSN codec and read back by the queue manager's parser, the same values,
 * and written again, the same text. */
static void
check_storable(const struct smtp_params *p)
{
	struct dsn_rcpt_params r;
	struct dsn_sender_params m;
	struct dstr d, d2;
	const char *why = NULL;

	dstr_init(&d, 0);
	dstr_init(&d2, 0);
	dsn_format_rcpt_params(&p->dsn_rcpt, &d);
	CHECK(dsn_parse_rcpt_params(d.s, &r, &why) == 0);
	CHECK(r.notify == p->dsn_rcpt.notify);
	CHECK(strcmp(r.orcpt_type, p->dsn_rcpt.orcpt_type) == 0);
	CHECK(strcmp(r.orcpt, p->dsn_rcpt.orcpt) == 0);
	dsn_format_rcpt_params(&r, &d2);
	CHECK(d.len == d2.len && (d.len == 0 || strcmp(d.s, d2.s) == 0));
	dstr_free(&d);
	dstr_free(&d2);
	dsn_format_sender_params(&p->dsn_mail, &d);
	CHECK(dsn_parse_sender_params(d.s, &m, &why) == 0);
	CHECK(m.ret == p->dsn_mail.ret);
	CHECK(strcmp(m.envid, p->dsn_mail.envid) == 0);
	dsn_format_sender_params(&m, &d2);
	CHECK(d.len == d2.len && (d.len == 0 || strcmp(d.s, d2.s) == 0));
	dstr_free(&d);
	dstr_free(&d2);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy, so that ASan sees any read past the end */
	char *line = malloc(size ? size : 1);
	struct smtp_cmd cmd, again;
	const char *why = NULL;
	enum cmd_status st;
	char addr[ADDR_PATH_MAX + 8], canon[ADDR_PATH_MAX + 32];
	size_t i, n;

	if (line == NULL)
		return 0;
	memcpy(line, data, size);
	/* a HELO name taken as valid is only host-name or literal characters */
	if (helo_valid(line, size)) {
		CHECK(size > 0 && size <= 255);
		for (i = 0; i < size; i++)
			CHECK((line[i] >= 'a' && line[i] <= 'z') || (line[i] >= 'A' && line[i] <= 'Z') ||
			      (line[i] >= '0' && line[i] <= '9') || strchr("-._[]:", line[i]) != NULL);
	}
	st = command_parse(line, size, &cmd, &why);
	CHECK(st >= CMD_OK && st <= CMD_ERR_BDAT);
	CHECK(st != CMD_ERR_UTF8 || (cmd.verb == VERB_MAIL && cmd.addr.utf8 &&
				     !cmd.params.smtputf8));
	/* a line that starts with BDAT is a good BDAT or the session ends */
	if (size >= 4 && strncasecmp(line, "BDAT", 4) == 0)
		CHECK(st == CMD_ERR_BDAT || (st == CMD_OK && cmd.verb == VERB_BDAT));
	else
		CHECK(st != CMD_ERR_BDAT);
	CHECK(cmd.verb >= VERB_UNKNOWN && cmd.verb < VERB_MAX);
	CHECK(verb_name(cmd.verb) != NULL);
	if (st != CMD_OK) {
		CHECK(why != NULL && why[0] != '\0');
		CHECK(st == CMD_ERR_UNKNOWN || st == CMD_ERR_SYNTAX || cmd.verb != VERB_UNKNOWN);
		free(line);
		return 0;
	}
	CHECK(cmd.verb != VERB_UNKNOWN);
	CHECK(size > 0);
	for (i = 0; i < size; i++)
		CHECK((unsigned char)line[i] >= 0x20 && line[i] != 0x7f);
	CHECK(cmd.arg != NULL && cmd.arg >= line && cmd.arglen <= size);
	CHECK(cmd.arg + cmd.arglen <= line + size);
	if (cmd.arglen > 0)
		CHECK(cmd.arg[0] != ' ' && cmd.arg[cmd.arglen - 1] != ' ');
	if (cmd.verb == VERB_DATA || cmd.verb == VERB_RSET || cmd.verb == VERB_QUIT ||
	    cmd.verb == VERB_STARTTLS)
		CHECK(cmd.arglen == 0);

	CHECK(cmd.params.size >= -1);
	CHECK(strlen(cmd.params.dsn_mail.envid) <= DSN_ENVID_MAX);
	CHECK(strlen(cmd.params.dsn_rcpt.orcpt_type) <= DSN_ADDRTYPE_MAX);
	CHECK(strlen(cmd.params.dsn_rcpt.orcpt) <= DSN_ORCPT_MAX);
	CHECK(cmd.params.dsn_mail.ret >= 0 && cmd.params.dsn_mail.ret <= DSN_RET_HDRS);
	CHECK(cmd.params.dsn_rcpt.notify >= 0 && cmd.params.dsn_rcpt.notify <= 15);
	CHECK(!(cmd.params.dsn_rcpt.notify & DSN_NOTIFY_NEVER) ||
	      cmd.params.dsn_rcpt.notify == DSN_NOTIFY_NEVER);

	if (cmd.verb == VERB_BDAT) {
		/* the size written back parses to the same size */
		CHECK(cmd.chunk_size <= (uint64_t)INT64_MAX);
		n = (size_t)snprintf(canon, sizeof(canon), "BDAT %llu%s",
				     (unsigned long long)cmd.chunk_size, cmd.chunk_last ? " LAST" : "");
		CHECK(command_parse(canon, n, &again, &why) == CMD_OK);
		CHECK(again.chunk_size == cmd.chunk_size && again.chunk_last == cmd.chunk_last);
	}
	if (cmd.verb != VERB_MAIL && cmd.verb != VERB_RCPT)
		goto out;
	if (cmd.verb == VERB_RCPT) {
		CHECK(!cmd.addr.null);
		CHECK(cmd.params.size == -1 && cmd.params.body == BODY_UNSPEC);
		CHECK(cmd.params.dsn_mail.ret == 0 && cmd.params.dsn_mail.envid[0] == '\0');
		CHECK(!cmd.params.smtputf8);
	} else {
		CHECK(cmd.params.dsn_rcpt.notify == 0 && cmd.params.dsn_rcpt.orcpt_type[0] == '\0');
		CHECK(!cmd.addr.utf8 || cmd.params.smtputf8);
	}
	check_storable(&cmd.params);
	address_format(&cmd.addr, addr, sizeof(addr));
	CHECK(strlen(addr) <= ADDR_PATH_MAX);
	CHECK(utf8_valid(addr, strlen(addr)));

	/* the canonical form of the same command gives the same address */
	n = (size_t)snprintf(canon, sizeof(canon), "%s %s:<%s>%s", verb_name(cmd.verb),
			     cmd.verb == VERB_MAIL ? "FROM" : "TO", addr,
			     cmd.params.smtputf8 ? " SMTPUTF8" : "");
	CHECK(n < sizeof(canon));
	CHECK(command_parse(canon, n, &again, &why) == CMD_OK);
	CHECK(again.verb == cmd.verb && again.addr.null == cmd.addr.null);
	address_format(&again.addr, canon, sizeof(canon));
	CHECK(strcmp(canon, addr) == 0);
out:
	free(line);
	return 0;
}
