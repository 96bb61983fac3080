"""The drop-log reader: binds one NFLOG group in the network namespace it runs in and prints one JSON
line per logged packet on stdout. Run it in a host's namespace as
`NftRunner(netns).command(python, "-m", "guestward.enforce.nflog_reader", "--group", N)`.

Output contract (one JSON object per line, flushed per received datagram):
- first `{"ready": true, "group": N}` once the kernel acknowledged the bind (nothing is logged
  to us before it), or `{"error": "..."}` and exit status 1 (e.g. another listener owns the group);
- then per packet: `at` (our clock), `family` (bridge, ipv4, ipv6), `hook`, `prefix`, `in`, `out`,
  `physin`, `physout` (interface names as this namespace has them, or `#<ifindex>` for one that is
  already gone), `mark`, `seq`, `lost` (messages the kernel could not deliver to us just before this
  one, from sequence gaps), `proto`, `src`, `dst`, `sport`, `dport`, `tcpflags`, `icmp_type`, `mac`, `len`.
- it exits when stdout is closed (the consumer went away) or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from guestward.dataplane.nflog import NflogPacket, SeqTracker, bind_request, parse_datagram

NETLINK_NETFILTER = 12
SO_RCVBUFFORCE = 33


class Names:
    """ifindex -> name in this namespace, cached; a miss is looked up again (ports come and go)."""

    def __init__(self, lookup: Callable[[int], str] = socket.if_indextoname) -> None:
        self._lookup = lookup
        self._cache: dict[int, str] = {}

    def __call__(self, index: int | None) -> str | None:
        if index is None:
            return None
        name = self._cache.get(index)
        if name is None:
            try:
                name = self._lookup(index)
            except OSError:
                return f"#{index}"
            self._cache[index] = name
        return name

    def forget(self) -> None:
        self._cache.clear()


def record(p: NflogPacket, lost: int, names: Names, now: float) -> dict[str, Any]:
    """The JSON line of one packet."""
    return {
        "at": round(now, 6), "family": p.family, "hook": p.hook, "prefix": p.prefix,
        "in": names(p.indev), "out": names(p.outdev), "physin": names(p.physindev), "physout": names(p.physoutdev),
        "mark": p.mark, "seq": p.seq, "lost": lost, "proto": p.proto, "src": p.src, "dst": p.dst,
        "sport": p.sport, "dport": p.dport, "tcpflags": p.tcpflags, "icmp_type": p.icmp_type, "mac": p.mac,
        "len": p.length,
    }


def open_socket(group: int, copy_range: int, qthresh: int, rcvbuf: int) -> socket.socket:
    """A netlink socket bound to `group` (raises OSError with the kernel's errno when refused)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        s.bind((0, 0))
        s.send(bind_request(group, copy_range=copy_range, qthresh=qthresh))
        s.settimeout(5.0)
        while True:
            reply = parse_datagram(s.recv(65536))
            if reply.errors:
                if reply.errors[0]:
                    code = reply.errors[0]
                    raise OSError(code, f"NFLOG bind of group {group}: {errno.errorcode.get(code, code)}")
                break
        s.settimeout(None)
        return s
    except BaseException:
        s.close()
        raise


def run(group: int, out: TextIO, copy_range: int = 96, qthresh: int = 32, rcvbuf: int = 8 << 20) -> int:
    try:
        s = open_socket(group, copy_range, qthresh, rcvbuf)
    except OSError as exc:
        print(json.dumps({"error": str(exc)}), file=out, flush=True)
        return 1
    print(json.dumps({"ready": True, "group": group}), file=out, flush=True)
    seqs, names = SeqTracker(), Names()
    buf = bytearray(1 << 20)
    while True:
        try:
            n = s.recv_into(buf)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # the kernel dropped messages: the sequence gap counts them
                continue
            if exc.errno == errno.EINTR:
                continue
            raise
        dg = parse_datagram(bytes(buf[:n]))
        if not dg.packets:
            continue
        now = time.time()
        lines = []
        for p in dg.packets:
            lines.append(json.dumps(record(p, seqs.see(p.seq), names, now)))
        try:
            out.write("\n".join(lines) + "\n")
            out.flush()
        except BrokenPipeError:
            return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--group", type=int, required=True)
    parser.add_argument("--copy", type=int, default=96, help="bytes of each packet to copy (headers only)")
    parser.add_argument("--qthresh", type=int, default=32, help="messages the kernel batches per datagram")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return run(args.group, sys.stdout, args.copy, args.qthresh)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
