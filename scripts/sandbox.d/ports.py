"""Pick free TCP (and UDP) ports for one sandbox.

usage: ports.py NAME[@ADDRESS][:KIND] ...

KIND is `tcp` (default), `tcpudp` (the same number free for TCP and UDP, for
the KDC) or `pair` (N and N+1 both free: OpenBao's cluster port is API+1).
ADDRESS defaults to 127.0.0.1.  Prints NAME=PORT lines.

Ports are drawn at random below Linux's ephemeral range (32768 and up), so an
outgoing connection never holds a port a sandbox is about to listen on, and
every candidate is bound before it is accepted.  All sockets stay open until
every name has a port, so one call never hands out a port twice.
"""

import random
import socket
import sys

LOW, HIGH = 20000, 32000


def try_bind(addr, port, kind):
    socks = []
    try:
        for p in ([port, port + 1] if kind == "pair" else [port]):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((addr, p))
            if kind == "tcpudp":
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(u)
                u.bind((addr, p))
        return socks
    except OSError:
        for s in socks:
            s.close()
        return None


def main(specs):
    held, taken, out = [], set(), []
    rng = random.SystemRandom()
    for spec in specs:
        name, _, kind = spec.partition(":")
        name, _, addr = name.partition("@")
        kind = kind or "tcp"
        addr = addr or "127.0.0.1"
        if kind not in ("tcp", "tcpudp", "pair"):
            sys.exit(f"ports.py: unknown kind {kind!r}")
        for _ in range(2000):
            port = rng.randrange(LOW, HIGH)
            span = {port, port + 1} if kind == "pair" else {port}
            if span & taken:
                continue
            socks = try_bind(addr, port, kind)
            if socks:
                held.extend(socks)
                taken |= span
                out.append(f"{name}={port}")
                break
        else:
            sys.exit(f"ports.py: no free port for {name}")
    for s in held:
        s.close()
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
