"""Files of the simulated cohort: per-subject scan and truth, BIDS sidecars, truth tables, figure.

Per subject (``{pid}``):
    bids/{pid}/anat/{pid}_T1w.nii.gz                                   raw scan (int16, site grid)
    truth/{pid}/{pid}_desc-brain_mask.nii.gz                          true brain mask, native grid
    truth/{pid}/{pid}_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.json   4x4 native->MNI (RAS mm)
    truth/{pid}/{pid}_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.txt    the same as an ITK
        transform (LPS, maps template points to native points: what antsApplyTransforms and
        SimpleITK's Resample need to bring the raw scan onto the template grid)
    truth/{pid}/{pid}_truth.json                                       biological age, weights, volumes
Per cohort:
    participants.tsv (manifest), bids/participants.tsv, bids/dataset_description.json,
    truth/subjects.tsv, truth/effects_aal116.tsv, truth/sites.tsv, truth/model.json,
    figures/simulated_raw_scans.png
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from brainage import TEMPLATE_SPACE, __version__
from brainage.data.atlases import aal_labels
from brainage.core.io import save_figure, save_nifti, write_json, write_text, write_tsv
from brainage.data.simulate.anatomy import FIELD_AFFINE, FIELD_STEP, HEAD_AFFINE, Anatomy
from brainage.data.simulate.model import MANIFEST_COLUMNS, SITES, SimulationModel
from brainage.data.simulate.scan import effect_fields, effect_weights, intensity_knots, simulate_scan

log = logging.getLogger(__name__)

#: ages (cohort, years) of the subjects shown in the raw-scan figure
FIGURE_SUBJECTS: tuple[tuple[str, float], ...] = (("HC", 25.0), ("HC", 55.0), ("HC", 85.0), ("AD", 80.0))
#: columns of the plan that are per-subject truth (not manifest columns)
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def itk_affine_text(native_to_mni: np.ndarray) -> str:
    """ITK ``AffineTransform_double_3_3`` text of the transform used to resample native onto MNI.

    ITK transforms map points of the output (fixed, template) space to the input (moving,
    native) space, in LPS millimetres: ``T = F inv(native_to_mni) F`` with F = diag(-1,-1,1).
    """
    t = _LPS @ np.linalg.inv(native_to_mni) @ _LPS
    params = " ".join(f"{v:.10g}" for v in [*t[:3, :3].ravel(), *t[:3, 3]])
    return (
        "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
        f"Parameters: {params}\nFixedParameters: 0 0 0\n"
    )


def write_subject(row: Mapping, anatomy: Anatomy, seed: int, model: SimulationModel, paths: Mapping[str, Path]) -> dict:
    """Simulate one subject and write its scan and truth files; returns the truth record."""
    scan = simulate_scan(row, anatomy, seed, model)
    save_nifti(scan.image, paths["t1w"])
    save_nifti(scan.mask, paths["mask"])
    write_json(paths["xfm_json"], {
        "native_to_mni": np.round(scan.native_to_mni, 10),
        "description": f"4x4 affine mapping native (scanner, RAS) mm of the raw T1w to {TEMPLATE_SPACE} mm; "
                       "the individual and age/disease nonlinear deformations come on top of it",
    })
    write_text(paths["xfm_itk"], itk_affine_text(scan.native_to_mni))
    truth = {k: _plain(v) for k, v in row.items() if k not in ("t1w",)}
    truth.update({f"weight_{k}": round(v, 6) for k, v in scan.weights.items()})
    truth.update({f"volume_{k}_ml": round(v, 4) for k, v in scan.volumes_ml.items()})
    write_json(paths["truth"], truth)
    return truth


def _plain(value):
    if isinstance(value, (np.floating, float)) and np.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def figure_subjects(frame: pd.DataFrame) -> list[str]:
    """Participants shown in the raw-scan figure: nearest in age to :data:`FIGURE_SUBJECTS`."""
    chosen: list[str] = []
    for cohort, age in FIGURE_SUBJECTS:
        pool = frame[(frame["cohort"] == cohort) & ~frame["participant_id"].isin(chosen)]
        if pool.empty:
            continue
        # ties broken by participant_id so the choice is stable
        order = pool.assign(_d=(pool["age"] - age).abs()).sort_values(["_d", "participant_id"])
        chosen.append(str(order["participant_id"].iloc[0]))
    return chosen


def plot_raw_scans(frame: pd.DataFrame, out_png: str | Path) -> None:
    """Mid-slices (sagittal, coronal, axial) of the figure subjects' raw scans, before preprocessing.

    The arrays are only reoriented to RAS (axis flips and permutations, no resampling), so each
    scan is shown with its own pose, head size, bias field and noise, as a scanner wrote it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pids = figure_subjects(frame)
    rows = frame.set_index("participant_id").loc[pids]
    fig, axes = plt.subplots(len(pids), 3, figsize=(9.0, 3.1 * len(pids)), squeeze=False, facecolor="black")
    for i, (pid, row) in enumerate(rows.iterrows()):
        img = nib.as_closest_canonical(nib.load(row["t1w"]))
        data = np.asarray(img.dataobj, dtype=np.float32)
        zooms = img.header.get_zooms()[:3]
        vmax = float(np.percentile(data, 99.7))
        # slices through the centre of the bright tissue (white matter, marrow, scalp fat):
        # the brain's centre rather than the field of view's, which includes the neck
        c = [int(round(v)) for v in ndimage.center_of_mass(data > 0.6 * vmax)]
        views = [
            (data[c[0], :, :].T, zooms[2] / zooms[1], "sagittal"),
            (data[:, c[1], :].T, zooms[2] / zooms[0], "coronal"),
            (data[:, :, c[2]].T, zooms[1] / zooms[0], "axial"),
        ]
        for j, (slc, aspect, name) in enumerate(views):
            ax = axes[i, j]
            # coronal/axial in radiological convention (patient's right on the left), as MRI viewers show them
            ax.imshow(slc[:, ::-1] if j else slc, origin="lower", cmap="gray", vmin=0, vmax=vmax, aspect=aspect,
                      interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(name, color="white", fontsize=10)
        axes[i, 0].text(0.02, 0.98, f"{row['cohort']} {row['age']:.0f} y {row['sex']}\n{pid} ({row['dataset']})",
                        transform=axes[i, 0].transAxes, color="yellow", fontsize=8, va="top")
    fig.suptitle("Simulated raw T1w scans before preprocessing (slices through the head centre, native grid,"
                 " RAS-reoriented)",
                 color="white", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_png, facecolor="black")
    plt.close(fig)




def log_volume_change(field: np.ndarray) -> np.ndarray:
    """Local log volume ratio subject/template of the pulled-back map ``x -> x + u(x)`` (field grid).

    A template region of volume V appears in the subject with volume V / det(I + grad u), so
    the subject's local log volume change is ``-log det(I + grad u)``.
    """
    grads = [np.gradient(field[d], FIELD_STEP) for d in range(3)]
    jac = np.empty(field.shape[1:] + (3, 3), dtype=np.float32)
    for i in range(3):
        for j in range(3):
            jac[..., i, j] = grads[i][j] + (1.0 if i == j else 0.0)
    det = np.linalg.det(jac)
    return -np.log(np.clip(det, 1e-3, None))


def _effect_rows(model: SimulationModel, frame: pd.DataFrame) -> list[tuple[str, str, dict, dict, float]]:
    """``(effect, cohort, before, after, increment)`` of each effect of :func:`effects_table`:
    the subject rows (biological age, cohort, severity) whose difference is the effect.

    ``ageing``: a healthy 20-year-old -> 80. ``AD`` and ``PD``: the cohort's mean patient
    (mean age + mean biological-age increment, mean severity) against a healthy control of the
    same age: all that the simulator changed in the patients, what a group map of patients or
    of patients minus age-matched controls can show. ``AD_specific`` and ``PD_specific``: the
    disease's own atrophy alone (no increment) against the same control.
    """
    zero = {"biological_age": 20.0, "severity": 0.0, "ventricle_offset": 0.0, "cohort": "HC"}
    rows = [("ageing", "HC", zero, {**zero, "biological_age": 80.0}, 60.0)]
    for cohort in ("AD", "PD"):
        sub = frame[frame["cohort"] == cohort]
        severity = float(sub["severity"].mean()) if len(sub) else 0.5
        increment = float(sub["brain_age_increment"].mean()) if len(sub) else 0.0
        age = float(sub["age"].mean()) if len(sub) else 70.0
        control = {**zero, "biological_age": age}
        patient = {**control, "cohort": cohort, "severity": severity}
        rows.append((cohort, cohort, control, {**patient, "biological_age": age + increment}, increment))
        rows.append((f"{cohort}_specific", cohort, control, patient, 0.0))
    return rows


def render_template_subject(row: Mapping, anatomy: Anatomy, model: SimulationModel) -> np.ndarray:
    """The simulator's mean subject of ``row`` (biological age, cohort, severity, dataset) as the
    scanner would see it on the 1 mm template grid, in signal units (WM = 1): the effect fields,
    the head sample and the contrast of :func:`brainage.data.simulate.scan.simulate_scan`, without
    pose, individual warp, bias field or noise."""
    from brainage.core.grids import TEMPLATE_AFFINE_1MM, TEMPLATE_SHAPE_1MM

    idx = np.indices(TEMPLATE_SHAPE_1MM, dtype=np.float32).reshape(3, -1)
    mni = TEMPLATE_AFFINE_1MM[:3, :3].astype(np.float32) @ idx + TEMPLATE_AFFINE_1MM[:3, 3:4].astype(np.float32)
    to_field, to_head = np.linalg.inv(FIELD_AFFINE), np.linalg.inv(HEAD_AFFINE)
    field_idx = (to_field[:3, :3] @ mni + to_field[:3, 3:4]).astype(np.float32)
    field = effect_fields(anatomy, effect_weights(row, model))
    moved = mni + np.stack([ndimage.map_coordinates(field[d], field_idx, order=1) for d in range(3)])
    units = ndimage.map_coordinates(anatomy.head, (to_head[:3, :3] @ moved + to_head[:3, 3:4]).astype(np.float32), order=1)
    return np.interp(units, *intensity_knots(row, anatomy, model)).reshape(TEMPLATE_SHAPE_1MM).astype(np.float32)


def signal_change(anatomy: Anatomy, model: SimulationModel, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Mean |signal change| (relative to WM = 1) per AAL116 region (ordered as ``aal_labels()``)
    of each effect of :func:`effects_table`: what a scanner sees change, where the volume change
    says how much tissue the deformation compressed. Rendered with the contrast of the cohort's
    most frequent site."""
    from brainage.data.atlases import load_aal_1mm
    from brainage.core.grids import resample_labels, template_grid

    aal, affine = load_aal_1mm()
    labels = resample_labels(aal, affine, template_grid(1.0)).reshape(-1).astype(np.int64)
    index = aal_labels()["index"].to_numpy()
    counts = np.maximum(np.bincount(labels, minlength=256)[index], 1)
    site = frame["dataset"].mode().iloc[0] if "dataset" in frame and len(frame) else next(iter(SITES))
    site = site if site in SITES else next(iter(SITES))
    rendered: dict[tuple, np.ndarray] = {}

    def render(row: Mapping) -> np.ndarray:
        key = tuple(sorted(row.items()))
        if key not in rendered:
            rendered[key] = render_template_subject({**row, "dataset": site}, anatomy, model).reshape(-1)
        return rendered[key]

    out = {}
    for effect, _cohort, before, after, _inc in _effect_rows(model, frame):
        change = np.abs(render(after).astype(np.float64) - render(before))
        out[effect] = np.bincount(labels, weights=change, minlength=256)[index] / counts
    return out


def effects_table(anatomy: Anatomy, model: SimulationModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Where and how strongly age and disease act: AAL116 parcel means per effect.

    Effects (:func:`_effect_rows`): ``ageing`` (HC, from 20 to 80 years: ageing load 0 -> 1),
    ``AD`` and ``PD`` (the cohort's mean patient against a healthy control of the same age: the
    disease-specific atrophy at the cohort's mean severity plus the ageing of its mean
    biological-age increment), ``AD_specific`` and ``PD_specific`` (the disease-specific atrophy
    alone, against the same control). Columns: ``index``,
    ``name``, ``effect``, ``cohort``, ``volume_change_pct`` (mean local volume change of the
    parcel, %), ``displacement_mm`` (mean displacement magnitude), ``signal_change`` (mean
    |change of the image|, WM = 1, of the mean subject rendered on the template:
    :func:`signal_change`), ``brain_age_increment`` (mean years added to the biological age of
    that cohort; 60 years of ageing for HC; 0 for the ``_specific`` effects).
    """
    effects = []
    for effect, cohort, before, after, increment in _effect_rows(model, frame):
        b, a = effect_weights(before, model), effect_weights(after, model)
        effects.append((effect, cohort, {k: a[k] - b[k] for k in b}, increment))
    signal = signal_change(anatomy, model, frame)
    labels = anatomy.labels[FIELD_STEP // 2 :: FIELD_STEP, FIELD_STEP // 2 :: FIELD_STEP, FIELD_STEP // 2 :: FIELD_STEP]
    labels = labels[: anatomy.bases["ventricles"].shape[1], : anatomy.bases["ventricles"].shape[2], : anatomy.bases["ventricles"].shape[3]]
    names = aal_labels()
    index = names["index"].to_numpy()
    rows = []
    for effect, cohort, weights, increment in effects:
        field = effect_fields(anatomy, weights)
        logvol = log_volume_change(field)
        mag = np.sqrt((field**2).sum(axis=0))
        count = np.bincount(labels.ravel(), minlength=256)[index]
        mean_lv = np.bincount(labels.ravel(), weights=logvol.ravel(), minlength=256)[index] / np.maximum(count, 1)
        mean_mag = np.bincount(labels.ravel(), weights=mag.ravel(), minlength=256)[index] / np.maximum(count, 1)
        for k, name in enumerate(names["name"]):
            rows.append({
                "index": int(index[k]), "name": name, "effect": effect, "cohort": cohort,
                "volume_change_pct": round(100 * float(np.expm1(mean_lv[k])), 3),
                "displacement_mm": round(float(mean_mag[k]), 4),
                "signal_change": round(float(signal[effect][k]), 5),
                "brain_age_increment": round(increment, 3),
            })
    return pd.DataFrame(rows)


def sites_table() -> pd.DataFrame:
    rows = []
    for site in SITES.values():
        d = asdict(site)
        rows.append({
            "dataset": site.name,
            "age_low": d["age"][0], "age_high": d["age"][1], "age_mean": d["age"][2] or "uniform", "age_sd": d["age"][3],
            "voxel_mm_at_1": "x".join(f"{v:g}" for v in site.voxel), "axcodes": "".join(site.axcodes),
            "fov_mm_ras": "x".join(f"{v:g}" for v in site.fov_mm),
            "csf": site.contrast[0], "gm": site.contrast[1], "wm": site.contrast[2], "fat": site.contrast[3],
            "noise_sd_rel_wm": site.noise, "wm_signal": site.scale,
        })
    return pd.DataFrame(rows)


def write_cohort(frame: pd.DataFrame, truths: Sequence[Mapping], anatomy: Anatomy, model: SimulationModel,
                 seed: int, out: Mapping[str, Path]) -> pd.DataFrame:
    """Write the cohort files (``out`` keys: manifest, bids_participants, dataset_description,
    subjects, effects, sites, model, figure); returns the manifest."""
    manifest = frame.loc[:, list(MANIFEST_COLUMNS)].copy()
    try:
        from brainage.data.manifest import write_manifest
    except ImportError:  # pragma: no cover - the manifest module ships with the package
        write_manifest = None
    if write_manifest is not None:
        write_manifest(manifest, out["manifest"], check_files=True)
    else:
        write_tsv(out["manifest"], manifest)
    bids = manifest.drop(columns=["t1w", "session"])
    write_tsv(out["bids_participants"], bids)
    write_json(out["dataset_description"], {
        "Name": "brainage-rnc simulated T1w cohort",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["brainage simulate"],
        "GeneratedBy": [{"Name": "brainage simulate", "Version": __version__,
                         "Description": f"seed {seed}; model parameters in truth/model.json"}],
    })
    truth_frame = pd.DataFrame(list(truths)).sort_values("participant_id", kind="stable")
    first = [c for c in (*MANIFEST_COLUMNS[:5], "biological_age", "brain_age_increment", "severity",
                         *MANIFEST_COLUMNS[6:9]) if c in truth_frame.columns]
    truth_frame = truth_frame[first + [c for c in truth_frame.columns if c not in first]]
    write_tsv(out["subjects"], truth_frame)
    write_tsv(out["effects"], effects_table(anatomy, model, frame))
    write_tsv(out["sites"], sites_table())
    write_json(out["model"], {"seed": seed, "voxel_mm": anatomy.voxel_mm, **model.as_dict()})
    plot_raw_scans(frame, out["figure"])
    return manifest


def read_truths(paths: Sequence[str | Path]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]
