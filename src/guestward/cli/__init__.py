"""The `guestward` command."""
