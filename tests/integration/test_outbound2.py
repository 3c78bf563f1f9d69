"""test_outbound2.py - more of sorterd's SMTP client against remote MXes: a real Postfix as
the remote MX over STARTTLS with a certificate verified against a CA made here; an MX host
name with two addresses (round robin over new connections, fail-over when one is down, a
failed address tried last); kill -9 of the queue manager while deliveries to a slow remote
MX are in flight; an MX host with only an AAAA record reached over IPv6 ([::1])."""

import os
import re
import socket
import time
import unittest

from harness import LOCAL_DOMAIN, message, wait_until
from postfix import PrivatePostfix, postfix_missing
from test_outbound import SENDER, OutboundTestCase, make_ca

FWD = "fwd@" + LOCAL_DOMAIN


def ipv6_loopback_missing():
    """None when a TCP socket can listen on [::1], else why not."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            s.listen(1)
    except OSError as e:
        return "cannot listen on [::1] on this machine: %s" % e
    return None


class Outbound2TestCase(OutboundTestCase):
    MX = dict(OutboundTestCase.MX)
    MX.update({"rr.test": [(10, "mx1.rr.test")],
               "v6.test": [(10, "mx6.v6.test")]})
    HOSTS = dict(OutboundTestCase.HOSTS)
    HOSTS.update({"mx1.rr.test": ["127.0.0.12", "127.0.0.13"],
                  "mx6.v6.test": ["::1"]})


@unittest.skipIf(postfix_missing(), postfix_missing() or "")
class PostfixMXTest(Outbound2TestCase):
    """A private Postfix plays mx.tls.test (127.0.0.8) with STARTTLS and a certificate of a
    CA made by the test; it relays tls.test to its discard transport and logs status=sent."""

    def postfix(self, cert, key):
        pf = PrivatePostfix(os.path.join(self.tmp, "postfix"), self.mxport, host="127.0.0.8",
                            main={
                                "relay_domains": "tls.test",
                                "relay_transport": "discard:kept by the private Postfix",
                                "default_transport": "error:not a test destination",
                                "smtpd_tls_security_level": "may",
                                "smtpd_tls_cert_file": cert,
                                "smtpd_tls_key_file": key,
                                "smtpd_tls_loglevel": "1",
                            })
        self.addCleanup(pf.stop)
        pf.start()
        return pf

    def test_verify_against_postfix(self):
        pki = os.path.join(self.tmp, "pki")
        ca, cert, key = make_ca(pki, "good", ["mx.tls.test"])
        other, _, _ = make_ca(pki, "other", ["mx.tls.test"])
        pf = self.postfix(cert, key)
        aliases = {FWD: "user@tls.test"}

        # a CA that did not sign Postfix's certificate: deferred, nothing reaches Postfix
        d = self.sorter(aliases=aliases, smtp_tls_security_level="verify",
                        smtp_tls_ca_file=other)
        bad_id = "pf-bad-%s" % os.urandom(4).hex()
        qid = self.send(d, [FWD], message(bad_id))
        self.wait_log(d, r"%s: to=<user@tls\.test>.*status=deferred.*not verified" % qid)
        self.assertIn(qid, d.queue_ids())
        d.stop()
        self.assertNotIn(bad_id, pf.log())

        # the CA that signed it: verified, sent, and Postfix logs the receipt
        d2 = self.sorter(aliases=aliases, name="d2", smtp_tls_security_level="verify",
                         smtp_tls_ca_file=ca)
        good_id = "pf-good-%s" % os.urandom(4).hex()
        qid = self.send(d2, [FWD], message(good_id))
        [line] = self.wait_log(
            d2, r"%s: to=<user@tls\.test>.*relay=mx\.tls\.test\[127\.0\.0\.8\]:%d.*"
                r"tls=TLSv1\.[23]/\S+/verified.*status=sent" % (qid, self.mxport))
        self.wait_gone(d2, qid)
        # Postfix: a TLS session from sorterd, the message by its Message-ID, delivered
        ok = wait_until(lambda: re.search(r"to=<user@tls\.test>.*status=sent", pf.log()), 30)
        log = pf.log()
        self.assertTrue(ok, "Postfix did not log status=sent:\n%s" % log)
        self.assertRegex(log, r"TLS connection established from \S+\[127\.0\.0\.1\]")
        m = re.search(r"(\w+): message-id=<%s@remote\.test>" % re.escape(good_id), log)
        self.assertTrue(m, "Postfix did not receive %s:\n%s" % (good_id, log))
        self.assertRegex(log, r"%s: to=<user@tls\.test>.*status=sent" % m.group(1))
        self.assertIn("queued as %s" % m.group(1), line)   # sorterd logged Postfix's 250
        self.assertNotIn(bad_id, log)
        self.assertEqual(log.count("message-id="), 1, log)


class RoundRobinTest(Outbound2TestCase):
    """mx1.rr.test has two A records, 127.0.0.12 and 127.0.0.13. Every new connection looks
    the name up again and starts one address further (client.c on_dns); a connection is
    kept lmtp_idle_timeout (1 s here) for the next message, so each message is sent only
    once no connection to either address is open any more (read from /proc/net/tcp): each one
    takes a new connection."""

    ALIASES = {FWD: "user@rr.test"}
    ROUNDS = 6

    def open_to_mx(self):
        """Connections to mx1.rr.test's addresses on the MX port that are neither closed nor
        being closed by their client (ESTABLISHED, SYN_SENT, SYN_RECV, CLOSE_WAIT)."""
        want = {"%s:%04X" % (a, self.mxport) for a in ("0C00007F", "0D00007F")}
        with open("/proc/net/tcp") as f:
            return [l for l in f.readlines()[1:]
                    if l.split()[2] in want and l.split()[3] in ("01", "02", "03", "08")]

    def one_by_one(self, d, n, tag):
        """n messages, each delivered (status=sent) and its connection closed before the
        next one; returns the queue ids."""
        qids = []
        for i in range(n):
            qid = self.send(d, [FWD], message("%s %d" % (tag, i)))
            self.wait_log(d, r"%s: to=<user@rr\.test>.*status=sent" % qid)
            qids.append(qid)
            self.assertTrue(wait_until(lambda: not self.open_to_mx(), 10),
                            "a connection to mx1.rr.test outlived lmtp_idle_timeout: %s"
                            % self.open_to_mx())
        return qids

    def relays(self, d, qids):
        out = []
        for qid in qids:
            [line] = d.log_lines(r"%s: to=<user@rr\.test>.*status=sent" % qid)
            out.append(re.search(r"relay=mx1\.rr\.test\[([0-9.]+)\]", line).group(1))
        return out

    def test_round_robin_over_new_connections(self):
        s12, s13 = self.sink("127.0.0.12"), self.sink("127.0.0.13")
        d = self.sorter(aliases=self.ALIASES, lmtp_idle_timeout="1")
        qids = self.one_by_one(d, self.ROUNDS, "rr")
        relays = self.relays(d, qids)
        self.assertEqual(s12.count() + s13.count(), self.ROUNDS)
        self.assertEqual(sorted(relays).count("127.0.0.12"), s12.count(), relays)
        # every lookup starts one address further: both addresses get mail. (dnsmasq rotates
        # the A records too, on the MX query's additional section and on the A query: two
        # turns per delivery, so the order sorterd gets here is the same every time and the
        # spreading is sorterd's own.)
        self.assertGreater(s12.count(), 0, "127.0.0.12 never got mail: %s" % relays)
        self.assertGreater(s13.count(), 0, "127.0.0.13 never got mail: %s" % relays)

    def test_one_address_down_fails_over(self):
        s13 = self.sink("127.0.0.13")
        d = self.sorter(aliases=self.ALIASES, lmtp_idle_timeout="1")
        qids = self.one_by_one(d, 4, "failover")
        self.assertEqual(self.relays(d, qids), ["127.0.0.13"] * 4)
        self.assertEqual(s13.count(), 4)
        self.assertEqual(d.log_lines(r"status=deferred"), [])
        # 127.0.0.12 was tried (it refused) and set aside
        self.wait_log(d, r"mx1\.rr\.test\[127\.0\.0\.12\]:%d failed, tried last for \d+s: "
                         r"connect to .*Connection refused" % self.mxport)

    def test_failed_address_tried_last(self):
        """127.0.0.12 answers every connection with 421 (a greeting that is not 220): after
        its first failure it must be tried last for endpoint_dead_time (60 s), so the later
        deliveries go to 127.0.0.13 without knocking at 127.0.0.12 again."""
        down = self.scripted("127.0.0.12", greeting="421 4.3.2 closing for the test")
        s13 = self.sink("127.0.0.13")
        d = self.sorter(aliases=self.ALIASES, lmtp_idle_timeout="1", endpoint_dead_time="60")
        qids = self.one_by_one(d, 4, "dead")
        self.assertEqual(self.relays(d, qids), ["127.0.0.13"] * 4)
        self.assertEqual(s13.count(), 4)
        with down.lock:
            sessions = len(down.sessions)
        self.assertLessEqual(sessions, 1, "127.0.0.12 failed and was still tried first %d "
                             "times within endpoint_dead_time:\n%s"
                             % (sessions, "\n".join(d.log_lines(r"127\.0\.0\.12"))))


class KillQmgrOutboundTest(Outbound2TestCase):
    MESSAGES = 20
    CONCURRENCY = 3

    def test_kill_qmgr_with_deliveries_in_flight(self):
        def slow_dot(session, arg):
            time.sleep(1)     # the reply to the end of data comes 1 s late
            return None
        mx = self.scripted("127.0.0.2", replies={"DOT": slow_dot})
        d = self.sorter(smtp_destination_concurrency_limit=str(self.CONCURRENCY))
        run = os.urandom(3).hex()
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        acked = {}
        for i in range(self.MESSAGES):
            tok = "kill-%s-%d" % (run, i)
            r, qid = c.send_message(SENDER, [FWD], message(tok), ehlo=False)
            self.assertIsNotNone(qid, str(r))
            acked[tok] = qid
        c.cmd("QUIT")

        def received():
            """token -> times its content reached the end of data at the remote MX."""
            seen = {}
            with mx.lock:
                txns = [t for t in mx.transactions if t["data"] is not None]
            for t in txns:
                s = re.search(rb"^Subject: (kill-\S+)\r$", t["data"], re.M)
                if s:
                    tok = s.group(1).decode()
                    seen[tok] = seen.get(tok, 0) + 1
            return seen

        self.assertTrue(wait_until(lambda: len(received()) >= 4, 60, interval=0.02),
                        "deliveries did not start: %s" % d.log_tail())
        victim = d.qmgr_pid()
        self.assertIsNotNone(victim, "cannot tell the queue manager among %s" % d.children())
        with mx.lock:
            in_flight = sum(1 for s in mx.sessions if not s.closed)
        os.kill(victim, 9)
        at_kill = len(received())
        self.assertLess(at_kill, self.MESSAGES, "the kill came after the run")
        self.assertTrue(wait_until(lambda: (d.qmgr_pid() or victim) != victim, 30),
                        "no new queue manager after kill -9 of pid %d" % victim)
        self.assertTrue(d.wait_queue_empty(120), "left in the queue: %s" % d.queue())
        self.assertEqual(d.queue_ids(), set())
        seen = received()
        lost = sorted(t for t in acked if t not in seen)
        self.assertEqual(lost, [], "acknowledged by sorterd, never reached the remote MX")
        for tok, qid in acked.items():
            self.assertTrue(d.log_lines(r"%s: to=<user@remote\.test>.*status=sent" % qid),
                            "%s (%s) never logged status=sent" % (qid, tok))
        twice = {t: n for t, n in seen.items() if n > 1}
        # only a transaction in flight at the kill may be sent again: at most one per
        # connection, smtp_destination_concurrency_limit connections
        self.assertLessEqual(len(twice), self.CONCURRENCY, "too many duplicates: %s" % twice)
        self.assertEqual(set(seen) - set(acked), set())
        print("\nkill -9 of qmgr (pid %d) after %d of %d messages reached the MX, %d sessions "
              "open: %d delivered twice %s"
              % (victim, at_kill, self.MESSAGES, in_flight, len(twice), sorted(twice)))


@unittest.skipIf(ipv6_loopback_missing(), ipv6_loopback_missing() or "")
class IPv6MXTest(Outbound2TestCase):
    def test_aaaa_only_mx_over_ipv6(self):
        mx6 = self.scripted("::1")
        d = self.sorter(aliases={FWD: "user@v6.test"})
        qid = self.send(d, [FWD], message("over ipv6"))
        self.wait_log(d, r"%s: to=<user@v6\.test>.*relay=mx6\.v6\.test\[::1\]:%d.*status=sent"
                      % (qid, self.mxport))
        self.wait_gone(d, qid)
        [t] = mx6.wait_messages(1, 10)
        self.assertEqual(t["rcpts"], ["user@v6.test"])
        self.assertIn(b"Subject: over ipv6", t["data"])
        with mx6.lock:
            peers = [s.peer[0] for s in mx6.sessions]
        self.assertEqual(peers, ["::1"])


if __name__ == "__main__":
    unittest.main()
