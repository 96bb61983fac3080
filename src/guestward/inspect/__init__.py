"""guestward.inspect: see ARCHITECTURE.md."""
