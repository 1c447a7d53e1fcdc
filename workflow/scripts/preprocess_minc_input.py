"""Check a raw T1w scan and write its RAS+ copy, the MINC chain's input (brainage.preprocess.minc)."""

from brainage.core.logs import redirect_to_log
from brainage.preprocess.minc import write_ras_input

with redirect_to_log(snakemake.log[0]):
    write_ras_input(snakemake.input.t1w, snakemake.output[0], snakemake.wildcards.subject)
