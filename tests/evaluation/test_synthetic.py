"""Synthetic-cohort checks rank good, corrupted, copied and independent cohorts the right way.

Real data stand in for synthetic: another real split is what a perfect generator would produce,
a copy of train is the worst privacy case, a cohort simulated with another seed is a private
one, and corruptions (codes shuffled, one code everywhere, labels scrambled) must score worse.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.simulator import SimulatorConfig, simulate
from nightingale.evaluation.synthetic import (
    SyntheticEvalConfig,
    evaluate_synthetic,
    fidelity_report,
    fit_top_codes,
    load_events,
    patient_summary,
    plot_synthetic,
    privacy_report,
    utility_report,
)
from nightingale.evaluation.synthetic.attribute import attribute_inference
from nightingale.evaluation.synthetic.events import timed_events
from nightingale.evaluation.synthetic.evidence import cohort_evidence
from nightingale.evaluation.synthetic.ngrams import copy_share
from nightingale.evaluation.synthetic.release import ReleaseConfig, release_check
from nightingale.evaluation.synthetic.summary import BASE_COLUMNS, count_column

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """train (800), tuning (100) and held_out (100) of one simulated cohort, plus an independent
    cohort (300, another seed)."""
    root = tmp_path_factory.mktemp("synthetic")
    simulate(SimulatorConfig(subjects=1000, shard_size=1000, seed=3), root / "real", workers=1)
    simulate(SimulatorConfig(subjects=300, shard_size=300, seed=4), root / "other", workers=1)
    out = {s: load_events(root / "real", s) for s in S.SPLITS}
    out["independent"] = load_events(root / "other")
    out["root"] = root / "real"
    return out


def _json_ok(report: dict) -> None:
    json.dumps(report, allow_nan=False)  # plain floats, no NaN/inf
    for v in report.values():
        assert v is None or type(v) in (int, float, bool, str, list), v


def _shuffle_codes(events: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Clinical codes renamed by a random permutation of the vocabulary (static rows and births
    kept): every marginal is someone else's."""
    clinical = timed_events(events)[S.CODE].unique().sort().to_list()
    perm = np.random.default_rng(seed).permutation(len(clinical))
    mapping = {c: clinical[k] for c, k in zip(clinical, perm)}
    return events.with_columns(pl.col(S.CODE).replace(mapping))


def _one_code(events: pl.DataFrame) -> pl.DataFrame:
    clinical = pl.col(S.TIME).is_not_null() & (pl.col(S.CODE) != S.BIRTH_CODE)
    return events.with_columns(
        pl.when(clinical).then(pl.lit("SNOMED//185345009")).otherwise(pl.col(S.CODE)).alias(S.CODE)
    )


# --- summary and loading --------------------------------------------------------------------------
def test_summary_shares_columns_and_counts_right(cohort):
    train, other = cohort[S.TRAIN], cohort["independent"]
    top = fit_top_codes(train, 10)
    assert len(top) == 10 and S.DEATH_CODE not in top and S.BIRTH_CODE not in top
    a, b = patient_summary(train, top), patient_summary(other, top)
    assert a.columns == b.columns == [S.SUBJECT_ID, *BASE_COLUMNS, *map(count_column, top)]
    assert a.height == train[S.SUBJECT_ID].n_unique() and a[S.SUBJECT_ID].is_unique().all()
    assert set(a["sex"].unique()) <= {"F", "M"}
    clinical = timed_events(train)
    n = clinical.group_by(S.SUBJECT_ID).len()
    joined = a.join(n, on=S.SUBJECT_ID, how="left").with_columns(pl.col("len").fill_null(0))
    assert (joined["n_events"] == joined["len"]).all()
    dead = set(train.filter(pl.col(S.CODE) == S.DEATH_CODE)[S.SUBJECT_ID].to_list())
    assert set(a.filter("died")[S.SUBJECT_ID].to_list()) == dead
    first = top[0]
    expect = clinical.filter(pl.col(S.CODE) == first).height
    assert a[count_column(first)].sum() == expect
    assert (a["age_first"].drop_nulls() >= 0).all() and (a["follow_up_years"] >= 0).all()


def test_load_events_reads_splits_and_rejects_split_of_a_frame(cohort):
    held = cohort[S.HELD_OUT]
    assert held[S.SUBJECT_ID].n_unique() == 100
    assert list(held.columns) == [S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE]
    with pytest.raises(ValueError, match="split"):
        load_events(held, split=S.TRAIN)
    with pytest.raises(ValueError, match="missing"):
        load_events(held.drop(S.CODE))


# --- fidelity -------------------------------------------------------------------------------------
def test_fidelity_real_split_beats_corrupted_cohorts(cohort):
    train, real = cohort[S.TRAIN], cohort[S.TUNING]
    good = fidelity_report(real, train, seed=0)
    shuffled = fidelity_report(_shuffle_codes(real, seed=1), train, quality=False)
    single = fidelity_report(_one_code(real), train, seed=0)
    for r in (good, shuffled, single):
        _json_ok(r)
    assert good["prevalence/pearson"] > 0.9 and good["prevalence/spearman"] > 0.8
    assert good["cooccurrence/pearson"] > 0.9
    for bad in (shuffled, single):
        assert bad["prevalence/pearson"] < good["prevalence/pearson"] - 0.3
        assert bad["cooccurrence/pearson"] is None or (
            bad["cooccurrence/pearson"] < good["cooccurrence/pearson"] - 0.3
        )
        assert bad["prevalence/mean_abs_diff"] > 2 * good["prevalence/mean_abs_diff"]
    assert 0.0 <= single["quality/score"] < good["quality/score"] - 0.05
    assert good["quality/score"] > 0.8
    assert good["events_per_subject/ks"] < 0.2 and good["visit_gap_days/ks"] < 0.1
    assert abs(good["age_at_event_years/mean_synth"] - good["age_at_event_years/mean_real"]) < 5


def test_fidelity_of_a_copy_is_perfect(cohort):
    train = cohort[S.TRAIN]
    r = fidelity_report(train, train, quality=False)
    assert r["prevalence/pearson"] == pytest.approx(1.0)
    assert r["events_per_subject/ks"] == 0.0 and r["visit_gap_days/wasserstein"] == 0.0
    assert r["codes/synth_only"] == r["codes/real_only"] == 0


# --- privacy --------------------------------------------------------------------------------------
def test_privacy_flags_a_copy_of_train_and_passes_an_independent_cohort(cohort):
    train, held = cohort[S.TRAIN], cohort[S.HELD_OUT]
    copy = privacy_report(train, train, held, seed=0)
    indep = privacy_report(cohort["independent"], train, held, seed=0)
    _json_ok(copy)
    _json_ok(indep)
    assert copy["mia/auc"] > 0.95
    # every record of a copy is matched exactly, against the whole training set
    assert copy["dcr/exact_match_share"] == 1.0 and copy["dcr/synth_median"] == 0.0
    assert copy["dcr/share_below_held_out_p05"] > 0.9
    assert copy["ngram/copy_share_synth"] > 0.99
    assert 0.35 < indep["mia/auc"] < 0.65
    assert indep["dcr/exact_match_share"] == 0.0
    assert 0.6 < indep["dcr/median_ratio"] < 1.7  # medians of ~100 bimodal distances are noisy
    assert indep["dcr/share_below_held_out_p05"] < 0.2
    assert indep["ngram/copy_share_synth"] < 0.5
    # held-out real timelines are the reference: an independent cohort shares no more than they do
    assert indep["ngram/copy_share_synth"] < copy["ngram/copy_share_synth"] - 0.5
    assert abs(indep["ngram/copy_share_synth"] - indep["ngram/copy_share_held_out"]) < 0.2
    assert indep["ngram/eligible_synth"] > 100


def test_privacy_compares_with_every_training_record_when_cohorts_are_subsampled(cohort):
    """Subsampling the cohorts must not subsample the reference: a copied record is found
    whichever synthetic records are drawn."""
    train, held = cohort[S.TRAIN], cohort[S.HELD_OUT]
    copy = privacy_report(train.filter(pl.col(S.SUBJECT_ID).is_in(
        train[S.SUBJECT_ID].unique().sort().head(300).implode())), train, held, max_subjects=120, seed=5)
    assert copy["n_synth"] == 120 and copy["n_train"] == 800 and copy["n_members"] == 120
    assert copy["dcr/exact_match_share"] == 1.0
    assert copy["dcr/share_below_held_out_p05"] == 1.0


def _timelines(rows: dict[int, list[str]], static: bool = True) -> pl.DataFrame:
    out = []
    for sid, codes in rows.items():
        if static:
            out.append((sid, None, "SEX//F"))
        out += [
            (sid, dt.datetime(2020, 1, 1) + dt.timedelta(days=k), c) for k, c in enumerate(codes)
        ]
    return pl.DataFrame(
        out,
        schema={S.SUBJECT_ID: pl.Int64, S.TIME: pl.Datetime("us"), S.CODE: pl.String},
        orient="row",
    )


def test_ngram_copying_is_exact_and_never_spans_subjects():
    ref = _timelines({1: ["A", "B", "C", "D"], 2: ["E", "F"]})
    query = _timelines(
        {10: ["X", "B", "C", "D"], 11: ["D", "E", "F"], 12: ["C", "D", "E"], 13: ["A"]}
    )
    r = copy_share(query, ref, 3)
    # 10 holds "B C D"; 11 holds "D E F" which only exists across subjects 1|2; 12 likewise;
    # 13 has fewer than 3 events and is not eligible.
    assert r == {"share": pytest.approx(1 / 3), "eligible": 3}
    assert copy_share(query, ref, 2)["share"] == pytest.approx(1.0)  # "C D", "E F", "C D"
    assert copy_share(query, ref, 5) == {"share": None, "eligible": 0}
    with pytest.raises(ValueError, match="length"):
        copy_share(query, ref, 0)


# --- utility --------------------------------------------------------------------------------------
def _scramble_outcome(events: pl.DataFrame, seed: int) -> pl.DataFrame:
    """The same patients with deaths moved to random subjects, one day after their last event."""
    body = events.filter(pl.col(S.CODE) != S.DEATH_CODE)
    n_dead = events.filter(pl.col(S.CODE) == S.DEATH_CODE)[S.SUBJECT_ID].n_unique()
    last = timed_events(body).group_by(S.SUBJECT_ID).agg(pl.col(S.TIME).max()).sort(S.SUBJECT_ID)
    chosen = last.sample(n_dead, seed=seed)
    deaths = chosen.select(
        S.SUBJECT_ID,
        (pl.col(S.TIME) + pl.duration(days=1)).alias(S.TIME),
        pl.lit(S.DEATH_CODE).alias(S.CODE),
        pl.lit(None, dtype=pl.Float32).alias(S.NUMERIC_VALUE),
    )
    return pl.concat([body, deaths]).sort(
        S.SUBJECT_ID, S.TIME, nulls_last=False, maintain_order=True
    )


def test_utility_tstr_matches_trtr_for_a_copy_and_is_chance_for_scrambled_labels(cohort):
    train = cohort[S.TRAIN]
    held = pl.concat([cohort[S.HELD_OUT], cohort[S.TUNING]])
    copy = utility_report(train, train, held, seed=0)
    _json_ok(copy)
    assert copy["utility/auc_trtr"] > 0.75
    assert copy["utility/auc_tstr"] == pytest.approx(copy["utility/auc_trtr"])
    assert copy["utility/ratio"] == pytest.approx(1.0)
    # A model fitted to random labels is a random direction, whose held-out AUROC scatters
    # around 0.5 (sd ~0.1 here, as held-out deaths are very predictable): average three draws.
    scrambled = [
        utility_report(_scramble_outcome(train, seed=k), train, held, seed=0) for k in range(3)
    ]
    aucs = [r["utility/auc_tstr"] for r in scrambled]
    assert abs(np.mean(aucs) - 0.5) < 0.1, aucs
    assert max(aucs) < copy["utility/auc_trtr"] - 0.25, aucs
    assert scrambled[0]["utility/prevalence_synth"] == pytest.approx(
        copy["utility/prevalence_train"]
    )
    # no outcome in the synthetic cohort: no model, no AUROC
    none = utility_report(train.filter(pl.col(S.CODE) != S.DEATH_CODE), train, held)
    assert none["utility/auc_tstr"] is None and none["utility/ratio"] is None


# --- report and figures ---------------------------------------------------------------------------
def test_evaluate_synthetic_and_plots(cohort, tmp_path):
    cfg = SyntheticEvalConfig(quality=False, top_codes=20)
    report = evaluate_synthetic(cohort[S.TUNING], cohort[S.TRAIN], cohort[S.HELD_OUT], cfg)
    assert set(report) == {
        "fidelity",
        "fidelity_reference",
        "privacy",
        "utility",
        "seconds",
        "config",
    }
    for key in ("fidelity", "fidelity_reference", "privacy", "utility"):
        _json_ok(report[key])
    json.dumps(report, allow_nan=False)
    assert report["fidelity"]["prevalence/pearson"] > 0.9
    assert report["config"]["ngram_length"] == cfg.ngram_length
    # a MEDS dataset root works as input too
    from_root = evaluate_synthetic(
        cohort["root"],
        cohort["root"],
        cohort["independent"],
        SyntheticEvalConfig(quality=False, reference=False),
    )
    assert from_root["privacy"]["mia/auc"] > 0.9 and "fidelity_reference" not in from_root
    paths = plot_synthetic(
        cohort[S.TUNING], cohort[S.TRAIN], cohort[S.HELD_OUT], tmp_path / "fig", cfg
    )
    assert set(paths) == {"prevalence", "events_per_subject", "dcr"}
    for p in paths.values():
        assert p.parent == tmp_path / "fig" and p.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(f.name for f in (tmp_path / "fig").iterdir()) == sorted(
        f"{k}.png" for k in paths
    )  # no temporary files left behind


@pytest.mark.parametrize(
    "field,value",
    [("top_codes", -1), ("ngram_length", 0), ("max_subjects", 5), ("outcome_codes", ())],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticEvalConfig(**{field: value})


def test_attribute_inference_learns_training_patients_from_a_copy_only(cohort):
    train, held = cohort[S.TRAIN], cohort[S.HELD_OUT]
    copy = attribute_inference(train, train, held, seed=0)
    indep = attribute_inference(cohort["independent"], train, held, seed=0)
    _json_ok(copy)
    # a copy hands the attacker each member's own record: every sensitive code found
    assert copy["attribute/recall_members"] == 1.0 and copy["attribute/advantage"] > 0.3
    assert copy["attribute/n_members"] > 500 and copy["attribute/sensitive_codes"] == 20
    # an independent cohort: members are guessed no better than patients it never saw
    assert abs(indep["attribute/advantage"]) < 3 * indep["attribute/advantage_se"] + 0.02


def test_the_release_check_refuses_copies_and_releases_an_independent_cohort(cohort):
    train, held = cohort[S.TRAIN], cohort[S.HELD_OUT]

    def privacy(synth):
        p = privacy_report(synth, train, held, seed=0)
        return {**p, **attribute_inference(synth, train, held, seed=0)}

    cfg = ReleaseConfig()
    copy = release_check(privacy(train.filter(pl.col(S.SUBJECT_ID) < pl.col(S.SUBJECT_ID).max() // 3)), cfg)
    indep = release_check(privacy(cohort["independent"]), cfg)
    assert not copy["released"]
    failed = {c["check"] for c in copy["checks"] if not c["passed"]}
    assert {"exact_copies", "copied_runs", "attribute_inference"} <= failed
    assert any(r.startswith("exact_copies: 1.0 is over the limit 0.0") for r in copy["reasons"])
    assert indep["released"] and indep["reasons"] == [], indep
    # nothing to check against: nothing is released
    none = release_check(None, cfg)
    assert not none["released"] and "serve.cohort_reference" in none["reasons"][0]
    with pytest.raises(ValueError, match=r"serve.release.mia_tolerance: a number in \[0, 1\]"):
        ReleaseConfig.from_mapping({"mia_tolerance": 2})
    with pytest.raises(ValueError, match="serve.release: unknown"):
        ReleaseConfig.from_mapping({"mia": 0.1})


def test_a_cohorts_evidence_is_written_beside_it_with_its_verdict(cohort, tmp_path):
    res = cohort_evidence(cohort["root"].parent / "other", cohort["root"], tmp_path / "evidence",
                          release=ReleaseConfig())
    assert res["release"]["released"] and res["headline"]["utility/auc_trtr"] > 0.6
    saved = json.loads((tmp_path / "evidence" / "evidence.json").read_text())
    assert saved["headline"] == res["headline"] and saved["patients"] == 300
    assert "attribute/advantage" in saved["evidence"]["privacy"]
    md = (tmp_path / "evidence" / "evidence.md").read_text()
    assert "Release check: **released**" in md and "| utility/ratio |" in md
    assert {p.name for p in (tmp_path / "evidence" / "plots").iterdir()} == {
        "prevalence.png", "events_per_subject.png", "dcr.png"}


def test_task_utility_of_data_from_the_same_simulator_matches_real_training(cohort):
    """A cohort simulated independently is as good as real training data for mortality_1y (TSTR
    ~ TRTR); with its deaths moved to random patients it teaches nothing (TSTR ~ 0.5)."""
    from nightingale.data.meds_io import MEDSDataset, MEDSWriter
    from nightingale.evaluation.synthetic.task_utility import task_utility
    from nightingale.evaluation.tasks import load_task

    task = load_task(Path(__file__).resolve().parents[2] / "configs/eval/tasks/simulator/mortality_1y.yaml")
    root = cohort["root"].parent
    # held-out deaths within a year of a random time are rare (~1.3%): a reference large enough to score
    simulate(SimulatorConfig(subjects=6000, shard_size=6000, seed=5), root / "big", workers=1)
    simulate(SimulatorConfig(subjects=2000, shard_size=2000, seed=6), root / "twin", workers=1)
    reference, twin = MEDSDataset(root / "big"), MEDSDataset(root / "twin")
    same = task_utility(twin, reference, task)
    assert same["labels_synth"] > 5000 and same["positives_synth"] > 50 and same["positives_held_out"] > 20
    assert same["auc_trtr"] > 0.75 and same["ratio"] > 0.9, same
    scrambled = _scramble_outcome(twin.scan().select(S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE).collect(), seed=1)
    with MEDSWriter(root / "scrambled") as w:
        w.write_shard("train/0", scrambled)
        w.write_splits(pl.DataFrame({S.SUBJECT_ID: scrambled[S.SUBJECT_ID].unique(), S.SPLIT: S.TRAIN}))
    noise = task_utility(MEDSDataset(root / "scrambled"), reference, task)
    assert noise["auc_tstr"] < same["auc_tstr"] - 0.1, (noise, same)
