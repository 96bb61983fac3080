"""Which network interface names guestward accepts as a vNIC's port (or an uplink).

The kernel accepts almost any byte in an interface name (1-15 bytes, none of '/', ':', whitespace,
not "." or ".."), but nft reads some of them as something other than a literal: `@x` is a set
reference, `a*` a wildcard, `$x` a variable, and `*` alone crashed nft 1.0.6. A name reaches nft from
the domain XML (`<target dev>`), which whoever defines a guest writes. So guestward accepts only
names made of `[A-Za-z0-9_.-]`, 1 to 15 characters, not starting with '-' or '.', which covers what
libvirt generates (`vnetN`, `macvtapN`, `vifN.M`) and usual hand-given tap names, and nothing nft
could read as an expression. A guest with any other port name is refused (model: `Guest.refusal`),
and the renderer checks again before it emits a name (dataplane/render.py).
"""

from __future__ import annotations

import re

IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
ALLOWED = "[A-Za-z0-9_.-], 1-15 characters, not starting with '-' or '.'"


def ifname_error(name: object) -> str | None:
    """Why `name` is not an interface name guestward accepts, or None when it is one.

    The message quotes at most 32 characters of the name, escaped to printable ASCII, so a hostile
    name cannot garble a terminal or a log line."""
    if isinstance(name, str) and IFNAME_RE.fullmatch(name):
        return None
    shown = ascii(name[:32] if isinstance(name, str | bytes) else name)
    more = "..." if isinstance(name, str | bytes) and len(name) > 32 else ""
    return f"port name {shown}{more} is not a plain interface name ({ALLOWED})"


def is_plain_ifname(name: object) -> bool:
    return ifname_error(name) is None
