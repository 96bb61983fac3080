"""Risky-configuration findings from an inventory: values in, findings out.

Each finding: `{"type": "config", "id", "severity", "title", "detail"}`. sshd's settings are the
effective ones (defaults applied, first value wins), so `PermitRootLogin` absent means
`prohibit-password`, not `yes`.
"""

from __future__ import annotations

from typing import Any


def _f(fid: str, severity: str, title: str, detail: str) -> dict[str, Any]:
    return {"type": "config", "id": fid, "severity": severity, "title": title, "detail": detail}


def config_findings(inv: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ssh = inv.get("sshd") or {}
    eff = ssh.get("effective") or {}
    users = inv.get("users") or []
    if ssh.get("present") and eff.get("permitrootlogin") == "yes":
        out.append(_f("ssh-root-login", "high", "sshd permits root login with a password",
                      f"PermitRootLogin yes ({', '.join(ssh.get('files', []))})"))
    empty = [u for u in users if u.get("password") == "empty" and u.get("login_shell")]
    for u in empty:
        over_ssh = (ssh.get("present") and eff.get("permitemptypasswords") == "yes"
                    and eff.get("passwordauthentication") == "yes")
        out.append(_f("empty-password", "critical" if over_ssh else "high",
                      f"user {u['name']} logs in without a password" + (" (also over SSH)" if over_ssh else ""),
                      f"uid {u['uid']}, shell {u['shell']}"))
    for u in users:
        if u.get("uid") == 0 and u.get("name") != "root":
            out.append(_f("extra-uid0", "critical", f"user {u['name']} has uid 0", f"shell {u['shell']}, "
                          f"home {u['home']}, password {u.get('password')}"))
    for k in inv.get("authorized_keys") or []:
        if k.get("user") == "root" or any(u["name"] == k.get("user") and u.get("uid") == 0 for u in users):
            out.append(_f("root-authorized-key", "medium", f"an SSH key logs in as {k['user']}",
                          f"{k['type']} {k['fingerprint']} {k.get('comment', '')} in {k['file']}".strip()))
    seen_files = set()
    for c in inv.get("cron") or []:
        if c.get("writable") and c["file"] not in seen_files:
            seen_files.add(c["file"])
            out.append(_f("writable-cron", "high", f"cron file {c['file']} is writable by non-root",
                          f"mode {c['mode']}, owner uid {c['owner_uid']}"))
    for d in inv.get("cron_dirs") or []:
        if d.get("writable"):
            out.append(_f("writable-cron", "high", f"cron directory {d['dir']} is writable by non-root",
                          f"mode {d['mode']}, owner uid {d['owner_uid']}"))
    for s in inv.get("setuid") or []:
        if s.get("packaged") is False:
            bits = "setuid" if s["setuid"] else "setgid"
            out.append(_f("unpackaged-setuid", "high" if s["setuid"] and s["uid"] == 0 else "medium",
                          f"{bits} file {s['path']} belongs to no package",
                          f"mode {s['mode']}, uid {s['uid']}, gid {s['gid']}, {s['size']} bytes"))
    return out
