"""`nightingale simulate`: write a simulated UK cohort as a MEDS dataset."""

from __future__ import annotations

import argparse
import logging

from nightingale.data.privacy import PrivacyConfigError, PrivacyPolicy
from nightingale.data.simulator.config import SimulatorConfig
from nightingale.data.simulator.simulate import simulate

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="simulate a UK primary/secondary care cohort as MEDS",
                              description=__doc__)
    d = SimulatorConfig()
    p.add_argument("--subjects", type=int, default=d.subjects, help="number of simulated people")
    p.add_argument("--seed", type=int, default=d.seed, help="master seed (same seed, same bytes)")
    p.add_argument("--out", required=True, help="output dataset folder (must not exist unless --overwrite)")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="subjects per shard")
    p.add_argument("--start-date", default=d.start_date.isoformat(), help="observation window start")
    p.add_argument("--end-date", default=d.end_date.isoformat(), help="observation window end (inclusive)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--pseudonymise", action="store_true", help="replace subject ids by HMAC-SHA256 pseudonyms")
    p.add_argument("--key-file", help="pseudonymisation key file (else $NIGHTINGALE_PSEUDONYM_KEY)")
    p.add_argument("--opt-out", help="file of raw subject ids to leave out, one a line")
    p.set_defaults(func=run)

    q = subparsers.add_parser("simulate-sites", help="simulate several differing sites, one MEDS folder each",
                              description="Simulate the sites of a spec file (configs/federated/sites/*.yaml) "
                                          "into OUT/<site>/, with disjoint subject ids.")
    q.add_argument("--sites", required=True, help="YAML spec: site name -> SimulatorConfig fields")
    q.add_argument("--out", required=True, help="output folder (one dataset per site inside)")
    q.add_argument("--subjects", type=int, help="override every site's number of subjects")
    q.add_argument("--workers", type=int, default=2, help="worker processes")
    q.add_argument("--overwrite", action="store_true", help="replace existing site folders")
    q.set_defaults(func=run_sites)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = SimulatorConfig(subjects=args.subjects, seed=args.seed, shard_size=args.shard_size,
                              start_date=args.start_date, end_date=args.end_date)
        policy = PrivacyPolicy.from_options(pseudonymise=args.pseudonymise, key_file=args.key_file,
                                            opt_out_file=args.opt_out)
        from tqdm import tqdm

        with tqdm(total=cfg.n_shards, unit="shard", desc="simulate") as bar:
            summary = simulate(cfg, args.out, workers=args.workers, overwrite=args.overwrite,
                               policy=policy, on_shard=lambda res: bar.update(1))
    except (ValueError, FileExistsError, PrivacyConfigError) as e:
        log.error("simulate: %s", e)
        return 2
    log.info("wrote %s: %d subjects, %d events (%.1f per subject) in %d shards", summary.out,
             summary.subjects, summary.events, summary.events_per_subject, summary.shards)
    return 0


def run_sites(args: argparse.Namespace) -> int:
    import yaml

    from nightingale.data.simulator.sites import simulate_sites

    try:
        with open(args.sites) as f:
            spec = yaml.safe_load(f)
        if not isinstance(spec, dict):
            raise ValueError(f"{args.sites}: a mapping of site name -> simulator fields expected")
        done = simulate_sites(spec, args.out, subjects=args.subjects, workers=args.workers,
                              overwrite=args.overwrite)
    except (OSError, ValueError, FileExistsError, yaml.YAMLError) as e:
        log.error("simulate-sites: %s", e)
        return 2
    for name, s in done.items():
        log.info("site %s: %s, %d subjects, %d events", name, s.out, s.subjects, s.events)
    return 0
