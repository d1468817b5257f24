"""Bad input has defined, counted behaviour: unknown codes, subjects without events or birth,
NaN and infinite values."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.tokenizer import families as F
from nightingale.tokenizer.encode import encode_events

SCHEMA = {S.SUBJECT_ID: pl.Int64, S.TIME: pl.Datetime("us"), S.CODE: pl.String, S.NUMERIC_VALUE: pl.Float32}
T = dt.datetime(2020, 5, 1)


def frame(rows):
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def test_unknown_codes_map_to_parent_family_or_unk(tiny_vocab):
    v = tiny_vocab
    enc = encode_events(v, frame([
        (1, T, "ICD10//E11.4", None),  # stem -> ICD10//E11
        (1, T, "ICD10//Q00", None),  # family unknown
        (1, T, "NEWSYSTEM//X", None),  # unknown family -> [UNK]
        (1, T, "ICD10//I10", None),
    ]))
    assert enc.tokens.tolist() == [
        F.SOT_ID, v.code_to_id["ICD10//E11"], v.token_to_id["UNK//ICD10"], F.UNK_ID, v.code_to_id["ICD10//I10"], F.EOR_ID
    ]
    r = enc.report
    assert (r["codes_exact"], r["codes_parent"], r["codes_unknown_family"], r["codes_unknown"]) == (1, 1, 1, 1)


def test_subject_without_events_is_skipped_and_counted(tiny_vocab):
    enc = encode_events(tiny_vocab, frame([
        (1, None, "SEX//F", None), (1, T, S.BIRTH_CODE, None),  # statics and birth only
        (2, None, "SEX//M", None), (2, T, "VISIT", None),
    ]))
    assert enc.index[S.SUBJECT_ID].to_list() == [2]
    assert enc.report["subjects_without_events"] == 1 and enc.report["subjects_encoded"] == 1
    assert enc.static.tolist() == [tiny_vocab.code_to_id["SEX//M"]]


def test_subject_without_birth_gets_unknown_age(tiny_vocab, tmp_path):
    from nightingale.tokenizer.corpus import CorpusWriter, TokenCorpus

    enc = encode_events(tiny_vocab, frame([(1, T, "VISIT", None), (2, T - dt.timedelta(days=3660), S.BIRTH_CODE, None), (2, T, "VISIT", None)]))
    assert enc.report["subjects_without_birth"] == 1
    assert enc.index["birth_time"].is_null().to_list() == [True, False]
    w = CorpusWriter(tmp_path / "c", tiny_vocab.token_dtype)
    w.append(enc)
    w.close()
    c = TokenCorpus(tmp_path / "c")
    assert c.window(tiny_vocab, 0, 0, 8)[0] == tiny_vocab.age_unknown_id
    assert c.window(tiny_vocab, 1, 0, 8)[0] == tiny_vocab.token_to_id["AGE//10-15"]


def test_nan_and_inf_values_drop_the_value_token(tiny_vocab):
    v = tiny_vocab
    code = "LOINC//4548-4"
    enc = encode_events(v, frame([
        (1, T, code, float("nan")), (1, T, code, float("inf")), (1, T, code, -float("inf")),
        (1, T, code, 100.0), (1, T, "VISIT", 3.0),  # a value on a code without bins
    ]))
    r = enc.report
    assert (r["values_nan_dropped"], r["values_inf_dropped"], r["values_without_bins_dropped"]) == (1, 2, 1)
    kinds = v.kinds[enc.tokens.astype(np.int64)]
    assert (kinds == F.KIND_VALUE_BIN).sum() == 1 and (kinds == F.KIND_CODE).sum() == 5


def test_unsorted_input_is_sorted(tiny_vocab):
    rows = [(2, T, "VISIT", None), (1, T + dt.timedelta(hours=1), "ICD10//I10", None), (1, T, "ICD10//E11", None), (1, None, "SEX//F", None)]
    enc = encode_events(tiny_vocab, frame(rows))
    v = tiny_vocab
    assert enc.index[S.SUBJECT_ID].to_list() == [1, 2]
    assert enc.tokens.tolist()[:5] == [F.SOT_ID, v.code_to_id["ICD10//E11"], v.token_to_id["GAP//1h"], v.code_to_id["ICD10//I10"], F.EOR_ID]
    assert np.all(np.diff(enc.times[:5]) >= 0)
