"""A healthy-only cohort (a real one such as IXI: no AD, no PD) through every table and figure:
each says what is absent in one line, never fails and never draws an empty panel."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from brainage.report import figures, figures_gap, figures_saliency

from brainage.report import comparison, tables, tables_disease
from brainage.data.atlases import build_resources, resource_paths
from brainage.core.paths import saliency_file

import _stats_fixtures as fx

MODELS = {m: fx.MODELS[m] for m in ("resnet18_e2e", "rnc_b16", "sfcn")}
CHOSEN = {"best end-to-end": "resnet18_e2e", "RNC": "rnc_b16", "SFCN": "sfcn"}


def _cohort(n_ad: int = 0, n_pd: int = 0):
    parts = fx.participants(n_hc=120, n_ad=n_ad, n_pd=n_pd)
    split = fx.splits(parts)
    return parts, {m: fx.predictions(parts, split, m) for m in MODELS}


@pytest.fixture(scope="module")
def healthy():
    return _cohort()


def _svg_texts(path) -> str:
    return path.read_text()


def test_table4_of_a_healthy_cohort_is_one_line(healthy, tmp_path):
    _, preds = healthy
    table = tables_disease.table4_disease(preds, MODELS, n_resamples=50)
    table.write(tmp_path / "t4.tsv", tmp_path / "t4.md", tmp_path / "t4.html")
    md = (tmp_path / "t4.md").read_text().strip().splitlines()
    assert md[0].startswith("# Table 4")
    body = [line for line in md[1:] if line.strip()]
    assert body == ["- No AD or PD subjects in this cohort: no disease brain-age gap to report."]
    assert "<table" not in (tmp_path / "t4.html").read_text()
    assert (tmp_path / "t4.tsv").read_text().strip() == "model\tcohort\tn"


def test_table4_with_ad_only_names_the_missing_pd(tmp_path):
    _, preds = _cohort(n_ad=15)
    table = tables_disease.table4_disease(preds, MODELS, n_resamples=50)
    assert set(table.data["cohort"]) == {"AD"} and len(table.data) == len(MODELS)
    assert table.notes[-1] == "No PD subjects in this cohort."


def test_table1_and_study_comparison_say_what_is_absent(healthy):
    parts, preds = healthy
    assert tables.table1_cohort(parts).notes[-1] == "No AD or PD subjects in this cohort."
    sheet = comparison.study_comparison(preds, MODELS, {m: 5.0 for m in MODELS}, "healthy only")
    ad_rows = [line for line in sheet.splitlines() if line.startswith("| AD mean BAG") or line.startswith("| r(AD BAG")]
    assert len(ad_rows) == 2 and all(row.endswith("| No AD subjects in this cohort |") for row in ad_rows)


def test_fig6_and_pred_vs_age_draw_only_the_healthy(healthy, tmp_path):
    _, preds = healthy
    colours = figures.model_colours(list(MODELS))
    figures_gap.fig6_bag_violin(preds, CHOSEN, colours, [tmp_path / "f6.svg"])
    svg = _svg_texts(tmp_path / "f6.svg")
    # one x position (HC test) and the one line; no AD or PD slot
    assert "<!-- No AD or PD subjects in this cohort -->" in svg
    assert svg.count("<!-- HC (test) -->") == 1 and "<!-- AD -->" not in svg and "<!-- PD -->" not in svg
    figures.fig_pred_vs_age(preds, colours, [tmp_path / "pva.svg"])
    svg = _svg_texts(tmp_path / "pva.svg")
    assert "<!-- No AD or PD subjects in this cohort: healthy test subjects only -->" in svg
    assert "<!-- AD -->" not in svg and "<!-- PD -->" not in svg  # no legend entry for an empty cohort


@pytest.fixture(scope="module")
def saliency(tmp_path_factory):
    """Group maps of a healthy cohort without anyone over 80: HC 20-40, 40-60, 60-80 only."""
    root = tmp_path_factory.mktemp("healthy_saliency")
    res = root / "resources"
    build_resources(res, [4])
    template = resource_paths(res, 4)["template"]
    groups = {}
    for model in MODELS:
        d = root / model / "groups"
        d.mkdir(parents=True)
        for group, path in fx.write_saliency(root / "maps", template, groups=("HC_20-40", "HC_40-60", "HC_60-80")).items():
            shutil.copy(path, d / saliency_file("4", group=group))
        groups[model] = d
    return groups, template


def test_fig7_of_a_healthy_cohort_is_its_title_and_one_line(saliency, tmp_path):
    groups, template = saliency
    chosen = figures_saliency.fig_gradram(MODELS, {m: 5.0 for m in MODELS}, groups, [template], [tmp_path / "f7.svg"],
                                          ["rnc", "e2e"], figures_saliency.DISEASE_ROWS, "Grad-RAM in AD and PD",
                                          differences=figures_saliency.DISEASE_DIFFERENCES)
    assert chosen == {"rnc": "rnc_b16", "e2e": "resnet18_e2e"}
    svg = _svg_texts(tmp_path / "f7.svg")
    assert "<!-- No subjects in this cohort for AD, PD -->" in svg
    assert "<image" not in svg and "no subjects" not in svg  # no brain panel, no empty row


def test_fig4_leaves_out_an_age_group_without_subjects(saliency, tmp_path):
    groups, template = saliency
    figures_saliency.fig_gradram(MODELS, {m: 5.0 for m in MODELS}, groups, [template], [tmp_path / "f4.svg"], ["e2e"],
                                 figures_saliency.AGE_GROUP_ROWS, "Grad-RAM by age group")
    svg = _svg_texts(tmp_path / "f4.svg")
    assert "No subjects in this cohort for HC 80+ y: not drawn" in svg
    assert "<!-- HC 80+ y -->" not in svg and "no subjects" not in svg
    # three rows, each labelled once: the groups that have subjects
    assert all(svg.count(f"<!-- HC {g} y -->") == 1 for g in ("20-40", "40-60", "60-80"))
