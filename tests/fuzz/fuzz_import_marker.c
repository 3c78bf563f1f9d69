/*
 * fuzz_import_marker.c - libFuzzer target for the name of a message being
 * imported, OLDID.NEWID.STATE (queue/import_marker.c). Whatever the bytes,
 * the parser reads only the string it is given; a name it accepts holds
 * two valid queue ids and a known state, and formats back to itself.
 * Built by tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
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
	char *in = malloc(size + 1), oldid[QID_LEN + 1], newid[QID_LEN + 1];
	char back[IMPORT_MARKER_LEN + 1];
	int state;

	memcpy(in, data, size);
	in[size] = '\0';
	state = import_marker_parse(in, oldid, newid);
	CHECK(state >= -1 && state < IMPORT_NSTATES);
	if (state >= 0) {
		CHECK(qid_valid(oldid) && qid_valid(newid));
		import_marker_format(oldid, newid, state, back);
		CHECK(strcmp(back, in) == 0);
	}
	free(in);
	return 0;
}
