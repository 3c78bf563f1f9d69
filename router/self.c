/*
 * self.c - our own listeners, for the mail loop check (RFC 5321 5.1): an
 * MX host reached at one of them is ourselves. The delivery client skips
 * such hosts (client.c); `sorterctl route` marks them (explain.c). One
 * check for both, so that route shows what delivery does.
 *
 * A listener's address and port are ours; a wildcard listener (0.0.0.0,
 * ::) stands for every address of this host at its port: loopback, and
 * the interface addresses. Those are read when the set is made, and again
 * when an address is not among them and they were read SELF_REREAD_SECONDS
 * ago or more: an address added to the host is known as ours within that
 * time, without a restart (a Postfix smtp process reads them at its
 * start, and lives a few minutes at most).
 */
#include "config.h"

#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "lib/lib.h"
#include "router/router.h"

static unsigned short
addr_port(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET ? ntohs(((const struct sockaddr_in *)ss)->sin_port) :
	       ss->ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)ss)->sin6_port) : 0;
}

/* 0.0.0.0 or :: */
static bool
addr_any(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
	return ss->ss_family == AF_INET6 &&
	       IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

/* An address this host answers on: loopback, or one of its interfaces' */
static bool
addr_local(const struct self_addrs *sa, const struct sockaddr_storage *ss)
{
	size_t i;

	if (ss->ss_family == AF_INET &&
	    (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127)
		return true;
	if (ss->ss_family == AF_INET6 &&
	    IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr))
		return true;
	for (i = 0; i < sa->nlocal; i++)
		if (dns_addr_cmp(&sa->local[i], ss) == 0)
			return true;
	return false;
}

static time_t
now_monotonic(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

/* This host's interface addresses, as they are now */
static void
read_local(struct self_addrs *sa)
{
	struct ifaddrs *ifa, *i;
	size_t k;

	free(sa->local);
	sa->local = NULL;
	sa->nlocal = 0;
	sa->read_at = now_monotonic();
	if (getifaddrs(&ifa) < 0)
		return;
	for (k = 0, i = ifa; i != NULL; i = i->ifa_next)
		k++;
	sa->local = xcalloc(k + 1, sizeof(*sa->local));
	for (i = ifa; i != NULL; i = i->ifa_next)
		if (i->ifa_addr != NULL && (i->ifa_addr->sa_family == AF_INET ||
					    i->ifa_addr->sa_family == AF_INET6))
			memcpy(&sa->local[sa->nlocal++], i->ifa_addr,
			       dns_addr_len((const struct sockaddr_storage *)i->ifa_addr));
	freeifaddrs(ifa);
}

void
self_addrs_init(struct self_addrs *sa, const struct listen_spec *ls, size_t n)
{
	size_t k;

	memset(sa, 0, sizeof(*sa));
	sa->listen = xcalloc(n + 1, sizeof(*sa->listen));
	for (k = 0; k < n; k++)
		if (dns_addr_numeric(ls[k].host, (unsigned short)atoi(ls[k].port),
				     &sa->listen[sa->nlisten]) == 0)
			sa->nlisten++;
	read_local(sa);
}

/* A wildcard listener on :: takes IPv4 too (not IPV6_V6ONLY). */
bool
self_addrs_has(struct self_addrs *sa, const struct sockaddr_storage *ss)
{
	size_t i;

	for (i = 0; i < sa->nlisten; i++) {
		const struct sockaddr_storage *l = &sa->listen[i];

		if (addr_port(l) != addr_port(ss))
			continue;
		if (dns_addr_cmp(l, ss) == 0)
			return true;
		if (!addr_any(l) || (l->ss_family != ss->ss_family && l->ss_family != AF_INET6))
			continue;
		if (addr_local(sa, ss))
			return true;
		if (now_monotonic() - sa->read_at >= SELF_REREAD_SECONDS) {
			read_local(sa);
			if (addr_local(sa, ss))
				return true;
		}
	}
	return false;
}

void
self_addrs_free(struct self_addrs *sa)
{
	free(sa->listen);
	free(sa->local);
	memset(sa, 0, sizeof(*sa));
}
