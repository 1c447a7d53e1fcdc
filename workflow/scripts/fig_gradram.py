"""Figures 4, 5 and 7: group-mean saliency (config explain.method; the study: Grad-RAM) of the best model of a role (brainage.report.figures_saliency)."""

from pathlib import Path

from brainage.core.paths import SALIENCY_METHOD_LABELS as METHOD_LABELS
from brainage.report.figures_saliency import AGE_GROUP_ROWS, DISEASE_DIFFERENCES, DISEASE_ROWS, fig_gradram
from brainage.core.logs import redirect_to_log
from brainage.report.stats import validation_maes

# rows, title, difference map beside each row (Figure 7: patients minus age-matched controls)
ROWS = {
    "age": (AGE_GROUP_ROWS, "{method} by age group, healthy subjects ({splits})", None),
    "disease": (DISEASE_ROWS, "{method} in AD and PD", DISEASE_DIFFERENCES),
}

with redirect_to_log(snakemake.log[0]):
    p = snakemake.params
    rows, title, differences = ROWS[p.rows]
    # the healthy subjects whose maps enter the age groups: config explain.hc_splits
    title = title.format(splits=f"{'/'.join(p.hc_splits)} split{'s' * (len(p.hc_splits) > 1)}", method=METHOD_LABELS[p.method])
    groups = {Path(d).parent.name: d for d in snakemake.input.groups}
    chosen = fig_gradram(p.models, validation_maes(snakemake.input.logs), groups, snakemake.input.templates,
                         [snakemake.output.png, snakemake.output.svg], p.roles, rows, title, p.cut_coords, differences, p.method)
    print(f"models shown: {chosen}")
