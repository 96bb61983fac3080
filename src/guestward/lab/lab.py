"""The lab's lifecycle: up, status, exec, probe, down (POLICY.md section 4).

State lives in the lab directory (`$GUESTWARD_LAB_DIR`, default /var/lib/guestward/lab): the
scenario, where each guest is, and a guestward config naming the lab's hosts, which every other
`guestward` command uses while the lab is up.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

from guestward.dataplane.trace import FlowTrace, flow_trace, of_flow, parse_traces
from guestward.enforce import NftRunner
from guestward.enforce.trace import TracedFlow, TraceSession
from guestward.hypervisor import domains
from guestward.lab import assets, console, hosts
from guestward.lab.domain import command_socket, console_log, domain_xml
from guestward.lab.scenario import GuestSpec, Scenario, load_scenario
from guestward.policy import PortRange, parse_port
from guestward.reconcile import hook
from guestward.reconcile.controller import Controller, read_sources
from guestward.reconcile.migration import live_migrate
from guestward.store.config import LAB_DIR, Config, HostConfig, NetworkConfig, save_config

log = logging.getLogger(__name__)
BOOT_TIMEOUT = 240.0
PROBE_TIMEOUT_MS = 2000


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    port: PortRange

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} {self.port}"


class Lab:
    def __init__(self, lab_dir: Path = LAB_DIR) -> None:
        self.dir = lab_dir
        self.state_file = lab_dir / "state.json"
        self.config_file = lab_dir / "config.yaml"

    # -- state -----------------------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self.state_file.exists()

    def scenario(self) -> Scenario:
        if not self.is_up:
            raise LabError("no lab is up: guestward lab up -f SCENARIO")
        return Scenario.model_validate(json.loads(self.state_file.read_text())["scenario"])

    def _save(self, scenario: Scenario) -> None:
        self.state_file.write_text(json.dumps({"scenario": scenario.model_dump(mode="json")}, indent=1))

    def config(self) -> Config:
        sc = self.scenario()
        # The lab network is the guests' only range; its first address is the gateway's, the hosts' own
        # addresses and the external machine's are never a guest's (docs/SECURITY.md, Guest addresses).
        network = NetworkConfig(name="lab", cidrs=[str(sc.network)], gateways=[str(sc.network.network_address + 1)],
                                reserved=[str(sc.external)] if sc.external is not None else [])
        return Config(state_dir=self.dir / "state", hosts=[
            HostConfig(name=h, uri=hosts.socket_uri(self.dir, h), netns=hosts.netns_name(h), uplinks=[hosts.UPLINK],
                       addresses=[str(sc.host_address(h))])
            for h in sc.hosts], networks=[network])

    def controller(self) -> Controller:
        return Controller(self.config())

    def uri(self, host: str) -> str:
        return hosts.socket_uri(self.dir, host)

    def where(self, guest: str) -> str | None:
        """The host the guest runs on now (None: not running anywhere)."""
        for h in self.scenario().hosts:
            if domains.is_active(self.uri(h), guest):
                return h
        return None

    # -- up / down -------------------------------------------------------------------------------

    def up(self, scenario_path: Path, policy_path: Path | None = None) -> None:
        scenario = load_scenario(scenario_path)
        sources = read_sources(policy_path) if policy_path else []
        if sources:
            from guestward.policy import parse_policies
            parse_policies(sources)  # a bad policy fails before anything is built
        if self.is_up:
            raise LabError(f"a lab is already up in {self.dir}: guestward lab down")
        hosts.remove_networks()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        for sub in ("console", "sock", "guest", "bin"):
            (self.dir / sub).mkdir(exist_ok=True)
        for h in scenario.hosts:
            sock_dir = self.dir / "sock" / h
            sock_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(sock_dir, "libvirt-qemu", "kvm") if _user_exists("libvirt-qemu") else None
        gw_net = assets.build_gw_net(self.dir / "bin" / "gw-net")
        assets.build_initrd(self.dir / "guest" / "initrd.gz", gw_net)
        self._save(scenario)
        hosts.make_switch()
        for h in scenario.hosts:
            hosts.make_host_network(h, str(scenario.interface(scenario.host_address(h))))
        if scenario.external is not None:
            hosts.make_external(str(scenario.interface(scenario.external)))
            specs = scenario.external_listen
            hosts.sh(*hosts.in_ns(hosts.EXTERNAL_NS, str(gw_net), "serve", *specs))
        save_config(self.config(), self.config_file)
        cached = hosts.CAPS_CACHE.exists()
        for i, h in enumerate(scenario.hosts):
            uri = hosts.start_libvirtd(self.dir, h, hook.script(sys.executable, self.config_file, h))
            if i == 0 or not cached:
                domains.wait_for_daemon(uri, timeout=120)
                domains.domain_names(uri)
                if i == 0 and not cached:
                    hosts.save_caps_cache(self.dir, h)
                    cached = True
        for h in scenario.hosts:
            domains.wait_for_daemon(self.uri(h), timeout=120)
        for g in scenario.guests:
            self._define(scenario, g)
        # Enforce before the first guest runs: its vNIC is known and bound before it can send.
        ctl = self.controller()
        names = [g.name for g in scenario.guests]
        if sources:
            ctl.apply(sources, replace_all=True, starting=names)
        else:
            ctl.sync(starting=names)
        self.start_agent()
        for g in scenario.guests:
            domains.start(self.uri(g.host), g.name)
        self.wait_guests(names)

    def _define(self, scenario: Scenario, g: GuestSpec) -> None:
        if g.disk:
            disk = self.disk_path(g.name)
            disk.parent.mkdir(exist_ok=True)
            hosts.sh("qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M")
            shutil.chown(disk, "libvirt-qemu", "kvm") if _user_exists("libvirt-qemu") else None
        domains.define(self.uri(g.host), domain_xml(self.dir, scenario, g))

    def disk_path(self, guest: str) -> Path:
        return self.dir / "disk" / f"{guest}.qcow2"

    # -- the agent -------------------------------------------------------------------------------

    @property
    def agent_pidfile(self) -> Path:
        return self.dir / "agent.pid"

    def agent_pid(self) -> int | None:
        """The running agent's pid, or None."""
        try:
            pid = int(self.agent_pidfile.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start_agent(self) -> int:
        """Start `guestward agent` for the lab's hosts in the background (log: agent.log)."""
        pid = self.agent_pid()
        if pid is not None:
            return pid
        with open(self.dir / "agent.log", "ab") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "guestward", "agent", "--config", str(self.config_file)],
                                    stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, start_new_session=True)
        self.agent_pidfile.write_text(str(proc.pid))
        return proc.pid

    def stop_agent(self) -> None:
        hosts.kill_pidfile(self.agent_pidfile)
        self.agent_pidfile.unlink(missing_ok=True)

    # -- moving guests ---------------------------------------------------------------------------

    def migrate(self, guest: str, dest: str, carry_connections: bool = True) -> dict[str, int]:
        """Live-migrate a running guest to host `dest`, with its connections (reconcile/migration.py),
        or with `carry_connections=False` as plain libvirt would (`virsh migrate`). Returns the job's
        statistics (ms)."""
        sc = self.scenario()
        if dest not in sc.hosts:
            raise LabError(f"unknown host {dest!r}")
        src = self.where(guest)
        if src is None:
            raise LabError(f"guest {guest!r} is not running")
        if src == dest:
            raise LabError(f"guest {guest!r} already runs on {dest}")

        def rewrite(xml: str) -> str:  # the command socket is per host
            return xml.replace(str(command_socket(self.dir, src, guest)), str(command_socket(self.dir, dest, guest)))

        if not carry_connections:
            return domains.migrate(self.uri(src), self.uri(dest), guest, rewrite, f"tcp://{sc.host_address(dest)}")
        report = live_migrate(self.config(), guest, src, dest, rewrite=rewrite,
                              migration_uri=f"tcp://{sc.host_address(dest)}")
        if report.error:
            log.warning("migrate %s: %s", guest, report.error)
        return report.stats()

    def clone(self, guest: str, new: str, host: str | None = None) -> GuestSpec:
        """Define and boot a copy of `guest` named `new` (on `host`, default: where `guest` is): new
        UUID, MAC, tap and address; the labels it has now, and its services."""
        sc = self.scenario()
        try:
            src = sc.guest(guest)
        except KeyError:
            raise LabError(f"no guest {guest!r} in the lab") from None
        where = self.where(guest) or src.host
        host = host or where
        labels = domains.labels(self.uri(where), guest)
        data = sc.model_dump(mode="json")
        data["guests"].append({"name": new, "host": host, "labels": labels, "listen": src.listen})
        try:
            sc = Scenario.model_validate(data)
        except ValueError as exc:
            raise LabError(f"clone {new}: {exc}") from None
        spec = sc.guest(new)
        self._define(sc, spec)
        self._save(sc)
        domains.start(self.uri(host), new)
        self.wait_guests([new])
        return spec

    def remove(self, guest: str) -> None:
        """Stop and undefine a guest everywhere and drop it from the lab (e.g. a clone)."""
        for h in self.scenario().hosts:
            domains.destroy(self.uri(h), guest, undefine=True)
        sc = self.scenario()
        sc.guests = [g for g in sc.guests if g.name != guest]
        self._save(sc)
        self.disk_path(guest).unlink(missing_ok=True)

    def stop(self, guest: str) -> None:
        host = self.where(guest)
        if host is None:
            raise LabError(f"guest {guest!r} is not running")
        domains.destroy(self.uri(host), guest)

    def start(self, guest: str) -> None:
        sc = self.scenario()
        if self.where(guest) is not None:
            raise LabError(f"guest {guest!r} is already running")
        for h in sc.hosts:
            if guest in domains.domain_names(self.uri(h)):
                domains.start(self.uri(h), guest)
                self.wait_guests([guest])
                return
        raise LabError(f"guest {guest!r} is not defined on any lab host")

    def wait_guests(self, names: list[str], timeout: float = BOOT_TIMEOUT) -> None:
        def wait(name: str) -> None:
            host = self._host_of(name)
            sock = command_socket(self.dir, host, name)
            try:
                console.wait_ready(sock, timeout / 2)
            except console.ConsoleError as exc:
                # A TCG guest on a busy host can boot with a dead command channel; a second boot of
                # the same definition is the cure, and it is logged, never hidden.
                log.warning("%s: %s; restarting it once", name, exc)
                domains.destroy(self.uri(host), name)
                domains.start(self.uri(host), name)
                console.wait_ready(sock, timeout / 2)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(wait, names))

    def down(self) -> None:
        """Stop everything the lab started and remove what it made (best effort, never raises)."""
        try:
            sc = self.scenario()
            host_names = sc.hosts
        except Exception:
            host_names = [p.name for p in (self.dir / "hosts").glob("*")] if (self.dir / "hosts").exists() else []
        self.stop_agent()
        for h in host_names:
            try:
                for name in domains.domain_names(self.uri(h)):
                    domains.destroy(self.uri(h), name, undefine=True)
            except Exception as exc:
                log.debug("down: %s: %s", h, exc)
            hosts.stop_host(self.dir, h)
        if hosts.EXTERNAL_NS in hosts.netns_list():
            pids = hosts.sh("ip", "netns", "pids", hosts.EXTERNAL_NS, check=False).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], check=False, capture_output=True)
        hosts.remove_networks()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- guests ----------------------------------------------------------------------------------

    def _host_of(self, guest: str) -> str:
        host = self.where(guest)
        if host is None:
            sc = self.scenario()
            try:
                host = sc.guest(guest).host
            except KeyError:
                raise LabError(f"no guest {guest!r} in the lab") from None
        return host

    def exec(self, guest: str, argv: list[str], timeout: float = 60.0) -> console.Result:
        host = self.where(guest)
        if host is None:
            raise LabError(f"guest {guest!r} is not running")
        command = argv[0] if len(argv) == 1 else shlex.join(argv)
        return console.run(command_socket(self.dir, host, guest), command, timeout=timeout)

    def address(self, endpoint: str) -> IPv4Address:
        sc = self.scenario()
        if endpoint == "external":
            if sc.external is None:
                raise LabError("the scenario has no external address")
            return sc.external
        try:
            g = sc.guest(endpoint)
        except KeyError:
            try:
                addr = ip_address(endpoint)
            except ValueError:
                raise LabError(f"unknown endpoint {endpoint!r}: a guest name, an address or external") from None
            assert isinstance(addr, IPv4Address)
            return addr
        assert g.address is not None
        return g.address

    # -- probes ----------------------------------------------------------------------------------

    def services(self, endpoint: str) -> list[PortRange]:
        """What an endpoint answers on: its listen ports, and ping."""
        sc = self.scenario()
        specs = sc.external_listen if endpoint == "external" else sc.guest(endpoint).listen
        return [*(parse_port(p) for p in specs), PortRange("icmp")]

    def all_flows(self) -> list[Flow]:
        sc = self.scenario()
        ends = [g.name for g in sc.guests if self.where(g.name) is not None]
        if sc.external is not None:
            ends.append("external")
        return [Flow(s, d, p) for s in ends for d in ends if s != d for p in self.services(d)]

    @staticmethod
    def _probe_command(addr: str, port: PortRange, gw_net: str) -> str:
        if port.protocol == "icmp":
            return f"ping -c 1 -W 2 {addr} >/dev/null 2>&1 && echo allowed || echo blocked"
        return f"{gw_net} probe {port.protocol} {addr} {port.first} {PROBE_TIMEOUT_MS}"

    def _run_batch(self, src: str, flows: list[Flow]) -> dict[Flow, bool]:
        """Run every flow of one source at once (in parallel inside the source)."""
        gw_net = str(self.dir / "bin" / "gw-net") if src == "external" else "gw-net"
        script = " ".join(
            f"( r=$({self._probe_command(str(self.address(f.dst)), f.port, gw_net)}); echo R{i} $r ) &"
            for i, f in enumerate(flows)) + " wait"
        if src == "external":
            out = hosts.sh(*hosts.in_ns(hosts.EXTERNAL_NS, "sh", "-c", script), check=False).stdout
        else:
            out = self.exec(src, [script], timeout=60).output
        results: dict[Flow, bool] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].startswith("R") and parts[0][1:].isdigit():
                results[flows[int(parts[0][1:])]] = parts[1] == "allowed"
        missing = [f for f in flows if f not in results]
        if missing:
            raise LabError(f"probe from {src}: no result for {', '.join(map(str, missing))}: {out[-500:]!r}")
        return results

    def probe(self, flows: list[Flow], confirm_blocked: bool = True) -> dict[Flow, bool]:
        """Send real packets for every flow. A flow is allowed when its echo came back. A blocked
        result is probed once more (a busy TCG guest can miss one deadline; an echo is never faked)."""
        by_src: dict[str, list[Flow]] = {}
        for f in flows:
            by_src.setdefault(f.src, []).append(f)
        results: dict[Flow, bool] = {}
        with ThreadPoolExecutor(max_workers=8) as pool:
            for part in pool.map(lambda item: self._run_batch(*item), by_src.items()):
                results.update(part)
        if confirm_blocked:
            again = [f for f, ok in results.items() if not ok]
            if again:
                results.update(self.probe(again, confirm_blocked=False))
        return results

    def traced_flow(self, flow: Flow) -> TracedFlow:
        port = flow.port.first if flow.port.protocol in ("tcp", "udp") else None
        return TracedFlow(self.address(flow.src), self.address(flow.dst), flow.port.protocol, port)

    def trace(self, flows: list[Flow]) -> dict[Flow, tuple[FlowTrace, bool]]:
        """Send one real packet per flow (`probe`, all at once) while every host traces the flows'
        first packets (enforce/trace.py): per flow, what its packet met on each host it was seen at,
        and whether the probe got its echo. The trace tables are gone when this returns or raises."""
        sc = self.scenario()
        traced = {f: self.traced_flow(f) for f in flows}
        where = {e: self.where(e) for e in {x for f in flows for x in (f.src, f.dst)} if e != "external"}
        ends = {e: (h, sc.guest(e).tap) if h is not None else None for e, h in where.items()}
        with ExitStack() as stack:
            sessions = {h: stack.enter_context(TraceSession(NftRunner(hosts.netns_name(h)), sorted(
                set(traced.values()), key=str))) for h in sc.hosts}
            probed = self.probe(flows, confirm_blocked=False)
            time.sleep(0.3)  # the last verdicts of the last packets
        per_host = {h: parse_traces(s.lines()) for h, s in sessions.items()}
        out: dict[Flow, tuple[FlowTrace, bool]] = {}
        for f, t in traced.items():
            mine = {h: of_flow(ts, str(t.src), str(t.dst), t.protocol, t.port) for h, ts in per_host.items()}
            out[f] = (flow_trace(mine, ends.get(f.src), ends.get(f.dst)), probed[f])
        return out

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        sc = self.scenario()
        guests = []
        for g in sc.guests:
            guests.append({"name": g.name, "host": self.where(g.name) or "-", "address": str(g.address),
                           "labels": g.labels, "listen": g.listen, "tap": g.tap})
        return {"dir": str(self.dir), "hosts": [{"name": h, "uri": self.uri(h),
                                                 "address": str(sc.host_address(h))} for h in sc.hosts],
                "external": str(sc.external) if sc.external else None, "guests": guests}

    def console_tail(self, guest: str, lines: int = 20) -> str:
        path = console_log(self.dir, guest)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def wait_until(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


