"""Free TCP ports on localhost for the servers this project starts (the API server, Flower's
SuperLink and SuperNodes, DeepSpeed's process group)."""

from __future__ import annotations

import socket
import threading

_HANDED_OUT: set[int] = set()
_LOCK = threading.Lock()


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago and that this process has not handed out
    before: gRPC servers bind with SO_REUSEPORT, so two servers started at once and given the same
    port would share it (two federations' sites would join the wrong coordinator)."""
    with _LOCK:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
