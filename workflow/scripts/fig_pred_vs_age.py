"""Predicted against chronological age, per model (brainage.report.figures)."""

from brainage.report.figures import fig_pred_vs_age, model_colours
from brainage.core.logs import redirect_to_log
from brainage.report.tables import load_predictions

with redirect_to_log(snakemake.log[0]):
    fig_pred_vs_age(load_predictions(snakemake.input), model_colours(snakemake.params.models), [snakemake.output.png, snakemake.output.svg])
