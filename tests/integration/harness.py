"""harness.py - runs a private sorterd for Sorter's integration tests and talks SMTP to it.

Every daemon is started from $SORTER_BUILD on a free 127.0.0.1 port with its spool, config
and log under the test's temp dir, and is stopped by its PID (its children by theirs) when
the test ends. Nothing here may send traffic beyond 127.0.0.0/8 or signal a process that
the test did not start.
"""

import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from smtpsink import free_port_on

HOSTNAME = "mx.sorter.test"
LOCAL_DOMAIN = "example.test"
QID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{12}$")
QUEUED_RE = re.compile(r"queued as ([0-9A-HJKMNP-TV-Z]{12})\b")
SANITIZER_RE = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:")


def build_dir():
    d = os.environ.get("SORTER_BUILD")
    if not d:
        raise RuntimeError("SORTER_BUILD is not set: run tests/integration/run.sh BUILD_DIR")
    for prog in ("sorterd", "sorterctl"):
        if not os.access(os.path.join(d, prog), os.X_OK):
            raise RuntimeError("no executable %s in SORTER_BUILD=%s" % (prog, d))
    return d


def free_port():
    """A loopback port nobody listens on right now (bind port 0, read it, close), and none
    this process was given before (smtpsink.free_port_on)."""
    return free_port_on("127.0.0.1")


def listening(port):
    """True when a socket listens on 127.0.0.1:port or 0.0.0.0:port, read from /proc so
    that checking opens no SMTP session (a probe session would count against the limits)."""
    want = {"0100007F:%04X" % port, "00000000:%04X" % port}
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] in want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def children_of(pid):
    """PIDs whose parent is pid, from /proc."""
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields start after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            kids.append(int(name))
    return sorted(kids)


def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def freeze(pid, timeout=10):
    """SIGSTOP to pid, returning once every one of its threads is stopped. kill() returns
    before that: the stop spreads to the threads when one of them takes the signal, and on a
    busy machine the others may still run (answer a request) for some milliseconds."""
    os.kill(pid, signal.SIGSTOP)

    def stopped():
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            return True     # gone: nothing of it runs either
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2:].split()[0] not in ("T", "t"):
                return False
        return True
    if not wait_until(stopped, timeout, 0.005):
        raise AssertionError("process %d did not stop within %d s" % (pid, timeout))


def wait_until(cond, timeout, interval=0.05):
    """Polls cond() until it returns a true value (returned) or timeout s pass (None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def listener_inode(port):
    """The socket inode of the TCP listener on 127.0.0.1:port or 0.0.0.0:port, or None."""
    want = {"0100007F:%04X" % port, "00000000:%04X" % port}
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] in want and fields[3] == "0A":
                    return fields[9]
    except OSError:
        pass
    return None


def fd_links(pid):
    """What pid's open descriptors point at ("socket:[123]", paths...), from /proc."""
    links = []
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                links.append(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
            except OSError:
                pass
    except OSError:
        pass
    return links


def write_map(build, path, entries):
    """Writes the text map path ("key value" lines from entries, a dict or pairs) and
    compiles it with sortermap into path.db. Returns the config value, hash:path."""
    prog = os.path.join(build, "sortermap")
    if not os.access(prog, os.X_OK):
        raise AssertionError("no executable sortermap in %s: the build does not make it" % build)
    items = entries.items() if isinstance(entries, dict) else entries
    with open(path, "w") as f:
        f.write("# written by tests/integration/harness.py\n")
        for key, value in items:
            f.write("%s %s\n" % (key, value))
    r = subprocess.run([prog, path], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError("sortermap %s: exit %d: %s" % (path, r.returncode, r.stderr.strip()))
    return "hash:" + path


def current_user():
    return pwd.getpwuid(os.getuid()).pw_name


class Sorterd:
    """One private sorterd: Sorterd(tmpdir, key=value, ...) writes the config (a value of
    None drops a default key, a list repeats it) and starts the daemon unless start=False."""

    # a command that execs sorterd with the rest of the line (e.g. prlimit ... --), so that
    # the PID started is sorterd's
    argv_prefix = ()

    def __init__(self, tmpdir, start=True, stderr=None, **overrides):
        self.build = build_dir()
        self.dir = tmpdir
        os.makedirs(tmpdir, exist_ok=True)
        self.port = free_port()
        self.spool = os.path.join(tmpdir, "spool")
        self.conf_path = os.path.join(tmpdir, "sorter.conf")
        self.log_path = os.path.join(tmpdir, "sorterd.log")
        self.settings = {
            "hostname": HOSTNAME,
            "spool_dir": self.spool,
            "user": current_user(),
            "listen": "127.0.0.1:%d mx" % self.port,
            "local_domains": LOCAL_DOMAIN,
            "log": "stderr",
            "workers": 2,
        }
        self.settings.update(overrides)
        self.proc = None
        self.returncode = None
        self.known_children = set()
        self.write_config()
        if start:
            self.start(stderr=stderr)

    # ---- config ----
    def config_text(self):
        out = ["# written by tests/integration/harness.py"]
        for key, value in self.settings.items():
            if value is None:
                continue
            for v in value if isinstance(value, list) else [value]:
                out.append("%s = %s" % (key, v))
        return "\n".join(out) + "\n"

    def write_config(self, **changes):
        self.settings.update(changes)
        tmp = self.conf_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.config_text())
        os.rename(tmp, self.conf_path)

    def reload(self, **changes):
        """Rewrites the config with changes and sends SIGHUP to the master."""
        self.write_config(**changes)
        os.kill(self.proc.pid, signal.SIGHUP)

    # ---- process ----
    def start(self, stderr=None, timeout=15):
        if getattr(self, "_log", None):
            self._log.close()   # a start after kill_all(), which leaves it open
        if stderr is None:
            self._log = open(self.log_path, "ab")
            stderr = self._log
        else:
            self._log = None
        self.proc = subprocess.Popen(
            list(self.argv_prefix) + [os.path.join(self.build, "sorterd"), "-c", self.conf_path],
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        if not wait_until(lambda: listening(self.port) or self.proc.poll() is not None, timeout):
            raise RuntimeError("sorterd did not listen on port %d within %ds\n%s"
                               % (self.port, timeout, self.log_tail()))
        if self.proc.poll() is not None:
            raise RuntimeError("sorterd exited with %d at start\n%s"
                               % (self.proc.returncode, self.log_tail()))
        # (the master listens only once the spool is prepared and checked)
        # workers come up just after the listener: remember them for the cleanup
        wait_until(lambda: self.children(), 5)

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def children(self):
        """The master's current child PIDs (every PID ever seen is remembered for stop())."""
        if not self.running():
            return []
        kids = children_of(self.proc.pid)
        self.known_children.update(kids)
        return kids

    def _reap_children(self, sig, timeout):
        """Signals the children seen so far that still exist, by PID, and waits for them."""
        left = [k for k in self.known_children if pid_alive(k)]
        for k in left:
            try:
                os.kill(k, sig)
            except ProcessLookupError:
                pass
        wait_until(lambda: not any(pid_alive(k) for k in left), timeout)
        return [k for k in left if pid_alive(k)]

    def stop(self, timeout=10):
        """SIGTERM to the master, wait; SIGKILL after timeout s. Returns the exit status."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.children()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # a master that died or was killed may leave children behind
        if self._reap_children(signal.SIGTERM, 5):
            self._reap_children(signal.SIGKILL, 5)
        self.returncode = self.proc.returncode
        if self._log:
            self._log.close()
            self._log = None
        return self.returncode

    def kill_all(self):
        """kill -9 of the master and every child at once: the master is stopped first so that
        it cannot fork a replacement between the listing and the kill."""
        freeze(self.proc.pid)
        kids = children_of(self.proc.pid)
        self.known_children.update(kids)
        self.proc.kill()
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        wait_until(lambda: not any(pid_alive(k) for k in kids), 10)
        self.returncode = self.proc.returncode

    # ---- logs ----
    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=80):
        lines = self.log().splitlines()
        return "\n".join(lines[-n:])

    def sanitizer_reports(self):
        return [l for l in self.log().splitlines() if SANITIZER_RE.search(l)]

    # ---- sorterctl ----
    def ctl(self, *args, check=True, timeout=60):
        return subprocess.run([os.path.join(self.build, "sorterctl"), "-c", self.conf_path]
                              + list(args), capture_output=True, text=True, timeout=timeout,
                              check=check)

    def queue(self):
        """sorterctl queue --json, parsed."""
        r = self.ctl("queue", "--json")
        return json.loads(r.stdout)

    def queue_ids(self):
        return {m["id"] for m in self.queue()}

    def show(self, qid):
        """sorterctl show ID, parsed into (fields, message): fields maps each key to a list
        of values ("recipient" may repeat); message is the stored text with LF line ends."""
        out = self.ctl("show", qid).stdout.replace("\r\n", "\n")
        head, sep, message = out.partition("\n\n")
        if not sep:
            raise AssertionError("sorterctl show %s: no blank line after the envelope:\n%s"
                                 % (qid, out))
        fields = {}
        for line in head.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), []).append(value.strip())
        return fields, message

    def stats(self):
        """sorterctl stats, parsed: {name: int} from its "name value" lines."""
        out = {}
        for line in self.ctl("stats").stdout.splitlines():
            name, _, value = line.strip().partition(" ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def log_lines(self, pattern):
        """The log lines that match the regular expression pattern."""
        rx = re.compile(pattern)
        return [l for l in self.log().splitlines() if rx.search(l)]

    def qmgr_pid(self):
        """The queue manager's PID: the child that logs as sorterd/qmgr, else the one child
        that does not hold the SMTP listener (workers hold it, the queue manager closes it)."""
        kids = [k for k in self.children() if pid_alive(k)]
        logged = [k for k in kids if "sorterd/qmgr[%d]" % k in self.log()]
        if logged:
            return logged[-1]
        inode = listener_inode(self.port)
        others = [k for k in kids if inode and "socket:[%s]" % inode not in fd_links(k)]
        return others[0] if len(others) == 1 else None

    def wait_queue_empty(self, timeout):
        """True once no message is left in incoming/ active/ deferred/ hold/."""
        return wait_until(lambda: not self.queue_files(), timeout, interval=0.1) is not None

    def queue_files(self):
        """Names of the queue files in the spool's queue folders (not tmp/ or corrupt/)."""
        names = []
        for state in ("incoming", "active", "deferred", "hold"):
            try:
                names += os.listdir(os.path.join(self.spool, state))
            except FileNotFoundError:
                pass
        return sorted(names)


def check_config(build, path):
    """sorterd -t -c path: (exit status, stdout + stderr)."""
    r = subprocess.run([os.path.join(build, "sorterd"), "-t", "-c", path],
                       capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr


def unfold_header(message, name):
    """The first header called name in message (LF line ends), unfolded, or None."""
    headers = message.split("\n\n", 1)[0]
    m = re.search(r"^%s:(.*(?:\n[ \t].*)*)" % re.escape(name), headers, re.M | re.I)
    return re.sub(r"\s+", " ", m.group(1)).strip() if m else None


# ---- SMTP ----

class Reply:
    def __init__(self, lines):
        self.lines = lines                      # each line without CRLF, code included
        self.code = int(lines[0][:3])
        self.texts = [l[4:] for l in lines]
        m = re.match(r"([245])\.(\d{1,3})\.(\d{1,3})\b", self.texts[-1])
        self.enhanced = m.group(0) if m else None

    def __repr__(self):
        return "Reply(%r)" % ("\n".join(self.lines),)

    def __str__(self):
        return "\n".join(self.lines)

    def keywords(self):
        """EHLO keywords (upper case) -> the rest of the line."""
        kw = {}
        for t in self.texts[1:]:
            word, _, rest = t.partition(" ")
            kw[word.upper()] = rest
        return kw


class SMTPClosed(Exception):
    pass


class Client:
    """A raw SMTP client: exact bytes out, exact replies in, no smtplib conveniences."""

    def __init__(self, port, host="127.0.0.1", timeout=10, source=None):
        self.buf = b""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.timeout = timeout
        try:
            if source:
                self.sock.bind((source, 0))
            self.sock.connect((host, port))
        except OSError:
            self.sock.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        finally:
            self.sock.settimeout(self.timeout)
        if not chunk:
            raise SMTPClosed("connection closed; unread: %r" % self.buf)
        self.buf += chunk

    def read_line(self, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no complete reply line within %ss; have %r"
                                     % (timeout, self.buf))
            self._fill(left)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self, timeout=None):
        """Reads one whole (possibly multi-line) reply."""
        lines = []
        while True:
            line = self.read_line(timeout)
            if not re.match(r"^\d{3}[ -]", line) and not re.match(r"^\d{3}$", line):
                raise AssertionError("malformed reply line %r" % line)
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)

    def cmd(self, line, timeout=None):
        self.send(line + "\r\n")
        return self.reply(timeout)

    def nothing_more(self, wait=0.5):
        """True when no further byte arrives within wait seconds (and none is buffered)."""
        if self.buf:
            return False
        try:
            self._fill(wait)
        except socket.timeout:
            return True
        except SMTPClosed:
            return True
        return False

    def closed(self, timeout=5):
        """True when the server closes the connection within timeout s (bytes still
        buffered or arriving meanwhile are an error: they would be unread replies)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self._fill(left)
            except SMTPClosed:
                return not self.buf
            except socket.timeout:
                return False
            except OSError:
                return not self.buf

    def starttls(self, context=None):
        """Sends STARTTLS; on 220 performs the handshake. Returns the STARTTLS reply."""
        r = self.cmd("STARTTLS")
        if r.code == 220:
            self.handshake(context)
        return r

    def handshake(self, context=None):
        if self.buf:
            raise AssertionError("bytes after the STARTTLS reply, before TLS: %r" % self.buf)
        self.sock = (context or client_tls_context()).wrap_socket(self.sock)
        self.sock.settimeout(self.timeout)

    def ehlo(self, name="client.remote.test"):
        return self.cmd("EHLO " + name)

    def send_message(self, sender, rcpts, content, ehlo=True):
        """One whole transaction; returns (final reply, queue id or None). content is the
        message (str or bytes) without the final CRLF.CRLF, with CRLF line ends."""
        if ehlo:
            r = self.ehlo()
            if r.code != 250:
                return r, None
        r = self.cmd("MAIL FROM:<%s>" % sender)
        if r.code != 250:
            return r, None
        for rc in rcpts:
            r = self.cmd("RCPT TO:<%s>" % rc)
            if r.code != 250:
                self.cmd("RSET")
                return r, None
        r = self.cmd("DATA")
        if r.code != 354:
            return r, None
        if isinstance(content, str):
            content = content.encode()
        self.send(content + b"\r\n.\r\n")
        r = self.reply(timeout=60)
        m = QUEUED_RE.search(r.texts[-1]) if r.code == 250 else None
        return r, (m.group(1) if m else None)


def client_tls_context(maximum=None, minimum=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def message(subject="test", body="hello", extra_headers=()):
    lines = ["From: <sender@remote.test>", "To: <user@%s>" % LOCAL_DOMAIN,
             "Subject: " + subject, "Message-ID: <%s@remote.test>" % subject.replace(" ", ".")]
    lines += list(extra_headers)
    return "\r\n".join(lines) + "\r\n\r\n" + body


def blast(port, connections, per_connection, body_size=1024, timeout=30, stop=None):
    """Starts connections threads that each send per_connection messages on one connection.
    Returns (threads, acked, errors), filled in as the threads run: an id is in acked only
    once its 250 arrived. A thread gives up on its first error, or when stop (a
    threading.Event) is set. join_all() waits for the threads."""
    acked, errors = [], []
    lock = threading.Lock()

    def one(n):
        try:
            with Client(port, timeout=timeout) as c:
                r = c.reply()
                if r.code != 220:
                    raise AssertionError("greeting %s" % r)
                if c.ehlo().code != 250:
                    raise AssertionError("EHLO refused")
                for i in range(per_connection):
                    if stop is not None and stop.is_set():
                        return
                    body = ("c%d m%d " % (n, i)).ljust(body_size, "x")
                    r, qid = c.send_message("sender@remote.test", ["user%d@%s" % (i, LOCAL_DOMAIN)],
                                            message("blast %d %d" % (n, i), body), ehlo=False)
                    if qid is None:
                        raise AssertionError("message %d/%d: %s" % (n, i, r))
                    with lock:
                        acked.append(qid)
                c.cmd("QUIT")
        except Exception as e:  # noqa: BLE001 - every failure is reported to the caller
            with lock:
                errors.append("connection %d: %r" % (n, e))

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in range(connections)]
    for t in threads:
        t.start()
    return threads, acked, errors


def join_all(threads, timeout):
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)


class SorterTestCase(unittest.TestCase):
    """Base class: a temp dir per test, daemons stopped by PID in the cleanup, their logs
    printed when the test failed, and sanitizer reports in a log turned into a failure."""

    def run(self, result=None):
        if result is None:
            result = self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        self.tmp = tempfile.mkdtemp(prefix="sorter-it-")
        self.daemons = []
        try:
            return super().run(result)
        finally:
            if len(result.failures) + len(result.errors) > before:
                for d in self.daemons:
                    sys.stderr.write("\n---- %s (last lines) ----\n%s\n----\n"
                                     % (d.log_path, d.log_tail()))
            if os.environ.get("SORTER_KEEP_TMP"):
                sys.stderr.write("kept %s\n" % self.tmp)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def sorterd(self, name="d", stderr=None, **overrides):
        d = Sorterd(os.path.join(self.tmp, name), start=False, **overrides)
        self.daemons.append(d)
        self.addCleanup(self._finish, d)
        d.start(stderr=stderr)
        return d

    def _finish(self, d):
        d.stop()
        reports = d.sanitizer_reports()
        if reports:
            raise AssertionError("sanitizer reports in %s:\n%s" % (d.log_path, "\n".join(reports)))

    def connect(self, d, greet=True, **kw):
        c = Client(d.port, **kw)
        self.addCleanup(c.close)
        if greet:
            r = c.reply()
            self.assertEqual(r.code, 220, str(r))
        return c

    def assertReply(self, r, code, enhanced=None, msg=None):
        self.assertEqual(r.code, code, msg or str(r))
        if enhanced is not None:
            self.assertEqual(r.enhanced, enhanced, msg or str(r))

    def assertQueued(self, r, qid):
        self.assertReply(r, 250, "2.0.0")
        self.assertIsNotNone(qid, "no queue id in %s" % r)
        self.assertRegex(qid, QID_RE)
