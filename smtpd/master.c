/*
 * master.c - the sorterd master process.
 *
 * Binds the listeners and loads TLS keys, locks and checks the spool, then
 * listens, forks and supervises the children: a crashed worker is
 * restarted; SIGHUP reloads the config and the keys (a new generation of
 * workers starts on the same listeners with the new SSL_CTX while the old
 * one finishes its sessions); SIGTERM drains everything and exits.
 *
 * Started as root, the master stays root so that a reload can read keys
 * only root may read; every child (workers, qmgr, the spool check at start)
 * drops to `user` right after fork, before it reads a byte from the network
 * or the spool. So the master must never parse network input or spool
 * files, and never create a file in the spool: it runs no event loop, waits
 * for signals synchronously (no event-library state is shared with the
 * children it forks) and never touches a client connection.
 *
 * The children watch the master through a pipe whose only write end the
 * master holds: when it dies, even by kill -9, they read EOF, let go of the
 * listeners and exit, so that a new sorterd can bind at once.
 *
 * Two more children when the config asks: the metrics process (serves
 * metrics_listen, bound here like the listeners) and the log writer of
 * `log = FILE` (the master opens the file, so that a reload can open it
 * again after logrotate moved it; the writer only appends). systemd hears
 * READY=1, RELOADING=1 and STOPPING=1 (notify.c).
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "lib/lib.h"
#include "lib/metrics.h"
#include "queue/queue.h"
#include "smtpd/smtpd.h"

#define NSLOTS (2 * CONFIG_WORKERS_MAX)  /* two generations during a reload */
_Static_assert(NSLOTS <= QID_SLOT_QMGR, "a worker's process slot is its queue id slot");
#define RESTART_DELAY_SECONDS 1
#define FD_LIMIT_CEILING ((rlim_t)1 << 20)
#define LOG_SOCKET_BUFFER (1 << 20)     /* what a stalled log file may hold back */
#define LOGGER_STOP_SECONDS 5

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
	bool drop;                      /* children switch to uid/gid */
	uid_t uid;
	gid_t gid;
	int watch[2];                   /* the children's read end, our write end */
	int spool_lock;                 /* the spool directory, flock'd (lock_spool) */
	struct metrics *metrics;        /* the shared counters; NULL without metrics_listen */
	int metrics_fd;                 /* the bound metrics_listen socket, or -1 */
	struct child metricsd;          /* the process that serves it */
	int logsock[2];                 /* log = FILE: [0] every process sends, [1] the writer reads */
	int logfile_fd;                 /* the file, opened here for the writer; or -1 */
	struct child logger;            /* the log writer */
};

/* The uid and gid the children run as: those of `user` when started as
 * root, else whoever we are. Returns -1 with err set when user is unknown. */
static int
resolve_user(struct master *m, const struct config *cf, char *err, size_t errlen)
{
	struct passwd *pw;

	m->drop = false;
	if (geteuid() != 0)
		return 0;
	errno = 0;
	pw = getpwnam(cf->user);
	if (pw == NULL) {
		snprintf(err, errlen, "user %s: %s (create it, or set 'user' in %s)", cf->user,
			 errno ? strerror(errno) : "no such user", m->config_path);
		return -1;
	}
	m->uid = pw->pw_uid;
	m->gid = pw->pw_gid;
	m->drop = pw->pw_uid != 0;
	return 0;
}

/* In a child right after fork: let go of the master's end of the pipe (or
 * the master's death would go unnoticed) and of root, for good. */
static void
child_setup(const struct master *m, const char *progname, int slab)
{
	sigprocmask(SIG_SETMASK, &m->oldmask, NULL);
	log_set_progname(progname);
	close(m->watch[1]);
	if (m->spool_lock >= 0)
		close(m->spool_lock);
	metrics_attach(m->metrics, slab);
	/* what only one kind of child needs: kept by that one below */
	if (m->metrics_fd >= 0 && slab != METRICS_SLAB_HTTP)
		close(m->metrics_fd);
	if (m->logsock[1] >= 0 && slab != METRICS_SLAB_LOG)
		close(m->logsock[1]);
	if (m->logfile_fd >= 0 && slab != METRICS_SLAB_LOG)
		close(m->logfile_fd);
	if (!m->drop)
		return;
	if (setgroups(0, NULL) < 0 || setgid(m->gid) < 0 || setuid(m->uid) < 0)
		msg_fatal("cannot drop privileges to %s: %s", m->cf->user, strerror(errno));
	if (setuid(0) == 0 || geteuid() == 0)
		msg_fatal("dropped to %s but could become root again", m->cf->user);
}

static int
bind_addr(const char *host, const char *port)
{
	struct addrinfo hints, *res;
	int fd, on = 1, rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0)
		msg_fatal("listen %s:%s: %s", host, port, gai_strerror(rc));
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		msg_fatal("socket: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
	if (res->ai_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0)
		msg_fatal("bind %s:%s: %s", host, port, strerror(errno));
	freeaddrinfo(res);
	return fd;
}

static void
listen_on(int fd, const char *host, const char *port)
{
	if (listen(fd, 1024) < 0)
		msg_fatal("listen %s:%s: %s", host, port, strerror(errno));
}

/* The spool directory itself is made here (by a master started as root,
 * where its parent may be root's, and then given to `user`); everything
 * inside it is made by children running as `user`. */
static void
own_spool(struct master *m)
{
	if (mkdir_p(m->cf->spool_dir, 0700) < 0)
		msg_fatal("create %s: %s", m->cf->spool_dir, strerror(errno));
	if (!m->drop)
		return;
	if (chown(m->cf->spool_dir, m->uid, m->gid) < 0)
		msg_fatal("chown %s: %s", m->cf->spool_dir, strerror(errno));
}

/* What a crash left: files being written in tmp/ are removed
 * (recycle_recover_tmp), committed messages whose link into incoming/ was
 * lost are linked (slots_recover), and slots/ is trimmed; then torn files
 * in incoming/ are moved aside so that nothing half-written is ever
 * delivered. Runs in a child as `user`: it parses what clients sent. */
static void
spool_startup_check(const char *spool_dir)
{
	char path[4096];
	struct spool_file f;
	struct dirent *de;
	DIR *d;

	if (recycle_recover_tmp(spool_dir, true) < 0)
		msg_fatal("recover %s/tmp: %s", spool_dir, strerror(errno));
	if (journal_recover(spool_dir) < 0)
		msg_fatal("recover %s/journal: %s", spool_dir, strerror(errno));
	if (slots_recover(spool_dir, true) < 0)
		msg_fatal("recover %s/slots: %s", spool_dir, strerror(errno));
	snprintf(path, sizeof(path), "%s/incoming", spool_dir);
	if ((d = opendir(path)) == NULL)
		msg_fatal("open %s: %s", path, strerror(errno));
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/incoming/%s", spool_dir, de->d_name);
		if (spool_take(spool_dir, path, NULL, &f) == 0)
			spool_file_free(&f);
	}
	closedir(d);
}

/* One sorterd per spool: the master holds an flock on the spool directory
 * for as long as it runs (its children do not: a master killed with -9
 * lets go of it at once, as of its listeners). A second master on the
 * same spool, whatever its listeners, stops here, before its start-up
 * check could move another's files. */
static void
lock_spool(struct master *m)
{
	m->spool_lock = open(m->cf->spool_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (m->spool_lock < 0)
		msg_fatal("open %s: %s", m->cf->spool_dir, strerror(errno));
	if (flock(m->spool_lock, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			msg_fatal("the spool %s is in use by another sorterd", m->cf->spool_dir);
		msg_fatal("lock %s: %s", m->cf->spool_dir, strerror(errno));
	}
}

/* Prepares the spool as `user` before any worker or qmgr runs. */
static void
prepare_spool(struct master *m)
{
	int status;
	pid_t pid;

	own_spool(m);
	lock_spool(m);
	pid = fork();
	if (pid < 0)
		msg_fatal("fork: %s", strerror(errno));
	if (pid == 0) {
		child_setup(m, "sorterd/spool", METRICS_SLAB_MASTER);
		if (spool_prepare(m->cf->spool_dir) < 0)
			msg_fatal("prepare spool %s: %s", m->cf->spool_dir, strerror(errno));
		spool_startup_check(m->cf->spool_dir);
		_exit(0);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			msg_fatal("waitpid: %s", strerror(errno));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		msg_fatal("the spool %s could not be prepared (see above)", m->cf->spool_dir);
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

		child_setup(m, "sorterd/smtpd", i);
		rc = worker_main(m->cf, m->ls, m->nls, m->st, m->ctr, i, m->tls, m->watch[0]);
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
		for (i = 0; i < m->nls; i++)
			close(m->ls[i].fd);
		child_setup(m, "sorterd/qmgr", METRICS_SLAB_QMGR);
		_exit(qmgr_main(m->cf, m->ctr, m->watch[0]));
	}
	m->qmgr.pid = pid;
	m->qmgr.started = time(NULL);
	m->qmgr.want = true;
}

static void
start_metricsd(struct master *m)
{
	pid_t pid;
	size_t i;

	if (m->metrics_fd < 0)
		return;
	if ((pid = fork()) < 0) {
		msg_warn("fork: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		for (i = 0; i < m->nls; i++)
			close(m->ls[i].fd);
		child_setup(m, "sorterd/metrics", METRICS_SLAB_HTTP);
		_exit(metrics_http_main(m->cf, m->metrics, m->metrics_fd, m->watch[0]));
	}
	m->metricsd.pid = pid;
	m->metricsd.started = time(NULL);
	m->metricsd.want = true;
}

/* log = FILE: opened here, as whoever started sorterd, never through a
 * symbolic link (the folder may be the unprivileged user's) */
static int
open_log_file(const char *path)
{
	return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW, 0640);
}

static void
start_logger(struct master *m)
{
	pid_t pid;
	size_t i;

	if (m->logfile_fd < 0)
		return;
	if ((pid = fork()) < 0) {
		msg_warn("fork: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		for (i = 0; i < m->nls; i++)
			close(m->ls[i].fd);
		child_setup(m, "sorterd/log", METRICS_SLAB_LOG);
		_exit(logwriter_main(m->logsock[1], m->logfile_fd, m->watch[0]));
	}
	m->logger.pid = pid;
	m->logger.started = time(NULL);
	m->logger.want = true;
}

/* SIGHUP with log = FILE: the file again (logrotate moved it away) and a
 * writer for it; the old writer empties the socket and goes */
static void
reopen_log(struct master *m, const struct config *ncf)
{
	pid_t old = m->logger.pid;
	int fd;

	if (m->logfile_fd < 0)
		return;
	if (ncf->log != LOG_SINK_FILE) {
		msg_warn("reload: a change of 'log' takes effect after a restart");
		return;
	}
	if ((fd = open_log_file(ncf->log_file)) < 0) {
		msg_warn("reload: cannot open the log file %s: %s; still writing the old one",
			 ncf->log_file, strerror(errno));
		return;
	}
	close(m->logfile_fd);
	m->logfile_fd = fd;
	m->logger.pid = 0;
	start_logger(m);
	if (old > 0)
		kill(old, SIGTERM);
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
		if (pid == m->metricsd.pid || pid == m->logger.pid) {
			struct child *c = pid == m->logger.pid ? &m->logger : &m->metricsd;

			c->pid = 0;
			if (WIFSIGNALED(status) && WTERMSIG(status) != SIGTERM)
				msg_warn("%s pid %ld killed by signal %d", c == &m->logger ? "log writer" :
					 "metrics process", (long)pid, WTERMSIG(status));
			else if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
				msg_warn("%s pid %ld exited with status %d", c == &m->logger ? "log writer" :
					 "metrics process", (long)pid, WEXITSTATUS(status));
			continue;
		}
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
		metrics_slab_gone(m->metrics, i);
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
	if (!m->stopping && m->metricsd.pid == 0 && m->metricsd.want &&
	    now - m->metricsd.started >= RESTART_DELAY_SECONDS) {
		msg_info("restarting the metrics process");
		start_metricsd(m);
	}
	if (m->logger.pid == 0 && m->logger.want &&
	    now - m->logger.started >= RESTART_DELAY_SECONDS) {
		msg_info("restarting the log writer");
		start_logger(m);
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
	reopen_log(m, ncf);
	if ((ncf->metrics_listen.host == NULL) != (m->cf->metrics_listen.host == NULL) ||
	    (ncf->metrics_listen.host != NULL &&
	     (strcmp(ncf->metrics_listen.host, m->cf->metrics_listen.host) != 0 ||
	      strcmp(ncf->metrics_listen.port, m->cf->metrics_listen.port) != 0)))
		msg_warn("reload: a change of metrics_listen takes effect after a restart");
	if (strcmp(ncf->user, m->cf->user) != 0)
		msg_warn("reload: a change of 'user' takes effect after a restart");
	if (fd_limit_check(ncf, false, err, sizeof(err)) < 0)
		msg_warn("reload: %s", err);
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

/* Any child but the log writer, which goes last to write the others' last words */
static bool
any_child(const struct master *m)
{
	int i;

	for (i = 0; i < NSLOTS; i++)
		if (m->slots[i].pid != 0)
			return true;
	return m->qmgr.pid != 0 || m->metricsd.pid != 0;
}

static void
stop_logger(struct master *m)
{
	struct timespec pause = { 0, 20 * 1000 * 1000 };
	int status, i;

	m->logger.want = false;
	if (m->logger.pid == 0)
		return;
	kill(m->logger.pid, SIGTERM);
	for (i = 0; i < LOGGER_STOP_SECONDS * 50; i++) {
		if (waitpid(m->logger.pid, &status, WNOHANG) != 0)
			return;
		nanosleep(&pause, NULL);
	}
	kill(m->logger.pid, SIGKILL);
	waitpid(m->logger.pid, &status, 0);
}

/* log = FILE: the socket every process logs into and the file; before
 * the first line is written */
static void
setup_log(struct master *m, const struct config *cf)
{
	int size = LOG_SOCKET_BUFFER;

	m->logsock[0] = m->logsock[1] = m->logfile_fd = -1;
	log_set_syslog(config_syslog_facility(cf), cf->syslog_socket);
	if (cf->log != LOG_SINK_FILE)
		return;
	if ((m->logfile_fd = open_log_file(cf->log_file)) < 0)
		msg_fatal("open the log file %s: %s", cf->log_file, strerror(errno));
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, m->logsock) < 0)
		msg_fatal("socketpair: %s", strerror(errno));
	/* the senders never wait: a full socket drops the line (log.c) */
	if (fcntl(m->logsock[0], F_SETFL, O_NONBLOCK) < 0)
		msg_fatal("fcntl: %s", strerror(errno));
	if (setsockopt(m->logsock[0], SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) < 0)
		(void)setsockopt(m->logsock[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
	log_set_fd(m->logsock[0]);
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
	sigprocmask(SIG_SETMASK, NULL, &m.oldmask);     /* what children restore */
	m.config_path = config_path;
	m.cf = cf;
	m.metrics_fd = -1;
	m.spool_lock = -1;
	setup_log(&m, cf);
	log_open("sorterd", cf->log);
	if (resolve_user(&m, cf, err, sizeof(err)) < 0)
		msg_fatal("%s", err);
	/* a config that does not fit still runs: accepts pause while
	 * descriptors run out (worker.c), and `sorterd -t` says so */
	if (fd_limit_check(cf, true, err, sizeof(err)) < 0)
		msg_warn("%s", err);
	if (pipe2(m.watch, O_CLOEXEC | O_NONBLOCK) < 0)
		msg_fatal("pipe: %s", strerror(errno));

	m.nls = cf->nlisten;
	m.ls = xcalloc(m.nls, sizeof(*m.ls));
	for (i = 0; i < m.nls; i++) {
		m.ls[i].spec = cf->listen[i];
		m.ls[i].spec.host = xstrdup(cf->listen[i].host);
		m.ls[i].spec.port = xstrdup(cf->listen[i].port);
		m.ls[i].spec.milters = NULL;    /* workers take it from their config */
		m.ls[i].fd = bind_addr(m.ls[i].spec.host, m.ls[i].spec.port);
	}
	if (cf->metrics_listen.host != NULL) {
		m.metrics_fd = bind_addr(cf->metrics_listen.host, cf->metrics_listen.port);
		m.metrics = metrics_create(cf);
		metrics_attach(m.metrics, METRICS_SLAB_MASTER);
	}
	if (cf->tls_cert_file && cf->tls_key_file) {
		m.tls = tls_server_ctx(cf, err, sizeof(err));
		if (m.tls == NULL)
			msg_fatal("%s", err);
	}
	prepare_spool(&m);
	/* bound above, so that a port in use stops us before the spool is
	 * touched; listening only now, with the spool ready: until then a
	 * client (or a balancer's health check) is refused, not left waiting
	 * in the backlog of a sorterd that is still checking its spool */
	for (i = 0; i < m.nls; i++)
		listen_on(m.ls[i].fd, m.ls[i].spec.host, m.ls[i].spec.port);
	if (m.metrics_fd >= 0)
		listen_on(m.metrics_fd, cf->metrics_listen.host, cf->metrics_listen.port);
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
	start_logger(&m);
	start_qmgr(&m);
	start_generation(&m);
	start_metricsd(&m);
	sd_notify_state("READY=1\nMAINPID=%ld\nSTATUS=accepting mail", (long)getpid());
	for (;;) {
		sig = sigtimedwait(&set, &si, &tick);
		if (sig == SIGCHLD) {
			reap(&m);
		} else if (sig == SIGTERM || sig == SIGINT) {
			if (!m.stopping) {
				msg_info("stopping: draining sessions");
				sd_notify_state("STOPPING=1\nSTATUS=draining sessions");
			}
			m.stopping = true;
			signal_children(&m, SIGTERM, false);
			if (m.qmgr.pid)
				kill(m.qmgr.pid, SIGTERM);
			if (m.metricsd.pid)
				kill(m.metricsd.pid, SIGTERM);
		} else if (sig == SIGHUP && !m.stopping) {
			struct timespec now;

			clock_gettime(CLOCK_MONOTONIC, &now);
			sd_notify_state("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
					(unsigned long long)now.tv_sec * 1000000ULL +
					(unsigned long long)now.tv_nsec / 1000ULL);
			reload(&m);
			sd_notify_state("READY=1\nSTATUS=accepting mail");
		}
		reap(&m);
		if (m.stopping && !any_child(&m))
			break;
		restart_crashed(&m);
	}
	msg_info("stopped");
	stop_logger(&m);
	for (i = 0; i < m.nls; i++) {
		close(m.ls[i].fd);
		free(m.ls[i].spec.host);
		free(m.ls[i].spec.port);
	}
	free(m.ls);
	if (m.tls)
		SSL_CTX_free(m.tls);
	config_free(m.cf);
	close(m.watch[0]);
	close(m.watch[1]);
	if (m.metrics_fd >= 0)
		close(m.metrics_fd);
	if (m.logfile_fd >= 0) {
		close(m.logfile_fd);
		log_open("sorterd", LOG_SINK_STDERR);   /* nobody reads the socket any more */
		close(m.logsock[0]);
		close(m.logsock[1]);
	}
	return 0;
}

/* Descriptors a worker may need for smtpd_max_sessions (config_fd_need,
 * and its pool of slots: RECYCLE_FDS) against RLIMIT_NOFILE: the hard limit
 * (what a start could raise the soft one to) when checking, the soft one
 * after raising it when starting. */
int
fd_limit_check(const struct config *cf, bool raise, char *err, size_t errlen)
{
	long long need = config_fd_need(cf) + RECYCLE_FDS;
	struct rlimit rl;
	rlim_t have;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
		snprintf(err, errlen, "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
		return -1;
	}
	if (raise && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < rl.rlim_max) {
		struct rlimit want = rl;

		/* the whole hard limit (the queue manager's connections are not
		 * in `need`), but no absurd table size for a huge one */
		want.rlim_cur = rl.rlim_max;
		if (want.rlim_cur == RLIM_INFINITY || want.rlim_cur > FD_LIMIT_CEILING)
			want.rlim_cur = (rlim_t)need > FD_LIMIT_CEILING ? (rlim_t)need : FD_LIMIT_CEILING;
		if (rl.rlim_max != RLIM_INFINITY && want.rlim_cur > rl.rlim_max)
			want.rlim_cur = rl.rlim_max;
		if (want.rlim_cur > rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &want) == 0)
			rl = want;
	}
	have = raise ? rl.rlim_cur : rl.rlim_max;
	if (have != RLIM_INFINITY && (long long)have < need) {
		snprintf(err, errlen, "smtpd_max_sessions = %d needs about %lld open files per smtpd "
			 "worker, more than the %s limit of %llu (RLIMIT_NOFILE): lower "
			 "smtpd_max_sessions or raise the limit (ulimit -n, LimitNOFILE=)",
			 cf->smtpd_max_sessions, need, raise ? "process's" : "hard",
			 (unsigned long long)have);
		return -1;
	}
	return 0;
}
