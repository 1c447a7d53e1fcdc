"""Table 1: cohort statistics per dataset (brainage.report.tables)."""

from brainage.core.logs import redirect_to_log
from brainage.core.io import read_participants
from brainage.report.tables import table1_cohort

with redirect_to_log(snakemake.log[0]):
    table1_cohort(read_participants(snakemake.input[0])).write(snakemake.output.tsv, snakemake.output.md, snakemake.output.html)
