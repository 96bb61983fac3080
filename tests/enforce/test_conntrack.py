"""Conntrack entries: the extended listing parsed, written back as `conntrack -R` lines, and a real
round trip through the kernel's table in a private network namespace."""
# ruff: noqa: E501  (real listing lines)

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestward.dataplane.conntrack import (
    ConntrackFormatError,
    create_line,
    delete_lines,
    identity,
    parse_extended,
)
from guestward.enforce.conntrack import Conntrack, forget, handover
from guestward.enforce.enforcer import NftRunner

LISTING = """\
ipv4     2 tcp      6 223 ESTABLISHED src=10.1.0.1 dst=10.1.0.2 sport=1000 dport=80 src=10.1.0.2 dst=10.1.0.1 sport=80 dport=1000 [ASSURED] mark=7 zone=3 use=1
ipv4     2 udp      17 28 src=10.1.0.5 dst=10.1.0.1 sport=53 dport=999 [UNREPLIED] src=10.1.0.1 dst=10.1.0.5 sport=999 dport=53 mark=0 use=1
ipv4     2 icmp     1 81 src=10.1.0.5 dst=10.1.0.1 type=8 code=0 id=55 [UNREPLIED] src=10.1.0.1 dst=10.1.0.5 type=0 code=0 id=55 mark=0 use=1
ipv6     10 tcp      6 99 SYN_SENT src=fd00::5 dst=fd00::1 sport=1 dport=2 src=fd00::1 dst=fd00::5 sport=2 dport=1 mark=0 use=1
ipv4     2 gre      47 99 src=10.1.0.5 dst=10.1.0.9 srckey=0x1 dstkey=0x2 [UNREPLIED] src=10.1.0.9 dst=10.1.0.5 srckey=0x2 dstkey=0x1 mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 5 flow entries have been shown.
"""


def test_extended_listing_keeps_mark_zone_state_flags_and_icmp_keys() -> None:
    entries, skipped = parse_extended(LISTING)
    assert skipped == 1  # gre cannot be written back
    tcp, udp, icmp, tcp6 = entries
    assert (tcp.state, tcp.assured, tcp.unreplied, tcp.mark, tcp.zone) == ("ESTABLISHED", True, False, 7, 3)
    assert tcp.reply.key("sport") == "80"
    assert udp.unreplied and udp.state is None and udp.timeout == 28
    assert icmp.original.keys == (("type", "8"), ("code", "0"), ("id", "55"))
    assert tcp6.family == "ipv6" and tcp6.state == "SYN_SENT"


def test_lines_written_back_name_everything_the_kernel_needs() -> None:
    tcp, udp, icmp, _ = parse_extended(LISTING)[0]
    assert create_line(tcp) == (
        "-A -t 223 -u SEEN_REPLY,ASSURED -w 3 -m 7 -s 10.1.0.1 -d 10.1.0.2 -r 10.1.0.2 -q 10.1.0.1 -p tcp "
        "--sport 1000 --dport 80 --reply-port-src 80 --reply-port-dst 1000 --state ESTABLISHED")
    assert create_line(udp).startswith("-A -t 28 -u UNSET -s 10.1.0.5")
    assert "--icmp-type 8 --icmp-code 0 --icmp-id 55" in create_line(icmp)
    assert delete_lines(tcp) == ["-D -s 10.1.0.1 -d 10.1.0.2 -p tcp --sport 1000 --dport 80 -w 3",
                                 "-D -s 10.1.0.2 -d 10.1.0.1 -p tcp --sport 80 --dport 1000 -w 3"]


def test_peers_are_the_other_ends() -> None:
    tcp = parse_extended(LISTING)[0][0]
    assert tcp.peers(["10.1.0.1"]) == {"10.1.0.2"}
    assert tcp.peers(["10.9.9.9"]) == set()


@pytest.mark.parametrize("line", [
    "ipv4 2 tcp 6",                                           # too short
    "ipx 2 tcp 6 10 src=1.2.3.4 dst=1.2.3.5 src=1.2.3.5 dst=1.2.3.4",
    "ipv4 2 tcp 6 ten src=1.2.3.4 dst=1.2.3.5 src=1.2.3.5 dst=1.2.3.4",
    "ipv4 2 tcp 6 10 src=1.2.3.4 dst=1.2.3.5",                 # one tuple
    "ipv4 2 tcp 6 10 src=1.2.3.4 dst=; src=1.2.3.5 dst=1.2.3.4",  # not an address: nothing to inject
    "ipv4 2 tcp 6 10 src=1.2.3.4 dst=1.2.3.5 src=1.2.3.5 dst=1.2.3.4 mark=x",
])
def test_malformed_lines_are_refused(line: str) -> None:
    with pytest.raises(ConntrackFormatError):
        parse_extended(line)


@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        entries, _ = parse_extended(text)
    except ConntrackFormatError:
        return
    for e in entries:
        assert " " not in e.original.src and create_line(e).startswith("-A ")


def _ct(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "conntrack", *argv], capture_output=True, text=True,
                          check=False).stdout


@pytest.fixture
def two_tables(netns: str) -> Iterator[tuple[str, str]]:
    other = netns + "-b"
    subprocess.run(["ip", "netns", "add", other], check=True)
    try:
        yield netns, other
    finally:
        subprocess.run(["ip", "netns", "del", other], check=True)


def test_handover_moves_entries_through_the_kernel_and_replaces_what_holds_their_tuples(
        two_tables: tuple[str, str]) -> None:
    src, dst = two_tables
    guest, peer, local_peer = "10.5.0.1", "10.5.0.2", "10.5.0.3"
    lines = [
        f"-A -t 300 -u SEEN_REPLY,ASSURED -m 9 -s {guest} -d {peer} -p tcp --sport 4000 --dport 5432 "
        "--state ESTABLISHED",
        f"-A -t 300 -u SEEN_REPLY,ASSURED -s {local_peer} -d {guest} -p tcp --sport 4001 --dport 443 "
        "--state ESTABLISHED",
        f"-A -t 60 -u SEEN_REPLY -w 2 -s {guest} -d {peer} -p udp --sport 53 --dport 53",
        f"-A -t 60 -u SEEN_REPLY -s {peer} -d {guest} -p icmp --icmp-type 8 --icmp-code 0 --icmp-id 7",
        "-A -t 300 -u SEEN_REPLY -s 10.6.0.1 -d 10.6.0.2 -p tcp --sport 1 --dport 2 --state ESTABLISHED",
    ]
    for line in lines:
        assert subprocess.run(["ip", "netns", "exec", src, "conntrack", *line.split()],
                              capture_output=True, check=False).returncode == 0, line
    # The destination already forwards the database flow, picked up the other way round.
    subprocess.run(["ip", "netns", "exec", dst, "conntrack", "-I", "-s", peer, "-d", guest, "-p", "tcp",
                    "--sport", "5432", "--dport", "4000", "--state", "ESTABLISHED", "-t", "30"], check=True,
                   capture_output=True)

    report = handover(Conntrack(NftRunner(src)), Conntrack(NftRunner(dst)), [guest])
    assert (report.moved, report.missing) == (4, 0)
    landed = _ct(dst, "-L", "-o", "extended")
    assert "10.6.0.1" not in landed  # only the guest's entries
    db = next(line for line in landed.splitlines() if "dport=5432" in line)
    assert f"src={guest} dst={peer} sport=4000" in db  # the guest's orientation, not the pickup's
    assert "mark=9" in db and "ESTABLISHED" in db and "UNREPLIED" not in db
    assert len([line for line in landed.splitlines() if "dport=5432" in line]) == 1
    assert "zone=2" in next(line for line in landed.splitlines() if "udp" in line)
    assert "type=8 code=0 id=7" in landed

    assert forget(Conntrack(NftRunner(src)), [guest], keep_peers=[local_peer]) == 3
    left = _ct(src, "-L", "-o", "extended")
    assert f"src={local_peer} dst={guest}" in left and f"dst={peer}" not in left and "10.6.0.1" in left


def test_entries_identity_ignores_what_moves_on() -> None:
    a = parse_extended(LISTING)[0][0]
    b = parse_extended(LISTING.replace(" 223 ", " 100 "))[0][0]
    assert identity(a) == identity(b) and a != b
