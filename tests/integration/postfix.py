"""postfix.py - a private Postfix instance for Sorter's integration tests: a real MTA that
sends to sorterd (its relayhost) or receives from it (a remote MX).

PrivatePostfix(dir, smtpd_port, main={...}, host="127.0.0.1") writes a throwaway config under
dir (main.cf, master.cf without chroot, its own queue and maillog), with smtpd on
host:smtpd_port only (host: an address in 127.0.0.0/8, e.g. 127.0.0.8 to play a remote MX on
sorterd's smtp_port; inet_interfaces stays 127.0.0.1: `postfix check` refuses an address that
no interface carries, and master.cf's host:port binds on its own) and no local delivery.
`main` adds or overrides main.cf parameters (relayhost, smtp_tls_security_level, ...).
start() runs `postfix -c DIR start`; stop() asks the same and then signals only the master PID
from the instance's own pid file (its daemons are its children and leave with it).
Postfix runs as root with its daemons as the `postfix` user, so
dir and the folders above it are opened up (o+x) for that user.
"""

import os
import shutil
import signal
import socket
import stat
import subprocess
import time

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfix_missing():
    """None when Postfix is installed, else what is missing."""
    for prog in ("postfix", "postconf", "postqueue"):
        if not shutil.which(prog) and not os.access("/usr/sbin/" + prog, os.X_OK):
            return "%s is not installed (contrib/setup.sh installs postfix)" % prog
    if os.getuid() != 0:
        return "a private Postfix needs root (its master starts as root)"
    return None


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rfind(")") + 2:].split()[0] != "Z"


def _listening(port, host="127.0.0.1"):
    a = socket.inet_aton(host)
    want = "%08X:%04X" % (int.from_bytes(a, "little"), port)
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


class PrivatePostfix:
    def __init__(self, directory, smtpd_port, main=None, host="127.0.0.1"):
        if not host.startswith("127."):
            raise ValueError("the private Postfix must listen on 127.0.0.0/8, not %s" % host)
        self.host = host
        self.dir = os.path.abspath(directory)
        self.port = smtpd_port
        self.etc = os.path.join(self.dir, "etc")
        self.spool = os.path.join(self.dir, "spool")
        self.data = os.path.join(self.dir, "data")
        self.maillog = os.path.join(self.dir, "maillog")
        self.main = {
            "compatibility_level": "3.6",
            "config_directory": self.etc,
            "queue_directory": self.spool,
            "data_directory": self.data,
            "maillog_file_prefixes": "/tmp, /var",
            "maillog_file": self.maillog,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.lab.test",
            "mydomain": "lab.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery disabled",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "biff": "no",
            "smtp_tls_loglevel": "1",
            "minimal_backoff_time": "300s",
            "queue_run_delay": "300s",
        }
        self.main.update(main or {})
        self.master_pid = None

    def write_config(self):
        for d in (self.etc, self.spool):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        os.makedirs(self.data, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        # the postfix user must reach the queue: open every folder above it (o+x)
        p = self.dir
        while p not in ("/", ""):
            st = os.stat(p)
            if not st.st_mode & stat.S_IXOTH:
                os.chmod(p, st.st_mode | stat.S_IXOTH | stat.S_IROTH)
            p = os.path.dirname(p)
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write("# written by tests/integration/postfix.py\n")
            for k, v in self.main.items():
                f.write("%s = %s\n" % (k, v))
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(host=self.host, port=self.port))

    def postfix(self, *args, check=True):
        r = subprocess.run(["postfix", "-c", self.etc] + list(args), capture_output=True,
                           text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError("postfix %s: exit %d: %s%s\n%s" % (
                " ".join(args), r.returncode, r.stdout, r.stderr, self.log()))
        return r

    def start(self):
        self.write_config()
        self.postfix("check", check=False)   # creates the queue folders with their owners
        self.postfix("start")
        pidfile = os.path.join(self.spool, "pid", "master.pid")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with open(pidfile) as f:
                    self.master_pid = int(f.read().strip())
            except (OSError, ValueError):
                self.master_pid = None
            if self.master_pid and _listening(self.port, self.host):
                return self
            time.sleep(0.05)
        raise AssertionError("private Postfix did not listen on %s:%d\n%s"
                             % (self.host, self.port, self.log()))

    def stop(self):
        if self.master_pid is None:
            return
        pid, self.master_pid = self.master_pid, None
        if _alive(pid):
            self.postfix("stop", check=False)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log(self):
        try:
            with open(self.maillog, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def queue_count(self):
        """Messages in the instance's queue, counted from its folders."""
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(os.path.join(self.spool, sub)):
                n += len(files)
        return n

    def flush(self):
        subprocess.run(["postqueue", "-c", self.etc, "-f"], capture_output=True, timeout=60)
