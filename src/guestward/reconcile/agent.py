"""The agent: keeps every host's enforcement equal to what libvirt and the stored policies say.

Level-triggered: an event only says "look again"; the work is always a full sync of the current
inventory (the diff against the kernel keeps it to what changed), so a missed or repeated event
cannot leave a wrong state behind. One worker does all the work, so changes for one guest are
serialised; a failed sync is retried with backoff (0.2 s doubling to 5 s), and a full resync runs
every `resync_interval` seconds whatever happens.

Drift: each host's `nft monitor` is watched; a change to a guestward table by anyone is followed by a
repair from the stored snapshot (within milliseconds of the change when it was not ours; a check
every `drift_interval` seconds backs the monitor up). A repair that had to change something is
recorded as a `drift` event naming the process that made the change when nft says so.

Drops: each host's NFLOG reader feeds the drop log (reconcile/flowlog.py) when `drop_log.group` is
set; the metrics endpoint (reconcile/metrics.py) reads counters and the store at scrape time. Neither
can stop enforcement: a reader that dies is restarted, a metrics port that cannot be bound is logged.

Restarting the agent never flushes anything: it starts with a sync, which only diffs.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field

from guestward.enforce import NftRunner
from guestward.hypervisor.events import EventSource
from guestward.reconcile.children import die_with_parent
from guestward.reconcile.controller import Controller
from guestward.reconcile.flowlog import FlowLog
from guestward.reconcile.metrics import GuestwardCollector, serve
from guestward.store.config import Config

log = logging.getLogger(__name__)
GENERATION = re.compile(r"# new generation \d+ by process (\d+) \((.*)\)")


@dataclass
class _Pending:
    first_at: float | None = None
    reasons: list[str] = field(default_factory=list)
    drift: dict[str, str] = field(default_factory=dict)  # host -> who changed it


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

    # -- inputs ----------------------------------------------------------------------------------

    def on_event(self, host: str, uuid: str | None, what: str) -> None:
        with self._cond:
            if self._pending.first_at is None:
                self._pending.first_at = time.monotonic()
            if len(self._pending.reasons) < 50:
                self._pending.reasons.append(f"{host}:{uuid or '-'}:{what}")
            self._cond.notify()

    def on_drift(self, host: str, who: str) -> None:
        with self._cond:
            self._pending.drift[host] = who
            self._cond.notify()

    def _watch_nft(self, host: str) -> None:
        """Follow `nft monitor` in the host's namespace; restart it if it dies."""
        argv = NftRunner(self.config.host(host).netns).command("nft", "monitor")
        while not self._stop.is_set():
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    preexec_fn=die_with_parent)
            self._monitors[host] = proc
            touched = False
            assert proc.stdout is not None
            for line in proc.stdout:
                if " guestward" in line or line.startswith("flush ruleset"):
                    touched = True
                m = GENERATION.match(line)
                if m and touched:
                    touched = False
                    self.on_drift(host, f"pid {m.group(1)} ({m.group(2)})")
            proc.wait()
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
                        pending.drift.setdefault(h, "unknown (periodic check)")
                    next_drift_check = now + self.drift_interval
                if now >= next_resync and pending.first_at is None:
                    pending.first_at, pending.reasons = now, ["periodic resync"]
                for host, who in pending.drift.items():
                    self._repair(host, who)
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
        changed = {h: n for h, n in commands.items() if n}
        if changed or pending.reasons != ["periodic resync"]:
            self._record("reconcile", "agent", reasons=pending.reasons[:20], commands=commands, ms=ms,
                         unreachable=self.controller.unreachable, conflicts=self.controller.conflicts)
        log.info("reconciled in %.1f ms: %s (%s)", ms, commands, ", ".join(pending.reasons[:5]))

    def _repair(self, host: str, who: str) -> None:
        start = time.monotonic()
        if not self.controller.store.seeded:
            return  # nothing trustworthy to restore yet: the first sync comes first
        try:
            n = self.controller.enforce_snapshot(host)
        except Exception as exc:
            log.warning("%s: drift repair failed: %s", host, exc)
            self._record("drift-error", host, error=str(exc))
            return
        if n:
            ms = round((time.monotonic() - start) * 1000, 1)
            log.warning("%s: guestward's tables were changed by %s; restored (%d commands, %.1f ms)", host, who, n, ms)
            self._record("drift", host, by=who, commands=n, ms=ms)

    def _record(self, kind: str, subject: str, **detail: object) -> None:
        """Best effort: a busy or full store must not stop the agent."""
        try:
            self.controller.store.record(kind, subject, **detail)
        except Exception as exc:
            log.warning("could not record %s event: %s", kind, exc)
