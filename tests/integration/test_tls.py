"""test_tls.py - STARTTLS in sorterd: the handshake, TLS 1.2 as the floor, the session reset
after it, nothing buffered before it surviving it (CVE-2011-0411), and the protocol and cipher
in the Received: header and the log."""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import warnings

from harness import (LOCAL_DOMAIN, Sorterd, SorterTestCase, client_tls_context, message,
                     unfold_header)

RCPT = "user@" + LOCAL_DOMAIN
SENDER = "sender@remote.test"


def make_cert(directory):
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@unittest.skipUnless(shutil.which("openssl"), "openssl not installed")
class TLSTest(SorterTestCase):
    @classmethod
    def setUpClass(cls):
        cls.certdir = tempfile.mkdtemp(prefix="sorter-it-tls-")
        cls.cert, cls.key = make_cert(cls.certdir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certdir, ignore_errors=True)

    def setUp(self):
        self.d = self.sorterd(tls_cert_file=self.cert, tls_key_file=self.key)

    def tls_client(self, context=None):
        c = self.connect(self.d)
        self.assertIn("STARTTLS", c.ehlo().keywords())
        self.assertReply(c.starttls(context), 220, "2.0.0")
        return c

    def test_starttls_advertised(self):
        c = self.connect(self.d)
        r = c.ehlo()
        self.assertReply(r, 250)
        self.assertIn("STARTTLS", r.keywords())

    def test_starttls(self):
        c = self.tls_client()
        self.assertIn(c.sock.version(), ("TLSv1.2", "TLSv1.3"))
        r = c.ehlo()
        self.assertReply(r, 250)
        kw = r.keywords()
        self.assertNotIn("STARTTLS", kw, "STARTTLS advertised again inside TLS")
        self.assertIn("PIPELINING", kw)
        r, qid = c.send_message(SENDER, [RCPT], message("over tls"), ehlo=False)
        self.assertQueued(r, qid)

    def test_session_reset(self):
        c = self.connect(self.d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        self.assertReply(c.starttls(), 220, "2.0.0")
        # what was said before TLS is forgotten: EHLO is needed again
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 503, "5.5.1")
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")

    @staticmethod
    def rss_kib(pids):
        total = 0
        for pid in pids:
            try:
                with open("/proc/%d/status" % pid) as f:
                    total += [int(l.split()[1]) for l in f if l.startswith("VmRSS:")][0]
            except OSError:
                pass
        return total

    def test_client_that_never_reads_is_not_read_either(self):
        """A client that pipelines commands under TLS and never reads the replies stops
        being read once they pile up, as in plaintext: the worker's memory does not grow
        with what it sends (16 MiB of EHLO would make some 150 MB of replies)."""
        import fsrec
        d = Sorterd(os.path.join(self.tmp, "unread"), start=False, tls_cert_file=self.cert,
                    tls_key_file=self.key)
        if fsrec.asan_runtime(os.path.join(d.build, "sorterd")):
            # the sanitizer keeps freed memory in quarantine: every reply ever made would
            # count, not what is held
            d.argv_prefix = ("env", "ASAN_OPTIONS=quarantine_size_mb=0")
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()
        c = self.connect(d)
        self.assertIn("STARTTLS", c.ehlo().keywords())
        self.assertReply(c.starttls(), 220, "2.0.0")
        before = self.rss_kib(d.children())
        chunk = b"EHLO client.remote.test\r\n" * 4096
        sent = 0
        c.sock.settimeout(3)
        try:
            while sent < 16 * 1024 * 1024:
                c.sock.sendall(chunk)
                sent += len(chunk)
        except (socket.timeout, TimeoutError):
            pass
        time.sleep(1)
        grown = self.rss_kib(d.children()) - before
        c.close()
        self.assertLess(sent, 16 * 1024 * 1024, "every command was read: nothing held back")
        self.assertLess(grown, 32 * 1024, "the workers grew by %d KiB" % grown)

    def test_data_timeout_holds_under_tls(self):
        """Under TLS, a pause in DATA that smtpd_data_timeout allows is not cut off by the
        shorter smtpd_timeout."""
        d = self.sorterd(name="slowdata", tls_cert_file=self.cert, tls_key_file=self.key,
                         smtpd_timeout="1", smtpd_data_timeout="6")
        c = self.connect(d)
        self.assertIn("STARTTLS", c.ehlo().keywords())
        self.assertReply(c.starttls(), 220, "2.0.0")
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send("Subject: pause\r\n\r\nfirst half\r\n")
        time.sleep(2.5)
        c.send("second half\r\n.\r\n")
        self.assertReply(c.reply(), 250, "2.0.0")
        self.assertReply(c.cmd("QUIT"), 221)

    def test_starttls_twice(self):
        c = self.tls_client()
        self.assertEqual(c.ehlo().code, 250)
        r = c.cmd("STARTTLS")
        self.assertGreaterEqual(r.code, 500, "STARTTLS inside TLS accepted: %s" % r)

    def test_starttls_with_argument(self):
        c = self.connect(self.d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("STARTTLS now"), 501, "5.5.4")

    def test_starttls_then_rset_in_one_segment(self):
        c = self.connect(self.d)
        self.assertEqual(c.ehlo().code, 250)
        c.send(b"STARTTLS\r\nRSET\r\n")
        self.assertReply(c.reply(), 220, "2.0.0")
        # no plaintext reply to the RSET
        self.assertTrue(c.nothing_more(0.5), "plaintext after the 220 to STARTTLS: %r" % c.buf)
        c.handshake()
        # the first reply inside TLS answers the EHLO, not the injected RSET
        r = c.ehlo()
        self.assertReply(r, 250)
        self.assertGreater(len(r.lines), 1, "reply to EHLO is not the EHLO reply: %s" % r)
        self.assertIn("PIPELINING", r.keywords())
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        self.assertTrue(c.nothing_more(), "a reply to the injected RSET came late: %r" % c.buf)

    def test_starttls_then_mail_in_one_segment(self):
        # a transaction injected before the handshake must not exist after it
        c = self.connect(self.d)
        self.assertEqual(c.ehlo().code, 250)
        c.send(("STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<%s>\r\n" % RCPT).encode())
        self.assertReply(c.reply(), 220, "2.0.0")
        c.handshake()
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 503, "5.5.1")
        self.assertReply(c.cmd("DATA"), 503, "5.5.1")

    def check_received(self, max_version):
        ctx = client_tls_context(maximum=max_version)
        c = self.tls_client(ctx)
        version = c.sock.version()
        cipher = c.sock.cipher()[0]
        r, qid = c.send_message(SENDER, [RCPT], message("tls received"))
        self.assertQueued(r, qid)
        received = unfold_header(self.d.show(qid)[1], "Received")
        self.assertIn("with ESMTPS", received)
        # one comment names both, e.g. "(TLSv1.3 TLS_AES_256_GCM_SHA384)"
        self.assertRegex(received, r"\([^()]*%s\b[^()]* %s\b[^()]*\)"
                         % (re.escape(version), re.escape(cipher)))
        self.assertRegex(received, r"\bid %s\b" % qid)
        self.assertTrue(
            any(version in l and cipher in l for l in self.d.log().splitlines()),
            "no log line names %s and %s" % (version, cipher))
        return version

    def test_received_tls13(self):
        self.assertEqual(self.check_received(None), "TLSv1.3")

    def test_received_tls12(self):
        self.assertEqual(self.check_received(ssl.TLSVersion.TLSv1_2), "TLSv1.2")

    def test_plaintext_received(self):
        c = self.connect(self.d)
        r, qid = c.send_message(SENDER, [RCPT], message("plain"))
        self.assertQueued(r, qid)
        received = unfold_header(self.d.show(qid)[1], "Received")
        self.assertRegex(received, r"with ESMTP\b(?!S)")

    def tls11_context(self):
        """A client context that offers only TLS 1.1, or None when the local OpenSSL cannot."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx = client_tls_context(minimum=ssl.TLSVersion.TLSv1_1,
                                         maximum=ssl.TLSVersion.TLSv1_1)
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            return None
        return ctx

    def local_tls11_works(self, ctx):
        """The control: a local Python server that allows TLS 1.1 completes a handshake with
        ctx, so a failure against sorterd is sorterd's refusal."""
        srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            srv.minimum_version = ssl.TLSVersion.TLSv1_1
        srv.set_ciphers("DEFAULT:@SECLEVEL=0")
        srv.load_cert_chain(self.cert, self.key)
        with socket.socket() as ls:
            ls.bind(("127.0.0.1", 0))
            ls.listen(1)

            def serve():
                try:
                    conn, _ = ls.accept()
                    with conn:
                        srv.wrap_socket(conn, server_side=True).close()
                except (OSError, ssl.SSLError):
                    pass
            server = threading.Thread(target=serve, daemon=True)
            server.start()
            try:
                with socket.create_connection(ls.getsockname(), timeout=10) as s:
                    with ctx.wrap_socket(s) as tls:
                        return tls.version() == "TLSv1.1"
            except (OSError, ssl.SSLError):
                return False
            finally:
                server.join(10)

    def test_tls11_refused(self):
        ctx = self.tls11_context()
        if ctx is None or not self.local_tls11_works(ctx):
            self.skipTest("the local OpenSSL cannot do a TLS 1.1 handshake")
        c = self.connect(self.d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("STARTTLS"), 220, "2.0.0")
        try:
            c.handshake(ctx)
        except (ssl.SSLError, OSError):
            pass   # refused: what we want
        else:
            self.fail("TLS 1.1 handshake succeeded (%s)" % c.sock.version())
        # the daemon goes on serving
        c2 = self.connect(self.d)
        self.assertReply(c2.cmd("NOOP"), 250, "2.0.0")

    def test_tls12_ciphers_ecdhe_aead_only(self):
        for cipher, ok in (("ECDHE-RSA-AES128-GCM-SHA256", True),
                           ("ECDHE-RSA-CHACHA20-POLY1305", True),
                           ("ECDHE-RSA-AES128-SHA", False),       # CBC: not AEAD
                           ("AES128-GCM-SHA256", False),          # RSA key exchange
                           ("DHE-RSA-AES128-GCM-SHA256", False)):
            ctx = client_tls_context(maximum=ssl.TLSVersion.TLSv1_2)
            ctx.set_ciphers(cipher)
            c = self.connect(self.d)
            self.assertReply(c.ehlo(), 250)
            if ok:
                self.assertReply(c.starttls(ctx), 220)
                self.assertEqual(c.sock.cipher()[0], cipher)
                self.assertReply(c.ehlo(), 250)
            else:
                with self.assertRaises(ssl.SSLError, msg=cipher):
                    c.starttls(ctx)

    def test_garbage_handshake(self):
        c = self.connect(self.d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("STARTTLS"), 220, "2.0.0")
        c.send(b"\x16\x03\x01\x00\x05hello this is no client hello\r\n" * 4)
        self.assertTrue(c.closed(10), "a bad handshake left the connection open")
        c2 = self.connect(self.d)
        self.assertReply(c2.cmd("NOOP"), 250, "2.0.0")


class NoTLSTest(SorterTestCase):
    def test_starttls_unconfigured(self):
        d = self.sorterd()
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        r = c.cmd("STARTTLS")
        self.assertGreaterEqual(r.code, 400, str(r))
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")


if __name__ == "__main__":
    unittest.main()


@unittest.skipUnless(shutil.which("openssl"), "openssl not installed")
class TLSCloseTest(SorterTestCase):
    """Every reply queued before sorterd closes a TLS session reaches the client: the 250 and
    221 of a pipelined "." + QUIT (as Postfix sends them), and the 421 of a limit, a timeout
    or a drain. Each case runs in several sessions, since a lost reply depends on timing."""

    ROUNDS = 10

    @classmethod
    def setUpClass(cls):
        cls.certdir = tempfile.mkdtemp(prefix="sorter-it-tlsclose-")
        cls.cert, cls.key = make_cert(cls.certdir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certdir, ignore_errors=True)

    def tls_session(self, d):
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.starttls(), 220, "2.0.0")
        self.assertEqual(c.ehlo().code, 250)
        return c

    def open_transaction(self, c):
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)

    def test_pipelined_dot_and_quit(self):
        d = self.sorterd(tls_cert_file=self.cert, tls_key_file=self.key)
        for i in range(self.ROUNDS):
            c = self.tls_session(d)
            self.open_transaction(c)
            c.send(message("pipelined %d" % i).encode() + b"\r\n.\r\nQUIT\r\n")
            r = c.reply(timeout=30)
            self.assertReply(r, 250, "2.0.0", "round %d: the 250 after the final dot was lost" % i)
            self.assertRegex(r.texts[-1], r"queued as")
            self.assertReply(c.reply(), 221, "2.0.0", "round %d: the 221 was lost" % i)
            self.assertTrue(c.closed(5), "round %d: not closed after 221" % i)

    def test_quit_after_250(self):
        d = self.sorterd(tls_cert_file=self.cert, tls_key_file=self.key)
        for i in range(self.ROUNDS):
            c = self.tls_session(d)
            r, qid = c.send_message(SENDER, [RCPT], message("then quit %d" % i), ehlo=False)
            self.assertQueued(r, qid)
            self.assertReply(c.cmd("QUIT"), 221, "2.0.0", "round %d: the 221 was lost" % i)
            self.assertTrue(c.closed(5))

    def test_error_limit_reply(self):
        d = self.sorterd(tls_cert_file=self.cert, tls_key_file=self.key,
                         smtpd_hard_error_limit=3)
        for i in range(self.ROUNDS):
            c = self.tls_session(d)
            c.send(b"BOGUS1\r\nBOGUS2\r\nBOGUS3\r\n")
            self.assertEqual(c.reply().code, 500)
            self.assertEqual(c.reply().code, 500)
            self.assertEqual(c.reply().code, 500)
            self.assertReply(c.reply(), 421, "4.7.0", "round %d: the 421 was lost" % i)
            self.assertTrue(c.closed(5))

    def test_timeout_reply(self):
        d = self.sorterd(tls_cert_file=self.cert, tls_key_file=self.key, smtpd_timeout=1)
        c = self.tls_session(d)
        self.assertReply(c.reply(timeout=10), 421, "4.4.2", "the timeout's 421 was lost")
        self.assertTrue(c.closed(5))

    def test_drain_reply(self):
        d = self.sorterd(tls_cert_file=self.cert, tls_key_file=self.key)
        clients = [self.tls_session(d) for _ in range(4)]
        os.kill(d.pid, signal.SIGTERM)
        for c in clients:
            self.assertReply(c.reply(timeout=10), 421, "4.3.2", "the drain's 421 was lost")
            self.assertTrue(c.closed(5))
