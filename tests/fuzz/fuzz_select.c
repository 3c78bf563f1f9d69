/*
 * fuzz_select.c - libFuzzer target for the queue selection codec
 * (queue/select.c, qselect_decode): whatever a client of the control
 * socket sends after "--select" is decoded or refused, never read out of
 * bounds, never leaked; what is accepted encodes to text that decodes to
 * the same selection, and that encoding is a fixed point. The match runs
 * on the result against a small message too. Built by tests/fuzz/run.sh.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "router/router.h"

/*
 * select.c asks the router for its scan (the spool reader is among
 * run.sh's pure sources); the codec and the match are pure, so the file is
 * compiled in here and the router stubbed (nothing here scans).
 */
#include "queue/select.c"

size_t
router_resolve(struct router *r, const char *address, struct route_list *out,
	       struct route_trace **trace)
{
	(void)r; (void)address; (void)out; (void)trace;
	abort();
}

void
route_list_free(struct route_list *l)
{
	(void)l;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

static const char *
one_node(void *arg, const char *rcpt, size_t i)
{
	(void)arg; (void)rcpt;
	return i == 0 ? "node-a" : NULL;
}

static bool
same_str(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct spool_rcpt rcpts[] = {
		{ (char *)"alice@example.test", NULL, RCPT_PENDING, 0 },
		{ (char *)"bob@remote.test", NULL, RCPT_DONE, 0 },
	};
	struct qselect s, back, third;
	struct spool_msg m;
	struct dstr a, b;
	char err[256];

	if (qselect_decode((const char *)data, size, &s, err, sizeof(err)) < 0) {
		CHECK(err[0] != '\0');
		return 0;
	}
	dstr_init(&a, 0);
	qselect_encode(&s, &a);
	CHECK(a.s != NULL && strchr(a.s, ' ') == NULL && strchr(a.s, '\n') == NULL);
	CHECK(qselect_decode(a.s, a.len, &back, err, sizeof(err)) == 0);
	CHECK(same_str(s.sender, back.sender) && same_str(s.rcpt, back.rcpt) &&
	      same_str(s.node, back.node) && same_str(s.domain, back.domain));
	CHECK(s.older_than == back.older_than && s.younger_than == back.younger_than &&
	      s.states == back.states);
	dstr_init(&b, 0);
	qselect_encode(&back, &b);
	CHECK(a.len == b.len && memcmp(a.s, b.s, a.len) == 0);
	CHECK(qselect_decode(b.s, b.len, &third, err, sizeof(err)) == 0);

	memset(&m, 0, sizeof(m));
	m.sender = (char *)"carol@remote.test";
	m.rcpts = rcpts;
	m.nrcpt = 2;
	m.arrival_usec = 1700000000ULL * 1000000ULL;
	(void)qselect_match(&s, QSEL_DEFERRED, &m, m.arrival_usec + 3600000000ULL, one_node, NULL);

	dstr_free(&a);
	dstr_free(&b);
	qselect_free(&s);
	qselect_free(&back);
	qselect_free(&third);
	return 0;
}
