"""An inspection report: the worker's inventory plus findings, and the diff between two reports."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from guestward.inspect import feeds, match
from guestward.inspect.findings import config_findings


def build(subject: str, inventory: dict[str, Any], state_dir: Path | None, at: float | None = None) -> dict[str, Any]:
    keys = match.release_keys(inventory.get("os", {}))
    # Only the installed source packages' entries are read from the index, not the whole feed.
    sources = {p["source"] for p in inventory.get("packages", []) if p.get("manager") == "dpkg" and p.get("source")}
    metas, index = feeds.load(state_dir, keys, sources) if state_dir else ([], {})
    findings = config_findings(inventory) + match.vulnerabilities(inventory, index)
    notes = []
    if not metas:
        notes.append("no vulnerability feed stored: `guestward feeds update --from FILE|URL`")
    elif not any(k in index for k in keys):
        notes.append(f"no stored feed covers {', '.join(keys) or 'this OS'}")
    if any(p.get("manager") != "dpkg" for p in inventory.get("packages", [])):
        notes.append("only dpkg packages are matched against feeds (apk/rpm version comparison not implemented)")
    return {"subject": subject, "at": at or time.time(), "inventory": inventory, "findings": findings,
            "feeds": [{"name": m["name"], "format": m["format"], "updated_at": m["updated_at"]} for m in metas],
            "partial": bool(inventory.get("partial")), "notes": notes}


def _keys(report: dict[str, Any]) -> dict[str, set[str]]:
    inv = report.get("inventory", {})
    return {
        "packages": {f"{p['name']} {p['version']}" for p in inv.get("packages", [])},
        "authorized_keys": {f"{k['user']} {k['type']} {k['fingerprint']}" for k in inv.get("authorized_keys", [])},
        "setuid": {f"{s['path']} {s['mode']}" for s in inv.get("setuid", [])},
        "users": {f"{u['name']} uid={u['uid']}" for u in inv.get("users", [])},
        "cron": {f"{c['file']}: {c['schedule']} {c['command']}" for c in inv.get("cron", [])},
        "services": {s["unit"] for s in inv.get("services", [])},
        "findings": {f"{f['id']}: {f['title']} ({f['detail']})" if f["type"] == "config" else
                     f"{f['id']}: {f['package']} {f['installed']} (fixed {f['fixed'] or 'nowhere'})"
                     for f in report.get("findings", [])},
    }


def diff(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """What is new and gone in `new` against `old` (everything is new when there is no `old`)."""
    a = _keys(old) if old else {k: set() for k in _keys(new)}
    b = _keys(new)
    return {"since": old.get("at") if old else None,
            "added": {k: sorted(b[k] - a[k]) for k in b if b[k] - a[k]},
            "removed": {k: sorted(a[k] - b[k]) for k in b if a[k] - b[k]}}
