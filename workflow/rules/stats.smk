# Stage 'stats': Tables 1-4, the study's figures, the comparison sheet and the report entries.
# Every figure and table is a rule without wildcards named as the target a user types
# (`snakemake fig6_bag_violin`); each asks only for the files it draws from. Which models are
# "best end-to-end", "RNC", "SFCN" and the batch-size sweep comes from config models via
# brainage.report.roles.model_roles (no model names here).
from brainage.core import paths
from brainage.report.categories import CAT_ACC, CAT_DIS, CAT_QC, CAT_SAL, CAT_TRAIN
from brainage.report.roles import model_roles, normalise_models

STATS = config["stats"]
STATS_MODELS = normalise_models(config.get("models"))
ROLES = model_roles(STATS_MODELS)
HEADLINE = list(dict.fromkeys(ROLES.e2e + ROLES.rnc + ROLES.sfcn + ROLES.classical))
EXTERNAL = STATS.get("external") or None
QC_MONTAGE = str(paths.QC_MONTAGE)


def predictions(names):
    return [str(paths.prediction_files(m)["tsv"]) for m in names]


def train_logs(names):
    return [str(paths.model_files(model_dir(m))["log_tsv"]) for m in names]


def saliency_groups(names):
    return [str(paths.saliency_outputs(m)["groups"]) for m in names]


def templates(names):
    """Template of each grid the named models use (the saliency figures draw on it)."""
    grids = sorted({STATS_MODELS[m]["grid"] for m in names})
    return [str(resource_paths(RESOURCES, g)["template"]) for g in grids]


def figure(name, category, subcategory=None):
    """The PNG (in the report, captioned by workflow/report/<name>.rst) of figure ``name``."""
    return report(
        f"results/figures/{name}.png",
        caption=f"../report/{name}.rst",
        category=category,
        subcategory=subcategory,
    )


def table(name, category):
    """The HTML rendering (in the report) of table ``name``."""
    return report(
        f"results/tables/{name}.html",
        caption=f"../report/{name}.rst",
        category=category,
    )


STATS_PARAMS = dict(
    alpha=STATS["alpha"],
    n_resamples=STATS["bootstrap"],
    seed=SEED,
    older_than=STATS["older_than"],
)


rule fig1_age_distribution:
    input:
        str(paths.PARTICIPANTS),
    output:
        png=figure("fig1_age_distribution", CAT_QC),
        svg="results/figures/fig1_age_distribution.svg",
    log:
        "logs/fig1_age_distribution/fig1_age_distribution.log",
    conda:
        "../../envs/stats.yaml"
    params:
        code=script_code("fig1_age_distribution.py"),
    script:
        "../scripts/fig1_age_distribution.py"


rule table1:
    input:
        str(paths.PARTICIPANTS),
    output:
        tsv="results/tables/table1.tsv",
        md="results/tables/table1.md",
        html=table("table1", CAT_QC),
    log:
        "logs/table1/table1.log",
    conda:
        "../../envs/stats.yaml"
    params:
        code=script_code("table1.py"),
    script:
        "../scripts/table1.py"


rule fig_qc_montage:
    input:
        QC_MONTAGE,
    output:
        figure("fig_qc_montage", CAT_QC),
    log:
        "logs/fig_qc_montage/fig_qc_montage.log",
    conda:
        "../../envs/stats.yaml"
    params:
        code=script_code("fig_qc_montage.py"),
    script:
        "../scripts/fig_qc_montage.py"


rule fig_training_curves:
    input:
        train_logs(STATS_MODELS),
    output:
        png=figure("fig_training_curves", CAT_TRAIN),
        svg="results/figures/fig_training_curves.svg",
    log:
        "logs/fig_training_curves/fig_training_curves.log",
    conda:
        "../../envs/stats.yaml"
    params:
        models=list(STATS_MODELS),
        code=script_code("fig_training_curves.py"),
    script:
        "../scripts/fig_training_curves.py"


rule table2:
    input:
        predictions(STATS_MODELS),
    output:
        tsv="results/tables/table2.tsv",
        md="results/tables/table2.md",
        html=table("table2", CAT_ACC),
    log:
        "logs/table2/table2.log",
    conda:
        "../../envs/stats.yaml"
    params:
        models=STATS_MODELS,
        stats=STATS_PARAMS,
        code=script_code("table2.py"),
    script:
        "../scripts/table2.py"


rule table3:
    input:
        predictions=predictions(HEADLINE),
        logs=train_logs(ROLES.e2e + ROLES.rnc),
        splits=str(paths.SPLITS),
        external=[EXTERNAL["predictions"]] if EXTERNAL else [],
    output:
        tsv="results/tables/table3.tsv",
        md="results/tables/table3.md",
        html=table("table3", CAT_ACC),
    log:
        "logs/table3/table3.log",
    conda:
        "../../envs/stats.yaml"
    params:
        models=STATS_MODELS,
        external=EXTERNAL,
        stats=STATS_PARAMS,
        code=script_code("table3.py"),
    script:
        "../scripts/table3.py"


rule fig3_batch_size:
    input:
        predictions(ROLES.sweep_models),
    output:
        png=figure("fig3_batch_size", CAT_ACC),
        svg="results/figures/fig3_batch_size.svg",
        tsv="results/figures/fig3_batch_size.tsv",
    log:
        "logs/fig3_batch_size/fig3_batch_size.log",
    conda:
        "../../envs/stats.yaml"
    params:
        models=STATS_MODELS,
        stats=STATS_PARAMS,
        code=script_code("fig3_batch_size.py"),
    script:
        "../scripts/fig3_batch_size.py"


rule fig_pred_vs_age:
    input:
        predictions(STATS_MODELS),
    output:
        png=figure("fig_pred_vs_age", CAT_ACC),
        svg="results/figures/fig_pred_vs_age.svg",
    log:
        "logs/fig_pred_vs_age/fig_pred_vs_age.log",
    conda:
        "../../envs/stats.yaml"
    params:
        models=list(STATS_MODELS),
        code=script_code("fig_pred_vs_age.py"),
    script:
        "../scripts/fig_pred_vs_age.py"


rule study_comparison:
    input:
        predictions=predictions(ROLES.e2e + ROLES.rnc),
        logs=train_logs(ROLES.e2e + ROLES.rnc),
    output:
        md="results/tables/study_comparison.md",
        html=table("study_comparison", CAT_ACC),
    log:
        "logs/study_comparison/study_comparison.log",
    conda:
        "../../envs/stats.yaml"
    params:
        models=STATS_MODELS,
        cohort=config["cohort"],
        code=script_code("study_comparison.py"),
    script:
        "../scripts/study_comparison.py"


def gradram_inputs(names):
    """Group maps, training logs (best model by validation MAE) and templates of ``names``."""
    return dict(
        groups=saliency_groups(names),
        logs=train_logs(names),
        templates=templates(names),
    )


def gradram_params(names, roles, rows):
    return dict(
        models=STATS_MODELS,
        candidates=list(names),
        roles=roles,
        rows=rows,
        hc_splits=(config.get("explain") or {}).get("hc_splits", ["test"]),
        method=(config.get("explain") or {}).get("method", "gradram"),
        cut_coords=STATS["cut_coords"],
        code=script_code("fig_gradram.py"),
    )


# Figures 4, 5 and 7: one rule, used three times (rows: age groups, or AD/PD beside HC)
rule fig4_gradram_e2e:
    input:
        **gradram_inputs(ROLES.e2e),
    output:
        png=figure("fig4_gradram_e2e", CAT_SAL),
        svg="results/figures/fig4_gradram_e2e.svg",
    log:
        "logs/fig4_gradram_e2e/fig4_gradram_e2e.log",
    conda:
        "../../envs/stats.yaml"
    params:
        **gradram_params(ROLES.e2e, ["e2e"], "age"),
    script:
        "../scripts/fig_gradram.py"


use rule fig4_gradram_e2e as fig5_gradram_rnc with:
    input:
        **gradram_inputs(ROLES.rnc),
    output:
        png=figure("fig5_gradram_rnc", CAT_SAL),
        svg="results/figures/fig5_gradram_rnc.svg",
    log:
        "logs/fig5_gradram_rnc/fig5_gradram_rnc.log",
    params:
        **gradram_params(ROLES.rnc, ["rnc"], "age"),


use rule fig4_gradram_e2e as fig7_gradram_disease with:
    input:
        **gradram_inputs(ROLES.rnc + ROLES.e2e),
    output:
        png=figure("fig7_gradram_disease", CAT_DIS),
        svg="results/figures/fig7_gradram_disease.svg",
    log:
        "logs/fig7_gradram_disease/fig7_gradram_disease.log",
    params:
        **gradram_params(ROLES.rnc + ROLES.e2e, ["rnc", "e2e"], "disease"),


rule table4:
    input:
        predictions(STATS_MODELS),
    output:
        tsv="results/tables/table4.tsv",
        md="results/tables/table4.md",
        html=table("table4", CAT_DIS),
    log:
        "logs/table4/table4.log",
    conda:
        "../../envs/stats.yaml"
    params:
        models=STATS_MODELS,
        stats=STATS_PARAMS,
        code=script_code("table4.py"),
    script:
        "../scripts/table4.py"


rule fig6_bag_violin:
    input:
        predictions=predictions(HEADLINE),
        logs=train_logs(ROLES.e2e + ROLES.rnc),
    output:
        png=figure("fig6_bag_violin", CAT_DIS),
        svg="results/figures/fig6_bag_violin.svg",
    log:
        "logs/fig6_bag_violin/fig6_bag_violin.log",
    conda:
        "../../envs/stats.yaml"
    params:
        models=STATS_MODELS,
        code=script_code("fig6_bag_violin.py"),
    script:
        "../scripts/fig6_bag_violin.py"


# Simulated cohort only: the predictions carry the simulator's true BAG (rule predict_cohort)
SIMULATED = config["cohort"]["source"] == "simulate"


rule table_gap_recovery:
    input:
        predictions(STATS_MODELS),
    output:
        tsv="results/tables/table_gap_recovery.tsv",
        md="results/tables/table_gap_recovery.md",
        html=table("table_gap_recovery", CAT_DIS),
    log:
        "logs/table_gap_recovery/table_gap_recovery.log",
    conda:
        "../../envs/stats.yaml"
    params:
        models=STATS_MODELS,
        alpha=STATS["alpha"],
        code=script_code("table_gap_recovery.py"),
    script:
        "../scripts/table_gap_recovery.py"


rule fig_gap_recovery:
    input:
        predictions(STATS_MODELS),
    output:
        png=figure("fig_gap_recovery", CAT_DIS),
        svg="results/figures/fig_gap_recovery.svg",
    log:
        "logs/fig_gap_recovery/fig_gap_recovery.log",
    conda:
        "../../envs/stats.yaml"
    params:
        models=list(STATS_MODELS),
        code=script_code("fig_gap_recovery.py"),
    script:
        "../scripts/fig_gap_recovery.py"


def stats_targets():
    """The stage's final files; those needing a model role are left out when no model has it."""
    targets = [rules.fig1_age_distribution.output, rules.table1.output]
    # the montage only when a preprocessing rule (included before this file) writes it
    if STATS.get("qc_montage", True) and any(
        QC_MONTAGE in map(str, r.output) for r in workflow.rules
    ):
        targets.append(rules.fig_qc_montage.output)
    if STATS_MODELS:
        targets += [
            rules.fig_training_curves.output,
            rules.table2.output,
            rules.fig_pred_vs_age.output,
            rules.table4.output,
        ]
        if SIMULATED:
            targets += [rules.table_gap_recovery.output, rules.fig_gap_recovery.output]
    if HEADLINE:
        targets += [rules.table3.output, rules.fig6_bag_violin.output]
    if ROLES.e2e or ROLES.rnc:
        targets += [rules.study_comparison.output, rules.fig7_gradram_disease.output]
    if ROLES.e2e:
        targets.append(rules.fig4_gradram_e2e.output)
    if ROLES.rnc:
        targets.append(rules.fig5_gradram_rnc.output)
    if ROLES.sweeps:
        targets.append(rules.fig3_batch_size.output)
    return targets


rule stats_all:
    input:
        stats_targets(),
