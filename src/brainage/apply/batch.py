"""``brainage predict`` on many scans in one process: one TSV row per scan and model.

    brainage predict --model M.pt [--model M2.pt ...] --t1w DIR_OR_SCAN [--t1w ...] [--age 63] [--out preds.tsv]
    brainage predict --model M.pt --manifest participants.tsv --out preds.tsv

Scans: each ``--t1w`` file, each ``--t1w`` folder's ``*.nii`` / ``*.nii.gz`` files (sorted), or the
rows of a ``--manifest`` (the pipeline's participants table, read by
:func:`brainage.core.io.read_participants`, with a ``t1w`` column; relative t1w paths are relative to
the manifest's folder). The models are loaded once; each scan is read and preprocessed once onto
every grid the models need (:func:`brainage.apply.predict.preprocess_onto_grids`, the single form's
own code; twice only in the case :func:`preprocessing_groups` explains), then every model runs on
it exactly as the single form does (same normalisation, same forward pass: the same age to the
float). Models whose stored preprocessing differs (engine, brain mask, N4, registration, QC
settings) cannot share one preprocessing and are refused, in one line, before any scan is read.

Columns (``n/a`` where a value does not apply): participant_id (with a manifest), file, age (when
known: the manifest's, or ``--age`` for one scan), model, predicted_age, predicted_age_lower,
predicted_age_upper, interval_level (the model's split-conformal interval,
``meta["interval"]``; n/a for a model without one), bag (when the age is known), qc_passed,
qc_ncc, brain_volume_ml (preprocessing QC; n/a for an input already on the template grid), error
and note.

Failures: a scan that cannot be read or preprocessed (corrupt or truncated file, not 3D,
registration error, ...) gives rows with ``error`` (one line) and no prediction; a model that
cannot run on a scan (a preprocessed input on another template grid) gives that row's error. A
scan that is preprocessed but fails QC is predicted all the same, as the single form does:
``qc_passed`` is False and ``note`` says why; its ``error`` stays empty. No scan stops the batch.
Progress is one line per scan on stderr, and the last line says how many scans were predicted and
how many failed; the exit status is 0 when at least one scan was predicted. Without ``--out`` the
table goes to stdout.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from brainage.apply.predict import (
    check_age, check_arguments, check_grid, check_volume, forward_age, is_single_form, load_for_prediction,
    model_grid, model_input, parse_arguments, preprocess_onto_grids, read_t1w_header, run_single, scan_files,
    template_grid_of, WORK_ID,
)
from brainage.core.grids import Grid
from brainage.core.intervals import Calibration
from brainage.core.io import InputError, read_participants, write_tsv

#: the table's columns, in order (participant_id only with a manifest, age and bag only when an age is known)
COLUMNS = ("participant_id", "file", "age", "model", "predicted_age", "predicted_age_lower", "predicted_age_upper",
           "interval_level", "bag", "qc_passed", "qc_ncc", "brain_volume_ml", "error", "note")


@dataclass(frozen=True)
class Scan:
    """One scan to predict: its file (None: the manifest row gives none), id and age when known."""

    file: Path | None
    participant_id: str | None = None
    age: float | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded once for the whole batch, on its device, with what its rows need."""

    path: Path
    label: str
    model: object
    meta: dict
    grid: Grid
    calibration: Calibration | None


def scans_from_manifest(path: str | Path) -> list[Scan]:
    """The scans of a participants table: one per row, its t1w relative to the table's folder."""
    path = Path(path)
    try:
        frame = read_participants(path)
    except InputError:
        raise
    except Exception as err:  # pandas: ParserError, UnicodeDecodeError, EmptyDataError, ...
        raise InputError(f"--manifest {path}: not a readable TSV table ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if "t1w" not in frame.columns:
        raise InputError(f"{path}: participants table lacks column t1w (the path of each T1w scan)")
    if frame.empty:
        raise InputError(f"{path}: the manifest has no participants")
    scans = []
    for pid, t1w, age in zip(frame["participant_id"], frame["t1w"], frame["age"]):
        pid = None if not isinstance(pid, str) else pid
        age = None if age is None or (isinstance(age, float) and math.isnan(age)) else float(age)
        if age is not None:
            check_age(age, f"{path}: {pid}: age")
        file = Path(str(t1w).strip()) if isinstance(t1w, str) and t1w.strip() else None
        if file is not None and not file.is_absolute():
            file = path.parent / file
        scans.append(Scan(file, pid, age))
    return scans


def list_scans(args: argparse.Namespace) -> list[Scan]:
    """The scans the arguments name (``--t1w`` files and folders, or ``--manifest``)."""
    if args.manifest is not None:
        return scans_from_manifest(args.manifest)
    files = scan_files(args.t1w)
    return [Scan(f, None, args.age if len(files) == 1 else None) for f in files]


def load_models(paths: list[str], device) -> list[LoadedModel]:
    """Every model loaded once, on ``device``; a model name shared by two files is shown as its path."""
    loaded = []
    for path in paths:
        model, meta, name = load_for_prediction(path)
        loaded.append(LoadedModel(Path(path), name, model.to(device).eval(), meta, model_grid(meta),
                                  Calibration.from_meta(meta.get("interval"))))
    names = [m.label for m in loaded]
    return [replace(m, label=str(m.path)) if names.count(m.label) > 1 else m for m in loaded]


def preprocessing_key(meta: dict) -> dict:
    """What decides a scan's preprocessing in a model's stored ``preprocess`` section: the engine and
    its settings (the grids, batching and QC policy do not change a scan's volume)."""
    from brainage.preprocess.settings import settings_from_config

    section = dict(meta.get("preprocess") or {})
    engine = section.get("engine", "native")
    try:
        key = {"engine": engine, **settings_from_config(section)}
    except ValueError as err:
        raise InputError(f"model {meta.get('name', '?')}: {err}") from None
    if engine == "minc":
        key["minc"] = section.get("minc")
    return key


def check_shared_preprocessing(models: list[LoadedModel]) -> None:
    """InputError (one line) unless every model was trained on the same preprocessing."""
    first = preprocessing_key(models[0].meta)
    for other in models[1:]:
        key = preprocessing_key(other.meta)
        differ = [k for k in first if first[k] != key.get(k)]
        if differ:
            raise InputError(
                f"--model {models[0].path} and {other.path} were trained on different preprocessing "
                f"({', '.join(differ)} settings differ); a scan is preprocessed once for all models: "
                f"predict with them in separate commands")


def _one_line(err: BaseException, scan: Scan) -> str:
    """Why a scan has no prediction, in one line (without the file name: the row has it)."""
    text = str(err).splitlines()[0] if str(err).strip() else ""
    text = text.removeprefix(f"{WORK_ID}: ").removeprefix(f"{scan.file}: ")
    return text if isinstance(err, InputError) else f"{type(err).__name__}: {text}".rstrip(": ")


def preprocessing_groups(grids: list[Grid], voxel_mm: float) -> list[list[Grid]]:
    """The grids of one scan's preprocessing runs: one run for all grids, unless the single form,
    one grid at a time, resamples a grid from another base resolution for a scan this coarse.

    The native engine resamples onto a base grid and block-averages every asked grid from it
    (:func:`brainage.preprocess.finish.base_resolution`); the base depends on the grids asked.
    For 1-1.5 mm scans it is 1 mm for any grids, but a 2 mm scan preprocessed for a 1 mm and a
    2 mm model at once gets its 2 mm volume from the 1 mm base, where alone it comes straight
    from B-splines at 2 mm: ages 0.01 y apart on a real IXI head. Grouping by each grid's own
    base keeps the batch's ages the single form's, to the float, at the cost of a second run in
    that case only.
    """
    from brainage.preprocess.finish import base_resolution

    groups: dict[float, list[Grid]] = {}
    for grid in {g.res: g for g in grids}.values():
        groups.setdefault(base_resolution([grid.res], voxel_mm), []).append(grid)
    return list(groups.values())


def prepare_scan(scan: Scan, models: list[LoadedModel], work_dir, threads: int):
    """(image header, {grid res: volume}, QC dict or None) of one scan: preprocessed once onto every
    model's grid (:func:`preprocessing_groups`), or used as is when it is already a template-grid
    volume (QC None)."""
    if scan.file is None:
        raise InputError(f"{scan.participant_id}: the manifest gives no t1w path")
    img = read_t1w_header(scan.file)
    on = template_grid_of(img)
    if on is not None:
        return img, {on.res: np.asarray(img.dataobj, dtype=np.float32).reshape(on.shape)}, None
    voxel_mm = float(max(np.linalg.norm(img.affine[:3, :3], axis=0)))  # as the native engine measures it
    volumes, qcs = {}, []
    for grids in preprocessing_groups([m.grid for m in models], voxel_mm):
        with tempfile.TemporaryDirectory(prefix="brainage-predict-", dir=work_dir) as tmp:
            done, qc = preprocess_onto_grids(scan.file, models[0].meta.get("preprocess"), grids, Path(tmp), threads)
        volumes.update(done)
        qcs.append(qc)
    return img, volumes, qcs[0]


def _row(scan: Scan, m: LoadedModel, predicted: float | None = None, qc: dict | None = None,
         error: str | None = None, note: str | None = None) -> dict:
    lower = upper = level = None
    if predicted is not None and m.calibration is not None:
        lo, up = m.calibration.bounds(predicted)
        lower, upper, level = float(lo), float(up), m.calibration.level
    qc = qc or {}
    return {
        "participant_id": scan.participant_id, "file": None if scan.file is None else str(scan.file),
        "age": scan.age, "model": m.label, "predicted_age": predicted, "predicted_age_lower": lower,
        "predicted_age_upper": upper, "interval_level": level,
        "bag": predicted - scan.age if predicted is not None and scan.age is not None else None,
        "qc_passed": qc.get("passed"), "qc_ncc": qc.get("ncc"), "brain_volume_ml": qc.get("brain_volume_ml"),
        "error": error, "note": note,
    }


def predict_one_scan(scan: Scan, models: list[LoadedModel], device, work_dir=None, threads: int = 1) -> list[dict]:
    """The rows of one scan, one per model: predictions, or the reason (``error``) there is none."""
    try:
        img, volumes, qc = prepare_scan(scan, models, work_dir, threads)
    except Exception as err:  # any failure of this scan is its rows' error, never the batch's end
        return [_row(scan, m, error=_one_line(err, scan)) for m in models]
    note = None
    if qc is None:
        note = "input already on the template grid: used as is (not preprocessed)"
    elif not qc.get("passed", True):
        reasons = "; ".join(qc.get("reasons") or []) or "see its QC"
        note = f"preprocessing QC failed ({reasons}): the estimate is unreliable; look at the registration"
    rows = []
    for m in models:
        try:
            if qc is None:
                check_grid(scan.file, img, m.grid, m.label)
            predicted = forward_age(m.model, model_input(check_volume(scan.file, volumes[m.grid.res]), device))
        except Exception as err:
            rows.append(_row(scan, m, qc=qc, error=_one_line(err, scan), note=note))
        else:
            rows.append(_row(scan, m, predicted, qc, note=note))
    return rows


def predict_many(scans: list[Scan], models: list[LoadedModel], device, work_dir=None, threads: int = 1,
                 progress: bool = True):
    """The predictions table of every scan and model (a DataFrame, :data:`COLUMNS`); with
    ``progress``, one line per scan on stderr."""
    import pandas as pd

    rows: list[dict] = []
    for i, scan in enumerate(scans, 1):
        started = time.perf_counter()
        mine = predict_one_scan(scan, models, device, work_dir, threads)
        rows += mine
        if progress:
            name = scan.file.name if scan.file is not None else scan.participant_id
            errors = [r["error"] for r in mine if r["error"]]
            status = (f": failed: {errors[0]}" if len(errors) == len(mine) else
                      ": QC failed" if mine[0]["qc_passed"] is False else "")
            print(f"[{i}/{len(scans)}] {name} {time.perf_counter() - started:.1f} s{status}", file=sys.stderr, flush=True)
    columns = [c for c in COLUMNS if not (
        (c == "participant_id" and all(s.participant_id is None for s in scans))
        or (c in ("age", "bag") and all(s.age is None for s in scans)))]
    return pd.DataFrame(rows, columns=list(COLUMNS))[columns]


def summary(frame, n_models: int, out: str | None) -> tuple[str, int]:
    """The last line on stderr and the exit status: 0 when at least one scan was predicted.
    ``frame``: :func:`predict_many`'s table, ``n_models`` consecutive rows per scan."""
    per_scan = (lambda flags: flags.to_numpy(dtype=bool).reshape(-1, n_models).any(axis=1))
    ok = per_scan(frame["predicted_age"].notna())
    n, predicted = len(ok), int(ok.sum())
    qc_failed = int(per_scan(frame["qc_passed"].eq(False)).sum())
    where = f"the error column of {out}" if out else "the error column"
    text = f"brainage predict: {predicted} of {n} scan(s) predicted, {n - predicted} failed"
    text += f" (see {where})" if predicted < n else ""
    text += f"; {qc_failed} failed preprocessing QC (predicted; see the note column)" if qc_failed else ""
    return text, 0 if predicted else 1


def run_batch(args: argparse.Namespace) -> int:
    """The batch form: scans and models checked up front (one line if not), then every scan."""
    from brainage.models.files import pick_device

    try:
        scans = list_scans(args)
        device = pick_device(args.device)
        models = load_models(args.model, device)
        check_shared_preprocessing(models)
    except InputError as err:
        print(f"brainage predict: {err}", file=sys.stderr)
        return 1
    frame = predict_many(scans, models, device, args.work_dir, args.threads)
    if args.out is not None:
        write_tsv(args.out, frame)
    else:
        frame.to_csv(sys.stdout, sep="\t", index=False, na_rep="n/a")
    text, status = summary(frame, len(models), args.out)
    print(text, file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """``brainage predict``: one scan printed (:func:`brainage.apply.predict.run_single`), or many
    scans and models as a table (:func:`run_batch`)."""
    args = parse_arguments(argv)
    try:
        check_arguments(args)
    except InputError as err:
        print(f"brainage predict: {err}", file=sys.stderr)
        return 1
    return run_single(args) if is_single_form(args) else run_batch(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
