/*
 * check_manual.c - keeps sorter.conf(5) complete: every parameter of
 * lib/config.c's table has an entry (".SS name") with its type, default,
 * bounds or values and an example, the default it states is the table's,
 * and the page describes no parameter that does not exist.
 *
 * A parameter added to the table without its entry fails here, naming the
 * parameter and what its entry lacks.
 */
#include "config.h"

#include <check.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"

#ifndef TOP_SRCDIR
#define TOP_SRCDIR "."
#endif

static char *page;

static void
load_page(void)
{
	char path[4096];
	FILE *f;
	long n;

	snprintf(path, sizeof(path), "%s/man/sorter.conf.5", TOP_SRCDIR);
	f = fopen(path, "rb");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	page = xcalloc(1, (size_t)n + 1);
	ck_assert_int_eq(fread(page, 1, (size_t)n, f), (size_t)n);
	fclose(f);
}

/* The entry of key: from its ".SS key" line to the next .SS or .SH */
static char *
entry_of(const char *key)
{
	char head[256];
	const char *p = page, *end;
	size_t hl;

	hl = (size_t)snprintf(head, sizeof(head), ".SS %s\n", key);
	for (;;) {
		p = strstr(p, head);
		if (p == NULL)
			return NULL;
		if (p == page || p[-1] == '\n')
			break;
		p++;
	}
	p += hl;
	for (end = p; *end; end = strchr(end, '\n') ? strchr(end, '\n') + 1 : end + strlen(end))
		if (strncmp(end, ".SS ", 4) == 0 || strncmp(end, ".SH ", 4) == 0)
			break;
	return xstrndup(p, (size_t)(end - p));
}

/* The text with roff's font escapes and \- \& \e undone: what a reader sees */
static void
plain(const char *in, char *out, size_t outlen)
{
	size_t o = 0;

	for (; *in && o + 1 < outlen; in++) {
		if (in[0] == '\\' && in[1] == 'f' && in[2]) {
			in += 2;
			continue;
		}
		if (in[0] == '\\' && (in[1] == '-' || in[1] == 'e')) {
			out[o++] = in[1] == '-' ? '-' : '\\';
			in++;
			continue;
		}
		if (in[0] == '\\' && in[1] == '&') {
			in++;
			continue;
		}
		out[o++] = *in;
	}
	out[o] = '\0';
}

/* The rest of the line after "label" at a line start (the entry's field),
 * made plain; NULL when there is none. */
static bool
field(const char *entry, const char *label, char *out, size_t outlen)
{
	char line[1024];
	const char *p = entry, *nl;
	size_t n;

	while (*p) {
		nl = strchr(p, '\n');
		n = nl ? (size_t)(nl - p) : strlen(p);
		if (n >= sizeof(line))
			n = sizeof(line) - 1;
		memcpy(line, p, n);
		line[n] = '\0';
		plain(line, out, outlen);
		if (strncmp(out, label, strlen(label)) == 0) {
			memmove(out, out + strlen(label), strlen(out + strlen(label)) + 1);
			return true;
		}
		p = nl ? nl + 1 : p + n;
	}
	return false;
}

START_TEST(test_every_key_documented)
{
	char value[1024];
	const char *key, *def;
	char *e;
	size_t i;

	load_page();
	for (i = 0; (key = config_key(i)) != NULL; i++) {
		e = entry_of(key);
		ck_assert_msg(e != NULL, "sorter.conf(5) has no entry for the parameter '%s' "
			      "(add \".SS %s\" with Type:, Default:, Values: or Bounds:, Example:)",
			      key, key);
		ck_assert_msg(field(e, "Type: ", value, sizeof(value)),
			      "sorter.conf(5): the entry of '%s' has no \"Type:\" line", key);
		ck_assert_msg(field(e, "Default: ", value, sizeof(value)),
			      "sorter.conf(5): the entry of '%s' has no \"Default:\" line", key);
		def = config_key_default(i);
		ck_assert_msg(def == NULL || strstr(value, def) != NULL,
			      "sorter.conf(5): the default of '%s' is \"%s\" in lib/config.c, the page "
			      "says \"%s\"", key, def, value);
		ck_assert_msg(field(e, "Bounds: ", value, sizeof(value)) ||
			      field(e, "Values: ", value, sizeof(value)),
			      "sorter.conf(5): the entry of '%s' has neither \"Bounds:\" nor \"Values:\"",
			      key);
		ck_assert_msg(field(e, "Example: ", value, sizeof(value)),
			      "sorter.conf(5): the entry of '%s' has no \"Example:\" line", key);
		ck_assert_msg(strstr(value, key) == value,
			      "sorter.conf(5): the example of '%s' does not set it: \"%s\"", key, value);
		free(e);
	}
	free(page);
}
END_TEST

START_TEST(test_no_unknown_key)
{
	char name[256];
	const char *p;
	size_t i, n;
	bool known;

	load_page();
	for (p = page; (p = strstr(p, "\n.SS ")) != NULL; p++) {
		n = strcspn(p + 5, "\n");
		if (n >= sizeof(name))
			n = sizeof(name) - 1;
		memcpy(name, p + 5, n);
		name[n] = '\0';
		/* only headings that look like a parameter name */
		if (strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_") != n)
			continue;
		known = false;
		for (i = 0; config_key(i) != NULL; i++)
			if (strcmp(config_key(i), name) == 0)
				known = true;
		ck_assert_msg(known, "sorter.conf(5) describes '%s', which lib/config.c does not know",
			      name);
	}
	free(page);
}
END_TEST

static Suite *
manual_suite(void)
{
	Suite *s = suite_create("manual");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_every_key_documented);
	tcase_add_test(tc, test_no_unknown_key);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(manual_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
