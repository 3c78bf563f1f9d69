/*
 * sessiontable.c - who is connected, across all smtpd workers.
 *
 * The master maps one anonymous shared region before forking; each worker
 * records its sessions in its own slice, and counts everybody's when a
 * client connects, under a robust process-shared mutex (a worker that dies
 * holding it does not wedge the others). When a worker dies the master
 * clears its slice, so the counts never leak.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

struct slot {
	unsigned char addr[16];
	int used;
};

struct session_table {
	pthread_mutex_t lock;
	int nworkers;
	int per_worker;
	int total;
	int high[64];                  /* per worker: slots ever used, to bound scans */
	struct slot slots[];
};

struct session_table *
session_table_create(int nworkers, int max_sessions)
{
	struct session_table *t;
	pthread_mutexattr_t a;
	size_t size;

	if (nworkers < 1 || nworkers > 64)
		msg_panic("session_table_create: %d workers", nworkers);
	size = sizeof(*t) + (size_t)nworkers * (size_t)max_sessions * sizeof(struct slot);
	t = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (t == MAP_FAILED)
		msg_fatal("mmap session table (%zu bytes): %s", size, strerror(errno));
	pthread_mutexattr_init(&a);
	pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&t->lock, &a);
	pthread_mutexattr_destroy(&a);
	t->nworkers = nworkers;
	t->per_worker = max_sessions;
	return t;
}

static void
lock(struct session_table *t)
{
	if (pthread_mutex_lock(&t->lock) == EOWNERDEAD)
		pthread_mutex_consistent(&t->lock);
}

int
session_table_enter(struct session_table *t, int w, const unsigned char addr[16],
		    int max_total, int max_per_client)
{
	struct slot *mine = t->slots + (size_t)w * (size_t)t->per_worker;
	int i, k, same = 0, free_slot = -1;

	lock(t);
	if (t->total >= max_total) {
		pthread_mutex_unlock(&t->lock);
		return -1;
	}
	for (k = 0; k < t->nworkers; k++) {
		struct slot *s = t->slots + (size_t)k * (size_t)t->per_worker;

		for (i = 0; i < t->high[k]; i++)
			if (s[i].used && memcmp(s[i].addr, addr, 16) == 0)
				same++;
	}
	if (same >= max_per_client) {
		pthread_mutex_unlock(&t->lock);
		return -2;
	}
	for (i = 0; i < t->per_worker; i++)
		if (!mine[i].used) {
			free_slot = i;
			break;
		}
	if (free_slot < 0) {
		pthread_mutex_unlock(&t->lock);
		return -1;
	}
	memcpy(mine[free_slot].addr, addr, 16);
	mine[free_slot].used = 1;
	if (free_slot >= t->high[w])
		t->high[w] = free_slot + 1;
	t->total++;
	pthread_mutex_unlock(&t->lock);
	return free_slot;
}

void
session_table_leave(struct session_table *t, int w, int slot)
{
	struct slot *mine = t->slots + (size_t)w * (size_t)t->per_worker;

	if (slot < 0 || slot >= t->per_worker)
		return;
	lock(t);
	if (mine[slot].used) {
		mine[slot].used = 0;
		t->total--;
	}
	while (t->high[w] > 0 && !mine[t->high[w] - 1].used)
		t->high[w]--;
	pthread_mutex_unlock(&t->lock);
}

void
session_table_clear(struct session_table *t, int w)
{
	struct slot *mine = t->slots + (size_t)w * (size_t)t->per_worker;
	int i;

	lock(t);
	for (i = 0; i < t->per_worker; i++)
		if (mine[i].used) {
			mine[i].used = 0;
			t->total--;
		}
	t->high[w] = 0;
	pthread_mutex_unlock(&t->lock);
}
