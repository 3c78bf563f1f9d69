/*
 * fuzz_nodecaps.c - libFuzzer target for the codec of spool_dir/nodecaps
 * (router/nodecaps.c), the file through which the queue manager tells the
 * smtpd workers what each LMTP endpoint offered. Whatever bytes are in it,
 * the reader must never read outside them, must say why it refuses a
 * line, and every entry it accepts must be written back by the formatter
 * as one line that reads back as the same entry. Built by
 * tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "router/router.h"

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
	char *buf = malloc(size ? size : 1);
	struct nodecaps_source src, again;
	struct nodecaps_entry e, f;
	unsigned long last = 0;
	char err[256];
	struct dstr d;
	size_t i;
	int rc;

	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	nodecaps_source_init(&src, buf, size);
	while ((rc = nodecaps_next(&src, &e, err, sizeof(err))) == 1) {
		CHECK(src.line > last);
		last = src.line;
		CHECK(strnlen(e.endpoint, sizeof(e.endpoint)) < sizeof(e.endpoint));
		CHECK(strncmp(e.endpoint, "lmtp:", 5) == 0);
		for (i = 0; e.endpoint[i]; i++)
			CHECK(e.endpoint[i] > ' ' && e.endpoint[i] < 0x7f);
		CHECK(!e.caps.size_max || e.caps.size);

		dstr_init(&d, 0);
		nodecaps_format(&e, &d);
		CHECK(d.len > 0 && d.len <= NODECAPS_LINE_MAX + 1 && d.s[d.len - 1] == '\n');
		CHECK(memchr(d.s, '\n', d.len) == d.s + d.len - 1);
		nodecaps_source_init(&again, d.s, d.len);
		CHECK(nodecaps_next(&again, &f, err, sizeof(err)) == 1);
		CHECK(strcmp(f.endpoint, e.endpoint) == 0 && f.since == e.since);
		CHECK(nodecaps_equal(&f.caps, &e.caps));
		CHECK(nodecaps_next(&again, &f, err, sizeof(err)) == 0);
		dstr_free(&d);
	}
	if (rc < 0)
		CHECK(strncmp(err, "line ", 5) == 0 && memchr(err, '\0', sizeof(err)) != NULL);
	else
		CHECK(nodecaps_next(&src, &e, err, sizeof(err)) == 0);
	free(buf);
	return 0;
}
