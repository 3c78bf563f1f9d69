"""test_router.py - the router through a real sorterd: RCPT answers from user_map, alias_map,
node_map and failover_node; a missing map defers and is used once it appears; a map rebuilt
with sortermap while 50 sessions keep sending RCPTs is honoured within a second and no
session ever sees an error reply; and `sorterctl route` for a forwarded, an aliased, a
failover and an unknown address, as text and as JSON."""

import json
import os
import subprocess
import threading
import time

from harness import Client, Sorterd, SorterTestCase, message, wait_until

SENDER = "sender@remote.test"
DOMAINS = "example.test example.org"

USERS = """\
# user_map of the router tests
alice@example.test      node-a
Bob@Example.Test        node-b
@example.org            node-b
carol@example.test      lmtp:unix:/run/sorter-test/carol
loop1@example.test      node-a
orphan@example.test     node-gone
"""

NODES = """\
node-a    lmtp:[127.0.0.1]:24
node-b    lmtp:[127.0.0.1]:2424, lmtp:unix:/run/sorter-test/b
"""

ALIASES = """\
info@example.test        alice, bob@example.test
fwd@example.test         someone@remote.test
loop1@example.test       loop2
loop2@example.test       loop1
postmaster@example.test  alice
"""


class RouterCase(SorterTestCase):
    """Maps written under the test's temp dir and built with the sortermap under test."""

    def sortermap(self, *args, check=True):
        return subprocess.run([os.path.join(self.build, "sortermap")] + list(args),
                              capture_output=True, text=True, timeout=120, check=check)

    def write_map(self, name, text, build=True):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        if build:
            self.sortermap(path)
        return "hash:" + path

    def routed(self, **overrides):
        """A sorterd with the three maps (overrides may replace or drop them)."""
        settings = {
            "local_domains": DOMAINS,
            "recipient_delimiter": "+",
            "alias_map": self.write_map("aliases", ALIASES),
            "user_map": self.write_map("user_map", USERS),
            "node_map": self.write_map("node_map", NODES),
        }
        settings.update(overrides)
        return self.sorterd(**settings)

    def setUp(self):
        self.build = os.environ["SORTER_BUILD"]
        if not os.access(os.path.join(self.build, "sortermap"), os.X_OK):
            raise RuntimeError("no sortermap in SORTER_BUILD=%s" % self.build)

    def rcpt_session(self, d):
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        return c


class RcptTest(RouterCase):
    def test_rcpt_answers(self):
        d = self.routed()
        table = [
            ("alice@example.test", 250, "2.1.5"),
            ("ALICE@Example.TEST", 250, "2.1.5"),          # keys are case-insensitive
            ("alice+news@example.test", 250, "2.1.5"),     # recipient_delimiter
            ("bob@example.test", 250, "2.1.5"),
            ("anyone@example.org", 250, "2.1.5"),          # @domain
            ("anyone@EXAMPLE.ORG", 250, "2.1.5"),
            ("carol@example.test", 250, "2.1.5"),          # endpoints given directly
            ("info@example.test", 250, "2.1.5"),           # alias
            ("fwd@example.test", 250, "2.1.5"),            # alias pointing outside
            ("loop1@example.test", 250, "2.1.5"),          # loop1 -> loop2 -> loop1: itself
            ("postmaster", 250, "2.1.5"),                  # bare postmaster, aliased
            ("ghost@example.test", 550, "5.1.1"),
            ("ghost+x@example.test", 550, "5.1.1"),
            ("loop2@example.test", 550, "5.1.1"),          # loop2 -> loop1 -> loop2: unknown
            ("someone@remote.test", 554, "5.7.1"),
            ("someone@example.test.remote.test", 554, "5.7.1"),
            ("orphan@example.test", 451, "4.3.0"),         # node not in node_map: defer
        ]
        c = self.rcpt_session(d)
        for addr, code, enh in table:
            with self.subTest(addr=addr):
                self.assertReply(c.cmd("RCPT TO:<%s>" % addr), code, enh)

    def test_envelope_keeps_the_original_address(self):
        d = self.routed()
        c = self.connect(d)
        r, qid = c.send_message(SENDER, ["Alice+News@Example.Test", "info@example.test"],
                                message("original"))
        self.assertQueued(r, qid)
        m = [x for x in d.queue() if x["id"] == qid][0]
        addrs = sorted(x["address"].lower() for x in m["recipients"])
        self.assertEqual(addrs, ["alice+news@example.test", "info@example.test"])

    def test_failover(self):
        d = self.routed(failover_node="lmtp:[127.0.0.1]:2425")
        c = self.rcpt_session(d)
        self.assertReply(c.cmd("RCPT TO:<ghost@example.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("RCPT TO:<ghost@remote.test>"), 554, "5.7.1")

    def test_failover_node_name(self):
        d = self.routed(failover_node="node-b")
        c = self.rcpt_session(d)
        self.assertReply(c.cmd("RCPT TO:<ghost@example.test>"), 250, "2.1.5")

    def test_without_user_map_every_local_recipient(self):
        d = self.sorterd(local_domains=DOMAINS)
        c = self.rcpt_session(d)
        self.assertReply(c.cmd("RCPT TO:<anyone@example.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("RCPT TO:<anyone@example.org>"), 250, "2.1.5")
        self.assertReply(c.cmd("RCPT TO:<anyone@remote.test>"), 554, "5.7.1")

    def test_missing_map_defers_then_is_used(self):
        users = self.write_map("late_user_map", USERS, build=False)
        d = self.routed(user_map=users, smtpd_hard_error_limit=1000)
        c = self.rcpt_session(d)
        for addr in ("alice@example.test", "ghost@example.test"):
            self.assertReply(c.cmd("RCPT TO:<%s>" % addr), 451, "4.3.0")
        # a recipient that needs no map is still answered
        self.assertReply(c.cmd("RCPT TO:<x@remote.test>"), 554, "5.7.1")
        self.sortermap(users[len("hash:"):])
        ok = wait_until(lambda: c.cmd("RCPT TO:<alice@example.test>").code == 250, 1.0, 0.02)
        self.assertTrue(ok, "the map built after the start was not used within 1 s")
        self.assertReply(c.cmd("RCPT TO:<ghost@example.test>"), 550, "5.1.1")

    def test_broken_map_rebuild_keeps_the_old_one(self):
        d = self.routed()
        path = os.path.join(self.tmp, "user_map")
        with open(path, "a") as f:
            f.write("dave@example.test node-a\nthis-line-has-no-value\n")
        r = self.sortermap(path, check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("%s:9: no value after key \"this-line-has-no-value\"" % path, r.stderr)
        c = self.rcpt_session(d)
        self.assertReply(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("RCPT TO:<dave@example.test>"), 550, "5.1.1")


class RebuildUnderLoadTest(RouterCase):
    SESSIONS = 50

    def test_rebuild_with_50_sessions(self):
        d = self.routed(smtpd_max_sessions=200, smtpd_client_connection_limit=100,
                        smtpd_hard_error_limit=1000, workers=2)
        stop = threading.Event()
        lock = threading.Lock()
        errors = []
        first_ok = {}          # session -> monotonic time newcomer was first accepted
        counts = [0] * self.SESSIONS
        started = threading.Barrier(self.SESSIONS + 1)

        def session(n):
            try:
                with Client(d.port, timeout=10) as c:
                    if c.reply().code != 220 or c.ehlo().code != 250:
                        raise AssertionError("no greeting or EHLO refused")
                    if c.cmd("MAIL FROM:<%s>" % SENDER).code != 250:
                        raise AssertionError("MAIL refused")
                    started.wait(30)
                    i = 0
                    while not stop.is_set():
                        r = c.cmd("RCPT TO:<alice@example.test>")
                        if r.code != 250:
                            raise AssertionError("alice: %s" % r)
                        r = c.cmd("RCPT TO:<newcomer@example.test>")
                        now = time.monotonic()
                        if r.code == 250:
                            with lock:
                                first_ok.setdefault(n, now)
                        elif r.code == 550 and r.enhanced == "5.1.1":
                            if n in first_ok:
                                raise AssertionError("newcomer rejected again after "
                                                     "being accepted: %s" % r)
                        else:
                            raise AssertionError("newcomer: %s" % r)
                        counts[n] += 1
                        i += 1
                        if i % 100 == 0:   # stay far below smtpd_recipient_limit
                            if c.cmd("RSET").code != 250 or \
                               c.cmd("MAIL FROM:<%s>" % SENDER).code != 250:
                                raise AssertionError("RSET/MAIL refused")
                        time.sleep(0.005)
                    c.cmd("QUIT")
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append("session %d: %r" % (n, e))
                try:
                    started.abort()
                except threading.BrokenBarrierError:
                    pass

        threads = [threading.Thread(target=session, args=(n,), daemon=True)
                   for n in range(self.SESSIONS)]
        for t in threads:
            t.start()
        started.wait(30)
        time.sleep(1.0)
        # unchanged rebuilds of the other maps meanwhile: reopening must never show
        for _ in range(3):
            self.sortermap(os.path.join(self.tmp, "node_map"))
            self.sortermap(os.path.join(self.tmp, "aliases"))
        self.assertEqual(first_ok, {}, "newcomer accepted before it was in the map")
        before = list(counts)
        with open(os.path.join(self.tmp, "user_map"), "a") as f:
            f.write("newcomer@example.test node-a\n")
        self.sortermap(os.path.join(self.tmp, "user_map"))
        rebuilt = time.monotonic()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        self.assertFalse(any(t.is_alive() for t in threads), "a session hung")
        self.assertTrue(all(counts[n] > before[n] for n in range(self.SESSIONS)),
                        "a session made no progress after the rebuild")
        self.assertEqual(len(first_ok), self.SESSIONS, "sessions that never saw newcomer")
        late = {n: round(t - rebuilt, 3) for n, t in first_ok.items() if t - rebuilt > 1.0}
        self.assertEqual(late, {}, "newcomer accepted only more than 1 s after the rebuild")


class RouteCommandTest(RouterCase):
    """sorterctl route reads the config and the maps; no daemon is needed."""

    def daemon_config(self, **overrides):
        settings = {
            "local_domains": DOMAINS,
            "recipient_delimiter": "+",
            "alias_map": self.write_map("aliases", ALIASES),
            "user_map": self.write_map("user_map", USERS),
            "node_map": self.write_map("node_map", NODES),
        }
        settings.update(overrides)
        return Sorterd(os.path.join(self.tmp, "d%d" % len(os.listdir(self.tmp))), start=False,
                       **settings)

    def route(self, d, addr, json_out=False):
        args = ["route", addr] + (["--json"] if json_out else [])
        r = d.ctl(*args, check=False)
        self.assertNotIn("Sanitizer", r.stderr)
        return r

    def test_forwarded(self):
        d = self.daemon_config()
        r = self.route(d, "fwd@example.test")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("fwd@example.test -> someone@remote.test", r.stdout)
        self.assertIn("someone@remote.test: remote by SMTP", r.stdout)
        self.assertIn("rcpt: 250 2.1.5", r.stdout)
        j = json.loads(self.route(d, "fwd@example.test", True).stdout)
        self.assertEqual([(x["address"], x["kind"]) for x in j["recipients"]],
                         [("someone@remote.test", "remote")])
        self.assertEqual(j["rcpt"]["reply"], "250 2.1.5")

    def test_aliased(self):
        d = self.daemon_config()
        r = self.route(d, "Info+x@Example.Test")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for want in ("canonical: Info+x@example.test (without extension: info@example.test)",
                     "info@example.test -> alice, bob@example.test",
                     "alice@example.test: local, node node-a (user_map), endpoints "
                     "lmtp:[127.0.0.1]:24",
                     "bob@example.test: local, node node-b (user_map), endpoints "
                     "lmtp:[127.0.0.1]:2424 lmtp:unix:/run/sorter-test/b"):
            self.assertIn(want, r.stdout)
        j = json.loads(self.route(d, "info@example.test", True).stdout)
        self.assertEqual([t["address"] for t in j["expansion"]["targets"]],
                         ["alice@example.test", "bob@example.test"])
        b = j["recipients"][1]
        self.assertEqual((b["kind"], b["via"], b["node"]), ("local", "user_map", "node-b"))
        self.assertEqual([e["endpoint"] for e in b["endpoints"]],
                         ["lmtp:[127.0.0.1]:2424", "lmtp:unix:/run/sorter-test/b"])
        self.assertEqual(b["endpoints"][0]["port"], 2424)
        self.assertTrue(b["endpoints"][0]["literal"])

    def test_failover(self):
        d = self.daemon_config(failover_node="lmtp:[127.0.0.1]:2425")
        r = self.route(d, "ghost@example.test")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("no entry for ghost@example.test or @example.test", r.stdout)
        self.assertIn("ghost@example.test: local (failover_node), endpoints "
                      "lmtp:[127.0.0.1]:2425", r.stdout)
        j = json.loads(self.route(d, "ghost@example.test", True).stdout)
        self.assertEqual(j["recipients"][0]["via"], "failover_node")
        self.assertEqual(j["failover_node"], "lmtp:[127.0.0.1]:2425")

    def test_unknown(self):
        d = self.daemon_config()
        r = self.route(d, "ghost@example.test")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("ghost@example.test: bounce 5.1.1 user unknown", r.stdout)
        self.assertIn("rcpt: 550 5.1.1 unknown user", r.stdout)
        j = json.loads(self.route(d, "ghost@example.test", True).stdout)
        self.assertEqual(j["rcpt"]["reply"], "550 5.1.1")
        self.assertEqual(j["recipients"][0]["kind"], "bounce")

    def test_relay_and_missing_map(self):
        d = self.daemon_config(node_map="hash:" + os.path.join(self.tmp, "absent"))
        r = self.route(d, "someone@remote.test")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("rcpt: 554 5.7.1 relay denied", r.stdout)
        r = self.route(d, "alice@example.test")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        absent = os.path.join(self.tmp, "absent")
        self.assertIn("node_map       hash:%s: cannot open %s.db: No such file or directory "
                      "(unavailable)" % (absent, absent), r.stdout)
        self.assertIn("rcpt: 451 4.3.0", r.stdout)
