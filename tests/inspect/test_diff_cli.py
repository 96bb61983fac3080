"""`guestward inspect --diff`: a second inspection of the same image reports the new key, setuid file,
package-less finding; the table output names the findings; errors exit 2 with one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import guestward
from tests.inspect.conftest import Planted, ed25519_line, mkfs

pytestmark = pytest.mark.inspect


def test_diff_against_previous_inspection(planted: Planted, tmp_path: Path) -> None:
    state = tmp_path / "state"
    img = tmp_path / "guest.raw"
    mkfs(planted.root, img)
    r = guestward("inspect", "--image", str(img), "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert "ssh-root-login" in r.stdout and "extra-uid0" in r.stdout and "unpackaged-setuid" in r.stdout
    # the guest changes: a new key for root, a new setuid binary
    keys = planted.root / "root/.ssh/authorized_keys"
    old_keys = keys.read_text()
    new_suid = planted.root / "usr/local/bin/helper"
    try:
        keys.write_text(old_keys + ed25519_line(99, "second@attacker") + "\n")
        shutil.copy(planted.root / "usr/bin/dash", new_suid)
        os.chmod(new_suid, 0o4755)
        mkfs(planted.root, img)
    finally:
        keys.write_text(old_keys)
        new_suid.unlink(missing_ok=True)
    r = guestward("inspect", "--image", str(img), "--state-dir", str(state), "--diff", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)["diff"]
    assert d["since"] is not None and d["removed"] == {}
    assert [k.split()[0] for k in d["added"]["authorized_keys"]] == ["root", "toor"]
    assert d["added"]["setuid"] == ["/usr/local/bin/helper 0o4755"]
    added = d["added"]["findings"]
    assert [f.split(" (")[0] for f in added] == [
        "root-authorized-key: an SSH key logs in as root", "root-authorized-key: an SSH key logs in as toor",
        "unpackaged-setuid: setuid file /usr/local/bin/helper belongs to no package"]
    assert all("second@attacker" in f for f in added[:2])
    assert set(d["added"]) == {"authorized_keys", "setuid", "findings"}


def test_cli_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    r = guestward("inspect", "--image", str(tmp_path / "missing.img"), "--state-dir", str(tmp_path))
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    r = guestward("inspect", "--image", str(junk), "--state-dir", str(tmp_path))
    assert r.returncode == 2 and "no readable filesystem" in r.stderr
    r = guestward("inspect", "--image", str(junk), "--format", "qcow2", "--state-dir", str(tmp_path))
    assert r.returncode == 2 and "no qcow2 header" in r.stderr
    r = guestward("inspect", "--image", str(junk), "--format", "vmdk", "--state-dir", str(tmp_path))
    assert r.returncode == 2 and "not supported" in r.stderr
