"""Read guestward's view of a guest from its domain XML (POLICY.md section 1).

Domain XML may be written by anyone who can define a guest: it is parsed with defusedxml (no
entities, no DTDs, no network), and nothing in it can stop enforcement for other guests. A guest
whose data guestward cannot enforce is *refused* (`Guest.refusal`, with the reason): none of its
vNICs is bound, so it gets no traffic (fail closed), and the reason is reported. That is the case
when
- its guestward metadata has any problem (a malformed label or address: dropping just that entry
  would fail open for `NotIn`/`DoesNotExist` selectors),
- a vNIC's port name (`<target dev>`) is not a plain interface name (model/ifname.py): such a name
  would reach nft; the Interface keeps no port then,
- a vNIC bypasses the bridge where guestward enforces (`bypass_nics`), unless the operator allows
  that guest by UUID in the configuration (`bypass_allowed`): nothing in the XML can allow it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from ipaddress import ip_address
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET

from guestward.compile.address_trust import IPAddress, special_range
from guestward.model import Guest, Interface, Labels, label_key_error
from guestward.model.ifname import ifname_error
from guestward.model.labels import label_value_error

NS = "https://guestward.dev/xmlns/1"
MAX_XML_BYTES = 4 * 1024 * 1024
MAX_VNICS = 256  # a guest with more is refused (QEMU guests have a few; each costs nft objects)
# Interface types whose tap libvirt puts on a host bridge, where guestward enforces. Every other type
# (direct/macvtap, hostdev, vhostuser, vdpa, user, ethernet, the socket tunnels, ...) carries the
# guest's traffic past the bridge table: guestward cannot enforce policy on it.
BRIDGED_TYPES = frozenset({"bridge", "network"})
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
MAX_REFUSAL_PROBLEMS, MAX_PROBLEM_CHARS = 5, 200  # a refusal stays one readable line, whatever the XML


@dataclass(frozen=True)
class Metadata:
    labels: dict[str, str]
    addresses: dict[str, list[str]]  # mac -> addresses
    problems: tuple[str, ...] = ()
    refused: dict[str, list[tuple[IPAddress, str]]] = field(default_factory=dict)  # mac -> (address, why)


def parse_metadata(guest_el: Element | None) -> Metadata:
    """Parse a `<gw:guest>` element. Invalid entries are dropped and reported as problems."""
    labels: dict[str, str] = {}
    addresses: dict[str, list[str]] = {}
    refused: dict[str, list[tuple[IPAddress, str]]] = {}
    problems: list[str] = []
    if guest_el is None:
        return Metadata(labels, addresses)
    for el in guest_el.findall(f"{{{NS}}}label"):
        key, value = el.get("key", ""), (el.text or "").strip()
        err = label_key_error(key) or label_value_error(value)
        if err:
            problems.append(err)
            continue
        if key in labels:
            problems.append(f"label {key!r} given twice: {labels[key]!r} and {value!r}; the last one holds")
        labels[key] = value
    for el in guest_el.findall(f"{{{NS}}}address"):
        mac, text = (el.get("mac") or "").lower(), (el.text or "").strip()
        try:
            addr = ip_address(text)
        except ValueError:
            problems.append(f"invalid address {text!r}")
            continue
        # A zone index ("fe80::1%eth0") would be rendered into the host's nft transaction and break it
        # for every guest there.
        if getattr(addr, "scope_id", None):
            problems.append(f"invalid address {text!r}: not a unicast address without zone")
            continue
        if not mac:
            problems.append(f"address {text!r} has no mac: it belongs to no vNIC")
            continue
        # Never a vNIC's own whatever the configuration says: kept as refused (reported), not bound.
        if reason := special_range(addr):
            refused.setdefault(mac, []).append((addr, reason))
            continue
        addresses.setdefault(mac, []).append(text)
    return Metadata(labels, addresses, tuple(problems), refused)


def bypass_nics(root: Element) -> list[str]:
    """Each vNIC of a parsed domain XML that does not go through a host bridge, described in a few
    words (its MAC and type). A `network` interface whose live XML names another actual type counts."""
    found = []
    for iface in root.findall("devices/interface"):
        kind = iface.get("type", "")
        actual = iface.find("actual")
        if actual is not None and actual.get("type"):
            kind = actual.get("type", "")
        if kind not in BRIDGED_TYPES:
            mac_el = iface.find("mac")
            mac = (mac_el.get("address") if mac_el is not None else None) or ""
            shown = mac.lower() if MAC_RE.fullmatch(mac.lower()) else "without a valid MAC"
            found.append(f"vNIC {shown} (type {kind[:20]!a})")
    return found


def unallowed_bypass(xml: str, bypass_allowed: Collection[str] = ()) -> list[str]:
    """`bypass_nics` of a domain XML document, unless the operator allows its guest (by UUID)."""
    if len(xml) > MAX_XML_BYTES:
        raise ValueError("domain XML larger than 4 MiB")
    root = SafeET.fromstring(xml)
    uuid = (root.findtext("uuid") or root.findtext("name") or "").lower()
    return [] if uuid in bypass_allowed else bypass_nics(root)


def refusal_text(problems: list[str]) -> str | None:
    """One line for a guest's refusal: the first few problems, each cut short, and how many more."""
    if not problems:
        return None
    shown = [p if len(p) <= MAX_PROBLEM_CHARS else p[:MAX_PROBLEM_CHARS] + "..." for p in problems]
    more = len(shown) - MAX_REFUSAL_PROBLEMS
    text = "; ".join(shown[:MAX_REFUSAL_PROBLEMS])
    return text + (f"; and {more} more" if more > 0 else "")


def guest_from_xml(xml: str, host: str, active: bool, bypass_allowed: Collection[str] = ()) -> Guest:
    """The Guest described by a domain XML document (live XML for a running guest), refused (see the
    module docstring) when guestward cannot enforce its data. `bypass_allowed`: the UUIDs (lower
    case) of guests the operator allows to have vNICs that bypass the bridge."""
    if len(xml) > MAX_XML_BYTES:
        raise ValueError("domain XML larger than 4 MiB")
    root = SafeET.fromstring(xml)
    name = root.findtext("name") or ""
    uuid = root.findtext("uuid") or name
    meta_el = root.find("metadata")
    guest_el = meta_el.find(f"{{{NS}}}guest") if meta_el is not None else None
    meta = parse_metadata(guest_el)
    problems = [f"malformed guestward metadata: {p}" for p in meta.problems]
    nics = []
    interfaces = root.findall("devices/interface")
    if len(interfaces) > MAX_VNICS:  # each vNIC costs elements and a chain on the host: bounded
        problems.append(f"{len(interfaces)} vNICs: more than the {MAX_VNICS} guestward binds for one guest")
        interfaces = []
    for iface in interfaces:
        mac_el, target_el = iface.find("mac"), iface.find("target")
        if mac_el is None or not mac_el.get("address"):
            continue
        mac = mac_el.get("address", "").lower()
        if not MAC_RE.fullmatch(mac):  # libvirt checks MACs, but this one would reach nft too
            problems.append(f"vNIC MAC {mac[:32]!a} is not a MAC address")
            continue
        port = target_el.get("dev") if target_el is not None else None
        nic = Interface.of(mac, port, meta.addresses.get(mac, []))
        if port is not None and (err := ifname_error(port)):
            problems.append(f"vNIC {mac}: {err}")
            nic = replace(nic, port=None)  # the name never travels further than this message
        nics.append(replace(nic, refused=tuple(sorted(set(meta.refused.get(mac, ())), key=_order))))
    if uuid.lower() not in bypass_allowed:
        problems += [f"{nic} bypasses the bridge: guestward cannot enforce policy on it (allow the guest by "
                     f"UUID in the configuration's bypass_allowed)" for nic in bypass_nics(root)]
    return Guest(name=name, uuid=uuid, host=host, labels=Labels(meta.labels), interfaces=tuple(nics),
                 active=active, refusal=refusal_text(problems))


def _order(item: tuple[IPAddress, str]) -> tuple[int, int]:
    return (item[0].version, int(item[0]))


def metadata_addresses(guest_el: Element | None) -> list[tuple[str, str]]:
    """The (mac, address) pairs of a `<gw:guest>` element, as written (for rewriting its labels)."""
    if guest_el is None:
        return []
    return [((el.get("mac") or "").lower(), (el.text or "").strip()) for el in guest_el.findall(f"{{{NS}}}address")]


def guest_element(xml: str) -> Element | None:
    """The `<gw:guest>` element of a domain XML document, if any."""
    if len(xml) > MAX_XML_BYTES:
        raise ValueError("domain XML larger than 4 MiB")
    meta_el = SafeET.fromstring(xml).find("metadata")
    return meta_el.find(f"{{{NS}}}guest") if meta_el is not None else None


def metadata_waivers(guest_el: Element | None) -> list[tuple[str, str, str]]:
    """The audit waivers (check, expires, reason) of a `<gw:guest>` element, kept when labels are rewritten."""
    if guest_el is None:
        return []
    return [(el.get("check", ""), el.get("expires", ""), (el.text or "").strip())
            for el in guest_el.findall(f"{{{NS}}}waiver")]


def metadata_xml(labels: dict[str, str], addresses: list[tuple[str, str]], *, for_set_metadata: bool = False,
                 waivers: list[tuple[str, str, str]] | None = None) -> str:
    """The `<gw:guest>` element for domain XML (values are escaped). `for_set_metadata`: the same
    element without namespace prefixes, as `virDomainSetMetadata` wants it (libvirt applies the
    namespace it is given). `waivers`: the audit's in-XML waivers (README, Hardening audit)."""
    from xml.sax.saxutils import escape, quoteattr

    p = "" if for_set_metadata else "gw:"
    parts = [f"<{p}label key={quoteattr(k)}>{escape(v)}</{p}label>" for k, v in sorted(labels.items())]
    parts += [f"<{p}address mac={quoteattr(m)}>{escape(a)}</{p}address>" for m, a in addresses]
    parts += [f"<{p}waiver check={quoteattr(c)} expires={quoteattr(e)}>{escape(r)}</{p}waiver>"
              for c, e, r in waivers or ()]
    opening = "<guest>" if for_set_metadata else f'<gw:guest xmlns:gw="{NS}">'
    return opening + "".join(parts) + f"</{p}guest>"
