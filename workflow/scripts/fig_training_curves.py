"""Training curves of every model (brainage.report.figures)."""

from brainage.report.figures import fig_training_curves, model_colours
from brainage.core.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    names = snakemake.params.models
    fig_training_curves(dict(zip(names, snakemake.input)), model_colours(names), [snakemake.output.png, snakemake.output.svg])
