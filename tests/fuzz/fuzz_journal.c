/*
 * fuzz_journal.c - libFuzzer target for the journal's codec
 * (queue/journal_codec.c): whatever bytes a crash or a bad disk leave in a
 * journal file are parsed as an entry, a header and a queue file's head or
 * refused, never read out of bounds; an entry or header accepted encodes
 * back to the same bytes. Built by tests/fuzz/run.sh.
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
	struct journal_entry e;
	unsigned char hdr[JOURNAL_ENTRY_HDR], jh[JOURNAL_HDR_LEN];
	char boot[JOURNAL_BOOT_LEN + 1], id[QID_LEN + 1];
	uint64_t epoch;
	bool freed;

	if (journal_entry_parse(data, size, &e) == 0) {
		CHECK(e.body == data + JOURNAL_ENTRY_HDR);
		CHECK(e.body_len <= JOURNAL_BODY_MAX && JOURNAL_ENTRY_HDR + e.body_len <= size);
		CHECK(qid_valid(e.slot) && qid_valid(e.id) && e.tail <= e.seq);
		CHECK(journal_entry_size(e.body_len) % JOURNAL_ALIGN == 0);
		journal_entry_encode(hdr, &e, e.body);
		CHECK(memcmp(hdr, data, JOURNAL_ENTRY_HDR) == 0);
	}
	if (journal_header_parse(data, size, &epoch, boot) == 0) {
		CHECK(strlen(boot) <= JOURNAL_BOOT_LEN);
		journal_header_encode(jh, epoch, boot);
		/* the same, unless the boot id held bytes after a NUL */
		CHECK(memcmp(jh, data, 16 + strlen(boot)) == 0);
	}
	if (journal_file_id(data, size, id, &freed) == 0)
		CHECK(qid_valid(id));
	return 0;
}
