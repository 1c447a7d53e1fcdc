"""Study comparison sheet: the study's published figures beside this run's (brainage.report.comparison)."""

from brainage.core.io import write_text
from brainage.core.logs import redirect_to_log
from brainage.report.comparison import markdown_to_html, study_comparison
from brainage.report.stats import validation_maes
from brainage.report.tables import load_predictions

with redirect_to_log(snakemake.log[0]):
    cohort = snakemake.params.cohort
    label = "the embedded simulated cohort (brainage simulate)" if cohort["source"] == "simulate" else f"the manifest {cohort.get('manifest')}"
    sheet = study_comparison(load_predictions(snakemake.input.predictions), snakemake.params.models, validation_maes(snakemake.input.logs), label)
    write_text(snakemake.output.md, sheet)
    write_text(snakemake.output.html, markdown_to_html(sheet, "Study comparison"))
