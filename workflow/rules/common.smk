# Helpers shared by the rules: config validation, the participants table, file names.
# No rules here; every function is a thin call into the brainage library.
import os
import sys
from pathlib import Path

from snakemake.utils import validate

SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
# Jobs import the library too, also inside --sdm conda environments that do not install it.
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [SRC, os.environ.get("PYTHONPATH")])
)

from brainage.data.atlases import resource_paths
from brainage.config import ConfigError, check_cohort, check_config, layered
from brainage.core.grids import res_label
from brainage.core.io import InputError
from brainage.core import paths
from brainage.core.provenance import code_hash, script_code_hash
from brainage.report.categories import CAT_ACC, CAT_DIS, CAT_QC, CAT_SAL, CAT_TRAIN
from brainage.data.splits import fold_names

SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"


def script_code(script):
    """The `code` param of a rule: a hash of the library modules its script can import."""
    return script_code_hash(SCRIPTS / script)


CONFIG_SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
# the last --configfile's models replace earlier files' whole; nested --config numbers typed as YAML
layered(config, workflow.config_settings.configfiles, workflow.config_settings.config)
try:
    check_config(config, CONFIG_SCHEMA)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
validate(config, str(CONFIG_SCHEMA))  # defaults are in config/defaults.yaml

RESOURCES = "resources/atlases"
PARTICIPANTS_SCHEMA = str(
    Path(workflow.basedir) / "workflow" / "schemas" / "participants.schema.yaml"
)
SEED = config["seed"]
GRIDS = [float(g) for g in config["preprocess"]["grids"]]


def resource_files():
    """Template, mask and AAL116 on every configured grid, plus the labels table."""
    files = {str(p) for res in GRIDS for p in resource_paths(RESOURCES, res).values()}
    return sorted(files)


def load_participants():
    """The participants table at parse time (one row per subject, ``t1w`` is the raw scan).

    Simulated cohort: demographics are planned from the config and seed alone (cheap), and
    each raw scan is a file that the rule ``simulate_subject`` writes. Real data: the
    validated manifest given as ``cohort.manifest``.
    """
    if config["cohort"]["source"] == "simulate":
        from brainage.data.simulate import plan_cohort

        return plan_cohort(
            **config["cohort"]["simulate"], seed=SEED, bids_root=SIM_BIDS
        )
    from brainage.data.manifest import read_manifest

    if not config["cohort"].get("manifest"):
        raise InputError(
            "config cohort.manifest: must name a participants TSV when cohort.source is 'manifest'"
        )
    return read_manifest(config["cohort"]["manifest"])


SIM_COHORT = str(paths.SIM_COHORT)
SIM_BIDS = str(paths.SIM_BIDS)
# the pipeline's layout, from brainage.core.paths
PARTICIPANTS_TSV = str(paths.PARTICIPANTS)
SPLITS_TSV = str(paths.SPLITS)
QC_EXCLUDED = str(paths.QC_EXCLUDED)
# Cross-validation (training.splits.scheme: kfold): one model per fold r<repeat>f<fold>; the
# first fold's model stands for the model where one is needed (saliency, learning curves).
SPLITS_CFG = config["training"]["splits"]
FOLDS = (
    fold_names(SPLITS_CFG["folds"], SPLITS_CFG.get("repeats", 1))
    if SPLITS_CFG.get("scheme", "fixed") == "kfold"
    else []
)
REP_FOLD = FOLDS[0] if FOLDS else None


def model_dir(model):
    """The folder of ``model`` (of its first fold when cross-validated)."""
    return paths.model_dir(model, REP_FOLD)


def model_splits():
    """The splits table the model of :func:`model_dir` was trained with."""
    return str(paths.fold_splits(REP_FOLD)) if REP_FOLD else SPLITS_TSV


def patterns(files):
    """A brainage.core.paths mapping (built with wildcards such as "{subject}") as rule patterns."""
    return {key: str(path) for key, path in files.items()}


# The simulation model without the cohort sizes: adding a subject must not re-simulate the others.
SIM_MODEL = {
    key: value
    for key, value in (config["cohort"].get("simulate") or {}).items()
    if key not in ("n_hc", "n_ad", "n_pd")
}
try:
    PARTICIPANTS = load_participants().set_index("participant_id", drop=False)
except InputError as err:
    raise WorkflowError(str(err)) from None
SUBJECTS = list(PARTICIPANTS.index)
# A plain dict: raw_t1w runs once per subject job, 40,000 times on a large cohort.
RAW_T1W = dict(zip(SUBJECTS, PARTICIPANTS["t1w"]))


def cohort_fills_splits(wildcards):
    """No input: stops the DAG, before any job, when the cohort cannot fill every split.

    An input function of rule ``splits``, so a run that never trains (``preprocess_all`` on a
    few real scans) is not refused for it.
    """
    where = (
        "cohort.simulate"
        if config["cohort"]["source"] == "simulate"
        else f"cohort.manifest ({config['cohort']['manifest']})"
    )
    problems = check_cohort(PARTICIPANTS.reset_index(drop=True), config, where)
    if problems:
        raise WorkflowError("\n".join(problems))
    return []


def raw_t1w(wildcards):
    """The raw T1w scan of ``wildcards.subject``."""
    return RAW_T1W[wildcards.subject]
