"""Token families and special tokens: the one place their names are spelled out.

A token's *kind* says how encode/decode treat it (a code, a value bin, a time gap, ...); a code's
*family* is its prefix before the first ``//`` (``ICD10//E11.9`` -> ``ICD10``) and names the
unknown-of-its-family token that a code outside the vocabulary falls back to.
"""

from __future__ import annotations

from nightingale import schema as S

# --- Special tokens (always present, fixed ids 0..3) ---------------------------------------------
PAD = "[PAD]"
UNK = "[UNK]"  # unknown code of no known family
SOT = "[SOT]"  # start of timeline: nothing of this subject precedes it
EOR = "[EOR]"  # end of record: the data stop here (not death; death is the MEDS_DEATH code)
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, SOT, EOR)
PAD_ID, UNK_ID, SOT_ID, EOR_ID = range(len(SPECIAL_TOKENS))

# --- Token string prefixes of the non-code families ------------------------------------------------
VALUE_BIN_PREFIX = "Q"  # shared quantile-bin tokens Q1..Qn follow the code token (ETHOS style)
TIME_GAP_PREFIX = "GAP//"  # GAP//5m, GAP//1y
AGE_PREFIX = "AGE//"  # AGE//40-45, AGE//110+
AGE_UNKNOWN = "AGE//UNK"  # subject with no MEDS_BIRTH event
UNKNOWN_FAMILY_PREFIX = "UNK//"  # UNK//ICD10: a code of family ICD10 not in the vocabulary

# Codes that always get a token whatever their count (death is an outcome we must never lose).
RESERVED_CODES: tuple[str, ...] = (S.DEATH_CODE,)
# Codes consumed by the encoder rather than emitted: birth becomes the age token.
CONSUMED_CODES: tuple[str, ...] = (S.BIRTH_CODE,)

# --- Token kinds (int8 codes used in vectorised encode/decode) --------------------------------------
KIND_SPECIAL = 0
KIND_CODE = 1
KIND_VALUE_BIN = 2
KIND_TIME_GAP = 3
KIND_AGE = 4
KIND_UNKNOWN = 5  # UNK and UNK//<family>
KIND_NAMES = {
    KIND_SPECIAL: "special",
    KIND_CODE: "code",
    KIND_VALUE_BIN: "value_bin",
    KIND_TIME_GAP: "time_gap",
    KIND_AGE: "age",
    KIND_UNKNOWN: "unknown",
}


def family_of(code: str) -> str | None:
    """The family of a code: its prefix before the first ``//``; None when it has none.

    >>> family_of("ICD10//E11.9"), family_of("MEDS_DEATH")
    ('ICD10', None)
    """
    head, sep, _ = code.partition(S.CODE_SEPARATOR)
    return head if sep else None
