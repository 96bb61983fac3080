"""Turning intent into enforced state: the controller (apply, sync) and, later, the event loop."""
