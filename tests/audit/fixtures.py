"""Reading a check's pass/fail fixtures into facts (domain XML files; host facts as YAML)."""

from __future__ import annotations

from importlib.abc import Traversable
from typing import Any

import yaml

from guestward.audit.facts import DomainFacts, FileMeta, HostFacts, parse_domain


def host_from_doc(doc: dict[str, Any], root: str = "/fixture") -> tuple[HostFacts, list[DomainFacts]]:
    meta = {m["path"]: FileMeta(m["path"], m["kind"], int(str(m["mode"]), 8), m.get("uid", 0), m.get("gid", 0),
                                m.get("target")) for m in doc.get("meta", [])}
    domains = [parse_domain(x, f"{root}#domain{i}") for i, x in enumerate(doc.get("domains", []))]
    return HostFacts(root=root, files=dict(doc.get("files") or {}), meta=meta), domains


def fixture_facts(folder: Traversable) -> tuple[list[DomainFacts], list[HostFacts]]:
    domains: list[DomainFacts] = []
    hosts: list[HostFacts] = []
    for f in sorted(folder.iterdir(), key=lambda f: f.name):
        if f.name.endswith(".xml"):
            domains.append(parse_domain(f.read_text(), f"{folder.name}/{f.name}"))
        elif f.name.endswith(".yaml"):
            h, ds = host_from_doc(yaml.safe_load(f.read_text()), f"{folder.name}/{f.name}")
            hosts.append(h)
            domains += ds
    return domains, hosts
