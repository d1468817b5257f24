"""The pretraining loop: DeepSpeed engine, windows, eval, checkpoints, preemption, export.

    train(TrainConfig(...))   # on every rank; torchrun or srun sets the rank variables

A rerun of the same command resumes from the newest sound checkpoint in `run_dir` by itself.
SIGTERM / SIGUSR1 (Slurm preemption) make every rank stop at the next step boundary, write a
checkpoint and return with `preempted=True` (the entry script exits 143). A NaN/inf loss stops the
run before the optimizer applies it, leaving the last good checkpoint as the newest.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nightingale.atomic import write_json_atomic
from nightingale.model import build_model, config_hash, export_model
from nightingale.model.loss import target_nll
from nightingale.tokenizer.corpus import PackedSampler, WindowSampler
from nightingale.tokenizer.prepared import fixed_windows, load_prepared
from nightingale.training import distributed as dist
from nightingale.training.checkpoint import Checkpointer
from nightingale.training.config import TrainConfig
from nightingale.training.data import StepBatches, to_batch
from nightingale.training.engine import build_engine, gathered_state_dict
from nightingale.training.metrics import MetricsLogger, ProgressDisplay, device_peak_flops, mfu

log = logging.getLogger(__name__)
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_PREEMPTED = 143  # 128 + SIGTERM: "stopped by a signal, checkpoint written, rerun to resume"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
    step: int
    tokens_seen: int
    preempted: bool
    losses: dict[str, float]
    model_dir: Path | None
    weights: dict[str, torch.Tensor] | None = None  # a federated round's result (rank 0)
    tokens_start: int = 0  # tokens seen when this call started (a resume's or a round's start)


@dataclasses.dataclass(frozen=True)
class FederatedRound:
    """A site's share of one federated round (nightingale/federated/site.py).

    The run resumes its own checkpoint (optimizer moments, schedule, sampler position, RNG), then
    takes the federation's global `weights` and trains until optimizer step `stop_step` of the
    whole federation's schedule (`TrainConfig.max_steps` = rounds x local steps). It checkpoints
    there, exports nothing and returns the new weights. `proximal_mu` > 0 adds FedProx's term
    mu/2 * ||w - w_global||^2 to the loss.
    """

    weights: dict[str, torch.Tensor]
    stop_step: int
    proximal_mu: float = 0.0


class PreemptionFlag:
    """Set by SIGTERM/SIGUSR1; the loop agrees on it across ranks at each step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self.signal: str | None = None
        # Only the main thread may set handlers (a Flower ClientApp may call us from another one).
        main = threading.current_thread() is threading.main_thread()
        self._previous = {s: signal.signal(s, self._handle) for s in PREEMPT_SIGNALS} if main else {}

    def _handle(self, signum, frame) -> None:
        self.requested, self.signal = True, signal.Signals(signum).name

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def check_run_dir(run_dir: Path) -> None:
    """Fail early, naming the field, when the run folder cannot be created or written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{dist.dist_env().rank}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"train.run_dir: {run_dir} is not writable ({exc.strerror or exc})") from exc


def eval_loss(engine, windows: np.ndarray, micro: int, env: dist.DistEnv, device) -> float:
    """Token-weighted mean loss (nats/token, `model/loss.py` targets) over fixed windows, split
    across ranks. Every rank runs the same number of forwards (ZeRO-3 gathers weights
    collectively): short ranks repeat a window and do not count it."""
    n = len(windows)
    if n == 0:
        return float("nan")
    per = -(-n // env.world_size)
    idx = np.arange(per) * env.world_size + env.rank
    total = count = 0.0
    engine.eval()
    with torch.no_grad():
        for b in range(0, per, micro):
            ids = idx[b : b + micro]
            real = ids < n
            rows = torch.as_tensor(np.asarray(windows[np.where(real, ids, 0)], dtype=np.int64), device=device)
            keep = torch.as_tensor(real, device=device)
            nll = target_nll(engine(input_ids=rows).logits[keep], rows[keep])
            total, count = total + float(nll.sum()), count + len(nll)
    engine.train()
    total, count = dist.all_reduce([total, count])
    return total / count if count else float("nan")


def _load_round_weights(engine, fed: FederatedRound, zero_stage: int) -> list[torch.Tensor]:
    """Copy the global weights into the engine's module; the parameters' global copies (for
    FedProx), in `module.parameters()` order."""
    if zero_stage == 3:
        raise ValueError("federated rounds: deepspeed.zero_stage 3 is not supported at a site (use 0-2)")
    module = engine.module
    missing, unexpected = module.load_state_dict(fed.weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"federated round: global weights do not fit the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    # ZeRO (and the bf16/fp16 wrappers) step a float32 master copy of the weights and copy it back
    # into the module: refresh it, or the first step would put the site's own weights back.
    refresh = getattr(engine.optimizer, "refresh_fp32_params", None)
    if refresh is not None:
        refresh()
    names = dict(module.named_parameters())
    return [fed.weights[n].to(p.device, p.dtype) for n, p in names.items()] if fed.proximal_mu else []


def train(cfg: TrainConfig, resolved_config: dict[str, Any] | None = None,
          federated: FederatedRound | None = None) -> TrainResult:
    """Train (or resume) the run `cfg` describes, on every rank; see the module docstring.
    `federated`: one site's round of a federation instead (see `FederatedRound`)."""
    env = dist.dist_env()
    if not env.is_main:
        logging.getLogger("nightingale").setLevel(logging.WARNING)
    check_run_dir(cfg.run_dir)
    data = load_prepared(cfg.data_dir, cfg.model.context_length)
    mcfg = cfg.model.with_vocab(len(data.vocab))
    config = resolved_config or cfg.to_dict()
    if env.is_main:
        write_json_atomic(cfg.to_dict(), cfg.run_dir / "train_config.json")

    dist.init_distributed(env)
    device = dist.device_for(env)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    model = build_model(mcfg, seed=cfg.seed, gradient_checkpointing=cfg.activation_checkpointing)
    engine, _, scheduler = build_engine(model, cfg, env.world_size)
    sampler = (PackedSampler if cfg.pack else WindowSampler)(data.train, data.vocab, mcfg.context_length, seed=cfg.seed)
    batches = StepBatches(sampler, cfg.micro_batch_size, cfg.grad_accum, env.rank, env.world_size)
    eval_windows = (fixed_windows(data.tuning, data.vocab, mcfg.context_length, cfg.eval_windows, seed=cfg.seed)
                    if data.tuning is not None else np.zeros((0, mcfg.context_length), np.int64))
    ckpt = Checkpointer(cfg.run_dir / "checkpoints", keep=cfg.keep_checkpoints, rank=env.rank,
                        verify_checksums=cfg.verify_checksums)

    state = ckpt.load(engine) or {"step": 0, "tokens_seen": 0, "sampler": sampler.state_dict(), "losses": {}}
    if state["step"] == 0:
        torch.manual_seed(cfg.seed + env.rank)  # dropout etc.; a resume restores the saved RNG
    elif state.get("config_hash") not in (None, config_hash(config)) and env.is_main:
        log.warning("resuming with a config that differs from the checkpoint's (hash %s != %s)",
                    config_hash(config), state.get("config_hash"))
    sampler.load_state_dict(state["sampler"])
    step, tokens_seen, losses = int(state["step"]), int(state["tokens_seen"]), dict(state["losses"])
    tokens_start = tokens_seen
    end = cfg.max_steps if federated is None else min(federated.stop_step, cfg.max_steps)
    anchors = _load_round_weights(engine, federated, cfg.zero_stage) if federated is not None else []

    flops_per_token = mcfg.flops_per_token()
    peak = cfg.peak_flops or device_peak_flops(cfg.precision)
    metrics = MetricsLogger(cfg.run_dir, enabled=env.is_main, wandb_mode=cfg.wandb_mode,
                            project=cfg.wandb_project, name=cfg.wandb_name, config=config)
    progress = ProgressDisplay(env.is_main and cfg.progress, cfg.max_steps, step)
    preempt = PreemptionFlag()

    def trainer_state() -> dict[str, Any]:
        return {"step": step, "tokens_seen": tokens_seen, "sampler": sampler.state_dict(), "losses": losses,
                "config_hash": config_hash(config), "world_size": env.world_size}

    if env.is_main:
        log.info("training %s (%.2fM parameters, vocab %d) from step %d to %d on %d rank(s), ZeRO-%d",
                 mcfg.name, mcfg.n_params() / 1e6, mcfg.vocab_size, step, cfg.max_steps,
                 env.world_size, cfg.zero_stage)
    preempted, last_good = False, ckpt.candidates()[:1]
    timer, steps_timed, tokens_timed = time.perf_counter(), 0, 0
    try:
        while step < end:
            if dist.all_reduce([1.0 if preempt.requested else 0.0], "max")[0]:
                if env.is_main:
                    log.warning("%s received: checkpointing at step %d and stopping",
                                preempt.signal or "preemption signal (on another rank)", step)
                if not (last_good and last_good[0].name == f"step-{step}"):  # not saved just now
                    ckpt.save(engine, step, trainer_state())
                preempted = True
                break
            micro_batches, n_tokens = batches.next()
            lr = scheduler.get_last_lr()[0]
            loss_sum = 0.0
            for i, (rows, positions) in enumerate(micro_batches):
                loss = engine(**to_batch(rows, device, positions if cfg.pack else None)).loss
                if anchors:  # FedProx: stay near the round's global weights
                    loss = loss + federated.proximal_mu / 2 * sum(
                        (p - g).pow(2).sum() for p, g in zip(engine.module.parameters(), anchors))
                engine.backward(loss)
                loss_sum += float(loss.detach())
                if i < len(micro_batches) - 1:
                    engine.step()
            train_loss = dist.all_reduce([loss_sum / len(micro_batches)])[0] / env.world_size
            if not math.isfinite(train_loss):
                good = last_good[0].name if last_good else "none (no checkpoint was written yet)"
                raise TrainingDiverged(
                    f"loss is {train_loss} at step {step + 1}; stopped before applying it. The last good "
                    f"checkpoint is {good}; lower train.lr or check the data, then rerun to resume from it"
                )
            engine.step()
            step, tokens_seen, steps_timed = step + 1, tokens_seen + n_tokens, steps_timed + 1
            tokens_timed += n_tokens
            losses["train"] = train_loss

            if step % cfg.log_every == 0 or step in (cfg.max_steps, end):
                elapsed = time.perf_counter() - timer
                tps = tokens_timed / elapsed  # record tokens, not padding
                grad_norm = engine.get_global_grad_norm()
                record = {
                    "loss/train": train_loss, "optim/lr": lr,
                    "optim/grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "throughput/tokens_per_s": tps, "throughput/tokens_per_s_per_device": tps / env.world_size,
                    "throughput/mfu": mfu(tps, flops_per_token, peak, env.world_size) if peak else None,
                    "data/tokens_seen": tokens_seen, "data/epoch": sampler.epoch, "time/step_s": elapsed / steps_timed,
                }
                if torch.cuda.is_available():
                    record["memory/max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
                metrics.log(record, step)
                progress.update(step, f"loss {train_loss:.4f}  {tps:,.0f} tok/s")
                timer, steps_timed, tokens_timed = time.perf_counter(), 0, 0
            if step % cfg.eval_every == 0 or step in (cfg.max_steps, end):
                losses["eval"] = eval_loss(engine, eval_windows, cfg.micro_batch_size, env, device)
                metrics.log({"loss/eval": losses["eval"]}, step)
                if env.is_main:
                    log.info("step %d: loss/train %.4f loss/eval %.4f", step, train_loss, losses["eval"])
                timer, steps_timed, tokens_timed = time.perf_counter(), 0, 0
            if step % cfg.checkpoint_every == 0 or step in (cfg.max_steps, end):
                last_good = [ckpt.save(engine, step, trainer_state())]
                timer, steps_timed, tokens_timed = time.perf_counter(), 0, 0
    except TrainingDiverged as exc:
        if env.is_main:
            log.error("%s", exc)
        metrics.log({"error": str(exc)}, step)
        raise
    finally:
        preempt.restore()
        progress.close()
        metrics.summary({"step": step, "tokens_seen": tokens_seen, **{f"loss/{k}": v for k, v in losses.items()}})
        metrics.close()

    model_dir = None
    if federated is not None:
        weights = None if preempted else gathered_state_dict(engine, cfg.zero_stage, env.is_main)
        return TrainResult(step, tokens_seen, preempted, losses, None, weights, tokens_start)
    if not preempted and cfg.export:
        if data.held_out is not None:
            held = fixed_windows(data.held_out, data.vocab, mcfg.context_length, cfg.eval_windows, seed=cfg.seed)
            losses["held_out"] = eval_loss(engine, held, cfg.micro_batch_size, env, device)
        weights = gathered_state_dict(engine, cfg.zero_stage, env.is_main)
        if env.is_main:
            card = {"data": {"data_dir": str(cfg.data_dir), "train_subjects": len(data.train),
                             "train_tokens": int(data.train.lengths.sum())},
                    "steps": step, "tokens_seen": tokens_seen, "losses": losses, "config": config,
                    "world_size": env.world_size, "zero_stage": cfg.zero_stage}
            model_dir = export_model(weights, mcfg, data.vocab, cfg.model_dir, card)
        dist.barrier()
    return TrainResult(step, tokens_seen, preempted, losses, model_dir, tokens_start=tokens_start)
