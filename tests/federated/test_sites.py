"""Simulated sites differ as their spec says: age mix, deprivation, coding habits, disjoint ids."""

from __future__ import annotations

import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.simulator.sites import site_configs


def _events(path) -> pl.DataFrame:
    return pl.scan_parquet(str(path / "data" / "*" / "*.parquet")).collect()


def test_sites_differ_as_specified(site_data):
    ev = {name: _events(p) for name, p in site_data.items()}
    ids = {name: set(e[S.SUBJECT_ID].unique()) for name, e in ev.items()}
    assert not (ids["north"] & ids["city"]) and not (ids["city"] & ids["shire"])

    def mean_birth_year(e):
        return e.filter(pl.col(S.CODE) == S.BIRTH_CODE)[S.TIME].dt.year().mean()

    assert mean_birth_year(ev["north"]) < mean_birth_year(ev["shire"]) < mean_birth_year(ev["city"])

    def deprived_share(e):
        imd = e.filter(pl.col(S.CODE).str.starts_with("IMD//"))[S.CODE]
        return float((imd.is_in(["IMD//Q1", "IMD//Q2"])).mean())

    assert deprived_share(ev["north"]) > 0.6 > 0.2 > deprived_share(ev["shire"])
    icd = {name: e.filter(pl.col(S.CODE).str.starts_with("ICD10//"))[S.CODE].unique() for name, e in ev.items()}
    assert not icd["city"].str.contains(r"\.").any()
    assert icd["north"].str.contains(r"\.").any()


def test_site_spec_errors_name_the_site():
    with pytest.raises(ValueError, match=r"sites\.b: SimulatorConfig\.age_tilt: within \[-5, 5\]"):
        site_configs({"a": {"subjects": 10}, "b": {"age_tilt": 9}})
    with pytest.raises(ValueError, match=r"sites\.a\.id_offset: set by simulate_sites"):
        site_configs({"a": {"id_offset": 3}})
    assert [c.id_offset for c in site_configs({"a": {"subjects": 10}, "b": {"subjects": 5}}).values()] == [0, 10]


def test_the_oracle_reads_a_sites_offset_ids(site_data):
    import numpy as np

    from nightingale.data.simulator.oracle import oracle_risk

    ids = sorted(_events(site_data["city"])[S.SUBJECT_ID].unique().to_list())[:5]
    assert ids[0] > 150  # city's ids follow north's
    risk = oracle_risk(site_data["city"], ids, ["2015-06-01"] * 5, "death", 365, n_samples=50)
    assert np.isfinite(risk).any()
    with pytest.raises(ValueError, match="raw simulator ids run from 151 to 300"):
        oracle_risk(site_data["city"], [1], ["2015-06-01"], "death", 365)
