"""Real brains through the real-cohort path, as a user runs it: ten real IXI heads
(tests/data/ixi_cohort, CC BY-SA 3.0) -> ``brainage manifest`` -> preprocessing with QC ->
a small network in 3-fold cross-validation -> out-of-fold predictions -> Table 2.

Ten people cannot judge a model's accuracy (benchmarks/bench_real_cohort.py does that on the
86-subject development cohort); this checks what must hold on any real cohort: every head
passes QC, every subject is predicted exactly once by a model that never trained on it, and
Table 2's per-fold figures are those of the folds' own subjects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import mean_absolute_error

from snakemake.utils import update_config

from brainage.config import resolved_config
import readme
from conftest import REPO, TINY_CONFIG, make_workdir, run_line

DATA = REPO / "tests" / "data" / "ixi_cohort"


def _config() -> dict:
    """config/ixi.yaml over config/defaults.yaml as a user layers it (`--configfile config/ixi.yaml`),
    with the tiny run's quick settings but its cohort and grids (tests/config/tiny.yaml), a tiny
    network, the classical model and their stack, 3 folds."""
    config = resolved_config([REPO / "config" / "ixi.yaml"], REPO)
    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    update_config(config, {k: v for k, v in tiny.items() if k not in ("cohort", "preprocess", "models")})
    config["training"]["splits"]["folds"] = 3
    # config/ixi.yaml's end-to-end network (on tissue maps), small; its classical model; a stack of both
    config["models"] = {"resnet18_e2e": {**config["models"]["resnet18_e2e_tissue"], "epochs": 2, "width": 0.125,
                                         "batch_size": 4},
                        "brainager": config["models"]["brainager"],
                        "stack": {"backbone": "stack", "grid": 4, "members": ["brainager", "resnet18_e2e"]}}
    return config


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The README's IXI walkthrough block, from the base install, in a working directory whose
    config/ixi.yaml is :func:`_config` (a user's --configfile layers over the defaults as it
    does); the run to Table 2 and the deployed models (saliency and figures are the tiny run's)."""
    config = _config()
    work = make_workdir(tmp_path_factory.mktemp("real_cohort") / "work", config)
    (work / "config" / "ixi.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (work / "tests" / "data").mkdir(parents=True)
    (work / "tests" / "data" / "ixi_cohort").symlink_to(DATA)
    block = next(b for b in readme.command_blocks() if b.startswith("brainage manifest --ixi-demographics tests/"))
    manifest_line, run = block.splitlines()
    made = run_line(manifest_line, work, timeout=300)
    assert made.returncode == 0, made.stderr
    out = run_line(run + " table2 deploy_all", work, timeout=1800)
    (work / "snakemake.log").write_text(out.stdout + out.stderr)
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    return work


def test_every_real_head_is_imported_with_its_age_and_passes_qc(real_run):
    sheet = pd.read_csv(DATA / "demographics.csv")
    people = pd.read_csv(real_run / "results" / "cohort" / "participants.tsv", sep="\t")
    expected = dict(zip("sub-" + sheet["IXI_ID"], sheet["AGE"]))
    assert dict(zip(people["participant_id"], people["age"])) == pytest.approx(expected)
    qc = pd.read_csv(real_run / "results" / "qc" / "qc.tsv", sep="\t")
    assert len(qc) == 10 and qc["passed"].astype(str).str.lower().eq("true").all(), qc.to_string()
    # a real head's brain: adult brain volumes, a registration that matches the template
    assert qc["brain_volume_ml"].between(900, 2000).all()
    assert (qc["ncc"] > 0.45).all()


def test_each_subject_is_predicted_once_by_the_fold_model_that_never_trained_on_it(real_run):
    from brainage.data.splits import read_splits, split_hash

    pred = pd.read_csv(real_run / "results" / "predictions" / "resnet18_e2e.tsv", sep="\t")
    assert sorted(pred["participant_id"]) == sorted("sub-" + pd.read_csv(DATA / "demographics.csv")["IXI_ID"])
    assert (pred["split"] == "test").all() and np.isfinite(pred["predicted_age"]).all()
    for fold, group in pred.groupby("fold_r0"):
        splits = read_splits(real_run / "results" / "splits" / f"{fold}.tsv").set_index("participant_id")["split"]
        assert set(group["participant_id"]) == set(splits.index[splits == "test"])
        card = json.loads((real_run / "results" / "models" / "resnet18_e2e" / "cv" / fold / "model_card.json").read_text())
        train_ids = splits.index[splits == "train"]
        assert card["data"]["train"]["hash"] == split_hash(train_ids)   # the model saw exactly these
        assert not set(group["participant_id"]) & set(train_ids)
    assert pred["fold_r0"].nunique() == 3


def test_table2_gives_the_folds_mean_and_sd_of_the_real_subjects(real_run):
    pred = pd.read_csv(real_run / "results" / "predictions" / "resnet18_e2e.tsv", sep="\t")
    per_fold = [mean_absolute_error(g["age"], g["predicted_age"]) for _, g in pred.groupby("fold_r0")]
    table2 = pd.read_csv(real_run / "results" / "tables" / "table2.tsv", sep="\t")
    row = table2[table2["model"] == "resnet18_e2e"].iloc[0]
    assert row["n_test"] == 10 and row["n_folds"] == 3
    assert row["mae_folds_mean"] == pytest.approx(np.mean(per_fold))
    assert row["mae_folds_sd"] == pytest.approx(np.std(per_fold, ddof=1))
    assert row["mae"] == pytest.approx(mean_absolute_error(pred["age"], pred["predicted_age"]))
    assert "3-fold cross-validation" in (real_run / "results" / "tables" / "table2.md").read_text()


def test_a_cross_validated_model_is_deployed_as_the_mean_of_its_fold_models(real_run):
    """results/models/<m>/model.pt after a CV run: the fold models' mean, with the out-of-fold interval."""
    import torch

    from brainage.core.intervals import Calibration
    from brainage.data.cache import CachedVolumes
    from brainage.models.files import load_model

    models = real_run / "results" / "models" / "resnet18_e2e"
    deployed, meta = load_model(models / "model.pt")
    folds = [load_model(models / "cv" / f / "model.pt")[0] for f in ("r0f0", "r0f1", "r0f2")]
    cache = CachedVolumes(str(real_run / "results" / "cache" / "res-4" / "volumes.npy"),
                          str(real_run / "results" / "cache" / "res-4" / "index.tsv"))
    pred = pd.read_csv(real_run / "results" / "predictions" / "resnet18_e2e.tsv", sep="\t")
    x = torch.from_numpy(np.stack([cache.volume(p) for p in pred["participant_id"][:4]]))[:, None].float()
    with torch.no_grad():
        expected = torch.stack([m(x).reshape(-1) for m in folds]).mean(0)
        torch.testing.assert_close(deployed(x).reshape(-1), expected, rtol=1e-5, atol=1e-4)
    # 10 out-of-fold residuals at level 0.9: the ceil(11 * 0.9) = 10th smallest, the largest
    residuals = np.abs(pred["predicted_age"] - pred["age"])
    assert Calibration.from_meta(meta["interval"]).halfwidth == pytest.approx(residuals.max())
    assert meta["grid_res"] == 4.0 and meta["preprocess"]["engine"] == "native"


def test_the_stack_combines_its_members_with_weights_fitted_outside_each_test_fold(real_run):
    pred = {m: pd.read_csv(real_run / "results" / "predictions" / f"{m}.tsv", sep="\t").set_index("participant_id")
            for m in ("stack", "brainager", "resnet18_e2e")}
    for fold, group in pred["stack"].groupby("fold_r0"):
        info = json.loads((real_run / "results" / "predictions" / "cv" / "stack" / f"{fold}.json").read_text())
        assert fold not in info["fitted_on"]["folds"] and len(info["fitted_on"]["folds"]) == 2
        w = info["weights"]
        assert min(w.values()) >= 0 and sum(w.values()) == pytest.approx(1.0)
        ids = group.index
        expected = sum(w[m] * pred[m].loc[ids, "predicted_age"] for m in ("brainager", "resnet18_e2e"))
        np.testing.assert_allclose(group["predicted_age"], expected, rtol=1e-9)
    stack_model = json.loads((real_run / "results" / "models" / "stack" / "model_card.json").read_text())
    assert stack_model["kind"] == "ensemble" and set(stack_model["stack"]) == {"brainager", "resnet18_e2e"}


def test_the_readme_predict_line_on_new_real_heads(real_run, tmp_path):
    """The README's line after the walkthrough, as written, from the base install: a folder of
    new raw heads (one real IXI head no model trained on, and a truncated file) -> one row each;
    the head predicted with its interval, the broken file a row with its reason."""
    import gzip
    import shutil

    line = next(b for b in readme.command_blocks() if b.startswith("brainage predict --model results/models/brainager"))
    new = real_run / "new_scans"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    head = REPO / "tests" / "data" / "ixi" / "IXI012-HH-1211-T1_ds.nii.gz"
    shutil.copy(head, new / head.name)
    (new / "broken.nii.gz").write_bytes(gzip.compress(head.read_bytes()[:5000])[:3000])
    out = run_line(line, real_run, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(real_run / "preds.tsv", sep="\t", keep_default_na=False).set_index("file")
    assert sorted(Path(f).name for f in table.index) == ["IXI012-HH-1211-T1_ds.nii.gz", "broken.nii.gz"]
    good = table.loc[next(f for f in table.index if f.endswith(head.name))]
    age = float(pd.read_csv(REPO / "tests" / "data" / "ixi" / "demographics.csv").set_index("IXI_ID").loc["IXI012", "AGE"])
    assert abs(float(good["predicted_age"]) - age) < 30  # a real head is predicted as an adult of some age
    assert float(good["predicted_age_lower"]) < float(good["predicted_age"]) < float(good["predicted_age_upper"])
    assert good["error"] in ("", "n/a")
    broken = table.loc[next(f for f in table.index if f.endswith("broken.nii.gz"))]
    assert broken["predicted_age"] in ("", "n/a") and "image" in broken["error"] and "broken.nii.gz" in broken["error"]
