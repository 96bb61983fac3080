"""The catalogue: every folder under `audit/checks/` is one check (`check.yaml`, optional `check.py`,
`pass/` and `fail/` fixtures); `audit/benchmarks/*.yaml` map a framework's controls to check ids.

Loading reads guestward's own package data (as importing a module does), never the audited host.
A load error, a duplicate id or a folder named differently from its id is an error for the whole
catalogue: a silently missing check would read as a pass.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from typing import Any

import yaml
from pydantic import ValidationError

from guestward.audit.model import Benchmark, CheckSpec, CodeRule


class CatalogueError(ValueError):
    pass


@dataclass(frozen=True)
class Check:
    spec: CheckSpec
    folder: Traversable
    code: Callable[..., Any] | None = None

    @property
    def id(self) -> str:
        return self.spec.id


def _checks_root() -> Traversable:
    return resources.files("guestward.audit") / "checks"


def _load_code(folder: Traversable, check_id: str) -> Callable[..., Any]:
    path = folder / "check.py"
    if not path.is_file():
        raise CatalogueError(f"{check_id}: rule kind `code` needs check.py")
    spec = importlib.util.spec_from_file_location(f"guestward.audit.checks.{check_id.replace('-', '_')}", str(path))
    if spec is None or spec.loader is None:
        raise CatalogueError(f"{check_id}: cannot load check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, "evaluate", None)
    if not callable(fn):
        raise CatalogueError(f"{check_id}: check.py has no evaluate()")
    return fn  # type: ignore[no-any-return]


def load_check(folder: Traversable) -> Check:
    meta = folder / "check.yaml"
    if not meta.is_file():
        raise CatalogueError(f"{folder.name}: no check.yaml")
    try:
        raw = yaml.safe_load(meta.read_text())
        spec = CheckSpec.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise CatalogueError(f"{folder.name}/check.yaml: {exc}") from None
    if spec.id != folder.name:
        raise CatalogueError(f"{folder.name}/check.yaml: id {spec.id} differs from its folder's name")
    code = _load_code(folder, spec.id) if isinstance(spec.rule, CodeRule) else None
    return Check(spec, folder, code)


_CACHE: dict[str, list[Check]] = {}


def load_catalogue() -> list[Check]:
    """Every check, sorted by id (loaded once per process)."""
    if "all" in _CACHE:
        return _CACHE["all"]
    checks: dict[str, Check] = {}
    for folder in sorted(_checks_root().iterdir(), key=lambda f: f.name):
        if not folder.is_dir() or folder.name.startswith(("_", ".")):
            continue
        check = load_check(folder)
        if check.id in checks:
            raise CatalogueError(f"duplicate check id {check.id}")
        checks[check.id] = check
    if not checks:
        raise CatalogueError("the catalogue is empty")
    _CACHE["all"] = [checks[k] for k in sorted(checks)]
    return _CACHE["all"]


def load_benchmarks() -> dict[str, Benchmark]:
    out: dict[str, Benchmark] = {}
    known = {c.id for c in load_catalogue()}
    for f in sorted((resources.files("guestward.audit") / "benchmarks").iterdir(), key=lambda f: f.name):
        if not f.name.endswith(".yaml"):
            continue
        try:
            bench = Benchmark.model_validate(yaml.safe_load(f.read_text()))
        except (yaml.YAMLError, ValidationError) as exc:
            raise CatalogueError(f"benchmarks/{f.name}: {exc}") from None
        unknown = sorted({c for ctl in bench.controls for c in ctl.checks} - known)
        if unknown:
            raise CatalogueError(f"benchmarks/{f.name}: unknown check ids {', '.join(unknown)}")
        out[bench.id] = bench
    return out
