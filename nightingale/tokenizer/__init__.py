"""Tokenisation of MEDS patient timelines: vocabulary fit, vectorised encode/decode, token corpus.

See issue 3. The vocabulary is fitted on the train split only; encode/decode work on whole shards
with numpy (no per-event Python loop); the corpus is memory-mapped numpy shards plus an index.
"""

from nightingale.tokenizer.config import TokenizerConfig
from nightingale.tokenizer.vocabulary import Vocabulary

__all__ = ["TokenizerConfig", "Vocabulary"]
