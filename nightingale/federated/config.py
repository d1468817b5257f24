"""FederationConfig: how a federation trains, validated before any process starts.

configs/federated/default.yaml mirrors these fields. The coordinator sends the whole config to
every site with each message, so sites need no copy of it (only their own data folder).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from nightingale.config import build, check_choice, check_ints
from nightingale.model.config import ModelConfig
from nightingale.tokenizer.config import TokenizerConfig

STRATEGIES = ("fedavg", "fedprox", "fedadam")


@dataclasses.dataclass(frozen=True)
class SecAggConfig:
    """Flower's SecAgg+ (the coordinator sees only the sum of the sites' masked updates).

    num_shares / reconstruction_threshold: each site's key is shared with `num_shares` others and
    `reconstruction_threshold` of them must answer to unmask it (so a round survives dropouts
    down to that many sites). clipping_range / quantization_range: updates (the change of each
    weight over a round, not the weights) are clipped to +/- clipping_range and quantized to
    quantization_range levels before masking.
    """

    enabled: bool = True
    num_shares: int = 3
    reconstruction_threshold: int = 2
    clipping_range: float = 1.0
    quantization_range: int = 2**22
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        check_ints(self, ("num_shares", "reconstruction_threshold", "quantization_range"), "federated.secagg", low=2)
        if self.reconstruction_threshold > self.num_shares:
            raise ValueError("federated.secagg.reconstruction_threshold: at most num_shares "
                             f"({self.num_shares}), got {self.reconstruction_threshold}")
        if not self.clipping_range > 0:
            raise ValueError(f"federated.secagg.clipping_range: > 0, got {self.clipping_range!r}")


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """Differential privacy of each site's contribution (off when noise_multiplier is 0).

    Each site clips its round update to L2 norm `clip_norm` and adds Gaussian noise of standard
    deviation noise_multiplier * clip_norm / sqrt(sites), so the sum (what SecAgg+ reveals) carries
    noise_multiplier * clip_norm: the Gaussian mechanism at the level of a site, accounted over the
    rounds with Renyi DP and reported as (epsilon, delta) in the model card.
    """

    noise_multiplier: float = 0.0
    clip_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or not self.clip_norm > 0 or not 0 < self.delta < 1:
            raise ValueError("federated.dp: need noise_multiplier >= 0, clip_norm > 0 and 0 < delta < 1, got "
                             f"{self.noise_multiplier}, {self.clip_norm}, {self.delta}")

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0


@dataclasses.dataclass(frozen=True)
class FederationConfig:
    """A federated pretraining run.

    rounds / local_steps: each round every site trains `local_steps` optimizer steps from the
        global weights; the learning-rate schedule spans rounds x local_steps steps.
    min_sites: answers a round needs to proceed (sites that fail or time out are logged).
    strategy: fedavg (updates averaged, weighted by the tokens each site trained on), fedprox (the
        same, with mu/2 ||w - w_global||^2 in each site's loss) or fedadam (the averaged update
        drives an Adam step at the coordinator, FedOpt of Reddi et al. 2021).
    server_lr: the coordinator's step on the averaged update; left out (null), the strategy's own:
        1.0 for fedavg and fedprox (plain averaging), 0.01 for fedadam.
    server_momentum: fedavg and fedprox only: > 0 keeps a momentum buffer of the averaged updates
        across rounds and steps along it (FedAvgM, Hsu et al. 2019); 0 is plain averaging.
    suppress_below: counts under this are never sent by a site (and a site needs at least this
        many train subjects).
    round_timeout_s: how long the coordinator waits for a round's answers.
    model / tokenizer / train: the usual model preset, vocabulary settings and TrainConfig fields
        (optimizer, batch, precision, deepspeed stage) every site trains with.
    """

    rounds: int = 3
    local_steps: int = 20
    min_sites: int = 2
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    server_lr: float | None = None
    server_momentum: float = 0.0
    server_betas: tuple[float, float] = (0.9, 0.99)
    server_tau: float = 1e-3
    suppress_below: int = 10
    round_timeout_s: float = 1800.0
    seed: int = 0
    secagg: SecAggConfig = SecAggConfig()
    dp: DPConfig = DPConfig()
    model: ModelConfig = ModelConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_ints(self, ("rounds", "local_steps", "min_sites", "suppress_below"), "federated")
        check_ints(self, ("seed",), "federated", low=0)
        check_choice("federated.strategy", self.strategy, STRATEGIES)
        object.__setattr__(self, "server_betas", tuple(float(b) for b in self.server_betas))
        if self.proximal_mu < 0 or not self.server_step > 0 or not self.round_timeout_s > 0:
            raise ValueError("federated.proximal_mu >= 0, server_lr > 0 and round_timeout_s > 0 are required")
        if not 0 <= self.server_momentum < 1:
            raise ValueError(f"federated.server_momentum: in [0, 1), got {self.server_momentum!r}")
        if self.server_momentum and self.strategy == "fedadam":
            raise ValueError("federated.server_momentum: fedavg and fedprox only (fedadam's is server_betas)")
        for key in ("data_dir", "run_dir", "max_steps", "export", "export_dir", "model"):
            if key in self.train:
                raise ValueError(f"federated.train.{key}: set by the federation (sites' folders, "
                                 "rounds x local_steps), not in its train settings")
        self.train_config(".", ".")  # the sites' train settings, checked before any site sees them
        if self.secagg.enabled and self.secagg.reconstruction_threshold > self.min_sites:
            raise ValueError(f"federated.secagg.reconstruction_threshold ({self.secagg.reconstruction_threshold}) "
                             f"above min_sites ({self.min_sites}): a round that min_sites allows could not unmask")

    @property
    def server_step(self) -> float:
        """server_lr, or the strategy's own when it is left out."""
        if self.server_lr is not None:
            return float(self.server_lr)
        return 0.01 if self.strategy == "fedadam" else 1.0

    @property
    def total_steps(self) -> int:
        return self.rounds * self.local_steps

    def train_config(self, data_dir: Any, run_dir: Any):
        """A site's TrainConfig: the federation's train settings over the site's folders, the
        schedule spanning every round, no export (the coordinator exports the global model)."""
        from nightingale.training.config import TrainConfig

        settings = {"wandb_mode": "disabled", "progress": False, "checkpoint_every": self.total_steps,
                    "eval_every": self.local_steps, "log_every": self.local_steps, "seed": self.seed, **self.train}
        return TrainConfig.from_mapping({**settings, "data_dir": data_dir, "run_dir": run_dir, "model": self.model,
                                         "max_steps": self.total_steps, "export": False})

    @property
    def max_round_tokens(self) -> int:
        """An upper bound on the tokens a site trains on in a round (SecAgg+'s largest weight)."""
        return self.local_steps * self.train_config(".", ".").windows_per_step(1) * self.model.context_length

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        d["tokenizer"] = self.tokenizer.to_dict()
        d["train"] = dict(self.train)
        d["server_betas"] = list(self.server_betas)
        return d

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> FederationConfig:
        model = m.get("model", ModelConfig())
        if isinstance(model, str):
            model = ModelConfig.from_name(model)
        elif isinstance(model, Mapping):
            model = ModelConfig.from_mapping(model)
        tok = m.get("tokenizer", TokenizerConfig())
        if isinstance(tok, Mapping):
            tok = TokenizerConfig.from_mapping(tok)
        secagg = m.get("secagg", {})
        secagg = secagg if isinstance(secagg, SecAggConfig) else build(SecAggConfig, secagg, "federated.secagg")
        dp = m.get("dp", {})
        dp = dp if isinstance(dp, DPConfig) else build(DPConfig, dp, "federated.dp")
        return build(cls, m, "federated", model=model, tokenizer=tok, secagg=secagg, dp=dp,
                     train=dict(m.get("train", {}) or {}))
