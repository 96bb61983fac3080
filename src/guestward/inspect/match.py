"""Matching an inventory's packages against normalised feed entries (guestward.inspect.feeds).

Versions are compared by python-debian (`debian.debian_support.Version`, dpkg's algorithm), never by
hand; Debian and Ubuntu feeds key on the *source* package and its version. Alpine's apk versions are
not compared (no apk comparison in python-debian): Alpine entries are reported as unmatched in the
result's notes instead of guessed.

OSV ranges are evaluated as the OSV schema's `IsVulnerable` says: events sorted by version, `introduced`
opens, `fixed` closes (exclusive), `last_affected` closes (inclusive); `versions[]` lists exact versions.
"""

from __future__ import annotations

from functools import cmp_to_key
from typing import Any

from debian.debian_support import Version, version_compare


def release_keys(os_info: dict[str, Any]) -> list[str]:
    distro = str(os_info.get("id", "")).lower()
    keys = []
    if distro == "debian":
        if os_info.get("codename"):
            keys.append(f"debian:{os_info['codename']}")
        if os_info.get("version_id"):
            keys.append(f"debian:{str(os_info['version_id']).split('.')[0]}")
    elif distro == "ubuntu" and os_info.get("version_id"):
        keys.append(f"ubuntu:{os_info['version_id']}")
    elif distro == "alpine" and os_info.get("version_id"):
        keys.append("alpine:" + ".".join(str(os_info["version_id"]).split(".")[:2]))
    return keys


def _valid(v: str) -> bool:
    try:
        Version(v)
    except ValueError:
        return False
    return True


def osv_affected(installed: str, entry: dict[str, Any]) -> tuple[bool, str | None]:
    """(affected, fixed version) for one OSV `affected[]` entry."""
    if installed in entry.get("versions", []):
        return True, None
    for r in entry.get("ranges", []):
        if r.get("type") != "ECOSYSTEM":
            continue
        events = [e for e in r.get("events", []) if isinstance(e, dict) and e]
        keyed = []
        for e in events:
            kind, ver = next(iter(e.items()))
            if kind in ("introduced", "fixed", "last_affected") and (ver == "0" or _valid(str(ver))):
                keyed.append((kind, str(ver)))

        def cmp(a: tuple[str, str], b: tuple[str, str]) -> int:
            if a[1] == "0" or b[1] == "0":
                return (a[1] != "0") - (b[1] != "0")
            return int(version_compare(a[1], b[1]))

        keyed.sort(key=cmp_to_key(cmp))
        vulnerable, fixed = False, None
        for kind, ver in keyed:
            if kind == "introduced":
                if ver == "0" or version_compare(installed, ver) >= 0:
                    vulnerable = True
            elif kind == "fixed":
                if version_compare(installed, ver) >= 0:
                    vulnerable = False
                elif vulnerable:
                    fixed = ver
                    break
            elif kind == "last_affected":
                if version_compare(installed, ver) > 0:
                    vulnerable = False
                elif vulnerable:
                    break
        if vulnerable:
            return True, fixed
    return False, None


def tracker_affected(installed: str, entry: dict[str, Any]) -> tuple[bool, str | None]:
    status, fixed = entry.get("status"), entry.get("fixed")
    if status == "resolved":
        if not fixed or fixed == "0" or not _valid(str(fixed)):
            return False, None  # "0": never affected
        return version_compare(installed, str(fixed)) < 0, str(fixed)
    if status == "open":
        return True, None
    return False, None  # undetermined: not reported as a finding


Index = dict[str, dict[str, list[dict[str, Any]]]]


def vulnerabilities(inventory: dict[str, Any], index: Index) -> list[dict[str, Any]]:
    """One finding per (advisory, package): the advisory/CVE, binary and source package, installed and
    fixed versions, severity and the feed it came from."""
    keys = release_keys(inventory.get("os", {}))
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for pkg in inventory.get("packages", []):
        if pkg.get("manager") != "dpkg":
            continue
        src, ver = pkg["source"], pkg["source_version"]
        if not _valid(ver):
            continue
        for key in keys:
            for entry in index.get(key, {}).get(src, []):
                check = tracker_affected if entry["kind"] == "tracker" else osv_affected
                hit, fixed = check(ver, entry)
                if not hit:
                    continue
                k = (entry["id"], pkg["name"])
                if k in found:
                    continue
                found[k] = {"type": "vulnerability", "id": entry["id"], "aliases": entry.get("aliases", []),
                            "package": pkg["name"], "source": src, "installed": pkg["version"],
                            "source_version": ver, "fixed": fixed, "severity": entry.get("severity", ""),
                            "feed": entry.get("feed", ""), "release": key, "summary": entry.get("summary", "")}
    return sorted(found.values(), key=lambda f: (f["id"], f["package"]))
