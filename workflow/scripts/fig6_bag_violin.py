"""Figure 6: brain-age gap by cohort for the best end-to-end, RNC and SFCN models (brainage.figures)."""

from brainage.figures import fig6_bag_violin, model_colours
from brainage.logs import redirect_to_log
from brainage.stats import validation_maes
from brainage.tables import headline_models, load_predictions

with redirect_to_log(snakemake.log[0]):
    models = snakemake.params.models
    chosen, notes = headline_models(models, validation_maes(snakemake.input.logs))
    print("\n".join(notes))
    fig6_bag_violin(load_predictions(snakemake.input.predictions), chosen, model_colours(list(models)), [snakemake.output.png, snakemake.output.svg])
