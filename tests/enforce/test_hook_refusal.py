"""The hook and refused guests, against real nftables in a private network namespace.

A guest refused for its data (hostile tap name, malformed metadata) may start: it is bound nowhere,
so it gets no traffic, and the refusal is recorded. A guest with a vNIC that bypasses the bridge
cannot be held to "no traffic" there: the hook does not let it start, unless the operator allows its
UUID in the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestward.enforce import Enforcer, NftRunner
from guestward.hypervisor.domain_xml import metadata_xml
from guestward.reconcile import hook
from guestward.store.config import Config, HostConfig
from guestward.store.sqlite import Store
from tests.enforce.conftest import netns  # noqa: F401  (the fixture)

pytestmark = pytest.mark.nft

UUID = "11111111-2222-3333-4444-555555555555"


def xml(nic: str, name: str = "g", uuid: str = UUID, labels: dict[str, str] | None = None) -> str:
    meta = metadata_xml(labels if labels is not None else {"zone": "web"}, [("52:54:00:00:00:01", "10.0.0.1")])
    return (f"<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid><metadata>{meta}</metadata>"
            f"<devices>{nic}</devices></domain>")


GOOD = "<interface type='bridge'><mac address='52:54:00:00:00:01'/><target dev='tap-good'/></interface>"
DIRECT = "<interface type='direct'><mac address='52:54:00:00:00:01'/><source dev='eth0' mode='vepa'/></interface>"
HOSTDEV = ("<interface type='hostdev'><mac address='52:54:00:00:00:01'/><source><address type='pci' domain='0' "
           "bus='2' slot='7' function='0'/></source></interface>")
VHOST = ("<interface type='vhostuser'><mac address='52:54:00:00:00:01'/><source type='unix' path='/tmp/v' "
         "mode='client'/></interface>")


def config(tmp_path: Path, allowed: list[str] | None = None) -> Config:
    return Config(state_dir=tmp_path, hosts=[HostConfig(name="h1", uri="test:///default")],
                  bypass_allowed=allowed or [])


def bound(ns: str) -> set[str]:
    objects, missing = Enforcer(NftRunner(ns)).read()
    return set() if missing else objects.bound_ports()


@pytest.fixture
def seeded(tmp_path: Path) -> Store:
    store = Store(tmp_path / "guestward.db")
    store.put_guests([], store.tick())  # what a first `guestward sync` leaves
    return store


@pytest.mark.parametrize("nic", [DIRECT, HOSTDEV, VHOST])
def test_a_bypassing_vnic_stops_the_start_unless_its_uuid_is_allowed(
        tmp_path: Path, netns: str, seeded: Store, nic: str) -> None:  # noqa: F811
    runner = NftRunner(netns)
    for op in ("prepare", "migrate", "restore"):
        assert hook.run(config(tmp_path), "h1", op, "begin", xml(GOOD + nic), runner) == 1
    assert str(seeded.events("refused")[0]["reason"]).count("bypasses the bridge") == 1
    assert not seeded.guests()  # it never joined the snapshot
    assert hook.run(config(tmp_path), "h1", "started", "begin", xml(GOOD + nic), runner) == 0  # too late to abort
    # allowed by the operator (not by anything in the XML): it starts, its bridged vNIC bound as usual
    # (the refused guest, started anyway, is bound nowhere but still holds its tap name: another tap)
    other = xml(GOOD.replace("tap-good", "tap-ok") + nic, name="ok", uuid="99999999-2222-3333-4444-555555555555")
    cfg = config(tmp_path, ["99999999-2222-3333-4444-555555555555"])
    assert hook.run(cfg, "h1", "prepare", "begin", other, runner) == 0
    assert bound(netns) == {"tap-ok"}


@pytest.mark.parametrize("nic,labels,reason", [
    ("<interface type='bridge'><mac address='52:54:00:00:00:01'/><target dev='@x'/></interface>", None,
     "port name '@x'"),
    ("<interface type='bridge'><mac address='52:54:00:00:00:01'/><target dev='a*'/></interface>", None,
     "port name 'a*'"),
    (GOOD, {"zone": "db!"}, "malformed guestward metadata: invalid label value 'db!'"),
])
def test_a_guest_refused_for_its_data_starts_with_no_traffic_and_is_reported(
        tmp_path: Path, netns: str, seeded: Store, nic: str, labels: dict[str, str] | None,  # noqa: F811
        reason: str) -> None:
    runner = NftRunner(netns)
    assert hook.run(config(tmp_path), "h1", "prepare", "begin", xml(GOOD.replace("00:01", "00:02").replace(
        "tap-good", "tap-web"), name="web", uuid="22222222-2222-3333-4444-555555555555"), runner) == 0
    assert hook.run(config(tmp_path), "h1", "prepare", "begin", xml(nic, labels=labels), runner) == 0
    assert bound(netns) == {"tap-web"}  # the other guest bound, nothing of the refused one
    assert reason in str(seeded.events("refused")[0]["reason"])
    [g] = [g for g in seeded.guests() if g.uuid == UUID]
    assert g.active and g.refusal is not None and reason in g.refusal
