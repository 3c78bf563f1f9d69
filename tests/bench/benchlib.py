"""benchlib.py - what the Python benchmarks (auth, memory) share: free loopback ports, waiting
for a listener, and waiting for sorterd's start-up fill of its slots (lib.sh has the same for
the shell benchmarks)."""

import os
import socket
import time


def free_port():
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, secs=20):
    """True once 127.0.0.1:port takes a connection, within secs."""
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def slots_filled(spool, secs=60):
    """True once sorterd's start-up fill of SPOOL/slots (1,024 free queue files) is done:
    timed work starts after it, as on a sorterd that kept its slots from before."""
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            if len(os.listdir(os.path.join(spool, "slots"))) >= 1024:
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    return False
