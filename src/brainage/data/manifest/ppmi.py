"""The PPMI importer: one visit of a curated PPMI table joined to a folder of T1 scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainage.core.io import InputError
from brainage.data.manifest.cells import _cohort, _is_missing, _number, _sex, _text
from brainage.data.manifest.ids import parse_participant_id
from brainage.data.manifest.schema import COHORTS
from brainage.data.manifest.sources import (
    _column, _find_scan, _folder, _frame, _merge_duplicates, _read_table, _warn_unscanned, log,
)

#: PPMI scans: glob under the T1 folder; {patno} 3001, {visit} V08
PPMI_PATTERN = "{patno}/{visit}/*.nii*"


# PPMI codes: COHORT / APPRDX 1 = PD, 2 = HC, 3 = SWEDD, 4 = prodromal; SEX 0 = F, 1 = M.
_PPMI_STATUS = {"1": "PD", "2": "HC", "3": "SWEDD", "4": "Prodromal"}
_PPMI_SEX = {"0": "F", "1": "M"}
_PPMI_NHY_UNRATED = 101.0


def from_ppmi(table_path: str | Path, t1_dir: str | Path, visit: str = "V08",
              pattern: str = PPMI_PATTERN, dataset: str = "PPMI") -> pd.DataFrame:
    """PPMI participants at one visit (V08 = 48 months) from a curated CSV and T1 scans.

    Columns (case-insensitive): PATNO, EVENT_ID (the visit), the participant status
    (COHORT_DEFINITION "Parkinson's Disease"/"Healthy Control", or COHORT/APPRDX 1 = PD,
    2 = HC; SWEDD and prodromal are skipped), age at the visit (age_at_visit), SEX (0 = F,
    1 = M, or Female/Male), NP3TOT -> updrs3, NHY -> hoehn_yahr (101, "unable to rate", is
    n/a). Scans are found with ``pattern``, a glob under ``t1_dir`` with {patno} and {visit};
    the default ``{patno}/{visit}/*.nii*`` expects ``t1_dir/3001/V08/<any name>.nii.gz``.
    Rows without a scan are skipped. participant_id is ``sub-PPMI<patno>``.
    """
    path = Path(table_path)
    t1_dir = _folder(t1_dir, "PPMI T1")
    table = _read_table(path, "PPMI table")
    patno_col = _column(table, ["PATNO"], path, "PPMI table")
    event_col = _column(table, ["EVENT_ID", "visit"], path, "PPMI table")
    status_col = _column(table, ["COHORT_DEFINITION", "COHORT", "APPRDX", "participant_status", "status"],
                         path, "PPMI table")
    age_col = _column(table, ["age_at_visit", "age"], path, "PPMI table")
    sex_col = _column(table, ["SEX", "gender"], path, "PPMI table")
    updrs_col = _column(table, ["NP3TOT", "updrs3"], path, "PPMI table")
    nhy_col = _column(table, ["NHY", "hoehn_yahr"], path, "PPMI table")
    rows_at = table[table[event_col].fillna("").str.strip().str.upper() == visit.upper()]
    if rows_at.empty:
        raise InputError(f"{path}: no rows with {event_col} {visit}")

    records, problems, skipped = [], [], {}
    for row, record in zip(rows_at.index + 1, rows_at.to_dict("records")):
        try:
            subject = parse_participant_id(record[patno_col], "PPMI")
        except InputError as err:
            problems.append(f"{path}: row {row} column {patno_col}: {err}")
            continue
        status = _text(record[status_col])
        status = _PPMI_STATUS.get(status.removesuffix(".0"), status) if status is not None else None
        cohort = _cohort(status)
        if cohort not in COHORTS and not _is_missing(cohort):
            skipped[cohort] = skipped.get(cohort, 0) + 1
            continue
        sex = _text(record[sex_col])
        nhy = record[nhy_col]
        records.append((int(row), subject, {
            "cohort": cohort,
            "age": record[age_col],
            "sex": _sex(_PPMI_SEX.get(sex.removesuffix(".0"), sex) if sex is not None else None),
            "updrs3": record[updrs_col],
            "hoehn_yahr": np.nan if _number(nhy) == _PPMI_NHY_UNRATED else nhy,
        }))
    merged, conflicts = _merge_duplicates(records, path, f"PPMI table at {visit}")
    if problems + conflicts:
        raise InputError("\n".join(problems + conflicts))
    rows, unscanned = [], []
    for subject, fields in sorted(merged.items()):
        t1w = _find_scan(t1_dir, pattern, subject, patno=subject.removeprefix("sub-PPMI"), visit=visit)
        if _is_missing(t1w):
            unscanned.append(subject)
            continue
        rows.append({"participant_id": subject, "dataset": dataset, "t1w": t1w, "session": visit, **fields})
    for status, count in sorted(skipped.items()):
        log.info("%s: %d participants with status %s at %s skipped (not HC/PD)", dataset, count, status, visit)
    _warn_unscanned(dataset, unscanned, f"at {visit} matching {pattern} in {t1_dir}")
    if not rows:
        raise InputError(f"{t1_dir}: no PPMI scans at {visit} match {pattern} for the rows of {path}")
    return _frame(rows)
