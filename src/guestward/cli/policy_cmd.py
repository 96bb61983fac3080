"""`guestward apply`, `delete`, `explain`, `reach`, `policies`: policy in, verdicts out.

Names that come from users or files (file names, guest names) are printed escaped, never read as
rich markup: a file called `[/x].yaml` is a name, not a closing tag."""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from ipaddress import ip_address
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from guestward.cli.output import Own, clean, console, error_line, line, text
from guestward.compile import Decision, Endpoint, compile_state, decide
from guestward.compile.evaluate import IPAddress
from guestward.dataplane.trace import FlowTrace, flow_trace, of_flow, parse_traces
from guestward.enforce import NftRunner
from guestward.enforce.enforcer import EnforceError
from guestward.enforce.trace import TracedFlow, TraceSession
from guestward.lab.console import ConsoleError
from guestward.lab.lab import Flow, Lab, LabError
from guestward.model import QUARANTINE_LABEL, Guest, Inventory, label_key_error
from guestward.model.labels import label_value_error
from guestward.policy import Policy, PolicyError, PortRange, parse_port
from guestward.reconcile.controller import Controller, read_sources
from guestward.store.config import LAB_DIR, ConfigError, load_config

out = console()  # a pipe or CI log gets full tables
err = console(stderr=True)

ConfigOpt = Annotated[str | None, typer.Option("--config", help="guestward config file")]


def controller(config: str | None) -> Controller:
    try:
        return Controller(load_config(config))
    except ConfigError as exc:
        err.print(error_line(exc))
        raise typer.Exit(2) from None


def fail(message: str) -> typer.Exit:
    err.print(error_line(message))
    return typer.Exit(2)


def rejected(exc: PolicyError, what: str) -> typer.Exit:
    """Print every diagnostic as `file:line: message` (never wrapped) and say what did not happen."""
    for d in exc.diagnostics:
        print(clean(d), file=sys.stderr)  # never wrapped: file:line: message
    err.print(f"rejected: {len(exc.diagnostics)} error(s); {what}", highlight=False)
    return typer.Exit(2)


def installed(ctl: Controller) -> list[Policy]:
    """The installed policies, or exit 2 naming each stored policy that does not parse (a store
    written before policies were stored in canonical form may hold one: `delete` or `apply
    --replace` it)."""
    try:
        return ctl.policies()
    except PolicyError as exc:
        raise rejected(exc, "the installed policies do not parse (`guestward delete` the broken one, "
                            "or `apply --replace`)") from None


def lab_external() -> IPAddress | None:
    """The lab's `external` address, when a lab is up (so `external` works as an endpoint name)."""
    state = LAB_DIR / "state.json"
    if state.exists():
        ext = json.loads(state.read_text())["scenario"].get("external")
        return ip_address(ext) if ext else None
    return None


def resolve(name: str, inventory: Inventory) -> tuple[Endpoint, Guest | None]:
    """A guest name, an address (owned by a guest or not), or `external` -> an endpoint of a flow."""
    guest = inventory.guest(name)
    if guest is None:
        if name == "external":
            addr = lab_external()
            if addr is None:
                raise fail("`external` names the lab's external address, and no lab with one is up")
        else:
            try:
                addr = ip_address(name)
            except ValueError:
                raise fail(f"unknown endpoint {name!r}: a guest name, an address or external") from None
        owners = [g for g in inventory.guests if g.active and addr in g.addresses]
        if len(owners) == 1:
            return Endpoint(addr, owners[0].labels, name), owners[0]
        return Endpoint(addr, None, name), None
    if not guest.addresses:
        raise fail(f"guest {name} has no declared address")
    return Endpoint(guest.addresses[0], guest.labels, name), guest


class FlowJudge:
    """Verdicts of flows from compiled policy: the inventory and policies are read once."""

    def __init__(self, ctl: Controller) -> None:
        self.inventory = ctl.inventory()
        self.policies = installed(ctl)
        self.state = compile_state(self.inventory, self.policies)

    def decide(self, src: str, dst: str, port: PortRange) -> Decision:
        s, sg = resolve(src, self.inventory)
        d, dg = resolve(dst, self.inventory)
        for name, g in ((src, sg), (dst, dg)):
            if g is not None and not g.active:
                return Decision(False, reason=f"{name} is not running")
            if g is not None and g.refusal is not None:  # bound nowhere: the bridge drops its ports
                return Decision(False, reason=f"{name} is refused, no traffic: {g.refusal}")
        for name, end in ((src, s), (dst, d)):
            if any(c.address == end.address for c in self.state.conflicts):
                return Decision(False, reason=f"{name}: address {end.address} is claimed twice: no traffic")
        return decide(self.policies, s, d, port.protocol, port.first)


def decision_label(d: Decision) -> str:
    """How the data plane names what decided: a rule's comment, or the chains' closing rule."""
    return f"{d.tier}/{d.policy}/{d.rule}" if d.rule is not None else "default deny"


def trace_report(traced: tuple[FlowTrace, bool | None], allowed: bool, label: str) -> list[str]:
    ft, probed = traced
    if ft.verdict == "unseen":
        return ["trace: no packet of the flow was seen"]
    agreement = "agrees with" if ft.agrees(allowed, label) else "DISAGREES with"
    lines = [f"trace: {ft.verdict} by {ft.decided_by} ({agreement} the compiled answer)"]
    if probed is not None:
        lines.append(f"  probe: {'echo came back' if probed else 'no echo'}")
    return lines + [f"  {line}" for h in ft.hops for line in h.lines()]


def _end(inventory: Inventory, addr: IPAddress) -> tuple[str, str] | None:
    """(host, bridge port) of the running guest's vNIC that has `addr`, or None (not a local guest)."""
    for g in inventory.guests:
        if g.active and g.host is not None:
            for nic in g.interfaces:
                if addr in nic.addresses and nic.port is not None:
                    return g.host, nic.port
    return None


def trace_flow(ctl: Controller, judge: FlowJudge, src: str, dst: str, port: PortRange,
               timeout: float) -> tuple[FlowTrace, bool | None]:
    """Trace one real packet of the flow: in the lab, one the source sends now (with the probe's
    result); elsewhere, the next one the source sends within `timeout` seconds (no probe: None)."""
    lab = Lab()
    if lab.is_up and all(e == "external" or e in {g.name for g in lab.scenario().guests} for e in (src, dst)):
        return lab.trace([Flow(src, dst, port)])[Flow(src, dst, port)]
    s, _ = resolve(src, judge.inventory)
    d, _ = resolve(dst, judge.inventory)
    ends = (_end(judge.inventory, s.address), _end(judge.inventory, d.address))
    hosts = sorted({e[0] for e in ends if e is not None} & ctl.local_hosts)
    if not hosts:
        raise EnforceError("neither end is a running guest on a host this process enforces")
    flow = TracedFlow(s.address, d.address, port.protocol, port.first if port.protocol in ("tcp", "udp") else None)
    with ExitStack() as stack:
        sessions = {h: stack.enter_context(TraceSession(NftRunner(ctl.config.host(h).netns), [flow])) for h in hosts}

        def seen() -> FlowTrace:
            per_host = {h: of_flow(parse_traces(x.lines()), str(s.address), str(d.address), flow.protocol, flow.port)
                        for h, x in sessions.items()}
            return flow_trace(per_host, *ends)

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(seen().hops) < len(hosts):
            time.sleep(0.1)
        time.sleep(0.3)  # its verdicts on the way out
    return seen(), None


def register(app: typer.Typer) -> None:
    @app.command()
    def apply(
        file: Annotated[Path, typer.Option("-f", "--file", help="policy file or directory")],
        replace: Annotated[bool, typer.Option("--replace", help="the files are the whole policy set")] = False,
        allow_empty: Annotated[bool, typer.Option("--allow-empty", help="with --replace: files without any "
                                                  "policy remove every installed policy")] = False,
        config: ConfigOpt = None,
    ) -> None:
        """Validate and install policies (all or nothing); enforce them on every host."""
        ctl = controller(config)
        try:
            report = ctl.apply(read_sources(file), replace_all=replace, allow_empty=allow_empty)
        except PolicyError as exc:
            raise rejected(exc, "nothing was applied") from None
        except FileNotFoundError as exc:
            raise fail(str(exc)) from None
        changed = ", ".join(f"{h}: {n} change(s)" for h, n in sorted(report.commands.items()))
        out.print(line(f"applied {len(report.policies)} policies ({', '.join(report.policies)}); {changed}"))
        for c in report.conflicts:
            err.print(line(Own("[yellow]conflict:[/] "), c))

    @app.command()
    def delete(
        names: Annotated[list[str], typer.Argument(metavar="POLICY...", help="installed policy names "
                                                   "(or Policy/NAME)")],
        config: ConfigOpt = None,
    ) -> None:
        """Remove installed policies (all or nothing: an unknown name removes none); enforce what
        remains on every host."""
        wanted = [n.split("/", 1)[1] if n.lower().startswith("policy/") else n for n in names]
        ctl = controller(config)
        try:
            report = ctl.delete(wanted)
        except KeyError as exc:
            unknown = ", ".join(exc.args[0])
            raise fail(f"no installed policy named {unknown}; nothing was deleted") from None
        except PolicyError as exc:
            raise rejected(exc, "nothing was deleted") from None
        changed = ", ".join(f"{h}: {n} change(s)" for h, n in sorted(report.commands.items()))
        out.print(line(f"deleted {len(report.policies)} policies ({', '.join(report.policies)}); {changed}"))
        for c in report.conflicts:
            err.print(line(Own("[yellow]conflict:[/] "), c))

    @app.command()
    def sync(config: ConfigOpt = None) -> None:
        """Read every guest from libvirt now and enforce the installed policies on every host.

        Every host that can be is enforced; exit 2 when a host failed or its libvirt did not answer
        (each is reported). Refused guests (no traffic) are reported with their reason.

        The agent does this on every libvirt event and periodically; without an agent, this is how
        guestward learns of changes the hook does not see (labels, hot-plugged vNICs)."""
        ctl = controller(config)
        try:
            commands = ctl.sync()
        except PolicyError as exc:
            raise rejected(exc, "the installed policies do not parse; nothing was enforced") from None
        out.print(line(", ".join(f"{h}: {n} change(s)" for h, n in sorted(commands.items()))
                       or "no hosts enforced"))
        for c in ctl.conflicts:
            err.print(line(Own("[yellow]conflict:[/] "), c))
        for f in ctl.findings:
            if f.kind == "address-refused":
                err.print(line(Own("[yellow]refused:[/] "),
                               f"{f.subject}: address {f.detail['address']} ({f.detail['reason']})"))
        for h in ctl.unreachable:
            err.print(line(Own("[yellow]unreachable:[/] "), f"{h}: its guests kept as last seen"))
        for g in ctl.last_inventory.guests if ctl.last_inventory else ():
            if g.refusal is not None:
                err.print(line(Own("[yellow]refused:[/] "), f"{g.name!a} on {g.host}: no traffic: {g.refusal}"))
        for h, e in sorted(ctl.failed.items()):
            err.print(line(Own("[red]failed:[/] "), f"{h}: {e}"))
        if ctl.failed or ctl.unreachable:  # the other hosts are enforced all the same
            raise typer.Exit(2)

    def relabel(config: str | None, guest: str, key: str, value: str | None, reason: str | None = None,
                quarantine: bool | None = None) -> None:
        ctl = controller(config)
        try:
            if quarantine is None:
                commands = ctl.set_label(guest, key, value, reason=reason)
            else:  # the store is the source of truth, the label its mirror
                commands = ctl.set_quarantine(guest, quarantine, reason=reason)
        except KeyError:
            raise fail(f"no configured host defines a guest named {guest!r}") from None
        except PolicyError as exc:
            raise rejected(exc, "the label was set, but the installed policies do not parse") from None
        except RuntimeError as exc:
            raise fail(str(exc)) from None
        what = f"{key}={value}" if value is not None else f"{key} removed"
        changed = ", ".join(f"{h}: {n} change(s)" for h, n in sorted(commands.items()))
        out.print(line(f"{guest}: {what}; {changed}"))
        for h, e in sorted(ctl.failed.items()):  # the label is set; these hosts do not enforce it yet
            err.print(line(Own("[red]failed:[/] "), f"{h}: {e}"))
        if ctl.failed:
            raise typer.Exit(2)

    @app.command()
    def label(
        guest: str,
        assignment: Annotated[str, typer.Argument(metavar="KEY=VALUE|KEY-", help="set a label, or remove it")],
        config: ConfigOpt = None,
    ) -> None:
        """Set or remove a label in a guest's domain XML (every host that defines it), then enforce."""
        if assignment.endswith("-") and "=" not in assignment:
            key, value = assignment[:-1], None
        elif "=" in assignment:
            key, value = assignment.split("=", 1)
        else:
            raise fail("give KEY=VALUE to set a label or KEY- to remove it")
        problem = label_key_error(key) or (label_value_error(value) if value is not None else None)
        if problem:
            raise fail(problem)
        relabel(config, guest, key, value)

    @app.command()
    def quarantine(
        guest: str,
        reason: Annotated[str | None, typer.Option("--reason", help="why (kept in the event log)")] = None,
        config: ConfigOpt = None,
    ) -> None:
        """Quarantine a guest on every host: only quarantine-tier policies allow its traffic, and its
        open connections are cut (POLICY.md 2.5). Held in guestward's store: removing the label from
        the domain XML does not release it."""
        relabel(config, guest, QUARANTINE_LABEL[0], QUARANTINE_LABEL[1], reason, quarantine=True)

    @app.command()
    def release(
        guest: str,
        reason: Annotated[str | None, typer.Option("--reason", help="why (kept in the event log)")] = None,
        config: ConfigOpt = None,
    ) -> None:
        """Take a guest out of quarantine (the store's, and the label that mirrors it)."""
        relabel(config, guest, QUARANTINE_LABEL[0], None, reason, quarantine=False)

    @app.command()
    def policies(config: ConfigOpt = None) -> None:
        """List the installed policies in evaluation order."""
        ctl = controller(config)
        table = Table("tier", "order", "policy", "rules", "source")
        for p in sorted(installed(ctl), key=lambda p: p.sort_key):
            table.add_row(text(p.tier), str(p.order), text(p.name), str(len(p.rules)), text(f"{p.file}:{p.line}"))
        out.print(table)

    @app.command()
    def explain(
        src: str, dst: str,
        port: Annotated[str, typer.Argument(metavar="PROTO/PORT", help="tcp/443, udp/53, icmp")],
        as_json: Annotated[bool, typer.Option("--json")] = False,
        trace: Annotated[bool, typer.Option("--trace", help="also follow one real packet of the flow through "
                                            "the data plane and say whether it agrees")] = False,
        timeout: Annotated[float, typer.Option("--timeout", help="--trace outside the lab: seconds to wait "
                                               "for the flow's next real packet")] = 30.0,
        config: ConfigOpt = None,
    ) -> None:
        """The verdict for one flow, from compiled policy, and the rule that decided it.

        With --trace, a real packet of the flow is traced on the hosts of both ends (in the lab the
        source sends one; elsewhere the next one the source sends, within --timeout) and the rules it
        met are printed after the compiled answer. The exit status stays the compiled verdict's (2 when
        no packet of the flow was seen)."""
        try:
            p = parse_port(port)
        except ValueError as exc:
            raise fail(str(exc)) from None
        if p.protocol == "any" or p.first != p.last:
            raise fail("explain takes one flow: tcp/PORT, udp/PORT, icmp or icmpv6")
        ctl = controller(config)
        judge = FlowJudge(ctl)
        decision = judge.decide(src, dst, p)
        verdict = "allowed" if decision.allowed else "blocked"
        traced: tuple[FlowTrace, bool | None] | None = None
        if trace:
            try:
                traced = trace_flow(ctl, judge, src, dst, p, timeout)
            except (EnforceError, LabError, ConsoleError) as exc:
                raise fail(f"--trace: {exc}") from None
        label = decision_label(decision)
        if as_json:
            doc: dict[str, object] = {"src": src, "dst": dst, "port": str(p), "verdict": verdict,
                                      "tier": decision.tier, "policy": decision.policy, "rule": decision.rule,
                                      "reason": decision.reason}
            if traced is not None:
                ft, probed = traced
                doc["trace"] = {"verdict": ft.verdict, "decided_by": ft.decided_by,
                                "agrees": ft.agrees(decision.allowed, label), "probe_echoed": probed,
                                "hops": [{"host": h.host, "role": h.role, "verdict": h.trace.verdict,
                                          "decided_by": h.trace.decided_by, "steps": h.trace.lines()}
                                         for h in ft.hops]}
            print(json.dumps(doc))
        else:
            print(clean(f"{src} -> {dst} {p}: {verdict}"))
            if decision.rule is not None:
                print(f"  tier: {clean(decision.tier)}\n  policy: {clean(decision.policy)}\n"
                      f"  rule: {clean(decision.rule)}")
            else:
                print(f"  {clean(decision.reason)}")
            if traced is not None:
                for step in trace_report(traced, decision.allowed, label):
                    print(f"  {clean(step)}")
        if traced is not None and traced[0].verdict == "unseen":
            err.print("[red]error:[/] --trace: no packet of the flow was seen", highlight=False)
            raise typer.Exit(2)
        raise typer.Exit(0 if decision.allowed else 1)

    @app.command()
    def reach(
        ports: Annotated[str | None, typer.Option("--ports", help="comma-separated, e.g. tcp/80,icmp")] = None,
        as_json: Annotated[bool, typer.Option("--json")] = False,
        config: ConfigOpt = None,
    ) -> None:
        """The reachability matrix between running guests, from compiled policy."""
        ctl = controller(config)
        inventory = ctl.inventory()
        policies = installed(ctl)
        if ports:
            try:
                vocab = [parse_port(x) for x in ports.split(",")]
            except ValueError as exc:
                raise fail(str(exc)) from None
        else:
            vocab = sorted({PortRange(p.protocol, p.first, p.first) for pol in policies for r in pol.rules
                            for p in r.ports if p.protocol in ("tcp", "udp")} | {PortRange("icmp")})
        guests = sorted((g for g in inventory.guests if g.active and g.addresses), key=lambda g: g.name)
        matrix: dict[str, dict[str, list[str]]] = {}
        for s in guests:
            for d in guests:
                if s is d:
                    continue
                se = Endpoint(s.addresses[0], s.labels, s.name)
                de = Endpoint(d.addresses[0], d.labels, d.name)
                allowed = [str(p) for p in vocab if decide(policies, se, de, p.protocol, p.first).allowed]
                matrix.setdefault(s.name, {})[d.name] = allowed
        if as_json:
            print(json.dumps(matrix, indent=1))
            return
        table = Table(title="reachability (rows: from, columns: to)", show_lines=True)
        table.add_column("from \\ to", style="bold")
        for d in guests:
            table.add_column(text(d.name))
        for s in guests:
            cells = []
            for d in guests:
                if s is d:
                    cells.append(Text("·", "dim"))
                else:
                    allowed = matrix[s.name][d.name]
                    cells.append(Text("\n".join(clean(a) for a in allowed), "green") if allowed
                                 else Text("-", "red"))
            table.add_row(text(s.name), *cells)
        out.print(table)
        sys.stdout.flush()
