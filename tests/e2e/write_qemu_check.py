#!/usr/bin/python3
"""qemu-img check of a QED image written by the plugin, for the test-write-*.sh tests.

    write_qemu_check.py IMAGE [--allow-leaks] [--allow-dirty]

Fails (exit 1, with the report on stderr) if qemu finds corruptions or check errors,
or leaked clusters.  QEMU 7.2 counts clusters with `bytes / (cluster_size - 1)`
(a QEMU bug, see docs/compared-with-qemu.md), so on a file of k clusters it reports
floor(k / (cluster_size - 1)) leaks that do not exist; exactly that many are
tolerated and any other leak count fails, unless --allow-leaks (after a crash,
leaked clusters are allowed).

Unless --allow-dirty, the header must not have NEED_CHECK (0x2) set: the plugin
clears it when it shuts down cleanly.
"""
import json
import os
import struct
import subprocess
import sys


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    allow_leaks = "--allow-leaks" in sys.argv
    allow_dirty = "--allow-dirty" in sys.argv
    image = args[0]
    with open(image, "rb") as f:
        hdr = f.read(64)
    magic, cs, ts, hs, features = struct.unpack_from("<IIIIQ", hdr, 0)
    if magic != 0x00444551:
        print("%s: bad magic" % image, file=sys.stderr)
        return 1
    if features & 2 and not allow_dirty:
        print("%s: FAIL: NEED_CHECK is still set (features 0x%x)" % (image, features),
              file=sys.stderr)
        return 1
    p = subprocess.run(["qemu-img", "check", "--output=json", "-f", "qed", image],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r = json.loads(p.stdout)
    except ValueError:
        print("%s: qemu-img check failed (exit %d):\n%s%s" %
              (image, p.returncode, p.stdout, p.stderr), file=sys.stderr)
        return 1
    k = os.path.getsize(image) // cs
    false_leaks = k // (cs - 1)
    leaks = r.get("leaks", 0)
    problems = []
    if r.get("corruptions", 0):
        problems.append("%d corruptions" % r["corruptions"])
    if r.get("check-errors", 0):
        problems.append("%d check errors" % r["check-errors"])
    if not allow_leaks and leaks != false_leaks:
        problems.append("%d leaked clusters (qemu's cluster counting explains %d)" %
                        (leaks, false_leaks))
    if p.returncode not in (0, 3) or (p.returncode == 3 and not leaks):
        problems.append("exit status %d" % p.returncode)
    if problems:
        print("%s: FAIL: qemu-img check: %s\n%s%s" %
              (image, ", ".join(problems), p.stdout, p.stderr), file=sys.stderr)
        return 1
    print("%s: qemu-img check: ok (%d/%d clusters allocated%s%s)" %
          (image, r.get("allocated-clusters", 0), r.get("total-clusters", 0),
           ", %d leaks" % leaks if leaks else "",
           " = qemu's false leaks" if leaks and leaks == false_leaks else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
