"""The HTTP API over nightingale.inference: `build_app(cfg)` (FastAPI), auth, audit, limits, metrics."""

from nightingale.api.app import build_app
from nightingale.api.config import Limits, ServeConfig

__all__ = ["Limits", "ServeConfig", "build_app"]
