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

/* What the table remembers of a client (an IPv4 address, an IPv6 /64)
 * between its sessions: AUTH failures, for CLIENT_MEMORY seconds after the
 * last one, and connections in the current minute. */
#define CLIENT_SLOTS 4096
#define CLIENT_PROBE 8
#define CLIENT_MEMORY 3600
#define RATE_WINDOW 60
struct client {
	unsigned char key[16];
	bool used;
	unsigned auth_failures;
	time_t auth_last;
	unsigned conns;                /* connections since conn_window began */
	time_t conn_window;
};

struct session_table {
	pthread_mutex_t lock;
	struct client clients[CLIENT_SLOTS];
	int nworkers;
	int per_worker;
	int total;                     /* sessions, and places reserved */
	int high[64];                  /* per worker: slots ever used, to bound scans */
	int reserved[64];              /* per worker: places held for a client being accepted */
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

static void client_key(const unsigned char addr[16], unsigned char key[16]);
static struct client *client_find(struct session_table *t, const unsigned char addr[16],
				  time_t now, bool create);

static void
lock(struct session_table *t)
{
	if (pthread_mutex_lock(&t->lock) == EOWNERDEAD)
		pthread_mutex_consistent(&t->lock);
}

int
session_table_enter(struct session_table *t, int w, const unsigned char addr[16],
		    int max_total, int max_per_client, int rate_per_minute, time_t now)
{
	struct slot *mine = t->slots + (size_t)w * (size_t)t->per_worker;
	unsigned char key[16], other[16];
	struct client *c;
	int i, k, same = 0, free_slot = -1;

	client_key(addr, key);
	lock(t);
	if (t->reserved[w] > 0) {       /* the place held for this client */
		t->reserved[w]--;
		t->total--;
	}
	if (t->total >= max_total) {
		pthread_mutex_unlock(&t->lock);
		return -1;
	}
	if (max_per_client > 0) {
		for (k = 0; k < t->nworkers; k++) {
			struct slot *s = t->slots + (size_t)k * (size_t)t->per_worker;

			for (i = 0; i < t->high[k]; i++) {
				if (!s[i].used)
					continue;
				client_key(s[i].addr, other);
				if (memcmp(other, key, 16) == 0)
					same++;
			}
		}
		if (same >= max_per_client) {
			pthread_mutex_unlock(&t->lock);
			return -2;
		}
	}
	if (rate_per_minute > 0) {
		c = client_find(t, addr, now, true);
		if (now - c->conn_window >= RATE_WINDOW) {
			c->conn_window = now;
			c->conns = 0;
		}
		if (c->conns >= (unsigned)rate_per_minute) {
			pthread_mutex_unlock(&t->lock);
			return -3;
		}
		c->conns++;
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

bool
session_table_reserve(struct session_table *t, int w, int max_total)
{
	bool ok;

	lock(t);
	if ((ok = t->total < max_total)) {
		t->total++;
		t->reserved[w]++;
	}
	pthread_mutex_unlock(&t->lock);
	return ok;
}

void
session_table_unreserve(struct session_table *t, int w)
{
	lock(t);
	if (t->reserved[w] > 0) {
		t->reserved[w]--;
		t->total--;
	}
	pthread_mutex_unlock(&t->lock);
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
	t->total -= t->reserved[w];
	t->reserved[w] = 0;
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
client_key(const unsigned char addr[16], unsigned char key[16])
{
	static const unsigned char v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	memcpy(key, addr, 16);
	if (memcmp(addr, v4mapped, sizeof(v4mapped)) != 0)
		memset(key + 8, 0, 8);
}

static bool
client_stale(const struct client *c, time_t now)
{
	return (c->auth_failures == 0 || now - c->auth_last > CLIENT_MEMORY) &&
	       now - c->conn_window >= RATE_WINDOW;
}

/* The entry for key, created when `create` (in a free or stale slot of its
 * probe window, else the least recently seen one), or NULL. Called with the
 * lock held. */
static struct client *
client_find(struct session_table *t, const unsigned char addr[16], time_t now, bool create)
{
	unsigned char key[16];
	struct client *e, *spare = NULL;
	uint32_t h = 2166136261u;
	int i;

	client_key(addr, key);
	for (i = 0; i < 16; i++)
		h = (h ^ key[i]) * 16777619u;
	for (i = 0; i < CLIENT_PROBE; i++) {
		e = &t->clients[(h + (uint32_t)i) % CLIENT_SLOTS];
		if (e->used && client_stale(e, now))
			e->used = false;
		if (e->used && memcmp(e->key, key, 16) == 0)
			break;
		if (spare == NULL || (spare->used && (!e->used ||
		    (e->auth_last > e->conn_window ? e->auth_last : e->conn_window) <
		    (spare->auth_last > spare->conn_window ? spare->auth_last : spare->conn_window))))
			spare = e;
		e = NULL;
	}
	if (e != NULL || !create)
		return e;
	memset(spare, 0, sizeof(*spare));
	memcpy(spare->key, key, 16);
	spare->used = true;
	return spare;
}

unsigned
session_table_auth_failures(struct session_table *t, const unsigned char addr[16], time_t now)
{
	struct client *c;
	unsigned n;

	lock(t);
	c = client_find(t, addr, now, false);
	n = c != NULL && now - c->auth_last <= CLIENT_MEMORY ? c->auth_failures : 0;
	pthread_mutex_unlock(&t->lock);
	return n;
}

unsigned
session_table_auth_failed(struct session_table *t, const unsigned char addr[16], time_t now)
{
	struct client *c;
	unsigned n;

	lock(t);
	c = client_find(t, addr, now, true);
	if (now - c->auth_last > CLIENT_MEMORY)
		c->auth_failures = 0;
	if (c->auth_failures < 1000000)
		c->auth_failures++;
	c->auth_last = now;
	n = c->auth_failures;
	pthread_mutex_unlock(&t->lock);
	return n;
}
