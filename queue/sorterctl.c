/*
 * sorterctl.c - the administrator's view of the queue: `sorterctl queue`
 * lists the spool (or what selectors pick out of it, or a summary by
 * state, node and domain: summary.c) and `sorterctl show ID` prints one
 * message. `sorterctl passwd` makes a password hash for auth_map.
 * `sorterctl import DIR` takes over a dead peer's spool (import.c).
 *
 * Both read the spool directly, so they work while sorterd is down. This
 * program must never change the spool: not a byte, not a file name. A file
 * it cannot parse is reported as corrupt and the listing goes on; moving
 * files aside is the daemon's business. (delete, hold, release and flush
 * ask the running queue manager, or with the daemon down act on the spool
 * under its lock; import only adds new queue files, as a worker does, and
 * moves the files of the spool it takes over.)
 *
 * Run as root, it first becomes the spool's owner: it then creates no file
 * root would own, and a symbolic link planted in the spool (by whoever the
 * spool's owner is, say a compromised worker) reaches nothing that only
 * root may read or change. It never creates the lock and opens nothing in
 * the spool through a symbolic link either.
 *
 * Exit codes: 0 ok, 1 runtime error (the message names the file and the
 * errno text), 2 usage.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "lib/lib.h"
#include "queue/queue.h"
#include "router/router.h"
#include "smtpd/auth.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define DEFAULT_CONFIG SYSCONFDIR "/sorter/sorter.conf"

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

/* how long a queue manager that holds the lock may take to answer */
#define CONTROL_WAIT_MS 10000

/* Spool folders that hold queued messages, in pipeline order, and the
 * state each one means to an administrator. */
static const struct {
	const char *dir;
	const char *state;
} state_dirs[] = {
	{ "incoming", "active" },
	{ "active", "active" },
	{ "deferred", "deferred" },
	{ "hold", "hold" },
};
#define NSTATE_DIRS (sizeof(state_dirs) / sizeof(state_dirs[0]))

static const char *const rcpt_state_names[] = {
	[RCPT_PENDING] = "pending",
	[RCPT_DONE] = "delivered",
	[RCPT_BOUNCED] = "bounced",
	[RCPT_DELETED] = "deleted",
};

static void
usage(void)
{
	fprintf(stderr,
		"usage: sorterctl [-c FILE] queue [--json] [--summary] [SELECTOR...]\n"
		"       sorterctl [-c FILE] show ID [--raw]\n"
		"       sorterctl [-c FILE] delete ID... | --all | SELECTOR...\n"
		"       sorterctl [-c FILE] hold ID... | SELECTOR...\n"
		"       sorterctl [-c FILE] release ID... | SELECTOR...\n"
		"       sorterctl [-c FILE] flush [ID... | SELECTOR...]\n"
		"       sorterctl [-c FILE] stats\n"
		"       sorterctl [-c FILE] route ADDRESS [--json]\n"
		"       sorterctl [-c FILE] import DIR\n"
		"       sorterctl [-c FILE] nodes [--json]\n"
		"       sorterctl [-c FILE] drain NODE | undrain NODE\n"
		"       sorterctl passwd\n"
		"selectors: --sender GLOB --rcpt GLOB --node NODE --domain GLOB\n"
		"           --older-than AGE --younger-than AGE --state active,deferred,hold\n");
	exit(EXIT_USAGE);
}

/* ---- reading queue files ---- */

/* Finds id in the state folders and loads it (spool_load, the daemon's own
 * reader). Returns the folder index with f filled in (*reason empty), or
 * with the file corrupt (*reason says why, f empty); -1 when it is in
 * none of them; -2 on an I/O error (errno set, path holds the file name). */
static int
find_message(const char *spool_dir, const char *id, struct spool_file *f,
	     char *reason, size_t reasonlen, char *path, size_t pathlen)
{
	size_t i;
	int rc;

	for (i = 0; i < NSTATE_DIRS; i++) {
		snprintf(path, pathlen, "%s/%s/%s", spool_dir, state_dirs[i].dir, id);
		rc = spool_load(path, NULL, f, reason, reasonlen);
		if (rc == 0)
			reason[0] = '\0';
		if (rc == 0 || rc == -1) {
			if (rc == -1 && reason[0] == '\0')
				snprintf(reason, reasonlen, "unparseable");
			return (int)i;
		}
		if (errno != ENOENT)
			return -2;
	}
	return -1;
}

/* ---- output helpers ---- */

/* Text from the network, as it may reach the administrator's terminal:
 * control characters (C1 included), and bytes that are not UTF-8, become
 * '?'; tabs and line ends stay. */
static void
put_safe(const char *p, size_t n)
{
	char buf[65536];
	size_t seg, k;

	while (n > 0) {
		for (seg = 0; seg < n && p[seg] != '\t' && p[seg] != '\r' && p[seg] != '\n'; seg++)
			;
		for (k = 0; k < seg; k += sizeof(buf)) {
			size_t m = seg - k < sizeof(buf) ? seg - k : sizeof(buf);

			memcpy(buf, p + k, m);
			(void)utf8_sanitize(buf, m);
			fwrite(buf, 1, m, stdout);
		}
		p += seg;
		n -= seg;
		if (n > 0) {
			putchar(*p);
			p++;
			n--;
		}
	}
}

/* Writes a message's content from its file, in pieces; safe: through
 * put_safe, cut at line ends so that no character is split. Returns 0, or
 * -1 with errno when the file cannot be read, or -2 when what was read
 * does not match the file's check record (the message was delivered and
 * its file written over by a new one while it was shown, or the file is
 * damaged). */
static int
show_content(const struct spool_file *f, bool safe)
{
	static char buf[65536];
	size_t off = 0, keep = 0, n, cut;
	uint32_t crc = 0;
	const char *nl;

	while (off < f->m.content_len) {
		n = sizeof(buf) - keep;
		if (n > f->m.content_len - off)
			n = f->m.content_len - off;
		if (spool_content_read(f->fd, &f->m, off, buf + keep, n) < 0)
			return -1;
		crc = crc32c(crc, buf + keep, n);
		off += n;
		n += keep;
		if (!safe) {
			fwrite(buf, 1, n, stdout);
			keep = 0;
			continue;
		}
		cut = n;
		if (off < f->m.content_len && (nl = memrchr(buf, '\n', n)) != NULL)
			cut = (size_t)(nl - buf) + 1;
		put_safe(buf, cut);
		keep = n - cut;
		memmove(buf, buf + cut, keep);
	}
	if (keep > 0)
		put_safe(buf, keep);
	return f->m.has_check && crc != f->m.check_content ? -2 : 0;
}

/* Envelope fields come from the network: no control character of theirs,
 * a tab or line end included, reaches the administrator's terminal. */
static void
put_text(const char *s)
{
	char buf[4096];
	size_t n = strlen(s), i;

	if (n >= sizeof(buf))
		n = sizeof(buf) - 1;
	memcpy(buf, s, n);
	for (i = 0; i < n; i++)
		if (buf[i] == '\t' || buf[i] == '\r' || buf[i] == '\n')
			buf[i] = '?';
	put_safe(buf, n);
}

static void
format_local(uint64_t usec, const char *fmt, char *buf, size_t buflen)
{
	time_t t = (time_t)(usec / 1000000u);
	struct tm tm;

	if (localtime_r(&t, &tm) == NULL || strftime(buf, buflen, fmt, &tm) == 0)
		snprintf(buf, buflen, "?");
}

static void
format_utc(uint64_t usec, char *buf, size_t buflen)
{
	time_t t = (time_t)(usec / 1000000u);
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL ||
	    strftime(buf, buflen, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, buflen, "?");
}

/* A JSON string. Bytes that are not UTF-8 become U+FFFD so that the
 * output is always valid JSON, whatever a client put in its envelope. */
static void
put_json_str(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t n = strlen(str), k;
	uint32_t cp;

	putchar('"');
	while (n > 0) {
		if (*s == '"' || *s == '\\') {
			printf("\\%c", *s);
			k = 1;
		} else if (*s < 0x20 || *s == 0x7f) {
			printf("\\u%04x", *s);
			k = 1;
		} else if ((k = utf8_decode((const char *)s, n, &cp)) == 0) {
			fputs("\\ufffd", stdout);
			k = 1;
		} else if (utf8_is_control(cp)) {
			printf("\\u%04x", (unsigned)cp);
		} else {
			fwrite(s, 1, k, stdout);
		}
		s += k;
		n -= k;
	}
	putchar('"');
}

/* ---- sorterctl queue ---- */

struct entry {
	char id[QID_LEN + 1];
	size_t dir;                /* index into state_dirs */
};

static int
entry_cmp(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	int c = strcmp(x->id, y->id);

	if (c != 0)
		return c;
	return x->dir < y->dir ? -1 : x->dir > y->dir;
}

/* Collects the queue ids in every state folder, sorted by id (which is
 * arrival order). Returns -1 with a message on stderr when a folder cannot
 * be read. */
static int
collect(const char *spool_dir, struct entry **out, size_t *nout)
{
	struct entry *v = NULL;
	size_t n = 0, cap = 0, i, j;
	struct dirent *de;
	char path[4096];
	DIR *d;
	int fd;

	for (i = 0; i < NSTATE_DIRS; i++) {
		snprintf(path, sizeof(path), "%s/%s", spool_dir, state_dirs[i].dir);
		fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0 || (d = fdopendir(fd)) == NULL) {
			fprintf(stderr, "sorterctl: open %s: %s\n", path, strerror(errno));
			if (fd >= 0)
				close(fd);
			free(v);
			return -1;
		}
		while ((de = readdir(d)) != NULL) {
			if (!qid_valid(de->d_name))
				continue;      /* ".", "..", anything not a queue file */
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				v = xrealloc(v, cap * sizeof(*v));
			}
			memcpy(v[n].id, de->d_name, QID_LEN + 1);
			v[n].dir = i;
			n++;
		}
		closedir(d);
	}
	if (n > 0)
		qsort(v, n, sizeof(*v), entry_cmp);
	/* A message moved between two folders while they were read shows up
	 * twice: list it once. */
	for (i = j = 0; i < n; i++)
		if (j == 0 || strcmp(v[j - 1].id, v[i].id) != 0)
			v[j++] = v[i];
	*out = v;
	*nout = j;
	return 0;
}

struct listed {
	const char *state;
	struct spool_msg msg;
	char reason[256];          /* set when corrupt */
	char last_error[512];      /* from defer/ID; "" when none */
	time_t next_retry;         /* deferred: the file's mtime; else 0 */
};

/* The last error and next retry of a deferred message (status.c). */
static void
load_status(const char *spool_dir, const char *id, struct listed *l)
{
	struct qstatus st;
	struct stat sb;
	char path[4096];
	size_t i;

	snprintf(path, sizeof(path), "%s/defer/%s", spool_dir, id);
	if (qstatus_read(path, &st) == 0) {
		for (i = 0; i < st.nitems; i++)
			if (st.items[i].kind == QS_ERROR) {
				snprintf(l->last_error, sizeof(l->last_error), "%s", st.items[i].text);
				break;
			}
		qstatus_free(&st);
	}
	snprintf(path, sizeof(path), "%s/deferred/%s", spool_dir, id);
	if (strcmp(l->state, "deferred") == 0 && lstat(path, &sb) == 0)
		l->next_retry = sb.st_mtime;
}

static void
print_plain(const struct entry *e, const struct listed *l)
{
	char when[32];
	size_t i;

	if (l->reason[0] != '\0') {
		printf("%-12s  %8s  %-19s  %-8s  (", e->id, "-", "-", "corrupt");
		put_text(l->reason);
		printf(")\n\n");
		return;
	}
	format_local(l->msg.arrival_usec, "%Y-%m-%d %H:%M:%S", when, sizeof(when));
	printf("%-12s  %8zu  %-19s  %-8s  <", e->id, l->msg.content_len, when, l->state);
	put_text(l->msg.sender);
	printf(">\n");
	if (l->last_error[0]) {
		printf("    (");
		put_text(l->last_error);
		printf(")\n");
	}
	if (l->msg.hold_reason != NULL && strcmp(l->state, "hold") == 0) {
		printf("    (on hold: ");
		put_text(l->msg.hold_reason);
		printf(")\n");
	}
	if (l->next_retry) {
		format_local((uint64_t)l->next_retry * 1000000u, "%Y-%m-%d %H:%M:%S", when, sizeof(when));
		printf("    next retry: %s\n", when);
	}
	for (i = 0; i < l->msg.nrcpt; i++) {
		printf("    ");
		put_text(l->msg.rcpts[i].addr);
		if (l->msg.rcpts[i].state != RCPT_PENDING)
			printf(" (%s)", rcpt_state_names[l->msg.rcpts[i].state]);
		putchar('\n');
	}
	putchar('\n');
}

static void
print_json(const struct entry *e, const struct listed *l)
{
	char when[32];
	size_t i;

	if (l->reason[0] != '\0') {
		printf("{\"id\":\"%s\",\"state\":\"corrupt\",\"error\":", e->id);
		put_json_str(l->reason);
		putchar('}');
		return;
	}
	format_utc(l->msg.arrival_usec, when, sizeof(when));
	printf("{\"id\":\"%s\",\"size\":%zu,\"arrival\":\"%s\",\"arrival_usec\":%llu,"
	       "\"state\":\"%s\",\"sender\":", e->id, l->msg.content_len, when,
	       (unsigned long long)l->msg.arrival_usec, l->state);
	put_json_str(l->msg.sender);
	printf(",\"recipients\":[");
	for (i = 0; i < l->msg.nrcpt; i++) {
		printf("%s{\"address\":", i ? "," : "");
		put_json_str(l->msg.rcpts[i].addr);
		printf(",\"state\":\"%s\"}", rcpt_state_names[l->msg.rcpts[i].state]);
	}
	printf("],\"last_error\":");
	if (l->last_error[0])
		put_json_str(l->last_error);
	else
		printf("null");
	printf(",\"next_retry\":");
	if (l->next_retry)
		printf("%lld", (long long)l->next_retry);
	else
		printf("null");
	/* why it was quarantined as it arrived, while it is on hold */
	printf(",\"hold_reason\":");
	if (l->msg.hold_reason != NULL && strcmp(l->state, "hold") == 0)
		put_json_str(l->msg.hold_reason);
	else
		printf("null");
	putchar('}');
}

/* Reads one listed message. Returns 1 when it has left the queue since the
 * folder was read (nothing to list), 0 when l is filled in (parsed or
 * corrupt), -1 on an I/O error (reported). */
static int
load_entry(const char *spool_dir, const struct entry *e, struct listed *l)
{
	char path[4096];
	struct spool_file f;
	int where;

	memset(l, 0, sizeof(*l));
	where = find_message(spool_dir, e->id, &f, l->reason, sizeof(l->reason), path,
			     sizeof(path));
	if (where == -1)
		return 1;
	if (where == -2) {
		fprintf(stderr, "sorterctl: read %s: %s\n", path, strerror(errno));
		return -1;
	}
	l->state = state_dirs[where].state;
	/* the records stay; the content is not needed for a listing */
	l->msg = f.m;
	memset(&f.m, 0, sizeof(f.m));
	spool_file_free(&f);
	if (l->reason[0] == '\0')
		load_status(spool_dir, e->id, l);
	return 0;
}

static unsigned
state_bit(const char *state)
{
	return strcmp(state, "hold") == 0 ? QSEL_HOLD :
	       strcmp(state, "deferred") == 0 ? QSEL_DEFERRED : QSEL_ACTIVE;
}

/* What --node and --summary need: the routes of recipients, by the same
 * maps the daemon uses */
struct routing {
	struct router *r;
	struct qselect_router *qr;
};

static int
routing_open(const struct config *cf, struct routing *rt)
{
	char err[512];

	rt->r = router_open(cf, err, sizeof(err));
	if (rt->r == NULL) {
		fprintf(stderr, "sorterctl: %s\n", err);
		return -1;
	}
	rt->qr = qselect_router_new(rt->r);
	return 0;
}

static void
routing_close(struct routing *rt)
{
	qselect_router_free(rt->qr);
	router_close(rt->r);
}

/* The queue by node, for `sorterctl nodes` */
static struct qsummary *
spool_summary(const struct config *cf, struct routing *rt, int *rc)
{
	struct qsummary *sum = qsummary_new(cf);
	uint64_t now = now_usec();
	struct entry *v;
	struct listed l;
	size_t n, i;
	int r;

	if (collect(cf->spool_dir, &v, &n) < 0) {
		*rc = EXIT_RUNTIME;
		return sum;
	}
	for (i = 0; i < n; i++) {
		r = load_entry(cf->spool_dir, &v[i], &l);
		if (r < 0)
			*rc = EXIT_RUNTIME;
		if (r != 0)
			continue;
		if (l.reason[0] == '\0')
			qsummary_add(sum, state_bit(l.state), &l.msg, now, qselect_router_node, rt->qr);
		spool_msg_free(&l.msg);
	}
	free(v);
	return sum;
}

/* Someone (a queue manager) holds the spool's lock. */
static bool
lock_held(const char *spool_dir)
{
	char path[4096];
	bool held;
	int fd;

	snprintf(path, sizeof(path), "%s/qmgr.lock", spool_dir);
	fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return false;
	held = flock(fd, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK;
	close(fd);
	return held;
}

/* The daemon's view when it runs; else what the spool and the maps say. */
static int
cmd_nodes(const struct config *cf, bool json)
{
	struct routing rt = { NULL, NULL };
	struct qsummary *sum;
	const char *reply = NULL;
	struct dstr out;
	bool ok = false, answered;
	int rc = 0, r;

	dstr_init(&out, 0);
	for (r = 0; !(answered = control_request(cf->spool_dir, "nodes", &out, &ok) == 0);
	     r += 100) {
		/* a queue manager that holds the lock is starting: it answers soon */
		if (r >= CONTROL_WAIT_MS || !lock_held(cf->spool_dir))
			break;
		dstr_reset(&out);
		usleep(100000);
	}
	if (answered) {
		if (!ok || strchr(out.s, '\n') == NULL) {
			fprintf(stderr, "sorterctl: the queue manager said: %.*s\n",
				(int)strcspn(out.s, "\n"), out.s);
			dstr_free(&out);
			return EXIT_RUNTIME;
		}
		reply = strchr(out.s, '\n') + 1;
	}
	if (routing_open(cf, &rt) < 0) {
		dstr_free(&out);
		return EXIT_RUNTIME;
	}
	sum = spool_summary(cf, &rt, &rc);
	r = ctl_nodes(cf, reply, rt.r, sum, json, stdout);
	qsummary_free(sum);
	routing_close(&rt);
	dstr_free(&out);
	return r ? EXIT_RUNTIME : rc;
}

static int
cmd_queue(const struct config *cf, bool json, bool summary, const struct qselect *sel)
{
	const char *spool_dir = cf->spool_dir;
	struct routing rt = { NULL, NULL };
	struct qsummary *sum = NULL;
	struct entry *v;
	struct listed l;
	size_t n, i, shown = 0;
	unsigned long long bytes = 0;
	uint64_t now = now_usec();
	int rc = 0, r;

	if ((sel->node != NULL || summary) && routing_open(cf, &rt) < 0)
		return EXIT_RUNTIME;
	if (collect(spool_dir, &v, &n) < 0) {
		if (rt.r)
			routing_close(&rt);
		return EXIT_RUNTIME;
	}
	if (summary)
		sum = qsummary_new(cf);
	else if (json)
		putchar('[');
	for (i = 0; i < n; i++) {
		r = load_entry(spool_dir, &v[i], &l);
		if (r < 0)
			rc = EXIT_RUNTIME;
		if (r != 0)
			continue;
		if (!qselect_empty(sel) &&
		    (l.reason[0] != '\0' || !qselect_match(sel, state_bit(l.state), &l.msg, now,
							   qselect_router_node, rt.qr))) {
			spool_msg_free(&l.msg);
			continue;
		}
		if (sum != NULL) {
			if (l.reason[0] == '\0')
				qsummary_add(sum, state_bit(l.state), &l.msg, now, qselect_router_node,
					     rt.qr);
			spool_msg_free(&l.msg);
			continue;
		}
		if (json) {
			fputs(shown ? ",\n" : "\n", stdout);
			print_json(&v[i], &l);
		} else {
			if (shown == 0)
				printf("%-12s  %8s  %-19s  %-8s  %s\n", "-Queue ID---", "--Size--",
				       "----Arrival Time---", "-State--", "-Sender/Recipient-------");
			print_plain(&v[i], &l);
		}
		bytes += l.msg.content_len;
		shown++;
		spool_msg_free(&l.msg);
	}
	free(v);
	if (rt.r)
		routing_close(&rt);
	if (sum != NULL) {
		qsummary_print(sum, json, stdout);
		qsummary_free(sum);
		return rc;
	}
	if (json)
		fputs(shown ? "\n]\n" : "]\n", stdout);
	else if (shown == 0)
		printf(qselect_empty(sel) ? "Queue is empty\n" : "No message selected\n");
	else
		printf("-- %zu message%s, %llu KiB\n", shown, shown == 1 ? "" : "s",
		       (bytes + 1023) / 1024);
	return rc;
}

/* ---- sorterctl show ---- */

static int
cmd_show(const char *spool_dir, const char *id, bool raw)
{
	char path[4096], err[256], when[64];
	struct spool_file f;
	struct spool_msg *m = &f.m;
	size_t i;
	int where;

	if (!qid_valid(id)) {
		fprintf(stderr, "sorterctl: %s: not a queue id (%d characters from "
			"0-9 and A-Z without I, L, O, U)\n", id, QID_LEN);
		return EXIT_USAGE;
	}
	/* a wrong spool_dir must not read as "no such message" */
	snprintf(path, sizeof(path), "%s/%s", spool_dir, state_dirs[0].dir);
	if (access(path, X_OK) < 0) {
		fprintf(stderr, "sorterctl: open %s: %s\n", path, strerror(errno));
		return EXIT_RUNTIME;
	}
	where = find_message(spool_dir, id, &f, err, sizeof(err), path, sizeof(path));
	if (where == -2) {
		fprintf(stderr, "sorterctl: read %s: %s\n", path, strerror(errno));
		return EXIT_RUNTIME;
	}
	if (where == -1) {
		/* moved aside by the daemon: say so rather than "no such message" */
		snprintf(path, sizeof(path), "%s/corrupt/%s", spool_dir, id);
		if (access(path, F_OK) == 0)
			fprintf(stderr, "sorterctl: %s: moved to corrupt/ (it cannot be parsed): %s\n",
				id, path);
		else
			fprintf(stderr, "sorterctl: %s: no such message in the queue\n", id);
		return EXIT_RUNTIME;
	}
	if (err[0] != '\0') {
		fprintf(stderr, "sorterctl: %s: corrupt queue file: %s\n", path, err);
		return EXIT_RUNTIME;
	}
	format_local(m->arrival_usec, "%Y-%m-%d %H:%M:%S %z", when, sizeof(when));
	printf("id: %s\nstate: %s\narrival: %s\nsize: %zu\nclient: ", id,
	       state_dirs[where].state, when, m->content_len);
	put_text(m->client);
	printf("\nhelo: ");
	put_text(m->helo);
	printf("\nprotocol: ");
	put_text(m->proto);
	printf("\nsender: <");
	put_text(m->sender);
	printf(">\n");
	if (m->sender_params != NULL) {
		printf("sender params: ");
		put_text(m->sender_params);
		putchar('\n');
	}
	if (m->hold_reason != NULL) {
		printf("hold reason: ");
		put_text(m->hold_reason);
		putchar('\n');
	}
	for (i = 0; i < m->nrcpt; i++) {
		printf("recipient: ");
		put_text(m->rcpts[i].addr);
		printf(" (%s)\n", rcpt_state_names[m->rcpts[i].state]);
	}
	putchar('\n');
	/* the message as stored, unless a terminal would take its bytes for
	 * commands (escape sequences in a header); --raw always */
	switch (show_content(&f, !raw && isatty(STDOUT_FILENO))) {
	case -1:
		fprintf(stderr, "sorterctl: read %s: %s\n", id, strerror(errno));
		spool_file_free(&f);
		return 1;
	case -2:
		fprintf(stderr, "sorterctl: %s: its content does not match its check record (the "
			"message was delivered while it was shown and its queue file written over "
			"by a new one, or the file is damaged): what was shown is not its content\n",
			id);
		spool_file_free(&f);
		return 1;
	}
	spool_file_free(&f);
	return 0;
}

/* ---- steering the queue ---- */
/* (selection: select.c; with the daemon up the queue manager selects and
 * acts in one turn of its loop, down it is done here under its lock) */

#define IDS_PER_REQUEST 200

/* The folders of one request, and those it changed and has not synced */
struct offline_batch {
	const int *fds;
	struct queue_batch qb;  /* on disk at the end */
};

/* With the daemon down: acts on the spool under the queue manager's lock,
 * so that a daemon starting meanwhile waits for us. Returns -1 (nothing
 * done) when a queue manager holds the lock: it is running, the caller
 * asks it again. */
static int
act_offline(void *arg, enum queue_op op, const char *id, struct dstr *out)
{
	struct offline_batch *b = arg;

	return queue_op_offline(b->fds, op, id, out, &b->qb);
}

static enum queue_op
verb_op(const char *verb)
{
	return strcmp(verb, "delete") == 0 ? QOP_DELETE : strcmp(verb, "hold") == 0 ? QOP_HOLD :
	       strcmp(verb, "release") == 0 ? QOP_RELEASE : QOP_FLUSH;
}

static int
offline(const struct config *cf, const char *verb, char **ids, size_t n,
	const struct qselect *sel)
{
	const char *spool_dir = cf->spool_dir;
	int fds[QUEUE_NDIRS], lock, rc = 0;
	struct offline_batch b;
	char path[4096];
	struct stat sb;
	struct dstr out;
	enum queue_op op;
	size_t i;

	memset(&b, 0, sizeof(b));
	b.fds = fds;
	/* the queue manager creates the lock: without one, this is no spool
	 * sorterd ever ran on (or the wrong spool_dir) */
	snprintf(path, sizeof(path), "%s/qmgr.lock", spool_dir);
	lock = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (lock < 0) {
		fprintf(stderr, "sorterctl: open %s: %s%s\n", path, strerror(errno),
			errno == ELOOP ? " (a symbolic link: refusing to act on this spool)" :
			errno == ENOENT ? " (sorterd never ran on this spool?)" : "");
		return EXIT_RUNTIME;
	}
	if (fstat(lock, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		fprintf(stderr, "sorterctl: %s: not a regular file: refusing to act on this spool\n",
			path);
		close(lock);
		return EXIT_RUNTIME;
	}
	if (flock(lock, LOCK_EX | LOCK_NB) < 0) {
		close(lock);
		return -1;
	}
	if (queue_open_dirs(spool_dir, fds) < 0) {
		fprintf(stderr, "sorterctl: open the spool %s: %s\n", spool_dir, strerror(errno));
		close(lock);
		return EXIT_RUNTIME;
	}
	dstr_init(&out, 0);
	if (strcmp(verb, "stats") == 0) {
		dstr_printf(&out, "daemon not running: queue sizes only\n");
		queue_count_dirs(fds, &out);
	} else if (strcmp(verb, "drain") == 0 || strcmp(verb, "undrain") == 0) {
		struct drainset ds;
		char err[4200];
		bool on = verb[0] == 'd';
		int e;

		/* under the lock: sorterd reads the file when it starts */
		if (drainset_load(spool_dir, &ds, err, sizeof(err)) < 0) {
			dstr_printf(&out, "%s\n", err);
			rc = EXIT_RUNTIME;
		} else if (!drainset_set(&ds, ids[0], on, (unsigned long long)time(NULL))) {
			dstr_printf(&out, "node %s: %s\n", ids[0], on ? "already drained" : "not drained");
		} else if ((e = drainset_save(spool_dir, &ds)) != 0) {
			dstr_printf(&out, "%s/%s: %s\n", spool_dir, NODESTATE_FILE, strerror(e));
			rc = EXIT_RUNTIME;
		} else {
			msg_info("node %s %s (sorterd not running)", ids[0], on ? "drained" : "undrained");
			dstr_printf(&out, "node %s: %s (daemon not running: %s)\n", ids[0], on ?
				    "drained" : "undrained", on ? "its mail will wait in the queue" :
				    "its mail goes out at its next retry, or at once with sorterctl flush");
		}
		drainset_free(&ds);
	} else if (sel != NULL) {
		struct routing rt = { NULL, NULL };

		if (sel->node != NULL && routing_open(cf, &rt) < 0) {
			rc = EXIT_RUNTIME;
		} else {
			if (qselect_apply(spool_dir, sel, verb_op(verb), qselect_router_node, rt.qr,
					  act_offline, &b, &out) < 0)
				rc = EXIT_RUNTIME;
			if (rt.r)
				routing_close(&rt);
		}
	} else {
		op = verb_op(verb);
		if (op == QOP_FLUSH && n == 0)
			dstr_printf(&out, "daemon not running: deferred mail is retried when it starts\n");
		for (i = 0; i < n; i++)
			if (act_offline(&b, op, ids[i], &out) < 0)
				rc = EXIT_RUNTIME;
	}
	if (queue_batch_end(fds, &b.qb, &out) < 0)
		rc = EXIT_RUNTIME;
	fputs(out.s ? out.s : "", rc ? stderr : stdout);
	dstr_free(&out);
	queue_close_dirs(fds);
	close(lock);
	return rc;
}

/* Sends "verb ids..." in batches, or "verb --select SEL"; falls back to
 * offline() when no daemon listens. */
static int
steer(const struct config *cf, const char *verb, char **ids, size_t n, const struct qselect *sel)
{
	const char *spool_dir = cf->spool_dir;
	struct dstr line, out;
	size_t i = 0, k;
	bool ok;
	int rc = 0, r, waited;

	for (k = 0; k < n && strcmp(verb, "drain") != 0 && strcmp(verb, "undrain") != 0; k++)
		if (!qid_valid(ids[k])) {
			fprintf(stderr, "sorterctl: %s: not a queue id\n", ids[k]);
			return EXIT_USAGE;
		}
	do {
		dstr_init(&line, 0);
		dstr_printf(&line, "%s", verb);
		if (sel != NULL) {
			dstr_printf(&line, " --select ");
			qselect_encode(sel, &line);
		}
		for (k = 0; k < IDS_PER_REQUEST && i < n; k++, i++)
			dstr_printf(&line, " %s", ids[i]);
		dstr_init(&out, 0);
		for (waited = 0; control_request(spool_dir, line.s, &out, &ok) < 0; waited += 100) {
			/* nobody answers: the daemon is down, or its queue manager
			 * is starting (it holds the lock before it listens) */
			if (i <= IDS_PER_REQUEST && (r = offline(cf, verb, ids, n, sel)) >= 0) {
				dstr_free(&line);
				dstr_free(&out);
				return r;
			}
			if (waited >= CONTROL_WAIT_MS) {
				fprintf(stderr, "sorterctl: the queue manager holds %s/qmgr.lock but does "
					"not answer on %s/control\n", spool_dir, spool_dir);
				dstr_free(&line);
				dstr_free(&out);
				return EXIT_RUNTIME;
			}
			usleep(100000);
		}
		if (!ok)
			rc = EXIT_RUNTIME;
		/* drop the status line; print the rest */
		if (out.s) {
			char *nl = strchr(out.s, '\n');

			if (!ok && nl)
				fprintf(stderr, "sorterctl: %.*s\n", (int)(nl - out.s), out.s);
			fputs(nl ? nl + 1 : "", ok ? stdout : stderr);
		}
		dstr_free(&line);
		dstr_free(&out);
	} while (i < n);
	return rc;
}

static int
cmd_delete_all(const struct config *cf)
{
	struct entry *v;
	char **ids;
	size_t n, i;
	int rc;

	if (collect(cf->spool_dir, &v, &n) < 0)
		return EXIT_RUNTIME;
	if (n == 0) {
		printf("Queue is empty\n");
		free(v);
		return 0;
	}
	ids = xcalloc(n, sizeof(*ids));
	for (i = 0; i < n; i++)
		ids[i] = v[i].id;
	rc = steer(cf, "delete", ids, n, NULL);
	free(ids);
	free(v);
	return rc;
}

/* ---- import: a dead peer's spool (import.c) ---- */

static int
cmd_import(const char *spool_dir, const char *src)
{
	struct import_result r;
	char err[PATH_MAX + 256];

	log_set_progname("sorterctl");
	if (queue_import(spool_dir, src, stdout, &r, err, sizeof(err)) < 0) {
		fprintf(stderr, "sorterctl: import: %s\n", err);
		return EXIT_RUNTIME;
	}
	printf("%u imported (%u on hold, %u finishing an interrupted import), %u quarantined, "
	       "%u failed\n", r.imported, r.held, r.resumed, r.quarantined, r.failed);
	return r.failed || r.quarantined ? EXIT_RUNTIME : 0;
}

/* ---- passwd: a hash for auth_map ---- */

/* One line from fp without its newline; -1 at EOF, on error or when it
 * does not fit. With echo off when fp is a terminal. */
static int
read_secret(FILE *fp, const char *prompt, char *buf, size_t len)
{
	struct termios old, quiet;
	bool tty = isatty(fileno(fp)) == 1;
	int rc = 0;
	size_t n;

	if (tty) {
		fprintf(stderr, "%s", prompt);
		fflush(stderr);
		if (tcgetattr(fileno(fp), &old) == 0) {
			quiet = old;
			quiet.c_lflag &= ~(tcflag_t)ECHO;
			(void)tcsetattr(fileno(fp), TCSAFLUSH, &quiet);
		} else
			tty = false;
	}
	if (fgets(buf, (int)len, fp) == NULL)
		rc = -1;
	if (tty) {
		(void)tcsetattr(fileno(fp), TCSAFLUSH, &old);
		fputc('\n', stderr);
	}
	if (rc < 0)
		return -1;
	n = strlen(buf);
	if (n == 0 || buf[n - 1] != '\n') {
		if (!feof(fp))
			return -1;      /* longer than the buffer */
	} else
		buf[--n] = '\0';
	if (n > 0 && buf[n - 1] == '\r')
		buf[--n] = '\0';
	return 0;
}

/* Reads a password (twice from a terminal, echo off; once from a pipe)
 * and prints its yescrypt hash for auth_map. */
static int
cmd_passwd(void)
{
	char pw[AUTH_PASS_MAX + 2], again[AUTH_PASS_MAX + 2], hash[512];
	bool tty = isatty(STDIN_FILENO) == 1;
	int rc = EXIT_RUNTIME;

	if (read_secret(stdin, "Password: ", pw, sizeof(pw)) < 0) {
		fprintf(stderr, "sorterctl: no password read (at most %d bytes)\n", AUTH_PASS_MAX);
		goto out;
	}
	if (pw[0] == '\0') {
		fprintf(stderr, "sorterctl: empty password refused\n");
		goto out;
	}
	if (tty && (read_secret(stdin, "Again: ", again, sizeof(again)) < 0 ||
		    strcmp(pw, again) != 0)) {
		fprintf(stderr, "sorterctl: the passwords differ\n");
		goto out;
	}
	if (auth_hash_password(pw, hash, sizeof(hash)) < 0) {
		fprintf(stderr, "sorterctl: libcrypt cannot make a yescrypt hash\n");
		goto out;
	}
	printf("%s\n", hash);
	rc = 0;
out:
	explicit_bzero(pw, sizeof(pw));
	explicit_bzero(again, sizeof(again));
	return rc;
}

/* Run as root: becomes the owner of spool_dir (and that user's group) for
 * good. A spool that root owns, or none at all, leaves us as we are (the
 * commands report a missing spool themselves). */
static int
become_spool_owner(const char *spool_dir)
{
	struct passwd *pw;
	struct stat st;
	gid_t gid;

	if (geteuid() != 0 || stat(spool_dir, &st) < 0 || st.st_uid == 0)
		return 0;
	pw = getpwuid(st.st_uid);
	gid = pw ? pw->pw_gid : st.st_gid;
	if (setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(st.st_uid) < 0) {
		fprintf(stderr, "sorterctl: cannot become %s's owner (uid %ld): %s\n", spool_dir,
			(long)st.st_uid, strerror(errno));
		return -1;
	}
	return 0;
}

/* argv[*i] is a selector: its value is the rest of "--x=v" or the next
 * word. Returns 0, or exits with a usage error. */
static void
take_selector(int argc, char **argv, int *i, struct qselect *sel)
{
	char name[32], err[256];
	const char *eq = strchr(argv[*i], '='), *value;

	if (eq != NULL && (size_t)(eq - argv[*i]) < sizeof(name)) {
		snprintf(name, sizeof(name), "%.*s", (int)(eq - argv[*i]), argv[*i]);
		value = eq + 1;
	} else {
		snprintf(name, sizeof(name), "%s", argv[*i]);
		if (*i + 1 >= argc) {
			fprintf(stderr, "sorterctl: %s needs a value\n", name);
			usage();
		}
		value = argv[++*i];
	}
	if (!qselect_is_option(name))
		usage();
	if (qselect_option(sel, name, value, err, sizeof(err)) != 0) {
		fprintf(stderr, "sorterctl: %s\n", err);
		exit(EXIT_USAGE);
	}
}

static bool
is_selector(const char *arg)
{
	char name[32];
	size_t n = strcspn(arg, "=");

	if (n >= sizeof(name))
		return false;
	snprintf(name, sizeof(name), "%.*s", (int)n, arg);
	return qselect_is_option(name);
}

int
main(int argc, char **argv)
{
	const char *config_file = DEFAULT_CONFIG, *cmd;
	struct qselect sel;
	bool json = false, summary = false, selecting = false;
	struct config *cf;
	char err[512];
	int c, rc, i;

	while ((c = getopt(argc, argv, "+c:")) != -1) {
		switch (c) {
		case 'c':
			config_file = optarg;
			break;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1)
		usage();
	cmd = argv[0];
	/* check the command line before touching the config */
	qselect_init(&sel);
	if (strcmp(cmd, "queue") == 0) {
		for (i = 1; i < argc; i++) {
			if (strcmp(argv[i], "--json") == 0)
				json = true;
			else if (strcmp(argv[i], "--summary") == 0)
				summary = true;
			else if (is_selector(argv[i]))
				take_selector(argc, argv, &i, &sel);
			else
				usage();
		}
	} else if (strcmp(cmd, "show") == 0) {
		if (argc != 2 && (argc != 3 || strcmp(argv[2], "--raw") != 0))
			usage();
	} else if (strcmp(cmd, "delete") == 0 || strcmp(cmd, "hold") == 0 ||
		   strcmp(cmd, "release") == 0 || strcmp(cmd, "flush") == 0) {
		if (argc < 2 && strcmp(cmd, "flush") != 0)
			usage();
		selecting = argc > 1 && is_selector(argv[1]);
		for (i = 1; i < argc; i++) {
			if (selecting && is_selector(argv[i]))
				take_selector(argc, argv, &i, &sel);
			else if (selecting || is_selector(argv[i])) {
				fprintf(stderr, "sorterctl: give queue ids or selectors, not both\n");
				usage();
			}
		}
	} else if (strcmp(cmd, "stats") == 0) {
		if (argc != 1)
			usage();
	} else if (strcmp(cmd, "nodes") == 0) {
		if (argc > 2 || (argc == 2 && strcmp(argv[1], "--json") != 0))
			usage();
		json = argc == 2;
	} else if (strcmp(cmd, "drain") == 0 || strcmp(cmd, "undrain") == 0) {
		if (argc != 2)
			usage();
		if (!nodestate_name_ok(argv[1], strlen(argv[1]))) {
			fprintf(stderr, "sorterctl: %s: not a node name\n", argv[1]);
			return EXIT_USAGE;
		}
	} else if (strcmp(cmd, "route") == 0) {
		if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "--json") != 0))
			usage();
	} else if (strcmp(cmd, "import") == 0) {
		if (argc != 2)
			usage();
	} else if (strcmp(cmd, "passwd") == 0) {
		if (argc != 1)
			usage();
		return cmd_passwd();
	} else {
		fprintf(stderr, "sorterctl: unknown command \"%s\"\n", cmd);
		usage();
	}

	if ((cf = config_load(config_file, err, sizeof(err))) == NULL) {
		fprintf(stderr, "sorterctl: %s\n", err);
		return EXIT_RUNTIME;
	}
	qid_init(QID_SLOT_CTL, 0);
	if (strcmp(cmd, "route") != 0 && become_spool_owner(cf->spool_dir) < 0) {
		config_free(cf);
		return EXIT_RUNTIME;
	}
	if (strcmp(cmd, "queue") == 0)
		rc = cmd_queue(cf, json, summary, &sel);
	else if (strcmp(cmd, "nodes") == 0)
		rc = cmd_nodes(cf, json);
	else if (strcmp(cmd, "show") == 0)
		rc = cmd_show(cf->spool_dir, argv[1], argc == 3);
	else if (strcmp(cmd, "route") == 0) {
		/* an LDAP server closing its end must not kill the explanation */
		signal(SIGPIPE, SIG_IGN);
		rc = router_explain(cf, argv[1], argc == 3, stdout);
	}
	else if (strcmp(cmd, "import") == 0) {
		/* the imported messages get new ids: after every id in the spool */
		qid_init(QID_SLOT_CTL, spool_newest_qid(cf->spool_dir));
		rc = cmd_import(cf->spool_dir, argv[1]);
	}
	else if (strcmp(cmd, "delete") == 0 && argc == 2 && strcmp(argv[1], "--all") == 0)
		rc = cmd_delete_all(cf);
	else if (selecting)
		rc = steer(cf, cmd, NULL, 0, &sel);
	else
		rc = steer(cf, cmd, argv + 1, (size_t)argc - 1, NULL);
	qselect_free(&sel);
	config_free(cf);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "sorterctl: write to standard output: %s\n", strerror(errno));
		return EXIT_RUNTIME;
	}
	return rc;
}
