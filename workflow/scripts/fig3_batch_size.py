"""Figure 3: test MAE of the RNC sweep models against batch size (brainage.report.figures)."""

from brainage.report.figures import fig3_batch_size
from brainage.core.io import write_tsv
from brainage.core.logs import redirect_to_log
from brainage.report.tables import load_predictions

with redirect_to_log(snakemake.log[0]):
    p = snakemake.params.stats
    data = fig3_batch_size(
        load_predictions(snakemake.input), snakemake.params.models, [snakemake.output.png, snakemake.output.svg],
        n_resamples=p["n_resamples"], seed=p["seed"],
    )
    write_tsv(snakemake.output.tsv, data)
