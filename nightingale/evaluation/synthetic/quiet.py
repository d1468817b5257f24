"""Keep SDV, SDMetrics and their libraries quiet while they run.

They warn about column order and dtype casts and log every step at INFO (the detected metadata
as a page of JSON, one line per rounding decision), which floods a log configured at INFO; our
own loggers report sizes and timings instead.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

SDV_LOGGERS = (
    "sdv",
    "rdt",
    "copulas",
    "deepecho",
    "sdmetrics",
    "SingleTableSynthesizer",
    "MultiTableSynthesizer",
    "Metadata",
    "SingleTableMetadata",
)


@contextlib.contextmanager
def quiet_sdv() -> Iterator[None]:
    """Raise SDV's loggers to WARNING and ignore Python warnings inside the block; restored
    afterwards."""
    loggers = [logging.getLogger(name) for name in SDV_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
