"""`guestward apply`, `policies`, `explain`, `delete` against real nftables in a host netns (no
libvirtd: the controller keeps the stored snapshot for a host it cannot reach):

- whatever `apply` accepts (directives, tags, anchors, CRLF, file names with markup or control
  characters) leaves `policies`, `explain`, the hook's snapshot compile and `apply --replace` working;
- a refused change (empty --replace, a delete naming an unknown policy) changes neither the store nor
  the tables;
- two applies at once serialise: both land, and the tables hold the plan of the final store;
- `apply` waits for the writer lock."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestward.reconcile.controller import Controller
from guestward.store.config import Config, HostConfig, load_config, save_config
from guestward.store.lock import writer_lock
from guestward.store.sqlite import StoredPolicy
from tests.conftest import GUESTWARD, guestward
from tests.enforce.test_enforcer import guest
from tests.policy.hostile import hostile_file

pytestmark = pytest.mark.nft
HOST = f"gwps-{os.getpid()}"
PLAIN = ("apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {name: plain}\nspec:\n  tier: application\n"
         "  rules: [{name: web-in, action: allow, to: {guests: {zone: web}}, ports: [tcp/443]}]\n")


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


def policy(name: str, port: int) -> str:
    return (f"apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n  tier: platform\n"
            f"  rules: [{{name: r, action: allow, to: {{guests: {{zone: db}}}}, ports: [tcp/{port}]}}]\n")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    assert os.geteuid() == 0, "nft tests need root (CI runs them as root)"
    tmp = tmp_path_factory.mktemp("policycmd")
    ip("netns", "add", HOST)
    try:
        ip("-n", HOST, "link", "add", "br0", "type", "bridge")
        ip("-n", HOST, "link", "set", "br0", "up")
        for i in (1, 2):
            ip("-n", HOST, "link", "add", f"gwt-g{i}", "type", "veth", "peer", "name", f"gwt-p{i}")
            ip("-n", HOST, "link", "set", f"gwt-g{i}", "master", "br0", "up")
        cfg = Config(state_dir=tmp / "state", hosts=[HostConfig(
            name="hv1", uri=f"qemu+unix:///system?socket={tmp}/no-libvirtd", netns=HOST, uplinks=["uplink0"])])
        ctl = Controller(cfg)
        ctl.store.put_guests([replace(guest(1, "web"), active=True), replace(guest(2, "db"), active=True)],
                             ctl.store.tick())
        ctl.enforce_snapshot("hv1")
        save_config(cfg, tmp / "config.yaml")
        yield tmp / "config.yaml"
    finally:
        subprocess.run(["ip", "netns", "del", HOST], check=False)


def ctl_of(config: Path) -> Controller:
    return Controller(load_config(str(config)))


def tables(config: Path) -> str:
    out = subprocess.run(["ip", "netns", "exec", HOST, "nft", "list", "ruleset"], capture_output=True, text=True,
                         check=True).stdout
    return re.sub(r"counter packets \d+ bytes \d+", "counter", out)  # what a packet moves is not state


def in_sync(config: Path) -> bool:
    """The tables hold exactly the plan the hook would compile from the stored snapshot and policies."""
    return ctl_of(config).enforce_snapshot("hv1") == 0


def path_of(root: Path, name: str) -> Path:
    parts = [p for p in name.split("/") if p not in ("", ".", "..")] or ["x"]
    f = root.joinpath(*parts[:-1], parts[-1] + ".yaml")
    f.parent.mkdir(parents=True, exist_ok=True)
    return f


FILE_NAMES = st.one_of(st.sampled_from(["[/x]", "[red]", "[bold]x[/bold]", "a\nb", "tab\there", "é ü", "%TAG",
                                        "-leading"]),
                       st.text(st.sampled_from("[]/\\ abc:é\n\x1b%!&*"), min_size=1, max_size=12))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_whatever_apply_accepts_every_command_still_works(config: Path, tmp_path_factory: pytest.TempPathFactory,
                                                          data: st.DataObject) -> None:
    root = tmp_path_factory.mktemp("files")
    names = data.draw(st.lists(st.sampled_from(["a", "b.c", "d-e"]), min_size=1, max_size=2, unique=True))
    text, _ = data.draw(hostile_file(names))
    f = path_of(root, data.draw(FILE_NAMES))
    f.write_text(text, newline="")
    r = guestward("apply", "-f", str(root), "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert in_sync(config)  # the hook's snapshot compile: real nft agrees with it
    r = guestward("policies", "--config", str(config))
    assert r.returncode == 0 and all(n in r.stdout for n in names), r.stderr
    r = guestward("explain", "g1", "g2", "tcp/443", "--config", str(config))
    assert r.returncode in (0, 1) and r.stdout.startswith("g1 -> g2 tcp/443: "), r.stderr
    replace = root / "replace"
    replace.mkdir()
    (replace / "p.yaml").write_text(PLAIN)
    r = guestward("apply", "--replace", "-f", str(replace), "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert [p.name for p in ctl_of(config).policies()] == ["plain"]
    assert in_sync(config)
    r = guestward("explain", "g2", "g1", "tcp/443", "--config", str(config))
    assert (r.returncode, r.stdout.splitlines()[-1]) == (0, "  rule: web-in"), r.stdout + r.stderr


def test_refused_changes_change_neither_store_nor_tables(config: Path, tmp_path: Path) -> None:
    assert guestward("apply", "--replace", "-f", _write(tmp_path / "p.yaml", PLAIN),
                     "--config", str(config)).returncode == 0
    before = (ctl_of(config).store.policies(), ctl_of(config).store.revision(), tables(config))
    empty = _write(tmp_path / "empty.yaml", "# nothing\n")
    r = guestward("apply", "--replace", "-f", empty, "--config", str(config))
    assert r.returncode == 2
    assert f"{empty}:1: no policy documents: `apply --replace` would remove every installed policy" in r.stderr
    r = guestward("delete", "plain", "nope", "--config", str(config))
    assert r.returncode == 2 and "no installed policy named nope; nothing was deleted" in r.stderr
    assert (ctl_of(config).store.policies(), ctl_of(config).store.revision(), tables(config)) == before
    r = guestward("delete", "Policy/plain", "--config", str(config))
    assert r.returncode == 0 and r.stdout.startswith("deleted 1 policies (plain)"), r.stderr
    assert ctl_of(config).policies() == [] and in_sync(config) and tables(config) != before[2]
    r = guestward("apply", "--replace", "--allow-empty", "-f", empty, "--config", str(config))
    assert r.returncode == 0, r.stderr


def _write(f: Path, text: str) -> str:
    f.write_text(text)
    return str(f)


def test_two_applies_at_once_both_land_and_the_tables_hold_the_final_store(config: Path, tmp_path: Path) -> None:
    assert guestward("apply", "--replace", "-f", _write(tmp_path / "p.yaml", PLAIN),
                     "--config", str(config)).returncode == 0
    expected = {"plain"}
    for round_ in range(3):
        files = [_write(tmp_path / f"c{round_}{k}.yaml", policy(f"c{round_}{k}", 1000 + 10 * round_ + k))
                 for k in range(2)]
        revision = ctl_of(config).store.revision()
        procs = [subprocess.Popen([str(GUESTWARD), "apply", "-f", f, "--config", str(config)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in files]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        expected |= {f"c{round_}0", f"c{round_}1"}
        ctl = ctl_of(config)
        assert {p.name for p in ctl.policies()} == expected
        assert ctl.store.revision() == revision + 2
        assert in_sync(config)  # the later apply enforced a plan that had the earlier one's policy
        ruleset = tables(config)
        assert all(f"dport {1000 + 10 * round_ + k}" in ruleset for k in range(2)), ruleset


def test_apply_waits_for_the_writer_lock(config: Path, tmp_path: Path) -> None:
    f = _write(tmp_path / "w.yaml", policy("waited", 2222))
    state_dir = load_config(str(config)).state_dir
    with writer_lock(state_dir):
        proc = subprocess.Popen([str(GUESTWARD), "apply", "-f", f, "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert proc.poll() is None  # still waiting
        assert "waited" not in {p.name for p in ctl_of(config).policies()}
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "waited" in {p.name for p in ctl_of(config).policies()} and in_sync(config)


def test_a_poisoned_store_of_the_earlier_layout_is_reported_and_repaired(config: Path) -> None:
    tagged = ("%TAG !g! tag:yaml.org,2002:\n---\napiVersion: !g!str guestward.dev/v1\nkind: Policy\n"
              "metadata: {name: tagged}\nspec: {tier: baseline}\n")
    ctl_of(config).store.put_policies([StoredPolicy("tagged", "t.yaml", 2, tagged.split("\n", 1)[1])])
    for args in (["policies"], ["explain", "g1", "g2", "tcp/443"]):
        r = guestward(*args, "--config", str(config))
        assert r.returncode == 2, r.stdout
        assert "\nt.yaml:3: invalid YAML: found undefined tag handle\n" in "\n" + r.stderr, r.stderr
        assert "`guestward delete` the broken one" in r.stderr
    r = guestward("delete", "tagged", "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert guestward("policies", "--config", str(config)).returncode == 0
    assert in_sync(config)
