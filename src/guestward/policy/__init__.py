"""The policy language of POLICY.md section 2: schema, parse with `file:line: message` errors, validate.

Pure: it takes texts and returns values. It never evaluates policy (that is `compile/`).
"""

from guestward.policy.errors import Diagnostic, PolicyError
from guestward.policy.model import (
    TIERS,
    Action,
    AnyPeer,
    CidrPeer,
    GuestsPeer,
    Peer,
    Policy,
    PortRange,
    Rule,
)
from guestward.policy.parse import parse_policies, parse_port

__all__ = [
    "TIERS",
    "Action",
    "AnyPeer",
    "CidrPeer",
    "Diagnostic",
    "GuestsPeer",
    "Peer",
    "Policy",
    "PolicyError",
    "PortRange",
    "Rule",
    "parse_policies",
    "parse_port",
]
