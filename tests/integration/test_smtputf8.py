"""test_smtputf8.py - SMTPUTF8 (RFC 6531) end to end: UTF-8 addresses only in a transaction
that declared SMTPUTF8 (553 5.6.7 otherwise), delivered as they are to a node that offers
SMTPUTF8, refused at RCPT with 553 5.6.7 for a node whose last LHLO lacked it (once the queue
manager has seen that LHLO), bounced with a 5.6.7 DSN while nothing was known yet, and bounced
when an SMTP next hop does not offer it.

Two LMTP nodes on free loopback ports:
  node-b      a real Dovecot (2.3 here: its LMTP does not offer SMTPUTF8 and has no setting
              for it, and it refuses a UTF-8 RCPT as a syntax error); it holds bob, and
              sender@example.test, whose Maildir receives the DSNs
  node-utf8   a scripted LMTP server (scripted_smtp.py, lmtp=True) that offers SMTPUTF8 and
              records every transaction: the mailbox of jürgen@ and 用户@example.test
Outbound: two scripted SMTP servers on 127.0.0.2 (no SMTPUTF8) and 127.0.0.3 (SMTPUTF8),
reached through transport_map (remote.test, utf8.test) by local aliases.
"""

import os
import re
import unittest

from dovecot import DovecotNode, dovecot_missing
from harness import (LOCAL_DOMAIN, Sorterd, SorterTestCase, build_dir, free_port, wait_until,
                     write_map)
from dnsmasq import PrivateDNS, free_dns_port
from scripted_smtp import ScriptedSMTPServer
from smtpsink import free_port_on
from test_delivery import parse_dsn
from test_tls import make_cert

JUERGEN = "j\u00fcrgen@" + LOCAL_DOMAIN           # on node-utf8
YONGHU = "\u7528\u6237@" + LOCAL_DOMAIN            # on node-utf8
BJOERN = "bj\u00f6rn@" + LOCAL_DOMAIN              # on node-b, which lacks SMTPUTF8
BOB = "bob@" + LOCAL_DOMAIN                        # on node-b
SENDER = "sender@" + LOCAL_DOMAIN                  # on node-b: DSNs land there
UTF8_SENDER = "\u00e9l\u00e8ve@remote.test"
LMTP_KEYWORDS = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8")
NO_UTF8_KEYWORDS = ("PIPELINING", "8BITMIME", "SIZE 10240000", "DSN", "ENHANCEDSTATUSCODES")
# no health probes: what a node offers is learned from deliveries only, so that the
# "nothing known yet" case stays what the test makes it
FAST = {"queue_run_delay": 1, "minimal_backoff_time": 1, "maximal_backoff_time": 1,
        "endpoint_dead_time": 0, "lmtp_connect_timeout": 5, "node_probe_interval": 0}
WAIT = 30


def token(what):
    return "%s-%s" % (what, os.urandom(5).hex())


def utf8_message(tok, subject_utf8=True, to=JUERGEN):
    """A message whose header section has UTF-8 (RFC 6532) when subject_utf8."""
    subject = "Gr\u00fc\u00dfe %s" % tok if subject_utf8 else "greetings %s" % tok
    lines = ["From: <%s>" % SENDER, "To: <%s>" % to, "Subject: " + subject,
             "Message-ID: <%s@remote.test>" % tok]
    return ("\r\n".join(lines) + "\r\n\r\nbody of %s\r\n" % tok).encode("utf-8")


@unittest.skipIf(dovecot_missing(), dovecot_missing() or "")
class SMTPUTF8Test(SorterTestCase):
    def setUp(self):
        self.build = build_dir()
        os.chmod(self.tmp, 0o755)
        self.node_b = DovecotNode(os.path.join(self.tmp, "node-b"), free_port(),
                                  ["bob", "sender", "postmaster"], name="node-b")
        self.addCleanup(self.node_b.stop)
        self.daemons.append(self.node_b)
        self.node_b.start()
        self.utf8_port = free_port()
        self.node_utf8 = ScriptedSMTPServer("127.0.0.1", self.utf8_port, keywords=LMTP_KEYWORDS,
                                            hostname="node-utf8.nodes.test", lmtp=True)
        self.smtp_port = free_port_on("127.0.0.2")
        self.remote = self.scripted("127.0.0.2", NO_UTF8_KEYWORDS)
        self.remote_utf8 = self.scripted("127.0.0.3", NO_UTF8_KEYWORDS + ("SMTPUTF8",))
        maps = os.path.join(self.tmp, "maps")
        os.makedirs(maps)
        self.maps = {
            "user_map": write_map(self.build, os.path.join(maps, "user_map"), [
                (JUERGEN, "node-utf8"), (YONGHU, "node-utf8"), (BJOERN, "node-b"),
                (BOB, "node-b"), (SENDER, "node-b"), ("postmaster@" + LOCAL_DOMAIN, "node-b")]),
            "node_map": write_map(self.build, os.path.join(maps, "node_map"), [
                ("node-b", self.node_b.endpoint()),
                ("node-utf8", "lmtp:[127.0.0.1]:%d" % self.utf8_port)]),
            "alias_map": write_map(self.build, os.path.join(maps, "aliases"), [
                ("info@" + LOCAL_DOMAIN, YONGHU),
                ("weiter@" + LOCAL_DOMAIN, "j\u00fcrgen@remote.test"),
                ("fwd@" + LOCAL_DOMAIN, "someone@remote.test"),
                ("weiter2@" + LOCAL_DOMAIN, "j\u00fcrgen@utf8.test")]),
            "transport_map": write_map(self.build, os.path.join(maps, "transport"), [
                ("remote.test", "smtp:[127.0.0.2]:%d" % self.smtp_port),
                ("utf8.test", "smtp:[127.0.0.3]:%d" % self.smtp_port)]),
        }

    def scripted(self, host, keywords):
        s = ScriptedSMTPServer(host, self.smtp_port, keywords=keywords,
                               hostname="mx.%s.test" % host)
        s.start()
        self.addCleanup(s.stop)
        return s

    def start_node_utf8(self):
        self.node_utf8.start()
        self.addCleanup(self.node_utf8.stop)

    def start_sorterd(self, submission_port=None, **extra):
        settings = dict(FAST)
        settings.update(self.maps)
        settings.update(extra)
        d = Sorterd(os.path.join(self.tmp, "d"), start=False, **settings)
        if submission_port:
            # a submission listener needs TLS and logins to start at all
            cert, key = make_cert(self.tmp)
            d.write_config(listen=["127.0.0.1:%d mx" % d.port,
                                   "127.0.0.1:%d submission" % submission_port],
                           tls_cert_file=cert, tls_key_file=key,
                           auth_map=write_map(build_dir(), os.path.join(self.tmp, "passwd"),
                                              {"user@example.test": "$6$x$y"}))
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()
        self.d = d
        return d

    # ---- helpers ----
    def session(self, port=None):
        c = self.connect(self.d) if port is None else self.connect_port(port)
        self.assertReply(c.ehlo(), 250)
        return c

    def connect_port(self, port):
        from harness import Client
        c = Client(port)
        self.addCleanup(c.close)
        self.assertReply(c.reply(), 220)
        return c

    def transaction(self, sender, rcpts, content, smtputf8=True):
        """One accepted transaction; returns the queue id."""
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<%s>%s" % (sender, " SMTPUTF8" if smtputf8 else "")),
                         250, "2.1.0")
        for rc in rcpts:
            self.assertReply(c.cmd("RCPT TO:<%s>" % rc), 250, "2.1.5", "RCPT %s" % rc)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(content + b"\r\n.\r\n")
        r = c.reply(timeout=60)
        self.assertReply(r, 250, "2.0.0")
        qid = re.search(r"queued as ([0-9A-Z]{12})", r.texts[-1]).group(1)
        c.cmd("QUIT")
        return qid

    def log_bytes(self):
        with open(self.d.log_path, "rb") as f:
            return f.read()

    def wait_log(self, rx, timeout=WAIT):
        got = wait_until(lambda: self.d.log_lines(rx), timeout)
        self.assertTrue(got, "no log line matching %r" % rx)
        return got

    def assertLogClean(self):
        """The log is UTF-8 with UTF-8 addresses kept, and no control byte but LF."""
        raw = self.log_bytes()
        raw.decode("utf-8")      # strict: raises on anything that is not UTF-8
        self.assertFalse(re.search(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]", raw),
                         "a control character in the log")

    def utf8_node_txns(self):
        with self.node_utf8.lock:
            return [t for t in self.node_utf8.transactions if t["accepted"]]

    def wait_dsn(self, rcpt_field, timeout=WAIT):
        """The DSN in sender@'s Maildir (on the Dovecot node) with that Final-Recipient."""
        def look():
            for raw in self.node_b.maildir_messages("sender"):
                dsn = parse_dsn(raw)
                if dsn is None:
                    continue
                for r in dsn["recipients"]:
                    if r.get("final-recipient", "") == rcpt_field:
                        return dsn, r
            return None
        got = wait_until(look, timeout, interval=0.1)
        self.assertTrue(got, "no DSN for %r in sender's Maildir; queue %s"
                        % (rcpt_field, self.d.queue()))
        return got

    def caps_file(self):
        try:
            with open(os.path.join(self.d.spool, "nodecaps")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # ---- the tests ----
    def test_ehlo_on_every_listener(self):
        sub = free_port()
        self.start_sorterd(submission_port=sub)
        for port in (self.d.port, sub):
            c = self.connect_port(port)
            r = c.ehlo()
            self.assertReply(r, 250)
            self.assertIn("SMTPUTF8", r.keywords(), "port %d: %s" % (port, r))
            self.assertEqual(r.keywords()["SMTPUTF8"], "")

    def test_utf8_needs_the_parameter(self):
        self.start_sorterd()
        c = self.session()
        r = c.cmd("MAIL FROM:<%s>" % UTF8_SENDER)
        self.assertReply(r, 553, "5.6.7")
        self.assertIn("Must declare SMTPUTF8 to send UTF-8 addresses", str(r))
        self.assertReply(c.cmd("MAIL FROM:<%s> SMTPUTF8=yes" % UTF8_SENDER), 501, "5.5.4")
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test>"), 250)
        r = c.cmd("RCPT TO:<%s>" % JUERGEN)
        self.assertReply(r, 553, "5.6.7")
        self.assertIn("Must declare SMTPUTF8", str(r))
        self.assertReply(c.cmd("RCPT TO:<%s>" % BOB), 250)      # the transaction goes on
        self.assertReply(c.cmd("RSET"), 250)
        # with the parameter: only well-formed UTF-8, and no control character in it
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test> SMTPUTF8"), 250)
        c.send(b"RCPT TO:<j\xfcrgen@example.test>\r\n")        # Latin-1, not UTF-8
        r = c.reply()
        self.assertReply(r, 501, "5.1.3")
        self.assertIn("malformed UTF-8", str(r))
        c.send(b"RCPT TO:<j\xc0\xbcrgen@example.test>\r\n")    # an overlong form
        self.assertReply(c.reply(), 501, "5.1.3")
        c.send(b"RCPT TO:<j\xc2\x85rgen@example.test>\r\n")    # U+0085, a C1 control
        r = c.reply()
        self.assertReply(r, 501, "5.1.3")
        self.assertIn("control character", str(r))
        c.send(b"RCPT TO:<j\xed\xa0\x80rgen@example.test>\r\n")  # a surrogate
        self.assertReply(c.reply(), 501, "5.1.3")
        self.assertReply(c.cmd("RCPT TO:<%s>" % JUERGEN), 250, "2.1.5")
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertLogClean()

    def test_delivered_to_node_that_offers_it(self):
        self.start_node_utf8()
        self.start_sorterd()
        tok = token("utf8")
        qid = self.transaction(SENDER, [JUERGEN, YONGHU], utf8_message(tok))
        self.assertTrue(wait_until(lambda: self.utf8_node_txns(), WAIT), "nothing delivered")
        [t] = self.utf8_node_txns()
        self.assertIn("SMTPUTF8", t["mail_params"])
        self.assertEqual(t["sender"], SENDER)
        self.assertEqual(t["rcpts"], [JUERGEN, YONGHU])
        self.assertTrue(all(r.startswith("250") for r in t["data_replies"]), t["data_replies"])
        # the mailbox content: the UTF-8 header as sent, and our Received: saying UTF8SMTP
        self.assertIn(("Subject: Gr\u00fc\u00dfe %s" % tok).encode("utf-8"), t["data"])
        self.assertRegex(t["data"], rb"^Received: from client\.remote\.test \(\[127\.0\.0\.1\]\)"
                                    rb"\s+by mx\.sorter\.test \(Sorter\)\s+with UTF8SMTP id ")
        for rc in (JUERGEN, YONGHU):
            self.wait_log(r"%s: to=<%s>, node=node-utf8, .*status=sent" % (qid, re.escape(rc)))
        self.wait_log(r"%s: from=<%s>" % (qid, re.escape(SENDER)))
        # an ASCII alias of a UTF-8 mailbox: no declaration needed, SMTPUTF8 passed on
        qid2 = self.transaction("a@remote.test", ["info@" + LOCAL_DOMAIN],
                                utf8_message(token("alias"), subject_utf8=False), smtputf8=False)
        self.assertTrue(wait_until(lambda: len(self.utf8_node_txns()) == 2, WAIT))
        t2 = self.utf8_node_txns()[1]
        self.assertEqual(t2["rcpts"], [YONGHU])
        self.assertIn("SMTPUTF8", t2["mail_params"])
        self.wait_log(r"%s: to=<%s>, orig_to=<info@example\.test>, .*status=sent"
                      % (qid2, re.escape(YONGHU)))
        self.assertLogClean()

    def test_queue_file_keeps_the_declaration(self):
        self.start_sorterd()               # node-utf8 is down: the message waits
        qid = self.transaction(SENDER, [JUERGEN], utf8_message(token("kept")))
        self.assertTrue(wait_until(lambda: any(m["id"] == qid and m.get("state") == "deferred"
                                               for m in self.d.queue()), WAIT))
        shown = self.d.ctl("show", qid).stdout
        self.assertRegex(shown, r"(?m)^sender params: SMTPUTF8$")
        self.assertRegex(shown, r"(?m)^protocol: UTF8SMTP$")
        self.assertIn("recipient: %s (pending)" % JUERGEN, shown)
        queued = [m for m in self.d.queue() if m["id"] == qid][0]
        self.assertIn(JUERGEN, str(queued))       # sorterctl's JSON keeps UTF-8 as UTF-8
        self.start_node_utf8()
        self.d.ctl("flush")
        self.assertTrue(wait_until(lambda: self.utf8_node_txns(), WAIT), "not delivered")
        t = self.utf8_node_txns()[0]
        self.assertIn("SMTPUTF8", t["mail_params"])
        self.assertEqual(t["rcpts"], [JUERGEN])

    def test_node_without_it_bounces_then_refuses_at_rcpt(self):
        self.start_node_utf8()
        self.start_sorterd()
        b_ep = self.node_b.endpoint()
        self.assertNotIn(b_ep, self.caps_file())
        # nothing known of node-b yet: accepted, and the queue manager bounces it (5.6.7)
        qid = self.transaction(SENDER, [BJOERN], utf8_message(token("unknown")))
        dsn, r = self.wait_dsn("utf-8; bj\\x{F6}rn@example.test")
        self.assertEqual(r.get("action"), "failed")
        self.assertEqual(r.get("status"), "5.6.7")
        # Sorter's client decided this, the node said nothing of it: not typed "smtp"
        self.assertRegex(r.get("diagnostic-code", ""),
                         r"^X-Sorter; 553 5\.6\.7 SMTPUTF8 is required")
        self.wait_log(r"%s: to=<%s>, node=node-b, .*status=bounced \(553 5\.6\.7"
                      % (qid, re.escape(BJOERN)))
        # the queue manager saw node-b's LHLO and wrote down what it offered
        self.wait_log(r"%s: LHLO capabilities recorded: smtputf8=no" % re.escape(b_ep))
        line = [l for l in self.caps_file().splitlines() if l.startswith(b_ep + " ")]
        self.assertEqual(len(line), 1, self.caps_file())
        self.assertIn("PIPELINING", line[0].split())
        self.assertNotIn("SMTPUTF8", line[0].split())
        # now it is known: refused at RCPT, ASCII recipients of the transaction still go
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<%s> SMTPUTF8" % SENDER), 250)
        r = c.cmd("RCPT TO:<%s>" % BJOERN)
        self.assertReply(r, 553, "5.6.7")
        self.assertIn("does not support SMTPUTF8", str(r))
        self.assertReply(c.cmd("RCPT TO:<%s>" % BOB), 250, "2.1.5")
        self.assertReply(c.cmd("RCPT TO:<%s>" % JUERGEN), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)
        tok = token("mixed")
        c.send(utf8_message(tok, subject_utf8=False, to=BOB) + b"\r\n.\r\n")
        self.assertReply(c.reply(timeout=60), 250, "2.0.0")
        # a sender in UTF-8 makes every recipient on node-b need it
        self.assertReply(c.cmd("MAIL FROM:<%s> SMTPUTF8" % UTF8_SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % BOB), 553, "5.6.7")
        self.assertReply(c.cmd("RCPT TO:<%s>" % JUERGEN), 250)
        self.assertReply(c.cmd("QUIT"), 221)
        self.wait_log(r"reject: RCPT from \[127\.0\.0\.1\]: 553 5\.6\.7 <%s>: %s: node node-b "
                      r"\(%s\) did not offer SMTPUTF8" % (re.escape(BJOERN), re.escape(BJOERN),
                                                         re.escape(b_ep)))
        # bob's copy went to Dovecot without SMTPUTF8 (it would refuse the parameter),
        # jürgen's to node-utf8 with it
        self.assertTrue(wait_until(lambda: [m for m in self.node_b.maildir_messages("bob")
                                            if tok in m], WAIT), "bob got nothing")
        self.assertTrue(wait_until(lambda: any(JUERGEN in t["rcpts"]
                                               for t in self.utf8_node_txns()), WAIT))
        self.assertLogClean()

    def test_utf8_header_section_needs_it_too(self):
        self.start_sorterd()
        # declared, with UTF-8 in the headers: bob's node cannot take it (RFC 6532)
        qid = self.transaction(SENDER, [BOB], utf8_message(token("hdr"), to=BOB))
        dsn, r = self.wait_dsn("rfc822; " + BOB)
        self.assertEqual(r.get("status"), "5.6.7")
        self.wait_log(r"%s: to=<%s>, node=node-b, .*status=bounced \(553 5\.6\.7"
                      % (qid, re.escape(BOB)))
        # the same without the declaration is plain 8-bit mail: delivered
        tok = token("legacy")
        self.transaction(SENDER, [BOB], utf8_message(tok, to=BOB), smtputf8=False)
        self.assertTrue(wait_until(lambda: [m for m in self.node_b.maildir_messages("bob")
                                            if tok in m], WAIT), "bob got nothing")

    def test_smtp_next_hop_without_it(self):
        self.start_sorterd()
        # no SMTPUTF8 at 127.0.0.2: the UTF-8 recipient bounces, the ASCII one goes
        qid = self.transaction(SENDER, ["weiter@" + LOCAL_DOMAIN, "fwd@" + LOCAL_DOMAIN],
                               utf8_message(token("out"), subject_utf8=False), smtputf8=False)
        dsn, r = self.wait_dsn("utf-8; j\\x{FC}rgen@remote.test")
        self.assertEqual(r.get("status"), "5.6.7")
        self.assertEqual(r.get("action"), "failed")
        self.assertIn("127.0.0.2", r.get("remote-mta", ""))
        self.wait_log(r"%s: to=<j\u00fcrgen@remote\.test>, orig_to=<weiter@example\.test>, "
                      r".*status=bounced \(553 5\.6\.7" % qid)
        self.wait_log(r"%s: to=<someone@remote\.test>.*status=sent" % qid)
        with self.remote.lock:
            txns = list(self.remote.transactions)
        self.assertEqual([t["rcpts"] for t in txns if t["accepted"]], [["someone@remote.test"]])
        for t in txns:
            self.assertNotIn("SMTPUTF8", t["mail_params"])
        with self.remote.lock:
            commands = [c for s in self.remote.sessions for c in s.commands]
        self.assertFalse([c for c in commands if "\u00fc" in c], commands)
        # 127.0.0.3 offers it: SMTPUTF8 on MAIL FROM, the UTF-8 recipient as it is
        qid2 = self.transaction(SENDER, ["weiter2@" + LOCAL_DOMAIN],
                                utf8_message(token("out2")), smtputf8=True)
        self.wait_log(r"%s: to=<j\u00fcrgen@utf8\.test>.*status=sent" % qid2)
        with self.remote_utf8.lock:
            [t] = [t for t in self.remote_utf8.transactions if t["accepted"]]
        self.assertIn("SMTPUTF8", t["mail_params"])
        self.assertEqual(t["rcpts"], ["j\u00fcrgen@utf8.test"])
        self.assertLogClean()

    def test_mx_of_an_international_domain(self):
        """A UTF-8 domain is looked up by its A-label (IDNA): its MX host, found that way,
        gets the mail with the recipient as it was written."""
        dns = PrivateDNS(os.path.join(self.tmp, "dns"), free_dns_port(),
                         mx={"xn--bcher-kva.test": [(10, "mx.xn--bcher-kva.test")]},
                         hosts={"mx.xn--bcher-kva.test": "127.0.0.3"})
        dns.start()
        self.addCleanup(dns.stop)
        aliases = os.path.join(self.tmp, "maps", "aliases2")
        self.start_sorterd(dns_servers="127.0.0.1:%d" % dns.port, smtp_port=self.smtp_port,
                           alias_map=write_map(self.build, aliases, [
                               ("buch@" + LOCAL_DOMAIN, "j\u00fcrgen@b\u00fccher.test")]))
        qid = self.transaction(SENDER, ["buch@" + LOCAL_DOMAIN], utf8_message(token("idn")))
        self.wait_log(r"%s: to=<j\u00fcrgen@b\u00fccher\.test>, .*"
                      r"relay=mx\.xn--bcher-kva\.test\[127\.0\.0\.3\]:%d, .*status=sent"
                      % (qid, self.smtp_port))
        with self.remote_utf8.lock:
            [t] = [t for t in self.remote_utf8.transactions if t["accepted"]]
        self.assertEqual(t["rcpts"], ["j\u00fcrgen@b\u00fccher.test"])
        self.assertIn("SMTPUTF8", t["mail_params"])
        self.assertLogClean()


if __name__ == "__main__":
    unittest.main()
