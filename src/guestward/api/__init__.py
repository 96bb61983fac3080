"""HTTP API, authn, RBAC, audit log, event stream (its own issue)."""
