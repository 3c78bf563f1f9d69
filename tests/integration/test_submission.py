"""test_submission.py - the submission listeners (587 with STARTTLS, 465 with implicit TLS) and
AUTH (RFC 4954): PLAIN and LOGIN against auth_map hashes made by `sorterctl passwd`, the
replies for every way a login can go wrong, the brute-force brakes, the sender a login may use,
relaying after AUTH and only after AUTH, and real clients: swaks, smtplib, msmtp and a private
Postfix with its SASL client. Local mail lands in a real Dovecot node, remote mail at an
smtp-sink standing in for the next hop."""

import base64
import os
import re
import shutil
import smtplib
import statistics
import subprocess
import tempfile
import time
import unittest

from dovecot import DovecotNode, dovecot_missing
from harness import (Client, Sorterd, SorterTestCase, build_dir, client_tls_context,
                     free_port, wait_until, write_map)
from postfix import PrivatePostfix, postfix_missing
from smtpsink import SmtpSink, free_port_on, smtp_sink_missing
from test_tls import make_cert

ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"          # in user_map, no login
SALES = "sales@example.test"          # a shared address alice may send as
ALICE_PW = "alice pass phrase"
BOB_PW = "bob-secret"
REMOTE = "friend@remote.test"
WAIT = 30


def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def plain(user, pw, authzid=""):
    return b64("%s\0%s\0%s" % (authzid, user, pw))


def sorterctl_passwd(build, pw):
    r = subprocess.run([os.path.join(build, "sorterctl"), "passwd"], input=pw + "\n",
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError("sorterctl passwd: %s" % r.stderr)
    return r.stdout.strip()


def ours(message):
    """Sorter's own Received: header of a delivered message, unfolded."""
    for h in re.findall(r"(?ms)^Received:.*?(?=^\S)", message.replace("\r\n", "\n")):
        if "(Sorter)" in h:
            return re.sub(r"\s+", " ", h)
    raise AssertionError("no Received: header of Sorter's in:\n" + message)


class SubmissionTestCase(SorterTestCase):
    @classmethod
    def setUpClass(cls):
        cls.certdir = tempfile.mkdtemp(prefix="sorter-it-sub-")
        cls.cert, cls.key = make_cert(cls.certdir)
        cls.build = build_dir()
        cls.alice_hash = sorterctl_passwd(cls.build, ALICE_PW)
        # a hash of another kind: whatever libcrypt verifies is accepted
        cls.bob_hash = subprocess.run(["openssl", "passwd", "-6", BOB_PW], capture_output=True,
                                      text=True, check=True).stdout.strip()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certdir, ignore_errors=True)

    def setUp(self):
        missing = dovecot_missing() or smtp_sink_missing()
        if missing:
            self.skipTest(missing)
        os.chmod(self.tmp, 0o755)
        self.node = DovecotNode(os.path.join(self.tmp, "node-a"), free_port(),
                                ["alice", "bob", "carol", "sales"], name="node-a")
        self.addCleanup(self.node.stop)
        self.daemons.append(self.node)
        self.node.start()
        self.sink = SmtpSink(os.path.join(self.tmp, "sink"), "127.0.0.1",
                             free_port_on("127.0.0.1"))
        self.addCleanup(self.sink.stop)
        self.sink.start()
        self.maps = os.path.join(self.tmp, "maps")
        os.makedirs(self.maps)

    def start(self, **overrides):
        m = self.maps
        settings = {
            "user_map": write_map(self.build, os.path.join(m, "user_map"),
                                  {ALICE: "node-a", BOB: "node-a", CAROL: "node-a",
                                   SALES: "node-a"}),
            "node_map": write_map(self.build, os.path.join(m, "node_map"),
                                  {"node-a": self.node.endpoint()}),
            "auth_map": write_map(self.build, os.path.join(m, "passwd"),
                                  {ALICE: self.alice_hash, BOB: self.bob_hash}),
            "sender_login_map": write_map(self.build, os.path.join(m, "senders"),
                                          {SALES: "%s, %s" % (BOB, ALICE)}),
            "relay_host": "[127.0.0.1]:%d" % self.sink.port,
            "tls_cert_file": self.cert,
            "tls_key_file": self.key,
            "queue_run_delay": "1s", "minimal_backoff_time": "1s", "maximal_backoff_time": "2s",
        }
        settings.update(overrides)
        d = Sorterd(os.path.join(self.tmp, "d"), start=False, **settings)
        self.sub_port = free_port()
        self.subs_port = free_port()
        d.write_config(listen=["127.0.0.1:%d mx" % d.port,
                               "127.0.0.1:%d submission" % self.sub_port,
                               "127.0.0.1:%d submissions" % self.subs_port])
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()
        self.d = d
        return d

    # ---- clients ----
    def on(self, port, greet=True):
        c = Client(port)
        self.addCleanup(c.close)
        if greet:
            self.assertReply(c.reply(), 220)
        return c

    def tls587(self):
        c = self.on(self.sub_port)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.starttls(), 220)
        r = c.ehlo()
        self.assertReply(r, 250)
        return c, r

    def logged_in(self, user=ALICE, pw=ALICE_PW):
        c, _ = self.tls587()
        self.assertReply(c.cmd("AUTH PLAIN " + plain(user, pw)), 235, "2.7.0")
        return c

    def tok(self):
        return "tok-%d-%d" % (os.getpid(), time.monotonic_ns())

    def msg(self, tok, frm=ALICE, to=BOB):
        return ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@example.test>\r\n"
                "\r\nbody %s\r\n" % (frm, to, tok, tok, tok))

    def delivered(self, user, tok, timeout=WAIT):
        got = wait_until(lambda: [m for m in self.node.maildir_messages(user) if tok in m],
                         timeout, interval=0.1)
        self.assertTrue(got, "%s not delivered to %s; log:\n%s" % (tok, user, self.d.log_tail()))
        return [m for m in self.node.maildir_messages(user) if tok in m][0]

    def sink_got(self, tok, timeout=WAIT):
        def find():
            return [m for m in self.sink.messages() if tok.encode() in m["data"]]
        self.assertTrue(wait_until(find, timeout, interval=0.1),
                        "%s never reached the next hop; log:\n%s" % (tok, self.d.log_tail()))
        return find()[0]


class RolesTest(SubmissionTestCase):
    def test_config_refuses_submission_without_auth_map(self):
        conf = os.path.join(self.tmp, "bad.conf")
        with open(conf, "w") as f:
            f.write("spool_dir = %s\nlisten = 127.0.0.1:2525 mx\n"
                    "listen = 127.0.0.1:2587 submission\ntls_cert_file = %s\n"
                    "tls_key_file = %s\n" % (os.path.join(self.tmp, "s"), self.cert, self.key))
        r = subprocess.run([os.path.join(self.build, "sorterd"), "-t", "-c", conf],
                           capture_output=True, text=True, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("bad.conf:3:", r.stderr)
        self.assertIn("auth_map", r.stderr)

    def test_config_check_opens_auth_maps(self):
        conf = os.path.join(self.tmp, "missing.conf")
        with open(conf, "w") as f:
            f.write("spool_dir = %s\nlisten = 127.0.0.1:2525 mx\n"
                    "listen = 127.0.0.1:2587 submission\ntls_cert_file = %s\n"
                    "tls_key_file = %s\nauth_map = hash:%s\n"
                    % (os.path.join(self.tmp, "s"), self.cert, self.key,
                       os.path.join(self.tmp, "no-such-passwd")))
        r = subprocess.run([os.path.join(self.build, "sorterd"), "-t", "-c", conf],
                           capture_output=True, text=True, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("missing.conf:6: auth_map hash:", r.stderr)

    def test_auth_offered_only_on_submission_under_tls(self):
        self.start()
        mx = self.on(self.d.port)
        self.assertNotIn("AUTH", mx.ehlo().keywords())
        self.assertReply(mx.starttls(), 220)
        self.assertNotIn("AUTH", mx.ehlo().keywords())
        self.assertReply(mx.cmd("AUTH PLAIN " + plain(ALICE, ALICE_PW)), 503, "5.5.1")

        c = self.on(self.sub_port)
        kw = c.ehlo().keywords()
        self.assertIn("STARTTLS", kw)
        self.assertNotIn("AUTH", kw)
        self.assertReply(c.cmd("AUTH PLAIN " + plain(ALICE, ALICE_PW)), 530, "5.7.0")
        r = c.cmd("MAIL FROM:<%s>" % ALICE)
        self.assertReply(r, 530, "5.7.0")
        self.assertIn("STARTTLS", r.texts[-1])
        c, r = self.tls587()
        self.assertIn("AUTH PLAIN LOGIN", [l[4:] for l in r.lines])
        r = c.cmd("MAIL FROM:<%s>" % ALICE)
        self.assertReply(r, 530, "5.7.0")
        self.assertIn("Authentication required", r.texts[-1])

    def test_starttls_injection_on_587(self):
        self.start()
        c = self.on(self.sub_port)
        self.assertReply(c.ehlo(), 250)
        # an AUTH smuggled behind STARTTLS in the same packet must never be answered
        c.send("STARTTLS\r\nAUTH PLAIN %s\r\n" % plain(ALICE, ALICE_PW))
        self.assertReply(c.reply(), 220)
        c.handshake()
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % ALICE), 530, "5.7.0")

    def test_465_implicit_tls(self):
        self.start()
        c = Client(self.subs_port)
        self.addCleanup(c.close)
        c.handshake()
        self.assertReply(c.reply(), 220)
        r = c.ehlo()
        self.assertNotIn("STARTTLS", r.keywords())
        self.assertIn("AUTH", r.keywords())
        self.assertReply(c.cmd("AUTH PLAIN " + plain(ALICE, ALICE_PW)), 235)
        tok = self.tok()
        r, qid = c.send_message(ALICE, [BOB], self.msg(tok), ehlo=False)
        self.assertReply(r, 250)
        m = self.delivered("bob", tok)
        self.assertRegex(ours(m), r"with ESMTPSA id %s" % qid)

    def test_465_plaintext_client_gets_nothing(self):
        self.start()
        c = Client(self.subs_port)
        self.addCleanup(c.close)
        c.send("EHLO plain.client.test\r\n")
        self.assertTrue(c.closed(timeout=10), "a plaintext client on 465 was answered: %r" % c.buf)
        self.assertTrue(wait_until(lambda: self.d.log_lines(r"TLS error from \[127\.0\.0\.1\]"), 5),
                        self.d.log_tail())


class AuthTest(SubmissionTestCase):
    def test_plain_with_and_without_initial_response(self):
        self.start()
        c, _ = self.tls587()
        self.assertReply(c.cmd("AUTH PLAIN"), 334)
        self.assertReply(c.cmd(plain(ALICE, ALICE_PW)), 235, "2.7.0")
        c, _ = self.tls587()
        self.assertReply(c.cmd("AUTH PLAIN ="), 334)
        self.assertReply(c.cmd(plain(ALICE, ALICE_PW)), 235)
        # the domain of a login is case-insensitive; an authzid equal to the user is allowed
        c, _ = self.tls587()
        self.assertReply(c.cmd("AUTH plain " + plain("alice@EXAMPLE.test", ALICE_PW, ALICE)), 235)

    def test_login_mechanism(self):
        self.start()
        c, _ = self.tls587()
        r = c.cmd("AUTH LOGIN")
        self.assertEqual(r.lines, ["334 VXNlcm5hbWU6"])
        self.assertEqual(c.cmd(b64(BOB)).lines, ["334 UGFzc3dvcmQ6"])
        self.assertReply(c.cmd(b64(BOB_PW)), 235, "2.7.0")
        c, _ = self.tls587()
        self.assertEqual(c.cmd("AUTH LOGIN " + b64(ALICE)).lines, ["334 UGFzc3dvcmQ6"])
        self.assertReply(c.cmd(b64(ALICE_PW)), 235)

    def test_failures_and_errors(self):
        self.start(smtpd_client_auth_failure_limit=100)
        c, _ = self.tls587()
        wrong = c.cmd("AUTH PLAIN " + plain(ALICE, "not it"))
        self.assertReply(wrong, 535, "5.7.8")
        unknown = c.cmd("AUTH PLAIN " + plain("nobody@example.test", "not it"))
        self.assertEqual(wrong.lines, unknown.lines)
        c, _ = self.tls587()
        self.assertReply(c.cmd("AUTH PLAIN " + plain(ALICE, ALICE_PW, authzid=BOB)), 535, "5.7.8")
        self.assertReply(c.cmd("AUTH PLAIN"), 334)
        self.assertReply(c.cmd("*"), 501, "5.0.0")
        self.assertReply(c.cmd("AUTH PLAIN not*base64"), 501, "5.5.2")
        self.assertReply(c.cmd("AUTH LOGIN"), 334)
        self.assertReply(c.cmd("QUJD="), 501, "5.5.2")
        self.assertReply(c.cmd("AUTH CRAM-MD5"), 504, "5.5.4")
        self.assertReply(c.cmd("AUTH PLAIN " + "A" * 4096), 500, "5.5.6")
        self.assertReply(c.cmd("AUTH LOGIN"), 334)
        self.assertReply(c.cmd("B" * 4096), 500, "5.5.6")
        self.assertReply(c.cmd("NOOP"), 250)          # the exchange is over, the session is not
        self.assertReply(c.cmd("AUTH PLAIN " + plain(ALICE, ALICE_PW)), 235)
        self.assertReply(c.cmd("AUTH PLAIN " + plain(ALICE, ALICE_PW)), 503, "5.5.1")
        self.assertReply(c.cmd("MAIL FROM:<%s>" % ALICE), 250)
        self.assertReply(c.cmd("AUTH PLAIN " + plain(BOB, BOB_PW)), 503, "5.5.1")
        # no password and no base64 blob in the log
        log = self.d.log()
        for secret in (ALICE_PW, BOB_PW, plain(ALICE, ALICE_PW), b64(ALICE_PW), "not it"):
            self.assertNotIn(secret, log)
        self.assertIn("SASL PLAIN authentication failed, sasl_username=alice@example.test", log)

    def test_unknown_user_costs_as_much_as_a_wrong_password(self):
        self.start(smtpd_client_auth_failure_limit=1000)

        def timed(user):
            c, _ = self.tls587()
            t0 = time.monotonic()
            self.assertReply(c.cmd("AUTH PLAIN " + plain(user, "wrong")), 535)
            return time.monotonic() - t0
        # taken in turns, each first in every other pair, so that the machine's load (other
        # tests run beside this one) and the order weigh on both alike
        pairs = []
        for i in range(9):
            if i % 2:
                u = timed("ghost@example.test")
                pairs.append((timed(ALICE), u))
            else:
                pairs.append((timed(ALICE), timed("ghost@example.test")))
        known = statistics.median(k for k, _ in pairs)
        unknown = statistics.median(u for _, u in pairs)
        # without the stand-in hash an unknown login answers in well under a tenth of the time
        self.assertGreater(unknown, known * 0.4, "known %.4fs, unknown %.4fs" % (known, unknown))

    def test_third_failure_ends_the_session(self):
        self.start(smtpd_client_auth_failure_limit=100)
        c, _ = self.tls587()
        for _ in range(2):
            self.assertReply(c.cmd("AUTH PLAIN " + plain(ALICE, "bad")), 535)
        self.assertReply(c.cmd("AUTH PLAIN " + plain(ALICE, "bad")), 535)
        self.assertReply(c.reply(), 421, "4.7.0")
        self.assertTrue(c.closed())

    def test_guesser_is_slowed_down_across_sessions(self):
        self.start(smtpd_client_auth_failure_limit=2)
        for _ in range(2):
            c, _ = self.tls587()
            self.assertReply(c.cmd("AUTH PLAIN " + plain(ALICE, "bad")), 535)
            c.close()
        times = []
        for _ in range(2):
            c, _ = self.tls587()
            t0 = time.monotonic()
            # over the limit even the right password waits before its answer
            self.assertReply(c.cmd("AUTH PLAIN " + plain(BOB, "bad")), 535)
            times.append(time.monotonic() - t0)
            c.close()
        self.assertGreaterEqual(times[0], 0.9, times)
        self.assertGreaterEqual(times[1], 1.9, times)
        # a quiet session meanwhile is not held up
        c = self.on(self.d.port)
        t0 = time.monotonic()
        self.assertReply(c.ehlo(), 250)
        self.assertLess(time.monotonic() - t0, 0.9)


class SenderAndRelayTest(SubmissionTestCase):
    def test_sender_must_belong_to_the_login(self):
        self.start()
        c = self.logged_in()
        r = c.cmd("MAIL FROM:<%s>" % BOB)
        self.assertReply(r, 553, "5.7.1")
        self.assertIn("not owned by user %s" % ALICE, r.texts[-1])
        self.assertReply(c.cmd("MAIL FROM:<>"), 553, "5.7.1")
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SALES), 250)     # sender_login_map grants it
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("MAIL FROM:<Alice@Example.Test>"), 250)

    def test_submitted_mail_local_and_remote(self):
        self.start()
        c = self.logged_in()
        tok = self.tok()
        r, qid = c.send_message(ALICE, [BOB, REMOTE], self.msg(tok, to=REMOTE), ehlo=False)
        self.assertReply(r, 250)
        m = self.delivered("bob", tok)
        rec = ours(m)
        self.assertRegex(rec, r"with ESMTPSA id %s" % qid)
        self.assertRegex(rec, r"using TLSv1\.[23] with cipher")
        got = self.sink_got(tok)
        self.assertEqual(got["sender"], ALICE)
        self.assertIn(REMOTE, got["rcpts"])
        self.assertTrue(self.d.log_lines(r"%s: from=<%s>.*sasl_method=PLAIN, "
                                         r"sasl_username=%s" % (qid, ALICE, re.escape(ALICE))))

    def test_no_relay_without_auth(self):
        self.start()
        c = self.on(self.d.port)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<someone@remote.test>"), 250)
        for rcpt, code in ((REMOTE, 554), ('"friend@remote.test"@example.test', 550),
                           ("friend%remote.test@example.test", 550),
                           ("remote.test!friend@example.test", 550),
                           ("@example.test:friend@remote.test", 554)):
            r = c.cmd("RCPT TO:<%s>" % rcpt)
            self.assertReply(r, code, msg="%s: %s" % (rcpt, r))
        for port in (self.sub_port, self.subs_port):
            c = Client(port)
            self.addCleanup(c.close)
            if port == self.subs_port:
                c.handshake()
            self.assertReply(c.reply(), 220)
            self.assertReply(c.ehlo(), 250)
            if port == self.sub_port:
                self.assertReply(c.starttls(), 220)
                self.assertReply(c.ehlo(), 250)
            self.assertReply(c.cmd("MAIL FROM:<someone@remote.test>"), 530, "5.7.0")
            self.assertReply(c.cmd("RCPT TO:<%s>" % REMOTE), 503)


class RealClientsTest(SubmissionTestCase):
    def test_swaks_plain_login_and_tls_on_connect(self):
        self.start()
        for extra, port in ((["--tls", "--auth", "PLAIN"], self.sub_port),
                            (["--tls", "--auth", "LOGIN"], self.sub_port),
                            (["--tls-on-connect", "--auth", "PLAIN"], self.subs_port)):
            tok = self.tok()
            r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(port),
                                "--from", ALICE, "--to", BOB, "--auth-user", ALICE,
                                "--auth-password", ALICE_PW, "--header", "Subject: " + tok,
                                "--body", tok] + extra,
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.delivered("bob", tok)
        r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(self.sub_port),
                            "--from", ALICE, "--to", BOB, "--auth-user", ALICE,
                            "--auth-password", "wrong", "--tls", "--auth", "PLAIN"],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("535 5.7.8", r.stdout)

    def test_smtplib(self):
        self.start()
        tok = self.tok()
        from email.message import EmailMessage
        m = EmailMessage()
        m["From"], m["To"], m["Subject"] = ALICE, REMOTE, tok
        m.set_content("body " + tok)
        with smtplib.SMTP("127.0.0.1", self.sub_port, timeout=30) as s:
            s.starttls(context=client_tls_context())
            s.login(ALICE, ALICE_PW)
            s.send_message(m)
        self.sink_got(tok)
        with smtplib.SMTP_SSL("127.0.0.1", self.subs_port, timeout=30,
                              context=client_tls_context()) as s:
            with self.assertRaises(smtplib.SMTPAuthenticationError):
                s.login(ALICE, "wrong")

    def test_msmtp(self):
        self.start()
        tok = self.tok()
        rc = os.path.join(self.tmp, "msmtprc")
        with open(rc, "w") as f:
            f.write("account default\nhost 127.0.0.1\nport %d\ntls on\ntls_starttls on\n"
                    "tls_certcheck off\nauth on\nuser %s\npassword %s\nfrom %s\n"
                    % (self.sub_port, ALICE, ALICE_PW, ALICE))
        os.chmod(rc, 0o600)
        r = subprocess.run(["msmtp", "-C", rc, BOB], input=self.msg(tok).replace("\r\n", "\n"),
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.delivered("bob", tok)

    def test_postfix_relays_through_sorterd_with_sasl(self):
        missing = postfix_missing()
        if missing:
            self.skipTest(missing)
        self.start()
        pdir = os.path.join(self.tmp, "postfix")
        os.makedirs(os.path.join(pdir, "etc"))
        pwmap = os.path.join(pdir, "etc", "sasl_passwd")
        with open(pwmap, "w") as f:
            f.write("[127.0.0.1]:%d %s:%s\n" % (self.sub_port, ALICE, ALICE_PW))
        pf = PrivatePostfix(pdir, free_port(), main={
            "relayhost": "[127.0.0.1]:%d" % self.sub_port,
            "smtp_sasl_auth_enable": "yes",
            "smtp_sasl_password_maps": "texthash:" + pwmap,
            "smtp_sasl_security_options": "noanonymous",
            "smtp_tls_security_level": "encrypt",
            "myorigin": "example.test",
        })
        self.addCleanup(pf.stop)
        pf.start()
        toks = [self.tok() for _ in range(3)]
        for tok in toks:
            with smtplib.SMTP("127.0.0.1", pf.port, timeout=30) as s:
                s.sendmail(ALICE, [BOB], self.msg(tok).encode())
        for tok in toks:
            self.delivered("bob", tok, timeout=60)
        self.assertTrue(wait_until(lambda: pf.log().count("status=sent") >= 3, 30), pf.log())
        self.assertNotIn("status=deferred", pf.log())
        # Postfix's SASL client logged in (it may carry several messages per session)
        self.assertTrue(self.d.log_lines(r"AUTH ok, sasl_method=PLAIN, "
                                         r"sasl_username=alice@example\.test"))
        self.assertEqual(len(self.d.log_lines(r"from=<alice@example\.test>.*"
                                              r"sasl_username=alice@example\.test")), 3)


if __name__ == "__main__":
    unittest.main()
