"""The NFLOG reader in a private namespace, on real logged packets: it says when it is bound, prints
one line per packet with names from its namespace, and refuses a group someone else holds."""

from __future__ import annotations

import json
import subprocess
import sys

from guestward.enforce import NftRunner

RULES = """
table inet gwtest {
  chain out {
    type filter hook output priority 0; policy accept;
    udp dport 9 log prefix "gw deny eg-0123456789 application/p/r" group 9 drop
  }
}
"""


def start(netns: str) -> subprocess.Popen[str]:
    return subprocess.Popen(NftRunner(netns).command(sys.executable, "-m", "guestward.enforce.nflog_reader",
                                                     "--group", "9", "--qthresh", "1"),
                            stdout=subprocess.PIPE, text=True)


def test_reader_lines_for_logged_packets(netns: str) -> None:
    run = NftRunner(netns)
    assert run.run("ip", "link", "set", "lo", "up").returncode == 0
    assert subprocess.run(run.command("nft", "-f", "-"), input=RULES, text=True).returncode == 0
    reader = start(netns)
    try:
        assert reader.stdout is not None
        assert json.loads(reader.stdout.readline()) == {"ready": True, "group": 9}
        send = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n" \
               "for i in range(3):\n  try: s.sendto(b'abc', ('127.0.0.1', 9))\n  except OSError: pass"
        assert run.run(sys.executable, "-c", send).returncode == 0
        lines = [json.loads(reader.stdout.readline()) for _ in range(3)]
        for i, x in enumerate(lines):
            assert x["prefix"] == "gw deny eg-0123456789 application/p/r"
            assert (x["family"], x["hook"], x["proto"], x["src"], x["dst"], x["dport"], x["len"]) == (
                "ipv4", "output", "udp", "127.0.0.1", "127.0.0.1", 9, 31)
            assert x["out"] == "lo" and x["in"] is None
            assert (x["seq"], x["lost"]) == (i, 0)
        second = start(netns)
        out, _ = second.communicate(timeout=20)
        assert second.returncode == 1 and "error" in json.loads(out.splitlines()[0])
    finally:
        reader.terminate()
        reader.wait(10)
