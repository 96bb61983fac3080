"""The stored match index is compact: a large feed is indexed in bounded memory, and a later inspection
reads only its own packages' entries (SQLite, keyed by release and source package), so neither its
memory nor its time grows with the feed. Both run as real processes under an address-space limit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from guestward.inspect import feeds
from tests.inspect.feedkit import bounded_cli

SOURCES, CVES = 12_000, 8  # 25 MB of tracker JSON, 96,000 CVEs, 192,000 index rows

LOOKUP = """
import json, sys, time
from pathlib import Path
from guestward.inspect import report
inv = json.loads(Path(sys.argv[2]).read_text())
start = time.perf_counter()
rep = report.build("t", inv, Path(sys.argv[1]))
vulns = sorted((f["id"], f["package"], f["fixed"]) for f in rep["findings"] if f["type"] == "vulnerability")
print(json.dumps({"seconds": time.perf_counter() - start, "vulns": vulns, "feeds": rep["feeds"]}))
"""


def _tracker(path: Path) -> None:
    with open(path, "w") as f:
        f.write("{")
        for s in range(SOURCES):
            doc = {f"CVE-2099-{s * CVES + c:07d}": {
                "description": f"flaw {c} of pkg{s}", "scope": "remote", "releases": {
                    "bookworm": {"status": "resolved", "repositories": {"bookworm": f"1.{c}-1"},
                                 "fixed_version": f"1.{c}-1", "urgency": "medium"},
                    "bullseye": {"status": "open", "urgency": "low"}}} for c in range(CVES)}
            f.write(("," if s else "") + json.dumps(f"pkg{s}") + ":" + json.dumps(doc))
        f.write("}")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("bigfeed")
    _tracker(d / "tracker.json")
    return d / "tracker.json", d / "state"


def test_a_large_feed_is_indexed_in_bounded_memory(big: tuple[Path, Path]) -> None:
    feed, state = big
    assert feed.stat().st_size > 24e6
    r = bounded_cli("feeds", "update", "--from", str(feed), "--state-dir", str(state), timeout=600)
    assert r.returncode == 0, r
    assert r.stdout.strip() == "feed tracker: debian-tracker, 192000 entries for debian:bookworm, debian:bullseye"
    assert r.max_rss_mb < 120, r  # the JSON alone is 25 MB; as Python objects it would be ~10x that
    index = feeds.feeds_dir(state) / "tracker.index.sqlite"
    assert index.stat().st_size < feed.stat().st_size * 1.5  # disk: 1.4x the JSON (two releases per CVE)


def test_a_later_inspection_reads_only_its_packages(big: tuple[Path, Path], tmp_path: Path) -> None:
    feed, state = big
    if not (feeds.feeds_dir(state) / "tracker.index.sqlite").exists():
        feeds.update(state, str(feed))
    installed = {f"pkg{s}": f"1.{s % CVES}-1" for s in range(0, SOURCES, SOURCES // 300)}  # 300 packages
    inv = {"os": {"id": "debian", "codename": "bookworm", "version_id": "12"}, "packages": [
        {"name": f"bin-{p}", "source": p, "version": v, "source_version": v, "manager": "dpkg"}
        for p, v in installed.items()]}
    (tmp_path / "inv.json").write_text(json.dumps(inv))
    r = bounded_cli(str(state), str(tmp_path / "inv.json"), code=LOOKUP, address_space_mb=256)
    assert r.returncode == 0, r
    out = json.loads(r.stdout)
    # bookworm: every CVE c of an installed package whose fix 1.c-1 is above the installed 1.k-1
    expected = sorted((f"CVE-2099-{int(p[3:]) * CVES + c:07d}", f"bin-{p}", f"1.{c}-1")
                      for p, v in installed.items() for c in range(CVES) if c > int(v.split(".")[1].split("-")[0]))
    assert [tuple(v) for v in out["vulns"]] == expected
    assert [f["name"] for f in out["feeds"]] == ["tracker"]
    assert out["seconds"] < 3 and r.max_rss_mb < 80, (out["seconds"], r.max_rss_mb)


def test_a_refused_update_of_the_large_feed_keeps_it(big: tuple[Path, Path], tmp_path: Path) -> None:
    """A broken copy of the same feed (its last record cut) is refused at the end, after 25 MB were
    indexed into the scratch file; the stored index is the one before, byte for byte."""
    feed, state = big
    if not (feeds.feeds_dir(state) / "tracker.index.sqlite").exists():
        feeds.update(state, str(feed))
    index = feeds.feeds_dir(state) / "tracker.index.sqlite"
    before = index.read_bytes()
    broken = tmp_path / "tracker.json"
    broken.write_bytes(feed.read_bytes()[:-40])
    r = bounded_cli("feeds", "update", "--from", str(broken), "--state-dir", str(state), timeout=600)
    assert r.returncode == 2 and re.fullmatch(rf"error: {re.escape(str(broken))}: not valid JSON: .+", r.stderr), r
    assert index.read_bytes() == before
    assert sorted(p.name for p in feeds.feeds_dir(state).iterdir()) == ["tracker.index.sqlite", "tracker.src"]


def test_an_index_from_before_sqlite_is_named_and_replaced(tmp_path: Path) -> None:
    """A `<name>.index.json` (the whole feed as one JSON document, read whole by every inspection) is no
    longer read: `feeds list` says so, and `feeds update` of that name removes it."""
    from tests.inspect.feedkit import osv
    state = tmp_path / "state"
    feeds.feeds_dir(state).mkdir(parents=True)
    (feeds.feeds_dir(state) / "Debian.index.json").write_text('{"meta": {}, "index": {}}')
    r = bounded_cli("feeds", "list", "--state-dir", str(state))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "note: feed Debian was stored by an older guestward and "
                                                  "is no longer read: `guestward feeds update` it again"), r
    src = tmp_path / "Debian.json"
    src.write_text(json.dumps([osv("CVE-2099-0001")]))
    feeds.update(state, str(src))
    assert sorted(p.name for p in feeds.feeds_dir(state).iterdir()) == ["Debian.index.sqlite", "Debian.src"]


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "no-meta"])
def test_a_damaged_index_is_named_never_skipped(damage: str, tmp_path: Path) -> None:
    """An index that cannot be read fails the lookup (an inspection without that feed would under-report)
    and `feeds list`, naming the file; `feeds update` of that name replaces it."""
    import sqlite3

    from tests.inspect.feedkit import osv
    state = tmp_path / "state"
    src = tmp_path / "Debian.json"
    src.write_text(json.dumps([osv("CVE-2099-0001")]))
    feeds.update(state, str(src))
    index = feeds.feeds_dir(state) / "Debian.index.sqlite"
    if damage == "garbage":
        index.write_bytes(b"not sqlite at all" * 100)
    elif damage == "empty":
        index.write_bytes(b"")
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[:1500])
    else:
        db = sqlite3.connect(index)
        db.execute("DELETE FROM meta")
        db.commit()
        db.close()
    with pytest.raises(ValueError, match=rf"^{re.escape(str(index))}: not a readable feed index \(.+\): "
                                         r"`guestward feeds update` it again$"):
        feeds.load(state, ["debian:12"], ["glibc"])
    r = bounded_cli("feeds", "list", "--state-dir", str(state))
    assert r.returncode == 2 and r.stderr.startswith(f"error: {index}: not a readable feed index"), r
    feeds.update(state, str(src))
    assert [e["id"] for e in feeds.load(state, ["debian:12"], ["glibc"])[1]["debian:12"]["glibc"]] == ["CVE-2099-0001"]
