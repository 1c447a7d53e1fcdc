"""Build the simulator's template-space head, labels and effect fields (once per cohort)."""

from brainage.core.logs import redirect_to_log
from brainage.data.simulate.anatomy import build_anatomy

with redirect_to_log(snakemake.log[0]):
    build_anatomy(snakemake.params.voxel_mm).save(snakemake.output[0])
