"""Progress display for long evaluation steps: a tqdm bar on stderr for a step with a known
count, log records (INFO) for the others, as they start (when enabled) and end (always, with the
time taken). The stage (eval/evaluate.py) shows the records through Hydra's logging setup."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

from tqdm import tqdm

log = logging.getLogger(__name__)


class _Bar:
    def __init__(self, bar: tqdm | None):
        self._bar = bar

    def update(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()


class Progress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    @contextlib.contextmanager
    def bar(self, desc: str, total: int) -> Iterator[_Bar]:
        bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True) if self.enabled else None
        try:
            yield _Bar(bar)
        finally:
            if bar is not None:
                bar.close()

    @contextlib.contextmanager
    def status(self, what: str) -> Iterator[None]:
        """Log `what` as it starts (when enabled) and, always, its duration in seconds."""
        t0 = time.perf_counter()
        if self.enabled:
            log.info("%s ...", what)
        yield
        log.info("%s: done in %.1f s", what, time.perf_counter() - t0)
