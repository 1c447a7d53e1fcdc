"""Preprocess one raw T1w scan with the native engine (deepbet, N4, ANTs affine to MNI)."""

from pathlib import Path

from brainage.logs import redirect_to_log
from brainage.preprocess import preprocess_t1w

with redirect_to_log(snakemake.log[0]):
    preprocess_t1w(
        snakemake.input.t1w,
        Path(snakemake.output.qc_json).parent,
        snakemake.wildcards.subject,
        snakemake.params.grids,
        engine="native",
        settings=snakemake.params.settings,
        threads=snakemake.threads,
    )
