/*
 * master.c - the sorterd master process.
 *
 * Binds the listeners and loads TLS keys while it may still be root, drops
 * to the unprivileged user, prepares the spool, then forks and supervises
 * the children: a crashed worker is restarted; SIGHUP reloads the config
 * (a new generation of workers starts on the same listeners while the old
 * one finishes its sessions); SIGTERM drains everything and exits.
 *
 * The master runs no event loop: it waits for signals synchronously, so no
 * event-library state is shared with the children it forks. It never
 * touches a client connection.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "smtpd/smtpd.h"

#define NSLOTS (2 * CONFIG_WORKERS_MAX)  /* two generations during a reload */
_Static_assert(NSLOTS <= QID_SLOT_QMGR, "a worker's process slot is its queue id slot");
#define RESTART_DELAY_SECONDS 1

struct child {
	pid_t pid;
	int generation;
	time_t started;
	bool want;              /* restart this slot when it exits */
};

struct master {
	const char *config_path;
	struct config *cf;
	struct listener *ls;
	size_t nls;
	SSL_CTX *tls;
	struct session_table *st;
	struct counters *ctr;
	struct child slots[NSLOTS];
	struct child qmgr;              /* the queue manager */
	int generation;
	bool stopping;
	sigset_t oldmask;
};

static int
bind_one(struct listener *l)
{
	struct addrinfo hints, *res;
	int fd, on = 1, rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
	rc = getaddrinfo(l->spec.host, l->spec.port, &hints, &res);
	if (rc != 0)
		msg_fatal("listen %s:%s: %s", l->spec.host, l->spec.port, gai_strerror(rc));
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		msg_fatal("socket: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
	if (res->ai_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0)
		msg_fatal("bind %s:%s: %s", l->spec.host, l->spec.port, strerror(errno));
	if (listen(fd, 1024) < 0)
		msg_fatal("listen %s:%s: %s", l->spec.host, l->spec.port, strerror(errno));
	freeaddrinfo(res);
	return fd;
}

static void
drop_privileges(struct master *m)
{
	struct passwd *pw;

	if (geteuid() != 0)
		return;
	pw = getpwnam(m->cf->user);
	if (pw == NULL)
		msg_fatal("user %s: no such user (create it, or set 'user' in %s)", m->cf->user,
			  m->config_path);
	if (mkdir_p(m->cf->spool_dir, 0700) < 0)
		msg_fatal("create %s: %s", m->cf->spool_dir, strerror(errno));
	if (chown(m->cf->spool_dir, pw->pw_uid, pw->pw_gid) < 0)
		msg_fatal("chown %s: %s", m->cf->spool_dir, strerror(errno));
	if (pw->pw_uid == 0)
		return;
	if (setgroups(0, NULL) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0)
		msg_fatal("cannot drop privileges to %s: %s", m->cf->user, strerror(errno));
}

/* Unacknowledged leftovers in tmp/ go; torn files in incoming/ are moved
 * aside so that nothing half-written is ever delivered. */
static void
spool_startup_check(const char *spool_dir)
{
	static const char *const dirs[] = { "tmp", "incoming" };
	char path[4096];
	struct spool_file f;
	struct dirent *de;
	DIR *d;
	size_t i;

	for (i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", spool_dir, dirs[i]);
		if ((d = opendir(path)) == NULL)
			msg_fatal("open %s: %s", path, strerror(errno));
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s/%s", spool_dir, dirs[i], de->d_name);
			if (i == 0) {
				if (unlink(path) == 0)
					msg_info("removed unacknowledged file %s", path);
				continue;
			}
			if (spool_take(spool_dir, path, NULL, &f) == 0)
				spool_file_free(&f);
		}
		closedir(d);
	}
}

static void
start_slot(struct master *m, int i)
{
	pid_t pid = fork();

	if (pid < 0) {
		msg_warn("fork: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		int rc;

		sigprocmask(SIG_SETMASK, &m->oldmask, NULL);
		log_set_progname("sorterd/smtpd");
		rc = worker_main(m->cf, m->ls, m->nls, m->st, m->ctr, i, m->tls);
		_exit(rc);
	}
	m->slots[i].pid = pid;
	m->slots[i].generation = m->generation;
	m->slots[i].started = time(NULL);
	m->slots[i].want = true;
}

static void
start_qmgr(struct master *m)
{
	pid_t pid = fork();
	size_t i;

	if (pid < 0) {
		msg_warn("fork: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		sigprocmask(SIG_SETMASK, &m->oldmask, NULL);
		log_set_progname("sorterd/qmgr");
		for (i = 0; i < m->nls; i++)
			close(m->ls[i].fd);
		_exit(qmgr_main(m->cf, m->ctr));
	}
	m->qmgr.pid = pid;
	m->qmgr.started = time(NULL);
	m->qmgr.want = true;
}

static void
start_generation(struct master *m)
{
	int i, started = 0;

	for (i = 0; i < NSLOTS && started < m->cf->workers; i++) {
		if (m->slots[i].pid != 0)
			continue;
		start_slot(m, i);
		started++;
	}
	if (started < m->cf->workers)
		msg_warn("only %d of %d workers started: process slots busy with draining workers",
			 started, m->cf->workers);
}

static void
reap(struct master *m)
{
	int status, i;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pid == m->qmgr.pid) {
			m->qmgr.pid = 0;
			if (WIFSIGNALED(status))
				msg_warn("qmgr pid %ld killed by signal %d", (long)pid, WTERMSIG(status));
			else if (WEXITSTATUS(status) != 0)
				msg_warn("qmgr pid %ld exited with status %d", (long)pid, WEXITSTATUS(status));
			continue;
		}
		for (i = 0; i < NSLOTS; i++)
			if (m->slots[i].pid == pid)
				break;
		if (i == NSLOTS)
			continue;
		session_table_clear(m->st, i);
		m->slots[i].pid = 0;
		if (WIFSIGNALED(status))
			msg_warn("worker pid %ld killed by signal %d", (long)pid, WTERMSIG(status));
		else if (WEXITSTATUS(status) != 0)
			msg_warn("worker pid %ld exited with status %d", (long)pid, WEXITSTATUS(status));
		if (m->stopping || !m->slots[i].want || m->slots[i].generation != m->generation)
			m->slots[i].want = false;
	}
}

/* Restarts crashed workers, at most once per RESTART_DELAY_SECONDS per slot. */
static void
restart_crashed(struct master *m)
{
	time_t now = time(NULL);
	int i;

	if (!m->stopping && m->qmgr.pid == 0 && m->qmgr.want &&
	    now - m->qmgr.started >= RESTART_DELAY_SECONDS) {
		msg_info("restarting the queue manager");
		start_qmgr(m);
	}
	for (i = 0; i < NSLOTS; i++) {
		if (m->stopping || m->slots[i].pid != 0 || !m->slots[i].want)
			continue;
		if (now - m->slots[i].started < RESTART_DELAY_SECONDS)
			continue;
		msg_info("restarting worker in slot %d", i);
		start_slot(m, i);
	}
}

static void
signal_children(struct master *m, int sig, bool old_only)
{
	int i;

	for (i = 0; i < NSLOTS; i++) {
		if (m->slots[i].pid == 0)
			continue;
		if (old_only && m->slots[i].generation == m->generation)
			continue;
		kill(m->slots[i].pid, sig);
	}
}

static void
reload(struct master *m)
{
	char err[512];
	struct config *ncf;
	SSL_CTX *ntls = NULL;
	int i;

	ncf = config_load(m->config_path, err, sizeof(err));
	if (ncf == NULL) {
		msg_warn("reload failed, keeping the running configuration: %s", err);
		return;
	}
	if (ncf->tls_cert_file && ncf->tls_key_file) {
		ntls = tls_server_ctx(ncf, err, sizeof(err));
		if (ntls == NULL) {
			msg_warn("reload failed, keeping the running configuration: %s", err);
			config_free(ncf);
			return;
		}
	}
	if (ncf->nlisten != m->cf->nlisten)
		msg_warn("reload: listener changes take effect after a restart");
	/* the listeners stay those bound at start */
	for (i = 0; i < NSLOTS; i++)
		m->slots[i].want = false;
	config_free(m->cf);
	m->cf = ncf;
	if (m->tls)
		SSL_CTX_free(m->tls);
	m->tls = ntls;
	m->generation++;
	signal_children(m, SIGUSR2, true);
	start_generation(m);
	/* the new queue manager waits for the old one's lock, then takes over */
	if (m->qmgr.pid)
		kill(m->qmgr.pid, SIGTERM);
	start_qmgr(m);
	msg_info("reloaded %s", m->config_path);
}

static bool
any_child(const struct master *m)
{
	int i;

	for (i = 0; i < NSLOTS; i++)
		if (m->slots[i].pid != 0)
			return true;
	return m->qmgr.pid != 0;
}

int
master_main(const char *config_path, struct config *cf)
{
	struct master m;
	struct timespec tick = { 1, 0 };
	siginfo_t si;
	sigset_t set;
	char err[512];
	size_t i;
	int sig;

	memset(&m, 0, sizeof(m));
	m.config_path = config_path;
	m.cf = cf;
	log_open("sorterd", cf->log);

	m.nls = cf->nlisten;
	m.ls = xcalloc(m.nls, sizeof(*m.ls));
	for (i = 0; i < m.nls; i++) {
		m.ls[i].spec = cf->listen[i];
		m.ls[i].spec.host = xstrdup(cf->listen[i].host);
		m.ls[i].spec.port = xstrdup(cf->listen[i].port);
		m.ls[i].fd = bind_one(&m.ls[i]);
	}
	if (cf->tls_cert_file && cf->tls_key_file) {
		m.tls = tls_server_ctx(cf, err, sizeof(err));
		if (m.tls == NULL)
			msg_fatal("%s", err);
	}
	drop_privileges(&m);
	if (spool_prepare(cf->spool_dir) < 0)
		msg_fatal("prepare spool %s: %s", cf->spool_dir, strerror(errno));
	spool_startup_check(cf->spool_dir);
	m.st = session_table_create(NSLOTS, cf->smtpd_max_sessions);
	m.ctr = counters_create();

	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, &m.oldmask);
	signal(SIGPIPE, SIG_IGN);

	msg_info("starting: %zu listener(s), %d worker(s), spool %s", m.nls, cf->workers,
		 cf->spool_dir);
	start_qmgr(&m);
	start_generation(&m);
	for (;;) {
		sig = sigtimedwait(&set, &si, &tick);
		if (sig == SIGCHLD) {
			reap(&m);
		} else if (sig == SIGTERM || sig == SIGINT) {
			if (!m.stopping)
				msg_info("stopping: draining sessions");
			m.stopping = true;
			signal_children(&m, SIGTERM, false);
			if (m.qmgr.pid)
				kill(m.qmgr.pid, SIGTERM);
		} else if (sig == SIGHUP && !m.stopping) {
			reload(&m);
		}
		reap(&m);
		if (m.stopping && !any_child(&m))
			break;
		restart_crashed(&m);
	}
	msg_info("stopped");
	for (i = 0; i < m.nls; i++) {
		close(m.ls[i].fd);
		free(m.ls[i].spec.host);
		free(m.ls[i].spec.port);
	}
	free(m.ls);
	if (m.tls)
		SSL_CTX_free(m.tls);
	config_free(m.cf);
	return 0;
}
