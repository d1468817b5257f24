"""The prepared-corpus folder (`<out_dir>` of the preparation stage): `vocab/` and
`corpus/<split>/`, opened together and checked against each other, and the fixed windows every
held-out score is taken on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nightingale.tokenizer.corpus import META, TokenCorpus, WindowSampler
from nightingale.tokenizer.vocabulary import HF_TOKENIZER_FILE, SPEC_FILE, Vocabulary


@dataclass
class PreparedData:
    vocab: Vocabulary
    train: TokenCorpus
    tuning: TokenCorpus | None
    held_out: TokenCorpus | None
    data_dir: Path


def load_prepared(data_dir: str | Path, context_length: int) -> PreparedData:
    """Open `<data_dir>/vocab` and `<data_dir>/corpus/<split>`, checking that they fit together
    and hold at least one full window of training tokens. Raises ValueError naming the problem."""
    data_dir = Path(data_dir)
    vdir, cdir = data_dir / "vocab", data_dir / "corpus"
    if not (vdir / SPEC_FILE).is_file() or not (cdir / "train" / META).is_file():
        raise ValueError(
            f"train.data_dir: {data_dir} has no vocab/{SPEC_FILE} or corpus/train/{META}; "
            "point it at the out_dir of data_prep/prepare.py"
        )
    vocab = Vocabulary.load(vdir)
    if (vdir / HF_TOKENIZER_FILE).is_file():
        hf_size = len(json.loads((vdir / HF_TOKENIZER_FILE).read_text())["model"]["vocab"])
        if hf_size != len(vocab):
            raise ValueError(
                f"vocabulary mismatch: {vdir / HF_TOKENIZER_FILE} has {hf_size} tokens but "
                f"{vdir / SPEC_FILE} has {len(vocab)}; re-run data_prep/prepare.py"
            )
    splits = {}
    for split in ("train", "tuning", "held_out"):
        if (cdir / split / META).is_file():
            corpus = TokenCorpus(cdir / split)
            check_corpus_ids(corpus, len(vocab), split)
            splits[split] = corpus
        elif split == "train":
            raise ValueError(f"train.data_dir: no train split under {cdir}")
    train = splits["train"]
    n_tokens = int(train.lengths.sum() + train.static_lengths.sum())
    if n_tokens < context_length:
        raise ValueError(
            f"corpus too short: the train split of {cdir} has {n_tokens} tokens, fewer than one "
            f"window of model.context_length={context_length}; prepare more data or shorten the context"
        )
    return PreparedData(vocab, train, splits.get("tuning"), splits.get("held_out"), data_dir)


def check_corpus_ids(corpus: TokenCorpus, vocab_size: int, split: str) -> None:
    """A corpus encoded with another (larger) vocabulary would index past the embeddings."""
    top = max(int(corpus.tokens.max()) if len(corpus.tokens) else 0,
              int(corpus.static.max()) if len(corpus.static) else 0)
    if top >= vocab_size:
        raise ValueError(
            f"vocabulary mismatch: corpus split {split!r} ({corpus.dir}) holds token id {top} but "
            f"the vocabulary has {vocab_size} tokens; the corpus was encoded with another vocabulary"
        )


def fixed_windows(corpus: TokenCorpus, vocab: Vocabulary, context_length: int, n: int | None, seed: int = 0) -> np.ndarray:
    """The first `n` windows (all of one epoch when None) of a seeded sampler: a fixed evaluation
    set, the same for the model and the baselines."""
    sampler = WindowSampler(corpus, vocab, context_length, seed=seed)
    n = len(sampler) if n is None else min(n, len(sampler))
    if n == 0:
        return np.zeros((0, context_length), dtype=np.int64)
    return np.stack([sampler.next()["input_ids"] for _ in range(n)])
