/*
 * fuzz_mapsource.c - libFuzzer target for the map source parser
 * (router/mapsource.c): any bytes an admin or a broken editor could put in
 * a map source must be parsed or refused with "NAME:LINE: reason", never
 * read out of bounds, and every entry returned must keep the promises
 * sortermap relies on (UTF-8 only well formed and without controls).
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lib/lib.h"
#include "router/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct mapsource ms;
	struct map_entry e;
	char err[256];
	unsigned long last = 0;
	uint32_t cp;
	size_t i, n;
	int rc;

	mapsource_init(&ms, "f", buf, size);
	while ((rc = mapsource_next(&ms, &e, err, sizeof(err))) == 1) {
		/* the entry lies inside the input, within the limits */
		if (e.keylen == 0 || e.keylen > MAP_KEY_MAX || strlen(e.key) != e.keylen ||
		    e.valuelen == 0 || e.valuelen > MAP_VALUE_MAX ||
		    e.value < buf || e.value + e.valuelen > buf + size ||
		    e.line <= last)
			__builtin_trap();
		last = e.line;
		/* keys are lower-case (ASCII), printable UTF-8, without blanks */
		for (i = 0; i < e.keylen; i++)
			if ((e.key[i] >= 'A' && e.key[i] <= 'Z') || (unsigned char)e.key[i] <= ' ')
				__builtin_trap();
		if (!utf8_valid(e.key, e.keylen))
			__builtin_trap();
		/* values are printable UTF-8 or TAB, and not padded with blanks */
		for (i = 0; i < e.valuelen; i += n) {
			n = 1;
			if (e.value[i] == '\t')
				continue;
			if ((n = utf8_decode(e.value + i, e.valuelen - i, &cp)) == 0 ||
			    utf8_is_control(cp))
				__builtin_trap();
		}
		if (e.value[0] == ' ' || e.value[0] == '\t' || e.value[e.valuelen - 1] == ' ' ||
		    e.value[e.valuelen - 1] == '\t')
			__builtin_trap();
	}
	if (rc < 0 && (strncmp(err, "f:", 2) != 0 || memchr(err, '\0', sizeof(err)) == NULL))
		__builtin_trap();
	if (rc == 0 && mapsource_next(&ms, &e, err, sizeof(err)) != 0)
		__builtin_trap();
	return 0;
}
