"""The `nightingale import-omop` verb: an OMOP CDM database -> a MEDS dataset, and
`nightingale export-omop`: a MEDS dataset of OMOP-derived codes (e.g. a synthetic cohort) -> OMOP.

    nightingale import-omop --cdm ../shared/data/eunomia-gibleed-omop --out runs/eunomia-meds
    NIGHTINGALE_PSEUDONYM_KEY=... nightingale import-omop --cdm cdm.duckdb --out meds \\
        --pseudonymise --opt-out optout.txt
    nightingale export-omop --meds runs/cohort --codes runs/eunomia-meds/metadata/codes.parquet --out runs/cohort-omop

Defaults mirror `configs/data/omop.yaml` and `OMOPImportConfig`.
"""

from __future__ import annotations

import argparse
import logging

from nightingale.data.omop.convert import CDM_VERSIONS, OMOPImportConfig, convert_omop
from nightingale.data.omop.export import export_omop
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
    e = subparsers.add_parser("export-omop", help="write a MEDS dataset of OMOP-derived codes as OMOP CDM 5.4 tables",
                              description=export_omop.__doc__.splitlines()[0])
    e.add_argument("--meds", required=True, help="the MEDS dataset (e.g. a synthetic cohort)")
    e.add_argument("--out", required=True, help="output folder of CSV tables (must not exist)")
    e.add_argument("--codes", help="codes.parquet of the data the codes came from (import-omop's); "
                                   "default: the dataset's own")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.set_defaults(func=run_export)


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


def run_export(args: argparse.Namespace) -> int:
    import polars as pl

    try:
        codes = None
        if args.codes:
            try:
                codes = pl.read_parquet(args.codes)
            except (OSError, pl.exceptions.PolarsError) as e:
                raise ValueError(f"--codes {args.codes}: not a readable codes.parquet ({type(e).__name__})") from None
        counts = export_omop(args.meds, args.out, codes, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        log.error("export-omop failed: %s", e)
        return 2
    log.info("wrote %s: %s", args.out, counts)
    return 0
