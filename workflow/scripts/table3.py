"""Table 3: best end-to-end and RNC models against the baselines (brainage.report.tables_disease)."""

from brainage.core.logs import redirect_to_log
from brainage.report.stats import read_predictions, validation_maes
from brainage.report.tables import load_predictions, train_size
from brainage.report.tables_disease import External, table3_baselines

with redirect_to_log(snakemake.log[0]):
    ext = snakemake.params.external
    external = None
    if ext:
        external = External(ext.get("name", "external"), read_predictions(ext["predictions"]), ext.get("train_size"))
    p = snakemake.params.stats
    table = table3_baselines(
        load_predictions(snakemake.input.predictions),
        snakemake.params.models,
        validation_maes(snakemake.input.logs),
        train_size(snakemake.input.splits),
        external,
        alpha=p["alpha"],
        n_resamples=p["n_resamples"],
        seed=p["seed"],
    )
    table.write(snakemake.output.tsv, snakemake.output.md, snakemake.output.html)
