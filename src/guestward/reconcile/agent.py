"""The agent: keeps every host's enforcement equal to what libvirt and the stored policies say.

Level-triggered: an event only says "look again"; the work is always a full sync of the current
inventory (the diff against the kernel keeps it to what changed), so a missed or repeated event
cannot leave a wrong state behind. One worker does all the work, so changes for one guest are
serialised; a failed sync is retried with backoff (0.2 s doubling to 5 s), and a full resync runs
every `resync_interval` seconds whatever happens.

Drift: each host's `nft monitor` is watched. A transaction that changed a guestward table and was not
committed by this process is repaired at once, in the monitor's thread, by the host's DriftGuard
(reconcile/drift.py: the last enforced tables, cached as one atomic replacement), when that is safe;
the worker then repairs from the stored snapshot anyway (a full compile and diff: the verification,
and the repair whenever the guard declined). A check every `drift_interval` seconds backs the monitor
up. Every repair is recorded as a `drift` event: who (pid and process name from nft's generation
line), what changed (the monitor's lines, counted by kind), and how long detection and repair took.

Drops: each host's NFLOG reader feeds the drop log (reconcile/flowlog.py) when `drop_log.group` is
set; the metrics endpoint (reconcile/metrics.py) reads counters and the store at scrape time. Neither
can stop enforcement: a reader that dies is restarted, a metrics port that cannot be bound is logged.

Restarting the agent never flushes anything: it starts with a sync, which only diffs.
"""

from __future__ import annotations

import logging
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from guestward.dataplane.monitor import Change, MonitorParser
from guestward.enforce import NftRunner
from guestward.hypervisor.events import EventSource
from guestward.reconcile import migration
from guestward.reconcile.children import die_with_parent
from guestward.reconcile.controller import Controller
from guestward.reconcile.drift import OURS, DriftGuard, Outcome
from guestward.reconcile.flowlog import FlowLog
from guestward.reconcile.metrics import GuestwardCollector, serve
from guestward.store.config import Config

log = logging.getLogger(__name__)
# libvirt's lifecycle event on the destination when a live migration that left the guest running
# ends (RESUMED/MIGRATED); guestward's own migrations resume the guest themselves (RESUMED/UNPAUSED).
MIGRATED_HERE = "resumed/1"


def _read_lines(proc: subprocess.Popen[str], out: queue.SimpleQueue[tuple[str, float] | None]) -> None:
    """Every line of `proc`'s output with its arrival time, then None (end of output)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        out.put((line, time.monotonic()))
    out.put(None)


@dataclass(frozen=True)
class Drift:
    """A reason to repair one host: who changed it, the change when the monitor saw it, and what the
    host's DriftGuard did about it."""

    who: str
    change: Change | None = None
    outcome: Outcome | None = None


@dataclass
class _Pending:
    first_at: float | None = None
    reasons: list[str] = field(default_factory=list)
    drift: dict[str, list[Drift]] = field(default_factory=dict)  # host -> why to repair it (each is recorded)


class Agent:
    def __init__(self, config: Config, resync_interval: float = 30.0, drift_interval: float = 5.0,
                 only_hosts: list[str] | None = None, metrics: tuple[str, int] | None = None,
                 flow_log: bool = True) -> None:
        self.config = config
        self.controller = Controller(config, only_hosts or ())
        runners = {h: NftRunner(config.host(h).netns) for h in sorted(self.controller.local_hosts)}
        group = config.drop_log.group
        self.flowlog = (FlowLog(runners, self.controller.store.path, group, keep=config.drop_log.keep)
                        if flow_log and group is not None else None)
        self.metrics = metrics
        self.collector = GuestwardCollector(runners, self.controller.store.path, self.flowlog)
        self.resync_interval = resync_interval
        self.drift_interval = drift_interval
        self._cond = threading.Condition()
        self._pending = _Pending()
        self._stop = threading.Event()
        self._monitors: dict[str, subprocess.Popen[str]] = {}
        # When this agent's own sync last changed each host (monotonic): a foreign change it undid
        # on the way is drift even though the repair after it finds nothing left to do.
        self._changed_by_sync: dict[str, float] = {}
        self._guards = {h: DriftGuard(NftRunner(config.host(h).netns), config.state_dir, self._enforced_generation(h))
                        for h in self.controller.local_hosts}

    # -- inputs ----------------------------------------------------------------------------------

    def on_event(self, host: str, uuid: str | None, what: str) -> None:
        if what == MIGRATED_HERE and uuid is not None and host in self.controller.local_hosts:
            threading.Thread(target=self._follow_migration, args=(host, uuid), daemon=True).start()
        with self._cond:
            if self._pending.first_at is None:
                self._pending.first_at = time.monotonic()
            if len(self._pending.reasons) < 50:
                self._pending.reasons.append(f"{host}:{uuid or '-'}:{what}")
            self._cond.notify()

    def on_drift(self, host: str, drift: Drift) -> None:
        with self._cond:
            reasons = self._pending.drift.setdefault(host, [])
            if len(reasons) < 100:
                reasons.append(drift)
            self._cond.notify()

    def on_change(self, host: str, change: Change) -> None:
        """A transaction changed our tables on `host`: repair now if it was not ours (monitor thread)."""
        outcome = self._guards[host].on_change(change)
        if outcome is not OURS:
            self.on_drift(host, Drift(change.who, change, outcome))

    def _follow_migration(self, host: str, uuid: str) -> None:
        """A guest live-migrated here without guestward (see migration.follow): bring its connections."""
        try:
            report = migration.follow(self.config, host, uuid)
        except Exception as exc:
            log.warning("%s: conntrack entries of %s not copied after its migration: %s", host, uuid, exc)
            self._record("conntrack-error", host, guest=uuid, error=str(exc))
            return
        if report is not None:
            log.info("%s: %d conntrack entries of %s copied after its migration", host, report.handover.moved,
                     report.guest)

    def _watch_nft(self, host: str) -> None:
        """Follow `nft monitor` in the host's namespace; restart it if it dies (and check the host then:
        changes made while no monitor ran were not seen)."""
        argv = NftRunner(self.config.host(host).netns).command("nft", "monitor")
        while not self._stop.is_set():
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    preexec_fn=die_with_parent)
            self._monitors[host] = proc
            parser = MonitorParser()
            # Lines are read (and stamped) by their own thread, so nft never waits on a full pipe while
            # a repair runs here: a blocked monitor would lose notifications (ENOBUFS) in the kernel.
            lines: queue.SimpleQueue[tuple[str, float] | None] = queue.SimpleQueue()
            threading.Thread(target=_read_lines, args=(proc, lines), daemon=True, name=f"nft-read-{host}").start()
            while (item := lines.get()) is not None:
                change = parser.feed(*item)
                if change is not None:
                    self.on_change(host, change)
            proc.wait()
            if not self._stop.is_set():
                self.on_drift(host, Drift("unknown (nft monitor restarted)"))
            self._stop.wait(0.5)

    # -- the worker ------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        for proc in self._monitors.values():
            proc.kill()

    def run(self) -> None:
        self._record("agent", "start", hosts=sorted(self.controller.local_hosts))
        if self.flowlog is not None:
            self.flowlog.start()
        if self.metrics is not None:
            try:
                serve(self.collector, self.metrics)
                log.info("metrics on http://%s:%d/metrics", *self.metrics)
            except OSError as exc:
                log.warning("metrics: cannot listen on %s:%d: %s (enforcement goes on)", *self.metrics, exc)
        for h in sorted(self.controller.local_hosts):
            threading.Thread(target=self._watch_nft, args=(h,), daemon=True, name=f"nft-{h}").start()
        events = EventSource([h.host() for h in self.config.hosts], self.on_event)
        self.on_event("*", None, "agent-start")
        backoff, retry_at = 0.2, 0.0
        next_resync = time.monotonic() + self.resync_interval
        next_drift_check = time.monotonic() + self.drift_interval
        try:
            while not self._stop.is_set():
                with self._cond:
                    timeout = max(0.0, min(next_resync, next_drift_check) - time.monotonic())
                    if self._pending.first_at is None and not self._pending.drift:
                        self._cond.wait(timeout)
                    elif self._pending.first_at is not None and not self._pending.drift:
                        self._cond.wait(max(0.0, retry_at - time.monotonic()))
                    pending, self._pending = self._pending, _Pending()
                now = time.monotonic()
                if now >= next_drift_check:
                    for h in self.controller.local_hosts:
                        pending.drift.setdefault(h, [Drift("unknown (periodic check)")])
                    next_drift_check = now + self.drift_interval
                if now >= next_resync and pending.first_at is None:
                    pending.first_at, pending.reasons = now, ["periodic resync"]
                for host, drifts in pending.drift.items():
                    self._repair(host, drifts)
                if pending.first_at is not None and time.monotonic() >= retry_at:
                    try:
                        self._reconcile(pending)
                        backoff = 0.2
                        next_resync = time.monotonic() + self.resync_interval
                        continue
                    except Exception as exc:
                        log.warning("sync failed (retrying in %.1f s): %s", backoff, exc)
                        self._record("sync-error", "agent", error=str(exc), retry_in=backoff)
                        retry_at = time.monotonic() + backoff
                        backoff = min(backoff * 2, 5.0)
                if pending.first_at is not None:
                    # The work stays pending until the retry; drift events still wake the loop meanwhile.
                    with self._cond:
                        self._pending.first_at = pending.first_at
                        self._pending.reasons = (pending.reasons + self._pending.reasons)[:50]
                        self._cond.wait(max(0.0, retry_at - time.monotonic()))
        finally:
            events.close()
            if self.flowlog is not None:
                self.flowlog.stop()
            self._record("agent", "stop")

    def _reconcile(self, pending: _Pending) -> None:
        commands = self.controller.sync()  # also cuts the connections of newly quarantined guests
        assert pending.first_at is not None
        ms = round((time.monotonic() - pending.first_at) * 1000, 1)
        self._arm_guards()
        changed = {h: n for h, n in commands.items() if n}
        now = time.monotonic()
        for h in changed:
            self._changed_by_sync[h] = now
        if changed or pending.reasons != ["periodic resync"]:
            self._record("reconcile", "agent", reasons=pending.reasons[:20], commands=commands, ms=ms,
                         unreachable=self.controller.unreachable, conflicts=self.controller.conflicts,
                         failed=self.controller.failed)
        log.info("reconciled in %.1f ms: %s (%s)", ms, commands, ", ".join(pending.reasons[:5]))
        if self.controller.failed:  # the others are enforced; these are retried with backoff
            raise RuntimeError("; ".join(f"{h}: {e}" for h, e in sorted(self.controller.failed.items())))

    def _enforced_generation(self, host: str) -> Callable[[], int | None]:
        def generation() -> int | None:
            enforced = self.controller.enforced.get(host)
            return enforced[1] if enforced is not None else None
        return generation

    def _arm_guards(self) -> None:
        for host, (plan, generation) in self.controller.enforced.items():
            if host in self._guards:
                self._guards[host].arm(plan, generation)

    def _repair(self, host: str, drifts: list[Drift]) -> None:
        """The full repair from the stored snapshot (after fast ones: their verification), then one
        `drift` event per change that was repaired (by the guard, or by this repair)."""
        start = time.monotonic()
        if not self.controller.store.seeded:
            return  # nothing trustworthy to restore yet: the first sync comes first
        try:
            n = self.controller.enforce_snapshot(host)
        except Exception as exc:
            log.warning("%s: drift repair failed: %s", host, exc)
            self._record("drift-error", host, error=str(exc))
            return
        finally:
            self._arm_guards()
        done = time.monotonic()
        fast_ones = [d for d in drifts if d.outcome is not None and d.outcome.repaired]
        declined = [d for d in drifts if d.change is not None and d not in fast_ones]
        # A declined change that needed nothing was a legitimate one (made under the lock): not drift,
        # unless this agent's own sync changed the host after the change was seen: then that sync
        # (which held the lock, so the guard declined) is what repaired it.
        synced = self._changed_by_sync.get(host, 0.0)
        undone_by_sync = [d for d in declined if d.change is not None and synced >= d.change.first_seen]
        records = fast_ones + (declined if n else undone_by_sync)
        if n and not declined:  # this repair found a difference no change it was told of explains
            records.append(next((d for d in drifts if d.change is None), Drift("unknown")))
        for drift in records:
            fast = drift.outcome is not None and drift.outcome.repaired
            path = "fast" if fast else "sync" if (not n and drift in undone_by_sync) else "full"
            detail: dict[str, object] = {"by": drift.who, "path": path,
                                         "ms": round((done - start) * 1000, 1)}
            change = drift.change
            if change is not None:
                restored = drift.outcome.restored_at if fast and drift.outcome else done
                assert restored is not None
                detail.update(pid=change.pid, process=change.process, generation=change.generation,
                              changed=change.summary(), lines=list(change.lines),
                              detect_ms=round((change.committed_seen - change.first_seen) * 1000, 1),
                              repair_ms=round((restored - change.committed_seen) * 1000, 1),
                              exposure_ms=round((restored - change.first_seen) * 1000, 1))
            if drift.outcome is not None and not fast:
                detail["fast_declined"] = drift.outcome.reason
            detail["commands"] = n  # of the full repair; 0 after a fast one: the cache was the snapshot's plan
            log.warning("%s: guestward's tables were changed by %s; restored (%s)", host, drift.who, detail)
            self._record("drift", host, **detail)

    def _record(self, kind: str, subject: str, **detail: object) -> None:
        """Best effort: a busy or full store must not stop the agent."""
        try:
            self.controller.store.record(kind, subject, **detail)
        except Exception as exc:
            log.warning("could not record %s event: %s", kind, exc)
