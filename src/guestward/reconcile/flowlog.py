"""The drop log in the agent: one NFLOG reader per host (in the host's namespace), one writer.

Each reader (`python -m guestward.enforce.nflog_reader`) runs as a child that dies with the agent
(PDEATHSIG) and is restarted after it exits (1 s, doubling to 30 s while it keeps failing, e.g.
when another listener holds the NFLOG group). Its lines go to one queue; the writer thread
resolves each to a flow record (port or address -> guest, from the stored inventory snapshot, re-read
at most every `refresh` seconds) and stores them in batches (at most every `flush` seconds or
`batch` records), keeping the newest `keep` (config `drop_log.keep`).

Bounded everywhere: the queue holds at most `queue_max` lines; a line that does not fit is dropped and
counted (`dropped`), so a flood the reader keeps up with cannot grow the agent's memory. The kernel's
rate limit per guest (render.py) keeps this far below what the writer sustains.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guestward.dataplane.flowlog import FlowRecord, to_flow
from guestward.enforce import NftRunner
from guestward.model import Guest
from guestward.reconcile.children import die_with_parent
from guestward.store.sqlite import Store

log = logging.getLogger(__name__)


def reader_argv(runner: NftRunner, group: int) -> list[str]:
    return runner.command(sys.executable, "-m", "guestward.enforce.nflog_reader", "--group", str(group))


def guest_maps(guests: list[Guest], host: str) -> tuple[dict[str, str], dict[str, str]]:
    """(vNIC port on `host` -> guest name, address -> guest name) of a snapshot's active guests."""
    ports: dict[str, str] = {}
    addresses: dict[str, str] = {}
    for g in guests:
        if not g.active:
            continue
        if host in g.hosts:
            for nic in g.interfaces:
                ports[nic.port] = g.name
        for a in g.addresses:
            addresses[str(a)] = g.name
    return ports, addresses


class FlowLog:
    def __init__(self, runners: dict[str, NftRunner], store_path: Path, group: int, keep: int = 100_000,
                 flush: float = 0.5, batch: int = 500, refresh: float = 2.0, queue_max: int = 50_000,
                 on_ready: Callable[[str], None] | None = None) -> None:
        self.runners = runners
        self.store_path = store_path
        self.group = group
        self.keep = keep
        self.flush, self.batch, self.refresh = flush, batch, refresh
        self.on_ready = on_ready
        self.dropped = 0
        self.stored = 0
        self.lost: dict[str, int] = {}
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(queue_max)
        self._stop = threading.Event()
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for host in sorted(self.runners):
            self._spawn(self._read, host, name=f"nflog-{host}")
        self._spawn(self._write, name="flowlog-writer")

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name=name)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the readers and store what was read (the writer drains the queue before it ends)."""
        self._stop.set()
        for proc in list(self._procs.values()):
            proc.terminate()
        for t in self._threads:
            t.join(timeout)

    # -- readers -------------------------------------------------------------------------------

    def _read(self, host: str) -> None:
        argv = reader_argv(self.runners[host], self.group)
        delay = 1.0
        while not self._stop.is_set():
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=die_with_parent)
            self._procs[host] = proc
            assert proc.stdout is not None
            for text in proc.stdout:
                try:
                    line = json.loads(text)
                except ValueError:
                    continue
                if not isinstance(line, dict):
                    continue
                if line.get("ready"):
                    delay = 1.0
                    log.info("%s: drop log reader bound to NFLOG group %d", host, self.group)
                    if self.on_ready:
                        self.on_ready(host)
                    continue
                if "error" in line:
                    log.warning("%s: drop log reader: %s", host, line["error"])
                    continue
                try:
                    self._queue.put_nowait((host, line))
                except queue.Full:
                    self.dropped += 1
            proc.wait()
            if self._stop.is_set():
                return
            err = proc.stderr.read().strip()[-500:] if proc.stderr else ""
            log.warning("%s: drop log reader exited (%s)%s; restarting in %.0f s", host, proc.returncode,
                        f": {err}" if err else "", delay)
            self._stop.wait(delay)
            delay = min(delay * 2, 30.0)  # e.g. another listener holds the group: do not spin

    # -- the writer ----------------------------------------------------------------------------

    def _write(self) -> None:
        store = Store(self.store_path)
        maps: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        maps_at = 0.0
        try:
            while not (self._stop.is_set() and self._queue.empty() and all(
                    p.poll() is not None for p in self._procs.values())):
                pending: list[tuple[str, dict[str, Any]]] = []
                deadline = time.monotonic() + self.flush
                while len(pending) < self.batch:
                    try:
                        pending.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                    except queue.Empty:
                        break
                if not pending:
                    continue
                if time.monotonic() - maps_at > self.refresh:
                    guests = store.guests()
                    maps = {h: guest_maps(guests, h) for h in self.runners}
                    maps_at = time.monotonic()
                records: list[FlowRecord] = []
                for host, line in pending:
                    ports, addresses = maps.get(host, ({}, {}))
                    r = to_flow(line, host, ports, addresses)
                    if r is not None:
                        records.append(r)
                        self.lost[host] = self.lost.get(host, 0) + r.lost
                try:
                    store.put_flows(records, self.keep)
                    self.stored += len(records)
                except Exception as exc:  # a busy store must not stop the agent: these records are lost
                    log.warning("could not store %d flow records: %s", len(records), exc)
        finally:
            store.close()
