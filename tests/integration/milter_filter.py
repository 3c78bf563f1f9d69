"""milter_filter.py - a libmilter filter (pymilter) for Sorter's milter tests; runs under Debian's
/usr/bin/python3 (python3-milter).

    milter_filter.py --socket inet:PORT@127.0.0.1 --name A --log FILE [--control FILE]
                     [--leadspc] [--noreply]

It takes every action a filter can take, on a trigger:
  - at CONNECT, HELO, DATA and on a slow path: what the JSON --control file says, read at each
    connection: {"connect": ACTION, "helo": ACTION, "data": ACTION, "sleep": {STAGE: SECONDS},
    "eom": [EDIT, ...]} (the eom edits for every message of that connection);
  - at MAIL: a sender whose local part is mail-ACTION (mail-reject@remote.test);
  - at RCPT: a recipient whose local part is rcpt-ACTION;
  - at a header, at the end of headers, in the body: a header "X-Test-Header-Action: ACTION",
    "X-Test-Eoh-Action: ACTION", a body line "BODY-ACTION: ACTION";
  - at the end of the message: every header "X-Test-Milter: EDIT", in order, then the control
    file's edits.
ACTION is continue, accept, reject, tempfail, discard, or "replycode CODE XCODE TEXT".
EDIT is one of: addheader NAME VALUE | insheader INDEX NAME VALUE | chgheader NAME INDEX VALUE |
delheader NAME INDEX | replacebody TEXT (\\n for line breaks) | chgfrom ADDR [PARAMS] |
addrcpt ADDR [PARAMS] | delrcpt ADDR | quarantine REASON | progress | ACTION (the verdict).

Every callback is logged as one JSON line (stage, arguments, the macros it saw) to --log, so
a test can tell what the MTA sent. --leadspc asks for SMFIP_HDR_LEADSPC; --noreply makes the
header, end-of-header and body steps unanswered (SMFIP_NR_*), as a filter may.
"""

import argparse
import json
import os
import sys
import threading
import time

import Milter

MACROS = ["j", "_", "v", "i", "{daemon_name}", "{daemon_addr}", "{client_addr}",
          "{client_name}", "{client_port}", "{auth_type}", "{auth_authen}", "{tls_version}",
          "{cipher}", "{mail_addr}", "{mail_host}", "{rcpt_addr}", "{rcpt_host}"]

args = None
log_lock = threading.Lock()


def log(event):
    event["filter"] = args.name
    with log_lock:
        with open(args.log, "a") as f:
            f.write(json.dumps(event) + "\n")


def control():
    if not args.control:
        return {}
    try:
        with open(args.control) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def text(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


class TestFilter(Milter.Base):
    def __init__(self):
        self.ctl = {}
        self.edits = []
        self.rcpts = []
        self.eohaction = None

    def macros(self):
        out = {}
        for m in MACROS:
            v = self.getsymval(m)
            if v is not None:
                out[m] = v
        return out

    def act(self, stage, action):
        """Carries out ACTION (a string) and returns the libmilter status."""
        if action is None:
            return Milter.CONTINUE
        sleep = self.ctl.get("sleep", {}).get(stage)
        if sleep:
            time.sleep(sleep)
        word = action.split(" ", 1)[0]
        if word == "replycode":
            _, code, xcode, msg = action.split(" ", 3)
            self.setreply(code, xcode, msg)
            return Milter.TEMPFAIL if code.startswith("4") else Milter.REJECT
        if word == "replycode0":        # no enhanced status code
            _, code, msg = action.split(" ", 2)
            self.setreply(code, None, msg)
            return Milter.TEMPFAIL if code.startswith("4") else Milter.REJECT
        if word == "multiline":
            self.setreply("550", "5.7.0", "first line", "second line", "last line")
            return Milter.REJECT
        return {"continue": Milter.CONTINUE, "accept": Milter.ACCEPT, "reject": Milter.REJECT,
                "tempfail": Milter.TEMPFAIL, "discard": Milter.DISCARD,
                "skip": Milter.SKIP}[word]

    def stage(self, stage, action, **fields):
        fields.update(stage=stage, macros=self.macros(), action=action)
        log(fields)
        if action is None:
            sleep = self.ctl.get("sleep", {}).get(stage)
            if sleep:
                time.sleep(sleep)
        return self.act(stage, action)

    def connect(self, hostname, family, hostaddr):
        self.ctl = control()
        return self.stage("connect", self.ctl.get("connect"), hostname=hostname,
                          hostaddr=list(hostaddr) if isinstance(hostaddr, tuple) else hostaddr)

    def hello(self, heloname):
        return self.stage("helo", self.ctl.get("helo"), helo=heloname)

    def envfrom(self, f, *params):
        self.edits = []
        self.rcpts = []
        local = f.strip("<>").split("@")[0]
        action = local[5:].replace("_", " ") if local.startswith("mail-") else None
        return self.stage("mail", action, sender=f, params=list(params))

    def envrcpt(self, to, *params):
        self.rcpts.append(to)
        local = to.strip("<>").split("@")[0]
        action = local[5:].replace("_", " ") if local.startswith("rcpt-") else None
        return self.stage("rcpt", action, rcpt=to, params=list(params))

    def data(self):
        return self.stage("data", self.ctl.get("data"))

    def header(self, name, value):
        action = None
        if name.lower() == "x-test-milter":
            self.edits.append(value.strip())
        if name.lower() == "x-test-header-action":
            action = value.strip()
        if name.lower() == "x-test-eoh-action":
            self.eohaction = value.strip()
        log({"stage": "header", "name": name, "value": value})
        return self.act("header", action)

    def eoh(self):
        action = self.eohaction
        self.eohaction = None
        return self.stage("eoh", action)

    def body(self, chunk):
        chunk = text(chunk)
        action = None
        for line in chunk.splitlines():
            if line.startswith("BODY-ACTION: "):
                action = line[len("BODY-ACTION: "):].strip()
        log({"stage": "body", "len": len(chunk), "text": chunk[:20000]})
        return self.act("body", action)

    def eom(self):
        verdict = None
        edits = self.edits + list(self.ctl.get("eom", []))
        log({"stage": "eom", "macros": self.macros(), "edits": edits})
        sleep = self.ctl.get("sleep", {}).get("eom")
        if sleep:
            time.sleep(sleep)
        for e in edits:
            word, _, rest = e.partition(" ")
            if word == "addheader":
                name, _, value = rest.partition(" ")
                self.addheader(name, value.replace("\\n", "\n").replace("\\t", "\t"))
            elif word == "insheader":
                idx, name, value = rest.split(" ", 2)
                self.addheader(name, value, int(idx))
            elif word == "chgheader":
                name, idx, value = rest.split(" ", 2)
                self.chgheader(name, int(idx), value)
            elif word == "delheader":
                name, idx = rest.split(" ", 1)
                self.chgheader(name, int(idx), "")
            elif word == "replacebody":
                body = rest.replace("\\n", "\r\n").encode()
                for i in range(0, len(body), 1000):   # in pieces: one replacement
                    self.replacebody(body[i:i + 1000])
            elif word == "bigbody":
                n = int(rest)
                line = b"x" * 998 + b"\r\n"
                for i in range(0, n, 1000):
                    self.replacebody(line)
            elif word == "chgfrom":
                addr, _, params = rest.partition(" ")
                self.chgfrom(addr, params or None)
            elif word == "addrcpt":
                addr, _, params = rest.partition(" ")
                self.addrcpt(addr, params or None)
            elif word == "delrcpt":
                self.delrcpt(rest)
            elif word == "quarantine":
                self.quarantine(rest)
            elif word == "progress":
                self.progress()
            else:
                verdict = e
        return self.act("eom-verdict", verdict)

    def abort(self):
        log({"stage": "abort"})
        return Milter.CONTINUE

    def close(self):
        log({"stage": "close"})
        return Milter.CONTINUE


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--control")
    p.add_argument("--leadspc", action="store_true")
    p.add_argument("--noreply", action="store_true")
    args = p.parse_args()
    cls = TestFilter
    if args.noreply:
        class NoReply(TestFilter):
            @Milter.noreply
            def header(self, name, value):
                return TestFilter.header(self, name, value)

            @Milter.noreply
            def eoh(self):
                return TestFilter.eoh(self)

            @Milter.noreply
            def body(self, chunk):
                return TestFilter.body(self, chunk)
        cls = NoReply
    if args.leadspc:
        cls = Milter.header_leading_space(cls)
    Milter.factory = cls
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT |
                     Milter.ADDRCPT_PAR | Milter.DELRCPT | Milter.QUARANTINE |
                     Milter.CHGFROM | Milter.SETSYMLIST)
    sys.stdout.flush()
    Milter.runmilter(args.name, args.socket, 60)


if __name__ == "__main__":
    main()
