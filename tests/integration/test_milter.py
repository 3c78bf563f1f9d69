"""test_milter.py - sorterd as a milter client, against real filters: a libmilter filter
(tests/integration/milter_filter.py, pymilter) that takes every action on a trigger, two of
them in a row, real OpenDKIM signing on the submission listener and verifying on the mx
listener, and filters that are down, silent, or talk nonsense. What the filters did is checked
in the SMTP replies, in what the filter was shown, and in what a real Dovecot node received.
"""

import os
import re
import shutil
import socket
import tempfile
import threading
import time

from dovecot import DovecotNode, dovecot_missing
from harness import (Client, QUEUED_RE, SorterTestCase, build_dir, free_port, unfold_header,
                     wait_until, write_map)
from milters import OpenDKIM, RawMilter, TestFilter, dkim_verify, genkey, milter_missing

DOMAIN = "example.test"
ALICE, BOB, CAROL = ("%s@%s" % (u, DOMAIN) for u in ("alice", "bob", "carol"))
SENDER = "sender@remote.test"
USERS = ["alice", "bob", "carol", "rcpt-continue", "rcpt-accept", "rcpt-discard"]
WAIT = 20


def message(subject="test", body="hello\r\nworld", headers=(), sender=SENDER, to=ALICE):
    lines = ["From: <%s>" % sender, "To: <%s>" % to, "Subject: %s" % subject,
             "Message-ID: <%s.%s@remote.test>" % (subject.replace(" ", "."), os.urandom(4).hex()),
             "Date: Mon, 23 Nov 2026 12:00:00 +0000"] + list(headers)
    return "\r\n".join(lines) + "\r\n\r\n" + body


def headers_of(raw):
    """The header section of a delivered message: [(name, value as written)], in order."""
    head = raw.replace("\r\n", "\n").split("\n\n", 1)[0]
    out = []
    for line in head.split("\n"):
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + "\n" + line)
        elif ":" in line:
            name, _, value = line.partition(":")
            out.append((name, value))
    return out


def body_of(raw):
    return raw.replace("\r\n", "\n").split("\n\n", 1)[1]


class MilterTestCase(SorterTestCase):
    def setUp(self):
        missing = dovecot_missing() or milter_missing()
        if missing:
            self.skipTest(missing)
        os.chmod(self.tmp, 0o755)
        self.node = DovecotNode(os.path.join(self.tmp, "node"), free_port(), USERS)
        self.addCleanup(self.node.stop)
        self.daemons.append(self.node)
        self.node.start()
        self.filters = []

    def run(self, result=None):
        # the filters' own logs, when a test failed, with the daemons'
        before = len(result.failures) + len(result.errors) if result else 0
        r = super().run(result)
        if result is not None and len(result.failures) + len(result.errors) > before:
            for f in getattr(self, "filters", []):
                print("\n---- filter %s ----\n%s" % (f.name, f.log_tail()))
        return r

    def filter(self, name="A", **kw):
        f = TestFilter(os.path.join(self.tmp, "filter-" + name), name, **kw)
        f.start()
        self.addCleanup(f.stop)
        self.filters.append(f)
        return f

    def start(self, milters, **overrides):
        settings = {"failover_node": self.node.endpoint(), "smtpd_milters": milters,
                    "queue_run_delay": "1s", "minimal_backoff_time": "1s",
                    "maximal_backoff_time": "1s", "workers": 1}
        settings.update(overrides)
        self.d = self.sorterd(**settings)
        return self.d

    def session(self, port=None):
        c = Client(port or self.d.port, timeout=30)
        self.addCleanup(c.close)
        r = c.reply()
        self.assertReply(r, 220)
        return c

    def send(self, content, rcpts=(ALICE,), sender=SENDER, c=None):
        c = c or self.session()
        return c.send_message(sender, list(rcpts), content)

    def delivered(self, user, n=1):
        """The n messages in user's Maildir (waits for them), as text."""
        got = wait_until(lambda: len(self.node.maildir_messages(user)) >= n or None, WAIT)
        self.assertTrue(got, "%s has %d message(s), want %d\n%s" % (
            user, len(self.node.maildir_messages(user)), n, self.d.log_tail()))
        return [m if isinstance(m, str) else m.decode() for m in self.node.maildir_messages(user)]

    def nothing_for(self, user, wait=1.5):
        time.sleep(wait)
        self.assertEqual(self.node.maildir_messages(user), [])


class StagesTest(MilterTestCase):
    def test_every_stage_in_order_with_the_macros(self):
        """One message: the filter is shown connect, HELO, MAIL, RCPT, DATA, each header (ours
        first), the end of headers, the body and the end of the message, with Postfix's
        macros; the message is delivered as it was."""
        a = self.filter("A")
        d = self.start(a.spec)
        r, qid = self.send(message("stages"), rcpts=[ALICE, BOB])
        self.assertQueued(r, qid)
        got = self.delivered("alice")[0]
        self.assertIn("Subject: stages", got)
        ev = a.events()
        stages = [e["stage"] for e in ev if e["stage"] not in ("abort", "close")]
        self.assertEqual(stages[:6], ["connect", "helo", "mail", "rcpt", "rcpt", "data"])
        self.assertEqual(stages[-3:], ["eoh", "body", "eom"])
        conn = a.events("connect")[0]
        self.assertEqual(conn["hostname"], "unknown")
        self.assertEqual(conn["macros"]["j"], "mx.sorter.test")
        self.assertEqual(conn["macros"]["{daemon_name}"], "mx")
        self.assertEqual(conn["macros"]["{client_addr}"], "127.0.0.1")
        self.assertEqual(conn["macros"]["_"], "unknown [127.0.0.1]")
        self.assertTrue(conn["macros"]["v"].startswith("Sorter"))
        self.assertEqual(a.events("helo")[0]["helo"], "client.remote.test")
        mail = a.events("mail")[0]
        self.assertEqual(mail["sender"], "<%s>" % SENDER)
        self.assertEqual(mail["macros"]["{mail_addr}"], SENDER)
        self.assertEqual(mail["macros"]["i"], qid)
        rcpts = a.events("rcpt")
        self.assertEqual([e["rcpt"] for e in rcpts], ["<%s>" % ALICE, "<%s>" % BOB])
        self.assertEqual(rcpts[1]["macros"]["{rcpt_addr}"], BOB)
        self.assertEqual(rcpts[1]["macros"]["{rcpt_host}"], DOMAIN)
        self.assertEqual(a.events("data")[0]["macros"]["i"], qid)
        names = [e["name"] for e in a.events("header")]
        self.assertEqual(names[0], "Received")
        self.assertEqual(names[1:], ["From", "To", "Subject", "Message-ID", "Date"])
        self.assertEqual(a.events("header")[3]["value"], "stages")
        self.assertEqual(a.events("body")[0]["text"], "hello\r\nworld\r\n")
        self.assertEqual(a.events("eom")[0]["macros"]["i"], qid)
        self.assertIn("(Sorter)", a.events("header")[0]["value"])


class RepliesTest(MilterTestCase):
    def test_refusals_at_every_stage(self):
        """reject: 550 5.7.1; tempfail: 451 4.7.1; a filter's own reply (replycode, one line or
        several) is sent as it gave it, with an enhanced code put in when it has none; the
        refusal of one recipient leaves the others."""
        a = self.filter("A")
        d = self.start(a.spec)
        c = self.session()
        self.assertReply(c.ehlo(), 250)
        # MAIL
        self.assertReply(c.cmd("MAIL FROM:<mail-reject@remote.test>"), 550, "5.7.1")
        self.assertReply(c.cmd("MAIL FROM:<mail-tempfail@remote.test>"), 451, "4.7.1")
        r = c.cmd("MAIL FROM:<mail-replycode_554_5.7.9_not_from_you@remote.test>")
        self.assertEqual(str(r), "554 5.7.9 not from you")
        # RCPT: per recipient, the transaction goes on
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<rcpt-reject@%s>" % DOMAIN), 550, "5.7.1")
        self.assertReply(c.cmd("RCPT TO:<rcpt-tempfail@%s>" % DOMAIN), 451, "4.7.1")
        r = c.cmd("RCPT TO:<rcpt-replycode_450_4.2.1_try_later@%s>" % DOMAIN)
        self.assertEqual(str(r), "450 4.2.1 try later")
        r = c.cmd("RCPT TO:<rcpt-multiline@%s>" % DOMAIN)
        self.assertEqual(r.lines, ["550-5.7.0 first line", "550-5.7.0 second line",
                                   "550 5.7.0 last line"])
        self.assertReply(c.cmd("RCPT TO:<%s>" % ALICE), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(message("partly") + "\r\n.\r\n")
        r = c.reply()
        self.assertReply(r, 250, "2.0.0")
        got = self.delivered("alice")
        self.assertIn("Subject: partly", got[0])
        self.assertTrue(d.log_lines(r"milter-reject: RCPT from \[127\.0\.0\.1\]: 550 5\.7\.1 "
                                    r"Command rejected \(milter inet:127\.0\.0\.1:\d+\); "
                                    r"from=<sender@remote\.test> to=<rcpt-reject@example\.test>"),
                        d.log_tail())

    def test_each_recipient_counts_once_toward_the_expansion_limit(self):
        """A recipient the milter is asked about counts once toward alias_expansion_limit
        when it says yes, and not at all when it refuses it."""
        a = self.filter("A")
        self.start(a.spec, alias_expansion_limit="3")
        c = self.session()
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<rcpt-reject@%s>" % DOMAIN), 550, "5.7.1")
        for rcpt in (ALICE, BOB, CAROL):
            self.assertReply(c.cmd("RCPT TO:<%s>" % rcpt), 250)
        self.assertReply(c.cmd("RCPT TO:<rcpt-accept@%s>" % DOMAIN), 452, "4.5.3")

    def test_refusals_in_the_message(self):
        """DATA, a header, the end of headers, the body and the end of the message: each can
        refuse the message, and the session goes on to the next one."""
        a = self.filter("A")
        d = self.start(a.spec)
        c = self.session()
        self.assertReply(c.ehlo(), 250)
        table = [
            (["X-Test-Header-Action: tempfail"], "b", (451, "4.7.1")),
            (["X-Test-Eoh-Action: replycode 550 5.7.3 eoh says no"], "b",
             "550 5.7.3 eoh says no"),
            ([], "x\r\nBODY-ACTION: reject\r\ny", (550, "5.7.1")),
            (["X-Test-Milter: replycode 552 5.3.4 too fat"], "b", "552 5.3.4 too fat"),
            (["X-Test-Milter: tempfail"], "b", (451, "4.7.1")),
            (["X-Test-Milter: replycode0 550 no enhanced code"], "b",
             "550 5.7.1 no enhanced code"),
        ]
        for headers, body, want in table:
            with self.subTest(headers=headers, body=body):
                r, qid = c.send_message(SENDER, [ALICE], message("refused", body, headers),
                                        ehlo=False)
                self.assertIsNone(qid)
                if isinstance(want, str):
                    self.assertEqual(str(r), want)
                else:
                    self.assertReply(r, *want)
        # DATA itself
        a.set(data="reject")
        c2 = self.session()
        self.assertReply(c2.ehlo(), 250)
        self.assertReply(c2.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c2.cmd("RCPT TO:<%s>" % ALICE), 250)
        self.assertReply(c2.cmd("DATA"), 550, "5.7.1")
        self.assertReply(c2.cmd("RSET"), 250)
        # and after all that, a message goes through on the first session
        r, qid = c.send_message(SENDER, [ALICE], message("after"), ehlo=False)
        self.assertQueued(r, qid)
        self.assertIn("Subject: after", self.delivered("alice")[0])
        self.assertEqual(len(self.node.maildir_messages("alice")), 1)
        self.assertTrue(d.log_lines(r"%s: milter-reject: END-OF-MESSAGE" % "[0-9A-Z]{12}"))

    def test_connect_and_helo(self):
        """A refusal at connect: the client is greeted and can say EHLO, every MAIL gets the
        filter's reply. A refusal at HELO answers that HELO only."""
        a = self.filter("A")
        d = self.start(a.spec)
        a.set(connect="replycode 554 5.7.1 your network is not welcome here")
        c = self.session()
        self.assertReply(c.ehlo(), 250)
        for _ in range(2):
            r = c.cmd("MAIL FROM:<%s>" % SENDER)
            self.assertEqual(str(r), "554 5.7.1 your network is not welcome here")
        self.assertTrue(d.log_lines(r"NOQUEUE: milter-reject: CONNECT from \[127\.0\.0\.1\]: "
                                    r"554 5\.7\.1 your network"))
        a.set(helo="reject")
        c = self.session()
        self.assertReply(c.ehlo(), 550, "5.7.1")
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 503, "5.5.1")
        a.set()
        r, qid = self.send(message("helo ok"))
        self.assertQueued(r, qid)

    def test_accept_and_discard(self):
        """accept: the filter is not asked again for that message (and it goes through);
        discard at RCPT or at the end: 250 for the client, nothing delivered, logged."""
        a = self.filter("A")
        d = self.start(a.spec)
        r, qid = self.send(message("accepted"), sender="mail-accept@remote.test")
        self.assertQueued(r, qid)
        self.assertIn("Subject: accepted", self.delivered("alice")[0])
        self.assertEqual(a.events("rcpt"), [])
        self.assertEqual(a.events("eom"), [])
        r, qid = self.send(message("dropped rcpt"), rcpts=["rcpt-discard@" + DOMAIN, BOB])
        self.assertQueued(r, qid)
        self.assertTrue(wait_until(lambda: d.log_lines(
            qid + r": milter-discard: END-OF-MESSAGE from \[127\.0\.0\.1\]: milter "
            r"inet:127\.0\.0\.1:\d+ triggers DISCARD action"), 5), d.log_tail())
        r, qid2 = self.send(message("dropped eom", headers=["X-Test-Milter: discard"]),
                            rcpts=[BOB])
        self.assertQueued(r, qid2)
        self.assertTrue(wait_until(lambda: d.log_lines(qid2 + ": milter-discard"), 5))
        self.nothing_for("bob")
        self.assertEqual(d.queue_files(), [])


class EditsTest(MilterTestCase):
    def test_header_edits(self):
        """add (at the end), insert (at a position), change, delete: the spool, and so the
        node, holds the edited header section; a value with line breaks is folded with CRLF."""
        a = self.filter("A")
        d = self.start(a.spec)
        edits = ["X-Test-Milter: addheader X-Added added at the end",
                 "X-Test-Milter: insheader 0 X-Top inserted first",
                 "X-Test-Milter: insheader 2 X-Third inserted third",
                 "X-Test-Milter: chgheader Subject 1 changed subject",
                 "X-Test-Milter: delheader X-Remove-Me 1",
                 "X-Test-Milter: chgheader X-Twice 2 second changed",
                 "X-Test-Milter: addheader X-Folded line one\\nline two\\n\\tline three"]
        r, qid = self.send(message("edit me", headers=["X-Remove-Me: gone", "X-Twice: one",
                                                       "X-Twice: two"] + edits))
        self.assertQueued(r, qid)
        got = self.delivered("alice")[0]
        hs = headers_of(got)
        names = [n for n, _ in hs]
        # Dovecot puts Return-Path and Delivered-To on top of what Sorter stored
        stored = names[names.index("X-Top"):]
        self.assertEqual(stored[:3], ["X-Top", "Received", "X-Third"])
        self.assertEqual(stored[-2:], ["X-Added", "X-Folded"])
        self.assertNotIn("X-Remove-Me", names)
        vals = dict(hs)
        self.assertEqual(vals["Subject"], " changed subject")
        self.assertEqual([v for n, v in hs if n == "X-Twice"], [" one", " second changed"])
        self.assertEqual(vals["X-Folded"], " line one\n\tline two\n\tline three")
        self.assertIn("\r\nX-Folded: line one\r\n\tline two\r\n\tline three\r\n",
                      d.ctl("show", qid, check=False).stdout + got.replace("\n", "\r\n"))
        self.assertNotIn("\r\r", got)

    def test_body_replaced_and_streamed(self):
        """The body is replaced (the filter sends it in pieces; bare LFs become CRLF); a
        replacement far larger than one packet is streamed in and stored whole; one past
        message_size_limit refuses the message with 552 5.3.4."""
        a = self.filter("A")
        d = self.start(a.spec, message_size_limit="600k")
        r, qid = self.send(message("new body", headers=[
            "X-Test-Milter: replacebody first line\\nsecond line\\n.starts with a dot\\n"]))
        self.assertQueued(r, qid)
        got = self.delivered("alice")[0]
        self.assertEqual(body_of(got), "first line\nsecond line\n.starts with a dot\n")
        r, qid = self.send(message("big body", headers=["X-Test-Milter: bigbody 500000"]),
                           rcpts=[BOB])
        self.assertQueued(r, qid)
        got = self.delivered("bob")[0]
        lines = body_of(got).split("\n")
        self.assertEqual(len(lines), 501)
        self.assertEqual(set(lines[:-1]), {"x" * 998})
        r, qid = self.send(message("too big", headers=["X-Test-Milter: bigbody 700000"]),
                           rcpts=[CAROL])
        self.assertIsNone(qid)
        self.assertReply(r, 552, "5.3.4")
        self.assertTrue(d.log_lines("exceeds message_size_limit"), d.log_tail())

    def test_envelope_edits(self):
        """The sender changed with its ESMTP parameters (Return-Path at the node; the queue
        file's DSN parameters), a recipient added (delivered, through the router), one deleted
        (not delivered); an added recipient the router refuses is dropped and logged."""
        a = self.filter("A")
        d = self.start(a.spec)
        r, qid = self.send(message("envelope", headers=[
            "X-Test-Milter: chgfrom <bounces@remote.test> RET=HDRS ENVID=abc",
            "X-Test-Milter: addrcpt <%s>" % CAROL,
            "X-Test-Milter: addrcpt <someone@elsewhere.test>",
            "X-Test-Milter: addrcpt <bob@%s> NOTIFY=NEVER" % DOMAIN,
            "X-Test-Milter: delrcpt <%s>" % ALICE]), rcpts=[ALICE])
        self.assertQueued(r, qid)
        for user in ("carol", "bob"):
            got = self.delivered(user)[0]
            self.assertEqual(unfold_header(got.replace("\r\n", "\n"), "Return-Path"),
                             "<bounces@remote.test>")
        self.nothing_for("alice", wait=0.5)
        self.assertTrue(d.log_lines(r"added recipient <someone@elsewhere\.test> refused: "
                                    r"Relay access denied"), d.log_tail())
        log = d.log()
        self.assertIn("from=<bounces@remote.test>", log)
        self.assertIn("nrcpt=2", log)


class QuarantineTest(MilterTestCase):
    def test_quarantine_holds_the_message(self):
        """The message is accepted (250), put on hold with the filter's reason, shown by
        sorterctl queue, not delivered until released."""
        a = self.filter("A")
        d = self.start(a.spec)
        r, qid = self.send(message("suspicious", headers=[
            "X-Test-Milter: quarantine looks like phishing"]))
        self.assertQueued(r, qid)
        self.assertTrue(wait_until(lambda: qid in os.listdir(os.path.join(d.spool, "hold")), 5))
        q = [m for m in d.queue() if m["id"] == qid]
        self.assertEqual(q[0]["state"], "hold")
        self.assertEqual(q[0]["hold_reason"],
                         "milter %s: looks like phishing" % a.spec)
        self.assertIn("(on hold: milter %s: looks like phishing)" % a.spec,
                      d.ctl("queue").stdout)
        self.assertTrue(d.log_lines(qid + r": milter-hold: END-OF-MESSAGE from "
                                    r"\[127\.0\.0\.1\]: milter inet:\S+ looks like phishing"))
        self.nothing_for("alice")
        d.ctl("release", qid)
        self.assertIn("Subject: suspicious", self.delivered("alice")[0])


class ChainTest(MilterTestCase):
    def test_two_milters_in_order(self):
        """Every stage goes to A, then B; B is shown the message as A left it (A's header,
        A's body) and its own edits apply after A's; a refusal by A means B is not asked.
        B asks for leading spaces and answers no header, end-of-header or body step."""
        a = self.filter("A")
        b = self.filter("B", leadspc=True, noreply=True)
        a.set(eom=["addheader X-From-A set by A", "replacebody body from A\\n",
                   "chgheader Subject 1 subject from A"])
        # B asked for leading spaces: the space after the colon is its to send
        b.set(eom=["chgheader X-From-A 1  changed by B", "addheader X-From-B  set by B",
                   "addheader X-No-Space no space"])
        d = self.start("%s, %s" % (a.spec, b.spec))
        r, qid = self.send(message("chain", headers=["X-Spaces:   three spaces"]))
        self.assertQueued(r, qid)
        got = self.delivered("alice")[0]
        vals = dict(headers_of(got))
        self.assertEqual(vals["X-From-A"], " changed by B")
        self.assertEqual(vals["X-From-B"], " set by B")
        self.assertEqual(vals["X-No-Space"], "no space")
        self.assertEqual(vals["Subject"], " subject from A")
        self.assertEqual(body_of(got), "body from A\n")
        # what B was shown
        bh = {e["name"]: e["value"] for e in b.events("header")}
        self.assertEqual(bh["X-From-A"], " set by A")
        self.assertEqual(bh["Subject"], " subject from A")
        self.assertEqual(bh["X-Spaces"], "   three spaces")
        ah = {e["name"]: e["value"] for e in a.events("header")}
        self.assertEqual(ah["X-Spaces"], "three spaces")
        self.assertEqual("".join(e["text"] for e in b.events("body")), "body from A\r\n")
        # order of the envelope stages: A answers first, then B is asked
        self.assertEqual([e["stage"] for e in b.events()][:3], ["connect", "helo", "mail"])
        r = self.session()
        self.assertReply(r.ehlo(), 250)
        self.assertReply(r.cmd("MAIL FROM:<mail-reject@remote.test>"), 550, "5.7.1")
        self.assertEqual(len(a.events("mail")), 2)
        self.assertEqual(len(b.events("mail")), 1)


class FailureTest(MilterTestCase):
    def start_listeners(self, milters_per_listener, **overrides):
        """A sorterd with one mx listener per entry (milters= of each); returns the ports."""
        from harness import Sorterd
        settings = {"failover_node": self.node.endpoint(), "queue_run_delay": "1s",
                    "minimal_backoff_time": "1s", "maximal_backoff_time": "1s", "workers": 1}
        settings.update(overrides)
        d = Sorterd(os.path.join(self.tmp, "d"), start=False, **settings)
        ports = [d.port] + [free_port() for _ in milters_per_listener[1:]]
        d.write_config(listen=["127.0.0.1:%d mx milters=%s" % (p, m)
                               for p, m in zip(ports, milters_per_listener)])
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()
        self.d = d
        return ports

    def test_milter_down_gets_the_default_action(self):
        """Nothing listens where the milter should be: tempfail (the default) refuses MAIL with
        451 4.7.1 (EHLO still works), accept lets mail through without it, reject refuses with
        550 5.7.1; each failure is logged with the milter's name."""
        dead = "inet:127.0.0.1:%d" % free_port()
        ports = self.start_listeners([dead, "{%s,default_action=accept}" % dead,
                                      "{%s,default_action=reject}" % dead])
        c = self.session(ports[0])
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 451, "4.7.1")
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 451, "4.7.1")
        self.assertReply(c.cmd("QUIT"), 221)
        r, qid = self.send(message("no milter"), c=self.session(ports[1]))
        self.assertQueued(r, qid)
        self.assertIn("Subject: no milter", self.delivered("alice")[0])
        c = self.session(ports[2])
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 550, "5.7.1")
        d = self.d
        for action in ("tempfail", "accept", "reject"):
            self.assertTrue(d.log_lines(r"warning: milter %s: connect: Connection refused; "
                                        r"default_action=%s" % (re.escape(dead), action)),
                            d.log_tail())

    def test_silent_dying_and_garbage_milters(self):
        """A milter that never answers gets its default action once its timeout passed (and
        the session goes on); one that dies mid-message, and one that sends nonsense, too."""
        silent_eom = RawMilter("silent", at=b"E")
        silent_mail = RawMilter("silent", at=b"M")
        dies = RawMilter("die", at=b"L")
        garbage = RawMilter("garbage", at=b"H")
        raws = [silent_eom, silent_mail, dies, garbage]
        for r in raws:
            self.addCleanup(r.stop)
        ports = self.start_listeners([
            "{%s,content_timeout=2s}" % silent_eom.spec,
            "{%s,command_timeout=1s,default_action=accept}" % silent_mail.spec,
            dies.spec, garbage.spec])
        # silent at the end of the message: 451 after content_timeout
        c = self.session(ports[0])
        t0 = time.monotonic()
        r, qid = c.send_message(SENDER, [ALICE], message("silent"))
        took = time.monotonic() - t0
        self.assertIsNone(qid)
        self.assertReply(r, 451, "4.7.1")
        self.assertTrue(1.5 <= took < 8, took)
        self.assertReply(c.cmd("NOOP"), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 451, "4.7.1")
        self.assertTrue(self.d.log_lines(r"milter %s: no reply to END-OF-MESSAGE within 2 s; "
                                         r"default_action=tempfail" % re.escape(silent_eom.spec)))
        # silent at MAIL, default accept: MAIL waits 1 s, then the mail goes through
        c = self.session(ports[1])
        t0 = time.monotonic()
        r, qid = c.send_message(SENDER, [BOB], message("accepted anyway"))
        self.assertQueued(r, qid)
        self.assertTrue(0.8 <= time.monotonic() - t0 < 6)
        self.assertIn("Subject: accepted anyway", self.delivered("bob")[0])
        # dies at the first header
        c = self.session(ports[2])
        r, qid = c.send_message(SENDER, [CAROL], message("dies"))
        self.assertIsNone(qid)
        self.assertReply(r, 451, "4.7.1")
        self.assertTrue(self.d.log_lines(r"milter %s: connection closed during HEADER" %
                                         re.escape(dies.spec)), self.d.log_tail())
        # garbage after HELO: the greeting stands, MAIL gets the default action
        c = self.session(ports[3])
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 451, "4.7.1")
        self.assertTrue(self.d.log_lines(r"milter %s: malformed reply 0x7a: an unknown reply" %
                                         re.escape(garbage.spec)), self.d.log_tail())
        self.nothing_for("carol", wait=0.5)

    def test_a_slow_milter_does_not_hold_the_worker(self):
        """One worker; a milter that takes 3 s at the end of the message: meanwhile another
        session on a listener without milters, and another on the same listener, are answered
        at once, and their mail is queued."""
        a = self.filter("A")
        a.set(sleep={"eom": 3})
        ports = self.start_listeners([a.spec, ""])
        result = {}

        def slow():
            t0 = time.monotonic()
            result["reply"], result["qid"] = self.send(message("slow"), c=self.session(ports[0]))
            result["took"] = time.monotonic() - t0

        t = threading.Thread(target=slow)
        t.start()
        wait_until(lambda: a.events("eom"), 10)
        t0 = time.monotonic()
        c = self.session(ports[1])
        self.assertReply(c.ehlo(), 250)
        r, qid = c.send_message(SENDER, [BOB], message("fast"), ehlo=False)
        self.assertQueued(r, qid)
        c2 = self.session(ports[0])
        self.assertReply(c2.ehlo(), 250)
        self.assertReply(c2.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c2.cmd("RCPT TO:<%s>" % CAROL), 250)
        fast = time.monotonic() - t0
        self.assertLess(fast, 1.5)
        self.assertIn("Subject: fast", self.delivered("bob")[0])
        t.join(30)
        self.assertQueued(result["reply"], result["qid"])
        self.assertGreaterEqual(result["took"], 2.9)
        self.assertIn("Subject: slow", self.delivered("alice")[0])


class EndpointTest(MilterTestCase):
    def test_unix_socket_and_inet6(self):
        """The same filter over a unix socket and over IPv6 loopback, one after the other."""
        a = self.filter("A", unix=True)
        b = self.filter("B", inet6=True)
        self.start("%s %s" % (a.spec, b.spec))
        b.set(eom=["addheader X-Inet6 yes"])
        r, qid = self.send(message("over unix", headers=["X-Test-Milter: addheader X-Unix yes"]))
        self.assertQueued(r, qid)
        vals = dict(headers_of(self.delivered("alice")[0]))
        self.assertEqual(vals["X-Unix"], " yes")
        self.assertEqual(vals["X-Inet6"], " yes")

    def test_client_leaves_while_a_milter_thinks(self):
        """The client hangs up while the filter is at the end of the message: nothing is
        queued, the filter hears an abort, and the daemon serves the next client."""
        a = self.filter("A")
        a.set(sleep={"eom": 2})
        d = self.start(a.spec, milter_default_action="accept")
        c = self.session()
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % ALICE), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(message("left") + "\r\n.\r\n")
        self.assertTrue(wait_until(lambda: a.events("eom"), 10))
        c.close()
        self.assertTrue(wait_until(lambda: d.log_lines(r"disconnect from \[127\.0\.0\.1\]"),
                                   5), d.log_tail())
        a.set()
        r, qid = self.send(message("next"), rcpts=[BOB])
        self.assertQueued(r, qid)
        self.assertIn("Subject: next", self.delivered("bob")[0])
        self.assertEqual(self.node.maildir_messages("alice"), [])
        self.assertTrue(wait_until(lambda: len(a.events("close")) >= 1, 10))


class OpenDKIMTest(MilterTestCase):
    """Real OpenDKIM: one instance signs on the submission listener, another verifies on the mx
    listener (per-listener milters=); Python's dkim module checks the signature too."""

    def test_sign_on_submission_verify_on_mx(self):
        from harness import Sorterd
        from test_submission import plain, sorterctl_passwd
        from test_tls import make_cert
        keydir = os.path.join(self.tmp, "keys")
        keyfile, txt = genkey(keydir, DOMAIN, "sel")
        signer = OpenDKIM(os.path.join(self.tmp, "dkim-s"), "s", DOMAIN, "sel", keyfile, txt)
        verifier = OpenDKIM(os.path.join(self.tmp, "dkim-v"), "v", DOMAIN, "sel", keyfile, txt)
        self.addCleanup(OpenDKIM.stop_all, [signer, verifier])
        for o in (signer, verifier):
            o.start()
        cert, key = make_cert(self.tmp)
        maps = os.path.join(self.tmp, "maps")
        os.makedirs(maps)
        auth_map = write_map(build_dir(), os.path.join(maps, "passwd"),
                             {ALICE: sorterctl_passwd(build_dir(), "alice pw")})
        d = Sorterd(os.path.join(self.tmp, "d"), start=False,
                    failover_node=self.node.endpoint(), tls_cert_file=cert, tls_key_file=key,
                    auth_map=auth_map, queue_run_delay="1s", workers=1)
        sub = free_port()
        d.write_config(listen=["127.0.0.1:%d mx milters=%s" % (d.port, verifier.spec),
                               "127.0.0.1:%d submission milters=%s" % (sub, signer.spec)])
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()
        self.d = d

        # alice submits a message to bob: it is signed
        c = self.session(sub)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.starttls(), 220)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("AUTH PLAIN " + plain(ALICE, "alice pw")), 235)
        body = "Signed by OpenDKIM.\r\n\r\nA second paragraph,\r\n  with spaces.\r\n"
        folded = ["X-Folded: a header value that goes on\r\n\tand on, folded"]
        r, qid = c.send_message(ALICE, [BOB], message("dkim", body, folded, sender=ALICE, to=BOB),
                                ehlo=False)
        self.assertQueued(r, qid)
        signed = self.delivered("bob")[0].replace("\r\n", "\n").replace("\n", "\r\n")
        sig = unfold_header(signed.replace("\r\n", "\n"), "DKIM-Signature")
        self.assertIsNotNone(sig, signed)
        self.assertIn("d=%s" % DOMAIN, sig)
        self.assertIn("s=sel", sig)
        signed_names = re.search(r"\bh=([^;]*)", sig).group(1).replace(" ", "").lower()
        self.assertIn("x-folded", signed_names.split(":"))      # simple/simple, folded
        ok, out = dkim_verify(signed.encode(), txt)
        self.assertTrue(ok, out)

        # the signed message arrives at the mx listener: the verifier says pass
        c = self.session(d.port)
        r, qid = c.send_message("mailer@remote.test", [CAROL], signed.rstrip("\r\n"))
        self.assertQueued(r, qid)
        got = self.delivered("carol")[0]
        ar = unfold_header(got.replace("\r\n", "\n"), "Authentication-Results")
        self.assertIsNotNone(ar, got)
        self.assertRegex(ar, r"^verifier\.test;.*dkim=pass")
        # a body changed on the way does not pass
        tampered = signed.replace("A second paragraph", "A forged paragraph")
        ok, _ = dkim_verify(tampered.encode(), txt)
        self.assertFalse(ok)
        r, qid = c.send_message("mailer@remote.test", [ALICE], tampered.rstrip("\r\n"),
                                ehlo=False)
        self.assertQueued(r, qid)
        got = self.delivered("alice")[0]
        ar = unfold_header(got.replace("\r\n", "\n"), "Authentication-Results")
        self.assertNotIn("dkim=pass", ar)
        self.assertIn("dkim=fail", ar)


class StreamTest(MilterTestCase):
    """The content streams into the spool as it arrives; the filters read it back, and an
    edited message is committed in its place."""

    def test_big_message_with_a_header_edit(self):
        """A message of many chunks: the filter is shown the whole body, and the edited queue
        file holds the new header and every byte of the body."""
        a = self.filter("A")
        d = self.start(a.spec)
        lines = ["line %06d %s" % (i, "y" * 60) for i in range(6000)]     # ~430 KB
        body = "\r\n".join(lines)
        r, qid = self.send(message("big", body, ["X-Test-Milter: addheader X-Big seen"]))
        self.assertQueued(r, qid)
        got = self.delivered("alice")[0]
        self.assertEqual(dict(headers_of(got))["X-Big"], " seen")
        self.assertEqual(body_of(got).rstrip("\n"), "\n".join(lines))
        self.assertEqual(sum(e["len"] for e in a.events("body")), len(body) + 2)
        self.assertTrue(all(e["len"] <= 65535 for e in a.events("body")))
        # nothing left behind: once stopped, tmp/ is empty (the edit's file went into
        # incoming/, the slot the original was written into is free again)
        d.stop()
        self.assertEqual(os.listdir(os.path.join(d.spool, "tmp")), [])

    def test_bdat(self):
        """BDAT: the first chunk is the DATA stage (its refusal is that chunk's reply, the
        chunk read and dropped); a chunked message is filtered and edited like any other."""
        a = self.filter("A")
        d = self.start(a.spec)
        a.set(data="replycode 554 5.7.1 no chunks today")
        c = self.session()
        self.assertIn("CHUNKING", c.ehlo().keywords())
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % ALICE), 250)
        chunk = message("chunked").encode() + b"\r\n"
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        self.assertEqual(str(c.reply()), "554 5.7.1 no chunks today")
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("NOOP"), 250)    # the chunk's octets were not commands
        a.set()
        c = self.session()
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % ALICE), 250)
        content = message("chunked", headers=["X-Test-Milter: addheader X-Chunks two"]).encode()
        first, second = content[:40], content[40:] + b"\r\n"
        c.send(b"BDAT %d\r\n" % len(first) + first)
        self.assertReply(c.reply(), 250)
        c.send(b"BDAT %d LAST\r\n" % len(second) + second)
        r = c.reply()
        self.assertReply(r, 250, "2.0.0")
        got = self.delivered("alice")[0]
        self.assertEqual(dict(headers_of(got))["X-Chunks"], " two")
        self.assertEqual(len(a.events("data")), 2)
