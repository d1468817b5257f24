"""The tokenizer tests' tiny MEDS data and vocabulary, reused by the model tests."""

from tests.tokenizer.conftest import tiny_meds, tiny_vocab  # noqa: F401
