/*
 * journal_codec.c - the bytes of a writer's journal (journal.c): its
 * header and its entries, and the id at the head of a queue file. One
 * codec for the writer, start-up's recovery and the fuzz target
 * (tests/fuzz/fuzz_journal.c). Pure: no I/O.
 *
 *   header (JOURNAL_HDR_LEN bytes at offset 0): "SORTERJ1", epoch (8),
 *     boot id (JOURNAL_BOOT_LEN, NUL-padded), zeros, CRC-32C (4) of the
 *     bytes before it;
 *   entry (at a multiple of JOURNAL_ALIGN from JOURNAL_HDR_SIZE on):
 *     "SJE1", body length (4), epoch (8), seq (8), tail (8), slot name
 *     (QID_LEN + 1, NUL-ended), message id (QID_LEN + 1), 2 zero bytes,
 *     CRC-32C (4) of those 60 bytes and of the body; then the body.
 * Numbers are big-endian, as in queue files.
 */
#include "config.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "lib/lib.h"
#include "queue/queue.h"

#define JOURNAL_MAGIC "SORTERJ1"
#define ENTRY_MAGIC "SJE1"

uint64_t
journal_entry_size(uint64_t body_len)
{
	return (JOURNAL_ENTRY_HDR + body_len + JOURNAL_ALIGN - 1) / JOURNAL_ALIGN * JOURNAL_ALIGN;
}

void
journal_entry_encode(unsigned char hdr[JOURNAL_ENTRY_HDR], const struct journal_entry *e,
		     const void *body)
{
	memset(hdr, 0, JOURNAL_ENTRY_HDR);
	memcpy(hdr, ENTRY_MAGIC, 4);
	be32_put(hdr + 4, e->body_len);
	be64_put(hdr + 8, e->epoch);
	be64_put(hdr + 16, e->seq);
	be64_put(hdr + 24, e->tail);
	memcpy(hdr + 32, e->slot, strnlen(e->slot, QID_LEN));
	memcpy(hdr + 32 + QID_LEN + 1, e->id, strnlen(e->id, QID_LEN));
	be32_put(hdr + 60, crc32c(crc32c(0, hdr, 60), body, e->body_len));
}

static bool
name_ok(const unsigned char *p, char out[QID_LEN + 1])
{
	memcpy(out, p, QID_LEN + 1);
	return out[QID_LEN] == '\0' && qid_valid(out);
}

int
journal_entry_parse(const unsigned char *p, size_t avail, struct journal_entry *e)
{
	uint32_t len;

	if (avail < JOURNAL_ENTRY_HDR || memcmp(p, ENTRY_MAGIC, 4) != 0)
		return -1;
	len = be32_get(p + 4);
	if (len == 0 || len > JOURNAL_BODY_MAX || len > avail - JOURNAL_ENTRY_HDR)
		return -1;
	if (p[58] != 0 || p[59] != 0)
		return -1;
	e->body_len = len;
	e->epoch = be64_get(p + 8);
	e->seq = be64_get(p + 16);
	e->tail = be64_get(p + 24);
	if (!name_ok(p + 32, e->slot) || !name_ok(p + 32 + QID_LEN + 1, e->id))
		return -1;
	if (e->tail > e->seq ||
	    crc32c(crc32c(0, p, 60), p + JOURNAL_ENTRY_HDR, len) != be32_get(p + 60))
		return -1;
	e->body = p + JOURNAL_ENTRY_HDR;
	return 0;
}

void
journal_header_encode(unsigned char out[JOURNAL_HDR_LEN], uint64_t epoch, const char *boot)
{
	memset(out, 0, JOURNAL_HDR_LEN);
	memcpy(out, JOURNAL_MAGIC, 8);
	be64_put(out + 8, epoch);
	memcpy(out + 16, boot, strnlen(boot, JOURNAL_BOOT_LEN));
	be32_put(out + JOURNAL_HDR_LEN - 4, crc32c(0, out, JOURNAL_HDR_LEN - 4));
}

int
journal_header_parse(const unsigned char *p, size_t avail, uint64_t *epoch,
		     char boot[JOURNAL_BOOT_LEN + 1])
{
	if (avail < JOURNAL_HDR_LEN || memcmp(p, JOURNAL_MAGIC, 8) != 0 ||
	    crc32c(0, p, JOURNAL_HDR_LEN - 4) != be32_get(p + JOURNAL_HDR_LEN - 4))
		return -1;
	*epoch = be64_get(p + 8);
	memcpy(boot, p + 16, JOURNAL_BOOT_LEN);
	boot[JOURNAL_BOOT_LEN] = '\0';
	return 0;
}

/* The id a queue file's head names, and whether its first byte is the freed
 * mark (a freed file's first record, the version, keeps its length). 0, or
 * -1 when the head names none. */
int
journal_file_id(const unsigned char *p, size_t n, char id[QID_LEN + 1], bool *freed)
{
	size_t off = 0;
	uint32_t len;
	int type;

	*freed = n > 0 && p[0] == SPOOL_FREED;
	while (off + SPOOL_REC_HDR <= n) {
		type = off == 0 && *freed ? SPOOL_REC_VERSION : p[off];
		len = be32_get(p + off + 1);
		if (type == SPOOL_REC_CONTENT || type == SPOOL_REC_END || len > n - off - SPOOL_REC_HDR)
			return -1;
		if (type == SPOOL_REC_ID) {
			if (len != QID_LEN)
				return -1;
			memcpy(id, p + off + SPOOL_REC_HDR, QID_LEN);
			id[QID_LEN] = '\0';
			return qid_valid(id) ? 0 : -1;
		}
		off += SPOOL_REC_HDR + len;
	}
	return -1;
}
