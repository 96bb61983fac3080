"""Parse `nft -j list table` output of guestward's own tables back into NftObjects (pure)."""

from __future__ import annotations

from typing import Any

from guestward.dataplane.objects import NftChain, NftObjects, NftRule, NftSet


def _key(value: Any) -> Any:
    # Kept as printed: interface names are case-sensitive, and nft prints MACs and IPv6 addresses in
    # lowercase, as they are rendered.
    if isinstance(value, dict) and "elem" in value:
        value = value["elem"].get("val")
    if isinstance(value, dict) and "concat" in value:
        return tuple(str(v) for v in value["concat"])
    return str(value)


def _verdict(value: Any) -> str:
    if isinstance(value, dict):
        if "goto" in value:
            return "goto:" + str(value["goto"]["target"])
        if "jump" in value:
            return "jump:" + str(value["jump"]["target"])
        return str(next(iter(value)))
    return str(value)


def parse_tables(documents: list[dict[str, Any]], table: str = "guestward") -> NftObjects:
    """Merge the JSON outputs of `nft -j list table FAMILY guestward` (one per family) into objects."""
    out = NftObjects(table=table)
    rules: dict[tuple[str, str], list[NftRule]] = {}
    chains: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in documents:
        for item in doc.get("nftables", []):
            kind, body = next(iter(item.items()))
            if not isinstance(body, dict) or body.get("table", table) != table:
                continue
            if kind in ("set", "map"):
                t = body["type"]
                s = NftSet(body["family"], body["name"], tuple(t) if isinstance(t, list) else (t,),
                           body.get("map"), tuple(body.get("flags", ())), body.get("timeout"), body.get("size"))
                out.add_set(s)
                target = out.elements[(s.family, s.name)]
                for e in body.get("elem", []) if not s.dynamic else ():
                    if isinstance(target, dict):
                        k, v = e if isinstance(e, list) else (e["elem"]["val"], None)
                        target[_key(k)] = _verdict(v)
                    else:
                        target.add(_key(e))
            elif kind == "chain":
                chains[(body["family"], body["name"])] = body
            elif kind == "rule":
                rules.setdefault((body["family"], body["chain"]), []).append(
                    NftRule(tuple(body.get("expr", [])), body.get("comment", "")))
    for key, body in chains.items():
        out.add_chain(NftChain(body["family"], body["name"], tuple(rules.get(key, [])),
                               hook=body.get("hook"), priority=int(body.get("prio", 0)),
                               policy=str(body.get("policy", "accept"))))
    return out
