"""test_pair.py - two sorters behind one name (contrib/pair), a real sender finding them
through DNS, one of them killed with kill -9 under load and started again, and HAProxy in
front of both with PROXY v2.

contrib/pair starts, under the test's temp dir: a slapd holding the users (user0..user49,
alice, bob), aliases and nodes; two Dovecot LMTP nodes; dnsmasq with example.test MX
mx.example.test = 127.0.0.2, 127.0.0.3; sorter1 on 127.0.0.2 and sorter2 on 127.0.0.3 (same
port), whose maps are ldap: maps over that directory; and HAProxy in front of both. The
sender is a third sorterd whose dns_servers is that dnsmasq and whose local domain is not
example.test, so it delivers there by MX.

Proved: every message the sender got a 250 for (and so every one either sorter
acknowledged) reaches its mailbox, duplicates only for what was in flight at the kill; the
spool of the killed sorter is delivered after its restart; the sender's sessions move to
the survivor while the other is down. The figures (sent, acknowledged, delivered,
duplicated, time to move over) are printed to stderr.
"""

import glob
import os
import re
import signal
import subprocess
import sys
import time
import unittest

import threading

from harness import (SANITIZER_RE, Client, SorterTestCase, build_dir, children_of, join_all,
                     message, pid_alive, wait_until, write_map)

PAIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "contrib", "pair")
SUBJECT_RE = re.compile(r"^Subject: (.*)$", re.M)


USERS = 50
CONNS, PER = 6, 100             # 600 messages into the sender


def load(port, connections, per_connection):
    """Like harness.blast, to relay.test users (the sender's aliases for the pair's users):
    connections threads each sending per_connection messages, subject "blast N I". Returns
    (threads, acked, errors), filled as they run; an id is in acked once its 250 came."""
    acked, errors = [], []
    lock = threading.Lock()

    def one(n):
        try:
            with Client(port, timeout=60) as c:
                if c.reply().code != 220 or c.ehlo().code != 250:
                    raise AssertionError("no greeting")
                for i in range(per_connection):
                    r, qid = c.send_message("sender@remote.test", ["user%d@relay.test" % (i % USERS)],
                                            message("blast %d %d" % (n, i), "x" * 512), ehlo=False)
                    if qid is None:
                        raise AssertionError("message %d/%d: %s" % (n, i, r))
                    with lock:
                        acked.append(qid)
                c.cmd("QUIT")
        except Exception as e:  # noqa: BLE001 - reported to the caller
            with lock:
                errors.append("connection %d: %r" % (n, e))

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in range(connections)]
    for t in threads:
        t.start()
    return threads, acked, errors


class PairTest(SorterTestCase):
    """One pair for the class (starting and stopping it takes seconds): each test starts
    with both sorters running and their spools empty, and looks only at its own messages
    (by subject) and at counters relative to its start."""

    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.cls_tmp = tempfile.mkdtemp(prefix="sorter-pair-")
        cls.dir = os.path.join(cls.cls_tmp, "pair")
        r = subprocess.run(["sh", PAIR, "start", cls.dir, build_dir()], capture_output=True,
                           text=True, timeout=180)
        if r.returncode != 0:
            cls.stop_pair()
            raise AssertionError("contrib/pair start: exit %d\n%s%s"
                                 % (r.returncode, r.stdout, r.stderr))
        cls.env = {}
        with open(os.path.join(cls.dir, "pair.env")) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                cls.env[k] = v
        cls.smtp_port = int(cls.env["SMTP_PORT"])

    @classmethod
    def tearDownClass(cls):
        cls.stop_pair()

    @classmethod
    def stop_pair(cls):
        subprocess.run(["sh", PAIR, "stop", cls.dir], capture_output=True, timeout=120)
        bad = []
        for n in (1, 2):
            bad += ["sorter%d: %s" % (n, l) for l in cls.sorter_log(n).splitlines()
                    if SANITIZER_RE.search(l)]
        if not os.environ.get("SORTER_KEEP_TMP"):
            import shutil
            shutil.rmtree(cls.cls_tmp, ignore_errors=True)
        if bad:
            raise AssertionError("sanitizer reports in the pair:\n%s" % "\n".join(bad))

    def setUp(self):
        # a sorter the test before killed runs again, and nothing is left in the spools
        for n in (1, 2):
            pid = self.master_pid(n)
            if not pid_alive(pid):
                # contrib/pair sees a master killed with kill -9 until it is reaped
                self.assertTrue(wait_until(lambda: not os.path.exists("/proc/%d" % pid), 30),
                                "sorter%d's dead master %d is never reaped" % (n, pid))
                r = subprocess.run(["sh", PAIR, "start-sorter", self.dir, str(n)],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(wait_until(lambda: not self.spool_ids(1) and not self.spool_ids(2), 60),
                        self.logs())

    # ---- the pair ----
    def conf(self, n):
        return os.path.join(self.dir, "sorter%d" % n, "sorter.conf")

    @classmethod
    def sorter_log(cls, n):
        try:
            with open(os.path.join(cls.dir, "sorter%d" % n, "sorterd.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def logs(self):
        return "\n".join("---- sorter%d ----\n%s" % (n, "\n".join(self.sorter_log(n).splitlines()[-30:]))
                         for n in (1, 2))

    def master_pid(self, n):
        with open(os.path.join(self.dir, "sorter%d" % n, "pid")) as f:
            return int(f.read().strip())

    def ctl(self, n, *args):
        return subprocess.run([os.path.join(build_dir(), "sorterctl"), "-c", self.conf(n)]
                              + list(args), capture_output=True, text=True, timeout=60)

    def messages_in(self, n):
        r = self.ctl(n, "stats")
        m = re.search(r"^messages_in (\d+)$", r.stdout, re.M)
        return int(m.group(1)) if m else None

    def spool_ids(self, n):
        ids = []
        for state in ("incoming", "active", "deferred", "hold"):
            ids += os.listdir(os.path.join(self.dir, "sorter%d" % n, "spool", state))
        return ids

    def delivered(self):
        """Every message in the nodes' Maildirs: [(subject, text)]."""
        out = []
        for p in glob.glob(os.path.join(self.dir, "node-*", "mail", "*", "Maildir", "*", "*")):
            if os.path.basename(os.path.dirname(p)) not in ("new", "cur"):
                continue
            try:
                with open(p, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except FileNotFoundError:
                continue
            m = SUBJECT_RE.search(text.replace("\r\n", "\n"))
            out.append((m.group(1).strip() if m else "", text))
        return out

    def kill9(self, n):
        """kill -9 of sorter n's master, then wait for its children: they exit on their own
        once the master is gone."""
        master = self.master_pid(n)
        kids = children_of(master)
        os.kill(master, signal.SIGKILL)
        self.assertTrue(wait_until(lambda: not pid_alive(master), 10))
        self.assertTrue(wait_until(lambda: not any(pid_alive(k) for k in kids), 15),
                        "children of sorter%d still alive after its master's death" % n)

    def sender(self, **extra):
        aliases = write_map(build_dir(), os.path.join(self.tmp, "relay-aliases"),
                            {"user%d@relay.test" % i: "user%d@example.test" % i
                             for i in range(USERS)})
        return self.sorterd("sender", local_domains="relay.test", alias_map=aliases,
                            dns_servers="127.0.0.1:%s" % self.env["DNS_PORT"],
                            smtp_port=self.smtp_port, smtp_tls_security_level="none",
                            queue_run_delay=1, minimal_backoff_time=1, maximal_backoff_time=2,
                            smtp_destination_concurrency_limit=5, endpoint_dead_time=30,
                            **extra)

    # ---- the tests ----
    def test_kill9_one_sorter_under_load(self):
        s = self.sender()
        base1, base2 = self.messages_in(1), self.messages_in(2)
        self.assertIsNotNone(base1)
        self.assertIsNotNone(base2)
        threads, acked, errors = load(s.port, connections=CONNS, per_connection=PER)
        # both sorters take mail before the kill
        self.assertTrue(wait_until(lambda: (self.messages_in(1) or 0) >= base1 + 60 and
                                   (self.messages_in(2) or 0) >= base2 + 60, 60, 0.02),
                        "the pair took no load:\n" + s.log_tail() + self.logs())
        before2 = self.messages_in(2)
        self.kill9(1)
        t_kill = time.monotonic()
        in_spool = self.spool_ids(1)
        # the sender's sessions move to the survivor: it takes the whole load meanwhile
        self.assertTrue(wait_until(lambda: (self.messages_in(2) or 0) > before2 + 20, 30, 0.02),
                        s.log_tail())
        time.sleep(max(0, 3 - (time.monotonic() - t_kill)))
        taken_alone = self.messages_in(2) - before2
        sent_before_restart = len(s.log_lines(r"status=sent"))
        r = subprocess.run(["sh", PAIR, "start-sorter", self.dir, "1"], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(join_all(threads, 180), "blast did not finish")
        self.assertEqual(errors, [], "the sender itself refused mail: %s" % errors[:3])
        self.assertEqual(len(acked), CONNS * PER)
        # everything acknowledged is delivered: the sender's queue, then the pair's empty
        self.assertTrue(s.wait_queue_empty(180), s.log_tail())
        self.assertTrue(wait_until(lambda: not self.spool_ids(1) and not self.spool_ids(2), 120),
                        self.logs())
        got = {}
        for subject, text in self.delivered():
            if subject.startswith("blast "):
                got.setdefault(subject, []).append(text)
        want = {"blast %d %d" % (n, i) for n in range(CONNS) for i in range(PER)}
        missing = sorted(want - set(got))
        self.assertEqual(missing, [], "acknowledged but never delivered")
        dups = sum(len(v) - 1 for v in got.values())
        # what sorter1 had acknowledged when it died was delivered after its restart
        texts = "\n".join(t for v in got.values() for t in v)
        lost = [q for q in in_spool if "id %s" % q not in texts]
        self.assertEqual(lost, [], "sorter1's spool at the kill was not delivered")
        # duplicates only for what was in flight: sorter1's spool then, and the sender's
        # transactions under way (its concurrency limit)
        self.assertLessEqual(dups, len(in_spool) + 5)
        delays = [float(m) for m in re.findall(r"delay=([0-9.]+), dsn=2", s.log())]
        deferred = s.log_lines(r"status=deferred")
        sys.stderr.write("\npair: sent %d, acknowledged %d, delivered %d distinct (%d files), "
                         "duplicated %d; sorter1 held %d in its spool at the kill; sorter2 "
                         "took %d messages alone in the 3 s sorter1 was down (the sender "
                         "relayed %d by then); %d sender attempts deferred by the kill; the "
                         "longest sender delay %.2f s\n"
                         % (CONNS * PER, len(acked), len(got), sum(len(v) for v in got.values()), dups,
                            len(in_spool), taken_alone, sent_before_restart, len(deferred),
                            max(delays) if delays else 0.0))

    def test_haproxy_front_passes_the_client(self):
        front = int(self.env["FRONT_PORT"])

        def send(source, tag):
            with Client(front, source=source) as c:
                r = c.reply()
                self.assertEqual(r.code, 220, str(r))
                r, qid = c.send_message("x@remote.test", ["bob@example.test"],
                                        "Subject: %s\r\n\r\nbody" % tag)
                self.assertQueued(r, qid)
            return qid

        for i in range(4):
            send("127.0.0.5", "front %d" % i)
        # round robin: both sorters saw the real client in the header
        for n in (1, 2):
            self.assertTrue(wait_until(lambda: re.search(
                r"PROXY v2 from \[127\.0\.0\.1\]: client \[127\.0\.0\.5\]", self.sorter_log(n)), 10),
                self.logs())
        self.assertTrue(wait_until(lambda: len([s for s, _ in self.delivered()
                                                if s.startswith("front ")]) == 4, 30), self.logs())
        for subject, text in self.delivered():
            if subject.startswith("front "):
                self.assertRegex(text, r"Received: from \S+ \(\[127\.0\.0\.5\]\)")
        # one sorter dies: the front sends every new client to the other
        self.kill9(2)
        for i in range(4):
            send("127.0.0.6", "after %d" % i)
        self.assertTrue(wait_until(lambda: len([s for s, _ in self.delivered()
                                                if s.startswith("after ")]) == 4, 30), self.logs())
        self.assertTrue(re.search(r"client \[127\.0\.0\.6\]", self.sorter_log(1)), self.logs())


if __name__ == "__main__":
    unittest.main()
