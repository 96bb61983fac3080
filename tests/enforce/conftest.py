"""A private network namespace for the nftables tests (needs root; CI runs as root)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest


@pytest.fixture
def netns() -> Iterator[str]:
    assert os.geteuid() == 0, "nft tests need root (CI runs them as root)"
    name = f"gwt-nft-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
