"""test_peers.py - the peers Sorter's outbound tests talk to, checked on their own: the private
dnsmasq answers every case a resolver must handle (MX sets, A/AAAA sets, null MX, NXDOMAIN,
NODATA, SERVFAIL, no answer), smtp-sink on 127.0.0.2 keeps what it receives in a form
messages() reads back, and the scripted SMTP server plays greylisting, keyword sets, limits,
STARTTLS and pipelining as a remote MX would."""

import os
import shutil
import smtplib
import socket
import ssl
import tempfile
import time
import unittest

from dnsmasq import NOERROR, NXDOMAIN, SERVFAIL, REFUSED, TIMEOUT, PrivateDNS, \
    dnsmasq_missing, free_dns_port
from harness import SorterTestCase, pid_alive, wait_until
from scripted_smtp import ScriptedSMTPServer
from smtpsink import SmtpSink, free_port_on, smtp_sink_missing, tcp_listening

MESSAGE = (b"From: a@sender.test\r\nTo: b@remote.test\r\nSubject: peers\r\n\r\n"
           b"line one\r\n.a line starting with a dot\r\n\r\nlast line\r\n")


def free_port_on_all(hosts):
    """A port free on every one of hosts (several remote MXes sharing one port number)."""
    for _ in range(50):
        port = free_port_on(hosts[0])
        ok = True
        for h in hosts[1:]:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((h, port))
            except OSError:
                ok = False
                break
        if ok:
            return port
    raise RuntimeError("no port free on all of %s" % (hosts,))


@unittest.skipIf(dnsmasq_missing(), dnsmasq_missing() or "")
class PrivateDNSTest(unittest.TestCase):
    """One dnsmasq for the class: every query here only reads."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="sorter-it-dns-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.dns = PrivateDNS(
            os.path.join(cls.tmp, "dns"), free_dns_port(),
            mx={"remote.test": [(10, "mx1.remote.test"), (20, "mx2.remote.test")],
                "equal.test": [(10, "a.equal.test"), (10, "b.equal.test")]},
            hosts={"mx1.remote.test": ["127.0.0.2", "127.0.0.3"],
                   "mx2.remote.test": ["127.0.0.4"],
                   "v6.remote.test": ["::1"],
                   "dual.remote.test": ["127.0.0.5", "::1"],
                   "onlya.test": ["127.0.0.6"]},
            null_mx=["nullmx.test"], servfail=["broken.test"], timeout=["silent.test"])
        cls.addClassCleanup(cls.dns.stop)
        cls.dns.start()

    def q(self, name, qtype, timeout=2.0):
        return self.dns.query(name, qtype, timeout)

    def test_mx_two_preferences(self):
        rcode, ans = self.q("remote.test", "MX")
        self.assertEqual(rcode, NOERROR)
        self.assertEqual(sorted(ans), [(10, "mx1.remote.test"), (20, "mx2.remote.test")])

    def test_mx_equal_preference(self):
        rcode, ans = self.q("equal.test", "MX")
        self.assertEqual(rcode, NOERROR)
        self.assertEqual(sorted(ans), [(10, "a.equal.test"), (10, "b.equal.test")])

    def test_host_with_two_addresses(self):
        rcode, ans = self.q("mx1.remote.test", "A")
        self.assertEqual(rcode, NOERROR)
        self.assertEqual(sorted(ans), ["127.0.0.2", "127.0.0.3"])

    def test_aaaa(self):
        self.assertEqual(self.q("v6.remote.test", "AAAA"), (NOERROR, ["::1"]))
        self.assertEqual(self.q("v6.remote.test", "A"), (NOERROR, []))
        self.assertEqual(self.q("dual.remote.test", "A"), (NOERROR, ["127.0.0.5"]))
        self.assertEqual(self.q("dual.remote.test", "AAAA"), (NOERROR, ["::1"]))

    def test_null_mx(self):
        self.assertEqual(self.q("nullmx.test", "MX"), (NOERROR, [(0, ".")]))

    def test_unknown_name_is_nxdomain(self):
        self.assertEqual(self.q("nosuch.test", "MX"), (NXDOMAIN, []))
        self.assertEqual(self.q("nosuch.test", "A"), (NXDOMAIN, []))

    def test_name_with_a_but_no_mx_is_nodata(self):
        self.assertEqual(self.q("onlya.test", "MX"), (NOERROR, []))
        self.assertEqual(self.q("onlya.test", "A"), (NOERROR, ["127.0.0.6"]))

    def test_servfail_domain(self):
        for name, qtype in (("broken.test", "MX"), ("mx.broken.test", "A"),
                            ("mx.broken.test", "AAAA")):
            self.assertEqual(self.q(name, qtype), (SERVFAIL, []), name)

    def test_timeout_domain(self):
        t0 = time.monotonic()
        self.assertEqual(self.q("silent.test", "MX", timeout=1.0), (TIMEOUT, []))
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)

    def test_names_outside_test_are_not_forwarded(self):
        # no upstream at all: nothing here can leave the machine
        self.assertEqual(self.q("example.com", "A"), (REFUSED, []))

    def test_queries_are_logged(self):
        self.q("logged.remote.test", "MX")
        self.assertTrue(wait_until(lambda: "logged.remote.test" in self.dns.log(), 5),
                        self.dns.log())


@unittest.skipIf(dnsmasq_missing(), dnsmasq_missing() or "")
class PrivateDNSProcessTest(SorterTestCase):
    def test_stop_ends_its_own_process(self):
        dns = PrivateDNS(os.path.join(self.tmp, "dns"), free_dns_port(),
                         hosts={"h.test": ["127.0.0.2"]}, servfail=["b.test"])
        self.addCleanup(dns.stop)
        dns.start()
        pid = dns.proc.pid
        self.assertEqual(dns.query("h.test", "A"), (NOERROR, ["127.0.0.2"]))
        self.assertEqual(dns.dns_servers(), "127.0.0.1:%d" % dns.port)
        dns.stop()
        self.assertFalse(pid_alive(pid))
        self.assertEqual(dns.query("h.test", "A", timeout=0.5), (TIMEOUT, []))


@unittest.skipIf(smtp_sink_missing(), smtp_sink_missing() or "")
class SmtpSinkTest(SorterTestCase):
    def sink(self, host="127.0.0.2", port=None, name="sink", **kw):
        s = SmtpSink(os.path.join(self.tmp, name), host, port or free_port_on(host), **kw)
        self.addCleanup(s.stop)
        return s.start()

    def test_receives_and_parses(self):
        sink = self.sink()
        with smtplib.SMTP(sink.host, sink.port, local_hostname="client.test",
                          timeout=30) as c:
            c.ehlo()
            self.assertIn("8bitmime", c.esmtp_features)
            self.assertIn("pipelining", c.esmtp_features)
            c.sendmail("a@sender.test", ["b@remote.test", "c@remote.test"], MESSAGE,
                       mail_options=["BODY=8BITMIME", "SIZE=%d" % len(MESSAGE)],
                       rcpt_options=["NOTIFY=FAILURE"])
            c.sendmail("", ["d@remote.test"], MESSAGE)
        msgs = wait_until(lambda: len(sink.messages()) == 2 and sink.messages(), 10)
        self.assertTrue(msgs, sink.messages())
        m = msgs[0] if msgs[0]["sender"] else msgs[1]
        self.assertEqual(m["sender"], "a@sender.test")
        self.assertEqual(m["rcpts"], ["b@remote.test", "c@remote.test"])
        self.assertEqual(m["mail_params"], {"BODY": "8BITMIME", "SIZE": str(len(MESSAGE))})
        self.assertEqual(m["rcpt_params"], [{"NOTIFY": "FAILURE"}] * 2)
        self.assertEqual(m["helo"], "client.test")
        self.assertEqual(m["proto"], "ESMTP")
        self.assertTrue(m["client_addr"].startswith("127."), m["client_addr"])
        self.assertEqual(m["data"], MESSAGE)
        self.assertIn(b"X-Mail-Args: <a@sender.test>", m["raw"])
        bounce = msgs[1] if m is msgs[0] else msgs[0]
        self.assertEqual((bounce["sender"], bounce["rcpts"]), ("", ["d@remote.test"]))

    def test_two_mx_addresses_share_one_port(self):
        port = free_port_on_all(["127.0.0.2", "127.0.0.3"])
        a = self.sink("127.0.0.2", port, "a")
        b = self.sink("127.0.0.3", port, "b")
        for sink, rcpt in ((a, "x@a.test"), (b, "y@b.test")):
            with smtplib.SMTP(sink.host, port, timeout=30) as c:
                c.sendmail("s@sender.test", [rcpt], MESSAGE)
        self.assertTrue(wait_until(lambda: a.count() == 1 and b.count() == 1, 10))
        self.assertEqual([m["rcpts"] for m in a.messages()], [["x@a.test"]])
        self.assertEqual([m["rcpts"] for m in b.messages()], [["y@b.test"]])

    def test_soft_reject_rcpt(self):
        sink = self.sink(soft_reject=["RCPT"], soft_reply="451 4.7.1 Try again later")
        with smtplib.SMTP(sink.host, sink.port, timeout=30) as c:
            with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:
                c.sendmail("s@sender.test", ["r@remote.test"], MESSAGE)
        self.assertEqual(cm.exception.recipients["r@remote.test"][0], 451)
        self.assertEqual(sink.messages(), [])

    def test_hard_reject_data_and_end_of_data(self):
        sink = self.sink(hard_reject=["DATA"])
        with smtplib.SMTP(sink.host, sink.port, timeout=30) as c:
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                c.sendmail("s@sender.test", ["r@remote.test"], MESSAGE)
        self.assertEqual(cm.exception.smtp_code, 500)
        # the file smtp-sink opened at MAIL is empty until the session ends: not a message
        self.assertEqual(sink.messages(), [])
        dot = self.sink(name="dot", hard_reject=["."], hard_reply="554 5.7.1 Rejected")
        with smtplib.SMTP(dot.host, dot.port, timeout=30) as c:
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                c.sendmail("s@sender.test", ["r@remote.test"], MESSAGE)
        self.assertEqual(cm.exception.smtp_code, 554)
        # smtp-sink keeps the file of a message it refused at the final dot
        self.assertTrue(wait_until(lambda: dot.count() == 1, 10), dot.dump_files())
        self.assertEqual(dot.messages()[0]["data"], MESSAGE)

    def test_421_at_mail(self):
        sink = self.sink(reply_421=["MAIL"])
        with smtplib.SMTP(sink.host, sink.port, timeout=30) as c:
            with self.assertRaises((smtplib.SMTPSenderRefused,
                                    smtplib.SMTPServerDisconnected)):
                c.sendmail("s@sender.test", ["r@remote.test"], MESSAGE)

    def test_stop_ends_its_own_process(self):
        sink = self.sink()
        pid = sink.proc.pid
        sink.stop()
        self.assertFalse(pid_alive(pid))
        self.assertFalse(tcp_listening(sink.host, sink.port))


def raw_session(host, port):
    s = socket.create_connection((host, port), timeout=10)
    f = s.makefile("rb")
    return s, f


def read_reply(f):
    lines = []
    while True:
        line = f.readline().decode()
        lines.append(line.rstrip("\r\n"))
        if len(line) < 4 or line[3] != "-":
            return lines


class ScriptedSMTPTest(SorterTestCase):
    def server(self, host="127.0.0.2", **kw):
        s = ScriptedSMTPServer(host, free_port_on(host), **kw)
        self.addCleanup(s.stop)
        return s.start()

    def test_greylisting_451_then_250(self):
        srv = self.server(replies={"RCPT": ["451 4.7.1 Greylisted, try again later"]})
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as c:
            with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:
                c.sendmail("s@sender.test", ["r@remote.test"], MESSAGE)
            self.assertEqual(cm.exception.recipients["r@remote.test"][0], 451)
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as c:
            c.sendmail("s@sender.test", ["r@remote.test"], MESSAGE)
        msgs = srv.messages()
        self.assertEqual(len(msgs), 1)
        self.assertEqual((msgs[0]["sender"], msgs[0]["rcpts"], msgs[0]["data"]),
                         ("s@sender.test", ["r@remote.test"], MESSAGE))
        self.assertEqual(len(srv.transactions), 2)
        self.assertEqual(srv.transactions[0]["refused_rcpts"][0][0], "r@remote.test")
        self.assertTrue(wait_until(srv.all_closed, 5))

    def test_default_keywords(self):
        srv = self.server()
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as c:
            c.ehlo()
            for k in ("pipelining", "8bitmime", "size", "dsn", "smtputf8",
                      "enhancedstatuscodes"):
                self.assertIn(k, c.esmtp_features)
            self.assertNotIn("starttls", c.esmtp_features)
            c.sendmail("s@sender.test", ["r@remote.test"], MESSAGE,
                       mail_options=["BODY=8BITMIME", "RET=HDRS", "ENVID=e1", "SMTPUTF8"],
                       rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;r@remote.test"])
        m = srv.messages()[0]
        # smtplib adds SIZE= itself when the server offers SIZE
        self.assertEqual(m["mail_params"], {"SIZE": str(len(MESSAGE)), "BODY": "8BITMIME",
                                            "RET": "HDRS", "ENVID": "e1", "SMTPUTF8": None})
        self.assertEqual(m["rcpt_params"], [{"NOTIFY": "SUCCESS,FAILURE",
                                             "ORCPT": "rfc822;r@remote.test"}])

    def test_server_without_8bitmime_dsn_smtputf8_with_size_1000(self):
        srv = self.server(keywords=["SIZE 1000", "ENHANCEDSTATUSCODES"])
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as c:
            c.ehlo()
            self.assertEqual(c.esmtp_features.get("size"), "1000")
            for k in ("pipelining", "8bitmime", "dsn", "smtputf8"):
                self.assertNotIn(k, c.esmtp_features)
            for opt in ("BODY=8BITMIME", "SMTPUTF8", "RET=FULL", "SIZE=1001"):
                code, _ = c.docmd("MAIL FROM:<s@sender.test> " + opt)
                self.assertEqual(code, 552 if opt.startswith("SIZE") else 555, opt)
            self.assertEqual(c.mail("s@sender.test", ["SIZE=999"])[0], 250)
            self.assertEqual(c.docmd("RCPT TO:<r@remote.test> NOTIFY=NEVER")[0], 555)
            self.assertEqual(c.rcpt("r@remote.test")[0], 250)
            code, _ = c.data(b"Subject: big\r\n\r\n" + b"x" * 1200 + b"\r\n")
            self.assertEqual(code, 552)
            c.sendmail("s@sender.test", ["r@remote.test"], MESSAGE)
        self.assertEqual(len(srv.messages()), 1)
        self.assertEqual([t["accepted"] for t in srv.transactions], [False, True])

    def test_starttls(self):
        if not shutil.which("openssl"):
            self.skipTest("openssl is not installed")
        from test_tls import make_cert
        cert, key = make_cert(self.tmp)
        srv = self.server(keywords=["PIPELINING", "STARTTLS", "8BITMIME"], cert=cert, key=key)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as c:
            c.ehlo()
            self.assertIn("starttls", c.esmtp_features)
            c.starttls(context=ctx)
            c.ehlo()
            self.assertNotIn("starttls", c.esmtp_features)
            c.sendmail("s@sender.test", ["r@remote.test"], MESSAGE)
        m = srv.messages()[0]
        self.assertTrue(m["tls"])
        self.assertTrue(srv.sessions[0].tls_version.startswith("TLS"))
        # offered without a certificate: 454
        bare = self.server(host="127.0.0.3", keywords=["STARTTLS"])
        with smtplib.SMTP(bare.host, bare.port, timeout=30) as c:
            c.ehlo()
            self.assertEqual(c.docmd("STARTTLS")[0], 454)

    def test_pipelining_is_recorded(self):
        srv = self.server()
        s, f = raw_session(srv.host, srv.port)
        try:
            self.assertTrue(read_reply(f)[0].startswith("220"))
            s.sendall(b"EHLO client.test\r\n")
            read_reply(f)
            s.sendall(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<r@remote.test>\r\nDATA\r\n")
            replies = [read_reply(f)[0][:3] for _ in range(3)]
            self.assertEqual(replies, ["250", "250", "354"])
            s.sendall(b"..dot\r\n.\r\nQUIT\r\n")
            self.assertEqual(read_reply(f)[0][:3], "250")
            self.assertEqual(read_reply(f)[0][:3], "221")
        finally:
            f.close()
            s.close()
        self.assertEqual(srv.messages()[0]["data"], b".dot\r\n")
        ahead = srv.sessions[0].sent_ahead
        self.assertIn("MAIL FROM:<s@sender.test>", ahead)
        self.assertIn("RCPT TO:<r@remote.test>", ahead)
        self.assertEqual(srv.sessions[0].commands[0], "EHLO client.test")

    def test_scripted_replies_per_occurrence_and_callable(self):
        srv = self.server(replies={
            "MAIL": ["421 4.3.2 Shutting down"],
            "RCPT": lambda session, arg: "550 5.1.1 No such user" if "bad" in arg else None,
            "DOT": ["452 4.3.1 Insufficient storage", None]})
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as c:
            with self.assertRaises((smtplib.SMTPSenderRefused,
                                    smtplib.SMTPServerDisconnected)):
                c.sendmail("s@sender.test", ["r@remote.test"], MESSAGE)
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as c:
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                c.sendmail("s@sender.test", ["r@remote.test", "bad@remote.test"], MESSAGE)
            self.assertEqual(cm.exception.smtp_code, 452)
            c.rset()
            refused = c.sendmail("s@sender.test", ["r@remote.test", "bad@remote.test"],
                                 MESSAGE)
        self.assertEqual(refused["bad@remote.test"][0], 550)
        self.assertEqual([m["rcpts"] for m in srv.messages()], [["r@remote.test"]])
        self.assertEqual(srv.counts["MAIL"], 3)

    def test_stop_ends_every_session(self):
        srv = self.server()
        s, f = raw_session(srv.host, srv.port)
        read_reply(f)
        srv.stop()
        self.assertEqual(f.read(), b"")
        f.close()
        s.close()
        self.assertTrue(srv.all_closed())
        self.assertFalse(tcp_listening(srv.host, srv.port))
