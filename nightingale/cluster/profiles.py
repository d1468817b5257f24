"""Cluster profiles (configs/cluster/<name>.yaml) and job requests, validated before any submission.

A profile says what one node of a cluster holds and how jobs start there: GPUs and CPUs per node,
memory, partition, account policy, time limit, modules or container, environment (NCCL), the
launcher (one `srun` task per GPU, or one `torchrun` per node), the preemption-signal lead time and
the peak FLOP/s that MFU is measured against. A `JobRequest` (nodes x GPUs, account) is checked
against it: every error is a `ValueError` naming the field, raised before `sbatch` runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from nightingale.config import check_choice, check_fields, check_ints, field_names

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILE_DIR = REPO_ROOT / "configs" / "cluster"
LAUNCHERS = ("srun", "torchrun")
_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")  # Slurm time: [D-]HH[:MM[:SS]] or minutes


@dataclasses.dataclass(frozen=True)
class Container:
    """A container image and the command that runs a program inside it, e.g.
    `apptainer exec --nv` (the image path is appended)."""

    image: str
    runtime: str = "apptainer exec --nv"

    def prefix(self) -> str:
        return f"{self.runtime} {self.image}"


@dataclasses.dataclass(frozen=True)
class ClusterProfile:
    """One cluster's node shape and job policy; see configs/cluster/*.yaml for each field."""

    name: str
    partition: str | None
    gpus_per_node: int
    cpus_per_node: int
    description: str = ""
    account: str | None = None
    account_required: bool = False
    max_nodes: int | None = None
    tasks_per_node: int | None = None  # CPU ranks per node; null: one per GPU
    cpus_per_task: int | None = None
    mem: str | None = None  # sbatch --mem (per node); "0" = whole node; null = partition default
    time: str = "01:00:00"
    launcher: str = "srun"
    signal_lead_s: int = 120
    modules: tuple[str, ...] = ()
    container: Container | None = None
    python: str | None = None  # null: this Python (sys.executable), or `python3` in a container
    setup: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    peak_flops: float | None = None
    train_overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"cluster profile {self.name!r}"
        check_ints(self, ("gpus_per_node",), where, low=0)
        check_ints(self, ("cpus_per_node",), where)
        check_ints(self, ("max_nodes", "tasks_per_node", "cpus_per_task"), where, optional=True)
        if self.gpus_per_node == 0 and self.tasks_per_node is None:
            raise ValueError(f"{where}: tasks_per_node is required when gpus_per_node is 0")
        check_choice(f"{where}.launcher", self.launcher, LAUNCHERS)
        if not _TIME.match(str(self.time)):
            raise ValueError(f"{where}: time {self.time!r} is not a Slurm time ([D-]HH:MM:SS)")
        if not isinstance(self.signal_lead_s, int) or not 0 < self.signal_lead_s <= 65535:
            raise ValueError(f"{where}: signal_lead_s must be 1..65535 seconds, got {self.signal_lead_s!r}")
        if self.peak_flops is not None and not float(self.peak_flops) > 0:
            raise ValueError(f"{where}: peak_flops must be positive FLOP/s, got {self.peak_flops!r}")
        object.__setattr__(self, "env", {str(k): str(v) for k, v in (self.env or {}).items()})
        object.__setattr__(self, "modules", tuple(self.modules or ()))
        object.__setattr__(self, "setup", tuple(self.setup or ()))
        object.__setattr__(self, "train_overrides", tuple(self.train_overrides or ()))

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ClusterProfile:
        check_fields(data, field_names(cls), f"cluster profile {data.get('name', '?')!r}")
        container = data.get("container")
        if isinstance(container, dict):
            container = Container(**container)
        elif isinstance(container, str):
            container = Container(image=container)
        return cls(**{**data, "container": container})


def available_profiles(profile_dir: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in profile_dir.glob("*.yaml"))


def load_profile(name_or_path: str, profile_dir: Path = PROFILE_DIR) -> ClusterProfile:
    """A profile by name (configs/cluster/<name>.yaml) or by the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = profile_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"--profile {name_or_path!r}: unknown cluster profile; available "
                         f"{available_profiles(profile_dir)} (or the path of a profile YAML file)")
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("name", path.stem)
    return ClusterProfile.from_mapping(data)


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """What one job asks of a profile: nodes x GPUs per node (or CPU ranks), account, time.
    `resolve` fills the profile's defaults and checks the request against it."""

    nodes: int = 1
    gpus_per_node: int | None = None  # None: all of the profile's
    tasks_per_node: int | None = None  # CPU profiles only; None: the profile's
    account: str | None = None
    time: str | None = None
    partition: str | None = None

    def resolve(self, profile: ClusterProfile) -> ResolvedJob:
        where = f"profile {profile.name!r}"
        if not isinstance(self.nodes, int) or self.nodes < 1:
            raise ValueError(f"nodes: a positive integer, got {self.nodes!r}")
        if profile.max_nodes is not None and self.nodes > profile.max_nodes:
            raise ValueError(f"nodes: {self.nodes} requested; {where} has at most {profile.max_nodes}")
        gpus = profile.gpus_per_node if self.gpus_per_node is None else self.gpus_per_node
        if not isinstance(gpus, int) or gpus < 0:
            raise ValueError(f"gpus_per_node: a non-negative integer, got {gpus!r}")
        if gpus > profile.gpus_per_node:
            raise ValueError(f"gpus_per_node: {gpus} requested; {where} has {profile.gpus_per_node} "
                             "GPU(s) per node")
        if profile.gpus_per_node > 0 and gpus == 0:
            raise ValueError(f"gpus_per_node: 0 requested on the GPU {where}; ask for 1..{profile.gpus_per_node}")
        if gpus > 0:
            if self.tasks_per_node is not None:
                raise ValueError("tasks_per_node: set by the GPUs (one rank per GPU); leave it out")
            ranks = gpus
        else:
            ranks = self.tasks_per_node or profile.tasks_per_node or 1
            if ranks * (profile.cpus_per_task or 1) > profile.cpus_per_node:
                raise ValueError(f"tasks_per_node: {ranks} x {profile.cpus_per_task or 1} CPUs exceed "
                                 f"the {profile.cpus_per_node} CPUs per node of {where}")
        account = self.account or profile.account or os.environ.get("SBATCH_ACCOUNT") or None
        if profile.account_required and not account:
            raise ValueError(f"account: {where} requires a Slurm account (project); pass --account "
                             "or set SBATCH_ACCOUNT")
        time = self.time or profile.time
        if not _TIME.match(str(time)):
            raise ValueError(f"time: {time!r} is not a Slurm time ([D-]HH:MM:SS)")
        return ResolvedJob(profile, self.nodes, gpus, ranks, account, time, self.partition or profile.partition)


@dataclasses.dataclass(frozen=True)
class ResolvedJob:
    """A request checked against its profile: what the batch script is rendered from."""

    profile: ClusterProfile
    nodes: int
    gpus_per_node: int
    ranks_per_node: int
    account: str | None
    time: str
    partition: str | None

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def cpus_per_task(self) -> int:
        if self.profile.cpus_per_task:
            return self.profile.cpus_per_task
        return max(1, self.profile.cpus_per_node // self.ranks_per_node)
