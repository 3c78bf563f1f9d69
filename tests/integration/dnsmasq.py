"""dnsmasq.py - a private DNS server for Sorter's outbound tests, and a minimal DNS client.

PrivateDNS(directory, port, mx={...}, hosts={...}, null_mx=[...], servfail=[...],
           timeout=[...], extra_args=()) runs `dnsmasq --no-daemon` on 127.0.0.1:port (UDP and
TCP) with no upstream resolvers, no /etc/hosts and no config file. It is authoritative for
.test (`--local=/test/`): a .test name it has no record for gets NXDOMAIN, a name it knows
asked for a type it lacks gets NOERROR with no answer (NODATA), never REFUSED.

  mx        {domain: [(preference, host), ...]}       one MX record per pair
  hosts     {name: ["127.0.0.2", "::1", ...]}          A and AAAA records (any number per name)
  null_mx   [domain, ...]                               "MX 0 ." (RFC 7505)
  servfail  [domain, ...]  queries for the domain and the names under it get SERVFAIL at once
                           (forwarded to a UDP socket this helper holds that answers SERVFAIL)
  timeout   [domain, ...]  queries for the domain and the names under it are never answered
                           (forwarded to a UDP socket this helper holds and never reads)

Why a held socket and not a dead port: dnsmasq 2.90 ignores the ICMP "port unreachable" a
`--server=/d/127.0.0.1#DEADPORT` brings back and keeps the query pending, so a resolver sees a
timeout there, never SERVFAIL. A socket that answers SERVFAIL makes dnsmasq pass SERVFAIL on at
once ("reply error is SERVFAIL" in the log); one that never answers gives the timeout case.
The SERVFAIL socket is served by a daemon thread of the test process, closed by stop().
dnsmasq rotates the order of a record set between replies: compare answers sorted.

start() waits until the server answers a real query; stop() signals only the dnsmasq PID it
started and waits for it. query(name, qtype) asks this server and returns (rcode, answers):
see query() below. Every socket is bound to 127.0.0.1. Queries are logged to
directory/dnsmasq.log (dnsmasq's stderr).
"""

import ipaddress
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

# record types
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA = 1, 2, 5, 6, 12, 15, 16, 28
TYPES = {"A": A, "NS": NS, "CNAME": CNAME, "SOA": SOA, "PTR": PTR, "MX": MX, "TXT": TXT,
         "AAAA": AAAA}
# response codes
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
TIMEOUT = None      # query() returns rcode None when no answer came in time


def dnsmasq_missing():
    """None when dnsmasq is installed, else why not."""
    if shutil.which("dnsmasq") or os.access("/usr/sbin/dnsmasq", os.X_OK):
        return None
    return "dnsmasq is not installed (contrib/setup.sh installs dnsmasq-base)"


def _dnsmasq_path():
    return shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def free_dns_port(host="127.0.0.1"):
    """A port free for both UDP and TCP on host right now (a DNS server needs both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for UDP and TCP on %s" % host)


# ---- a minimal DNS client (RFC 1035 wire format, by hand) ----

def encode_name(name):
    name = name.rstrip(".")
    out = b""
    if name:
        for label in name.split("."):
            raw = label.encode("ascii")
            if not 0 < len(raw) < 64:
                raise ValueError("bad label in %r" % name)
            out += bytes([len(raw)]) + raw
    return out + b"\0"


def build_query(name, qtype, qid=None, rd=True):
    """A query packet: header (id, RD flag, one question) and the question."""
    if isinstance(qtype, str):
        qtype = TYPES[qtype.upper()]
    qid = random.randrange(65536) if qid is None else qid
    header = struct.pack("!HHHHHH", qid, 0x0100 if rd else 0, 1, 0, 0, 0)
    return qid, header + encode_name(name) + struct.pack("!HH", qtype, 1)


def _read_name(msg, off):
    """(name, offset after the name), following compression pointers."""
    labels = []
    end = None
    hops = 0
    while True:
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            hops += 1
            if hops > 64:
                raise ValueError("compression loop")
            continue
        off += 1
        if n == 0:
            break
        labels.append(msg[off:off + n].decode("ascii", "replace"))
        off += n
    return ".".join(labels), (end if end is not None else off)


def parse_response(msg):
    """{'id', 'flags', 'rcode', 'aa', 'tc', 'answers': [(type, value)], 'authority': [...]}.
    A value is a str for A, AAAA (compressed form), CNAME, NS, PTR; (pref, host) for MX with
    host "." for the root (a null MX); a list of bytes for TXT; raw bytes for other types."""
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        _, off = _read_name(msg, off)
        off += 4
    sections = []
    for count in (an, ns):
        recs = []
        for _ in range(count):
            _, off = _read_name(msg, off)
            rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
            off += 10
            rdata = msg[off:off + rdlen]
            if rtype == A:
                value = socket.inet_ntop(socket.AF_INET, rdata)
            elif rtype == AAAA:
                value = str(ipaddress.IPv6Address(rdata))
            elif rtype in (CNAME, NS, PTR):
                value = _read_name(msg, off)[0] or "."
            elif rtype == MX:
                value = (struct.unpack("!H", rdata[:2])[0], _read_name(msg, off + 2)[0] or ".")
            elif rtype == TXT:
                value, i = [], 0
                while i < len(rdata):
                    value.append(rdata[i + 1:i + 1 + rdata[i]])
                    i += 1 + rdata[i]
            else:
                value = rdata
            recs.append((rtype, value))
            off += rdlen
        sections.append(recs)
    return {"id": qid, "flags": flags, "rcode": flags & 0xF, "aa": bool(flags & 0x0400),
            "tc": bool(flags & 0x0200), "answers": sections[0], "authority": sections[1]}


def query(server, port, name, qtype, timeout=2.0):
    """Asks server:port (UDP) for name/qtype (an int or "MX", "A", "AAAA", ...).
    Returns (rcode, answers): rcode is NOERROR (0), SERVFAIL (2), NXDOMAIN (3), ... or
    TIMEOUT (None) when no reply came within timeout s; answers lists the values of the
    answer records of the type asked, in the order received (see parse_response)."""
    if isinstance(qtype, str):
        qtype = TYPES[qtype.upper()]
    qid, pkt = build_query(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        s.sendto(pkt, (server, port))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return TIMEOUT, []
            s.settimeout(left)
            try:
                data, _ = s.recvfrom(65535)
            except socket.timeout:
                return TIMEOUT, []
            if len(data) < 12 or struct.unpack("!H", data[:2])[0] != qid:
                continue
            r = parse_response(data)
            return r["rcode"], [v for t, v in r["answers"] if t == qtype]


class _Upstream:
    """A UDP socket on 127.0.0.1 that dnsmasq forwards a domain to: answering SERVFAIL to
    every query (answer=True), or never reading at all (answer=False: the query times out)."""

    def __init__(self, answer):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.queries = 0
        self._stop = threading.Event()
        self.thread = None
        if answer:
            self.sock.settimeout(0.2)
            self.thread = threading.Thread(target=self._serve, daemon=True)
            self.thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(data) < 12:
                continue
            self.queries += 1
            qid, flags = struct.unpack("!HH", data[:4])
            # QR, opcode and RD kept, RA, rcode SERVFAIL; the question echoed
            rflags = 0x8000 | (flags & 0x7900) | 0x0080 | SERVFAIL
            qd = struct.unpack("!H", data[4:6])[0]
            off = 12
            try:
                for _ in range(qd):
                    _, off = _read_name(data, off)
                    off += 4
            except (IndexError, ValueError):
                continue
            reply = struct.pack("!HHHHHH", qid, rflags, qd, 0, 0, 0) + data[12:off]
            try:
                self.sock.sendto(reply, peer)
            except OSError:
                pass

    def close(self):
        self._stop.set()
        if self.thread:
            self.thread.join(2)
        self.sock.close()


class PrivateDNS:
    def __init__(self, directory, port, mx=None, hosts=None, null_mx=(), servfail=(),
                 timeout=(), extra_args=()):
        self.dir = os.path.abspath(directory)
        self.port = port
        self.host = "127.0.0.1"
        self.mx = dict(mx or {})
        self.hosts = dict(hosts or {})
        self.null_mx = list(null_mx)
        self.servfail = list(servfail)
        self.timeout = list(timeout)
        self.extra_args = list(extra_args)
        self.log_path = os.path.join(self.dir, "dnsmasq.log")
        self.proc = None
        self._upstreams = []

    def args(self):
        """dnsmasq's command line (the upstream ports are known once start() made them)."""
        a = [_dnsmasq_path(), "--no-daemon", "--port=%d" % self.port,
             "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
             "--conf-file=/dev/null", "--log-facility=-", "--log-queries",
             "--pid-file=" + os.path.join(self.dir, "dnsmasq.pid"),
             "--no-negcache", "--local=/test/"]
        for domain, pairs in self.mx.items():
            for pref, target in pairs:
                a.append("--mx-host=%s,%s,%d" % (domain, target, pref))
        for domain in self.null_mx:
            a.append("--mx-host=%s,.,0" % domain)
        for name, addrs in self.hosts.items():
            if isinstance(addrs, str):
                addrs = [addrs]
            for addr in addrs:
                ipaddress.ip_address(addr)      # a typo fails here, not as a silent NXDOMAIN
                a.append("--host-record=%s,%s" % (name, addr))
        for up, domains in self._upstreams:
            for d in domains:
                a.append("--server=/%s/127.0.0.1#%d" % (d, up.port))
        return a + self.extra_args

    def start(self, timeout=10):
        missing = dnsmasq_missing()
        if missing:
            raise RuntimeError(missing)
        os.makedirs(self.dir, exist_ok=True)
        if self.servfail:
            self._upstreams.append((_Upstream(answer=True), self.servfail))
        if self.timeout:
            self._upstreams.append((_Upstream(answer=False), self.timeout))
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log)
        finally:
            log.close()
        # a real query for a name it must know nothing about: any reply means it serves
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._close_upstreams()
                raise RuntimeError("dnsmasq exited with %d at start:\n%s"
                                   % (self.proc.returncode, self.log()))
            rcode, _ = query(self.host, self.port, "probe.invalid-start.test", A, timeout=0.2)
            if rcode is not TIMEOUT:
                return self
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError("dnsmasq did not answer on 127.0.0.1:%d within %ds:\n%s"
                                   % (self.port, timeout, self.log()))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10):
        """SIGTERM to the dnsmasq this helper started (its PID only), wait, SIGKILL that
        PID if it lingers; then closes the forwarding sockets."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        self._close_upstreams()

    def _close_upstreams(self):
        for up, _ in self._upstreams:
            up.close()
        self._upstreams = []

    def dns_servers(self):
        """This server as sorterd's dns_servers value ("127.0.0.1:PORT", c-ares' form)."""
        return "%s:%d" % (self.host, self.port)

    def query(self, name, qtype, timeout=2.0):
        """(rcode, answers) from this server: see the module-level query()."""
        return query(self.host, self.port, name, qtype, timeout)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""
