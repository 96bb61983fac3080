"""(Inventory, Policies) -> per-host desired state. Pure.

- `evaluate`: the one verdict of a flow (POLICY.md 2.3), used by `explain` and `reach`.
- `compiler`: identities from label sets, one named set per distinct selector, per-host plans with
  per-vNIC bindings and per-identity rule chains; `Compiler` updates them incrementally.
"""

from guestward.compile.compiler import Compiler, compile_state
from guestward.compile.evaluate import Decision, Endpoint, decide
from guestward.compile.plan import (
    ChainPlan,
    CompiledState,
    Conflict,
    HostPlan,
    Match,
    PlannedRule,
    VnicBinding,
)

__all__ = [
    "ChainPlan",
    "CompiledState",
    "Compiler",
    "Conflict",
    "Decision",
    "Endpoint",
    "HostPlan",
    "Match",
    "PlannedRule",
    "VnicBinding",
    "compile_state",
    "decide",
]
