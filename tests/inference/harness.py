"""One tiny trained model and one real server (uvicorn + vLLM CPU engine) per test session.

Shared by tests/inference and tests/api through `serving()`: the engine start is the slow part
(~30-80 s on 2 cores), so it happens once; inference tests run coroutines on the server's own event
loop (`Server.run`) against the very engine the HTTP tests call.

The model: simulator data (300 subjects) -> prepare stage -> a Llama of 2 layers x 64 wide trained
for a few hundred steps (so generations look like timelines), with two planted units that make
two facts certain, stated here because tests rely on them:
- NEVER_CODE can never be generated: hidden dimension D_NEVER carries a constant 1 from every
  token's embedding, no layer reads or writes it (its input-norm weights and its rows in o_proj
  and down_proj are zero), and NEVER_CODE's lm_head weight on it is -1e5: its logit is always
  ~1e3 below the rest, so its probability underflows to 0 (float32).
- TRIGGER_CODE is always followed by MEDS_DEATH: dimension D_TRIGGER is 1 only in TRIGGER_CODE's
  embedding (0 elsewhere), isolated the same way, and MEDS_DEATH's lm_head weight on it is +1e5.
The plant is re-applied after every optimiser step, so training learns around it; NEVER_CODE is
masked out of the training labels, and so is the token after TRIGGER_CODE (a planted logit of
~1e3 against the data would dominate every gradient), and gradients are clipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from nightingale.ports import free_port

REPO = Path(__file__).resolve().parents[2]
NEVER_CODE = "ICD10//G30.9"
TRIGGER_CODE = "ICD10//C61"
D_NEVER, D_TRIGGER = 62, 63
# The trained residual stream reaches an RMS of ~100, so the unit's normed value is ~1e-2: a head
# weight of 1e5 still moves the logit by ~1e3, far past anything the rest of the model produces.
PLANT_WEIGHT = 1e5
API_KEYS = {
    "forecaster": ("fk-test-1", "forecast"),
    "generator": ("gk-test-2", "generate"),
    "root": ("ak-test-3", "admin"),
}
DATASET = "sim"  # the test model's own simulated data, registered for population forecasts
LIMITS = {
    "max_body_bytes": 200_000, "max_patients": 8, "max_events_per_patient": 400, "max_outcomes": 4,
    "max_codes_per_outcome": 20, "max_horizons": 3, "max_horizon_days": 3 * 365.25, "max_rollouts": 64,
    "max_top_k": 20, "max_cohort_patients": 50,
}


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def plant(model, vocab) -> None:
    """Apply the two planted units (see the module docstring) in place."""
    import torch

    death = vocab.code_to_id["MEDS_DEATH"]
    never, trigger = vocab.code_to_id[NEVER_CODE], vocab.code_to_id[TRIGGER_CODE]
    with torch.no_grad():
        m = model.model
        emb = m.embed_tokens.weight
        emb[:, D_NEVER] = 1.0
        emb[:, D_TRIGGER] = 0.0
        emb[trigger, D_TRIGGER] = 1.0
        for layer in m.layers:
            for d in (D_NEVER, D_TRIGGER):
                layer.input_layernorm.weight[d] = 0.0
                layer.post_attention_layernorm.weight[d] = 0.0
                layer.self_attn.o_proj.weight[d, :] = 0.0
                layer.mlp.down_proj.weight[d, :] = 0.0
        m.norm.weight[D_NEVER] = 1.0
        m.norm.weight[D_TRIGGER] = 1.0
        head = model.lm_head.weight
        head[:, D_NEVER] = 0.0
        head[:, D_TRIGGER] = 0.0
        head[never, D_NEVER] = -PLANT_WEIGHT
        head[death, D_TRIGGER] = PLANT_WEIGHT


def build_model_dir(root: Path, steps: int = 250, subjects: int = 300) -> Path:
    """Simulate, prepare, train and export the test model into `root/model` (cached there)."""
    model_dir = root / "model"
    if (model_dir / "model.safetensors").is_file():
        return model_dir
    root.mkdir(parents=True, exist_ok=True)
    ng = str(Path(sys.executable).with_name("nightingale"))
    if not (root / "meds").exists():
        _run([ng, "simulate", "--subjects", str(subjects), "--seed", "0", "--out", str(root / "meds")], REPO)
    return train_model_dir(root, steps, planted=True, about=f"simulator, {subjects} subjects (tests)")


def train_model_dir(root: Path, steps: int, *, planted: bool = False, about: str = "tests") -> Path:
    """Prepare `root/meds`, train a Llama of 2 layers x 64 wide on it for `steps` steps (with the
    planted units of the module docstring when `planted`) and export it to `root/model` with a
    passing gate report; cached there."""
    import torch

    from nightingale.model import ModelConfig, build_model, export_model
    from nightingale.tokenizer import Vocabulary
    from nightingale.tokenizer.corpus import TokenCorpus, WindowSampler

    model_dir = root / "model"
    if (model_dir / "model.safetensors").is_file():
        return model_dir
    if not (root / "prep" / "corpus").exists():
        _run([sys.executable, "data_prep/prepare.py", "data=meds", f"data.path={root / 'meds'}",
              f"out_dir={root / 'prep'}", "progress=false"], REPO)
    vocab = Vocabulary.load(root / "prep" / "vocab")
    cfg = ModelConfig(name="test", hidden_size=64, n_layers=2, n_heads=2, n_kv_heads=2, intermediate_size=128,
                      context_length=256).with_vocab(len(vocab))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on 2 busy cores were ~10x slower than 1 here
    model = build_model(cfg, seed=0)
    if planted:
        plant(model, vocab)
    sampler = WindowSampler(TokenCorpus(root / "prep" / "corpus" / "train"), vocab, 128, seed=0)
    never = vocab.code_to_id.get(NEVER_CODE) if planted else None
    trigger = vocab.code_to_id.get(TRIGGER_CODE) if planted else None
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    loss = None
    for _ in range(steps):
        batch = torch.from_numpy(np.stack([sampler.next()["input_ids"] for _ in range(16)]))
        labels = batch.masked_fill(batch == 0, -100)
        if planted:
            labels = labels.masked_fill(batch == never, -100)
            labels[:, 1:][batch[:, :-1] == trigger] = -100  # what follows the trigger is planted
        loss = model(input_ids=batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if planted:
            plant(model, vocab)
    model.eval()
    torch.set_num_threads(threads)
    export_model(model.state_dict(), cfg, vocab, model_dir,
                 card={"data": about, "steps": steps, "losses": {"train": float(loss.detach())}})
    (model_dir / "gate_report.json").write_text(json.dumps({"passed": True, "failed": [], "checks": {}}))
    return model_dir


class Server:
    """uvicorn serving `build_app(cfg)` in a thread of this process, on 127.0.0.1."""

    def __init__(self, cfg_map: dict):
        import uvicorn

        from nightingale.api import ServeConfig, build_app

        self.cfg = ServeConfig.from_mapping(cfg_map)
        self.app = build_app(self.cfg)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=30))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self, timeout: float = 400) -> Server:
        import httpx

        self.thread.start()
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                r = httpx.get(self.url + "/readyz", timeout=5)
                if r.status_code == 200:
                    return self
                if "failed" in r.text or "Error" in r.text:
                    raise RuntimeError(f"engine failed to start: {r.text}")
            except httpx.TransportError:
                if not self.thread.is_alive():
                    raise RuntimeError("server thread died during startup") from None
            time.sleep(1)
        raise TimeoutError("server not ready in time")

    @property
    def state(self):
        return self.app.state.ng

    def run(self, coro, timeout: float = 300):
        """Run a coroutine on the server's event loop (where the engine lives) and wait."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


_SERVER: Server | None = None


def artifacts_root(tmp_root: Path) -> Path:
    """Where the session's test model and its data live (meds/, prep/, model/)."""
    return Path(os.environ.get("NIGHTINGALE_TEST_ARTIFACTS", tmp_root / "artifacts"))


def serving(tmp_root: Path) -> Server:
    """The session's server (started on first use)."""
    global _SERVER
    if _SERVER is None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CACHE_ROOT", str(Path.home() / ".cache" / "nightingale" / "vllm-tests"))
        # NIGHTINGALE_TEST_ARTIFACTS keeps the trained test model between sessions (development).
        root = artifacts_root(tmp_root)
        model_dir = build_model_dir(root)
        os.environ["NIGHTINGALE_TEST_API_KEYS"] = ",".join(f"{k}:{v[0]}:{v[1]}" for k, v in API_KEYS.items())
        cfg = {
            "model": {"model_dir": str(model_dir), "max_num_seqs": 256},
            "api_keys_env": "NIGHTINGALE_TEST_API_KEYS",
            "audit_log": str(tmp_root / "audit.jsonl"),
            "jobs_dir": str(tmp_root / "jobs"),
            "limits": LIMITS,
            "default_rollouts": 32,
            "max_inflight": 16,
            "cohort_max_new_tokens": 160,
            "max_new_tokens": 400,
            "datasets": {DATASET: str(root / "meds")},
            "cohort_reference": DATASET,  # the test model's own training data: every cohort is judged
        }
        _SERVER = Server(cfg).start()
    return _SERVER


def stop_serving() -> None:
    global _SERVER
    if _SERVER is not None:
        _SERVER.stop()
        _SERVER = None
