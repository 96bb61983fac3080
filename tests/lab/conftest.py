"""The real lab, brought up once for the lab tests: two namespaced libvirtd hosts, six TCG guests,
the example policy (examples/lab/). Needs root, libvirt and QEMU; CI runs as root."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from guestward.lab.lab import Lab
from tests.conftest import ROOT, guestward

SCENARIO = ROOT / "examples" / "lab" / "scenario.yaml"
POLICY = ROOT / "examples" / "lab" / "policy.yaml"


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    assert os.geteuid() == 0, "the lab tests need root (CI runs them as root)"
    guestward("lab", "down")
    up = guestward("lab", "up", "-f", str(SCENARIO), "--policy", str(POLICY), timeout=900)
    assert up.returncode == 0, f"lab up failed:\n{up.stdout}\n{up.stderr}"
    try:
        yield Lab()
    finally:
        down = guestward("lab", "down")
        assert down.returncode == 0, down.stderr
