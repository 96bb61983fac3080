"""`python -m guestward`: the same as the `guestward` command."""

from guestward.cli.main import main

main()
