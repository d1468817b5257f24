"""Slurm: cluster profiles, batch-script rendering and submission (`nightingale submit`).

Profiles live in configs/cluster/*.yaml, batch-script templates in slurm/templates/.
"""

from nightingale.cluster.profiles import ClusterProfile, JobRequest, ResolvedJob, load_profile
from nightingale.cluster.render import JobSpec, RenderContext, plan_eval, plan_prepare, plan_train
from nightingale.cluster.submit import SubmitError, submit_plan, wait_for

__all__ = [
    "ClusterProfile", "JobRequest", "JobSpec", "RenderContext", "ResolvedJob", "SubmitError",
    "load_profile", "plan_eval", "plan_prepare", "plan_train", "submit_plan", "wait_for",
]
