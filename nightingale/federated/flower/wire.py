"""A ClientApp mod that records what crosses the wire at a site, for inspection.

Listed first in the ClientApp's mods, it is the outermost layer: it sees each message as it
arrives from the SuperLink and each reply as it leaves (after SecAgg+ has masked the update).
Each exchange is one JSON line in the file the SuperNode's `wire-log` node setting names: the
message type and, for every record, its keys with their type and size; config and metric
values are written out in full so that a test can search them.
"""

from __future__ import annotations

import json
import time
from typing import Any

from flwr.app import Context, Message


def _value(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"bytes": len(v)}
    if isinstance(v, list):
        if v and isinstance(v[0], bytes):
            return {"bytes": sum(len(b) for b in v), "items": len(v)}
        return [_value(x) for x in v]
    return v


def describe(msg: Message) -> dict[str, Any]:
    """Type, sizes and scalar contents of a message (its arrays by dtype, shape and bytes)."""
    out: dict[str, Any] = {"type": msg.metadata.message_type}
    if msg.has_error():
        out["error"] = {"code": msg.error.code, "reason": msg.error.reason}
        return out
    c = msg.content
    out["arrays"] = {name: {k: {"dtype": a.dtype, "shape": list(a.shape), "bytes": len(a.data)}
                            for k, a in rec.items()} for name, rec in c.array_records.items()}
    out["configs"] = {name: {k: _value(v) for k, v in rec.items()} for name, rec in c.config_records.items()}
    out["metrics"] = {name: {k: _value(v) for k, v in rec.items()} for name, rec in c.metric_records.items()}
    out["bytes"] = (sum(len(a.data) for rec in c.array_records.values() for a in rec.values())
                    + sum(len(v) if isinstance(v, (bytes, str)) else
                          sum(len(x) if isinstance(x, (bytes, str)) else 8 for x in v) if isinstance(v, list) else 8
                          for rec in c.config_records.values() for v in rec.values()))
    return out


def record_wire(msg: Message, context: Context, call_next) -> Message:
    path = context.node_config.get("wire-log")
    if not path:
        return call_next(msg, context)
    incoming = describe(msg)
    reply = call_next(msg, context)
    with open(str(path), "a", encoding="utf-8") as f:
        f.write(json.dumps({"t": time.time(), "in": incoming, "out": describe(reply)}, default=str) + "\n")
    return reply
