"""test_smuggling.py - SMTP smuggling: only CRLF.CRLF ends DATA, and a bare CR or LF anywhere in
the content gets the whole message refused (554 5.6.0) at the real end of data, so no byte
sequence can make one DATA carry a second, smuggled transaction. Command lines must end in
CRLF."""

import unittest

from harness import LOCAL_DOMAIN, SorterTestCase, message

RCPT = "user@" + LOCAL_DOMAIN
SENDER = "sender@remote.test"

# the false ends of data a lenient server might accept
VARIANTS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\r\n.\n",
    b"\r\n.\r\r\n",
]

SMUGGLED = (b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@" + LOCAL_DOMAIN.encode()
            + b">\r\nDATA\r\nsmuggled\r\n")


class SmugglingTest(SorterTestCase):
    def setUp(self):
        self.d = self.sorterd()

    def open_data(self, c):
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)

    def test_false_end_of_data(self):
        clean = set()
        for variant in VARIANTS:
            with self.subTest(variant=variant):
                c = self.connect(self.d)
                self.assertEqual(c.ehlo().code, 250)
                self.open_data(c)
                c.send(message("smuggle").encode() + b"\r\nhello" + variant + SMUGGLED
                       + b"\r\n.\r\n")
                r = c.reply()
                self.assertReply(r, 554, "5.6.0")
                self.assertTrue(c.nothing_more(1.0),
                                "more than one reply to one DATA: %r" % c.buf)
                self.assertEqual(self.d.queue_ids(), clean, "a refused message was queued")
                # the session goes on, and a clean message is taken
                r, qid = c.send_message(SENDER, [RCPT], message("clean"), ehlo=False)
                self.assertQueued(r, qid)
                clean.add(qid)
                queued = self.d.queue()
                self.assertEqual({m["id"] for m in queued}, clean)
                for m in queued:
                    self.assertEqual(m["sender"], SENDER)
                    self.assertEqual([x["address"] for x in m["recipients"]], [RCPT])
                self.assertNotIn("smuggled", self.d.show(qid)[1])
                self.assertReply(c.cmd("QUIT"), 221, "2.0.0")
                c.close()

    def test_false_end_of_data_in_pieces(self):
        # the same with the false end split across segments, byte by byte around it
        for variant in VARIANTS:
            with self.subTest(variant=variant):
                c = self.connect(self.d)
                self.assertEqual(c.ehlo().code, 250)
                self.open_data(c)
                c.send(message("smuggle").encode() + b"\r\nhello")
                for b in variant:
                    c.send(bytes([b]))
                c.send(SMUGGLED)
                c.send(b"\r\n.\r\n")
                self.assertReply(c.reply(), 554, "5.6.0")
                self.assertTrue(c.nothing_more(1.0), "extra replies: %r" % c.buf)
                self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
                c.close()
        self.assertEqual(self.d.queue(), [])

    def test_bare_cr_or_lf_in_body(self):
        for body in (b"one\ntwo", b"one\rtwo", b"trailing\n", b"lead\r\n\rx", b"\n"):
            with self.subTest(body=body):
                c = self.connect(self.d)
                self.assertEqual(c.ehlo().code, 250)
                self.open_data(c)
                c.send(b"Subject: bare\r\n\r\n" + body + b"\r\n.\r\n")
                self.assertReply(c.reply(), 554, "5.6.0")
                self.assertTrue(c.nothing_more(), "extra replies: %r" % c.buf)
                c.close()
        self.assertEqual(self.d.queue(), [])

    def test_bare_lf_in_header(self):
        c = self.connect(self.d)
        self.assertEqual(c.ehlo().code, 250)
        self.open_data(c)
        c.send(b"Subject: a\nX-Injected: b\r\n\r\nbody\r\n.\r\n")
        self.assertReply(c.reply(), 554, "5.6.0")
        self.assertEqual(self.d.queue(), [])

    def test_real_end_only(self):
        # CRLF.CRLF is the end, even right after the header/body separator
        c = self.connect(self.d)
        self.assertEqual(c.ehlo().code, 250)
        self.open_data(c)
        c.send(b"Subject: empty body\r\n\r\n.\r\n")
        r = c.reply()
        self.assertReply(r, 250, "2.0.0")

    def test_bare_lf_command(self):
        c = self.connect(self.d)
        self.assertEqual(c.ehlo().code, 250)
        for line in (b"NOOP\n", b"RSET\n", b"MAIL FROM:<%s>\n" % SENDER.encode()):
            with self.subTest(line=line):
                c.send(line)
                self.assertReply(c.reply(), 500, "5.5.2")
                self.assertTrue(c.nothing_more(), "extra replies: %r" % c.buf)
        # the MAIL above was refused, so there is no transaction to add recipients to
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 503, "5.5.1")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    def test_bare_lf_command_before_data(self):
        # a LF-terminated DATA must not open a data phase
        c = self.connect(self.d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")
        c.send(b"DATA\n")
        self.assertReply(c.reply(), 500, "5.5.2")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")


if __name__ == "__main__":
    unittest.main()
