"""`guestward audit`: the hardening audit of hosts and guest definitions (HARDENING-CHECKS.md).

Collects facts (domain XML files and folders, live libvirt connections, host roots), runs the
catalogue, applies waivers, and prints a table or writes JSON, SARIF 2.1.0 or JUnit XML. Exit 0, or
1 when `--fail-on SEVERITY` finds a failure at or above it (or an input that could not be audited),
2 for a usage error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from guestward import __version__
from guestward.audit.catalogue import CatalogueError, load_benchmarks, load_catalogue
from guestward.audit.engine import InputError, Report, audit, parse_domains, select_checks
from guestward.audit.facts import FactError
from guestward.audit.model import Benchmark, Severity, Status, Waiver
from guestward.audit.report import benchmark_controls, summary, to_json, to_junit, to_sarif
from guestward.audit.waivers import parse_waivers
from guestward.cli.output import console, error_line, text
from guestward.hypervisor.audit_facts import list_domain_files, read_domain_file, read_host_root, read_live

out = console()
err = console(stderr=True)

COLOUR = {Severity.critical: "bold red", Severity.high: "red", Severity.medium: "yellow", Severity.low: "cyan",
          Severity.info: "dim"}
STATUS_COLOUR = {Status.failed: "red", Status.passed: "green", Status.waived: "magenta", Status.error: "bold red",
                 Status.not_applicable: "dim"}


class Format(StrEnum):
    table = "table"
    json = "json"
    sarif = "sarif"
    junit = "junit"


def fail(message: str) -> typer.Exit:
    err.print(error_line(message))
    return typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_cmd)


def audit_cmd(
    targets: Annotated[list[Path] | None, typer.Argument(help="domain XML files or folders of them")] = None,
    uri: Annotated[list[str] | None, typer.Option("--uri", help="audit every domain of this libvirt URI")] = None,
    host_root: Annotated[list[Path] | None, typer.Option(
        "--host-root", help="audit host config under this root (/ for this host)")] = None,
    waivers: Annotated[list[Path] | None, typer.Option("--waivers", help="waiver file (YAML)")] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the report to this file")] = None,
    fail_on: Annotated[Severity | None, typer.Option(
        "--fail-on", help="exit 1 on a failure at or above this severity")] = None,
    check: Annotated[list[str] | None, typer.Option("--check", help="only these check ids (globs allowed)")] = None,
    skip: Annotated[list[str] | None, typer.Option("--skip", help="skip these check ids (globs allowed)")] = None,
    benchmark: Annotated[str | None, typer.Option("--benchmark", help="report per control of this mapping")] = None,
    show: Annotated[str, typer.Option("--show", help="table rows: failed (incl. waived, errors) or all")] = "failed",
    today: Annotated[str | None, typer.Option("--today", help="the date waivers expire against (YYYY-MM-DD)",
                                              hidden=True)] = None,
    list_checks: Annotated[bool, typer.Option("--list-checks", help="list the catalogue and exit")] = False,
) -> None:
    """Audit guest definitions and hosts against the hardening catalogue."""
    try:
        catalogue = load_catalogue()
        benches = load_benchmarks()
    except CatalogueError as exc:
        raise fail(f"catalogue: {exc}") from None
    bench: Benchmark | None = None
    if benchmark is not None:
        if benchmark not in benches:
            raise fail(f"--benchmark {benchmark}: unknown (known: {', '.join(sorted(benches))})")
        bench = benches[benchmark]
    try:
        checks = select_checks(catalogue, check or (), skip or ())
    except ValueError as exc:
        raise fail(str(exc)) from None
    if bench is not None:
        mapped = {c for ctl in bench.controls for c in ctl.checks}
        checks = [c for c in checks if c.id in mapped]
    if list_checks:
        t = Table("id", "severity", "scope", "title", title=f"{len(checks)} checks")
        for c in checks:
            t.add_row(text(c.id), text(c.spec.severity.value, COLOUR[c.spec.severity]), text(c.spec.scope),
                      text(c.spec.title))
        out.print(t)
        return
    if not (targets or uri or host_root):
        raise fail("nothing to audit: give domain XML files/folders, --uri URI or --host-root PATH")
    try:
        day = dt.date.fromisoformat(today) if today else dt.date.today()
    except ValueError:
        raise fail(f"--today {today}: not a date") from None

    wl: list[Waiver] = []
    for w in waivers or ():
        try:
            wl += parse_waivers(w.read_text(), str(w))
        except (OSError, FactError) as exc:
            raise fail(f"waivers: {exc}") from None

    files, errors = list_domain_files(targets or ())

    def docs() -> Iterator[tuple[str, str | bytes, str]]:
        """One input at a time: a file's bytes are dropped once it is parsed (only the trees stay)."""
        for f in files:
            got = read_domain_file(f)
            if isinstance(got, InputError):
                errors.append(got)
            else:
                yield got
        for u in uri or ():
            ldocs, lerrs = read_live(u)
            errors.extend(lerrs)
            yield from ldocs

    domains, perrs = parse_domains(docs())
    errors += perrs
    hosts = [read_host_root(r, checks) for r in host_root or ()]
    report = audit(checks, domains, hosts, waivers=wl, today=day, errors=errors)

    if fmt is Format.table:
        render_table(report, bench, show)
    else:
        with output.open("w") if output else contextlib.nullcontext(sys.stdout) as fh:
            if fmt is Format.junit:
                fh.write(to_junit(report) + "\n")
            else:  # streamed: a large report is never also held as one string
                json.dump(to_json(report, bench) if fmt is Format.json else to_sarif(report, __version__), fh,
                          indent=2)
                fh.write("\n")
    raise typer.Exit(exit_status(report, fail_on))


def exit_status(report: Report, fail_on: Severity | None) -> int:
    if fail_on is None:
        return 0
    worst = report.worst_failure()
    if report.errors or any(r.status is Status.error for r in report.results):
        return 1
    return 1 if worst is not None and worst.rank >= fail_on.rank else 0


def render_table(report: Report, bench: Benchmark | None, show: str) -> None:
    rows = report.results if show == "all" else [
        r for r in report.results if r.status in (Status.failed, Status.waived, Status.error)]
    by_subject: dict[str, list] = {}  # type: ignore[type-arg]
    for r in rows:
        by_subject.setdefault(r.subject, []).append(r)
    for subject, rs in by_subject.items():
        rs.sort(key=lambda r: (-r.severity.rank, r.check))
        t = Table(title=text(subject, "bold"), title_justify="left", show_lines=False, expand=False)
        for col in ("check", "severity", "status", "condition", "finding"):
            t.add_column(col, overflow="fold")
        for r in rs:
            spec = report.checks[r.check].spec
            finding = r.message + (f" [waived: {r.waiver}]" if r.waiver else "")
            t.add_row(text(r.check), text(r.severity.value, COLOUR[r.severity]),
                      text(r.status.value, STATUS_COLOUR[r.status]), text(spec.title), text(finding))
        out.print(t)
    for e in report.errors:
        out.print(text(f"input error: {e.source}: {e.message}", "bold red"), soft_wrap=True)  # one line each
    for w in report.expired_waivers:
        out.print(text(f"expired waiver: {w.check} for {w.where} expired {w.expires} ({w.justification})", "magenta"),
                  soft_wrap=True)
    if bench is not None:
        t = Table("control", "status", "checks", "failing", title=text(f"benchmark {bench.id}: {bench.title}", "bold"),
                  title_justify="left")
        for row in benchmark_controls(report, bench):
            colour = {"pass": "green", "fail": "red", "error": "bold red"}.get(row["status"], "dim")
            t.add_row(text(row["control"]), text(row["status"], colour),
                      text(", ".join(row["checks"]) or (row["note"] or "")), text(", ".join(row["failing_checks"])))
        out.print(t)
    s = summary(report)
    fails = ", ".join(f"{n} {sev}" for sev, n in reversed(s["failed_by_severity"].items()) if n)
    out.print(Text(
        f"{s['subjects']} subjects, {s['results']} results: {s['status']['fail']} failed"
        f"{' (' + fails + ')' if fails else ''}, {s['status']['pass']} passed, {s['status']['waived']} waived, "
        f"{s['status']['n/a']} not applicable, {s['status']['error']} errors; {s['input_errors']} input errors, "
        f"{s['expired_waivers']} expired waivers", "bold"))
