/*
 * fuzz_qstatus.c - libFuzzer target for the status file parser
 * (queue/status.c, qstatus_parse): whatever bytes a crash or a bad disk
 * leave in defer/ID are parsed or refused, never read out of bounds,
 * never leaked; what is accepted formats back to a file that parses to
 * the same status, and that formatting is a fixed point. Built by
 * tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "queue/queue.h"

/*
 * status.c is not on run.sh's list of pure sources because its writer
 * waits for a directory fsync (iopool.c, which needs libevent); the parser
 * is pure, so the file is compiled in here and the one call out stubbed.
 */
#include "queue/status.c"

int
groupsync_wait(struct groupsync *d)
{
	(void)d;
	abort();        /* never called: nothing here writes a status file */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

static void
check_same(const struct qstatus *a, const struct qstatus *b)
{
	size_t i;

	CHECK(a->attempts == b->attempts);
	CHECK(a->warned == b->warned);
	CHECK(a->parked == b->parked && a->parked_since == b->parked_since);
	CHECK(a->nitems == b->nitems);
	for (i = 0; i < a->nitems; i++) {
		CHECK(a->items[i].kind == b->items[i].kind);
		CHECK(a->items[i].index == b->items[i].index);
		CHECK(strcmp(a->items[i].text, b->items[i].text) == 0);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qstatus st, again, third;
	struct dstr d, d2;
	size_t i;

	if (qstatus_parse((const char *)data, size, &st) < 0) {
		/* refused: nothing half-filled is left behind */
		CHECK(st.nitems == 0 && st.items == NULL && st.attempts == 0 && !st.warned &&
		      st.parked == 0 && st.parked_since == 0);
		return 0;
	}
	for (i = 0; i < st.nitems; i++) {
		CHECK(st.items[i].kind == QS_ERROR || st.items[i].kind == QS_DONE);
		CHECK(strchr(st.items[i].text, '\n') == NULL);
		CHECK(strlen(st.items[i].text) < size);
	}
	dstr_init(&d, 0);
	qstatus_format(&st, &d);
	CHECK(qstatus_parse(d.s, d.len, &again) == 0);
	check_same(&st, &again);

	/* formatting what was read back gives the same bytes */
	dstr_init(&d2, 0);
	qstatus_format(&again, &d2);
	CHECK(d2.len == d.len && memcmp(d2.s, d.s, d.len) == 0);

	/* and the setters keep it a file the parser takes */
	qstatus_set_error(&again, 7, (const char *)d.s);
	qstatus_add_done(&again, 7, "a@example.test");
	dstr_reset(&d2);
	qstatus_format(&again, &d2);
	CHECK(qstatus_parse(d2.s, d2.len, &third) == 0);
	check_same(&again, &third);

	qstatus_free(&third);
	qstatus_free(&again);
	qstatus_free(&st);
	dstr_free(&d2);
	dstr_free(&d);
	return 0;
}
