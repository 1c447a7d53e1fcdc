# Stage 'train': splits, the float16 cache of every grid, and one training job per model of
# config `models:` (results/models/<name>/). All logic is in brainage.data (splits, cache) and brainage.train.


from brainage.models.kinds import STACK, kind_of
from brainage.models.spec import init_from_input

MODELS = list(config.get("models") or {})
# models fitted on volumes by a training job; the others (stacks) on trained models' predictions
TRAINED = [m for m in MODELS if kind_of(config["models"][m]).trained]
STACKS = [m for m in MODELS if kind_of(config["models"][m]) is STACK]
MODEL_FILES = patterns(paths.model_files(paths.MODELS_ROOT / "{model}"))
GRID_LABELS = {res_label(g): g for g in GRIDS}


def model_grid(wildcards):
    """Cache files of the grid a model trains on."""
    return patterns(
        paths.cache_files(
            paths.CACHE_ROOT, float(config["models"][wildcards.model]["grid"])
        )
    )


def init_from_model(wildcards):
    """The trained model.pt a model starts from (config init_from), so that a new source retrains."""
    return init_from_input(config["models"][wildcards.model])


wildcard_constraints:
    model="|".join(MODELS) if MODELS else "NO_MODEL",
    fold="|".join(FOLDS) if FOLDS else "NO_FOLD",
    res="|".join(GRID_LABELS),


rule splits:
    input:
        cohort_fills_splits,
        participants=PARTICIPANTS_TSV,
        excluded=QC_EXCLUDED,
    output:
        splits=SPLITS_TSV,
        folds=[str(paths.fold_splits(f)) for f in FOLDS],
    log:
        "logs/splits/splits.log",
    conda:
        "../../envs/torch.yaml"
    params:
        seed=SEED,
        splits=config["training"]["splits"],
        code=script_code("train_splits.py"),
    script:
        "../scripts/train_splits.py"


rule cache:
    input:
        splits=SPLITS_TSV,
        volumes=lambda w: [
            paths.preprocessed_t1w(PP_DIR.format(subject=s), s, w.res)
            for s in SUBJECTS
        ],
    output:
        **patterns(paths.cache_files(paths.CACHE_ROOT, "{res}")),
    log:
        "logs/cache/res-{res}.log",
    benchmark:
        "logs/cache/res-{res}.benchmark.tsv"
    conda:
        "../../envs/torch.yaml"
    params:
        subjects=SUBJECTS,
        code=script_code("train_cache.py"),
    script:
        "../scripts/train_cache.py"


rule train:
    input:
        unpack(model_grid),
        unpack(init_from_model),
        splits=SPLITS_TSV,
    output:
        **{
            key: (
                report(
                    path,
                    caption="../report/learning_curve.rst",
                    category=CAT_TRAIN,
                    subcategory="{model}",
                )
                if key == "curve"
                else path
            )
            for key, path in patterns(MODEL_FILES).items()
            if key != "checkpoint"
        },
    log:
        "logs/train/{model}.log",
    benchmark:
        "logs/train/{model}.benchmark.tsv"
    wildcard_constraints:
        model="|".join(TRAINED) if TRAINED else "NO_MODEL",
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=lambda w: int(config["models"][w.model].get("gpus", 0)),
        mem_mb=8000,
        runtime=24 * 60,
    params:
        # the model's own entry: editing it reruns this model (and its downstream) only
        model=lambda w: config["models"][w.model],
        training=config["training"],
        preprocess=config["preprocess"],
        # the interval calibrated on the validation split, stored in model.pt (brainage predict)
        interval=config["infer"]["interval"],
        seed=SEED,
        code=script_code("train_model.py"),
    script:
        "../scripts/train_model.py"


# Cross-validation: the same job for each fold, on the fold's splits, in the fold's folder.
use rule train as train_fold with:
    input:
        unpack(model_grid),
        unpack(init_from_model),
        splits=str(paths.fold_splits("{fold}")),
    output:
        **{
            key: path
            for key, path in patterns(
                paths.model_files(paths.model_dir("{model}", "{fold}"))
            ).items()
            if key != "checkpoint"
        },
    log:
        "logs/train/{model}/{fold}.log",
    benchmark:
        "logs/train/{model}/{fold}.benchmark.tsv"


def trained_models(key):
    """File ``key`` of every model (of every fold of every model when cross-validated)."""
    return [
        str(paths.model_files(paths.model_dir(m, f))[key])
        for m in TRAINED
        for f in (FOLDS or [None])
    ]


rule train_all:
    input:
        trained_models("model"),
        trained_models("card"),
        [str(paths.model_files(model_dir(m))["curve"]) for m in TRAINED],
