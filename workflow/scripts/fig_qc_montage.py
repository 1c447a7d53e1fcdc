"""The preprocessing QC montage, copied into results/figures/ for the report."""

from brainage.report.figures import copy_figure
from brainage.core.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    copy_figure(snakemake.input[0], snakemake.output[0])
