"""Shared test helpers: the repository root and the `guestward` command of the venv under test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUESTWARD = Path(sys.executable).parent / "guestward"


def guestward(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real `guestward` command; return its exit status and output (never raises on status)."""
    return subprocess.run([str(GUESTWARD), *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
