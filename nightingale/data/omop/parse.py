"""Typed columns from OMOP tables read as text (CSV) or typed (parquet, DuckDB), failing loudly.

A value that is present but cannot be read (a date like ``2015-13-45``, an id like ``abc``) is an
error naming the table, the column, the value and its row, never a silent null: a silent null would
drop events or subjects without anyone noticing. Empty strings and nulls are missing values.
"""

from __future__ import annotations

import polars as pl

from nightingale.data.omop.tables import OMOPInputError

# Tried in order; the first that parses wins. Dates become midnight.
DATETIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
    "%Y%m%d",
)
ROW = "__row"  # 0-based row index added before parsing, so errors can name the source row


def _present(raw: pl.Expr) -> pl.Expr:
    return raw.is_not_null() & (raw.cast(pl.String).str.strip_chars() != "")


def _fail_on_bad(
    df: pl.DataFrame, raw: pl.Expr, parsed: pl.Series, where: str, column: str, expected: str
) -> None:
    bad = df.select(ROW, raw.alias("value")).filter(_present(pl.col("value")) & parsed.is_null())
    if bad.height:
        row, value = bad.row(0)
        raise OMOPInputError(
            f"{where}, column {column}: cannot read {value!r} as {expected} "
            f"(row {row + 1}, 1-based, header excluded; {bad.height} bad value(s) in all)"
        )


def with_row_index(df: pl.DataFrame) -> pl.DataFrame:
    return df if ROW in df.columns else df.with_row_index(ROW)


def to_datetime(df: pl.DataFrame, column: str, where: str) -> pl.Series:
    """`column` of `df` as naive timestamp[us] (UTC wall time for zoned input)."""
    col = pl.col(column)
    dtype = df.schema[column]
    if dtype == pl.Null:
        return pl.Series(column, [None] * df.height, dtype=pl.Datetime("us"))
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            col = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return df.select(col.cast(pl.Datetime("us")))[column]
    if dtype == pl.Date:
        return df.select(col.cast(pl.Datetime("us")))[column]
    text = col.cast(pl.String).str.strip_chars()
    parsed = df.select(
        pl.coalesce(
            [text.str.strptime(pl.Datetime("us"), f, strict=False) for f in DATETIME_FORMATS]
        ).alias(column)
    )[column]
    _fail_on_bad(df, col, parsed, where, column, "a date or datetime (YYYY-MM-DD[ HH:MM:SS])")
    return parsed


def to_int(df: pl.DataFrame, column: str, where: str) -> pl.Series:
    """`column` as Int64; integral floats such as ``4180628.0`` (seen in Eunomia) are accepted."""
    dtype = df.schema[column]
    col = pl.col(column)
    if dtype.is_integer():
        return df[column].cast(pl.Int64)
    as_float = col.cast(pl.Float64, strict=False) if dtype == pl.String else col.cast(pl.Float64)
    text = col.cast(pl.String).str.strip_chars()
    parsed = df.select(
        pl.coalesce(
            text.cast(pl.Int64, strict=False),
            pl.when(as_float == as_float.round()).then(as_float.cast(pl.Int64, strict=False)),
        ).alias(column)
    )[column]
    _fail_on_bad(df, col, parsed, where, column, "an integer")
    return parsed


def to_float(df: pl.DataFrame, column: str, where: str) -> pl.Series:
    """`column` as Float64."""
    dtype = df.schema[column]
    if dtype.is_numeric():
        return df[column].cast(pl.Float64)
    col = pl.col(column)
    parsed = df.select(col.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False))[column]
    _fail_on_bad(df, col, parsed, where, column, "a number")
    return parsed


def to_text(df: pl.DataFrame, column: str) -> pl.Series:
    """`column` as stripped text, empty strings as null."""
    text = pl.col(column).cast(pl.String).str.strip_chars()
    return df.select(pl.when(text != "").then(text).alias(column))[column]
