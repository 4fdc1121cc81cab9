#!/usr/bin/python3
"""Writer and verifier for test-crash-kill.sh.

write URI MODEL SECONDS: 4 connections, one thread each, write stamped 4 KiB
units into their own quarter of the disk, flushing now and then, until nbdkit
dies under them (or SECONDS pass). The model (every write issued, and for each
thread how many of its writes a completed flush covered) goes to MODEL.

verify URI MODEL BASELINE: every unit must hold the last write a completed
flush covered, or a later write of that unit; units no flush covered may also
hold what they held before the round (BASELINE, a JSON map of unit to id,
written by the previous verify; missing means all zero). The content found is
saved to BASELINE for the next round.
"""
import os
import json
import random
import struct
import sys
import threading
import time

import nbd

UNIT = 4096
THREADS = 4


def stamp(write_id, unit):
    return struct.pack("<QQ", write_id, unit) * (UNIT // 16)


def writer(uri, t, size, deadline, model, lock):
    h = nbd.NBD()
    h.connect_uri(uri)
    units = size // UNIT
    first, last = units * t // THREADS, units * (t + 1) // THREADS
    rng = random.Random(t * 7919 + int(time.time()))
    base_id = int(time.time() * 1000) % (1 << 40) << 12  # distinct across rounds
    writes = []  # (id, first unit, count) in issue order
    durable = 0  # writes[:durable] were covered by a completed flush
    try:
        while time.time() < deadline:
            if rng.random() < 0.15:
                upto = len(writes)
                h.flush()
                durable = upto
                continue
            n = rng.randint(1, 16)
            u = rng.randint(first, last - n)
            wid = (base_id + len(writes) + 1) << 8 | t
            writes.append((wid, u, n))  # before issuing: it may land or not
            h.pwrite(b"".join(stamp(wid, u + i) for i in range(n)), u * UNIT)
    except nbd.Error:
        pass  # nbdkit was killed
    with lock:
        model[t] = {"writes": writes, "durable": durable}


def write(uri, model_path, seconds):
    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    h.shutdown()
    model, lock = {}, threading.Lock()
    deadline = time.time() + seconds
    threads = [threading.Thread(target=writer, args=(uri, t, size, deadline, model, lock))
               for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    with open(model_path, "w") as f:
        json.dump({"size": size, "threads": model}, f)
    total = sum(len(m["writes"]) for m in model.values())
    flushed = sum(m["durable"] for m in model.values())
    print(f"crash_kill: {total} writes issued, {flushed} covered by completed flushes")


def verify(uri, model_path, baseline_path):
    with open(model_path) as f:
        m = json.load(f)
    before = {}
    if os.path.exists(baseline_path):
        with open(baseline_path) as f:
            before = {int(k): v for k, v in json.load(f).items()}
    size = m["size"]
    allowed = {}  # unit -> set of ids it may hold
    for t in m["threads"].values():
        history = {}
        for i, (wid, u, n) in enumerate(t["writes"]):
            for k in range(u, u + n):
                history.setdefault(k, []).append((i, wid))
        for k, hist in history.items():
            durable = [j for j, (i, _) in enumerate(hist) if i < t["durable"]]
            start = durable[-1] if durable else 0
            ids = {wid for _, wid in hist[start:]}
            if not durable:
                ids.add(before.get(k, 0))
            allowed[k] = ids
    h = nbd.NBD()
    h.connect_uri(uri)
    bad = 0
    found = {}
    zero = bytes(UNIT)
    chunk = 256 * UNIT
    for off in range(0, size, chunk):
        data = h.pread(min(chunk, size - off), off)
        for i in range(0, len(data), UNIT):
            unit = (off + i) // UNIT
            block = data[i:i + UNIT]
            wid = 0 if block == zero else struct.unpack_from("<Q", block)[0]
            ok_ids = allowed.get(unit, {before.get(unit, 0)})
            ok = wid in ok_ids and (wid == 0 or block == stamp(wid, unit))
            if wid:
                found[unit] = wid
            if not ok:
                bad += 1
                if bad <= 5:
                    print(f"unit {unit}: holds id {wid}, allowed {sorted(ok_ids)}",
                          file=sys.stderr)
    h.shutdown()
    with open(baseline_path, "w") as f:
        json.dump(found, f)
    if bad:
        print(f"crash_kill: {bad} units violate the flush guarantee", file=sys.stderr)
        sys.exit(1)
    print(f"crash_kill: all {size // UNIT} units hold flushed or later data")


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        verify(sys.argv[2], sys.argv[3], sys.argv[4])
