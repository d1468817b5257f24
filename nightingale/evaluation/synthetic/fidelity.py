"""How closely does a synthetic cohort reproduce the real one's statistics?

Marginals of codes (prevalence: the share of subjects with a code), their pairwise co-occurrence,
the volume of care (events per subject), its rhythm (days between consecutive visits), the ages
at which care happens, and, for the per-patient summary table, the SDMetrics quality score (the
mean of its "Column Shapes" and "Column Pair Trends" properties, each in [0, 1]).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from nightingale import schema as S
from nightingale.evaluation.synthetic.events import (
    US_PER_DAY,
    EventsLike,
    code_prevalence,
    demographics,
    load_events,
    presence_matrix,
    timed_events,
    years_between,
)
from nightingale.evaluation.synthetic.quiet import quiet_sdv
from nightingale.evaluation.synthetic.summary import fit_top_codes, patient_summary


def _corr(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    """(Pearson, Spearman) of two vectors; None when either is constant or too short."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None, None
    return float(np.corrcoef(a, b)[0, 1]), float(stats.spearmanr(a, b).statistic)


def prevalence_table(synth: pl.DataFrame, real: pl.DataFrame) -> pl.DataFrame:
    """code, real, synth: each code's prevalence in both cohorts (0 where a cohort lacks it)."""
    real_p = code_prevalence(real).rename({"prevalence": "real"})
    synth_p = code_prevalence(synth).rename({"prevalence": "synth"})
    return (
        real_p.join(synth_p, on=S.CODE, how="full", coalesce=True)
        .with_columns(pl.col("real", "synth").fill_null(0.0))
        .sort(S.CODE)
    )


def cooccurrence(events: pl.DataFrame, codes: list[str]) -> np.ndarray:
    """Share of subjects holding both codes, for every pair i < j of `codes` (upper triangle)."""
    x = presence_matrix(events, codes).astype(np.float64)
    pair = x.T @ x / max(len(x), 1)
    return pair[np.triu_indices(len(codes), k=1)]


def events_per_subject(events: pl.DataFrame) -> np.ndarray:
    """Clinical events per subject (0 for subjects with only static rows or a birth)."""
    counts = (
        events.select(S.SUBJECT_ID)
        .unique(maintain_order=True)
        .join(timed_events(events).group_by(S.SUBJECT_ID).len(), on=S.SUBJECT_ID, how="left")
    )
    return counts["len"].fill_null(0).to_numpy().astype(np.float64)


def visit_gaps_days(events: pl.DataFrame) -> np.ndarray:
    """Days between consecutive distinct event times of each subject. Events sharing a time (one
    visit's diagnoses, labs and drugs) count once, so the gaps measure the rhythm of care rather
    than how many codes a visit records (which events-per-subject already covers)."""
    times = timed_events(events).select(S.SUBJECT_ID, S.TIME).unique(maintain_order=True)
    gaps = times.select(
        (pl.col(S.TIME).diff().over(S.SUBJECT_ID).dt.total_microseconds() / US_PER_DAY).alias("g")
    )["g"].drop_nulls()
    return gaps.to_numpy().astype(np.float64)


def ages_at_events(events: pl.DataFrame) -> np.ndarray:
    """Age in years at every clinical event of subjects with a birth."""
    birth = demographics(events).select(S.SUBJECT_ID, "birth").drop_nulls()
    ages = (
        timed_events(events)
        .join(birth, on=S.SUBJECT_ID)
        .select(years_between(pl.col("birth"), pl.col(S.TIME)).alias("age"))["age"]
    )
    return ages.to_numpy().astype(np.float64)


def _compare(prefix: str, synth: np.ndarray, real: np.ndarray) -> dict[str, float | None]:
    """Means and medians of two samples (None for an empty one), the two-sample KS statistic and
    the Wasserstein-1 distance (in the samples' units; None unless both are non-empty)."""
    out: dict[str, float | None] = {}
    for side, x in (("synth", synth), ("real", real)):
        out[f"{prefix}/mean_{side}"] = float(x.mean()) if len(x) else None
        out[f"{prefix}/median_{side}"] = float(np.median(x)) if len(x) else None
    both = bool(len(synth) and len(real))
    out[f"{prefix}/ks"] = float(stats.ks_2samp(synth, real).statistic) if both else None
    out[f"{prefix}/wasserstein"] = float(stats.wasserstein_distance(synth, real)) if both else None
    return out


def quality_scores(
    synth_summary: pl.DataFrame, real_summary: pl.DataFrame, *, max_rows: int = 2000, seed: int = 0
) -> dict[str, float]:
    """SDMetrics QualityReport on two per-patient summary tables (subject_id dropped), each
    subsampled to `max_rows` rows with `seed` (Column Pair Trends grows with rows x columns**2).
    Metadata (sdtypes) is detected from the real table. Progress output is silenced."""
    from sdmetrics.reports import QualityReport
    from sdv.metadata import Metadata

    def prep(df: pl.DataFrame, s: int) -> pl.DataFrame:
        df = df.drop(S.SUBJECT_ID)
        return df.sample(max_rows, seed=s) if df.height > max_rows else df

    real_pd = prep(real_summary, seed).to_pandas()
    synth_pd = prep(synth_summary, seed + 1).to_pandas()
    with quiet_sdv():
        metadata = Metadata.detect_from_dataframes({"summary": real_pd})
        report = QualityReport()
        report.generate(
            {"summary": real_pd}, {"summary": synth_pd}, metadata.to_dict(), verbose=False
        )
    props = report.get_properties().set_index("Property")["Score"]
    return {
        "quality/score": float(report.get_score()),
        "quality/column_shapes": float(props["Column Shapes"]),
        "quality/column_pair_trends": float(props["Column Pair Trends"]),
    }


def fidelity_report(
    synth: EventsLike,
    real: EventsLike,
    *,
    top_codes: int | list[str] = 20,
    cooccurrence_codes: int = 30,
    quality: bool = True,
    quality_max_rows: int = 2000,
    seed: int = 0,
) -> dict[str, float | int | None]:
    """Statistics of `synth` against `real` (plain floats; None where undefined).

    `top_codes`: the summary table's code-count columns for the quality score (a list, or how
    many to fit on `real`); `cooccurrence_codes`: pairs among this many most prevalent real codes
    (`MEDS_BIRTH` excluded); `quality=False` skips SDMetrics (the slow part, seconds).

    Keys: prevalence/{pearson,spearman,mean_abs_diff} over the union of both cohorts' codes;
    codes/{real,synth,synth_only,real_only} (distinct code counts); cooccurrence/{pearson,
    mean_abs_diff,pairs}; events_per_subject/*, visit_gap_days/*, age_at_event_years/* (mean_*,
    median_*, ks, wasserstein); quality/{score,column_shapes,column_pair_trends}; n_synth, n_real.
    """
    synth, real = load_events(synth), load_events(real)
    out: dict[str, float | int | None] = {}
    prev = prevalence_table(synth, real)
    a, b = prev["synth"].to_numpy(), prev["real"].to_numpy()
    out["prevalence/pearson"], out["prevalence/spearman"] = _corr(a, b)
    out["prevalence/mean_abs_diff"] = float(np.abs(a - b).mean()) if len(a) else None
    out["codes/real"], out["codes/synth"] = int((b > 0).sum()), int((a > 0).sum())
    out["codes/synth_only"] = int(((a > 0) & (b == 0)).sum())
    out["codes/real_only"] = int(((b > 0) & (a == 0)).sum())

    top = (
        prev.filter((pl.col("real") > 0) & (pl.col(S.CODE) != S.BIRTH_CODE))
        .sort(["real", S.CODE], descending=[True, False])[S.CODE]
        .head(cooccurrence_codes)
        .to_list()
    )
    pairs_s, pairs_r = cooccurrence(synth, top), cooccurrence(real, top)
    out["cooccurrence/pearson"] = _corr(pairs_s, pairs_r)[0]
    out["cooccurrence/mean_abs_diff"] = (
        float(np.abs(pairs_s - pairs_r).mean()) if len(top) > 1 else None
    )
    out["cooccurrence/pairs"] = len(pairs_r)

    out.update(_compare("events_per_subject", events_per_subject(synth), events_per_subject(real)))
    out.update(_compare("visit_gap_days", visit_gaps_days(synth), visit_gaps_days(real)))
    out.update(_compare("age_at_event_years", ages_at_events(synth), ages_at_events(real)))

    if quality:
        codes = fit_top_codes(real, top_codes) if isinstance(top_codes, int) else list(top_codes)
        out.update(
            quality_scores(
                patient_summary(synth, codes),
                patient_summary(real, codes),
                max_rows=quality_max_rows,
                seed=seed,
            )
        )
    out["n_synth"] = int(synth[S.SUBJECT_ID].n_unique())
    out["n_real"] = int(real[S.SUBJECT_ID].n_unique())
    return out
