"""Write the packaged template, brain mask and AAL116 on every configured grid."""

from pathlib import Path

from brainage.data.atlases import build_resources
from brainage.core.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    build_resources(Path(snakemake.output[0]).parent, snakemake.params.grids)
