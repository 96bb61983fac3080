"""`guestward agent`, `guestward hook install`, `guestward events`: the parts that keep running."""

from __future__ import annotations

import json
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from guestward.cli.output import clean, line
from guestward.cli.policy_cmd import ConfigOpt, controller, fail, out
from guestward.reconcile import hook
from guestward.reconcile.controller import Controller
from guestward.store.config import config_path


def register(app: typer.Typer) -> None:
    @app.command()
    def agent(
        config: ConfigOpt = None,
        resync: Annotated[float, typer.Option(help="seconds between full resyncs")] = 30.0,
        drift_check: Annotated[float, typer.Option(help="seconds between drift checks (besides nft monitor)")] = 5.0,
        host: Annotated[list[str] | None, typer.Option("--host", help="enforce only this host's tables "
                                                       "(repeatable; default: every configured host)")] = None,
        metrics: Annotated[str, typer.Option("--metrics", metavar="ADDR:PORT|off",
                                             help="serve Prometheus metrics here")] = "127.0.0.1:9464",
        flow_log: Annotated[bool, typer.Option("--flow-log/--no-flow-log",
                                               help="read the drop log (NFLOG) into the store")] = True,
    ) -> None:
        """Follow libvirt's events on every configured host and keep enforcement right (runs until
        stopped; SIGTERM stops it cleanly and leaves every table as it is)."""
        from guestward.reconcile.agent import Agent
        from guestward.reconcile.metrics import parse_listen

        try:
            listen = parse_listen(metrics)
        except ValueError as exc:
            raise fail(str(exc)) from None

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        ctl = controller(config)
        unknown = [h for h in host or [] if h not in {x.name for x in ctl.config.hosts}]
        if unknown:
            raise fail(f"unknown host(s) {', '.join(unknown)} in {config_path(config)}")
        a = Agent(ctl.config, resync_interval=resync, drift_interval=drift_check, only_hosts=host, metrics=listen,
                  flow_log=flow_log)
        signal.signal(signal.SIGTERM, lambda *_: a.stop())
        signal.signal(signal.SIGINT, lambda *_: a.stop())
        a.run()

    hook_app = typer.Typer(help="The libvirt qemu hook that binds a guest's vNICs before its CPUs run.",
                           no_args_is_help=True)
    app.add_typer(hook_app, name="hook")

    @hook_app.command("install")
    def hook_install(
        host: Annotated[str, typer.Option("--host", help="this host's name in the guestward config")],
        libvirt_dir: Annotated[Path, typer.Option(help="libvirt's configuration directory")] = Path("/etc/libvirt"),
        config: ConfigOpt = None,
    ) -> None:
        """Write LIBVIRT_DIR/hooks/qemu for this host and seed the inventory snapshot it compiles from
        (this host's guests read once, and its tables enforced), so the first start after the install is
        bound rather than refused. libvirtd reads hooks when it starts: restart it."""
        ctl = controller(config)
        try:
            ctl.config.host(host)
        except KeyError:
            raise fail(f"no host {host!r} in {config_path(config)}") from None
        target = libvirt_dir / "hooks" / "qemu"
        if target.exists() and "installed by guestward" not in target.read_text(errors="replace"):
            raise fail(f"{target} exists and is not guestward's: merge it by hand")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(hook.script(sys.executable, config_path(config).resolve(), host))
        target.chmod(0o755)
        out.print(line(f"installed {target}; restart libvirtd so that it finds the hook"))
        # The hook compiles from the stored snapshot and refuses starts while there is none: seed it.
        seeding = Controller(ctl.config, only_hosts=[host])
        try:
            commands = seeding.sync()
        except Exception as exc:
            raise fail(f"{target} installed, but the snapshot could not be seeded ({exc}): the hook refuses "
                       "starts until `guestward sync` succeeds") from None
        finally:
            seeding.store.close()
        out.print(line(f"seeded the snapshot from {', '.join(h.name for h in ctl.config.hosts)}: "
                       f"{commands.get(host, 0)} nft commands on {host}"
                       + (f" (unreachable, kept as last seen: {', '.join(seeding.unreachable)})"
                          if seeding.unreachable else "")))

    @app.command()
    def events(
        kind: Annotated[str | None, typer.Option("--kind", help="only this kind (hook, reconcile, drift, ...)")] = None,
        limit: Annotated[int, typer.Option("--limit")] = 50,
        as_json: Annotated[bool, typer.Option("--json")] = False,
        config: ConfigOpt = None,
    ) -> None:
        """The event log: hook runs, reconciles, drift repairs, labels, policy changes (newest first)."""
        rows = controller(config).store.events(kind, limit)
        if as_json:
            print(json.dumps(rows, indent=1))
            return
        for r in rows:
            when = datetime.fromtimestamp(r.pop("at")).isoformat(timespec="milliseconds")
            print(clean(f"{when} {r.pop('kind')} {r.pop('subject')} {json.dumps(r, sort_keys=True)}"))


