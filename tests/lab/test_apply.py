"""`guestward apply` on the running lab: all or nothing (POLICY.md 2.4).

An invalid policy (one case per kind of error) is rejected with `file:line: message`, and the
enforced state stays byte-for-byte what it was on every host, while traffic keeps flowing as before.
A valid change is enforced, and taking it back restores the old verdicts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guestward.enforce import NftRunner
from guestward.lab.lab import Flow, Lab
from guestward.policy import parse_port
from tests.conftest import guestward
from tests.lab.conftest import POLICY

pytestmark = pytest.mark.lab

HEADER = "apiVersion: guestward.dev/v1\nkind: Policy\n"

# (kind of error, document text, line of the mistake, words the message must hold)
INVALID = [
    ("bad YAML", HEADER + "metadata: {name: broken\nspec:\n  tier: platform\n", 4, "flow mapping at line 3"),
    ("unknown field", HEADER + "metadata: {name: p1}\nspec:\n  tier: platform\n  rules:\n"
     "    - name: r1\n      action: allow\n      prots: [tcp/80]\n", 9, "unknown field 'prots'"),
    ("bad selector", HEADER + "metadata: {name: p2}\nspec:\n  tier: platform\n  rules:\n"
     "    - name: r1\n      action: allow\n      from:\n        guests:\n          matchExpressions:\n"
     "            - {key: zone, operator: Near, values: [web]}\n", 12, "operator"),
    ("bad port", HEADER + "metadata: {name: p3}\nspec:\n  tier: platform\n  rules:\n"
     "    - name: r1\n      action: allow\n      ports:\n        - tcp/80\n        - tcp/99999\n",
     11, "tcp/99999"),
    ("unknown tier", HEADER + "metadata: {name: p4}\nspec:\n  tier: platinum\n", 5, "tier"),
    ("duplicate names", HEADER + "metadata: {name: shop}\nspec:\n  tier: platform\n---\n"
     + HEADER + "metadata: {name: shop}\nspec:\n  tier: baseline\n", 7, "duplicate policy name 'shop'"),
]

STEADY = [Flow("lb1", "web1", parse_port("tcp/443")), Flow("web1", "db1", parse_port("tcp/5432")),
          Flow("web2", "db1", parse_port("tcp/5432")), Flow("external", "lb1", parse_port("icmp"))]
STEADY_VERDICTS = [True, True, False, True]


def enforced(lab: Lab) -> dict[str, str]:
    """Our tables, as nft prints them, on every host."""
    return {h: NftRunner(f"gwl-{h}").text() for h in lab.scenario().hosts}


@pytest.mark.parametrize(("kind", "text", "line", "words"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_policy_is_rejected_and_nothing_changes(
        lab: Lab, tmp_path: Path, kind: str, text: str, line: int, words: str) -> None:
    before_tables, before_list = enforced(lab), guestward("policies").stdout
    assert all("table bridge guestward" in t and "table inet guestward" in t for t in before_tables.values())
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    r = guestward("apply", "-f", str(bad))
    assert r.returncode == 2, r.stdout
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"{bad}:{line}: "), r.stderr
    assert words in first, r.stderr
    assert enforced(lab) == before_tables
    assert guestward("policies").stdout == before_list
    results = lab.probe(STEADY)
    assert [results[f] for f in STEADY] == STEADY_VERDICTS


def test_invalid_file_in_a_directory_rejects_the_whole_directory(lab: Lab, tmp_path: Path) -> None:
    before = enforced(lab)
    (tmp_path / "a-good.yaml").write_text(HEADER + "metadata: {name: extra}\nspec:\n  tier: baseline\n  rules:\n"
                                          "    - {name: all, action: allow}\n")
    (tmp_path / "b-bad.yaml").write_text(INVALID[3][1])
    r = guestward("apply", "-f", str(tmp_path))
    assert r.returncode == 2 and f"{tmp_path / 'b-bad.yaml'}:11:" in r.stderr
    assert enforced(lab) == before
    assert "extra" not in guestward("policies").stdout


def test_valid_change_is_enforced_and_can_be_taken_back(lab: Lab, tmp_path: Path) -> None:
    flow = Flow("web2", "db1", parse_port("tcp/5432"))
    assert lab.probe([flow]) == {flow: False}
    change = tmp_path / "maintenance.yaml"
    change.write_text(HEADER + "metadata: {name: dev-db-maintenance}\nspec:\n  tier: platform\n  order: 5\n"
                      "  rules:\n    - name: dev-web-to-db\n      action: allow\n"
                      "      from: {guests: {zone: web, env: dev}}\n      to: {guests: {zone: db}}\n"
                      "      ports: [tcp/5432]\n")
    before = enforced(lab)
    r = guestward("apply", "-f", str(change))
    assert r.returncode == 0, r.stderr
    try:
        assert enforced(lab) != before
        assert lab.probe([flow]) == {flow: True}
        ex = guestward("explain", "web2", "db1", "tcp/5432")
        assert ex.returncode == 0 and "policy: dev-db-maintenance" in ex.stdout
        # Idempotent: applying the same file again changes nothing in the kernel.
        after = enforced(lab)
        again = guestward("apply", "-f", str(change))
        assert again.returncode == 0 and enforced(lab) == after
    finally:
        r = guestward("apply", "--replace", "-f", str(POLICY))
        assert r.returncode == 0, r.stderr
    assert enforced(lab) == before
    assert lab.probe([flow]) == {flow: False}
