"""milters.py - filters for Sorter's milter tests, each a private process on loopback.

TestFilter(dir, name, ...)   milter_filter.py (pymilter on libmilter) under /usr/bin/python3,
                             told what to do per stage with set(...) and through triggers in
                             the mail; events() is what it was shown.
OpenDKIM(dir, mode, ...)     a private opendkim (-f) signing (mode "s") or verifying ("v") for
                             a test domain, its key made with opendkim-genkey and its public key
                             given to it through TestDNSData (no DNS server needed).
RawMilter(behaviour)         a filter that breaks the protocol on purpose, in a thread of the
                             test: "garbage" (nonsense bytes after option negotiation),
                             "silent" (accepts and never answers), "die" (closes the
                             connection once the message starts).

Everything listens on 127.0.0.1 (or a unix socket in the test's dir) and is stopped by the PID
it started.
"""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

from harness import current_user, free_port, listening, wait_until

SYSTEM_PYTHON = "/usr/bin/python3"    # Debian's python3-milter and python3-dkim live here
FILTER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "milter_filter.py")


def milter_missing():
    """None when pymilter, python3-dkim and OpenDKIM are installed, else what is missing."""
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import Milter, dkim"], capture_output=True)
    if r.returncode != 0:
        return "python3-milter / python3-dkim missing (contrib/setup.sh installs them)"
    for prog in ("opendkim", "opendkim-genkey"):
        if not shutil.which(prog):
            return "%s is not installed (contrib/setup.sh installs opendkim, opendkim-tools)" % prog
    return None


class Process:
    """A child process stopped by its PID."""

    proc = None

    def stop(self, timeout=10):
        self._stop(timeout)

    @staticmethod
    def stop_all(procs, timeout=10):
        """Stops each of procs as _stop() does, side by side: all get SIGTERM first, then
        each is waited for (an opendkim takes 5 s to exit)."""
        procs = [p for p in procs if p.proc is not None and p.proc.poll() is None]
        for p in procs:
            p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()

    def _stop(self, timeout):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, n=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


def _listening6(port):
    """True when something listens on [::1]:port (from /proc, no probe connection)."""
    try:
        with open("/proc/net/tcp6") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1].endswith(":%04X" % port) and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


class TestFilter(Process):
    def __init__(self, dirname, name="A", unix=False, leadspc=False, noreply=False, inet6=False):
        self.dir = dirname
        os.makedirs(dirname, exist_ok=True)
        self.name = name
        self.events_path = os.path.join(dirname, "events.jsonl")
        self.control_path = os.path.join(dirname, "control.json")
        self.log_path = os.path.join(dirname, "filter.log")
        if unix:
            self.path = os.path.join(dirname, "milter.sock")
            self.spec = "unix:" + self.path
            sock = "unix:" + self.path
            self.port = None
        elif inet6:
            self.port = free_port()
            self.spec = "inet6:[::1]:%d" % self.port
            sock = "inet6:%d@::1" % self.port
        else:
            self.port = free_port()
            self.spec = "inet:127.0.0.1:%d" % self.port
            sock = "inet:%d@127.0.0.1" % self.port
        self.inet6 = inet6
        self.argv = [SYSTEM_PYTHON, FILTER, "--socket", sock, "--name", name, "--log",
                     self.events_path, "--control", self.control_path]
        if leadspc:
            self.argv.append("--leadspc")
        if noreply:
            self.argv.append("--noreply")
        self.set()

    def stop(self, timeout=0.5):
        # libmilter notices SIGTERM only at its next 5 s poll: what the filter saw is on disk
        # already (it writes each event as it comes), so it is not waited for long
        self._stop(timeout)

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log)
        if self.port is None:
            ready = lambda: os.path.exists(self.path)           # noqa: E731
        elif self.inet6:
            ready = lambda: _listening6(self.port)              # noqa: E731
        else:
            ready = lambda: listening(self.port)                # noqa: E731
        if not wait_until(lambda: ready() or self.proc.poll() is not None, 15):
            raise RuntimeError("filter %s did not listen\n%s" % (self.name, self.log_tail()))
        if self.proc.poll() is not None:
            raise RuntimeError("filter %s exited\n%s" % (self.name, self.log_tail()))
        return self

    def set(self, **control):
        """What the filter does from its next connection on (see milter_filter.py)."""
        tmp = self.control_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(control, f)
        os.rename(tmp, self.control_path)

    def events(self, stage=None):
        try:
            with open(self.events_path) as f:
                ev = [json.loads(line) for line in f if line.strip()]
        except OSError:
            return []
        return [e for e in ev if stage is None or e["stage"] == stage]

    def clear(self):
        try:
            os.unlink(self.events_path)
        except FileNotFoundError:
            pass


def genkey(dirname, domain, selector):
    """opendkim-genkey: (private key path, the TXT record's value)."""
    os.makedirs(dirname, exist_ok=True)
    subprocess.run(["opendkim-genkey", "-b", "2048", "-d", domain, "-s", selector, "-D", dirname],
                   check=True, capture_output=True, timeout=60)
    with open(os.path.join(dirname, selector + ".txt")) as f:
        txt = f.read()
    # sel._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=..." "..." )  ; comment
    value = "".join(part for part in txt.split('"')[1::2])
    return os.path.join(dirname, selector + ".private"), value


class OpenDKIM(Process):
    """mode "s" signs mail from InternalHosts (and from authenticated clients) for domain;
    mode "v" verifies and adds Authentication-Results."""

    def __init__(self, dirname, mode, domain, selector, keyfile, txt, authserv="verifier.test"):
        self.dir = dirname
        os.makedirs(dirname, exist_ok=True)
        self.port = free_port()
        self.spec = "inet:127.0.0.1:%d" % self.port
        self.log_path = os.path.join(dirname, "opendkim.log")
        dns = os.path.join(dirname, "dns.txt")
        with open(dns, "w") as f:
            f.write("%s._domainkey.%s %s\n" % (selector, domain, txt))
        self.conf = os.path.join(dirname, "opendkim.conf")
        lines = [
            "Syslog no",
            "Socket inet:%d@127.0.0.1" % self.port,
            "Mode %s" % mode,
            "Domain %s" % domain,
            "Selector %s" % selector,
            "KeyFile %s" % keyfile,
            "PidFile %s" % os.path.join(dirname, "opendkim.pid"),
            "UserID %s" % current_user(),
            "RequireSafeKeys no",
            "TestDNSData file:%s" % dns,
            "AuthservID %s" % authserv,
            "Canonicalization simple/simple",    # the strictest: every byte counts
        ]
        if mode == "s":
            # a folded field among the signed ones: simple canonicalization counts its bytes
            lines.append("SignHeaders From,To,Subject,Date,Message-ID,X-Folded")
        if mode == "v":
            # nobody is internal: every message is checked, none signed
            lines.append("InternalHosts 192.0.2.1")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["opendkim", "-f", "-x", self.conf],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if not wait_until(lambda: listening(self.port) or self.proc.poll() is not None, 15):
            raise RuntimeError("opendkim did not listen\n%s" % self.log_tail())
        if self.proc.poll() is not None:
            raise RuntimeError("opendkim exited\n%s" % self.log_tail())
        return self


def dkim_verify(message, txt):
    """Python's dkim module (under the system Python) on message (bytes, CRLF), the key's TXT
    record given as the DNS answer: (True/False, its output)."""
    script = ("import dkim, sys\n"
              "txt = sys.argv[1].encode()\n"
              "msg = sys.stdin.buffer.read()\n"
              "ok = dkim.verify(msg, dnsfunc=lambda name, timeout=5: txt)\n"
              "print('pass' if ok else 'fail')\n")
    r = subprocess.run([SYSTEM_PYTHON, "-c", script, txt], input=message, capture_output=True,
                       timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    return r.returncode == 0 and out.strip().endswith("pass"), out


# ---- a filter that breaks the protocol ----

def _packet(cmd, data=b""):
    return struct.pack(">I", len(data) + 1) + cmd + data


class RawMilter:
    """behaviour: "garbage", "silent" or "die" (see the module's doc); "ok" answers continue
    to everything. The listener lives in a thread until stop()."""

    def __init__(self, behaviour, at=b"C"):
        self.behaviour = behaviour
        self.at = at            # the command at which to misbehave
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.spec = "inet:127.0.0.1:%d" % self.port
        self.stopping = threading.Event()
        self.conns = []
        self.commands = []      # every command byte seen, in order
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass

    def _serve(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _read_packet(self, c):
        head = b""
        while len(head) < 4:
            chunk = c.recv(4 - len(head))
            if not chunk:
                return None
            head += chunk
        n = struct.unpack(">I", head)[0]
        data = b""
        while len(data) < n:
            chunk = c.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _conn(self, c):
        try:
            while not self.stopping.is_set():
                pkt = self._read_packet(c)
                if pkt is None:
                    return
                cmd = pkt[:1]
                self.commands.append(cmd)
                if cmd == b"O":
                    c.sendall(_packet(b"O", struct.pack(">III", 6, 0x1ff, 0)))
                    continue
                if cmd in (b"D", b"A"):
                    continue            # macros and abort: no reply
                if cmd == b"Q":
                    return
                if cmd == self.at or (self.at == b"*" and cmd not in (b"D", b"A")):
                    if self.behaviour == "garbage":
                        c.sendall(b"\x00\x00\x00\x05zjunk")
                        continue
                    if self.behaviour == "silent":
                        continue
                    if self.behaviour == "die":
                        c.close()
                        return
                c.sendall(_packet(b"c"))
        except OSError:
            return
        finally:
            try:
                c.close()
            except OSError:
                pass
