"""test_ldap.py - user_map, alias_map and node_map in a real directory (ldap: maps).

A private slapd (slapd.py) holds 1,000 users (user00000..user00999@example.test, even ones
on node-a, odd ones on node-b), alice, carol (node-a) and bob (node-b), the aliases
team@ (alice, bob) and postmaster@ (alice), and the two nodes, whose endpoints are two
private Dovecot LMTP nodes. sorterd reads all three maps from it.

What is proved: RCPT validation and delivery routed from LDAP (and `sortermap -q` and
`sorterctl route` give the same answers); failover between the URIs of server_host; a
stopped slapd gives 451 4.3.0 at RCPT (never 550) and a deferral in the queue manager, and
mail flows again once it is back; cache_ttl and negative_cache_ttl (a hit answers while
the server is frozen, an expired entry is asked again); a frozen server (SIGSTOP) costs a
session at most `timeout` and never stalls the other sessions; auth_map and sender_login_map
in the directory (AUTH looked up on the hashing threads, MAIL waiting for its lookup, 454 and
451 while the directory is frozen).
"""

import os
import subprocess
import threading
import time
import unittest

from dovecot import DovecotNode
from harness import (LOCAL_DOMAIN, Client, Sorterd, SorterTestCase, build_dir, check_config,
                     free_port, wait_until)
from slapd import (SUFFIX, PrivateSlapd, alias_ldif, base_ldif, map_file, node_ldif,
                   user_ldif)

ALICE, BOB, CAROL = ("%s@%s" % (u, LOCAL_DOMAIN) for u in ("alice", "bob", "carol"))
TEAM = "team@" + LOCAL_DOMAIN
NUSERS = 1000
FAST = {"queue_run_delay": 1, "minimal_backoff_time": 1, "maximal_backoff_time": 1,
        "endpoint_dead_time": 0}


def directory_ldif(port_a, port_b, nusers=NUSERS):
    out = [base_ldif()]
    out += [user_ldif("user%05d" % i, "user%05d@%s" % (i, LOCAL_DOMAIN),
                      "node-a" if i % 2 == 0 else "node-b") for i in range(nusers)]
    out += [user_ldif("alice", ALICE, "node-a"), user_ldif("bob", BOB, "node-b"),
            user_ldif("carol", CAROL, "node-a")]
    out += [alias_ldif(TEAM, [ALICE, BOB]), alias_ldif("postmaster@" + LOCAL_DOMAIN, [ALICE])]
    out += [node_ldif("node-a", ["lmtp:[127.0.0.1]:%d" % port_a]),
            node_ldif("node-b", ["lmtp:[127.0.0.1]:%d" % port_b])]
    return "".join(out)


def ldap_maps(directory, uris, **extra):
    """The three map specs over the directory at uris (settings files in directory)."""
    return {
        "user_map": map_file(os.path.join(directory, "users.cf"), uris, "(mail=%s)",
                             "departmentNumber", search_base="ou=people," + SUFFIX, **extra),
        "alias_map": map_file(os.path.join(directory, "aliases.cf"), uris, "(cn=%s)",
                              "rfc822MailMember", search_base="ou=aliases," + SUFFIX, **extra),
        "node_map": map_file(os.path.join(directory, "nodes.cf"), uris, "(cn=%s)",
                             "description", search_base="ou=nodes," + SUFFIX, **extra),
    }


def rcpt(c, addr, timeout=None):
    return c.cmd("RCPT TO:<%s>" % addr, timeout)


class LdapMapTest(SorterTestCase):
    """One directory of 1,000 users for the class (ldapadd takes a while); tests that stop
    or freeze a server start their own small one."""

    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.cls_tmp = tempfile.mkdtemp(prefix="sorter-ldap-")
        cls.port_a, cls.port_b = free_port(), free_port()
        cls.node_a = DovecotNode(os.path.join(cls.cls_tmp, "node-a"), cls.port_a,
                                 users=["alice", "carol"], name="node-a").start()
        cls.node_b = DovecotNode(os.path.join(cls.cls_tmp, "node-b"), cls.port_b,
                                 users=["bob"], name="node-b").start()
        cls.slapd = PrivateSlapd(os.path.join(cls.cls_tmp, "slapd"), free_port()).start()
        cls.slapd.add(directory_ldif(cls.port_a, cls.port_b))

    @classmethod
    def tearDownClass(cls):
        cls.slapd.stop()
        cls.node_a.stop()
        cls.node_b.stop()
        import shutil
        shutil.rmtree(cls.cls_tmp, ignore_errors=True)

    def maps(self, uris=None, **extra):
        d = os.path.join(self.tmp, "maps-%d" % time.monotonic_ns())
        os.makedirs(d)
        return ldap_maps(d, uris or [self.slapd.uri()], **extra)

    def small_directory(self, name="slapd-own"):
        s = PrivateSlapd(os.path.join(self.tmp, name), free_port()).start()
        self.addCleanup(s.stop)
        s.add(directory_ldif(self.port_a, self.port_b, nusers=10))
        return s

    # ---- lookups ----

    def test_rcpt_from_ldap(self):
        d = self.sorterd(**self.maps())
        c = self.connect(d)
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<sender@remote.test>"), 250)
        for addr in (ALICE, BOB, "USER00123@example.test", "user00999@" + LOCAL_DOMAIN, TEAM,
                     "postmaster@" + LOCAL_DOMAIN):
            self.assertReply(rcpt(c, addr), 250, "2.1.5", addr)
        for addr in ("nobody@" + LOCAL_DOMAIN, "user01000@" + LOCAL_DOMAIN,
                     "*@" + LOCAL_DOMAIN, "user0000*@" + LOCAL_DOMAIN):
            self.assertReply(rcpt(c, addr), 550, "5.1.1", addr)
        # the same answers from the command-line tools, through the same code
        spec = self.maps()["user_map"]
        r = subprocess.run([os.path.join(build_dir(), "sortermap"), "-q", "user00321@example.test",
                            spec], capture_output=True, text=True, timeout=30)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "node-b"), r.stderr)
        r = subprocess.run([os.path.join(build_dir(), "sortermap"), "-q", "nobody@example.test",
                            spec], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        r = d.ctl("route", TEAM, check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("node-a", r.stdout)
        self.assertIn("node-b", r.stdout)
        self.assertIn("127.0.0.1]:%d" % self.port_b, r.stdout)
        r = d.ctl("route", "nobody@" + LOCAL_DOMAIN, check=False)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)

    def test_delivery_routed_by_ldap(self):
        d = self.sorterd(**self.maps(), **FAST)
        before_a, before_b = self.node_a.count("alice"), self.node_b.count("bob")
        before_c = self.node_a.count("carol")
        c = self.connect(d)
        r, qid = c.send_message("sender@remote.test", [TEAM, CAROL],
                                "Subject: ldap routed\r\n\r\nhello")
        self.assertQueued(r, qid)
        self.assertTrue(wait_until(lambda: self.node_a.count("alice") == before_a + 1 and
                                   self.node_b.count("bob") == before_b + 1 and
                                   self.node_a.count("carol") == before_c + 1, 30),
                        d.log_tail())
        self.assertTrue(d.wait_queue_empty(10))
        self.assertTrue(d.log_lines(r"%s: to=<%s>, orig_to=<%s>, node=node-b" % (qid, BOB, TEAM)),
                        d.log_tail())

    def test_failover_between_uris(self):
        primary = self.small_directory("slapd-1")
        secondary = self.small_directory("slapd-2")
        dead = "ldap://127.0.0.1:%d" % free_port()
        d = self.sorterd(workers=1, **self.maps([dead, primary.uri(), secondary.uri()],
                                                 cache_ttl=0, negative_cache_ttl=0))
        c = self.connect(d)
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<sender@remote.test>"), 250)
        self.assertReply(rcpt(c, ALICE), 250, "2.1.5")
        self.assertTrue(d.log_lines(r"connected to %s" % primary.uri()), d.log_tail())
        primary.stop()
        # the connection to the primary breaks; the next server answers, at once
        for addr in (BOB, "user00003@" + LOCAL_DOMAIN):
            t0 = time.monotonic()
            self.assertReply(rcpt(c, addr), 250, "2.1.5", addr)
            self.assertLess(time.monotonic() - t0, 5)
        self.assertTrue(d.log_lines(r"connected to %s" % secondary.uri()), d.log_tail())
        self.assertReply(rcpt(c, "nobody@" + LOCAL_DOMAIN), 550, "5.1.1")

    def test_slapd_stopped_451_then_deferral_then_delivery(self):
        own = self.small_directory()
        d = self.sorterd(workers=1, **self.maps([own.uri()], timeout=2, cache_ttl=300),
                         **FAST)
        # bob's RCPT lookups are cached in the (one) smtpd worker, not in the queue manager
        c = self.connect(d)
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<sender@remote.test>"), 250)
        self.assertReply(rcpt(c, BOB), 250, "2.1.5")
        c.cmd("RSET")
        own.stop()
        # an address nobody asked about: 451, never 550
        self.assertReply(c.cmd("MAIL FROM:<sender@remote.test>"), 250)
        t0 = time.monotonic()
        self.assertReply(rcpt(c, CAROL), 451, "4.3.0")
        self.assertReply(rcpt(c, "nobody@" + LOCAL_DOMAIN), 451, "4.3.0")
        self.assertLess(time.monotonic() - t0, 6)
        self.assertTrue(d.log_lines(r"451 4.3.0 <%s>" % CAROL), d.log_tail())
        c.cmd("RSET")
        # bob is accepted from the cache; the queue manager cannot route him: deferred
        before = self.node_b.count("bob")
        r, qid = c.send_message("sender@remote.test", [BOB], "Subject: while down\r\n\r\nx",
                                ehlo=False)
        self.assertQueued(r, qid)
        self.assertTrue(wait_until(lambda: d.log_lines(r"%s: to=<%s>.*status=deferred" % (qid, BOB)),
                                   20), d.log_tail())
        self.assertTrue(d.log_lines(r"%s: to=<%s>.*dsn=4\.3\.0" % (qid, BOB)), d.log_tail())
        self.assertEqual(self.node_b.count("bob"), before)
        # the directory comes back: the deferred message is delivered, carol is accepted
        own.start()
        self.assertTrue(wait_until(lambda: self.node_b.count("bob") == before + 1, 30),
                        d.log_tail())
        self.assertTrue(d.wait_queue_empty(10))
        self.assertTrue(wait_until(lambda: self._rcpt_code(d, CAROL) == 250, 20), d.log_tail())

    def _rcpt_code(self, d, addr):
        with Client(d.port) as c:
            c.reply()
            c.ehlo()
            c.cmd("MAIL FROM:<sender@remote.test>")
            return rcpt(c, addr).code

    def test_cache_ttl(self):
        own = self.small_directory()
        d = self.sorterd(workers=1, **self.maps([own.uri()], timeout=1, cache_ttl=3,
                                                 negative_cache_ttl=3))
        c = self.connect(d)
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<sender@remote.test>"), 250)
        self.assertReply(rcpt(c, ALICE), 250)
        newbie = "newbie@" + LOCAL_DOMAIN
        self.assertReply(rcpt(c, newbie), 550, "5.1.1")
        t_cached = time.monotonic()
        own.add(user_ldif("newbie", newbie, "node-a"))
        # a hit: answered from the cache while the server is frozen
        own.pause()
        try:
            t0 = time.monotonic()
            self.assertReply(rcpt(c, ALICE), 250)
            self.assertLess(time.monotonic() - t0, 0.5)
            # a negative hit: still unknown, though the directory has it now
            self.assertReply(rcpt(c, newbie), 550, "5.1.1")
            # past cache_ttl the entry is asked again: the frozen server makes that 451
            time.sleep(max(0, t_cached + 3.5 - time.monotonic()))
            self.assertReply(rcpt(c, ALICE, timeout=10), 451, "4.3.0")
        finally:
            own.resume()
        # and once the server answers, the new entry is seen
        self.assertTrue(wait_until(lambda: self._rcpt_code(d, newbie) == 250, 15), d.log_tail())

    def test_frozen_server_does_not_stall_other_sessions(self):
        own = self.small_directory()
        d = self.sorterd(workers=1, **self.maps([own.uri()], timeout=3, cache_ttl=300))
        warm = self.connect(d)
        warm.ehlo()
        self.assertReply(warm.cmd("MAIL FROM:<sender@remote.test>"), 250)
        self.assertReply(rcpt(warm, ALICE), 250)
        own.pause()
        self.addCleanup(own.resume)
        slow = self.connect(d)
        slow.ehlo()
        self.assertReply(slow.cmd("MAIL FROM:<sender@remote.test>"), 250)
        result = {}

        def ask():
            t0 = time.monotonic()
            result["reply"] = rcpt(slow, BOB, timeout=20)
            result["took"] = time.monotonic() - t0

        t = threading.Thread(target=ask, daemon=True)
        t.start()
        time.sleep(0.5)
        # meanwhile, on the same worker: new sessions, cached lookups, all at once
        for _ in range(5):
            t0 = time.monotonic()
            other = self.connect(d)
            self.assertReply(other.ehlo(), 250)
            self.assertReply(other.cmd("MAIL FROM:<x@remote.test>"), 250)
            self.assertReply(rcpt(other, ALICE), 250)
            self.assertReply(rcpt(other, "x@remote.test"), 554, "5.7.1")
            self.assertLess(time.monotonic() - t0, 1.0)
            other.close()
        self.assertReply(warm.cmd("NOOP"), 250)
        t.join(20)
        self.assertIn("reply", result)
        self.assertReply(result["reply"], 451, "4.3.0")
        self.assertGreater(result["took"], 1.5)
        self.assertLess(result["took"], 6)
        # the frozen session goes on with its next command
        self.assertReply(slow.cmd("NOOP"), 250)

    def test_auth_and_sender_login_from_ldap(self):
        from test_tls import make_cert
        from test_submission import plain, sorterctl_passwd
        own = PrivateSlapd(os.path.join(self.tmp, "slapd-auth"), free_port()).start()
        self.addCleanup(own.stop)
        h = sorterctl_passwd(build_dir(), "alice-pw")
        own.add(base_ldif() + user_ldif("alice", ALICE, "node-a", password_hash=h)
                + user_ldif("bob", BOB, "node-b", password_hash=h)
                + alias_ldif("sales@" + LOCAL_DOMAIN, [ALICE])
                + node_ldif("node-a", ["lmtp:[127.0.0.1]:%d" % self.port_a]))
        cert, key = make_cert(self.tmp)
        m = os.path.join(self.tmp, "authmaps")
        os.makedirs(m)
        settings = self.maps([own.uri()], timeout=2)
        settings["auth_map"] = map_file(os.path.join(m, "passwd.cf"), [own.uri()], "(mail=%s)",
                                        "userPassword", search_base="ou=people," + SUFFIX,
                                        timeout=2)
        settings["sender_login_map"] = map_file(os.path.join(m, "senders.cf"), [own.uri()],
                                                "(cn=%s)", "rfc822MailMember", timeout=2,
                                                search_base="ou=aliases," + SUFFIX)
        d = Sorterd(os.path.join(self.tmp, "d"), start=False, workers=1, tls_cert_file=cert,
                    tls_key_file=key, **settings)
        sub = free_port()
        d.write_config(listen=["127.0.0.1:%d mx" % d.port, "127.0.0.1:%d submission" % sub])
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start()

        def tls():
            c = Client(sub)
            self.addCleanup(c.close)
            self.assertReply(c.reply(), 220)
            c.ehlo()
            self.assertReply(c.starttls(), 220)
            c.ehlo()
            return c

        c = tls()
        self.assertReply(c.cmd("AUTH PLAIN " + plain(ALICE, "wrong")), 535, "5.7.8")
        self.assertReply(c.cmd("AUTH PLAIN " + plain(ALICE, "alice-pw")), 235, "2.7.0")
        # sender_login_map from LDAP: MAIL waits for the lookup, then the verdict
        self.assertReply(c.cmd("MAIL FROM:<sales@%s>" % LOCAL_DOMAIN), 250)
        c.cmd("RSET")
        self.assertReply(c.cmd("MAIL FROM:<other@%s>" % LOCAL_DOMAIN), 553, "5.7.1")
        self.assertReply(c.cmd("MAIL FROM:<%s>" % ALICE), 250)
        self.assertReply(rcpt(c, ALICE), 250)
        # the directory frozen: a login not cached fails temporarily, and only it waits
        own.pause()
        self.addCleanup(own.resume)
        c2 = tls()
        t0 = time.monotonic()
        c2.send("AUTH PLAIN " + plain(BOB, "alice-pw") + "\r\n")
        time.sleep(0.3)
        self.assertReply(c.cmd("NOOP"), 250)
        self.assertLess(time.monotonic() - t0, 1.5)
        self.assertReply(c2.reply(timeout=10), 454, "4.7.0")
        c3 = tls()
        self.assertReply(c3.cmd("AUTH PLAIN " + plain(ALICE, "alice-pw")), 235, "2.7.0")
        self.assertReply(c3.cmd("MAIL FROM:<sales@%s>" % LOCAL_DOMAIN), 250)   # cached
        self.assertReply(c3.cmd("MAIL FROM:<x@%s>" % LOCAL_DOMAIN), 503)       # nested
        c3.cmd("RSET")
        self.assertReply(c3.cmd("MAIL FROM:<new@%s>" % LOCAL_DOMAIN, timeout=10), 451, "4.3.0")

    def test_bad_settings_file_is_a_config_error(self):
        path = os.path.join(self.tmp, "bad.cf")
        with open(path, "w") as f:
            f.write("server_host = ldap://127.0.0.1:1\nquery_filter = (mail=%s\n")
        s = Sorterd(os.path.join(self.tmp, "t"), start=False, user_map="ldap:" + path)
        rc, out = check_config(build_dir(), s.conf_path)
        self.assertEqual(rc, 1, out)
        self.assertIn("user_map", out)
        self.assertIn("bad.cf:2: query_filter", out)


if __name__ == "__main__":
    unittest.main()
