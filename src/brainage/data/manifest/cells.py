"""One cell of a source table: missing or not, as text, as a number, the same as another, and
the usual spellings of a cohort or a sex."""

from __future__ import annotations

import numpy as np
import pandas as pd

from brainage.data.manifest.schema import NA_VALUES

# Lower-case spellings of the cohorts found in BIDS participants.tsv files and clinical sheets.
_COHORT_NAMES: dict[str, str] = {
    **dict.fromkeys(["hc", "cn", "nc", "nl", "control", "controls", "healthy", "healthy control",
                     "healthy controls", "normal", "hv"], "HC"),
    **dict.fromkeys(["ad", "dementia", "alzheimer", "alzheimers", "alzheimer's disease",
                     "alzheimer's", "alzheimers disease"], "AD"),
    **dict.fromkeys(["pd", "parkinson", "parkinsons", "parkinson's disease", "parkinson's",
                     "parkinsons disease"], "PD"),
}
_SEX_NAMES: dict[str, str] = {
    **dict.fromkeys(["m", "male", "man"], "M"),
    **dict.fromkeys(["f", "female", "woman"], "F"),
}


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return value is pd.NA or (isinstance(value, str) and value.strip() in NA_VALUES)


def _text(value: object) -> str | None:
    """A stripped string, or None for a missing cell."""
    return None if _is_missing(value) else str(value).strip()


def _number(value: object) -> float | None:
    try:
        return None if _is_missing(value) else float(value)
    except (TypeError, ValueError):
        return None


def _same(a: object, b: object) -> bool:
    """Two cells hold the same value (numbers compared as numbers, text case-insensitively)."""
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return abs(na - nb) < 1e-9
    return str(_text(a)).casefold() == str(_text(b)).casefold()


def _cohort(value: object) -> object:
    """HC/AD/PD for a known spelling; anything else unchanged (validate reports it)."""
    text = _text(value)
    return np.nan if text is None else _COHORT_NAMES.get(text.lower(), text)


def _sex(value: object) -> object:
    text = _text(value)
    return np.nan if text is None else _SEX_NAMES.get(text.lower(), text)
