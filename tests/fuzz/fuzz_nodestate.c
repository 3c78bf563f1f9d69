/*
 * fuzz_nodestate.c - libFuzzer target for the node records codec
 * (queue/nodestate.c): the drained-nodes file and the queue manager's
 * "nodes" report to sorterctl. Whatever bytes come in, the reader must
 * never read outside them, must say why it refuses a line, and every
 * record it accepts must be written back as one line that reads back as
 * the same record, byte for byte the line it came from. Built by
 * tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "router/router.h"
#include "queue/queue.h"

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
	struct nodestate_source src, again;
	struct nodestate_rec r, b;
	const char *line;
	char err[256];
	struct dstr d;
	int rc;

	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	nodestate_source_init(&src, buf, size);
	for (;;) {
		line = src.p;
		rc = nodestate_next(&src, &r, err, sizeof(err));
		if (rc != 1)
			break;
		CHECK(nodestate_name_ok(r.node, strlen(r.node)));
		CHECK(memchr(r.error, '\0', sizeof(r.error)) != NULL);
		dstr_init(&d, 0);
		nodestate_format(&r, &d);
		CHECK(d.len > 0 && d.len <= NODESTATE_LINE_MAX + 1 && d.s[d.len - 1] == '\n');
		CHECK(memchr(d.s, '\n', d.len) == d.s + d.len - 1);
		/* the line it came from, after the comments and blank lines before it */
		CHECK((size_t)(src.p - line) >= d.len);
		CHECK(memcmp(src.p - d.len, d.s, d.len) == 0);
		nodestate_source_init(&again, d.s, d.len);
		CHECK(nodestate_next(&again, &b, err, sizeof(err)) == 1);
		CHECK(b.type == r.type && b.health == r.health && b.since == r.since &&
		      b.latency_usec == r.latency_usec);
		CHECK(strcmp(b.node, r.node) == 0 && strcmp(b.endpoint, r.endpoint) == 0 &&
		      strcmp(b.error, r.error) == 0);
		CHECK(nodestate_next(&again, &b, err, sizeof(err)) == 0);
		dstr_free(&d);
	}
	if (rc < 0)
		CHECK(strncmp(err, "line ", 5) == 0 && memchr(err, '\0', sizeof(err)) != NULL);
	else
		CHECK(nodestate_next(&src, &r, err, sizeof(err)) == 0);
	free(buf);
	return 0;
}
