"""test_queuectl.py - sorterctl steers the queue: `stats` counters move with the mail, and
delete / hold / release / flush act on the spool directly while the daemon is down (files move
between the spool's folders), after which a restarted sorterd does the right thing with each
message. Uses the two Dovecot nodes and the maps of test_delivery.DeliveryTestCase; node B is
down while mail for bob is deferred, and retry timers are an hour, so only what sorterctl did
can make a deferred message go out within a test's wait.
"""

import os
import socket
import subprocess
import time
import unittest

import fsrec
import test_delivery
from harness import Sorterd

BOB, ALICE, CAROL, GHOST = (test_delivery.BOB, test_delivery.ALICE, test_delivery.CAROL,
                            test_delivery.GHOST)
SLOW, WAIT, token = test_delivery.SLOW, test_delivery.WAIT, test_delivery.token

QUEUE_DIRS = ("incoming", "active", "deferred", "hold")
COUNTERS = ("connections", "messages_in", "rcpts_delivered", "rcpt_deferrals", "rcpts_bounced",
            "dsns_queued", "queue_incoming", "queue_active", "queue_deferred", "queue_hold")


def on_ext4(path):
    """Whether path is on ext4 (its magic number, 0xEF53), where sorterd overwrites in place."""
    r = subprocess.run(["stat", "-f", "-c", "%t", path], capture_output=True, text=True,
                       timeout=10, check=True)
    return r.stdout.strip() == "ef53"


class QueueCtlCase(test_delivery.DeliveryTestCase):
    def folder_of(self, qid):
        """The queue folders that hold qid's file (normally one, or none once it is gone)."""
        return [f for f in QUEUE_DIRS if os.path.exists(os.path.join(self.d.spool, f, qid))]

    def status_file(self, qid):
        return os.path.exists(os.path.join(self.d.spool, "defer", qid))

    def defer_for_bob(self, names):
        """Node B down, sorterd up: one message to bob per name, each deferred.
        Returns {name: (qid, token)}."""
        self.node_b.stop()
        self.start_sorterd(timers=SLOW)
        out = {}
        for name in names:
            tok = token(name)
            out[name] = (self.send(BOB, tok), tok)
        for qid, _ in out.values():
            self.wait_state(qid, "deferred")
            self.assertEqual(self.folder_of(qid), ["deferred"])
        return out

    def delivered(self, tok):
        return self.found(self.node_b, "bob", tok)


class StatsTest(QueueCtlCase):
    def test_counters_move(self):
        self.node_b.stop()
        self.start_sorterd(timers=SLOW)
        before = self.d.stats()
        for name in COUNTERS:
            self.assertIn(name, before, "sorterctl stats has no %s" % name)
        a, c, g = token("a"), token("c"), token("g")
        self.send(ALICE, a)
        self.send(CAROL, c)
        self.send(GHOST, g)
        self.wait_delivered(self.node_a, "alice", a)
        self.wait_delivered(self.node_a, "carol", c)
        self.wait_dsn("failed", GHOST)
        self.wait_queue_empty()
        mid = self.d.stats()
        delta = {k: mid[k] - before[k] for k in COUNTERS}
        self.assertGreaterEqual(delta["connections"], 3, delta)
        self.assertGreaterEqual(delta["messages_in"], 3, delta)
        # alice, carol, and the DSN to the sender
        self.assertGreaterEqual(delta["rcpts_delivered"], 3, delta)
        self.assertEqual(delta["rcpts_bounced"], 1, delta)
        self.assertEqual(delta["dsns_queued"], 1, delta)
        self.assertEqual(delta["rcpt_deferrals"], 0, delta)
        for q in ("queue_incoming", "queue_active", "queue_deferred", "queue_hold"):
            self.assertEqual(mid[q], 0, mid)

        b = token("b")
        qid = self.send(BOB, b)
        self.wait_state(qid, "deferred")
        now = self.d.stats()
        self.assertGreaterEqual(now["rcpt_deferrals"] - mid["rcpt_deferrals"], 1, now)
        self.assertEqual(now["queue_deferred"], 1, now)
        self.assertEqual(now["rcpts_delivered"], mid["rcpts_delivered"], now)
        self.ctl_ok("hold", qid)
        now = self.d.stats()
        self.assertEqual((now["queue_deferred"], now["queue_hold"]), (0, 1), now)


class OfflineTest(QueueCtlCase):
    def test_ops_with_daemon_down(self):
        m = self.defer_for_bob(["held", "deleted", "released", "flushed", "waiting"])
        self.d.stop()
        self.assertFalse(self.d.running())

        self.ctl_ok("hold", m["held"][0])
        self.assertEqual(self.folder_of(m["held"][0]), ["hold"])

        self.ctl_ok("delete", m["deleted"][0])
        self.assertEqual(self.folder_of(m["deleted"][0]), [])
        self.assertFalse(self.status_file(m["deleted"][0]), "defer/ status left behind")

        self.ctl_ok("hold", m["released"][0])
        self.assertEqual(self.folder_of(m["released"][0]), ["hold"])
        self.ctl_ok("release", m["released"][0])
        where = self.folder_of(m["released"][0])
        self.assertEqual(len(where), 1, where)
        self.assertNotEqual(where, ["hold"])

        self.ctl_ok("flush", m["flushed"][0])
        self.assertEqual(self.folder_of(m["flushed"][0]), ["deferred"])

        states = {e["id"]: e["state"] for e in self.d.queue()}
        self.assertEqual(states.get(m["held"][0]), "hold")
        self.assertNotIn(m["deleted"][0], states)
        self.assertEqual(states.get(m["waiting"][0]), "deferred")

        # node B back, the daemon back: what is due goes out, the rest stays put
        self.node_b.start()
        self.d.start()
        self.wait_delivered(self.node_b, "bob", m["released"][1])
        self.wait_delivered(self.node_b, "bob", m["flushed"][1])
        time.sleep(2)
        self.assertEqual(self.delivered(m["held"][1]), [], "a held message went out")
        self.assertEqual(self.delivered(m["waiting"][1]), [], "retried long before its time")
        left = {e["id"]: e["state"] for e in self.d.queue()}
        self.assertEqual(left, {m["held"][0]: "hold", m["waiting"][0]: "deferred"})

        # and the running daemon takes the same commands over its control socket
        self.ctl_ok("release", m["held"][0])
        self.wait_delivered(self.node_b, "bob", m["held"][1])
        self.ctl_ok("delete", "--all")
        self.wait_queue_empty()
        time.sleep(1)
        self.assertEqual(self.delivered(m["waiting"][1]), [], "a deleted message went out")
        self.assertEqual(self.delivered(m["deleted"][1]), [], "a deleted message went out")
        for name in ("released", "flushed", "held"):
            self.assertEqual(len(self.delivered(m[name][1])), 1, name)

    def test_after_kill_9(self):
        """A daemon killed with -9 leaves its control socket behind: sorterctl must notice
        that nobody answers and act on the spool itself."""
        m = self.defer_for_bob(["held", "deleted"])
        self.d.kill_all()
        self.ctl_ok("hold", m["held"][0])
        self.ctl_ok("delete", m["deleted"][0])
        self.assertEqual(self.folder_of(m["held"][0]), ["hold"])
        self.assertEqual(self.folder_of(m["deleted"][0]), [])
        self.node_b.start()
        self.d.start()
        self.ctl_ok("flush")
        time.sleep(2)
        self.assertEqual(self.delivered(m["held"][1]), [])
        self.ctl_ok("release", m["held"][0])
        self.wait_delivered(self.node_b, "bob", m["held"][1])
        self.wait_queue_empty()
        self.assertEqual(self.delivered(m["deleted"][1]), [])

    def test_unknown_id(self):
        self.start_sorterd(timers=SLOW)
        for running in (True, False):
            with self.subTest(daemon_running=running):
                if not running:
                    self.d.stop()
                for verb in ("hold", "release", "delete"):
                    r = self.d.ctl(verb, "ZZZZZZZZZZZZ", check=False)
                    self.assertNotEqual(r.returncode, 0, "%s of an unknown id succeeded" % verb)
                    self.assertIn("ZZZZZZZZZZZZ", r.stderr + r.stdout)

    def test_a_move_never_replaces_a_file_of_the_same_name(self):
        """hold and release never move a message over a file of the same name (a second
        message under one id, planted or left over): the request fails and says why, and both
        files stay, daemon down (hold and release) and up (hold: a file planted in incoming/
        would be taken in at once)."""
        m = self.defer_for_bob(["moved", "other"])
        qid = m["moved"][0]
        spool = self.d.spool
        with open(os.path.join(spool, "deferred", m["other"][0]), "rb") as f:
            other = f.read()

        def refused(verb, src, dst, why):
            planted = os.path.join(spool, dst, qid)
            with open(planted, "wb") as f:
                f.write(other)
            r = self.d.ctl(verb, qid, check=False)
            self.assertNotEqual(r.returncode, 0, r.stdout)
            self.assertIn("%s: %s" % (qid, why), r.stdout + r.stderr)
            with open(planted, "rb") as f:
                self.assertEqual(f.read(), other, "the file in %s/ was replaced" % dst)
            self.assertTrue(os.path.exists(os.path.join(spool, src, qid)))
            os.unlink(planted)

        exists = "hold/%s exists already: left in deferred/" % qid
        self.d.stop()
        refused("hold", "deferred", "hold", exists)
        # (a release looks in incoming/ first, and finds the message not on hold)
        os.rename(os.path.join(spool, "deferred", qid), os.path.join(spool, "hold", qid))
        refused("release", "hold", "incoming", "not on hold")
        os.rename(os.path.join(spool, "hold", qid), os.path.join(spool, "deferred", qid))
        self.d.start()
        refused("hold", "deferred", "hold", exists)
        self.assertEqual({e["id"]: e["state"] for e in self.d.queue()},
                         {qid: "deferred", m["other"][0]: "deferred"})


class OutcomeTest(QueueCtlCase):
    def test_a_deferral_never_replaces_a_file_of_the_same_name(self):
        """A delivery that defers while a file of its id sits in deferred/ (planted, or
        left over) leaves that file as it was, gives it no status, and keeps the message
        in active/ with a warning; once the file is gone, the next attempt (here at start)
        defers it as usual."""
        mute = socket.socket()
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)          # connects, never greets: the delivery to it waits
        self.addCleanup(mute.close)
        self.node_map["node-b"] = "lmtp:[127.0.0.1]:%d" % mute.getsockname()[1]
        self.start_sorterd(timers=SLOW)
        qid = self.send(BOB, token("stays"))
        self.wait_state(qid, "active")
        planted = os.path.join(self.d.spool, "deferred", qid)
        with open(planted, "wb") as f:
            f.write(b"planted\n")
        mute.close()            # the waiting connection is reset: the attempt defers
        self.wait_log(r"%s: deferred/%s exists already: the message stays in active/"
                      % (qid, qid))
        with open(planted, "rb") as f:
            self.assertEqual(f.read(), b"planted\n", "the file in deferred/ was replaced")
        self.assertFalse(self.status_file(qid))
        self.assertEqual(sorted(self.folder_of(qid)), ["active", "deferred"])
        os.unlink(planted)
        self.assertEqual(self.d.stop(), 0)
        self.d.start()
        self.wait_state(qid, "deferred")
        self.assertEqual(self.folder_of(qid), ["deferred"])
        self.assertTrue(self.status_file(qid))


class FlushTest(QueueCtlCase):
    def test_flush_says_why_a_message_is_not_retried(self):
        """`sorterctl flush ID` fails with the reason: the active queue is full (one
        delivery in memory at qmgr_message_active_limit = 1, stuck on a node that never
        greets), or the message is on hold; it is retried once the way is clear."""
        mute = socket.socket()
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)          # connects, never greets: the delivery to it waits
        self.addCleanup(mute.close)
        self.node_map["node-b"] = "lmtp:[127.0.0.1]:%d" % mute.getsockname()[1]
        self.node_a.stop()
        self.start_sorterd(timers=SLOW, qmgr_message_active_limit=1)
        tok_a, tok_h = token("waits"), token("held")
        qid_a = self.send(ALICE, tok_a)
        qid_h = self.send(CAROL, tok_h)
        self.wait_state(qid_a, "deferred")
        self.wait_state(qid_h, "deferred")
        self.ctl_ok("hold", qid_h)
        qid_b = self.send(BOB, token("stuck"))
        self.wait_state(qid_b, "active")
        self.node_a.start()

        r = self.d.ctl("flush", qid_a, check=False)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("%s: not retried: the active queue is full" % qid_a, r.stdout + r.stderr)
        self.assertEqual(self.folder_of(qid_a), ["deferred"])
        r = self.d.ctl("flush", qid_h, check=False)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("%s: on hold; release it to deliver it" % qid_h, r.stdout + r.stderr)
        r = self.d.ctl("flush", "ZZZZZZZZZZZZ", check=False)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("ZZZZZZZZZZZZ: not in the deferred queue", r.stdout + r.stderr)

        # the stuck delivery given up (its message deleted): the flush goes through
        self.ctl_ok("delete", qid_b)
        mute.close()
        self.assertTrue(test_delivery.wait_until(
            lambda: self.d.ctl("flush", qid_a, check=False).returncode == 0, WAIT),
            self.d.log_tail())
        self.wait_delivered(self.node_a, "alice", tok_a)


class BatchSyncTest(QueueCtlCase):
    def recorded_deferred(self, n):
        """sorterd under the file system call recorder, and n messages to BOB deferred (his
        node is down): the recorder's log and the messages' tokens."""
        log = os.path.join(self.tmp, "fsrec.log")
        self.node_b.stop()
        settings = dict(SLOW)
        settings.update(self.write_maps())
        self.d = Sorterd(os.path.join(self.tmp, "d"), start=False, **settings)
        self.d.argv_prefix = fsrec.recorder_argv(self.d.build, log)
        self.daemons.append(self.d)
        self.addCleanup(self._finish, self.d)
        self.d.start()
        toks = [token("batch%d" % i) for i in range(n)]
        qids = [self.send(BOB, t) for t in toks]
        for qid in qids:
            self.wait_state(qid, "deferred")
        return log, toks

    def recorded_request(self, log, *args):
        """Runs sorterctl args (it must succeed): the recorded calls made while it ran."""
        start = time.monotonic_ns()
        self.ctl_ok(*args)
        answered = time.monotonic_ns()
        return [r for r in fsrec.read_log(log) if start <= r.t0 <= answered], answered

    def test_a_selection_syncs_each_folder_once_before_it_answers(self):
        """`sorterctl hold --rcpt BOB` over 30 deferred messages renames each into hold/, then
        fsyncs hold/ once (not once a message: the queue manager's loop waits for each),
        and answers only after that fsync; `release --rcpt BOB` does the same with incoming/,
        and the released mail is delivered."""
        log, toks = self.recorded_deferred(30)

        def one_batch(verb, folder):
            recs, answered = self.recorded_request(log, verb, "--rcpt", BOB)
            moves = [r for r in recs if r.call in fsrec.RENAME_CALLS and
                     os.path.dirname(r.path2) == os.path.join(self.d.spool, folder)]
            syncs = [r for r in recs if r.call in fsrec.SYNC_CALLS and r.ret == 0 and
                     r.path == os.path.join(self.d.spool, folder)]
            self.assertEqual(len(moves), 30, moves)
            self.assertEqual(len(syncs), 1, syncs)
            self.assertGreater(syncs[0].t0, max(r.t1 for r in moves))
            self.assertLess(syncs[0].t1, answered)

        one_batch("hold", "hold")
        self.assertEqual({e["state"] for e in self.d.queue()}, {"hold"})
        self.node_b.start()
        one_batch("release", "incoming")
        for t in toks:
            self.wait_delivered(self.node_b, "bob", t)
        self.wait_queue_empty()

    def test_a_selected_delete_makes_its_marks_durable_before_the_names_go(self):
        """`sorterctl delete --rcpt BOB` over 30 deferred messages marks each one's slot freed,
        and every mark is durable (its own fdatasync, or a sync_file_range of it followed by
        a cache flush, an fdatasync) before its name in deferred/ goes, so that a crash never
        brings a deleted message back; deferred/ is fsynced once, after the last removal and
        before the answer. On ext4 the 30 marks share one flush, where an fdatasync each
        made the queue manager's loop wait for 30 device round trips."""
        log, toks = self.recorded_deferred(30)
        recs, answered = self.recorded_request(log, "delete", "--rcpt", BOB)
        deferred = os.path.join(self.d.spool, "deferred")
        names = [r for r in recs if r.call in ("unlink", "unlinkat") and r.ret == 0 and
                 os.path.dirname(r.path) == deferred]
        self.assertEqual(len(names), 30, names)
        fsyncs = [r for r in recs if r.call in fsrec.SYNC_CALLS and r.ret == 0]
        for name in names:
            mark = [r for r in recs if r.call in fsrec.WRITE_CALLS and r.ino == name.ino and
                    r.off == 0 and r.len == 1 and r.ret == 1 and r.t1 <= name.t0]
            self.assertEqual(len(mark), 1, (name, mark))
            own = [r for r in fsyncs if r.ino == name.ino and r.t0 >= mark[0].t1 and
                   r.t1 <= name.t0]
            ranged = [r for r in recs if r.call == fsrec.RANGE_SYNC and r.ret == 0 and
                      r.ino == name.ino and r.off == 0 and r.t0 >= mark[0].t1]
            flush = [r for r in fsyncs if ranged and r.t0 >= ranged[0].t1 and r.t1 <= name.t0]
            self.assertTrue(own or flush, "%s: its mark %s is not durable before %s"
                            % (name.path, mark, name))
        dir_syncs = [r for r in fsyncs if r.path == deferred]
        self.assertEqual(len(dir_syncs), 1, dir_syncs)
        self.assertGreater(dir_syncs[0].t0, max(r.t1 for r in names))
        self.assertLess(dir_syncs[0].t1, answered)
        slot_syncs = [r for r in fsyncs if r.ino in {name.ino for name in names}]
        if on_ext4(deferred):   # elsewhere an fdatasync each
            self.assertEqual(len(slot_syncs), 1, slot_syncs)
        self.assertEqual(self.d.queue(), [])
        for t in toks:
            self.assertFalse(self.delivered(t))

class ShowTest(QueueCtlCase):
    def test_content_that_does_not_match_its_check(self):
        """sorterctl show checks the content it printed against the file's check record: a
        message delivered while it is shown, its file written over by a new one, or a damaged
        file, is reported (exit 1), never passed off as the message."""
        m = self.defer_for_bob(["shown"])
        qid, tok = m["shown"]
        r = self.d.ctl("show", qid, check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(tok, r.stdout)
        path = os.path.join(self.d.spool, "deferred", qid)
        with open(path, "r+b") as f:
            data = f.read()
            at = data.index(tok.encode())
            f.seek(at)
            f.write(b"#")
        r = self.d.ctl("show", qid, check=False)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("%s: its content does not match its check record" % qid, r.stderr)


if __name__ == "__main__":
    unittest.main()
