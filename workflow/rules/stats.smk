# Stage 'stats': Tables 1-4, the study's figures, the comparison sheet and the report entries.
# One rule per entry of brainage.report.targets (name, files, report category, script, what it
# needs), named as the target a user types (`snakemake fig6_bag_violin`); each asks only for
# the files it draws from (STATS_INPUTS). Which models are "best end-to-end", "RNC", "SFCN" and
# the batch-size sweep comes from config models via brainage.report.roles.model_roles (no
# model names here).
from brainage.core import paths
from brainage.preprocess.settings import ITK_THREADS
from brainage.report.roles import model_roles, normalise_models
from brainage.report.categories import CAT_PROV
from brainage.report.targets import TARGETS, wanted

STATS = config["stats"]
STATS_MODELS = normalise_models(config.get("models"))
ROLES = model_roles(STATS_MODELS)
HEADLINE = list(
    dict.fromkeys(ROLES.e2e + ROLES.rnc + ROLES.sfcn + ROLES.classical + ROLES.stack)
)
EXTERNAL = STATS.get("external") or None
QC_MONTAGE = str(paths.QC_MONTAGE)
# Simulated cohort only: the predictions carry the simulator's true BAG (rule predict_cohort)
SIMULATED = config["cohort"]["source"] == "simulate"


def predictions(names):
    return [str(paths.prediction_files(m)["tsv"]) for m in names]


def train_logs(names):
    """Learning-curve logs of the trained models among ``names`` (a stack has none)."""
    return [
        str(paths.model_files(model_dir(m))["log_tsv"]) for m in names if m in TRAINED
    ]


def saliency_groups(names):
    return [str(paths.saliency_outputs(m)["groups"]) for m in names]


def templates(names):
    """Template of each grid the named models use (the saliency figures draw on it)."""
    grids = sorted({STATS_MODELS[m]["grid"] for m in names})
    return [str(resource_paths(RESOURCES, g)["template"]) for g in grids]


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
    )


STATS_PARAMS = dict(
    alpha=STATS["alpha"],
    n_resamples=STATS["bootstrap"],
    seed=SEED,
    older_than=STATS["older_than"],
)
E2E_RNC = ROLES.e2e + ROLES.rnc

# What each target draws from: a list (its script reads the files in order) or a dict (by name).
STATS_INPUTS = {
    "fig1_age_distribution": [str(paths.PARTICIPANTS)],
    "table1": [str(paths.PARTICIPANTS)],
    "fig_qc_montage": [QC_MONTAGE],
    "fig_training_curves": train_logs(STATS_MODELS),
    "table2": predictions(STATS_MODELS),
    "table3": dict(
        predictions=predictions(HEADLINE),
        logs=train_logs(E2E_RNC),
        splits=str(paths.SPLITS),
        external=[EXTERNAL["predictions"]] if EXTERNAL else [],
    ),
    "fig3_batch_size": predictions(ROLES.sweep_models),
    "fig_pred_vs_age": predictions(STATS_MODELS),
    "study_comparison": dict(
        predictions=predictions(E2E_RNC), logs=train_logs(E2E_RNC)
    ),
    "fig4_gradram_e2e": gradram_inputs(ROLES.e2e),
    "fig5_gradram_rnc": gradram_inputs(ROLES.rnc),
    "fig7_gradram_disease": gradram_inputs(ROLES.rnc + ROLES.e2e),
    "table4": predictions(STATS_MODELS),
    "fig6_bag_violin": dict(
        predictions=predictions(HEADLINE), logs=train_logs(E2E_RNC)
    ),
    "table_gap_recovery": predictions(STATS_MODELS),
    "fig_gap_recovery": predictions(STATS_MODELS),
}
# Each target's params but `code` (the hash of what its script imports, every rule has it last)
STATS_RULE_PARAMS = {
    "fig_training_curves": dict(models=[m for m in STATS_MODELS if m in TRAINED]),
    "table2": dict(models=STATS_MODELS, stats=STATS_PARAMS),
    "table3": dict(models=STATS_MODELS, external=EXTERNAL, stats=STATS_PARAMS),
    "fig3_batch_size": dict(models=STATS_MODELS, stats=STATS_PARAMS),
    "fig_pred_vs_age": dict(models=list(STATS_MODELS)),
    "study_comparison": dict(models=STATS_MODELS, cohort=config["cohort"]),
    # Figures 4, 5 and 7 (rows: age groups, or AD/PD beside HC)
    "fig4_gradram_e2e": gradram_params(ROLES.e2e, ["e2e"], "age"),
    "fig5_gradram_rnc": gradram_params(ROLES.rnc, ["rnc"], "age"),
    "fig7_gradram_disease": gradram_params(
        ROLES.rnc + ROLES.e2e, ["rnc", "e2e"], "disease"
    ),
    "table4": dict(models=STATS_MODELS, stats=STATS_PARAMS),
    "fig6_bag_violin": dict(models=STATS_MODELS),
    "table_gap_recovery": dict(models=STATS_MODELS, alpha=STATS["alpha"]),
    "fig_gap_recovery": dict(models=list(STATS_MODELS)),
}
if set(STATS_INPUTS) != {t.name for t in TARGETS}:
    raise WorkflowError(
        "stats.smk: STATS_INPUTS names other targets than brainage.report.targets: "
        f"{sorted(set(STATS_INPUTS) ^ {t.name for t in TARGETS})}"
    )


def positional(files):
    """The unnamed files of a rule's input or output (a list), or none (a dict names them)."""
    return files if isinstance(files, list) else []


def named(files):
    """The named files of a rule's input or output (a dict), or none (a list)."""
    return files if isinstance(files, dict) else {}


def target_outputs(target):
    """The target's files by kind, the one in the report captioned by workflow/report/<name>.rst;
    a one-file target's file is unnamed (its script writes output[0])."""
    files = {kind: str(path) for kind, path in target.files().items()}
    files[target.report_kind] = report(
        files[target.report_kind],
        caption=f"../report/{target.caption}",
        category=target.category,
        subcategory=target.subcategory,
    )
    return list(files.values()) if len(files) == 1 else files


def stats_rule(target):
    """The rule of ``target``. A function, not a loop's body: Snakemake evaluates the `script:`
    expression again when the job runs, where a loop variable would hold the last target (every
    rule would run the last script); here it is this call's ``target``."""
    files, outputs = STATS_INPUTS[target.name], target_outputs(target)

    rule:
        name:
            target.name
        input:
            *positional(files),
            **named(files),
        output:
            *positional(outputs),
            **named(outputs),
        log:
            f"logs/{target.name}/{target.name}.log",
        conda:
            "../../envs/stats.yaml"
        params:
            **STATS_RULE_PARAMS.get(target.name, {}),
            code=script_code(target.script_file),
        script:
            f"../scripts/{target.script_file}"


for STATS_TARGET in TARGETS:
    stats_rule(STATS_TARGET)


def stats_targets():
    """The stage's final files; those needing a model role are left out when no model has it."""
    available = dict(
        cohort=True,
        # the montage only when a preprocessing rule (included before this file) writes it
        qc_montage=STATS.get("qc_montage", True)
        and any(QC_MONTAGE in map(str, r.output) for r in workflow.rules),
        models=bool(STATS_MODELS),
        simulated=bool(STATS_MODELS) and SIMULATED,
        headline=bool(HEADLINE),
        e2e_or_rnc=bool(ROLES.e2e or ROLES.rnc),
        e2e=bool(ROLES.e2e),
        rnc=bool(ROLES.rnc),
        sweeps=bool(ROLES.sweeps),
    )
    return [getattr(rules, t.name).output for t in wanted(available)]


def rule_threads():
    """Threads of every rule as this workflow (and its profile) set them; a callable is left out."""
    cores = {
        r.name: getattr(r.resources.get("_cores"), "raw", None) for r in workflow.rules
    }
    return {name: n for name, n in cores.items() if isinstance(n, int)}


rule provenance:
    output:
        json=str(paths.PROVENANCE),
        html=report(
            str(paths.PROVENANCE_HTML),
            caption="../report/provenance.rst",
            category=CAT_PROV,
        ),
    log:
        "logs/provenance/provenance.log",
    conda:
        "../../envs/stats.yaml"
    params:
        config=config,
        scripts={s.name: script_code(s.name) for s in sorted(SCRIPTS.glob("*.py"))},
        threads=rule_threads(),
        itk_threads=ITK_THREADS,
        code=script_code("provenance.py"),
    script:
        "../scripts/provenance.py"


rule stats_all:
    input:
        stats_targets(),
        rules.provenance.output,
