"""The exported model folder, read in one place: config, vocabulary, tokenizer, card, gate report.

`export.py` writes the folder; everything downstream (the vLLM engine, the serving gate, the API,
the evaluation) opens it through `ModelDir`, so a missing or unreadable file is reported the same
way everywhere, naming the file, before anything slow starts.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from nightingale.tokenizer.vocabulary import HF_TOKENIZER_FILE, SPEC_FILE, Vocabulary

CARD_JSON, CARD_MD = "model_card.json", "README.md"  # the model card, written by export_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
GATE_FILE = "gate_report.json"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, HF_TOKENIZER_FILE, SPEC_FILE)


class ModelDirError(ValueError):
    """The folder is not a usable exported model (a file is missing or unreadable)."""


class GateReportError(ModelDirError):
    """gate_report.json exists but is not a valid report (a gate that cannot be read must not pass)."""


class ModelDir:
    """An exported model folder (see `export.py` for its layout).

    `ModelDir(path)` checks that config.json, model.safetensors, tokenizer.json and
    vocabulary.json are all present and raises ModelDirError naming the first missing one; the
    files are read lazily, once each.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ModelDirError(f"model_dir: {self.path} is not a folder (an exported model folder)")
        for name in REQUIRED_FILES:
            if not (self.path / name).is_file():
                raise ModelDirError(
                    f"model_dir: {self.path} has no {name}; an exported model folder holds "
                    f"{', '.join(REQUIRED_FILES)} (see nightingale/model/export.py)"
                )

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r})"

    def _json(self, name: str) -> Any:
        try:
            return json.loads((self.path / name).read_text())
        except json.JSONDecodeError as e:
            raise ModelDirError(f"{self.path / name}: not valid JSON ({e.msg} at line {e.lineno})") from e

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """config.json (the transformers LlamaConfig) as a dict."""
        return self._json(CONFIG_FILE)

    @property
    def dtype(self) -> str:
        return str(self.config.get("dtype") or self.config.get("torch_dtype") or "float32")

    @property
    def context_length(self) -> int:
        """Tokens the model attends over (max_position_embeddings)."""
        return int(self.config.get("max_position_embeddings", 2048))

    @property
    def vocab_size(self) -> int:
        try:
            return int(self.config["vocab_size"])
        except KeyError:
            raise ModelDirError(f"{self.path / CONFIG_FILE}: no vocab_size") from None

    @functools.cached_property
    def vocabulary(self) -> Vocabulary:
        """The Nightingale vocabulary (vocabulary.json); its size must match config.json's."""
        vocab = Vocabulary.load(self.path / SPEC_FILE)
        if len(vocab) != self.vocab_size:
            raise ModelDirError(
                f"model {self.path}: config.json vocab_size {self.vocab_size} != vocabulary.json "
                f"size {len(vocab)}"
            )
        return vocab

    @property
    def card(self) -> dict[str, Any]:
        """model_card.json ({} when absent; {"error": ...} when unreadable: the card is shown, not
        trusted)."""
        if not (self.path / CARD_JSON).is_file():
            return {}
        try:
            return self._json(CARD_JSON)
        except ModelDirError:
            return {"error": f"{CARD_JSON} is not valid JSON"}

    def gate_report(self) -> dict[str, Any] | None:
        """gate_report.json, or None when there is none. Read afresh on every call (the evaluation
        rewrites it). A report that is not an object with a boolean `passed` and a list `failed`
        raises GateReportError."""
        path = self.path / GATE_FILE
        if not path.is_file():
            return None
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise GateReportError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
        if not isinstance(report, dict) or not isinstance(report.get("passed"), bool):
            raise GateReportError(f"{path}: expected an object with a boolean 'passed'")
        if not isinstance(report.get("failed", []), list):
            raise GateReportError(f"{path}: 'failed' must be a list of check names")
        return report
