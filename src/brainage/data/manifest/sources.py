"""What every importer shares: reading a source table, finding its columns, its folder and each
scan, the one duplicate policy, the one warning for rows without a scan, and the importer rows
as a manifest frame."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.core.io import InputError
from brainage.data.manifest.cells import _is_missing, _number, _same
from brainage.data.manifest.schema import COLUMNS, NA_VALUES, SCORE_RANGES

# One logger for the whole package, under the name the single module had: `brainage manifest`
# prints its records and callers capture them by that name.
log = logging.getLogger("brainage.data.manifest")


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
