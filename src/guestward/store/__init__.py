"""guestward.store: see ARCHITECTURE.md."""
