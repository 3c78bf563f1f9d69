/*
 * fuzz_spool.c - libFuzzer target for the queue file parser: any bytes a
 * crash or a bad disk could leave in the spool must be parsed or refused
 * with a reason, never read out of bounds, never leak.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lib/lib.h"
#include "queue/queue.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct spool_msg m;
	char err[256];
	size_t i;

	if (spool_parse(data, size, &m, err, sizeof(err)) == 0) {
		/* what the parser promises about a file it accepts */
		if (m.nrcpt == 0 || m.sender == NULL || m.client == NULL ||
		    m.content_offset > size || m.content_len > size - m.content_offset ||
		    m.file_size != size)
			__builtin_trap();
		for (i = 0; i < m.nrcpt; i++)
			if (m.rcpts[i].type_offset >= size || m.rcpts[i].addr[0] == '\0' ||
			    strchr("RDBX", data[m.rcpts[i].type_offset]) == NULL)
				__builtin_trap();
		spool_msg_free(&m);
	} else if (err[0] == '\0' || memchr(err, '\0', sizeof(err)) == NULL) {
		__builtin_trap();
	}
	return 0;
}
