"""The data-preparation stage as a library: MEDS -> vocabulary -> token corpus, shard by shard.

Steps (MEDS-Transforms style: each shard's output is written atomically with a `.done` marker, a
rerun skips finished shards, and any one shard can run alone, e.g. as a Slurm array task):

  fit_stats  train statistics of one shard        -> <out>/stats/<shard>.parquet, .gaps.parquet
  fit_vocab  combine them, fit the vocabulary     -> <out>/vocab/{vocabulary,tokenizer}.json
  encode     encode one shard, cut by split       -> <out>/encoded/<shard>/<split>/ (+ .done)
  merge      concatenate shards per split; report -> <out>/corpus/<split>/, <out>/prepare_report.json

An encode `.done` marker records the vocabulary's hash: after a refit, stale shards are redone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from nightingale import schema as S
from nightingale.atomic import atomic_dir, atomic_file, write_json_atomic
from nightingale.config import check_ints
from nightingale.data.meds_io import MEDSDataset
from nightingale.tokenizer import fit as fit_mod
from nightingale.tokenizer.config import TokenizerConfig
from nightingale.tokenizer.corpus import CorpusWriter, TokenCorpus, merge_split
from nightingale.tokenizer.encode import CodeLookup, encode_arrays, iter_shard_chunks
from nightingale.tokenizer.vocabulary import SPEC_FILE, Vocabulary

log = logging.getLogger(__name__)
STAGES = ("all", "fit", "encode", "merge")
REPORT_FILE = "prepare_report.json"


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """meds_dir: MEDS dataset root; out_dir: stage output; batch_rows: rows read per batch (bounds
    memory); show_progress: tqdm bars."""

    meds_dir: Path
    out_dir: Path
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    batch_rows: int = 1 << 18
    show_progress: bool = True
    workers: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "meds_dir", Path(self.meds_dir))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        check_ints(self, ("batch_rows", "workers"), "PrepareConfig")


class Preparer:
    """Runs the steps for one dataset and output folder; every step is idempotent."""

    def __init__(self, cfg: PrepareConfig):
        self.cfg = cfg
        self.ds = MEDSDataset(cfg.meds_dir)
        self.out = cfg.out_dir
        self.shard_names = [self.ds.shard_name(p) for p in self.ds.shards()]
        if not self.shard_names:
            raise FileNotFoundError(f"{cfg.meds_dir}: no parquet shards under data/")

    # --- fitting ---------------------------------------------------------------------------------
    def _stats_path(self, shard: str) -> Path:
        return self.out / "stats" / f"{shard}.parquet"

    def _gap_stats_path(self, shard: str) -> Path:
        return self.out / "stats" / f"{shard}.gaps.parquet"

    def fit_shard(self, shard: str, train: pl.Series | None = None) -> bool:
        """Train statistics of one shard (codes, and time gaps per rung); False when already done."""
        path, gaps = self._stats_path(shard), self._gap_stats_path(shard)
        if path.exists() and gaps.exists():
            return False
        train = fit_mod.train_subjects(self.ds) if train is None else train
        events = self.ds.scan(self._shard_path(shard))
        if not path.exists():
            stats = fit_mod.shard_stats(events, train, self.cfg.tokenizer)
            with atomic_file(path) as tmp:
                stats.write_parquet(tmp)
        with atomic_file(gaps) as tmp:
            fit_mod.shard_gap_stats(events, train, self.cfg.tokenizer).write_parquet(tmp)
        return True

    def fit_shards(self) -> list[str]:
        """Shards that can hold train subjects (all but those under data/tuning|held_out/)."""
        other = set(S.SPLITS) - {S.TRAIN}
        return [s for s in self.shard_names if s.split("/")[0] not in other]

    def train_statistics(self) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
        """The train split's code statistics (combined) and each shard's time-gap statistics,
        fitting the shards not done yet; what a vocabulary is fitted from, here or, suppressed and
        summarised, at a federated site (federated/vocabulary.py)."""
        train = fit_mod.train_subjects(self.ds)
        shards = self.fit_shards()
        for shard in tqdm(shards, desc="fit statistics", unit="shard", disable=not self.cfg.show_progress):
            self.fit_shard(shard, train)
        stats = fit_mod.combine_stats([pl.read_parquet(self._stats_path(s)) for s in shards], self.cfg.tokenizer)
        return stats, [pl.read_parquet(self._gap_stats_path(s)) for s in shards]

    def fit_vocabulary(self) -> Vocabulary:
        """Fit (or load, when already fitted) the vocabulary from every train shard's statistics."""
        vdir = self.out / "vocab"
        if (vdir / SPEC_FILE).exists():
            return Vocabulary.load(vdir)
        stats, gaps = self.train_statistics()
        gap_decode_s = fit_mod.combine_gap_stats(gaps, self.cfg.tokenizer)
        vocab = Vocabulary.fit(stats, self.cfg.tokenizer, fit_mod.dataset_parents(self.ds), gap_decode_s)
        with atomic_dir(vdir, overwrite=True) as tmp:
            vocab.save(tmp)
        return vocab

    def vocab_hash(self) -> str:
        return hashlib.sha1((self.out / "vocab" / SPEC_FILE).read_bytes()).hexdigest()[:16]

    # --- encoding --------------------------------------------------------------------------------
    def _done_path(self, shard: str) -> Path:
        return self.out / "encoded" / f"{shard}.done"

    def shard_done(self, shard: str) -> bool:
        done = self._done_path(shard)
        return done.exists() and json.loads(done.read_text()).get("vocab_hash") == self.vocab_hash()

    def encode_shard(self, shard: str, vocab: Vocabulary | None = None) -> dict[str, Any] | None:
        """Encode one shard into encoded/<shard>/<split>/; None when already done."""
        if shard not in self.shard_names:
            raise ValueError(f"shard {shard!r}: not in {self.ds.root}; have {self.shard_names[:5]}...")
        vocab = vocab or Vocabulary.load(self.out / "vocab")
        if self.shard_done(shard):
            log.info("shard %s already encoded; skipping", shard)
            return None
        split_of = self._split_lookup(shard)
        report: Counter = Counter()
        lookup = CodeLookup(vocab, fit_mod.dataset_parents(self.ds))
        with atomic_dir(self.out / "encoded" / shard, overwrite=True) as tmp:
            writers: dict[int, CorpusWriter] = {}
            for chunk in iter_shard_chunks(self._shard_path(shard), lookup, self.cfg.batch_rows):
                # A subject's rows are contiguous in a chunk: look its split up once per run.
                run = np.flatnonzero(np.diff(chunk.subject_id, prepend=chunk.subject_id[0] - 1))
                run_split = split_of(chunk.subject_id[run])
                report["events_without_split_dropped"] += 0  # reported even when none
                if (run_split < 0).any():
                    split = np.repeat(run_split, np.diff(run, append=len(chunk)))
                    report["events_without_split_dropped"] += int((split < 0).sum())
                    chunk = chunk.take(split >= 0)
                    if not len(chunk):
                        continue
                # Encode every subject of the chunk once, then cut the stream by split (a
                # subject's tokens depend on its rows alone).
                enc = encode_arrays(vocab, chunk)
                report.update(enc.report)
                subject_split = split_of(enc.index[S.SUBJECT_ID].to_numpy())
                # Every split met is written, even one whose subjects here have no events.
                for k in np.unique(run_split[run_split >= 0]):
                    part = enc if (subject_split == k).all() else enc.select(subject_split == k)
                    if k not in writers:
                        writers[k] = CorpusWriter(tmp / S.SPLITS[k], vocab.token_dtype)
                    writers[k].append(part)
            for w in writers.values():
                w.close()
        result = {"shard": shard, "vocab_hash": self.vocab_hash(), "report": dict(report)}
        write_json_atomic(result, self._done_path(shard))
        return result

    def _shard_path(self, shard: str) -> Path:
        return self.ds.data_dir / f"{shard}.parquet"

    def _split_lookup(self, shard: str) -> Callable[[np.ndarray], np.ndarray]:
        """subject ids -> index in S.SPLITS: from the splits file, else the shard's folder
        (data/<split>/...), else -1 (dropped)."""
        splits = self.ds.splits().sort(S.SUBJECT_ID)
        codes = splits[S.SPLIT].replace_strict({s: i for i, s in enumerate(S.SPLITS)}, return_dtype=pl.Int8)
        ids, codes = splits[S.SUBJECT_ID].to_numpy(), codes.to_numpy()
        top = shard.split("/")[0]
        default = S.SPLITS.index(top) if top in S.SPLITS else -1

        def split_of(subject_ids: np.ndarray) -> np.ndarray:
            if not len(ids):
                return np.full(len(subject_ids), default, np.int8)
            pos = np.searchsorted(ids, subject_ids).clip(0, len(ids) - 1)
            return np.where(ids[pos] == subject_ids, codes[pos], default).astype(np.int8)

        return split_of

    def encode_all(self, vocab: Vocabulary) -> None:
        todo = [s for s in self.shard_names if not self.shard_done(s)]
        log.info("encode: %d of %d shards to do", len(todo), len(self.shard_names))
        bar = tqdm(total=len(todo), desc="encode", unit="shard", disable=not self.cfg.show_progress)
        if self.cfg.workers == 1 or len(todo) < 2:
            for shard in todo:
                self.encode_shard(shard, vocab)
                bar.update()
        else:  # shards are independent: one process each, memory per process stays per batch
            # Largest first, so that small shards fill in at the end rather than one large shard
            # running alone (a simulated dataset's train shards are 8x its tuning shards).
            todo.sort(key=lambda s: self._shard_path(s).stat().st_size, reverse=True)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(self.cfg.workers, mp_context=ctx) as pool:
                for _ in as_completed([pool.submit(_encode_one, self.cfg, s) for s in todo]):
                    _.result()
                    bar.update()
        bar.close()

    # --- merging ---------------------------------------------------------------------------------
    def merge(self) -> dict[str, Any]:
        """Concatenate the encoded shards per split into corpus/<split>/ and write the report."""
        missing = [s for s in self.shard_names if not self.shard_done(s)]
        if missing:
            raise RuntimeError(f"merge: {len(missing)} shard(s) not encoded yet, e.g. {missing[:3]}")
        vocab = Vocabulary.load(self.out / "vocab")
        totals: Counter = Counter()
        for s in self.shard_names:
            totals.update(json.loads(self._done_path(s).read_text())["report"])
        splits: dict[str, Any] = {}
        with atomic_dir(self.out / "corpus", overwrite=True) as tmp:
            for split in S.SPLITS:
                parts = [self.out / "encoded" / s / split for s in self.shard_names]
                parts = [p for p in parts if p.exists()]
                if parts:
                    merge_split(parts, tmp / split)
                    c = TokenCorpus(tmp / split)
                    splits[split] = {
                        "subjects": len(c),
                        "tokens": int(c.lengths.sum()),
                        "static_tokens": int(c.static_lengths.sum()),
                        "tokens_per_subject_mean": float(c.lengths.mean()) if len(c) else 0.0,
                        "tokens_per_subject_median": float(np.median(c.lengths)) if len(c) else 0.0,
                    }
        report = {
            "meds_dir": str(self.ds.root),
            "vocabulary_size": len(vocab),
            "vocabulary_codes": len(vocab.code_to_id),
            "codes_with_value_bins": len(vocab.spec["value_edges"]),
            "shards": len(self.shard_names),
            "splits": splits,
            "counts": dict(sorted(totals.items())),
        }
        write_json_atomic(report, self.out / REPORT_FILE)
        log.info("corpus ready in %s: %s", self.out / "corpus", json.dumps(splits))
        return report

    # --- driver ----------------------------------------------------------------------------------
    def run(self, stage: str = "all", shard: str | None = None) -> dict[str, Any] | None:
        """Run a stage: all | fit | encode (every shard, or `shard` alone) | merge."""
        if stage not in STAGES:
            raise ValueError(f"prepare stage: {stage!r}; allowed {STAGES}")
        if stage == "fit" and shard is not None:
            self.fit_shard(shard)
            return None
        if stage in ("all", "fit"):
            vocab = self.fit_vocabulary()
            if stage == "fit":
                return None
        if stage in ("all", "encode"):
            vocab = Vocabulary.load(self.out / "vocab")
            if shard is not None:
                return self.encode_shard(shard, vocab)
            self.encode_all(vocab)
        if stage in ("all", "merge"):
            return self.merge()
        return None


def _encode_one(cfg: PrepareConfig, shard: str) -> None:
    Preparer(cfg).encode_shard(shard)


def prepare(cfg: PrepareConfig, stage: str = "all", shard: str | None = None) -> dict[str, Any] | None:
    """Run the preparation stage (see the module docstring); returns the report after a merge."""
    return Preparer(cfg).run(stage, shard)
