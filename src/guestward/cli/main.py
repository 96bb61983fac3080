"""`guestward`: the command-line front door. Subcommands live in their own modules and are added here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="guestward",
    help="Security policy that follows libvirt guests: labels in the domain XML, enforced on every vNIC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
