"""The participants manifest: who is in the study, with which T1w scan, age, sex and scores.

The manifest is one TSV with a header and one row per participant, the single source of
truth of the pipeline (``results/cohort/participants.tsv``; the Snakemake wildcard
``{subject}`` is its ``participant_id``). Columns (``n/a`` where a value does not apply):

    participant_id  ``sub-<alphanumeric label>``, unique
    dataset         where the row came from (IXI, ADNI, PPMI, a BIDS folder name)
    cohort          HC | AD | PD
    age             years at the scan, 0-120
    sex             F | M
    t1w             path of the raw T1-weighted scan (relative paths are relative to the
                    working directory, like every Snakemake path; ``brainage manifest``
                    writes absolute paths)
    adas_cog11      ADAS-Cog-11 total (0-70)
    updrs3          MDS-UPDRS part III total (0-132)
    hoehn_yahr      Hoehn and Yahr stage (0-5)
    session         BIDS session label or visit code of the scan

Importers turn the usual sources into that shape: :func:`from_bids`, :func:`from_ixi`,
:func:`from_adni`, :func:`from_ppmi`; :func:`concat` joins several. Every importer starts
from the scans it finds and joins the demographics to them: a scan without demographics is
kept (and reported by :func:`validate` as a missing age or sex), demographics rows without
a scan are skipped with one warning giving their count and ids, and participants outside the
study's cohorts (ADNI MCI, PPMI SWEDD or prodromal) are skipped (logged). Every importer reads
ids with :func:`parse_participant_id` (a row whose id is not one is refused, naming the row)
and applies one duplicate policy (:func:`_merge_duplicates`: identical rows merged,
conflicting rows refused, all listed). Importers keep values as found; :func:`validate`
reports every problem at once, one line each with row and column, and
:func:`write_manifest` writes nothing unless the manifest is valid.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.core.io import InputError, check_output_file, write_tsv

log = logging.getLogger(__name__)

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

#: ADNI scans: glob under the T1 folder; {ptid} 002_S_0295, {ptid_label} 002S0295,
#: {viscode} m24, {VISCODE} M24
ADNI_PATTERN = "{ptid}/{viscode}/*.nii*"
#: PPMI scans: glob under the T1 folder; {patno} 3001, {visit} V08
PPMI_PATTERN = "{patno}/{visit}/*.nii*"

_PARTICIPANT_ID = re.compile(r"sub-[A-Za-z0-9]+")
_IXI_T1 = re.compile(r"IXI(\d+)-([A-Za-z]+)-(\d+)-T1(?:_ds)?\.nii(?:\.gz)?")

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
# Column names accepted for each manifest field in BIDS participants.tsv (case-insensitive).
_BIDS_COLUMNS: dict[str, tuple[str, ...]] = {
    "age": ("age", "age_at_scan", "age_years", "scan_age"),
    "sex": ("sex", "gender"),
    "cohort": ("cohort", "group", "diagnosis", "dx", "diagnosis_group"),
    "adas_cog11": ("adas_cog11", "adas11", "adas_cog_11"),
    "updrs3": ("updrs3", "np3tot", "updrs_iii", "mds_updrs_iii", "updrs_part_iii"),
    "hoehn_yahr": ("hoehn_yahr", "nhy", "hy"),
}


# ---------------------------------------------------------------------------------------------
# small helpers


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


def _label(text: str) -> str:
    """A BIDS label: only letters and digits (``002_S_0295`` -> ``002S0295``)."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


# How each source spells a participant, and the manifest label it becomes (sub-<label>).
_ID_FORMS: dict[str, tuple[re.Pattern, object, str]] = {
    "IXI": (re.compile(r"(?:IXI)?(\d{1,3})", re.I), lambda m: f"IXI{int(m.group(1)):03d}", "12, 012 or IXI012"),
    "ADNI": (re.compile(r"(\d{3})_S_(\d{4})", re.I), lambda m: f"ADNI{m.group(1)}S{m.group(2)}",
             "a PTID such as 002_S_0295"),
    "PPMI": (re.compile(r"(?:PPMI)?(\d{1,7})", re.I), lambda m: f"PPMI{int(m.group(1))}", "a PATNO such as 3001"),
    "BIDS": (re.compile(r"(?:sub-)?([A-Za-z0-9]+)"), lambda m: m.group(1), "sub-<letters and digits>"),
}


def parse_participant_id(value: object, source: str) -> str:
    """The manifest ``participant_id`` of one id cell of ``source`` (IXI, ADNI, PPMI, BIDS).

    The one id parser of every importer. A whole number saved by a spreadsheet as ``12.0``
    (or read as the float 12.0) is the id 12: IXI ``12``, ``012``, ``"IXI012"`` and ``12.0``
    all give ``sub-IXI012``. Anything else (``12.5``, ``IXI12a``, an empty cell) raises
    :class:`InputError` with the reason and the accepted forms, for the caller to name the row.
    """
    pattern, label, forms = _ID_FORMS[source]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = _text(value)
    if text is None:
        raise InputError(f"missing {source} id (expected {forms})")
    whole = re.fullmatch(r"(\d+)\.0*", text)  # 12.0: a number column saved by a spreadsheet
    if whole and source in ("IXI", "PPMI"):
        text = whole.group(1)
    match = pattern.fullmatch(text)
    if match is None:
        raise InputError(f"{text!r} is not a {source} id (expected {forms})")
    return f"sub-{label(match)}"


def check_participant_id(value: str) -> str:
    """``value`` if it is a BIDS participant id (``sub-`` + letters and digits); InputError if not.

    Every file name is built from it: ``../../x`` or ``sub-a/b`` would write outside the
    output folder, ``sub-01_ses-1`` would break the BIDS entities.
    """
    if not isinstance(value, str) or not _PARTICIPANT_ID.fullmatch(value):
        raise InputError(f"participant id {value!r} is not 'sub-' followed by letters and digits (BIDS label)")
    return value


def _same(a: object, b: object) -> bool:
    """Two cells hold the same value (numbers compared as numbers, text case-insensitively)."""
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return abs(na - nb) < 1e-9
    return str(_text(a)).casefold() == str(_text(b)).casefold()


def _merge_duplicates(records: list[tuple[int, str, dict]], path: str | Path, what: str
                      ) -> tuple[dict[str, dict], list[str]]:
    """Rows of one table keyed by participant: the one duplicate policy of every importer.

    ``records``: (row number from 1, participant_id, fields). Rows of the same participant
    that agree wherever both have a value are merged into one (a blank cell takes the other
    row's value); rows that disagree are refused, each conflict one line naming both rows.
    """
    merged: dict[str, dict] = {}
    first: dict[str, int] = {}
    problems: list[str] = []
    for row, pid, fields in records:
        if pid not in merged:
            merged[pid], first[pid] = dict(fields), row
            continue
        kept = merged[pid]
        clash = [k for k, v in fields.items()
                 if not _is_missing(v) and not _is_missing(kept.get(k)) and not _same(kept[k], v)]
        if clash:
            values = "; ".join(f"{k} {kept[k]!r} vs {fields[k]!r}" for k in clash)
            problems.append(f"{path}: rows {first[pid]} and {row} of the {what} are both {pid} but differ "
                            f"({values}); remove one or correct its id")
            continue
        for k, v in fields.items():
            if _is_missing(kept.get(k)) and not _is_missing(v):
                kept[k] = v
    return merged, problems


def _warn_unscanned(dataset: str, ids: Iterable[str], where: str) -> None:
    """The one warning for demographics rows that have no scan: count and ids."""
    ids = sorted(ids)
    if ids:
        shown = ", ".join(i.removeprefix("sub-") for i in ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        log.warning("%s: %d row%s without a T1w scan %s, skipped: %s", dataset, len(ids),
                    "s" * (len(ids) != 1), where, shown)


def _cohort(value: object) -> object:
    """HC/AD/PD for a known spelling; anything else unchanged (validate reports it)."""
    text = _text(value)
    return np.nan if text is None else _COHORT_NAMES.get(text.lower(), text)


def _sex(value: object) -> object:
    text = _text(value)
    return np.nan if text is None else _SEX_NAMES.get(text.lower(), text)


def _read_table(path: str | Path, what: str, sep: str | None = None) -> pd.DataFrame:
    """A CSV/TSV (or Excel sheet) as strings, missing cells as NaN."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    if path.suffix.lower() in (".xls", ".xlsx"):
        try:
            table = pd.read_excel(path, dtype=str)
        except ImportError as err:  # xlrd / openpyxl are optional
            raise InputError(f"{path}: cannot read {what} ({err}); save it as CSV and pass that") from None
        except Exception as err:  # a CSV renamed .xls, a corrupt workbook: xlrd/openpyxl raise many types
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"{path}: not a readable Excel workbook ({reason}); if it is a CSV, "
                             f"name it .csv") from None
    else:
        if sep is None:
            sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
        try:
            table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=NA_VALUES)
        except pd.errors.EmptyDataError:
            raise InputError(f"{path}: {what} is empty (no header, no rows)") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: cannot read {what}: {err}".replace("\n", " ")) from None
    if table.empty:
        raise InputError(f"{path}: {what} has a header but no rows")
    return table


def _column(table: pd.DataFrame, names: Iterable[str], path: Path | str, what: str,
            required: bool = True) -> str | None:
    """The first column of ``table`` named like one of ``names`` (case-insensitive)."""
    lower = {str(c).strip().lower(): c for c in table.columns}
    names = list(names)
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    if required:
        raise InputError(f"{path}: {what} has no column {' or '.join(names)} "
                         f"(columns: {', '.join(map(str, table.columns))})")
    return None


def _folder(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: {what} folder not found")
    return path.resolve()


def _find_scan(root: Path, pattern: str, subject: str, **fields: str) -> str | float:
    """The scan matching ``pattern`` (a glob under ``root`` with ``{field}`` placeholders).

    Several matches (a repeated acquisition) -> the first in sorted order; none -> NaN.
    """
    try:
        glob = pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(f"scan pattern {pattern!r}: unknown placeholder {err} "
                         f"(placeholders: {', '.join('{' + f + '}' for f in fields)})") from None
    matches = sorted(p for p in root.glob(glob) if p.is_file())
    if len(matches) > 1:
        log.info("%s: %d scans match %s, using %s", subject, len(matches), glob, matches[0].name)
    return str(matches[0]) if matches else np.nan


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Importer rows as a manifest: numbers parsed where they parse, anything else kept as found."""
    for row in rows:
        for column in ("age", *SCORE_RANGES):
            value = row.get(column, np.nan)
            number = _number(value)
            row[column] = np.nan if _is_missing(value) else (value if number is None else number)
    frame = pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)
    return frame.sort_values("participant_id", kind="stable", ignore_index=True) if rows else frame


def _age_at_visit(age: object, years: object) -> object:
    """Baseline age + years since baseline, rounded to 0.01 y; raw value kept if not numeric."""
    base, delta = _number(age), _number(years)
    if base is None or delta is None:
        return age if base is None else np.nan  # an unknown visit date leaves the age unknown
    return round(base + delta, 2)


# ---------------------------------------------------------------------------------------------
# importers


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
        _warn_unscanned(dataset, set(info) - set(scans), f"under {root}")
    else:
        log.warning("%s: no participants.tsv; ages and sexes are missing", dataset)

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


@dataclass(frozen=True)
class Importer:
    """One source kind of ``brainage manifest``: its command-line options and how to read it.

    ``table`` and ``folder`` name the two options that go together (the demographics table and
    the folder of scans; BIDS has one folder, repeatable); ``options`` are extra options
    ``(flag, default, help)``; ``read(args)`` returns ``[(label, thunk)]``, one per source given.
    Adding a source kind is one ``from_*`` function and one entry in :data:`IMPORTERS`.
    """

    name: str
    table: tuple[str, str]
    folder: tuple[str, str] | None
    options: tuple[tuple[str, str | None, str], ...]
    read: Callable[[argparse.Namespace], list[tuple[str, Callable[[], pd.DataFrame]]]]

    def given(self, args: argparse.Namespace) -> bool:
        return bool(getattr(args, _dest(self.table[0])))


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


IMPORTERS: tuple[Importer, ...] = (
    Importer("BIDS", ("--bids", "a BIDS dataset (repeatable)"), None,
             (("--bids-session", None, "BIDS session to take (default: first)"),),
             lambda a: [(f"BIDS {root}", lambda root=root: from_bids(Path(root).resolve(), session=a.bids_session))
                        for root in a.bids]),
    Importer("IXI", ("--ixi-demographics", "IXI.xls or a CSV of it"), ("--ixi-t1", "folder of IXI*-T1.nii.gz scans"), (),
             lambda a: [("IXI", lambda: from_ixi(a.ixi_demographics, a.ixi_t1))]),
    Importer("ADNI", ("--adni", "ADNIMERGE-style table"), ("--adni-t1", "folder of ADNI T1 scans"),
             (("--adni-viscode", "m24", "ADNI visit (default: m24)"),
              ("--adni-pattern", ADNI_PATTERN, "glob of one ADNI scan under --adni-t1")),
             lambda a: [("ADNI", lambda: from_adni(a.adni, a.adni_t1, a.adni_viscode, a.adni_pattern))]),
    Importer("PPMI", ("--ppmi", "PPMI table (status, age at visit, sex, NP3TOT, NHY)"), ("--ppmi-t1", "folder of PPMI T1 scans"),
             (("--ppmi-visit", "V08", "PPMI visit (default: V08 = 48 months)"),
              ("--ppmi-pattern", PPMI_PATTERN, "glob of one PPMI scan under --ppmi-t1")),
             lambda a: [("PPMI", lambda: from_ppmi(a.ppmi, a.ppmi_t1, a.ppmi_visit, a.ppmi_pattern))]),
)


def concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Several manifests as one (manifest columns first, in order; extra columns kept after)."""
    frames = [f for f in frames if f is not None]
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    joined = pd.concat([f.astype(object) for f in frames], ignore_index=True, sort=False)
    extra = [c for c in joined.columns if c not in COLUMNS]
    return joined.reindex(columns=list(COLUMNS) + extra)


# ---------------------------------------------------------------------------------------------
# validation, reading, writing


def check_image(path: str | Path) -> str | None:
    """Why ``path`` is not a usable raw T1w scan (None when it is): the one check of
    :func:`brainage.core.scans.scan_problem` (header, orientation, voxel size, a data sample)."""
    from brainage.core.scans import scan_problem

    return scan_problem(path)


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """An object-dtype copy: strings stripped, every NA spelling (n/a, empty, None) as NaN.

    One plain loop per column: pandas' ``.str`` methods are several times slower on object
    columns, and a 40,000-row manifest is read at every Snakemake start.
    """
    na = set(NA_VALUES)
    out = {}
    for column in frame.columns:
        cells = []
        for v in frame[column].to_numpy(dtype=object):
            if isinstance(v, str):
                v = v.strip()
                cells.append(np.nan if v in na else v)
            elif v is None or v is pd.NA or (isinstance(v, float) and v != v):
                cells.append(np.nan)
            else:
                cells.append(v)
        out[column] = pd.Series(cells, index=frame.index, dtype=object)
    return pd.DataFrame(out, index=frame.index, columns=frame.columns)


def validate(frame: pd.DataFrame, check_files: bool = True) -> list[str]:
    """Every problem of ``frame`` as one line: ``row <n> (<participant_id>) column <c>: <what>``.

    Rows are numbered from 1 (the first participant; in a TSV that is the line after the
    header). Checked: required columns present; participant_id present, ``sub-<alnum>`` and
    unique; dataset present; cohort in HC|AD|PD; age present, numeric and in 0-120; sex F|M;
    t1w present; clinical scores numeric and in range when given; with ``check_files`` each
    t1w passes :func:`check_image` (header and a sample of the data, as preprocessing wants). Whole
    columns are checked at once, so 40,000 rows take well under a second without file checks.
    """
    return _problems(_normalise(frame.reset_index(drop=True)), check_files)


def _problems(frame: pd.DataFrame, check_files: bool) -> list[str]:
    """:func:`validate` of a frame already through :func:`_normalise` with a 0..n-1 index."""
    problems: list[tuple[int, int, str]] = []  # (row index, column order, message)
    absent = [c for c in REQUIRED if c not in frame.columns]
    header = [f"column {c}: missing from the manifest (required: {', '.join(REQUIRED)})" for c in absent]
    if frame.empty:
        return header + ["the manifest has no participants"]
    order = {c: i for i, c in enumerate(COLUMNS)}
    ids = frame["participant_id"].astype(object) if "participant_id" in frame else pd.Series([None] * len(frame))

    def add(mask: pd.Series, column: str, message) -> None:
        for i in np.flatnonzero(mask.to_numpy(dtype=bool)):
            problems.append((int(i), order.get(column, len(order)),
                             f"column {column}: {message(frame[column].iat[i], i) if callable(message) else message}"))

    if "participant_id" in frame:
        missing = pd.isna(frame["participant_id"])
        add(missing, "participant_id", "missing")
        text = frame["participant_id"].astype(object).where(~missing, "").astype(str)
        well_formed = pd.Series([bool(_PARTICIPANT_ID.fullmatch(t)) for t in text.to_numpy()], index=text.index)
        add(~missing & ~well_formed, "participant_id",
            lambda v, i: f"{v!r} is not 'sub-' followed by letters and digits")
        position = pd.Series(np.arange(len(text)), index=text.index)
        first = position.groupby(text.to_numpy()).transform("min")  # first row of each id
        add(~missing & (first != position), "participant_id",
            lambda v, i: f"duplicate of row {int(first.iat[i]) + 1}")
    if "dataset" in frame:
        add(pd.isna(frame["dataset"]), "dataset", "missing")
    for column, allowed in (("cohort", COHORTS), ("sex", SEXES)):
        if column in frame:
            missing = pd.isna(frame[column])
            add(missing, column, f"missing (allowed: {'|'.join(allowed)})")
            known = frame[column].astype(object).isin(allowed)
            add(~missing & ~known, column, lambda v, i, allowed=allowed: f"unknown value {v!r} (allowed: {'|'.join(allowed)})")
    numeric = {"age": AGE_RANGE, **SCORE_RANGES}
    for column, (low, high) in numeric.items():
        if column not in frame:
            continue
        missing = pd.isna(frame[column])
        values = pd.to_numeric(frame[column], errors="coerce")
        if column == "age":
            add(missing, column, "missing")
        add(~missing & values.isna(), column, lambda v, i: f"{v!r} is not a number")
        add(values.notna() & ~values.between(low, high), column,
            lambda v, i, low=low, high=high: f"{v} is outside {low:g}-{high:g}")
    if "t1w" in frame:
        missing = pd.isna(frame["t1w"])
        add(missing, "t1w", "missing (path of the T1w scan)")
        if check_files:
            for i in np.flatnonzero(~missing.to_numpy(dtype=bool)):
                reason = check_image(str(frame["t1w"].iat[i]).strip())
                if reason:
                    problems.append((int(i), order["t1w"], f"column t1w: {reason}"))

    lines = []
    for i, _, message in sorted(problems, key=lambda p: (p[0], p[1])):
        pid = _text(ids.iat[i])
        lines.append(f"row {i + 1}{f' ({pid})' if pid else ''} {message}")
    return header + lines


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Manifest columns first; numbers as float, text as str, missing as NaN."""
    extra = [c for c in frame.columns if c not in COLUMNS]
    out = frame.reindex(columns=list(COLUMNS) + extra)  # frame is already normalised
    for column in COLUMNS:
        if column == "age" or column in SCORE_RANGES:
            out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
        else:
            out[column] = [v if isinstance(v, str) or pd.isna(v) else str(v) for v in out[column]]
            out[column] = out[column].astype(object)
    return out


def write_manifest(frame: pd.DataFrame, path: str | Path, check_files: bool = True) -> pd.DataFrame:
    """Validate ``frame`` and write it as a TSV, atomically; returns the typed manifest.

    Raises :class:`~brainage.core.io.InputError` listing every problem, one per line, and writes
    nothing (an existing file at ``path`` is left as it was) when validation fails.
    """
    frame = _normalise(frame.reset_index(drop=True))
    problems = _problems(frame, check_files)
    if problems:
        raise InputError("\n".join(problems))
    typed = _typed(frame)
    write_tsv(path, typed)
    return typed


def read_manifest(path: str | Path, check_files: bool = False) -> pd.DataFrame:
    """Read and validate a manifest TSV; raises InputError with every problem, one per line.

    Files are checked only with ``check_files`` (the parse-time read of a 40,000-row manifest
    by the Snakefile must not stat 40,000 files; the ``participants`` rule checks them once).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: participants manifest not found")
    frame = _normalise(_read_table(path, "participants manifest", sep="\t"))
    problems = _problems(frame, check_files)
    if problems:
        raise InputError("\n".join(f"{path}: {p}" for p in problems))
    return _typed(frame)


def summary(frame: pd.DataFrame) -> str:
    """``12 participants (HC 8, AD 2, PD 2) from IXI, ADNI``."""
    counts = frame["cohort"].value_counts()
    cohorts = ", ".join(f"{c} {int(counts.get(c, 0))}" for c in COHORTS)
    datasets = ", ".join(dict.fromkeys(frame["dataset"].astype(str)))
    return f"{len(frame)} participants ({cohorts}) from {datasets}"


# ---------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainage manifest",
        description="Build the participants manifest (TSV) from BIDS, IXI, ADNI and PPMI sources, "
        "concatenated, and validate it; or check an existing manifest with --check.",
        epilog="Every problem is printed on stderr, one line each (row, column, what is wrong), "
        "and nothing is written unless the whole manifest is valid (exit code 1). "
        f"ADNI scans are found with --adni-pattern (default {ADNI_PATTERN!r}; placeholders "
        "{ptid}, {ptid_label}, {viscode}, {VISCODE}), PPMI scans with --ppmi-pattern (default "
        f"{PPMI_PATTERN!r}; placeholders {{patno}}, {{visit}}), globs under the T1 folder.",
    )
    src = parser.add_argument_group("sources (any number, concatenated)")
    for imp in IMPORTERS:
        flag, text = imp.table
        if imp.folder is None:  # a folder source, repeatable (BIDS)
            src.add_argument(flag, action="append", default=[], metavar="DIR", help=text)
        else:
            src.add_argument(flag, metavar="FILE", help=text)
            src.add_argument(imp.folder[0], metavar="DIR", help=imp.folder[1])
        for option, default, text in imp.options:
            src.add_argument(option, default=default, help=text)
    parser.add_argument("--out", metavar="TSV", help="manifest to write")
    parser.add_argument("--check", metavar="TSV", help="validate an existing manifest (with its files) instead")
    parser.add_argument("--no-check-files", action="store_true", help="do not open the T1w files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``brainage manifest``: exit 0 and write ``--out``, or exit 1 with one problem per line."""
    parser = _parser()
    args = parser.parse_args(argv)
    for imp in IMPORTERS:
        if imp.folder is not None and imp.given(args) != bool(getattr(args, _dest(imp.folder[0]))):
            parser.error(f"{imp.table[0]} and {imp.folder[0]} go together")
    has_source = any(imp.given(args) for imp in IMPORTERS)
    if args.check and (has_source or args.out):
        parser.error("--check validates an existing manifest; give it alone")
    if not args.check and not (has_source and args.out):
        parser.error(f"give at least one source ({', '.join(imp.table[0] for imp in IMPORTERS)}) and --out")

    if args.out:
        try:
            check_output_file(args.out, "--out")
        except InputError as err:
            return _fail([str(err)], "nothing written")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("brainage manifest: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return _run(args)
    finally:
        log.removeHandler(handler)


def _run(args: argparse.Namespace) -> int:
    check_files = not args.no_check_files
    if args.check:
        try:
            frame = read_manifest(args.check, check_files=check_files)
        except InputError as err:
            return _fail(str(err).splitlines(), "the manifest is not valid")
        print(f"{args.check}: valid, {summary(frame)}")
        return 0

    jobs = [job for imp in IMPORTERS if imp.given(args) for job in imp.read(args)]
    frames, errors = [], []
    for _, job in jobs:  # every source is read, so that all their problems show at once
        try:
            frames.append(job())
        except InputError as err:
            errors += str(err).splitlines()
    if errors:
        # the sources that did import are validated too: one source's error hides no other's
        if frames:
            errors += _problems(_normalise(concat(frames).reset_index(drop=True)), check_files)
        return _fail(errors, f"nothing written to {args.out}")
    try:
        frame = write_manifest(concat(frames), args.out, check_files=check_files)
    except InputError as err:
        return _fail(str(err).splitlines(), f"nothing written to {args.out}")
    print(f"{args.out}: {summary(frame)}")
    return 0


def _fail(problems: list[str], outcome: str) -> int:
    if len(problems) == 1:  # one problem: one line
        print(f"brainage manifest: {problems[0]}; {outcome}", file=sys.stderr)
        return 1
    for line in problems:
        print(line, file=sys.stderr)
    print(f"brainage manifest: {len(problems)} problem{'s' * (len(problems) != 1)}; {outcome}", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
