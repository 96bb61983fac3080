"""The enforcer: read back guestward's tables, diff against the desired state, apply one transaction.

Contracts:
- guestward owns `table bridge guestward` and `table inet guestward` and never touches anything else;
- every change is one `nft -j -f -` transaction: it applies whole or not at all;
- `sync` is idempotent: when the kernel already holds the desired state it runs no transaction;
- the pids of the `nft` processes that committed our transactions are remembered (`committed_by_us`),
  so that a watcher of nft's notifications can tell this process's changes from anyone else's.
"""

from __future__ import annotations

import collections
import json
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from guestward.compile import Endpoint, HostPlan
from guestward.compile.compiler import HostDelta
from guestward.dataplane import NftObjects, Settings, diff_objects, render_delta, render_plan
from guestward.dataplane.readback import parse_tables
from guestward.policy import Policy

TABLE = "guestward"
FAMILIES = ("bridge", "inet")
SYNC_ATTEMPTS = 3  # see Enforcer.sync
BRIDGE_NF_SYSCTLS = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")


class EnforceError(RuntimeError):
    pass


_OUR_PIDS: collections.deque[int] = collections.deque(maxlen=1024)  # process-wide: pids are too
_OUR_PIDS_LOCK = threading.Lock()


def committed_by_us(pid: int) -> bool:
    """Whether `pid` is an nft process this process started to apply a transaction (recent ones)."""
    with _OUR_PIDS_LOCK:
        return pid in _OUR_PIDS


def payload(commands: list[dict[str, Any]]) -> str:
    """nft JSON commands as the document `nft -j -f -` reads."""
    return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})


@dataclass(frozen=True)
class NftRunner:
    """Runs `nft` in a network namespace (`netns` from `ip netns`), or in our own when None."""

    netns: str | None = None

    def command(self, *argv: str) -> list[str]:
        """`argv` as run in the runner's network namespace."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv] if self.netns else list(argv)

    def _argv(self, *args: str) -> list[str]:
        return self.command("nft", *args)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Any command in the runner's network namespace."""
        return subprocess.run(self.command(*argv), capture_output=True, text=True, check=False)

    def run_json(self, commands: list[dict[str, Any]]) -> None:
        self.run_payload(payload(commands))

    def run_payload(self, text: str) -> None:
        """Apply one nft JSON document (see `payload`) as one transaction."""
        # The pid is known before nft can commit: it is registered while nft still reads its input.
        proc = subprocess.Popen(self._argv("-j", "-f", "-"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        with _OUR_PIDS_LOCK:
            _OUR_PIDS.append(proc.pid)
        _, stderr = proc.communicate(text)
        if proc.returncode != 0:
            raise EnforceError(f"nft transaction failed: {stderr.strip()[:2000]}")

    def list_table(self, family: str) -> dict[str, Any] | None:
        proc = subprocess.run(self._argv("-j", "list", "table", family, TABLE), capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            # nft's own "no such table"; not nsenter's (a missing namespace is an error, not an empty host)
            if proc.stderr.startswith("Error: No such file or directory"):
                return None
            raise EnforceError(f"nft list table {family} {TABLE} failed: {proc.stderr.strip()}")
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    def text(self) -> str:
        """Our tables in nft's text form, without counter values (`-s`) and without the elements of
        dynamic sets (the per-guest log limiters, which packets fill): what is enforced, not what
        traffic did, so two reads compare byte for byte when nothing was changed."""
        out = []
        for family in FAMILIES:
            proc = subprocess.run(self._argv("-s", "list", "table", family, TABLE), capture_output=True, text=True,
                                  check=False)
            out.append(without_dynamic_elements(proc.stdout) if proc.returncode == 0 else "")
        return "".join(out)


def without_dynamic_elements(text: str) -> str:
    """nft's listing with the `elements = { ... }` of every set flagged dynamic left out."""
    out: list[str] = []
    block: list[str] | None = None  # the lines of the set being read
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if block is None:
            if stripped.startswith("set ") and stripped.endswith("{"):
                block = [line]
            else:
                out.append(line)
            continue
        block.append(line)
        if stripped == "}":
            if any(x.strip().startswith("flags ") and "dynamic" in x for x in block):
                kept, skipping = [], False
                for x in block:
                    if x.strip().startswith("elements = {"):
                        skipping = True
                    if not skipping:
                        kept.append(x)
                    elif x.rstrip().endswith("}"):
                        skipping = False
                block = kept
            out.extend(block)
            block = None
    out.extend(block or [])
    return "".join(out)


@dataclass
class ApplyResult:
    commands: int
    seconds: float


class Enforcer:
    def __init__(self, runner: NftRunner, settings: Settings = Settings()) -> None:
        self.runner = runner
        self.settings = settings

    def read(self) -> tuple[NftObjects, list[str]]:
        """Our tables as they are in the kernel, and the families whose table is missing."""
        docs, missing = [], []
        for family in FAMILIES:
            doc = self.runner.list_table(family)
            if doc is None:
                missing.append(family)
            else:
                docs.append(doc)
        return parse_tables(docs), missing

    def ensure_bridge_netfilter(self) -> None:
        """Bridged IP must walk the inet hooks, where the stateful policy runs: without it every guest
        packet with a bound source would pass unfiltered. Switch it on (as Proxmox's firewall does),
        or refuse to enforce."""
        for key in BRIDGE_NF_SYSCTLS:
            proc = self.runner.run("sysctl", "-qw", f"{key}=1")
            if proc.returncode != 0:
                raise EnforceError(f"cannot set {key}=1 ({proc.stderr.strip()}): guest traffic would not be "
                                   "filtered, so nothing was enforced")

    def forget_connections(self, addresses: list[str]) -> int:
        """Delete the conntrack entries from or to these addresses, so their connections are judged
        again by the policy now in force (used when a guest is quarantined). Returns how many went."""
        from guestward.enforce.conntrack import Conntrack  # it builds on this module

        return Conntrack(self.runner).delete(addresses)

    def cut_denied(self, addresses: list[str], endpoints: Mapping[str, Endpoint], policies: list[Policy]) -> int:
        """Delete the conntrack entries from or to `addresses` whose original direction `policies` deny
        (dataplane/denied.py): the connections that would otherwise only answer on. Returns how many.
        One listing of the whole table; then one `-D` per denied entry (each walks the table: about
        24 ms at 10k entries, so a mass denial takes a while; the ct-mark revision has stopped those
        connections' original direction already)."""
        from guestward.dataplane.conntrack import delete_lines, parse_extended
        from guestward.dataplane.denied import denied
        from guestward.enforce.conntrack import Conntrack  # it builds on this module

        proc = self.runner.run("conntrack", "-L", "-o", "extended")
        if proc.returncode != 0:
            raise EnforceError(f"conntrack -L: {proc.stderr.strip()[:500]}")
        ours = set(addresses)
        doomed = denied((e for e in parse_extended(proc.stdout)[0] if e.involves(ours)), endpoints, policies)
        # the entry as listed: its original tuple names it (the reverse orientation is another entry)
        Conntrack(self.runner).run_script("".join(f"{delete_lines(e)[0]}\n" for e in doomed))
        return len(doomed)

    def sync(self, plan: HostPlan) -> ApplyResult:
        """Make the kernel hold exactly `plan` in our tables (a full diff against a read-back).

        A hook's lock-free unbind (`enforce/unbind.py`) may delete elements between the read-back and
        the commit; the transaction then fails whole and is recomputed from a fresh read-back (at
        most `SYNC_ATTEMPTS` times, then the last error is raised)."""
        start = time.monotonic()
        self.ensure_bridge_netfilter()
        desired = render_plan(plan, self.settings)
        for attempt in range(SYNC_ATTEMPTS):
            current, missing = self.read()
            commands = diff_objects(current, desired)
            if missing:
                commands = [{"add": {"table": {"family": f, "name": TABLE}}} for f in missing] + commands
            if not commands:
                break
            try:
                self.runner.run_json(commands)
                break
            except EnforceError:
                if attempt == SYNC_ATTEMPTS - 1:
                    raise
        return ApplyResult(len(commands), time.monotonic() - start)

    def apply_delta(self, old: HostPlan, delta: HostDelta) -> ApplyResult:
        """Apply only what changed; the caller guarantees the kernel holds `old` (after a sync)."""
        start = time.monotonic()
        commands = render_delta(old, delta, self.settings)
        if commands:
            self.runner.run_json(commands)
        return ApplyResult(len(commands), time.monotonic() - start)

    def remove(self) -> None:
        """Delete our tables, leaving everything else alone."""
        _, missing = self.read()
        cmds = [{"delete": {"table": {"family": f, "name": TABLE}}} for f in FAMILIES if f not in missing]
        if cmds:
            self.runner.run_json(cmds)
