"""rule train: one model of config `models:` (brainage.train.engine); torchrun when it asks for > 1 GPU."""

import torch

from brainage.core.logs import redirect_to_log
from brainage.data.splits import read_splits
from brainage.train.engine import launch_torchrun, train_model

with redirect_to_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    job = dict(
        name=snakemake.wildcards.model, entry=snakemake.params.model, training=snakemake.params.training,
        volumes=snakemake.input.volumes, index=snakemake.input.index,
        out_dir=str(snakemake.output.model).rsplit("/", 1)[0], seed=snakemake.params.seed,
        preprocess=snakemake.params.preprocess, interval=snakemake.params.interval,
    )
    if int(snakemake.params.model.get("gpus", 0)) > 1:
        launch_torchrun(job, snakemake.input.splits, int(snakemake.params.model["gpus"]))
    else:
        train_model(splits=read_splits(snakemake.input.splits), **job)
