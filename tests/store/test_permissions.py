"""The state is private: the database (with its WAL and shared-memory files) is 0600 and a new state
directory 0700, whatever the umask; an earlier 0644 database is tightened; a database file that
another user owns, or a link in its place, is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from guestward.store.lock import enforcement_lock, writer_lock
from guestward.store.sqlite import Store, StoreError


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o002])
def test_a_new_store_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        state = tmp_path / "a" / "state"
        store = Store(state / "guestward.db")
        store.record("x", "y")
        with enforcement_lock(state), writer_lock(state):
            pass
    finally:
        os.umask(old)
    files = {p.name: mode(p) for p in state.iterdir()}
    assert files == {"guestward.db": 0o600, "guestward.db-wal": 0o600, "guestward.db-shm": 0o600,
                     "enforce.lock": 0o600, "write.lock": 0o600}
    assert mode(state) == 0o700
    store.close()


def test_an_earlier_world_readable_store_is_tightened(tmp_path: Path) -> None:
    Store(tmp_path / "guestward.db").close()
    for p in tmp_path.iterdir():
        p.chmod(0o644)
    Store(tmp_path / "guestward.db").close()
    assert {p.name: mode(p) for p in tmp_path.iterdir() if p.name.startswith("guestward.db")} == {
        p.name: 0o600 for p in tmp_path.iterdir() if p.name.startswith("guestward.db")}


def test_a_store_owned_by_another_user_or_a_link_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "guestward.db"
    db.write_bytes(b"")
    os.chown(db, 65534, 65534)
    with pytest.raises(StoreError, match="not a regular file owned by uid 0: refused"):
        Store(db)
    db.unlink()
    db.symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(StoreError, match=r"guestward\.db: "):
        Store(db)
    assert not (tmp_path / "elsewhere.db").exists()
