"""Persistence behind one small interface (SQLite, embedded; etcd for fleets comes later)."""
