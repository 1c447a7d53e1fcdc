"""Predicted against the simulator's true brain-age gap, per model (brainage.report.figures_gap)."""

from brainage.report.figures import model_colours
from brainage.report.figures_gap import fig_gap_recovery
from brainage.core.logs import redirect_to_log
from brainage.report.tables import load_predictions

with redirect_to_log(snakemake.log[0]):
    fig_gap_recovery(load_predictions(snakemake.input), model_colours(snakemake.params.models), [snakemake.output.png, snakemake.output.svg])
