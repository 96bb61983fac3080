"""guestward.lab: see ARCHITECTURE.md."""
