"""The token corpus: per split, memory-mapped flat arrays plus a subject index; window sampling.

Layout of ``<corpus>/<split>/``:
  tokens.bin   token ids, dtype in corpus.json (uint16 below 65,536 tokens, else int32)
  times.bin    int64 microseconds since the epoch, one per token (see encode.py for which time)
  static.bin   static token ids of all subjects, flat
  index.parquet  subject_id, offset, length, static_offset, static_length, birth_time (us)
  corpus.json  dtype, counts
Raw little-endian `.bin` files rather than Arrow: they are appended chunk by chunk while encoding
(flat memory whatever the data size), concatenated by plain byte copy at merge, and `np.memmap`
opens them with no parsing, so a training worker touches only the pages of its windows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.atomic import write_json_atomic
from nightingale.tokenizer import families as F
from nightingale.tokenizer.encode import INDEX_SCHEMA, Encoded
from nightingale.tokenizer.summary import history_summary
from nightingale.tokenizer.vocabulary import Vocabulary

log = logging.getLogger(__name__)
TOKENS, TIMES, STATIC, INDEX, META = "tokens.bin", "times.bin", "static.bin", "index.parquet", "corpus.json"


class CorpusWriter:
    """Append encoded chunks of one split into a folder (the caller makes the folder atomic)."""

    def __init__(self, directory: str | Path, token_dtype: np.dtype):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(token_dtype)
        self._files = {n: open(self.dir / n, "wb") for n in (TOKENS, TIMES, STATIC)}
        self._index: list[pl.DataFrame] = []
        self.n_tokens = self.n_static = 0

    def append(self, enc: Encoded) -> None:
        for name, arr, dtype in (
            (TOKENS, enc.tokens, self.dtype),
            (TIMES, enc.times, np.int64),
            (STATIC, enc.static, self.dtype),
        ):
            self._files[name].write(np.ascontiguousarray(arr, dtype=dtype).data)  # no bytes copy
        self._index.append(
            enc.index.with_columns(
                pl.col("offset") + self.n_tokens, pl.col("static_offset") + self.n_static
            )
        )
        self.n_tokens += len(enc.tokens)
        self.n_static += len(enc.static)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        index = pl.concat(self._index) if self._index else pl.DataFrame(schema=INDEX_SCHEMA)
        index.write_parquet(self.dir / INDEX)
        meta = {
            "token_dtype": self.dtype.name,
            "n_tokens": self.n_tokens,
            "n_static": self.n_static,
            "n_subjects": len(index),
        }
        write_json_atomic(meta, self.dir / META)


def merge_split(parts: Sequence[Path], out: Path) -> dict[str, Any]:
    """Concatenate per-shard corpora of one split into `out` (byte copies; offsets shifted)."""
    out.mkdir(parents=True, exist_ok=True)
    metas = [json.loads((p / META).read_text()) for p in parts]
    dtypes = {m["token_dtype"] for m in metas}
    if len(dtypes) > 1:
        raise ValueError(f"merge: shards disagree on token dtype {sorted(dtypes)}")
    for name in (TOKENS, TIMES, STATIC):
        with open(out / name, "wb", buffering=0) as dst:
            for p in parts:
                _append_file(p / name, dst)
    indexes, n_tok, n_st = [], 0, 0
    for p, m in zip(parts, metas):
        idx = pl.read_parquet(p / INDEX)
        indexes.append(idx.with_columns(pl.col("offset") + n_tok, pl.col("static_offset") + n_st))
        n_tok += m["n_tokens"]
        n_st += m["n_static"]
    index = pl.concat(indexes) if indexes else pl.DataFrame(schema=INDEX_SCHEMA)
    index.write_parquet(out / INDEX)
    meta = {
        "token_dtype": dtypes.pop() if dtypes else "uint16",
        "n_tokens": n_tok,
        "n_static": n_st,
        "n_subjects": len(index),
    }
    write_json_atomic(meta, out / META)
    return meta


def _append_file(src: Path, dst: BinaryIO) -> None:
    """Append `src` to the unbuffered `dst` in the kernel (copy_file_range: no trip through user
    memory, about half the cost of a read/write copy); a buffered copy finishes what it cannot."""
    with open(src, "rb", buffering=0) as f:
        size, done = os.fstat(f.fileno()).st_size, 0
        try:
            while done < size and (n := os.copy_file_range(f.fileno(), dst.fileno(), size - done)):
                done += n
        except (AttributeError, OSError):  # no such call here, or not across these file systems
            pass
        if done < size:
            f.seek(done)
            shutil.copyfileobj(f, dst, length=16 << 20)


NO_BIRTH = np.iinfo(np.int64).min  # birth_time of a subject without MEDS_BIRTH, in the index arrays


class IndexedTokens:
    """Subjects' tokens found through an encoded index (`INDEX_SCHEMA`): the reads a prompt needs,
    whether the arrays are memory-mapped files (`TokenCorpus`) or an in-memory `Encoded`."""

    def __init__(self, index: pl.DataFrame, tokens: np.ndarray, times: np.ndarray, static: np.ndarray, where: str):
        self.index, self.tokens, self.times, self.static, self.where = index, tokens, times, static, where
        self.subject_ids = index[S.SUBJECT_ID].to_numpy()
        self.offsets = index["offset"].to_numpy()
        self.lengths = index["length"].to_numpy()
        self.static_offsets = index["static_offset"].to_numpy()
        self.static_lengths = index["static_length"].to_numpy()
        self.birth = index["birth_time"].fill_null(NO_BIRTH).to_numpy()
        self._row = {int(s): i for i, s in enumerate(self.subject_ids)}

    def __len__(self) -> int:
        return len(self.subject_ids)

    def row(self, subject_id: int) -> int:
        if int(subject_id) not in self._row:
            raise KeyError(f"subject {subject_id} is not in corpus {self.where}")
        return self._row[int(subject_id)]

    def subject_tokens(self, subject_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, times in microseconds) of a subject's body ([SOT] ... [EOR])."""
        r = self.row(subject_id)
        sl = slice(self.offsets[r], self.offsets[r] + self.lengths[r])
        return np.asarray(self.tokens[sl]), np.asarray(self.times[sl])

    def static_tokens(self, subject_id: int) -> np.ndarray:
        r = self.row(subject_id)
        return np.asarray(self.static[self.static_offsets[r] : self.static_offsets[r] + self.static_lengths[r]])

    def birth_us(self, row: int) -> int | None:
        """Birth time (microseconds) of a subject (index row); None without a MEDS_BIRTH."""
        return None if self.birth[row] == NO_BIRTH else int(self.birth[row])

    def age_token(self, vocab: Vocabulary, row: int, time_us: int) -> int:
        """Age-band token of a subject (index row) at a time; AGE//UNK without a birth time."""
        return vocab.age_token(self.birth_us(row), time_us)


class TokenCorpus(IndexedTokens):
    """One split of a corpus, memory-mapped (read-only)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.meta = json.loads((self.dir / META).read_text())
        dtype = np.dtype(self.meta["token_dtype"])
        super().__init__(pl.read_parquet(self.dir / INDEX), self._map(TOKENS, dtype, self.meta["n_tokens"]),
                         self._map(TIMES, np.int64, self.meta["n_tokens"]),
                         self._map(STATIC, dtype, self.meta["n_static"]), str(self.dir))

    def _map(self, name: str, dtype, n: int) -> np.ndarray:
        if n == 0:
            return np.zeros(0, dtype)
        return np.memmap(self.dir / name, dtype=dtype, mode="r", shape=(n,))

    def token_position(self, subject_id: int, prediction_time: int | np.datetime64) -> int:
        """Number of body tokens known at `prediction_time` (microseconds or datetime64): the
        tokens whose time is <= it. Feed ``body[:position]`` to predict what follows."""
        t = prediction_time
        if isinstance(t, np.datetime64):
            t = int(t.astype("datetime64[us]").astype(np.int64))
        _, times = self.subject_tokens(subject_id)
        return int(np.searchsorted(times, int(t), side="right"))

    def window(self, vocab: Vocabulary, row: int, start: int, context_length: int) -> np.ndarray:
        """Static tokens + age at the window's first token + the history summary of body[:start]
        (tokenizer/summary.py) + body[start:], cut/padded to length. The body gets the same room
        in every window (`window_room`), so tiles of one epoch cover every token once."""
        r0, n = self.offsets[row], self.lengths[row]
        st = self.static[self.static_offsets[row] : self.static_offsets[row] + self.static_lengths[row]]
        age = self.age_token(vocab, row, int(self.times[r0 + start]))
        summary = history_summary(vocab, self.tokens[r0 : r0 + start])
        room = window_room(vocab, context_length, len(st))
        body = self.tokens[r0 + start : r0 + min(n, start + room)]
        out = np.full(context_length, F.PAD_ID, dtype=np.int64)
        k = len(st)
        out[:k], out[k] = st, age
        out[k + 1 : k + 1 + len(summary)] = summary
        k += 1 + len(summary)
        out[k : k + len(body)] = body
        return out


def window_room(vocab: Vocabulary, context_length: int, n_static):
    """Body tokens a window holds: the context less the static tokens, the age token and the
    summary's reserved room (works on arrays of static lengths too)."""
    return context_length - n_static - 1 - vocab.config.summary_tokens


class WindowSampler:
    """Seeded, resumable windows over a corpus split.

    Each subject's body is cut into consecutive tiles of ``context_length - static - 1`` tokens;
    an epoch visits every tile once in a permutation seeded by (seed, epoch), so every token is
    seen once per epoch. The state is (epoch, position): `state_dict()` after k windows and
    `load_state_dict` on a fresh sampler yield exactly the windows that would have followed.
    """

    block: int | None = None  # packed rows' block size (PackedSampler); None: one window a row

    def __init__(self, corpus: TokenCorpus, vocab: Vocabulary, context_length: int, seed: int = 0):
        room = window_room(vocab, context_length, corpus.static_lengths)
        if len(corpus) and room.min() < 1:
            raise ValueError(
                f"WindowSampler.context_length: {context_length} leaves no room after the static "
                f"prefix (up to {int(corpus.static_lengths.max())} tokens + age + "
                f"{vocab.config.summary_tokens} summary tokens); make it larger"
            )
        self.corpus, self.vocab, self.context_length, self.seed = corpus, vocab, context_length, seed
        n_tiles = -(-corpus.lengths // np.maximum(room, 1))
        self.tile_row = np.repeat(np.arange(len(corpus)), n_tiles)
        first = np.repeat(np.cumsum(n_tiles) - n_tiles, n_tiles)
        self.tile_start = (np.arange(len(self.tile_row)) - first) * room[self.tile_row]
        self.epoch, self.position = 0, 0
        self._perm: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tile_row)

    def _permutation(self) -> np.ndarray:
        if self._perm is None:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self))
        return self._perm

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"WindowSampler state: seed {state['seed']} != sampler seed {self.seed}")
        if state.get("packed") != self.block:
            raise ValueError(
                f"sampler state: written {'with' if state.get('packed') else 'without'} packed rows "
                f"(block {state.get('packed')}); resume with the same train.pack setting"
            )
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while len(self):
            yield self.next()

    def next(self) -> dict[str, Any]:
        """The next window: input_ids (int64, padded with PAD), its subject and body start."""
        if self.position >= len(self):
            self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        tile = int(self._permutation()[self.position])
        self.position += 1
        row, start = int(self.tile_row[tile]), int(self.tile_start[tile])
        ids = self.corpus.window(self.vocab, row, start, self.context_length)
        return {
            "input_ids": ids,
            S.SUBJECT_ID: int(self.corpus.subject_ids[row]),
            "start": start,
            "n_tokens": int((ids != F.PAD_ID).sum()),
        }


class PackedSampler(WindowSampler):
    """Seeded, resumable rows of whole windows packed into the context (training's `train.pack`).

    An epoch takes the tiles in the same seeded permutation as `WindowSampler`, in blocks of
    `block` tiles; each block is packed first-fit-decreasing into rows of `context_length` tokens
    (a window's size is known before it is built: static + age + its body, plus the summary's
    reserved room when it starts after the record's first token), and the epoch's rows are
    shuffled. Every tile is in exactly one row per epoch. The state is (epoch, position) in rows,
    so a resume is exact; `next_row()` returns the row's windows without their padding.
    """

    def __init__(self, corpus: TokenCorpus, vocab: Vocabulary, context_length: int, seed: int = 0,
                 block: int = 256):
        super().__init__(corpus, vocab, context_length, seed)
        if block < 1:
            raise ValueError(f"PackedSampler.block: must be >= 1, got {block}")
        self.block = int(block)
        room = window_room(vocab, context_length, corpus.static_lengths)[self.tile_row]
        body = np.minimum(room, corpus.lengths[self.tile_row] - self.tile_start)
        self.tile_size = (corpus.static_lengths[self.tile_row] + 1 + body
                          + np.where(self.tile_start > 0, vocab.config.summary_tokens, 0)).astype(np.int64)
        self._rows: list[np.ndarray] | None = None

    def state_dict(self) -> dict[str, int]:
        return {**super().state_dict(), "packed": self.block}

    def load_state_dict(self, state: dict[str, int]) -> None:
        super().load_state_dict(state)
        self._rows = None

    def _plan(self) -> list[np.ndarray]:
        """This epoch's rows (arrays of tile indices)."""
        if self._rows is None:
            perm, size, ctx = self._permutation(), self.tile_size, self.context_length
            rows: list[np.ndarray] = []
            for b in range(0, len(perm), self.block):
                tiles = perm[b : b + self.block]
                tiles = tiles[np.argsort(-size[tiles], kind="stable")]
                free = np.empty(len(tiles), np.int64)  # room left in each open row
                member = np.empty(len(tiles), np.int64)
                n_open = 0
                for j, t in enumerate(tiles):
                    fits = np.flatnonzero(free[:n_open] >= size[t])
                    r = int(fits[0]) if len(fits) else n_open
                    if r == n_open:
                        free[r], n_open = ctx, n_open + 1
                    free[r] -= size[t]
                    member[j] = r
                rows += [tiles[member == r] for r in range(n_open)]
            order = np.random.default_rng([self.seed, self.epoch, 1]).permutation(len(rows))
            self._rows = [rows[i] for i in order]
        return self._rows

    def next_row(self) -> list[np.ndarray]:
        """The next row: its windows' tokens (int64, no padding), in order."""
        if self.position >= len(self._plan()):
            self.epoch, self.position, self._perm, self._rows = self.epoch + 1, 0, None, None
        tiles = self._plan()[self.position]
        self.position += 1
        out = []
        for tile in tiles:
            w = self.corpus.window(self.vocab, int(self.tile_row[tile]), int(self.tile_start[tile]), self.context_length)
            out.append(w[w != F.PAD_ID])
        return out
