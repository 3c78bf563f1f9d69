"""test_limits.py - every limit sorterd enforces, each with a small configured value:
command line length, message size, recipients, sessions in all and per client, command and
DATA timeouts, the hard error limit and the spool's free-space floor."""

import os
import socket
import time
import unittest

from harness import LOCAL_DOMAIN, Client, SMTPClosed, SorterTestCase, message

RCPT = "user@" + LOCAL_DOMAIN
SENDER = "sender@remote.test"


def greeting_and_close(port, source=None):
    """Opens a connection and reads the greeting. Returns (greeting, whether the server then
    closed the connection within a few seconds)."""
    c = Client(port, source=source)
    try:
        r = c.reply()
        closed = c.closed()
        return r, closed
    finally:
        c.close()


class LineLimitTest(SorterTestCase):
    def test_line_limit(self):
        d = self.sorterd(smtpd_line_limit=512)
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        # exactly the limit, CRLF included: accepted
        self.assertReply(c.cmd("NOOP " + "x" * (512 - 2 - 5)), 250, "2.0.0")
        # one byte more: refused, and what follows on that line is not taken as a command
        self.assertReply(c.cmd("NOOP " + "x" * (512 - 2 - 5 + 1)), 500, "5.5.2")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        self.assertTrue(c.nothing_more())
        # a very long line whose tail looks like a command
        c.send("NOOP " + "y" * 5000 + "QUIT\r\n")
        self.assertReply(c.reply(), 500, "5.5.2")
        self.assertTrue(c.nothing_more(), "the tail of an over-long line was answered: %r" % c.buf)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")

    def test_line_limit_address(self):
        d = self.sorterd(smtpd_line_limit=512)
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("MAIL FROM:<%s@remote.test>" % ("a" * 600)), 500, "5.5.2")


class SizeLimitTest(SorterTestCase):
    def setUp(self):
        self.d = self.sorterd(message_size_limit=10000)

    def test_ehlo_size(self):
        c = self.connect(self.d)
        self.assertEqual(c.ehlo().keywords().get("SIZE"), "10000")

    def test_size_parameter(self):
        c = self.connect(self.d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("MAIL FROM:<%s> SIZE=20000" % SENDER), 552, "5.3.4")
        self.assertReply(c.cmd("MAIL FROM:<%s> SIZE=5000" % SENDER), 250, "2.1.0")

    def test_message_too_big(self):
        c = self.connect(self.d)
        r, qid = c.send_message(SENDER, [RCPT], message("big", "z" * 20000))
        self.assertReply(r, 552, "5.3.4")
        self.assertIsNone(qid)
        self.assertEqual(self.d.queue(), [])
        self.assertEqual(self.d.queue_files(), [])
        # the session goes on: a small message on the same connection is queued
        r, qid = c.send_message(SENDER, [RCPT], message("small", "z" * 1000), ehlo=False)
        self.assertQueued(r, qid)
        self.assertEqual(self.d.queue_ids(), {qid})

    def test_message_far_too_big(self):
        # many times the limit: refused after the dot, the connection stays in step
        c = self.connect(self.d)
        body = ("z" * 998 + "\r\n") * 2000
        r, qid = c.send_message(SENDER, [RCPT], message("huge", body))
        self.assertReply(r, 552, "5.3.4")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        self.assertEqual(self.d.queue(), [])


class RecipientLimitTest(SorterTestCase):
    def test_recipient_limit(self):
        d = self.sorterd(smtpd_recipient_limit=3)
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        for i in range(3):
            self.assertReply(c.cmd("RCPT TO:<u%d@%s>" % (i, LOCAL_DOMAIN)), 250, "2.1.5")
        self.assertReply(c.cmd("RCPT TO:<u3@%s>" % LOCAL_DOMAIN), 452, "4.5.3")
        self.assertReply(c.cmd("RCPT TO:<u4@%s>" % LOCAL_DOMAIN), 452, "4.5.3")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(message("three") + "\r\n.\r\n")
        r = c.reply()
        self.assertReply(r, 250, "2.0.0")
        [m] = d.queue()
        self.assertEqual(sorted(x["address"] for x in m["recipients"]),
                         ["u%d@%s" % (i, LOCAL_DOMAIN) for i in range(3)])


class SessionLimitTest(SorterTestCase):
    def test_max_sessions(self):
        d = self.sorterd(smtpd_max_sessions=2, smtpd_client_connection_limit=10,
                         smtpd_client_limit_exceptions="192.0.2.0/24")
        a = self.connect(d)
        b = self.connect(d)
        # over the limit a client waits in the listen queue: no banner, not refused;
        # the limit counts all clients, not one address
        waiting = [Client(d.port), Client(d.port, source="127.0.0.2")]
        for w in waiting:
            self.addCleanup(w.close)
            with self.assertRaises(socket.timeout):
                w.reply(timeout=1.5)
        self.assertTrue(d.log_lines(r"smtpd_max_sessions=2 reached: new clients wait"))
        # the sessions inside the limit work
        self.assertReply(a.cmd("NOOP"), 250, "2.0.0")
        self.assertReply(b.cmd("NOOP"), 250, "2.0.0")
        # a session that ends lets one waiting client in, and only one
        self.assertReply(a.cmd("QUIT"), 221, "2.0.0")
        a.close()
        got = []
        for w in waiting:
            try:
                got.append(w.reply(timeout=2.5))
            except socket.timeout:
                got.append(None)
        self.assertEqual(sorted(r.code for r in got if r is not None), [220], got)
        # the other gets in once another session ends
        self.assertReply(b.cmd("QUIT"), 221, "2.0.0")
        b.close()
        late = [w for w, r in zip(waiting, got) if r is None][0]
        self.assertReply(late.reply(timeout=5), 220)

    def _greeted_within(self, port, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with Client(port) as c:
                try:
                    r = c.reply()
                except SMTPClosed:
                    r = None
                if r is not None and r.code == 220:
                    c.cmd("QUIT")
                    return True
            time.sleep(0.2)
        return False

    def test_client_connection_limit(self):
        # 127.0.0.2 is a trusted network here; 127.0.0.1 is not
        d = self.sorterd(smtpd_max_sessions=20, smtpd_client_connection_limit=2,
                         smtpd_client_limit_exceptions="127.0.0.2/32")
        a = self.connect(d)
        b = self.connect(d)
        r, closed = greeting_and_close(d.port)
        self.assertReply(r, 421, "4.7.0")
        self.assertTrue(closed, "connection over smtpd_client_connection_limit not closed")
        self.assertTrue(d.log_lines(r"too many sessions from \[127\.0\.0\.1\] "
                                    r"\(smtpd_client_connection_limit=2\)"))
        # a trusted address is not limited at all
        others = [self.connect(d, source="127.0.0.2") for _ in range(4)]
        self.assertReply(others[-1].cmd("NOOP"), 250, "2.0.0")
        self.assertReply(a.cmd("NOOP"), 250, "2.0.0")
        self.assertReply(b.cmd("QUIT"), 221, "2.0.0")
        b.close()
        self.assertTrue(self._greeted_within(d.port, 5), "no 220 after a session ended")

    def test_loopback_exempt_by_default(self):
        # an internal relay or a load test from this host is not cut off
        d = self.sorterd(smtpd_max_sessions=20, smtpd_client_connection_limit=2,
                         smtpd_client_connection_rate_limit=2)
        cs = [self.connect(d) for _ in range(6)]
        for c in cs:
            self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    def test_connection_rate_limit(self):
        d = self.sorterd(smtpd_client_connection_rate_limit=3,
                         smtpd_client_limit_exceptions="192.0.2.0/24")
        for _ in range(3):
            c = self.connect(d)
            self.assertReply(c.cmd("QUIT"), 221)
            c.close()
        r, closed = greeting_and_close(d.port)
        self.assertReply(r, 421, "4.7.0")
        self.assertIn("per minute", r.texts[-1])
        self.assertTrue(closed)
        self.assertTrue(d.log_lines(r"too many connections from \[127\.0\.0\.1\] in a minute"))
        # counted per client, and across both workers
        c = self.connect(d, source="127.0.0.2")
        self.assertReply(c.cmd("NOOP"), 250)


class TimeoutTest(SorterTestCase):
    def test_command_timeout(self):
        d = self.sorterd(smtpd_timeout="2s", smtpd_data_timeout=30)
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        t0 = time.monotonic()
        r = c.reply(timeout=15)
        waited = time.monotonic() - t0
        self.assertReply(r, 421, "4.4.2")
        self.assertGreaterEqual(waited, 1.5, "timed out too early")
        self.assertTrue(c.closed())

    def test_command_timeout_restarts_on_activity(self):
        d = self.sorterd(smtpd_timeout=2)
        c = self.connect(d)
        for _ in range(4):   # 4 x 1 s of activity > the 2 s timeout
            time.sleep(1)
            self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    def test_data_timeout(self):
        d = self.sorterd(smtpd_timeout=30, smtpd_data_timeout=2)
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send("Subject: stalled\r\n\r\npartial line")
        t0 = time.monotonic()
        r = c.reply(timeout=15)
        self.assertReply(r, 421, "4.4.2")
        self.assertGreaterEqual(time.monotonic() - t0, 1.5)
        self.assertTrue(c.closed())
        self.assertEqual(d.queue(), [])


class HardErrorLimitTest(SorterTestCase):
    def test_hard_error_limit(self):
        d = self.sorterd(smtpd_hard_error_limit=3)
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        for bad in ("XYZZY", "MAIL FROM:<not an address>", "RCPT TO:<%s>" % RCPT):
            r = c.cmd(bad)
            self.assertGreaterEqual(r.code, 500, "%s -> %s" % (bad, r))
        # the limit is reached: the next thing the client reads is the 421, then the close
        try:
            c.send("NOOP\r\n")
        except OSError:
            pass   # the server may have closed already; its 421 is still to be read
        self.assertReply(c.reply(), 421, "4.7.0")
        self.assertTrue(c.closed())

    def test_below_hard_error_limit(self):
        d = self.sorterd(smtpd_hard_error_limit=3)
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("XYZZY"), 500, "5.5.2")
        self.assertReply(c.cmd("XYZZY"), 500, "5.5.2")
        r, qid = c.send_message(SENDER, [RCPT], message("after errors"), ehlo=False)
        self.assertQueued(r, qid)


class MinfreeTest(SorterTestCase):
    def free_bytes(self, path):
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def test_minfree_above_free_space(self):
        d = self.sorterd(queue_minfree=self.free_bytes(self.tmp) + (1 << 40))
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 452, "4.3.1")
        self.assertReply(c.cmd("MAIL FROM:<%s> SIZE=10" % SENDER), 452, "4.3.1")

    def test_minfree_size_parameter(self):
        free = self.free_bytes(self.tmp)
        margin = 64 << 20
        if free < 4 * margin:
            self.skipTest("less than 256 MiB free under %s" % self.tmp)
        # the floor leaves about 64 MiB for mail; other writers may move it a little
        d = self.sorterd(queue_minfree=free - margin, message_size_limit=1 << 30)
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("MAIL FROM:<%s> SIZE=%d" % (SENDER, 2 * margin)), 452, "4.3.1")
        self.assertReply(c.cmd("MAIL FROM:<%s> SIZE=1000" % SENDER), 250, "2.1.0")


if __name__ == "__main__":
    unittest.main()
