"""The IXI importer: the IXI demographics sheet joined to the T1 scans of a folder."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.core.io import InputError
from brainage.data.manifest.cells import _is_missing, _number, _sex
from brainage.data.manifest.ids import parse_participant_id
from brainage.data.manifest.sources import (
    _column, _folder, _frame, _merge_duplicates, _read_table, _warn_unscanned, log,
)

_IXI_T1 = re.compile(r"IXI(\d+)-([A-Za-z]+)-(\d+)-T1(?:_ds)?\.nii(?:\.gz)?")


def from_ixi(demographics: str | Path, t1_dir: str | Path, dataset: str = "IXI") -> pd.DataFrame:
    """Healthy participants of IXI: the demographics sheet joined to the T1 scans found.

    ``demographics``: IXI.xls (or a CSV/TSV of it) with IXI_ID (12 or IXI012), AGE, and
    SEX_ID (1 = male, 2 = female) or SEX (M/F). Scans: ``IXI<id>-<site>-<n>-T1.nii.gz``
    (also ``..._ds.nii.gz``, the downsampled copies in tests/data). Ids are read by
    :func:`parse_participant_id` (``12.0`` is IXI012); repeated ids follow
    :func:`_merge_duplicates`; sheet rows without a scan are skipped with one warning.
    """
    path = Path(demographics)
    t1_dir = _folder(t1_dir, "IXI T1")
    table = _read_table(path, "IXI demographics")
    id_col = _column(table, ["IXI_ID"], path, "IXI demographics")
    age_col = _column(table, ["AGE"], path, "IXI demographics")
    sex_id_col = _column(table, ["SEX_ID", "SEX_ID (1=m, 2=f)"], path, "", required=False)
    sex_col = None if sex_id_col else _column(table, ["SEX", "GENDER"], path, "IXI demographics (SEX_ID or SEX)")

    records, problems = [], []
    for row, record in enumerate(table.to_dict("records"), start=1):
        if all(_is_missing(v) for v in record.values()):
            continue  # a blank line of the sheet
        try:
            pid = parse_participant_id(record[id_col], "IXI")
        except InputError as err:
            problems.append(f"{path}: row {row} column {id_col}: {err}")
            continue
        if sex_id_col:
            code = _number(record[sex_id_col])
            sex = {1.0: "M", 2.0: "F"}.get(code, record[sex_id_col]) if code is not None else record[sex_id_col]
        else:
            sex = _sex(record[sex_col])
        records.append((row, pid, {"age": record[age_col], "sex": sex}))
    demo, conflicts = _merge_duplicates(records, path, "IXI demographics")
    problems += conflicts
    if problems:
        raise InputError("\n".join(problems))

    rows, ageless = [], []
    for scan in sorted(t1_dir.iterdir()):
        match = _IXI_T1.fullmatch(scan.name)
        if match is None:
            continue
        pid = parse_participant_id(match.group(1), "IXI")
        entry = demo.get(pid, {"age": np.nan, "sex": np.nan})
        if _is_missing(entry["age"]):
            # the official sheet has no age for some scanned people (and no row for a few):
            # a brain-age study cannot use them, so they are left out, named in one warning
            ageless.append(pid)
            continue
        rows.append({
            "participant_id": pid,
            "dataset": dataset,
            "cohort": "HC",
            "age": entry["age"],
            "sex": entry["sex"],
            "t1w": str(scan),
            "session": np.nan,
        })
    _warn_unscanned(dataset, set(demo) - {r["participant_id"] for r in rows} - set(ageless), f"in {t1_dir}")
    if ageless:
        shown = ", ".join(i.removeprefix("sub-") for i in ageless[:10]) + (f" and {len(ageless) - 10} more" if len(ageless) > 10 else "")
        log.warning("%s: %d T1w scan%s without an age in %s, skipped: %s", dataset, len(ageless),
                    "s" * (len(ageless) != 1), path, shown)
    if not rows:
        raise InputError(f"{t1_dir}: no IXI T1 scans (IXI<id>-<site>-<n>-T1.nii.gz) with an age in {path}")
    return _frame(rows)
