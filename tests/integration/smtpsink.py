"""smtpsink.py - Postfix's smtp-sink as a remote MX for Sorter's outbound tests.

SmtpSink(directory, host, port, soft_reject=(), hard_reject=(), disconnect=(), reply_421=(),
         soft_reply=None, hard_reply=None, no_8bitmime=False, no_pipelining=False,
         no_dsn=False, no_esmtp=False, hostname=None, extra_args=())
runs `smtp-sink` on host:port (host in 127.0.0.0/8: 127.0.0.2, 127.0.0.3, ... are all local
on Linux, so several "remote MXes" can share one port number) and keeps every mail
transaction that reached the end of DATA as one file under directory/dump/ (`-d`).

Reply options, each a list of command names (CONNECT, HELO, EHLO, MAIL, RCPT, DATA, "." for
the end of data, RSET, NOOP, QUIT):
  soft_reject  -r  reply 4xx (soft_reply, default "450 4.3.0 Error: command failed")
  hard_reject  -f  reply 5xx (hard_reply, default "500 5.3.0 Error: command failed")
  disconnect   -q  close the connection without a reply
  reply_421    -Q  reply "421" and close
smtp-sink applies them to every occurrence: it cannot answer 451 first and 250 later (use
scripted_smtp.ScriptedSMTPServer for greylisting and other per-attempt scripts). -r and -f
also stop it from announcing PIPELINING. `-M count` is never used: smtp-sink exits before
answering the last message.

Dump file format (as smtp-sink 3.7 writes it; CRLF turned into LF, dots unstuffed):
    X-Client-Addr: 127.0.0.1
    X-Client-Proto: ESMTP
    X-Helo-Args: client.example            (only if the client sent HELO/EHLO)
    X-Mail-Args: <sender@x.test> BODY=8BITMIME SIZE=20      (what followed "MAIL FROM:")
    X-Rcpt-Args: <rcpt@y.test> NOTIFY=NEVER                 (one per RCPT, in order sent)
    Received: from HELO ([ADDR])
    <TAB>by HOSTNAME (smtp-sink) with ESMTP id RANDOM;
    <TAB>DATE
    ...the message as received...
    (one empty line added by smtp-sink)
The file is written whatever the reply to "." is (a message rejected with hard_reject=["."]
is still dumped). smtp-sink opens the file at MAIL and removes it again when the transaction
ends without reaching the end of DATA (refused at RCPT or DATA, RSET, QUIT): until then an
empty or partial file exists. messages() skips files without the Received line that ends
smtp-sink's headers; wait for a file (harness.wait_until) rather than read it right after
the client's 250.

messages() parses the files into dicts, oldest first; stop() signals only the PID it started.
Run as root, smtp-sink drops to `nobody` (-u nobody): the dump folder is made world-writable
and the folders above it traversable (o+x).
"""

import os
import shutil
import signal
import socket
import stat
import subprocess
import time


def smtp_sink_missing():
    """None when Postfix's smtp-sink is installed, else why not."""
    if shutil.which("smtp-sink") or os.access("/usr/sbin/smtp-sink", os.X_OK):
        return None
    return "smtp-sink is not installed (contrib/setup.sh installs postfix)"


_HANDED_OUT = set()     # ports this process was given: never twice


def free_port_on(host):
    """A TCP port nobody listens on at host (e.g. 127.0.0.2) right now, and none this process
    was given before: the kernel may pick the same free port twice in a row, and a test that
    asks for two ports (two listeners of one sorterd) must get two."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def tcp_listening(host, port):
    """True when a TCP socket listens on host:port (or 0.0.0.0:port), read from /proc so
    that checking opens no SMTP session."""
    a = socket.inet_aton(host)
    want = {"%08X:%04X" % (int.from_bytes(a, "little"), port), "00000000:%04X" % port}
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] in want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def _strip_brackets(s):
    return s[1:-1] if s.startswith("<") and s.endswith(">") else s


def _params(tokens):
    """["BODY=8BITMIME", "SMTPUTF8"] -> {"BODY": "8BITMIME", "SMTPUTF8": None}"""
    out = {}
    for t in tokens:
        k, eq, v = t.partition("=")
        out[k.upper()] = v if eq else None
    return out


def parse_dump(raw):
    """One smtp-sink dump file (bytes) as a dict:
      sender       the MAIL FROM address without <> ("" for the null sender)
      mail_params  {"SIZE": "20", "BODY": "8BITMIME", "SMTPUTF8": None, ...}
      rcpts        the RCPT TO addresses without <>, in order sent
      rcpt_params  one {"NOTIFY": "NEVER", ...} per entry of rcpts
      helo         the HELO/EHLO argument (None if none was sent)
      client_addr  the client's IP address as smtp-sink saw it
      proto        "SMTP", "ESMTP" or "LMTP"
      data         the message as sent in DATA, lines ended with CRLF, dots unstuffed
                   (the dump keeps lines, not line endings: a bare LF or CR is not seen)
      raw          the whole file (bytes)
    Returns None for a file that does not (yet) hold smtp-sink's Received line: a
    transaction in progress or abandoned before the end of DATA."""
    lines = raw.split(b"\n")
    d = {"sender": None, "mail_params": {}, "rcpts": [], "rcpt_params": [], "helo": None,
         "client_addr": None, "proto": None, "data": b"", "raw": raw}
    i = 0
    while i < len(lines):
        line = lines[i].decode("utf-8", "surrogateescape")
        i += 1
        name, _, value = line.partition(": ")
        if name == "X-Client-Addr":
            d["client_addr"] = value
        elif name == "X-Client-Proto":
            d["proto"] = value
        elif name == "X-Helo-Args":
            d["helo"] = value
        elif name == "X-Mail-Args":
            tok = value.split()
            d["sender"] = _strip_brackets(tok[0]) if tok else ""
            d["mail_params"] = _params(tok[1:])
        elif name == "X-Rcpt-Args":
            tok = value.split()
            d["rcpts"].append(_strip_brackets(tok[0]) if tok else "")
            d["rcpt_params"].append(_params(tok[1:]))
        elif name == "Received":
            # two continuation lines (by ... id ...; and the date) end smtp-sink's headers
            while i < len(lines) and lines[i][:1] in (b"\t", b" "):
                i += 1
            break
        elif i == len(lines) and line == "":
            return None         # the end of a file that stops before Received
        else:
            raise ValueError("not an smtp-sink dump file (line %r)" % line)
    else:
        return None
    body = b"\n".join(lines[i:])
    if body.endswith(b"\n"):
        body = body[:-1]            # the empty line smtp-sink adds after the message
    d["data"] = body.replace(b"\n", b"\r\n")
    return d


class SmtpSink:
    def __init__(self, directory, host, port, soft_reject=(), hard_reject=(), disconnect=(),
                 reply_421=(), soft_reply=None, hard_reply=None, no_8bitmime=False,
                 no_pipelining=False, no_dsn=False, no_esmtp=False, hostname=None,
                 extra_args=()):
        if not host.startswith("127."):
            raise ValueError("smtp-sink must listen on 127.0.0.0/8, not %s" % host)
        self.dir = os.path.abspath(directory)
        self.dump_dir = os.path.join(self.dir, "dump")
        self.host = host
        self.port = port
        self.log_path = os.path.join(self.dir, "smtp-sink.log")
        self.opts = []
        for flag, cmds in (("-r", soft_reject), ("-f", hard_reject), ("-q", disconnect),
                           ("-Q", reply_421)):
            if cmds:
                self.opts += [flag, ",".join(cmds)]
        if soft_reply:
            self.opts += ["-b", soft_reply]
        if hard_reply:
            self.opts += ["-B", hard_reply]
        for flag, on in (("-8", no_8bitmime), ("-p", no_pipelining), ("-N", no_dsn),
                         ("-e", no_esmtp)):
            if on:
                self.opts.append(flag)
        if hostname:
            self.opts += ["-h", hostname]
        self.opts += list(extra_args)
        if "-M" in self.opts:
            raise ValueError("smtp-sink -M exits before answering the last message")
        self.proc = None

    def endpoint(self):
        return "%s:%d" % (self.host, self.port)

    def args(self):
        prog = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        a = [prog]
        if os.getuid() == 0:
            a += ["-u", "nobody"]
        # year to second, then smtp-sink's random hex: names sort by time across midnight
        a += ["-d", os.path.join(self.dump_dir, "%Y%m%d%H%M%S.")]
        return a + self.opts + ["inet:%s:%d" % (self.host, self.port), "100"]

    def _open_up(self):
        os.makedirs(self.dump_dir, exist_ok=True)
        os.chmod(self.dump_dir, 0o777)
        p = self.dir
        while p not in ("/", ""):
            mode = os.stat(p).st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(p, stat.S_IMODE(mode) | 0o005)
            p = os.path.dirname(p)

    def start(self, timeout=10):
        missing = smtp_sink_missing()
        if missing:
            raise RuntimeError(missing)
        if tcp_listening(self.host, self.port):
            raise RuntimeError("%s is busy" % self.endpoint())
        self._open_up()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not tcp_listening(self.host, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError("smtp-sink exited with %d at start:\n%s"
                                   % (self.proc.returncode, self.log()))
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError("smtp-sink did not listen on %s within %ds:\n%s"
                                   % (self.endpoint(), timeout, self.log()))
            time.sleep(0.02)
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10):
        """SIGTERM to the smtp-sink this helper started (by its PID), wait; SIGKILL to that
        PID if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)

    def dump_files(self):
        """Paths of the dump files, oldest first (by last write, then name)."""
        out = []
        for root, _, files in os.walk(self.dump_dir):
            for n in files:
                p = os.path.join(root, n)
                try:
                    out.append((os.stat(p).st_mtime_ns, p))
                except FileNotFoundError:
                    pass
        return [p for _, p in sorted(out)]

    def messages(self):
        """Every complete dump file parsed by parse_dump() (keys sender, mail_params,
        rcpts, rcpt_params, helo, client_addr, proto, data, raw) plus path, oldest first.
        Files of transactions in progress or abandoned before the end of DATA are skipped."""
        out = []
        for p in self.dump_files():
            try:
                with open(p, "rb") as f:
                    d = parse_dump(f.read())
            except FileNotFoundError:
                continue            # removed by smtp-sink meanwhile: an abandoned transaction
            if d is None:
                continue
            d["path"] = p
            out.append(d)
        return out

    def count(self):
        """How many complete messages the dump holds."""
        return len(self.messages())

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""
