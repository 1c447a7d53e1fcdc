"""rule predict_oof: a cross-validated model's out-of-fold predictions table (brainage.data.cv)."""

from brainage.data.cv import write_merged_folds
from brainage.core.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    write_merged_folds(
        dict(zip(snakemake.params.folds, snakemake.input)),
        snakemake.output.tsv,
        snakemake.output.json,
        interval=snakemake.params.interval,
    )
