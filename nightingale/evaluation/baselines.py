"""Count-based reference losses: a trained model must beat a unigram and a bigram model.

Both are fitted on the train split's windows (one epoch: every token once, with the same static
and age prefixes the model sees) and scored on exactly the targets the model is scored on
(`model/loss.py`: every non-padding token after the first of each window), in nats per token. The bigram is interpolated
with the unigram (Jelinek-Mercer); its weight is chosen on the tuning windows, so it is a tuned
baseline, not a straw man.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nightingale.tokenizer import families as F

LAMBDAS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999)


def _pairs(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(previous, target) token pairs of every scored position of [n, L] windows."""
    prev, nxt = windows[:, :-1].ravel(), windows[:, 1:].ravel()
    keep = nxt != F.PAD_ID
    return prev[keep].astype(np.int64), nxt[keep].astype(np.int64)


@dataclasses.dataclass
class NgramBaseline:
    """Add-one unigram and interpolated bigram token models over a vocabulary of `vocab_size`."""

    vocab_size: int
    unigram: np.ndarray  # [V] probabilities
    pair_keys: np.ndarray  # sorted prev * V + next of the seen bigrams
    pair_counts: np.ndarray  # their counts
    prev_counts: np.ndarray  # [V] counts of each token as a previous token
    lam: float = 0.9

    @classmethod
    def fit(cls, train_windows: np.ndarray, vocab_size: int) -> NgramBaseline:
        prev, nxt = _pairs(train_windows)
        counts = np.bincount(nxt, minlength=vocab_size).astype(np.float64)
        unigram = (counts + 1.0) / (counts.sum() + vocab_size)
        keys, pair_counts = np.unique(prev * vocab_size + nxt, return_counts=True)
        prev_counts = np.bincount(prev, minlength=vocab_size).astype(np.float64)
        return cls(vocab_size, unigram, keys, pair_counts.astype(np.float64), prev_counts)

    def _bigram_ml(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        keys = prev * self.vocab_size + nxt
        pos = np.searchsorted(self.pair_keys, keys).clip(0, max(len(self.pair_keys) - 1, 0))
        hit = self.pair_keys[pos] == keys if len(self.pair_keys) else np.zeros(len(keys), bool)
        c = np.where(hit, self.pair_counts[pos] if len(self.pair_keys) else 0.0, 0.0)
        denom = self.prev_counts[prev]
        return np.divide(c, denom, out=np.zeros_like(c), where=denom > 0)

    def unigram_loss(self, windows: np.ndarray) -> float:
        """Mean negative log-likelihood (nats/token) of the unigram model."""
        _, nxt = _pairs(windows)
        return float(-np.log(self.unigram[nxt]).mean())

    def bigram_loss(self, windows: np.ndarray, lam: float | None = None) -> float:
        """Mean NLL (nats/token) of lam * P_ml(next | prev) + (1 - lam) * P_unigram(next)."""
        lam = self.lam if lam is None else lam
        prev, nxt = _pairs(windows)
        p = lam * self._bigram_ml(prev, nxt) + (1.0 - lam) * self.unigram[nxt]
        return float(-np.log(p).mean())

    def tune(self, tuning_windows: np.ndarray) -> float:
        """Pick the interpolation weight with the lowest tuning loss; returns it."""
        if len(tuning_windows):
            self.lam = min(LAMBDAS, key=lambda lam: self.bigram_loss(tuning_windows, lam))
        return self.lam


def baseline_losses(train: np.ndarray, tuning: np.ndarray, held_out: np.ndarray, vocab_size: int) -> dict[str, float]:
    """Held-out losses (nats/token) of the unigram and the tuned bigram baselines."""
    base = NgramBaseline.fit(train, vocab_size)
    base.tune(tuning)
    return {"unigram": base.unigram_loss(held_out), "bigram": base.bigram_loss(held_out),
            "bigram_lambda": base.lam}
