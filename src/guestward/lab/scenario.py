"""The lab scenario file (POLICY.md section 4), validated, with addresses allocated."""

from __future__ import annotations

import hashlib
import itertools
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guestward.policy import PortRange, parse_port

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?$"  # short: names become interface names


class GuestSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    host: str
    labels: dict[str, str] = Field(default_factory=dict)
    address: IPv4Address | None = None
    listen: list[str] = Field(default_factory=lambda: ["tcp/80", "udp/53"])
    disk: bool = False  # a small qcow2 disk (the guest does not use it): lets libvirt snapshot its memory

    @field_validator("listen")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        for p in v:
            port = parse_port(p)
            if port.protocol not in ("tcp", "udp") or port.first != port.last:
                raise ValueError(f"listen: {p!r}: a single tcp/PORT or udp/PORT")
        return v

    @property
    def services(self) -> list[PortRange]:
        return [parse_port(p) for p in self.listen]

    @property
    def tap(self) -> str:
        return f"gwt-{self.name}"

    @property
    def mac(self) -> str:
        h = hashlib.sha256(self.name.encode()).digest()
        return f"52:54:00:{h[0]:02x}:{h[1]:02x}:{h[2]:02x}"


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hosts: list[str] = Field(min_length=1, max_length=8)
    network: IPv4Network = IPv4Network("10.77.0.0/24")
    external: IPv4Address | None = None
    external_listen: list[str] = Field(default_factory=lambda: ["tcp/80", "udp/53"])
    guests: list[GuestSpec] = Field(default_factory=list)

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, v: list[str]) -> list[str]:
        import re

        for h in v:
            if not re.match(NAME_PATTERN, h):
                raise ValueError(f"host name {h!r}: 1-12 lowercase alphanumerics and '-'")
        if len(set(v)) != len(v):
            raise ValueError("duplicate host names")
        return v

    @model_validator(mode="after")
    def _allocate(self) -> Scenario:
        names = [g.name for g in self.guests]
        if len(set(names)) != len(names):
            raise ValueError("duplicate guest names")
        taken = {self.host_address(h) for h in self.hosts}
        if self.external is not None:
            if self.external not in self.network:
                raise ValueError(f"external {self.external} is outside network {self.network}")
            taken.add(self.external)
        for g in self.guests:
            if g.host not in self.hosts:
                raise ValueError(f"guest {g.name}: unknown host {g.host!r}")
            if g.address is not None:
                if g.address not in self.network:
                    raise ValueError(f"guest {g.name}: address {g.address} outside network {self.network}")
                if g.address in taken:
                    raise ValueError(f"guest {g.name}: address {g.address} already in use")
                taken.add(g.address)
        free = (a for a in itertools.islice(self.network.hosts(), 10, None) if a not in taken)
        for g in self.guests:
            if g.address is None:
                g.address = next(free, None)
                if g.address is None:
                    raise ValueError(f"guest {g.name}: no free address left in network {self.network}")
                taken.add(g.address)
        return self

    def host_address(self, host: str) -> IPv4Address:
        """Each host's own address on the lab network: from the top of the range down."""
        return self.network.broadcast_address - 1 - self.hosts.index(host)

    def interface(self, address: IPv4Address) -> IPv4Interface:
        return IPv4Interface(f"{address}/{self.network.prefixlen}")

    def guest(self, name: str) -> GuestSpec:
        for g in self.guests:
            if g.name == name:
                return g
        raise KeyError(name)


def load_scenario(path: Path) -> Scenario:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ValueError(f"{path}: {where}: {first['msg']}") from None
