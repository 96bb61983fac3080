"""The embedded store: policies (by name, with their source text), the last enforced inventory (what
the libvirt hook compiles from while the agent is down), an event log, the drop log (flow records;
bounded: the oldest beyond a cap are pruned in the same transaction that adds new ones).

Every write is one SQLite transaction: a policy change is stored whole or not at all.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from guestward.dataplane.flowlog import FlowRecord
from guestward.model import Guest, Interface, Labels

SCHEMA = """
CREATE TABLE IF NOT EXISTS policy (
    name TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    line INTEGER NOT NULL,
    source TEXT NOT NULL,
    applied_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT OR IGNORE INTO revision VALUES (1, 0);
CREATE TABLE IF NOT EXISTS guest (
    uuid TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    stamp INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS clock (
    id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL, seeded INTEGER NOT NULL
);
INSERT OR IGNORE INTO clock VALUES (1, 0, 0);
CREATE TABLE IF NOT EXISTS pending_cut (uuid TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS quarantine (uuid TEXT PRIMARY KEY, name TEXT NOT NULL, at REAL NOT NULL, reason TEXT);
CREATE TABLE IF NOT EXISTS finding (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS event (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inspection (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    at REAL NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS inspection_subject ON inspection (subject, id);
CREATE INDEX IF NOT EXISTS event_kind ON event (kind, id);
CREATE TABLE IF NOT EXISTS flow (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    host TEXT NOT NULL,
    guest TEXT,
    direction TEXT,
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL,
    chain TEXT NOT NULL,
    rule TEXT NOT NULL,
    proto TEXT,
    src TEXT,
    sport INTEGER,
    dst TEXT,
    dport INTEGER,
    tcpflags TEXT,
    port TEXT,
    lost INTEGER NOT NULL DEFAULT 0,
    mac TEXT
);
CREATE INDEX IF NOT EXISTS flow_guest ON flow (guest, id);
"""
FLOW_COLUMNS = ("at", "host", "guest", "direction", "verdict", "reason", "chain", "rule", "proto", "src", "sport",
                "dst", "dport", "tcpflags", "port", "lost", "mac")


@dataclass(frozen=True)
class Finding:
    """Something a sync found wrong in its inputs, current until a sync no longer finds it.
    `key` identifies it across syncs (kind, subject and what it is about)."""

    kind: str
    subject: str
    detail: dict[str, Any]

    @property
    def key(self) -> str:
        return json.dumps([self.kind, self.subject, self.detail], sort_keys=True)


@dataclass(frozen=True)
class StoredPolicy:
    name: str
    file: str
    line: int
    source: str

    def padded_source(self) -> str:
        """The document text preceded by blank lines, so re-parsing reports the original line numbers."""
        return "\n" * (self.line - 1) + self.source


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(guest)")}
        if columns and "stamp" not in columns:  # a snapshot of an earlier layout: a cache, rebuilt by a sync
            self._db.execute("DROP TABLE guest")
        self._db.executescript(SCHEMA)
        if "mac" not in {r[1] for r in self._db.execute("PRAGMA table_info(flow)")}:  # an earlier layout
            self._db.execute("ALTER TABLE flow ADD COLUMN mac TEXT")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def policies(self) -> list[StoredPolicy]:
        rows = self._db.execute("SELECT name, file, line, source FROM policy ORDER BY name").fetchall()
        return [StoredPolicy(*r) for r in rows]

    def policy_sources(self) -> list[tuple[str, str]]:
        """(file, text) of every stored policy, padded so that parsing reports the original lines."""
        return [(p.file, p.padded_source()) for p in self.policies()]

    def put_policies(self, policies: list[StoredPolicy], *, replace_all: bool = False) -> int:
        """Upsert policies by name (or replace the whole set) in one transaction. Returns the revision."""
        with self._tx() as db:
            if replace_all:
                db.execute("DELETE FROM policy")
            now = time.time()
            db.executemany(
                "INSERT INTO policy VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "file=excluded.file, line=excluded.line, source=excluded.source, applied_at=excluded.applied_at",
                [(p.name, p.file, p.line, p.source, now) for p in policies],
            )
            db.execute("UPDATE revision SET value = value + 1")
            return int(db.execute("SELECT value FROM revision").fetchone()[0])

    def delete_policies(self, names: list[str]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM policy WHERE name = ?", [(n,) for n in names])
            db.execute("UPDATE revision SET value = value + 1")

    # -- the last enforced inventory ------------------------------------------------------------

    def guests(self) -> list[Guest]:
        return [guest_from_json(r[0]) for r in self._db.execute("SELECT body FROM guest ORDER BY uuid")]

    def tick(self) -> int:
        """The next value of the store's write clock (monotonic, shared by every process)."""
        with self._tx() as db:
            db.execute("UPDATE clock SET value = value + 1")
            return int(db.execute("SELECT value FROM clock").fetchone()[0])

    @property
    def seeded(self) -> bool:
        """A full sync has stored the snapshot at least once (before that it cannot be trusted)."""
        return bool(self._db.execute("SELECT seeded FROM clock").fetchone()[0])

    def guests_changed_since(self, stamp: int) -> dict[str, Guest]:
        """Snapshot entries written with a stamp after `stamp`: newer than a read that began at it."""
        rows = self._db.execute("SELECT uuid, body FROM guest WHERE stamp > ?", (stamp,)).fetchall()
        return {r[0]: guest_from_json(r[1]) for r in rows}

    def put_guests(self, guests: list[Guest], stamp: int) -> None:
        """Replace the whole snapshot with a full sync's inventory, read from libvirt from `stamp` on."""
        with self._tx() as db:
            db.execute("DELETE FROM guest")
            db.executemany("INSERT INTO guest VALUES (?, ?, ?)", [(g.uuid, guest_to_json(g), stamp) for g in guests])
            db.execute("UPDATE clock SET seeded = 1")

    def put_guest(self, guest: Guest) -> None:
        """One guest, as the hook saw it just now (stamped with the next tick)."""
        stamp = self.tick()
        self._db.execute("INSERT INTO guest VALUES (?, ?, ?) ON CONFLICT(uuid) DO UPDATE SET body=excluded.body, "
                         "stamp=excluded.stamp", (guest.uuid, guest_to_json(guest), stamp))

    # -- quarantined guests whose open connections are still to be cut ---------------------------

    def add_pending_cuts(self, uuids: list[str]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO pending_cut VALUES (?)", [(u,) for u in uuids])

    def pending_cuts(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT uuid FROM pending_cut ORDER BY uuid")]

    def done_cut(self, uuid: str) -> None:
        self._db.execute("DELETE FROM pending_cut WHERE uuid = ?", (uuid,))

    # -- quarantine: the source of truth (the domain XML label only mirrors it) ---------------------

    def quarantine(self, uuid: str, name: str, reason: str | None = None) -> None:
        self._db.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?) ON CONFLICT(uuid) DO NOTHING",
                         (uuid, name, time.time(), reason))

    def release(self, uuid: str) -> bool:
        """Take `uuid` out of quarantine; False if it was not in."""
        return self._db.execute("DELETE FROM quarantine WHERE uuid = ?", (uuid,)).rowcount > 0

    def quarantined(self) -> dict[str, str]:
        """uuid -> name of every guest guestward holds in quarantine."""
        return dict(self._db.execute("SELECT uuid, name FROM quarantine ORDER BY uuid").fetchall())

    # -- findings: what the last sync found wrong in its inputs (refused addresses...) ---------------

    def put_findings(self, findings: list[Finding]) -> list[Finding]:
        """Replace the current findings with `findings` in one transaction; returns the new ones (not
        current before), which the caller records as events: one event per finding, not per sync."""
        with self._tx() as db:
            before = {r[0] for r in db.execute("SELECT key FROM finding")}
            db.execute("DELETE FROM finding WHERE key NOT IN (SELECT value FROM json_each(?))",
                       (json.dumps([f.key for f in findings]),))
            new = [f for f in {f.key: f for f in findings}.values() if f.key not in before]
            db.executemany("INSERT INTO finding VALUES (?, ?, ?, ?, ?)",
                           [(f.key, f.kind, f.subject, json.dumps(f.detail, sort_keys=True), time.time()) for f in new])
        return new

    def findings(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The current findings (oldest first), as data: kind, subject, since and the detail fields."""
        q, args = "SELECT kind, subject, since, detail FROM finding", ()
        if kind:
            q, args = q + " WHERE kind = ?", (kind,)
        rows = self._db.execute(q + " ORDER BY since, key", args).fetchall()
        return [{"kind": r[0], "subject": r[1], "since": r[2], **json.loads(r[3])} for r in rows]

    # -- the event log ---------------------------------------------------------------------------

    def record(self, kind: str, subject: str, **detail: Any) -> None:
        self._db.execute("INSERT INTO event (at, kind, subject, detail) VALUES (?, ?, ?, ?)",
                         (time.time(), kind, subject, json.dumps(detail, default=str)))

    def events(self, kind: str | None = None, limit: int = 100, since: float = 0.0) -> list[dict[str, Any]]:
        """The newest events first (of one kind, and after `since` when given)."""
        q = "SELECT at, kind, subject, detail FROM event WHERE at >= ?"
        args: tuple[Any, ...] = (since,)
        if kind:
            q += " AND kind = ?"
            args = (since, kind)
        rows = self._db.execute(q + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [{"at": r[0], "kind": r[1], "subject": r[2], **json.loads(r[3])} for r in rows]

    # -- the drop log ----------------------------------------------------------------------------

    def put_flows(self, records: list[FlowRecord], keep: int) -> None:
        """Add flow records and prune the oldest beyond the newest `keep`, in one transaction."""
        if not records:
            return
        with self._tx() as db:
            columns, marks = ", ".join(FLOW_COLUMNS), ", ".join("?" * len(FLOW_COLUMNS))
            db.executemany(f"INSERT INTO flow ({columns}) VALUES ({marks})",
                           [tuple(getattr(r, c) for c in FLOW_COLUMNS) for r in records])
            db.execute("DELETE FROM flow WHERE id <= (SELECT MAX(id) FROM flow) - ?", (keep,))

    def flows(self, *, guest: str | None = None, host: str | None = None, verdict: str | None = None,
              after_id: int = 0, limit: int = 100) -> list[tuple[int, FlowRecord]]:
        """(id, record) of the newest `limit` flow records matching (after `after_id`), oldest first."""
        q, args = "SELECT id, " + ", ".join(FLOW_COLUMNS) + " FROM flow WHERE id > ?", [after_id]
        for column, value in (("guest", guest), ("host", host), ("verdict", verdict)):
            if value is not None:
                q += f" AND {column} = ?"
                args.append(value)
        rows = self._db.execute(q + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [(r[0], FlowRecord(*r[1:])) for r in reversed(rows)]

    def event_counts(self, kind: str, field: str | None = None) -> dict[str, float]:
        """Per subject: how many events of `kind` (or the sum of their numeric detail `field`)."""
        if field is None:
            q = "SELECT subject, COUNT(*) FROM event WHERE kind = ? GROUP BY subject"
            rows = self._db.execute(q, (kind,)).fetchall()
        else:
            q = ("SELECT subject, TOTAL(CAST(json_extract(detail, ?) AS REAL)) FROM event WHERE kind = ? "
                 "GROUP BY subject")
            rows = self._db.execute(q, (f"$.{field}", kind)).fetchall()
        return {r[0]: float(r[1]) for r in rows}

    def event_values(self, kind: str, field: str, since: float = 0.0) -> list[float]:
        """The numeric detail `field` of every event of `kind` since `since` (missing ones left out)."""
        q = ("SELECT CAST(json_extract(detail, ?) AS REAL) FROM event WHERE kind = ? AND at >= ? "
             "AND json_extract(detail, ?) IS NOT NULL")
        return [float(r[0]) for r in self._db.execute(q, (f"$.{field}", kind, since, f"$.{field}"))]

    def put_inspection(self, subject: str, at: float, report: dict[str, Any]) -> int:
        """Keep one inspection report of `subject` (a guest as `host/name`, or an image's path)."""
        cur = self._db.execute("INSERT INTO inspection (subject, at, report) VALUES (?, ?, ?)",
                               (subject, at, json.dumps(report, default=str)))
        return int(cur.lastrowid or 0)

    def last_inspection(self, subject: str, before_id: int | None = None) -> dict[str, Any] | None:
        """The latest stored report of `subject` (older than `before_id` when given), or None."""
        q, args = "SELECT report FROM inspection WHERE subject = ?", [subject]
        if before_id is not None:
            q += " AND id < ?"
            args.append(before_id)
        row = self._db.execute(q + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return json.loads(row[0]) if row else None

    def inspections(self, subject: str | None = None) -> list[tuple[int, str, float]]:
        q, args = "SELECT id, subject, at FROM inspection", []
        if subject:
            q += " WHERE subject = ?"
            args.append(subject)
        return [(r[0], r[1], r[2]) for r in self._db.execute(q + " ORDER BY id", args).fetchall()]

    def close(self) -> None:
        self._db.close()


def guest_to_json(g: Guest) -> str:
    return json.dumps({
        "name": g.name, "uuid": g.uuid, "host": g.host, "labels": dict(g.labels), "active": g.active,
        "also_on": list(g.also_on), "claimed": [[str(a), t] for a, t in g.claimed],
        "ports_elsewhere": [list(e) for e in g.ports_elsewhere], "refusal": g.refusal,
        "interfaces": [{"mac": i.mac, "port": i.port, "addresses": [str(a) for a in i.addresses],
                        "refused": [[str(a), r] for a, r in i.refused]} for i in g.interfaces],
    }, sort_keys=True)


def guest_from_json(text: str) -> Guest:
    d = json.loads(text)
    nics = tuple(replace(Interface.of(i["mac"], i["port"], i["addresses"]),
                         refused=tuple((ip_address(a), r) for a, r in i.get("refused", [])))
                 for i in d["interfaces"])
    return Guest(d["name"], d["uuid"], d["host"], Labels(d["labels"]), nics, d["active"], tuple(d["also_on"]),
                 tuple((ip_address(a), t) for a, t in d.get("claimed", [])),
                 tuple((h, m, p) for h, m, p in d.get("ports_elsewhere", [])), d.get("refusal"))
