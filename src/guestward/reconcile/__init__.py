"""guestward.reconcile: see ARCHITECTURE.md."""
