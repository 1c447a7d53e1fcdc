"""Every output file name, written once: the library writes with these functions and the rules
declare their inputs and outputs with them (BIDS-derivative names in the template space).

Each function takes folders and ids and returns ``Path``s; called with Snakemake wildcards as
the id (``"{subject}"``) it returns the rule's patterns. Grids are given in mm (a number) or as
their BIDS ``res-`` label (a string such as ``"4"`` or ``"{res}"``). Torch-free: every
environment imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from brainage import TEMPLATE_SPACE
from brainage.core.grids import res_label

# --- the pipeline's layout (relative to the working directory) -------------------------------
RESULTS = Path("results")
#: the study's participants table (the validated manifest) and the simulated cohort's folder
PARTICIPANTS = RESULTS / "cohort" / "participants.tsv"
SIM_COHORT = RESULTS / "cohort"
#: the simulated raw scans (a BIDS folder) and what only the simulator knows (its truth)
SIM_BIDS, SIM_TRUTH = SIM_COHORT / "bids", SIM_COHORT / "truth"
#: the simulator's per-subject truth (biological age ...), its per-region effects, and its
#: template-space head, labels and effect fields (built once per cohort, memory-mapped by every
#: subject's job)
SIM_SUBJECTS, SIM_EFFECTS, SIM_ANATOMY = (SIM_TRUTH / name for name in ("subjects.tsv", "effects_aal116.tsv",
                                                                        "anatomy.npz"))
SPLITS = RESULTS / "splits.tsv"
PREPROCESS_ROOT = RESULTS / "preprocess"
#: the cohort's QC table, the subjects excluded by it (with the reason), the montage of all
QC_TABLE, QC_EXCLUDED, QC_MONTAGE = (RESULTS / "qc" / name for name in ("qc.tsv", "excluded.tsv", "qc_montage.png"))
CACHE_ROOT = RESULTS / "cache"
MODELS_ROOT = RESULTS / "models"
PREDICTIONS_ROOT = RESULTS / "predictions"
SALIENCY_ROOT = RESULTS / "saliency"
#: the study's figures and tables (brainage.report.targets names them)
FIGURES_ROOT = RESULTS / "figures"
TABLES_ROOT = RESULTS / "tables"
#: what the run's results came from (brainage.core.provenance.run_record), and its report page
PROVENANCE, PROVENANCE_HTML = RESULTS / "provenance.json", TABLES_ROOT / "provenance.html"
#: the simulated cohort's figure of raw scans, beside the study's figures (it goes in the report)
SIM_FIGURE = FIGURES_ROOT / "simulated_raw_scans.png"

#: the native -> template affine, as written by preprocessing and by the simulator's truth
XFM = f"from-T1w_to-{TEMPLATE_SPACE}_mode-image_xfm"


def _label(res: float | str) -> str:
    return res if isinstance(res, str) else res_label(res)


def raw_t1w(bids_root: str | Path, participant_id: str) -> Path:
    """A raw scan in a BIDS folder: ``<root>/<sub>/anat/<sub>_T1w.nii.gz``."""
    return Path(bids_root) / participant_id / "anat" / f"{participant_id}_T1w.nii.gz"


def simulated_subject_files(bids_root: str | Path, truth_root: str | Path, participant_id: str) -> dict[str, Path]:
    """What the simulator writes for one subject: the raw scan and its truth."""
    truth = Path(truth_root) / participant_id
    return {
        "t1w": raw_t1w(bids_root, participant_id),
        "mask": truth / f"{participant_id}_desc-brain_mask.nii.gz",
        "xfm_json": truth / f"{participant_id}_{XFM}.json",
        "xfm_itk": truth / f"{participant_id}_{XFM}.txt",
        "truth": truth / f"{participant_id}_truth.json",
    }


def simulated_cohort_files(out: str | Path, figure: str | Path | None = None) -> dict[str, Path]:
    """The simulated cohort's cohort-level files under ``out`` (the layout of ``results/cohort``)."""
    out = Path(out)
    return {
        "manifest": out / "participants.tsv",
        "bids_participants": out / "bids" / "participants.tsv",
        "dataset_description": out / "bids" / "dataset_description.json",
        "subjects": out / "truth" / "subjects.tsv",
        "effects": out / "truth" / "effects_aal116.tsv",
        "sites": out / "truth" / "sites.tsv",
        "model": out / "truth" / "model.json",
        "figure": Path(figure) if figure else out / "figures" / "simulated_raw_scans.png",
    }


def preprocess_dir(participant_id: str) -> Path:
    """The folder of a subject's preprocessing outputs (:func:`preprocess_outputs`)."""
    return PREPROCESS_ROOT / participant_id / "anat"


def minc_files(participant_id: str) -> dict[str, Path]:
    """The MINC engine's files of a subject (brainage.preprocess.minc): ``ras`` (the RAS+ copy of
    the raw scan the container reads), ``brain`` (the 1 mm brain on the ICBM grid), ``mask``
    (native space) and ``xfm`` (native to the symmetric ICBM 2009c model the chain registers to)."""
    prefix = f"{PREPROCESS_ROOT / participant_id / 'minc' / participant_id}_"
    return {
        "ras": Path(f"{prefix}desc-ras_T1w.nii.gz"),
        "brain": Path(f"{prefix}res-1_desc-brain_T1w.nii.gz"),
        "mask": Path(f"{prefix}desc-brain_mask.nii.gz"),
        "xfm": Path(f"{prefix}from-T1w_to-MNI152NLin2009cSym.xfm"),
    }


def preprocessed_t1w(out_dir: str | Path, participant_id: str, res: float | str) -> Path:
    """The preprocessed T1w of a subject on the template grid of ``res``."""
    return Path(out_dir) / f"{participant_id}_space-{TEMPLATE_SPACE}_res-{_label(res)}_desc-preproc_T1w.nii.gz"


def preprocess_outputs(out_dir: str | Path, participant_id: str, grids: Iterable[float | str]) -> dict[str, Path]:
    """One subject's preprocessing outputs; keys ``res<label>`` per grid (``res4``, ``res1p5``),
    ``mask``, ``xfm`` (ITK/ANTs), ``xfm_json`` (4 x 4 RAS matrices), ``qc_json``, ``qc_png``."""
    out_dir = Path(out_dir)
    sub = participant_id
    paths = {f"res{_label(r)}": preprocessed_t1w(out_dir, sub, r) for r in grids}
    paths.update(
        mask=out_dir / f"{sub}_desc-brain_mask.nii.gz",
        xfm=out_dir / f"{sub}_{XFM}.mat",
        xfm_json=out_dir / f"{sub}_{XFM}.json",
        qc_json=out_dir / f"{sub}_desc-qc.json",
        qc_png=out_dir / f"{sub}_desc-qc.png",
    )
    return paths


def as_list(files: str | Path | Iterable[str | Path]) -> list:
    """A rule's file (a string) or list of files as a list (a batch job's outputs are lists)."""
    return [files] if isinstance(files, (str, Path)) else list(files)


def subject_batches(subjects: Iterable[str], per_job: int) -> list[tuple[str, list[str]]]:
    """``(name, members)`` of the jobs that process ``subjects`` ``per_job`` at a time, in order
    (``b000``, ``b001``, ...): a job's Python start and imports (~3 CPU-s with torch and ANTs)
    are paid once per batch instead of once per subject. The last batch holds the remainder;
    a batch is redone as a whole when its members change."""
    subjects = list(subjects)
    if per_job < 1:
        raise ValueError(f"subjects per job must be >= 1, got {per_job}")
    width = max(3, len(str(max(len(subjects) - 1, 0) // per_job)))
    return [(f"b{i // per_job:0{width}d}", subjects[i:i + per_job]) for i in range(0, len(subjects), per_job)]


def cache_files(root: str | Path, res: float | str) -> dict[str, Path]:
    """The float16 cache of one grid: ``volumes`` (memory-mapped array) and its ``index``."""
    folder = Path(root) / f"res-{_label(res)}"
    return {"volumes": folder / "volumes.npy", "index": folder / "index.tsv"}


def model_files(model_dir: str | Path) -> dict[str, Path]:
    """What training writes in a model's folder (``results/models/<name>``)."""
    model_dir = Path(model_dir)
    return {"model": model_dir / "model.pt", "log_tsv": model_dir / "train_log.tsv",
            "curve": model_dir / "learning_curve.png", "card": model_dir / "model_card.json",
            "checkpoint": model_dir / "checkpoint.pt"}


def fold_splits(fold: str) -> Path:
    """The splits table of one cross-validation fold (``r0f3``: repeat 0, fold 3)."""
    return RESULTS / "splits" / f"{fold}.tsv"


def model_dir(model: str, fold: str | None = None) -> Path:
    """A model's folder: ``results/models/<model>``, or one fold's ``results/models/<model>/cv/<fold>``."""
    return MODELS_ROOT / model if fold is None else MODELS_ROOT / model / "cv" / fold


def fold_prediction_files(model: str, fold: str) -> dict[str, Path]:
    """One fold's predictions (merged into :func:`prediction_files` by brainage.data.cv)."""
    root = PREDICTIONS_ROOT / "cv" / model
    return {"tsv": root / f"{fold}.tsv", "json": root / f"{fold}.json"}


def prediction_files(model: str) -> dict[str, Path]:
    """A model's predictions table and its summary."""
    return {"tsv": PREDICTIONS_ROOT / f"{model}.tsv", "json": PREDICTIONS_ROOT / f"{model}.json"}


def saliency_outputs(model: str) -> dict[str, Path]:
    """A model's saliency outputs: subject and group maps (folders) and the tables."""
    root = SALIENCY_ROOT / model
    return {"subjects": root / "subjects", "groups": root / "groups", "groups_tsv": root / "groups.tsv",
            "aal116": root / "aal116.tsv", "matches": root / "matched_controls.tsv", "truth": root / "truth_check.tsv"}


def figure_files(name: str, kinds: Iterable[str] = ("png", "svg")) -> dict[str, Path]:
    """A study figure's files by kind (``png``, ``svg``, ``tsv`` for its data): ``results/figures/<name>.<kind>``."""
    return {kind: FIGURES_ROOT / f"{name}.{kind}" for kind in kinds}


def table_files(name: str, kinds: Iterable[str] = ("tsv", "md", "html")) -> dict[str, Path]:
    """A study table's files by kind (``tsv``, ``md``, ``html``): ``results/tables/<name>.<kind>``."""
    return {kind: TABLES_ROOT / f"{name}.{kind}" for kind in kinds}


#: ``explain.method``: ``gradram`` (the study's Grad-RAM on ``target_layer``) or ``gradient``
#: (brainage.apply.explain.input_gradient, for grids where no block keeps enough voxels to localise);
#: here, torch-free, so the report side can name them (brainage.apply.explain re-exports them)
SALIENCY_METHODS = ("gradram", "gradient")
#: how figures and logs name each method
SALIENCY_METHOD_LABELS = {"gradram": "Grad-RAM", "gradient": "input gradient"}


def saliency_file(res_label: str, participant_id: str | None = None, group: str | None = None, method: str = "gradram") -> str:
    """BIDS-derivative-like file name of a subject's or a group's saliency map (``desc``: the
    method, :data:`SALIENCY_METHODS`)."""
    entity = participant_id if participant_id is not None else f"group-{group}"
    return f"{entity}_space-{TEMPLATE_SPACE}_res-{res_label}_desc-{method}_saliency.nii.gz"
