"""`guestward`: the command-line front door. Subcommands live in their own modules and are added here."""

from __future__ import annotations

import typer

from guestward.cli import lab_cmd, policy_cmd

app = typer.Typer(
    name="guestward",
    help="Security policy that follows libvirt guests: labels in the domain XML, enforced on every vNIC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_cmd.register(app)
app.add_typer(lab_cmd.app, name="lab")
