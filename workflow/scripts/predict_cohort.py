"""Predictions of one model for the HC test split, AD and PD (brainage.apply.infer)."""

from brainage.apply.infer import run_predict_cohort
from brainage.core.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    run_predict_cohort(
        snakemake.input.model,
        snakemake.input.participants,
        snakemake.input.splits,
        snakemake.input.volumes,
        snakemake.input.index,
        snakemake.output.tsv,
        snakemake.output.json,
        batch_size=snakemake.params.batch_size,
        device=snakemake.params.device,
        bias_correction=snakemake.params.bias_correction,
        interval=snakemake.params.interval,
        # simulated cohort only: the simulator's truth adds each subject's true BAG
        truth_tsv=dict(snakemake.input.items()).get("truth"),
    )
