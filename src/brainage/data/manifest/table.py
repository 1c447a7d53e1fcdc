"""The manifest as a table: several joined into one, validated (every problem at once, one line
each with row and column), written only when valid, read back and summarised."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.core.io import InputError, write_tsv
from brainage.data.manifest.cells import _text
from brainage.data.manifest.ids import _PARTICIPANT_ID
from brainage.data.manifest.schema import AGE_RANGE, COHORTS, COLUMNS, NA_VALUES, REQUIRED, SCORE_RANGES, SEXES
from brainage.data.manifest.sources import _read_table


def concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Several manifests as one (manifest columns first, in order; extra columns kept after)."""
    frames = [f for f in frames if f is not None]
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    joined = pd.concat([f.astype(object) for f in frames], ignore_index=True, sort=False)
    extra = [c for c in joined.columns if c not in COLUMNS]
    return joined.reindex(columns=list(COLUMNS) + extra)


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
