"""Finding 6 end to end: an image whose /etc/hostname, os-release, passwd and authorized_keys carry
terminal escapes, rich markup and bidi overrides, inspected by the real `guestward inspect --image`
(colour forced, as on a terminal). The output shows every value's visible text escaped, no control
character from the image, no style from it; the finding that `[black on black]` tried to hide is
there with guestward's own style; `--json` keeps the exact values."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cli.hostile import SGR, shown, unsafe_chars
from tests.conftest import GUESTWARD
from tests.inspect.conftest import Planted, ed25519_line, mkfs

pytestmark = pytest.mark.inspect

HOSTNAME = "\x1b]0;pwned\x07web\x1b[8m01\u202e"
PRETTY = "[black on black]Debian[/] \x1b[2J:red_circle:"
EVIL_USER = "[/x]evil"                     # rich MarkupError before the fix
BIDI_USER = "adm\u202enimda\u200b"
KEY_COMMENT = "ops\x1b]8;;http://e.test\x1b\\[link=http://e.test]me[/link]\x9b31m"


def _inspect(img: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FORCE_COLOR": "1", "COLORTERM": "truecolor", "TERM": "xterm-256color", "COLUMNS": "100000"}
    return subprocess.run([str(GUESTWARD), "inspect", "--image", str(img), "--state-dir", str(state), "--no-store",
                           *extra], capture_output=True, text=True, timeout=600, check=False, env=env)


def test_image_text_is_shown_escaped_and_hides_no_finding(planted: Planted, tmp_path: Path) -> None:
    base = _inspect(mkfs(planted.root, tmp_path / "base.raw"), tmp_path / "s")
    assert base.returncode == 0, base.stderr
    files = {p: (planted.root / p).read_bytes() for p in
             ("etc/hostname", "etc/os-release", "etc/passwd", "root/.ssh/authorized_keys")}
    os_release = planted.root / "etc/os-release"
    was_link = os_release.is_symlink()
    link = os.readlink(os_release) if was_link else None
    try:
        (planted.root / "etc/hostname").write_text(HOSTNAME + "\n")
        os_release.unlink()
        os_release.write_bytes(files["etc/os-release"].replace(b'PRETTY_NAME="', f'PRETTY_NAME="{PRETTY}'.encode(), 1)
                               if b'PRETTY_NAME="' in files["etc/os-release"] else f'PRETTY_NAME="{PRETTY}"\n'.encode())
        with open(planted.root / "etc/passwd", "a") as f:
            f.write(f"{EVIL_USER}:x:0:0::/root:/bin/sh\n{BIDI_USER}:x:0:0::/root:/bin/sh\n")
        with open(planted.root / "root/.ssh/authorized_keys", "a") as f:
            f.write(ed25519_line(9, KEY_COMMENT) + "\n")
        img = mkfs(planted.root, tmp_path / "hostile.raw")
    finally:
        for p, data in files.items():
            target = planted.root / p
            target.unlink()
            if p == "etc/os-release" and was_link:
                assert link is not None
                target.symlink_to(link)
            else:
                target.write_bytes(data)
    r = _inspect(img, tmp_path / "s")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "MarkupError" not in r.stderr
    for stream, before in ((r.stdout, base.stdout), (r.stderr, base.stderr)):
        assert unsafe_chars(stream) == []
        assert set(SGR.findall(stream)) <= set(SGR.findall(before))  # no conceal, no black on black, no link
    bare = SGR.sub("", r.stdout)
    pretty_shown = next(ln for ln in bare.splitlines() if "hostname" in ln)
    assert shown(PRETTY) in pretty_shown and f"hostname {shown(HOSTNAME)}" in pretty_shown
    assert f"user {shown(EVIL_USER)} has uid 0" in bare and f"user {shown(BIDI_USER)} has uid 0" in bare
    critical = [ln for ln in r.stdout.splitlines() if shown(EVIL_USER) in ln and "extra-uid0" in ln]
    assert critical and all(SGR.findall(ln) for ln in critical)  # styled by guestward (bold red), not hidden
    j = _inspect(img, tmp_path / "s", "--json")
    inv = json.loads(j.stdout)["inventory"]
    assert inv["hostname"] == HOSTNAME and inv["os"]["pretty_name"].startswith(PRETTY)
    assert {EVIL_USER, BIDI_USER} <= {u["name"] for u in inv["users"]}
    comment = next(k["comment"] for k in inv["authorized_keys"] if k["comment"].startswith("ops\x1b"))
    assert "\x1b]8;;http://e.test" in comment and "[/link]\x9b31m" in comment  # (the key parser's reading of it)
    assert shown(comment) in bare
