"""Pretrained initialisation (config ``init_from``): transfer, fine-tuning, refusals, the rule's input."""

import hashlib
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from brainage.data.cache import CachedVolumes
from brainage.models.files import load_model
from brainage.models.networks import build_age_model
from brainage.models.spec import entry_problems
from brainage.train.engine import train_model
from brainage.train.pretrained import rebase_head
from brainage.train.run import predict_ages as _predict
from conftest import make_workdir, snakemake_cmd, tiny_config
from test_train import TRAINING, _entry, data  # noqa: F401  (data: the tiny cache fixture)

REVERSED = 110.0  # the "new cohort": the same brains aged REVERSED - age


def _rnc(**kw):
    return _entry(**{"loss": "rnc", "epochs": 1, "rnc": {"chunk_size": 6}, "head": {"epochs": 5}, **kw})


@pytest.fixture(scope="module")
def source(data, tmp_path_factory):  # noqa: F811
    """A trained RNC model (results/models/<name> layout): the pretraining."""
    splits, vols, index = data
    folder = tmp_path_factory.mktemp("pretrained") / "rnc_src"
    # enough contrastive epochs for the encoder to order the tiny cohort by age (after 1: r +0.26 with the mirrored ages)
    train_model("rnc_src", _rnc(epochs=6, augment=False), TRAINING, splits, vols, index, folder, seed=0, progress=False)
    return folder


def _encoder_params(path):
    model, _ = load_model(path)
    return {k: p.detach() for k, p in model.encoder.named_parameters()}


def _predict_rows(path, splits, vols, index) -> pd.Series:
    """Predicted ages of every healthy subject (train, val, test) by the model file at ``path``."""
    model, _ = load_model(path)
    cache = CachedVolumes(vols, index)
    ids = splits.loc[splits["split"].isin(["train", "val", "test"]), "participant_id"]
    rows = np.array([cache.row_of(p) for p in ids])
    return pd.Series(_predict(model, cache, rows, torch.device("cpu"), 4, False, None), index=ids.index)


@pytest.mark.slow
def test_epochs_0_keeps_the_encoder_and_fits_the_head_on_the_new_cohort(data, source, tmp_path):  # noqa: F811
    """Pure transfer: the encoder's parameters are the source's bit for bit and no contrastive
    epoch runs; the head is fitted to the new cohort's ages. The new cohort is the same brains
    with ages mirrored (REVERSED - age, a trend the source's head gets backwards): the transferred
    model's predictions follow the new ages, the source's go against them."""
    splits, vols, index = data
    mirrored = splits.assign(age=REVERSED - splits["age"])
    entry = _rnc(epochs=0, init_from=str(source), head={"epochs": 20})
    train_model("transfer", entry, TRAINING, mirrored, vols, index, tmp_path, seed=0, progress=False)
    ours, theirs = _encoder_params(tmp_path / "model.pt"), _encoder_params(source / "model.pt")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    log = (tmp_path / "train_log.tsv").read_text()
    assert "encoder" not in log and "head" in log
    transferred = _predict_rows(tmp_path / "model.pt", mirrored, vols, index)
    pretrained = _predict_rows(source / "model.pt", mirrored, vols, index)
    new_ages = mirrored.loc[transferred.index, "age"]
    r_new, r_src = (float(np.corrcoef(p, new_ages)[0, 1]) for p in (transferred, pretrained))
    assert r_new > 0.5 and r_src < -0.5, (r_new, r_src)
    assert abs(transferred.mean() - new_ages.mean()) < 5, (transferred.mean(), new_ages.mean())
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["init_from"]["path"] == str(source) and card["init_from"]["name"] == "rnc_src"
    assert card["init_from"]["model_sha256"] == hashlib.sha256((source / "model.pt").read_bytes()).hexdigest()


@pytest.mark.slow
def test_fine_tuning_continues_from_the_source(data, source, tmp_path):  # noqa: F811
    """epochs 1 with a small lr: the encoder moved (it trained) but stays near the source, far
    from where the same run without init_from (same seed) ends."""
    splits, vols, index = data
    entry = _rnc(optimiser={"lr": 1e-3}, head={"epochs": 1})
    train_model("tuned", {**entry, "init_from": str(source)}, TRAINING, splits, vols, index, tmp_path / "tuned", seed=0,
                progress=False)
    train_model("fresh", entry, TRAINING, splits, vols, index, tmp_path / "fresh", seed=0, progress=False)
    src = _encoder_params(source / "model.pt")
    tuned, fresh = _encoder_params(tmp_path / "tuned" / "model.pt"), _encoder_params(tmp_path / "fresh" / "model.pt")
    moved = max(float((tuned[k] - src[k]).abs().max()) for k in src)
    apart = max(float((fresh[k] - src[k]).abs().max()) for k in src)
    assert 0 < moved < 0.05 * apart, (moved, apart)
    log = (tmp_path / "tuned" / "train_log.tsv").read_text()
    assert "encoder" in log


def test_rebased_head_predicts_the_same_ages():
    """An end-to-end source's head, moved to a cohort of other age mean and sd, keeps its ages."""
    torch.manual_seed(0)
    src = build_age_model({"backbone": "resnet18", "width": 0.125, "conv1_stride": 2}, 55.0, 12.0).eval()
    new = build_age_model({"backbone": "resnet18", "width": 0.125, "conv1_stride": 2}, 71.0, 4.0).eval()
    new.load_state_dict({**src.state_dict(), "age_mean": new.age_mean, "age_sd": new.age_sd})
    rebase_head(new.head, 55.0, 12.0, 71.0, 4.0)
    x = torch.randn(3, 1, 20, 24, 20)
    with torch.no_grad():
        torch.testing.assert_close(new(x), src(x), rtol=1e-5, atol=1e-4)


def _one_line(text: str) -> str:
    assert "\n" not in text, text
    return text


@pytest.mark.slow
def test_incompatible_source_is_refused_in_one_line(data, source, tmp_path):  # noqa: F811
    splits, vols, index = data
    wide = _rnc(width=0.25, init_from=str(source))
    [line] = entry_problems("wide", wide)  # config time: against the source's model card
    assert _one_line(line) == (f"config models.wide.init_from: {source} does not fit this model "
                               f"(width 0.25 here, 0.125 in the source)")
    bare = tmp_path / "no_card"  # no card to read at config time: the trainer checks model.pt
    bare.mkdir()
    shutil.copy(source / "model.pt", bare / "model.pt")
    assert entry_problems("wide", {**wide, "init_from": str(bare)}) == []
    with pytest.raises(ValueError) as err:
        train_model("wide", {**wide, "init_from": str(bare)}, TRAINING, splits, vols, index, tmp_path / "w", seed=0,
                    progress=False)
    assert _one_line(str(err.value)) == f"wide: init_from {bare} does not fit this model (width 0.25 here, 0.125 in the source)"
    assert not (tmp_path / "w" / "model.pt").exists()


def test_refusals_are_one_line_each(tmp_path):
    missing = tmp_path / "nowhere"
    cases = {
        "classical": ({"backbone": "pca_gpr", "grid": 4, "init_from": "results/models/rnc"}, "has no network weights"),
        "e2e0": (_entry(epochs=0, init_from=str(missing)), "0 trains nothing in an end-to-end model"),
        "rnc0": (_rnc(epochs=0), "0 needs init_from"),
        "gone": (_rnc(init_from=str(missing)), f"{missing} holds no model.pt"),
    }
    for name, (entry, expected) in cases.items():
        [line] = entry_problems(name, entry)
        assert _one_line(line).startswith(f"config models.{name}.") and expected in line, line
    # a source under results/models/ may be trained by this same run: checked at job start
    assert entry_problems("later", _rnc(init_from="results/models/pretrain")) == []


@pytest.mark.slow  # ~10 s: the DAG of the tiny configuration
def test_dry_run_lists_the_source_model_as_input_of_train(source, tmp_path):
    config = tiny_config()
    config["models"]["rnc_transfer"] = {**config["models"]["rnc_resnet18"], "epochs": 0, "init_from": str(source)}
    work = make_workdir(tmp_path / "work", config)
    out = subprocess.run(snakemake_cmd(work, "-n", "--cores", "1", "results/models/rnc_transfer/model.pt"),
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    job = text[text.index("rule train:"):]
    inputs = re.search(r"^\s+input: (.*)$", job, re.M).group(1).split(", ")
    assert str(source / "model.pt") in inputs, inputs
