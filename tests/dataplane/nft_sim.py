"""A strict simulation of what nft does with guestward's JSON commands, and of `nft -j list table` output.

Strict where the kernel is: a rule or map element may only name sets and chains that exist at that
point of the transaction, an element that is deleted must exist, a map key is not added twice, a
chain or set still referenced cannot be deleted, and a chain must be empty (flushed) before deletion.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from guestward.dataplane import NftChain, NftObjects, NftSet
from guestward.dataplane.objects import NftRule


class NftError(AssertionError):
    pass


def _key(item: Any) -> Any:
    return tuple(item["concat"]) if isinstance(item, dict) and "concat" in item else item


def _verdict(v: dict[str, Any]) -> str:
    (kind, arg), = v.items()
    return f"{kind}:{arg['target']}" if kind in ("goto", "jump") else kind


def _refs(value: Any) -> tuple[set[str], set[str]]:
    """(set names, chain names) referenced anywhere in a JSON value."""
    sets: set[str] = set()
    chains: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("goto", "jump") and isinstance(v, dict):
                chains.add(v["target"])
            else:
                s, c = _refs(v)
                sets |= s
                chains |= c
    elif isinstance(value, list):
        for v in value:
            s, c = _refs(v)
            sets |= s
            chains |= c
    elif isinstance(value, str) and value.startswith("@"):
        sets.add(value[1:])
    return sets, chains


def apply(start: NftObjects, commands: list[dict[str, Any]]) -> NftObjects:
    o = copy.deepcopy(start)
    rules: dict[tuple[str, str], list[NftRule]] = {k: list(c.rules) for k, c in o.chains.items()}

    def used(family: str) -> tuple[set[str], set[str]]:
        """(sets, chains) that the rules and map elements of `family` use now."""
        sets, chains = _refs([list(r.expr) for (f, _), rs in rules.items() if f == family for r in rs])
        chains |= {v[5:] for (f, _), e in o.elements.items() if f == family and isinstance(e, dict)
                   for v in e.values() if v.startswith(("goto:", "jump:"))}
        return sets, chains

    for cmd in commands:
        (op, body), = cmd.items()
        (kind, spec), = body.items()
        if kind == "table":
            if op == "delete":  # the whole table of that family goes, whatever it holds
                f = spec["family"]
                for key in [k for k in o.chains if k[0] == f]:
                    del o.chains[key]
                    del rules[key]
                for key in [k for k in o.sets if k[0] == f]:
                    del o.sets[key]
                    del o.elements[key]
            continue
        family, name = spec["family"], spec.get("name")
        if op == "add" and kind in ("set", "map"):
            t = spec["type"]
            s = NftSet(family, name, tuple(t) if isinstance(t, list) else (t,), spec.get("map"),
                       tuple(spec.get("flags", ())), spec.get("timeout"), spec.get("size"))
            if (family, name) in o.sets:
                raise NftError(f"set {name} exists")
            o.add_set(s)
        elif op == "add" and kind == "chain":
            existing = o.chains.get((family, name))
            if existing is not None and not (existing.hook and spec.get("hook")):
                raise NftError(f"chain {name} exists")
            if existing is not None:  # `add` of an existing base chain: sets its policy, keeps its rules
                o.add_chain(replace(existing, policy=spec.get("policy", "accept")))
                continue
            o.add_chain(NftChain(family, name, (), spec.get("hook"), int(spec.get("prio", 0)),
                                 spec.get("policy", "accept")))
            rules[(family, name)] = []
        elif op == "add" and kind == "rule":
            key = (family, spec["chain"])
            if key not in o.chains:
                raise NftError(f"rule for missing chain {spec['chain']}")
            sets, chains = _refs(spec["expr"])
            missing = {s for s in sets if (family, s) not in o.sets}
            missing |= {c for c in chains if (family, c) not in o.chains}
            if missing:
                raise NftError(f"rule in {spec['chain']} references missing {missing}")
            rules[key].append(NftRule(tuple(spec["expr"]), spec["comment"]))
        elif op == "flush" and kind == "chain":
            if (family, name) not in o.chains:
                raise NftError(f"flush of missing chain {name}")
            rules[(family, name)] = []
        elif op == "delete" and kind == "chain":
            if (family, name) not in o.chains:
                raise NftError(f"delete of missing chain {name}")
            if rules[(family, name)]:
                raise NftError(f"delete of non-empty chain {name}")
            if name in used(family)[1]:
                raise NftError(f"delete of chain {name} still in use")
            del o.chains[(family, name)]
            del rules[(family, name)]
        elif op == "delete" and kind in ("set", "map"):
            if (family, name) not in o.sets:
                raise NftError(f"delete of missing set {name}")
            if name in used(family)[0]:
                raise NftError(f"delete of set {name} still in use")
            del o.sets[(family, name)]
            del o.elements[(family, name)]
        elif kind == "element":
            target = o.elements.get((family, name))
            if target is None:
                raise NftError(f"element of missing set {name}")
            if o.sets[(family, name)].dynamic:
                raise NftError(f"element of dynamic set {name}: the kernel's, not ours")
            for item in spec["elem"]:
                if isinstance(target, dict):
                    k, v = item
                    k = _key(k)
                    if op == "add":
                        if k in target:
                            raise NftError(f"map {name}: key {k} exists")
                        verdict = _verdict(v)
                        if verdict.startswith(("goto:", "jump:")) and (family, verdict[5:]) not in o.chains:
                            raise NftError(f"map {name}: element jumps to missing chain {verdict}")
                        target[k] = verdict
                    else:
                        if target.get(k) != _verdict(v):
                            raise NftError(f"map {name}: delete of missing element {k}")
                        del target[k]
                else:
                    k = _key(item)
                    if op == "add":
                        target.add(k)
                    else:
                        if k not in target:
                            raise NftError(f"set {name}: delete of missing element {k}")
                        target.discard(k)
        else:
            raise NftError(f"unexpected command {cmd}")
    for key, c in list(o.chains.items()):
        o.chains[key] = replace(c, rules=tuple(rules[key]))
    return o


def _elem_out(key: Any) -> Any:
    return {"concat": list(key)} if isinstance(key, tuple) else key


def _verdict_out(v: str) -> dict[str, Any]:
    if v.startswith(("goto:", "jump:")):
        return {v[:4]: {"target": v[5:]}}
    return {v: None}


def list_table(o: NftObjects, family: str) -> dict[str, Any]:
    """What `nft -j list table FAMILY guestward` prints for these objects (handles included)."""
    items: list[dict[str, Any]] = [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
        {"table": {"family": family, "name": o.table, "handle": 1}},
    ]
    handle = 2
    for (f, _), s in o.sets.items():
        if f != family:
            continue
        body: dict[str, Any] = {"family": f, "name": s.name, "table": o.table,
                                "type": list(s.type) if len(s.type) > 1 else s.type[0], "handle": handle}
        if s.map_to:
            body["map"] = s.map_to
        if s.flags:
            body["flags"] = list(s.flags)
        if s.timeout is not None:
            body["timeout"] = s.timeout
        if s.size is not None:
            body["size"] = s.size
        elems = o.elements[(f, s.name)]
        if s.dynamic:  # what packets added, as the kernel lists it
            elems = {"10.9.9.9"} if "ipv4_addr" in s.type else {"eth-x"}
            body["elem"] = [{"elem": {"val": e, "timeout": 60, "expires": 59}} for e in elems]
            elems = set()
        if elems:
            if isinstance(elems, dict):
                body["elem"] = [[_elem_out(k), _verdict_out(v)] for k, v in sorted(elems.items(), key=str)]
            else:
                body["elem"] = [_elem_out(k) for k in sorted(elems, key=str)]
        items.append({"map" if s.map_to else "set": body})
        handle += 1
    for (f, _), c in o.chains.items():
        if f != family:
            continue
        cb: dict[str, Any] = {"family": f, "table": o.table, "name": c.name, "handle": handle}
        if c.hook:
            cb.update({"type": "filter", "hook": c.hook, "prio": c.priority, "policy": c.policy})
        items.append({"chain": cb})
        handle += 1
    for (f, _), c in o.chains.items():
        if f != family:
            continue
        for r in c.rules:
            items.append({"rule": {"family": f, "table": o.table, "chain": c.name, "handle": handle,
                                   "comment": r.comment, "expr": list(r.expr)}})
            handle += 1
    return {"nftables": items}
