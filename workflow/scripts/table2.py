"""Table 2: accuracy of every model on the healthy test split (brainage.report.tables)."""

from brainage.core.logs import redirect_to_log
from brainage.report.tables import load_predictions, table2_accuracy

with redirect_to_log(snakemake.log[0]):
    table = table2_accuracy(load_predictions(snakemake.input), snakemake.params.models, **snakemake.params.stats)
    table.write(snakemake.output.tsv, snakemake.output.md, snakemake.output.html)
