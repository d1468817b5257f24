"""Process-group set-up from the environment, whoever launched us (torchrun, srun, or nobody).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; under `srun` the batch
script may set them from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, and when it does not we read
those directly. A bare `python train/train.py` is a world of one.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import torch

log = logging.getLogger(__name__)

# DeepSpeed picks its accelerator once, at first use; on a machine without CUDA say "cpu" before
# anything imports it (else it probes for IPEX / oneCCL).
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_env(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"environment {name}={value!r}: not an integer") from None
    return default


def dist_env() -> DistEnv:
    """Rank, world size and rendezvous address from torchrun's or Slurm's variables."""
    world = _int_env("WORLD_SIZE", "SLURM_NTASKS", default=1)
    rank = _int_env("RANK", "SLURM_PROCID", default=0)
    local = _int_env("LOCAL_RANK", "SLURM_LOCALID", default=0)
    if not 0 <= rank < world:
        raise ValueError(f"environment RANK={rank} is outside WORLD_SIZE={world}")
    addr = os.environ.get("MASTER_ADDR") or "127.0.0.1"
    port = _int_env("MASTER_PORT", default=29500)
    return DistEnv(rank, world, local, addr, port)


def device_for(env: DistEnv) -> torch.device:
    """cuda:<local_rank> when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def init_distributed(env: DistEnv) -> str:
    """Start the default process group (NCCL on GPUs, gloo on the CPU); returns the backend."""
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    # Make the variables canonical so that DeepSpeed and torch read the same values under srun.
    os.environ.update(
        RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
        MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port),
    )
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(
            dist_backend=backend, auto_mpi_discovery=False, rank=env.rank, world_size=env.world_size,
        )
    log.info("rank %d of %d (local %d), backend %s", env.rank, env.world_size, env.local_rank, backend)
    return backend


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """All-reduce a few floats across ranks (float64); identity without a process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if torch.cuda.is_available():
        t = t.cuda()
    ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX,
           "min": torch.distributed.ReduceOp.MIN}
    torch.distributed.all_reduce(t, op=ops[op])
    return t.cpu().tolist()


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
