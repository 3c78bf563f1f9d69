/*
 * fuzz_spool.c - libFuzzer target for the queue file parser: any bytes a
 * crash or a bad disk could leave in the spool must be parsed or refused
 * with a reason, never read out of bounds, never leak.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include "lib/lib.h"
#include "queue/queue.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * The reader of files, spool_load(), reads the records in pieces (the
 * first piece as small as 1 byte here) and only the check record, the end
 * marker and a padding header after the content: it must accept exactly what
 * spool_parse() accepts of the whole image, with the same records; and
 * checking a loaded file against its check record stays within it.
 */
static char path[64];

/* the one file and its folder go when the fuzzer exits */
static void
remove_file(void)
{
	char *slash = strrchr(path, '/');

	unlink(path);
	if (slash != NULL) {
		*slash = '\0';
		rmdir(path);
	}
}

static void
check_load(const uint8_t *data, size_t size)
{
	struct spool_file f;
	struct spool_msg m;
	char err[256], err2[256];
	int fd, a, b;
	size_t i;

	if (path[0] == '\0') {
		char dir[] = "/tmp/fuzz_spool.XXXXXX";

		if (mkdtemp(dir) == NULL)
			__builtin_trap();
		snprintf(path, sizeof(path), "%s/7KQ2M4XH1C00", dir);
		atexit(remove_file);
	}
	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600)) < 0 ||
	    write(fd, data, size) != (ssize_t)size || close(fd) < 0)
		__builtin_trap();
	spool_head_first = size > 0 ? (size_t)data[size - 1] % 64 + 1 : 1;
	a = spool_load(path, NULL, &f, err, sizeof(err));
	b = spool_parse(data, size, &m, err2, sizeof(err2));
	if ((a == 0) != (b == 0) || a == -2)
		__builtin_trap();
	if (a == 0) {
		if (f.m.nrcpt != m.nrcpt || f.m.content_offset != m.content_offset ||
		    f.m.content_len != m.content_len || f.m.file_size != m.file_size ||
		    f.m.arrival_usec != m.arrival_usec || strcmp(f.m.sender, m.sender) != 0 ||
		    strcmp(f.m.qid, m.qid) != 0 || f.m.has_check != m.has_check ||
		    f.m.check_head != m.check_head || f.m.check_content != m.check_content)
			__builtin_trap();
		/* the check is verified over what the file holds, within its bounds */
		if (spool_check_verify(&f) == 1 && !m.has_check)
			__builtin_trap();
		for (i = 0; i < m.nrcpt; i++)
			if (strcmp(f.m.rcpts[i].addr, m.rcpts[i].addr) != 0 ||
			    f.m.rcpts[i].type_offset != m.rcpts[i].type_offset)
				__builtin_trap();
		spool_file_free(&f);
		spool_msg_free(&m);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct spool_msg m;
	char err[256];
	size_t i;

	check_load(data, size);
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
