"""Small shared readings of domain XML for the code checks (pure)."""

from __future__ import annotations

from xml.etree.ElementTree import Element


def is_local(addr: str | None) -> bool:
    """A listen address only local processes reach (loopback). None or '' is not local: it means all."""
    if not addr:
        return False
    a = addr.strip("[]").lower()
    return a in ("localhost", "::1") or a.startswith("127.")


def listen_addresses(g: Element) -> list[tuple[str, str | None]]:
    """What a <graphics> listens on, as (kind, address) pairs: kind `address`, `network`, `socket`,
    `none`, or `default` (no listen given: qemu.conf's vnc_listen/spice_listen decides)."""
    out: list[tuple[str, str | None]] = []
    for li in g.iterfind("listen"):
        t = li.get("type", "address")
        if t == "address":
            out.append(("address", li.get("address")))
        elif t == "network":
            out.append(("network", li.get("address") or li.get("network")))
        else:
            out.append((t, None))
    if not out:
        if g.get("socket"):
            out.append(("socket", None))
        elif g.get("listen") is not None:
            out.append(("address", g.get("listen")))
        elif g.get("port") or g.get("autoport"):
            out.append(("default", None))
    return out
