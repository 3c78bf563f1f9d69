"""slapd.py - a private OpenLDAP directory for Sorter's ldap: map tests.

PrivateSlapd(directory, port) writes a throwaway slapd.conf (core, cosine, inetorgperson and
misc schemas; one mdb database for dc=example,dc=test; rootdn cn=admin,dc=example,dc=test with
password "secret"; read access for everyone) and runs `slapd -d 0` in the foreground on
ldap://127.0.0.1:PORT/ with its database, pid and args files under the directory. start()
waits until the server answers a real search; stop() signals only the PID it started.
pause()/resume() send SIGSTOP/SIGCONT to that PID (pause returns once all its threads have
stopped): a server that accepts connections and never answers.

The data model the tests use (ldif helpers below):
  users    uid=NAME,ou=people,...  inetOrgPerson: mail = address, departmentNumber = node name
  aliases  cn=ADDR,ou=aliases,...  nisMailAlias: cn = the alias, rfc822MailMember = each target
  nodes    cn=NODE,ou=nodes,...    device: description = each endpoint (lmtp:[IP]:PORT)
  logins   the users' userPassword (a crypt(3) hash, for an ldap: auth_map)

map_file() writes an ldap: map settings file for sorterd (Postfix ldap_table(5) style).
"""

import os
import shutil
import signal
import subprocess
import time

from harness import freeze

SUFFIX = "dc=example,dc=test"
ROOTDN = "cn=admin," + SUFFIX
ROOTPW = "secret"


def slapd_missing():
    """None when slapd and the ldap-utils client are installed, else what is missing."""
    if not os.access("/usr/sbin/slapd", os.X_OK):
        return "slapd is not installed (contrib/setup.sh installs slapd)"
    if not shutil.which("ldapadd"):
        return "ldapadd is not installed (contrib/setup.sh installs ldap-utils)"
    return None


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rfind(")") + 2:].split()[0] != "Z"


def _listening(host, port):
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(host.split("."))), port)
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def base_ldif():
    out = ["dn: %s" % SUFFIX, "objectClass: dcObject", "objectClass: organization",
           "o: example", "dc: example", ""]
    for ou in ("people", "aliases", "nodes"):
        out += ["dn: ou=%s,%s" % (ou, SUFFIX), "objectClass: organizationalUnit",
                "ou: %s" % ou, ""]
    return "\n".join(out) + "\n"


def user_ldif(uid, mail, node, password_hash=None):
    out = ["dn: uid=%s,ou=people,%s" % (uid, SUFFIX), "objectClass: inetOrgPerson",
           "uid: %s" % uid, "cn: %s" % uid, "sn: %s" % uid, "mail: %s" % mail,
           "departmentNumber: %s" % node]
    if password_hash:
        # the crypt(3) hash as auth_map wants it (slapd only stores it)
        out.append("userPassword: %s" % password_hash)
    return "\n".join(out) + "\n\n"


def alias_ldif(alias, targets):
    out = ["dn: cn=%s,ou=aliases,%s" % (alias, SUFFIX), "objectClass: nisMailAlias",
           "cn: %s" % alias]
    out += ["rfc822MailMember: %s" % t for t in targets]
    return "\n".join(out) + "\n\n"


def node_ldif(node, endpoints):
    out = ["dn: cn=%s,ou=nodes,%s" % (node, SUFFIX), "objectClass: device", "cn: %s" % node]
    out += ["description: %s" % e for e in endpoints]
    return "\n".join(out) + "\n\n"


def map_file(path, uris, query_filter, result_attribute, **extra):
    """Writes an ldap: map settings file; returns the map spec "ldap:PATH"."""
    extra.setdefault("search_base", SUFFIX)
    lines = ["# written by tests/integration/slapd.py",
             "server_host = %s" % " ".join(uris if isinstance(uris, (list, tuple)) else [uris]),
             "query_filter = %s" % query_filter,
             "result_attribute = %s" % result_attribute]
    for k, v in extra.items():
        lines.append("%s = %s" % (k, v))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return "ldap:" + path


class PrivateSlapd:
    def __init__(self, directory, port, host="127.0.0.1"):
        self.dir = os.path.abspath(directory)
        self.port = port
        self.host = host
        self.conf_path = os.path.join(self.dir, "slapd.conf")
        self.log_path = os.path.join(self.dir, "slapd.log")
        self.proc = None
        self._configured = False

    def uri(self):
        return "ldap://%s:%d" % (self.host, self.port)

    def _write_config(self):
        os.makedirs(os.path.join(self.dir, "db"), exist_ok=True)
        conf = """\
# private slapd, written by tests/integration/slapd.py
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/misc.schema
pidfile %(d)s/slapd.pid
argsfile %(d)s/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
sizelimit 1000
database mdb
maxsize 104857600
suffix "%(suffix)s"
rootdn "%(rootdn)s"
rootpw %(rootpw)s
directory %(d)s/db
index objectClass eq
index mail eq
index cn eq
access to attrs=userPassword by * read
access to * by * read
""" % {"d": self.dir, "suffix": SUFFIX, "rootdn": ROOTDN, "rootpw": ROOTPW}
        with open(self.conf_path, "w") as f:
            f.write(conf)
        self._configured = True

    def start(self, timeout=15):
        missing = slapd_missing()
        if missing:
            raise RuntimeError(missing)
        if not self._configured:
            self._write_config()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                ["/usr/sbin/slapd", "-d", "0", "-h", "%s/" % self.uri(), "-f", self.conf_path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("slapd exited with %d at start:\n%s"
                                   % (self.proc.returncode, self.log()))
            if _listening(self.host, self.port) and self.search("(objectClass=*)", "dn",
                                                                  scope="base", check=False):
                return self
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError("slapd did not answer on %s within %ds:\n%s"
                                   % (self.uri(), timeout, self.log()))
            time.sleep(0.1)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10):
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)     # a paused server cannot act on SIGTERM
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def pause(self):
        freeze(self.proc.pid)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def add(self, ldif):
        """ldapadd of the LDIF text as the root DN."""
        path = os.path.join(self.dir, "add-%d.ldif" % time.monotonic_ns())
        with open(path, "w") as f:
            f.write(ldif)
        r = subprocess.run(["ldapadd", "-x", "-H", self.uri(), "-D", ROOTDN, "-w", ROOTPW,
                            "-f", path], capture_output=True, text=True, timeout=300)
        os.unlink(path)
        if r.returncode != 0:
            raise AssertionError("ldapadd: exit %d: %s" % (r.returncode, r.stderr.strip()))

    def modify(self, ldif):
        path = os.path.join(self.dir, "mod-%d.ldif" % time.monotonic_ns())
        with open(path, "w") as f:
            f.write(ldif)
        r = subprocess.run(["ldapmodify", "-x", "-H", self.uri(), "-D", ROOTDN, "-w", ROOTPW,
                            "-f", path], capture_output=True, text=True, timeout=60)
        os.unlink(path)
        if r.returncode != 0:
            raise AssertionError("ldapmodify: exit %d: %s" % (r.returncode, r.stderr.strip()))

    def search(self, flt, *attrs, scope="sub", check=True):
        """ldapsearch; returns its LDIF output (None when it failed and check is False)."""
        r = subprocess.run(["ldapsearch", "-x", "-LLL", "-o", "nettimeout=2", "-l", "2",
                            "-H", self.uri(), "-b", SUFFIX, "-s", scope, flt] + list(attrs),
                           capture_output=True, text=True, timeout=10)
        if r.returncode not in (0, 32):
            if check:
                raise AssertionError("ldapsearch: exit %d: %s" % (r.returncode, r.stderr))
            return None
        return r.stdout if r.stdout else "(none)"

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""
