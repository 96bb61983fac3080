"""Inventory of real Debian images equals the ground truth read from the root tree, in every layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guestward.inspect.chain import image_chain
from guestward.inspect.findings import config_findings
from guestward.inspect.runner import inspect_chains
from tests.inspect.conftest import (
    CRON_FILE,
    HIDDEN_SHELL,
    KERNEL,
    PLANTED_KEY_COMMENT,
    Images,
    Planted,
    ground_truth_packages,
    ground_truth_setuid,
)

pytestmark = pytest.mark.inspect

LAYOUTS = {"raw": ("raw", "raw"), "qcow2": ("qcow2", "qcow2"), "overlay-absolute-backing": ("overlay", "qcow2"),
           "gpt": ("gpt", "raw"), "mbr": ("mbr", "raw")}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def inspected(request: pytest.FixtureRequest, images: Images) -> tuple[str, dict[str, Any]]:
    attr, fmt = LAYOUTS[request.param]
    path: Path = getattr(images, attr)
    chain = image_chain(str(path), fmt)
    if request.param == "overlay-absolute-backing":
        assert [la.path for la in chain.layers] == [str(images.overlay.resolve()), str(images.qcow2.resolve())]
    return request.param, inspect_chains([chain])


def test_packages_equal_dpkg_query(inspected: tuple[str, dict[str, Any]], planted: Planted) -> None:
    _, inv = inspected
    got = {(p["name"], p["version"], p["source"], p["source_version"]) for p in inv["packages"]}
    truth = ground_truth_packages(planted.root)
    assert got == truth
    assert any(src != name for name, _, src, _ in truth), "some binary package has a differently named source"
    assert not inv["partial"], inv["errors"]


def test_os_users_keys_sshd_cron_services(inspected: tuple[str, dict[str, Any]], planted: Planted) -> None:
    _, inv = inspected
    osr = (planted.root / "etc/os-release").read_text()
    assert inv["os"]["id"] == "debian" and inv["os"]["version_id"] == "12" and inv["os"]["codename"] == "bookworm"
    assert 'VERSION_CODENAME=bookworm' in osr
    assert inv["hostname"] == "inspect-guest-01"
    assert inv["kernels"] == [{"version": KERNEL, "found": "boot"}]
    names = [line.split(":")[0] for line in (planted.root / "etc/passwd").read_text().splitlines() if line]
    assert [u["name"] for u in inv["users"]] == names
    users = {u["name"]: u for u in inv["users"]}
    assert users["toor"]["uid"] == 0 and users["guest"]["password"] == "empty" and users["root"]["login_shell"]
    assert users["daemon"]["login_shell"] is False
    keys = [k for k in inv["authorized_keys"] if k["comment"] == PLANTED_KEY_COMMENT]
    assert len(keys) == 2  # root and toor share /root
    assert {k["user"] for k in keys} == {"root", "toor"} and keys[0]["fingerprint"].startswith("SHA256:")
    assert inv["sshd"]["effective"]["permitrootlogin"] == "yes"
    assert inv["sshd"]["effective"]["kbdinteractiveauthentication"] == "no"  # Debian's explicit setting
    assert any(c["file"] == CRON_FILE and c["user"] == "root" and c["schedule"] == "*/5 * * * *" and c["writable"]
               for c in inv["cron"])
    units = {s["unit"] for s in inv["services"]}
    assert {"ssh.service", "cron.service"} <= units
    wants = {p.name for p in (planted.root / "etc/systemd/system/multi-user.target.wants").iterdir()}
    assert wants <= units


def test_setuid_walk_equals_find(inspected: tuple[str, dict[str, Any]], planted: Planted) -> None:
    _, inv = inspected
    assert {s["path"] for s in inv["setuid"]} == ground_truth_setuid(planted.root)
    by_path = {s["path"]: s for s in inv["setuid"]}
    assert by_path[HIDDEN_SHELL]["packaged"] is False and by_path[HIDDEN_SHELL]["setuid"]
    assert by_path["/usr/bin/passwd"]["packaged"] is True  # dpkg lists it as /usr/bin/passwd or /bin/passwd
    assert inv["walk"]["inodes"] > 5000


def test_generic_walk_finds_the_same(images: Images) -> None:
    """The walk used for non-ext filesystems (XFS, btrfs) gives the ext walk's result."""
    from guestward.inspect.runner import run_worker
    job = {"chains": [image_chain(str(images.raw)).to_json()]}
    ext = run_worker(job)["result"]
    generic = run_worker({**job, "walk": "generic"})["result"]
    assert generic["setuid"] == ext["setuid"] and generic["walk"]["inodes"] == ext["walk"]["inodes"]


def test_every_planted_finding_reported(inspected: tuple[str, dict[str, Any]]) -> None:
    _, inv = inspected
    found = {(f["id"], f["title"]) for f in config_findings(inv)}
    ids = {i for i, _ in found}
    assert {"ssh-root-login", "extra-uid0", "root-authorized-key", "writable-cron", "unpackaged-setuid",
            "empty-password"} <= ids
    assert ("unpackaged-setuid", f"setuid file {HIDDEN_SHELL} belongs to no package") in found
    assert ("extra-uid0", "user toor has uid 0") in found
    assert ("writable-cron", f"cron file {CRON_FILE} is writable by non-root") in found
    # nothing packaged is reported as unpackaged
    assert [t for i, t in found if i == "unpackaged-setuid"] == [f"setuid file {HIDDEN_SHELL} belongs to no package"]


def test_only_the_chain_is_opened(inspected: tuple[str, dict[str, Any]], images: Images) -> None:
    layout, inv = inspected
    attr, _ = LAYOUTS[layout]
    allowed = {str(getattr(images, attr).resolve())}
    if layout == "overlay-absolute-backing":
        allowed.add(str(images.qcow2.resolve()))
    outside = [p for p in inv["opened"] if not p.startswith(("/usr/lib/python3", "/work/", str(Path.cwd())))
               and "/site-packages/" not in p and not p.startswith("/usr/share/zoneinfo")]
    assert set(outside) == allowed
