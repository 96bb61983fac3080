"""The document schema (pydantic), as users write it. Converted to `policy.model` values after validation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)


class MatchExpressionDoc(_Doc):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class PeerDoc(_Doc):
    guests: dict[str, Any] | None = None
    cidr: list[str] | None = None


class RuleDoc(_Doc):
    name: str
    action: Literal["allow", "deny", "pass"]
    from_: PeerDoc | None = Field(default=None, alias="from")
    to: PeerDoc | None = None
    ports: list[str] | None = None


class SpecDoc(_Doc):
    tier: Literal["quarantine", "platform", "application", "baseline"]
    order: int = Field(default=1000, ge=0, le=1_000_000)
    rules: list[RuleDoc] = Field(default_factory=list)


class MetadataDoc(_Doc):
    name: str
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class PolicyDoc(_Doc):
    apiVersion: Literal["guestward.dev/v1"]
    kind: Literal["Policy"]
    metadata: MetadataDoc
    spec: SpecDoc
