"""Helpers for the lifecycle tests: background probe loops inside guests, the truth table for any set
of running guests (clones take their source's row and column), a packet counter at `external`."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from dataclasses import dataclass

from guestward.lab.lab import Flow, Lab
from guestward.policy import parse_port
from tests.conftest import guestward
from tests.lab.test_enforcement import expected

PROD = {"lb1", "web1", "db1"}  # the baseline lets prod guests ping each other


def expected_with_clones(flow: Flow, clones: dict[str, str]) -> bool:
    src, dst = clones.get(flow.src, flow.src), clones.get(flow.dst, flow.dst)
    if src == dst:  # a clone and its source: only what their shared labels allow between equals
        return str(flow.port) == "icmp" and src in PROD
    return expected(Flow(src, dst, flow.port))


def assert_matrix(lab: Lab, clones: dict[str, str] | None = None, step: str = "") -> int:
    """`lab probe --all` equals the truth table for the guests running now. Returns the flow count."""
    r = guestward("lab", "probe", "--all", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    wrong = []
    for x in rows:
        flow = Flow(x["src"], x["dst"], parse_port(x["port"]))
        want = expected_with_clones(flow, clones or {})
        if (x["verdict"] == "allowed") != want:
            wrong.append(f"{flow}: measured {x['verdict']}")
    assert not wrong, f"after {step}: real packets disagree with the truth table:\n" + "\n".join(wrong)
    return len(rows)


@dataclass
class Watch:
    """`gw-net watch` running in the background inside a guest: a probe every `interval` ms."""

    lab: Lab
    src: str
    tag: str

    @staticmethod
    def start(lab: Lab, src: str, tag: str, proto: str, address: str, port: int, seconds: int = 300,
              interval: int = 200, timeout: int | None = None) -> Watch:
        wait = f" {timeout}" if timeout is not None else ""
        cmd = (f"gw-net watch {proto} {address} {port} {seconds} {interval}{wait} >/tmp/{tag}.w 2>&1 & "
               f"echo $! >/tmp/{tag}.pid")
        assert lab.exec(src, [cmd]).status == 0
        return Watch(lab, src, tag)

    def stop(self) -> list[tuple[int, bool]]:
        out = self.lab.exec(self.src, [f"kill $(cat /tmp/{self.tag}.pid) 2>/dev/null; cat /tmp/{self.tag}.w"],
                            timeout=120).output
        results = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1] in ("allowed", "blocked"):
                results.append((int(parts[0]), parts[1] == "allowed"))
        return results


def longest_outage(results: list[tuple[int, bool]]) -> int:
    """The longest time (ms) between two allowed results in a row."""
    times = [t for t, ok in results if ok]
    return max((b - a for a, b in itertools.pairwise(times)), default=10**9)


class ExternalCounter:
    """Counts packets that reach `external` (the lab's outside namespace) from one source and port."""

    NS = "gwl-ext"

    def __init__(self, source: str, port: int) -> None:
        self.table = "gwtest" + source.replace(".", "_")
        rules = (f"table inet {self.table} {{\n chain input {{\n type filter hook input priority -300;\n"
                 f" ip saddr {source} tcp dport {port} counter\n }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", self.NS, "nft", "-f", "-"], input=rules, text=True, check=True)

    def packets(self) -> int:
        out = subprocess.run(["ip", "netns", "exec", self.NS, "nft", "-j", "list", "table", "inet", self.table],
                             capture_output=True, text=True, check=True).stdout
        for item in json.loads(out)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        raise AssertionError("counter not found")

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "exec", self.NS, "nft", "delete", "table", "inet", self.table], check=False)


def wait_for(predicate: object, timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until `predicate()` held, or None when it did not within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(interval)
    return None
