"""The policy revision in the connection mark: an `apply` that denies an open connection stops it.

Conntrack lets an established connection's packets pass without the policy being looked at again;
alone, that lets a connection opened under an old policy outlive an `apply` that denies it. So every
accept of the inet table writes the *revision* of the tables that accepted it into a few bits of the
connection's ct mark (`Settings.revision_mask`), and the fast accept of established packets holds only
for connections whose mark names the revision in force (render.py `egress_dispatch`):

1. established or related, mark == current revision: accept (both directions: the common case);
2. reply direction: accept. A reply is never judged as if it were a new connection from the responder;
   a denied connection stops at its next original-direction packet (for TCP that includes the ACKs
   that keep a download going). A connection whose original side stays silent (a UDP "ask once,
   stream answers back") sends no such packet, and its answers keep its entry alive: for those the
   controller's `apply` deletes the entries the new policy denies (denied.py);
3. related (ICMP errors, expected connections): accept, as before;
4. any other established packet (original direction, accepted under another revision, or never marked by
   us: opened before guestward ran, or handed over by a migration with the source host's mark) is judged
   by the egress and ingress policy like a new connection; an accept ends in the `accepted` chain, which
   writes the current revision into the mark (other ct mark bits are kept).

The revision is a digest of everything in the inet table that decides a verdict on this host: the
dispatch maps, the identity chains and the members of the selector sets, and the mark settings. It
is pure: the same plan renders the same revision, so an idempotent sync or a drift repair re-checks
nothing, and it is rendered into the same objects (so the same nft transaction) as the rules it stands
for: no packet ever sees the new rules with the old revision or the other way round. It is never 0,
so a connection without our bits is always re-checked. Two different plans share a revision with
probability 1 / (2^bits - 1) (about 1e-6 with the default 20 bits); then connections opened under the
old plan are not re-checked, as before revisions existed.
"""

from __future__ import annotations

import hashlib
from typing import Any

from guestward.compile.plan import HostPlan

DEFAULT_MASK = 0x0FFFFF00  # disjoint from the meta mark bits render.Settings uses (0x30000000)
ACCEPTED = "accepted"  # the chain every accept of the policy ends in


def _shift(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


def check_mask(mask: int) -> None:
    """A mask is one contiguous run of at least 8 bits inside 32."""
    if not 0 < mask < 2**32:
        raise ValueError(f"revision mask {mask:#x}: not a 32-bit mask")
    run = mask >> _shift(mask)
    if run & (run + 1) or run.bit_length() < 8:
        raise ValueError(f"revision mask {mask:#x}: must be one contiguous run of at least 8 bits")


def plan_revision(plan: HostPlan, mask: int = DEFAULT_MASK, extra: str = "") -> int:
    """The ct mark value (already within `mask`, never 0) that stands for `plan`'s verdicts."""
    check_mask(mask)
    h = hashlib.sha256()
    h.update(f"{mask:#x}|{extra}\n".encode())
    for addr, ident in sorted((str(a), i) for a, i in plan.dispatch.items()):
        h.update(f"d {addr} {ident}\n".encode())
    for name in sorted(plan.chains):
        h.update(f"c {name} {plan.chains[name]!r}\n".encode())
    for digest in sorted(plan.sets):
        h.update(f"s {digest} {' '.join(sorted(str(a) for a in plan.sets[digest]))}\n".encode())
    values = (mask >> _shift(mask))  # the largest value; values are 1..values
    return ((int.from_bytes(h.digest()[:8], "big") % values) + 1) << _shift(mask)


def ct_mark() -> dict[str, Any]:
    return {"ct": {"key": "mark"}}


def is_current(mask: int, revision: int) -> dict[str, Any]:
    """Match: the connection was last accepted under `revision`."""
    return {"match": {"op": "==", "left": {"&": [ct_mark(), mask]}, "right": revision}}


def set_current(mask: int, revision: int) -> dict[str, Any]:
    """Statement: write `revision` into the mask's bits of the ct mark, keeping the other bits."""
    return {"mangle": {"key": ct_mark(), "value": {"|": [{"&": [ct_mark(), ~mask & 0xFFFFFFFF]}, revision]}}}

