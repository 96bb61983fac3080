"""Apply desired nftables state atomically, in one host's network namespace, touching only our tables."""

from guestward.enforce.enforcer import EnforceError, Enforcer, NftRunner

__all__ = ["EnforceError", "Enforcer", "NftRunner"]
