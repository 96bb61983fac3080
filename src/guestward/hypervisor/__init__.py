"""guestward.hypervisor: see ARCHITECTURE.md."""
