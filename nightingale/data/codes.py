"""Code patterns: how task definitions and forecast requests name outcome (and trigger) codes.

A pattern is an exact MEDS code (``MEDS_DEATH``) or a prefix ending in ``*`` (``ICD10//E11*``:
every code starting ``ICD10//E11``). The one rule is written here; labels (polars expressions over
MEDS events), forecasts (vocabulary token ids) and the evaluation's oracle lookup all use it.

    >>> p = CodePattern.parse("ICD10//E11*")
    >>> p.matches("ICD10//E11.9"), p.matches("ICD10//E10")
    (True, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from nightingale import schema as S

WILDCARD = "*"


@dataclasses.dataclass(frozen=True)
class CodePattern:
    """One code pattern. Built directly it is not validated (a lookup of a malformed pattern then
    simply matches what its rule says: nothing, for an unknown exact code); `parse` validates."""

    text: str

    @staticmethod
    def is_valid(text: Any) -> bool:
        """A non-empty string with no ``*`` except a final one (``*`` alone is not a pattern)."""
        return isinstance(text, str) and bool(text.rstrip(WILDCARD)) and WILDCARD not in text[:-1]

    @classmethod
    def parse(cls, text: Any) -> CodePattern:
        """The pattern `text`; ValueError when it is not a code or a prefix ending in ``*``."""
        if not cls.is_valid(text):
            raise ValueError(f"{text!r} is not a code or a prefix ending in '{WILDCARD}'")
        return cls(text)

    @property
    def is_prefix(self) -> bool:
        return self.text.endswith(WILDCARD)

    @property
    def stem(self) -> str:
        """The code, or the prefix without its ``*``."""
        return self.text[:-1] if self.is_prefix else self.text

    def matches(self, code: str) -> bool:
        return code.startswith(self.stem) if self.is_prefix else code == self.text

    def expr(self, column: str = S.CODE) -> pl.Expr:
        """Boolean polars expression: `column` matches this pattern."""
        col = pl.col(column)
        return col.str.starts_with(self.stem) if self.is_prefix else col == self.text

    def ids(self, code_to_id: Mapping[str, int]) -> list[int]:
        """Ids of the codes of `code_to_id` (e.g. `Vocabulary.code_to_id`) this pattern matches."""
        if self.is_prefix:
            return [i for code, i in code_to_id.items() if code.startswith(self.stem)]
        return [code_to_id[self.text]] if self.text in code_to_id else []


def check_code_patterns(codes: Any) -> str | None:
    """Why `codes` is not a tuple of code patterns, or None if it is (for field validation)."""
    if not isinstance(codes, tuple) or not all(CodePattern.is_valid(c) for c in codes):
        return f"must be a list of codes or prefixes ending in '{WILDCARD}', got {codes!r}"
    return None


def match_codes(codes: Iterable[str], column: str = S.CODE) -> pl.Expr:
    """Boolean expression: `column` equals one of `codes` or starts with a prefix given as ``X*``
    (the exact codes are one `is_in`)."""
    patterns = [CodePattern(c) for c in codes]
    expr = pl.col(column).is_in([p.text for p in patterns if not p.is_prefix])
    for p in patterns:
        if p.is_prefix:
            expr = expr | p.expr(column)
    return expr


def matches_any(codes: Iterable[str], code: str) -> bool:
    """Whether `code` matches one of the patterns `codes`."""
    return any(CodePattern(c).matches(code) for c in codes)
