"""Find and end every leftover process of one sandbox.

usage: reap.py DIR [--list]

A process belongs to the sandbox at DIR when its environment carries
MT_SANDBOX_DIR=DIR (every daemon `scripts/sandbox` starts, and what those
daemons fork), or when it lives in one of the sandbox's mount namespaces
(recorded in DIR/pids/*.mntns: the sshd nodes and the HTCondor pools), which
also catches login sessions on a node.  The caller and its ancestors are
spared.  Each is sent SIGTERM, then SIGKILL after two seconds.  With --list
the pids are only printed.
"""

import glob
import os
import signal
import sys
import time


def ancestors():
    spared = set()
    pid = os.getpid()
    while pid > 1:
        spared.add(pid)
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return spared


def members(d):
    marker = f"MT_SANDBOX_DIR={d}".encode()
    namespaces = set()
    for path in glob.glob(os.path.join(d, "pids", "*.mntns")):
        try:
            with open(path, encoding="utf-8") as f:
                namespaces.add(f.read().strip())
        except OSError:
            pass
    namespaces.discard("")
    own_ns = os.readlink("/proc/self/ns/mnt")
    namespaces.discard(own_ns)
    spared = ancestors()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in spared:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            continue
        if marker in env or ns in namespaces:
            found.append(pid)
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: reap.py DIR [--list]")
    d = os.path.abspath(sys.argv[1])
    pids = members(d)
    if "--list" in sys.argv[2:]:
        print(" ".join(map(str, pids)))
        return
    if not pids:
        return
    print(f"reap.py: ending leftover processes {pids}", file=sys.stderr)
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            pids = [p for p in pids if alive(p)]
            if not pids:
                return
            time.sleep(0.05)
    if pids:
        sys.exit(f"reap.py: processes {pids} did not end")


if __name__ == "__main__":
    main()
