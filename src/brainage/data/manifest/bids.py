"""The BIDS importer: ``participants.tsv`` joined to the T1w scans of a BIDS dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainage.core.io import InputError
from brainage.data.manifest.cells import _cohort, _is_missing, _sex
from brainage.data.manifest.ids import parse_participant_id
from brainage.data.manifest.sources import (
    _column, _folder, _frame, _merge_duplicates, _read_table, _warn_unscanned, log,
)

# Column names accepted for each manifest field in BIDS participants.tsv (case-insensitive).
_BIDS_COLUMNS: dict[str, tuple[str, ...]] = {
    "age": ("age", "age_at_scan", "age_years", "scan_age"),
    "sex": ("sex", "gender"),
    "cohort": ("cohort", "group", "diagnosis", "dx", "diagnosis_group"),
    "adas_cog11": ("adas_cog11", "adas11", "adas_cog_11"),
    "updrs3": ("updrs3", "np3tot", "updrs_iii", "mds_updrs_iii", "updrs_part_iii"),
    "hoehn_yahr": ("hoehn_yahr", "nhy", "hy"),
}


def from_bids(root: str | Path, dataset: str | None = None, session: str | None = None,
              cohort: str = "HC") -> pd.DataFrame:
    """Participants of a BIDS dataset: ``participants.tsv`` + ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``.

    Columns of ``participants.tsv`` are matched case-insensitively: age (age, age_at_scan),
    sex (sex, gender: M/F/male/female), cohort (cohort, group, diagnosis, dx: HC/CN/control,
    AD/dementia, PD/Parkinson's), adas_cog11, updrs3 (or NP3TOT), hoehn_yahr (or NHY).
    Without a group column every participant gets ``cohort`` (healthy controls by default).
    An ``age`` in ``sub-<label>/sub-<label>_sessions.tsv`` overrides the participant's age for
    that session. One scan per participant: the session ``session`` (``ses-2`` or ``2``), or
    the first session in sorted order; the first T1w in sorted order when a session holds
    several runs.
    """
    root = _folder(root, "BIDS")
    dataset = dataset or root.name
    want = None if session is None else (session if session.startswith("ses-") else f"ses-{session}")

    scans: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(root.glob("sub-*/anat/*_T1w.nii*")) + sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii*")):
        if not path.name.endswith((".nii", ".nii.gz")):
            continue
        subject = path.relative_to(root).parts[0]
        ses = path.parent.parent.name if path.parent.parent.name.startswith("ses-") else None
        scans.setdefault(subject, {}).setdefault(ses or "", []).append(path)

    info = _participants(root, dataset, set(scans), cohort)

    rows = []
    for subject, sessions in sorted(scans.items()):
        if want is not None and want not in sessions:
            log.info("%s: %s has no session %s, skipped", dataset, subject, want)
            continue
        ses = want if want is not None else sorted(sessions)[0]
        found = sorted(sessions[ses])
        if len(found) > 1:
            log.info("%s: %s %s has %d T1w scans, using %s", dataset, subject, ses or "", len(found), found[0].name)
        fields = dict(info.get(subject, {"cohort": cohort}))
        if ses:
            session_age = _session_ages(root, subject).get(ses)
            if session_age is not None:
                fields["age"] = session_age
        rows.append({
            "participant_id": subject,
            "dataset": dataset,
            "cohort": _cohort(fields.get("cohort", np.nan)),
            "age": fields.get("age", np.nan),
            "sex": _sex(fields.get("sex", np.nan)),
            "t1w": str(found[0]),
            "adas_cog11": fields.get("adas_cog11", np.nan),
            "updrs3": fields.get("updrs3", np.nan),
            "hoehn_yahr": fields.get("hoehn_yahr", np.nan),
            "session": ses.removeprefix("ses-") if ses else np.nan,
        })
    if not rows:
        raise InputError(f"{root}: no T1w scans (sub-*/[ses-*/]anat/*_T1w.nii[.gz]) in this BIDS dataset")
    return _frame(rows)


def _participants(root: Path, dataset: str, scanned: set[str], cohort: str) -> dict[str, dict]:
    """The fields of each participant of ``participants.tsv`` by participant_id ({} without one).

    ``cohort`` for everyone when the table has no group column; rows refused as
    :func:`from_bids` says; participants not in ``scanned`` named in one warning.
    """
    table_path = root / "participants.tsv"
    table = _read_table(table_path, "BIDS participants table", sep="\t") if table_path.is_file() else None
    info: dict[str, dict] = {}
    if table is not None:
        id_col = _column(table, ["participant_id"], table_path, "participants table")
        cols = {field: _column(table, names, table_path, "", required=False)
                for field, names in _BIDS_COLUMNS.items()}
        records, problems = [], []
        for row, record in enumerate(table.to_dict("records"), start=1):
            if all(_is_missing(v) for v in record.values()):
                continue
            try:
                pid = parse_participant_id(record[id_col], "BIDS")
            except InputError as err:
                problems.append(f"{table_path}: row {row} column {id_col}: {err}")
                continue
            fields = {field: (record[col] if col else np.nan) for field, col in cols.items()}
            if cols["cohort"] is None:
                fields["cohort"] = cohort
            records.append((row, pid, fields))
        info, conflicts = _merge_duplicates(records, table_path, "participants table")
        if problems + conflicts:
            raise InputError("\n".join(problems + conflicts))
        _warn_unscanned(dataset, set(info) - scanned, f"under {root}")
    else:
        log.warning("%s: no participants.tsv; ages and sexes are missing", dataset)
    return info


def _session_ages(root: Path, subject: str) -> dict[str, object]:
    path = root / subject / f"{subject}_sessions.tsv"
    if not path.is_file():
        return {}
    table = _read_table(path, "BIDS sessions table", sep="\t")
    ses_col = _column(table, ["session_id"], path, "sessions table")
    age_col = _column(table, _BIDS_COLUMNS["age"], path, "", required=False)
    if age_col is None:
        return {}
    return {str(s): a for s, a in zip(table[ses_col], table[age_col]) if not _is_missing(a)}
