"""guestward.compile: see ARCHITECTURE.md."""
