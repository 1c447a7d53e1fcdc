"""Finish the MINC chain's products into the pipeline's outputs (grids, mask, affine, QC)."""

from pathlib import Path

from brainage.core.logs import redirect_to_log
from brainage.preprocess.minc import finish_minc

with redirect_to_log(snakemake.log[0]):
    finish_minc(
        snakemake.input.brain,
        snakemake.input.mask,
        snakemake.input.xfm,
        snakemake.input.t1w,
        Path(snakemake.output.qc_json).parent,
        snakemake.wildcards.subject,
        snakemake.params.grids,
        settings={**snakemake.params.settings, "qc": snakemake.config["preprocess"].get("qc")},
    )
