"""Training engine: a tiny end-to-end run learns age, RNC + head runs, exact resume after a kill."""

import json

import numpy as np
import pytest
import torch

from brainage.models.files import load_model
from brainage.train.engine import TrainingInterrupted, train_model
from synthetic_volumes import synthetic_cache

TRAINING = {"augment": {}, "num_workers": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    _, _, splits, volumes, index = synthetic_cache(tmp_path_factory.mktemp("train"), 30, 2, (20, 24, 20))
    return splits, volumes, index


def _entry(**kw):
    entry = {"backbone": "resnet18", "grid": 4, "loss": "l1", "batch_size": 6, "epochs": 4, "augment": True,
             "width": 0.125, "conv1_stride": 2, "patience": None}
    entry.update(kw)
    return entry


def _equal_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_weights(dir_a, dir_b) -> bool:
    """The two runs' model.pt hold bit-identical weights."""
    a, b = (torch.load(d / "model.pt", weights_only=False)["state_dict"] for d in (dir_a, dir_b))
    return _equal_state(a, b)


@pytest.mark.slow
def test_tiny_end_to_end_training_reduces_loss(data, tmp_path):
    splits, vols, index = data
    metrics = train_model("e2e", _entry(epochs=6, augment=False), TRAINING, splits, vols, index, tmp_path, seed=0, progress=False)
    import pandas as pd

    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    assert list(log.columns) == ["phase", "epoch", "train_loss", "val_mae", "lr", "seconds"]
    assert log["train_loss"].iloc[-3:].mean() < log["train_loss"].iloc[0]
    # learnt age, not the cohort's mean: the test MAE well below predicting the mean training age
    # (seed 0: 7.4 vs 17.6 y, ratio 0.42)
    assert metrics["test_mae_ratio_to_baseline"] <= 0.6, metrics
    model, meta = load_model(tmp_path / "model.pt")
    assert meta["kind"] == "e2e" and meta["architecture"]["backbone"] == "resnet18"
    assert meta["age"]["train_min"] >= 20 and meta["intensity_normalisation"]["percentile"] == 99.5
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["data"]["train"]["n"] == (splits["split"] == "train").sum()
    assert card["metrics"]["best_val_mae"] == pytest.approx(metrics["best_val_mae"])
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    assert not (tmp_path / "checkpoint.pt").exists()
    assert hasattr(model.encoder, "layer4")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["l1", "rnc"])
def test_exact_resume_after_kill(data, tmp_path, kind):
    """A run stopped after k epochs and resumed ends with the same weights as one uninterrupted run."""
    splits, vols, index = data
    extra = {"loss": kind, "epochs": 3}
    if kind == "rnc":
        extra.update(backbone="sfcn", width=0.25, rnc={"chunk_size": 4}, head={"epochs": 5}, optimiser={"lr": 0.05})
    else:
        extra.update(backbone="sfcn", width=0.25)  # SFCN has dropout: exercises the RNG state too
    entry = _entry(**extra)
    train_model("a", entry, TRAINING, splits, vols, index, tmp_path / "a", seed=1, progress=False)
    with pytest.raises(TrainingInterrupted):
        train_model("b", entry, TRAINING, splits, vols, index, tmp_path / "b", seed=1, progress=False, max_epochs_this_run=2)
    assert (tmp_path / "b" / "checkpoint.pt").exists() and not (tmp_path / "b" / "model.pt").exists()
    train_model("b", entry, TRAINING, splits, vols, index, tmp_path / "b", seed=1, progress=False)
    assert _same_weights(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_resume_mid_epoch_from_step_checkpoint(data, tmp_path):
    """Killed by a signal mid-epoch: a subprocess receives SIGKILL after its first step checkpoint."""
    import subprocess
    import sys
    import time

    splits, vols, index = data
    splits.to_csv(tmp_path / "splits.tsv", sep="\t", index=False)
    training = {**TRAINING, "checkpoint_every_steps": 1}
    entry = _entry(epochs=2, backbone="sfcn", width=0.25)
    train_model("a", entry, training, splits, vols, index, tmp_path / "a", seed=2, progress=False)
    job = {"name": "b", "entry": entry, "training": training, "splits": str(tmp_path / "splits.tsv"), "volumes": str(vols),
           "index": str(index), "out_dir": str(tmp_path / "b"), "seed": 2, "progress": False}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.Popen([sys.executable, "-m", "brainage.train.engine", str(tmp_path / "job.json")])
    ckpt = tmp_path / "b" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert ckpt.exists() and not (tmp_path / "b" / "model.pt").exists()
    train_model("b", entry, training, splits, vols, index, tmp_path / "b", seed=2, progress=False)
    assert _same_weights(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_rnc_then_linear_head_produces_ages(data, tmp_path):
    splits, vols, index = data
    entry = _entry(loss="rnc", epochs=3, rnc={"chunk_size": 6}, head={"epochs": 20})
    metrics = train_model("rnc", entry, TRAINING, splits, vols, index, tmp_path, seed=0, progress=False)
    model, meta = load_model(tmp_path / "model.pt")
    assert meta["kind"] == "rnc"
    # the frozen encoder's features carry age: the head beats the mean-age predictor on the test
    # split (seed 0: 9.4 vs 17.6 y, ratio 0.53; 1 encoder epoch + 5 head epochs only reached 0.95)
    assert metrics["test_mae_ratio_to_baseline"] <= 0.75, metrics
    x = torch.zeros(2, 1, 20, 24, 20)
    assert model(x).shape == (2,)


@pytest.mark.slow
def test_rnc_then_kernel_head_produces_ages(data, tmp_path):
    """head: {type: kernel}: a GP on the frozen features, saved in model.pt and loaded back."""
    splits, vols, index = data
    entry = _entry(loss="rnc", epochs=3, rnc={"chunk_size": 6}, head={"type": "kernel"})
    metrics = train_model("rnc", entry, TRAINING, splits, vols, index, tmp_path, seed=0, progress=False,
                          interval={"level": 0.5, "conditional": "none"})
    model, meta = load_model(tmp_path / "model.pt")
    assert meta["kind"] == "rnc" and meta["head"]["type"] == "kernel"
    # model.pt's interval: split conformal on the validation subjects, recomputed here from the
    # loaded model's own predictions (rank ceil((n + 1) * 0.5) of the absolute residuals: 3 val subjects)
    from brainage.data.cache import CachedVolumes

    cache = CachedVolumes(str(vols), str(index))
    val = splits[splits["split"] == "val"]
    with torch.no_grad():
        pred = model(torch.from_numpy(np.stack([cache.volume(p) for p in val["participant_id"]]))[:, None].float())
    residuals = np.sort(np.abs(pred.numpy().astype(float) - val["age"].to_numpy(float)))
    rank = int(np.ceil((len(residuals) + 1) * 0.5))
    assert meta["interval"]["level"] == 0.5 and meta["interval"]["n"] == len(val)
    assert meta["interval"]["halfwidth"] == pytest.approx(residuals[rank - 1], rel=1e-4)
    # the same encoder as the linear-head test (same seed, 3 epochs): the GP beats the mean-age predictor
    assert metrics["test_mae_ratio_to_baseline"] <= 0.75, metrics
    x = torch.zeros(2, 1, 20, 24, 20)
    assert model(x).shape == (2,) and torch.isfinite(model(x)).all()
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.slow  # ~30 s on 2 cores: a single-process run, then torchrun with two workers
def test_torchrun_two_processes_equal_single_process(data, tmp_path):
    """DDP under torchrun (gloo, 2 CPU processes) trains the same model as one process on the same
    global batches: an RNC encoder (gathered global-batch loss, gradient caching, augmentation
    drawn per subject) and its linear head, GroupNorm throughout, no dropout. Only rank 0 writes."""
    from brainage.train.engine import launch_torchrun

    splits, vols, index = data
    splits.to_csv(tmp_path / "splits.tsv", sep="\t", index=False)
    entry = _entry(loss="rnc", epochs=1, batch_size=12, norm="group", rnc={"chunk_size": 4}, head={"epochs": 2},
                   optimiser={"lr": 0.05})
    single = train_model("one", entry, TRAINING, splits, vols, index, tmp_path / "one", seed=3, progress=False)
    job = {"name": "two", "entry": entry, "training": TRAINING, "volumes": str(vols), "index": str(index),
           "out_dir": str(tmp_path / "two"), "seed": 3, "progress": False}
    launch_torchrun(job, str(tmp_path / "splits.tsv"), gpus=2)
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=False)
    two = torch.load(tmp_path / "two" / "model.pt", weights_only=False)
    assert two["meta"]["kind"] == "rnc" and not (tmp_path / "two" / "checkpoint.pt").exists()
    assert not any("running" in k for k in one["state_dict"])  # no BatchNorm left anywhere
    assert one["state_dict"].keys() == two["state_dict"].keys()
    for k, a in one["state_dict"].items():
        # each tensor equal to 1e-5 of its own scale (float32 sums are reordered across processes)
        scale = max(float(a.abs().max()), 1e-3)
        assert float((a - two["state_dict"][k]).abs().max()) <= 1e-5 * scale, k
    assert two["meta"]["metrics"]["test_mae"] == pytest.approx(single["test_mae"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("select", ["best_val", "last"])
def test_linear_head_selection(data, tmp_path, select):
    """The kept head is the lowest-validation-MAE epoch (best_val) or the last one (last): the
    saved model, run on the validation volumes, reproduces that epoch's logged validation MAE."""
    import pandas as pd

    from brainage.data.cache import CachedVolumes
    from brainage.train.run import predict_ages as _predict

    splits, vols, index = data
    entry = _entry(loss="rnc", epochs=1, rnc={"chunk_size": 6}, head={"epochs": 8, "lr": 0.2, "select": select})
    train_model("rnc", entry, TRAINING, splits, vols, index, tmp_path, seed=0, progress=False)
    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    head = log[log["phase"] == "head"].reset_index(drop=True)
    expected = head["val_mae"].min() if select == "best_val" else head["val_mae"].iloc[-1]
    model, _ = load_model(tmp_path / "model.pt")
    cache = CachedVolumes(vols, index)
    val = splits[splits["split"] == "val"]
    rows = np.array([cache.row_of(p) for p in val["participant_id"]])
    pred = _predict(model, cache, rows, torch.device("cpu"), 4, False, None)
    assert np.abs(pred - val["age"].to_numpy()).mean() == pytest.approx(expected, rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("inputs", ["intensity", "tissue"])  # 3-6 s each on 2 cores
def test_tiny_soft_label_training_predicts_ages(data, tmp_path, inputs):
    """loss: kl (a logit per 1-year age bin, Gaussian soft labels, KL), on the intensity or on
    tissue maps: the loss falls, the ages are the bins' expectation, and model.pt rebuilds the head."""
    import pandas as pd

    from brainage.data.cache import CachedVolumes
    from brainage.train.run import predict_ages

    splits, vols, index = data
    entry = _entry(loss="kl", epochs=2, augment=False, inputs=inputs)
    metrics = train_model("kl", entry, TRAINING, splits, vols, index, tmp_path, seed=0, progress=False)
    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]
    # the KL in nats (about log of the ~75 predicted bins minus the label's entropy), not an L1 in years
    assert log["train_loss"].max() < 4.0
    assert np.isfinite(log["val_mae"]).all() and np.isfinite(metrics["test_mae"])
    model, meta = load_model(tmp_path / "model.pt")
    assert meta["architecture"]["bin_width"] == 1.0 and meta["architecture"]["inputs"] == inputs
    assert meta["head"] == {"type": "bins", "start": 0.0, "width": 1.0, "count": 120}
    train = splits[splits["split"] == "train"]
    centres = model.head.centres[model.head.active]
    assert centres.min() == np.floor(train["age"].min()) - 1.5 and centres.max() == np.ceil(train["age"].max()) + 1.5
    cache = CachedVolumes(vols, index)
    test = splits[splits["split"] == "test"]
    pred = predict_ages(model, cache, np.array([cache.row_of(p) for p in test["participant_id"]]), torch.device("cpu"),
                        4, False, None)
    assert np.isfinite(pred).all() and ((pred > centres.min().item()) & (pred < centres.max().item())).all()
    # the loaded model predicts what the trainer measured
    assert np.abs(pred - test["age"].to_numpy()).mean() == pytest.approx(metrics["test_mae"], rel=1e-5)


@pytest.mark.slow
def test_exact_resume_of_a_soft_label_tissue_model(data, tmp_path):
    """loss kl on tissue maps, stopped after 1 of 2 epochs and resumed: the same weights (and
    predicted bins) as one uninterrupted run."""
    splits, vols, index = data
    entry = _entry(loss="kl", inputs="tissue", epochs=2)
    train_model("a", entry, TRAINING, splits, vols, index, tmp_path / "a", seed=1, progress=False)
    with pytest.raises(TrainingInterrupted):
        train_model("b", entry, TRAINING, splits, vols, index, tmp_path / "b", seed=1, progress=False, max_epochs_this_run=1)
    train_model("b", entry, TRAINING, splits, vols, index, tmp_path / "b", seed=1, progress=False)
    assert _same_weights(tmp_path / "a", tmp_path / "b")


def test_a_models_own_seed_replaces_the_runs(data, tmp_path):
    """models.<m>.seed: the entry trains as the whole run would under that seed (seed ensembles)."""
    splits, vols, index = data
    train_model("m", _entry(epochs=1, seed=7), TRAINING, splits, vols, index, tmp_path / "a", seed=0, progress=False)
    train_model("m", _entry(epochs=1), TRAINING, splits, vols, index, tmp_path / "b", seed=7, progress=False)
    train_model("m", _entry(epochs=1), TRAINING, splits, vols, index, tmp_path / "c", seed=0, progress=False)
    assert _same_weights(tmp_path / "a", tmp_path / "b") and not _same_weights(tmp_path / "a", tmp_path / "c")
