"""The history summary: what fell out of a window, kept as a few code tokens.

A record longer than the context loses its oldest events, and chronic diagnoses are written once,
at onset, so a window or prompt that keeps only the latest events forgets that the patient has
diabetes or cancer, while a baseline that counts the whole history does not. The summary keeps
them: the distinct code tokens of what was cut (codes without value bins and not static, so
diagnoses, drugs, procedures and admissions rather than lab results), most recently seen last, at
most `TokenizerConfig.summary_tokens` of them, placed after the age token and before the body.

One rule for training windows (`TokenCorpus.window`) and prompts (`inference.prompts`): the same
cut gives the same summary. A record that fits has none.
"""

from __future__ import annotations

import numpy as np

from nightingale.tokenizer.vocabulary import Vocabulary


def history_summary(vocab: Vocabulary, earlier: np.ndarray) -> np.ndarray:
    """Distinct summary tokens of `earlier` (the body tokens cut from the front), ordered by their
    last occurrence, the most recent `vocab.config.summary_tokens` of them (int64)."""
    k = vocab.config.summary_tokens
    earlier = np.asarray(earlier, dtype=np.int64)
    if k == 0 or not len(earlier):
        return np.zeros(0, dtype=np.int64)
    kept = earlier[vocab.summary_mask[earlier]]
    if not len(kept):
        return np.zeros(0, dtype=np.int64)
    rev = kept[::-1]
    uniq, first_in_rev = np.unique(rev, return_index=True)  # first in reverse = last occurrence
    last_pos = len(kept) - 1 - first_in_rev
    order = np.argsort(last_pos, kind="stable")
    return uniq[order][-k:].astype(np.int64)
