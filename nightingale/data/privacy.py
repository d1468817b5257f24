"""Privacy at ingest: keyed pseudonymisation of subject ids and an opt-out list.

Pseudonyms are HMAC-SHA256(key, str(source_id)) truncated to a positive int64, so the same source id
always maps to the same pseudonym under one key, and nobody without the key can reverse or recompute
it. The key is read from an environment variable or a key file and is never written anywhere: the
dataset records only that pseudonymisation was applied (see `PrivacyPolicy.describe`).

The opt-out list (the NHS national data opt-out, in practice) is a text file of source ids, one a
line, `#` comments allowed; those subjects are removed before anything else happens to them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from nightingale import schema as S

DEFAULT_KEY_ENV = "NIGHTINGALE_PSEUDONYM_KEY"
_INT63 = (1 << 63) - 1


class PrivacyConfigError(ValueError):
    """A key or opt-out file that cannot be used; the message names the file and the problem."""


def read_key(key_file: str | Path | None = None, key_env: str | None = DEFAULT_KEY_ENV) -> bytes:
    """Read the pseudonymisation key from `key_file` if given, else from the environment."""
    if key_file is not None:
        path = Path(key_file)
        try:
            key = path.read_bytes().strip()
        except OSError as e:
            raise PrivacyConfigError(f"pseudonymisation key file {path}: cannot read it ({e.strerror})") from e
        if not key:
            raise PrivacyConfigError(f"pseudonymisation key file {path}: file is empty")
    else:
        value = os.environ.get(key_env or "", "")
        if not value:
            raise PrivacyConfigError(
                f"pseudonymisation requested but environment variable {key_env} is unset or empty; "
                "set it or give a key file"
            )
        key = value.encode()
    if len(key) < 16:
        raise PrivacyConfigError("pseudonymisation key is shorter than 16 bytes; use a longer secret")
    return key


def read_opt_out(path: str | Path) -> frozenset[str]:
    """Source ids listed in an opt-out file (one a line; blank lines and `#` comments ignored)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise PrivacyConfigError(f"opt-out file {path}: cannot read it ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise PrivacyConfigError(f"opt-out file {path}: not UTF-8 text") from e
    return frozenset(s for line in lines if (s := line.split("#", 1)[0].strip()))


def pseudonymise_ids(ids: Iterable, key: bytes) -> np.ndarray:
    """Map source ids to int64 pseudonyms with HMAC-SHA256 under `key`."""
    out = [
        int.from_bytes(hmac.new(key, str(i).encode(), hashlib.sha256).digest()[:8], "big") & _INT63
        for i in ids
    ]
    return np.asarray(out, dtype=np.int64)


@dataclass
class PrivacyPolicy:
    """What to do to subject ids at ingest. The default policy changes nothing."""

    key: bytes | None = field(default=None, repr=False)
    opt_out: frozenset[str] = frozenset()
    opt_out_source: str | None = None

    @classmethod
    def from_options(
        cls,
        *,
        pseudonymise: bool = False,
        key_file: str | Path | None = None,
        key_env: str | None = DEFAULT_KEY_ENV,
        opt_out_file: str | Path | None = None,
    ) -> PrivacyPolicy:
        key = read_key(key_file, key_env) if (pseudonymise or key_file) else None
        opt_out = read_opt_out(opt_out_file) if opt_out_file else frozenset()
        return cls(key=key, opt_out=opt_out, opt_out_source=str(opt_out_file) if opt_out_file else None)

    @property
    def active(self) -> bool:
        return self.key is not None or bool(self.opt_out)

    def keep_mask(self, source_ids: pl.Series) -> pl.Series:
        """True for subjects that have not opted out."""
        if not self.opt_out:
            return pl.Series(np.ones(len(source_ids), dtype=bool))
        return ~source_ids.cast(pl.String).is_in(list(self.opt_out))

    def apply(self, events: pl.DataFrame, id_column: str = S.SUBJECT_ID) -> pl.DataFrame:
        """Drop opted-out subjects, then replace `id_column` by its pseudonym (as int64)."""
        if self.opt_out:
            events = events.filter(self.keep_mask(events[id_column]))
        if self.key is None:
            return events
        ids = events[id_column]
        uniq = ids.unique(maintain_order=True)
        mapping = pseudonymise_ids(uniq.to_list(), self.key)
        if len(np.unique(mapping)) != len(mapping):  # ~1e-7 for 1M subjects, but never silent
            raise RuntimeError("pseudonym collision; re-run with a different key")
        return events.with_columns(
            ids.replace_strict(uniq, pl.Series(mapping, dtype=pl.Int64), return_dtype=pl.Int64).alias(
                id_column
            )
        )

    def describe(self, removed_subjects: int | None = None) -> dict:
        """What was done, for dataset.json: never the key, never the listed ids."""
        d: dict = {
            "pseudonymised": self.key is not None,
            "pseudonym_method": "HMAC-SHA256, first 8 bytes as positive int64" if self.key else None,
            "opt_out_applied": bool(self.opt_out),
            "opt_out_listed": len(self.opt_out),
        }
        if removed_subjects is not None:
            d["opt_out_removed_subjects"] = removed_subjects
        return d
