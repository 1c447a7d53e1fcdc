"""Table 4: brain-age gap in AD and PD, and its correlation with severity (brainage.tables)."""

from brainage.logs import redirect_to_log
from brainage.tables import load_predictions, table4_disease

with redirect_to_log(snakemake.log[0]):
    table = table4_disease(load_predictions(snakemake.input), snakemake.params.models, **snakemake.params.stats)
    table.write(snakemake.output.tsv, snakemake.output.md, snakemake.output.html)
