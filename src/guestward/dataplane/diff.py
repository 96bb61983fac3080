"""Diff two NftObjects into one ordered list of nft JSON commands (one atomic transaction).

Order matters inside a transaction: new sets and chains first, then rules, then element deletions
before additions (a map key that changes its verdict is deleted and re-added), then removed chains
(flushed, then deleted) and removed sets last, so nothing is deleted while something still uses it.
"""

from __future__ import annotations

from typing import Any

from guestward.dataplane.objects import NftChain, NftObjects


def _elem_json(item: Any, verdict: str | None = None) -> Any:
    key: Any = {"concat": list(item)} if isinstance(item, tuple) else item
    if verdict is None:
        return key
    if verdict.startswith("goto:"):
        return [key, {"goto": {"target": verdict[5:]}}]
    return [key, {verdict: None}]


def _elements(kind: str, table: str, family: str, name: str, items: list[Any]) -> dict[str, Any]:
    return {kind: {"element": {"family": family, "table": table, "name": name, "elem": items}}}


def _chain_rules(table: str, chain: NftChain) -> list[dict[str, Any]]:
    return [{"add": {"rule": {"family": chain.family, "table": table, "chain": chain.name,
                              "expr": list(r.expr), "comment": r.comment}}} for r in chain.rules]


def diff_objects(old: NftObjects, new: NftObjects, *, create_tables: bool = False) -> list[dict[str, Any]]:
    t = new.table
    cmds: list[dict[str, Any]] = []
    if create_tables:
        cmds += [{"add": {"table": {"family": f, "name": t}}} for f in new.families]
    for key, s in new.sets.items():
        if key not in old.sets:
            cmds.append({"add": {"map" if s.map_to else "set": s.spec(t)}})
    for key, c in new.chains.items():
        if key not in old.chains or (c.hook and old.chains[key].policy != c.policy):
            cmds.append({"add": {"chain": c.spec(t)}})  # `add` of an existing base chain sets its policy
    for key, c in new.chains.items():
        if key in old.chains and old.chains[key].rules != c.rules:
            cmds.append({"flush": {"chain": {"family": c.family, "table": t, "name": c.name}}})
            cmds += _chain_rules(t, c)
        elif key not in old.chains:
            cmds += _chain_rules(t, c)
    deletes: list[dict[str, Any]] = []
    adds: list[dict[str, Any]] = []
    for key, s in new.sets.items():
        if s.dynamic:
            continue  # the kernel's elements (objects.py)
        want = new.elements.get(key, {} if s.map_to else set())
        have = old.elements.get(key, {} if s.map_to else set()) if key in old.sets else ({} if s.map_to else set())
        if isinstance(want, dict):
            assert isinstance(have, dict)
            gone = [_elem_json(k, v) for k, v in have.items() if want.get(k) != v]
            new_items = [_elem_json(k, v) for k, v in want.items() if have.get(k) != v]
        else:
            assert isinstance(have, set)
            gone = [_elem_json(k) for k in have - want]
            new_items = [_elem_json(k) for k in want - have]
        if gone:
            deletes.append(_elements("delete", t, s.family, s.name, sorted(gone, key=str)))
        if new_items:
            adds.append(_elements("add", t, s.family, s.name, sorted(new_items, key=str)))
    cmds += deletes + adds
    removed_chains = [c for key, c in old.chains.items() if key not in new.chains]
    cmds += [{"flush": {"chain": {"family": c.family, "table": t, "name": c.name}}} for c in removed_chains]
    cmds += [{"delete": {"chain": {"family": c.family, "table": t, "name": c.name}}} for c in removed_chains]
    for key, s in old.sets.items():
        if key not in new.sets:
            cmds.append({"delete": {"map" if s.map_to else "set": {"family": s.family, "table": t, "name": s.name}}})
    return cmds


def replace_tables(new: NftObjects) -> list[dict[str, Any]]:
    """Commands that rebuild guestward's tables as `new`, whatever they hold now, in one transaction:
    each table is added (so it exists), deleted, and built again from nothing. No read-back is needed
    and no other table is touched; the kernel switches from the old to the new table atomically."""
    t = new.table
    cmds: list[dict[str, Any]] = []
    for f in new.families:
        cmds += [{"add": {"table": {"family": f, "name": t}}}, {"delete": {"table": {"family": f, "name": t}}}]
    return cmds + diff_objects(NftObjects(table=t, families=new.families), new, create_tables=True)
