"""The audit's values: check metadata and rules (validated at load), facts' results, waivers.

A check is data: metadata (title stating the secure condition, severity, rationale, remediation,
references naming the catalogue's source) plus one rule. A rule is a selector into a fact and an
operator from a closed set (`Op`), or `code` when a check needs more than that (its folder then
holds `check.py`). Unknown fields and operators are load errors, never silently ignored.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Severity(StrEnum):
    info = "info"
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class Status(StrEnum):
    passed = "pass"
    failed = "fail"
    waived = "waived"
    not_applicable = "n/a"
    error = "error"


class Op(StrEnum):
    """The closed set of operators. Each is the *fail* condition over the selected values."""

    exists = "exists"            # any selected element (or attribute) exists
    missing = "missing"          # no selected element (or attribute) exists
    equals = "equals"            # a value equals the operand
    not_equals = "not_equals"    # a value differs from the operand
    in_ = "in"                   # a value is one of the operand list
    not_in = "not_in"            # a value is none of the operand list
    matches = "matches"          # a value matches the operand regex (re.search)
    not_matches = "not_matches"  # a value does not match the operand regex
    lt = "lt"                    # a value, as an integer, is below the operand
    gt = "gt"                    # a value, as an integer, is above the operand
    contains = "contains"        # a list value contains the operand
    lacks = "lacks"              # a list value lacks the operand (a scalar counts as a list of one)
    count_gt = "count_gt"        # more selected elements than the operand


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Operand = str | int | list[str] | None


def _check_operand(op: Op, operand: Operand) -> None:
    needs_list = {Op.in_, Op.not_in}
    needs_int = {Op.lt, Op.gt, Op.count_gt}
    needs_none = {Op.exists, Op.missing}
    if op in needs_list and not isinstance(operand, list):
        raise ValueError(f"operator {op.value} needs a list operand")
    if op in needs_int and not isinstance(operand, int):
        raise ValueError(f"operator {op.value} needs an integer operand")
    if op in needs_none and operand is not None:
        raise ValueError(f"operator {op.value} takes no operand")
    if op in {Op.matches, Op.not_matches}:
        if not isinstance(operand, str):
            raise ValueError(f"operator {op.value} needs a regex operand")
        try:
            re.compile(operand)
        except re.error as exc:
            raise ValueError(f"bad regex {operand!r}: {exc}") from None


class LabelMatch(_Strict):
    """Guest labels (POLICY.md section 1) that must all be present with these values."""

    labels: dict[str, str]

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.labels.items())


class SeverityWhen(LabelMatch):
    severity: Severity


class DomainRule(_Strict):
    """Selectors are ElementTree paths relative to `<domain>` (`devices/disk[@device='floppy']`);
    any selector's match counts. `value` picks `@attr` or `text` of each selected element."""

    kind: Literal["domain"]
    select: list[str] = Field(min_length=1)
    value: str | None = None
    fail_if: Op
    operand: Operand = None
    when: list[str] = []      # the check applies only where one of these matches
    unless: list[str] = []    # a match of one of these makes the domain pass
    when_labels: LabelMatch | None = None
    severity_when: list[SeverityWhen] = []

    @field_validator("value")
    @classmethod
    def _value(cls, v: str | None) -> str | None:
        if v is not None and v != "text" and not re.fullmatch(r"@[\w:{}./-]+", v):
            raise ValueError("value is `text` or `@attribute`")
        return v

    @model_validator(mode="after")
    def _operand(self) -> DomainRule:
        _check_operand(self.fail_if, self.operand)
        return self


class ConfCondition(_Strict):
    key: str
    fail_if: Op
    operand: Operand = None
    default: Any = None
    file: str | None = None

    @model_validator(mode="after")
    def _operand(self) -> ConfCondition:
        _check_operand(self.fail_if, self.operand)
        return self


class ConfRule(_Strict):
    """A key of a libvirt-style config file (`/etc/libvirt/qemu.conf`), with libvirt's default
    when the key (or the file) is absent. `when`: conditions (in the same file unless named) that
    must all *hold as fail conditions* for the check to apply, e.g. `listen_tcp equals 1`."""

    kind: Literal["conf"]
    file: str | list[str]  # a list: every one of these files the host has is judged (libvirtd.conf, virtqemud.conf)
    key: str
    default: Any = None
    fail_if: Op
    operand: Operand = None
    when: list[ConfCondition] = []

    @model_validator(mode="after")
    def _operand(self) -> ConfRule:
        _check_operand(self.fail_if, self.operand)
        return self


FileTest = Literal["world_readable", "world_writable", "group_readable", "group_writable", "not_root_owned",
                   "exists", "symlink"]


class FileRule(_Strict):
    """File metadata under the host root: every path matching one of `paths` (globs) is tested."""

    kind: Literal["files"]
    paths: list[str] = Field(min_length=1)
    fail_if: list[FileTest] = Field(min_length=1)
    kinds: list[Literal["file", "dir", "symlink"]] = ["file", "dir", "symlink"]


class CodeRule(_Strict):
    """The check's `check.py` decides; `scope` says which facts it gets."""

    kind: Literal["code"]
    scope: Literal["domain", "host", "fleet"]
    params: dict[str, Any] = {}


Rule = Annotated[DomainRule | ConfRule | FileRule | CodeRule, Field(discriminator="kind")]


class Reference(_Strict):
    source: str = Field(min_length=3)
    id: str | None = None
    url: str | None = None


ID_RE = r"LV[DH]-\d{3}"


class CheckSpec(_Strict):
    id: Annotated[str, Field(pattern=f"^{ID_RE}$")]
    name: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
    title: str = Field(min_length=10)
    severity: Severity
    rationale: str = Field(min_length=10)
    remediation: str = Field(min_length=10)
    references: list[Reference] = Field(min_length=1)
    rule: Rule

    @property
    def scope(self) -> Literal["domain", "host", "fleet"]:
        if isinstance(self.rule, DomainRule):
            return "domain"
        if isinstance(self.rule, CodeRule):
            return self.rule.scope
        return "host"


class Waiver(_Strict):
    """One accepted risk: `check` (an id or `*`), for guests named (globs) or the host, until `expires`."""

    check: Annotated[str, Field(pattern=f"^({ID_RE}|\\*)$")]
    guests: list[str] = []
    host: bool = False
    justification: str = Field(min_length=3)
    expires: dt.date
    source: str = "waiver file"

    @model_validator(mode="after")
    def _scope(self) -> Waiver:
        if not self.guests and not self.host:
            raise ValueError("a waiver names guests (globs) or `host: true`")
        return self


class WaiverFile(_Strict):
    waivers: list[Waiver]


@dataclass(frozen=True, slots=True)
class Result:
    """One (check, subject) verdict. A plain slotted dataclass: an audit makes ~100 per document."""

    check: str
    subject: str              # "domain NAME (VIEW SOURCE)" or "host ROOT"
    kind: Literal["domain", "host", "fleet", "input"]
    status: Status
    severity: Severity
    message: str = ""
    waiver: str | None = None  # the reason, for waived results
    source: str | None = None  # the file or URI the facts came from

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "subject": self.subject, "kind": self.kind, "status": self.status.value,
                "severity": self.severity.value, "message": self.message, "waiver": self.waiver,
                "source": self.source}


class Benchmark(_Strict):
    """A compliance mapping: a framework's controls to check ids (kept apart from the checks)."""

    id: str
    title: str
    source: str
    controls: list[BenchmarkControl]


class BenchmarkControl(_Strict):
    id: str
    title: str
    checks: list[Annotated[str, Field(pattern=f"^{ID_RE}$")]] = []
    note: str | None = None


Benchmark.model_rebuild()
