"""The controller: policies from the store, inventory from libvirt, plans from the compiler,
tables through the enforcer.

Contract of `apply`: the new policy set is validated (whole) and compiled before anything is
enforced; if enforcing fails on any host, the hosts already changed are put back to the previous
plan, the store is not changed, and the error is raised. Nothing of a bad change sticks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from guestward.compile import CompiledState, compile_state
from guestward.enforce import Enforcer, NftRunner
from guestward.hypervisor import domains
from guestward.hypervisor.inventory import read_inventory
from guestward.model import Inventory
from guestward.policy import Policy, parse_policies
from guestward.store.config import Config
from guestward.store.sqlite import Store, StoredPolicy

log = logging.getLogger(__name__)


@dataclass
class ApplyReport:
    policies: list[str]
    commands: dict[str, int]
    conflicts: list[str]


def read_sources(path: Path) -> list[tuple[str, str]]:
    """A policy file, or every *.yaml / *.yml file of a directory (sorted), as (name, text)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise FileNotFoundError(f"{path}: no *.yaml or *.yml files (nothing would be applied)")
    else:
        files = [path]
    out = []
    for f in files:
        try:
            out.append((str(f), f.read_text(errors="replace")))
        except OSError as exc:
            raise FileNotFoundError(f"{f}: {exc.strerror}") from None
    return out


class Controller:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.state_dir / "guestward.db")

    # -- reading ---------------------------------------------------------------------------------

    def policies(self) -> list[Policy]:
        stored = self.store.policies()
        return parse_policies([(p.file, p.padded_source()) for p in stored])

    def inventory(self, starting: Iterable[str] = ()) -> Inventory:
        """Every guest on every configured host; guests named in `starting` count as running."""
        inv = read_inventory(h.host() for h in self.config.hosts)
        starting = set(starting)
        by_uuid: dict[str, object] = {}
        guests = []
        for g in inv.guests:
            if g.name in starting or g.uuid in starting:
                g = replace(g, active=True)
            guests.append(g)
        # A guest known to two hosts (the source's persistent definition after a migration): keep
        # the running copy.
        for g in sorted(guests, key=lambda g: g.active):
            by_uuid[g.uuid] = g
        return Inventory(inv.hosts, tuple(by_uuid.values()))  # type: ignore[arg-type]

    def compiled(self, policies: list[Policy] | None = None, starting: Iterable[str] = ()) -> CompiledState:
        return compile_state(self.inventory(starting), self.policies() if policies is None else policies)

    def enforcer(self, host: str) -> Enforcer:
        return Enforcer(NftRunner(self.config.host(host).netns))

    # -- changing --------------------------------------------------------------------------------

    def sync(self, starting: Iterable[str] = ()) -> dict[str, int]:
        """Enforce the stored policies on the current inventory, on every host."""
        state = self.compiled(starting=starting)
        return {h: self.enforcer(h).sync(plan).commands for h, plan in state.hosts.items()}

    def set_label(self, guest: str, key: str, value: str | None) -> dict[str, int]:
        """Set or remove a label on every definition of `guest` (any host), then enforce.
        Raises KeyError when no configured host defines the guest."""
        found = [h.name for h in self.config.hosts if domains.set_label(h.uri, guest, key, value)]
        if not found:
            raise KeyError(guest)
        self.store.record("label", guest, key=key, value=value, hosts=found)
        commands = self.sync()
        inventory = self.inventory()
        g = inventory.guest(guest)
        if g is not None and g.labels.quarantined:
            # Quarantine also cuts what is already open: its connections are judged again, by the
            # quarantine tier only.
            addresses = [str(a) for a in g.addresses]
            for h in self.config.hosts:
                self.enforcer(h.name).forget_connections(addresses)
        return commands

    def apply(self, sources: list[tuple[str, str]], *, replace_all: bool = False,
              starting: Iterable[str] = ()) -> ApplyReport:
        new = parse_policies(sources)  # raises PolicyError: nothing changed
        current = {p.name: p for p in self.policies()} if not replace_all else {}
        merged = {**current, **{p.name: p for p in new}}
        policies = list(merged.values())
        inventory = self.inventory(starting)
        previous = compile_state(inventory, list(current.values()) if not replace_all else self.policies())
        desired = compile_state(inventory, policies)
        done: list[str] = []
        commands: dict[str, int] = {}
        try:
            for host, plan in desired.hosts.items():
                commands[host] = self.enforcer(host).sync(plan).commands
                done.append(host)
        except Exception:
            for host in done:
                try:
                    self.enforcer(host).sync(previous.hosts[host])
                except Exception as exc:  # keep rolling back the others
                    log.error("rollback on %s failed: %s", host, exc)
            raise
        self.store.put_policies([StoredPolicy(p.name, p.file, p.line, p.source) for p in new],
                                replace_all=replace_all)
        self.store.record("apply", ",".join(sorted(p.name for p in new)), commands=commands)
        return ApplyReport(sorted(p.name for p in new), commands, [str(c) for c in desired.conflicts])
