"""guestward's configuration: which libvirt hosts it manages and where it keeps its state.

Lookup order: `--config`, `$GUESTWARD_CONFIG`, the running lab's config, `/etc/guestward/config.yaml`.

```yaml
state_dir: /var/lib/guestward
hosts:
  - name: hv1
    uri: qemu:///system
    netns: null          # network namespace where this host's bridges live (null: this one)
    uplinks: [eno1]      # bridge ports to other hosts / the outside; every other port is a guest port
    addresses: [10.77.0.253]  # the host's own addresses on guest networks: never a guest's
networks:              # the authoritative guest address ranges (docs/SECURITY.md, "Guest addresses")
  - name: prod
    cidrs: [10.77.0.0/24, "fd77::/64"]   # a guest address outside every network is refused
    gateways: [10.77.0.1]                # never a guest's
    reserved: [10.77.0.250]              # other addresses that are never a guest's (DNS, appliances)
drop_log:              # optional: every dropped packet is logged to NFLOG, rate-limited per guest
  group: 7             # the NFLOG group (null: drops are only counted)
  rate: 20             # logged drops per second per guest (vNIC); drops above it are counted, not logged
  burst: 20
  keep: 100000         # flow records kept in the store (the oldest go first)
bypass_allowed:        # UUIDs of guests allowed to have vNICs that bypass the bridge (direct/macvtap,
  - 6f1c...            # hostdev, vhostuser, ...): guestward enforces nothing on those vNICs. Any other
                       # guest with such a vNIC is refused, and the hook does not let it start.
```

Without `networks` (a configuration written before they existed) guests may claim any address but
the special ranges, hosts' own addresses, gateways and reserved ones (compile/address_trust.py); every
sync reports that the ranges are not configured.
"""

from __future__ import annotations

import os
from ipaddress import ip_address, ip_network
from pathlib import Path
from uuid import UUID

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from guestward.compile.address_trust import AddressTrust, Network, parse_address
from guestward.dataplane import Settings
from guestward.model import Host

LAB_DIR = Path(os.environ.get("GUESTWARD_LAB_DIR", "/var/lib/guestward/lab"))
DEFAULT_CONFIG = Path("/etc/guestward/config.yaml")


class HostConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    uri: str
    netns: str | None = None
    uplinks: list[str] = Field(default_factory=list)
    addresses: list[str] = Field(default_factory=list, max_length=4096)

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return [str(parse_address(a)) for a in v]

    def host(self) -> Host:
        return Host(self.name, self.uri, tuple(self.uplinks))


class NetworkConfig(BaseModel):
    """One guest network: its address ranges and the addresses in them that are never a guest's."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    cidrs: list[str] = Field(min_length=1, max_length=4096)
    gateways: list[str] = Field(default_factory=list, max_length=4096)
    reserved: list[str] = Field(default_factory=list, max_length=65536)

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        out = []
        for text in v:
            try:
                out.append(str(ip_network(text, strict=True)))
            except ValueError as exc:
                raise ValueError(f"cidr {text!r}: {exc}") from None
        return out

    @field_validator("gateways", "reserved")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return [str(parse_address(a)) for a in v]

    def network(self) -> Network:
        return Network(self.name, tuple(ip_network(c) for c in self.cidrs),
                       tuple(ip_address(a) for a in self.gateways), tuple(ip_address(a) for a in self.reserved))


class DropLogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group: int | None = Field(7, ge=0, le=65535)
    rate: int = Field(20, ge=1, le=1_000_000)
    burst: int = Field(20, ge=1, le=1_000_000)
    keep: int = Field(100_000, ge=100)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state_dir: Path = Path("/var/lib/guestward")
    hosts: list[HostConfig] = Field(default_factory=list)
    drop_log: DropLogConfig = Field(default_factory=DropLogConfig)
    bypass_allowed: list[UUID] = Field(default_factory=list)
    networks: list[NetworkConfig] = Field(default_factory=list, max_length=1024)

    @field_validator("networks")
    @classmethod
    def _unique_names(cls, v: list[NetworkConfig]) -> list[NetworkConfig]:
        names = [n.name for n in v]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"network names given twice: {', '.join(dup)}")
        return v

    def address_trust(self) -> AddressTrust:
        """What the configuration says about guest addresses (compile/address_trust.py)."""
        return AddressTrust(tuple(n.network() for n in self.networks),
                            tuple((h.name, ip_address(a)) for h in self.hosts for a in h.addresses))

    def bypass_uuids(self) -> frozenset[str]:
        """`bypass_allowed` as lower-case UUID strings (how domain XML compares them)."""
        return frozenset(str(u) for u in self.bypass_allowed)

    def settings(self) -> Settings:
        """How every process renders the tables: the CLI, the agent and the hook must agree, or they
        would rewrite each other's rules."""
        return Settings(log_group=self.drop_log.group, log_rate=self.drop_log.rate, log_burst=self.drop_log.burst)

    def host(self, name: str) -> HostConfig:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)


class ConfigError(Exception):
    pass


def config_path(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if env := os.environ.get("GUESTWARD_CONFIG"):
        return Path(env)
    lab = LAB_DIR / "config.yaml"
    if lab.exists():
        return lab
    return DEFAULT_CONFIG


def load_config(explicit: str | None = None) -> Config:
    path = config_path(explicit)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"no configuration at {path} (is a lab up? `guestward lab up -f SCENARIO`)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    try:
        return Config.model_validate(data)
    except Exception as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_config(config: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    tmp.replace(path)
