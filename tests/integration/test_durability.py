"""test_durability.py - a 250 after DATA means the message is on disk: kill -9 of every sorterd
process right after it loses nothing, under concurrent load too; a spool file system that is
full, or below queue_minfree, gets 452 4.3.1 / 451 4.3.0, never a 250 for a message that is not
in the queue, and never leaves a corrupt queue file.

FsyncOrderTest proves the order of the system calls behind each 250: sorterd runs under the
LD_PRELOAD recorder (tests/durability/fsrec.c, fsrec.py), and for every acknowledged message the
record must show its data written, an fsync of the file started after the last write, the rename
into incoming/ and an fsync of incoming/ started after the rename, both returned before the
client read the 250 (same CLOCK_MONOTONIC). KillLoopTest kills a random sorterd process (master,
worker or qmgr) with SIGKILL 20 times under load from concurrent senders, delivering to an LMTP
sink: every message that got a 250 is delivered, a message is delivered twice only when a
queue manager died just after the sink took it, and no queue file is corrupt."""

import copy
import errno
import os
import random
import re
import signal
import subprocess
import threading
import time
import unittest

import fsrec
from harness import (LOCAL_DOMAIN, Client, Sorterd, SorterTestCase, blast, children_of, fd_links,
                     join_all, listener_inode, message, pid_alive, wait_until)
from smtpsink import SmtpSink, free_port_on, smtp_sink_missing

RCPT = "user@" + LOCAL_DOMAIN
SENDER = "sender@remote.test"
RECYCLE_PREFILL = 1024  # queue.h: the free slots the queue manager makes at start
BODY_LINES = 40     # KillLoopTest: each message's body is its marker on this many lines


class KillTest(SorterTestCase):
    def test_kill_right_after_250(self):
        for i in range(3):
            with self.subTest(round=i):
                d = self.sorterd("d%d" % i)
                c = self.connect(d)
                marker = "durable-%d-%s" % (i, os.urandom(6).hex())
                r, qid = c.send_message(SENDER, [RCPT], message("kill", marker))
                d.kill_all()
                self.assertQueued(r, qid)
                # no restart: sorterctl reads the spool of a dead daemon
                [m] = [m for m in d.queue() if m["id"] == qid]
                self.assertEqual(m["sender"], SENDER)
                self.assertEqual([x["address"] for x in m["recipients"]], [RCPT])
                self.assertIn(marker, d.show(qid)[1])

    def test_kill_under_load(self):
        d = self.sorterd()
        stop = threading.Event()
        threads, acked, errors = blast(d.port, 10, 20, body_size=2048, stop=stop)
        # kill in the middle of the run, once about a quarter of the messages were acknowledged
        wait_until(lambda: len(acked) >= 50 or not any(t.is_alive() for t in threads), 120,
                   interval=0.001)
        d.kill_all()
        stop.set()
        self.assertTrue(join_all(threads, 60), "client threads hang after the kill")
        got = list(acked)   # every 250 that reached a client
        self.assertGreater(len(got), 0, "no message acknowledged before the kill: %s" % errors)
        self.assertEqual(len(got), len(set(got)), "a queue id was given twice")
        listed = d.queue_ids()
        missing = set(got) - listed
        self.assertEqual(missing, set(), "acknowledged but not in the queue")
        for qid in got:
            fields, stored = d.show(qid)
            self.assertEqual(fields["id"], [qid])
            self.assertTrue(stored.startswith("Received:"), qid)
            self.assertIn("Subject: blast ", stored)
        self.assertEqual(corrupt_files(d), [])


def corrupt_files(d):
    try:
        return os.listdir(os.path.join(d.spool, "corrupt"))
    except FileNotFoundError:
        return []


def without_journal_sync(records, jdir):
    """records with the journal's writes left in the page cache: its sync_file_range calls
    taken out, its direct writes made buffered ones."""
    out = []
    for r in records:
        if os.path.dirname(r.path) != jdir:
            out.append(r)
        elif r.call != fsrec.RANGE_SYNC:
            r = copy.copy(r)
            r.direct = False
            out.append(r)
    return out


class FsyncOrderTest(SorterTestCase):
    """Every 250 comes after a completed fsync of the file's data and of its directory entry."""

    def recorded_sorterd(self, name="d", direct=True, knobs=(), **overrides):
        """A sorterd (master, workers, qmgr) under the recorder; returns (daemon, log path).
        direct=False: its journals go through the page cache, as where the file system has
        no direct I/O (fsrec's FSREC_NO_DIRECT); knobs: more of fsrec's settings."""
        log = os.path.join(self.tmp, name + "-fsrec.log")
        d = Sorterd(os.path.join(self.tmp, name), start=False, **overrides)
        d.argv_prefix = fsrec.recorder_argv(d.build, log, "FSREC_NO_DIRECT=%d" % (not direct),
                                            *knobs)
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()
        return d, log

    @staticmethod
    def send(c, n, size):
        """One message of about size bytes on client c: (qid, reply time in monotonic ns,
        content bytes sent)."""
        body = ("".join("fsync %d line %d %s\r\n" % (n, i, "y" * 60)
                        for i in range(size // 80 + 1)))
        content = message("fsync %d" % n, body).encode()
        r, qid = c.send_message(SENDER, [RCPT], content, ehlo=False)
        t250 = time.monotonic_ns()
        if qid is None:
            raise AssertionError("message %d: %s" % (n, r))
        return qid, t250, len(content)

    def send_in_turn(self, d, count, size):
        """count messages of about size bytes to d, one after the other on one session:
        {qid: (reply time, content bytes sent)}."""
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        acks = {}
        for n in range(count):
            qid, t250, sent = self.send(c, n, size)
            acks[qid] = (t250, sent)
        c.cmd("QUIT")
        return acks

    def test_fsync_before_250(self):
        self.check_fsync_before_250(direct=True)

    def test_fsync_before_250_page_cache(self):
        """The same where the journals have no direct I/O."""
        self.check_fsync_before_250(direct=False)

    def check_fsync_before_250(self, direct):
        # deliveries fail (nobody listens at the node) and wait an hour: the queue files stay
        closed = free_port_on("127.0.0.1")
        d, log = self.recorded_sorterd(direct=direct,
                                       failover_node="lmtp:[127.0.0.1]:%d" % closed,
                                       queue_run_delay=3600, minimal_backoff_time=3600,
                                       maximal_backoff_time=3600)
        acks = {}
        sizes = (200, 5000, 150000)     # 150 KB goes to the file in several 64 KiB writes
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        for n in range(24):             # one after the other
            qid, t250, size = self.send(c, n, sizes[n % len(sizes)])
            acks[qid] = (t250, size)
        c.cmd("QUIT")
        lock, errors = threading.Lock(), []

        def sender(k):                  # then side by side, so that commits overlap
            try:
                with Client(d.port, timeout=60) as cc:
                    if cc.reply().code != 220 or cc.ehlo().code != 250:
                        raise AssertionError("no greeting or EHLO refused")
                    for i in range(12):
                        qid, t250, size = self.send(cc, 1000 * (k + 1) + i,
                                                    sizes[(k + i) % len(sizes)])
                        with lock:
                            acks[qid] = (t250, size)
                    cc.cmd("QUIT")
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append("sender %d: %r" % (k, e))

        threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(6)]
        for t in threads:
            t.start()
        self.assertTrue(join_all(threads, 120), "senders hang")
        self.assertEqual(errors, [])
        self.assertEqual(len(acks), 24 + 6 * 12, "a queue id was given twice")
        self.assertEqual(d.queue_ids(), set(acks))
        records = fsrec.read_log(log)
        pids = {r.pid for r in records}
        self.assertGreaterEqual(len(pids), 3, "the recorder saw no workers or qmgr: %s" % pids)
        problems = fsrec.durability_problems(records, d.spool, acks)
        self.assertFalse(problems, "%d problems with %d acknowledged messages:\n%s"
                         % (len(problems), len(acks), "\n".join(problems[:20])))
        # the small ones went through the writers' journals, the 150 KB ones were synced in
        # their slots (the journal takes 64 KiB at most)
        self.assertEqual(fsrec.journaled(records, d.spool, acks),
                         {q for q, (t, size) in acks.items() if size < 60000})
        # written by the journals' threads straight to the device, or by the I/O threads
        # into the page cache
        self.assertEqual({r.direct for r, e in fsrec.journal_writes(records, d.spool)},
                         {direct})

    def test_fsync_before_250_edited(self):
        """The proof for messages a milter edited (a header added): each is committed into a
        slot of its own, the original read back from the stream's; a third of them are also
        quarantined, linked into hold/. The proof fails without the edited file's
        fdatasync."""
        from milters import TestFilter, milter_missing
        missing = milter_missing()
        if missing:
            self.skipTest(missing)
        f = TestFilter(os.path.join(self.tmp, "filter"), "A")
        f.start()
        self.addCleanup(f.stop)
        closed = free_port_on("127.0.0.1")
        d, log = self.recorded_sorterd(failover_node="lmtp:[127.0.0.1]:%d" % closed,
                                       smtpd_milters=f.spec, queue_run_delay=3600,
                                       minimal_backoff_time=3600, maximal_backoff_time=3600)
        acks, held = {}, set()
        sizes = (200, 5000, 150000)     # 150 KB is streamed to its first slot before the edit
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        for n in range(12):
            edits = ["X-Test-Milter: addheader X-Added edited %d" % n]
            if n % 3 == 0:
                edits.append("X-Test-Milter: quarantine held for the proof")
            body = "".join("edit %d line %d %s\r\n" % (n, i, "z" * 60)
                           for i in range(sizes[n % 3] // 80 + 1))
            content = message("edit %d" % n, body, edits).encode()
            r, qid = c.send_message(SENDER, [RCPT], content, ehlo=False)
            t250 = time.monotonic_ns()
            self.assertIsNotNone(qid, "message %d: %s" % (n, r))
            acks[qid] = (t250, len(content))
            if n % 3 == 0:
                held.add(qid)
        c.cmd("QUIT")
        self.assertEqual(d.queue_ids(), set(acks))
        spool = os.path.realpath(d.spool)
        hold = os.path.join(spool, "hold")
        self.assertEqual(set(os.listdir(hold)), held)
        for qid in acks:
            self.assertIn("X-Added: edited", d.show(qid)[1], qid)
        records = fsrec.read_log(log)
        self.assertEqual(fsrec.durability_problems(records, d.spool, acks), [])
        # each edit went into a slot of its own: not the inode its original was streamed into
        links = {os.path.basename(r.path2): r for r in records if r.call in fsrec.LINK_CALLS
                 and r.ret == 0 and os.path.basename(r.path2) in acks}
        self.assertEqual(set(links), set(acks))
        for qid, link in links.items():
            self.assertEqual(os.path.dirname(link.path), os.path.join(spool, "slots"))
            self.assertEqual(os.path.dirname(link.path2),
                             hold if qid in held else os.path.join(spool, "incoming"))
        journaled = fsrec.journaled(records, d.spool, acks)
        self.assertEqual(journaled, {q for q, (t, size) in acks.items() if size < 60000})
        jdir = os.path.join(spool, "journal")
        for qid in acks:
            ino = links[qid].ino
            if qid in journaled:    # the journal's sync taken out
                without_file_sync = without_journal_sync(records, jdir)
            else:
                without_file_sync = [r for r in records
                                     if not (r.call in fsrec.SYNC_CALLS and r.ino == ino)]
            self.assertTrue(any(qid in p for p in
                                fsrec.durability_problems(without_file_sync, d.spool, acks)),
                            qid)

    def recycled(self, first_size=5000, sizes=(200, 5000, 150000)):
        """Messages written over slots that held delivered messages: the first ones (of
        first_size bytes) are delivered, and the next ones (of sizes, in turn) are written
        over their slots. Returns (daemon, records, acks of the next ones, the ids among them
        written over a first one's slot)."""
        sink = SmtpSink(os.path.join(self.tmp, "sink"), "127.0.0.1", free_port_on("127.0.0.1"),
                        extra_args=["-L"])
        sink.start()
        self.addCleanup(sink.stop)
        d, log = self.recorded_sorterd(failover_node="lmtp:[127.0.0.1]:%d" % sink.port)
        # the start-up fill done first: a worker then takes its first slots from it, and,
        # those used, the ones the first messages free
        slots = os.path.join(d.spool, "slots")
        self.assertTrue(wait_until(lambda: len(os.listdir(slots)) >= RECYCLE_PREFILL, 30),
                        d.log_tail())
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        first = set()
        for n in range(30):             # delivered: their slots are free again
            first.add(self.send(c, n, first_size)[0])
        self.assertTrue(wait_until(lambda: not d.queue_ids(), 30), d.log_tail())
        acks = {}
        for n in range(30, 54):
            qid, t250, size = self.send(c, n, sizes[n % len(sizes)])
            acks[qid] = (t250, size)
        c.cmd("QUIT")
        records = fsrec.read_log(log)
        spool = os.path.realpath(d.spool)
        inc = os.path.join(spool, "incoming")
        first_inos = {r.ino for r in records if r.call in fsrec.LINK_CALLS
                      and os.path.basename(r.path2) in first and os.path.dirname(r.path2) == inc}
        again = {os.path.basename(r.path2) for r in records if r.call in fsrec.LINK_CALLS
                 and r.ino in first_inos and os.path.basename(r.path2) in acks}
        self.assertGreaterEqual(len(again), 20, "written over the first messages' slots: %s"
                                % again)
        return d, records, acks, again

    def test_fsync_before_250_recycled_files(self):
        """The same proof for messages written over slots that held delivered messages."""
        d, records, acks, _ = self.recycled()
        problems = fsrec.durability_problems(records, d.spool, acks)
        self.assertFalse(problems, "%d problems with %d acknowledged messages:\n%s"
                         % (len(problems), len(acks), "\n".join(problems[:20])))

    def test_overwrite_in_place(self):
        """A slot this worker fdatasync'd before, written over within that length, is synced
        in place: sync_file_range of the slot, then an fdatasync of the spool's flush file
        (the device's cache flush). The proof holds, and fails without either call, without
        the earlier fdatasync that made the slot's length durable, or with the 250 read
        before the flush returned. (The spool must be on ext4, as the suite's temp dirs are:
        elsewhere every slot is fdatasync'd.) The messages are too big for the journal (64
        KiB): the first ones make their slots that long, the next ones fit."""
        d, records, acks, again = self.recycled(first_size=75000, sizes=(70000,))
        spool = os.path.realpath(d.spool)
        fs = subprocess.run(["stat", "-f", "-c", "%T", spool], capture_output=True,
                            text=True).stdout.strip()
        self.assertEqual(fs, "ext2/ext3", "the spool is on %s, not ext4" % fs)
        self.assertEqual(fsrec.durability_problems(records, d.spool, acks), [])
        placed = fsrec.in_place(records, d.spool, acks)
        self.assertEqual(fsrec.journaled(records, d.spool, acks), set())
        self.assertGreaterEqual(len(again), 10, again)
        self.assertEqual(placed & again, again)
        # only a slot that held an earlier message of this worker (fdatasync'd then)
        links = sorted((r for r in records if r.call in fsrec.LINK_CALLS and r.ret == 0
                        and os.path.dirname(r.path) == os.path.join(spool, "slots")),
                       key=lambda r: r.t0)
        seen, reused = set(), set()
        for r in links:
            if r.ino in seen:
                reused.add(os.path.basename(r.path2))
            seen.add(r.ino)
        self.assertFalse(placed - reused, "synced in place in a slot that held no message")
        flush = os.path.join(spool, "flush", "use")

        def failing(recs, late=None):
            return {q for q in placed if any(q in p for p in fsrec.durability_problems(
                recs, d.spool, late or acks))}

        self.assertEqual(failing([r for r in records if not (
            r.call in fsrec.SYNC_CALLS and r.path == flush)]), placed)
        self.assertEqual(failing([r for r in records if r.call != fsrec.RANGE_SYNC]), placed)
        inos = {os.path.basename(r.path2): r.ino for r in records
                if r.call in fsrec.LINK_CALLS and os.path.basename(r.path2) in placed}
        self.assertEqual(failing([r for r in records if not (
            r.call in fsrec.SYNC_CALLS and r.ino in inos.values())]), placed)
        flushes = sorted(r.t1 for r in records if r.call in fsrec.SYNC_CALLS and r.path == flush)
        late = dict(acks)
        for q in placed:
            t250, size = acks[q]
            late[q] = (max(t for t in flushes if t <= t250) - 1, size)
        self.assertEqual(failing(records, late), placed)

    def test_recorder_sees_a_missing_fsync(self):
        """The proof itself, for messages written over slots of the start-up fill (too big
        for the journal): the same record with the file's fsync, or the directory's, taken
        out (or moved after the 250) no longer passes."""
        self.check_proof(new=False)

    def test_direct_write_refused(self):
        """A journal whose direct write is refused (fsrec's FSREC_DIRECT_EINVAL: EINVAL, as
        from a device that does not take the alignment it gave) writes through the page cache
        from then on, with a warning: the refused batch's messages are synced in their slots,
        the later ones' entries go through the page cache, and every 250 is proven."""
        d, log = self.recorded_sorterd(knobs=("FSREC_DIRECT_EINVAL=1",), workers=1)
        acks = self.send_in_turn(d, 4, 5000)
        self.assertEqual(d.queue_ids(), set(acks))
        records = fsrec.read_log(log)
        self.assertEqual(fsrec.durability_problems(records, d.spool, acks), [])
        jdir = os.path.join(os.path.realpath(d.spool), "journal")
        refused = [r for r in records if r.call in fsrec.WRITE_CALLS and r.direct
                   and os.path.dirname(r.path) == jdir]
        self.assertEqual([(r.ret, r.errno) for r in refused], [(-1, errno.EINVAL)])
        # the refused batch: the first message's entry alone (one sender, one at a time)
        self.assertEqual(len(refused[0].segs), 1)
        first = refused[0].segs[0][1][45:57].decode()
        self.assertIn(first, acks)
        self.assertEqual(fsrec.journaled(records, d.spool, acks), set(acks) - {first})
        self.assertEqual({r.direct for r, e in fsrec.journal_writes(records, d.spool)}, {False})
        self.assertEqual(d.log().count("a direct write refused"), 1, d.log_tail())

    def test_recorder_sees_a_missing_journal_sync(self):
        """The proof for messages made durable by the journal, its entries written with
        direct I/O: it fails without the entry's write, with that write not direct (no
        sync_file_range follows it), without the flush after it, without the fdatasync that
        made the journal file's length durable when it was made, and with the 250 read
        before the flush returned."""
        self.check_journal_proof(direct=True)

    def test_recorder_sees_a_missing_journal_sync_page_cache(self):
        """The same for entries written through the page cache: it also fails without the
        journal's sync_file_range."""
        self.check_journal_proof(direct=False)

    def check_journal_proof(self, direct):
        d, log = self.recorded_sorterd(direct=direct)
        acks = self.send_in_turn(d, 3, 5000)
        records = fsrec.read_log(log)
        spool = os.path.realpath(d.spool)
        jdir, flush = os.path.join(spool, "journal"), os.path.join(spool, "flush", "use")
        self.assertEqual(fsrec.durability_problems(records, d.spool, acks), [])
        self.assertEqual(fsrec.journaled(records, d.spool, acks), set(acks))

        def failing(recs, late=None):
            return {q for q in acks if any(q in p for p in fsrec.durability_problems(
                recs, d.spool, late or acks))}

        in_journal = lambda r: os.path.dirname(r.path) == jdir  # noqa: E731
        entry_writes = [r for r, e in fsrec.journal_writes(records, d.spool)]
        self.assertEqual({r.direct for r in entry_writes}, {direct})
        self.assertEqual(failing([r for r in records if r not in entry_writes]), set(acks))
        self.assertEqual(failing([r for r in records if not (
            r.call == fsrec.RANGE_SYNC and in_journal(r))]), set() if direct else set(acks))
        self.assertEqual(failing(without_journal_sync(records, jdir)), set(acks))
        self.assertEqual(failing([r for r in records if not (
            r.call in fsrec.SYNC_CALLS and r.path == flush)]), set(acks))
        self.assertEqual(failing([r for r in records if not (
            r.call in fsrec.SYNC_CALLS and in_journal(r))]), set(acks))
        flushes = sorted(r.t1 for r in records if r.call in fsrec.SYNC_CALLS and r.path == flush)
        late = {q: (max(t for t in flushes if t <= t250) - 1, size)
                for q, (t250, size) in acks.items()}
        self.assertEqual(failing(records, late), set(acks))

    def test_recorder_sees_a_missing_fsync_new_slots(self):
        """The same for slots made for the message: slots/ emptied before the first one."""
        self.check_proof(new=True)

    def check_proof(self, new):
        d, log = self.recorded_sorterd()
        slots = os.path.join(d.spool, "slots")
        self.assertTrue(wait_until(lambda: len(os.listdir(slots)) >= RECYCLE_PREFILL, 30),
                        d.log_tail())
        if new:
            for name in os.listdir(slots):
                os.unlink(os.path.join(slots, name))
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        acks = {}
        for n in range(3):
            qid, t250, size = self.send(c, n, 70000)
            acks[qid] = (t250, size)
        c.cmd("QUIT")
        records = fsrec.read_log(log)
        spool = os.path.realpath(d.spool)
        inc, slots = os.path.join(spool, "incoming"), os.path.join(spool, "slots")
        self.assertEqual(fsrec.journaled(records, d.spool, acks), set())
        self.assertEqual(fsrec.durability_problems(records, d.spool, acks), [])
        self.assertEqual(fsrec.written_over_slots(records, d.spool, acks),
                         set() if new else set(acks))
        inos = {}
        for qid in acks:
            ino = inos[qid] = next(r.ino for r in records if r.call in fsrec.LINK_CALLS
                                   and r.path2 == os.path.join(inc, qid))
            without_file_sync = [r for r in records
                                 if not (r.call in fsrec.SYNC_CALLS and r.ino == ino)]
            self.assertTrue(any(qid in p for p in
                                fsrec.durability_problems(without_file_sync, d.spool, acks)))
        without_dir_sync = [r for r in records
                            if not (r.call in fsrec.SYNC_CALLS and r.path == slots)]
        problems = fsrec.durability_problems(without_dir_sync, d.spool, acks)
        self.assertEqual(len([p for p in problems if "fsync of slots/ started" in p]),
                         len(acks), problems)
        # the 250 read 1 ns before its message's own fsync returned
        late = {qid: (max(r.t1 for r in records if r.call in fsrec.SYNC_CALLS
                          and r.ino == inos[qid]) - 1, size)
                for qid, (t, size) in acks.items()}
        self.assertEqual(len(fsrec.durability_problems(records, d.spool, late)), len(acks))
        if new:
            # and 1 ns before the fsync of slots/ that made its new slot's name durable
            late = {qid: (max(r.t1 for r in records if r.call in fsrec.SYNC_CALLS
                              and r.path == slots and r.t1 <= t) - 1, size)
                    for qid, (t, size) in acks.items()}
            self.assertEqual(len(fsrec.durability_problems(records, d.spool, late)), len(acks))


def deferred_one(t, subject):
    """A sorterd of test t whose one node (the failover node) nobody listens on, retries an
    hour apart, and one message sent to it and deferred: (sorterd, queue id, node port)."""
    port = free_port_on("127.0.0.1")
    d = Sorterd(os.path.join(t.tmp, "d"), start=False,
                failover_node="lmtp:[127.0.0.1]:%d" % port, minimal_backoff_time="1h",
                maximal_backoff_time="2h", queue_run_delay="1h")
    t.daemons.append(d)
    t.addCleanup(t._finish, d)
    d.start()
    c = t.connect(d)
    r, qid = c.send_message(SENDER, [RCPT], message(subject))
    t.assertQueued(r, qid)
    c.close()
    t.assertTrue(wait_until(lambda: os.path.exists(os.path.join(d.spool, "deferred", qid)), 30),
                 d.log_tail())
    return d, qid, port


class StaleNameTest(SorterTestCase):
    """After a power failure a finished message's queue name can come back pointing at its
    slot, which a new message wrote over in the meantime (removals are not waited for). The
    queue manager takes the slot for the message it holds, under that message's own id, and
    forgets the stale name's status: a recipient the old message had done is not skipped."""

    def test_stale_name_of_a_reused_slot(self):
        from scripted_smtp import ScriptedSMTPServer
        d, qid, port = deferred_one(self, "reused slot")
        deferred = os.path.join(d.spool, "deferred", qid)
        d.stop()
        # the stale name: another id, its status file saying the recipient was done
        stale = qid[:-1] + ("0" if qid[-1] != "0" else "1")
        os.rename(deferred, os.path.join(d.spool, "deferred", stale))
        self.assertGreater(os.stat(os.path.join(d.spool, "deferred", stale)).st_nlink, 1)
        with open(os.path.join(d.spool, "defer", stale), "w") as f:
            f.write("attempts\t1\ndone\t0\t%s\n" % RCPT)
        node = ScriptedSMTPServer("127.0.0.1", port, lmtp=True)
        node.start()
        self.addCleanup(node.stop)
        d.start()
        d.ctl("flush")
        self.assertTrue(wait_until(lambda: d.log_lines(r"%s: to=<%s>.*status=sent"
                                                       % (qid, re.escape(RCPT))), 30),
                        d.log_tail())
        self.assertEqual([t["rcpts"] for t in node.messages()], [[RCPT]])
        self.assertTrue(d.log_lines(r"%s: a stale queue name.*holds message %s" % (stale, qid)))
        self.assertTrue(wait_until(lambda: d.queue_ids() == set(), 30), d.queue())
        self.assertFalse(os.path.exists(os.path.join(d.spool, "defer", stale)))


class ClockBackTest(SorterTestCase):
    """The clock set back an hour between two runs (fsrec's FSREC_CLOCK_BACK): the new run's
    queue ids still come after every id in the spool, so none can be issued twice, and a
    message deferred before it is not taken for one past its lifetime."""

    def test_ids_and_ages_survive_a_clock_set_back(self):
        d, first, _ = deferred_one(self, "before the step")
        d.stop()

        d.argv_prefix = ("env", "LD_PRELOAD=" + fsrec.preload(d.build), "FSREC_CLOCK_BACK=3600")
        d.start()
        c = self.connect(d)
        r, second = c.send_message(SENDER, [RCPT], message("after the step"))
        self.assertQueued(r, second)
        c.close()
        # ids sort by their time: the new one comes after the one in the spool
        self.assertGreater(second, first)
        self.assertTrue(wait_until(lambda: d.log_lines(
            r"%s: to=<%s>.*status=deferred" % (second, re.escape(RCPT))), 30), d.log_tail())
        # the old message, retried an hour "before" it arrived, is deferred again
        d.ctl("flush", first)
        self.assertTrue(wait_until(lambda: len(d.log_lines(
            r"%s: to=<%s>.*status=deferred" % (first, re.escape(RCPT)))) >= 2, 30),
            d.log_tail())
        self.assertEqual(d.log_lines(r"%s: .*(status=bounced|expired)" % first), [])
        self.assertEqual(d.queue_ids(), {first, second})


class KillLoopTest(SorterTestCase):
    """kill -9 of a random sorterd process, 20 times, under load: no acknowledged message lost."""

    KILLS = 20
    SENDERS = 4
    MARKER_RE = re.compile(rb"Message-ID: <(kl-[0-9a-f]+)@remote\.test>", re.I)

    def setUp(self):
        missing = smtp_sink_missing()
        if missing:
            self.fail(missing)

    def roles(self, d):
        """{pid: "worker" | "qmgr"} for the master's live children: a worker holds the
        listener, the queue manager its lock file (read from /proc, not from the log)."""
        kids = [k for k in children_of(d.pid) if pid_alive(k)]
        d.known_children.update(kids)
        listener = "socket:[%s]" % listener_inode(d.port)
        lock = os.path.join(os.path.realpath(d.spool), "qmgr.lock")
        out = {}
        for k in kids:
            links = fd_links(k)
            if lock in links:
                out[k] = "qmgr"
            elif listener in links:
                out[k] = "worker"
        return out

    def full(self, d):
        """The master's roles once it runs 2 workers and a qmgr again, else None."""
        if not d.running():
            return None
        roles = self.roles(d)
        kinds = sorted(roles.values())
        return roles if kinds == ["qmgr", "worker", "worker"] else None

    def test_kill_loop(self):
        sink = SmtpSink(os.path.join(self.tmp, "sink"), "127.0.0.1", free_port_on("127.0.0.1"),
                        extra_args=["-L"])
        sink.start()
        self.addCleanup(sink.stop)
        d = self.sorterd(failover_node="lmtp:[127.0.0.1]:%d" % sink.port, queue_run_delay=1,
                         minimal_backoff_time=1, maximal_backoff_time=1, endpoint_dead_time=0)
        rng = random.Random()
        seed = rng.randrange(1 << 30)
        rng.seed(seed)
        self.assertTrue(wait_until(lambda: self.full(d), 10), "no 2 workers and qmgr at start")

        stop = threading.Event()
        lock = threading.Lock()
        acked = {}          # marker -> queue id, for every 250
        tried = set()       # every marker sent (acknowledged or not)

        def sender(k):
            n = 0
            while not stop.is_set():
                try:
                    with Client(d.port, timeout=15) as c:
                        if c.reply().code != 220 or c.ehlo().code != 250:
                            raise ConnectionError("no service")
                        while not stop.is_set():
                            n += 1
                            marker = "kl-%x%02x%06x%s" % (k, 0, n, os.urandom(4).hex())
                            with lock:
                                tried.add(marker)
                            body = ("%s line\r\n" % marker) * BODY_LINES
                            r, qid = c.send_message(SENDER, [RCPT], message(marker, body),
                                                    ehlo=False)
                            if qid is None:
                                break
                            with lock:
                                acked[marker] = qid
                except Exception:  # noqa: BLE001 - a killed process cuts sessions: reconnect
                    pass
                time.sleep(0.02)

        threads = [threading.Thread(target=sender, args=(k,), daemon=True)
                   for k in range(self.SENDERS)]
        for t in threads:
            t.start()
        kills = []          # (wall clock time, role)
        # (wall clock times between which a queue manager died, "qmgr" | "master")
        qmgr_deaths = []
        t_start = time.monotonic()
        for i in range(self.KILLS):
            roles = wait_until(lambda: self.full(d), 15)
            self.assertIsNotNone(roles, "kill %d: the master did not bring its children back "
                                 "(seed %d)" % (i, seed))
            before = len(acked)
            # at a random moment, with mail flowing
            time.sleep(rng.uniform(0.1, 1.2))
            self.assertTrue(wait_until(lambda: len(acked) > before, 10, interval=0.01),
                            "kill %d: no message acknowledged for 10 s (seed %d)" % (i, seed))
            target = rng.choice(["master"] + sorted(roles))
            if target == "master":
                kids = [k for k in children_of(d.pid) if pid_alive(k)]
                d.known_children.update(kids)
                t_kill = time.time()
                os.kill(d.pid, signal.SIGKILL)
                kills.append((t_kill, "master"))
                d.proc.wait()
                self.assertTrue(wait_until(lambda: not any(pid_alive(k) for k in kids), 20),
                                "kill %d: children outlive the master: %s (seed %d)"
                                % (i, [k for k in kids if pid_alive(k)], seed))
                qmgr_deaths.append((t_kill, time.time(), "master"))
                # the spool of a dead daemon reads
                r = d.ctl("queue", "--json", check=False)
                self.assertEqual(r.returncode, 0, "sorterctl queue after kill %d: %s"
                                 % (i, r.stderr))
                d.start()
            else:
                t_kill = time.time()
                os.kill(target, signal.SIGKILL)
                kills.append((t_kill, roles[target]))
                if roles[target] == "qmgr":
                    qmgr_deaths.append((t_kill, time.time(), "qmgr"))
                wait_until(lambda: not pid_alive(target), 5, interval=0.01)
        stop.set()
        self.assertTrue(join_all(threads, 60), "senders hang")
        loop_time = time.monotonic() - t_start
        counts = {}
        for role in ("master", "worker", "qmgr"):
            counts[role] = len([k for k in kills if k[1] == role])
        self.assertEqual(sum(counts.values()), self.KILLS)
        got = dict(acked)
        self.assertGreater(len(got), 100, "too little load: %d messages acknowledged" % len(got))
        self.assertEqual(len(set(got.values())), len(got), "a queue id was given twice")

        # every acknowledged message arrives
        seen = {}           # dump file -> marker

        def delivered():
            for p in sink.dump_files():
                if p in seen:
                    continue
                try:
                    with open(p, "rb") as f:
                        raw = f.read()
                except FileNotFoundError:
                    continue
                m = self.MARKER_RE.search(raw)
                if m and b"(smtp-sink)" in raw and raw.endswith(b"\n"):
                    seen[p] = m.group(1).decode()
            out = {}
            for p, mk in seen.items():
                out.setdefault(mk, []).append(p)
            return out

        ok = wait_until(lambda: set(got) <= set(delivered()) and d.wait_queue_empty(0.1), 90,
                        interval=0.5)
        copies = delivered()
        lost = sorted(set(got) - set(copies))
        self.assertTrue(ok and not lost,
                        "%d of %d acknowledged messages not delivered (seed %d, kills %s): %s; "
                        "queue: %s" % (len(lost), len(got), seed, counts,
                                       [(m, got[m]) for m in lost[:10]], d.queue()[:5]))
        self.assertEqual(set(copies) - tried, set(), "the sink holds messages nobody sent")
        # no torn message: each copy holds its whole body (the queue is empty: the dumps are
        # complete)
        torn = []
        for mk, paths in copies.items():
            for p in paths:
                with open(p, "rb") as f:
                    if f.read().count(("%s line\n" % mk).encode()) != BODY_LINES:
                        torn.append(p)
        self.assertEqual(torn, [], "delivered with a body that is not the one sent")
        # a second copy only of what a dying queue manager had in flight: between two copies
        # of a message a queue manager died (killed, or gone with its master) before the next
        # copy reached the sink, and not long before the first one did (the sink may finish
        # reading what the dead process sent up to a second later; a file's mtime may lag the
        # clock by a timer tick)
        dup_causes = {}
        for mk, paths in copies.items():
            times = sorted(os.stat(p).st_mtime for p in paths)
            for a, b in zip(times, times[1:]):
                between = [why for t0, t1, why in qmgr_deaths if a <= t1 + 1 and b >= t0 - 0.02]
                self.assertTrue(between,
                                "%s (%s) delivered at %.3f and again at %.3f with no queue "
                                "manager's death in between: %s (seed %d)"
                                % (mk, got.get(mk), a, b, qmgr_deaths, seed))
                dup_causes[between[0]] = dup_causes.get(between[0], 0) + 1
        dups = sum(len(p) - 1 for p in copies.values())
        self.assertLessEqual(dups, 50 * max(1, len(qmgr_deaths)), "too many duplicates")
        self.assertEqual(corrupt_files(d), [])
        self.assertEqual(d.queue(), [])
        d.stop()
        self.assertEqual(d.queue(), [], "sorterctl queue with the daemon down")
        self.assertEqual(corrupt_files(d), [])
        print("\nkill loop: %d kills %s in %.1f s, %d acknowledged, %d sent, %d duplicates "
              "(by the death that followed: %s), seed %d"
              % (len(kills), counts, loop_time, len(got), len(tried), dups, dup_causes, seed))


class FullDiskTest(SorterTestCase):
    """The spool on a 4 MiB tmpfs of its own."""

    def setUp(self):
        self.mnt = os.path.join(self.tmp, "fs")
        os.makedirs(self.mnt)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", self.mnt],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest("cannot mount a tmpfs (needs root): %s" % r.stderr.strip())
        self.addCleanup(subprocess.run, ["umount", self.mnt], capture_output=True)

    def test_minfree_larger_than_fs(self):
        d = self.sorterd(spool_dir=os.path.join(self.mnt, "spool"), queue_minfree=8 << 20)
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 452, "4.3.1")
        self.assertReply(c.cmd("MAIL FROM:<%s> SIZE=1000" % SENDER), 452, "4.3.1")
        self.assertEqual(d.queue(), [])

    def test_disk_fills(self):
        d = self.sorterd(spool_dir=os.path.join(self.mnt, "spool"), queue_minfree=0,
                         message_size_limit=1 << 20)
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        acked, last = [], None
        body = ("f" * 1022 + "\r\n") * 256   # 256 KiB
        for i in range(64):   # the file system holds at most 16 of them
            r, qid = c.send_message(SENDER, [RCPT], message("fill %d" % i, body), ehlo=False)
            if r.code != 250:
                last = r
                break
            self.assertIsNotNone(qid, str(r))
            acked.append(qid)
        self.assertIsNotNone(last, "64 messages of 256 KiB fit on a 4 MiB file system?")
        self.assertIn((last.code, last.enhanced), [(452, "4.3.1"), (451, "4.3.0")], str(last))
        self.assertGreater(len(acked), 0, "not even one message fit")
        # the session survives a full disk
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        self.assertReply(c.cmd("QUIT"), 221, "2.0.0")
        listed = d.queue()
        self.assertEqual({m["id"] for m in listed}, set(acked),
                         "the queue must hold exactly the acknowledged messages")
        for m in listed:
            fields, stored = d.show(m["id"])
            self.assertEqual(fields["id"], [m["id"]])
            self.assertIn(body.replace("\r\n", "\n"), stored, "message %s is cut" % m["id"])
        self.assertEqual(corrupt_files(d), [])
        # no free slot holds space a small or full file system needs: every slot holds a
        # queued message, or is one the daemon was writing into when the disk filled
        slots = os.path.join(self.mnt, "spool", "slots")
        free = [n for n in os.listdir(slots) if os.stat(os.path.join(slots, n)).st_nlink == 1]
        self.assertLessEqual(len(free), 1, free)


class JournalTest(SorterTestCase):
    """A writer's journal (queue/journal.c) holds each small new message until it is finished
    or its slot synced: after a crash that lost the slots' writes (the host rebooted before the
    kernel wrote them back), start-up writes the messages back from it."""

    def queued_sorterd(self):
        closed = free_port_on("127.0.0.1")
        d = Sorterd(os.path.join(self.tmp, "d"), start=False,
                    failover_node="lmtp:[127.0.0.1]:%d" % closed, queue_run_delay=3600,
                    minimal_backoff_time=3600, maximal_backoff_time=3600)
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()
        return d

    def test_lost_slot_writes_come_back_from_the_journal(self):
        d = self.queued_sorterd()
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        sent = {}
        for n in range(6):
            body = "".join("journal %d line %d %s\r\n" % (n, i, "j" * 60) for i in range(60))
            r, qid = c.send_message(SENDER, [RCPT], message("journal %d" % n, body))
            self.assertQueued(r, qid)
            sent[qid] = "journal %d line 59 " % n
        c.cmd("QUIT")
        c.close()
        d.kill_all()
        # what the disk would hold had the slots' writes been lost: their old zeros; and one
        # message's queue name lost too
        ids = sorted(sent)
        names = fsrec.feign_reboot(d.spool, ids)
        os.unlink(names[ids[0]][1])
        d.start()
        log = d.log()
        for q in ids:
            self.assertIn("%s: restored from the journal" % q, log)
        self.assertEqual(set(sent) - d.queue_ids(), set(), d.log_tail())
        for q, marker in sent.items():
            fields, stored = d.show(q)
            self.assertIn(marker, stored, q)
        self.assertEqual(corrupt_files(d), [])
        # a second start finds nothing more to restore: the journals' epochs were renewed
        d.stop()
        before = log.count("restored from the journal")
        d.start()
        self.assertEqual(d.log().count("restored from the journal"),
                         before)
        self.assertEqual(set(sent) - d.queue_ids(), set())

    def test_the_same_boot_needs_no_restore(self):
        """After a kill -9 on the same boot the page cache holds every slot as written: the
        start-up check fdatasyncs the journal's messages in their slots (the recorder shows
        it), none is written back, and the queue is whole."""
        d = self.queued_sorterd()
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        ids = set()
        for n in range(5):
            r, qid = c.send_message(SENDER, [RCPT], message("same boot %d" % n))
            self.assertQueued(r, qid)
            ids.add(qid)
        c.cmd("QUIT")
        c.close()
        d.kill_all()
        spool = os.path.realpath(d.spool)
        slot_of = {}
        for folder in ("incoming", "active", "deferred"):
            for q in os.listdir(os.path.join(spool, folder)):
                if q in ids:
                    st = os.stat(os.path.join(spool, folder, q))
                    slot_of[q] = "%d:%d" % (st.st_dev, st.st_ino)
        self.assertEqual(set(slot_of), ids)
        # the start, under the recorder: the start-up check fdatasyncs each message's slot,
        # since the page cache that holds it may not be written back before a power failure
        log = os.path.join(self.tmp, "fsrec.log")
        d.argv_prefix = fsrec.recorder_argv(d.build, log)
        d.start()
        self.assertNotIn("restored from the journal", d.log())
        self.assertEqual(ids - d.queue_ids(), set())
        for q in ids:
            self.assertTrue(d.show(q)[1].startswith("Received:"), q)
        records = fsrec.read_log(log)
        # the check runs in a child of its own, which opens the journals first and is gone
        checker = min((r for r in records if "/journal/" in r.path), key=lambda r: r.t0).pid
        self.assertNotIn(checker, d.children() + [d.pid])
        synced = {r.ino for r in records
                  if r.call in fsrec.SYNC_CALLS and r.ret == 0 and r.pid == checker}
        self.assertEqual({q for q, ino in slot_of.items() if ino not in synced}, set(),
                         "slots not synced at the start")

    def test_a_message_that_stays_queued_is_synced_in_its_slot(self):
        """An entry still needed 2 s after it was written (its message deferred) has its slot
        fdatasync'd by the writer's journal thread at its next sync, so that it does not keep
        every later entry needed: the record shows that fdatasync, by the process that wrote
        the entry, after the next message's entry."""
        log = os.path.join(self.tmp, "fsrec.log")
        closed = free_port_on("127.0.0.1")
        d = Sorterd(os.path.join(self.tmp, "d"), start=False,
                    failover_node="lmtp:[127.0.0.1]:%d" % closed, queue_run_delay=3600,
                    minimal_backoff_time=3600, maximal_backoff_time=3600, workers=1)
        d.argv_prefix = fsrec.recorder_argv(d.build, log)
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        r, first = c.send_message(SENDER, [RCPT], message("stays queued"), ehlo=False)
        self.assertQueued(r, first)
        time.sleep(2.5)
        r, second = c.send_message(SENDER, [RCPT], message("the next one"), ehlo=False)
        self.assertQueued(r, second)
        c.cmd("QUIT")
        records = fsrec.read_log(log)
        spool = os.path.realpath(d.spool)
        jdir = os.path.join(spool, "journal")
        entries = {}
        for r, e in fsrec.journal_writes(records, d.spool):
            entries[e[1]] = r
        self.assertEqual(set(entries), {first, second})
        slot_ino = next(r.ino for r in records if r.call in fsrec.LINK_CALLS and r.ret == 0
                        and r.path2 == os.path.join(spool, "incoming", first))
        writer = entries[first].pid
        synced = [r for r in records if r.call in fsrec.SYNC_CALLS and r.ret == 0
                  and r.ino == slot_ino and r.pid == writer and r.t0 > entries[second].t1]
        self.assertTrue(synced, "no fdatasync of %s's slot by its writer after the next entry"
                        % first)

    def test_the_ring_comes_round_past_queued_messages(self):
        """More small messages than the 8 MiB journal holds, none delivered: the ring comes
        round to entries still needed, whose slots are synced first. Every message is
        acknowledged, and whole after a kill -9 and a start."""
        d = self.queued_sorterd()
        total, lock, errors = 0, threading.Lock(), []
        body = "".join("ring line %d %s\r\n" % (i, "r" * 70) for i in range(360))  # 30 KB
        acked = []

        def sender(k):
            try:
                with Client(d.port, timeout=60) as cc:
                    if cc.reply().code != 220 or cc.ehlo().code != 250:
                        raise AssertionError("no greeting or EHLO refused")
                    for i in range(300):
                        r, qid = cc.send_message(SENDER, [RCPT],
                                                 message("ring %d %d" % (k, i), body),
                                                 ehlo=False)
                        if qid is None:
                            raise AssertionError("message %d/%d: %s" % (k, i, r))
                        with lock:
                            acked.append(qid)
                    cc.cmd("QUIT")
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append("sender %d: %r" % (k, e))

        threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        self.assertTrue(join_all(threads, 300), "senders hang")
        self.assertEqual(errors, [])
        total = len(acked)
        self.assertEqual(total, 1200)
        # two workers' journals, each gone round more than once
        self.assertGreater(total * 30000, 4 * (8 << 20))
        self.assertRegex(d.log(), r"journal/j[0-9]+: round [0-9]+ done, [1-9][0-9]* of its "
                         r"entries' slots synced")
        d.kill_all()
        d.start()
        self.assertEqual(set(acked) - d.queue_ids(), set(), d.log_tail())
        self.assertEqual(corrupt_files(d), [])


if __name__ == "__main__":
    unittest.main()
