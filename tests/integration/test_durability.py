"""test_durability.py - a 250 after DATA means the message is on disk: kill -9 of every sorterd
process right after it loses nothing, under concurrent load too; a spool file system that is
full, or below queue_minfree, gets 452 4.3.1 / 451 4.3.0, never a 250 for a message that is not
in the queue, and never leaves a corrupt queue file."""

import os
import subprocess
import threading
import unittest

from harness import (LOCAL_DOMAIN, SorterTestCase, blast, join_all, message, wait_until)

RCPT = "user@" + LOCAL_DOMAIN
SENDER = "sender@remote.test"


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


if __name__ == "__main__":
    unittest.main()
