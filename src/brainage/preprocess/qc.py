"""Quality control of preprocessing: per-subject metrics and figure, cohort table and montage.

Per subject: normalised cross-correlation (NCC, Pearson r) between the registered brain and
the template inside the template's brain mask, brain volume from the native mask, the scales
and determinant of the affine, N4 convergence, runtime; a PNG with the registered brain in
three planes and the template brain outline over it. Cohort: ``qc.tsv`` (one row per subject),
``excluded.tsv`` (subjects failing the thresholds, with the reason) and a montage of the
subjects' axial slices with their outlines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.core.io import save_figure, write_tsv


@dataclass(frozen=True)
class QCThresholds:
    """A subject passes QC when every metric lies within these bounds (config ``preprocess.qc``).

    Scales are the singular values of the native-to-template affine (template size over head
    size per principal axis). Measured on 89 real IXI heads (benchmarks/qc_real_heads.py):
    NCC 0.51-0.61 for correct registrations, 0.31-0.42 for the same brains moved 8 mm or turned
    10 degrees; scales 0.96-1.33; brain volume 1164-1748 ml (docs/measurements.md).
    """

    min_ncc: float = 0.45
    min_brain_volume_ml: float = 800.0
    max_brain_volume_ml: float = 2200.0
    min_scale: float = 0.7
    max_scale: float = 1.5


def ncc(volume: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of ``volume`` and ``reference`` over the voxels of ``mask`` (same grid)."""
    a = volume[mask].astype(np.float64)
    b = reference[mask].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def affine_summary(native_to_template: np.ndarray) -> dict:
    """Determinant, scales (singular values, descending) and rotation angle of a 4 x 4 affine."""
    linear = native_to_template[:3, :3]
    u, s, vt = np.linalg.svd(linear)
    rotation = u @ vt
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))
    return {"determinant": float(np.linalg.det(linear)), "scales": [float(x) for x in s], "rotation_deg": angle}


def qc_failures(metrics: dict, thresholds: QCThresholds) -> list[str]:
    """Human-readable reasons why ``metrics`` fail ``thresholds`` (empty list: passed)."""
    reasons = []
    if not metrics["ncc"] >= thresholds.min_ncc:
        reasons.append(f"ncc {metrics['ncc']:.3f} < {thresholds.min_ncc}")
    vol = metrics["brain_volume_ml"]
    if not thresholds.min_brain_volume_ml <= vol <= thresholds.max_brain_volume_ml:
        reasons.append(f"brain volume {vol:.0f} ml outside [{thresholds.min_brain_volume_ml:g}, {thresholds.max_brain_volume_ml:g}]")
    scales = metrics["affine"]["scales"]
    if min(scales) < thresholds.min_scale or max(scales) > thresholds.max_scale:
        reasons.append(f"affine scales {min(scales):.2f}-{max(scales):.2f} outside [{thresholds.min_scale:g}, {thresholds.max_scale:g}]")
    return reasons


def _planes(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Sagittal, coronal and axial slices of an RAS-ordered volume, oriented for display."""
    x, y, z = centre
    return [np.rot90(volume[x, :, :]), np.rot90(volume[:, y, :]), np.rot90(volume[:, :, z])]


#: MNI point the QC planes pass through: the midline, the ventricles and the basal ganglia
QC_CENTRE_MM = (0.0, -18.0, 18.0)


def qc_figure(registered: np.ndarray, template_mask: np.ndarray, affine: np.ndarray, title: str, path: str | Path) -> None:
    """Three planes of the registered brain (template grid ``affine``) with the template brain outline in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ijk = np.linalg.inv(affine) @ np.array([*QC_CENTRE_MM, 1.0])
    centre = tuple(int(np.clip(round(c), 0, n - 1)) for c, n in zip(ijk[:3], registered.shape))
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    vmax = float(np.percentile(registered[template_mask], 99.5)) if template_mask.any() else 1.0
    names = [f"sagittal x={QC_CENTRE_MM[0]:g}", f"coronal y={QC_CENTRE_MM[1]:g}", f"axial z={QC_CENTRE_MM[2]:g}"]
    for ax, img, msk, name in zip(axes, _planes(registered, centre), _planes(template_mask.astype(float), centre), names):
        ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        ax.contour(msk, levels=[0.5], colors="red", linewidths=0.7)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
    plt.close(fig)


def read_qc_jsons(paths: list[str | Path]) -> pd.DataFrame:
    """One row per subject QC json: id, passed, reasons, ncc, volume, affine and N4 summaries."""
    rows = []
    nan = float("nan")
    for path in paths:
        q = json.loads(Path(path).read_text())
        affine = q.get("affine") or {}  # None for a subject excluded as bad input (no registration)
        scales = affine.get("scales") or [nan]
        rows.append({
            "participant_id": q["participant_id"],
            "passed": bool(q["passed"]),
            "reason": "; ".join(q.get("reasons", [])) or "n/a",
            "ncc": nan if q.get("ncc") is None else q["ncc"],
            "brain_volume_ml": nan if q.get("brain_volume_ml") is None else q["brain_volume_ml"],
            "determinant": affine.get("determinant", nan),
            "min_scale": min(scales),
            "max_scale": max(scales),
            "rotation_deg": affine.get("rotation_deg", nan),
            "n4_converged": q.get("n4", {}).get("converged", "n/a"),
            "engine": q.get("engine", "n/a"),
            "runtime_s": q.get("runtime_s", float("nan")),
        })
    return pd.DataFrame(rows).sort_values("participant_id", kind="stable").reset_index(drop=True)


def judge_qc(table: pd.DataFrame, qc_jsons: list[str | Path], thresholds: QCThresholds) -> pd.DataFrame:
    """``table`` (:func:`read_qc_jsons`) with ``passed`` and ``reason`` judged again from each
    json's metrics against ``thresholds``; subjects excluded as bad input stay excluded.

    The cohort table is the verdict: a threshold changed after preprocessing (set from what a
    cohort's heads measure) applies without preprocessing any subject again.
    """
    table = table.set_index("participant_id")
    for path in qc_jsons:
        q = json.loads(Path(path).read_text())
        if not q.get("excluded"):
            reasons = qc_failures(q, thresholds)
            table.loc[q["participant_id"], ["passed", "reason"]] = [not reasons, "; ".join(reasons) or "n/a"]
    table = table.reset_index()
    table["passed"] = table["passed"].astype(bool)
    return table


def write_cohort_qc(qc_jsons: list[str | Path], qc_tsv: str | Path, excluded_tsv: str | Path,
                    montage_png: str | Path | None = None, volumes: list[str | Path] | None = None,
                    on_fail: str = "exclude", thresholds: QCThresholds | None = None) -> pd.DataFrame:
    """Cohort QC: ``qc.tsv``, ``excluded.tsv`` (participant_id, reason) and an optional montage.

    ``volumes``: each subject's registered volume (any template grid), in the order of
    ``qc_jsons``, for the montage. ``thresholds``: judge every subject against these
    (:func:`judge_qc`; None: the verdict each json recorded). ``on_fail="stop"`` raises after
    writing the tables when any subject failed, so the run stops before later stages use the cohort.
    """
    table = read_qc_jsons(qc_jsons)
    if thresholds is not None:
        table = judge_qc(table, qc_jsons, thresholds)
    write_tsv(qc_tsv, table)
    excluded = table.loc[~table["passed"], ["participant_id", "reason"]]
    write_tsv(excluded_tsv, excluded)
    if montage_png is not None and volumes is not None:
        qc_montage(table, qc_jsons, volumes, montage_png)
    if on_fail == "stop" and len(excluded):
        from brainage.core.io import InputError

        first = excluded.iloc[0]
        raise InputError(
            f"{len(excluded)} subject(s) failed preprocessing QC (preprocess.qc.on_fail: stop), "
            f"e.g. {first.participant_id}: {first.reason}; see {excluded_tsv}"
        )
    return table


def qc_montage(table: pd.DataFrame, qc_jsons: list, volumes: list, path: str | Path, max_subjects: int = 120) -> None:
    """Axial mid-slices of every subject (up to ``max_subjects``) with the template outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    from brainage.data.atlases import load_template_1mm
    from brainage.core.grids import downsample_from_1mm

    ids = [json.loads(Path(p).read_text())["participant_id"] for p in qc_jsons]
    passed = dict(zip(table["participant_id"], table["passed"]))
    n = min(len(volumes), max_subjects)
    cols = int(np.ceil(np.sqrt(n * 1.5))) or 1
    rows = int(np.ceil(n / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows), squeeze=False)
    _, mask_1mm = load_template_1mm()
    outlines: dict[tuple, np.ndarray] = {}
    for ax in axes.ravel():
        ax.axis("off")
    for ax, sid, vpath in zip(axes.ravel(), ids[:n], volumes[:n]):
        img = nib.load(str(vpath))
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.shape not in outlines:
            res = float(img.header.get_zooms()[0])
            outlines[data.shape] = downsample_from_1mm(mask_1mm.astype(np.float32), res) >= 0.5
        z = int(round(data.shape[2] * 96 / 193))
        ax.imshow(np.rot90(data[:, :, z]), cmap="gray", interpolation="nearest")
        ax.contour(np.rot90(outlines[data.shape][:, :, z].astype(float)), levels=[0.5], colors="red", linewidths=0.4)
        ax.set_title(sid, fontsize=5, color="black" if passed.get(sid, True) else "red")
    # the grid fills the figure (matplotlib's default top margin left a band of white above it)
    height = 1.5 * rows
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1.0 - 0.35 / height, wspace=0.05, hspace=0.3)
    fig.suptitle("preprocessing QC: axial z=18 with template brain outline (red titles: excluded)", fontsize=7,
                 y=1.0 - 0.08 / height)
    save_figure(fig, path)
    plt.close(fig)
