"""haproxy.py - a private HAProxy in TCP mode in front of sorterd listeners, for Sorter's
PROXY protocol tests.

PrivateHAProxy(directory, front_port, backends=[(host, port), ...], proxy="v2") writes a
throwaway haproxy.cfg (mode tcp, round robin over the backends, each server line with
send-proxy-v2, send-proxy (v1) or nothing, as proxy says: "v2", "v1" or None) and runs
`haproxy -db` in the foreground, listening on 127.0.0.1:front_port only. start() checks the
config with `haproxy -c` and waits for the listener; stop() signals only the PID it
started. A client that binds its socket to 127.0.0.5 before connecting appears as
127.0.0.5 in the header HAProxy sends on.
"""

import os
import shutil
import signal
import subprocess
import time


def haproxy_missing():
    if shutil.which("haproxy") or os.access("/usr/sbin/haproxy", os.X_OK):
        return None
    return "haproxy is not installed (contrib/setup.sh installs haproxy)"


def _path():
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


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


class PrivateHAProxy:
    def __init__(self, directory, front_port, backends, proxy="v2", check=False):
        self.dir = os.path.abspath(directory)
        self.port = front_port
        self.backends = list(backends)
        self.proxy = proxy
        self.check = check
        self.conf_path = os.path.join(self.dir, "haproxy.cfg")
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.proc = None

    def config_text(self):
        send = {"v2": " send-proxy-v2", "v1": " send-proxy", None: ""}[self.proxy]
        lines = ["# private HAProxy, written by tests/integration/haproxy.py",
                 "global", "    pidfile %s/haproxy.pid" % self.dir, "    maxconn 2000",
                 "defaults", "    mode tcp", "    timeout connect 5s", "    timeout client 120s",
                 "    timeout server 120s", "    retries 2", "    option redispatch",
                 "frontend fe", "    bind 127.0.0.1:%d" % self.port, "    default_backend be",
                 "backend be", "    balance roundrobin"]
        for i, (host, port) in enumerate(self.backends):
            lines.append("    server s%d %s:%d%s%s" % (i, host, port, send,
                                                         " check inter 500ms fall 1 rise 1"
                                                         if self.check else ""))
        return "\n".join(lines) + "\n"

    def start(self, timeout=10):
        missing = haproxy_missing()
        if missing:
            raise RuntimeError(missing)
        os.makedirs(self.dir, exist_ok=True)
        with open(self.conf_path, "w") as f:
            f.write(self.config_text())
        r = subprocess.run([_path(), "-c", "-f", self.conf_path], capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError("haproxy -c: %s%s" % (r.stdout, r.stderr))
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([_path(), "-db", "-f", self.conf_path],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError("haproxy did not listen on 127.0.0.1:%d:\n%s"
                                   % (self.port, self.log()))
            time.sleep(0.05)
        return self

    def stop(self, timeout=10):
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""
