"""In-process pieces of the trainer: config validation, schedule, batches, baselines, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from nightingale import schema as S
from nightingale.evaluation.baselines import NgramBaseline
from nightingale.model import ModelConfig
from nightingale.tokenizer import families as F
from nightingale.tokenizer.corpus import PackedSampler, WindowSampler
from nightingale.tokenizer.prepared import load_prepared
from nightingale.training.config import TrainConfig
from nightingale.training.data import StepBatches
from nightingale.training.engine import deepspeed_config
from nightingale.training.schedule import lr_factor
from nightingale.training.trainer import train

REPO = Path(__file__).resolve().parents[2]


def cfg_for(data_dir, run_dir, **kw) -> TrainConfig:
    return TrainConfig(data_dir=data_dir, run_dir=run_dir, model=kw.pop("model", ModelConfig.from_name("tiny")), **kw)


# --- configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny", "small", "base", "large"])
@pytest.mark.parametrize("ds", ["zero1", "zero2", "zero3", "zero2_gpu", "zero3_gpu"])
def test_every_config_group_composes(model, ds, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_entry", REPO / "train" / "train.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        for group in ("train=default", "experiment=demo", "experiment=quality", "train=smoke"):
            cfg = compose("train", overrides=[f"model={model}", f"deepspeed={ds}", group,
                                               f"data_dir={tmp_path}", f"run_dir={tmp_path}/run", "wandb.mode=disabled"],
                          return_hydra_config=False)
            tcfg = entry.train_config(cfg)
            assert tcfg.model.name == model and tcfg.zero_stage == int(ds[4])
            dsc = deepspeed_config(tcfg, world_size=2)
            assert dsc["train_batch_size"] == tcfg.micro_batch_size * tcfg.grad_accum * 2
            assert dsc["zero_optimization"]["stage"] == tcfg.zero_stage and "optimizer" not in dsc


@pytest.mark.parametrize(
    "field, value", [("max_steps", 0), ("micro_batch_size", -1), ("precision", "fp8"), ("zero_stage", 4),
                     ("wandb_mode", "loud"), ("warmup_steps", 10**6), ("min_lr", 1.0), ("peak_flops", 0.0)],
)
def test_train_config_names_the_bad_field(field, value, tmp_path):
    with pytest.raises(ValueError, match=field.split("_")[0] if field != "zero_stage" else "zero_stage"):
        cfg_for(tmp_path, tmp_path, **{field: value})


def test_deepspeed_optimizer_entry_refused(tmp_path):
    with pytest.raises(ValueError, match="deepspeed.optimizer"):
        deepspeed_config(cfg_for(tmp_path, tmp_path, deepspeed={"optimizer": {"type": "AdamW"}}), 2)


# --- schedule and batches ----------------------------------------------------------------------------
def test_schedule_warms_up_then_decays_to_floor():
    f = [lr_factor(s, warmup_steps=10, max_steps=100, min_ratio=0.1) for s in range(120)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[10] == 1.0
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[100] == pytest.approx(0.1) and f[119] == f[100]


def test_step_batches_split_one_global_draw(sim_prep):
    data = load_prepared(sim_prep, 64)
    shards = []
    for rank in range(2):
        sampler = WindowSampler(data.train, data.vocab, 64, seed=3)
        mbs, tokens = StepBatches(sampler, micro=2, grad_accum=3, rank=rank, world=2).next()
        assert len(mbs) == 3 and mbs[0][0].shape == (2, 64) and mbs[0][1].shape == (2, 64)
        shards.append(np.concatenate([ids for ids, _ in mbs]))
    sampler = WindowSampler(data.train, data.vocab, 64, seed=3)
    every = np.stack([sampler.next()["input_ids"] for _ in range(12)])
    assert tokens == int((every != F.PAD_ID).sum())
    got = np.concatenate(shards)
    assert sorted(map(bytes, got)) == sorted(map(bytes, every))  # each window once, across ranks


def _rows(micro_batches):
    """(ids, positions) of every row of a step's micro-batches."""
    return [row for ids, pos in micro_batches for row in zip(ids, pos)]


def _segments(ids: np.ndarray, pos: np.ndarray) -> list[np.ndarray]:
    """The windows of a packed row: tokens from each position 0 up to the next (padding dropped)."""
    starts = list(np.flatnonzero(pos == 0)) + [len(ids)]
    return [ids[a:b][ids[a:b] != F.PAD_ID] for a, b in zip(starts, starts[1:])]


def test_packed_rows_hold_every_window_once_per_epoch_and_resume_exactly(sim_prep):
    data = load_prepared(sim_prep, 512)
    plain = WindowSampler(data.train, data.vocab, 512, seed=5)
    windows = {}
    for _ in range(len(plain)):
        w = plain.next()
        windows[(w[S.SUBJECT_ID], w["start"])] = w["input_ids"][w["input_ids"] != F.PAD_ID]
    by_tokens = {bytes(w.astype(np.int64)): k for k, w in windows.items()}
    sampler = PackedSampler(data.train, data.vocab, 512, seed=5, block=64)
    batches = StepBatches(sampler, micro=4, grad_accum=1, rank=0, world=1)
    seen, tokens, rows, first = [], 0, 0, None
    while sampler.epoch == 0:
        mbs, n = batches.next()
        tokens += n
        for ids, pos in _rows(mbs):
            segs = _segments(ids, pos)
            assert sum(map(len, segs)) <= 512
            seen += [by_tokens[bytes(w)] for w in segs]
            rows += 1
        first = first or (len(seen), sampler.state_dict(), mbs)
    epoch0 = seen[: len(windows)]
    assert sorted(epoch0) == sorted(windows), "an epoch holds every window exactly once"
    assert tokens == sum(len(windows[k]) for k in seen)
    filled = sum(map(len, windows.values())) / (512 * rows)
    assert filled > 0.9, f"{rows} rows for {len(windows)} windows: {filled:.0%} of positions are tokens"
    # A fresh sampler from the state after one step yields exactly the rows that followed.
    n_first, state, _ = first
    again = PackedSampler(data.train, data.vocab, 512, seed=5, block=64)
    again.load_state_dict(state)
    want = [by_tokens[bytes(w)] for ids, pos in _rows(StepBatches(again, 4, 1, 0, 1).next()[0]) for w in _segments(ids, pos)]
    assert want == seen[n_first : n_first + len(want)]
    with pytest.raises(ValueError, match="train.pack"):
        WindowSampler(data.train, data.vocab, 512, seed=5).load_state_dict(state)


def test_a_packed_row_scores_each_window_as_if_alone(sim_prep):
    """Position ids that restart per window make transformers attend within each window only:
    the loss of a packed row equals the token-weighted loss of its windows run one by one."""
    import torch

    from nightingale.model import build_model
    from nightingale.training.data import to_batch

    data = load_prepared(sim_prep, 512)
    model = build_model(ModelConfig.from_name("tiny").with_vocab(len(data.vocab)), seed=0).eval()
    sampler = PackedSampler(data.train, data.vocab, 512, seed=5)
    rows = _rows(StepBatches(sampler, micro=8, grad_accum=1, rank=0, world=1).next()[0])
    ids, pos = max(rows, key=lambda r: int((r[1] == 0).sum()))  # the row with the most windows
    segs = _segments(ids, pos)
    assert len(segs) >= 2
    with torch.no_grad():
        packed = to_batch(ids[None], "cpu", pos[None])
        k = int((packed["labels"][:, 1:] != -100).sum())
        total = float(model(**packed).loss) * k
        alone = sum_k = 0.0
        for w in segs:
            b = to_batch(w[None], "cpu")
            n = len(w) - 1
            alone, sum_k = alone + float(model(**b).loss) * n, sum_k + n
    assert k == sum_k
    assert total / k == pytest.approx(alone / sum_k, rel=1e-5)
    # Without the restarting positions the later windows would see the earlier ones.
    with torch.no_grad():
        leaky = to_batch(ids[None], "cpu")
        leaky["labels"] = packed["labels"]
        assert float(model(**leaky).loss) != pytest.approx(alone / sum_k, rel=1e-5)


# --- baselines -------------------------------------------------------------------------------------
def test_bigram_beats_unigram_on_structured_sequences():
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(50):  # token t is followed by t + 1 (mod 10) 90% of the time
        s = [int(rng.integers(4, 14))]
        for _ in range(30):
            s.append(4 + (s[-1] - 4 + 1) % 10 if rng.random() < 0.9 else int(rng.integers(4, 14)))
        seqs.append(s + [F.PAD_ID] * 3)
    w = np.array(seqs)
    base = NgramBaseline.fit(w[:40], vocab_size=14)
    lam = base.tune(w[40:45])
    assert 0.5 <= lam < 1
    uni, bi = base.unigram_loss(w[45:]), base.bigram_loss(w[45:])
    assert bi < uni and abs(uni - math.log(10)) < 0.1  # ~uniform over 10 tokens
    assert math.isfinite(base.bigram_loss(np.array([[4, 13, 13, 0]])))  # unseen pairs: finite


# --- bad input: clear errors before any process group starts ------------------------------------------
def test_vocab_size_in_config_must_match_corpus(sim_prep, tmp_path):
    cfg = cfg_for(sim_prep, tmp_path / "run", model=ModelConfig.from_name("tiny", vocab_size=999))
    with pytest.raises(ValueError, match="model.vocab_size: config says 999 but the vocabulary/corpus has"):
        train(cfg)


def test_corpus_encoded_with_another_vocabulary(sim_prep, tmp_path):
    data = tmp_path / "prep"
    shutil.copytree(sim_prep, data)
    spec = json.loads((data / "vocab" / "vocabulary.json").read_text())
    drop = max(i for i, k in enumerate(spec["kinds"]) if spec["codes"][i] not in spec["static_codes"])
    for key in ("tokens", "kinds", "codes"):
        spec[key] = spec[key][:drop]  # the corpus still holds ids >= drop
    spec["value_edges"] = {c: e for c, e in spec["value_edges"].items() if c in spec["codes"]}
    (data / "vocab" / "vocabulary.json").write_text(json.dumps(spec))
    (data / "vocab" / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="vocabulary mismatch: corpus split 'train'"):
        train(cfg_for(data, tmp_path / "run"))


def test_tokenizer_json_of_another_size(sim_prep, tmp_path):
    data = tmp_path / "prep"
    shutil.copytree(sim_prep, data)
    tok = json.loads((data / "vocab" / "tokenizer.json").read_text())
    tok["model"]["vocab"]["EXTRA"] = len(tok["model"]["vocab"])
    (data / "vocab" / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match="vocabulary mismatch: .*tokenizer.json has"):
        train(cfg_for(data, tmp_path / "run"))


def test_corpus_shorter_than_one_window(sim_prep, tmp_path):
    n = load_prepared(sim_prep, 16).train
    too_long = int(n.lengths.sum() + n.static_lengths.sum()) + 1
    cfg = cfg_for(sim_prep, tmp_path / "run", model=ModelConfig.from_name("tiny", context_length=too_long))
    with pytest.raises(ValueError, match="corpus too short: the train split .* fewer than one window"):
        train(cfg)


def test_unwritable_run_dir(sim_prep, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="train.run_dir: .* is not writable"):
        train(cfg_for(sim_prep, blocker / "run"))


def test_data_dir_without_corpus(tmp_path):
    with pytest.raises(ValueError, match="train.data_dir: .* point it at the out_dir of data_prep"):
        train(cfg_for(tmp_path, tmp_path / "run"))


# --- launch environment ------------------------------------------------------------------------------
def test_dist_env_from_torchrun_or_slurm(monkeypatch):
    from nightingale.training.distributed import dist_env

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(var, raising=False)
    assert (dist_env().rank, dist_env().world_size) == (0, 1)  # plain python: a world of one
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("MASTER_ADDR", "node17")
    env = dist_env()
    assert (env.rank, env.world_size, env.local_rank, env.master_addr) == (3, 8, 1, "node17")
    monkeypatch.setenv("RANK", "5")  # torchrun's (or the batch script's) variables win
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert dist_env().rank == 5
    monkeypatch.setenv("RANK", "9")
    with pytest.raises(ValueError, match="RANK=9 is outside WORLD_SIZE=8"):
        dist_env()
