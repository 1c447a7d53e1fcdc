"""``brainage predict``: the brain age of new raw T1w scans with trained models.

    brainage predict --model results/models/<name>/model.pt --t1w scan.nii.gz [--age 63] [--saliency out.nii.gz]
    brainage predict --model M.pt [--model M2.pt ...] --t1w DIR_OR_SCAN [--t1w ...] [--out preds.tsv]
    brainage predict --model M.pt --manifest participants.tsv --out preds.tsv

This module holds the single-scan parts and the argument parsing; many scans in one process
(one row per scan and model, a TSV) are :mod:`brainage.apply.batch`, which holds the command's
``main`` and runs this module's single form for one scan, one model and no ``--out``.

A scan goes through the same preprocessing as the training data (engine and settings stored in
the model), onto the model's template grid, with the same intensity normalisation; then one
forward pass (and one backward for ``--saliency``). A scan that is already a preprocessed
template-space volume is used as is when it lies on the model's grid and refused, with a clear
message, when it lies on another grid: nothing is silently resampled to a grid the model was not
trained on. Bad input to the single form ends with one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from brainage.core.grids import Grid, template_grid
from brainage.core.intervals import Calibration
from brainage.core.io import InputError
from brainage.models.kinds import kind_named

#: grids a template-space input is recognised on (mm)
KNOWN_GRIDS = (1.0, 1.5, 2.0, 3.0, 4.0)
#: the file names a --t1w folder expands to
SCAN_SUFFIXES = (".nii", ".nii.gz")
#: the participant id the preprocessing's files are named with (a temporary folder per scan)
WORK_ID = "sub-predict"


def read_t1w_header(path: str | Path) -> nib.spatialimages.SpatialImage:
    """The image at ``path`` if it is one 3D volume; InputError (one line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises ImageFileError, ValueError, EOFError, ...
        raise InputError(f"{path}: not a readable image (NIfTI/MGH/Analyze): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")) from None
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        return img
    if len(shape) != 3:
        raise InputError(f"{path}: expected one 3D T1w volume, got a {len(shape)}D image of shape {'x'.join(map(str, shape))}; extract one volume first")
    if min(shape) < 8:
        raise InputError(f"{path}: image of shape {'x'.join(map(str, shape))} is too small to be a T1w brain scan")
    return img


def template_grid_of(img) -> Grid | None:
    """The template grid the image lies on (shape and affine), or None for a native scan."""
    shape = tuple(int(n) for n in img.shape[:3])
    for res in KNOWN_GRIDS:
        grid = template_grid(res)
        if shape == grid.shape and np.allclose(img.affine, grid.affine, atol=1e-3):
            return grid
    return None


def _grid_text(grid: Grid) -> str:
    return f"the {grid.res:g} mm template grid ({'x'.join(map(str, grid.shape))})"


def check_grid(t1w: Path, img, model_grid: Grid, model_name: str) -> bool:
    """True when ``img`` is already on ``model_grid``; InputError when on another template grid."""
    grid = template_grid_of(img)
    if grid is None:
        return False
    if grid.res != model_grid.res:
        raise InputError(
            f"{t1w}: a preprocessed volume on {_grid_text(grid)}, but model {model_name} was trained on "
            f"{_grid_text(model_grid)}; give the raw T1w scan (it is then preprocessed onto the model's grid) "
            f"or use a model trained at {grid.res:g} mm"
        )
    return True


def model_grid(meta: dict) -> Grid:
    """The template grid of a model, from the ``grid_res`` (mm) stored in its ``model.pt``."""
    res = meta.get("grid_res")
    if res is None:
        raise InputError(f"model {meta.get('name', '?')}: model.pt does not record its grid resolution (grid_res)")
    grid = template_grid(float(res))
    shape = meta.get("grid_shape")
    if shape is not None and tuple(int(n) for n in shape) != grid.shape:
        raise InputError(f"model {meta.get('name', '?')}: stored grid shape {tuple(shape)} is not {_grid_text(grid)}")
    return grid


def load_for_prediction(model_path: str | Path):
    """(model on the CPU in eval mode, meta, name) of a model file; InputError (one line) if it cannot be loaded."""
    from brainage.models.files import load_model

    model_path = Path(model_path)
    if not model_path.is_file():
        raise InputError(f"{model_path}: no such model file")
    try:
        model, meta = load_model(model_path, map_location="cpu")
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{model_path}: cannot load the model ({type(err).__name__}: {err})") from None
    return model, meta, meta.get("name", model_path.parent.name)


def preprocess_onto_grids(t1w: Path, settings: dict | None, grids: list[Grid], work_dir: Path,
                          threads: int = 1) -> tuple[dict[float, np.ndarray], dict]:
    """The raw scan preprocessed once as the training data were, onto every grid of ``grids``:
    ({res: (D, H, W) float32}, QC dict).

    ``settings``: the ``preprocess`` config section stored in the model (engine and settings);
    only ``grids`` are written, into ``work_dir``.
    """
    from brainage.core.paths import preprocessed_t1w
    from brainage.preprocess import preprocess_t1w  # heavy (ANTs, deepbet): only when needed

    settings = dict(settings or {})
    engine = settings.get("engine", "native")
    ress = sorted({g.res for g in grids})
    qc = preprocess_t1w(t1w, work_dir, WORK_ID, ress, engine=engine, settings=settings, threads=threads)
    volumes = {}
    for grid in {g.res: g for g in grids}.values():
        img = nib.load(str(preprocessed_t1w(work_dir, WORK_ID, grid.res)))
        if tuple(img.shape[:3]) != grid.shape or not np.allclose(img.affine, grid.affine, atol=1e-3):
            raise InputError(f"{t1w}: preprocessing produced {img.shape} instead of {_grid_text(grid)}")
        volumes[grid.res] = np.asarray(img.dataobj, dtype=np.float32).reshape(grid.shape)
    return volumes, qc


def preprocess_for_model(t1w: Path, meta: dict, grid: Grid, work_dir: Path, threads: int = 1) -> tuple[np.ndarray, dict]:
    """The raw scan preprocessed as the training data were, on ``grid``: ((D, H, W) float32, QC dict)."""
    volumes, qc = preprocess_onto_grids(t1w, meta.get("preprocess"), [grid], work_dir, threads)
    return volumes[grid.res], qc


def check_volume(t1w: Path, volume: np.ndarray) -> np.ndarray:
    """``volume`` if it holds a brain (finite, some voxels above 0); InputError if not."""
    if not np.isfinite(volume).all() or not (volume > 0).any():
        raise InputError(f"{t1w}: the preprocessed volume is empty or not finite")
    return volume


def model_input(volume: np.ndarray, device):
    """The network input of a preprocessed volume: (1, 1, D, H, W), normalised as the training cache."""
    import torch

    from brainage.data.cache import normalise_intensity

    return torch.from_numpy(normalise_intensity(volume))[None, None].to(device)


def forward_age(model, x) -> float:
    """The predicted age of one input (1, 1, D, H, W): one no-grad forward pass."""
    import torch

    with torch.inference_mode():
        return float(model(x).reshape(-1)[0])


def predict_scan(
    model_path: str | Path,
    t1w: str | Path,
    age: float | None = None,
    saliency: str | Path | None = None,
    work_dir: str | Path | None = None,
    device: str = "auto",
    threads: int = 1,
) -> dict:
    """Predicted age (and BAG when ``age`` is given) of one scan; writes ``saliency`` if asked."""
    from brainage.apply.explain import auto_target_layer, grad_ram, template_image
    from brainage.models.files import pick_device
    from brainage.core.io import save_nifti

    t1w, model_path = Path(t1w), Path(model_path)
    if age is not None:
        check_age(age)
    img = read_t1w_header(t1w)  # cheap checks before loading anything heavy
    model, meta, name = load_for_prediction(model_path)
    if saliency is not None and not kind_named(str(meta.get("kind")), str(model_path)).saliency:
        raise InputError(f"{model_path}: {name} is a classical model (no layers): no Grad-RAM saliency")
    grid = model_grid(meta)
    result: dict = {"model": name, "grid_mm": grid.res, "t1w": str(t1w)}
    if check_grid(t1w, img, grid, name):
        volume = np.asarray(img.dataobj, dtype=np.float32).reshape(grid.shape)
        result["preprocessed"] = "input already on the model's template grid"
    else:
        with tempfile.TemporaryDirectory(prefix="brainage-predict-", dir=work_dir) as tmp:
            volume, qc = preprocess_for_model(t1w, meta, grid, Path(tmp), threads=threads)
        result["qc"] = {k: qc[k] for k in ("ncc", "brain_volume_ml", "passed") if k in qc}
    dev = pick_device(device)
    x = model_input(check_volume(t1w, volume), dev)
    model = model.to(dev).eval()
    if saliency is not None:
        # the block the pipeline's `explain.target_layer: auto` takes; one forward + one backward
        maps = grad_ram(model, x, auto_target_layer(model, x.shape[2:]))  # the age: a no-grad pass below
        save_nifti(template_image(maps[0].cpu().numpy(), grid.affine), saliency)
        result["saliency"] = str(saliency)
    result["predicted_age"] = forward_age(model, x)
    calibration = Calibration.from_meta(meta.get("interval"))
    if calibration is not None:
        lower, upper = calibration.bounds([result["predicted_age"]])
        result["interval"] = {"level": calibration.level, "lower": float(lower[0]), "upper": float(upper[0])}
    if age is not None:
        result["age"] = float(age)
        result["bag"] = result["predicted_age"] - float(age)
    return result


def check_age(age: float, what: str = "--age") -> float:
    """``age`` if it is a chronological age in the manifest's range (0-120 y); InputError if not."""
    from brainage.data.manifest import AGE_RANGE

    if not (np.isfinite(age) and AGE_RANGE[0] <= age <= AGE_RANGE[1]):
        raise InputError(f"{what} {age:g} is outside {AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} years; give the age at the scan")
    return float(age)


def scan_files(t1w: list[str]) -> list[Path]:
    """The scans ``--t1w`` names: each file as given, each folder as its ``*.nii`` / ``*.nii.gz``
    files (sorted); a file named twice counts once. InputError for a path that does not exist or a
    folder without scans."""
    found: list[Path] = []
    for given in t1w:
        path = Path(given)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(SCAN_SUFFIXES))
            if not inside:
                raise InputError(f"--t1w {given}: a folder without .nii or .nii.gz files")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"--t1w {given}: no such file or folder")
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]


def is_single_form(args: argparse.Namespace) -> bool:
    """One --t1w naming one file, one --model, no --manifest and no --out: today's printed form."""
    return (args.manifest is None and args.out is None and len(args.model) == 1 and len(args.t1w or []) == 1
            and not Path(args.t1w[0]).is_dir())


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument checked before any work (InputError, one line): files, ranges, device, outputs."""
    from brainage.models.files import pick_device
    from brainage.core.io import check_output_dir, check_output_file

    if args.age is not None:
        check_age(args.age)
    if args.threads < 1:
        raise InputError(f"--threads {args.threads} must be at least 1")
    if (args.manifest is None) == (not args.t1w):
        raise InputError("give the scans either with --t1w (files or folders, repeatable) or with --manifest, not both"
                         if args.t1w else "give the scans to predict: --t1w scan.nii.gz (or a folder), or --manifest participants.tsv")
    for model in args.model:
        if not Path(model).is_file():
            raise InputError(f"{model}: no such model file" + (" (it is a folder)" if Path(model).is_dir() else ""))
    if len({Path(m).resolve() for m in args.model}) < len(args.model):
        raise InputError("--model: the same model file is given twice")
    if is_single_form(args):
        read_t1w_header(args.t1w[0])
    elif args.t1w:
        if len(scan_files(args.t1w)) > 1 and args.age is not None:
            raise InputError("--age is one scan's age; for many scans give each age in a --manifest (column age)")
    elif not Path(args.manifest).is_file():
        raise InputError(f"--manifest {args.manifest}: no such file")
    elif args.age is not None:
        raise InputError("--age and --manifest: the manifest's age column gives the ages")
    if args.saliency is not None:
        if not is_single_form(args):
            raise InputError("--saliency takes one scan and one model (no --out, no --manifest); "
                             "for a cohort's maps run the pipeline's explain stage")
        if not str(args.saliency).endswith((".nii", ".nii.gz")):
            raise InputError(f"--saliency {args.saliency}: give a NIfTI file name ending in .nii.gz")
        check_output_file(args.saliency, "--saliency")
    if args.out is not None:
        check_output_file(args.out, "--out")
    if args.work_dir is not None:
        check_output_dir(args.work_dir, "--work-dir")
    pick_device(args.device)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``brainage predict`` (every form)."""
    parser = argparse.ArgumentParser(
        prog="brainage predict", description="Predict the brain age of new raw T1w scans with trained models: one scan "
        "(printed), or many (a folder, repeated --t1w, or a --manifest; one TSV row per scan and model).")
    parser.add_argument("--model", required=True, action="append",
                        help="results/models/<name>/model.pt; repeat it to run several models on each scan")
    parser.add_argument("--t1w", action="append", default=None,
                        help="raw T1w scan (NIfTI), a preprocessed volume on the model's template grid, or a folder "
                        "(its *.nii and *.nii.gz files); repeatable")
    parser.add_argument("--manifest", default=None, help="participants TSV (participant_id, t1w, age, ...): "
                        "relative t1w paths are relative to the manifest's folder")
    parser.add_argument("--out", default=None, help="write the predictions TSV here (default for many scans: stdout)")
    parser.add_argument("--age", type=float, default=None, help="chronological age in years (one scan): also the brain-age gap")
    parser.add_argument("--saliency", default=None, help="write the Grad-RAM map (NIfTI, template space) here (one scan, one model)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for preprocessing (default 1)")
    parser.add_argument("--work-dir", default=None, help="where the temporary preprocessing folders go (default: system temp)")
    return parser.parse_args(argv)


def run_single(args: argparse.Namespace) -> int:
    """The single form: one scan, one model, the result printed (stdout) or one line of why not (stderr)."""
    try:
        result = predict_scan(args.model[0], args.t1w[0], args.age, args.saliency, args.work_dir, args.device, args.threads)
    except InputError as err:
        print(f"brainage predict: {err}", file=sys.stderr)
        return 1
    print(f"model: {result['model']} ({result['grid_mm']:g} mm grid)")
    if "qc" in result:
        qc = result["qc"]
        status = "passed" if qc.get("passed", True) else "FAILED (the estimate is unreliable; look at the registration)"
        print(f"preprocessing QC: NCC {qc.get('ncc', float('nan')):.3f}, brain {qc.get('brain_volume_ml', float('nan')):.0f} ml, {status}")
    print(f"predicted brain age: {result['predicted_age']:.1f} years")
    if "interval" in result:
        band = result["interval"]
        print(f"{100 * band['level']:g} % interval: {band['lower']:.1f} to {band['upper']:.1f} years "
              f"(split-conformal, from the model's held-out residuals)")
    if "bag" in result:
        print(f"chronological age: {result['age']:.1f} years; brain-age gap (BAG): {result['bag']:+.1f} years")
    if "saliency" in result:
        print(f"saliency map: {result['saliency']}")
    return 0
