"""test_hostile.py - clients that try to hold a slot or forge a header: the HELO name check,
what reaches Received: (sanitized, folded, the for clause quote-aware), the junk command limit,
the minimum data rate and the session time limit."""

import re
import socket
import time
import unittest

import os

from harness import (LOCAL_DOMAIN, Sorterd, SorterTestCase, build_dir, message, wait_until,
                     write_map)
from smtpsink import SmtpSink, free_port_on

RCPT = "user@" + LOCAL_DOMAIN
SENDER = "sender@remote.test"


def received_of(stored):
    """Sorter's Received: header as stored (folded lines kept), from sorterctl show."""
    m = re.match(r"(Received:.*?\n)(?=\S)", stored, re.S)
    assert m, stored[:300]
    return m.group(1)


class HeloTest(SorterTestCase):
    def test_invalid_names_refused(self):
        d = self.sorterd()
        c = self.connect(d)
        for bad in ("forged.example (really [192.0.2.1])", "a..b", ".lead", "x" * 64 + ".test",
                    "h\xe9llo.test", "[300.1.1.1]", "[IPv6:nonsense]", "a" * 256, "under score!",
                    "Received: from evil"):
            r = c.cmd("EHLO " + bad)
            self.assertReply(r, 501, "5.5.2", msg="EHLO %r: %s" % (bad, r))
            self.assertIn("Helo command rejected: Invalid name", r.texts[-1])
            self.assertTrue(all(ord(ch) < 128 for ch in r.texts[-1]), r)
        for good in ("client.remote.test", "localhost", "mail_1.remote.test", "[127.0.0.1]",
                     "[IPv6:::1]", "[IPv6:2001:db8::1]", "host.test.", "123.example"):
            self.assertReply(c.cmd("EHLO " + good), 250, msg=good)
        self.assertReply(c.cmd("HELO bad..name"), 501, "5.5.2")
        self.assertTrue(d.log_lines(r"reject: EHLO from \[127\.0\.0\.1\]: 501 5\.5\.2"))

    def test_relaxed_mode_sanitizes(self):
        d = self.sorterd(smtpd_helo_strict="no")
        c = self.connect(d)
        helo = "forged.example (by trusted.host with ESMTP; " + "z" * 400 + ")"
        self.assertReply(c.cmd("EHLO " + helo), 250)
        r, qid = c.send_message(SENDER, [RCPT], message("relaxed"), ehlo=False)
        self.assertQueued(r, qid)
        rec = received_of(d.show(qid)[1])
        for line in rec.splitlines():
            self.assertLessEqual(len(line), 998, line)
        unfolded = re.sub(r"\r?\n[ \t]", " ", rec)
        # nothing of the HELO can open a comment, a new field or a second hop
        m = re.match(r"Received: from (\S+) \(\[127\.0\.0\.1\]\)", unfolded)
        self.assertTrue(m, unfolded)
        self.assertRegex(m.group(1), r"^[A-Za-z0-9._:\[\]?-]+$")
        self.assertLessEqual(len(m.group(1)), 255)
        self.assertNotIn("trusted.host", unfolded.split(" by ")[0].replace(m.group(1), ""))


class ReceivedTest(SorterTestCase):
    def test_folded_and_quote_aware(self):
        d = self.sorterd()
        c = self.connect(d)
        rcpt = '"john q. smith"@' + LOCAL_DOMAIN
        r, qid = c.send_message(SENDER, [rcpt], message("quoted"))
        self.assertQueued(r, qid)
        rec = received_of(d.show(qid)[1])
        for line in rec.rstrip("\n").split("\n"):
            self.assertLessEqual(len(line), 78, rec)
        unfolded = re.sub(r"\n[ \t]", " ", rec)
        self.assertIn("for <%s>;" % rcpt, unfolded)
        self.assertRegex(unfolded, r"by mx\.sorter\.test \(Sorter\) with ESMTP id %s for" % qid)


class LogForgeryTest(SorterTestCase):
    def test_addresses_cannot_forge_log_fields(self):
        d = self.sorterd()
        c = self.connect(d)
        rcpt = '"x>, relay=evil, status=sent (250 forged), y"@' + LOCAL_DOMAIN
        sender = '"a>, size=1, nrcpt=9, client=[192.0.2.66]"@remote.test'
        r, qid = c.send_message(sender, [rcpt], message("forge"))
        self.assertQueued(r, qid)
        lines = d.log_lines(qid)
        self.assertTrue(lines)
        frm = [l for l in lines if ": from=<" in l]
        self.assertEqual(len(frm), 1, lines)
        # a reader that splits the line at ", " finds each field once, with its true value
        fields = [f.split("=", 1)[0] for f in frm[0].split(qid + ": ", 1)[1].split(", ")]
        self.assertEqual(fields, ["from", "size", "nrcpt", "client"], frm[0])
        self.assertTrue(frm[0].endswith("client=[127.0.0.1]"), frm[0])
        self.assertIn(r"\x22a\x3e\x2c size=1\x2c", frm[0])
        r = c.cmd("MAIL FROM:<%s>" % sender)
        self.assertReply(r, 250)
        r = c.cmd('RCPT TO:<"z>, relay=evil"@remote.test>')
        self.assertReply(r, 554, "5.7.1")
        rej = d.log_lines(r"reject: RCPT from")
        self.assertEqual(len(rej), 1, rej)
        self.assertEqual(rej[0].count(">"), 3, rej[0])   # <rcpt>: ... from=<..> to=<..>
        for l in d.log().splitlines():
            self.assertNotIn(", relay=evil", l)
            self.assertNotIn(", status=sent (250 forged)", l)


class FanoutTest(SorterTestCase):
    """One small message must not become an unbounded number of deliveries."""

    def setUp(self):
        self.sink = SmtpSink(os.path.join(self.tmp, "sink"), "127.0.0.1",
                             free_port_on("127.0.0.1"), extra_args=["-L"])
        self.sink.start()
        self.addCleanup(self.sink.stop)
        lists = {"list%d@%s" % (k, LOCAL_DOMAIN):
                 ", ".join("m%d-%d@%s" % (k, j, LOCAL_DOMAIN) for j in range(200))
                 for k in range(10)}
        self.aliases = write_map(build_dir(), os.path.join(self.tmp, "aliases"), lists)

    def sorterd_with_lists(self, **kw):
        return self.sorterd(alias_map=self.aliases,
                            failover_node="lmtp:[127.0.0.1]:%d" % self.sink.port, **kw)

    def sent(self, d, qid):
        return d.log_lines(r"%s: to=<.*status=sent" % qid)

    def test_duplicates_kept_once(self):
        d = self.sorterd_with_lists()
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        for i in range(1000):
            rc = "list0@" + (LOCAL_DOMAIN if i % 2 else LOCAL_DOMAIN.upper())
            self.assertReply(c.cmd("RCPT TO:<%s>" % rc), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(message("dups").encode() + b"\r\n.\r\n")
        r = c.reply(timeout=30)
        self.assertReply(r, 250)
        qid = r.texts[-1].split()[-1]
        self.assertTrue(wait_until(lambda: len(self.sent(d, qid)) >= 200, 60), d.log_tail())
        time.sleep(0.5)
        self.assertEqual(len(self.sent(d, qid)), 200)
        self.assertEqual(len(d.log_lines(r"%s: from=<.*nrcpt=1," % qid)), 1)

    def test_one_copy_per_mailbox(self):
        """An alias, one of its members and a second alias sharing that member, all named by
        the sender: the member is sent once in the transaction (a mailbox server would store
        it twice), and every recipient the sender named is logged as sent."""
        from scripted_smtp import ScriptedSMTPServer
        node = ScriptedSMTPServer("127.0.0.1", free_port_on("127.0.0.1"), lmtp=True)
        node.start()
        self.addCleanup(node.stop)
        alice, bob = "alice@" + LOCAL_DOMAIN, "bob@" + LOCAL_DOMAIN
        team, crew = "team@" + LOCAL_DOMAIN, "crew@" + LOCAL_DOMAIN
        aliases = write_map(build_dir(), os.path.join(self.tmp, "dup-aliases"),
                            {team: "%s, %s" % (alice, bob), crew: alice})
        d = self.sorterd(alias_map=aliases, failover_node="lmtp:[127.0.0.1]:%d" % node.port)
        c = self.connect(d)
        r, qid = c.send_message(SENDER, [team, alice, crew], message("one copy"))
        self.assertQueued(r, qid)
        self.assertTrue(wait_until(lambda: len(self.sent(d, qid)) == 4, 30), d.log_tail())
        self.assertEqual([sorted(t["rcpts"]) for t in node.messages()], [[alice, bob]])
        for orig in (team, crew):
            self.assertTrue(d.log_lines(r"%s: to=<%s>, orig_to=<%s>,.*status=sent"
                                        % (qid, re.escape(alice), re.escape(orig))))

    def test_alias_expansion_limit(self):
        d = self.sorterd_with_lists(alias_expansion_limit=1000)
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        for k in range(5):
            self.assertReply(c.cmd("RCPT TO:<list%d@%s>" % (k, LOCAL_DOMAIN)), 250)
        for k in range(5, 10):
            self.assertReply(c.cmd("RCPT TO:<list%d@%s>" % (k, LOCAL_DOMAIN)), 452, "4.5.3")
        # a plain recipient still fits? no: the cap is reached
        self.assertReply(c.cmd("RCPT TO:<solo@%s>" % LOCAL_DOMAIN), 452, "4.5.3")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(message("fanout").encode() + b"\r\n.\r\n")
        r = c.reply(timeout=30)
        self.assertReply(r, 250)
        qid = r.texts[-1].split()[-1]
        self.assertTrue(wait_until(lambda: len(self.sent(d, qid)) >= 1000, 120), d.log_tail())
        time.sleep(0.5)
        self.assertEqual(len(self.sent(d, qid)), 1000)
        # the log stays proportionate: one line per delivery and a few more
        self.assertLess(len(d.log_lines(qid)), 1100)
        self.assertLess(os.path.getsize(d.log_path), 400 * 1024)
        with open("/proc/%d/status" % d.qmgr_pid()) as f:
            rss = [int(l.split()[1]) for l in f if l.startswith("VmRSS:")][0]
        self.assertLess(rss, 64 * 1024, "qmgr RSS %d KiB" % rss)


class ShowOnTerminalTest(SorterTestCase):
    def show_on_tty(self, d, *args):
        import pty
        import subprocess
        master, slave = pty.openpty()
        p = subprocess.Popen([os.path.join(build_dir(), "sorterctl"), "-c", d.conf_path, "show"]
                             + list(args), stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        p.wait(30)
        os.close(master)
        return out

    def test_control_bytes_replaced_on_a_terminal(self):
        d = self.sorterd()
        c = self.connect(d)
        evil = "Subject: \x1b]0;owned\x07\x1b[2Jclear \xc2\x9b31m"
        r, qid = c.send_message(SENDER, [RCPT], message("esc", extra_headers=(evil,)).encode(
            "latin-1"))
        self.assertQueued(r, qid)
        shown = self.show_on_tty(d, qid)
        self.assertIn(b"Subject: ?]0;owned??[2Jclear ??31m", shown)
        self.assertNotIn(b"\x1b", shown)
        raw = self.show_on_tty(d, qid, "--raw")
        self.assertIn(b"\x1b]0;owned\x07", raw)
        # a pipe gets the bytes as stored
        self.assertIn("\x1b]0;owned", d.show(qid)[1])


class JunkTest(SorterTestCase):
    def test_junk_command_limit(self):
        d = self.sorterd(smtpd_junk_command_limit=5)
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        for verb in ("NOOP", "RSET", "VRFY x", "HELP", "NOOP"):
            self.assertEqual(c.cmd(verb).code // 100, 2, verb)
        r = c.cmd("NOOP")
        self.assertReply(r, 421, "4.7.0")
        self.assertTrue(c.closed())
        self.assertTrue(d.log_lines(r"too many junk commands from \[127\.0\.0\.1\]"))

    def test_moving_mail_resets_the_count(self):
        d = self.sorterd(smtpd_junk_command_limit=3)
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        for i in range(4):
            for _ in range(3):
                self.assertReply(c.cmd("RSET"), 250)
            r, qid = c.send_message(SENDER, [RCPT], message("m%d" % i), ehlo=False)
            self.assertQueued(r, qid)


class SlowClientTest(SorterTestCase):
    def test_drip_fed_data_is_cut_off(self):
        # 1 byte every 2 s: far under 50 bytes/s once the 30 s grace is over
        d = self.sorterd(smtpd_min_data_rate=50, smtpd_data_timeout=60)
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250)
        self.assertReply(c.cmd("DATA"), 354)
        t0 = time.monotonic()
        r = None
        while time.monotonic() - t0 < 45:
            try:
                c.send(b"x")
            except OSError:
                break
            try:
                r = c.reply(timeout=2)
                break
            except socket.timeout:
                continue
        self.assertIsNotNone(r, "no reply to a drip-fed DATA within 45 s")
        self.assertReply(r, 421, "4.4.2")
        self.assertGreater(time.monotonic() - t0, 29)
        self.assertTrue(c.closed())
        self.assertEqual(set(d.queue_ids()), set())
        self.assertTrue(d.log_lines(r"slower than smtpd_min_data_rate=50"))

    def slow_commit_sorterd(self, msec, **settings):
        """A sorterd whose commits take msec more: the link into incoming/ made slow (the
        file system call recorder's knob, a slow disk)."""
        import fsrec
        log = os.path.join(self.tmp, "fsrec.log")
        d = Sorterd(os.path.join(self.tmp, "d"), start=False, **settings)
        d.argv_prefix = fsrec.recorder_argv(d.build, log, "FSREC_SLOW_RENAME=/incoming/:%d" % msec)
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()
        return d

    def test_slow_commit_is_not_the_clients_timeout(self):
        """A client waits in silence while its message is committed: a commit slower than
        smtpd_timeout (the link into incoming/ made 3 s slow, a slow disk) still ends with
        its 250, and nothing but that."""
        d = self.slow_commit_sorterd(3000, smtpd_timeout="1")
        c = self.connect(d)
        t0 = time.monotonic()
        r, qid = c.send_message(SENDER, [RCPT], message("slow commit"))
        self.assertQueued(r, qid)
        self.assertGreater(time.monotonic() - t0, 2.5, "the commit was not slowed")
        # at once (smtpd_timeout is 1 s): a reply sent beside the 250 would answer the QUIT
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertTrue(d.log_lines(r"%s: from=<%s>" % (qid, re.escape(SENDER))), d.log_tail())

    def test_client_that_stops_sending_during_the_commit_gets_its_250(self):
        """A client that sends the final dot and QUIT and then shuts down its sending side
        while the message is committed (made slow here) still reads its 250 and 221: taken for
        gone, it would send the message again."""
        d = self.slow_commit_sorterd(1500)
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(message("half close") + "\r\n.\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        r = c.reply(timeout=15)
        self.assertReply(r, 250, "2.0.0")
        self.assertReply(c.reply(timeout=5), 221)
        self.assertTrue(c.closed())
        self.assertEqual(d.log_lines(r"left before the reply"), [])

    def test_session_time_limit(self):
        d = self.sorterd(smtpd_session_time_limit="10s")
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)

        def step():
            r = c.cmd("MAIL FROM:<%s>" % SENDER)
            if r.code != 421:
                self.assertReply(c.cmd("RSET"), 250)
            return r
        self.until_421(c, step, 8, "the session outlived smtpd_session_time_limit")

    def until_421(self, c, step, at_least, why):
        """Runs step() (a command, its reply returned) every second until a 421 4.4.2 comes,
        at_least seconds on; then the session must close."""
        t0 = time.monotonic()
        got = None
        while time.monotonic() - t0 < 20:
            r = step()
            if r.code == 421:
                got = r
                break
            self.assertReply(r, 250)
            time.sleep(1)
        self.assertIsNotNone(got, why)
        self.assertReply(got, 421, "4.4.2")
        self.assertGreaterEqual(time.monotonic() - t0, at_least)
        self.assertTrue(c.closed())

    def test_transaction_kept_open_ends_after_the_limit(self):
        """A transaction kept open past smtpd_session_time_limit (a recipient every second,
        each within smtpd_timeout) gets smtpd_timeout more to finish, then 421."""
        d = self.sorterd(smtpd_session_time_limit="10s", smtpd_timeout="2")
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.until_421(c, lambda: c.cmd("RCPT TO:<%s>" % RCPT), 10,
                       "the transaction outlived the session time limit")

    def test_idle_at_the_limit_gets_421(self):
        d = self.sorterd(smtpd_session_time_limit="10s")
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        r = c.reply(timeout=15)
        self.assertReply(r, 421, "4.4.2")
        self.assertTrue(c.closed())


if __name__ == "__main__":
    unittest.main()


class BigMessageMemoryTest(SorterTestCase):
    """The queue manager sends a message from its queue file in pieces: its memory does not
    grow with the size of the messages it delivers."""

    @staticmethod
    def peak_kib(pid):
        with open("/proc/%d/status" % pid) as f:
            return [int(l.split()[1]) for l in f if l.startswith("VmHWM:")][0]

    def test_qmgr_peak_memory_independent_of_message_size(self):
        import fsrec
        sink = SmtpSink(os.path.join(self.tmp, "sink"), "127.0.0.1", free_port_on("127.0.0.1"),
                        extra_args=["-L"])
        sink.start()
        self.addCleanup(sink.stop)
        d = Sorterd(os.path.join(self.tmp, "d"), start=False,
                    failover_node="lmtp:[127.0.0.1]:%d" % sink.port, message_size_limit="64m")
        if fsrec.asan_runtime(os.path.join(d.build, "sorterd")):
            # the sanitizer keeps freed memory in quarantine: it would count every piece
            # that ever went through the qmgr, not what it holds
            d.argv_prefix = ("env", "ASAN_OPTIONS=quarantine_size_mb=0")
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()

        def send(subject, body):
            c = self.connect(d)
            r, qid = c.send_message(SENDER, [RCPT], message(subject, body))
            self.assertQueued(r, qid)
            c.close()
            self.assertTrue(wait_until(lambda: d.log_lines(r"%s: to=<.*status=sent" % qid), 120),
                            d.log_tail())

        # the peak after an ordinary message, then after three of 20 MB
        send("small", "a small message\r\n")
        base = self.peak_kib(d.qmgr_pid())
        line = "y" * 998 + "\r\n"
        for k in range(3):
            send("big %d" % k, line * 20000)
        stored = [m["data"] for m in sink.messages()]
        self.assertEqual(len(stored), 4)
        self.assertEqual(sorted(data.count(line.encode()) for data in stored), [0] + [20000] * 3)
        grown = self.peak_kib(d.qmgr_pid()) - base
        # a 20 MB message read whole would raise the peak by 20 MiB at least
        self.assertLess(grown, 8 * 1024, "qmgr peak RSS grew by %d KiB" % grown)
