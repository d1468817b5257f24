"""The fitted vocabulary: token table, per-code value-bin edges, time ladder, age bands, fallbacks.

Layout of ids (stable for a given fit): the special tokens (0..3), the shared value-bin tokens
Q1..Qn, the time-gap tokens, the age bands, the unknown-of-family tokens, then code tokens by
descending train count. Value bins are *shared* tokens that follow their code token (as in ETHOS,
arXiv:2405.01331): per-code bin tokens would multiply the code vocabulary by n_value_bins for every
lab, while the shared tokens let the model share "high/low" meaning across codes; each code's own
edges live in the spec. Saved as a JSON spec (`save`/`load`) and as a Hugging Face WordLevel
`tokenizer.json` (`save_hf_tokenizer`) with the same ids.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.atomic import atomic_file, write_json_atomic
from nightingale.tokenizer import families as F
from nightingale.tokenizer.config import TokenizerConfig

log = logging.getLogger(__name__)

SPEC_VERSION = 1
SPEC_FILE = "vocabulary.json"
HF_TOKENIZER_FILE = "tokenizer.json"
_WHITESPACE = re.compile(r"\s")

# Ways a code is resolved to a token (keys of the encode report).
EXACT, PARENT, UNKNOWN_FAMILY, UNKNOWN = "exact", "parent", "unknown_family", "unknown"


def token_string(code: str) -> str:
    """A code as a whitespace-free token string (WordLevel splits on whitespace): ' ' -> '▁'."""
    return _WHITESPACE.sub("\u2581", code)


class Vocabulary:
    """Token table plus what encode/decode need; build with `fit` or `load`."""

    def __init__(self, spec: Mapping[str, Any]):
        if spec.get("spec_version") != SPEC_VERSION:
            raise ValueError(f"vocabulary spec_version {spec.get('spec_version')!r}; expected {SPEC_VERSION}")
        self.spec = dict(spec)
        config = dict(spec["config"])
        config.setdefault("summary_tokens", 0)  # specs from before the history summary: none
        config.setdefault("age_in_timeline", False)  # specs from before in-timeline age tokens
        self.config = TokenizerConfig.from_mapping(config)
        self.tokens: list[str] = list(spec["tokens"])
        self.kinds = np.asarray(spec["kinds"], dtype=np.int8)
        self.codes: list[str | None] = list(spec["codes"])
        self.parents: dict[str, list[str]] = {k: list(v) for k, v in spec.get("parents", {}).items()}
        self.token_to_id = {t: i for i, t in enumerate(self.tokens)}
        self.code_to_id = {c: i for i, c in enumerate(self.codes) if c is not None}
        n = len(self.tokens)
        self.is_static = np.zeros(n, dtype=bool)
        self.is_static[[self.code_to_id[c] for c in spec["static_codes"]]] = True
        # Value bins: full edges [min, inner..., max] per code token; NaN-padded matrices.
        nb = self.config.n_value_bins
        self.bin_ids = np.array([self.token_to_id[f"{F.VALUE_BIN_PREFIX}{k + 1}"] for k in range(nb)])
        self.bin_index = np.full(n, -1, dtype=np.int16)
        self.bin_index[self.bin_ids] = np.arange(nb)
        self.edges = np.full((n, nb + 1), np.nan)
        self.n_bins = np.zeros(n, dtype=np.int16)  # bins a code really has (deduplicated edges)
        self.inner_edges = np.full((n, max(nb - 1, 1)), np.inf)
        for code, full in spec["value_edges"].items():
            i = self.code_to_id[code]
            self.edges[i, : len(full)] = full
            self.n_bins[i] = len(full) - 1
            self.inner_edges[i, : len(full) - 2] = full[1:-1]
        # Time gaps: lower edges in seconds; decode value = the mean training gap of the rung
        # (`gap_decode_s` in the spec, fitted by tokenizer/fit.py), the top rung exactly its length;
        # specs fitted before that decode to the midpoint to the next rung.
        ladder = self.config.ladder_seconds()
        self.gap_ids = np.array([self.token_to_id[F.TIME_GAP_PREFIX + t] for t in self.config.time_ladder])
        self.ladder_s = np.asarray(ladder)
        mids = [(a + b) / 2 for a, b in zip(ladder, ladder[1:])] + [ladder[-1]]
        fitted = spec.get("gap_decode_s")
        if fitted is not None:
            bad = len(fitted) != len(ladder) or any(
                not lo <= v <= (hi if hi is not None else lo)
                for v, lo, hi in zip(fitted, ladder, [*ladder[1:], None]))
            if bad:
                raise ValueError(f"vocabulary gap_decode_s: one value per rung of {self.config.time_ladder}, "
                                 f"each within its rung; got {fitted}")
        self.gap_decode_s = np.zeros(n)
        self.gap_decode_s[self.gap_ids] = fitted if fitted is not None else mids
        # Tokens a history summary may hold (tokenizer/summary.py): codes without values, not static.
        self.summary_mask = (self.kinds == F.KIND_CODE) & ~self.is_static & (self.n_bins == 0)
        if S.DEATH_CODE in self.code_to_id:
            self.summary_mask[self.code_to_id[S.DEATH_CODE]] = False
        self.age_unknown_id = self.token_to_id[F.AGE_UNKNOWN]
        self.age_ids = np.array([self.token_to_id[t] for t in age_band_tokens(self.config)])
        self.age_lower_years = np.full(n, np.nan)
        self.age_lower_years[self.age_ids] = np.arange(len(self.age_ids)) * self.config.age_band_years

    # --- sizes and lookups ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def token_dtype(self) -> np.dtype:
        """Smallest unsigned dtype holding every id (uint16 below 65,536 tokens)."""
        return np.dtype(np.uint16) if len(self) < 2**16 else np.dtype(np.int32)

    def fallback_candidates(self, code: str, parents: Mapping[str, list[str]] | None = None) -> list[str]:
        """Codes to try for a code outside the vocabulary, nearest first: metadata parents
        (breadth first, 3 levels), then stems of the last segment (``E11.9 -> E11``; the first
        `stem_length` characters, ``4019 -> 401``)."""
        parents = self.parents if parents is None else {**self.parents, **parents}
        out: list[str] = []
        level = [code]
        for _ in range(3):
            level = [p for c in level for p in parents.get(c, ()) if p not in out and p != code]
            out.extend(dict.fromkeys(level))
        head, sep, last = code.rpartition(S.CODE_SEPARATOR)
        if sep:
            stem = last.split(".")[0]
            if stem != last:
                out.append(head + sep + stem)
            k = self.config.stem_length
            if k and len(stem) > k:
                out.append(head + sep + stem[:k])
        return list(dict.fromkeys(c for c in out if c != code))

    def resolve(self, code: str, parents: Mapping[str, list[str]] | None = None) -> tuple[int, str]:
        """Token id of a code and how it was found: exact, parent, unknown_family or unknown."""
        if code in self.code_to_id:
            return self.code_to_id[code], EXACT
        for cand in self.fallback_candidates(code, parents):
            if cand in self.code_to_id:
                return self.code_to_id[cand], PARENT
        family = F.family_of(code)
        if family is not None and F.UNKNOWN_FAMILY_PREFIX + family in self.token_to_id:
            return self.token_to_id[F.UNKNOWN_FAMILY_PREFIX + family], UNKNOWN_FAMILY
        return F.UNK_ID, UNKNOWN

    # --- fitting ---------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        stats: pl.DataFrame,
        config: TokenizerConfig,
        parents: Mapping[str, list[str]] | None = None,
        gap_decode_s: list[float] | None = None,
    ) -> Vocabulary:
        """Fit from train-split statistics (see `nightingale.tokenizer.fit.combine_stats`).

        `stats` has one row per code: count (events), static_count (events with null time) and
        values (a bounded random sample of the finite numeric values, float64). `gap_decode_s`:
        seconds each time-gap rung decodes to (`fit.combine_gap_stats`); None: the midpoints.
        """
        parents = {k: list(v) for k, v in (parents or {}).items() if v}
        stats = stats.filter(~pl.col(S.CODE).is_in(list(F.CONSUMED_CODES)))
        counts = dict(zip(stats[S.CODE].to_list(), stats["count"].to_list()))
        static = dict(zip(stats[S.CODE].to_list(), stats["static_count"].to_list()))
        kept = {c for c, n in counts.items() if n >= config.min_count} | set(F.RESERVED_CODES)
        # Roll rare codes up one level (to their nearest parent or stem), so that a parent whose
        # children are each rare still gets a token when together they are common.
        probe = cls._bare(config, parents)
        rolled: dict[str, int] = {}
        for code, n in counts.items():
            if code not in kept:
                cands = probe.fallback_candidates(code)
                if cands:
                    rolled[cands[0]] = rolled.get(cands[0], 0) + n
        for code, n in rolled.items():
            if code not in kept and counts.get(code, 0) + n >= config.min_count:
                kept.add(code)
                counts[code] = counts.get(code, 0) + n
        code_order = sorted(kept, key=lambda c: (-counts.get(c, 0), c))
        fams = sorted({f for c in counts for f in [F.family_of(c)] if f is not None})

        tokens, kinds, codes = [], [], []

        def add(tok: str, kind: int, code: str | None = None) -> None:
            tokens.append(tok), kinds.append(kind), codes.append(code)

        for t in F.SPECIAL_TOKENS:
            add(t, F.KIND_UNKNOWN if t == F.UNK else F.KIND_SPECIAL)
        for k in range(config.n_value_bins):
            add(f"{F.VALUE_BIN_PREFIX}{k + 1}", F.KIND_VALUE_BIN)
        for t in config.time_ladder:
            add(F.TIME_GAP_PREFIX + t, F.KIND_TIME_GAP)
        add(F.AGE_UNKNOWN, F.KIND_AGE)
        for t in age_band_tokens(config):
            add(t, F.KIND_AGE)
        for f in fams:
            add(F.UNKNOWN_FAMILY_PREFIX + f, F.KIND_UNKNOWN)
        taken = set(tokens)
        for code in code_order:
            tok, k = token_string(code), 1
            while tok in taken:  # e.g. a code that collides with a special token once escaped
                tok, k = f"{token_string(code)}#{k}", k + 1
            taken.add(tok)
            add(tok, F.KIND_CODE, code)

        value_edges = {}
        values = stats.filter(pl.col(S.CODE).is_in(code_order)).select(S.CODE, "values")
        for code, vals in values.iter_rows():
            vals = np.asarray(vals if vals is not None else [], dtype=np.float64)
            if len(vals) >= config.min_value_count:
                value_edges[code] = quantile_edges(vals, config.n_value_bins)
        static_codes = [c for c in code_order if static.get(c, 0) * 2 > counts.get(c, 0)]
        spec = {
            "spec_version": SPEC_VERSION,
            "config": config.to_dict(),
            "tokens": tokens,
            "kinds": kinds,
            "codes": codes,
            "static_codes": static_codes,
            "value_edges": value_edges,
            **({"gap_decode_s": [float(v) for v in gap_decode_s]} if gap_decode_s is not None else {}),
            "counts": {c: int(counts.get(c, 0)) for c in code_order},
            "parents": {c: p for c, p in parents.items() if c in counts or c in kept},
        }
        vocab = cls(spec)
        log.info(
            "vocabulary: %d tokens (%d codes of %d seen in train, %d with value bins, %d families)",
            len(vocab), len(code_order), len(counts), len(value_edges), len(fams),
        )
        return vocab

    @classmethod
    def _bare(cls, config: TokenizerConfig, parents: Mapping[str, list[str]]) -> Vocabulary:
        """A vocabulary of no codes, used only for its fallback rules while fitting."""
        v = cls.__new__(cls)
        v.config, v.parents = config, dict(parents)
        return v

    # --- persistence -----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write `vocabulary.json` (the spec) and `tokenizer.json` (HF WordLevel) into `directory`."""
        directory = Path(directory)
        write_json_atomic(self.spec, directory / SPEC_FILE)
        self.save_hf_tokenizer(directory / HF_TOKENIZER_FILE)
        return directory / SPEC_FILE

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Load from a spec file or a folder holding `vocabulary.json`."""
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILE
        return cls(json.loads(path.read_text()))

    def save_hf_tokenizer(self, path: str | Path) -> Path:
        """Export a WordLevel `tokenizer.json` whose ids equal ours (whitespace-split tokens), so
        `transformers.PreTrainedTokenizerFast(tokenizer_file=...)` and vLLM load it as is."""
        from tokenizers import Tokenizer, decoders
        from tokenizers.models import WordLevel
        from tokenizers.pre_tokenizers import WhitespaceSplit

        tok = Tokenizer(WordLevel(vocab=self.token_to_id, unk_token=F.UNK))
        tok.pre_tokenizer = WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
        tok.add_special_tokens(list(F.SPECIAL_TOKENS))
        with atomic_file(path) as tmp:
            tok.save(str(tmp))
        return Path(path)

    def hf_tokenizer(self, path: str | Path):
        """A `PreTrainedTokenizerFast` over an exported `tokenizer.json`, special tokens set."""
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(
            tokenizer_file=str(path), pad_token=F.PAD, unk_token=F.UNK, bos_token=F.SOT, eos_token=F.EOR
        )

    def age_band(self, birth_us: np.ndarray | int, time_us: np.ndarray | int) -> np.ndarray:
        """Index of the age band (into `age_ids`) at `time_us` for birth times (microseconds;
        arrays or scalars). Ages below 0 (events before birth) take the first band, ages past the
        last its open band."""
        years = (np.asarray(time_us, np.int64) - np.asarray(birth_us, np.int64)) / (365.25 * 86400 * 1e6)
        return np.clip(np.floor_divide(years, self.config.age_band_years), 0, len(self.age_ids) - 1).astype(np.int64)

    def age_token(self, birth_us: int | None, time_us: int) -> int:
        """Age-band token at `time_us` for a birth time (microseconds); AGE//UNK when None."""
        if birth_us is None:
            return self.age_unknown_id
        return int(self.age_ids[int(self.age_band(birth_us, time_us))])

    def to_text(self, ids: Iterable[int]) -> str:
        """Ids as whitespace-joined token strings (for display and the HF round trip)."""
        return " ".join(self.tokens[i] for i in ids)


def age_band_tokens(config: TokenizerConfig) -> list[str]:
    """AGE//0-5, AGE//5-10, ..., AGE//110+ for band width 5 and max age 110 (years)."""
    w, top = config.age_band_years, config.max_age_years // config.age_band_years
    return [f"{F.AGE_PREFIX}{k * w}-{(k + 1) * w}" for k in range(top)] + [f"{F.AGE_PREFIX}{top * w}+"]


def quantile_edges(values: np.ndarray, n_bins: int) -> list[float]:
    """Full bin edges [min, inner..., max] of `values`; inner edges are data values (the 'lower'
    quantiles, so float32 inputs give float32-exact edges), deduplicated and > min, so every bin
    [edge_k, edge_k+1) of train data is non-empty."""
    lo, hi = float(values.min()), float(values.max())
    qs = np.quantile(values, np.arange(1, n_bins) / n_bins, method="lower") if n_bins > 1 else []
    inner = [float(q) for q in np.unique(np.asarray(qs, dtype=np.float64)) if q > lo]
    return [lo, *inner, hi]
