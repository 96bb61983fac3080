"""The agent's reconcile over a host that fails: the others are enforced, the failure is recorded
with the reconcile, and the reconcile raises so the agent retries it with backoff."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from guestward.enforce import Enforcer, NftRunner
from guestward.reconcile.agent import Agent, _Pending
from guestward.store.config import Config, HostConfig
from tests.enforce.conftest import netns  # noqa: F401  (the fixture)

pytestmark = pytest.mark.nft


def test_a_failing_host_is_recorded_and_retried_and_the_other_enforced(tmp_path: Path, netns: str) -> None:  # noqa: F811
    gone = f"gwt-gone-{os.getpid()}"
    a = Agent(Config(state_dir=tmp_path, hosts=[HostConfig(name="h1", uri="test:///default", netns=netns),
                                                HostConfig(name="h2", uri="test:///default", netns=gone)]))
    with pytest.raises(RuntimeError, match=f"h2: .*{gone}"):
        a._reconcile(_Pending(first_at=time.monotonic(), reasons=["test"]))
    _, missing = Enforcer(NftRunner(netns)).read()
    assert missing == []  # h1's tables are in place
    (e,) = a.controller.store.events("reconcile")
    assert e["commands"] == {"h1": e["commands"]["h1"]} and e["commands"]["h1"] > 0  # type: ignore[index]
    assert set(e["failed"]) == {"h2"}  # type: ignore[arg-type]
