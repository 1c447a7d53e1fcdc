"""The study's tables and figures, one entry each: workflow/rules/stats.smk defines one rule per
entry and builds the stage's target list (rule ``stats_all``) from :data:`TARGETS`. A new table
or figure is an entry here, its inputs (and any params) in stats.smk, its script in
workflow/scripts/ and its caption in workflow/report/.

An entry's name is the rule a user types (``snakemake fig6_bag_violin``) and the stem of its
files (brainage.core.paths.figure_files / table_files), of its report caption
(``workflow/report/<name>.rst``) and of its log. Its inputs are files of earlier stages chosen by
the config's model roles, so stats.smk gives them; here is what it needs before ``stats_all``
asks for it. Torch-free and config-free: it is imported when the workflow is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from brainage.core import paths
from brainage.report.categories import CAT_ACC, CAT_DIS, CAT_QC, CAT_SAL, CAT_TRAIN

#: What a target needs before ``stats_all`` asks for it, in the order ``stats_all`` lists its
#: targets (grouped by need): ``cohort`` (always there), ``qc_montage`` (a preprocessing rule
#: writes it and config stats.qc_montage is on), ``models`` (any model), ``simulated`` (a model
#: and a simulated cohort, whose predictions carry the true gap), ``headline`` (a best
#: end-to-end, RNC, SFCN or classical model), ``e2e_or_rnc``, ``e2e``, ``rnc`` (that model role)
#: and ``sweeps`` (a batch-size sweep); brainage.report.roles.model_roles gives the roles.
NEEDS = ("cohort", "qc_montage", "models", "simulated", "headline", "e2e_or_rnc", "e2e", "rnc", "sweeps")

FIGURE = ("png", "svg")
TABLE = ("tsv", "md", "html")


@dataclass(frozen=True)
class Target:
    """One table or figure. ``kinds``: the files it writes, in its rule's output order (a
    figure's ``png``, ``svg`` and ``tsv`` of its data in results/figures/; a table's ``tsv``,
    ``md`` and ``html`` in results/tables/); the report shows the PNG of a figure and the HTML
    of a table, under ``category`` (brainage.report.categories) and ``subcategory``.
    ``script``: the file in workflow/scripts/ that makes it (default ``<name>.py``)."""

    name: str
    table: bool
    kinds: tuple[str, ...]
    category: str
    needs: str = "cohort"
    script: str | None = None
    subcategory: str | None = None

    def __post_init__(self):
        if self.needs not in NEEDS:
            raise ValueError(f"target {self.name}: needs {self.needs!r} is not one of {NEEDS}")
        if self.report_kind not in self.kinds:
            raise ValueError(f"target {self.name}: the report's {self.report_kind} is not among {self.kinds}")

    @property
    def report_kind(self) -> str:
        """The kind of file the report shows."""
        return "html" if self.table else "png"

    @property
    def script_file(self) -> str:
        """The script's file name in workflow/scripts/."""
        return self.script or f"{self.name}.py"

    @property
    def caption(self) -> str:
        """The report caption's file name in workflow/report/."""
        return f"{self.name}.rst"

    def files(self) -> dict[str, Path]:
        """The target's files by kind, in output order."""
        return (paths.table_files if self.table else paths.figure_files)(self.name, self.kinds)


def figure(name: str, category: str, needs: str = "cohort", kinds: tuple[str, ...] = FIGURE,
           script: str | None = None) -> Target:
    """A figure: results/figures/<name>.png (in the report), .svg, and any other ``kinds``."""
    return Target(name, False, kinds, category, needs, script)


def table(name: str, category: str, needs: str = "cohort", kinds: tuple[str, ...] = TABLE) -> Target:
    """A table: results/tables/<name>.tsv, .md and .html (in the report), or the given ``kinds``."""
    return Target(name, True, kinds, category, needs)


#: In the paper's order (Table 1 ... Figure 7), which is also the order of the rules.
TARGETS = (
    figure("fig1_age_distribution", CAT_QC),
    table("table1", CAT_QC),
    # the montage of rule qc_table, copied among the figures (its only file)
    figure("fig_qc_montage", CAT_QC, needs="qc_montage", kinds=("png",)),
    figure("fig_training_curves", CAT_TRAIN, needs="models"),
    table("table2", CAT_ACC, needs="models"),
    table("table3", CAT_ACC, needs="headline"),
    # the PNG and SVG, and the numbers they show
    figure("fig3_batch_size", CAT_ACC, needs="sweeps", kinds=(*FIGURE, "tsv")),
    figure("fig_pred_vs_age", CAT_ACC, needs="models"),
    # a sheet to set beside the study's numbers: Markdown, and its HTML for the report
    table("study_comparison", CAT_ACC, needs="e2e_or_rnc", kinds=("md", "html")),
    # Figures 4, 5 and 7: one script (rows: age groups, or AD/PD beside HC)
    figure("fig4_gradram_e2e", CAT_SAL, needs="e2e", script="fig_gradram.py"),
    figure("fig5_gradram_rnc", CAT_SAL, needs="rnc", script="fig_gradram.py"),
    figure("fig7_gradram_disease", CAT_DIS, needs="e2e_or_rnc", script="fig_gradram.py"),
    table("table4", CAT_DIS, needs="models"),
    figure("fig6_bag_violin", CAT_DIS, needs="headline"),
    # simulated cohort only: the predictions carry the simulator's true gap
    table("table_gap_recovery", CAT_DIS, needs="simulated"),
    figure("fig_gap_recovery", CAT_DIS, needs="simulated"),
)


def wanted(available: Mapping[str, bool], targets: tuple[Target, ...] = TARGETS) -> list[Target]:
    """The targets whose need is met (``available``: need -> met), grouped by need in
    :data:`NEEDS` order and in registry order within a need."""
    missing = set(NEEDS) - set(available)
    if missing:
        raise ValueError(f"no answer for the needs {sorted(missing)}")
    return sorted((t for t in targets if available[t.needs]), key=lambda t: NEEDS.index(t.needs))
