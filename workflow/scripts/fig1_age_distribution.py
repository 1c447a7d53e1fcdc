"""Figure 1: relative age distribution per dataset (brainage.report.figures)."""

from brainage.report.figures import fig1_age_distribution
from brainage.core.logs import redirect_to_log
from brainage.core.io import read_participants

with redirect_to_log(snakemake.log[0]):
    fig1_age_distribution(read_participants(snakemake.input[0]), [snakemake.output.png, snakemake.output.svg])
