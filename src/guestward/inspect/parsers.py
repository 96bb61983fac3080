"""Parsers for the guest files an inspection reads: text in, plain values out (no files, no clock).

Guest files are untrusted: every parser tolerates garbage (skips what it cannot read) and never
evaluates anything.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import re
import shlex
from collections.abc import Callable, Iterator
from typing import Any

NOLOGIN_SHELLS = {"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false", "/bin/sync", ""}

# sshd's compiled-in defaults (OpenSSH 9.x) for the settings the findings look at.
SSHD_DEFAULTS = {
    "permitrootlogin": "prohibit-password",
    "passwordauthentication": "yes",
    "permitemptypasswords": "no",
    "pubkeyauthentication": "yes",
    "kbdinteractiveauthentication": "yes",
    "authorizedkeysfile": ".ssh/authorized_keys .ssh/authorized_keys2",
    "usepam": "no",
    "x11forwarding": "no",
    "port": "22",
}


def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value]
        out[key.strip()] = parts[0] if parts else ""
    return out


def parse_passwd(text: str) -> list[dict[str, Any]]:
    users = []
    for line in text.splitlines():
        f = line.split(":")
        if len(f) < 7 or not f[0] or f[0].startswith(("#", "+", "-")):
            continue
        try:
            uid, gid = int(f[2]), int(f[3])
        except ValueError:
            continue
        users.append({"name": f[0], "uid": uid, "gid": gid, "home": f[5], "shell": f[6],
                      "login_shell": f[6] not in NOLOGIN_SHELLS and not f[6].endswith("nologin"),
                      "passwd_field": f[1]})
    return users


def password_state(field: str) -> str:
    """`empty` (no password needed), `locked`, `set`."""
    if field == "":
        return "empty"
    if field.startswith(("!", "*")) or field in ("x",):
        return "locked"
    return "set"


def parse_shadow(text: str) -> dict[str, str]:
    """user -> password state."""
    out = {}
    for line in text.splitlines():
        f = line.split(":")
        if len(f) >= 2 and f[0]:
            out[f[0]] = password_state(f[1])
    return out


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    cur: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if cur:
                yield cur
            cur, last = {}, ""
        elif line[0] in " \t":
            if last:
                cur[last] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip()
            cur[last] = value.strip()
    if cur:
        yield cur


_SOURCE = re.compile(r"^(\S+)(?:\s+\((\S+)\))?$")


def parse_dpkg_status(text: str) -> list[dict[str, str]]:
    """Installed packages from /var/lib/dpkg/status, with the source package and its version (the key
    the Debian tracker and OSV use; dpkg leaves `Source:` out when it equals the binary name)."""
    pkgs = []
    for st in _stanzas(text):
        if "Package" not in st or "Version" not in st:
            continue
        if st.get("Status", "").split()[-1:] != ["installed"]:
            continue
        src, src_version = st["Package"], st["Version"]
        if "Source" in st and (m := _SOURCE.match(st["Source"])):
            src = m.group(1)
            src_version = m.group(2) or st["Version"]
        pkgs.append({"manager": "dpkg", "name": st["Package"], "version": st["Version"],
                     "arch": st.get("Architecture", ""), "source": src, "source_version": src_version})
    return pkgs


def parse_apk_installed(text: str) -> list[dict[str, str]]:
    pkgs = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if len(line) > 2 and line[1] == ":":
                fields.setdefault(line[0], line[2:])
        if "P" in fields and "V" in fields:
            pkgs.append({"manager": "apk", "name": fields["P"], "version": fields["V"], "arch": fields.get("A", ""),
                         "source": fields.get("o", fields["P"]), "source_version": fields["V"]})
    return pkgs


def sshd_effective(read: Callable[[str], str | None], glob: Callable[[str], list[str]],
                   path: str = "/etc/ssh/sshd_config") -> dict[str, Any]:
    """sshd's effective global settings: the first value of a keyword wins (as in sshd), `Include` is
    followed (relative to /etc/ssh, globbed, sorted), keywords inside `Match` blocks are not global."""
    settings: dict[str, str] = {}
    files: list[str] = []
    match_blocks = 0

    def load(p: str, depth: int) -> None:
        nonlocal match_blocks
        text = read(p)
        if text is None or depth > 8:
            return
        files.append(p)
        in_match = False
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.replace("=", " ", 1).split(None, 1)
            key = parts[0].lower()
            value = parts[1].strip() if len(parts) > 1 else ""
            if key == "match":
                in_match = True
                match_blocks += 1
                continue
            if key == "include":
                for pattern in value.split():
                    full = pattern if pattern.startswith("/") else "/etc/ssh/" + pattern
                    for inc in sorted(glob(full)):
                        load(inc, depth + 1)
                continue
            if not in_match:
                settings.setdefault(key, value)

    load(path, 0)
    present = bool(files)
    effective = {**SSHD_DEFAULTS, **{k: v.lower() if k in SSHD_DEFAULTS and k != "authorizedkeysfile" else v
                                      for k, v in settings.items()}}
    return {"present": present, "files": files, "explicit": settings, "effective": effective,
            "match_blocks": match_blocks}


def glob_filter(names: list[str], pattern: str) -> list[str]:
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


_KEY_TYPES = re.compile(r"^(ssh-(rsa|dss|ed25519|ed448)|ecdsa-sha2-\S+|sk-\S+@openssh\.com)$")


def parse_authorized_keys(text: str) -> list[dict[str, str]]:
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, posix=True)
        except ValueError:
            words = line.split()
        idx = next((i for i, w in enumerate(words) if _KEY_TYPES.match(w)), None)
        if idx is None or idx + 1 >= len(words):
            continue
        blob = words[idx + 1]
        try:
            raw = base64.b64decode(blob, validate=True)
            fp = "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
        except ValueError:
            fp = "invalid"
        keys.append({"type": words[idx], "fingerprint": fp, "comment": " ".join(words[idx + 2:]),
                     "options": " ".join(words[:idx])})
    return keys


def parse_crontab(text: str, *, system: bool) -> list[dict[str, str]]:
    """Entries of a crontab: system ones (/etc/crontab, /etc/cron.d) carry a user field."""
    entries = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            continue  # an environment assignment
        if line.startswith("@"):
            parts = line.split(None, 2 if system else 1)
            sched, rest = parts[0], parts[1:]
        else:
            parts = line.split(None, 6 if system else 5)
            if len(parts) < (7 if system else 6):
                continue
            sched, rest = " ".join(parts[:5]), parts[5:]
        user = rest[0] if system and len(rest) > 1 else ""
        cmd = rest[-1] if rest else ""
        entries.append({"schedule": sched, "user": user, "command": cmd})
    return entries
