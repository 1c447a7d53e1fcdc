"""The ADNI importer: one visit of an ADNIMERGE-style table joined to a folder of T1 scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainage.core.io import InputError
from brainage.data.manifest.cells import _cohort, _is_missing, _number, _sex, _text
from brainage.data.manifest.ids import _label, parse_participant_id
from brainage.data.manifest.sources import (
    _column, _find_scan, _folder, _frame, _merge_duplicates, _read_table, _warn_unscanned, log,
)

#: ADNI scans: glob under the T1 folder; {ptid} 002_S_0295, {ptid_label} 002S0295,
#: {viscode} m24, {VISCODE} M24
ADNI_PATTERN = "{ptid}/{viscode}/*.nii*"


def _age_at_visit(age: object, years: object) -> object:
    """Baseline age + years since baseline, rounded to 0.01 y; raw value kept if not numeric."""
    base, delta = _number(age), _number(years)
    if base is None or delta is None:
        return age if base is None else np.nan  # an unknown visit date leaves the age unknown
    return round(base + delta, 2)


def from_adni(adnimerge: str | Path, t1_dir: str | Path, viscode: str = "m24",
              pattern: str = ADNI_PATTERN, dataset: str = "ADNI") -> pd.DataFrame:
    """ADNI participants at one visit from an ADNIMERGE-style CSV and a folder of T1 scans.

    Columns: PTID, VISCODE, AGE (at baseline), Years_bl (years since baseline; the age at the
    visit is AGE + Years_bl), PTGENDER (Male/Female), DX (CN -> HC, Dementia or AD -> AD;
    MCI, EMCI, LMCI, SMC are skipped), ADAS11 -> adas_cog11. The scan of each row is found
    with ``pattern``, a glob under ``t1_dir`` whose placeholders are {ptid} (002_S_0295),
    {ptid_label} (002S0295), {viscode} (m24) and {VISCODE} (M24); the default
    ``{ptid}/{viscode}/*.nii*`` expects ``t1_dir/002_S_0295/m24/<any name>.nii.gz``. Rows
    without a scan are skipped. participant_id is ``sub-ADNI<ptid_label>`` (as clinica names it).
    """
    path = Path(adnimerge)
    t1_dir = _folder(t1_dir, "ADNI T1")
    table = _read_table(path, "ADNIMERGE table")
    cols = {name: _column(table, [name], path, "ADNIMERGE table")
            for name in ("PTID", "VISCODE", "AGE", "PTGENDER", "DX", "ADAS11")}
    years_col = _column(table, ["Years_bl"], path, "ADNIMERGE table", required=viscode.lower() != "bl")
    visit = table[table[cols["VISCODE"]].fillna("").str.strip().str.lower() == viscode.lower()]
    if visit.empty:
        raise InputError(f"{path}: no rows with VISCODE {viscode}")

    records, problems, skipped = [], [], {}
    for row, record in zip(visit.index + 1, visit.to_dict("records")):
        try:
            subject = parse_participant_id(record[cols["PTID"]], "ADNI")
        except InputError as err:
            problems.append(f"{path}: row {row} column {cols['PTID']}: {err}")
            continue
        cohort = _cohort(record[cols["DX"]])
        if isinstance(cohort, str) and cohort.upper() in ("MCI", "EMCI", "LMCI", "SMC"):
            skipped[cohort] = skipped.get(cohort, 0) + 1
            continue
        age = record[cols["AGE"]] if years_col is None else _age_at_visit(record[cols["AGE"]], record[years_col])
        records.append((int(row), subject, {
            "ptid": _text(record[cols["PTID"]]).upper(),
            "cohort": cohort,
            "age": age,
            "sex": _sex(record[cols["PTGENDER"]]),
            "adas_cog11": record[cols["ADAS11"]],
        }))
    merged, conflicts = _merge_duplicates(records, path, f"ADNIMERGE table at {viscode}")
    if problems + conflicts:
        raise InputError("\n".join(problems + conflicts))
    rows, unscanned = [], []
    for subject, fields in sorted(merged.items()):
        ptid = fields["ptid"]
        t1w = _find_scan(t1_dir, pattern, subject, ptid=ptid, ptid_label=_label(ptid),
                         viscode=viscode, VISCODE=viscode.upper())
        if _is_missing(t1w):
            unscanned.append(subject)
            continue
        rows.append({"participant_id": subject, "dataset": dataset, "t1w": t1w, "session": viscode,
                     **{k: v for k, v in fields.items() if k != "ptid"}})
    for dx, count in sorted(skipped.items()):
        log.info("%s: %d participants with DX %s at %s skipped (not HC/AD)", dataset, count, dx, viscode)
    _warn_unscanned(dataset, unscanned, f"at {viscode} matching {pattern} in {t1_dir}")
    if not rows:
        raise InputError(f"{t1_dir}: no ADNI scans at {viscode} match {pattern} for the rows of {path}")
    return _frame(rows)
