"""Open connections after an `apply`, with real packets through real nft in private namespaces.

The contract (dataplane/revision.py): a connection that the new policy denies stops within 1 s of the
apply (its next original-direction packet is judged again), one that it still allows keeps flowing
with no loss and no reset, and a reply-direction packet is never judged as if it were new. Streams
send one numbered message every 10 ms; the receiver timestamps each one (CLOCK_MONOTONIC, shared by
every namespace), so "stopped within 1 s" and "no loss" are read off the receiver's log.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from guestward.dataplane.denied import owners
from guestward.enforce import Enforcer, NftRunner
from tests.enforce.topology import Topology, sh

pytestmark = pytest.mark.nft

HOST_ADDR, BRIDGE_MAC = "10.88.0.254", "02:00:00:88:00:fe"
SECONDS = 3.0  # every stream runs this long; the apply comes after APPLY_AT
APPLY_AT = 1.0
STOP_WITHIN = 1.0

# Receiver: prints one JSON object when done: the receive time of every message, and its number.
# Over UDP it answers every datagram: a one-way UDP flow is never `established` (each datagram is
# judged as new anyway); the answers make it a connection like any request/response protocol.
RECEIVE = """
import json, socket, sys, time
proto, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
got, end = [], time.monotonic() + seconds
if proto == "tcp":
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port)); srv.listen(4); print("ready", flush=True)
    srv.settimeout(seconds); conn, _ = srv.accept(); conn.settimeout(0.05); buf = b""
    error = None
    while time.monotonic() < end:
        try:
            data = conn.recv(65536)
        except socket.timeout:
            continue
        except OSError as exc:
            error = repr(exc); break
        if not data:
            break  # the sender's orderly close (FIN): its stream ended, no error
        buf += data
        *lines, buf = buf.split(b"\\n")
        got += [(time.monotonic(), int(x)) for x in lines]
    print(json.dumps({"got": got, "error": error}), flush=True)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port)); s.settimeout(0.05)
    print("ready", flush=True)
    while time.monotonic() < end:
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            continue
        got.append((time.monotonic(), int(data)))
        s.sendto(b"ack", peer)  # an answer makes the connection established, as in any real protocol
    print(json.dumps({"got": got, "error": None}), flush=True)
"""

# Sender: one numbered message every 10 ms for `seconds`; prints how many it sent and any error.
SEND = """
import json, socket, sys, time
proto, dst, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
error, n = None, 0
if proto == "tcp":
    s = socket.create_connection((dst, port), timeout=2)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + seconds
while time.monotonic() < end:
    n += 1
    try:
        if proto == "tcp":
            s.sendall(b"%d\\n" % n)
        else:
            s.sendto(b"%d" % n, (dst, port))
    except OSError as exc:
        error = repr(exc); break
    time.sleep(0.01)
print(json.dumps({"sent": n, "error": error}), flush=True)
"""

# The client asks once, the server answers with a stream (reply direction only): prints receive times.
REPLY_SERVER = """
import socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port)); print("ready", flush=True)
_, peer = s.recvfrom(2048)
end, n = time.monotonic() + seconds, 0
while time.monotonic() < end:
    n += 1; s.sendto(b"%d" % n, peer); time.sleep(0.01)
print(n, flush=True)
"""
REPLY_CLIENT = """
import json, socket, sys, time
dst, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.05); s.sendto(b"go", (dst, port))
got, end = [], time.monotonic() + seconds
while time.monotonic() < end:
    try:
        got.append((time.monotonic(), int(s.recv(2048))))
    except socket.timeout:
        pass
print(json.dumps({"got": got, "error": None}), flush=True)
"""


def policy(*rules: str, tier: str = "application", name: str = "p") -> str:
    body = "\n".join(f"    - {r}" for r in rules)
    return textwrap.dedent(f"""\
        apiVersion: guestward.dev/v1
        kind: Policy
        metadata: {{name: {name}}}
        spec:
          tier: {tier}
          rules:
        """) + body + "\n"


@dataclass
class Stream:
    """One stream's receiver log and its sender's result, once both ended."""

    got: list[tuple[float, int]]
    sent: int
    error: str | None

    def after(self, t: float) -> list[int]:
        return [n for at, n in self.got if at > t]

    def before(self, t: float) -> list[int]:
        return [n for at, n in self.got if at < t]

    def worst_gap(self) -> float:
        times = [at for at, _ in self.got]
        return max((b - a for a, b in itertools.pairwise(times)), default=float("inf"))


class World:
    """A host namespace (bridge address 10.88.0.254) with guests a (10.88.0.1), b (.2), c (.3)."""

    def __init__(self) -> None:
        self.t = Topology()
        self.t.up()
        # A fixed MAC: a bridge otherwise takes its ports' lowest, which changes as guests are added.
        sh("ip", "-n", self.t.host_ns, "link", "set", "br0", "address", BRIDGE_MAC)
        sh("ip", "-n", self.t.host_ns, "addr", "add", f"{HOST_ADDR}/24", "dev", "br0")
        for i, name in enumerate("abc", start=1):
            self.t.add_guest(name, i, {"zone": name})
        self.enforcer = Enforcer(NftRunner(self.t.host_ns))
        self.apply_started = 0.0
        # Off by default: the other tests show what the ct-mark revision does on its own.
        self.cutting, self.cut = False, 0

    def apply(self, *policies: str) -> float:
        """Enforce the policies; returns the monotonic time right after the transaction committed."""
        from guestward.compile import compile_state
        from guestward.model import Inventory
        from guestward.policy import parse_policies
        from tests.enforce.topology import HOST

        parsed = parse_policies([(f"p{i}.yaml", p) for i, p in enumerate(policies)])
        state = compile_state(Inventory((HOST,), tuple(self.t.guests.values())), parsed)
        self.apply_started = time.monotonic()
        self.enforcer.sync(state.hosts[HOST.name])
        applied = time.monotonic()
        if self.cutting:  # as Controller.apply does next: the entries the new policy denies go (denied.py)
            ends = owners(self.t.guests.values(), state)
            self.cut = self.enforcer.cut_denied([str(a) for a in state.hosts[HOST.name].dispatch], ends, parsed)
        return applied

    def ns(self, who: str) -> str:
        return self.t.host_ns if who == "host" else self.t.ns(who)

    def run(self, who: str, code: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns(who), sys.executable, "-c", textwrap.dedent(code),
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def close(self) -> None:
        self.t.close()


def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"receiver did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"


def _result(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=SECONDS + 10)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


class Flow:
    """A started stream from `src` to `dst` (`host` or a guest name)."""

    def __init__(self, w: World, proto: str, src: str, dst: str, port: int) -> None:
        self.proto = proto
        addr = HOST_ADDR if dst == "host" else f"10.88.0.{'abc'.index(dst) + 1}"
        if proto == "icmp":
            self.rx = None
            self.tx = subprocess.Popen(["ip", "netns", "exec", w.ns(src), "ping", "-D", "-n", "-i", "0.01",
                                        "-w", str(int(SECONDS) + 1), addr], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            self.start = time.time()
            self.mono_start = time.monotonic()
            return
        self.rx = w.run(dst, RECEIVE, proto, str(port), str(SECONDS + 0.5))
        _ready(self.rx)
        self.tx = w.run(src, SEND, proto, addr, str(port), str(SECONDS))

    def result(self) -> Stream:
        if self.proto == "icmp":
            out, _ = self.tx.communicate(timeout=SECONDS + 10)
            # `[wall-clock] 64 bytes from ...: icmp_seq=N ...`: wall clock, turned into monotonic time
            got = []
            for line in out.splitlines():
                if "icmp_seq=" in line and line.startswith("["):
                    wall = float(line[1:line.index("]")])
                    seq = int(line.split("icmp_seq=")[1].split()[0])
                    got.append((self.mono_start + (wall - self.start), seq))
            return Stream(got, 0, None)
        assert self.rx is not None
        rx, tx = _result(self.rx), _result(self.tx)
        return Stream([(float(a), int(n)) for a, n in rx["got"]], int(tx["sent"]),  # type: ignore[attr-defined]
                      (rx["error"] or tx["error"]))  # type: ignore[arg-type]


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    try:
        yield w
    finally:
        w.close()


def allow(name: str, src: str, dst: str, ports: str = "") -> str:
    def side(x: str) -> str:
        return f"{{cidr: [{HOST_ADDR}/32]}}" if x == "host" else f"{{guests: {{zone: {x}}}}}"
    extra = f", ports: [{ports}]" if ports else ""
    return f"{{name: {name}, action: allow, from: {side(src)}, to: {side(dst)}{extra}}}"


def deny(name: str, src: str, dst: str, ports: str = "") -> str:
    return allow(name, src, dst, ports).replace("action: allow", "action: deny")


def assert_stopped(s: Stream, applied: float, what: str, started: float) -> None:
    """No message arrived later than STOP_WITHIN after the apply returned; prints when the last one did,
    from the start of the apply (sync: read-back, diff, one nft transaction) and from its return."""
    assert len(s.before(applied)) > 20, f"{what}: did not flow before the apply ({len(s.got)} messages)"
    late = s.after(applied + STOP_WITHIN)
    assert not late, f"{what}: {len(late)} messages arrived more than {STOP_WITHIN} s after the apply"
    last = max(at for at, _ in s.got)
    print(f"\n{what}: last message {1000 * (last - started):.0f} ms after the apply started, "
          f"{1000 * (last - applied):.0f} ms after it returned (it took {1000 * (applied - started):.0f} ms)")


def assert_untouched(s: Stream, applied: float, what: str) -> None:
    assert s.error is None, f"{what}: {s.error}"
    assert len(s.after(applied + STOP_WITHIN)) > 50, f"{what}: stopped after the apply"
    numbers = [n for _, n in s.got]
    if s.sent:  # tcp/udp: every message arrived, in order
        assert numbers == list(range(1, s.sent + 1)), f"{what}: lost {s.sent - len(numbers)} of {s.sent}"
    else:  # icmp: no sequence number missing between the first and the last answer
        assert numbers == list(range(numbers[0], numbers[-1] + 1)), f"{what}: lost echo replies"
    assert s.worst_gap() < 0.5, f"{what}: a gap of {s.worst_gap():.2f} s"


@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp"])
def test_a_denied_connection_stops_and_an_allowed_one_flows(world: World, proto: str) -> None:
    """a->b is denied by the new policy, c->b still allowed: between guests on one host (forward hook)."""
    ports = {"tcp": "tcp/5001-5002", "udp": "udp/5001-5002", "icmp": "icmp"}[proto]
    world.apply(policy(allow("a-b", "a", "b", ports), allow("c-b", "c", "b", ports)))
    denied, kept = Flow(world, proto, "a", "b", 5001), Flow(world, proto, "c", "b", 5002)
    time.sleep(APPLY_AT)
    applied = world.apply(policy(allow("c-b", "c", "b", ports)))
    assert_stopped(denied.result(), applied, f"{proto} a->b", world.apply_started)
    assert_untouched(kept.result(), applied, f"{proto} c->b")


@pytest.mark.parametrize("side", ["egress", "ingress"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_denied_at_the_sources_egress_or_the_destinations_ingress(world: World, proto: str, side: str) -> None:
    """egress: guest a streams to the host itself (input hook: only a's egress judges it); ingress: the
    host streams to guest a (output hook: only a's ingress judges it). A deny rule stops it."""
    ports = f"{proto}/5001"
    src, dst = ("a", "host") if side == "egress" else ("host", "a")
    other = ("b", "host") if side == "egress" else ("host", "b")
    both = f"{proto}/5001-5002"  # two receivers in the host namespace need two ports
    world.apply(policy(allow("x", src, dst, ports), allow("y", *other, both)))
    denied, kept = Flow(world, proto, src, dst, 5001), Flow(world, proto, *other, 5002)
    time.sleep(APPLY_AT)
    applied = world.apply(policy(deny("x", src, dst, ports), allow("y", *other, both)))
    assert_stopped(denied.result(), applied, f"{proto} {src}->{dst}", world.apply_started)
    assert_untouched(kept.result(), applied, f"{proto} {other[0]}->{other[1]}")


def test_an_allowed_flow_whose_deciding_rule_changed_keeps_flowing(world: World) -> None:
    """The rule that allowed it goes; another policy, in another tier, allows it now: no loss."""
    world.apply(policy(allow("old", "a", "b", "tcp/5001")))
    kept = Flow(world, "tcp", "a", "b", 5001)
    time.sleep(APPLY_AT)
    applied = world.apply(policy(allow("new", "a", "b"), tier="platform", name="other"))
    assert_untouched(kept.result(), applied, "tcp a->b")


def test_pass_and_deny_across_tiers(world: World) -> None:
    """Before: platform passes a->b, application allows it. After: platform passes, application denies
    a->b, while c->b is allowed by platform directly: a->b stops, c->b flows."""
    world.apply(policy(allow("pass-a", "a", "b").replace("allow", "pass"), allow("c", "c", "b"), tier="platform",
                       name="plat"),
                policy(allow("a-b", "a", "b", "udp/5001")))
    denied, kept = Flow(world, "udp", "a", "b", 5001), Flow(world, "udp", "c", "b", 5002)
    time.sleep(APPLY_AT)
    applied = world.apply(policy(allow("pass-a", "a", "b").replace("allow", "pass"), allow("c", "c", "b"),
                                 tier="platform", name="plat"),
                          policy(deny("a-b", "a", "b", "udp/5001")))
    assert_stopped(denied.result(), applied, "udp a->b", world.apply_started)
    assert_untouched(kept.result(), applied, "udp c->b")


def test_a_reply_is_never_judged_as_new(world: World) -> None:
    """a asks b once (allowed a->b), b streams answers back (b->a is not allowed as a new connection).
    An apply that changes the policy (a new revision) while only replies flow loses none of them."""
    world.apply(policy(allow("a-b", "a", "b", "udp/5001")))
    server = world.run("b", REPLY_SERVER, "5001", str(SECONDS))
    _ready(server)
    client = world.run("a", REPLY_CLIENT, "10.88.0.2", "5001", str(SECONDS + 0.5))
    time.sleep(APPLY_AT)
    applied = world.apply(policy(allow("a-b", "a", "b", "udp/5001"), allow("c-b", "c", "b")))
    sent = int(server.communicate(timeout=SECONDS + 10)[0].split()[-1])
    got = _result(client)["got"]
    numbers = [int(n) for _, n in got]  # type: ignore[attr-defined]
    assert numbers == list(range(1, sent + 1)), f"replies lost: got {len(numbers)} of {sent}"
    assert len([1 for at, _ in got if at > applied]) > 50  # type: ignore[attr-defined]


def test_a_denied_connection_that_only_answers_stops(world: World) -> None:
    """a asks b once, b streams answers back; the new policy denies a->b. Nothing from a follows the
    ask, so no original-direction packet is re-judged: the apply's cut of denied entries ends it (the
    answers then meet b's egress as a new b->a flow, which no rule allows)."""
    world.cutting = True
    world.apply(policy(allow("a-b", "a", "b", "udp/5001")))
    server = world.run("b", REPLY_SERVER, "5001", str(SECONDS))
    _ready(server)
    client = world.run("a", REPLY_CLIENT, "10.88.0.2", "5001", str(SECONDS + 0.5))
    time.sleep(APPLY_AT)
    applied = world.apply(policy(allow("c-b", "c", "b")))
    server.communicate(timeout=SECONDS + 10)
    got = _result(client)["got"]
    late = [n for at, n in got if at > applied + STOP_WITHIN]  # type: ignore[attr-defined]
    assert not late, f"{len(late)} answers arrived more than {STOP_WITHIN} s after the apply"
    assert world.cut == 1, world.cut
    assert len([1 for at, _ in got if at < applied]) > 20  # type: ignore[attr-defined]


@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp"])
def test_the_cut_takes_only_the_denied_connection(world: World, proto: str) -> None:
    """With the apply's cut: exactly the denied connection's entry goes; the allowed stream loses nothing."""
    world.cutting = True
    ports = {"tcp": "tcp/5001-5002", "udp": "udp/5001-5002", "icmp": "icmp"}[proto]
    world.apply(policy(allow("a-b", "a", "b", ports), allow("c-b", "c", "b", ports)))
    denied, kept = Flow(world, proto, "a", "b", 5001), Flow(world, proto, "c", "b", 5002)
    time.sleep(APPLY_AT)
    applied = world.apply(policy(allow("c-b", "c", "b", ports)))
    assert world.cut == 1, f"{world.cut} entries cut"
    assert_stopped(denied.result(), applied, f"{proto} a->b", world.apply_started)
    assert_untouched(kept.result(), applied, f"{proto} c->b")
