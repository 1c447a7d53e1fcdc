"""Gap recovery (simulated cohorts): predicted against the simulator's true BAG (brainage.report.tables_recovery)."""

from brainage.core.logs import redirect_to_log
from brainage.report.tables import load_predictions
from brainage.report.tables_recovery import table_gap_recovery

with redirect_to_log(snakemake.log[0]):
    table = table_gap_recovery(load_predictions(snakemake.input), snakemake.params.models, snakemake.params.alpha)
    table.write(snakemake.output.tsv, snakemake.output.md, snakemake.output.html)
