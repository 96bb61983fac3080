"""The records of the two feed formats as pydantic models, and their normalisation to index rows.

A record is validated before anything of it is used; a record that fails is an error naming the file,
the record and the field (the caller refuses the whole feed: a feed that does not parse as documented
has changed format or is corrupt, and skipping its records would silently under-report). Unknown fields
are ignored (both formats grow). Models:
- OSV (ossf/osv-schema 1.x): `id` and `modified` required; `affected[]` of `{package{ecosystem,name},
  ranges[{type, events[{introduced|fixed|last_affected|limit: str}]}], versions[str]}`;
- Debian security tracker: `{source: {CVE: {description, releases: {codename: {status, fixed_version,
  urgency}} | []}}}`.

A row is `(release key, source package, entry)`; the entry is what guestward.inspect.match reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

Row = tuple[str, str, dict[str, Any]]
SUMMARY_CHARS = 200


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OsvPackage(_Model):
    ecosystem: str = ""
    name: str = ""


class OsvRange(_Model):
    type: str
    events: list[dict[str, str]] = []

    @field_validator("events")
    @classmethod
    def _one_key(cls, events: list[dict[str, str]]) -> list[dict[str, str]]:
        for e in events:
            if len(e) != 1 or next(iter(e)) not in ("introduced", "fixed", "last_affected", "limit"):
                raise ValueError(f"an event has exactly one of introduced/fixed/last_affected/limit, not {sorted(e)}")
        return events


class OsvAffected(_Model):
    package: OsvPackage | None = None
    ranges: list[OsvRange] | None = None
    versions: list[str] | None = None
    ecosystem_specific: dict[str, Any] | None = None
    database_specific: dict[str, Any] | None = None


class OsvSeverity(_Model):
    type: str = ""
    score: str


class OsvRecord(_Model):
    id: str
    modified: str
    withdrawn: str | None = None
    aliases: list[str] | None = None
    summary: str | None = None
    details: str | None = None
    severity: list[OsvSeverity] | None = None
    affected: list[OsvAffected] | None = None
    database_specific: dict[str, Any] | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty id")
        return v


class TrackerRelease(_Model):
    status: str
    fixed_version: str | None = None
    urgency: str = ""
    repositories: dict[str, str] | None = None


class TrackerCve(_Model):
    description: str | None = None
    scope: str | None = None
    releases: dict[str, TrackerRelease] = {}

    @field_validator("releases", mode="before")
    @classmethod
    def _empty_list(cls, v: Any) -> Any:
        return {} if v == [] else v  # the tracker writes `releases: []` for a CVE without release data


class RecordError(ValueError):
    """A record that fails its schema: `where` names the file and record."""


def _shown(name: str) -> str:
    """A feed-supplied name as it may appear in an error line: short, printable."""
    return "".join(c if c.isprintable() else "?" for c in name[:80])


def _explain(where: str, exc: ValidationError) -> RecordError:
    errors = exc.errors()
    shown = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(record)'}: {e['msg']}" for e in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return RecordError(f"{where}: {shown}{more}")


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


def _osv_severity(rec: OsvRecord, aff: OsvAffected) -> str:
    for src in (aff.ecosystem_specific or {}, aff.database_specific or {}, rec.database_specific or {}):
        for key in ("urgency", "severity"):
            if isinstance(src.get(key), str):
                return str(src[key]).rstrip("*").strip().lower()
    for sev in rec.severity or []:
        if sev.score:
            return f"{sev.type} {sev.score}".strip()
    return ""


def osv_rows(where: str, obj: Any) -> Iterator[Row]:
    """Index rows of one OSV record (none for a withdrawn one or an ecosystem guestward does not match)."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: an OSV record is a JSON object, not {type(obj).__name__}")
    try:
        rec = OsvRecord.model_validate(obj)
    except ValidationError as exc:
        ident = obj.get("id")
        if isinstance(ident, str) and ident.strip():
            where = f"{where} ({_shown(ident)})"
        raise _explain(where, exc) from None
    if rec.withdrawn:
        return
    for aff in rec.affected or []:
        pkg = aff.package
        key = ecosystem_key(pkg.ecosystem) if pkg else None
        if pkg is None or key is None or not pkg.name:
            continue
        ranges = [{"type": r.type, "events": r.events} for r in aff.ranges or [] if r.type in ("ECOSYSTEM", "SEMVER")]
        yield key, pkg.name, {
            "id": rec.id, "aliases": rec.aliases or [], "kind": "osv", "ranges": ranges,
            "versions": aff.versions or [], "severity": _osv_severity(rec, aff),
            "summary": (rec.summary or rec.details or "")[:SUMMARY_CHARS]}


def tracker_rows(where: str, source: Any, cve: Any, obj: Any) -> Iterator[Row]:
    """Index rows of one tracker record (`source` -> `cve` -> obj), one per release."""
    if not isinstance(source, str) or not isinstance(cve, str):
        raise RecordError(f"{where}: the tracker maps source -> CVE -> record, not a list")
    try:
        rec = TrackerCve.model_validate(obj)
    except ValidationError as exc:
        raise _explain(f"{where} ({_shown(source)}/{_shown(cve)})", exc) from None
    for codename, rel in rec.releases.items():
        yield f"debian:{codename}", source, {
            "id": cve, "aliases": [], "kind": "tracker", "status": rel.status, "fixed": rel.fixed_version,
            "severity": rel.urgency.rstrip("*").strip(), "summary": (rec.description or "")[:SUMMARY_CHARS]}
