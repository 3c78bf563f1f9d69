"""test_proxy.py - the PROXY protocol on a listener (listen ... proxy=yes, proxy_networks).

A real HAProxy (haproxy.py, TCP mode, send-proxy-v2 or send-proxy) in front of sorterd:
clients bind 127.0.0.5, 127.0.0.6 ... before connecting, so HAProxy's header names them while
every connection sorterd sees comes from 127.0.0.1. Proved: the real client's address is in
the logs and in Received:, the per-client limits count it (not the proxy's), a header from
outside proxy_networks is refused, a malformed one is refused with 421 4.7.0, a header cut
short times out, and a listener without proxy=yes is not affected.
"""

import os
import socket
import time
import unittest

from harness import (LOCAL_DOMAIN, Client, SorterTestCase, Sorterd, build_dir, check_config,
                     free_port, unfold_header, wait_until)
from haproxy import PrivateHAProxy

V2SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(src, sport, dst="127.0.0.1", dport=25):
    return (V2SIG + b"\x21\x11\x00\x0c" + socket.inet_aton(src) + socket.inet_aton(dst)
            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))


class ProxyTest(SorterTestCase):
    def proxied(self, **extra):
        """sorterd with an mx listener behind the proxy and a plain one beside it."""
        settings = {"proxy_networks": "127.0.0.1/32", "smtpd_proxy_timeout": 2}
        settings.update(extra)
        d = Sorterd(os.path.join(self.tmp, "d"), start=False, **settings)
        self.plain_port = free_port()
        d.write_config(listen=["127.0.0.1:%d mx proxy=yes" % d.port,
                               "127.0.0.1:%d mx" % self.plain_port])
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()
        return d

    def haproxy(self, d, proxy="v2"):
        h = PrivateHAProxy(os.path.join(self.tmp, "haproxy"), free_port(),
                           [("127.0.0.1", d.port)], proxy=proxy).start()
        self.addCleanup(h.stop)
        return h

    def send_through(self, h, source, tag):
        with Client(h.port, source=source) as c:
            r = c.reply()
            self.assertReply(r, 220)
            r, qid = c.send_message("sender@remote.test", ["user@" + LOCAL_DOMAIN],
                                    "Subject: %s\r\n\r\nbody" % tag)
            self.assertQueued(r, qid)
            c.cmd("QUIT")
        return qid

    def test_haproxy_v2_real_client_in_logs_and_received(self):
        d = self.proxied()
        h = self.haproxy(d, "v2")
        qid = self.send_through(h, "127.0.0.5", "via v2")
        self.assertTrue(d.log_lines(r"PROXY v2 from \[127\.0\.0\.1\]: client \[127\.0\.0\.5\]"),
                        d.log_tail())
        self.assertTrue(d.log_lines(r"connect from \[127\.0\.0\.5\]"), d.log_tail())
        self.assertTrue(d.log_lines(r"%s: from=<sender@remote.test>.*client=\[127\.0\.0\.5\]" % qid),
                        d.log_tail())
        _, msg = d.show(qid)
        received = unfold_header(msg, "Received")
        self.assertIn("([127.0.0.5])", received)
        self.assertNotIn("127.0.0.1", received)

    def test_haproxy_v1(self):
        d = self.proxied()
        h = self.haproxy(d, "v1")
        qid = self.send_through(h, "127.0.0.6", "via v1")
        self.assertTrue(d.log_lines(r"PROXY v1 from \[127\.0\.0\.1\]: client \[127\.0\.0\.6\]"),
                        d.log_tail())
        _, msg = d.show(qid)
        self.assertIn("([127.0.0.6])", unfold_header(msg, "Received"))

    def test_per_client_limit_counts_the_real_client(self):
        d = self.proxied(smtpd_client_limit_exceptions="192.0.2.0/24",
                         smtpd_client_connection_limit=1)
        h = self.haproxy(d, "v2")
        first = Client(h.port, source="127.0.0.5")
        self.addCleanup(first.close)
        self.assertReply(first.reply(), 220)
        # the same client again: over its limit, though the proxy's address is the same
        with Client(h.port, source="127.0.0.5") as again:
            r = again.reply()
            self.assertReply(r, 421, "4.7.0")
            self.assertIn("too many connections from your address", str(r))
        # another client through the same proxy is not counted with it
        with Client(h.port, source="127.0.0.6") as other:
            self.assertReply(other.reply(), 220)
            self.assertReply(other.ehlo(), 250)
        self.assertTrue(d.log_lines(r"too many sessions from \[127\.0\.0\.5\]"), d.log_tail())
        self.assertFalse(d.log_lines(r"too many sessions from \[127\.0\.0\.1\]"))

    def test_header_from_outside_proxy_networks_refused(self):
        d = self.proxied()
        # a client that is not a proxy, speaking SMTP or sending a header itself
        with Client(d.port, source="127.0.0.7") as c:
            r = c.reply()
            self.assertReply(r, 421, "4.7.0")
            self.assertTrue(c.closed())
        with Client(d.port, source="127.0.0.7") as c:
            c.send(v2_header("192.0.2.9", 1234))
            self.assertReply(c.reply(), 421, "4.7.0")
        self.assertTrue(d.log_lines(r"connection from \[127\.0\.0\.7\] to a proxy=yes listener: "
                                    r"not in proxy_networks"), d.log_tail())
        self.assertFalse(d.log_lines(r"192\.0\.2\.9"))
        # the plain listener beside it is not affected
        with Client(self.plain_port, source="127.0.0.7") as c:
            self.assertReply(c.reply(), 220)
            self.assertReply(c.ehlo(), 250)

    def test_malformed_header_refused(self):
        d = self.proxied()
        for bad in (b"PROXY TCP4 192.0.2.1 127.0.0.1 99999 25\r\n",
                    b"PROXY TCP4 192.0.2.1\r\n",
                    b"EHLO client.remote.test\r\n",
                    V2SIG + b"\x21\x12\x00\x0c" + b"\x00" * 12,
                    b"PROXY " + b"x" * 200):
            with Client(d.port) as c:
                c.send(bad)
                r = c.reply()
                self.assertReply(r, 421, "4.7.0", repr(bad))
                self.assertIn("malformed PROXY protocol header", str(r))
                self.assertTrue(c.closed())
        self.assertEqual(len(d.log_lines(r"malformed PROXY protocol header from \[127\.0\.0\.1\]")),
                         5, d.log_tail())
        self.assertFalse(d.log_lines(r"connect from"))

    def test_header_in_pieces_and_timeout(self):
        d = self.proxied()
        # a header that arrives in pieces is read whole
        with Client(d.port) as c:
            for piece in (b"PROXY TCP4 192.0.2.", b"33 127.0.0.1 4", b"000 25\r", b"\n"):
                c.send(piece)
                time.sleep(0.2)
            self.assertReply(c.reply(), 220)
            self.assertReply(c.ehlo(), 250)
        self.assertTrue(d.log_lines(r"connect from \[192\.0\.2\.33\]"), d.log_tail())
        # one that stops half way: refused after smtpd_proxy_timeout
        with Client(d.port) as c:
            c.send(b"PROXY TCP4 192.0.2.")
            t0 = time.monotonic()
            r = c.reply(timeout=10)
            self.assertReply(r, 421)
            self.assertGreater(time.monotonic() - t0, 1.0)
            self.assertLess(time.monotonic() - t0, 5.0)
        self.assertTrue(d.log_lines(r"timeout waiting for the PROXY protocol header"))

    def test_local_header_uses_the_connection(self):
        d = self.proxied()
        with Client(d.port) as c:
            c.send(V2SIG + b"\x20\x00\x00\x00")
            self.assertReply(c.reply(), 220)
        self.assertTrue(d.log_lines(r"connect from \[127\.0\.0\.1\]"), d.log_tail())
        self.assertFalse(d.log_lines(r"PROXY v2 from"))

    def test_config_needs_proxy_networks(self):
        s = Sorterd(os.path.join(self.tmp, "t"), start=False)
        s.write_config(listen="127.0.0.1:%d mx proxy=yes" % s.port)
        rc, out = check_config(build_dir(), s.conf_path)
        self.assertEqual(rc, 1, out)
        self.assertIn("proxy=yes needs proxy_networks", out)
        s.write_config(listen="127.0.0.1:%d mx proxy=maybe" % s.port, proxy_networks="127.0.0.1")
        rc, out = check_config(build_dir(), s.conf_path)
        self.assertEqual(rc, 1, out)
        self.assertIn("proxy: 'maybe' is not yes or no", out)
        # beside milters= (test_milter.py)
        s.write_config(listen="127.0.0.1:%d mx proxy=yes milters=inet:localhost:1" % s.port)
        rc, out = check_config(build_dir(), s.conf_path)
        self.assertEqual(rc, 1, out)
        self.assertIn("milter 'inet:localhost:1': the host must be a numeric address", out)
        s.write_config(listen="127.0.0.1:%d mx proxy=yes milters=inet:127.0.0.1:1" % s.port)
        rc, out = check_config(build_dir(), s.conf_path)
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    unittest.main()
