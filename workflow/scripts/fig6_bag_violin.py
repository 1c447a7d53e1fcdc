"""Figure 6: brain-age gap by cohort for the best end-to-end, RNC and SFCN models (brainage.report.figures_gap)."""

from brainage.report.figures import model_colours
from brainage.report.figures_gap import fig6_bag_violin
from brainage.core.logs import redirect_to_log
from brainage.report.stats import validation_maes
from brainage.report.tables import load_predictions
from brainage.report.tables_disease import headline_models

with redirect_to_log(snakemake.log[0]):
    models = snakemake.params.models
    chosen, notes = headline_models(models, validation_maes(snakemake.input.logs))
    print("\n".join(notes))
    fig6_bag_violin(load_predictions(snakemake.input.predictions), chosen, model_colours(list(models)), [snakemake.output.png, snakemake.output.svg])
