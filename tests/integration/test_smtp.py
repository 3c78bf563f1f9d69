"""test_smtp.py - the SMTP dialogue of sorterd: greeting, EHLO, every verb's reply, command
order, addresses, relay control, queueing with a Received: header naming the queue id,
pipelining, dot-unstuffing, and real clients (smtplib, swaks)."""

import re
import shutil
import smtplib
import subprocess
import unittest

from harness import (HOSTNAME, LOCAL_DOMAIN, QID_RE, QUEUED_RE, SorterTestCase, message,
                     unfold_header)

RCPT = "user@" + LOCAL_DOMAIN
SENDER = "sender@remote.test"


class SMTPTest(SorterTestCase):
    def setUp(self):
        self.d = self.sorterd(message_size_limit=1000000)

    def ehlo_client(self):
        c = self.connect(self.d)
        self.assertReply(c.ehlo(), 250)
        return c

    def test_greeting(self):
        c = self.connect(self.d, greet=False)
        r = c.reply()
        self.assertReply(r, 220)
        self.assertEqual(len(r.lines), 1, str(r))
        self.assertTrue(r.lines[0].startswith("220 %s ESMTP Sorter" % HOSTNAME), str(r))

    def test_ehlo_keywords(self):
        c = self.connect(self.d)
        r = c.ehlo()
        self.assertReply(r, 250)
        self.assertGreater(len(r.lines), 1, "EHLO reply must be multi-line: %s" % r)
        kw = r.keywords()
        for k in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE"):
            self.assertIn(k, kw, str(r))
        self.assertEqual(kw["SIZE"], "1000000")
        self.assertNotIn("STARTTLS", kw, "STARTTLS advertised without TLS configured")

    def test_helo(self):
        c = self.connect(self.d)
        r = c.cmd("HELO client.remote.test")
        self.assertReply(r, 250)
        self.assertEqual(len(r.lines), 1, str(r))
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")

    def test_verbs(self):
        # each on a fresh session after EHLO: verb line -> code, enhanced code
        table = [
            ("NOOP", 250, "2.0.0"),
            ("RSET", 250, "2.0.0"),
            ("VRFY user", 252, "2.0.0"),
            ("VRFY <%s>" % RCPT, 252, "2.0.0"),
            ("HELP", 214, "2.0.0"),
            ("EXPN staff", 502, "5.5.1"),
            ("BDAT 0 LAST", 503, "5.5.1"),     # no transaction (test_chunking.py)
            ("XYZZY", 500, "5.5.2"),
            ("MAILX FROM:<%s>" % SENDER, 500, "5.5.2"),
            ("QUIT", 221, "2.0.0"),
        ]
        for line, code, enh in table:
            with self.subTest(line=line):
                c = self.ehlo_client()
                self.assertReply(c.cmd(line), code, enh)
                if line == "QUIT":
                    self.assertTrue(c.closed(), "connection not closed after QUIT")
                else:
                    self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
                c.close()

    def test_verbs_case_insensitive(self):
        c = self.connect(self.d)
        self.assertReply(c.cmd("ehlo client.remote.test"), 250)
        self.assertReply(c.cmd("mail from:<%s>" % SENDER), 250, "2.1.0")
        self.assertReply(c.cmd("rcpt to:<%s>" % RCPT), 250, "2.1.5")
        self.assertReply(c.cmd("noop"), 250, "2.0.0")

    def test_syntax_and_address_errors(self):
        # (commands to send first, the line under test, code, enhanced code)
        mail = "MAIL FROM:<%s>" % SENDER
        table = [
            ([], "HELO", 501, "5.5.4"),
            ([], "EHLO", 501, "5.5.4"),
            ([], "MAIL", 501, "5.5.4"),
            ([], "MAIL TO:<%s>" % SENDER, 501, "5.5.4"),
            ([mail], "RCPT", 501, "5.5.4"),
            ([mail], "RCPT FROM:<%s>" % RCPT, 501, "5.5.4"),
            ([], "MAIL FROM:<not an address>", 501, "5.1.7"),
            ([], "MAIL FROM:<user@>", 501, "5.1.7"),
            ([], "MAIL FROM:<@remote.test>", 501, "5.1.7"),
            ([], "MAIL FROM:<a@b@remote.test>", 501, "5.1.7"),
            ([mail], "RCPT TO:<user@@%s>" % LOCAL_DOMAIN, 501, "5.1.3"),
            ([mail], "RCPT TO:<>", 501, "5.1.3"),
            ([mail], "RCPT TO:<user@>", 501, "5.1.3"),
            ([], "MAIL FROM:<%s> FOO=BAR" % SENDER, 555, "5.5.4"),
            ([mail], "RCPT TO:<%s> BAR=1" % RCPT, 555, "5.5.4"),
            ([mail], "RCPT TO:<%s> SIZE=1" % RCPT, 555, "5.5.4"),
            # a parameter this command takes, with a value it refuses: a syntax error
            ([], "MAIL FROM:<%s> SIZE=1k" % SENDER, 501, "5.5.4"),
            ([], "MAIL FROM:<%s> BODY=7BIT BODY=7BIT" % SENDER, 501, "5.5.4"),
            ([mail], "RCPT TO:<%s> NOTIFY=BOGUS" % RCPT, 501, "5.5.4"),
        ]
        for before, line, code, enh in table:
            with self.subTest(line=line):
                c = self.ehlo_client()
                for b in before:
                    self.assertReply(c.cmd(b), 250)
                self.assertReply(c.cmd(line), code, enh)
                c.close()

    def test_mail_parameters(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("MAIL FROM:<%s> SIZE=1000 BODY=8BITMIME" % SENDER), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")

    def test_sequencing(self):
        mail, rcpt = "MAIL FROM:<%s>" % SENDER, "RCPT TO:<%s>" % RCPT
        # (greeting-only session?, commands that must succeed first, the out-of-order line)
        table = [
            (False, [], mail),
            (False, [], rcpt),
            (False, [], "DATA"),
            (True, [], rcpt),
            (True, [], "DATA"),
            (True, [mail], "DATA"),
            (True, [mail], mail),
            (True, [mail, rcpt], mail),
        ]
        for ehlo, before, line in table:
            with self.subTest(ehlo=ehlo, before=before, line=line):
                c = self.ehlo_client() if ehlo else self.connect(self.d)
                for b in before:
                    self.assertEqual(c.cmd(b).code, 250)
                self.assertReply(c.cmd(line), 503, "5.5.1")
                c.close()

    def test_rset_clears_transaction(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        self.assertReply(c.cmd("DATA"), 503, "5.5.1")
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 503, "5.5.1")
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")

    def test_null_sender(self):
        c = self.connect(self.d)
        r, qid = c.send_message("", [RCPT], message("bounce"))
        self.assertQueued(r, qid)
        [m] = [m for m in self.d.queue() if m["id"] == qid]
        self.assertEqual(m["sender"], "")

    def test_postmaster(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<postmaster>"), 250, "2.1.5")
        self.assertReply(c.cmd("RCPT TO:<Postmaster>"), 250, "2.1.5")

    def test_relay_denied(self):
        c = self.ehlo_client()
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        for rcpt in ("victim@elsewhere.test", "user@sub.%s" % LOCAL_DOMAIN,
                     "user@%s.evil.test" % LOCAL_DOMAIN):
            with self.subTest(rcpt=rcpt):
                self.assertReply(c.cmd("RCPT TO:<%s>" % rcpt), 554, "5.7.1")
        # a local recipient is still fine, and the domain is matched without regard to case
        self.assertReply(c.cmd("RCPT TO:<user@%s>" % LOCAL_DOMAIN.upper()), 250, "2.1.5")

    def test_message_queued(self):
        c = self.connect(self.d)
        body = "line one\r\nline two"
        r, qid = c.send_message(SENDER, [RCPT, "other@" + LOCAL_DOMAIN],
                                message("queued", body))
        self.assertQueued(r, qid)
        self.assertIn(qid, self.d.queue_files())
        [m] = [m for m in self.d.queue() if m["id"] == qid]
        self.assertEqual(m["sender"], SENDER)
        self.assertEqual(sorted(x["address"] for x in m["recipients"]),
                         sorted([RCPT, "other@" + LOCAL_DOMAIN]))
        self.assertGreater(m["size"], len(body))
        for key in ("arrival", "arrival_usec", "state", "last_error"):
            self.assertIn(key, m)

        fields, stored = self.d.show(qid)
        self.assertEqual(fields["id"], [qid])
        self.assertIn("state", fields)
        self.assertEqual(fields["sender"], ["<%s>" % SENDER])
        self.assertEqual(len(fields["recipient"]), 2, fields)
        self.assertTrue(any(RCPT in v for v in fields["recipient"]), fields)
        self.assertTrue(stored.startswith("Received:"), stored[:200])
        received = unfold_header(stored, "Received")
        self.assertRegex(received, r"\bid %s\b" % qid)
        self.assertIn("Subject: queued\n", stored)
        self.assertIn("\n\nline one\nline two", stored)

        log = self.d.log()
        self.assertRegex(log, r"%s: from=<%s>, size=\d+, nrcpt=2, client=\[127\.0\.0\.1\]"
                         % (qid, re.escape(SENDER)))

    def test_two_messages_one_session(self):
        c = self.connect(self.d)
        r1, q1 = c.send_message(SENDER, [RCPT], message("first"))
        r2, q2 = c.send_message(SENDER, [RCPT], message("second"), ehlo=False)
        self.assertQueued(r1, q1)
        self.assertQueued(r2, q2)
        self.assertNotEqual(q1, q2)
        self.assertIn("Subject: second\n", self.d.show(q2)[1])

    def test_pipelining(self):
        c = self.ehlo_client()
        c.send("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nRCPT TO:<b@%s>\r\nDATA\r\n"
               % (SENDER, RCPT, LOCAL_DOMAIN))
        self.assertReply(c.reply(), 250, "2.1.0")
        self.assertReply(c.reply(), 250, "2.1.5")
        self.assertReply(c.reply(), 250, "2.1.5")
        self.assertReply(c.reply(), 354)
        c.send(message("pipelined") + "\r\n.\r\n")
        r = c.reply()
        self.assertReply(r, 250, "2.0.0")
        self.assertTrue(c.nothing_more(), "extra replies: %r" % c.buf)
        qid = QUEUED_RE.search(r.texts[-1]).group(1)
        [m] = [m for m in self.d.queue() if m["id"] == qid]
        self.assertEqual(len(m["recipients"]), 2)

    def test_pipelining_with_errors(self):
        # a refused recipient in the middle of a pipelined group gets its own reply, in order
        c = self.ehlo_client()
        c.send("MAIL FROM:<%s>\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<%s>\r\nDATA\r\n"
               % (SENDER, RCPT))
        self.assertReply(c.reply(), 250, "2.1.0")
        self.assertReply(c.reply(), 554, "5.7.1")
        self.assertReply(c.reply(), 250, "2.1.5")
        self.assertReply(c.reply(), 354)
        c.send(message("pipelined2") + "\r\n.\r\n")
        self.assertReply(c.reply(), 250, "2.0.0")
        # the whole transaction plus QUIT in one segment
        c.send("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n%s\r\n.\r\nQUIT\r\n"
               % (SENDER, RCPT, message("in one segment")))
        self.assertReply(c.reply(), 250, "2.1.0")
        self.assertReply(c.reply(), 250, "2.1.5")
        self.assertReply(c.reply(), 354)
        self.assertReply(c.reply(), 250, "2.0.0")
        self.assertReply(c.reply(), 221, "2.0.0")
        self.assertTrue(c.closed())

    def test_dot_unstuffing(self):
        c = self.connect(self.d)
        body = "..dot\r\n...two dots\r\n..\r\nend"
        r, qid = c.send_message(SENDER, [RCPT], message("dots", body))
        self.assertQueued(r, qid)
        stored = self.d.show(qid)[1]
        body_lines = stored.split("\n\n", 1)[1].split("\n")
        self.assertEqual(body_lines[:4], [".dot", "..two dots", ".", "end"])

    def test_smtplib(self):
        with smtplib.SMTP("127.0.0.1", self.d.port, local_hostname="client.remote.test",
                          timeout=10) as s:
            code, _ = s.ehlo()
            self.assertEqual(code, 250)
            self.assertTrue(s.has_extn("pipelining"))
            self.assertEqual(s.esmtp_features.get("size"), "1000000")
            refused = s.sendmail(SENDER, [RCPT, "nobody@elsewhere.test"],
                                 message("via smtplib"))
            self.assertEqual(list(refused), ["nobody@elsewhere.test"])
            self.assertEqual(refused["nobody@elsewhere.test"][0], 554)
        [m] = self.d.queue()
        self.assertEqual([x["address"] for x in m["recipients"]], [RCPT])

    @unittest.skipUnless(shutil.which("swaks"), "swaks not installed")
    def test_swaks(self):
        r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(self.d.port),
                            "--from", SENDER, "--to", RCPT, "--helo", "client.remote.test",
                            "--header", "Subject: via swaks", "--body", "swaks body"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        m = QUEUED_RE.search(r.stdout)
        self.assertIsNotNone(m, r.stdout)
        qid = m.group(1)
        self.assertRegex(qid, QID_RE)
        self.assertIn(qid, self.d.queue_ids())
        stored = self.d.show(qid)[1]
        self.assertIn("Subject: via swaks", stored)
        self.assertIn("swaks body", stored)


if __name__ == "__main__":
    unittest.main()
