#!/usr/bin/python3
"""The base server goes away and comes back (used by test-nbd-reconnect.sh).

    nbd_reconnect.py URI BASE-SOCKET BASE-FILE BASE-PID

URI is the plugin's export of an overlay (64 KiB clusters) whose raw backing file
is BASE-FILE, served read-only by nbdkit (pid BASE-PID) on BASE-SOCKET.  Twice --
first the base is killed (SIGKILL), then stopped (SIGTERM: nbdkit answers
ESHUTDOWN and waits for its clients, so the plugin must let go of its connections
for it to exit) -- and each time:

  - reads that need the base fail with EIO (and fail fast: no request hangs);
  - everything else keeps working: reads of allocated clusters, a new client
    connection, writes of whole clusters; a partial write into an unallocated
    cluster (which needs the base's bytes) fails with EIO;
  - a new base is started on the same socket; the plugin, never restarted, reads
    it again within a few seconds, and the partial write then succeeds.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import nbd

CS = 65536


def fail(msg):
    print("nbd_reconnect: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def alive(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            return not any(line.startswith("State:") and line.split()[1] in "ZX"
                           for line in f)
    except (FileNotFoundError, ProcessLookupError):  # gone, or being reaped as we read
        return False


def wait_gone(pid, what, limit=10.0):
    t0 = time.time()
    while alive(pid):
        if time.time() - t0 > limit:
            fail("%s (pid %d) still running after %.0f s" % (what, pid, limit))
        time.sleep(0.05)


def connectable(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def start_base(sock, base_file):
    if os.path.exists(sock):
        os.unlink(sock)
    p = subprocess.Popen(["nbdkit", "-f", "--exit-with-parent", "-r", "-U", sock,
                          "file", base_file])
    t0 = time.time()
    while not connectable(sock):
        if p.poll() is not None or time.time() - t0 > 10:
            fail("could not restart the base server")
        time.sleep(0.05)
    return p


def expect_eio(what, fn):
    t0 = time.time()
    try:
        fn()
    except nbd.Error as e:
        if e.errno != "EIO":
            fail("%s: failed with %s, not EIO: %s" % (what, e.errno, e.string))
        took = time.time() - t0
        if took > 15:
            fail("%s: took %.1f s to fail" % (what, took))
        return
    fail("%s: succeeded while the base server is down" % what)


def main():
    uri, sock, base_file, base_pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    base = open(base_file, "rb").read()
    h = nbd.NBD()
    h.connect_uri(uri)
    ours = bytes([0xa1]) * (8 * CS)
    h.pwrite(ours, 0)
    if h.pread(4096, 50 * CS) != base[50 * CS:50 * CS + 4096]:
        fail("the base reads wrong before anything happened")

    proc = None  # the base we started (a child), once we have
    for round_, sig in enumerate((signal.SIGKILL, signal.SIGTERM)):
        name = signal.Signals(sig).name
        print("== base stopped with %s" % name)
        pid = proc.pid if proc else base_pid
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            if proc:
                proc.wait()
            wait_gone(pid, "the killed base")
        else:
            time.sleep(0.2)
        unallocated = [(60 + round_) * CS, 61 * CS + 100, 2 * 1024 * 1024 + 7]
        for off in unallocated:
            expect_eio("read at %d" % off, lambda off=off: h.pread(4096, off))
        if h.pread(len(ours), 0) != ours:
            fail("an allocated read is wrong while the base is down")
        h2 = nbd.NBD()
        h2.connect_uri(uri)
        if h2.pread(CS, CS) != ours[CS:2 * CS]:
            fail("a new connection reads allocated data wrong while the base is down")
        h2.shutdown()
        whole = bytes([0xb0 + round_]) * CS
        h.pwrite(whole, (20 + round_) * CS)
        if h.pread(CS, (20 + round_) * CS) != whole:
            fail("a whole-cluster write did not read back while the base is down")
        partial = (30 + round_) * CS + 5
        expect_eio("partial write at %d" % partial, lambda: h.pwrite(b"\xcc" * 100, partial))
        if sig == signal.SIGTERM:
            # nbdkit exits once every client has gone: the plugin must have
            # closed its connections after the failed requests.
            if proc:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    fail("the base did not exit after SIGTERM: the plugin kept its connections")
            else:
                wait_gone(pid, "the stopped base")

        proc = start_base(sock, base_file)
        t0 = time.time()
        while True:
            try:
                got = h.pread(4096, unallocated[0])
                break
            except nbd.Error:
                if time.time() - t0 > 10:
                    fail("the restarted base was not picked up within 10 s")
                time.sleep(0.1)
        print("restarted base picked up after %.2f s" % (time.time() - t0))
        for off in unallocated:
            if h.pread(4096, off) != base[off:off + 4096]:
                fail("after the restart, the read at %d is wrong" % off)
        h.pwrite(b"\xcc" * 100, partial)
        want = bytearray(base[partial - 5:partial - 5 + CS])
        want[5:105] = b"\xcc" * 100
        if h.pread(CS, partial - 5) != bytes(want):
            fail("the partial write after the restart reads back wrong")
    h.flush()
    h.shutdown()
    # Leave the last base running: the plugin still holds connections to it, and
    # it exits with us (--exit-with-parent) once the plugin has gone.
    print("nbd_reconnect: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
