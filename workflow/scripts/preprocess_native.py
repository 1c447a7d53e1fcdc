"""Preprocess one raw T1w scan with the native engine (deepbet, N4, ANTs affine to MNI);
a bad scan is excluded with its reason instead (brainage.preprocess.preprocess_or_exclude)."""

from pathlib import Path

from brainage.logs import redirect_to_log
from brainage.preprocess import preprocess_or_exclude

with redirect_to_log(snakemake.log[0]):
    preprocess_or_exclude(
        snakemake.input.t1w,
        Path(snakemake.output.qc_json).parent,
        snakemake.wildcards.subject,
        snakemake.params.grids,
        engine="native",
        settings={**snakemake.params.settings, "qc": snakemake.config["preprocess"].get("qc")},
        threads=snakemake.threads,
    )
