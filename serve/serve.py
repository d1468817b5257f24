"""Serving stage: start the HTTP API (FastAPI + vLLM) for one exported, gated model.

    python serve/serve.py model_dir=runs/demo/train/model
    NIGHTINGALE_API_KEYS="me:secret:admin" python serve/serve.py model_dir=... port=8000
    python serve/serve.py experiment=dev model_dir=runs/demo/train/model    # ungated, development only

Reads configs/serve.yaml (the engine from configs/engine/); all logic lives in `nightingale.api` and `nightingale.inference`.
uvicorn handles SIGTERM/SIGINT gracefully: it stops accepting, lets in-flight requests finish (up
to `graceful_timeout_s`), then the app's lifespan cancels cohort jobs and shuts the engine down.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from nightingale.api import ServeConfig, build_app

log = logging.getLogger("serve.serve")


def serve(cfg: DictConfig) -> None:
    import uvicorn

    serve_cfg = ServeConfig.from_mapping({
        **OmegaConf.to_container(cfg.serve, resolve=True),
        "model": {**OmegaConf.to_container(cfg.engine, resolve=True), "model_dir": str(cfg.model_dir)},
    })
    app = build_app(serve_cfg)
    log.info("serving %s on http://%s:%d (docs at /docs)", serve_cfg.model.model_dir, cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=int(cfg.port), log_level=str(cfg.log_level),
                timeout_graceful_shutdown=int(cfg.graceful_timeout_s))


@hydra.main(version_base="1.3", config_path="../configs", config_name="serve")
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":  # the engine spawns processes: keep the guard
    main()
