"""Grad-RAM maps of one model: per subject, per group, PNGs and AAL116 tables (brainage.explain)."""

from brainage.explain import run_saliency, simulated_age_regions
from brainage.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    run_saliency(
        snakemake.input.model,
        snakemake.input.participants,
        snakemake.input.splits,
        snakemake.input.volumes,
        snakemake.input.index,
        snakemake.params.resources,
        dict(snakemake.output.items()),
        truth_regions=(
            simulated_age_regions(snakemake.params.simulate)["name"] if snakemake.params.simulate is not None else None
        ),
        seed=snakemake.params.seed,
        device=snakemake.params.device,
        **snakemake.params.explain,
    )
