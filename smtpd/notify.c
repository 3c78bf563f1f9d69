/*
 * notify.c - tells systemd how the daemon is doing (Type=notify): READY=1
 * once the listeners are bound and the children run, RELOADING=1 and
 * READY=1 around a reload, STOPPING=1 when it drains.
 *
 * The datagram protocol systemd documents for $NOTIFY_SOCKET (a path, or
 * "@name" in the abstract namespace), without libsystemd: one sendto(2)
 * that never waits. Only the master calls it; it must never fail the
 * daemon when nobody listens.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

void
sd_notify_state(const char *fmt, ...)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun;
	socklen_t len;
	char msg[256];
	va_list ap;
	int fd, n;

	if (path == NULL || (path[0] != '/' && path[0] != '@') ||
	    strlen(path) >= sizeof(sun.sun_path))
		return;
	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(msg))
		return;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, strlen(path));
	if (path[0] == '@')
		sun.sun_path[0] = '\0';         /* the abstract namespace */
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
	if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
		return;
	/* best effort: systemd may be gone, the unit may not want it */
	(void)sendto(fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&sun, len);
	close(fd);
}
