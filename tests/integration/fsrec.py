"""fsrec.py - runs sorterd under the file system call recorder (tests/durability/fsrec.c, built
as BUILD/tests/durability/fsrec.so by every `make`) and reads what it recorded.

preload(build) is the LD_PRELOAD value for the build's sorterd: the recorder alone, or, for a
sanitizer build, the AddressSanitizer runtime that sorterd links first (ASan refuses to run
unless its runtime comes first in the library list; its interceptors then call the recorder's
wrappers, which call libc). read_log(path) parses the log into Rec objects. durability_problems()
is the proof that the durability tests apply to every acknowledged message. feign_reboot()
makes a stopped daemon's spool look as it would after the host lost its page cache, for the
writers' journals (queue/journal.c) to restore.
"""

import os
import re
import subprocess

WRITE_CALLS = {"write", "pwrite", "pwrite64", "writev", "pwritev", "pwritev64", "pwritev2"}
SYNC_CALLS = {"fsync", "fdatasync"}
RANGE_SYNC = "sync_file_range"  # recorded so only with WAIT_BEFORE, WRITE and WAIT_AFTER
RENAME_CALLS = {"rename", "renameat", "renameat2"}
LINK_CALLS = {"link", "linkat"}
OPEN_CALLS = {"open", "open64", "openat", "openat64"}
O_CREAT = getattr(os, "O_CREAT", 0o100)
_UNESCAPE = re.compile(r"%([0-9A-F]{2})")


def recorder_path(build):
    return os.path.join(build, "tests", "durability", "fsrec.so")


def asan_runtime(prog):
    """The AddressSanitizer runtime prog is linked with (from ldd), or None."""
    r = subprocess.run(["ldd", prog], capture_output=True, text=True, timeout=30)
    for line in r.stdout.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("libasan.so") and len(parts) >= 3 and parts[1] == "=>":
            return parts[2]
    return None


def preload(build):
    """The LD_PRELOAD value that records build's sorterd. Raises AssertionError when the
    recorder was not built."""
    rec = recorder_path(build)
    if not os.access(rec, os.R_OK):
        raise AssertionError("no %s: the build makes it (make in %s)" % (rec, build))
    libs = [rec]
    asan = asan_runtime(os.path.join(build, "sorterd"))
    if asan:
        libs.insert(0, asan)
    return ":".join(libs)


def recorder_argv(build, log, *knobs):
    """The argv prefix that runs a program of build under the recorder, logging to log (made
    empty and writable by all: a child that runs as another user appends to it too), with
    fsrec's knobs ("FSREC_SLOW_RENAME=...", ...)."""
    with open(log, "w"):
        pass
    os.chmod(log, 0o666)
    return ("env", "LD_PRELOAD=" + preload(build), "FSREC_LOG=" + log) + tuple(knobs)


class Rec:
    """One recorded call: t0, t1 (CLOCK_MONOTONIC ns before and after), pid, tid, call, fd,
    ino ("DEV:INO"), off, len (an open's flags), ret, errno, path, path2 (a rename's target),
    head (a write's first bytes, b"" for other calls), direct (the descriptor was O_DIRECT),
    segs (a vectored write's buffers: [(length, first bytes)], [] for other calls)."""
    __slots__ = ("t0", "t1", "pid", "tid", "call", "fd", "ino", "off", "len", "ret", "errno",
                 "path", "path2", "head", "direct", "segs")

    def __repr__(self):
        return "<%s %s fd=%d ino=%s ret=%d t0=%d t1=%d %s%s>" % (
            self.call, self.pid, self.fd, self.ino, self.ret, self.t0, self.t1, self.path,
            " -> " + self.path2 if self.path2 else "")


def _path(s):
    return "" if s == "-" else _UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), s)


def read_log(path):
    """Every record of the log at path, in the order written."""
    out = []
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
            fields = dict(kv.split("=", 1) for kv in line.split(" "))
            r = Rec()
            for k in ("t0", "t1", "pid", "tid", "fd", "off", "len", "ret", "errno"):
                setattr(r, k, int(fields[k]))
            r.call = fields["call"]
            r.ino = fields["ino"]
            r.path = _path(fields["path"])
            r.path2 = _path(fields["path2"])
            h = fields.get("head", "-")
            r.head = b"" if h == "-" else bytes.fromhex(h)
            r.direct = fields.get("direct", "0") == "1"
            segs = fields.get("segs", "-")
            r.segs = [] if segs == "-" else [
                (int(n), b"" if x == "-" else bytes.fromhex(x))
                for n, x in (seg.split(":", 1) for seg in segs.split(","))]
            out.append(r)
    return out


JOURNAL_ENTRY_MAGIC = b"SJE1"
JOURNAL_ENTRY_HDR = 64


def journal_entries(r):
    """The journal entries a write r wrote whole (queue/journal.c: "SJE1", body length, epoch,
    seq, tail, slot, id, CRC; then the body): one per buffer a vectored write begins with
    one, the buffer's length at least the entry's, within the bytes the write returned. A
    list of (slot name, queue id, body length)."""
    segs = r.segs or [(r.len, r.head)]
    out, at = [], 0
    for n, h in segs:
        if (len(h) >= JOURNAL_ENTRY_HDR and h[:4] == JOURNAL_ENTRY_MAGIC
                and JOURNAL_ENTRY_HDR + int.from_bytes(h[4:8], "big") <= min(n, r.ret - at)):
            out.append((h[32:44].decode("ascii", "replace"), h[45:57].decode("ascii", "replace"),
                        int.from_bytes(h[4:8], "big")))
        at += n
    return out


def journal_writes(records, spool):
    """(write, entry) for every journal entry written whole into the spool's journal/."""
    jdir = os.path.join(os.path.realpath(spool), "journal")
    return [(r, e) for r in records if r.call in WRITE_CALLS and r.ret > 0
            and os.path.dirname(r.path) == jdir for e in journal_entries(r)]


def journaled(records, spool, acks):
    """The acknowledged queue ids a journal entry was written for."""
    return {e[1] for r, e in journal_writes(records, spool)} & set(acks)


def durability_problems(records, spool, acks):
    """What the recorded calls fail to prove about the acknowledged messages: acks maps each
    queue id to (the client's time.monotonic_ns() when the 250 arrived, content bytes sent).
    For each message, the record must show its file entering incoming/ID (or hold/ID, a
    message a milter quarantined) before the 250, and one of two ways of making it durable.

    A slot, hard-linked from slots/NAME, where the file is committed once written (start-up
    links it again if that link is lost):
      - the slot's making: an open with O_CREAT of slots/NAME returning that inode, or a
        rename of it into slots/NAME;
      - an fsync of the slots/ directory that succeeded, started after the making had
        returned, and returned before the 250 arrived (the name is durable);
      - data writes to the inode after its previous link into incoming/ (or its making) and
        before this link, at least as many bytes as the content sent;
      - and either an fsync or fdatasync of the inode that succeeded, started after the last
        of those writes had returned, and returned before the 250;
      - or, for an overwrite in place: every one of those writes within the length that an
        earlier fsync or fdatasync of the inode made durable (the end of the writes that
        returned before it started; that sync returned before the first of them), a
        sync_file_range of the inode (WAIT_BEFORE, WRITE and WAIT_AFTER) from offset 0
        over all of them, started after the last one had returned, that succeeded, and an
        fsync or fdatasync of the spool's flush file that succeeded, started after that
        sync_file_range had returned, and returned before the 250 (the device's cache
        flush).
    Or, for a slot's message made durable by the writer's journal (queue/journal.c):
      - a write to a file of the spool's journal/ that holds whole an entry for this queue
        id and the linked slot's name (its bytes, or one of a vectored write's buffers, begin
        with it), whose body is at least as long as the content sent, that returned before
        the link;
      - that write within the length an earlier fsync or fdatasync of the journal file made
        durable (as for an overwrite in place);
      - on an O_DIRECT descriptor (the write returned once the device had the bytes), an
        fsync or fdatasync of the spool's flush file that succeeded, started after the write
        returned, and returned before the 250;
      - else a sync_file_range of the journal file from offset 0 over it, started after it
        returned, that succeeded, and such a flush started after that sync_file_range had
        returned. The slot's own syncs and its name's are then not needed: start-up writes
        the message back from the journal.
    A new file, renamed from tmp/ID (how whole files are committed):
      - the file's making (an open with O_CREAT returning that inode) and its data writes,
        from then to the rename, at least as many bytes as the content sent;
      - an fsync or fdatasync of that inode that succeeded, started after the last of those
        writes had returned, and returned before the 250 arrived;
      - an fsync of the directory it was renamed into that succeeded, started after the
        rename had returned, and returned before the 250 arrived.
    Returns a list of strings, empty when every message is proven durable."""
    spool = os.path.realpath(spool)
    tmp_dir = os.path.join(spool, "tmp")
    inc_dir = os.path.join(spool, "incoming")
    hold_dir = os.path.join(spool, "hold")
    slots_dir = os.path.join(spool, "slots")
    flush_file = os.path.join(spool, "flush", "use")
    jdir = os.path.join(spool, "journal")
    queue_dirs = (inc_dir, hold_dir)
    by_ino, entries, dir_syncs = {}, {}, {inc_dir: [], hold_dir: [], slots_dir: []}
    for r in records:
        if r.ino != "0:0":
            by_ino.setdefault(r.ino, []).append(r)
        if ((r.call in RENAME_CALLS or r.call in LINK_CALLS) and r.ret == 0
                and os.path.dirname(r.path2) in queue_dirs):
            entries.setdefault(os.path.basename(r.path2), []).append(r)
        if r.call in SYNC_CALLS and r.ret == 0 and r.path in dir_syncs:
            dir_syncs[r.path].append(r)
    flushes = [r for r in records if r.call in SYNC_CALLS and r.ret == 0 and r.path == flush_file]
    jwrites = {}
    for r, e in journal_writes(records, spool):
        jwrites.setdefault(e[1], []).append((r, e))
    problems = []
    for qid, (t250, size) in sorted(acks.items()):
        ent = [r for r in entries.get(qid, []) if r.t1 <= t250]
        if len(ent) != 1:
            problems.append("%s: %d links or renames into incoming/ or hold/ before the 250, "
                            "not 1: %s" % (qid, len(ent), entries.get(qid)))
            continue
        ent = ent[0]
        into = os.path.dirname(ent.path2)
        slot = ent.call in LINK_CALLS
        src_dir = slots_dir if slot else tmp_dir
        if os.path.dirname(ent.path) != src_dir:
            problems.append("%s: %s into %s/ from %s, not from %s" % (
                qid, "linked" if slot else "renamed", os.path.basename(into), ent.path,
                src_dir))
            continue
        calls = by_ino.get(ent.ino, [])
        if slot:
            made = [r for r in calls if r.t1 <= ent.t0 and (
                (r.call in RENAME_CALLS and r.ret == 0 and r.path2 == ent.path) or
                (r.call in OPEN_CALLS and r.ret >= 0 and r.len & O_CREAT and r.path == ent.path))]
        else:
            made = [r for r in calls if r.t1 <= ent.t0 and r.call in OPEN_CALLS and r.ret >= 0
                    and r.len & O_CREAT]
        if not made:
            problems.append("%s: no %s made inode %s before it was queued" % (
                qid, "open with O_CREAT or rename into slots/" if slot else
                "open with O_CREAT", ent.ino))
            continue
        made = max(made, key=lambda r: r.t0)
        jw = [(r, e) for r, e in jwrites.get(qid, []) if slot and r.t1 <= ent.t0
              and e[0] == os.path.basename(ent.path)]
        if jw:
            r, e = max(jw, key=lambda x: x[0].t0)
            why = None
            if e[2] < size:
                why = "its entry holds %d bytes, fewer than the %d sent" % (e[2], size)
            else:
                why = _overwrite_unproven(by_ino.get(r.ino, []), [r], r.t1, t250, flushes)
            if why:
                problems.append("%s: its journal entry (%s) is not proven durable before the "
                                "250 (%d): %s" % (qid, r, t250, why))
            continue
        start = made.t0
        if slot:
            # the slot's previous message ends where this one's writes begin
            before = [r.t1 for r in calls if r.call in LINK_CALLS and r.ret == 0
                      and os.path.dirname(r.path2) in queue_dirs and r.t1 <= ent.t0
                      and r is not ent]
            start = max([start] + before)
        writes = [r for r in calls if r.call in WRITE_CALLS and start <= r.t0 <= ent.t0]
        written = sum(max(r.ret, 0) for r in writes)
        if written < size:
            problems.append("%s: %d bytes written to inode %s before it was queued, "
                            "fewer than the %d sent" % (qid, written, ent.ino, size))
            continue
        last = max(r.t1 for r in writes)
        syncs = [r for r in calls if r.call in SYNC_CALLS and r.ret == 0 and r.t0 >= last
                 and r.t1 <= t250]
        if not syncs and slot:
            why = _overwrite_unproven(calls, writes, last, t250, flushes)
            if why:
                problems.append("%s: no fsync/fdatasync of inode %s started after its last "
                                "write (%d) and returned before the 250 (%d), and not an "
                                "overwrite synced in place: %s; its syncs: %s"
                                % (qid, ent.ino, last, t250, why,
                                   [r for r in calls if r.call in SYNC_CALLS
                                    or r.call == RANGE_SYNC]))
        elif not syncs:
            problems.append("%s: no fsync/fdatasync of inode %s started after its last write "
                            "(%d) and returned before the 250 (%d); its syncs: %s"
                            % (qid, ent.ino, last, t250,
                               [r for r in calls if r.call in SYNC_CALLS]))
        if slot:
            dsync = [r for r in dir_syncs[slots_dir] if r.t0 >= made.t1 and r.t1 <= t250]
            if not dsync:
                problems.append("%s: no fsync of slots/ started after %s was made (%d) and "
                                "returned before the 250 (%d)" % (qid, ent.path, made.t1, t250))
        else:
            dsync = [r for r in dir_syncs[into] if r.t0 >= ent.t1 and r.t1 <= t250]
            if not dsync:
                problems.append("%s: no fsync of %s/ started after the %s (%d) and returned "
                                "before the 250 (%d)" % (qid, os.path.basename(into),
                                                         "link" if slot else "rename",
                                                         ent.t1, t250))
    return problems


def _overwrite_unproven(calls, writes, last, t250, flushes):
    """Why the writes (calls: every recorded call on their inode) are not proven durable as an
    overwrite in place before t250, or None when they are."""
    first = min(w.t0 for w in writes)
    if any(w.off < 0 for w in writes):
        return "a write without an offset"
    end = max(w.off + w.ret for w in writes)
    durable = 0
    for s in calls:
        if s.call in SYNC_CALLS and s.ret == 0 and s.t1 <= first:
            durable = max([durable] + [w.off + w.ret for w in calls if w.call in WRITE_CALLS
                                       and w.ret > 0 and w.off >= 0 and w.t1 <= s.t0])
    if end > durable:
        return "written up to %d, beyond the %d an earlier sync made durable" % (end, durable)
    if all(w.direct for w in writes):
        if not any(f.t0 >= last and f.t1 <= t250 for f in flushes):
            return "no fsync/fdatasync of the flush file after its direct write, before the 250"
        return None
    ranges = [r for r in calls if r.call == RANGE_SYNC and r.ret == 0 and r.off == 0
              and (r.len == 0 or r.len >= end) and r.t0 >= last and r.t1 <= t250]
    if not ranges:
        return "no sync_file_range over 0..%d started after it and returned before the 250" % end
    if not any(f.t0 >= r.t1 and f.t1 <= t250 for r in ranges for f in flushes):
        return "no fsync/fdatasync of the flush file after its sync_file_range, before the 250"
    return None


def in_place(records, spool, acks):
    """The acknowledged queue ids whose slot was synced in place (a sync_file_range of it
    after its last write and before its link into incoming/ or hold/), not fdatasync'd."""
    spool = os.path.realpath(spool)
    queue_dirs = (os.path.join(spool, "incoming"), os.path.join(spool, "hold"))
    by_ino = {}
    for c in records:
        if c.call in SYNC_CALLS or c.call == RANGE_SYNC or c.call in WRITE_CALLS:
            by_ino.setdefault(c.ino, []).append(c)
    out = set()
    for r in records:
        if (r.call in LINK_CALLS and r.ret == 0 and os.path.dirname(r.path2) in queue_dirs
                and os.path.basename(r.path2) in acks):
            before = [c for c in by_ino.get(r.ino, []) if c.t1 <= r.t0]
            if before and max(before, key=lambda c: c.t0).call == RANGE_SYNC:
                out.add(os.path.basename(r.path2))
    return out


def written_over_slots(records, spool, acks):
    """The acknowledged queue ids whose files were linked into incoming/ from a slot that
    this process did not create for them (one made by the start-up fill, or one that held
    an earlier message)."""
    spool = os.path.realpath(spool)
    inc_dir = os.path.join(spool, "incoming")
    slots_dir = os.path.join(spool, "slots")
    created = {r.ino for r in records if r.call in OPEN_CALLS and r.ret >= 0 and r.len & O_CREAT
               and os.path.dirname(r.path) == slots_dir}
    links = sorted((r for r in records if r.call in LINK_CALLS and r.ret == 0
                    and os.path.dirname(r.path2) == inc_dir
                    and os.path.dirname(r.path) == slots_dir), key=lambda r: r.t0)
    out, linked_before = set(), set()
    for r in links:
        if r.ino not in created or r.ino in linked_before:
            out.add(os.path.basename(r.path2))
        linked_before.add(r.ino)
    return out & set(acks)


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), as lib/util.c's crc32c()."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def set_journal_boot(path, boot):
    """Rewrites the header of the journal file at path (queue/journal.c: "SORTERJ1", epoch,
    boot id, CRC-32C of the first 60 bytes) with another boot id, as if the host had
    rebooted since its epoch began. False for a journal whose header was never written (a
    process was still making it, zero-filled, when it was killed): it holds no entry."""
    with open(path, "r+b") as f:
        hdr = bytearray(f.read(64))
        if hdr == bytearray(64):
            return False
        if hdr[:8] != b"SORTERJ1":
            raise AssertionError("%s: no journal header: %r" % (path, bytes(hdr[:16])))
        if crc32c(bytes(hdr[:60])).to_bytes(4, "big") != bytes(hdr[60:64]):
            raise AssertionError("%s: the header's CRC does not match this test's" % path)
        hdr[16:52] = boot.encode().ljust(36, b"\0")
        hdr[60:64] = crc32c(bytes(hdr[:60])).to_bytes(4, "big")
        f.seek(0)
        f.write(bytes(hdr))
    return True


def feign_reboot(spool, ids):
    """What the disk of a spool whose daemon is down would hold had the host lost its page
    cache: the slots of the queued messages ids zeroed (their old contents), and every
    journal's boot id another (set_journal_boot). {id: (folder, path of its queue name)};
    fails unless each id is queued and some journal was rewritten."""
    spool = os.path.realpath(spool)
    names = {}
    for folder in ("incoming", "active", "deferred", "hold"):
        for q in os.listdir(os.path.join(spool, folder)):
            if q in ids:
                names[q] = (folder, os.path.join(spool, folder, q))
    if set(names) != set(ids):
        raise AssertionError("not queued: %s" % sorted(set(ids) - set(names)))
    for q, (_, path) in names.items():
        size = os.path.getsize(path)
        with open(path, "r+b") as f:     # the queue name is a link to the slot
            f.write(b"\0" * size)
    jdir = os.path.join(spool, "journal")
    journals = [os.path.join(jdir, j) for j in os.listdir(jdir) if re.fullmatch(r"j[0-9]+", j)]
    # a journal still in the making when its writer was killed has no header and no entry
    if not [j for j in journals if set_journal_boot(j, "00000000-0000-4000-8000-000000000000")]:
        raise AssertionError("no journal to rewrite among %s" % journals)
    return names
