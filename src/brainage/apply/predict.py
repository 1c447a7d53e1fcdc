"""``brainage predict``: the brain age of one new raw T1w scan with a trained model.

    brainage predict --model results/models/<name>/model.pt --t1w scan.nii.gz [--age 63] [--saliency out.nii.gz]

The scan goes through the same preprocessing as the training data (engine and settings
stored in the model), onto the model's template grid, with the same intensity
normalisation; then one forward pass (and one backward for ``--saliency``). A scan that is
already a preprocessed template-space volume is used as is when it lies on the model's grid
and refused, with a clear message, when it lies on another grid: nothing is silently
resampled to a grid the model was not trained on. Bad input ends with one line on stderr
and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from brainage.core.grids import Grid, template_grid
from brainage.core.io import InputError
from brainage.models.kinds import kind_named

#: grids a template-space input is recognised on (mm)
KNOWN_GRIDS = (1.0, 1.5, 2.0, 3.0, 4.0)


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


def preprocess_for_model(t1w: Path, meta: dict, grid: Grid, work_dir: Path, threads: int = 1) -> tuple[np.ndarray, dict]:
    """The raw scan preprocessed as the training data were, on ``grid``: ((D, H, W) float32, QC dict).

    Engine and settings are the ``preprocess`` config section stored in the model; only the
    model's grid is written.
    """
    from brainage.core.paths import preprocessed_t1w
    from brainage.preprocess import preprocess_t1w  # heavy (ANTs, deepbet): only when needed

    settings = dict(meta.get("preprocess") or {})
    engine = settings.get("engine", "native")
    participant_id = "sub-predict"
    qc = preprocess_t1w(t1w, work_dir, participant_id, [grid.res], engine=engine, settings=settings, threads=threads)
    path = preprocessed_t1w(work_dir, participant_id, grid.res)
    img = nib.load(str(path))
    if tuple(img.shape[:3]) != grid.shape or not np.allclose(img.affine, grid.affine, atol=1e-3):
        raise InputError(f"{t1w}: preprocessing produced {img.shape} instead of {_grid_text(grid)}")
    return np.asarray(img.dataobj, dtype=np.float32).reshape(grid.shape), qc


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
    import torch

    from brainage.data.cache import normalise_intensity
    from brainage.apply.explain import auto_target_layer, grad_ram, template_image
    from brainage.models.files import load_model, pick_device
    from brainage.core.io import save_nifti

    t1w, model_path = Path(t1w), Path(model_path)
    if age is not None:
        check_age(age)
    img = read_t1w_header(t1w)  # cheap checks before loading anything heavy
    if not model_path.is_file():
        raise InputError(f"{model_path}: no such model file")
    try:
        model, meta = load_model(model_path, map_location="cpu")
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{model_path}: cannot load the model ({type(err).__name__}: {err})") from None
    name = meta.get("name", model_path.parent.name)
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
    if not np.isfinite(volume).all() or not (volume > 0).any():
        raise InputError(f"{t1w}: the preprocessed volume is empty or not finite")
    dev = pick_device(device)
    x = torch.from_numpy(normalise_intensity(volume))[None, None].to(dev)
    model = model.to(dev).eval()
    if saliency is not None:
        # the block the pipeline's `explain.target_layer: auto` takes; one forward + one backward
        maps = grad_ram(model, x, auto_target_layer(model, x.shape[2:]))  # the age: a no-grad pass below
        save_nifti(template_image(maps[0].cpu().numpy(), grid.affine), saliency)
        result["saliency"] = str(saliency)
    with torch.inference_mode():
        result["predicted_age"] = float(model(x).reshape(-1)[0])
    if age is not None:
        result["age"] = float(age)
        result["bag"] = result["predicted_age"] - float(age)
    return result


def check_age(age: float) -> float:
    """``age`` if it is a chronological age in the manifest's range (0-120 y); InputError if not."""
    from brainage.data.manifest import AGE_RANGE

    if not (np.isfinite(age) and AGE_RANGE[0] <= age <= AGE_RANGE[1]):
        raise InputError(f"--age {age:g} is outside {AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} years; give the age at the scan")
    return float(age)


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument checked before any work (InputError, one line): files, ranges, device, outputs."""
    from brainage.models.files import pick_device
    from brainage.core.io import check_output_dir, check_output_file

    if args.age is not None:
        check_age(args.age)
    if args.threads < 1:
        raise InputError(f"--threads {args.threads} must be at least 1")
    if not Path(args.model).is_file():
        raise InputError(f"{args.model}: no such model file" + (" (it is a folder)" if Path(args.model).is_dir() else ""))
    read_t1w_header(args.t1w)
    if args.saliency is not None:
        if not str(args.saliency).endswith((".nii", ".nii.gz")):
            raise InputError(f"--saliency {args.saliency}: give a NIfTI file name ending in .nii.gz")
        check_output_file(args.saliency, "--saliency")
    if args.work_dir is not None:
        check_output_dir(args.work_dir, "--work-dir")
    pick_device(args.device)


def main(argv: list[str] | None = None) -> int:
    """``brainage predict``: brain age of one raw T1w scan (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="brainage predict", description="Predict the brain age of a new raw T1w scan with a trained model.")
    parser.add_argument("--model", required=True, help="results/models/<name>/model.pt")
    parser.add_argument("--t1w", required=True, help="raw T1w scan (NIfTI), or a preprocessed volume on the model's template grid")
    parser.add_argument("--age", type=float, default=None, help="chronological age in years: also print the brain-age gap")
    parser.add_argument("--saliency", default=None, help="write the Grad-RAM map (NIfTI, template space) here")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for preprocessing (default 1)")
    parser.add_argument("--work-dir", default=None, help="where the temporary preprocessing folder goes (default: system temp)")
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
        result = predict_scan(args.model, args.t1w, args.age, args.saliency, args.work_dir, args.device, args.threads)
    except InputError as err:
        print(f"brainage predict: {err}", file=sys.stderr)
        return 1
    print(f"model: {result['model']} ({result['grid_mm']:g} mm grid)")
    if "qc" in result:
        qc = result["qc"]
        status = "passed" if qc.get("passed", True) else "FAILED (the estimate is unreliable; look at the registration)"
        print(f"preprocessing QC: NCC {qc.get('ncc', float('nan')):.3f}, brain {qc.get('brain_volume_ml', float('nan')):.0f} ml, {status}")
    print(f"predicted brain age: {result['predicted_age']:.1f} years")
    if "bag" in result:
        print(f"chronological age: {result['age']:.1f} years; brain-age gap (BAG): {result['bag']:+.1f} years")
    if "saliency" in result:
        print(f"saliency map: {result['saliency']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
