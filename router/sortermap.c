/*
 * sortermap.c - the map tool:
 *   sortermap [-v] [hash:|btree:]FILE   compiles the text map FILE into FILE.db
 *   sortermap -q KEY [hash:|btree:]FILE looks KEY up in FILE.db
 *   sortermap -q KEY ldap:FILE          looks KEY up in the directory FILE names
 *
 * Only the command line lives here. The build is map_build() (map.c):
 * atomic, the whole source parsed before anything is written, a syntax
 * error or a duplicate key reported as "FILE:LINE: reason" with the old
 * FILE.db left as it was. A query goes through map_lookup(), so -q answers
 * exactly what sorterd would.
 *
 * Must never: exit 0 unless the new map is in place and durable, or
 * print a value that sorterd would not find.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/lib.h"
#include "router/router.h"

#define SOURCE_MAX ((size_t)1 << 31)  /* bytes of map source read at most */

static void
usage(void)
{
	fprintf(stderr, "usage: sortermap [-v] [hash:|btree:]FILE\n"
		"       sortermap -q KEY [hash:|btree:|ldap:]FILE\n");
	exit(2);
}

/* the source file of a spec: what follows "type:" (a word of lower-case
 * letters, as map.c reads it), or all of it */
static const char *
source_of(const char *spec)
{
	size_t n = strspn(spec, "abcdefghijklmnopqrstuvwxyz");

	return n > 0 && spec[n] == ':' ? spec + n + 1 : spec;
}

static char *
read_source(const char *path, size_t *len, struct stat *sb)
{
	struct dstr d;
	char buf[65536];
	ssize_t n;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, sb) < 0) {
		fprintf(stderr, "sortermap: %s: %s\n", path, strerror(errno));
		exit(1);
	}
	dstr_init(&d, SOURCE_MAX);
	if (sb->st_size > 0 && (size_t)sb->st_size < SOURCE_MAX) {
		d.s = xmalloc((size_t)sb->st_size + 1);
		d.cap = (size_t)sb->st_size + 1;
	}
	for (;;) {
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "sortermap: %s: %s\n", path, strerror(errno));
			exit(1);
		}
		if (n == 0)
			break;
		if (dstr_append(&d, buf, (size_t)n) < 0) {
			fprintf(stderr, "sortermap: %s: larger than %zu bytes\n", path, SOURCE_MAX);
			exit(1);
		}
	}
	close(fd);
	*len = d.len;
	return d.s ? d.s : xstrdup("");
}

static int
build(const char *spec, bool verbose)
{
	const char *file = source_of(spec);
	char *src, err[600];
	struct stat sb;
	size_t len;
	long n;
	uint64_t t0 = now_usec();

	src = read_source(file, &len, &sb);
	n = map_build(spec, file, src, len, &sb, err, sizeof(err));
	free(src);
	if (n < 0) {
		fprintf(stderr, "%s\n", err);
		fprintf(stderr, "sortermap: %s.db left as it was\n", file);
		return 1;
	}
	if (verbose)
		fprintf(stderr, "sortermap: %s.db: %ld entries in %.2f s\n", file, n,
			(double)(now_usec() - t0) / 1e6);
	return 0;
}

static int
query(const char *key, const char *spec)
{
	char *val = xmalloc(MAP_VALUE_MAX + 1), err[600];
	struct map *m;
	enum map_status st;

	if ((m = map_open(spec, err, sizeof(err))) == NULL) {
		fprintf(stderr, "sortermap: %s\n", err);
		free(val);
		return 2;
	}
	st = map_lookup(m, key, val, MAP_VALUE_MAX + 1, err, sizeof(err));
	if (st == MAP_FOUND)
		printf("%s\n", val);
	else if (st == MAP_TEMPFAIL)
		fprintf(stderr, "sortermap: %s\n", err);
	map_close(m);
	free(val);
	return st == MAP_FOUND ? 0 : st == MAP_NOTFOUND ? 1 : 2;
}

int
main(int argc, char **argv)
{
	const char *qkey = NULL;
	bool verbose = false;
	int ch;

	log_set_progname("sortermap");
	/* an LDAP server that closes its end must not kill a query */
	signal(SIGPIPE, SIG_IGN);
	while ((ch = getopt(argc, argv, "q:vh")) != -1) {
		switch (ch) {
		case 'q':
			qkey = optarg;
			break;
		case 'v':
			verbose = true;
			break;
		default:
			usage();
		}
	}
	if (optind + 1 != argc)
		usage();
	if (qkey != NULL)
		return query(qkey, argv[optind]);
	return build(argv[optind], verbose);
}
