/*
 * fuzz_command.c - libFuzzer target for the SMTP command-line parser
 * (smtpd/command.c). Checks that every result is consistent with the
 * line it came from: arguments inside the line, no control character
 * accepted, limits on the stored parameter values, UTF-8 in a MAIL path
 * only with SMTPUTF8 and always well formed, and an accepted MAIL or RCPT
 * address that parses back the same when written canonically.
 * Built by tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

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
	CHECK(st >= CMD_OK && st <= CMD_ERR_UTF8);
	CHECK(st != CMD_ERR_UTF8 || (cmd.verb == VERB_MAIL && cmd.addr.utf8 &&
				     !cmd.params.smtputf8));
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
	CHECK(strlen(cmd.params.envid) <= XTEXT_MAX);
	CHECK(strlen(cmd.params.orcpt) < sizeof(cmd.params.orcpt));
	CHECK(cmd.params.ret >= 0 && cmd.params.ret <= 2);
	CHECK(cmd.params.notify >= 0 && cmd.params.notify <= 15);
	CHECK(!(cmd.params.notify & 8) || cmd.params.notify == 8);

	if (cmd.verb != VERB_MAIL && cmd.verb != VERB_RCPT)
		goto out;
	if (cmd.verb == VERB_RCPT) {
		CHECK(!cmd.addr.null);
		CHECK(cmd.params.size == -1 && cmd.params.body == BODY_UNSPEC);
		CHECK(cmd.params.ret == 0 && cmd.params.envid[0] == '\0');
		CHECK(!cmd.params.smtputf8);
	} else {
		CHECK(cmd.params.notify == 0 && cmd.params.orcpt[0] == '\0');
		CHECK(!cmd.addr.utf8 || cmd.params.smtputf8);
	}
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
