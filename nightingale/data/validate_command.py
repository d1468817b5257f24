"""`nightingale validate DIR`: check a MEDS dataset and print its summary.

Exit code 0 when the dataset is valid (warnings are printed but do not fail it), 1 on any
violation, with each error located as `file, column 'name', row N: what was expected`.

    nightingale validate ../shared/data/mimic-iv-demo-meds
    nightingale validate out/sim --json > summary.json
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from nightingale.data.validate import (
    MEDS_CHECK,
    NIGHTINGALE_CHECK,
    REFERENCE_MODES,
    DatasetSummary,
    ValidationReport,
    validate_meds,
)

EXIT_OK, EXIT_INVALID = 0, 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate", help="check a MEDS dataset and print its summary",
        description=__doc__.split("\n\n")[0])
    p.add_argument("root", metavar="DIR", help="MEDS dataset root (holds data/ and metadata/)")
    p.add_argument("--json", action="store_true",
                   help="print the report (valid, errors, warnings, summary) as JSON")
    p.add_argument("--strict-codes", action=argparse.BooleanOptionalAction, default=True,
                   help="data codes missing from metadata/codes.parquet are errors "
                        "(--no-strict-codes: warnings)")
    p.add_argument("--meds-schema", choices=list(REFERENCE_MODES), default="error",
                   help="the `meds` package's own schema validation (exact types, dataset.json): "
                        "findings are errors (default), warnings, or not checked (off)")
    p.add_argument("--max-errors", type=int, default=20, metavar="N",
                   help="print at most N errors and N warnings (default 20)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = validate_meds(args.root, strict_codes=args.strict_codes, reference=args.meds_schema)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console = Console(soft_wrap=True, highlight=False)
        if report.ok and report.summary is not None:
            console.print(summary_table(report.summary, title=f"MEDS dataset {args.root}"))
        _print_findings(console, report, args.max_errors)
    return EXIT_OK if report.ok else EXIT_INVALID


def _print_findings(console: Console, report: ValidationReport, limit: int) -> None:
    for kind, items, style in (("warning", report.warnings, "yellow"),
                               ("error", report.errors, "bold red")):
        for item in items[:limit]:
            console.print(Text(f"{kind}: ", style=style) + Text(str(item)))
        if len(items) > limit:
            console.print(Text(f"... and {len(items) - limit} more {kind}s", style=style))
    for check, what in ((NIGHTINGALE_CHECK, "nightingale checks (sorting, shards, codes, splits)"),
                        (MEDS_CHECK, "meds package schema validation")):
        n = len(report.by_check(check))
        skipped = check == MEDS_CHECK and report.reference == "off"
        verdict = "skipped" if skipped else "passed" if n == 0 else f"{n} error(s)"
        console.print(Text(f"{what}: {verdict}", style="green" if n == 0 else "red"))
    if report.errors:
        console.print(Text(f"INVALID: {len(report.errors)} error(s) in {report.root}",
                           style="bold red"))
    else:
        console.print(Text(f"valid MEDS dataset ({len(report.warnings)} warning(s))",
                           style="bold green"))


def summary_table(s: DatasetSummary, title: str = "MEDS dataset") -> Table:
    """A two-column rich table of the summary counts."""
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    eps = s.events_per_subject
    rows = [
        ("shards", f"{s.n_shards:,}"),
        ("subjects", f"{s.n_subjects:,}"),
        ("events", f"{s.n_events:,}"),
        ("  static (null time)", f"{s.n_static_events:,}"),
        ("  timed", f"{s.n_timed_events:,}"),
        ("  with numeric_value", f"{s.n_numeric_values:,}"),
        ("unique codes", f"{s.n_unique_codes:,}"),
        ("first time", _fmt_time(s.time_min)),
        ("last time", _fmt_time(s.time_max)),
        ("events per subject: min", f"{eps['min']:,.0f}"),
        ("  median", f"{eps['median']:,.1f}"),
        ("  mean", f"{eps['mean']:,.1f}"),
        ("  p95", f"{eps['p95']:,.1f}"),
        ("  max", f"{eps['max']:,.0f}"),
    ]
    rows += [(f"subjects in {split}", f"{n:,}") for split, n in s.subjects_per_split.items()]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _fmt_time(t) -> str:
    return t.isoformat(sep=" ") if t is not None else "-"
