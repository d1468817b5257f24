"""The ingest stage composes from configs/ and dispatches to the right importer, validating the result."""

from pathlib import Path

import polars as pl
import pytest
from hydra import compose, initialize_config_dir

from nightingale import schema as S
from nightingale.data.ingest import ingest_to_meds
from nightingale.data.meds_io import MEDSDataset
from nightingale.data.validate import MEDSValidationError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="ingest", overrides=overrides)


def test_every_data_config_group_composes():
    for source in ("simulator", "omop", "meds"):
        cfg = _compose([f"data={source}"])
        assert cfg.data.source == source


def test_hydra_stage_imports_omop(eunomia_omop, tmp_path):
    from data_prep.ingest import ingest

    out = tmp_path / "meds"
    cfg = _compose(["data=omop", f"data.cdm={eunomia_omop}", f"out={out}"])
    summary = ingest(cfg)
    assert summary.n_subjects == 2694
    assert MEDSDataset(out).splits().height == 2694


def test_meds_source_is_validated_in_place(mimic_demo):
    assert ingest_to_meds({"source": "meds", "path": str(mimic_demo)}) == mimic_demo


def test_meds_source_rejects_invalid_dataset(mimic_demo, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(mimic_demo, bad)
    shard = bad / "data" / "train" / "0.parquet"
    pl.read_parquet(shard).with_columns(pl.col(S.SUBJECT_ID).cast(pl.Float64)).write_parquet(shard)
    with pytest.raises(MEDSValidationError, match="subject_id"):
        ingest_to_meds({"source": "meds", "path": str(bad)})


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="data.source"):
        ingest_to_meds({"source": "csv"}, tmp_path / "x")
    with pytest.raises(ValueError, match="data.path"):
        ingest_to_meds({"source": "meds"})
    with pytest.raises(ValueError, match="privacy"):
        ingest_to_meds(
            {"source": "meds", "path": str(tmp_path)},
            privacy={"opt_out_file": str(_write(tmp_path / "o.txt", "1\n"))},
        )
    assert not (tmp_path / "x").exists()


def _write(path, text):
    path.write_text(text)
    return path


def test_hydra_stage_simulates_with_privacy(tmp_path):
    from data_prep.ingest import ingest

    key = _write(tmp_path / "secret.key", "k" * 32)
    opt_out = _write(tmp_path / "optout.txt", "1\n2\n")
    out = tmp_path / "meds"
    cfg = _compose(
        [
            "data.subjects=300",
            f"out={out}",
            "workers=1",
            "privacy.pseudonymise=true",
            f"privacy.key_file={key}",
            f"privacy.opt_out_file={opt_out}",
        ]
    )
    summary = ingest(cfg)
    assert summary.n_subjects == 298  # two opted out
    ids = MEDSDataset(out).splits()[S.SUBJECT_ID]
    assert ids.min() > 300  # pseudonyms, not the simulator's 1..300
    meta = MEDSDataset(out).metadata()
    assert meta["privacy"]["pseudonymised"] and meta["privacy"]["opt_out_removed_subjects"] == 2
