"""One MEDS shard -> the population at risk at the prediction time, its groups and its prompts.

A subject is **at risk** at its prediction time t (a fixed date, or its last event) when it has a
timed event other than birth at or before t and no death at or before t. Subjects of the shard
outside the requested split, without history by t, or dead by t are counted and left out.

Prompts come from the events known at t only: the shard is cut at t and encoded with the model's
own vocabulary (`tokenizer.encode.encode_events`), then laid out by `prompts.corpus_prompt`, the
same rule the evaluation and the API use (static tokens, the age at the first kept token, the
history summary of what the context cannot hold).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.data.codes import match_codes
from nightingale.inference.population.config import AGE_BAND, SEX, PopulationConfig
from nightingale.inference.prompts import Prompt, corpus_prompt
from nightingale.tokenizer.corpus import IndexedTokens
from nightingale.tokenizer.encode import Encoded, encode_events
from nightingale.tokenizer.vocabulary import Vocabulary

US_PER_DAY = 86_400_000_000
US_PER_YEAR = 365.25 * US_PER_DAY
UNKNOWN = "unknown"
SEX_FAMILY = "SEX"


def group_source(group: str) -> tuple[str, str]:
    """("age", "") | ("family", FAMILY) | ("column", name): where a group's values come from.
    A name that is neither built in nor a column of the shards is a static code family."""
    if group == AGE_BAND:
        return "age", ""
    if group == SEX:
        return "family", SEX_FAMILY
    return "family", group


class EncodedCorpus(IndexedTokens):
    """Encoded events in memory, read the way `corpus_prompt` reads a `TokenCorpus`."""

    def __init__(self, enc: Encoded):
        super().__init__(enc.index, enc.tokens, enc.times, enc.static, "(encoded in memory)")


@dataclasses.dataclass
class ShardCohort:
    """The shard's subjects at risk: one row each in `subjects` (subject_id, prediction_time,
    lead_s, one column per group, `observed:<outcome>:<days>` when backtesting), their prompts in
    the same order, and the counts of subjects left out."""

    subjects: pl.DataFrame
    prompts: list[Prompt]
    counts: Counter


def _ages(birth_us: pl.Expr, t_us: pl.Expr, edges: list[int], labels: list[str]) -> pl.Expr:
    years = (t_us - birth_us) / US_PER_YEAR
    out = pl.lit(UNKNOWN)
    for lo, label in zip(edges, labels):  # the last (outermost) test is the highest band's
        out = pl.when(years >= lo).then(pl.lit(label)).otherwise(out)
    return pl.when(birth_us.is_null()).then(pl.lit(UNKNOWN)).otherwise(out)


def _family_values(events: pl.DataFrame, family: str) -> pl.DataFrame:
    """subject_id -> the suffix of its first static code of `family` (FAMILY//value)."""
    prefix = f"{family}{S.CODE_SEPARATOR}"
    return (events.filter(pl.col(S.TIME).is_null() & pl.col(S.CODE).str.starts_with(prefix))
            .group_by(S.SUBJECT_ID, maintain_order=True)
            .agg(pl.col(S.CODE).first().str.slice(len(prefix)).alias(family)))


def observed_column(outcome: str, days: float) -> str:
    return f"observed:{outcome}:{days:g}"


def load_shard_cohort(vocab: Vocabulary, cfg: PopulationConfig, events: pl.DataFrame,
                      split_ids: np.ndarray | None, columns: tuple[str, ...], max_tokens: int) -> ShardCohort:
    """The at-risk subjects of one shard's events (all columns read), their groups and prompts.

    split_ids: subjects of the requested split (None: all); columns: the groups that are extra
    columns of the shards (the rest are static code families or built in); max_tokens: prompt
    room (the context less what generation keeps free)."""
    counts: Counter = Counter()
    if split_ids is not None:
        n_all = events[S.SUBJECT_ID].n_unique()
        events = events.filter(pl.col(S.SUBJECT_ID).is_in(split_ids))
        counts["outside_split"] = n_all - events[S.SUBJECT_ID].n_unique()
    counts["subjects"] = events[S.SUBJECT_ID].n_unique()
    t_us = pl.col(S.TIME).cast(pl.Int64)
    timed = events.filter(pl.col(S.TIME).is_not_null())
    per = timed.group_by(S.SUBJECT_ID).agg(
        t_us.filter(pl.col(S.CODE) == S.BIRTH_CODE).min().alias("_birth"),
        t_us.filter(pl.col(S.CODE) == S.DEATH_CODE).min().alias("_death"),
        t_us.filter(pl.col(S.CODE) != S.BIRTH_CODE).max().alias("_last"),
    )
    fixed = None if cfg.prediction_time is None else int(np.datetime64(cfg.prediction_time, "us").astype(np.int64))
    per = per.with_columns((pl.lit(fixed, pl.Int64) if fixed is not None else pl.col("_last")).alias("_t"))
    first = timed.filter(pl.col(S.CODE) != S.BIRTH_CODE).join(per.select(S.SUBJECT_ID, "_t"), on=S.SUBJECT_ID)
    history = first.filter(t_us <= pl.col("_t")).group_by(S.SUBJECT_ID).agg(t_us.max().alias("_anchor"))
    per = per.join(history, on=S.SUBJECT_ID, how="left")
    dead = per["_death"].is_not_null() & (per["_death"] <= per["_t"]) & per["_anchor"].is_not_null()
    counts["no_history"] = counts["subjects"] - int(per["_anchor"].is_not_null().sum())
    counts["dead_before"] = int(dead.sum())
    at_risk = per.filter(pl.col("_anchor").is_not_null() & ~dead).sort(S.SUBJECT_ID)
    counts["at_risk"] = len(at_risk)

    subjects = at_risk.select(
        S.SUBJECT_ID,
        pl.col("_t").cast(pl.Datetime("us")).alias(S.PREDICTION_TIME),
        ((pl.col("_t") - pl.col("_anchor")) / 1e6).alias("lead_s"),
        pl.col("_t"), pl.col("_birth"),
    )
    for g in cfg.groups:
        if g in columns:
            vals = (events.filter(pl.col(g).is_not_null()).group_by(S.SUBJECT_ID, maintain_order=True)
                    .agg(pl.col(g).first().cast(pl.String)))
            subjects = subjects.join(vals, on=S.SUBJECT_ID, how="left")
        elif group_source(g)[0] == "age":
            subjects = subjects.with_columns(_ages(pl.col("_birth"), pl.col("_t"), list(cfg.age_bands),
                                                   cfg.age_labels()).alias(g))
        else:
            fam = group_source(g)[1]
            subjects = subjects.join(_family_values(events, fam).rename({fam: g}), on=S.SUBJECT_ID, how="left")
        subjects = subjects.with_columns(pl.col(g).fill_null(UNKNOWN))
    if cfg.backtest:
        for name, codes in cfg.outcomes.items():
            hits = timed.filter(match_codes(codes)).select(S.SUBJECT_ID, t_us.alias("_e"))
            for days in cfg.horizons_days:
                end = pl.col("_t") + int(round(days * US_PER_DAY))
                hit = (subjects.select(S.SUBJECT_ID, "_t").join(hits, on=S.SUBJECT_ID, how="left")
                       .group_by(S.SUBJECT_ID).agg(((pl.col("_e") > pl.col("_t")) & (pl.col("_e") <= end)).any()
                                                   .fill_null(False).alias(observed_column(name, days))))
                subjects = subjects.join(hit, on=S.SUBJECT_ID, how="left")
    keep = at_risk.select(S.SUBJECT_ID, "_t")
    known = (events.join(keep, on=S.SUBJECT_ID)
             .filter(pl.col(S.TIME).is_null() | (t_us <= pl.col("_t")))
             .select(S.SUBJECT_ID, S.TIME, S.CODE, pl.col(S.NUMERIC_VALUE).cast(pl.Float32)))
    prompts: list[Prompt] = []
    if len(known):
        corpus = EncodedCorpus(encode_events(vocab, known, vocab.parents))
        prompts = [corpus_prompt(corpus, vocab, int(s), int(t), max_tokens)
                   for s, t in zip(subjects[S.SUBJECT_ID].to_numpy(), subjects["_t"].to_numpy())]
    return ShardCohort(subjects.drop("_t", "_birth"), prompts, counts)


def data_time_range(scan: pl.LazyFrame) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The first and last event times of a dataset (static rows ignored)."""
    row = scan.select(pl.col(S.TIME).min().alias("lo"), pl.col(S.TIME).max().alias("hi")).collect().row(0)
    return row[0], row[1]
