"""Network-namespace plumbing for the benchmarks: every namespace is named `gwb-*` and removed after use.

Never touches anything else: no `gwl-*` namespace (the lab's), and nft only ever runs inside a `gwb-*`
namespace (through `nsenter`), never in the root namespace.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from guestward.lab import hosts

PREFIX = "gwb-"


class BenchError(RuntimeError):
    pass


def sh(*argv: str, check: bool = True, input: str | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()[:2000]}")
    return proc.stdout


def _own(ns: str) -> str:
    if not ns.startswith(PREFIX):
        raise BenchError(f"refusing to touch namespace {ns!r}: benchmark namespaces start with {PREFIX!r}")
    return ns


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", _own(ns), *argv]


def nft(ns: str, *args: str, input: str | None = None) -> str:
    """nft inside one of our namespaces (never the root namespace)."""
    return sh("nsenter", f"--net=/run/netns/{_own(ns)}", "nft", *args, input=input)


def netns_list() -> list[str]:
    out = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def add_netns(ns: str) -> None:
    if _own(ns) in netns_list():
        sh("ip", "netns", "del", ns)
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")


def del_netns(ns: str) -> None:
    if _own(ns) in netns_list():
        sh("ip", "netns", "del", ns, check=False)


def remove_all(prefix: str = PREFIX) -> None:
    """Remove every namespace of ours (names start with `gwb-`, or a longer prefix of it)."""
    _own(prefix)
    for ns in netns_list():
        if ns.startswith(prefix):
            sh("ip", "netns", "del", ns, check=False)


@dataclass(frozen=True)
class GuestNs:
    """A netns standing in for a guest: `eth0` (MAC, address/8) whose veth peer `port` sits on the host bridge."""

    ns: str
    port: str
    mac: str
    address: str


@dataclass(frozen=True)
class Testbed:
    """A host netns with bridge `br0` and two guest netns attached by veth (TESTBED.md 4.3)."""

    host: str
    a: GuestNs
    b: GuestNs


def make_testbed(name: str, a: tuple[str, str, str], b: tuple[str, str, str]) -> Testbed:
    """`a`/`b` are (port, mac, address) of the two guests. Netns: gwb-<name>, gwb-<name>-a, gwb-<name>-b."""
    host = f"{PREFIX}{name}"
    add_netns(host)
    sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", host, "link", "set", "br0", "up")
    # Bridged IPv4/IPv6 must walk the inet hooks (guestward's stateful chains), as on a real host.
    for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
        sh(*in_ns(host, "sysctl", "-qw", f"{key}=1"))
    guests = []
    for side, (port, mac, address) in (("a", a), ("b", b)):
        g = GuestNs(f"{host}-{side}", port, mac, address)
        add_netns(g.ns)
        sh("ip", "-n", host, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", g.ns)
        sh("ip", "-n", host, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", g.ns, "link", "set", "eth0", "address", mac)
        sh(*in_ns(g.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"))
        sh("ip", "-n", g.ns, "addr", "add", f"{address}/8", "dev", "eth0")
        sh("ip", "-n", g.ns, "link", "set", "eth0", "up")
        guests.append(g)
    return Testbed(host, guests[0], guests[1])


def remove_testbed(tb: Testbed) -> None:
    for ns in (tb.a.ns, tb.b.ns, tb.host):
        del_netns(ns)


@contextlib.contextmanager
def daemon(argv: list[str], pidfile: Path) -> Iterator[int]:
    """Run `argv` in the background for the duration of the block; stopped by its own pid (kept in `pidfile`)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(str(proc.pid))
    try:
        yield proc.pid
    finally:
        kill_pidfile(pidfile)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def remove_run_dir(path: Path) -> None:
    """Remove a benchmark's scratch directory, and its parent (/var/tmp/guestward-bench) once empty."""
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def kill_pidfile(pidfile: Path, timeout: float = 10.0) -> None:
    """Stop the process named in `pidfile` (the lab's own killer: our processes only), then drop the file."""
    hosts.kill_pidfile(pidfile, timeout)
    pidfile.unlink(missing_ok=True)

