"""`guestward`: the command-line front door. Subcommands live in their own modules and are added here."""

from __future__ import annotations

import sys

import typer

from guestward.cli import agent_cmd, audit_cmd, flows_cmd, inspect_cmd, lab_cmd, policy_cmd, status_cmd
from guestward.cli.output import clean

app = typer.Typer(
    name="guestward",
    help="Security policy that follows libvirt guests: labels in the domain XML, enforced on every vNIC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_cmd.register(app)
agent_cmd.register(app)
flows_cmd.register(app)
inspect_cmd.register(app)
audit_cmd.register(app)
status_cmd.register(app)
app.add_typer(lab_cmd.app, name="lab")


def main() -> None:
    """The entry point: an error guestward did not expect in a command (an unreachable host, a failed
    nft transaction) is one line on stderr and exit 2, never a traceback and never exit 1, which
    `explain` and `lab probe` use for "blocked"."""
    try:
        app()
    except (RuntimeError, OSError) as exc:
        print(f"error: {clean(exc)}", file=sys.stderr)  # the message may quote a guest's or a file's text
        sys.exit(2)
