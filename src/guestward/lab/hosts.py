"""Lab hosts: each its own network, mount and UTS namespaces with a private libvirtd and virtlogd.

Topology: every host netns `gwl-<host>` has a bridge `gwbr0` (the host's own address on it) and an
uplink veth `gwup` to the switch netns `gwl-sw` (bridge `sw`); the `external` netns `gwl-ext` hangs
off the switch too. So guests on different hosts share one L2 segment, and `external` is outside
every host, reached through the uplinks, as a remote network would be.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

SWITCH_NS = "gwl-sw"
EXTERNAL_NS = "gwl-ext"
BRIDGE = "gwbr0"
UPLINK = "gwup"
CAPS_CACHE = Path("/var/cache/guestward/libvirt-cache")


class HostError(RuntimeError):
    pass


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, input=input)
    if check and proc.returncode != 0:
        raise HostError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def netns_name(host: str) -> str:
    return f"gwl-{host}"


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def netns_list() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def make_switch() -> None:
    if SWITCH_NS not in netns_list():
        sh("ip", "netns", "add", SWITCH_NS)
    sh("ip", "-n", SWITCH_NS, "link", "set", "lo", "up")
    if sh("ip", "-n", SWITCH_NS, "link", "show", "sw", check=False).returncode != 0:
        sh("ip", "-n", SWITCH_NS, "link", "add", "sw", "type", "bridge")
    sh("ip", "-n", SWITCH_NS, "link", "set", "sw", "up")


def make_host_network(host: str, address: str) -> None:
    """The host's netns, bridge with `address` (an a.b.c.d/len), and its uplink to the switch."""
    ns = netns_name(host)
    if ns not in netns_list():
        sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "-n", ns, "addr", "add", address, "dev", BRIDGE)
    sh("ip", "-n", ns, "link", "set", BRIDGE, "up")
    peer = f"sw-{host}"[:15]
    sh("ip", "-n", ns, "link", "add", UPLINK, "type", "veth", "peer", "name", peer, "netns", SWITCH_NS)
    sh("ip", "-n", ns, "link", "set", UPLINK, "master", BRIDGE, "up")
    sh("ip", "-n", SWITCH_NS, "link", "set", peer, "master", "sw", "up")
    # Bridged IPv4/IPv6 must walk the inet hooks, where guestward's stateful policy runs.
    for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
        sh(*in_ns(ns, "sysctl", "-qw", f"{key}=1"))


def make_external(address: str) -> None:
    if EXTERNAL_NS not in netns_list():
        sh("ip", "netns", "add", EXTERNAL_NS)
    sh("ip", "-n", EXTERNAL_NS, "link", "set", "lo", "up")
    sh("ip", "-n", EXTERNAL_NS, "link", "add", "eth0", "type", "veth", "peer", "name", "sw-ext", "netns", SWITCH_NS)
    sh("ip", "-n", EXTERNAL_NS, "addr", "add", address, "dev", "eth0")
    sh("ip", "-n", EXTERNAL_NS, "link", "set", "eth0", "up")
    sh("ip", "-n", SWITCH_NS, "link", "set", "sw-ext", "master", "sw", "up")


def host_dir(lab_dir: Path, host: str) -> Path:
    return lab_dir / "hosts" / host


def socket_uri(lab_dir: Path, host: str) -> str:
    return f"qemu+unix:///system?socket={host_dir(lab_dir, host)}/sock/libvirt-sock"


def start_libvirtd(lab_dir: Path, host: str, hook: str | None = None) -> str:
    """Start virtlogd + libvirtd for `host` in its namespaces, with private config and state. Returns the URI."""
    return start_private_libvirtd(netns_name(host), host_dir(lab_dir, host), host, f"guestward-lab/{host}", hook)


def start_private_libvirtd(netns: str, d: Path, hostname: str, identity: str, hook: str | None = None) -> str:
    """virtlogd + libvirtd inside network namespace `netns`, in a private mount and UTS namespace (hostname
    `hostname`), with config and state copied under `d` and a host UUID derived from `identity` (distinct
    hosts need distinct UUIDs to migrate between them). `hook`: the text of its `hooks/qemu` script
    (libvirtd finds hooks only when it starts). Returns the daemon's URI."""
    for sub in ("etc", "run", "lib", "cache", "log", "sock"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    shutil.copytree("/etc/libvirt", d / "etc", dirs_exist_ok=True, symlinks=True)
    shutil.copytree("/var/lib/libvirt", d / "lib", dirs_exist_ok=True, symlinks=True)
    if CAPS_CACHE.exists():
        shutil.copytree(CAPS_CACHE, d / "cache", dirs_exist_ok=True, symlinks=True)
    for autostart in (d / "etc" / "qemu" / "networks" / "autostart").glob("*"):
        autostart.unlink()
    if hook is not None:
        (d / "etc" / "hooks").mkdir(exist_ok=True)
        (d / "etc" / "hooks" / "qemu").write_text(hook)
        (d / "etc" / "hooks" / "qemu").chmod(0o755)
    host_uuid = uuid.uuid5(uuid.NAMESPACE_URL, identity)
    with open(d / "etc" / "libvirtd.conf", "a") as f:
        f.write(f'\nunix_sock_dir = "{d}/sock"\nhost_uuid = "{host_uuid}"\n')
    binds = " ".join(
        f"mount --bind {d}/{src} {dst};" for src, dst in (
            ("etc", "/etc/libvirt"), ("run", "/run/libvirt"), ("lib", "/var/lib/libvirt"),
            ("log", "/var/log/libvirt"), ("cache", "/var/cache/libvirt")))
    script = (f"hostname {hostname}; {binds} "
              f"virtlogd -d -p {d}/run/virtlogd.pid && libvirtd -d -p {d}/run/libvirtd.pid")
    Path("/run/libvirt").mkdir(parents=True, exist_ok=True)
    sh(*in_ns(netns, "unshare", "-m", "-u", "--propagation", "private", "sh", "-c", script))
    return f"qemu+unix:///system?socket={d}/sock/libvirt-sock"


def save_caps_cache(lab_dir: Path, host: str) -> None:
    """Keep the QEMU capabilities probe (about 10 s) for the next lab."""
    src = host_dir(lab_dir, host) / "cache"
    if any(src.rglob("*.xml")):
        CAPS_CACHE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, CAPS_CACHE, dirs_exist_ok=True, symlinks=True)


def kill_pidfile(pidfile: Path, timeout: float = 10.0) -> None:
    """SIGTERM the process named in `pidfile`, SIGKILL it after `timeout`: only ever our own processes
    (PIDs wrap fast here, so never by name)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def restart_libvirtd(lab_dir: Path, host: str) -> None:
    """Stop the host's libvirtd (its guests keep running) and start it again in the same namespaces,
    as an upgrade or a crash would: it reconnects to the running QEMUs (`reconnect` hook)."""
    d = host_dir(lab_dir, host)
    kill_pidfile(d / "run" / "libvirtd.pid")
    virtlogd = (d / "run" / "virtlogd.pid").read_text().strip()
    sh("nsenter", "-t", virtlogd, "-n", "-m", "-u", "libvirtd", "-d", "-p", f"{d}/run/libvirtd.pid")


def stop_host(lab_dir: Path, host: str) -> None:
    d = host_dir(lab_dir, host)
    for qemu_pid in (d / "run" / "qemu").glob("*.pid"):  # guests libvirt could not stop
        kill_pidfile(qemu_pid, timeout=2.0)
    kill_pidfile(d / "run" / "libvirtd.pid")
    kill_pidfile(d / "run" / "virtlogd.pid")


def remove_networks(prefix: str = "gwl-") -> None:
    for ns in netns_list():
        if ns.startswith(prefix):
            sh("ip", "netns", "del", ns, check=False)
