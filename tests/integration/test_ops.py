"""test_ops.py - running Sorter for years: Prometheus metrics scraped during real deliveries
to two Dovecot nodes and checked against what was sent and what the nodes got (and by
promtool), the log sinks (a file reopened on SIGHUP, syslog with its facility) and the
guarantee that a stalled sink costs log lines, never mail, the systemd notify protocol and
unit, the manual pages, and queue selection in sorterctl with the daemon up and down.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

from harness import (Client, SorterTestCase, blast, build_dir, fd_links, free_port, freeze,
                     join_all, listener_inode, listening, message, pid_alive, wait_until,
                     write_map)
from test_delivery import (ALICE, BOB, CAROL, GHOST, SENDER, SLOW, FAST, WAIT,
                           DeliveryTestCase, token)
from test_tls import make_cert

SRCDIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# ---- the exposition ----

def scrape(port, path="/metrics", method="GET"):
    """(status, headers, body) of one HTTP request to the metrics port."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode(errors="replace")


def parse(body):
    """{(name, frozenset of (label, value)): float} of every sample; asserts the syntax."""
    out = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise AssertionError("not a sample line: %r" % line)
        labels = frozenset(LABEL_RE.findall(m.group(3) or ""))
        key = (m.group(1), labels)
        if key in out:
            raise AssertionError("series twice: %r" % line)
        out[key] = float(m.group(4))
    return out


def value(samples, name, **labels):
    """The value of the one series name{labels}; 0 when absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples, name, **labels):
    """The sum over the series of name whose labels include labels."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def promtool_check(test, body):
    tool = shutil.which("promtool")
    test.assertIsNotNone(tool, "promtool is not installed (contrib/setup.sh installs prometheus)")
    r = subprocess.run([tool, "check", "metrics"], input=body, capture_output=True, text=True,
                       timeout=60)
    test.assertEqual(r.returncode, 0, "promtool check metrics:\n%s%s" % (r.stdout, r.stderr))
    test.assertEqual((r.stdout + r.stderr).strip(), "", "promtool has remarks")


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def child_holding(d, target):
    """The child of d that has target (a path, or "socket:[inode]") open."""
    for k in d.children():
        if target in fd_links(k):
            return k
    return None


def dashboard_exprs():
    with open(os.path.join(SRCDIR, "contrib", "grafana", "sorter.json")) as f:
        dash = json.load(f)
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def dashboard_metrics():
    return sorted({m for e in dashboard_exprs() for m in re.findall(r"\bsorter_[a-z_]+", e)})


class DashboardTest(unittest.TestCase):
    def test_queries_parse(self):
        """promtool parses every query of contrib/grafana/sorter.json (as recording rules,
        with Grafana's variables filled in)."""
        tool = shutil.which("promtool")
        self.assertIsNotNone(tool, "promtool is not installed")
        exprs = dashboard_exprs()
        self.assertGreater(len(exprs), 15)
        tmp = tempfile.mkdtemp(prefix="sorter-it-dash-")
        self.addCleanup(shutil.rmtree, tmp, True)
        rules = os.path.join(tmp, "rules.yml")
        with open(rules, "w") as f:
            f.write("groups:\n- name: dashboard\n  rules:\n")
            for i, e in enumerate(exprs):
                e = e.replace("$__rate_interval", "5m").replace("$instance", ".*")
                f.write("  - record: dashboard:q%d\n    expr: %s\n" % (i, json.dumps(e)))
        r = subprocess.run([tool, "check", "rules", rules], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


class MetricsTest(DeliveryTestCase):
    """Mail to two nodes, a bounce, a rejected message; /metrics against all of it."""

    def start(self, **overrides):
        self.mport = free_port()
        return self.start_sorterd(metrics_listen="127.0.0.1:%d" % self.mport, **overrides)

    def metrics(self):
        status, headers, body = scrape(self.mport)
        self.assertEqual(status, 200, body)
        self.assertTrue(headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"),
                        headers)
        return body, parse(body)

    def test_counters_match_the_mail(self):
        d = self.start()
        listener = "127.0.0.1:%d" % d.port
        alice = [token("a%d" % i) for i in range(3)]
        bob = [token("b%d" % i) for i in range(2)]
        ghost = token("g")
        for t in alice:
            self.send(ALICE, t)
        for t in bob:
            self.send(BOB, t)
        self.send(GHOST, ghost)            # node A answers 550: a bounce, a DSN to SENDER
        # one message refused at the end of DATA (bare LF), one session that sends nothing
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % ALICE), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: x\r\n\r\nbare\nLF\r\n.\r\n")
        self.assertReply(c.reply(), 554, "5.6.0")
        c.cmd("QUIT")
        c.close()
        for t in alice:
            self.wait_delivered(self.node_a, "alice", t)
        for t in bob:
            self.wait_delivered(self.node_b, "bob", t)
        self.wait_delivered(self.node_a, "sender", "Undelivered")
        self.wait_queue_empty()

        body, s = self.metrics()
        promtool_check(self, body)
        lab = {"listener": listener, "role": "mx"}
        self.assertEqual(value(s, "sorter_smtpd_sessions_total", **lab), 7)
        self.assertEqual(value(s, "sorter_smtpd_messages_accepted_total", **lab), 6)
        self.assertEqual(value(s, "sorter_smtpd_messages_rejected_total", reason="bare_cr_lf",
                               **lab), 1)
        self.assertEqual(value(s, "sorter_smtpd_messages_rejected_total", reason="size", **lab),
                         0)
        # the bytes are the sizes the log reported for each queued message
        sizes = [int(m) for m in re.findall(r"smtpd\[\d+\]: [0-9A-Z]{12}: from=<[^>]*>, size=(\d+)",
                                            d.log())]
        self.assertEqual(len(sizes), 6, d.log_tail())
        self.assertEqual(value(s, "sorter_smtpd_message_bytes_total", **lab), sum(sizes))
        # every session has ended; nothing waits
        wait_until(lambda: value(parse(scrape(self.mport)[2]), "sorter_smtpd_sessions", **lab)
                   == 0, 10)
        body, s = self.metrics()
        self.assertEqual(value(s, "sorter_smtpd_sessions", **lab), 0)
        for state in ("incoming", "active", "deferred", "hold"):
            self.assertEqual(value(s, "sorter_queue_messages", state=state), 0, state)
        self.assertEqual(value(s, "sorter_queue_oldest_message_age_seconds"), 0)

        # deliveries against what the nodes received: alice x3 and the DSN on A, bob x2 on B
        on_a = len(self.node_a.maildir_messages("alice")) + len(
            self.node_a.maildir_messages("sender"))
        on_b = len(self.node_b.maildir_messages("bob"))
        self.assertEqual((on_a, on_b), (4, 2))
        self.assertEqual(value(s, "sorter_deliveries_total", transport="lmtp", node="node-a",
                               result="delivered"), on_a)
        self.assertEqual(value(s, "sorter_deliveries_total", transport="lmtp", node="node-b",
                               result="delivered"), on_b)
        self.assertEqual(value(s, "sorter_deliveries_total", transport="lmtp", node="node-a",
                               result="bounced"), 1)
        self.assertEqual(total(s, "sorter_deliveries_total", result="deferred"), 0)
        self.assertEqual(value(s, "sorter_delivery_duration_seconds_count", node="node-a"), 5)
        self.assertEqual(value(s, "sorter_delivery_duration_seconds_count", node="node-b"), 2)
        self.assertEqual(value(s, "sorter_delivery_duration_seconds_bucket", node="node-b",
                               le="+Inf"), 2)
        self.assertGreater(value(s, "sorter_delivery_duration_seconds_sum", node="node-b"), 0)
        # six messages and the DSN were committed to the spool
        self.assertEqual(value(s, "sorter_spool_commit_duration_seconds_count"), 7)
        # user_map was asked at RCPT time (workers) and at delivery (queue manager)
        um = "hash:" + os.path.join(self.maps, "user_map")
        self.assertGreaterEqual(value(s, "sorter_map_lookups_total", map=um), 13)
        self.assertEqual(value(s, "sorter_map_errors_total", map=um), 0)
        self.assertEqual(value(s, "sorter_map_lookup_duration_seconds_count", map=um),
                         value(s, "sorter_map_lookups_total", map=um))
        self.assertEqual(value(s, "sorter_log_lines_dropped_total"), 0)
        self.assertEqual(value(s, "sorter_build_info", version="0.1.0"), 1)
        # every series the dashboard asks for exists
        families = set(re.findall(r"(?m)^# TYPE (\S+) ", body))
        for name in dashboard_metrics():
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            self.assertTrue(name in families or base in families, name)

    def test_deferred_mail_and_restarts(self):
        """Node B down: bob's mail shows as deferred with an age; a worker killed by -9 is
        replaced and the counters do not go back."""
        self.node_b.stop()
        d = self.start(timers=SLOW)
        qids = [self.send(BOB, token("b%d" % i)) for i in range(2)]
        for q in qids:
            self.assertTrue(wait_until(lambda q=q: os.path.exists(
                os.path.join(d.spool, "deferred", q)), WAIT), q)
        time.sleep(1.1)
        body, s = self.metrics()
        promtool_check(self, body)
        self.assertEqual(value(s, "sorter_queue_messages", state="deferred"), 2)
        self.assertGreater(value(s, "sorter_queue_bytes", state="deferred"), 0)
        self.assertGreaterEqual(value(s, "sorter_queue_oldest_message_age_seconds"), 1)
        self.assertEqual(value(s, "sorter_deliveries_total", transport="lmtp", node="node-b",
                               result="deferred"), 2)
        before = value(s, "sorter_smtpd_sessions_total", listener="127.0.0.1:%d" % d.port,
                       role="mx")
        # kill -9 a worker (one that holds the SMTP listener) and the metrics process
        inode = listener_inode(d.port)
        worker = child_holding(d, "socket:[%s]" % inode)
        mproc = child_holding(d, "socket:[%s]" % listener_inode(self.mport))
        self.assertIsNotNone(worker)
        self.assertIsNotNone(mproc)
        os.kill(worker, signal.SIGKILL)
        os.kill(mproc, signal.SIGKILL)
        self.assertTrue(wait_until(lambda: not pid_alive(worker) and not pid_alive(mproc), 10))
        self.send(BOB, token("after"))
        got = wait_until(lambda: scrape(self.mport)[0] == 200 and scrape(self.mport)[2], 10)
        self.assertTrue(got, "the metrics process was not restarted")
        s = parse(got)
        self.assertEqual(value(s, "sorter_smtpd_sessions_total", listener="127.0.0.1:%d" % d.port,
                               role="mx"), before + 1)

    def test_http_surface(self):
        self.start()
        for path in ("/", "/metrics/", "/metricsx", "/foo", "/../metrics"):
            self.assertEqual(scrape(self.mport, path)[0], 404, path)
        for method in ("POST", "PUT", "DELETE", "HEAD", "OPTIONS"):
            status, headers, _ = scrape(self.mport, method=method)
            self.assertEqual(status, 405, method)
            self.assertEqual(headers.get("Allow"), "GET", method)
        self.assertEqual(scrape(self.mport, "/metrics?x=1")[0], 200)
        # garbage is answered or closed, and the server goes on
        with socket.create_connection(("127.0.0.1", self.mport), timeout=10) as sk:
            sk.sendall(b"\x00\x01GARBAGE\r\n\r\n")
            try:
                sk.recv(4096)
            except OSError:
                pass
        self.assertEqual(scrape(self.mport)[0], 200)

    def test_off_by_default(self):
        d = self.start_sorterd()
        # no metrics process: the master's children are the two workers and the queue manager
        live = lambda: [k for k in d.children() if pid_alive(k)]
        self.assertTrue(wait_until(lambda: len(live()) == 3, 10), live())
        time.sleep(1)
        self.assertEqual(len(live()), 3, live())
        body = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
        self.assertEqual([l for l in body.splitlines()
                          if any("pid=%d," % k in l for k in [d.pid] + live())
                          and ":%d " % d.port not in l], [], "a listener besides SMTP")


@unittest.skipUnless(shutil.which("openssl"), "openssl not installed")
class TLSMetricsTest(SorterTestCase):
    def test_handshakes(self):
        tmp = tempfile.mkdtemp(prefix="sorter-it-ops-")
        self.addCleanup(shutil.rmtree, tmp, True)
        cert, key = make_cert(tmp)
        mport = free_port()
        d = self.sorterd(tls_cert_file=cert, tls_key_file=key,
                         metrics_listen="127.0.0.1:%d" % mport)
        c = self.connect(d)
        c.ehlo()
        self.assertReply(c.starttls(), 220)
        version = c.sock.version()
        c.ehlo()
        c.cmd("QUIT")
        c.close()
        bad = self.connect(d)
        bad.ehlo()
        self.assertReply(bad.cmd("STARTTLS"), 220)
        bad.send(b"\x16\x03\x01\x00\x05this is no client hello\r\n" * 4)
        self.assertTrue(bad.closed(10))
        ok = wait_until(lambda: total(parse(scrape(mport)[2]),
                                      "sorter_tls_handshake_failures_total", side="server") == 1,
                        10)
        s = parse(scrape(mport)[2])
        self.assertTrue(ok, s)
        self.assertEqual(value(s, "sorter_tls_handshakes_total", side="server", version=version), 1)
        self.assertEqual(total(s, "sorter_tls_handshakes_total"), 1)


class MilterMetricsTest(SorterTestCase):
    """Each milter's replies are counted under its name; a milter that cannot be reached
    counts as an error."""

    def test_verdicts(self):
        import test_milter
        from milters import milter_missing
        missing = milter_missing()
        if missing:
            self.skipTest(missing)
        f = test_milter.TestFilter(os.path.join(self.tmp, "filter"), "A")
        f.start()
        self.addCleanup(f.stop)
        dead = "inet:127.0.0.1:%d" % free_port()
        mport = free_port()
        d = self.sorterd(smtpd_milters="%s, {%s,default_action=accept}" % (f.spec, dead),
                         metrics_listen="127.0.0.1:%d" % mport)
        c = self.connect(d)
        r, qid = c.send_message("mail-accept@remote.test", ["x@example.test"], message())
        self.assertReply(r, 250)
        r, qid = c.send_message("a@remote.test", ["rcpt-discard@example.test"], message(),
                                ehlo=False)
        self.assertReply(r, 250)
        # a refusal at the end of the message counts as a rejected message, reason milter
        r, qid = c.send_message("a@remote.test", ["x@example.test"],
                                message(extra_headers=("X-Test-Milter: reject",)), ehlo=False)
        self.assertEqual(r.code // 100, 5, r)
        c.cmd("QUIT")
        s = parse(scrape(mport)[2])
        self.assertEqual(total(s, "sorter_smtpd_messages_rejected_total", reason="milter"), 1, s)
        self.assertEqual(value(s, "sorter_milter_results_total", milter=f.spec, result="accept"),
                         1, s)
        self.assertEqual(value(s, "sorter_milter_results_total", milter=f.spec,
                               result="discard"), 1)
        self.assertGreater(value(s, "sorter_milter_results_total", milter=f.spec,
                                 result="continue"), 0)
        self.assertGreaterEqual(value(s, "sorter_milter_results_total", milter=dead,
                                      result="error"), 1)
        self.assertEqual(total(s, "sorter_milter_results_total", milter=dead), total(
            s, "sorter_milter_results_total", milter=dead, result="error"))


# ---- logging ----

class LogFileTest(SorterTestCase):
    def logger_pid(self, d, path):
        return wait_until(lambda: child_holding(d, path), 10)

    def test_file_and_reopen(self):
        path = os.path.join(self.tmp, "mail.log")
        d = self.sorterd(log=path)
        r, qid = self.connect(d).send_message("a@remote.test", ["x@example.test"], message())
        self.assertReply(r, 250)
        line = wait_until(lambda: [l for l in read(path).splitlines()
                                   if "%s: from=<a@remote.test>" % qid in l], 10)
        self.assertTrue(line, read(path))
        # each line: RFC 3339 local time with microseconds, then the process
        self.assertRegex(line[0], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d "
                                  r"sorterd/smtpd\[\d+\]: ")
        # the writer runs as the unprivileged user and holds the file; stderr stays quiet
        writer = self.logger_pid(d, path)
        self.assertIsNotNone(writer)
        self.assertNotIn(qid, d.log())
        # logrotate: move the file, SIGHUP, the new file gets the new lines
        os.rename(path, path + ".1")
        d.reload()
        self.assertTrue(wait_until(lambda: os.path.exists(path), 10), "not reopened")
        r, qid2 = self.connect(d).send_message("b@remote.test", ["x@example.test"], message())
        self.assertReply(r, 250)
        self.assertTrue(wait_until(lambda: qid2 in read(path), 10), read(path))
        self.assertIn(qid, read(path + ".1"))
        self.assertNotIn(qid2, read(path + ".1"))
        self.assertTrue(wait_until(lambda: not pid_alive(writer), 10), "old writer still there")
        d.stop()
        self.assertIn("stopped", read(path).splitlines()[-1])

    def test_stalled_file_loses_lines_not_mail(self):
        """The writer stopped (a disk that hangs): mail is accepted at full speed, lines are
        dropped and counted, and said once the writer runs again."""
        path = os.path.join(self.tmp, "mail.log")
        mport = free_port()
        d = self.sorterd(log=path, metrics_listen="127.0.0.1:%d" % mport,
                         smtpd_client_connection_limit=100)
        writer = self.logger_pid(d, path)
        self.assertIsNotNone(writer)
        freeze(writer)
        try:
            t0 = time.monotonic()
            threads, acked, errors = blast(d.port, 10, 150, timeout=60)
            done = join_all(threads, 90)
            took = time.monotonic() - t0
        finally:
            os.kill(writer, signal.SIGCONT)
        self.assertTrue(done, "the sessions did not finish")
        self.assertEqual(errors, [])
        self.assertEqual(len(acked), 1500)
        self.assertLess(took, 60)
        s = parse(scrape(mport)[2])
        dropped = value(s, "sorter_log_lines_dropped_total")
        self.assertGreater(dropped, 0, "the socket never filled: nothing was dropped")
        # a process's next line that gets through says how many it lost: one more message
        # makes the queue manager, which logged every message, log again (a connection
        # alone may land on a worker that had nothing to drop)
        threads, acked, errors = blast(d.port, 1, 1, timeout=30)
        self.assertTrue(join_all(threads, 30), "the last message's session did not finish")
        self.assertEqual((len(acked), errors), (1, []))
        said = wait_until(lambda: re.findall(r"warning: (\d+) log lines dropped", read(path)),
                          15)
        self.assertTrue(said, read(path)[-2000:])
        self.assertLessEqual(sum(int(n) for n in said), dropped)


class SyslogTest(SorterTestCase):
    def syslog_socket(self):
        path = os.path.join(self.tmp, "dev-log")
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sk.bind(path)
        self.addCleanup(sk.close)
        return path, sk

    def read_all(self, sk, wait=0.5):
        out = []
        sk.settimeout(wait)
        while True:
            try:
                out.append(sk.recv(65536).decode(errors="replace"))
            except socket.timeout:
                return out

    def test_facility_and_stall(self):
        path, sk = self.syslog_socket()
        d = self.sorterd(log="syslog", syslog_socket=path, syslog_facility="local3")
        r, qid = self.connect(d).send_message("a@remote.test", ["x@example.test"], message())
        self.assertReply(r, 250)
        got = [l for l in self.read_all(sk, 1) if qid + ": from=" in l]
        self.assertTrue(got)
        # local3 (19) * 8 + info (6)
        self.assertTrue(got[0].startswith("<158>sorterd/smtpd["), got[0])
        # nobody reads: the socket's queue fills, the mail goes on
        t0 = time.monotonic()
        for i in range(30):
            r, _ = self.connect(d).send_message("a@remote.test", ["x@example.test"], message())
            self.assertReply(r, 250)
        self.assertLess(time.monotonic() - t0, 30)
        self.read_all(sk)
        self.connect(d).cmd("QUIT")
        warn = [l for l in self.read_all(sk, 2) if "log lines dropped" in l]
        self.assertTrue(warn, "no line said that lines were dropped")
        self.assertTrue(warn[0].startswith("<156>"), warn[0])   # local3 warning


# ---- systemd ----

class NotifyTest(SorterTestCase):
    def notify_socket(self, name):
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if name.startswith("@"):
            sk.bind("\0" + name[1:])
        else:
            sk.bind(name)
        sk.settimeout(15)
        self.addCleanup(sk.close)
        return sk

    def start_notified(self, where, **overrides):
        old = os.environ.get("NOTIFY_SOCKET")
        os.environ["NOTIFY_SOCKET"] = where
        try:
            return self.sorterd(**overrides)
        finally:
            if old is None:
                del os.environ["NOTIFY_SOCKET"]
            else:
                os.environ["NOTIFY_SOCKET"] = old

    def expect(self, sk, state):
        """The next notification; it must carry state ("READY=1", ...)."""
        msg = sk.recv(4096).decode()
        fields = msg.split("\n")
        self.assertIn(state, fields, msg)
        return fields

    def check_protocol(self, where):
        sk = self.notify_socket(where)
        d = self.start_notified(where)
        fields = self.expect(sk, "READY=1")
        self.assertIn("MAINPID=%d" % d.pid, fields)
        self.assertTrue(listening(d.port))
        d.reload()
        fields = self.expect(sk, "RELOADING=1")
        self.assertTrue([f for f in fields if re.match(r"MONOTONIC_USEC=\d+$", f)], fields)
        self.expect(sk, "READY=1")
        # a reload that fails still ends with READY=1 (systemd would wait otherwise)
        with open(d.conf_path, "a") as f:
            f.write("no_such_key = 1\n")
        os.kill(d.pid, signal.SIGHUP)
        self.expect(sk, "RELOADING=1")
        self.expect(sk, "READY=1")
        os.kill(d.pid, signal.SIGTERM)
        self.expect(sk, "STOPPING=1")
        self.assertEqual(d.stop(), 0)

    def test_path_socket(self):
        self.check_protocol(os.path.join(self.tmp, "notify"))

    def test_abstract_socket(self):
        self.check_protocol("@sorter-it-notify-%d" % os.getpid())


class UnitFileTest(unittest.TestCase):
    def test_systemd_analyze_verify(self):
        tool = shutil.which("systemd-analyze")
        self.assertIsNotNone(tool, "systemd-analyze is not installed (contrib/setup.sh)")
        tmp = tempfile.mkdtemp(prefix="sorter-it-unit-")
        self.addCleanup(shutil.rmtree, tmp, True)
        with open(os.path.join(SRCDIR, "contrib", "systemd", "sorterd.service.in")) as f:
            text = f.read()
        for key in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "ProtectSystem=strict",
                    "ReadWritePaths=/var/spool/sorter -/var/log/sorter", "NoNewPrivileges=yes",
                    "PrivateTmp=yes",
                    "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_CHOWN "
                    "CAP_KILL"):
            self.assertIn(key + "\n", text)
        unit = os.path.join(tmp, "sorterd.service")
        with open(unit, "w") as f:
            f.write(text.replace("@sbindir@", build_dir()).replace("@sysconfdir@", "/etc"))
        # Documentation=man:... is checked against these pages
        for page in os.listdir(os.path.join(SRCDIR, "man")):
            sect = os.path.join(tmp, "man", "man" + page.rsplit(".", 1)[1])
            os.makedirs(sect, exist_ok=True)
            shutil.copy(os.path.join(SRCDIR, "man", page), sect)
        env = dict(os.environ, MANPATH=os.path.join(tmp, "man"))
        r = subprocess.run([tool, "verify", unit], capture_output=True, text=True, env=env,
                           timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual((r.stdout + r.stderr).strip(), "", "systemd-analyze verify has remarks")


class ManualTest(unittest.TestCase):
    def test_mandoc_lint(self):
        tool = shutil.which("mandoc")
        self.assertIsNotNone(tool, "mandoc is not installed (contrib/setup.sh)")
        pages = [os.path.join(SRCDIR, "man", p) for p in sorted(os.listdir(
            os.path.join(SRCDIR, "man")))]
        for want in ("sorterd.8", "sorterctl.8", "sortermap.8", "sorter.conf.5"):
            self.assertIn(os.path.join(SRCDIR, "man", want), pages)
        r = subprocess.run([tool, "-T", "lint", "-W", "warning"] + pages, capture_output=True,
                           text=True, timeout=60)
        self.assertEqual((r.stdout + r.stderr).strip(), "", "mandoc -T lint")
        self.assertEqual(r.returncode, 0)


# ---- queue selection ----

REMOTE_SENDER = "someone@remote.test"


class SelectionTest(DeliveryTestCase):
    """Both nodes down and no retry within the test: messages stay deferred, to be selected.
    Each selector is checked with the daemon up (the queue manager selects and acts) and
    down (sorterctl does it under the lock)."""

    def setUp(self):
        super().setUp()
        self.node_a.stop()
        self.node_b.stop()

    def fill(self, late_after=6):
        """alice (node A) from s1, bob (node B) from s2, carol+bob from s1, then late_after s
        later bob from s3 (the age selectors need the 6 s; tests that select by no age
        send it at once). Returns {name: qid}."""
        d = self.start_sorterd(timers=SLOW)
        q = {"alice": self.send(ALICE, token("a"), sender="s1@example.test"),
             "bob": self.send(BOB, token("b"), sender="s2@example.test"),
             "both": self.send([CAROL, BOB], token("c"), sender="s1@example.test")}
        time.sleep(late_after)
        q["late"] = self.send(BOB, token("l"), sender="s3@example.test")
        self.t_late = time.time()
        for qid in q.values():
            self.assertTrue(wait_until(lambda qid=qid: os.path.exists(
                os.path.join(d.spool, "deferred", qid)), WAIT), qid)
        return q

    def listed(self, *selectors):
        r = self.d.ctl("queue", "--json", *selectors)
        return {m["id"] for m in json.loads(r.stdout)}

    def in_hold(self):
        return set(os.listdir(os.path.join(self.d.spool, "hold")))

    CASES = [
        (["--sender", "s1@*"], {"alice", "both"}),
        (["--sender=S2@EXAMPLE.TEST"], {"bob"}),
        (["--rcpt", "bob@*"], {"bob", "both", "late"}),
        (["--rcpt", "carol@example.test"], {"both"}),
        (["--node", "node-a"], {"alice", "both"}),
        (["--node", "node-b"], {"bob", "both", "late"}),
        (["--domain", "example.test"], {"alice", "bob", "both", "late"}),
        (["--domain", "*.org"], set()),
        (["--older-than", "2s"], {"alice", "bob", "both"}),
        (["--younger-than", "2s"], {"late"}),
        (["--sender", "s1@*", "--node", "node-b"], {"both"}),
    ]

    def ages(self, selectors):
        """The age selectors, made at the moment of use: "late" came at least 6 s after the
        others, so N s (N = its age rounded down + 4) lies between its age and theirs, with
        three seconds to spare for the commands of a case on a slow machine."""
        n = int(time.time() - self.t_late) + 4
        return [("%ds" % n) if a == "2s" else a for a in selectors]

    def check_cases(self, q):
        for selectors, names in self.CASES:
            selectors = self.ages(selectors)
            want = {q[n] for n in names}
            self.assertEqual(self.listed(*selectors), want, selectors)
            r = self.d.ctl("hold", *selectors, check=False)
            self.assertEqual(r.returncode, 0, (selectors, r.stdout, r.stderr))
            self.assertIn("%d message%s placed on hold" % (len(want), "" if len(want) == 1 else "s"),
                          r.stdout, selectors)
            self.assertEqual(self.in_hold(), want, selectors)
            self.assertEqual(self.listed("--state", "hold"), want, selectors)
            r = self.d.ctl("release", *selectors, check=False)
            self.assertEqual(r.returncode, 0, (selectors, r.stdout, r.stderr))
            self.assertIn("%d message%s released" % (len(want), "" if len(want) == 1 else "s"),
                          r.stdout, selectors)
            self.assertEqual(self.in_hold(), set(), selectors)
            # released mail is tried again (the nodes are down) and deferred again
            for qid in want:
                self.assertTrue(wait_until(lambda qid=qid: qid in self.listed("--state",
                                                                              "deferred"), WAIT)
                                if self.d.running() else True, qid)

    def test_selectors_daemon_up(self):
        q = self.fill()
        self.check_cases(q)

    def test_selectors_daemon_down(self):
        q = self.fill()
        self.d.stop()
        self.check_cases(q)
        # released with the daemon down: waiting in incoming/ for the next start
        self.assertEqual(self.listed("--state", "active"), set(q.values()))

    def check_states(self, q, released_state):
        everything = set(q.values())
        self.assertEqual(self.listed("--state", "deferred"), everything)
        self.assertEqual(self.listed("--state", "active,hold"), set())
        r = self.d.ctl("hold", "--sender", "s2@*", "--state", "deferred")
        self.assertIn("1 message placed on hold", r.stdout)
        self.assertEqual(self.listed("--state", "hold"), {q["bob"]})
        self.assertEqual(self.listed("--state", "active,hold"), {q["bob"]})
        self.assertEqual(self.listed("--state", "deferred"), everything - {q["bob"]})
        # release acts on held mail only, hold on mail not held yet
        r = self.d.ctl("release", "--state", "deferred")
        self.assertIn("0 messages released", r.stdout)
        r = self.d.ctl("hold", "--state", "hold")
        self.assertIn("0 messages placed on hold", r.stdout)
        r = self.d.ctl("release", "--state", "hold")
        self.assertIn("1 message released", r.stdout)
        # up: tried again at once and deferred again; down: waiting in incoming/
        want = everything if released_state == "deferred" else {q["bob"]}
        self.assertTrue(wait_until(lambda: self.listed("--state", released_state) == want, WAIT),
                        self.listed())

    def test_state_selector_daemon_up(self):
        self.check_states(self.fill(late_after=0), "deferred")

    def test_state_selector_daemon_down(self):
        q = self.fill(late_after=0)
        self.d.stop()
        # released with the daemon down: in incoming/, for the next start
        self.check_states(q, "active")

    def test_flush_and_delete_by_selector(self):
        q = self.fill()
        self.node_b.start()
        r = self.d.ctl("flush", "--node", "node-b", "--sender", "s2@*")
        self.assertIn("1 message to be retried", r.stdout)
        self.wait_delivered(self.node_b, "bob", "", timeout=WAIT)
        self.assertNotIn(q["bob"], self.listed())
        self.assertIn(q["late"], self.listed())           # not flushed: still waiting
        r = self.d.ctl("delete", *self.ages(["--younger-than", "2s"]))
        self.assertIn("1 message removed", r.stdout)
        self.assertEqual(self.listed(), {q["alice"], q["both"]})
        self.d.stop()
        r = self.d.ctl("delete", "--rcpt", "carol@*")
        self.assertIn("1 message removed", r.stdout)
        self.assertEqual(self.listed(), {q["alice"]})

    def test_bad_selectors(self):
        self.fill(late_after=0)
        for args, err in ((["queue", "--state", "bounced"], "is not active, deferred or hold"),
                          (["queue", "--older-than", "2x"], "is not an age"),
                          (["hold", "--sender"], "needs a value"),
                          (["hold", "--sender", "a", "1K0Y2Z6DVR71"], "not both"),
                          (["delete", "1K0Y2Z6DVR71", "--sender", "a"], "not both"),
                          (["queue", "--sender", ""], "empty pattern")):
            r = self.d.ctl(*args, check=False)
            self.assertEqual(r.returncode, 2, (args, r.stdout, r.stderr))
            self.assertIn(err, r.stderr, args)

    def test_summary(self):
        q = self.fill()
        self.d.ctl("hold", "--sender", "s3@*")
        out = json.loads(self.d.ctl("queue", "--summary", "--json").stdout)
        self.assertEqual(out["total"]["messages"], 4)
        self.assertEqual(out["total"]["recipients"], 5)
        self.assertEqual(out["states"]["deferred"]["messages"], 3)
        self.assertEqual(out["states"]["hold"]["messages"], 1)
        self.assertEqual(out["states"]["active"]["messages"], 0)
        self.assertEqual(out["nodes"]["node-a"], {**out["nodes"]["node-a"], "messages": 2,
                                                  "recipients": 2})
        self.assertEqual(out["nodes"]["node-b"]["messages"], 3)
        self.assertGreaterEqual(out["total"]["oldest_age"], 3)
        self.assertEqual(out["domains"], {})                # every recipient is local
        plain = self.d.ctl("queue", "--summary").stdout
        self.assertRegex(plain, r"(?m)^deferred +3 +4 ")
        self.assertRegex(plain, r"(?m)^node-b +3 +3 ")
        # with a selector: only what it picks
        out = json.loads(self.d.ctl("queue", "--summary", "--json", "--node", "node-a").stdout)
        self.assertEqual(out["total"]["messages"], 2)
        self.d.stop()
        out2 = json.loads(self.d.ctl("queue", "--summary", "--json", "--node", "node-a").stdout)
        self.assertEqual(out2["total"]["messages"], 2)


class RemoteDomainSummaryTest(DeliveryTestCase):
    def test_remote_domain(self):
        """A bounce to a remote sender waits for a next hop that refuses: the summary shows
        its domain, and --sender '<>' / --domain select it."""
        dead = free_port()
        transport = write_map(self.build, os.path.join(self.maps, "transport"),
                              {"remote.test": "smtp:[127.0.0.1]:%d" % dead})
        d = self.start_sorterd(timers=SLOW, transport_map=transport)
        self.send(GHOST, token("g"), sender=REMOTE_SENDER)
        dsn = wait_until(lambda: [m for m in d.queue() if m["sender"] == "" and
                                  m["state"] == "deferred"], WAIT)
        self.assertTrue(dsn, d.queue())
        out = json.loads(d.ctl("queue", "--summary", "--json").stdout)
        self.assertEqual(out["domains"]["remote.test"]["messages"], 1)
        ids = {m["id"] for m in json.loads(d.ctl("queue", "--json", "--sender", "<>").stdout)}
        self.assertEqual(ids, {dsn[0]["id"]})
        ids = {m["id"] for m in json.loads(d.ctl("queue", "--json", "--domain", "remote.test")
                                           .stdout)}
        self.assertEqual(ids, {dsn[0]["id"]})


if __name__ == "__main__":
    unittest.main()
