"""The gate: thresholds on an evaluation report decide whether a model may be served.

A gate file (configs/eval/gates/*.yaml) lists checks:

    checks:
      - name: beats_bigram
        metric: intrinsic.loss_vs_bigram      # a dotted path into the report
        max: 0.95
      - name: task_auroc
        metric: tasks.*.model.auroc            # `*` expands to every key at that level
        min: 0.6
        optional: false                        # a missing or NaN metric fails (default)

A check passes when its value is finite and within [min, max] (and strictly above `above` /
below `below`, where given: `above: 0` for "better than nothing"). A metric that is missing, NaN or
matches nothing fails the check unless it is `optional` (then it is reported as skipped): a gate
that cannot be evaluated must not pass. A wildcard check passes only when every match passes.
The result is what `inference.gate` reads from `gate_report.json`: passed, failed (names).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from nightingale.config import check_fields

KNOWN = {"name", "metric", "min", "max", "above", "below", "optional", "description"}
BOUNDS = ("min", "max", "above", "below")


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    metric: str
    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    optional: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if all(getattr(self, b) is None for b in BOUNDS):
            raise ValueError(f"gate check {self.name!r}: needs min, max, above or below")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"gate check {self.name!r}: min {self.min} > max {self.max}")

    @property
    def rule(self) -> str:
        ops = {"min": ">=", "max": "<=", "above": ">", "below": "<"}
        return " and ".join(f"{ops[b]} {getattr(self, b):g}" for b in BOUNDS if getattr(self, b) is not None)

    def holds(self, v: float) -> bool:
        return ((self.min is None or v >= self.min) and (self.max is None or v <= self.max)
                and (self.above is None or v > self.above) and (self.below is None or v < self.below))


def parse_checks(items: Sequence[Mapping[str, Any]], source: str = "gate") -> list[Check]:
    """Checks from a list of mappings; errors name the source, the entry and the field."""
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise ValueError(f"{source}: 'checks' must be a list of mappings")
    out, names = [], set()
    for i, item in enumerate(items):
        where = f"{source}: checks[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {type(item).__name__}")
        check_fields(item, KNOWN, where)
        for field in ("name", "metric"):
            if not isinstance(item.get(field), str) or not item[field]:
                raise ValueError(f"{where}.{field}: expected a non-empty string")
        for field in BOUNDS:
            if item.get(field) is not None and not isinstance(item[field], int | float):
                raise ValueError(f"{where}.{field}: expected a number, got {item[field]!r}")
        if item["name"] in names:
            raise ValueError(f"{where}.name: {item['name']!r} is used twice")
        names.add(item["name"])
        try:
            out.append(Check(**{k: item[k] for k in item}))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return out


def load_gate(path: str | Path) -> list[Check]:
    path = Path(path)
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, Mapping) or "checks" not in doc:
        raise ValueError(f"{path}: expected a mapping with a 'checks' list")
    return parse_checks(doc["checks"], str(path))


def _lookup(report: Any, parts: Sequence[str], trail: str = "") -> Iterator[tuple[str, Any]]:
    """(resolved path, value) for a dotted path with `*` wildcards; missing keys yield nothing."""
    if not parts:
        yield trail, report
        return
    head, rest = parts[0], parts[1:]
    if not isinstance(report, Mapping):
        return
    keys = sorted(report) if head == "*" else [head] if head in report else []
    for k in keys:
        yield from _lookup(report[k], rest, f"{trail}.{k}" if trail else str(k))


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def apply_gate(report: Mapping[str, Any], checks: Sequence[Check]) -> dict[str, Any]:
    """{"passed", "failed": [check names], "skipped": [...], "checks": {name: details}}."""
    results, failed, skipped = {}, [], []
    for c in checks:
        found = list(_lookup(report, c.metric.split(".")))
        values = [{"metric": path, "value": v if _finite(v) else None,
                   "passed": _finite(v) and c.holds(v)}
                  for path, v in found]
        if not values or any(v["value"] is None for v in values):
            status = "skipped" if c.optional else "failed"
            why = "no such metric in the report" if not values else "metric is missing or not a number"
        else:
            status = "passed" if all(v["passed"] for v in values) else "failed"
            bad = [v["metric"] for v in values if not v["passed"]]
            why = "" if status == "passed" else f"{', '.join(bad)} outside {c.rule}"
        results[c.name] = {"metric": c.metric, "rule": c.rule, "status": status, "why": why,
                           "values": values, "description": c.description}
        (failed if status == "failed" else skipped if status == "skipped" else []).append(c.name)
    return {"passed": not failed, "failed": failed, "skipped": skipped, "checks": results}
