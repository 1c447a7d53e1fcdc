"""The manifest's columns and the values they allow: the one schema of the validation, the
importers and the command line (``workflow/schemas/participants.schema.yaml`` states the same)."""

from __future__ import annotations

COLUMNS: tuple[str, ...] = (
    "participant_id",
    "dataset",
    "cohort",
    "age",
    "sex",
    "t1w",
    "adas_cog11",
    "updrs3",
    "hoehn_yahr",
    "session",
)
#: columns that must hold a value on every row (the others may be n/a)
REQUIRED: tuple[str, ...] = ("participant_id", "dataset", "cohort", "age", "sex", "t1w")
COHORTS: tuple[str, ...] = ("HC", "AD", "PD")
SEXES: tuple[str, ...] = ("F", "M")
AGE_RANGE: tuple[float, float] = (0.0, 120.0)
#: valid ranges of the clinical scores (instrument totals)
SCORE_RANGES: dict[str, tuple[float, float]] = {
    "adas_cog11": (0.0, 70.0),
    "updrs3": (0.0, 132.0),
    "hoehn_yahr": (0.0, 5.0),
}
#: cells read as missing (BIDS writes n/a)
NA_VALUES: list[str] = ["n/a", "N/A", "NA", "", "nan", "NaN"]
