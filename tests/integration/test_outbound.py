"""test_outbound.py - mail for other domains leaves through sorterd's SMTP client: MX lookup
against a private dnsmasq, remote MXes played by smtp-sink and by a scripted SMTP server on
127.0.0.2, 127.0.0.3, ... (one port number for all, sorterd's smtp_port), relay_host and
transport_map, the DNS verdicts (null MX, NXDOMAIN, SERVFAIL), the remote replies (4xx
deferred and retried, 5xx bounced with a DSN naming the remote MTA), SIZE, 8BITMIME,
recipients per transaction, STARTTLS levels and the plaintext fallback at level may."""

import os
import re
import subprocess
import time
import unittest

from dnsmasq import PrivateDNS, dnsmasq_missing, free_dns_port
from harness import LOCAL_DOMAIN, Sorterd, SorterTestCase, message, wait_until, write_map
from scripted_smtp import ScriptedSMTPServer
from smtpsink import SmtpSink, free_port_on, smtp_sink_missing

SENDER = "sender@origin.test"
MISSING = dnsmasq_missing() or smtp_sink_missing()


def make_ca(directory, name, hosts):
    """A CA and a server certificate for hosts signed by it: (ca_cert, cert, key)."""
    os.makedirs(directory, exist_ok=True)
    ca_key, ca = os.path.join(directory, name + "-ca.key"), os.path.join(directory, name + "-ca.pem")
    key, csr = os.path.join(directory, name + ".key"), os.path.join(directory, name + ".csr")
    cert, ext = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".ext")

    def run(*args):
        subprocess.run(args, check=True, capture_output=True, timeout=60)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=%s test CA" % name, "-keyout", ca_key, "-out", ca)
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % hosts[0],
        "-keyout", key, "-out", csr)
    with open(ext, "w") as f:
        f.write("subjectAltName=%s\n" % ",".join("DNS:" + h for h in hosts))
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
        "-CAcreateserial", "-days", "2", "-out", cert, "-extfile", ext)
    return ca, cert, key


@unittest.skipIf(MISSING, MISSING or "")
class OutboundTestCase(SorterTestCase):
    MX = {"remote.test": [(10, "mx1.remote.test"), (20, "mx2.remote.test")],
          "origin.test": [(10, "mx.origin.test")],
          "big.test": [(10, "mx.big.test")],
          "seven.test": [(10, "mx.seven.test")],
          "grey.test": [(10, "mx.grey.test")],
          "tls.test": [(10, "mx.tls.test")],
          "loop.test": [(10, "mx.sorter.test")],
          "selfaddr.test": [(10, "mx.selfaddr.test")],
          "selfsecond.test": [(10, "mx1.remote.test"), (20, "mx.selfaddr.test"),
                              (30, "mx2.remote.test")],
          "selfpeer.test": [(10, "mx1.remote.test"), (10, "mx.selfaddr.test"),
                            (10, "mx2.remote.test"), (20, "mx.origin.test")],
          "twoaddr.test": [(10, "mx.twoaddr.test")],
          "noaddr.test": [(10, "mx1.gone.test"), (20, "mx2.gone.test")],
          "halfaddr.test": [(10, "mx.gone.test"), (20, "mx.broken.test")],
          "strict.test": [(10, "mx.strict.test")]}
    HOSTS = {"mx1.remote.test": "127.0.0.2", "mx2.remote.test": "127.0.0.3",
             "mx.origin.test": "127.0.0.4", "mx.big.test": "127.0.0.5",
             "mx.seven.test": "127.0.0.6", "mx.grey.test": "127.0.0.7",
             "mx.tls.test": "127.0.0.8", "mx.sorter.test": "127.0.0.1",
             "nomx.test": "127.0.0.10", "mx.strict.test": "127.0.0.12",
             "mx.selfaddr.test": "127.0.0.1", "mx.twoaddr.test": ["127.0.0.2", "127.0.0.1"]}

    def setUp(self):
        self.mxport = free_port_on("127.0.0.2")
        self.dns = PrivateDNS(os.path.join(self.tmp, "dns"), free_dns_port(), mx=self.MX,
                              hosts=self.HOSTS, null_mx=["nullmx.test"],
                              servfail=["broken.test"])
        self.dns.start()
        self.addCleanup(self.dns.stop)
        self.peers = 0

    def sink(self, host, **kw):
        self.peers += 1
        s = SmtpSink(os.path.join(self.tmp, "sink%d" % self.peers), host, self.mxport, **kw)
        s.start()
        self.addCleanup(s.stop)
        return s

    def scripted(self, host, **kw):
        s = ScriptedSMTPServer(host, self.mxport, **kw)
        s.start()
        self.addCleanup(s.stop)
        return s

    def sorter(self, aliases=None, name="d", **kw):
        return self.sorterd(name=name, **self.sorter_settings(aliases, **kw))

    def sorter_settings(self, aliases=None, **kw):
        aliases = dict(aliases or {})
        aliases.setdefault("fwd@" + LOCAL_DOMAIN, "user@remote.test")
        os.makedirs(os.path.join(self.tmp, "maps"), exist_ok=True)
        settings = {
            "dns_servers": "127.0.0.1:%d" % self.dns.port,
            "smtp_port": self.mxport,
            "alias_map": write_map(self.build(), os.path.join(self.tmp, "maps", "aliases"),
                                   aliases),
            "minimal_backoff_time": "1",
            "maximal_backoff_time": "2",
            "queue_run_delay": "1",
            "lmtp_connect_timeout": "5",
        }
        settings.update(kw)
        return settings

    def build(self):
        return os.environ["SORTER_BUILD"]

    def send(self, d, rcpts, content=None, sender=SENDER):
        c = self.connect(d)
        r, qid = c.send_message(sender, rcpts, content or message("outbound"))
        self.assertIsNotNone(qid, str(r))
        c.cmd("QUIT")
        return qid

    def wait_log(self, d, pattern, timeout=30):
        found = wait_until(lambda: d.log_lines(pattern), timeout)
        self.assertTrue(found, "no log line matches %r" % pattern)
        return found

    def wait_gone(self, d, qid, timeout=30):
        self.assertTrue(wait_until(lambda: qid not in d.queue_ids(), timeout),
                        "%s still queued: %s" % (qid, d.queue()))


class MXTest(OutboundTestCase):
    def test_alias_forward_reaches_preferred_mx(self):
        mx1, mx2 = self.sink("127.0.0.2"), self.sink("127.0.0.3")
        d = self.sorter()
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@remote\.test>, orig_to=<fwd@example\.test>.*"
                         r"relay=mx1\.remote\.test\[127\.0\.0\.2\]:%d.*status=sent"
                      % (qid, self.mxport))
        self.wait_gone(d, qid)
        msgs = mx1.messages()
        self.assertEqual(len(msgs), 1)
        self.assertEqual(msgs[0]["rcpts"], ["user@remote.test"])
        self.assertEqual(msgs[0]["sender"], SENDER)
        self.assertIn(b"Subject: outbound", msgs[0]["data"])
        self.assertEqual(mx2.count(), 0)

    def test_long_lines_are_broken(self):
        """A line over smtp_line_length_limit (998) goes out in pieces joined by CR LF SP
        (RFC 5321 4.5.3.1.6: 1000 bytes with the CR LF), as Postfix sends it; a line of 998
        goes as it is, and with the limit at 0 every line does."""
        long_line, fits = "x" * 1500 + "y" * 1500, "." + "z" * 997
        # send_message does not stuff dots: the line is stuffed here
        body = "short\r\n%s\r\n.%s\r\nend" % (long_line, fits)
        mx1 = self.scripted("127.0.0.2")
        d = self.sorter()
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN], content=message("long", body))
        self.wait_log(d, r"%s: to=<user@remote\.test>.*status=sent" % qid)
        [m] = mx1.messages()
        lines = m["data"].split(b"\r\n")
        self.assertLessEqual(max(len(l) for l in lines), 998)
        at = lines.index(b"short")
        self.assertEqual(lines[at + 1:], [b"x" * 998, b" " + b"x" * 502 + b"y" * 495,
                                          b" " + b"y" * 997, b" " + b"y" * 8,
                                          # the stuffed dot is not counted: 998 unstuffed
                                          fits.encode(), b"end", b""])

        mx1.stop()
        mx2 = self.scripted("127.0.0.2")
        d2 = self.sorter(name="d2", smtp_line_length_limit=0)
        qid = self.send(d2, ["fwd@" + LOCAL_DOMAIN], content=message("long", body))
        self.wait_log(d2, r"%s: to=<user@remote\.test>.*status=sent" % qid)
        [m] = mx2.messages()
        self.assertIn(b"\r\n" + long_line.encode() + b"\r\n", m["data"])

    def test_preferred_mx_down_next_one(self):
        mx2 = self.sink("127.0.0.3")
        d = self.sorter()
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@remote\.test>.*relay=mx2\.remote\.test\[127\.0\.0\.3\]"
                         r".*status=sent" % qid)
        self.assertEqual(mx2.count(), 1)

    def test_all_down_deferred_then_flush(self):
        d = self.sorter(minimal_backoff_time="1h", maximal_backoff_time="2h",
                        queue_run_delay="1h")
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@remote\.test>.*status=deferred \(.*"
                         r"connect to mx2\.remote\.test\[127\.0\.0\.3\]:%d: Connection refused"
                      % (qid, self.mxport))
        q = {m["id"]: m for m in d.queue()}
        self.assertIn(qid, q)
        self.assertIn("Connection refused", str(q[qid]))
        mx1 = self.sink("127.0.0.2")
        d.ctl("flush")
        self.wait_log(d, r"%s: to=<user@remote\.test>.*status=sent" % qid)
        self.wait_gone(d, qid)
        self.assertEqual(mx1.count(), 1)

    def test_no_mx_uses_the_domain_address(self):
        s = self.sink("127.0.0.10")
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@nomx.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@nomx\.test>.*relay=nomx\.test\[127\.0\.0\.10\].*"
                         r"status=sent" % qid)
        self.assertEqual(s.count(), 1)

    def test_null_mx_bounces(self):
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@nullmx.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN], sender="")
        self.wait_log(d, r"%s: to=<user@nullmx\.test>.*dsn=5\.1\.10, status=bounced.*nullMX"
                      % qid)

    def test_nxdomain_bounces(self):
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@nowhere.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN], sender="")
        self.wait_log(d, r"%s: to=<user@nowhere\.test>.*dsn=5\.1\.2, status=bounced.*"
                         r"Host or domain name not found" % qid)

    def test_servfail_defers(self):
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@broken.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN], sender="")
        self.wait_log(d, r"%s: to=<user@broken\.test>.*dsn=4\.4\.3, status=deferred" % qid)
        self.assertIn(qid, d.queue_ids())

    def test_mx_hosts_without_address_bounce(self):
        """Every MX host of the domain has no address (NXDOMAIN): no retry finds one, so
        the mail bounces at once (Postfix's "Host or domain name not found"), 5.4.4."""
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@noaddr.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN], sender="")
        self.wait_log(d, r"%s: to=<user@noaddr\.test>.*dsn=5\.4\.4, status=bounced.*"
                         r"mx2\.gone\.test.*host not found" % qid)
        self.wait_gone(d, qid)

    def test_mx_host_without_address_and_one_failing_defers(self):
        """One MX host has no address, the other's lookup fails (SERVFAIL): that one may
        answer later, so the mail waits."""
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@halfaddr.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN], sender="")
        self.wait_log(d, r"%s: to=<user@halfaddr\.test>.*dsn=4\.4\.1, status=deferred" % qid)
        self.assertIn(qid, d.queue_ids())
        self.assertEqual(d.log_lines(r"%s: to=<user@halfaddr\.test>.*status=bounced" % qid), [])

    def test_mx_tempfail_tries_the_next_endpoint(self):
        """A transport whose first endpoint's MX lookup fails (SERVFAIL) goes on to the
        endpoints after it."""
        relay = self.sink("127.0.0.9")
        tmap = write_map(self.build(), os.path.join(self.tmp, "transport"),
                         {"broken.test": "smtp:broken.test, smtp:[127.0.0.9]:%d" % self.mxport})
        d = self.sorter(transport_map=tmap,
                        aliases={"fwd@" + LOCAL_DOMAIN: "user@broken.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@broken\.test>.*relay=127\.0\.0\.9\[.*status=sent" % qid)
        self.assertEqual(relay.count(), 1)

    def test_mx_is_myself_bounces(self):
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@loop.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN], sender="")
        self.wait_log(d, r"%s: to=<user@loop\.test>.*dsn=5\.4\.6, status=bounced.*"
                         r"loops back to myself" % qid)


class RemoteReplyTest(OutboundTestCase):
    def test_greylisting_451_then_250(self):
        grey = self.scripted("127.0.0.7", replies={"RCPT": ["451 4.7.1 Greylisted, try later",
                                                             None]})
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@grey.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@grey\.test>.*dsn=4\.7\.1, status=deferred.*Greylisted"
                      % qid)
        self.wait_log(d, r"%s: to=<user@grey\.test>.*status=sent" % qid, timeout=30)
        self.assertEqual(len(grey.messages()), 1)

    def test_2xx_to_data_is_a_protocol_error(self):
        """A 250 where DATA wants 354 sends no message: the recipients are not taken
        for delivered, but tried again (RFC 5321 4.3.2)."""
        strict = self.scripted("127.0.0.12", replies={"DATA": ["250 2.0.0 Ok", None]})
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@strict.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@strict\.test>.*status=deferred.*250 2\.0\.0 Ok.*"
                         r"in reply to DATA command, a protocol error" % qid)
        self.wait_log(d, r"%s: to=<user@strict\.test>.*status=sent" % qid)
        self.wait_gone(d, qid)
        self.assertEqual(len(strict.messages()), 1)

    def test_552_to_rcpt_is_temporary(self):
        """552 to RCPT is "too many recipients" from an old server (RFC 5321
        4.5.3.1.10): deferred and tried again, not bounced."""
        strict = self.scripted("127.0.0.12", replies={
            "RCPT": ["552 5.5.3 Too many recipients", None]})
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@strict.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@strict\.test>.*dsn=4\.5\.3, status=deferred.*"
                         r"452 4\.5\.3 Too many recipients" % qid)
        self.wait_log(d, r"%s: to=<user@strict\.test>.*status=sent" % qid)
        self.assertEqual(len(strict.messages()), 1)

    def test_550_bounces_to_remote_sender_with_remote_mta(self):
        origin = self.sink("127.0.0.4")
        mx1 = self.scripted("127.0.0.2", replies={
            "RCPT": lambda s, arg: "550 5.1.1 <bad@remote.test>: no such user"
            if "bad@" in arg else None})
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "bad@remote.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<bad@remote\.test>.*dsn=5\.1\.1, status=bounced" % qid)
        # the DSN goes to the sender's own MX and leaves the queue
        self.assertTrue(wait_until(lambda: origin.count() == 1, 30), d.log_tail())
        dsn = origin.messages()[0]
        self.assertEqual(dsn["sender"], "")
        self.assertEqual(dsn["rcpts"], [SENDER])
        body = dsn["data"].decode("utf-8", "replace")
        self.assertIn("multipart/report", body)
        self.assertRegex(body, r"Remote-MTA: dns; ?mx1\.remote\.test")
        self.assertRegex(body, r"Diagnostic-Code: smtp; ?550 5\.1\.1")
        self.assertTrue(wait_until(lambda: d.queue_ids() == set(), 30), d.queue())
        self.assertEqual(mx1.messages(), [])

    def sorter_on_own_port(self, aliases):
        """A sorterd that asks MX hosts on its own port: one at its address is itself."""
        d = Sorterd(os.path.join(self.tmp, "d"), start=False, **self.sorter_settings(aliases))
        d.write_config(smtp_port=d.port)
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()
        return d

    def test_mx_at_our_own_address_is_a_loop(self):
        """An MX host of another name whose address and port are one of our listeners is
        ourselves: the mail bounces as a loop (5.4.6) without a connection to ourselves; as
        a second MX it ends the list there (the third is not tried) and the mail waits."""
        d = self.sorter_on_own_port({"fwd@" + LOCAL_DOMAIN: "user@selfaddr.test",
                                     "fwd2@" + LOCAL_DOMAIN: "user@selfsecond.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN], sender="")
        self.wait_log(d, r"%s: to=<user@selfaddr\.test>.*dsn=5\.4\.6, status=bounced "
                         r"\(554 5\.4\.6 mail for selfaddr\.test loops back to myself\)" % qid)
        qid2 = self.send(d, ["fwd2@" + LOCAL_DOMAIN], sender="")
        # the last error is mx1's: mx2, after ourselves, was not tried
        self.wait_log(d, r"%s: to=<user@selfsecond\.test>.*status=deferred "
                         r"\(.*connect to mx1\.remote\.test\[127\.0\.0\.2\]" % qid2)
        self.assertEqual(d.log_lines(r"mx2\.remote\.test"), [])
        # only the test's own two sessions ever reached us
        self.assertEqual(len(d.log_lines(r"\bconnect from")), 2, d.log_tail())

    def test_mx_hosts_of_our_preference_are_not_tried(self):
        """RFC 5321 5.1: every MX host of our own preference is dropped, not only those after
        us in the random order of equal preferences; and a host one of whose addresses is
        ours is ourselves, whichever address comes first. Both domains' mail bounces as a
        loop, and no other host is ever connected to."""
        d = self.sorter_on_own_port({"grp@" + LOCAL_DOMAIN: "user@selfpeer.test",
                                     "two@" + LOCAL_DOMAIN: "user@twoaddr.test"})
        # one of three equal hosts: ourselves first in 1 of 3 orders; the two addresses
        # of mx.twoaddr.test are tried in turn, ours first every other time
        qids = [(self.send(d, ["grp@" + LOCAL_DOMAIN], sender=""), "selfpeer")
                for _ in range(6)]
        qids += [(self.send(d, ["two@" + LOCAL_DOMAIN], sender=""), "twoaddr")
                 for _ in range(2)]
        for qid, domain in qids:
            self.wait_log(d, r"%s: to=<user@%s\.test>.*dsn=5\.4\.6, status=bounced \(554 5\.4\.6 "
                             r"mail for %s\.test loops back to myself\)" % (qid, domain, domain))
        self.assertEqual(d.log_lines(r"mx1\.remote\.test|mx2\.remote\.test|127\.0\.0\.2|"
                                     r"mx\.origin\.test|status=deferred"), [])
        self.assertEqual(len(d.log_lines(r"\bconnect from")), 8, d.log_tail())
        # sorterctl route marks the address that is ours, by the same check
        r = d.ctl("route", "user@selfpeer.test", check=False)
        self.assertRegex(r.stdout, r"(?m)^    MX 10 mx\.selfaddr\.test: 127\.0\.0\.1 \(this host\)$")
        self.assertRegex(r.stdout, r"(?m)^    MX 10 mx1\.remote\.test: 127\.0\.0\.2$")
        self.assertRegex(r.stdout, r"(?m)^    MX 20 mx\.origin\.test: 127\.0\.0\.4$")
        self.assertIn("is ourselves: it and every MX host of its preference or a worse one "
                      "are not tried", r.stdout)
        r = d.ctl("route", "user@twoaddr.test", check=False)
        line = re.search(r"(?m)^    MX 10 mx\.twoaddr\.test: (.*)$", r.stdout)
        self.assertTrue(line, r.stdout)
        self.assertEqual(dict(re.findall(r"(127\.0\.0\.\d+)( \(this host\))?", line.group(1))),
                         {"127.0.0.1": " (this host)", "127.0.0.2": ""}, r.stdout)

    def test_big_message_returned_as_headers(self):
        """A bounce returns a message bigger than bounce_size_limit as its header section."""
        origin = self.sink("127.0.0.4")
        self.scripted("127.0.0.2", replies={
            "RCPT": lambda s, arg: "550 5.1.1 no such user" if "bad@" in arg else None})
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "bad@remote.test"},
                        bounce_size_limit="10k")
        for subject, size in (("small one", 2000), ("big one", 200000)):
            body = "\r\n".join(["z" * 100] * (size // 100))
            qid = self.send(d, ["fwd@" + LOCAL_DOMAIN], message(subject, body))
            self.wait_log(d, r"%s: to=<bad@remote\.test>.*status=bounced" % qid)
        self.assertTrue(wait_until(lambda: origin.count() == 2, 30), d.log_tail())
        bodies = [m["data"].decode("utf-8", "replace") for m in origin.messages()]
        small = [b for b in bodies if "Subject: small one" in b][0]
        big = [b for b in bodies if "Subject: big one" in b][0]
        self.assertIn("Content-Type: message/rfc822", small)
        self.assertIn("\r\n".join(["z" * 100] * 20), small)
        self.assertIn("Content-Type: text/rfc822-headers", big)
        self.assertNotIn("z" * 100, big)
        self.assertLess(len(big), 20000)

    def test_size_too_big_bounces(self):
        self.scripted("127.0.0.5", keywords=["PIPELINING", "SIZE 1000", "8BITMIME"])
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@big.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN], message("big", "x" * 5000), sender="")
        self.wait_log(d, r"%s: to=<user@big\.test>.*dsn=5\.3\.4, status=bounced.*size limit"
                      % qid)

    def test_8bit_to_7bit_server_bounces(self):
        seven = self.scripted("127.0.0.6", keywords=["PIPELINING", "SIZE 100000"])
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@seven.test"})
        content = message("eight", "caf\u00e9 au lait").encode("utf-8")
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN], content, sender="")
        self.wait_log(d, r"%s: to=<user@seven\.test>.*dsn=5\.6\.3, status=bounced.*8BITMIME"
                      % qid)
        self.assertEqual(seven.messages(), [])

    def test_120_recipients_three_transactions(self):
        mx1 = self.scripted("127.0.0.2")
        members = ",".join("u%d@remote.test" % i for i in range(120))
        d = self.sorter(aliases={"list@" + LOCAL_DOMAIN: members})
        qid = self.send(d, ["list@" + LOCAL_DOMAIN])
        self.assertTrue(wait_until(lambda: len(mx1.messages()) == 3, 30), d.log_tail())
        sizes = sorted(len(t["rcpts"]) for t in mx1.messages())
        self.assertEqual(sizes, [20, 50, 50])
        got = sorted(r for t in mx1.messages() for r in t["rcpts"])
        self.assertEqual(got, sorted("u%d@remote.test" % i for i in range(120)))
        self.wait_gone(d, qid)

    def test_dsn_parameters_passed_on(self):
        mx1 = self.scripted("127.0.0.2")
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@remote.test"})
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<%s> RET=HDRS ENVID=env1" % SENDER).code, 250)
        self.assertEqual(c.cmd("RCPT TO:<fwd@%s> NOTIFY=SUCCESS,FAILURE "
                               "ORCPT=rfc822;fwd@%s" % (LOCAL_DOMAIN, LOCAL_DOMAIN)).code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(message("dsn").encode() + b"\r\n.\r\n")
        self.assertEqual(c.reply().code, 250)
        self.assertTrue(wait_until(lambda: len(mx1.messages()) == 1, 30), d.log_tail())
        t = mx1.messages()[0]
        self.assertEqual(t["mail_params"].get("RET"), "HDRS")
        self.assertEqual(t["mail_params"].get("ENVID"), "env1")
        self.assertEqual(t["rcpt_params"][0].get("NOTIFY"), "SUCCESS,FAILURE")
        self.assertEqual(t["rcpt_params"][0].get("ORCPT"), "rfc822;fwd@" + LOCAL_DOMAIN)


class RelayTest(OutboundTestCase):
    def test_relay_host_bypasses_dns(self):
        relay = self.sink("127.0.0.9")
        # remote.test's MXes are not running: only the relay can take the mail
        d = self.sorter(relay_host="[127.0.0.9]:%d" % self.mxport, dns_servers=None)
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@remote\.test>.*relay=127\.0\.0\.9\[127\.0\.0\.9\]:%d"
                         r".*status=sent" % (qid, self.mxport))
        self.assertEqual(relay.count(), 1)

    def test_transport_map_before_relay_host(self):
        special = self.sink("127.0.0.11")
        relay = self.sink("127.0.0.9")
        tmap = write_map(self.build(), os.path.join(self.tmp, "transport"),
                         {"remote.test": "smtp:[127.0.0.11]:%d" % self.mxport})
        d = self.sorter(relay_host="[127.0.0.9]:%d" % self.mxport, transport_map=tmap,
                        aliases={"fwd@" + LOCAL_DOMAIN: "user@remote.test",
                                 "two@" + LOCAL_DOMAIN: "user@origin.test"})
        q1 = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        q2 = self.send(d, ["two@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@remote\.test>.*relay=127\.0\.0\.11\[.*status=sent" % q1)
        self.wait_log(d, r"%s: to=<user@origin\.test>.*relay=127\.0\.0\.9\[.*status=sent" % q2)
        self.assertEqual(special.count(), 1)
        self.assertEqual(relay.count(), 1)

    def test_route_shows_the_transport(self):
        d = self.sorter(relay_host="[127.0.0.9]:%d" % self.mxport)
        r = d.ctl("route", "user@remote.test", check=False)
        self.assertIn("relay_host", r.stdout)
        self.assertIn("smtp:[127.0.0.9]:%d" % self.mxport, r.stdout)

    def test_route_shows_the_live_mx_list(self):
        d = self.sorter(smtp_tls_security_level="encrypt")
        r = d.ctl("route", "user@remote.test", check=False)
        self.assertIn("endpoints smtp:remote.test", r.stdout)
        self.assertIn("MX 10 mx1.remote.test: 127.0.0.2", r.stdout)
        self.assertIn("MX 20 mx2.remote.test: 127.0.0.3", r.stdout)
        self.assertRegex(r.stdout, r"smtp_tls\s+encrypt")
        # 127.0.0.1 at another port than our listener's: not ourselves
        r = d.ctl("route", "user@loop.test", check=False)
        self.assertRegex(r.stdout, r"(?m)^    MX 10 mx\.sorter\.test: 127\.0\.0\.1$")
        self.assertNotIn("ourselves", r.stdout)
        r = d.ctl("route", "user@nullmx.test", check=False)
        self.assertIn("null MX: would bounce 5.1.10", r.stdout)


class TLSOutTest(OutboundTestCase):
    KW = ["PIPELINING", "8BITMIME", "SIZE 10240000", "STARTTLS"]

    def test_may_uses_starttls(self):
        _, cert, key = make_ca(os.path.join(self.tmp, "pki"), "good", ["mx.tls.test"])
        mx = self.scripted("127.0.0.8", keywords=self.KW, cert=cert, key=key)
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@tls.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@tls\.test>.*tls=TLSv1\.[23]/\S+/unverified.*status=sent"
                      % qid)
        self.assertTrue(mx.messages()[0]["tls"])

    def test_encrypt_without_starttls_defers(self):
        self.scripted("127.0.0.8", keywords=["PIPELINING", "8BITMIME"])
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@tls.test"},
                        smtp_tls_security_level="encrypt")
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@tls\.test>.*status=deferred.*TLS is required, but was "
                         r"not offered" % qid)

    def test_verify_against_the_right_and_a_wrong_ca(self):
        ca, cert, key = make_ca(os.path.join(self.tmp, "pki"), "good", ["mx.tls.test"])
        other, _, _ = make_ca(os.path.join(self.tmp, "pki"), "other", ["mx.tls.test"])
        mx = self.scripted("127.0.0.8", keywords=self.KW, cert=cert, key=key)
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@tls.test"},
                        smtp_tls_security_level="verify", smtp_tls_ca_file=other)
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@tls\.test>.*status=deferred.*not verified" % qid)
        self.assertEqual(mx.messages(), [])
        d.stop()
        d2 = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@tls.test"}, name="d2",
                         smtp_tls_security_level="verify", smtp_tls_ca_file=ca)
        qid = self.send(d2, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d2, r"%s: to=<user@tls\.test>.*tls=TLSv1\.[23]/\S+/verified.*status=sent"
                      % qid)
        self.assertEqual(len(mx.messages()), 1)


def broken_handshake(how):
    """A STARTTLS script: 220, then, once the client's TLS hello is in, bytes that are not
    TLS (how "garbage"), nothing for 4 s ("stall"), or nothing ("close"); then the
    connection closes."""
    def script(session, arg):
        session.send("220 2.0.0 Ready to start TLS")
        session._fill()                 # the client's hello
        if how == "garbage":
            session.conn.sendall(b"220 this is not TLS at all\r\n" * 8)
            time.sleep(0.5)             # read by the client before the close
        elif how == "stall":
            time.sleep(4)
        return "DISCONNECT"
    return script


class TLSFallbackTest(OutboundTestCase):
    """smtp_tls_security_level may never makes mail undeliverable where plaintext works: a
    failed handshake is followed by one plaintext connection to the same host, a refused
    STARTTLS goes on in plaintext; encrypt defers instead."""
    KW = ["PIPELINING", "8BITMIME", "SIZE 10240000", "STARTTLS"]

    def broken_mx(self, how):
        _, cert, key = make_ca(os.path.join(self.tmp, "pki"), "good", ["mx.tls.test"])
        return self.scripted("127.0.0.8", keywords=self.KW, cert=cert, key=key,
                             replies={"STARTTLS": broken_handshake(how)})

    def check_plaintext_retry(self, how, error, **settings):
        mx = self.broken_mx(how)
        other = self.sink("127.0.0.2")          # must not be tried instead
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@tls.test"}, **settings)
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        sent = self.wait_log(d, r"%s: to=<user@tls\.test>.*relay=mx\.tls\.test\[127\.0\.0\.8\]:"
                                r"%d.*status=sent" % (qid, self.mxport))
        self.assertNotIn("tls=", sent[0])
        self.assertTrue(d.log_lines(
            r"warning: %s.*; "
            r"retrying mx\.tls\.test\[127\.0\.0\.8\]:%d without STARTTLS, in plaintext"
            % (error % self.mxport, self.mxport)), d.log_tail())
        msgs = mx.messages()
        self.assertEqual(len(msgs), 1)
        self.assertFalse(msgs[0]["tls"])
        self.assertEqual(msgs[0]["session"], 2)
        self.assertEqual(mx.counts.get("STARTTLS"), 1, "one handshake, then plaintext only")
        self.assertNotIn("STARTTLS", mx.sessions[1].commands)
        self.assertEqual(other.count(), 0)
        self.wait_gone(d, qid)

    def test_may_garbage_handshake_retries_in_plaintext(self):
        self.check_plaintext_retry(
            "garbage", r"TLS handshake with mx\.tls\.test\[127\.0\.0\.8\]:%d failed: error:\S+")

    def test_may_closed_handshake_retries_in_plaintext(self):
        self.check_plaintext_retry(
            "close", r"TLS handshake with mx\.tls\.test\[127\.0\.0\.8\]:%d failed: \S.*")

    def test_may_stalled_handshake_retries_in_plaintext(self):
        self.check_plaintext_retry(
            "stall", r"timeout with mx\.tls\.test\[127\.0\.0\.8\]:%d while performing the TLS "
                     r"handshake", lmtp_timeout="2")

    def test_one_plaintext_retry_per_failed_handshake(self):
        _, cert, key = make_ca(os.path.join(self.tmp, "pki"), "good", ["mx.tls.test"])
        # session 1: the handshake breaks; 2: the plaintext retry is refused (421);
        # 3: the next delivery attempt asks for TLS again, which breaks; 4: plaintext, sent
        mx = self.scripted("127.0.0.8", keywords=self.KW, cert=cert, key=key,
                           replies={"STARTTLS": broken_handshake("garbage"),
                                    "CONNECT": [None, "421 4.3.2 not now"]})
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@tls.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@tls\.test>.*status=deferred.*refused to talk to me: "
                         r"421 4\.3\.2 not now" % qid)
        self.wait_log(d, r"%s: to=<user@tls\.test>.*status=sent" % qid)
        msgs = mx.messages()
        self.assertEqual(len(msgs), 1)
        self.assertEqual(msgs[0]["session"], 4)
        with mx.lock:
            commands = [s.commands for s in mx.sessions]
        self.assertEqual(len(commands), 4, commands)
        self.assertIn("STARTTLS", commands[0])
        self.assertEqual(commands[1], [])
        self.assertIn("STARTTLS", commands[2])
        self.assertNotIn("STARTTLS", commands[3])
        self.assertEqual(len(d.log_lines(r"warning: TLS handshake with .* in plaintext")), 2)

    def test_encrypt_failed_handshake_defers(self):
        mx = self.broken_mx("garbage")
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@tls.test"},
                        smtp_tls_security_level="encrypt")
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@tls\.test>.*status=deferred.*TLS handshake with "
                         r"mx\.tls\.test\[127\.0\.0\.8\]:%d failed" % (qid, self.mxport))
        self.assertEqual(mx.messages(), [])
        self.assertEqual(d.log_lines(r"in plaintext"), [])
        with mx.lock:
            sessions = list(mx.sessions)
        self.assertTrue(sessions)
        for s in sessions:                      # every connection asked for TLS first
            self.assertEqual(s.commands[1:2], ["STARTTLS"], s.commands)
        self.assertIn(qid, d.queue_ids())

    def test_may_starttls_454_goes_plaintext(self):
        mx = self.scripted("127.0.0.8", keywords=self.KW)      # no certificate: 454
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@tls.test"})
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        sent = self.wait_log(d, r"%s: to=<user@tls\.test>.*relay=mx\.tls\.test\[127\.0\.0\.8\]"
                                r".*status=sent" % qid)
        self.assertNotIn("tls=", sent[0])
        self.assertTrue(d.log_lines(r"warning: host mx\.tls\.test\[127\.0\.0\.8\]:%d refused "
                                    r"STARTTLS: 454 4\.7\.0 TLS not available; delivering in "
                                    r"plaintext" % self.mxport), d.log_tail())
        msgs = mx.messages()
        self.assertEqual(len(msgs), 1)
        self.assertFalse(msgs[0]["tls"])
        self.assertEqual(len(mx.sessions), 1, "the same connection goes on in plaintext")
        self.assertEqual(mx.counts.get("STARTTLS"), 1)

    def test_encrypt_starttls_454_defers(self):
        mx = self.scripted("127.0.0.8", keywords=self.KW)
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@tls.test"},
                        smtp_tls_security_level="encrypt")
        qid = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@tls\.test>.*status=deferred.*454 4\.7\.0 TLS not "
                         r"available \(in reply to STARTTLS command\)" % qid)
        self.assertEqual(mx.messages(), [])


class SuccessNoticeTest(OutboundTestCase):
    """NOTIFY=SUCCESS for a recipient relayed by SMTP (RFC 3461 4.1): a next hop that
    offers DSN gets the parameters and reports itself; one that does not makes sorterd
    send a "relayed" notice."""

    def send_notify(self, d):
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER).code, 250)
        self.assertEqual(c.cmd("RCPT TO:<fwd@%s> NOTIFY=SUCCESS" % LOCAL_DOMAIN).code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(message("notify").encode() + b"\r\n.\r\n")
        r = c.reply()
        self.assertEqual(r.code, 250)
        return r.texts[-1].split()[-1]

    def test_relayed_notice_when_next_hop_has_no_dsn(self):
        origin = self.sink("127.0.0.4")
        self.scripted("127.0.0.2", keywords=["PIPELINING", "8BITMIME", "SIZE 1000000"])
        d = self.sorter()
        qid = self.send_notify(d)
        self.wait_log(d, r"%s: to=<user@remote\.test>.*status=sent" % qid)
        self.assertTrue(wait_until(lambda: origin.count() == 1, 30), d.log_tail())
        body = origin.messages()[0]["data"].decode("utf-8", "replace")
        self.assertIn("Action: relayed", body)
        self.assertEqual(origin.messages()[0]["sender"], "")

    def test_no_notice_when_next_hop_takes_dsn(self):
        origin = self.sink("127.0.0.4")
        mx1 = self.scripted("127.0.0.2")    # offers DSN
        d = self.sorter()
        qid = self.send_notify(d)
        self.wait_log(d, r"%s: to=<user@remote\.test>.*status=sent" % qid)
        self.assertEqual(mx1.messages()[0]["rcpt_params"][0].get("NOTIFY"), "SUCCESS")
        # a notice would be queued before the message leaves: once the queue is empty it
        # has been delivered to the origin MX, or there was none
        self.assertTrue(wait_until(lambda: d.queue_ids() == set(), 30), d.queue())
        self.assertEqual(origin.count(), 0, "sorterd sent a success notice the next hop owes")


class TLSPolicyTest(OutboundTestCase):
    def test_policy_map_overrides_the_level_per_domain(self):
        self.scripted("127.0.0.8", keywords=["PIPELINING", "8BITMIME"])     # no STARTTLS
        mx1 = self.scripted("127.0.0.2", keywords=["PIPELINING", "8BITMIME"])
        policy = write_map(self.build(), os.path.join(self.tmp, "tls_policy"),
                           {"tls.test": "encrypt"})
        d = self.sorter(aliases={"fwd@" + LOCAL_DOMAIN: "user@tls.test",
                                 "plain@" + LOCAL_DOMAIN: "user@remote.test"},
                        smtp_tls_policy_map=policy)
        q1 = self.send(d, ["fwd@" + LOCAL_DOMAIN])
        q2 = self.send(d, ["plain@" + LOCAL_DOMAIN])
        self.wait_log(d, r"%s: to=<user@tls\.test>.*status=deferred.*TLS is required" % q1)
        self.wait_log(d, r"%s: to=<user@remote\.test>.*status=sent" % q2)
        self.assertEqual(len(mx1.messages()), 1)
        r = d.ctl("route", "user@tls.test", check=False)
        self.assertIn("smtp_tls_policy_map: tls.test -> encrypt", r.stdout)

    def test_bad_policy_value_defers(self):
        policy = write_map(self.build(), os.path.join(self.tmp, "tls_policy"),
                           {"remote.test": "sometimes"})
        d = self.sorter(smtp_tls_policy_map=policy)
        # the recipient cannot be routed: refused for now at RCPT, never guessed
        c = self.connect(d)
        r, qid = c.send_message(SENDER, ["fwd@" + LOCAL_DOMAIN], message("bad policy"))
        self.assertReply(r, 451, "4.3.0")
        r = d.ctl("route", "user@remote.test", check=False)
        self.assertIn("not none, may, encrypt or verify", r.stdout)
