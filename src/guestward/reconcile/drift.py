"""Drift repair in milliseconds: put back the last enforced tables the moment someone else changes them.

A `DriftGuard` per host holds the tables it last saw enforced, already rendered as one atomic,
table-scoped replacement (`add table; delete table; <the whole table>` per family, one `nft -j -f`
transaction): no compile, no read-back, no diff stands between a foreign commit and the repair.

When is putting back the cached tables right? Only when nobody changed enforcement legitimately since
they were cached. Every legitimate writer (the CLI, the agent, the libvirt hook) changes our tables
while holding the enforcement lock, and every hold bumps the lock's generation. The guard is armed with
the generation of the hold under which its tables were enforced; it repairs only when it can take the
lock at once, every hold since was this process's own (store/lock.py `held_only_by_us`), and this
process has not enforced the host since (`enforced_generation()`, the controller's record, still
names the armed generation). Then the change it saw cannot be a legitimate one. Otherwise (lock busy,
another process held it, the host was enforced anew, not armed, the transaction failed) it answers
"not repaired" and the caller falls back to the full repair from the stored snapshot, which waits for
the lock and is always right.

The guard never repairs a change committed by this process's own nft processes (`committed_by_us`).

What the window between a foreign commit and the repair exposes: a flushed bridge table or inet
forward chain drops everything (their base chains have `policy drop`, dataplane/render.py); a deleted
table, or a deleted or changed rule, leaves the traffic the remaining rules allow until the repair.
Connections opened in that window are judged again at their next original-direction packet after it,
unless the tables left in place marked them with the current policy revision (dataplane/revision.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from guestward.compile import HostPlan
from guestward.dataplane import Settings, render_plan, replace_tables
from guestward.dataplane.monitor import Change
from guestward.enforce import NftRunner
from guestward.enforce.enforcer import EnforceError, committed_by_us, payload
from guestward.store.lock import LockTimeout, enforcement_lock, held_only_by_us


@dataclass(frozen=True)
class Armed:
    plan: HostPlan
    payload: str  # the nft JSON document that rebuilds our tables as `plan` renders them
    generation: int  # of the enforcement-lock hold under which these tables were enforced


@dataclass(frozen=True)
class Outcome:
    """What the guard did with one change: `repaired` (then `restored_at`, monotonic) or why not."""

    repaired: bool
    reason: str = ""
    restored_at: float | None = None


OURS = Outcome(False, "our own commit")


class DriftGuard:
    def __init__(self, runner: NftRunner, state_dir: Path, enforced_generation: Callable[[], int | None],
                 settings: Settings = Settings()) -> None:
        self.runner = runner
        self.enforced_generation = enforced_generation
        self.state_dir = state_dir
        self.settings = settings
        self._armed: Armed | None = None
        self._mutex = threading.Lock()  # one repair at a time; arm() may come from another thread

    def arm(self, plan: HostPlan, generation: int) -> None:
        """Remember `plan` as what is enforced, as of the lock hold `generation` (rendered again only
        when the plan changed)."""
        current = self._armed
        if current is not None and current.plan == plan:
            armed = Armed(plan, current.payload, generation)
        else:
            armed = Armed(plan, payload(replace_tables(render_plan(plan, self.settings))), generation)
        with self._mutex:
            if self._armed is None or self._armed.generation <= generation:
                self._armed = armed

    @property
    def armed(self) -> Armed | None:
        return self._armed

    def on_change(self, change: Change) -> Outcome:
        """Repair after `change` when that is safe (see the module docstring); never raises."""
        if committed_by_us(change.pid):
            return OURS
        with self._mutex:
            armed = self._armed
            if armed is None:
                return Outcome(False, "not armed")
            try:
                with enforcement_lock(self.state_dir, timeout=0) as generation:
                    if not held_only_by_us(self.state_dir, armed.generation + 1, generation - 1):
                        self._armed = None  # enforcement moved on: only a full repair knows what is right
                        return Outcome(False, "another process held the enforcement lock since the tables were cached")
                    if self.enforced_generation() != armed.generation:
                        return Outcome(False, "the host was enforced anew since the tables were cached")
                    self.runner.run_payload(armed.payload)
                    restored_at = time.monotonic()
            except LockTimeout:
                return Outcome(False, "enforcement lock busy (a legitimate change may be under way)")
            except (EnforceError, OSError) as exc:
                return Outcome(False, f"restore failed: {exc}")
            return Outcome(True, restored_at=restored_at)
