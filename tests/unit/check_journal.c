/*
 * check_journal.c - unit tests for the journal's codec
 * (queue/journal_codec.c): entries and headers encode and parse back,
 * and any change to their bytes, a bad name or a body cut short is
 * refused; the id at the head of a queue file is found, freed or not.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "queue/queue.h"

static const char body[] = "V\0\0\0\0011I\0\0\0\0141K1T43H7K860T\0\0\0\00212";

static size_t
make_entry(unsigned char *buf, size_t cap)
{
	struct journal_entry e;

	memset(&e, 0, sizeof(e));
	e.body_len = sizeof(body) - 1;
	e.epoch = 7;
	e.seq = 1000;
	e.tail = 900;
	snprintf(e.slot, sizeof(e.slot), "1K1T320DZ87Y");
	snprintf(e.id, sizeof(e.id), "1K1T43H7K860");
	ck_assert_uint_ge(cap, journal_entry_size(e.body_len));
	memset(buf, 0, cap);
	journal_entry_encode(buf, &e, body);
	memcpy(buf + JOURNAL_ENTRY_HDR, body, e.body_len);
	return JOURNAL_ENTRY_HDR + e.body_len;
}

START_TEST(test_entry_round_trip)
{
	unsigned char buf[256];
	struct journal_entry e;
	size_t n = make_entry(buf, sizeof(buf));

	ck_assert_int_eq(journal_entry_parse(buf, n, &e), 0);
	ck_assert_uint_eq(e.body_len, sizeof(body) - 1);
	ck_assert_uint_eq(e.epoch, 7);
	ck_assert_uint_eq(e.seq, 1000);
	ck_assert_uint_eq(e.tail, 900);
	ck_assert_str_eq(e.slot, "1K1T320DZ87Y");
	ck_assert_str_eq(e.id, "1K1T43H7K860");
	ck_assert(e.body == buf + JOURNAL_ENTRY_HDR);
	ck_assert_uint_eq(journal_entry_size(e.body_len), 128);
	ck_assert_uint_eq(journal_entry_size(0), JOURNAL_ENTRY_HDR);
}
END_TEST

START_TEST(test_entry_refused)
{
	unsigned char buf[256];
	struct journal_entry e;
	size_t n = make_entry(buf, sizeof(buf)), i;

	/* every byte of the header and the body is covered */
	for (i = 0; i < n; i++) {
		buf[i] ^= 0x20;
		ck_assert_msg(journal_entry_parse(buf, n, &e) < 0, "byte %zu changed, still parsed", i);
		buf[i] ^= 0x20;
	}
	ck_assert_int_eq(journal_entry_parse(buf, n, &e), 0);
	/* cut short */
	ck_assert_int_lt(journal_entry_parse(buf, n - 1, &e), 0);
	ck_assert_int_lt(journal_entry_parse(buf, JOURNAL_ENTRY_HDR - 1, &e), 0);
	/* zeros: a journal's unwritten space */
	memset(buf, 0, sizeof(buf));
	ck_assert_int_lt(journal_entry_parse(buf, sizeof(buf), &e), 0);
}
END_TEST

START_TEST(test_header_round_trip)
{
	unsigned char h[JOURNAL_HDR_LEN];
	char boot[JOURNAL_BOOT_LEN + 1];
	uint64_t epoch = 0;

	journal_header_encode(h, 42, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
	ck_assert_int_eq(journal_header_parse(h, sizeof(h), &epoch, boot), 0);
	ck_assert_uint_eq(epoch, 42);
	ck_assert_str_eq(boot, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
	h[20] ^= 1;
	ck_assert_int_lt(journal_header_parse(h, sizeof(h), &epoch, boot), 0);
	h[20] ^= 1;
	ck_assert_int_lt(journal_header_parse(h, sizeof(h) - 1, &epoch, boot), 0);
}
END_TEST

START_TEST(test_file_id)
{
	unsigned char buf[64];
	char id[QID_LEN + 1];
	bool freed = true;

	memcpy(buf, body, sizeof(body) - 1);
	ck_assert_int_eq(journal_file_id(buf, sizeof(body) - 1, id, &freed), 0);
	ck_assert_str_eq(id, "1K1T43H7K860");
	ck_assert(!freed);
	buf[0] = SPOOL_FREED;
	ck_assert_int_eq(journal_file_id(buf, sizeof(body) - 1, id, &freed), 0);
	ck_assert_str_eq(id, "1K1T43H7K860");
	ck_assert(freed);
	/* the id record cut short, or none before the content */
	ck_assert_int_lt(journal_file_id(buf, 12, id, &freed), 0);
	memcpy(buf, "V\0\0\0\0011M\0\0\0\0", 11);
	ck_assert_int_lt(journal_file_id(buf, 11, id, &freed), 0);
}
END_TEST

static Suite *
journal_suite(void)
{
	Suite *s = suite_create("journal");
	TCase *tc = tcase_create("codec");

	tcase_add_test(tc, test_entry_round_trip);
	tcase_add_test(tc, test_entry_refused);
	tcase_add_test(tc, test_header_round_trip);
	tcase_add_test(tc, test_file_id);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(journal_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
