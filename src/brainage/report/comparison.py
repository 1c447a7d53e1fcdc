"""The study-comparison sheet: the study's published figures beside this run's, as Markdown and
as a minimal HTML page for the report."""

from __future__ import annotations

import html
from typing import Any, Mapping

import pandas as pd

from brainage.report import stats
from brainage.report.tables import HTML_PAGE, fmt, fmt_p, fmt_pm, markdown_table
from brainage.report.tables_disease import headline_models

#: the study's published results (the paper), different subjects from any run here
PUBLISHED = {
    "rnc_highrez": {"label": "RNC-highRez (ResNet18, RNC, 1 mm)", "mae": 4.27, "mae_sd": 3.32, "r2": 0.93},
    "e2e_highrez": {"label": "ResNet50-highRez (end-to-end L1, 1 mm)", "mae": 4.92, "mae_sd": 3.96, "r2": 0.90},
    "ad_bag": {"label": "AD mean BAG, RNC model (years)", "value": 2.12},
    "ad_r": {"label": "Pearson r, AD BAG vs ADAS-Cog-11", "value": 0.37},
}


# --------------------------------------------------------------------------- comparison sheet
def study_comparison(
    predictions: Mapping[str, pd.DataFrame],
    models: Mapping[str, Mapping[str, Any]],
    val_mae: Mapping[str, float],
    cohort_label: str,
) -> str:
    """Markdown sheet: the study's published numbers beside this run's, labelled as different data."""
    chosen, selection = headline_models(models, val_mae)
    rnc, e2e = chosen.get("RNC"), chosen.get("best end-to-end")

    def acc(name: str | None) -> stats.Accuracy | None:
        return stats.accuracy(stats.healthy_test(predictions[name]), 0) if name in predictions else None

    def describe(name: str | None) -> str:
        if name is None:
            return "not configured"
        spec = models.get(name, {})
        return f"{name} ({spec.get('backbone', '?')}, {spec.get('loss', '?')}, {spec.get('grid', '?')} mm)"

    rows = []
    for key, name in (("rnc_highrez", rnc), ("e2e_highrez", e2e)):
        pub, a = PUBLISHED[key], acc(name)
        rows.append(
            {
                "Quantity": "HC test MAE (years) / R2",
                "Published (study)": f"{pub['label']}: {fmt_pm(pub['mae'], pub['mae_sd'])} / {pub['r2']:.2f}",
                "This run": f"{describe(name)}: " + (f"{fmt_pm(a.mae, a.mae_sd)} / {fmt(a.r2)}" if a else "n/a"),
            }
        )
    ad_bag, ad_r = "n/a", "n/a"
    if "AD" in stats.absent_cohorts(list(predictions.values())):
        ad_bag = ad_r = f"{stats.absent_line(['AD'])}"
    elif rnc in predictions:
        ad = stats.disease_group(predictions[rnc], "AD")
        if len(ad):
            bag_mean, bag_sd = stats.gap_summary(ad["bag"])
            test = stats.bag_vs_zero(ad["bag"])
            ad_bag = f"{describe(rnc)}: {fmt_pm(bag_mean, bag_sd, signed=True)} (p = {fmt_p(test.pvalue)}, N = {len(ad)})"
            if "adas_cog11" in ad:
                corr = stats.severity_correlation(ad["bag"], ad["adas_cog11"].astype(float))
                ad_r = f"{describe(rnc)}: r = {fmt(corr.r)} (p = {fmt_p(corr.pvalue)}, N = {corr.n})"
    rows.append({"Quantity": "AD mean BAG (years)", "Published (study)": f"{PUBLISHED['ad_bag']['value']:+.2f} (RNC)", "This run": ad_bag})
    rows.append({"Quantity": "r(AD BAG, ADAS-Cog-11)", "Published (study)": f"{PUBLISHED['ad_r']['value']:.2f} (RNC)", "This run": ad_r})
    lines = [
        "# Study comparison: published figures beside this run",
        "",
        "**Different data.** The published column is copied from the study (Crête, Kersten-Oertel, Xiao: "
        "\"MRI-based brain age estimation with supervised contrastive learning of continuous representation\"), "
        "measured on its own cohorts (IXI, HCP-Aging, OpenNeuro, ADNI, PPMI) at 1 mm. "
        f"This run used: {cohort_label}. The numbers are not a replication and must not be compared "
        "as if the subjects, scanners, grids or training budgets were the same; they show whether this run "
        "reproduces the study's direction of effects (RNC at least as accurate as end-to-end, AD BAG > 0, "
        "positive BAG-ADAS-Cog-11 correlation).",
        "",
        markdown_table(pd.DataFrame(rows)),
        "",
    ]
    lines += [f"- {s}" for s in selection]
    return "\n".join(lines).rstrip() + "\n"


def markdown_to_html(markdown: str, title: str) -> str:
    """A minimal HTML page for the report from a sheet made of paragraphs and one table."""
    body = []
    for block in markdown.strip().split("\n\n"):
        lines = block.splitlines()
        if lines[0].startswith("# "):
            body.append(f"<h3>{html.escape(lines[0][2:])}</h3>")
        elif lines[0].startswith("|"):
            cells = [[c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")] for line in lines if not line.startswith("|---")]
            head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif lines[0].startswith("- "):
            body.append("<ul>" + "".join(f"<li>{html.escape(l[2:])}</li>" for l in lines) + "</ul>")
        else:
            text = html.escape(" ".join(lines)).replace("**", "")
            body.append(f"<p>{text}</p>")
    return HTML_PAGE.format(title=html.escape(title), table="\n".join(body), notes="").replace(f"<h3>{html.escape(title)}</h3>\n", "", 1)
