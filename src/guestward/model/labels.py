"""Guest labels: an immutable mapping of Kubernetes-style keys to string values."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

QUARANTINE_LABEL = ("guestward.dev/quarantine", "true")

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*"
_KEY_RE = re.compile(rf"^({_PREFIX}/)?{_NAME}$")
_VALUE_RE = re.compile(rf"^({_NAME})?$")


def label_key_error(key: str) -> str | None:
    """Return why `key` is not a valid label key, or None when it is."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        return f"invalid label key {key!r}: expected [prefix/]name (alphanumerics, '-', '_', '.')"
    prefix, _, _name = key.rpartition("/")
    if len(prefix) > 253:
        return f"invalid label key {key!r}: prefix longer than 253 characters"
    return None


def label_value_error(value: str) -> str | None:
    """Return why `value` is not a valid label value, or None when it is."""
    if not isinstance(value, str) or not _VALUE_RE.fullmatch(value):
        return f"invalid label value {value!r}: at most 63 alphanumerics, '-', '_', '.'"
    return None


class Labels(Mapping[str, str]):
    """An immutable, hashable label set. Two label sets are equal when they hold the same pairs."""

    __slots__ = ("_hash", "_items")

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        pairs = tuple(sorted((items or {}).items()))
        self._items: tuple[tuple[str, str], ...] = pairs
        self._hash = hash(pairs)

    def __getitem__(self, key: str) -> str:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self._items == other._items
        return NotImplemented

    def __repr__(self) -> str:
        return "Labels({" + ", ".join(f"{k!r}: {v!r}" for k, v in self._items) + "})"

    def pairs(self) -> tuple[tuple[str, str], ...]:
        """The label pairs, sorted by key."""
        return self._items

    def with_label(self, key: str, value: str) -> Labels:
        return Labels({**dict(self._items), key: value})

    def without(self, key: str) -> Labels:
        return Labels({k: v for k, v in self._items if k != key})

    @property
    def quarantined(self) -> bool:
        return self.get(QUARANTINE_LABEL[0]) == QUARANTINE_LABEL[1]
