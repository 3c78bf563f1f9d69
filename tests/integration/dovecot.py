"""dovecot.py - a private Dovecot LMTP mailbox node for Sorter's delivery tests.

DovecotNode(node_dir, port, users=[...]) writes a throwaway Dovecot config under node_dir:
LMTP only, on 127.0.0.1:port, passwd-file users (full addresses), Maildir under
node_dir/mail/<localpart>/Maildir. Started as root, every Dovecot process runs as `nobody`
(Dovecot's rootless mode), so node_dir and the folders above it must be traversable by
nobody: start() opens them up (o+rx) and hands node_dir to nobody. An address that is not
one of the users gets 550 5.1.1 at RCPT, as a real node answers for a mailbox it does not hold.

A node can be stopped and started again on the same port with its Maildirs kept (the
"node down" cases). stop() signals only the master PID read from the node's own pid file;
the master takes its children down with it. Nothing here listens beyond 127.0.0.1.
"""

import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time

DEFAULT_DOMAIN = "example.test"


def dovecot_missing():
    """None when Dovecot's master and LMTP service are installed, else what is missing."""
    if not shutil.which("dovecot"):
        return "dovecot is not installed (contrib/setup.sh installs dovecot-core)"
    if not os.access("/usr/lib/dovecot/lmtp", os.X_OK):
        return "Dovecot's LMTP service is not installed (dovecot-lmtpd)"
    return None


def _listening(port):
    want = "0100007F:%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rfind(")") + 2:].split()[0] != "Z"


def _wait(cond, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


class DovecotNode:
    def __init__(self, node_dir, port, users=(), domain=DEFAULT_DOMAIN, name=None):
        self.dir = os.path.abspath(node_dir)
        self.port = port
        self.domain = domain
        self.name = name or "node-%d" % port
        self.users = [self.address(u) for u in users]
        self.conf_path = os.path.join(self.dir, "dovecot.conf")
        self.log_path = os.path.join(self.dir, "dovecot.log")
        self.pid_path = os.path.join(self.dir, "run", "master.pid")
        self.pid = None
        if os.getuid() == 0:
            self.run_user = "nobody"
            self.run_group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
        else:
            # not root: Dovecot runs as whoever we are, with the same rootless config
            self.run_user = pwd.getpwuid(os.getuid()).pw_name
            self.run_group = grp.getgrgid(os.getgid()).gr_name
        self._configured = False

    def address(self, user):
        return user if "@" in user else "%s@%s" % (user, self.domain)

    def endpoint(self):
        """This node as a node_map endpoint."""
        return "lmtp:[127.0.0.1]:%d" % self.port

    # ---- config ----
    def _write_config(self):
        for sub in ("run", "state", "mail"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        d = self.dir
        conf = """\
# private Dovecot LMTP node, written by tests/integration/dovecot.py
instance_name = sorter-test-%(port)d
base_dir = %(d)s/run
state_dir = %(d)s/state
protocols = lmtp
listen = 127.0.0.1
ssl = no
log_path = %(d)s/dovecot.log
info_log_path = %(d)s/dovecot.log
# rootless: every service runs as the user that started the master
default_internal_user = %(user)s
default_internal_group = %(group)s
default_login_user = %(user)s
mail_uid = %(user)s
mail_gid = %(group)s
first_valid_uid = 1
mail_location = maildir:%(d)s/mail/%%n/Maildir
postmaster_address = postmaster@%(domain)s
hostname = %(name)s.nodes.test
passdb {
  driver = passwd-file
  args = %(d)s/users
}
userdb {
  driver = passwd-file
  args = %(d)s/users
  default_fields = home=%(d)s/mail/%%n
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %(port)d
  }
  unix_listener lmtp {
    mode = 0
  }
}
service anvil {
  chroot =
}
service auth {
  user = %(user)s
}
service auth-worker {
  user = %(user)s
}
service imap-login {
  chroot =
}
service pop3-login {
  chroot =
}
service submission-login {
  chroot =
}
""" % {"d": d, "port": self.port, "user": self.run_user, "group": self.run_group,
       "domain": self.domain, "name": self.name}
        with open(self.conf_path, "w") as f:
            f.write(conf)
        with open(os.path.join(d, "users"), "w") as f:
            for u in self.users:
                f.write("%s:{PLAIN}x::::::\n" % u)
        self._configured = True

    def _open_up(self):
        """Lets run_user reach node_dir (o+rx on every folder above it that lacks it: our
        own temp dirs; system folders such as /tmp already have it) and own everything in it."""
        p = os.path.dirname(self.dir)
        while p and p != "/":
            mode = os.stat(p).st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(p, stat.S_IMODE(mode) | 0o055)
            p = os.path.dirname(p)
        if os.getuid() == 0:
            uid = pwd.getpwnam(self.run_user).pw_uid
            gid = grp.getgrnam(self.run_group).gr_gid
            for root, dirs, files in os.walk(self.dir):
                os.chown(root, uid, gid)
                for n in files:
                    os.chown(os.path.join(root, n), uid, gid)

    # ---- process ----
    def start(self, timeout=15):
        missing = dovecot_missing()
        if missing:
            raise RuntimeError(missing)
        if _listening(self.port):
            raise RuntimeError("127.0.0.1:%d is busy" % self.port)
        if not self._configured:
            os.makedirs(self.dir, exist_ok=True)
            self._write_config()
        self._open_up()
        try:
            os.unlink(self.pid_path)
        except FileNotFoundError:
            pass
        cmd = ["dovecot", "-c", self.conf_path]
        if os.getuid() == 0:
            cmd = ["setpriv", "--reuid=" + self.run_user, "--regid=" + self.run_group,
                   "--clear-groups"] + cmd
        # The master daemonizes (its PID goes to run/master.pid) and keeps the descriptors
        # it was given: a file, not a pipe, or waiting for the command would never end.
        out_path = os.path.join(self.dir, "start.out")
        with open(out_path, "wb") as out:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                               timeout=timeout)
        if r.returncode != 0:
            with open(out_path, errors="replace") as f:
                said = f.read().strip()
            raise RuntimeError("dovecot did not start (exit %d): %s\n%s"
                               % (r.returncode, said, self.log_tail()))
        if not _wait(lambda: _listening(self.port) and self._read_pid(), timeout):
            raise RuntimeError("dovecot did not listen on 127.0.0.1:%d within %ds\n%s"
                               % (self.port, timeout, self.log_tail()))
        self.pid = self._read_pid()
        return self

    def _read_pid(self):
        try:
            with open(self.pid_path) as f:
                return int(f.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def running(self):
        return self.pid is not None and _alive(self.pid)

    def stop(self, timeout=10):
        """SIGTERM to the master (by the PID in its pid file), wait until it and the
        listener are gone; SIGKILL to that same PID after timeout s."""
        self._finish_stop(self._begin_stop(), timeout)

    def _begin_stop(self):
        """SIGTERM to the master; its PID, or None when there is nothing to wait for."""
        pid = self.pid or self._read_pid()
        self.pid = None
        if pid is None or not _alive(pid):
            return None
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return None
        return pid

    def _finish_stop(self, pid, timeout):
        if pid is None:
            return
        if not _wait(lambda: not _alive(pid), timeout):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait(lambda: not _alive(pid), 5)
        # its children close the listener as they go
        _wait(lambda: not _listening(self.port), timeout)

    @staticmethod
    def stop_all(nodes, timeout=10):
        """stop() of every node in nodes, side by side: a Dovecot master takes over a second
        to exit after SIGTERM (it waits for its log process), so all are signalled first."""
        pids = [(n, n._begin_stop()) for n in nodes]
        for n, pid in pids:
            n._finish_stop(pid, timeout)

    # ---- mailboxes ----
    def maildir(self, user):
        local = self.address(user).split("@", 1)[0]
        return os.path.join(self.dir, "mail", local, "Maildir")

    def maildir_files(self, user):
        """Paths of the messages in user's Maildir (new/ and cur/), oldest name first."""
        paths = []
        for sub in ("new", "cur"):
            d = os.path.join(self.maildir(user), sub)
            try:
                paths += [os.path.join(d, n) for n in sorted(os.listdir(d))]
            except FileNotFoundError:
                pass
        return paths

    def maildir_messages(self, user):
        """The messages in user's Maildir, each as text (bytes decoded as UTF-8, replaced)."""
        out = []
        for p in self.maildir_files(user):
            try:
                with open(p, "rb") as f:
                    out.append(f.read().decode("utf-8", "replace"))
            except FileNotFoundError:
                pass    # moved from new/ to cur/ meanwhile: read in the other listing
        return out

    def count(self, user):
        return len(self.maildir_files(user))

    def all_messages(self):
        """{address: [message text, ...]} for every configured user."""
        return {u: self.maildir_messages(u) for u in self.users}

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log().splitlines()[-n:])

