"""Offline vulnerability feeds in their published formats, stored under `<state_dir>/feeds/`.

Formats (detected from the file, which is operator-supplied, not guest data):
- `debian-tracker`: the Debian security tracker JSON (https://security-tracker.debian.org/tracker/data/json):
  `{source: {CVE: {releases: {codename: {status, fixed_version, urgency}}}}}`;
- `osv`: OSV JSON records (schema 1.x): one record, a list, a directory of them, or a per-ecosystem zip
  as published by osv.dev (`Debian/all.zip`, saved as `Debian.zip`).

`update` keeps the original bytes (`<name>.src`) and an index normalised to one shape, keyed by
`<distro>:<release>` and source package, so an inspection loads only what it needs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_DOWNLOAD = 1 << 30


class FeedError(ValueError):
    pass


def ecosystem_key(ecosystem: str) -> str | None:
    """OSV ecosystem -> `<distro>:<release>` (Debian:12 -> debian:12, Ubuntu:22.04:LTS -> ubuntu:22.04,
    Alpine:v3.18 -> alpine:3.18); None for ecosystems guestward does not match (PyPI, npm...)."""
    parts = ecosystem.split(":")
    distro = parts[0].lower()
    if distro not in ("debian", "ubuntu", "alpine") or len(parts) < 2:
        return None
    release = parts[1]
    if distro == "ubuntu" and release == "Pro" and len(parts) > 2:
        release = parts[2]
    if distro == "alpine":
        release = release.lstrip("v")
    return f"{distro}:{release}"


def _osv_records(obj: Any) -> Iterator[dict[str, Any]]:
    if isinstance(obj, list):
        for o in obj:
            yield from _osv_records(o)
    elif isinstance(obj, dict) and "id" in obj and ("affected" in obj or "withdrawn" in obj):
        yield obj


def _osv_severity(rec: dict[str, Any], aff: dict[str, Any]) -> str:
    for src in (aff.get("ecosystem_specific") or {}, aff.get("database_specific") or {},
                rec.get("database_specific") or {}):
        for key in ("urgency", "severity"):
            if isinstance(src.get(key), str):
                return str(src[key]).rstrip("*").strip().lower()
    for sev in rec.get("severity") or []:
        if isinstance(sev, dict) and sev.get("score"):
            return f"{sev.get('type', '')} {sev['score']}".strip()
    return ""


def normalise_osv(records: Iterator[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    index: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rec in records:
        if rec.get("withdrawn"):
            continue
        for aff in rec.get("affected") or []:
            pkg = aff.get("package") or {}
            key = ecosystem_key(str(pkg.get("ecosystem", "")))
            if key is None or not pkg.get("name"):
                continue
            ranges = [{"type": r.get("type"), "events": r.get("events", [])}
                      for r in aff.get("ranges") or [] if r.get("type") in ("ECOSYSTEM", "SEMVER")]
            index.setdefault(key, {}).setdefault(str(pkg["name"]), []).append({
                "id": rec["id"], "aliases": rec.get("aliases", []), "kind": "osv", "ranges": ranges,
                "versions": aff.get("versions", []), "severity": _osv_severity(rec, aff),
                "summary": str(rec.get("summary") or rec.get("details") or "")[:200]})
    return index


def normalise_tracker(data: dict[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    index: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for src, cves in data.items():
        if not isinstance(cves, dict):
            continue
        for cve, info in cves.items():
            releases = info.get("releases") if isinstance(info, dict) else None
            if not isinstance(releases, dict):
                continue  # `releases: []` in the tracker: no release data
            for codename, rel in releases.items():
                if not isinstance(rel, dict):
                    continue
                index.setdefault(f"debian:{codename}", {}).setdefault(src, []).append({
                    "id": cve, "aliases": [], "kind": "tracker", "status": rel.get("status", ""),
                    "fixed": rel.get("fixed_version"), "severity": str(rel.get("urgency", "")).rstrip("*").strip(),
                    "summary": str(info.get("description", ""))[:200]})
    return index


def detect_and_index(path: Path) -> tuple[str, dict[str, dict[str, list[dict[str, Any]]]]]:
    """(format, normalised index) of a feed file or directory."""
    if path.is_dir():
        def dir_records() -> Iterator[dict[str, Any]]:
            for f in sorted(path.rglob("*.json")):
                yield from _osv_records(json.loads(f.read_text()))
        return "osv", normalise_osv(dir_records())
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"PK":
        def zip_records() -> Iterator[dict[str, Any]]:
            with zipfile.ZipFile(path) as z:
                for name in z.namelist():
                    if name.endswith(".json"):
                        yield from _osv_records(json.loads(z.read(name)))
        return "osv", normalise_osv(zip_records())
    try:
        data = json.loads(path.read_bytes())
    except ValueError as exc:
        raise FeedError(f"{path}: neither a zip nor JSON: {exc}") from None
    if (isinstance(data, dict) and "id" in data and "affected" in data) or isinstance(data, list):
        return "osv", normalise_osv(_osv_records(data))
    if isinstance(data, dict) and all(isinstance(v, dict) for v in list(data.values())[:50]):
        return "debian-tracker", normalise_tracker(data)
    raise FeedError(f"{path}: not an OSV record/zip/directory nor the Debian security tracker JSON")


def feeds_dir(state_dir: Path) -> Path:
    return state_dir / "feeds"


def update(state_dir: Path, source: str, name: str | None = None) -> dict[str, Any]:
    """Fetch (URL) or copy (file, directory) a feed into the state dir and index it. Returns its metadata."""
    d = feeds_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".incoming-{time.time_ns()}"
    try:
        if source.startswith(("http://", "https://")):
            base = source.rstrip("/").rsplit("/", 1)[-1] or "feed"
            with urllib.request.urlopen(source, timeout=120) as resp, open(tmp, "wb") as out:
                total = 0
                while chunk := resp.read(1 << 20):
                    total += len(chunk)
                    if total > MAX_DOWNLOAD:
                        raise FeedError(f"{source}: over {MAX_DOWNLOAD} bytes")
                    out.write(chunk)
        else:
            src = Path(source)
            if not src.exists():
                raise FeedError(f"{source}: no such file or directory")
            base = src.name
            if src.is_dir():
                shutil.copytree(src, tmp)
            else:
                shutil.copyfile(src, tmp)
        fmt, index = detect_and_index(tmp)
        name = name or base.removesuffix(".json").removesuffix(".zip") or "feed"
        if "/" in name or name.startswith("."):
            raise FeedError(f"feed name {name!r} is not a plain name")
        raw = d / f"{name}.src"
        if raw.is_dir():
            shutil.rmtree(raw)
        tmp.rename(raw)
        digest = hashlib.sha256(raw.read_bytes()).hexdigest() if raw.is_file() else ""
        meta = {"name": name, "format": fmt, "source": source, "updated_at": time.time(), "sha256": digest,
                "entries": sum(len(v) for pk in index.values() for v in pk.values()),
                "releases": sorted(index)}
        (d / f"{name}.index.json").write_text(json.dumps({"meta": meta, "index": index}))
        return meta
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def load(state_dir: Path, keys: list[str]) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[dict[str, Any]]]]]:
    """(metadata of every stored feed, merged index restricted to `keys`)."""
    metas: list[dict[str, Any]] = []
    merged: dict[str, dict[str, list[dict[str, Any]]]] = {}
    d = feeds_dir(state_dir)
    for f in sorted(d.glob("*.index.json")) if d.exists() else []:
        doc = json.loads(f.read_text())
        metas.append(doc["meta"])
        for k in keys:
            for pkg, entries in doc["index"].get(k, {}).items():
                merged.setdefault(k, {}).setdefault(pkg, []).extend({**e, "feed": doc["meta"]["name"]} for e in entries)
    return metas, merged
