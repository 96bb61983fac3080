"""`guestward inspect` (a guest by name, or an image file) and `guestward feeds update|list`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from guestward.cli.output import Own, console, error_line, line, text
from guestward.hypervisor import disks as hv_disks
from guestward.hypervisor.errors import HypervisorError
from guestward.inspect import feeds as feed_store
from guestward.inspect import report as reports
from guestward.inspect.chain import ChainError, complete, image_chain
from guestward.inspect.runner import Limits, WorkerError, inspect_chains
from guestward.store.config import Config, ConfigError, load_config
from guestward.store.sqlite import Store

out = console()
err = console(stderr=True)

feeds_app = typer.Typer(help="Offline vulnerability feeds (OSV JSON/zip, Debian security tracker JSON).",
                        no_args_is_help=True)

ConfigOpt = Annotated[str | None, typer.Option("--config", help="guestward config file")]
StateOpt = Annotated[Path | None, typer.Option("--state-dir", help="state dir (default: the config's)")]


def fail(message: str) -> typer.Exit:
    err.print(error_line(message))
    return typer.Exit(2)


def _config(config: str | None, need: bool) -> Config:
    try:
        return load_config(config)
    except ConfigError as exc:
        if need:
            raise fail(str(exc)) from None
        return Config()


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
    app.add_typer(feeds_app, name="feeds")


def inspect(
    guest: Annotated[str | None, typer.Argument(help="guest name (on any configured host)")] = None,
    image: Annotated[list[Path] | None, typer.Option("--image", help="an image file instead of a guest "
                                                     "(repeat for a guest's several disks)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="format of --image: raw or qcow2 (never probed)")] = "raw",
    backing_dir: Annotated[list[str] | None, typer.Option("--backing-dir", help="a directory qcow2 backing "
                                                          "files may live in, besides the image's own")] = None,
    host: Annotated[str | None, typer.Option("--host", help="only look on this configured host")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
    show_diff: Annotated[bool, typer.Option("--diff", help="what changed since the previous inspection")] = False,
    no_store: Annotated[bool, typer.Option("--no-store", help="do not keep the report")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="worker wall-clock limit, seconds")] = 120.0,
    cpu: Annotated[int, typer.Option("--cpu", help="worker CPU limit, seconds")] = 60,
    memory: Annotated[int, typer.Option("--memory", help="worker memory limit, MiB")] = 2048,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """Inventory and findings of a guest's disks, read from the host with nothing in the guest."""
    if (guest is None) == (not image):
        raise fail("name a guest or give --image (not both)")
    cfg = _config(config, need=guest is not None)
    sd = state_dir or cfg.state_dir
    limits = Limits(cpu_seconds=cpu, memory_mb=memory, wall_seconds=timeout)
    notes: list[str] = []
    try:
        if image:
            chains = [image_chain(str(p), fmt, backing_dir) for p in image]
            subject = "image:" + ",".join(str(p.resolve()) for p in image)
            inventory = inspect_chains(chains, limits)
            method = "read-only (image file)"
        else:
            assert guest is not None
            subject, inventory, method, notes = _inspect_guest(cfg, guest, host, backing_dir, limits, sd)
    except (ChainError, WorkerError, HypervisorError, ValueError) as exc:
        raise fail(str(exc)) from None
    at = time.time()
    try:
        rep = reports.build(subject, inventory, sd, at)
    except ValueError as exc:  # a damaged feed index: fail, never report without that feed
        raise fail(str(exc)) from None
    rep["method"] = method
    rep["notes"] += notes
    store = Store(sd / "guestward.db")
    try:
        previous = store.last_inspection(subject)
        if not no_store:
            store.put_inspection(subject, at, rep)
    finally:
        store.close()
    delta = reports.diff(previous, rep) if show_diff else None
    if as_json:
        doc: dict[str, Any] = dict(rep)
        if delta is not None:
            doc["diff"] = delta
        print(json.dumps(doc, indent=2, default=str))
    else:
        render(rep, delta)
    raise typer.Exit(0)


def _inspect_guest(cfg: Config, guest: str, host: str | None, backing_dir: list[str] | None, limits: Limits,
                   state_dir: Path) -> tuple[str, dict[str, Any], str, list[str]]:
    hosts = [h for h in cfg.hosts if host is None or h.name == host]
    if not hosts:
        raise fail(f"no configured host {host!r}" if host else "no hosts configured")
    for h in hosts:
        try:
            active, chains, notes = hv_disks.guest_disks(h.uri, guest)
        except HypervisorError:
            continue
        subject = f"{h.name}/{guest}"
        if not chains:
            raise fail(f"{subject}: no file or block disks to read ({'; '.join(notes)})")
        if active:
            with hv_disks.point_in_time(h.uri, guest, state_dir / "inspect-tmp") as copies:
                return subject, inspect_chains(copies, limits), "point-in-time copy (libvirt backup, push)", notes
        chains = [complete(c, backing_dir) for c in chains]
        return subject, inspect_chains(chains, limits), "read-only (guest stopped)", notes
    raise fail(f"no guest {guest!r} on {', '.join(h.name for h in hosts)}")


def _sev_style(sev: str) -> str:
    return {"critical": "bold red", "high": "red", "medium": "yellow"}.get(sev.lower(), "")


def render(rep: dict[str, Any], delta: dict[str, Any] | None) -> None:
    """The report as tables. Every value in it comes from the image or a feed: each goes through
    `output.text`/`output.line`, so markup, emoji codes and control characters are shown, not run."""
    inv = rep["inventory"]
    osi = inv.get("os", {})
    out.print(line(text(rep["subject"], "bold"), "  ", osi.get("pretty_name") or osi.get("id", "?"),
                   "  hostname ", inv.get("hostname") or "?", f"  ({rep['method']})",
                   Own("  [bold red]PARTIAL[/]" if rep["partial"] else "")))
    vulns = sum(1 for f in rep["findings"] if f["type"] == "vulnerability")
    kernels = ", ".join(str(k["version"]) for k in inv.get("kernels", [])) or "-"
    out.print(line(f"{len(inv.get('packages', []))} packages, kernels {kernels}, "
                   f"{len(inv.get('users', []))} users, {len(inv.get('authorized_keys', []))} SSH keys, "
                   f"{len(inv.get('setuid', []))} setuid/setgid files, {len(inv.get('cron', []))} cron entries, "
                   f"{len(inv.get('services', []))} enabled services; {vulns} vulnerabilities"))
    t = Table(title="Findings", show_lines=False)
    for col in ("severity", "finding", "package", "installed", "fixed", "detail"):
        t.add_column(col)
    for f in rep["findings"]:
        if f["type"] == "config":
            t.add_row(text(f["severity"]), text(f["id"]), "", "", "", text(f"{f['title']}: {f['detail']}"),
                      style=_sev_style(str(f["severity"])))
        else:
            t.add_row(text(f["severity"] or "?"), text(f["id"]), text(f"{f['package']} ({f['source']})"),
                      text(f["installed"]), text(f["fixed"] or "(no fix)"), text(f["feed"]),
                      style=_sev_style(str(f["severity"] or "")))
    out.print(t)
    if inv.get("authorized_keys"):
        k = Table(title="SSH authorized keys")
        for col in ("user", "type", "fingerprint", "comment"):
            k.add_column(col)
        for key in inv["authorized_keys"]:
            k.add_row(text(key["user"]), text(key["type"]), text(key["fingerprint"]), text(key["comment"]))
        out.print(k)
    for e in inv.get("errors", []):
        err.print(line(Own("[yellow]partial:[/] "), f"{e['section']}: {e['error']}"))
    for n in rep.get("notes", []):
        err.print(line("note: ", n))
    if delta is not None:
        since = time.ctime(delta["since"]) if delta["since"] else "never (first inspection)"
        out.print(text(f"Changes since {since}", "bold"))
        for kind, items in delta["added"].items():
            for i in items:
                out.print(line(Own("  [green]+[/] "), f"{kind}: {i}"))
        for kind, items in delta["removed"].items():
            for i in items:
                out.print(line(Own("  [red]-[/] "), f"{kind}: {i}"))


@feeds_app.command("update")
def feeds_update(
    source: Annotated[str, typer.Option("--from", help="a feed file, OSV directory or zip, or an https URL")],
    name: Annotated[str | None, typer.Option("--name", help="the feed's name (default: from the source)")] = None,
    sha256: Annotated[str | None, typer.Option("--sha256", help="the file's expected SHA-256 (hex): always "
                                               "checked; required for an http:// URL")] = None,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """Store a vulnerability feed under guestward's state dir (replacing one of the same name only once
    the new one is fetched, verified and indexed: a refused feed leaves the stored one in force)."""
    sd = state_dir or _config(config, need=False).state_dir
    try:
        meta = feed_store.update(sd, source, name, sha256)
    except (feed_store.FeedError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    out.print(line(f"feed {meta['name']}: {meta['format']}, {meta['entries']} entries for "
                   f"{', '.join(map(str, meta['releases'][:8])) or 'no supported release'}"))


@feeds_app.command("list")
def feeds_list(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """The stored feeds."""
    sd = state_dir or _config(config, need=False).state_dir
    try:
        metas = feed_store.list_feeds(sd)
    except ValueError as exc:
        raise fail(str(exc)) from None
    for m in metas:
        out.print(line(f"{m['name']}  {m['format']}  {m['entries']} entries  updated {time.ctime(m['updated_at'])}  "
                       f"from {m['source']}"))
    for name in feed_store.legacy_feeds(sd):
        err.print(line(f"note: feed {name} was stored by an older guestward and is no longer read: "
                       "`guestward feeds update` it again"))
