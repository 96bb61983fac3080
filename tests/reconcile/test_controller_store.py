"""The controller and the store: whatever `apply` accepts, however it was written, the installed
policies, a flow's verdict, the hook's snapshot compile and a later `apply --replace` all still work;
a refused change (empty --replace, a delete naming an unknown policy) changes nothing; a store of
the earlier layout poisoned by a `%TAG` slice can still be repaired by delete or --replace.

No nft here (the controller enforces only on a host named `elsewhere`): tests/cli has the real one."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestward.compile import Endpoint, decide
from guestward.model import Guest, Interface, Labels
from guestward.policy import PolicyError, parse_policies
from guestward.reconcile.controller import Controller
from guestward.reconcile.hook import snapshot_plan
from guestward.store.config import Config, HostConfig
from guestward.store.sqlite import StoredPolicy
from tests.policy.hostile import hostile_file

PLAIN = "apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {name: plain}\nspec: {tier: baseline}\n"
TAGGED = ("%TAG !g! tag:yaml.org,2002:\n---\napiVersion: !g!str guestward.dev/v1\nkind: Policy\n"
          "metadata: {name: tagged}\nspec: {tier: !g!str application, rules: [{name: r, action: allow}]}\n")


def controller(tmp_path: Path) -> Controller:
    cfg = Config(state_dir=tmp_path / "state", hosts=[HostConfig(
        name="hv1", uri=f"qemu+unix:///system?socket={tmp_path}/no-libvirtd")])
    ctl = Controller(cfg, only_hosts=["elsewhere"])
    web = Guest("web", "u1", "hv1", Labels({"zone": "web"}),
                (Interface.of("52:54:00:00:00:01", "vnet1", ["10.0.0.1"]),))
    db = Guest("db", "u2", "hv1", Labels({"zone": "db", "env": "prod"}),
               (Interface.of("52:54:00:00:00:02", "vnet2", ["10.0.0.2"]),))
    ctl.store.put_guests([web, db], ctl.store.tick())
    return ctl


def state(ctl: Controller) -> tuple[list[StoredPolicy], int]:
    return ctl.store.policies(), ctl.store.revision()


def works(ctl: Controller) -> None:
    """Everything that reads the installed policies still works."""
    policies = ctl.policies()
    guests = ctl.store.guests()
    snapshot_plan(ctl.config, ctl.store, guests, "hv1")  # what the hook compiles at a guest's start
    a, b = (Endpoint(g.addresses[0], g.labels, g.name) for g in guests)
    decide(policies, a, b, "tcp", 443)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_whatever_apply_accepts_leaves_everything_working(tmp_path_factory: pytest.TempPathFactory,
                                                          data: st.DataObject) -> None:
    ctl = controller(tmp_path_factory.mktemp("ctl"))
    names = data.draw(st.lists(st.sampled_from(["a", "b.c", "d-e"]), min_size=1, max_size=3, unique=True))
    text, _ = data.draw(hostile_file(names))
    report = ctl.apply([("weird [/x] name.yaml", text)])
    assert report.policies == sorted(names)
    assert ctl.policies() == sorted(parse_policies([("weird [/x] name.yaml", text)]), key=lambda p: p.name)
    works(ctl)
    ctl.apply([("p.yaml", PLAIN)], replace_all=True)
    assert [p.name for p in ctl.policies()] == ["plain"]
    works(ctl)


def test_an_empty_replace_is_refused_unless_meant(tmp_path: Path) -> None:
    ctl = controller(tmp_path)
    ctl.apply([("t.yaml", TAGGED), ("p.yaml", PLAIN)])
    before = state(ctl)
    for text in ("", "# only a comment\n", "---\n...\n---\n", "\ufeff\n"):
        with pytest.raises(PolicyError) as exc:
            ctl.apply([("empty.yaml", text)], replace_all=True)
        assert [str(d) for d in exc.value.diagnostics] == [
            "empty.yaml:1: no policy documents: `apply --replace` would remove every installed policy "
            "(--allow-empty to mean it)"]
        with pytest.raises(PolicyError, match=r"^empty\.yaml:1: no policy documents: nothing to apply$"):
            ctl.apply([("empty.yaml", text)])
        assert state(ctl) == before
    ctl.apply([("empty.yaml", "")], replace_all=True, allow_empty=True)
    assert ctl.policies() == []


def test_delete_is_all_or_nothing(tmp_path: Path) -> None:
    ctl = controller(tmp_path)
    ctl.apply([("t.yaml", TAGGED), ("p.yaml", PLAIN)])
    before = state(ctl)
    for names in (["nope"], ["plain", "nope"], ["tagged", "plain", "zz", "aa"]):
        with pytest.raises(KeyError) as exc:
            ctl.delete(names)
        assert exc.value.args[0] == sorted(set(names) - {"plain", "tagged"})
        assert state(ctl) == before
    ctl.delete(["tagged"])
    assert [p.name for p in ctl.policies()] == ["plain"]
    assert ctl.store.events(kind="delete")[0]["subject"] == "tagged"
    works(ctl)


def test_a_store_poisoned_by_the_earlier_layout_can_be_repaired(tmp_path: Path) -> None:
    ctl = controller(tmp_path)
    ctl.apply([("p.yaml", PLAIN)])
    # what the earlier store kept of TAGGED: the document's slice, without its %TAG line
    ctl.store.put_policies([StoredPolicy("tagged", "t.yaml", 2, TAGGED.split("\n", 1)[1])])
    with pytest.raises(PolicyError) as exc:
        ctl.policies()
    assert [d.file for d in exc.value.diagnostics] == ["t.yaml"]
    assert "undefined tag handle" in str(exc.value)
    ctl.apply([("t.yaml", TAGGED)])  # a new version replaces the broken one: only the others are parsed
    works(ctl)
    ctl.store.put_policies([StoredPolicy("tagged", "t.yaml", 2, TAGGED.split("\n", 1)[1])])
    ctl.delete(["tagged"])  # and it can be deleted
    works(ctl)
    ctl.store.put_policies([StoredPolicy("tagged", "t.yaml", 2, TAGGED.split("\n", 1)[1])])
    ctl.apply([("p.yaml", PLAIN)], replace_all=True)  # or replaced with everything else
    assert [p.name for p in ctl.policies()] == ["plain"]
