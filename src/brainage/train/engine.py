"""The training engine: end-to-end L1 models and Rank-N-Contrast encoders with a linear head.

One model = one entry under ``models:`` in the config, resolved once here into a
:class:`~brainage.models.spec.ModelSpec` (see :func:`~brainage.models.spec.resolve_spec` for the
keys and their defaults) and handed to the trainer of its kind (:data:`TRAINERS`, one per
:data:`brainage.models.kinds.KINDS`). Three kinds:

- ``loss: l1`` (end-to-end): encoder + linear head trained together on the L1 loss of the
  standardised age, Adam (lr 1e-3), validation MAE every epoch, early stopping after
  ``patience`` epochs without improvement, the best-validation weights kept.
- ``backbone: pca_gpr``: the classical baseline, no network (brainage.models.classical).
- ``loss: rnc``: the encoder trained with ``RnCLoss`` on two augmented views per subject, SGD
  (lr 0.5, momentum 0.9, weight decay 1e-4) with step decay: the lr is multiplied by ``gamma``
  (0.1) at the fractions ``milestones`` (0.7, 0.8, 0.9) of the epochs, as in the Rank-N-Contrast
  reference code (decay rate 0.1 at epochs 700/800/900 of 1000). Batches larger than memory are
  split by gradient caching (``rnc.chunk_size``, brainage.train.gradcache). Then the linear head:
  encoder frozen (eval mode), one linear layer on its features, L1, SGD lr 0.05 momentum 0.9,
  decay 0.2 at 0.6/0.75/0.9 of ``head.epochs``, best-validation head kept (``head.select:
  best_val``) or the converged last one (``last``: with a handful of validation subjects the
  best-validation epoch is mostly noise). Features of the
  frozen encoder are computed once, without augmentation; they are standardised with the
  training-set statistics and scaled by 1/sqrt(F) while the head trains (conditioning), and
  that affine map is folded into the head's weights at the end, so the head stays one linear
  layer on raw features.

Where the parts live: the shared epoch loop (:mod:`brainage.train.loop`), each network kind's
step (:mod:`brainage.train.e2e`, :mod:`brainage.train.rnc`), the RNC head
(:mod:`brainage.train.head`), the run's data and shared pieces (:mod:`brainage.train.data`,
:mod:`brainage.train.run`), pretraining (:mod:`brainage.train.pretrained`), the files a network
leaves (:mod:`brainage.train.outputs`), the classical trainer (:mod:`brainage.train.classical`).

Pretraining (``init_from``, :func:`~brainage.train.pretrained.start_from_pretrained`): the network starts from a trained
model's weights (an RNC model or an RNC source: the encoder; end-to-end from end-to-end: the
whole network). An RNC model with ``epochs: 0`` skips the contrastive stage: only its head is
fitted, on the frozen pretrained encoder.

BatchNorm: before every evaluation (and before the head's features) the running statistics are
re-estimated on the un-augmented training volumes (:func:`~brainage.train.run.recompute_batchnorm_stats`); with
small 3D batches the exponential averages otherwise lag the weights badly.

Exact resume: a checkpoint (atomic write) after every epoch (and every
``training.checkpoint_every_steps`` steps, and on SIGTERM, e.g. SLURM preemption) holds the
model, optimiser, scheduler, RNG states, the phase/epoch/step position in the loader, and the
early-stopping state. The epoch's sample order and every augmentation draw are derived from
(seed, phase, epoch, subject, view) rather than from a stateful stream, so a resumed run reads
the same batches with the same augmentations as an uninterrupted one and ends with identical
weights (tested on CPU). A checkpoint whose config fingerprint (model entry, training section,
seed, split membership, grid, process count) differs is ignored; an edit of the code alone
resumes the checkpoint (Snakemake reruns the job, which continues where it stopped).

GPU: bf16 autocast, channels-last 3D tensors, pinned memory and non-blocking copies,
augmentation on the device, optional ``torch.compile``; losses are accumulated on the device
(no host sync per step). Under ``torchrun`` the model is wrapped in DistributedDataParallel,
each process takes its slice of every global batch, and the RNC loss is computed on the
gathered global batch (brainage.train.distributed.global_rnc_loss).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from brainage.core.io import atomic_path
from brainage.core.paths import model_files
from brainage.models.kinds import CLASSICAL, E2E, KINDS, RNC, kind_of
from brainage.models.networks import architecture_of, build_age_model
from brainage.models.spec import ModelSpec, init_from_problems
from brainage.train.checkpoint import Checkpoint, StopRequest
from brainage.train.classical import train_classical
from brainage.train.e2e import EndToEnd
from brainage.train.head import fit_head
from brainage.train.loop import fit_epochs, trained_network
from brainage.train.outputs import write_outputs
from brainage.train.pretrained import start_from_pretrained
from brainage.train.rnc import RncEncoder
from brainage.train.run import Run, TrainingInterrupted, make_optimiser, make_scheduler, new_state

log = logging.getLogger("brainage.train.engine")

__all__ = ["train_model", "launch_torchrun", "TrainingInterrupted", "TrainingJob", "TRAINERS"]


def train_model(
    name: str,
    entry: dict,
    training: dict,
    splits: pd.DataFrame,
    volumes: str | Path,
    index: str | Path,
    out_dir: str | Path,
    seed: int,
    preprocess: dict | None = None,
    max_epochs_this_run: int | None = None,
    progress: bool = True,
    interval: dict | None = None,
) -> dict:
    """Train model ``name`` (config ``entry``) on the cached grid; write model.pt and friends.

    ``splits``: the splits table (participant_id, age, split); ``volumes``/``index``: the cache
    of the model's grid; ``out_dir``: results/models/<name>. Resumes from
    ``out_dir/checkpoint.pt`` when it matches this config. ``max_epochs_this_run`` stops (with a
    checkpoint, raising :class:`TrainingInterrupted`) after that many epochs in this process.
    Returns the metrics written to the model card.
    """
    if kind_of(entry).network:
        problems = init_from_problems(name, entry)
        if problems:
            raise ValueError(problems[0])
    spec = ModelSpec.resolve(name, entry)  # the one place a config entry is resolved
    if spec.get("seed") is not None:  # the entry's own seed (a seed ensemble's member)
        seed = int(spec["seed"])
    job = TrainingJob(spec, training, splits, volumes, index, Path(out_dir), seed, preprocess, max_epochs_this_run,
                      progress, interval)
    return TRAINERS[spec.kind.name](job)


@dataclass(frozen=True)
class TrainingJob:
    """What a trainer of any kind is given: the resolved spec and the run's inputs."""

    spec: ModelSpec
    training: dict
    splits: pd.DataFrame
    volumes: str | Path
    index: str | Path
    out_dir: Path
    seed: int
    preprocess: dict | None = None
    max_epochs_this_run: int | None = None
    progress: bool = True
    #: config infer.interval: the interval calibrated on the validation split goes into model.pt
    interval: dict | None = None


def fit_network(job: TrainingJob) -> dict:
    """The trainer of the network kinds: the kind's first stage through the shared epoch loop
    (:data:`STAGES`), then, for RNC, the linear head on the frozen encoder."""
    name, seed = job.spec.name, job.seed
    stage_cls = STAGES[job.spec.kind.name]
    run = Run.setup(name, job.spec, job.training, job.splits, job.volumes, job.index, seed, job.progress)
    torch.manual_seed(seed)
    model = build_age_model(architecture_of(run.spec.settings), run.age_mean, run.age_sd).to(run.device)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    run.init_from = start_from_pretrained(run, model)
    opt = make_optimiser(stage_cls.trained_module(model).parameters(), run.spec["optimiser"])
    sched = make_scheduler(opt, run.spec["optimiser"], int(run.spec["epochs"]))

    ckpt = Checkpoint(model_files(job.out_dir)["checkpoint"], run.fingerprint(), writer=run.main)
    resumed = ckpt.load(name)
    state = new_state()
    head_resumed = resumed if resumed is not None and resumed["state"]["phase"] == "head" else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        state = resumed["state"]
        if state["phase"] == "main":
            opt.load_state_dict(resumed["optimiser"])
            sched.load_state_dict(resumed["scheduler"])

    with StopRequest.on_sigterm():
        if state["phase"] == "main":
            stage = stage_cls(run, model, trained_network(run, model, stage_cls))
            fit_epochs(run, stage, opt, sched, state, ckpt, job.max_epochs_this_run)
        if state["phase"] == "head":
            fit_head(run, model, state, ckpt, head_resumed)
    metrics = write_outputs(run, model, state, job.out_dir, job.preprocess, job.interval)
    ckpt.remove()
    log.info("%s: done %s", name, json.dumps(metrics))
    return metrics


def fit_classical_model(job: TrainingJob) -> dict:
    """The trainer of the classical kind: fitted in one go, no epochs (:mod:`brainage.train.classical`)."""
    return train_classical(job.spec, job.splits, job.volumes, job.index, job.out_dir, job.seed, job.training,
                           job.preprocess, job.interval)


#: the first stage of each network kind (what one optimisation step is)
STAGES = {stage.kind.name: stage for stage in (EndToEnd, RncEncoder)}
#: the trainer of each kind: TrainingJob -> the metrics of its model card
TRAINERS: dict[str, Callable[[TrainingJob], dict]] = {E2E.name: fit_network, RNC.name: fit_network,
                                                      CLASSICAL.name: fit_classical_model}
assert set(TRAINERS) == {k.name for k in KINDS.values() if k.trained}, "every trained model kind needs a trainer"


def launch_torchrun(job: dict, splits_path: str, gpus: int) -> None:
    """Run :func:`train_model` in ``gpus`` processes (one per GPU) under torchrun, on this node.

    ``job``: the keyword arguments of train_model without ``splits``, which each process reads
    from ``splits_path``. Raises CalledProcessError if training fails.
    """
    import subprocess

    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    job_file = out_dir / "torchrun_job.json"
    with atomic_path(job_file) as tmp:
        tmp.write_text(json.dumps({**job, "splits": str(splits_path)}, default=str))
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
         "-m", "brainage.train.engine", str(job_file)],
        check=True,
    )
    job_file.unlink(missing_ok=True)


def _main(job_json: str) -> None:
    """Entry point of one training process under torchrun: ``python -m brainage.train.engine job.json``."""
    job = json.loads(Path(job_json).read_text())
    logging.basicConfig(level=logging.INFO)
    from brainage.data.splits import read_splits

    job["splits"] = read_splits(job["splits"])
    train_model(**job)


if __name__ == "__main__":
    _main(sys.argv[1])
