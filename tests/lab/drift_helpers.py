"""Helpers for the drift tests: an attacker that changes guestward's tables from another process, and a
host-side record of the TCP SYNs that a bridge port actually transmitted (to the guest behind it).

Why host-side: the guests' clocks are not the host's, and a probe's verdict in the guest says nothing
about when its packet passed. A packet socket on the destination's tap sees a frame only when the
bridge transmits it to the guest, i.e. after every netfilter hook let it through, and the kernel
stamps it then (SO_TIMESTAMPNS, CLOCK_REALTIME), independent of when the reader gets to run.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from guestward.enforce import NftRunner

CAPTURE = r'''
import socket, struct, sys
iface, dst, port = sys.argv[1], socket.inet_aton(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
s.bind((iface, 0))
print("ready", flush=True)
while True:
    data, anc, _, addr = s.recvmsg(256, 256)
    if addr[2] != 4 or data[12:14] != b"\x08\x00" or data[23] != 6 or data[30:34] != dst:
        continue  # only IPv4 TCP to dst, going out of the port (PACKET_OUTGOING)
    tcp = data[14 + (data[14] & 15) * 4:]
    if struct.unpack("!H", tcp[2:4])[0] != port or tcp[13] & 0x12 != 0x02:
        continue  # only SYNs (no ACK) to port
    stamp = next((struct.unpack("qq", d[:16]) for lvl, typ, d in anc if lvl == socket.SOL_SOCKET and typ == 35), None)
    if stamp:
        print(f"{stamp[0] + stamp[1] / 1e9:.6f} {socket.inet_ntoa(data[26:30])}", flush=True)
'''


class SynCapture:
    """SYNs to `dst`:`port` transmitted on bridge port `iface` of netns `ns`: (realtime, source)."""

    def __init__(self, ns: str, iface: str, dst: str, port: int) -> None:
        self.proc = subprocess.Popen(NftRunner(ns).command(sys.executable, "-c", CAPTURE, iface, dst, str(port)),
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        self.seen: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t, src = line.split()
            self.seen.append((float(t), src))

    def stop(self) -> list[tuple[float, str]]:
        time.sleep(0.2)
        self.proc.kill()
        self.proc.wait()
        return list(self.seen)


@dataclass(frozen=True)
class Attack:
    what: str
    pid: int
    started: float  # realtime, taken before the attacker process was started
    ended: float  # realtime, after it exited (its commit lies in between)


def attack(ns: str, *argv: str) -> Attack:
    """Run `nft ARGV` as a foreign process in `ns` (no guestward code involved)."""
    started = time.time()
    proc = subprocess.Popen(NftRunner(ns).command("nft", *argv), stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    ended = time.time()
    assert proc.returncode == 0, f"nft {' '.join(argv)}: {err}"
    return Attack(" ".join(argv), proc.pid, started, ended)
