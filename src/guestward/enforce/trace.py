"""Follow real packets through one host's tables: a temporary trace table and `nft monitor`.

`TraceSession(runner, flows)` is a context manager. On entry it starts `nft monitor` in the host's
namespace and waits until the monitor listens (it has printed the creation of a marker table, which
is created and deleted again until it does); then it adds its own table `bridge gwtrace<pid>x<n>`
with a base chain at bridge prerouting -350 (before guestward's -300) holding one rule per flow that
sets `meta nftrace set 1` on the flow's first packet (a TCP SYN, an echo request, any UDP datagram).
So no trace of a packet sent after entry is missed. The kernel reports a marked packet at every rule
that gives it a verdict, in this and every later hook (br_netfilter carries the mark into the inet
hooks; a veth into another namespace clears it, so each host traces for itself). `lines()` is what
the monitor printed so far. On exit, whatever happened, the table is deleted and the monitor
stopped: tracing never outlives the session. A session left behind by a killed process (its pid is
in the table's name) is removed by the next session on that host.

guestward's own tables are never touched, so the agent's drift repair ignores the session.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import TracebackType

from guestward.enforce.enforcer import EnforceError, NftRunner

PRIORITY = -350
_counter = iter(range(1, 1 << 30))


@dataclass(frozen=True)
class TracedFlow:
    """The packets to trace: from `src` (None: any) to `dst`, protocol tcp|udp|icmp|icmpv6, port."""

    src: IPv4Address | IPv6Address | None
    dst: IPv4Address | IPv6Address
    protocol: str
    port: int | None = None

    def rule(self) -> str:
        fam = "ip" if self.dst.version == 4 else "ip6"
        match = [f"{fam} saddr {self.src}"] if self.src is not None else []
        match.append(f"{fam} daddr {self.dst}")
        if self.protocol == "tcp":
            match.append(f"tcp dport {self.port} tcp flags & (syn | ack) == syn")
        elif self.protocol == "udp":
            match.append(f"udp dport {self.port}")
        elif self.protocol == "icmp":
            match.append("icmp type echo-request")
        elif self.protocol == "icmpv6":
            match.append("icmpv6 type echo-request")
        else:
            raise ValueError(f"cannot trace protocol {self.protocol!r}")
        return " ".join(match) + " meta nftrace set 1"


class TraceSession:
    def __init__(self, runner: NftRunner, flows: list[TracedFlow], ready_timeout: float = 10.0) -> None:
        self.runner = runner
        self.flows = flows
        self.table = f"gwtrace{os.getpid()}x{next(_counter)}"
        self.ready_timeout = ready_timeout
        self._lines: list[str] = []
        self._ready = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> TraceSession:
        self._remove_orphans()
        self._proc = subprocess.Popen(self.runner.command("nft", "monitor"), stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"trace-{self.table}")
        self._reader.start()
        try:
            deadline = time.monotonic() + self.ready_timeout
            while not self._ready.is_set():  # a monitor that has only just started is not listening yet
                if time.monotonic() > deadline:
                    raise EnforceError(f"nft monitor did not start listening within {self.ready_timeout:.0f} s")
                marker = f"{self.table}r"
                self.runner.run("nft", "add", "table", "bridge", marker, ";", "delete", "table", "bridge", marker)
                self._ready.wait(0.2)
            self._add_table()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _remove_orphans(self) -> None:
        for m in re.finditer(r"^table bridge (gwtrace(\d+)x\d+r?)$", self.runner.run("nft", "list", "tables").stdout,
                             re.MULTILINE):
            if not Path(f"/proc/{m.group(2)}").exists():
                self.runner.run("nft", "delete", "table", "bridge", m.group(1))

    def _add_table(self) -> None:
        rules = "\n".join(f"    {f.rule()}" for f in self.flows)
        text = (f"table bridge {self.table} {{\n  chain pre {{\n    type filter hook prerouting priority {PRIORITY};"
                f" policy accept;\n{rules}\n  }}\n}}\n")
        proc = subprocess.run(self.runner.command("nft", "-f", "-"), input=text, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise EnforceError(f"cannot add trace table: {proc.stderr.strip()[:1000]}")

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        marker = f"add table bridge {self.table}r"
        for line in self._proc.stdout:
            if line.startswith("trace id "):
                self._lines.append(line.rstrip("\n"))
            elif line.startswith(marker):
                self._ready.set()

    def lines(self) -> list[str]:
        return list(self._lines)

    def close(self) -> None:
        self.runner.run("nft", "delete", "table", "bridge", self.table)  # absent already: nothing to do
        if self._proc is not None:
            time.sleep(0.05)  # let the monitor print what the kernel already sent
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        if self._reader is not None:
            self._reader.join(2.0)  # everything the monitor printed is in lines() from here on
