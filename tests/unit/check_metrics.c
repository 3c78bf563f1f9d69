/*
 * check_metrics.c - unit tests for the metrics region and its exposition
 * (lib/metrics.c): what each call adds shows up in the right series with
 * the right labels, histograms are cumulative with _count equal to the
 * +Inf bucket, label values are escaped, names past the table's size are
 * counted as "_other", and a process that never attached counts nothing.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "lib/metrics.h"

static struct listen_spec two[2] = {
	{ .host = "127.0.0.1", .port = "25", .role = ROLE_MX, .line = 1 },
	{ .host = "::1", .port = "587", .role = ROLE_SUBMISSION, .line = 2 },
};

static char *
render(struct metrics *m, const struct metrics_queue *q)
{
	struct dstr out;

	dstr_init(&out, 0);
	metrics_render(m, q, &out);
	return out.s;
}

/* The line that starts with `series` followed by a space: its value */
static const char *
value_of(const char *text, const char *series)
{
	static char buf[64];
	const char *p = text;
	size_t n = strlen(series);

	while ((p = strstr(p, series)) != NULL) {
		if ((p == text || p[-1] == '\n') && p[n] == ' ') {
			size_t k = strcspn(p + n + 1, "\n");

			snprintf(buf, sizeof(buf), "%.*s", (int)k, p + n + 1);
			return buf;
		}
		p += n;
	}
	return NULL;
}

#define ASSERT_VALUE(text, series, want) do { \
	const char *v_ = value_of((text), (series)); \
	ck_assert_msg(v_ != NULL, "no series %s in:\n%s", (series), (text)); \
	ck_assert_msg(strcmp(v_, (want)) == 0, "%s is %s, not %s", (series), v_, (want)); \
} while (0)

START_TEST(test_sessions_and_messages)
{
	struct metrics *m = metrics_create_private(two, 2);
	char *t;

	metrics_session_open(0);
	metrics_session_open(0);
	metrics_session_close(0);
	metrics_session_open(1);
	metrics_session_rejected(0, MSR_CLIENT_RATE);
	metrics_message_accepted(0, 1000);
	metrics_message_accepted(0, 24);
	metrics_message_rejected(1, MMR_SIZE);
	metrics_session_open(7);        /* not a configured listener: "other" */
	t = render(m, NULL);
	ASSERT_VALUE(t, "sorter_smtpd_sessions{listener=\"127.0.0.1:25\",role=\"mx\"}", "1");
	ASSERT_VALUE(t, "sorter_smtpd_sessions_total{listener=\"127.0.0.1:25\",role=\"mx\"}", "2");
	ASSERT_VALUE(t, "sorter_smtpd_sessions{listener=\"[::1]:587\",role=\"submission\"}", "1");
	ASSERT_VALUE(t, "sorter_smtpd_sessions{listener=\"other\",role=\"other\"}", "1");
	ASSERT_VALUE(t, "sorter_smtpd_sessions_rejected_total{listener=\"127.0.0.1:25\",role=\"mx\","
		     "reason=\"client_rate\"}", "1");
	ASSERT_VALUE(t, "sorter_smtpd_sessions_rejected_total{listener=\"127.0.0.1:25\",role=\"mx\","
		     "reason=\"max_sessions\"}", "0");
	ASSERT_VALUE(t, "sorter_smtpd_messages_accepted_total{listener=\"127.0.0.1:25\",role=\"mx\"}",
		     "2");
	ASSERT_VALUE(t, "sorter_smtpd_message_bytes_total{listener=\"127.0.0.1:25\",role=\"mx\"}",
		     "1024");
	ASSERT_VALUE(t, "sorter_smtpd_messages_rejected_total{listener=\"[::1]:587\","
		     "role=\"submission\",reason=\"size\"}", "1");
	/* a worker that died: its open sessions are gone, its counts stay */
	metrics_slab_gone(m, 0);
	free(t);
	t = render(m, NULL);
	ASSERT_VALUE(t, "sorter_smtpd_sessions{listener=\"127.0.0.1:25\",role=\"mx\"}", "0");
	ASSERT_VALUE(t, "sorter_smtpd_sessions_total{listener=\"127.0.0.1:25\",role=\"mx\"}", "2");
	free(t);
	metrics_attach(NULL, 0);
	free(m);
}
END_TEST

START_TEST(test_histogram)
{
	struct metrics *m = metrics_create_private(two, 1);
	char *t;

	metrics_commit_latency(400);            /* <= 0.0005 */
	metrics_commit_latency(500);            /* the bound itself is in its bucket */
	metrics_commit_latency(3000);           /* <= 0.005 */
	metrics_commit_latency(100000000);      /* +Inf only */
	t = render(m, NULL);
	ASSERT_VALUE(t, "sorter_spool_commit_duration_seconds_bucket{le=\"0.0005\"}", "2");
	ASSERT_VALUE(t, "sorter_spool_commit_duration_seconds_bucket{le=\"0.001\"}", "2");
	ASSERT_VALUE(t, "sorter_spool_commit_duration_seconds_bucket{le=\"0.005\"}", "3");
	ASSERT_VALUE(t, "sorter_spool_commit_duration_seconds_bucket{le=\"2.5\"}", "3");
	ASSERT_VALUE(t, "sorter_spool_commit_duration_seconds_bucket{le=\"+Inf\"}", "4");
	ASSERT_VALUE(t, "sorter_spool_commit_duration_seconds_count", "4");
	ASSERT_VALUE(t, "sorter_spool_commit_duration_seconds_sum", "100.0039");
	free(t);
	metrics_attach(NULL, 0);
	free(m);
}
END_TEST

START_TEST(test_deliveries_maps_milters)
{
	struct metrics *m = metrics_create_private(two, 1);
	int id;
	char *t;

	metrics_delivery(MTR_LMTP, "node-a", MDR_DELIVERED, 20000);
	metrics_delivery(MTR_LMTP, "node-a", MDR_DELIVERED, 20000);
	metrics_delivery(MTR_LMTP, "node-a", MDR_DEFERRED, 2000000);
	metrics_delivery(MTR_SMTP, "", MDR_BOUNCED, 1000);
	id = metrics_map_id("hash:/etc/sorter/user_map");
	ck_assert_int_ge(id, 0);
	ck_assert_int_eq(metrics_map_id("hash:/etc/sorter/user_map"), id);
	metrics_map_lookup(id, false, 30);
	metrics_map_lookup(id, true, 0);
	metrics_milter_result("dkim", "accept");
	metrics_milter_result("dkim", "no such verdict");
	metrics_milter(NULL, MMILT_TIMEOUT);
	metrics_tls_handshake(MTLS_SERVER, "TLSv1.3", true);
	metrics_tls_handshake(MTLS_CLIENT, "SSLv3", false);
	metrics_auth("PLAIN", MAUTH_SUCCESS);
	metrics_auth("CRAM-MD5", MAUTH_FAILURE);
	t = render(m, NULL);
	ASSERT_VALUE(t, "sorter_deliveries_total{transport=\"lmtp\",node=\"node-a\",result=\"delivered\"}",
		     "2");
	ASSERT_VALUE(t, "sorter_deliveries_total{transport=\"lmtp\",node=\"node-a\",result=\"deferred\"}",
		     "1");
	ASSERT_VALUE(t, "sorter_deliveries_total{transport=\"smtp\",node=\"\",result=\"bounced\"}", "1");
	ASSERT_VALUE(t, "sorter_delivery_duration_seconds_bucket{node=\"node-a\",le=\"0.025\"}", "2");
	ASSERT_VALUE(t, "sorter_delivery_duration_seconds_bucket{node=\"node-a\",le=\"+Inf\"}", "3");
	ASSERT_VALUE(t, "sorter_delivery_duration_seconds_count{node=\"node-a\"}", "3");
	ASSERT_VALUE(t, "sorter_map_lookups_total{map=\"hash:/etc/sorter/user_map\"}", "2");
	ASSERT_VALUE(t, "sorter_map_errors_total{map=\"hash:/etc/sorter/user_map\"}", "1");
	ASSERT_VALUE(t, "sorter_map_lookup_duration_seconds_bucket{map=\"hash:/etc/sorter/user_map\","
		     "le=\"5e-05\"}", "2");
	ASSERT_VALUE(t, "sorter_milter_results_total{milter=\"dkim\",result=\"accept\"}", "1");
	ASSERT_VALUE(t, "sorter_milter_results_total{milter=\"dkim\",result=\"error\"}", "1");
	ASSERT_VALUE(t, "sorter_milter_results_total{milter=\"\",result=\"timeout\"}", "1");
	ASSERT_VALUE(t, "sorter_tls_handshakes_total{side=\"server\",version=\"TLSv1.3\"}", "1");
	ASSERT_VALUE(t, "sorter_tls_handshake_failures_total{side=\"client\",version=\"other\"}", "1");
	ASSERT_VALUE(t, "sorter_smtpd_auth_total{mechanism=\"PLAIN\",result=\"success\"}", "1");
	ASSERT_VALUE(t, "sorter_smtpd_auth_total{mechanism=\"other\",result=\"failure\"}", "1");
	free(t);
	metrics_attach(NULL, 0);
	free(m);
}
END_TEST

START_TEST(test_label_escaping)
{
	struct metrics *m = metrics_create_private(two, 1);
	char *t;

	metrics_delivery(MTR_LMTP, "a\"b\\c\nd\xff", MDR_DELIVERED, 1);
	t = render(m, NULL);
	ASSERT_VALUE(t, "sorter_deliveries_total{transport=\"lmtp\",node=\"a\\\"b\\\\c\\nd?\","
		     "result=\"delivered\"}", "1");
	free(t);
	metrics_attach(NULL, 0);
	free(m);
}
END_TEST

START_TEST(test_names_overflow)
{
	struct metrics *m = metrics_create_private(two, 1);
	char name[32], *t;
	int i;

	for (i = 0; i < METRICS_NAMES + 10; i++) {
		snprintf(name, sizeof(name), "node-%d", i);
		metrics_delivery(MTR_LMTP, name, MDR_DELIVERED, 1);
	}
	t = render(m, NULL);
	ASSERT_VALUE(t, "sorter_deliveries_total{transport=\"lmtp\",node=\"node-0\",result=\"delivered\"}",
		     "1");
	snprintf(name, sizeof(name), "node-%d", METRICS_NAMES - 2);
	ck_assert_ptr_nonnull(strstr(t, name));
	snprintf(name, sizeof(name), "\"node-%d\"", METRICS_NAMES - 1);
	ck_assert_ptr_null(strstr(t, name));
	ASSERT_VALUE(t, "sorter_deliveries_total{transport=\"lmtp\",node=\"_other\",result=\"delivered\"}",
		     "11");
	free(t);
	metrics_attach(NULL, 0);
	free(m);
}
END_TEST

START_TEST(test_queue_and_detached)
{
	struct metrics *m = metrics_create_private(two, 1);
	struct metrics_queue q;
	char *t;

	memset(&q, 0, sizeof(q));
	q.valid = true;
	q.messages[2] = 3;
	q.bytes[2] = 4096;
	q.oldest_age = 12.5;
	metrics_attach(NULL, 0);
	metrics_session_open(0);        /* not attached: nothing counted */
	t = render(m, &q);
	ASSERT_VALUE(t, "sorter_queue_messages{state=\"deferred\"}", "3");
	ASSERT_VALUE(t, "sorter_queue_bytes{state=\"deferred\"}", "4096");
	ASSERT_VALUE(t, "sorter_queue_oldest_message_age_seconds", "12.5");
	ASSERT_VALUE(t, "sorter_smtpd_sessions_total{listener=\"127.0.0.1:25\",role=\"mx\"}", "0");
	/* each family: HELP then TYPE, once */
	ck_assert_ptr_nonnull(strstr(t, "# HELP sorter_queue_messages "));
	ck_assert_ptr_nonnull(strstr(t, "# TYPE sorter_queue_messages gauge\n"));
	ck_assert_ptr_null(strstr(strstr(t, "# TYPE sorter_queue_messages gauge\n") + 1,
				  "# TYPE sorter_queue_messages gauge\n"));
	free(t);
	free(m);
}
END_TEST

static Suite *
metrics_suite(void)
{
	Suite *s = suite_create("metrics");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_sessions_and_messages);
	tcase_add_test(tc, test_histogram);
	tcase_add_test(tc, test_deliveries_maps_milters);
	tcase_add_test(tc, test_label_escaping);
	tcase_add_test(tc, test_names_overflow);
	tcase_add_test(tc, test_queue_and_detached);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(metrics_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
