"""Fixture data for the stats/tables/figures tests that resembles the pipeline's real outputs.

HC ages 20-95 from five datasets; the models predict age with a model-specific error and the
usual regression towards the mean; AD subjects look older (BAG ~ +4 years, growing with
ADAS-Cog-11), PD subjects a little older (BAG ~ +1.5, growing with MDS-UPDRS-III).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: a config ``models:`` block with every role: 2 e2e, an RNC sweep over batch size on 2 grids, SFCN
MODELS = {
    "resnet18_e2e": {"backbone": "resnet18", "grid": 4, "loss": "l1", "batch_size": 8, "augment": True},
    "resnet50_e2e": {"backbone": "resnet50", "grid": 4, "loss": "l1", "batch_size": 8, "augment": False},
    "rnc_b16": {"backbone": "resnet18", "grid": 4, "loss": "rnc", "batch_size": 16},
    "rnc_b32": {"backbone": "resnet18", "grid": 4, "loss": "rnc", "batch_size": 32},
    "rnc_g2_b8": {"backbone": "resnet18", "grid": 2, "loss": "rnc", "batch_size": 8},
    "rnc_g2_b24": {"backbone": "resnet18", "grid": 2, "loss": "rnc", "batch_size": 24},
    "sfcn": {"backbone": "sfcn", "grid": 4, "loss": "l1", "batch_size": 8},
}
#: error scale (years) per model: the RNC models are the most accurate, larger batches better
NOISE = {"resnet18_e2e": 5.0, "resnet50_e2e": 6.0, "rnc_b16": 4.5, "rnc_b32": 3.8, "rnc_g2_b8": 4.8, "rnc_g2_b24": 4.0, "sfcn": 5.5}
DATASETS = {"IXI": (20, 86), "HCP": (36, 100), "OpenNeuro": (20, 89), "ADNI": (69, 93), "PPMI": (40, 81)}


def participants(n_hc: int = 150, n_ad: int = 40, n_pd: int = 40, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    names = list(DATASETS)
    for i in range(n_hc):
        ds = names[i % len(names)]
        lo, hi = DATASETS[ds]
        rows.append(("HC", ds, rng.uniform(lo, hi), np.nan, np.nan))
    for i in range(n_ad):
        sev = rng.uniform(0, 1)
        rows.append(("AD", "ADNI", rng.uniform(59, 91), np.clip(10 + 35 * sev + rng.normal(0, 4), 0, 70), sev))
    for i in range(n_pd):
        sev = rng.uniform(0, 1)
        rows.append(("PD", "PPMI", rng.uniform(43, 86), np.nan, sev))
    frame = pd.DataFrame(rows, columns=["cohort", "dataset", "age", "adas_cog11", "severity"])
    frame["participant_id"] = [f"sub-{c.lower()}{i:04d}" for i, c in enumerate(frame["cohort"])]
    frame["sex"] = rng.choice(["F", "M"], size=len(frame))
    frame["age"] = frame["age"].round(1)
    frame["updrs3"] = np.where(frame["cohort"] == "PD", np.round(10 + 40 * frame["severity"] + rng.normal(0, 5, len(frame))), np.nan)
    frame["adas_cog11"] = frame["adas_cog11"].round(1)
    frame["hoehn_yahr"] = np.where(frame["cohort"] == "PD", np.clip(np.round(1 + 3 * frame["severity"]), 1, 5), np.nan)
    frame["t1w"] = [f"bids/{p}/anat/{p}_T1w.nii.gz" for p in frame["participant_id"]]
    frame["session"] = np.nan
    return frame


def splits(parts: pd.DataFrame, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    split = np.where(parts["cohort"] == "HC", rng.choice(["train", "val", "test"], p=[0.6, 0.1, 0.3], size=len(parts)), parts["cohort"])
    return pd.DataFrame({"participant_id": parts["participant_id"], "split": split})


def predictions(parts: pd.DataFrame, split: pd.DataFrame, model: str, seed: int = 3) -> pd.DataFrame:
    """Held-out predictions (HC test, AD, PD) of one model, as results/predictions/<model>.tsv."""
    rng = np.random.default_rng(seed + sorted(MODELS).index(model))
    frame = parts.merge(split, on="participant_id")
    frame = frame[frame["split"].isin(["test", "AD", "PD"])].copy()
    mean_age = 55.0
    accel = np.where(frame["cohort"] == "AD", 1.0 + 7.0 * frame["severity"], 0.0)
    accel += np.where(frame["cohort"] == "PD", 0.5 + 2.0 * frame["severity"], 0.0)
    shrink = 0.12  # regression towards the mean age
    frame["predicted_age"] = (frame["age"] + accel - shrink * (frame["age"] - mean_age) + rng.normal(0, NOISE[model], len(frame))).round(2)
    frame["bag"] = (frame["predicted_age"] - frame["age"]).round(2)
    cols = ["participant_id", "cohort", "dataset", "sex", "age", "predicted_age", "bag", "split", "adas_cog11", "updrs3", "hoehn_yahr"]
    return frame[cols].reset_index(drop=True)


def write_all(root: Path, models: dict = MODELS) -> dict[str, object]:
    """Write participants, splits, predictions and train logs of every model under ``root``."""
    parts = participants()
    split = splits(parts)
    (root / "cohort").mkdir(parents=True, exist_ok=True)
    (root / "predictions").mkdir(parents=True, exist_ok=True)
    parts.drop(columns="severity").to_csv(root / "cohort" / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    split.to_csv(root / "splits.tsv", sep="\t", index=False)
    paths, logs = {}, {}
    for name in models:
        pred = predictions(parts, split, name)
        paths[name] = root / "predictions" / f"{name}.tsv"
        pred.to_csv(paths[name], sep="\t", index=False, na_rep="n/a")
        logs[name] = root / "models" / name / "train_log.tsv"
        logs[name].parent.mkdir(parents=True, exist_ok=True)
        epochs = np.arange(1, 31)
        val = NOISE[name] + 20 * np.exp(-epochs / 5)
        pd.DataFrame({"epoch": epochs, "train_loss": val * 1.1, "val_mae": val, "lr": 1e-3, "seconds": 1.0}).to_csv(
            logs[name], sep="\t", index=False
        )
    return {"participants": root / "cohort" / "participants.tsv", "splits": root / "splits.tsv", "predictions": paths, "train_logs": logs}


def write_saliency(root: Path, template: Path, groups: tuple[str, ...] = ("HC_20-40", "HC_40-60", "HC_60-80", "HC_80plus", "AD", "PD")) -> dict[str, Path]:
    """Group-mean Grad-RAM-like maps on ``template``'s grid: blobs around the hippocampi and the
    lateral ventricles that grow stronger with age (and most in AD); an empty map for 'empty'."""
    import nibabel as nib

    img = nib.load(str(template))
    shape = img.shape
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = (np.c_[ijk, np.ones(len(ijk))] @ img.affine.T)[:, :3].reshape(*shape, 3)
    brain = np.asarray(img.dataobj) > 0
    centres = {"hippocampus_L": (-26, -20, -14), "hippocampus_R": (26, -20, -14), "ventricle_L": (-14, -10, 16), "ventricle_R": (14, -10, 16)}
    blobs = {k: np.exp(-((xyz - np.array(c)) ** 2).sum(-1) / (2 * 12.0**2)) for k, c in centres.items()}
    weight = {"HC_20-40": 0.25, "HC_40-60": 0.4, "HC_60-80": 0.6, "HC_80plus": 0.75, "AD": 0.95, "PD": 0.5}
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for g in groups:
        w = weight.get(g, 0.0)
        data = w * (blobs["hippocampus_L"] + blobs["hippocampus_R"]) + 0.6 * w * (blobs["ventricle_L"] + blobs["ventricle_R"]) + 0.1
        data = np.where(brain, np.clip(data, 0, 1), 0).astype(np.float32)
        paths[g] = root / f"{g}.nii.gz"
        nib.save(nib.Nifti1Image(data, img.affine), str(paths[g]))
    return paths
