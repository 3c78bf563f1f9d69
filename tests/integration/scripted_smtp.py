"""scripted_smtp.py - a scriptable SMTP server in Python for Sorter's outbound tests: the
remote MX cases smtp-sink cannot play (451 first and 250 later, SIZE limits, servers with or
without 8BITMIME / DSN / SMTPUTF8 / PIPELINING / STARTTLS).

ScriptedSMTPServer(host, port, keywords=DEFAULT_KEYWORDS, hostname="scripted.test",
                   cert=None, key=None, replies=None, greeting=None, timeout=30, lmtp=False)

  host       an address in 127.0.0.0/8 (127.0.0.2, ...) or "::1" (an IPv6 listener);
             port e.g. smtpsink.free_port_on(host)
  keywords   the EHLO keywords offered, in order, e.g. ["PIPELINING", "SIZE 1000", "DSN"].
             "STARTTLS" is offered only before TLS; it works when cert and key are given
             (else STARTTLS gets 454). What is not offered is enforced: SIZE= above the
             SIZE limit gets 552 5.3.4 at MAIL (and a bigger message 552 at the end of
             data); BODY=8BITMIME without 8BITMIME, SMTPUTF8 without SMTPUTF8, RET/ENVID
             without DSN get 555 5.5.4 at MAIL, NOTIFY/ORCPT without DSN 555 at RCPT.
  replies    {COMMAND: script} overriding replies; COMMAND is CONNECT (the greeting), EHLO,
             HELO, MAIL, RCPT, DATA, DOT (end of data), RSET, NOOP, QUIT, STARTTLS. A script is
               "451 4.7.1 Try later"     the reply to every occurrence, or
               ["451 4.7.1 Greylisted", None]   one entry per occurrence, counted over the
                                          whole server (all sessions); None or the end of
                                          the list = the default reply, or
               callable(session, arg) -> reply or None   (session: the Session below)
             A reply may hold several lines separated by "\\n" (written as given, each ended
             with CRLF). The reply "DISCONNECT" closes the connection without a reply; after
             a reply starting "421" the server closes the connection.

  lmtp       speak LMTP (RFC 2033) instead: LHLO (scripted as EHLO) answers with the
             keywords, EHLO and HELO get 500, and the end of data gets one reply per
             accepted recipient (the DOT script, called once per recipient; the callable
             form gets the recipient as arg); data_replies in the transaction holds them.

start() listens (a thread per session); stop() closes the listener and every session and
joins the threads. Records, under self.lock:
  transactions  one dict per MAIL accepted: sender, mail_params ({"SIZE": "20",
                "BODY": "8BITMIME", "SMTPUTF8": None}), rcpts (accepted addresses),
                rcpt_params (one dict per accepted rcpt), refused_rcpts [(addr, reply)],
                data (bytes as received in DATA, dots unstuffed, None if no DATA),
                data_reply (the reply to the end of data), accepted (2xx to the end of data),
                helo, tls (bool), session (number)
  messages()    the transactions whose data got a 2xx reply
  sessions      one Session per connection: number, peer, helo, tls, tls_version,
                commands (every command line received, str), sent_ahead (commands that
                arrived with more bytes behind them: pipelining seen by the server), closed
  counts        {COMMAND: times received}
"""

import socket
import ssl
import threading
import time

DEFAULT_KEYWORDS = ("PIPELINING", "8BITMIME", "SIZE 10240000", "DSN", "ENHANCEDSTATUSCODES",
                    "SMTPUTF8")

DEFAULT_REPLIES = {
    "CONNECT": "220 {hostname} ESMTP scripted",
    "HELO": "250 {hostname}",
    "MAIL": "250 2.1.0 Ok",
    "RCPT": "250 2.1.5 Ok",
    "DATA": "354 End data with <CR><LF>.<CR><LF>",
    "DOT": "250 2.0.0 Ok: queued as S{n}",
    "RSET": "250 2.0.0 Ok",
    "NOOP": "250 2.0.0 Ok",
    "QUIT": "221 2.0.0 Bye",
    "STARTTLS": "220 2.0.0 Ready to start TLS",
}


def _params(tokens):
    out = {}
    for t in tokens:
        k, eq, v = t.partition("=")
        out[k.upper()] = v if eq else None
    return out


def _path(arg, prefix):
    """'FROM:<a@b> SIZE=1' -> ('a@b', {'SIZE': '1'}), or None if malformed."""
    if not arg.upper().startswith(prefix):
        return None
    rest = arg[len(prefix):].lstrip()
    if not rest.startswith("<"):
        return None
    end = rest.find(">")
    if end < 0:
        return None
    return rest[1:end], _params(rest[end + 1:].split())


class _Closed(Exception):
    pass


class Session:
    def __init__(self, server, conn, peer, number):
        self.server = server
        self.conn = conn
        self.peer = peer
        self.number = number
        self.helo = None
        self.tls = False
        self.tls_version = None
        self.commands = []
        self.sent_ahead = []
        self.closed = False
        self.txn = None
        self.buf = b""

    # ---- I/O ----
    def _fill(self):
        try:
            chunk = self.conn.recv(65536)
        except (OSError, ssl.SSLError):
            raise _Closed()
        if not chunk:
            raise _Closed()
        self.buf += chunk

    def readline(self):
        while b"\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                raise _Closed()
            self._fill()
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def send(self, text):
        try:
            self.conn.sendall(("\r\n".join(text.split("\n")) + "\r\n").encode("utf-8"))
        except (OSError, ssl.SSLError):
            raise _Closed()

    # ---- replies ----
    def reply(self, cmd, arg, default):
        """The scripted reply to cmd (or default), sent; returns it."""
        text = self.scripted_text(cmd, arg, default)
        self.send_reply(text)
        return text

    def scripted_text(self, cmd, arg, default):
        """The scripted reply to cmd (or default), not sent yet."""
        text = self.server._scripted(cmd, self, arg)
        if text is None:
            text = default
        return text.replace("{hostname}", self.server.hostname).replace(
            "{n}", str(len(self.server.transactions)))

    def send_reply(self, text):
        if text == "DISCONNECT":
            raise _Closed()
        self.send(text)
        if text.startswith("421"):
            raise _Closed()

    def keywords(self):
        kws = []
        for k in self.server.keywords:
            if k.upper() == "STARTTLS" and self.tls:
                continue
            kws.append(k)
        return kws

    def offered(self, name):
        return any(k.split()[0].upper() == name for k in self.keywords())

    def size_limit(self):
        for k in self.keywords():
            parts = k.split()
            if parts[0].upper() == "SIZE" and len(parts) > 1 and int(parts[1]) > 0:
                return int(parts[1])
        return None

    # ---- the dialogue ----
    def run(self):
        try:
            self.reply("CONNECT", "", DEFAULT_REPLIES["CONNECT"])
            while True:
                raw = self.readline()
                if self.buf:
                    self.sent_ahead.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self.server.lock:
                    self.commands.append(line)
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                with self.server.lock:
                    self.server.counts[verb] = self.server.counts.get(verb, 0) + 1
                handler = getattr(self, "do_" + verb, None)
                if handler is None:
                    self.send("502 5.5.2 Error: command not recognized")
                    continue
                handler(arg.strip())
        except _Closed:
            pass
        finally:
            self.closed = True
            try:
                self.conn.close()
            except OSError:
                pass

    def do_LHLO(self, arg):
        if not self.server.lmtp:
            self.send("502 5.5.2 Error: command not recognized")
            return
        self.helo = arg
        self.txn = None
        lines = ["250-" + self.server.hostname] + ["250-" + k for k in self.keywords()]
        lines[-1] = "250 " + lines[-1][4:]
        self.reply("EHLO", arg, "\n".join(lines))

    def do_EHLO(self, arg):
        if self.server.lmtp:
            self.send("500 5.5.1 Error: this is LMTP, send LHLO")
            return
        self.helo = arg
        self.txn = None
        lines = ["250-" + self.server.hostname] + ["250-" + k for k in self.keywords()]
        lines[-1] = "250 " + lines[-1][4:]
        self.reply("EHLO", arg, "\n".join(lines))

    def do_HELO(self, arg):
        if self.server.lmtp:
            self.send("500 5.5.1 Error: this is LMTP, send LHLO")
            return
        self.helo = arg
        self.txn = None
        self.reply("HELO", arg, DEFAULT_REPLIES["HELO"])

    def do_STARTTLS(self, arg):
        if self.tls or not self.offered("STARTTLS"):
            self.send("502 5.5.1 STARTTLS not offered")
            return
        if self.server.ssl_context is None:
            self.send("454 4.7.0 TLS not available")
            return
        self.reply("STARTTLS", arg, DEFAULT_REPLIES["STARTTLS"])
        if self.buf:
            raise _Closed()         # plaintext after STARTTLS: an injection attempt
        try:
            self.conn = self.server.ssl_context.wrap_socket(self.conn, server_side=True)
        except (OSError, ssl.SSLError):
            raise _Closed()
        self.tls = True
        self.tls_version = self.conn.version()
        self.helo = None
        self.txn = None

    def do_MAIL(self, arg):
        if self.helo is None:
            self.send("503 5.5.1 Error: send HELO/EHLO first")
            return
        if self.txn is not None:
            self.send("503 5.5.1 Error: nested MAIL command")
            return
        p = _path(arg, "FROM:")
        if p is None:
            self.send("501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        sender, params = p
        limit = self.size_limit()
        bad = None
        if "BODY" in params and params["BODY"] and params["BODY"].upper() == "8BITMIME" \
                and not self.offered("8BITMIME"):
            bad = "555 5.5.4 BODY=8BITMIME not offered"
        elif "SMTPUTF8" in params and not self.offered("SMTPUTF8"):
            bad = "555 5.5.4 SMTPUTF8 not offered"
        elif ("RET" in params or "ENVID" in params) and not self.offered("DSN"):
            bad = "555 5.5.4 DSN not offered"
        elif "SIZE" in params and not self.offered("SIZE"):
            bad = "555 5.5.4 SIZE not offered"
        elif "SIZE" in params and limit is not None and int(params["SIZE"] or 0) > limit:
            bad = "552 5.3.4 Message size exceeds fixed limit"
        if bad:
            self.send(bad)
            return
        text = self.reply("MAIL", arg, DEFAULT_REPLIES["MAIL"])
        if text.startswith("2"):
            self.txn = {"sender": sender, "mail_params": params, "rcpts": [],
                        "rcpt_params": [], "refused_rcpts": [], "data": None,
                        "data_reply": None, "accepted": False, "helo": self.helo,
                        "tls": self.tls, "session": self.number}
            with self.server.lock:
                self.server.transactions.append(self.txn)

    def do_RCPT(self, arg):
        if self.txn is None:
            self.send("503 5.5.1 Error: need MAIL command")
            return
        p = _path(arg, "TO:")
        if p is None:
            self.send("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        rcpt, params = p
        if ("NOTIFY" in params or "ORCPT" in params) and not self.offered("DSN"):
            text = "555 5.5.4 DSN not offered"
            self.send(text)
        else:
            text = self.reply("RCPT", arg, DEFAULT_REPLIES["RCPT"])
        with self.server.lock:
            if text.startswith("2"):
                self.txn["rcpts"].append(rcpt)
                self.txn["rcpt_params"].append(params)
            else:
                self.txn["refused_rcpts"].append((rcpt, text))

    def do_DATA(self, arg):
        if self.txn is None:
            self.send("503 5.5.1 Error: need MAIL command")
            return
        if not self.txn["rcpts"]:
            self.send("554 5.5.1 Error: no valid recipients")
            return
        text = self.reply("DATA", arg, DEFAULT_REPLIES["DATA"])
        if not text.startswith("3"):
            return
        data = []
        while True:
            line = self.readline()
            if line == b".\r\n":
                break
            if line.startswith(b"."):
                line = line[1:]
            data.append(line)
        txn, self.txn = self.txn, None
        body = b"".join(data)
        with self.server.lock:
            txn["data"] = body
        limit = self.size_limit()
        texts = []
        for rcpt in (txn["rcpts"] if self.server.lmtp else [""]):
            if limit is not None and len(body) > limit:
                texts.append("552 5.3.4 Message size exceeds fixed limit")
            else:
                texts.append(self.scripted_text("DOT", rcpt, DEFAULT_REPLIES["DOT"]))
        # recorded before the replies go out: whoever sees the client's result finds the
        # message here already
        with self.server.lock:
            txn["data_reply"] = texts[0]
            txn["data_replies"] = texts
            txn["accepted"] = any(t.startswith("2") for t in texts)
        self.server._changed()
        for text in texts:
            self.send_reply(text)

    def do_RSET(self, arg):
        self.txn = None
        self.reply("RSET", arg, DEFAULT_REPLIES["RSET"])

    def do_NOOP(self, arg):
        self.reply("NOOP", arg, DEFAULT_REPLIES["NOOP"])

    def do_QUIT(self, arg):
        self.reply("QUIT", arg, DEFAULT_REPLIES["QUIT"])
        raise _Closed()


class ScriptedSMTPServer:
    def __init__(self, host, port, keywords=DEFAULT_KEYWORDS, hostname="scripted.test",
                 cert=None, key=None, replies=None, greeting=None, timeout=30, lmtp=False):
        if not host.startswith("127.") and host != "::1":
            raise ValueError("the scripted server must listen on 127.0.0.0/8 or ::1, not %s"
                             % host)
        self.host = host
        self.port = port
        self.keywords = list(keywords)
        self.hostname = hostname
        self.timeout = timeout
        self.lmtp = lmtp
        self.replies = dict(replies or {})
        if greeting is not None:
            self.replies["CONNECT"] = greeting
        self.ssl_context = None
        if cert and key:
            self.ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ssl_context.load_cert_chain(cert, key)
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.transactions = []
        self.sessions = []
        self.counts = {}
        self._occurrences = {}
        self._listener = None
        self._accept_thread = None
        self._threads = []
        self._stopping = False

    def endpoint(self):
        if ":" in self.host:
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)

    def _scripted(self, cmd, session, arg):
        script = self.replies.get(cmd)
        if script is None:
            return None
        if callable(script):
            return script(session, arg)
        if isinstance(script, str):
            return script
        with self.lock:
            i = self._occurrences.get(cmd, 0)
            self._occurrences[cmd] = i + 1
        return script[i] if i < len(script) else None

    def _changed(self):
        with self.cond:
            self.cond.notify_all()

    def start(self):
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(64)
        s.settimeout(0.2)
        self._listener = s
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name="scripted-smtp-%s" % self.endpoint())
        self._accept_thread.start()
        return self

    def _accept_loop(self):
        while not self._stopping:
            try:
                conn, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(self.timeout)
            with self.lock:
                if self._stopping:
                    conn.close()
                    return
                session = Session(self, conn, peer, len(self.sessions) + 1)
                self.sessions.append(session)
                t = threading.Thread(target=session.run, daemon=True)
                self._threads.append(t)
            t.start()

    def stop(self, timeout=5):
        """Closes the listener and every session's socket, joins every thread."""
        self._stopping = True
        if self._accept_thread:
            self._accept_thread.join(timeout)
        if self._listener:
            self._listener.close()
            self._listener = None
        with self.lock:
            sessions = list(self.sessions)
            threads = list(self._threads)
        for s in sessions:
            try:
                s.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(timeout)

    def messages(self):
        """The transactions whose end of data got a 2xx reply, in order."""
        with self.lock:
            return [t for t in self.transactions if t["accepted"]]

    def wait_messages(self, n, timeout=30):
        """Waits until n messages were accepted; returns messages() (maybe fewer)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while sum(1 for t in self.transactions if t["accepted"]) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
        return self.messages()

    def all_closed(self):
        with self.lock:
            return all(s.closed for s in self.sessions)
