"""test_chunking.py - CHUNKING (RFC 3030) in sorterd: BDAT chunks of any size, 0-byte LAST,
pipelined chunks in one write, the mixing rules with DATA, refused chunks still read so that
their octets are never taken for commands, a malformed BDAT closing the session, the size
limit counted across chunks, the bare CR / bare LF rule of DATA, the data timeout while chunk
octets are outstanding, BDAT after STARTTLS, and a message sent by BDAT reaching a real Dovecot
LMTP node byte for byte as the same message sent by DATA does.

A raw socket client (harness.Client) gives exact control of the bytes: no common client
(swaks, smtplib) speaks BDAT.
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

from harness import LOCAL_DOMAIN, QUEUED_RE, SorterTestCase, client_tls_context, wait_until
from test_delivery import SENDER as SENDER_DELIVERY
from test_delivery import ALICE, CAROL, DeliveryTestCase, make_message, token
from test_tls import make_cert

RCPT = "user@" + LOCAL_DOMAIN
SENDER = "sender@remote.test"
LIMIT = 4096


def bdat(chunks, last=True):
    """The bytes of one BDAT command per chunk, each followed by its octets; the last one
    says LAST unless last is False."""
    out = b""
    for i, c in enumerate(chunks):
        tail = b" LAST" if last and i == len(chunks) - 1 else b""
        out += b"BDAT %d%s\r\n" % (len(c), tail) + c
    return out


def cut(data, sizes):
    """data cut into pieces of the given sizes, the rest in one last piece."""
    out, off = [], 0
    for n in sizes:
        out.append(data[off:off + n])
        off += n
    out.append(data[off:])
    return out


def envelope(sender=SENDER, rcpt=RCPT):
    return b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\n" % (sender.encode(), rcpt.encode())


def stored(d, qid):
    """The content of queued message qid as stored in the spool, exact bytes."""
    r = subprocess.run([os.path.join(d.build, "sorterctl"), "-c", d.conf_path, "show", qid],
                       capture_output=True, timeout=60, check=True)
    head, sep, content = r.stdout.partition(b"\n\n")
    if not sep:
        raise AssertionError("sorterctl show %s: no blank line after the envelope" % qid)
    return content


def without_our_received(content):
    """content without the Received: header sorterd puts on top (it names the queue id and
    the time, so it differs from one message to the next)."""
    m = re.match(rb"Received: from [^\r\n]*\r\n(?:\t[^\r\n]*\r\n)*", content)
    if not m or b"(Sorter)" not in m.group(0):
        raise AssertionError("no Received: header of ours on top: %r" % content[:300])
    return content[m.end():]


class ChunkingTest(SorterTestCase):
    def setUp(self):
        self.d = self.sorterd(message_size_limit=LIMIT)

    def client(self):
        c = self.connect(self.d)
        self.assertReply(c.ehlo(), 250)
        return c

    def replies(self, c, n, timeout=None):
        return [c.reply(timeout) for _ in range(n)]

    def assertQueuedReply(self, r):
        self.assertReply(r, 250, "2.0.0")
        m = QUEUED_RE.search(r.texts[-1])
        self.assertIsNotNone(m, "no queue id in %s" % r)
        return m.group(1)

    def test_advertised(self):
        c = self.connect(self.d)
        r = c.ehlo()
        self.assertReply(r, 250)
        self.assertIn("CHUNKING", r.keywords())
        self.assertEqual(r.lines[-1], "250 DSN", str(r))
        self.assertTrue(all(l.startswith("250-") for l in r.lines[:-1]), str(r))

    def test_one_chunk(self):
        c = self.client()
        content = b"Subject: one\r\n\r\nhello\r\n"
        c.send(envelope() + bdat([content]))
        r1, r2, r3 = self.replies(c, 3)
        self.assertReply(r1, 250, "2.1.0")
        self.assertReply(r2, 250, "2.1.5")
        qid = self.assertQueuedReply(r3)
        self.assertTrue(c.nothing_more(), "extra replies: %r" % c.buf)
        self.assertEqual(without_our_received(stored(self.d, qid)), content)
        self.assertReply(c.cmd("QUIT"), 221, "2.0.0")

    def test_pipelined_chunks_one_write(self):
        # content that DATA would treat specially goes through untouched: dots at line
        # starts, a CR LF "." CR LF, commands; a CR LF cut between two chunks is a line end
        content = (b"Subject: pipelined\r\nX-Test: a\r\n\r\n..two dots\r\n.\r\n"
                   b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@" + LOCAL_DOMAIN.encode()
                   + b">\r\nDATA\r\nQUIT\r\nend\r\n")
        cr_at = content.index(b"\r\n\r\n") + 1       # the CR of the blank line ends a chunk
        chunks = cut(content, [1, cr_at - 1, 10, 0, 7])
        self.assertEqual(b"".join(chunks), content)
        c = self.client()
        c.send(envelope() + bdat(chunks) + b"NOOP\r\n")
        got = self.replies(c, 2 + len(chunks) + 1)
        self.assertReply(got[0], 250, "2.1.0")
        self.assertReply(got[1], 250, "2.1.5")
        for chunk, r in zip(chunks[:-1], got[2:-2]):
            self.assertReply(r, 250, "2.0.0")
            self.assertEqual(r.texts[-1], "2.0.0 Ok: %d octets" % len(chunk))
        qid = self.assertQueuedReply(got[-2])
        self.assertReply(got[-1], 250, "2.0.0")       # the NOOP, after the message
        self.assertTrue(c.nothing_more(), "extra replies: %r" % c.buf)
        self.assertEqual(self.d.queue_ids(), {qid})
        self.assertEqual(without_our_received(stored(self.d, qid)), content)
        [m] = self.d.queue()
        self.assertEqual(m["sender"], SENDER)
        self.assertEqual([x["address"] for x in m["recipients"]], [RCPT])

    def test_same_spool_content_as_data(self):
        # one text by BDAT (odd chunks) and by DATA (dot-stuffed): the spool holds the same
        # bytes for both, apart from our Received: header (no delivery here: they stay queued)
        text = (b"Received: from hop.remote.test by x.remote.test;\r\n\tMon, 23 Nov 2026\r\n"
                b"Subject: same\r\n\r\n.\r\n..\r\n.x\r\n\r\n" + b"8-bit \xe9\xff\r\n" * 50
                + b"end\r\n")
        c = self.client()
        c.send(envelope() + bdat(cut(text, [3, 40, 1, 1, 0, 100])))
        qid_b = self.assertQueuedReply(self.replies(c, 9)[-1])
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(re.sub(rb"(?m)^\.", b"..", text) + b".\r\n")
        qid_d = self.assertQueuedReply(c.reply())
        b, d = stored(self.d, qid_b), stored(self.d, qid_d)
        self.assertEqual(without_our_received(b), text)
        self.assertEqual(without_our_received(d), text)
        # the Received: headers differ only in the queue id and the time
        rx = re.compile(rb"id [0-9A-Z]{12}|;\r\n\t[^\r\n]*")
        self.assertEqual(rx.sub(b"", b[:len(b) - len(text)]), rx.sub(b"", d[:len(d) - len(text)]))

    def test_two_messages_pipelined(self):
        one, two = b"Subject: 1\r\n\r\none\r\n", b"Subject: 2\r\n\r\ntwo\r\n"
        c = self.client()
        c.send(envelope() + bdat(cut(one, [5])) + envelope() + bdat([two]) + b"QUIT\r\n")
        got = self.replies(c, 8)
        self.assertReply(got[2], 250, "2.0.0")
        qid1, qid2 = self.assertQueuedReply(got[3]), self.assertQueuedReply(got[6])
        self.assertReply(got[7], 221, "2.0.0")
        self.assertTrue(c.closed())
        self.assertEqual(without_our_received(stored(self.d, qid1)), one)
        self.assertEqual(without_our_received(stored(self.d, qid2)), two)

    def test_zero_byte_last(self):
        c = self.client()
        content = b"Subject: zero\r\n\r\nbody\r\n"
        c.send(envelope() + b"BDAT %d\r\n" % len(content) + content + b"BDAT 0 LAST\r\n")
        got = self.replies(c, 4)
        self.assertEqual(got[2].texts[-1], "2.0.0 Ok: %d octets" % len(content))
        qid = self.assertQueuedReply(got[3])
        self.assertEqual(without_our_received(stored(self.d, qid)), content)
        # a message of nothing at all: only our Received: header is stored
        c.send(envelope() + b"BDAT 0 LAST\r\n")
        qid = self.assertQueuedReply(self.replies(c, 3)[2])
        self.assertEqual(without_our_received(stored(self.d, qid)), b"")

    def test_last_line_without_crlf(self):
        # DATA content always ends with CR LF; BDAT content gets one where it lacks it
        c = self.client()
        c.send(envelope() + bdat([b"Subject: open\r\n\r\nno line end"]))
        qid = self.assertQueuedReply(self.replies(c, 3)[2])
        self.assertEqual(without_our_received(stored(self.d, qid)),
                         b"Subject: open\r\n\r\nno line end\r\n")

    def test_chunk_in_pieces(self):
        # one chunk arriving in several segments, the command line cut as well
        c = self.client()
        c.send(envelope())
        self.replies(c, 2)
        content = b"Subject: slow\r\n\r\n" + b"0123456789" * 50 + b"\r\n"
        data = b"BDAT %d LAST\r\n" % len(content) + content
        for piece in cut(data, [3, 9, 1, 100, 1, 1]):
            c.send(piece)
            time.sleep(0.05)
        qid = self.assertQueuedReply(c.reply())
        self.assertEqual(without_our_received(stored(self.d, qid)), content)

    def test_bdat_then_data(self):
        c = self.client()
        c.send(envelope() + bdat([b"Subject: mixed\r\n"], last=False))
        got = self.replies(c, 3)
        self.assertReply(got[2], 250, "2.0.0")
        self.assertReply(c.cmd("DATA"), 503, "5.5.1")
        # nothing else is taken amid the chunks either
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 503, "5.5.1")
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 503, "5.5.1")
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        self.assertEqual(self.d.queue(), [])
        # and a fresh transaction works
        c.send(envelope() + bdat([b"Subject: after\r\n\r\nok\r\n"]))
        self.assertQueuedReply(self.replies(c, 3)[2])

    def test_bdat_without_transaction_is_read(self):
        # each refused chunk holds a command line: it must be read as the chunk's octets,
        # not run (QUIT would end the session, MAIL would open a transaction)
        c = self.connect(self.d)
        quit_ = b"QUIT\r\n"
        c.send(b"BDAT %d\r\n" % len(quit_) + quit_)
        self.assertReply(c.reply(), 503, "5.5.1")          # before EHLO
        self.assertReply(c.ehlo(), 250)
        mail = b"MAIL FROM:<%s>\r\n" % SENDER.encode()
        c.send(b"BDAT %d LAST\r\n" % len(mail) + mail)
        r = c.reply()
        self.assertReply(r, 503, "5.5.1")
        self.assertIn("need MAIL", r.texts[-1])
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        c.send(b"BDAT %d\r\n" % len(quit_) + quit_)
        r = c.reply()
        self.assertReply(r, 503, "5.5.1")
        self.assertIn("need RCPT", r.texts[-1])
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        # RCPT still fits: the MAIL transaction survived the refused chunk
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")
        self.assertTrue(c.nothing_more())
        self.assertEqual(self.d.queue(), [])

    def test_after_last_there_is_no_transaction(self):
        c = self.client()
        c.send(envelope() + bdat([b"Subject: x\r\n\r\ny\r\n"]) + b"BDAT 4\r\nQUIT")
        got = self.replies(c, 4)
        self.assertQueuedReply(got[2])
        self.assertReply(got[3], 503, "5.5.1")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    def test_malformed_bdat_closes(self):
        # the chunk size is unknown: what follows can't be told from commands, so the
        # session ends (501, then 421) and nothing after the line is acted on
        for line in (b"BDAT", b"BDAT x", b"BDAT 10 NOTLAST", b"BDAT -5", b"BDAT 1 LAST x",
                     b"BDAT\t5", b"BDAT 99999999999999999999"):
            with self.subTest(line=line):
                c = self.client()
                c.send(envelope() + line + b"\r\nMAIL FROM:<a@b.test>\r\nQUIT\r\n")
                got = self.replies(c, 4)
                self.assertReply(got[2], 501, "5.5.4")
                self.assertReply(got[3], 421, "4.5.0")
                self.assertTrue(c.closed(), "still open, or more replies: %r" % c.buf)
                c.close()
        self.assertEqual(self.d.queue(), [])
        self.assertTrue(self.d.log_lines(r"malformed BDAT from \[127\.0\.0\.1\]"))

    def test_size_limit_across_chunks(self):
        c = self.client()
        piece = b"x" * 1500 + b"\r\n"
        chunks = [b"Subject: big\r\n\r\n"] + [piece] * 5      # the 3rd piece goes over
        c.send(envelope() + bdat(chunks) + b"NOOP\r\n")
        got = self.replies(c, 2 + len(chunks) + 1)
        over = next(i for i in range(len(chunks)) if len(b"".join(chunks[:i + 1])) > LIMIT)
        self.assertEqual(over, 3)
        for i, r in enumerate(got[2:2 + len(chunks)]):
            if i < over:
                self.assertReply(r, 250, "2.0.0", "chunk %d: %s" % (i, r))
            elif i == over:
                self.assertReply(r, 552, "5.3.4", "chunk %d: %s" % (i, r))
            else:
                # the transaction failed: chunks already pipelined get an error too
                self.assertEqual(r.code // 100, 5, "chunk %d after the failure: %s" % (i, r))
        self.assertReply(got[-1], 250, "2.0.0")             # in step: the NOOP
        self.assertTrue(c.nothing_more())
        self.assertEqual(self.d.queue(), [])
        # a chunk far over the limit is read through and refused, the session goes on
        big = b"y" * (LIMIT * 500)
        c.send(envelope() + bdat([big]))
        got = self.replies(c, 3, timeout=60)
        self.assertReply(got[2], 552, "5.3.4")
        # exactly at the limit is fine
        at = b"Subject: fits\r\n\r\n" + b"z" * (LIMIT - 19) + b"\r\n"
        self.assertEqual(len(at), LIMIT)
        c.send(envelope() + bdat(cut(at, [100])))
        got = self.replies(c, 4)
        qid = self.assertQueuedReply(got[3])
        self.assertEqual(without_our_received(stored(self.d, qid)), at)
        # the declared SIZE is checked at MAIL as for DATA
        self.assertReply(c.cmd("MAIL FROM:<%s> SIZE=%d" % (SENDER, LIMIT + 1)), 552, "5.3.4")

    def test_bare_cr_or_lf(self):
        cases = [
            [b"Subject: bare\r\n\r\none\ntwo\r\n"],
            [b"Subject: bare\r\n\r\none\rtwo\r\n"],
            [b"Subject: a\nX-Injected: b\r\n\r\nbody\r\n"],
            # the smuggling sequences that fool some DATA parsers: plain content here,
            # and still refused
            [b"Subject: s\r\n\r\nhello\n.\nMAIL FROM:<evil@x.test>\r\n"],
            [b"Subject: s\r\n\r\nhello\r\n.\rMAIL FROM:<evil@x.test>\r\n"],
            # a bare LF in an early chunk is remembered until LAST
            [b"Subject: s\r\n\r\nx\n", b"more\r\n"],
            # a CR that ends the message is bare: no LF follows it
            [b"Subject: s\r\n\r\nend\r"],
            [b"Subject: s\r\n\r\nend\r", b""],
            # a CR ending one chunk and a CR starting the next: not a CR LF
            [b"Subject: s\r\n\r\nend\r", b"\rx\r\n"],
        ]
        c = self.client()
        for chunks in cases:
            with self.subTest(chunks=chunks):
                c.send(envelope() + bdat(chunks))
                got = self.replies(c, 2 + len(chunks))
                for r in got[2:-1]:
                    self.assertReply(r, 250, "2.0.0")
                self.assertReply(got[-1], 554, "5.6.0")
                self.assertTrue(c.nothing_more(), "extra replies: %r" % c.buf)
        self.assertEqual(self.d.queue(), [])
        # a CR LF cut between two chunks is a line end, not a bare CR and a bare LF
        c.send(envelope() + bdat([b"Subject: ok\r", b"\n\r", b"\nbody\r\n"]))
        qid = self.assertQueuedReply(self.replies(c, 5)[4])
        self.assertEqual(without_our_received(stored(self.d, qid)),
                         b"Subject: ok\r\n\r\nbody\r\n")

    def test_too_many_errors_while_refusing(self):
        # refused chunks count towards smtpd_hard_error_limit like other errors
        d = self.sorterd("d2", smtpd_hard_error_limit=3)
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        c.send(b"BDAT 3\r\nabcBDAT 3\r\nabcBDAT 3\r\nabcNOOP\r\n")
        got = self.replies(c, 4)
        self.assertEqual([r.code for r in got[:3]], [503, 503, 503])
        self.assertReply(got[3], 421, "4.7.0")
        self.assertTrue(c.closed())


class ChunkingTimeoutTest(SorterTestCase):
    def test_data_timeout_while_chunk_outstanding(self):
        d = self.sorterd(smtpd_timeout=30, smtpd_data_timeout=1)
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        c.send(envelope() + b"BDAT 5\r\n12345")
        got = [c.reply() for _ in range(3)]
        self.assertReply(got[2], 250, "2.0.0")
        # between chunks the command timeout applies, not the data timeout
        time.sleep(2.5)
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        started = time.monotonic()
        c.send(b"BDAT 100 LAST\r\nonly some of it")
        r = c.reply(timeout=15)
        self.assertReply(r, 421, "4.4.2")
        self.assertLess(time.monotonic() - started, 10)
        self.assertTrue(c.closed())
        self.assertTrue(wait_until(lambda: d.log_lines(r"timeout after BDAT from"), 5))
        self.assertEqual(d.queue(), [])


    def test_trickle_of_chunks_is_cut_off(self):
        # one complete 1-byte chunk every 2 s: each chunk is whole, but the message's
        # content is far under smtpd_min_data_rate once the 30 s grace is over
        d = self.sorterd(smtpd_min_data_rate=50, smtpd_timeout=60, smtpd_data_timeout=60)
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        c.send(envelope())
        [c.reply() for _ in range(2)]
        t0 = time.monotonic()
        r = None
        while time.monotonic() - t0 < 45:
            c.send(b"BDAT 1\r\nx")
            r = c.reply(timeout=5)
            if r.code != 250:
                break
            time.sleep(2)
        self.assertIsNotNone(r)
        # the chunk that finds the rate too low is taken, then the session ends
        if r.code == 250:
            r = c.reply(timeout=5)
        self.assertReply(r, 421, "4.4.2")
        self.assertGreater(time.monotonic() - t0, 29)
        self.assertTrue(c.closed())
        self.assertEqual(d.queue(), [])
        self.assertTrue(d.log_lines(r"slower than smtpd_min_data_rate=50"))

    def test_refused_chunk_ends_at_session_time_limit(self):
        # a chunk with no transaction, dripped: there is nothing to finish, so the session
        # time limit ends it at once
        d = self.sorterd(smtpd_session_time_limit="10s", smtpd_data_timeout=60)
        c = self.connect(d)
        self.assertReply(c.ehlo(), 250)
        c.send(b"BDAT 1000000\r\n")
        t0 = time.monotonic()
        r = None
        while time.monotonic() - t0 < 25:
            try:
                c.send(b"x")
                r = c.reply(timeout=1)
                break
            except socket.timeout:
                continue
            except OSError:
                break
        self.assertIsNotNone(r, "the session outlived smtpd_session_time_limit")
        self.assertReply(r, 421, "4.4.2")
        self.assertGreater(time.monotonic() - t0, 8)
        self.assertTrue(c.closed())


@unittest.skipUnless(shutil.which("openssl"), "openssl not installed")
class ChunkingTLSTest(SorterTestCase):
    @classmethod
    def setUpClass(cls):
        cls.certdir = tempfile.mkdtemp(prefix="sorter-it-tls-")
        cls.cert, cls.key = make_cert(cls.certdir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certdir, ignore_errors=True)

    def test_bdat_after_starttls(self):
        d = self.sorterd(tls_cert_file=self.cert, tls_key_file=self.key)
        c = self.connect(d)
        self.assertIn("CHUNKING", c.ehlo().keywords())
        self.assertReply(c.starttls(client_tls_context()), 220, "2.0.0")
        r = c.ehlo()
        self.assertIn("CHUNKING", r.keywords())
        self.assertEqual(r.lines[-1], "250 DSN")
        content = b"Subject: over TLS\r\n\r\n" + b"line\r\n" * 3000
        c.send(envelope() + bdat(cut(content, [7, 4000, 1])) + b"QUIT\r\n")
        got = [c.reply() for _ in range(2 + 4 + 1)]
        self.assertEqual([r.code for r in got[:5]], [250] * 5, got)
        m = QUEUED_RE.search(got[5].texts[-1])
        self.assertReply(got[5], 250, "2.0.0")
        self.assertIsNotNone(m, str(got[5]))
        self.assertReply(got[6], 221, "2.0.0")
        stored_content = stored(d, m.group(1))
        self.assertEqual(without_our_received(stored_content), content)
        self.assertIn(b"with ESMTPS id " + m.group(1).encode(), stored_content)


class ChunkingDeliveryTest(DeliveryTestCase):
    """The same message by BDAT and by DATA, delivered to a Dovecot LMTP node."""

    def send_bdat(self, rcpt, text, sizes):
        c = self.connect(self.d)
        self.assertReply(c.ehlo(), 250)
        chunks = cut(text, sizes)
        c.send(envelope(SENDER_DELIVERY, rcpt) + bdat(chunks))
        got = [c.reply(timeout=60) for _ in range(2 + len(chunks))]
        for r in got[:-1]:
            self.assertReply(r, 250)
        m = QUEUED_RE.search(got[-1].texts[-1])
        self.assertReply(got[-1], 250, "2.0.0")
        self.assertIsNotNone(m, str(got[-1]))
        self.assertReply(c.cmd("QUIT"), 221)
        return m.group(1)

    def send_data(self, rcpt, text):
        c = self.connect(self.d)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER_DELIVERY), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % rcpt), 250)
        self.assertReply(c.cmd("DATA"), 354)
        stuffed = re.sub(rb"(?m)^\.", b"..", text)
        c.send(stuffed + b".\r\n")
        r = c.reply(timeout=60)
        m = QUEUED_RE.search(r.texts[-1])
        self.assertReply(r, 250, "2.0.0")
        self.assertIsNotNone(m, str(r))
        self.assertReply(c.cmd("QUIT"), 221)
        return m.group(1)

    def delivered(self, user, qid):
        """The Maildir file of user's message whose Sorter Received: names qid, as bytes."""
        def look():
            for p in self.node_a.maildir_files(user):
                try:
                    with open(p, "rb") as f:
                        raw = f.read()
                except FileNotFoundError:
                    continue
                if b" id " + qid.encode() in raw:
                    return raw
            return None
        raw = wait_until(look, 30, interval=0.1)
        self.assertIsNotNone(raw, "%s not delivered to %s: %s" % (qid, user, self.queue_summary()))
        return raw

    def split_original(self, raw, first_line):
        """(the header lines added on the way, the original message from first_line on)."""
        i = raw.index(first_line)
        added = raw[:i]
        names = re.findall(rb"(?m)^([A-Za-z-]+):", added)
        self.assertTrue(set(n.lower() for n in names) <= {b"return-path", b"delivered-to",
                                                           b"received"}, added)
        return added, raw[i:]

    def test_bdat_and_data_deliver_the_same_bytes(self):
        self.start_sorterd()
        tok = token("chunked")
        body = "\r\n".join([".", "..", ".leading dot", "", "a line " * 40, "\xe9t\xe9 8-bit",
                            "From the start", "end"])
        text = make_message(tok, SENDER_DELIVERY, ALICE,
                            extra_headers=["Received: from hop.remote.test by x.remote.test;"
                                           "\r\n\tMon, 23 Nov 2026 11:00:00 +0000"],
                            body=body).encode() + b"\r\n"
        # chunks cut inside the first header, between CR and LF, and at a line-start dot
        cr = text.index(b"\r\n")
        dot = text.index(b"\r\n..\r\n") + 2
        qid_b = self.send_bdat(ALICE, text, [5, cr + 1 - 5, dot - cr - 1, 1, 0, 13])
        qid_d = self.send_data(ALICE, text)
        self.assertNotEqual(qid_b, qid_d)
        raw_b, raw_d = self.delivered("alice", qid_b), self.delivered("alice", qid_d)
        first = b"Received: from hop.remote.test"
        added_b, orig_b = self.split_original(raw_b, first)
        added_d, orig_d = self.split_original(raw_d, first)
        self.assertEqual(orig_b, orig_d, "BDAT and DATA delivered different messages")
        # and the node's copy is the message that was sent (the node may store LF ends)
        self.assertIn(orig_b, (text, text.replace(b"\r\n", b"\n")))
        self.wait_queue_empty()

    def test_hop_limit_by_bdat(self):
        # Received: headers sent in BDAT chunks count as in DATA: over hopcount_limit the
        # message bounces (5.4.6) instead of looping on
        self.start_sorterd()
        hops = ["Received: from hop%d.remote.test by hop%d.remote.test;\r\n"
                "\tMon, 23 Nov 2026 12:00:%02d +0000" % (i, i + 1, i) for i in range(51)]
        looping = token("loop")
        text = make_message(looping, SENDER_DELIVERY, CAROL, extra_headers=hops).encode()
        qid = self.send_bdat(CAROL, text + b"\r\n", [len(text) // 3, 1, 2])
        dsn = self.wait_dsn("failed", CAROL)
        r = self.assertDSN(dsn, "failed", "5", CAROL)
        self.assertEqual(r["status"], "5.4.6")
        self.wait_queue_empty()
        self.assertEqual(self.found(self.node_a, "carol", looping), [])
        self.wait_log(r"%s: to=<%s>, .*status=bounced" % (qid, CAROL))


if __name__ == "__main__":
    unittest.main()
