"""test_import.py - `sorterctl import DIR`: a surviving sorterd takes over a dead peer's spool.

The peer is a sorterd whose delivery target cannot take mail (a closed port, or a socket that
accepts connections and never answers), so what it acknowledged stays queued; it is killed,
and its spool is imported into a second, running sorterd that delivers to Postfix's smtp-sink
in LMTP mode. Deliveries are counted by Message-ID (and recipient) at the sinks: every
acknowledged message exactly once, a torn file never, a recipient the peer had delivered
never again; a second import finds nothing to do.
"""

import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import unittest

import fsrec
from harness import (LOCAL_DOMAIN, SorterTestCase, blast, build_dir, join_all, message,
                     pid_alive, wait_until, write_map)
from smtpsink import SmtpSink, free_port_on, smtp_sink_missing

SENDER = "sender@remote.test"
LINE_RE = re.compile(r"^([0-9A-HJKMNP-TV-Z]{12}) -> ([0-9A-HJKMNP-TV-Z]{12})\b")
SUMMARY_RE = re.compile(r"^(\d+) imported \((\d+) on hold, (\d+) finishing an interrupted "
                        r"import\), (\d+) quarantined, (\d+) failed$", re.M)
# the peer never retries within a test; the survivor at once
SLOW = {"queue_run_delay": 3600, "minimal_backoff_time": 3600, "maximal_backoff_time": 3600,
        "endpoint_dead_time": 0}
FAST = {"queue_run_delay": 1, "minimal_backoff_time": 1, "maximal_backoff_time": 1,
        "endpoint_dead_time": 0}
WAIT = 60


def message_id(data):
    m = re.search(rb"^Message-ID:\s*(<[^>]*>)", data, re.M | re.I)
    return m.group(1).decode() if m else None


def deliveries(sink):
    """[(Message-ID, recipient)] for every transaction the sink saw, one per recipient."""
    out = []
    for m in sink.messages():
        for r in m["rcpts"]:
            out.append((message_id(m["data"]), r.lower()))
    return out


def dead_port():
    """A loopback port nobody listens on."""
    return free_port_on("127.0.0.1")


class Import(SorterTestCase):
    def setUp(self):
        missing = smtp_sink_missing()
        if missing:
            self.skipTest(missing)
        self.build = build_dir()
        os.chmod(self.tmp, 0o755)

    def sink(self, name):
        s = SmtpSink(os.path.join(self.tmp, name), "127.0.0.1", free_port_on("127.0.0.1"),
                     extra_args=["-L"])
        s.start()
        self.addCleanup(s.stop)
        return s

    def survivor(self, sink, **kw):
        kw.setdefault("failover_node", "lmtp:[127.0.0.1]:%d" % sink.port)
        return self.sorterd("survivor", **dict(FAST, **kw))

    def kill_master_first(self, d):
        """SIGKILL to the master only; its children see it gone, finish and exit (waited for
        by PID, as the harness does)."""
        kids = d.children()
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        self.assertTrue(wait_until(lambda: not any(pid_alive(k) for k in kids), 30),
                        "children of a killed master linger")
        d.stop()

    def dead_peer(self, n, tag):
        """A peer that queued n messages behind an unreachable node and was killed, master
        first: (peer, {queue id: Message-ID})."""
        peer = self.sorterd("peer", failover_node="lmtp:[127.0.0.1]:%d" % dead_port(), **SLOW)
        sent = self.send(peer, n, tag)
        self.kill_master_first(peer)
        return peer, sent

    def send(self, d, n, tag, rcpts=None):
        """n messages, one connection; returns {queue id: Message-ID}."""
        out = {}
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        for i in range(n):
            subject = "%s %d %s" % (tag, i, os.urandom(4).hex())
            r, qid = c.send_message(SENDER, rcpts or ["user%d@%s" % (i, LOCAL_DOMAIN)],
                                    message(subject), ehlo=False)
            self.assertQueued(r, qid)
            out[qid] = "<%s@remote.test>" % subject.replace(" ", ".")
        c.cmd("QUIT")
        return out

    def import_(self, d, src, expect_rc=0):
        r = d.ctl("import", src, check=False, timeout=120)
        self.assertEqual(r.returncode, expect_rc, "import: exit %d\nstdout:\n%s\nstderr:\n%s"
                         % (r.returncode, r.stdout, r.stderr))
        pairs = [LINE_RE.match(l).groups() for l in r.stdout.splitlines() if LINE_RE.match(l)]
        m = SUMMARY_RE.search(r.stdout)
        self.assertIsNotNone(m, "no summary line in:\n%s" % r.stdout)
        summary = dict(zip(("imported", "held", "resumed", "quarantined", "failed"),
                           (int(x) for x in m.groups())))
        self.assertEqual(summary["imported"], len(pairs), r.stdout)
        return pairs, summary, r

    def assert_source_empty(self, peer):
        for sub in ("incoming", "active", "deferred", "hold", "importing", "defer"):
            p = os.path.join(peer.spool, sub)
            left = os.listdir(p) if os.path.isdir(p) else []
            self.assertEqual(left, [], "left in the source's %s/" % sub)

    def assert_once(self, sink, want, settle=2.0):
        """Every Message-ID in want is delivered exactly once (to its recipient); nothing is
        delivered twice, including after settle s more."""
        got = wait_until(lambda: (lambda d: d if {m for m, _ in d} >= set(want) else None)(
            deliveries(sink)), WAIT, interval=0.2)
        self.assertIsNotNone(got, "not all delivered: missing %s"
                             % (set(want) - {m for m, _ in deliveries(sink)}))
        time.sleep(settle)
        got = deliveries(sink)
        dup = {x for x in got if got.count(x) > 1}
        self.assertEqual(dup, set(), "delivered twice")
        return got

    # (1) mail queued behind an unreachable target, master killed, spool imported
    def test_import_queued_spool(self):
        sink = self.sink("sink")
        peer = self.sorterd("peer", failover_node="lmtp:[127.0.0.1]:%d" % dead_port(), **SLOW)
        sent = self.send(peer, 20, "queued")
        # every message tried once and deferred, each with its status file
        self.assertTrue(wait_until(lambda: len(os.listdir(os.path.join(peer.spool, "deferred")))
                                   == 20, WAIT), peer.queue_files())
        self.kill_master_first(peer)
        d = self.survivor(sink)
        pairs, summary, _ = self.import_(d, peer.spool)
        self.assertEqual({o for o, _ in pairs}, set(sent))
        new = [n for _, n in pairs]
        self.assertEqual(len(set(new)), 20, "a new id given twice")
        self.assertEqual(set(new) & set(sent), set())
        self.assertEqual(summary["quarantined"] + summary["failed"], 0)
        self.assert_source_empty(peer)
        got = self.assert_once(sink, sent.values())
        self.assertEqual(len(got), 20)
        # the survivor logged each new id's delivery
        for n in new:
            self.assertTrue(d.log_lines(r"%s: to=<.*status=sent" % n), n)
        self.assertTrue(d.wait_queue_empty(WAIT), d.queue_files())
        # a second run has nothing to do
        pairs, summary, _ = self.import_(d, peer.spool)
        self.assertEqual(pairs, [])
        self.assertEqual(summary["imported"], 0)
        time.sleep(1)
        self.assertEqual(len(deliveries(sink)), 20)

    # a source whose host lost its page cache: the queued messages' slots hold zeros, and
    # only the peer's journals hold them; the import writes them back from the journals first
    def test_import_restores_from_the_source_journal(self):
        sink = self.sink("sink")
        peer, sent = self.dead_peer(6, "journal")
        fsrec.feign_reboot(peer.spool, set(sent))
        d = self.survivor(sink)
        pairs, summary, r = self.import_(d, peer.spool)
        self.assertEqual({o for o, _ in pairs}, set(sent), r.stdout + r.stderr)
        self.assertEqual(summary["quarantined"] + summary["failed"], 0, r.stdout)
        for q in sent:
            self.assertIn("%s: restored from the journal" % q, r.stderr)
        self.assert_source_empty(peer)
        got = self.assert_once(sink, sent.values())
        self.assertEqual(len(got), 6)

    # the same with the survivor down: the files wait in incoming/ for its start
    def test_import_daemon_down(self):
        sink = self.sink("sink")
        peer, sent = self.dead_peer(5, "down")
        d = self.survivor(sink)
        d.stop()
        pairs, _, _ = self.import_(d, peer.spool)
        self.assertEqual({o for o, _ in pairs}, set(sent))
        self.assertEqual(sorted(os.listdir(os.path.join(d.spool, "incoming"))),
                         sorted(n for _, n in pairs))
        self.assertEqual(sink.count(), 0)
        d.start()
        self.assert_once(sink, sent.values())

    # (2) kill -9 of every process under load, deliveries hanging on a silent node
    def test_import_after_kill9_under_load(self):
        sink = self.sink("sink")
        silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(512)     # connections complete in the backlog; nobody ever answers
        peer = self.sorterd("peer", failover_node="lmtp:[127.0.0.1]:%d" % silent.getsockname()[1],
                            **SLOW)
        stop = threading.Event()
        threads, acked, errors = blast(peer.port, 8, 100, body_size=2048, stop=stop)
        active = os.path.join(peer.spool, "active")
        # kill while clients still send and the queue manager holds deliveries open (it
        # may take a while to start: a sanitizer build)
        wait_until(lambda: len(acked) >= 60 and os.listdir(active), 120, interval=0.001)
        sending = sum(t.is_alive() for t in threads)
        peer.kill_all()
        stop.set()
        self.assertTrue(join_all(threads, 60), "client threads hang after the kill")
        acked = list(acked)
        self.assertGreater(len(acked), 0, "nothing acknowledged before the kill: %s" % errors)
        self.assertGreater(len(os.listdir(active)), 0, "no delivery was in flight at the kill "
                           "(%d acknowledged; %s)" % (len(acked), errors[:3]))
        self.assertGreater(sending, 0, "every client was done before the kill")
        # the Message-ID of each acknowledged message, read from the dead peer's spool
        want = {}
        for qid in acked:
            fields, stored = peer.show(qid)
            want[qid] = message_id(stored.encode())
        d = self.survivor(sink)
        pairs, summary, _ = self.import_(d, peer.spool)
        self.assertEqual(summary["quarantined"] + summary["failed"], 0)
        self.assertTrue(set(acked) <= {o for o, _ in pairs}, "acknowledged but not imported")
        self.assert_source_empty(peer)
        self.assert_once(sink, want.values())
        self.assertEqual(len(deliveries(sink)), len(pairs))
        pairs, summary, _ = self.import_(d, peer.spool)
        self.assertEqual(summary["imported"], 0)

    # (3) a torn file is quarantined with its reason and never delivered
    def test_torn_file_quarantined(self):
        sink = self.sink("sink")
        peer = self.sorterd("peer", failover_node="lmtp:[127.0.0.1]:%d" % dead_port(), **SLOW)
        sent = self.send(peer, 3, "torn")
        self.kill_master_first(peer)
        torn = sorted(sent)[1]
        [path] = [os.path.join(peer.spool, s, torn) for s in ("incoming", "active", "deferred")
                  if os.path.exists(os.path.join(peer.spool, s, torn))]
        size = os.path.getsize(path)
        os.truncate(path, size // 2)
        d = self.survivor(sink)
        pairs, summary, r = self.import_(d, peer.spool, expect_rc=1)
        self.assertEqual({o for o, _ in pairs}, set(sent) - {torn})
        self.assertEqual(summary["quarantined"], 1)
        self.assertRegex(r.stderr, r"%s: moved to corrupt/: .*(torn|runs past end)" % torn)
        self.assertEqual(os.listdir(os.path.join(peer.spool, "corrupt")), [torn])
        self.assertEqual(os.path.getsize(os.path.join(peer.spool, "corrupt", torn)), size // 2)
        good = [sent[q] for q in sent if q != torn]
        got = self.assert_once(sink, good)
        self.assertNotIn(sent[torn], {m for m, _ in got})
        pairs, summary, _ = self.import_(d, peer.spool)
        self.assertEqual(summary["imported"] + summary["quarantined"], 0)

    # (4) what the peer delivered (a recipient, an alias-expanded address) is not again
    def test_partially_delivered(self):
        node_a = self.sink("node-a")
        node_b = self.sink("node-b")
        maps = os.path.join(self.tmp, "maps")
        os.makedirs(maps)
        alice, bob, carol, lst = ("%s@%s" % (u, LOCAL_DOMAIN)
                                  for u in ("alice", "bob", "carol", "list"))
        users = write_map(self.build, os.path.join(maps, "users"),
                          {alice: "node-a", bob: "node-b", carol: "node-a"})
        aliases = write_map(self.build, os.path.join(maps, "aliases"),
                            {lst: "%s, %s" % (carol, bob)})
        peer_nodes = write_map(self.build, os.path.join(maps, "peer_nodes"),
                               {"node-a": "lmtp:[127.0.0.1]:%d" % node_a.port,
                                "node-b": "lmtp:[127.0.0.1]:%d" % dead_port()})
        nodes = write_map(self.build, os.path.join(maps, "nodes"),
                          {"node-a": "lmtp:[127.0.0.1]:%d" % node_a.port,
                           "node-b": "lmtp:[127.0.0.1]:%d" % node_b.port})
        peer = self.sorterd("peer", user_map=users, alias_map=aliases, node_map=peer_nodes,
                            **SLOW)
        m1 = self.send(peer, 1, "pair", rcpts=[alice, bob])
        m2 = self.send(peer, 1, "list", rcpts=[lst])
        [(q1, id1)] = m1.items()
        [(q2, id2)] = m2.items()
        # node-a took alice and carol; bob waits in deferred/
        self.assertTrue(wait_until(lambda: set(deliveries(node_a)) == {(id1, alice), (id2, carol)}
                                   and len(os.listdir(os.path.join(peer.spool, "deferred"))) == 2,
                                   WAIT), deliveries(node_a))
        fields, _ = peer.show(q1)
        self.assertIn("%s (delivered)" % alice, fields["recipient"])
        self.kill_master_first(peer)
        d = self.survivor(node_a, user_map=users, alias_map=aliases, node_map=nodes,
                          failover_node=None)
        pairs, summary, _ = self.import_(d, peer.spool)
        self.assertEqual({o for o, _ in pairs}, {q1, q2})
        new1 = dict(pairs)[q1]
        self.assertTrue(wait_until(lambda: len(deliveries(node_b)) == 2, WAIT),
                        deliveries(node_b))
        self.assertTrue(d.wait_queue_empty(WAIT), d.queue_files())
        time.sleep(2)
        self.assertEqual(sorted(deliveries(node_b)), sorted([(id1, bob), (id2, bob)]))
        self.assertEqual(sorted(deliveries(node_a)), sorted([(id1, alice), (id2, carol)]),
                         "the survivor delivered again what the peer had delivered")
        self.assertEqual(d.log_lines(r"%s: to=<%s>" % (new1, re.escape(alice))), [])

    # a held message stays held, under its new id
    def test_held_stays_held(self):
        sink = self.sink("sink")
        peer = self.sorterd("peer", failover_node="lmtp:[127.0.0.1]:%d" % dead_port(), **SLOW)
        sent = self.send(peer, 2, "held")
        held = sorted(sent)[0]
        self.assertEqual(peer.ctl("hold", held).returncode, 0)
        self.kill_master_first(peer)
        d = self.survivor(sink)
        pairs, summary, r = self.import_(d, peer.spool)
        self.assertEqual(summary["held"], 1)
        new = dict(pairs)[held]
        self.assertIn("%s -> %s (on hold)" % (held, new), r.stdout)
        self.assertEqual([m["state"] for m in d.queue() if m["id"] == new], ["hold"])
        self.assert_once(sink, [sent[q] for q in sent if q != held])
        self.assertNotIn(sent[held], {m for m, _ in deliveries(sink)})
        self.assertEqual(d.ctl("release", new).returncode, 0)
        self.assert_once(sink, sent.values())

    # interrupted at each step: a rerun finishes, nothing twice, nothing lost
    def test_rerun_after_interruption(self):
        sink = self.sink("sink")
        peer, sent = self.dead_peer(3, "resume")
        d = self.survivor(sink)
        src = os.path.join(peer.spool, "deferred")
        ids = sorted(sent)
        for q in ids:
            self.assertTrue(os.path.exists(os.path.join(src, q)), (q, peer.queue_files()))
        imp = os.path.join(peer.spool, "importing")
        os.makedirs(imp, exist_ok=True)
        # a: stopped right after step 1 (marker made, nothing copied)
        os.rename(os.path.join(src, ids[0]), os.path.join(imp, "%s.%s.deferred"
                                                              % (ids[0], "0000000000AZ")))
        # b: stopped after step 3 (copy and its record in import/, not yet moved)
        rec = os.path.join(d.spool, "import")
        os.makedirs(rec, exist_ok=True)
        with open(os.path.join(src, ids[1]), "rb") as f:
            image = f.read()
        with open(os.path.join(rec, "0000000001AZ.msg"), "wb") as f:
            f.write(image)
        with open(os.path.join(rec, "0000000001AZ"), "w") as f:
            f.write("%s/deferred/%s\n" % (os.path.realpath(peer.spool), ids[1]))
        os.rename(os.path.join(src, ids[1]), os.path.join(imp, "%s.%s.deferred"
                                                              % (ids[1], "0000000001AZ")))
        # c: stopped after step 4, its copy since delivered and removed (the record is
        # there, the copy is not): only the source is left to remove
        os.rename(os.path.join(src, ids[2]), os.path.join(imp, "%s.%s.deferred"
                                                              % (ids[2], "0000000002AZ")))
        with open(os.path.join(rec, "0000000002AZ"), "w") as f:
            f.write("%s/deferred/%s\n" % (os.path.realpath(peer.spool), ids[2]))
        pairs, summary, r = self.import_(d, peer.spool)
        self.assertEqual(sorted(pairs), sorted([(ids[0], "0000000000AZ"),
                                                (ids[1], "0000000001AZ"),
                                                (ids[2], "0000000002AZ")]))
        self.assertEqual(summary["resumed"], 3)
        self.assert_source_empty(peer)
        self.assertEqual(os.listdir(rec), [])
        # a and b delivered once; c was taken for delivered and is not copied again
        got = self.assert_once(sink, [sent[ids[0]], sent[ids[1]]])
        self.assertNotIn(sent[ids[2]], {m for m, _ in got})

    # kill -9 of sorterctl import while a record is being put in place: the record is
    # there whole or not at all, so the next run copies again and leaves nothing behind
    def test_kill9_before_the_record_is_in_place(self):
        sink = self.sink("sink")
        peer, sent = self.dead_peer(3, "record")
        d = self.survivor(sink)
        log = os.path.join(self.tmp, "fsrec.log")
        imp = os.path.join(d.spool, "import")
        # the rename of a record into import/ (nothing else is renamed into import/) waits 30 s
        p = subprocess.Popen(list(fsrec.recorder_argv(self.build, log,
                                                      "FSREC_SLOW_RENAME=/import/:30000")) +
                             [os.path.join(self.build, "sorterctl"), "-c", d.conf_path,
                              "import", peer.spool], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        self.addCleanup(lambda: p.poll() is not None or (p.kill(), p.wait()))

        def written():
            # a record's text in import/NEWID.rec (its rename is held)
            for n in os.listdir(imp) if os.path.isdir(imp) else []:
                if n.endswith(".rec"):
                    with open(os.path.join(imp, n)) as f:
                        if f.read().startswith(peer.spool + "/"):
                            return n
            return None

        rec = wait_until(written, 20)
        self.assertTrue(rec, "no record was written: %s" % (
            os.listdir(imp) if os.path.isdir(imp) else "no import/"))
        p.kill()
        p.wait()
        newid = rec[:-len(".rec")]
        left = os.listdir(imp)
        self.assertIn(newid + ".msg", left)
        self.assertIn(rec, left)
        self.assertNotIn(newid, left, "a record before its rename")
        pairs, summary, r = self.import_(d, peer.spool)
        self.assertEqual(summary["failed"] + summary["quarantined"], 0, r.stderr)
        self.assertEqual(summary["imported"], 3, r.stdout)
        self.assert_source_empty(peer)
        self.assert_once(sink, sent.values())
        self.assertTrue(d.wait_queue_empty(WAIT), d.queue_files())
        self.assertEqual(os.listdir(imp), [])

    # kill -9 of sorterctl import at random points, again and again, the survivor
    # delivering meanwhile: the last run completes; each message delivered once
    def test_kill9_during_import(self):
        sink = self.sink("sink")
        peer, sent = self.dead_peer(150, "killed")
        d = self.survivor(sink)
        rnd = random.Random(int.from_bytes(os.urandom(4), "big"))
        kills = 0
        for i in range(100):
            p = subprocess.Popen([os.path.join(self.build, "sorterctl"), "-c", d.conf_path,
                                  "import", peer.spool], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
            time.sleep(rnd.uniform(0.002, 0.03))
            if p.poll() is None:
                p.kill()
                kills += 1
            _, err = p.communicate(timeout=60)
            self.assertNotIn(b"failed", err, err)
            if p.returncode == 0:
                break           # a run finished by itself
        self.assertGreater(kills, 0, "no run was killed midway: make the spool bigger")
        pairs, summary, r = self.import_(d, peer.spool)
        self.assertEqual(summary["failed"] + summary["quarantined"], 0, r.stderr)
        self.assert_source_empty(peer)
        got = self.assert_once(sink, sent.values(), settle=3)
        self.assertEqual(len(got), 150)
        self.assertTrue(d.wait_queue_empty(WAIT), d.queue_files())
        self.assertEqual(os.listdir(os.path.join(d.spool, "import")), [])


if __name__ == "__main__":
    unittest.main()
