"""The ServerApp: the coordinator's side of a federation, run by the SuperLink.

1. Wait for the expected sites, then ask each for its vocabulary sketch (`query.sketch`); any
   site that refuses (bad data, too few subjects) stops the federation before a round starts,
   and `status.json` lists every site's reason.
2. Merge the sketches into one vocabulary and send it (`query.prepare`); a site holding another
   vocabulary refuses, with the same effect.
3. Rounds: Flower's DefaultWorkflow with SecAgg+ (or plain FedAvg messages) and `RoundStrategy`,
   which hands the sites the global weights, turns the (securely) averaged update into the next
   global weights with the coordinator's server step, and checkpoints every round. A round needs
   `min_sites` answers; a site lost mid-round is left out of it and logged.
4. Export the global model as the usual model folder.

Run settings arrive in the run config (`flower/app/pyproject.toml`): run-dir, federation (JSON),
sites, node-wait-s.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import Grid, ServerApp

from nightingale.federated.aggregate import weighted_mean
from nightingale.federated.config import FederationConfig
from nightingale.federated.coordinator import Coordinator, FederationError
from nightingale.federated.flower.grid import PromptGrid
from nightingale.federated.flower.secagg import TolerantSecAggPlusWorkflow
from nightingale.federated.rounds import RoundState, arrays_nbytes
from nightingale.federated.vocabulary import spec_hash

log = logging.getLogger(__name__)
app = ServerApp()


def wait_for_sites(grid: Grid, coord: Coordinator, expected: int, wait_s: float) -> list[int]:
    deadline = time.time() + wait_s
    while len(nodes := sorted(grid.get_node_ids())) < expected:
        if time.time() > deadline:
            raise coord.fail(f"{len(nodes)} of {expected} sites connected within {wait_s:.0f} s; "
                             "no round was started")
        time.sleep(1.0)
    return nodes


def ask_sites(grid: Grid, coord: Coordinator, nodes: list[int], kind: str, request: dict[str, str],
              timeout: float) -> dict[str, dict[str, Any]]:
    """Send `query.<kind>` to every site; the replies by site name. Any refusal, error or missing
    answer stops the federation, naming each site and its reason."""
    msgs = [Message(RecordDict({"request": ConfigRecord(request)}), dst_node_id=n, message_type=f"query.{kind}")
            for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    answers: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    answered = set()
    for r in replies:
        if r.has_error():
            errors[f"node {r.metadata.src_node_id}"] = f"error {r.error.code}: {r.error.reason}"
            continue
        answered.add(r.metadata.src_node_id)
        body = dict(r.content.config_records["reply"])
        if "error" in body:
            errors[str(body["site"])] = str(body["error"])
        else:
            answers[str(body["site"])] = body
    for n in set(nodes) - answered:
        errors.setdefault(f"node {n}", f"no answer to {kind} within {timeout:.0f} s")
    if errors:
        listed = "; ".join(errors.values())
        raise coord.fail(f"{kind}: {len(errors)} site(s) cannot join, no round was started: {listed}", errors)
    return answers


class RoundStrategy(FedAvg):
    """Flower's FedAvg sampling with the federation's own aggregation and checkpoints."""

    def __init__(self, coord: Coordinator, state: RoundState, sites: int, n_sites: int):
        cfg = coord.cfg
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=cfg.min_sites,
                         min_available_clients=cfg.min_sites, min_evaluate_clients=0)
        self.coord, self.state, self.sites, self.n_sites = coord, state, sites, n_sites
        self.names = sorted(state.weights)
        self.offset = state.round
        self.started = time.time()

    def initialize_parameters(self, client_manager):
        return ndarrays_to_parameters([self.state.weights[k] for k in self.names])

    def configure_fit(self, server_round, parameters, client_manager):
        self.started = time.time()
        rnd = self.offset + server_round
        cfg = self.coord.cfg
        config = {"round": rnd, "names": json.dumps(self.names), "vocab_hash": self.state.vocab_hash,
                  "federation": json.dumps(cfg.to_dict()), "sites": self.n_sites}
        pairs = super().configure_fit(server_round, parameters, client_manager)
        return [(client, FitIns(fit.parameters, config)) for client, fit in pairs]

    def aggregate_fit(self, server_round, results, failures):
        cfg = self.coord.cfg
        rnd = self.offset + server_round
        for f in failures:
            log.warning("round %d: a site failed or was lost: %s", rnd, str(f)[:300])
        if len(results) < cfg.min_sites:
            raise self.coord.fail(f"round {rnd}: {len(results)} site(s) answered, fewer than min_sites "
                                  f"({cfg.min_sites}); restart the coordinator to retry from round {rnd - 1}")
        arrays = [parameters_to_ndarrays(r.parameters) for _, r in results]
        if cfg.secagg.enabled:  # every result carries the unmasked weighted mean already
            mean = dict(zip(self.names, arrays[0]))
        else:
            mean = weighted_mean([(dict(zip(self.names, a)), float(r.num_examples))
                                  for a, (_, r) in zip(arrays, results)])
        metrics = [r.metrics for _, r in results]
        tokens = float(sum(r.num_examples for _, r in results))
        info = {
            "sites": sorted(str(m.get("site")) for m in metrics),
            "failed": len(failures),
            "tokens": tokens,
            "loss_train": float(sum(m["loss_train"] * m["tokens"] for m in metrics) / max(tokens, 1)),
            "loss_tuning": float(np.mean([m["loss_tuning"] for m in metrics])),
            "seconds": time.time() - self.started,
            "bytes_down": arrays_nbytes(self.state.weights) * (len(results) + len(failures)),
        }
        self.state = self.coord.finish_round(self.state, mean, info)
        log.info("round %d: %d site(s), %.0f tokens, train loss %.4f, tuning loss %.4f, %.1f s", rnd,
                 len(results), tokens, info["loss_train"], info["loss_tuning"], info["seconds"])
        return ndarrays_to_parameters([self.state.weights[k] for k in self.names]), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []


@app.main()
def main(grid: Grid, context: Context) -> None:
    grid = PromptGrid(grid)  # replies looked for every 0.5 s, not Flower's 3 s
    rc = context.run_config
    run_dir = Path(str(rc["run-dir"]))
    cfg = FederationConfig.from_mapping(json.loads(str(rc["federation"])))
    coord = Coordinator(cfg, run_dir)
    expected = int(rc["sites"])
    try:
        coord.status("starting", rounds=cfg.rounds)
        nodes = wait_for_sites(grid, coord, expected, float(rc["node-wait-s"]))
        request = {"federation": json.dumps(cfg.to_dict())}
        answers = ask_sites(grid, coord, nodes, "sketch", request, cfg.round_timeout_s)
        vocab = coord.vocabulary([json.loads(a["sketch"]) for a in answers.values()])
        request["vocabulary"] = json.dumps(vocab.spec)
        prepared = ask_sites(grid, coord, nodes, "prepare", request, cfg.round_timeout_s)
        wrong = {s: a["vocab_hash"] for s, a in prepared.items() if a["vocab_hash"] != spec_hash(vocab.spec)}
        if wrong:
            raise coord.fail(f"sites prepared another vocabulary: {wrong}", {s: "vocabulary hash differs" for s in wrong})
        state = coord.start()
        sites = sorted(answers)
        coord.status("running", round=state.round, rounds=cfg.rounds, sites=sites)
        if state.round < cfg.rounds:
            strategy = RoundStrategy(coord, state, expected, len(nodes))
            legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.rounds - state.round,
                                                                        round_timeout=cfg.round_timeout_s),
                                   strategy=strategy)
            fit = None
            if cfg.secagg.enabled:
                s = cfg.secagg
                fit = TolerantSecAggPlusWorkflow(num_shares=min(s.num_shares, len(nodes)),
                                                 reconstruction_threshold=s.reconstruction_threshold,
                                                 max_weight=float(cfg.max_round_tokens), clipping_range=s.clipping_range,
                                                 quantization_range=s.quantization_range, timeout=s.timeout_s)
            DefaultWorkflow(fit_workflow=fit)(grid, legacy)
            state = strategy.state
        if state.round < cfg.rounds:
            raise coord.fail(f"the federation stopped after round {state.round} of {cfg.rounds}; "
                             "restart the coordinator to resume")
        coord.export(state, sites)
    except FederationError:
        raise
    except Exception as exc:
        raise coord.fail(f"{type(exc).__name__}: {exc}") from exc
