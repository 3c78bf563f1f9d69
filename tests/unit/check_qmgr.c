/*
 * check_qmgr.c - unit tests for the queue manager's end of an attempt
 * (queue/outcome.c) against sorterctl's requests (qmgr_control): a hold
 * or a delete must be carried out whether it comes before the results are
 * recorded or while they are being written on an I/O thread.
 *
 * The fixture is a queue manager without a network: a real spool in a
 * temp dir, a real event loop and a one-thread I/O pool (so that a marker
 * job queued behind the recording tells when it has run, while its
 * completion waits for the loop), and a message whose one recipient was
 * deferred. Each case then says when the request arrives.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "router/router.h"
#include "queue/qmgr.h"

#define RCPT "bob@example.test"

struct fixture {
	char tmp[64], spool[128];
	struct config *cf;
	struct counters ctr;
	struct qmgr q;
	char id[QID_LEN + 1];
};

static void
rm_rf(const char *path)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
	ck_assert_int_eq(system(cmd), 0);
}

static void
write_queue_file(struct fixture *f)
{
	static const char content[] = "Subject: t\r\n\r\nbody\r\n";
	const char *rcpts[] = { RCPT };
	struct spool_envelope env = {
		.id = f->id, .arrival_usec = now_usec(), .client = "127.0.0.1", .helo = "c.test",
		.proto = "ESMTP", .sender = "a@remote.test", .rcpts = rcpts, .nrcpt = 1,
	};
	unsigned char end[SPOOL_REC_HDR];
	char path[256];
	struct dstr d;
	int fd;

	dstr_init(&d, 0);
	spool_encode_head(&env, sizeof(content) - 1, &d);
	dstr_append(&d, content, sizeof(content) - 1);
	spool_encode_end(end);
	dstr_append(&d, end, sizeof(end));
	snprintf(path, sizeof(path), "%s/active/%s", f->spool, f->id);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write_all(fd, d.s, d.len), 0);
	close(fd);
	dstr_free(&d);
}

static void
setup(struct fixture *f)
{
	char text[512], err[256], path[256];
	struct qmgr *q = &f->q;

	memset(f, 0, sizeof(*f));
	snprintf(f->tmp, sizeof(f->tmp), "/tmp/check_qmgr.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(f->tmp));
	snprintf(f->spool, sizeof(f->spool), "%s/spool", f->tmp);
	ck_assert_int_eq(spool_prepare(f->spool), 0);
	/* no delay DSN: the attempt ends straight in the recording */
	snprintf(text, sizeof(text), "hostname = mx.example.test\nspool_dir = %s\n"
		 "local_domains = example.test\ndelay_warning_time = 0\n", f->spool);
	f->cf = config_parse("test.conf", text, strlen(text), err, sizeof(err));
	ck_assert_msg(f->cf != NULL, "%s", err);
	q->cf = f->cf;
	q->ctr = &f->ctr;
	q->base = event_base_new();
	ck_assert_ptr_nonnull(q->base);
	q->io = iopool_create(q->base, 1);
	ck_assert_int_eq(queue_open_dirs(f->spool, q->dirfd), 0);
	snprintf(path, sizeof(path), "%s/active", f->spool);
	q->active_ds = groupsync_open_dir(path);
	snprintf(path, sizeof(path), "%s/defer", f->spool);
	q->defer_ds = groupsync_open_dir(path);
	q->wake_fd = -1;
	qid_init(5, 0);
	qid_next(f->id);
	write_queue_file(f);
}

static void
teardown(struct fixture *f)
{
	struct qmgr *q = &f->q;

	iopool_destroy(q->io);
	groupsync_close(q->active_ds);
	groupsync_close(q->defer_ds);
	queue_close_dirs(q->dirfd);
	event_base_free(q->base);
	config_free(f->cf);
	rm_rf(f->tmp);
}

/* The message in memory as msg_load() leaves it, its one recipient
 * already tried and deferred by the transport. */
static struct qmsg *
deferred_message(struct fixture *f)
{
	struct qmgr *q = &f->q;
	struct spool_file sf;
	struct qmsg *mq;
	char path[256], err[256];
	struct qexp *e;

	snprintf(path, sizeof(path), "%s/active/%s", f->spool, f->id);
	ck_assert_msg(spool_load(path, NULL, &sf, err, sizeof(err)) == 0, "%s", err);
	mq = xcalloc(1, sizeof(*mq));
	mq->q = q;
	snprintf(mq->id, sizeof(mq->id), "%s", f->id);
	mq->fd = sf.fd;
	mq->len = sf.m.file_size;
	mq->m = sf.m;
	free(sf.head);
	qstatus_init(&mq->st);
	mq->r = xcalloc(1, sizeof(*mq->r));
	mq->nr = 1;
	mq->r[0].index = 0;
	mq->r[0].nexps = 1;
	mq->r[0].exps = e = xcalloc(1, sizeof(*e));
	snprintf(e->addr, sizeof(e->addr), "%s", RCPT);
	snprintf(e->status, sizeof(e->status), "4.3.0");
	snprintf(e->diag, sizeof(e->diag), "451 4.3.0 try again later");
	e->out = OUT_DEFERRED;
	mq->next = q->msgs;
	q->msgs = mq;
	q->nactive++;
	return mq;
}

static void
post(void *arg)
{
	sem_post(arg);
}

/* Returns once every job queued so far has run on the (one) I/O thread;
 * their completions still wait for the loop. */
static void
io_drained(struct qmgr *q)
{
	sem_t sem;

	ck_assert_int_eq(sem_init(&sem, 0, 0), 0);
	iopool_run(q->io, post, NULL, &sem);
	while (sem_wait(&sem) < 0 && errno == EINTR)
		;
	sem_destroy(&sem);
}

/* Runs the loop until the message has left memory. */
static void
run_until_done(struct qmgr *q)
{
	int n;

	for (n = 0; q->nactive > 0 && n < 100; n++)
		event_base_loop(q->base, EVLOOP_ONCE);
	ck_assert_int_eq(q->nactive, 0);
	ck_assert_ptr_null(q->msgs);
}

static bool
in(const struct fixture *f, const char *dir)
{
	char path[256];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s/%s", f->spool, dir, f->id);
	return stat(path, &st) == 0;
}

static int
control(struct fixture *f, enum queue_op op)
{
	struct dstr out;
	int rc;

	dstr_init(&out, 0);
	rc = qmgr_control(&f->q, op, f->id, &out, NULL);
	dstr_free(&out);
	return rc;
}

/* nobody asks: the message waits in deferred/ with its status */
START_TEST(test_no_request)
{
	struct fixture f;

	setup(&f);
	msg_finish(deferred_message(&f));
	run_until_done(&f.q);
	ck_assert(in(&f, "deferred"));
	ck_assert(in(&f, "defer"));
	ck_assert(!in(&f, "active") && !in(&f, "hold"));
	teardown(&f);
}
END_TEST

/* asked during the delivery: the recording does it */
START_TEST(test_hold_before)
{
	struct fixture f;

	setup(&f);
	(void)deferred_message(&f);
	ck_assert_int_eq(control(&f, QOP_HOLD), 0);
	msg_finish(f.q.msgs);
	run_until_done(&f.q);
	ck_assert(in(&f, "hold"));
	ck_assert(in(&f, "defer"));
	ck_assert(!in(&f, "deferred") && !in(&f, "active"));
	teardown(&f);
}
END_TEST

START_TEST(test_delete_before)
{
	struct fixture f;

	setup(&f);
	(void)deferred_message(&f);
	ck_assert_int_eq(control(&f, QOP_DELETE), 0);
	msg_finish(f.q.msgs);
	run_until_done(&f.q);
	ck_assert(!in(&f, "active") && !in(&f, "deferred") && !in(&f, "hold"));
	ck_assert(!in(&f, "defer"));
	teardown(&f);
}
END_TEST

/* asked after the recording was decided and written, before the loop has
 * heard of it: the request must still be carried out */
START_TEST(test_hold_while_writing)
{
	struct fixture f;

	setup(&f);
	msg_finish(deferred_message(&f));
	io_drained(&f.q);
	ck_assert(in(&f, "deferred"));          /* the recording has run */
	ck_assert_int_eq(control(&f, QOP_HOLD), 0);
	run_until_done(&f.q);
	ck_assert_msg(in(&f, "hold"), "a hold answered while the result was written was lost");
	ck_assert(in(&f, "defer"));             /* the status goes with it */
	ck_assert(!in(&f, "deferred") && !in(&f, "active"));
	teardown(&f);
}
END_TEST

START_TEST(test_delete_while_writing)
{
	struct fixture f;

	setup(&f);
	msg_finish(deferred_message(&f));
	io_drained(&f.q);
	ck_assert_int_eq(control(&f, QOP_DELETE), 0);
	run_until_done(&f.q);
	ck_assert_msg(!in(&f, "deferred"), "a delete answered while the result was written was lost");
	ck_assert(!in(&f, "active") && !in(&f, "hold") && !in(&f, "defer"));
	teardown(&f);
}
END_TEST

/* hold, then delete, both while writing: the delete wins */
START_TEST(test_hold_then_delete_while_writing)
{
	struct fixture f;

	setup(&f);
	msg_finish(deferred_message(&f));
	io_drained(&f.q);
	ck_assert_int_eq(control(&f, QOP_HOLD), 0);
	ck_assert_int_eq(control(&f, QOP_DELETE), 0);
	run_until_done(&f.q);
	ck_assert(!in(&f, "active") && !in(&f, "deferred") && !in(&f, "hold"));
	teardown(&f);
}
END_TEST

/* a delete after a hold that was already carried out by the follow-up */
START_TEST(test_delete_after_late_hold)
{
	struct fixture f;

	setup(&f);
	msg_finish(deferred_message(&f));
	io_drained(&f.q);
	ck_assert_int_eq(control(&f, QOP_HOLD), 0);
	event_base_loop(f.q.base, EVLOOP_ONCE);  /* the first job's completion: a follow-up */
	io_drained(&f.q);
	ck_assert(in(&f, "hold"));
	ck_assert_int_eq(f.q.nactive, 1);       /* still in memory, so still steered here */
	ck_assert_int_eq(control(&f, QOP_DELETE), 0);
	run_until_done(&f.q);
	ck_assert(!in(&f, "active") && !in(&f, "deferred") && !in(&f, "hold"));
	ck_assert(!in(&f, "defer"));
	teardown(&f);
}
END_TEST

/* a release of a message in memory is refused, and changes nothing: its
 * file may be on its way to hold/, and a release from there would load a
 * second copy */
START_TEST(test_release_while_in_memory)
{
	struct fixture f;

	setup(&f);
	(void)deferred_message(&f);
	ck_assert_int_eq(control(&f, QOP_HOLD), 0);
	msg_finish(f.q.msgs);
	io_drained(&f.q);
	ck_assert(in(&f, "hold"));
	ck_assert_int_eq(control(&f, QOP_RELEASE), -1);
	ck_assert(in(&f, "hold"));
	run_until_done(&f.q);
	ck_assert(in(&f, "hold"));
	f.q.stopping = true;                    /* no router here: take nothing in */
	ck_assert_int_eq(control(&f, QOP_RELEASE), 0);  /* now it is nobody's */
	ck_assert(in(&f, "incoming") || in(&f, "active"));
	teardown(&f);
}
END_TEST

static Suite *
qmgr_suite(void)
{
	Suite *s = suite_create("qmgr");
	TCase *tc = tcase_create("requests");

	tcase_add_test(tc, test_no_request);
	tcase_add_test(tc, test_hold_before);
	tcase_add_test(tc, test_delete_before);
	tcase_add_test(tc, test_hold_while_writing);
	tcase_add_test(tc, test_delete_while_writing);
	tcase_add_test(tc, test_hold_then_delete_while_writing);
	tcase_add_test(tc, test_delete_after_late_hold);
	tcase_add_test(tc, test_release_while_in_memory);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(qmgr_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
