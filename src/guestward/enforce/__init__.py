"""guestward.enforce: see ARCHITECTURE.md."""
