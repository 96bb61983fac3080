"""guestward.dataplane: see ARCHITECTURE.md."""
