/*
 * sessiontable.c - who is connected, across all smtpd workers.
 *
 * The master maps one anonymous shared region before forking; each worker
 * records its sessions in its own slice, and counts everybody's when a
 * client connects, under a robust process-shared mutex (a worker that dies
 * holding it does not wedge the others). When a worker dies the master
 * clears its slice, so the counts never leak.
 *
 * The same region counts AUTH failures per client address for a while, so
 * that a password guesser is slowed down across sessions and workers alike.
 */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

struct slot {
	unsigned char addr[16];
	int used;
};

/* AUTH failures of one client address; forgotten AUTHFAIL_MEMORY seconds
 * after the last one */
#define AUTHFAIL_SLOTS 4096
#define AUTHFAIL_PROBE 8
#define AUTHFAIL_MEMORY 3600
struct authfail {
	unsigned char key[16];
	unsigned count;
	time_t last;
};

struct session_table {
	pthread_mutex_t lock;
	struct authfail authfail[AUTHFAIL_SLOTS];
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

void
client_addr_key(const struct sockaddr *sa, unsigned char key[16])
{
	memset(key, 0, 16);
	if (sa->sa_family == AF_INET) {
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
	}
}

/* IPv6 clients are counted by /64: one host owns at least that much */
static void
authfail_key(const unsigned char addr[16], unsigned char key[16])
{
	static const unsigned char v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	memcpy(key, addr, 16);
	if (memcmp(addr, v4mapped, sizeof(v4mapped)) != 0)
		memset(key + 8, 0, 8);
}

/* The entry for key, or where it would go (an expired or the oldest slot
 * of its probe window). Called with the lock held. */
static struct authfail *
authfail_slot(struct session_table *t, const unsigned char key[16], time_t now, bool *found)
{
	struct authfail *e, *spare = NULL;
	uint32_t h = 2166136261u;
	int i;

	for (i = 0; i < 16; i++)
		h = (h ^ key[i]) * 16777619u;
	for (i = 0; i < AUTHFAIL_PROBE; i++) {
		e = &t->authfail[(h + (uint32_t)i) % AUTHFAIL_SLOTS];
		if (e->count > 0 && now - e->last > AUTHFAIL_MEMORY)
			e->count = 0;
		if (e->count > 0 && memcmp(e->key, key, 16) == 0) {
			*found = true;
			return e;
		}
		if (spare == NULL || (spare->count > 0 && (e->count == 0 || e->last < spare->last)))
			spare = e;
	}
	*found = false;
	return spare;
}

unsigned
session_table_auth_failures(struct session_table *t, const unsigned char addr[16], time_t now)
{
	unsigned char key[16];
	struct authfail *e;
	bool found;
	unsigned n;

	authfail_key(addr, key);
	lock(t);
	e = authfail_slot(t, key, now, &found);
	n = found ? e->count : 0;
	pthread_mutex_unlock(&t->lock);
	return n;
}

unsigned
session_table_auth_failed(struct session_table *t, const unsigned char addr[16], time_t now)
{
	unsigned char key[16];
	struct authfail *e;
	bool found;
	unsigned n;

	authfail_key(addr, key);
	lock(t);
	e = authfail_slot(t, key, now, &found);
	if (!found) {
		memcpy(e->key, key, 16);
		e->count = 0;
	}
	if (e->count < 1000000)
		e->count++;
	e->last = now;
	n = e->count;
	pthread_mutex_unlock(&t->lock);
	return n;
}
