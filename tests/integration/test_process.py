"""test_process.py - sorterd's process tree: SIGTERM drains the sessions and exits 0, SIGHUP
reloads the config for new sessions without dropping old ones, a killed worker is replaced,
`sorterd -t` reports FILE:LINE (for every map it names too), and a log sink that never drains does not hold up mail."""

import os
import signal
import socket
import time
import unittest

from harness import (LOCAL_DOMAIN, Client, Reply, SMTPClosed, SorterTestCase, blast, build_dir,
                     check_config, current_user, join_all, message, pid_alive, wait_until,
                     write_map)

RCPT = "user@" + LOCAL_DOMAIN
SENDER = "sender@remote.test"


def greeting_or_refusal(port):
    """'refused', 'closed', or the greeting Reply of a new connection."""
    try:
        c = Client(port, timeout=5)
    except ConnectionRefusedError:
        return "refused"
    with c:
        try:
            r = c.reply()
        except (SMTPClosed, ConnectionError):
            return "closed"
        except socket.timeout:
            return "silent"
        if r.code == 220:
            c.cmd("QUIT")
        return r


class SignalTest(SorterTestCase):
    def test_sigterm_drains(self):
        d = self.sorterd()
        c = self.connect(d)
        self.assertEqual(c.ehlo().code, 250)
        self.assertReply(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(message("draining", "first half\r\n"))
        os.kill(d.pid, signal.SIGTERM)
        # new connections are refused once the master has passed the word on
        def not_greeted():
            o = greeting_or_refusal(d.port)
            return None if isinstance(o, Reply) and o.code == 220 else o
        outcome = wait_until(not_greeted, 5, interval=0.2)
        self.assertIsNotNone(outcome, "new sessions still greeted 5 s after SIGTERM")
        if isinstance(outcome, Reply):
            self.assertEqual(outcome.code, 421, str(outcome))
        self.assertTrue(d.running(), "sorterd exited with a transaction in progress")
        # the session in progress finishes its message and gets its 250
        c.send("second half\r\n.\r\n")
        r = c.reply(timeout=30)
        self.assertReply(r, 250, "2.0.0")
        # the transaction is over: the server may end the session now (421) or at QUIT
        try:
            c.send("QUIT\r\n")
        except OSError:
            pass
        r = c.reply()
        self.assertIn((r.code, r.enhanced), [(221, "2.0.0"), (421, "4.3.2")], str(r))
        self.assertTrue(c.closed())
        c.close()
        d.proc.wait(20)
        self.assertEqual(d.proc.returncode, 0)
        self.assertEqual(len(d.queue()), 1)
        self.assertEqual([k for k in d.known_children if pid_alive(k)], [],
                         "children outlive the master")

    def test_sigterm_idle_exits(self):
        d = self.sorterd()
        kids = d.children()
        self.assertGreaterEqual(len(kids), 2, "expected 2 workers, saw %s" % kids)
        os.kill(d.pid, signal.SIGTERM)
        d.proc.wait(15)
        self.assertEqual(d.proc.returncode, 0)
        self.assertTrue(wait_until(lambda: not any(pid_alive(k) for k in kids), 5))

    def test_sighup_reload(self):
        d = self.sorterd(message_size_limit=10000)
        old = self.connect(d)
        self.assertEqual(old.ehlo().keywords().get("SIZE"), "10000")
        d.reload(message_size_limit=20000)

        def new_size():
            # a session greeted by a worker that is being replaced may be told 421: retry
            try:
                with Client(d.port) as c:
                    c.reply()
                    return c.ehlo().keywords().get("SIZE") == "20000"
            except (OSError, SMTPClosed, AssertionError):
                return False
        self.assertTrue(wait_until(new_size, 10, interval=0.2), "SIZE not 20000 after SIGHUP")
        # the session opened before the reload was not dropped
        self.assertReply(old.cmd("NOOP"), 250, "2.0.0")
        r, qid = old.send_message(SENDER, [RCPT], message("after reload"), ehlo=False)
        self.assertQueued(r, qid)
        self.assertTrue(d.running())

    def test_sighup_bad_config_keeps_running(self):
        d = self.sorterd(message_size_limit=10000)
        with open(d.conf_path, "a") as f:
            f.write("no_such_key = 1\n")
        os.kill(d.pid, signal.SIGHUP)
        time.sleep(1)
        self.assertTrue(d.running(), "a bad config on reload stopped sorterd")
        c = self.connect(d)
        self.assertEqual(c.ehlo().keywords().get("SIZE"), "10000")

    def test_worker_restart(self):
        d = self.sorterd(workers=2)
        before = d.children()
        self.assertGreaterEqual(len(before), 2)
        victim = self.pick_worker(before)
        os.kill(victim, signal.SIGKILL)
        def replaced():
            kids = d.children()
            return kids if victim not in kids and len(kids) == len(before) else None
        after = wait_until(replaced, 10)
        self.assertIsNotNone(after, "no replacement for worker %d: %s" % (victim, d.children()))
        self.assertEqual(len(set(after) - set(before)), 1)
        # mail still flows, through every worker
        for i in range(6):
            with Client(d.port) as c:
                self.assertEqual(c.reply().code, 220)
                r, qid = c.send_message(SENDER, [RCPT], message("after restart %d" % i))
                self.assertQueued(r, qid)
        self.assertEqual(len(d.queue()), 6)
        self.assertTrue(d.running())

    @staticmethod
    def pick_worker(kids):
        """A child whose command line names smtpd, else the first one."""
        for k in kids:
            try:
                with open("/proc/%d/cmdline" % k, "rb") as f:
                    if b"smtpd" in f.read():
                        return k
            except OSError:
                pass
        return kids[0]


class ConfigCheckTest(SorterTestCase):
    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def base(self):
        return ("hostname = mx.sorter.test\n"
                "spool_dir = %s\n"
                "user = %s\n"
                "listen = 127.0.0.1:2525 mx\n"
                "local_domains = %s\n" % (os.path.join(self.tmp, "spool"), current_user(),
                                           LOCAL_DOMAIN))

    def test_good_config(self):
        path = self.write("good.conf", self.base() + "# a comment\n\nmessage_size_limit = 100000\n")
        rc, out = check_config(build_dir(), path)
        self.assertEqual(rc, 0, out)

    def test_bad_configs(self):
        # (lines added after the 5 base lines, the line number to be named)
        table = [
            ("bogus_key = 1\n", 6),
            ("# comment\nsmtpd_line_limit = 100\n", 7),
            ("message_size_limit = lots\n", 6),
            ("smtpd_timeout = 5 fortnights\n", 6),
            ("workers = -1\n", 6),
            ("listen = 127.0.0.1 mx\n", 6),
            ("listen = 127.0.0.1:25 nosuchrole\n", 6),
            ("log = carrier-pigeon\n", 6),
            ("just some words\n", 6),
            # one bound for workers, the table's: twice it in process slots for a reload
            ("workers = 16\n", 6),
            ("workers = 64\n", 6),
            # a PROXY listener without the proxies it may trust
            ("listen = 127.0.0.1:2526 mx proxy=yes\n", 6),
            # milters the client could not reach without a lookup, or do not parse
            ("smtpd_milters = inet:localhost:8891\n", 6),
            ("milter_default_action = bounce\n", 6),
            ("listen = 127.0.0.1:2526 mx milters=tcp:127.0.0.1:8891\n", 6),
            ("milter_connect_macros = j {not a macro}\n", 6),
        ]
        for i, (extra, line) in enumerate(table):
            with self.subTest(extra=extra):
                path = self.write("bad%d.conf" % i, self.base() + extra)
                rc, out = check_config(build_dir(), path)
                self.assertEqual(rc, 1, out)
                self.assertIn("%s:%d:" % (path, line), out)

    def test_workers_at_the_bound(self):
        path = self.write("workers.conf", self.base() + "workers = 15\n")
        rc, out = check_config(build_dir(), path)
        self.assertEqual(rc, 0, out)

    def test_every_map_is_opened(self):
        """A map that cannot be opened is an error of -t, with the FILE:LINE of its key (at
        run time it would only fail lookups temporarily)."""
        maps = os.path.join(self.tmp, "maps")
        os.makedirs(maps)
        good = {
            "alias_map": write_map(build_dir(), os.path.join(maps, "aliases"),
                                   {"info@" + LOCAL_DOMAIN: "user@" + LOCAL_DOMAIN}),
            "user_map": write_map(build_dir(), os.path.join(maps, "user_map"),
                                  {"user@" + LOCAL_DOMAIN: "node-a"}),
            "node_map": write_map(build_dir(), os.path.join(maps, "node_map"),
                                  {"node-a": "lmtp:[127.0.0.1]:24"}),
            "transport_map": write_map(build_dir(), os.path.join(maps, "transport"),
                                       {"remote.test": "smtp:[127.0.0.1]:25"}),
            "smtp_tls_policy_map": write_map(build_dir(), os.path.join(maps, "tls_policy"),
                                             {"remote.test": "may"}),
        }
        text = self.base() + "# the maps\n" + "".join("%s = %s\n" % kv for kv in good.items())
        path = self.write("maps.conf", text)
        rc, out = check_config(build_dir(), path)
        self.assertEqual(rc, 0, out)
        for i, key in enumerate(good):
            with self.subTest(key=key):
                # the source file is there, the .db sortermap makes from it is not
                broken = dict(good)
                missing = os.path.join(maps, "missing-" + key)
                with open(missing, "w") as f:
                    f.write("x y\n")
                broken[key] = "hash:" + missing
                text = self.base() + "# the maps\n" + "".join(
                    "%s = %s\n" % kv for kv in broken.items())
                path = self.write("broken-%s.conf" % key, text)
                rc, out = check_config(build_dir(), path)
                self.assertEqual(rc, 1, out)
                self.assertIn("%s:%d: %s" % (path, 7 + i, key), out)
                self.assertIn(missing + ".db", out)
        # a map type that does not exist, and a relay host that cannot be parsed
        for extra, what in (("user_map = nosuch:/x\n", "user_map"),
                            ("relay_host = [127.0.0.1\n", "relay_host")):
            with self.subTest(extra=extra):
                path = self.write("bad-%s.conf" % what, self.base() + "\n" + extra)
                rc, out = check_config(build_dir(), path)
                self.assertEqual(rc, 1, out)
                self.assertIn("%s:7: %s" % (path, what), out)

    def test_missing_file(self):
        rc, out = check_config(build_dir(), os.path.join(self.tmp, "absent.conf"))
        self.assertEqual(rc, 1, out)
        self.assertIn("absent.conf", out)


class LogStallTest(SorterTestCase):
    def test_log_sink_never_read(self):
        rfd, wfd = os.pipe()
        self.addCleanup(os.close, rfd)   # kept open, never read: the pipe fills and stays full
        try:
            d = self.sorterd(stderr=wfd)
        finally:
            os.close(wfd)
        t0 = time.monotonic()
        threads, acked, errors = blast(d.port, 10, 100, body_size=512, timeout=60)
        finished = join_all(threads, 300)
        elapsed = time.monotonic() - t0
        self.assertTrue(finished, "1000 messages not done in 300 s with a stalled log "
                        "(%d acknowledged)" % len(acked))
        self.assertEqual(errors, [])
        self.assertEqual(len(acked), 1000)
        self.assertEqual(len(d.queue()), 1000)
        # the sink really was stalled: the pipe holds (at least) a pipe buffer's worth
        os.set_blocking(rfd, False)
        held = 0
        try:
            while True:
                chunk = os.read(rfd, 65536)
                if not chunk:
                    break
                held += len(chunk)
        except BlockingIOError:
            pass
        self.assertGreaterEqual(held, 32768, "the log pipe never filled: the test proves nothing")
        print("\n  log stall: 1000 messages in %.1fs, %d bytes of log stuck in the pipe"
              % (elapsed, held))


if __name__ == "__main__":
    unittest.main()
