"""Table 4: brain-age gap in AD and PD, and its correlation with severity (brainage.report.tables_disease)."""

from brainage.core.logs import redirect_to_log
from brainage.report.tables import load_predictions
from brainage.report.tables_disease import table4_disease

with redirect_to_log(snakemake.log[0]):
    table = table4_disease(load_predictions(snakemake.input), snakemake.params.models, **snakemake.params.stats)
    table.write(snakemake.output.tsv, snakemake.output.md, snakemake.output.html)
