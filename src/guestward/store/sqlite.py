"""The embedded store: policies (by name, with their source text), the last enforced inventory (what
the libvirt hook compiles from while the agent is down), an event log, the drop log (flow records;
bounded: the oldest beyond a cap are pruned in the same transaction that adds new ones).

Every write is one SQLite transaction: a policy change is stored whole or not at all.

Policies are stored in their canonical form (`policy/canonical.py`), with their origin (file, line,
each rule's line) as data: what is stored parses again identically, whatever the user's file leaned
on. Rows of an earlier layout (a slice of the user's file, `rule_lines` NULL) are still read.

The database holds inspection reports (users, keys, cron lines) and flows: it is made 0600 and its
directory 0700 when created, and a database file not owned by this user is refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from guestward.dataplane.flowlog import FlowRecord
from guestward.model import Guest, Interface, Labels
from guestward.policy import Policy, PolicyError, parse_policies
from guestward.policy.canonical import Canonical, load

SCHEMA = """
CREATE TABLE IF NOT EXISTS policy (
    name TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    line INTEGER NOT NULL,
    source TEXT NOT NULL,
    applied_at REAL NOT NULL,
    rule_lines TEXT
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


class StoreError(Exception):
    pass


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
    """A stored policy: `source` is its canonical text and `rule_lines` its rules' lines in `file`;
    `rule_lines` None: a row of the earlier layout, whose `source` is the slice of `file` at `line`."""

    name: str
    file: str
    line: int
    source: str
    rule_lines: tuple[int, ...] | None = None

    @staticmethod
    def of(c: Canonical) -> StoredPolicy:
        return StoredPolicy(c.name, c.file, c.line, c.text, c.rule_lines)

    def padded_source(self) -> str:
        """The document text preceded by blank lines, so re-parsing reports the original line numbers."""
        return "\n" * (self.line - 1) + self.source


def load_policies(stored: list[StoredPolicy]) -> list[Policy]:
    """The policies of stored rows. Raises PolicyError (every problem, `file:line: message`)."""
    canonical = [Canonical(p.name, p.file, p.line, p.source, p.rule_lines) for p in stored if p.rule_lines is not None]
    legacy = [(p.file, p.padded_source()) for p in stored if p.rule_lines is None]
    diagnostics = []
    policies: list[Policy] = []
    for parse in (lambda: load(canonical), lambda: parse_policies(legacy)):
        try:
            policies.extend(parse())
        except PolicyError as exc:
            diagnostics.extend(exc.diagnostics)
    if diagnostics:
        raise PolicyError(diagnostics)
    return sorted(policies, key=lambda p: p.name)


def _private(path: Path) -> None:
    """Make the database file (and its directory, when new) private to this user: 0600 / 0700.

    The file is never opened here once it exists: closing any descriptor of a database file drops
    every POSIX lock this process holds on it, those of its other SQLite connections included (the
    agent has several), and SQLite's isolation with them. So only a new file is created (O_EXCL, so
    no connection can have it open), and an existing one is checked and tightened by its path."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)  # mkdir's mode is filtered by the umask
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror}") from None
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            st = f.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise StoreError(f"{f}: not a regular file owned by uid {os.geteuid()}: refused")
        if stat.S_IMODE(st.st_mode) != 0o600:  # an earlier store was 0644; SQLite gives -wal/-shm its mode
            os.chmod(f, 0o600)


class Store:
    def __init__(self, path: Path) -> None:
        _private(path)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(guest)")}
        if columns and "stamp" not in columns:  # a snapshot of an earlier layout: a cache, rebuilt by a sync
            self._db.execute("DROP TABLE guest")
        self._db.executescript(SCHEMA)
        if "mac" not in {r[1] for r in self._db.execute("PRAGMA table_info(flow)")}:  # an earlier layout
            self._db.execute("ALTER TABLE flow ADD COLUMN mac TEXT")
        if "rule_lines" not in {r[1] for r in self._db.execute("PRAGMA table_info(policy)")}:
            self._db.execute("ALTER TABLE policy ADD COLUMN rule_lines TEXT")

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
        rows = self._db.execute("SELECT name, file, line, source, rule_lines FROM policy ORDER BY name").fetchall()
        return [StoredPolicy(*r[:4], None if r[4] is None else tuple(json.loads(r[4]))) for r in rows]

    def load_policies(self, *, without: frozenset[str] = frozenset()) -> list[Policy]:
        """Every stored policy but those named in `without`, parsed. Raises PolicyError."""
        return load_policies([p for p in self.policies() if p.name not in without])

    def revision(self) -> int:
        return int(self._db.execute("SELECT value FROM revision").fetchone()[0])

    def put_policies(self, policies: list[StoredPolicy], *, replace_all: bool = False) -> int:
        """Upsert policies by name (or replace the whole set) in one transaction. Returns the revision."""
        with self._tx() as db:
            if replace_all:
                db.execute("DELETE FROM policy")
            now = time.time()
            db.executemany(
                "INSERT INTO policy VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "file=excluded.file, line=excluded.line, source=excluded.source, applied_at=excluded.applied_at, "
                "rule_lines=excluded.rule_lines",
                [(p.name, p.file, p.line, p.source, now, None if p.rule_lines is None else json.dumps(p.rule_lines))
                 for p in policies],
            )
            db.execute("UPDATE revision SET value = value + 1")
            return int(db.execute("SELECT value FROM revision").fetchone()[0])

    def delete_policies(self, names: list[str]) -> int:
        """Remove the named policies, all or nothing: KeyError (the unknown names, sorted) when one of
        them is not stored, and then nothing is removed. Returns the revision."""
        with self._tx() as db:
            known = {r[0] for r in db.execute("SELECT name FROM policy")}
            if missing := sorted(set(names) - known):
                raise KeyError(missing)
            db.executemany("DELETE FROM policy WHERE name = ?", [(n,) for n in sorted(set(names))])
            db.execute("UPDATE revision SET value = value + 1")
            return int(db.execute("SELECT value FROM revision").fetchone()[0])

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
