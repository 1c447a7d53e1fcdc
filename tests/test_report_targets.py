"""The registry of the study's tables and figures (brainage.report.targets), from which
workflow/rules/stats.smk makes one rule per entry and the `stats_all` target list: every entry
has its script and its report caption, and names no file twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainage.report import categories
from brainage.report.targets import NEEDS, TARGETS, figure, wanted

REPO = Path(__file__).resolve().parents[1]


def test_every_target_has_its_script_and_caption():
    for target in TARGETS:
        assert (REPO / "workflow" / "scripts" / target.script_file).is_file(), target.name
        assert (REPO / "workflow" / "report" / target.caption).is_file(), target.name
        assert target.category in vars(categories).values(), target.name


def test_names_and_files_are_unique():
    names = [t.name for t in TARGETS]
    files = [f for t in TARGETS for f in t.files().values()]
    assert len(set(names)) == len(names) and len(set(files)) == len(files)


def test_targets_are_grouped_by_need_and_only_when_met():
    everything = wanted(dict.fromkeys(NEEDS, True))
    assert sorted(t.name for t in everything) == sorted(t.name for t in TARGETS)
    assert [NEEDS.index(t.needs) for t in everything] == sorted(NEEDS.index(t.needs) for t in everything)
    cohort_only = wanted({need: need == "cohort" for need in NEEDS})
    assert [t.name for t in cohort_only] == ["fig1_age_distribution", "table1"]
    with pytest.raises(ValueError, match="no answer"):
        wanted({"cohort": True})


def test_an_entry_must_name_a_known_need_and_keep_its_report_file():
    with pytest.raises(ValueError, match="needs"):
        figure("figx", categories.CAT_QC, needs="gpu")
    with pytest.raises(ValueError, match="png"):
        figure("figx", categories.CAT_QC, kinds=("svg",))
