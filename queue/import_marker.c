/*
 * import_marker.c - the name a message being imported carries in the
 * source spool, DIR/importing/OLDID.NEWID.STATE (import.c): its old id, the
 * new id chosen for it here, and the folder it came from. A pure codec:
 * the names come from another machine's disk, so the parser takes nothing
 * on trust (fuzz_import_marker.c).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "lib/lib.h"
#include "queue/queue.h"

const char *const import_states[IMPORT_NSTATES] = { "incoming", "active", "deferred", "hold" };

void
import_marker_format(const char *oldid, const char *newid, int state, char *out)
{
	snprintf(out, IMPORT_MARKER_LEN + 1, "%.*s.%.*s.%s", QID_LEN, oldid, QID_LEN, newid,
		 import_states[state]);
}

int
import_marker_parse(const char *name, char oldid[QID_LEN + 1], char newid[QID_LEN + 1])
{
	size_t n = strnlen(name, IMPORT_MARKER_LEN + 1);
	int i;

	if (n > IMPORT_MARKER_LEN || n < 2 * QID_LEN + 3 || name[QID_LEN] != '.' ||
	    name[2 * QID_LEN + 1] != '.')
		return -1;
	memcpy(oldid, name, QID_LEN);
	oldid[QID_LEN] = '\0';
	memcpy(newid, name + QID_LEN + 1, QID_LEN);
	newid[QID_LEN] = '\0';
	if (!qid_valid(oldid) || !qid_valid(newid))
		return -1;
	for (i = 0; i < IMPORT_NSTATES; i++)
		if (strcmp(name + 2 * QID_LEN + 2, import_states[i]) == 0)
			return i;
	return -1;
}
