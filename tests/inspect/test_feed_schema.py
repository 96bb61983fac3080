"""Records that break their format's schema: the whole feed is refused with an error naming the file (or
zip member), the record (its position and id) and the field, and the stored feed stays in force. Valid
variants the published feeds really contain (nulls, `releases: []`, unknown fields, other ecosystems,
withdrawn records) are accepted with exactly the rows they mean."""

from __future__ import annotations

import copy
import json
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guestward.inspect import feeds
from tests.inspect.feedkit import NAME, osv, stored_feed, tracker_cve

# (path into one OSV record, a value that breaks the schema there, the field the error must name)
OSV_BREAKS: list[tuple[tuple[Any, ...], Any, str]] = [
    (("affected",), "notalist", "affected"),
    (("affected",), {"package": {}}, "affected"),
    (("affected",), 7, "affected"),
    (("affected", 0), "x", "affected.0"),
    (("affected", 0, "package"), "glibc", "affected.0.package"),
    (("affected", 0, "package", "name"), 5, "affected.0.package.name"),
    (("affected", 0, "ranges"), {"type": "ECOSYSTEM"}, "affected.0.ranges"),
    (("affected", 0, "ranges", 0, "type"), None, "affected.0.ranges.0.type"),
    (("affected", 0, "ranges", 0, "events"), "introduced", "affected.0.ranges.0.events"),
    (("affected", 0, "ranges", 0, "events", 0), {"introduced": "0", "fixed": "1"}, "affected.0.ranges.0.events"),
    (("affected", 0, "ranges", 0, "events", 0), {"bogus": "1"}, "affected.0.ranges.0.events"),
    (("affected", 0, "ranges", 0, "events", 1, "fixed"), 2, "affected.0.ranges.0.events.1.fixed"),
    (("affected", 0, "versions"), "1.0-1", "affected.0.versions"),
    (("affected", 0, "versions"), [1], "affected.0.versions.0"),
    (("id",), 5, "id"),
    (("id",), "  ", "id"),
    (("id",), None, "id"),
    (("modified",), None, "modified"),
    (("aliases",), "CVE-1", "aliases"),
    (("severity",), [{"type": "CVSS_V3"}], "severity.0.score"),
    (("summary",), ["a"], "summary"),
]
TRACKER_BREAKS: list[tuple[tuple[Any, ...], Any, str]] = [
    ((), "notanobject", "(record)"),
    ((), ["CVE"], "(record)"),
    (("releases",), "bookworm", "releases"),
    (("releases",), [1], "releases"),
    (("releases", "bookworm"), "resolved", "releases.bookworm"),
    (("releases", "bookworm", "status"), None, "releases.bookworm.status"),
    (("releases", "bookworm", "status"), 1, "releases.bookworm.status"),
    (("releases", "bookworm", "fixed_version"), 2, "releases.bookworm.fixed_version"),
    (("releases", "bookworm", "urgency"), ["high"], "releases.bookworm.urgency"),
    (("releases", "bookworm", "repositories"), ["bookworm"], "releases.bookworm.repositories"),
    (("description",), {"a": 1}, "description"),
]


def _break(rec: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    rec = copy.deepcopy(rec)
    node = rec
    for p in path[:-1]:
        node = node[p]
    if value is None and path[-1] in ("id", "modified", "status"):
        del node[path[-1]]  # missing, not null
    else:
        node[path[-1]] = value
    return rec


HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYP
@given(brk=st.sampled_from(OSV_BREAKS), before=st.integers(0, 5), after=st.integers(0, 3),
       container=st.sampled_from(["list", "zip", "dir", "single"]))
def test_an_osv_record_failing_the_schema_refuses_the_feed_naming_it(
        brk: tuple[tuple[Any, ...], Any, str], before: int, after: int, container: str) -> None:
    path, value, field = brk
    bad_id = "CVE-2099-9999"
    bad = _break(osv(bad_id), path, value)
    good = [osv(f"CVE-2099-{i:04d}") for i in range(before)]
    tail = [osv(f"CVE-2098-{i:04d}") for i in range(after)]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        stored = stored_feed(tmp)
        if container == "list":
            src = tmp / "osv.json"
            src.write_text(json.dumps([*good, bad, *tail]))
            where = rf"{re.escape(str(src))}: record {before + 1}"
        elif container == "single":
            src = tmp / "osv.json"
            src.write_text(json.dumps(bad))
            where = rf"{re.escape(str(src))}: record"
        elif container == "zip":
            src = tmp / "Debian.zip"
            with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
                for r in good:
                    z.writestr(f"{r['id']}.json", json.dumps(r))
                z.writestr("zz-bad.json", json.dumps([bad]))
            where = rf"{re.escape(str(src))}: member zz-bad\.json: record 1"
        else:
            src = tmp / "osv-dir"
            (src / "sub").mkdir(parents=True)
            for r in good:
                (src / f"{r['id']}.json").write_text(json.dumps(r))
            (src / "sub" / "bad.json").write_text(json.dumps(bad))
            where = rf"{re.escape(str(src))}/sub/bad\.json: record"
        ident = rf" \({bad_id}\)" if isinstance(bad, dict) and bad.get("id") == bad_id else ""
        with pytest.raises(feeds.FeedError) as exc:
            feeds.update(stored.state, str(src), NAME)
        assert re.fullmatch(rf"{where}{ident}: {re.escape(field)}: .+", str(exc.value)), str(exc.value)
        stored.assert_in_force()


for _i, _b in enumerate(OSV_BREAKS):  # every break at least once, in every container over the list
    test_an_osv_record_failing_the_schema_refuses_the_feed_naming_it = example(
        brk=_b, before=_i % 3, after=1, container=["list", "zip", "dir", "single"][_i % 4])(
        test_an_osv_record_failing_the_schema_refuses_the_feed_naming_it)


@HYP
@given(brk=st.sampled_from(TRACKER_BREAKS), before=st.integers(0, 4))
def test_a_tracker_record_failing_the_schema_refuses_the_feed_naming_it(
        brk: tuple[tuple[Any, ...], Any, str], before: int) -> None:
    path, value, field = brk
    doc: dict[str, Any] = {f"pkg{i}": {f"CVE-2099-{i:04d}": tracker_cve()} for i in range(before)}
    doc["glibc"] = {"CVE-2099-0001": tracker_cve(), "CVE-2099-9999": _break(tracker_cve(), path, value)}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        stored = stored_feed(tmp)
        src = tmp / "tracker.json"
        src.write_text(json.dumps(doc))
        with pytest.raises(feeds.FeedError) as exc:
            feeds.update(stored.state, str(src), NAME)
        assert re.fullmatch(rf"{re.escape(str(src))} \(glibc/CVE-2099-9999\): {re.escape(field)}: .+",
                            str(exc.value)), str(exc.value)
        stored.assert_in_force()


for _b in TRACKER_BREAKS:
    test_a_tracker_record_failing_the_schema_refuses_the_feed_naming_it = example(brk=_b, before=1)(
        test_a_tracker_record_failing_the_schema_refuses_the_feed_naming_it)


@pytest.mark.parametrize("doc", ["[]", "{}", "[ ]"])
def test_a_feed_without_records_is_refused(doc: str, tmp_path: Path) -> None:
    stored = stored_feed(tmp_path)
    src = tmp_path / "empty.json"
    src.write_text(doc)
    with pytest.raises(feeds.FeedError, match=rf"^{re.escape(str(src))}: no vulnerability records in it$"):
        feeds.update(stored.state, str(src), NAME)
    stored.assert_in_force()


def test_valid_variants_are_accepted_with_exactly_their_rows(tmp_path: Path) -> None:
    """What real feeds contain and the schema must not reject: nulls for optional fields, extra fields,
    `releases: []`, a withdrawn record, another ecosystem, GIT ranges, a package-less affected entry."""
    records = [
        {**osv("CVE-2099-0001"), "aliases": None, "summary": None, "x-extra": {"deep": [1, 2]}},
        osv("CVE-2099-0002", withdrawn="2099-02-01T00:00:00Z"),
        osv("PYSEC-2099-1", eco="PyPI"),
        {"id": "CVE-2099-0003", "modified": "m", "affected": [
            {"ranges": [{"type": "GIT", "repo": "https://git.example/x", "events": [{"introduced": "abc"}]}]},
            {"package": {"ecosystem": "Ubuntu:22.04:LTS", "name": "openssl"}, "versions": ["3.0.2-0ubuntu1"],
             "ranges": None}]},
    ]
    src = tmp_path / "osv.json"
    src.write_text(json.dumps(records))
    meta = feeds.update(tmp_path / "state", str(src))
    assert (meta["format"], meta["entries"], meta["releases"]) == ("osv", 2, ["debian:12", "ubuntu:22.04"])
    _, index = feeds.load(tmp_path / "state", ["debian:12", "ubuntu:22.04"], ["glibc", "openssl"])
    assert [e["id"] for e in index["debian:12"]["glibc"]] == ["CVE-2099-0001"]
    assert index["ubuntu:22.04"]["openssl"][0]["versions"] == ["3.0.2-0ubuntu1"]

    tracker = tmp_path / "tracker.json"
    tracker.write_text(json.dumps({"glibc": {"CVE-2099-0004": {"releases": []},
                                             "CVE-2099-0005": {**tracker_cve(), "debianbug": 1234, "nodsa": "x"}}}))
    meta = feeds.update(tmp_path / "state", str(tracker))
    assert (meta["format"], meta["entries"], meta["releases"]) == ("debian-tracker", 1, ["debian:bookworm"])


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "modified", "affected", "package", "ranges", "events", "releases", "bookworm",
                         "status", "fixed_version", "glibc", "CVE-1", "versions", "type", "name", "ecosystem"])
        | st.text(max_size=8), inner, max_size=5),
    max_leaves=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_json | st.binary(max_size=200).map(lambda b: b"\x00" + b))
def test_any_input_is_accepted_or_refused_with_a_feed_error(doc: Any) -> None:
    """Arbitrary JSON (shaped from both formats' field names) and arbitrary bytes: `update` either stores
    a feed or raises FeedError naming the file; never another exception, never a half-stored feed."""
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        stored = stored_feed(tmp)
        src = tmp / "fuzz.json"
        src.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
        try:
            meta = feeds.update(stored.state, str(src), NAME)
        except feeds.FeedError as exc:
            assert re.match(rf"{re.escape(str(src))}( \(.+?\))?: .", str(exc)), str(exc)
            stored.assert_in_force()
        else:
            assert feeds.list_feeds(stored.state) == [meta]
