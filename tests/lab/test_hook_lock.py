"""The libvirt hook with the enforcement lock held by someone else (a stuck `guestward apply`, say):
it still unbinds a guest that stops, and it fails a start it cannot enforce; once the lock is free
the lab's flows are right again. Real libvirtd, real TCG guests, real packets."""

from __future__ import annotations

import time

import pytest

from guestward.enforce import Enforcer, NftRunner
from guestward.hypervisor import domains
from guestward.hypervisor.domains import HypervisorError
from guestward.lab.lab import Lab
from guestward.store.lock import enforcement_lock
from tests.lab.lifecycle_helpers import assert_matrix
from tests.lab.test_lifecycle import bridge_table, events

pytestmark = pytest.mark.lab


def dispatched(host: str) -> set[str]:
    """The addresses hv's inet table gives an identity to (its `eg4`/`in4` maps)."""
    objects, _ = Enforcer(NftRunner(f"gwl-{host}")).read()
    return {str(k) for name in ("eg4", "in4") for k in objects.elements.get(("inet", name), {})}


def recent(kind: str, since: float) -> list[dict[str, object]]:
    return [e for e in events(kind) if float(e["at"]) >= since]  # type: ignore[arg-type]


def test_with_the_lock_held_a_stop_still_unbinds_and_a_start_fails(lab: Lab) -> None:
    spec = lab.scenario().guest("web2")
    uri, address = lab.uri("hv2"), str(spec.address)
    assert spec.tap in bridge_table("hv2")
    since = time.time()
    try:
        _stop_and_start_with_the_lock_held(lab, spec.tap, spec.mac, address, uri, since)
    finally:  # whatever failed, the lab's other tests get web2 back running
        if not domains.is_active(uri, "web2"):
            lab.start("web2")
    assert assert_matrix(lab, step="lock released, web2 started again") == 108


def _stop_and_start_with_the_lock_held(lab: Lab, tap: str, mac: str, address: str, uri: str, since: float) -> None:
    with enforcement_lock(lab.dir / "state"):  # held for the whole stop and start below
        start = time.monotonic()
        domains.destroy(uri, "web2")  # `stopped` and `release` each wait out the lock (10 s)
        stopped_in = time.monotonic() - start
        table = bridge_table("hv2")
        # nothing of web2 is left in hv2's bridge table: not its tap, nor its MAC, nor its address
        assert tap not in table and mac not in table and address not in table, (
            f"{table}\n{recent('hook', since)}\n{recent('hook-error', since)}\n{recent('drift', since)}")
        assert address not in dispatched("hv2")
        start = time.monotonic()
        with pytest.raises(HypervisorError, match="hook"):
            domains.start(uri, "web2")  # `prepare` cannot enforce: libvirt aborts the start
        failed_in = time.monotonic() - start
        assert not domains.is_active(uri, "web2")
        table = bridge_table("hv2")
        assert tap not in table and mac not in table and address not in table, table
        # and no one reaches its address (its tap is gone; nothing else may carry it)
        assert lab.exec("lb1", [f"ping -c 1 -W 1 {address} >/dev/null"]).status != 0
    errors = [e for e in events("hook-error") if float(e["at"]) >= since]  # type: ignore[arg-type]
    assert {str(e["op"]) for e in errors} >= {"stopped/end", "prepare/begin"}, errors
    assert all("lock busy" in str(e["error"]) for e in errors), errors
    print(f"stop with the lock held: {stopped_in:.1f} s; start refused after {failed_in:.1f} s")
