"""test_nodes.py - node health and drains: `sorterctl nodes [--json]` shows each node of
node_map with its endpoints' state, LHLO latency and capabilities (probed by the queue
manager, node_probe_interval) and the mail queued for it; a node whose Dovecot is stopped
turns down with its error, and up again once it is back; `sorterctl drain NODE` parks the
node's mail (queued, nothing delivered, nothing bounced, not even past the queue lifetime)
until `sorterctl undrain NODE` delivers it at once; the drained set survives a restart of
sorterd, and a drain plus a user_map edit plus an undrain moves a mailbox without a lost or
bounced message.

The two Dovecot nodes, the maps and the sending helpers are test_delivery.py's.
"""

import email.utils
import json
import os
import re
import time
import unittest

import fsrec
from harness import Sorterd, wait_until, write_map
from test_delivery import ALICE, BOB, SLOW, DeliveryTestCase, token

PROBE = {"node_probe_interval": 1}
WAIT = 30


class NodesTestCase(DeliveryTestCase):
    def node_view(self, offline=False):
        """sorterctl nodes --json, parsed: {node name: node object}, and the whole document."""
        r = self.ctl_ok("nodes", "--json")
        doc = json.loads(r.stdout)
        self.assertEqual(doc["daemon_running"], not offline, doc)
        return {n["node"]: n for n in doc["nodes"]}, doc

    def endpoint(self, node):
        nodes, _ = self.node_view()
        self.assertIn(node.name, nodes, "node_map's nodes are listed at once")
        [ep] = nodes[node.name]["endpoints"]
        self.assertEqual(ep["endpoint"], node.endpoint())
        return ep

    def wait_endpoint(self, node, state, timeout=WAIT):
        got = wait_until(lambda: self.endpoint(node)["state"] == state and self.endpoint(node),
                         timeout, interval=0.2)
        self.assertTrue(got, "%s not %s within %ss: %r" % (node.name, state, timeout,
                                                           self.node_view()[0]))
        return got

    def assertNothingBounced(self):
        self.assertEqual(self.d.log_lines(r"status=bounced"), [])
        self.assertEqual(self.d.log_lines(r"non-delivery"), [])
        self.assertEqual(self.dsns(), [])


class HealthTest(NodesTestCase):
    def test_endpoints_up_with_capabilities_and_latency(self):
        self.start_sorterd(**PROBE)
        for node in self.nodes_up():
            ep = self.wait_endpoint(node, "up")
            self.assertIsNotNone(ep["latency_ms"])
            self.assertGreater(ep["latency_ms"], 0)
            self.assertLess(ep["latency_ms"], 5000)
            self.assertIsNone(ep["last_error"])
            self.assertIsNotNone(ep["last_probe"])
            self.assertLessEqual(abs(ep["last_probe"] - time.time()), 30)
            caps = ep["capabilities"]
            self.assertIsNotNone(caps, "no LHLO capabilities recorded for %s" % node.name)
            for k in ("SIZE", "8BITMIME", "SMTPUTF8", "PIPELINING"):
                self.assertIn(k, caps)
            # what Dovecot's LMTP offers
            self.assertTrue(caps["PIPELINING"], caps)
            self.assertTrue(caps["8BITMIME"], caps)
        nodes, _ = self.node_view()
        self.assertEqual(sorted(nodes), ["node-a", "node-b"])
        for n in nodes.values():
            self.assertFalse(n["drained"])
            self.assertEqual(n["queued_messages"], 0)
        text = self.ctl_ok("nodes").stdout
        self.assertRegex(text, r"(?m)^node-a: active, queued 0 messages")
        self.assertRegex(text, r"(?m)^  %s  up  latency [0-9.]+ ms  probed \d+s ago  caps .*"
                         r"PIPELINING" % re.escape(self.node_a.endpoint()))
        self.wait_log(r"node node-a: endpoint %s is up \(LHLO answered in [0-9.]+ ms\)"
                      % re.escape(self.node_a.endpoint()))

    def nodes_up(self):
        return [self.node_a, self.node_b]

    def test_stopped_node_turns_down_then_up(self):
        self.start_sorterd(**PROBE)
        self.wait_endpoint(self.node_b, "up")
        self.node_b.stop()
        ep = self.wait_endpoint(self.node_b, "down")
        self.assertIn("127.0.0.1:%d" % self.node_b.port, ep["last_error"])
        # (a probe during Dovecot's own shutdown may see the connection cut instead)
        self.assertTrue(wait_until(lambda: re.search(r"[Cc]onnection refused", self.endpoint(
            self.node_b)["last_error"] or ""), 10), self.endpoint(self.node_b))
        self.assertIsNone(ep["latency_ms"])
        self.assertEqual(self.endpoint(self.node_a)["state"], "up")
        self.wait_log(r"node node-b: endpoint %s is down: " % re.escape(self.node_b.endpoint()))
        text = self.ctl_ok("nodes").stdout
        self.assertRegex(text, r"(?m)^  %s  down  probed \d+s ago.*\n    last error: connect to"
                         % re.escape(self.node_b.endpoint()))
        self.node_b.start()
        ep = self.wait_endpoint(self.node_b, "up")
        self.assertIsNone(ep["last_error"])
        self.assertIsNotNone(ep["latency_ms"])

    def test_failed_delivery_probes_soon(self):
        """With the timer off (node_probe_interval = 0), a delivery that cannot connect to
        node B has its endpoint probed, and marked down, within seconds."""
        self.start_sorterd(node_probe_interval=0)
        self.node_b.stop()
        time.sleep(1.5)
        ep = self.endpoint(self.node_b)
        self.assertEqual(ep["state"], "unknown", "probed without a cause")
        self.assertIsNone(ep["last_probe"])
        tok = token("down")
        qid = self.send(BOB, tok)
        self.wait_log(r"%s: to=<%s>, node=node-b, .*status=deferred" % (qid, re.escape(BOB)))
        ep = self.wait_endpoint(self.node_b, "down", timeout=10)
        self.assertIn("127.0.0.1:%d" % self.node_b.port, ep["last_error"])
        nodes, _ = self.node_view()
        self.assertEqual(nodes["node-b"]["queued_messages"], 1)
        self.assertEqual(nodes["node-b"]["queued_recipients"], 1)
        self.assertEqual(nodes["node-a"]["queued_messages"], 0)


class DrainTest(NodesTestCase):
    def test_drain_parks_undrain_delivers(self):
        # retries an hour apart and a queue lifetime of 2 s: only the undrain can deliver,
        # and a parked message that expired would bounce
        self.start_sorterd(timers=SLOW, maximal_queue_lifetime=2, delay_warning_time=1,
                           **PROBE)
        r = self.ctl_ok("drain", "node-a")
        self.assertIn("node node-a: drained", r.stdout)
        self.wait_log(r"node node-a drained: deliveries to it are parked")
        self.assertIn("already drained", self.ctl_ok("drain", "node-a").stdout)
        tok, tok_b = token("parked"), token("free")
        qid = self.send(ALICE, tok)
        qid_b = self.send(BOB, tok_b)
        self.wait_delivered(self.node_b, "bob", tok_b)
        self.wait_log(r"%s: to=<%s>, node=node-a, relay=none, .*dsn=4\.3\.2, "
                      r"status=deferred \(node node-a is drained\)" % (qid, re.escape(ALICE)))
        self.wait_state(qid, "deferred")
        self.assertIn("node node-a is drained", self.entry(qid)["last_error"])
        nodes, _ = self.node_view()
        self.assertTrue(nodes["node-a"]["drained"])
        self.assertIsNotNone(nodes["node-a"]["drained_since"])
        self.assertEqual(nodes["node-a"]["queued_messages"], 1)
        self.assertEqual(nodes["node-a"]["queued_recipients"], 1)
        self.assertFalse(nodes["node-b"]["drained"])
        self.assertRegex(self.ctl_ok("nodes").stdout,
                         r"(?m)^node-a: DRAINED, queued 1 message, 1 recipient, drained since ")
        # past the queue lifetime, and retried (flush): still parked, never bounced
        time.sleep(2.5)
        self.ctl_ok("flush")
        wait_until(lambda: len(self.d.log_lines(r"%s: .*node node-a is drained" % qid)) >= 2, 10)
        self.assertGreaterEqual(len(self.d.log_lines(r"%s: .*node node-a is drained" % qid)), 2)
        self.assertEqual(self.found(self.node_a, "alice", tok), [])
        self.assertIn(qid, self.d.queue_ids())
        self.assertNothingBounced()
        self.assertEqual(self.d.log_lines(r"delay notification"), [])
        started = time.monotonic()
        r = self.ctl_ok("undrain", "node-a")
        self.assertIn("node node-a: undrained", r.stdout)
        self.wait_log(r"node node-a undrained: deliveries to it resume")
        self.wait_delivered(self.node_a, "alice", tok, timeout=10)
        self.assertLess(time.monotonic() - started, 10)
        self.sent_line(qid, ALICE, self.node_a)
        self.wait_queue_empty()
        self.assertNothingBounced()
        self.nowhere_else(tok, (self.node_a, "alice"))
        self.assertIn(qid_b, "".join(self.d.log_lines(r"status=sent")))
        nodes, _ = self.node_view()
        self.assertFalse(nodes["node-a"]["drained"])
        self.assertIsNone(nodes["node-a"]["drained_since"])

    def test_parked_time_does_not_count_toward_the_lifetime(self):
        """Parked past maximal_queue_lifetime, then undrained while the node is down: the
        failure is a deferral, not a bounce (the parked time is not counted); once the node
        is back the message goes."""
        self.start_sorterd(timers=SLOW, maximal_queue_lifetime=6, **PROBE)
        self.ctl_ok("drain", "node-a")
        tok = token("aged")
        qid = self.send(ALICE, tok)
        self.wait_log(r"%s: .*status=deferred \(node node-a is drained\)" % qid)
        time.sleep(7)
        with open(os.path.join(self.d.spool, "defer", qid)) as f:
            self.assertRegex(f.read(), r"(?m)^parked\t0\t\d+$")
        self.node_a.stop()
        self.ctl_ok("undrain", "node-a")
        self.wait_log(r"%s: to=<%s>, node=node-a, .*status=deferred \(.*127\.0\.0\.1:%d"
                      % (qid, re.escape(ALICE), self.node_a.port))
        self.assertNothingBounced()

        def parked_status():
            # the status file is written after the attempt's log line
            with open(os.path.join(self.d.spool, "defer", qid)) as f:
                return re.search(r"(?m)^parked\t(\d+)\t0$", f.read())
        parked = wait_until(parked_status, 10)
        self.assertTrue(parked)
        self.assertGreaterEqual(int(parked.group(1)), 6)
        self.node_a.start()
        self.ctl_ok("flush")
        self.wait_delivered(self.node_a, "alice", tok, timeout=10)
        self.wait_queue_empty()
        self.assertNothingBounced()

    def test_delay_notice_counts_the_parked_time(self):
        """A delay notice sent after a parked spell promises the retries up to the end of
        a lifetime that the parked time has moved on: Will-Retry-Until is the arrival plus
        maximal_queue_lifetime plus the time spent parked."""
        parked_for = 5
        self.start_sorterd(timers=SLOW, maximal_queue_lifetime=600, delay_warning_time=1,
                           **PROBE)
        self.ctl_ok("drain", "node-b")
        qid = self.send(BOB, token("late"))
        self.wait_log(r"%s: .*status=deferred \(node node-b is drained\)" % qid)
        time.sleep(parked_for)
        self.node_b.stop()
        self.ctl_ok("undrain", "node-b")
        self.wait_log(r"%s: to=<%s>, node=node-b, .*status=deferred \(.*127\.0\.0\.1:%d"
                      % (qid, re.escape(BOB), self.node_b.port))
        # past delay_warning_time of unparked age, the next attempt warns. The age and
        # the parked time are counted in whole seconds, each cut down on its own
        # clock: the unparked age can come out up to 2 s short of the real one.
        time.sleep(3.2)
        self.ctl_ok("flush")
        dsn = self.wait_dsn("delayed", BOB)
        r = self.assertDSN(dsn, "delayed", "4", BOB)
        arrival = email.utils.parsedate_to_datetime(dsn["per_message"]["arrival-date"])
        until = email.utils.parsedate_to_datetime(r["will-retry-until"])
        # no server was reached: the report names none (RFC 3464 2.3.5)
        self.assertNotIn("remote-mta", r)
        self.assertNotIn("host none", dsn["msg"].get_payload()[0].get_payload())
        self.assertGreaterEqual((until - arrival).total_seconds(), 600 + parked_for - 1, r)
        self.assertLess((until - arrival).total_seconds(), 600 + parked_for + 15, r)

    def test_drain_survives_restart(self):
        self.start_sorterd(timers=SLOW, **PROBE)
        self.ctl_ok("drain", "node-b")
        path = os.path.join(self.d.spool, "drained")
        with open(path) as f:
            self.assertRegex(f.read(), r"(?m)^drained node-b \d+$")
        tok = token("restart")
        qid = self.send(BOB, tok)
        self.wait_log(r"%s: .*status=deferred \(node node-b is drained\)" % qid)
        self.assertEqual(self.d.stop(), 0)
        # with the daemon down: it says so, and still shows the drain and the queue
        nodes, _ = self.node_view(offline=True)
        self.assertTrue(nodes["node-b"]["drained"])
        self.assertEqual(nodes["node-b"]["queued_messages"], 1)
        self.assertEqual([e["state"] for e in nodes["node-b"]["endpoints"]], ["unknown"])
        self.assertIn("sorterd is not running", self.ctl_ok("nodes").stdout)
        self.d.start()
        self.wait_log(r"node node-b is drained: deliveries to it are parked")
        nodes, _ = self.node_view()
        self.assertTrue(nodes["node-b"]["drained"])
        # flushed after the restart: still parked
        n = len(self.d.log_lines(r"%s: .*node node-b is drained" % qid))
        self.ctl_ok("flush")
        self.assertTrue(wait_until(lambda: len(self.d.log_lines(
            r"%s: .*node node-b is drained" % qid)) > n, 10))
        self.assertEqual(self.found(self.node_b, "bob", tok), [])
        self.ctl_ok("undrain", "node-b")
        self.wait_delivered(self.node_b, "bob", tok, timeout=10)
        self.wait_queue_empty()
        self.assertNothingBounced()
        with open(path) as f:
            self.assertNotIn("node-b", f.read())

    def test_drain_offline(self):
        """With sorterd down, drain and undrain act on the spool's drained file under the
        queue manager's lock; sorterd starts with the node drained."""
        self.start_sorterd(timers=SLOW, **PROBE)
        self.d.stop()
        r = self.ctl_ok("drain", "node-a")
        self.assertIn("daemon not running", r.stdout)
        self.d.start()
        self.wait_log(r"node node-a is drained")
        tok = token("offline")
        qid = self.send(ALICE, tok)
        self.wait_log(r"%s: .*status=deferred \(node node-a is drained\)" % qid)
        self.ctl_ok("undrain", "node-a")
        self.wait_delivered(self.node_a, "alice", tok, timeout=10)

    def test_undrain_while_an_attempt_parks(self):
        """An undrain that comes while an attempt is still parking the node's mail (logged
        as deferred, its move into deferred/ not yet done: that rename made 1.5 s slow)
        delivers it at once all the same, not at the next retry an hour later."""
        log = os.path.join(self.tmp, "fsrec.log")
        settings = dict(SLOW)
        settings.update(self.write_maps())
        settings.update(PROBE)
        self.d = Sorterd(os.path.join(self.tmp, "d"), start=False, **settings)
        self.d.argv_prefix = fsrec.recorder_argv(self.d.build, log,
                                                 "FSREC_SLOW_RENAME=/deferred/:1500")
        self.daemons.append(self.d)
        self.addCleanup(self._finish, self.d)
        self.d.start()
        self.ctl_ok("drain", "node-a")
        tok = token("racing")
        qid = self.send(ALICE, tok)
        self.wait_log(r"%s: .*status=deferred \(node node-a is drained\)" % qid)
        self.ctl_ok("undrain", "node-a")
        self.wait_delivered(self.node_a, "alice", tok, timeout=10)
        moves = [r for r in fsrec.read_log(log)
                 if r.call in fsrec.RENAME_CALLS and "/deferred/" in r.path2]
        self.assertTrue(moves, "the attempt never moved %s into deferred/" % qid)

    def test_bad_node_names(self):
        self.start_sorterd(**PROBE)
        r = self.d.ctl("drain", "bad name", check=False)
        self.assertEqual(r.returncode, 2)
        r = self.d.ctl("drain", "x" * 65, check=False)
        self.assertEqual(r.returncode, 2)
        r = self.d.ctl("drain", check=False)
        self.assertEqual(r.returncode, 2)

    def test_mailbox_move(self):
        """Drain node A, let mail for alice queue, move her mailbox to B (a user_map edit),
        undrain: everything queued meanwhile lands on B, nothing on A, nothing bounced."""
        self.start_sorterd(timers=SLOW, **PROBE)
        self.ctl_ok("drain", "node-a")
        toks = [token("move%d" % i) for i in range(3)]
        qids = [self.send(ALICE, t) for t in toks]
        for q in qids:
            self.wait_log(r"%s: .*status=deferred \(node node-a is drained\)" % q)
        self.user_map[ALICE] = "node-b"
        write_map(self.build, os.path.join(self.maps, "user_map"), self.user_map)
        self.ctl_ok("undrain", "node-a")
        for t in toks:
            self.wait_delivered(self.node_b, "alice", t, timeout=15)
            self.nowhere_else(t, (self.node_b, "alice"))
        self.wait_queue_empty()
        self.assertNothingBounced()
        for q in qids:
            self.sent_line(q, ALICE, self.node_b)


if __name__ == "__main__":
    unittest.main()
