"""The ClientApp: one site. Its SuperNode is started with the site's own settings,

    flower-supernode ... --node-config 'site-name="north" data-dir="/data/meds" work-dir="/secure/work"'

(`wire-log="/path.jsonl"` also records what crosses the wire). It answers three kinds of message:
`query.sketch` (check the data, send the vocabulary sketch), `query.prepare` (encode with the
federation's vocabulary) and `train` (a round, in Flower's FitIns/FitRes layout, which SecAgg+'s
mod masks). A site's refusal (bad data, another vocabulary) is a normal reply carrying `error`,
whose text names the site, so the coordinator can report every site's problem at once.
Flower starts a fresh process per message, so imports stay inside the handlers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from nightingale.federated.flower.wire import record_wire

log = logging.getLogger(__name__)


def secagg_when_asked(msg: Message, context: Context, call_next) -> Message:
    """Flower's SecAgg+ mod for a federation that runs SecAgg+ (its train messages carry the
    protocol's settings); plain rounds pass straight through (the mod would refuse them), unless
    the site's node config says `require-secagg=true`: then it sends nothing in the clear."""
    if msg.metadata.message_type == "train" and "secaggplus_configs" not in msg.content.config_records:
        if context.node_config.get("require-secagg"):
            raise PermissionError(f"site {context.node_config.get('site-name')!r} requires SecAgg+; "
                                  "the coordinator asked for an update in the clear")
        return call_next(msg, context)
    return secaggplus_mod(msg, context, call_next)


app = ClientApp(mods=[record_wire, secagg_when_asked])


def _site(context: Context):
    from nightingale.federated.site import Site

    cfg = context.node_config
    missing = [k for k in ("site-name", "data-dir", "work-dir") if not cfg.get(k)]
    if missing:
        raise ValueError(f"SuperNode --node-config: missing {missing} (site-name, data-dir and work-dir are required)")
    return Site(str(cfg["site-name"]), Path(str(cfg["data-dir"])), Path(str(cfg["work-dir"])))


def _federation(text: str):
    from nightingale.federated.config import FederationConfig

    return FederationConfig.from_mapping(json.loads(text))


def _reply(msg: Message, fields: dict) -> Message:
    return Message(RecordDict({"reply": ConfigRecord(fields)}), reply_to=msg)


def _refusal(msg: Message, site_name: str, exc: Exception) -> Message:
    text = str(exc) if site_name in str(exc) else f"site {site_name!r}: {exc}"
    log.error("%s", text)
    return _reply(msg, {"site": site_name, "error": text})


@app.query("sketch")
def sketch(msg: Message, context: Context) -> Message:
    from nightingale.federated import site as site_mod

    name = str(context.node_config.get("site-name", "?"))
    try:
        site = _site(context)
        cfg = _federation(msg.content.config_records["request"]["federation"])
        return _reply(msg, {"site": site.name, "sketch": json.dumps(site_mod.sketch(site, cfg))})
    except (ValueError, OSError) as exc:
        return _refusal(msg, name, exc)


@app.query("prepare")
def prepare(msg: Message, context: Context) -> Message:
    from nightingale.federated import site as site_mod

    name = str(context.node_config.get("site-name", "?"))
    try:
        site = _site(context)
        request = msg.content.config_records["request"]
        cfg = _federation(request["federation"])
        info = site_mod.prepare(site, cfg, json.loads(request["vocabulary"]))
        return _reply(msg, {"site": site.name, **info})
    except (ValueError, OSError) as exc:
        return _refusal(msg, name, exc)


@app.train()
def train(msg: Message, context: Context) -> Message:
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins

    from nightingale.federated import site as site_mod

    site = _site(context)
    fitins = recorddict_to_fitins(msg.content, keep_input=True)
    c = fitins.config
    names = json.loads(str(c["names"]))
    weights = dict(zip(names, parameters_to_ndarrays(fitins.parameters)))
    update, metrics = site_mod.train_round(site, _federation(str(c["federation"])), weights, int(c["round"]),
                                           str(c["vocab_hash"]), int(c["sites"]))
    res = FitRes(status=Status(Code.OK, ""),
                 parameters=ndarrays_to_parameters([np.asarray(update[k], np.float32) for k in names]),
                 num_examples=max(int(metrics["tokens"]), 1),
                 metrics={"site": site.name, **metrics})
    return Message(fitres_to_recorddict(res, keep_input=False), reply_to=msg)
