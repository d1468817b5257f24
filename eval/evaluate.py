"""Evaluation stage: score an exported model and write its gate report.

    python eval/evaluate.py model_dir=runs/demo/train/model data_dir=runs/demo/prepared
    python eval/evaluate.py experiment=quick model_dir=... data_dir=...        # development / CI
    python eval/evaluate.py ... task_dir=configs/eval/tasks/mimic synthetic.enabled=false

Reads configs/eval.yaml (the engine from configs/engine/) and a gate (configs/eval/gates/*.yaml).
Writes <model_dir>/evaluation/ (report.json, report.md, plots, predictions) and
<model_dir>/gate_report.json, which the server requires. Exit codes: 0 gate passed, 1 gate failed, 2 bad input. Logic: nightingale.evaluation.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("eval.evaluate")


def evaluate(cfg: DictConfig) -> int:
    from nightingale.evaluation.config import EvalConfig
    from nightingale.evaluation.run import REPORT_DIR, run_evaluation

    ecfg = EvalConfig.from_mapping(OmegaConf.to_container(cfg, resolve=True))
    report = run_evaluation(ecfg)
    g = report["gate"]
    out = ecfg.model_dir / REPORT_DIR
    print(f"\nGate {'PASSED' if g['passed'] else 'FAILED'}"
          + (f": failed {', '.join(g['failed'])}" if g["failed"] else "")
          + f"\nReport: {out / 'report.md'} (JSON: {out / 'report.json'})")
    for name, chk in g["checks"].items():
        vals = ", ".join(f"{v['metric']}={v['value']:.4g}" if v["value"] is not None else f"{v['metric']}=n/a"
                         for v in chk["values"]) or chk["why"]
        print(f"  [{chk['status']:>7}] {name}: {chk['rule']}  ({vals})")
    return 0 if g["passed"] else 1


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        code = evaluate(cfg)
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        code = 2
    sys.exit(code)


if __name__ == "__main__":  # the engine spawns processes: keep the guard
    main()
