"""The checks every typed config shares, worded one way (STYLE.md, direction 5).

Each check raises `ValueError` naming the field: `where` is the prefix the config uses in its
messages (``"ModelConfig"``, ``"train"``, ``"serve.limits"``, ``"cluster profile 'local'"``).

>>> import dataclasses
>>> @dataclasses.dataclass(frozen=True)
... class Demo:
...     steps: int = 1
>>> build(Demo, {"steps": 3}, "demo")
Demo(steps=3)
>>> check_ints(Demo(steps=0), ("steps",), "demo")
Traceback (most recent call last):
ValueError: demo.steps: an integer >= 1, got 0
>>> build(Demo, {"step": 3}, "demo")
Traceback (most recent call last):
ValueError: demo: unknown field(s) ['step']; allowed ['steps']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def field_names(cls: type) -> set[str]:
    """The field names of the dataclass `cls`."""
    return {f.name for f in dataclasses.fields(cls)}


def check_fields(keys: Iterable[str], allowed: Collection[str], where: str) -> None:
    """Reject keys outside `allowed` (a typo in a YAML file must not be silently ignored)."""
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed {sorted(allowed)}")


def build(cls: type[T], mapping: Mapping[str, Any], where: str, **converted: Any) -> T:
    """`cls(**mapping)` once every key is a field of the dataclass `cls` (what each config's
    `from_mapping` does); `converted` replaces entries the caller has already built (nested
    configs)."""
    check_fields(mapping, field_names(cls), where)
    return cls(**{**mapping, **converted})


def check_ints(obj: Any, names: Iterable[str], where: str, low: int = 1, *, optional: bool = False) -> None:
    """Require each attribute `names` of `obj` to be an int (not a bool) >= low; with `optional`,
    None is allowed too (a value the config fills in later, or "no limit")."""
    for name in names:
        value = getattr(obj, name)
        if optional and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            allowed = f"an integer >= {low}" + (" or null" if optional else "")
            raise ValueError(f"{where}.{name}: {allowed}, got {value!r}")


def check_choice(where: str, value: Any, allowed: Collection[Any]) -> None:
    """Require `value` to be one of `allowed`; `where` names the field (``"train.precision"``)."""
    if value not in allowed:
        raise ValueError(f"{where}: {value!r}; allowed {list(allowed)}")
