"""Where a feed comes from: https is trusted by its verified certificate, plain http only with a SHA-256
the operator gives (checked whenever given); a directory feed is copied without following any symlink
or opening any special file, so nothing outside it is read. Every refusal names the input, and the
stored feed stays in force. Real servers on loopback (http.server, TLS from a certificate made here)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guestward.inspect import feeds
from guestward.inspect.feed_stream import Limits
from tests.inspect.feedkit import NAME, bounded_cli, osv, stored_feed

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect/").replace("~", "/"))
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


class Server:
    def __init__(self, root: Path, tls: ssl.SSLContext | None) -> None:
        handler = type("H", (_Handler,), {"requests": []})
        self.handler = handler
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        if tls:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def requests(self) -> list[str]:
        return self.handler.requests  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def servers(tmp_path: Path, cert: tuple[Path, Path]) -> Iterator[tuple[Server, Server, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    plain, tls = Server(root, None), Server(root, ctx)
    yield plain, tls, root
    plain.httpd.shutdown()
    tls.httpd.shutdown()


def _feed(root: Path, name: str = "Debian.json", size: int = 1) -> tuple[str, str]:
    data = json.dumps([osv(f"CVE-2099-{i:04d}") for i in range(size)]).encode()
    (root / name).write_bytes(data)
    return name, hashlib.sha256(data).hexdigest()


# (how the feed is reached, --sha256 given: none / right / wrong / RIGHT in upper case, outcome regex or None)
URL_CASES = [
    ("https", "none", None),
    ("https", "right", None),
    ("https", "upper", None),
    ("https", "wrong", r"{url}: SHA-256 {sha} is not the expected {want}"),
    ("https-untrusted", "none", r"{url}: .*CERTIFICATE_VERIFY_FAILED.*"),
    ("https-to-http", "none", r"{url}: redirected to http://127\.0\.0\.1:\d+/Debian\.json, not https "
                              r"\(give --sha256 to accept it\)"),
    ("https-to-http", "right", None),
    ("http", "none", r"{url}: plain http has no integrity: use https, or give --sha256 of the file"),
    ("http", "right", None),
    ("http", "wrong", r"{url}: SHA-256 {sha} is not the expected {want}"),
    ("http-missing", "right", r"{url}: HTTP 404 File not found"),
    ("ftp", "right", r"{url}: only https:// \(or http:// with --sha256\) URLs are fetched"),
    ("file", "right", r"{url}: only https:// \(or http:// with --sha256\) URLs are fetched"),
]


@pytest.mark.parametrize(("via", "given_sha", "refusal"), URL_CASES)
def test_url_integrity(via: str, given_sha: str, refusal: str | None, servers: tuple[Server, Server, Path],
                       cert: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain, tls, root = servers
    name, sha = _feed(root)
    if via != "https-untrusted":
        monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))  # trust our test CA, as the system CAs are
    url = {"https": f"{tls.base}/{name}", "https-untrusted": f"{tls.base}/{name}",
           "https-to-http": f"{tls.base}/redirect/{plain.base.replace('/', '~')}~{name}",
           "http": f"{plain.base}/{name}", "http-missing": f"{plain.base}/nope.json",
           "ftp": f"ftp://127.0.0.1/{name}", "file": f"file://{root}/{name}"}[via]
    want = {"none": None, "right": sha, "upper": sha.upper(), "wrong": hashlib.sha256(b"other").hexdigest()}[given_sha]
    stored = stored_feed(tmp_path)
    if refusal is None:
        meta = feeds.update(stored.state, url, NAME, sha256=want)
        assert (meta["sha256"], meta["entries"], meta["source"]) == (sha, 1, url)
        assert (feeds.feeds_dir(stored.state) / f"{NAME}.src").read_bytes() == (root / name).read_bytes()
        return
    with pytest.raises(feeds.FeedError) as exc:
        feeds.update(stored.state, url, NAME, sha256=want)
    pattern = refusal.format(url=re.escape(url), sha=sha, want=want)
    assert re.fullmatch(pattern, str(exc.value)), str(exc.value)
    if (via, given_sha) == ("http", "none"):
        assert plain.requests == [], "plain http without a checksum must not even be requested"
    stored.assert_in_force()


def test_download_size_is_bounded(servers: tuple[Server, Server, Path], tmp_path: Path) -> None:
    plain, _, root = servers
    name, sha = _feed(root, size=2000)
    stored = stored_feed(tmp_path)
    with pytest.raises(feeds.FeedError, match=rf"^{re.escape(plain.base)}/{name}: over 65536 bytes$"):
        feeds.update(stored.state, f"{plain.base}/{name}", NAME, sha256=sha, limits=Limits(max_bytes=65536))
    stored.assert_in_force()


@HYP
@given(pos=st.integers(0, 63), digit=st.sampled_from("0123456789abcdef"), malformed=st.sampled_from(
    ["", "xyz", "0" * 63, "0" * 65, "g" * 64, " " + "0" * 63, None]))
def test_a_local_file_sha256_is_always_checked(pos: int, digit: str, malformed: str | None) -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        stored = stored_feed(tmp)
        name, sha = _feed(tmp)
        src = tmp / name
        wrong = sha[:pos] + digit + sha[pos + 1:]
        if wrong != sha:
            with pytest.raises(feeds.FeedError, match=rf"^{re.escape(str(src))}: SHA-256 {sha} is not the "
                                                       rf"expected {wrong}$"):
                feeds.update(stored.state, str(src), NAME, sha256=wrong)
            stored.assert_in_force()
        if malformed is not None:
            with pytest.raises(feeds.FeedError, match=r"^--sha256 .*: not 64 hex digits$"):
                feeds.update(stored.state, str(src), NAME, sha256=malformed)
            stored.assert_in_force()
        assert feeds.update(stored.state, str(src), NAME, sha256=sha)["sha256"] == sha


HOSTILE = ["link-outside-file", "link-loop-parent", "link-root", "link-dangling", "link-outside-dir", "fifo",
           "socket", "chardev", "too-deep"]


def _plant(kind: str, at: Path, outside: Path) -> Path:
    """Put one hostile entry in the feed directory at `at`; the path an error must name."""
    if kind == "link-outside-file":
        (at / "secret.json").symlink_to(outside / "CVE-OUTSIDE.json")
        return at / "secret.json"
    if kind == "link-loop-parent":
        (at / "loop").symlink_to("..")
        return at / "loop"
    if kind == "link-root":
        (at / "root").symlink_to("/")
        return at / "root"
    if kind == "link-dangling":
        (at / "gone.json").symlink_to(at / "nowhere")
        return at / "gone.json"
    if kind == "link-outside-dir":
        (at / "more").symlink_to(outside)
        return at / "more"
    if kind == "fifo":
        os.mkfifo(at / "pipe.json")
        return at / "pipe.json"
    if kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(at / "sock.json"))
        s.close()
        return at / "sock.json"
    if kind == "chardev":
        os.mknod(at / "zero.json", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: never ends
        return at / "zero.json"
    d = at
    for i in range(40):
        d = d / f"d{i}"
    d.mkdir(parents=True)
    (d / "x.json").write_text(json.dumps(osv("CVE-DEEP")))
    return at


@HYP
@given(kind=st.sampled_from(HOSTILE), depth=st.integers(0, 3), files=st.integers(1, 4))
def test_a_directory_feed_follows_no_symlink_and_reads_nothing_outside(kind: str, depth: int, files: int) -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        stored = stored_feed(tmp)
        outside = tmp / "outside"
        outside.mkdir()
        (outside / "CVE-OUTSIDE.json").write_text(json.dumps(osv("CVE-OUTSIDE")))
        src = tmp / "osv-dir"
        at = src
        for i in range(depth):
            at = at / f"level{i}"
        at.mkdir(parents=True)
        for i in range(files):
            (src / f"CVE-2099-{i:04d}.json").write_text(json.dumps(osv(f"CVE-2099-{i:04d}")))
        named = _plant(kind, at, outside)
        with pytest.raises(feeds.FeedError) as exc:
            feeds.update(stored.state, str(src), NAME)
        msg = str(exc.value)
        if kind.startswith("link"):
            assert msg == f"{named}: a symlink in a directory feed (not followed)"
        elif kind == "too-deep":
            assert re.fullmatch(rf"{re.escape(str(named))}/d0(/d\d+)+: directories nested deeper than 32", msg), msg
        else:
            assert msg == f"{named}: not a regular file or directory (never read)"
        stored.assert_in_force()


for _k in HOSTILE:  # every kind at least once
    test_a_directory_feed_follows_no_symlink_and_reads_nothing_outside = example(kind=_k, depth=1, files=1)(
        test_a_directory_feed_follows_no_symlink_and_reads_nothing_outside)


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_a_special_file_source_is_refused_not_read(special: str, tmp_path: Path) -> None:
    stored = stored_feed(tmp_path)
    src = tmp_path / "pipe.json"
    if special == "fifo":
        os.mkfifo(src)
    else:
        src = Path(special)
    with pytest.raises(feeds.FeedError, match=rf"^{re.escape(str(src))}: not a regular file or directory$"):
        feeds.update(stored.state, str(src), NAME)
    stored.assert_in_force()


def test_symlink_loop_through_the_cli_is_refused_at_once(tmp_path: Path) -> None:
    """The loop that copytree followed 40 levels deep: refused at the link, under 256 MiB, in seconds."""
    stored = stored_feed(tmp_path)
    src = tmp_path / "osv-dir"
    src.mkdir()
    (src / "CVE-2099-0001.json").write_text(json.dumps(osv("CVE-2099-0001")))
    (src / "loop").symlink_to(".")
    r = bounded_cli("feeds", "update", "--from", str(src), "--name", NAME, "--state-dir", str(stored.state))
    assert (r.returncode, r.stderr) == (2, f"error: {src}/loop: a symlink in a directory feed (not followed)"), r
    assert r.seconds < 15 and r.max_rss_mb < 200, r
    stored.assert_in_force()


def test_cli_sha256_option_and_list(servers: tuple[Server, Server, Path], tmp_path: Path) -> None:
    """`feeds update --sha256` through the real command: http refused without it, accepted with it,
    refused for a directory; `feeds list` shows what is in force."""
    plain, _, root = servers
    name, sha = _feed(root)
    state = tmp_path / "state"
    url = f"{plain.base}/{name}"
    r = bounded_cli("feeds", "update", "--from", url, "--state-dir", str(state))
    assert (r.returncode, r.stderr) == (2, f"error: {url}: plain http has no integrity: use https, or give "
                                           "--sha256 of the file"), r
    r = bounded_cli("feeds", "update", "--from", url, "--sha256", sha, "--state-dir", str(state))
    assert (r.returncode, r.stdout.strip()) == (0, "feed Debian: osv, 1 entries for debian:12"), r
    r = bounded_cli("feeds", "update", "--from", str(root), "--sha256", sha, "--state-dir", str(state))
    assert (r.returncode, r.stderr) == (2, f"error: {root}: --sha256 applies to a file or URL, not a directory"), r
    r = bounded_cli("feeds", "list", "--state-dir", str(state))
    assert r.returncode == 0 and re.fullmatch(rf"Debian  osv  1 entries  updated .+  from {re.escape(url)}",
                                              r.stdout.strip()), r


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "x" * 65, "a b", "-x"])
def test_a_feed_name_is_a_plain_file_name(name: str, tmp_path: Path) -> None:
    stored = stored_feed(tmp_path)
    src = tmp_path / "Debian.json"
    src.write_text(json.dumps([osv("CVE-2099-0001")]))
    with pytest.raises(feeds.FeedError, match=r"^feed name .* is not a plain name \(letters, digits, \. _ \+ -; "
                                              r"give --name\)$"):
        feeds.update(stored.state, str(src), name)
    stored.assert_in_force()
