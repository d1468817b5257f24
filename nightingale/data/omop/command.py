"""The `nightingale import-omop` verb: an OMOP CDM database -> a MEDS dataset.

    nightingale import-omop --cdm ../shared/data/eunomia-gibleed-omop --out runs/eunomia-meds
    NIGHTINGALE_PSEUDONYM_KEY=... nightingale import-omop --cdm cdm.duckdb --out meds \\
        --pseudonymise --opt-out optout.txt

Defaults mirror `configs/data/omop.yaml` and `OMOPImportConfig`.
"""

from __future__ import annotations

import argparse
import logging

from nightingale.data.omop.convert import CDM_VERSIONS, OMOPImportConfig, convert_omop
from nightingale.data.privacy import DEFAULT_KEY_ENV, PrivacyPolicy

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-omop",
        help="convert an OMOP CDM 5.3/5.4 database to a MEDS dataset",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "--cdm", required=True, help="CDM folder (CSV/CSV.gz/parquet tables) or DuckDB file"
    )
    p.add_argument("--out", required=True, help="output MEDS dataset folder (must not exist)")
    p.add_argument("--cdm-version", default="auto", choices=CDM_VERSIONS)
    p.add_argument("--shard-size", type=int, default=10_000, help="subjects per shard")
    p.add_argument("--seed", type=int, default=0, help="seed of the split hash")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--pseudonymise", action="store_true", help="replace person ids by keyed HMAC")
    p.add_argument("--key-file", help=f"pseudonymisation key file (else ${DEFAULT_KEY_ENV})")
    p.add_argument("--opt-out", help="file of OMOP person_ids to exclude, one a line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        policy = PrivacyPolicy.from_options(
            pseudonymise=args.pseudonymise, key_file=args.key_file, opt_out_file=args.opt_out
        )
        cfg = OMOPImportConfig(
            cdm=args.cdm,
            out=args.out,
            cdm_version=args.cdm_version,
            shard_size=args.shard_size,
            seed=args.seed,
            overwrite=args.overwrite,
        )
        meta = convert_omop(cfg, policy)
    except (ValueError, FileExistsError) as e:  # OMOPInputError and PrivacyConfigError included
        log.error("import-omop failed: %s", e)
        return 2
    log.info("wrote %s: %d subjects, %d events", args.out, meta["subjects"], meta["events"])
    return 0
