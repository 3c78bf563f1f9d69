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


if __name__ == "__main__":
    import unittest
    unittest.main()
