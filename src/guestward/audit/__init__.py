"""guestward.audit: see ARCHITECTURE.md."""
