"""The serving stage (`serve/serve.py`) as a child process: start, wait until ready, stop with SIGTERM.

Used where a real, separate server process matters: the graceful-shutdown test (a signal to the
process that serves), and the load and accuracy benchmarks (the client must not share the server's
event loop or GIL). It lives beside the stage script it starts, outside the library: tests and
benchmarks import it from the checkout (`serve.process`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from nightingale.ports import free_port

SERVE_SCRIPT = Path(__file__).resolve().with_name("serve.py")
REPO = SERVE_SCRIPT.parents[1]


class ServerProcess:
    """`python serve/serve.py <overrides> port=<free port>` in a child.

    Its output goes to `log_path` (or is discarded). Use as a context manager, or call
    `start()` / `stop()`; `stop()` sends SIGTERM and returns the exit code.
    """

    def __init__(self, overrides: Sequence[str], *, env: Mapping[str, str] | None = None, log_path: str | Path | None = None):
        if not SERVE_SCRIPT.is_file():
            raise FileNotFoundError(f"{SERVE_SCRIPT}: the serving stage needs a repository checkout")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, str(SERVE_SCRIPT), *overrides,
                    f"port={self.port}", "host=127.0.0.1"]
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> ServerProcess:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if self.log_path:
                out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} while starting"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.kill()
        raise TimeoutError(f"server not ready within {timeout:.0f} s")

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM (graceful: in-flight requests finish), then wait; SIGKILL past `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.kill()
