"""Brain-age predictions of a trained model for the HC test split and the AD and PD cohorts.

One pass per subject set, batched, on the GPU when there is one. The brain-age gap is
``bag = predicted_age - age``. The optional age-bias correction (off by default, as in the
study) is the widely used linear one (Beheshti et al. 2019; Smith et al. 2019): regress BAG
on age in the *validation* split, ``bag = slope * age + intercept``, and subtract the fitted
line from every BAG. Fitting on validation only keeps test, AD and PD out of the fit.

Every prediction carries a split-conformal interval (brainage.core.intervals): the validation
subjects (never trained on) are always predicted, their residuals calibrate the interval, and
every row of the table gets ``predicted_age_lower`` and ``predicted_age_upper``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from brainage.core import intervals
from brainage.core.io import read_participants
from brainage.models.files import forward_batches, iter_batches, load_model, pick_device

log = logging.getLogger(__name__)

#: the subject sets that get a prediction (split column of results/splits.tsv)
PREDICTED_SPLITS = ("test", "AD", "PD")
#: manifest columns carried into the predictions table, after the prediction columns
CLINICAL_COLUMNS = ("adas_cog11", "updrs3", "hoehn_yahr")


@torch.inference_mode()
def predict_ages(
    model: nn.Module, batches: Iterator[tuple[list[str], torch.Tensor]], device: torch.device | str = "cpu"
) -> pd.Series:
    """Predicted age per subject id: the model in eval mode over every batch (no gradients)."""
    device = torch.device(device)
    model = model.to(device).eval()
    ids: list[str] = []
    ages: list[np.ndarray] = []
    for chunk, out in forward_batches(model, batches, device):
        ids += chunk
        ages.append(out.reshape(len(chunk), -1)[:, 0].numpy())
    values = np.concatenate(ages) if ages else np.zeros(0, dtype=np.float32)
    return pd.Series(values.astype(np.float64), index=pd.Index(ids, name="participant_id"), name="predicted_age")


@dataclass(frozen=True)
class AgeBias:
    """Linear age bias of the brain-age gap: ``bag ~ slope * age + intercept`` (validation fit)."""

    slope: float
    intercept: float
    n: int

    def correct(self, age: np.ndarray, bag: np.ndarray) -> np.ndarray:
        """BAG with the fitted age trend removed."""
        return np.asarray(bag, dtype=np.float64) - (self.slope * np.asarray(age, dtype=np.float64) + self.intercept)


def fit_age_bias(age: np.ndarray, bag: np.ndarray) -> AgeBias:
    """Least-squares line of BAG on age; needs >= 2 subjects with distinct ages."""
    age = np.asarray(age, dtype=np.float64)
    bag = np.asarray(bag, dtype=np.float64)
    keep = np.isfinite(age) & np.isfinite(bag)
    age, bag = age[keep], bag[keep]
    if age.size < 2 or np.ptp(age) == 0:
        raise ValueError(f"age-bias correction needs >= 2 validation subjects of different ages, got {age.size}")
    design = np.column_stack([age, np.ones_like(age)])
    (slope, intercept), *_ = np.linalg.lstsq(design, bag, rcond=None)
    return AgeBias(float(slope), float(intercept), int(age.size))


def predictions_table(
    model: nn.Module,
    participants: pd.DataFrame,
    splits: pd.DataFrame,
    load_volume: Callable[[str], np.ndarray],
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    bias_correction: bool = False,
    model_name: str | None = None,
    level: float = intervals.LEVEL,
    conditional: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Predictions for the test split, AD and PD: the ``results/predictions/<model>.tsv`` table.

    ``participants``: the manifest (participant_id, cohort, dataset, age, sex, clinical
    scores); ``splits``: participant_id, split. The validation split is predicted too (it is
    not in the table): its residuals calibrate the ``level`` prediction interval of every row
    (``predicted_age_lower``/``_upper``; ``conditional``: none or predicted_age) and, with
    ``bias_correction``, fit :class:`AgeBias` (a ``bag_corrected`` column). Returns the table
    and a dict describing both fits.
    """
    split_of = splits.set_index("participant_id")["split"]
    wanted = [*PREDICTED_SPLITS, "val"]
    ids = [pid for pid in split_of.index if split_of[pid] in wanted]
    missing = sorted(set(ids) - set(participants["participant_id"]))
    if missing:
        raise ValueError(f"splits name subjects absent from the manifest: {', '.join(missing[:5])}")
    predicted = predict_ages(model, iter_batches(ids, load_volume, batch_size), device)
    people = participants.set_index("participant_id")
    table = pd.DataFrame({"participant_id": ids})
    for column in ("cohort", "dataset", "sex", "age"):
        table[column] = people.loc[ids, column].to_numpy()
    table["split"] = split_of.loc[ids].to_numpy()
    table["age"] = table["age"].astype(float)
    table["predicted_age"] = predicted.loc[ids].to_numpy()
    table["bag"] = table["predicted_age"] - table["age"]
    info: dict = {"bias_correction": bool(bias_correction)}
    val = table[table["split"] == "val"]
    if bias_correction:
        bias = fit_age_bias(val["age"].to_numpy(), val["bag"].to_numpy())
        table["bag_corrected"] = bias.correct(table["age"].to_numpy(), table["bag"].to_numpy())
        info.update(slope=bias.slope, intercept=bias.intercept, n_val=bias.n)
    calibration = interval_from_validation(val, level, conditional)
    table = intervals.add_bounds(table, *calibration.bounds(table["predicted_age"].to_numpy()))
    info["interval"] = calibration.to_meta()
    table = table[table["split"] != "val"].reset_index(drop=True)
    for column in CLINICAL_COLUMNS:
        table[column] = people.loc[table["participant_id"], column].to_numpy() if column in people else np.nan
    if model_name is not None:
        table["model"] = model_name
    order = {s: k for k, s in enumerate(PREDICTED_SPLITS)}
    table = table.sort_values(["split", "participant_id"], key=lambda c: c.map(order) if c.name == "split" else c)
    info["n"] = {s: int((table["split"] == s).sum()) for s in PREDICTED_SPLITS}
    return table.reset_index(drop=True), info


def interval_from_validation(val: pd.DataFrame, level: float, conditional: str | None) -> intervals.Calibration:
    """The split-conformal interval from the validation subjects' residuals; too few of them
    for the level give an infinite half-width, written as such, with one warning."""
    calibration = intervals.calibrate(val["predicted_age"].to_numpy(), val["age"].to_numpy(), level, conditional)
    if not calibration.finite:
        log.warning("prediction interval: %d validation subjects are too few for a finite %g %% interval "
                    "(needs >= %d); half-width written as inf", calibration.n, 100 * level, intervals.min_subjects(level))
    return calibration


def add_true_gap(table: pd.DataFrame, truth_tsv: str) -> pd.DataFrame:
    """The simulator's true brain-age gap (biological - chronological age, from
    results/cohort/truth/subjects.tsv) as column ``true_bag``, after the predicted BAG columns."""
    truth = pd.read_csv(truth_tsv, sep="\t", dtype={"participant_id": str}, na_values=["n/a"]).set_index("participant_id")
    missing = sorted(set(table["participant_id"]) - set(truth.index))
    if missing:
        raise ValueError(f"{truth_tsv}: no truth for {', '.join(missing[:5])}")
    true_bag = (truth.loc[table["participant_id"], "biological_age"].to_numpy(float)
                - truth.loc[table["participant_id"], "age"].to_numpy(float))
    at = table.columns.get_loc("bag_corrected" if "bag_corrected" in table else "bag") + 1
    table.insert(at, "true_bag", true_bag)
    return table


def run_predict_cohort(
    model_path: str,
    participants_tsv: str,
    splits_tsv: str,
    cache_volumes: str,
    cache_index: str,
    out_tsv: str,
    out_json: str,
    *,
    batch_size: int = 8,
    device: str = "auto",
    bias_correction: bool = False,
    truth_tsv: str | None = None,
    interval: dict | None = None,
) -> pd.DataFrame:
    """Rule ``predict_cohort``: predictions of one model -> ``out_tsv`` (+ ``out_json`` summary).

    ``truth_tsv`` (simulated cohorts only): the simulator's subjects table; adds ``true_bag``.
    ``interval``: config ``infer.interval`` (level, conditional).
    """
    from brainage.data.cache import CachedVolumes
    from brainage.core.io import write_json, write_tsv
    from brainage.data.splits import read_splits

    model, meta = load_model(model_path, map_location="cpu")
    name = meta.get("name") or str(model_path).rstrip("/").split("/")[-2]
    participants = read_participants(participants_tsv)
    cache = CachedVolumes(cache_volumes, cache_index)
    dev = pick_device(device)
    log.info("model %s on %s: predicting %s", name, dev, ", ".join(PREDICTED_SPLITS))
    table, info = predictions_table(
        model, participants, read_splits(splits_tsv), cache.volume,
        batch_size=batch_size, device=dev, bias_correction=bias_correction, model_name=name,
        **intervals.settings(interval),
    )
    if truth_tsv is not None:
        table = add_true_gap(table, truth_tsv)
    for split, group in table.groupby("split", sort=False):
        log.info("%s: n=%d, MAE %.2f y, mean BAG %+.2f y", split, len(group), group["bag"].abs().mean(), group["bag"].mean())
    write_tsv(out_tsv, table)
    write_json(out_json, {"model": name, "device": str(dev), **info})
    return table
