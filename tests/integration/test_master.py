"""test_master.py - sorterd's process tree against a dead master, privileges and descriptors:

- kill -9 of the master under load: its children let go of the port at once, end their sessions
  (421 4.3.2) and exit within a bound; a new sorterd serves on the same port within 2 s; every
  message that got a 250 is delivered (to an LMTP sink, smtp-sink -L).
- started as root with user = sorter: the master stays root, every child runs as sorter, no
  file in the spool belongs to root after a run (sorterctl as root included), and SIGHUP
  reloads a key only root can read (the new certificate is served).
- under a 64-descriptor limit (prlimit): accepting pauses instead of spinning, warnings are
  rate-limited and counted, service resumes once connections close; `sorterd -t` refuses a
  smtpd_max_sessions the hard limit cannot hold.
- sorterctl as root on a stopped spool with planted symlinks follows none of them.
- at start, the listeners take no client until the spool's start-up check is over (thousands of
  torn files already moved aside at the first moment the port listens), and a second sorterd on
  a spool in use stops with a message instead of touching it.
"""

import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import unittest

from harness import (LOCAL_DOMAIN, Client, SMTPClosed, Sorterd, SorterTestCase, blast,
                     build_dir, join_all, listening, message, pid_alive, wait_until, write_map)
from smtpsink import SmtpSink, free_port_on

RCPT = "user@" + LOCAL_DOMAIN
SENDER = "sender@remote.test"
SORTED_ID_RE = re.compile(rb"\(Sorter\)\s+with \S+ id ([0-9A-HJKMNP-TV-Z]{12})")
FAST = {"queue_run_delay": 1, "minimal_backoff_time": 1, "maximal_backoff_time": 1,
        "endpoint_dead_time": 0}
SLOW = {"queue_run_delay": 3600, "minimal_backoff_time": 3600, "maximal_backoff_time": 3600,
        "endpoint_dead_time": 0}
CHILD_EXIT_BOUND = 10   # the qmgr gives deliveries 5 s, workers their commits at most 5 s
RUN_USER = "sorter"


def proc_status(pid):
    """{"Uid": [real, effective, saved, fs], "Gid": [...], "Groups": [...]} from /proc."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                out[key] = [int(v) for v in value.split()]
    return out


def cpu_seconds(pid):
    """User + system CPU time of pid so far, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def root_owned(top):
    """Paths under top (top included) that belong to root, symlinks not followed."""
    found = []
    for root, dirs, files in os.walk(top):
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            try:
                if os.lstat(name).st_uid == 0:
                    found.append(name)
            except FileNotFoundError:
                pass
    return sorted(set(found))


def open_up(path):
    """o+x on path and every folder above it, so that the unprivileged user reaches it."""
    p = os.path.abspath(path)
    while p not in ("/", ""):
        mode = os.stat(p).st_mode
        if not mode & 0o001:
            os.chmod(p, (mode & 0o7777) | 0o001)
        p = os.path.dirname(p)


def delivered_ids(sink):
    """Queue ids (from sorterd's Received: line) of every message the sink holds."""
    ids = set()
    for p in sink.dump_files():
        try:
            with open(p, "rb") as f:
                ids.update(m.decode() for m in SORTED_ID_RE.findall(f.read()))
        except FileNotFoundError:
            pass
    return ids


def make_cert(directory, cn):
    cert = os.path.join(directory, "cert-%s.pem" % cn)
    key = os.path.join(directory, "key-%s.pem" % cn)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=%s" % cn, "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def served_fingerprint(port):
    """SHA-256 of the certificate sorterd shows after STARTTLS."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with Client(port, timeout=10) as c:
        if c.reply().code != 220 or c.ehlo().code != 250:
            raise AssertionError("no greeting or EHLO refused")
        r = c.starttls(ctx)
        if r.code != 220:
            raise AssertionError("STARTTLS: %s" % r)
        der = c.sock.getpeercert(binary_form=True)
        c.cmd("QUIT")
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(cert):
    with open(cert) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    return hashlib.sha256(der).hexdigest()


def greeted(port):
    """True when a new connection gets a 220 greeting within 1 s."""
    try:
        with Client(port, timeout=1) as c:
            return c.reply().code == 220
    except (OSError, SMTPClosed):
        return False


class MasterTestCase(SorterTestCase):
    def lmtp_sink(self, name="sink"):
        sink = SmtpSink(os.path.join(self.tmp, name), "127.0.0.1", free_port_on("127.0.0.1"),
                        extra_args=["-L"])
        sink.start()
        self.addCleanup(sink.stop)
        return sink


class MasterDeathTest(MasterTestCase):
    def test_kill_master_under_load(self):
        sink = self.lmtp_sink()
        d = self.sorterd(failover_node="lmtp:[127.0.0.1]:%d" % sink.port, **FAST)
        old_kids = d.children()
        self.assertGreaterEqual(len(old_kids), 3, "expected 2 workers and the qmgr")
        stop = threading.Event()
        threads, acked, errors = blast(d.port, 4, 40, body_size=2048, stop=stop)
        wait_until(lambda: len(acked) >= 40 or not any(t.is_alive() for t in threads), 120,
                   interval=0.001)
        t0 = time.monotonic()
        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait()
        # the port is free at once: no child keeps a listener open
        self.assertTrue(wait_until(lambda: not listening(d.port), 1, interval=0.01),
                        "the listener outlives the master by more than 1 s")
        d.start()
        served = wait_until(lambda: greeted(d.port), 2, interval=0.02)
        elapsed = time.monotonic() - t0
        self.assertTrue(served and elapsed <= 2.0,
                        "a new sorterd served %.2f s after the kill" % elapsed)
        self.assertTrue(wait_until(lambda: not any(pid_alive(k) for k in old_kids),
                                   CHILD_EXIT_BOUND),
                        "children of the killed master still alive after %d s: %s"
                        % (CHILD_EXIT_BOUND, [k for k in old_kids if pid_alive(k)]))
        stop.set()
        self.assertTrue(join_all(threads, 60), "client threads hang after the kill")
        got = set(acked)
        self.assertGreaterEqual(len(got), 40, errors)
        self.assertEqual(len(got), len(acked), "a queue id was given twice")
        # every acknowledged message goes out, through the new daemon if the old one did not
        self.assertTrue(wait_until(lambda: got <= delivered_ids(sink), 60, interval=0.2),
                        "acknowledged but never delivered: %s; queue: %s"
                        % (sorted(got - delivered_ids(sink)), d.queue()))
        self.assertTrue(d.wait_queue_empty(30), d.queue())
        self.assertGreater(len(d.log_lines(r"master process is gone")), 0)

    def test_sessions_end_on_master_death(self):
        d = self.sorterd()
        kids = d.children()
        idle = self.connect(d)
        self.assertEqual(idle.ehlo().code, 250)
        busy = self.connect(d)
        self.assertEqual(busy.ehlo().code, 250)
        self.assertReply(busy.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        self.assertReply(busy.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")
        self.assertReply(busy.cmd("DATA"), 354)
        busy.send(message("half", "first half\r\n"))
        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait()
        for c in (idle, busy):
            r = c.reply(timeout=5)
            self.assertReply(r, 421, "4.3.2")
            self.assertTrue(c.closed())
        self.assertTrue(wait_until(lambda: not listening(d.port), 1, interval=0.01))
        self.assertTrue(wait_until(lambda: not any(pid_alive(k) for k in kids), CHILD_EXIT_BOUND),
                        [k for k in kids if pid_alive(k)])
        self.assertEqual(d.queue(), [], "a message without a 250 was queued")


class StartTest(MasterTestCase):
    def test_listens_once_the_spool_is_checked(self):
        # torn files in incoming/ that the start-up check must move to corrupt/ (thousands of
        # them: long enough to be seen under way) before the first client is taken
        n = 5000
        d = Sorterd(os.path.join(self.tmp, "d"), start=False)
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        incoming = os.path.join(d.spool, "incoming")
        os.makedirs(incoming)
        for i in range(n):
            with open(os.path.join(incoming, "torn%05d" % i), "wb") as f:
                f.write(b"not a queue file %d\n" % i)
        d._log = open(d.log_path, "ab")     # closed by d.stop()
        d.proc = subprocess.Popen([os.path.join(d.build, "sorterd"), "-c", d.conf_path],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=d._log)
        # the first moment a client could connect, the check is over
        self.assertTrue(wait_until(lambda: listening(d.port) or d.proc.poll() is not None, 60,
                                   interval=0.001), "sorterd never listened")
        left = len(os.listdir(incoming))
        self.assertIsNone(d.proc.poll(), d.log_tail())
        self.assertEqual(left, 0, "listening while %d of %d torn files still wait for the "
                         "start-up check" % (left, n))
        self.assertEqual(len(os.listdir(os.path.join(d.spool, "corrupt"))), n)
        wait_until(lambda: d.children(), 5)
        self.assertTrue(greeted(d.port))

    def test_one_master_per_spool(self):
        d = self.sorterd()
        other = Sorterd(os.path.join(self.tmp, "other"), start=False, spool_dir=d.spool)
        self.daemons.append(other)
        self.addCleanup(other.stop)
        with self.assertRaises(RuntimeError):
            other.start()
        self.assertIn("the spool %s is in use by another sorterd" % d.spool, other.log())
        self.assertFalse(listening(other.port))
        # the first one goes on; once it has stopped, the spool is free for the other
        c = self.connect(d)
        r, qid = c.send_message(SENDER, [RCPT], message("still here", "body\r\n"))
        self.assertEqual(r.code, 250, str(r))
        self.assertEqual(d.stop(), 0)
        other.start()
        self.assertTrue(greeted(other.port))
        self.assertIn(qid, [e["id"] for e in other.queue()])


class PrivilegeTest(MasterTestCase):
    def setUp(self):
        try:
            self.pw = pwd.getpwnam(RUN_USER)
        except KeyError:
            self.fail("no user %s (contrib/setup.sh creates it)" % RUN_USER)
        self.assertEqual(os.geteuid(), 0, "these tests start sorterd as root")
        open_up(self.tmp)

    def test_children_drop_to_user(self):
        sink = self.lmtp_sink()
        dead = free_port_on("127.0.0.1")
        routes = write_routes(self, {"alice@" + LOCAL_DOMAIN: sink.port,
                                     "bob@" + LOCAL_DOMAIN: dead})
        d = self.sorterd(user=RUN_USER, **routes, **FAST)
        self.assertEqual(proc_status(d.pid)["Uid"], [0, 0, 0, 0], "the master must stay root")
        kids = d.children()
        self.assertGreaterEqual(len(kids), 3)
        for k in kids:
            st = proc_status(k)
            self.assertEqual(st["Uid"], [self.pw.pw_uid] * 4, "child %d" % k)
            self.assertEqual(st["Gid"], [self.pw.pw_gid] * 4, "child %d" % k)
            self.assertNotIn(0, st["Groups"], "child %d keeps root's group" % k)
        self.assertEqual(os.stat(d.spool).st_uid, self.pw.pw_uid)
        # a run that writes every kind of spool file: queue files, DSN-less deferral
        # status, hold, the control socket and the lock; sorterctl as root on top
        c = self.connect(d)
        r, qid_a = c.send_message(SENDER, ["alice@" + LOCAL_DOMAIN], message("alice"))
        self.assertQueued(r, qid_a)
        r, qid_b = c.send_message(SENDER, ["bob@" + LOCAL_DOMAIN], message("bob"), ehlo=False)
        self.assertQueued(r, qid_b)
        c.cmd("QUIT")
        self.assertTrue(wait_until(lambda: qid_a in delivered_ids(sink), 30))
        self.assertTrue(wait_until(
            lambda: os.path.exists(os.path.join(d.spool, "defer", qid_b)), 30))
        d.ctl("hold", qid_b)
        d.ctl("stats")
        d.stop()
        d.ctl("release", qid_b, check=False)    # offline, under the lock, as root
        d.ctl("queue")
        self.assertEqual(root_owned(d.spool), [])

    def test_sighup_reloads_root_only_key(self):
        if not shutil.which("openssl"):
            self.fail("openssl is not installed")
        keys = os.path.join(self.tmp, "keys")
        os.makedirs(keys, mode=0o700)
        cert1, key1 = make_cert(keys, "first")
        cert2, key2 = make_cert(keys, "second")
        cert, key = os.path.join(keys, "cert.pem"), os.path.join(keys, "key.pem")
        shutil.copy(cert1, cert)
        shutil.copy(key1, key)
        for p in (keys, cert, key):
            os.chown(p, 0, 0)
        os.chmod(key, 0o600)
        # the key really is root's alone
        probe = subprocess.run(["setpriv", "--reuid", RUN_USER, "--regid", RUN_USER,
                                "--clear-groups", "cat", key], capture_output=True)
        self.assertNotEqual(probe.returncode, 0, "%s can read the key" % RUN_USER)
        d = self.sorterd(user=RUN_USER, tls_cert_file=cert, tls_key_file=key)
        self.assertEqual(served_fingerprint(d.port), pem_fingerprint(cert1))
        old_kids = set(d.children())
        shutil.copy(cert2, cert + ".new")
        shutil.copy(key2, key + ".new")
        os.chmod(key + ".new", 0o600)
        os.rename(cert + ".new", cert)
        os.rename(key + ".new", key)
        d.reload()
        want = pem_fingerprint(cert2)
        self.assertTrue(wait_until(lambda: served_fingerprint(d.port) == want, 15, interval=0.3),
                        "the new certificate is not served after SIGHUP")
        self.assertEqual(d.log_lines(r"reload failed"), [])
        new_kids = set(d.children()) - old_kids
        self.assertTrue(new_kids, "no new workers after the reload")
        for k in new_kids:
            if pid_alive(k):
                self.assertEqual(proc_status(k)["Uid"][1], self.pw.pw_uid)


def write_routes(test, routes):
    """user_map and node_map sending each address to its own node, an LMTP endpoint given
    as a port on 127.0.0.1."""
    maps = os.path.join(test.tmp, "maps")
    os.makedirs(maps, exist_ok=True)
    users = {a: "node%d" % i for i, a in enumerate(routes)}
    nodes = {"node%d" % i: "lmtp:[127.0.0.1]:%d" % port for i, port in enumerate(routes.values())}
    return {"user_map": write_map(build_dir(), os.path.join(maps, "user_map"), users),
            "node_map": write_map(build_dir(), os.path.join(maps, "node_map"), nodes)}


class DescriptorTest(MasterTestCase):
    LIMIT = 64

    def test_emfile_pauses(self):
        d = Sorterd(os.path.join(self.tmp, "d"), start=False, workers=1,
                    smtpd_max_sessions=1000, smtpd_client_connection_limit=1000, io_threads=2)
        d.argv_prefix = ("prlimit", "--nofile=%d:%d" % (self.LIMIT, self.LIMIT), "--")
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()
        worker = [k for k in d.children() if k != d.qmgr_pid()]
        self.assertEqual(len(worker), 1, d.children())
        worker = worker[0]
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for _ in range(self.LIMIT + 40):
            s = socket.socket()
            s.settimeout(5)
            s.connect(("127.0.0.1", d.port))    # completes in the backlog even when not accepted
            socks.append(s)
        # the worker runs out of descriptors: accepts fail and pause
        self.assertTrue(wait_until(lambda: d.log_lines(r"accept: Too many open files"), 10),
                        "no EMFILE warning")
        cpu0, t0 = cpu_seconds(worker), time.monotonic()
        lines0 = len(d.log_lines(r"accept: Too many open files"))
        time.sleep(4)
        cpu = cpu_seconds(worker) - cpu0
        elapsed = time.monotonic() - t0
        warnings = len(d.log_lines(r"accept: Too many open files")) - lines0
        self.assertLess(cpu, 0.5, "the worker spins: %.2f s of CPU in %.1f s" % (cpu, elapsed))
        self.assertLessEqual(warnings, elapsed + 1, "warnings not rate-limited")
        self.assertTrue(d.log_lines(r"accept: Too many open files: \d+ failures? since"))
        # connections close: service resumes
        for s in socks:
            s.close()
        socks.clear()
        self.assertTrue(wait_until(lambda: greeted(d.port), 10, interval=0.2),
                        "no greeting once connections closed")
        c = self.connect(d)
        r, qid = c.send_message(SENDER, [RCPT], message("after emfile"))
        self.assertQueued(r, qid)
        self.assertTrue(d.log_lines(r"smtpd_max_sessions = 1000 needs about 2355 open files"),
                        "no warning at start about the descriptor limit")

    def test_config_check_names_the_key(self):
        build = build_dir()
        conf = os.path.join(self.tmp, "sorter.conf")

        def check(limit, sessions):
            with open(conf, "w") as f:
                f.write("spool_dir = %s/spool\nlisten = 127.0.0.1:2525 mx\n"
                        "smtpd_max_sessions = %d\n" % (self.tmp, sessions))
            r = subprocess.run(["prlimit", "--nofile=" + limit, "--",
                                os.path.join(build, "sorterd"), "-t", "-c", conf],
                               capture_output=True, text=True, timeout=30)
            return r.returncode, r.stdout + r.stderr

        # 2 per session + 16 io_threads + 1 listener + 64 + 288 for the pool of queue files:
        # 569 for 100 sessions
        rc, out = check("64:600", 100)
        self.assertEqual(rc, 0, out)         # the soft limit is raised at start
        rc, out = check("64:568", 100)
        self.assertEqual(rc, 1, out)
        self.assertIn("569", out)
        rc, out = check("64:600", 200)
        self.assertEqual(rc, 1, out)
        self.assertIn("smtpd_max_sessions = 200", out)
        self.assertIn("769", out)
        self.assertIn("600", out)
        rc, out = check("4400:4400", 2000)
        self.assertEqual(rc, 0, out)


class SorterctlAsRootTest(MasterTestCase):
    def setUp(self):
        self.pw = pwd.getpwnam(RUN_USER)
        open_up(self.tmp)
        dead = free_port_on("127.0.0.1")
        self.d = self.sorterd(user=RUN_USER, failover_node="lmtp:[127.0.0.1]:%d" % dead, **SLOW)
        c = self.connect(self.d)
        self.ids = []
        for i in range(3):
            r, qid = c.send_message(SENDER, [RCPT], message("planted %d" % i), ehlo=(i == 0))
            self.assertQueued(r, qid)
            self.ids.append(qid)
        c.cmd("QUIT")
        spool = self.d.spool
        self.assertTrue(wait_until(lambda: all(
            os.path.exists(os.path.join(spool, "deferred", q)) and
            os.path.exists(os.path.join(spool, "defer", q)) for q in self.ids), 30),
            self.d.queue())
        self.d.stop()
        self.outside = os.path.join(self.tmp, "outside")
        os.makedirs(self.outside, mode=0o755)

    def plant(self, link, target):
        """Replaces link (in the spool) with a symlink to target, owned by the spool's owner
        (as a compromised worker would leave it)."""
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)
        os.lchown(link, self.pw.pw_uid, self.pw.pw_gid)

    def root_file(self, name, text):
        p = os.path.join(self.outside, name)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, 0o600)
        os.utime(p, (1000000000, 1000000000))
        return p

    def test_planted_symlinks(self):
        spool, (a, b, c) = self.d.spool, self.ids
        secret = self.root_file("secret", "attempts\t1\nwarned\t0\nerror\t0\tTOP-SECRET\n")
        victim = self.root_file("victim", "root's own file\n")
        # a deferral status that leads out of the spool: never read
        self.plant(os.path.join(spool, "defer", a), secret)
        r = self.d.ctl("queue", "--json", check=False)
        self.assertNotIn("TOP-SECRET", r.stdout + r.stderr)
        # a queue file that leads out: not shown, not touched, not moved
        self.plant(os.path.join(spool, "deferred", b), victim)
        r = self.d.ctl("show", b, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertNotIn("root's own file", r.stdout)
        for verb in ("flush", "hold", "delete"):
            r = self.d.ctl(verb, b, check=False)
            self.assertNotEqual(r.returncode, 0, "%s of a symlink succeeded: %s" % (verb, r))
            self.assertIn(b, r.stdout + r.stderr)
            self.assertTrue(os.path.islink(os.path.join(spool, "deferred", b)))
        self.assertEqual(os.stat(victim).st_mtime, 1000000000)
        with open(victim) as f:
            self.assertEqual(f.read(), "root's own file\n")
        # the lock as a symlink: to a file that does not exist, then to root's file
        lock = os.path.join(spool, "qmgr.lock")
        absent = os.path.join(self.outside, "created-by-sorterctl")
        for target in (absent, victim):
            self.plant(lock, target)
            r = self.d.ctl("hold", c, check=False)
            self.assertNotEqual(r.returncode, 0, r)
            self.assertIn("qmgr.lock", r.stderr)
            self.assertFalse(os.path.lexists(absent), "sorterctl created a file through the lock")
            self.assertTrue(os.path.exists(os.path.join(spool, "deferred", c)), "acted anyway")
        # no lock at all: not created
        os.unlink(lock)
        r = self.d.ctl("hold", c, check=False)
        self.assertNotEqual(r.returncode, 0, r)
        self.assertFalse(os.path.lexists(lock), "sorterctl created the lock")
        # a lock the spool's owner made: the same command works, and leaves nothing of root's
        with open(lock, "w"):
            pass
        os.chown(lock, self.pw.pw_uid, self.pw.pw_gid)
        self.d.ctl("hold", c)
        self.assertTrue(os.path.exists(os.path.join(spool, "hold", c)))
        self.d.ctl("release", c)
        r = self.d.ctl("queue", check=False)      # lists the rest, reports the symlink
        self.assertIn(c, r.stdout)
        line = [l for l in r.stdout.splitlines() if l.startswith(b)]
        self.assertEqual(len(line), 1, r.stdout)
        self.assertIn("corrupt", line[0])
        self.assertIn("a symbolic link, not a queue file", line[0])
        self.assertEqual(root_owned(spool), [])
        self.assertEqual(sorted(os.listdir(self.outside)), ["secret", "victim"])


if __name__ == "__main__":
    unittest.main()
