"""Vulnerability matching against feed fixtures in the real formats, made here from the image's own
package versions: one source package at the installed version listed as vulnerable (fixed above it),
one fixed below it, plus decoys (another release, `fixed_version: "0"`, withdrawn, another ecosystem)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from guestward.inspect import feeds, match
from guestward.inspect.chain import image_chain
from guestward.inspect.runner import inspect_chains
from tests.conftest import guestward
from tests.inspect.conftest import Images

pytestmark = pytest.mark.inspect


@pytest.fixture(scope="module")
def inventory(images: Images) -> dict[str, Any]:
    return inspect_chains([image_chain(str(images.qcow2), "qcow2")])


def _pick(inv: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(glibc's libc6: a source with several binaries and a different name, dpkg)."""
    by_name = {p["name"]: p for p in inv["packages"]}
    return by_name["libc6"], by_name["dpkg"]


def _expected(inv: dict[str, Any], source: str) -> set[tuple[str, str]]:
    return {("CVE-2099-0001", p["name"]) for p in inv["packages"] if p["source"] == source}


def tracker_doc(vuln: dict[str, str], safe: dict[str, str]) -> dict[str, Any]:
    above, below = vuln["source_version"] + "+gw1", "1.0-1"
    return {
        vuln["source"]: {
            "CVE-2099-0001": {"description": "vulnerable", "scope": "local", "releases": {
                "bookworm": {"status": "resolved", "repositories": {"bookworm": above}, "fixed_version": above,
                             "urgency": "high"},
                "bullseye": {"status": "resolved", "fixed_version": "9:9.9-9", "urgency": "high"}}},
            "CVE-2099-0003": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "0",
                                                        "urgency": "unimportant"}}},
            "CVE-2099-0004": {"releases": []},
        },
        safe["source"]: {"CVE-2099-0002": {"releases": {"bookworm": {"status": "resolved", "fixed_version": below,
                                                                     "urgency": "medium"}}}},
    }


def osv_records(vuln: dict[str, str], safe: dict[str, str]) -> list[dict[str, Any]]:
    def rec(i: str, pkg: str, fixed: str, eco: str = "Debian:12", **extra: Any) -> dict[str, Any]:
        return {"schema_version": "1.6.0", "id": i, "modified": "2099-01-01T00:00:00Z", "aliases": [],
                "affected": [{"package": {"ecosystem": eco, "name": pkg},
                              "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}],
                              "ecosystem_specific": {"urgency": "high"}}], **extra}
    return [rec("CVE-2099-0001", vuln["source"], vuln["source_version"] + "+gw1"),
            rec("CVE-2099-0002", safe["source"], "1.0-1"),
            rec("CVE-2099-0005", vuln["source"], "99:1-1", eco="Debian:11"),
            rec("CVE-2099-0006", vuln["source"], "99:1-1", withdrawn="2099-01-02T00:00:00Z"),
            rec("PYSEC-2099-1", vuln["source"], "99.0", eco="PyPI")]


def write_fixtures(d: Path, inv: dict[str, Any]) -> dict[str, Path]:
    vuln, safe = _pick(inv)
    out = {}
    out["tracker"] = d / "debian-tracker.json"
    out["tracker"].write_text(json.dumps(tracker_doc(vuln, safe)))
    recs = osv_records(vuln, safe)
    osv_dir = d / "osv-dir"
    osv_dir.mkdir()
    for r in recs:
        (osv_dir / f"{r['id']}.json").write_text(json.dumps(r))
    out["osv-dir"] = osv_dir
    out["osv-zip"] = d / "Debian.zip"
    with zipfile.ZipFile(out["osv-zip"], "w") as z:
        for r in recs:
            z.writestr(f"{r['id']}.json", json.dumps(r))
    out["osv-record"] = d / "CVE-2099-0001.json"
    out["osv-record"].write_text(json.dumps(recs[0]))
    return out


@pytest.mark.parametrize("kind", ["tracker", "osv-dir", "osv-zip", "osv-record"])
def test_exactly_the_expected_vulnerabilities(kind: str, inventory: dict[str, Any], tmp_path: Path) -> None:
    fixtures = write_fixtures(tmp_path, inventory)
    meta = feeds.update(tmp_path / "state", str(fixtures[kind]), name=kind)
    assert meta["format"] == ("debian-tracker" if kind == "tracker" else "osv")
    sources = {p["source"] for p in inventory["packages"]}
    _, index = feeds.load(tmp_path / "state", match.release_keys(inventory["os"]), sources)
    found = match.vulnerabilities(inventory, index)
    vuln, _ = _pick(inventory)
    assert {(f["id"], f["package"]) for f in found} == _expected(inventory, vuln["source"])
    f = next(f for f in found if f["package"] == "libc6")
    assert f["source"] == "glibc" and f["installed"] == vuln["version"]
    assert f["fixed"] == vuln["source_version"] + "+gw1"
    assert f["severity"] == "high"


def test_osv_events_evaluation() -> None:
    e = {"ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "1.2-1"}, {"fixed": "1.4-1"},
                                                     {"introduced": "2.0-1"}, {"last_affected": "2.1-1"}]}]}
    assert match.osv_affected("1.1-1", e) == (False, None)
    assert match.osv_affected("1.3-1", e) == (True, "1.4-1")
    assert match.osv_affected("1.4-1", e) == (False, None)
    assert match.osv_affected("1.10-1", e) == (False, None)  # dpkg order, not string order
    assert match.osv_affected("2.1-1", e) == (True, None)
    assert match.osv_affected("2.1-2", e) == (False, None)
    assert match.osv_affected("1:0.1-1", e) == (False, None)  # epoch 1 is above every range
    assert match.osv_affected("1.3~rc1-1", {"ranges": [{"type": "ECOSYSTEM", "events": [
        {"introduced": "0"}, {"fixed": "1.3-1"}]}]}) == (True, "1.3-1")
    assert match.osv_affected("0.9", {"versions": ["0.9"], "ranges": []}) == (True, None)


def test_cli_feeds_update_and_inspect_json(inventory: dict[str, Any], images: Images, tmp_path: Path) -> None:
    fixtures = write_fixtures(tmp_path, inventory)
    state = tmp_path / "state"
    r = guestward("feeds", "update", "--from", str(fixtures["osv-zip"]), "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert (state / "feeds" / "Debian.src").is_file() and "osv" in r.stdout
    r = guestward("feeds", "update", "--from", str(tmp_path / "nope.json"), "--state-dir", str(state))
    assert r.returncode == 2 and r.stderr.startswith("error:")
    r = guestward("inspect", "--image", str(images.qcow2), "--format", "qcow2", "--json", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    vulns = {(f["id"], f["package"]) for f in rep["findings"] if f["type"] == "vulnerability"}
    vuln, _ = _pick(inventory)
    assert vulns == _expected(inventory, vuln["source"])
    assert rep["at"] > 0 and rep["method"].startswith("read-only")


def test_feeds_update_from_url(inventory: dict[str, Any], tmp_path: Path) -> None:
    import functools
    import http.server
    import threading
    fixtures = write_fixtures(tmp_path, inventory)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{fixtures['tracker'].name}"
        digest = hashlib.sha256(fixtures["tracker"].read_bytes()).hexdigest()
        meta = feeds.update(tmp_path / "state", url, sha256=digest)  # plain http only with the checksum
    finally:
        server.shutdown()
    assert meta["name"] == "debian-tracker" and meta["format"] == "debian-tracker" and meta["source"] == url
    assert (tmp_path / "state/feeds/debian-tracker.src").read_bytes() == fixtures["tracker"].read_bytes()
