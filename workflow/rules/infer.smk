# Stage 'infer': brain-age predictions of every trained model for the HC test split, AD and
# PD (results/predictions/<model>.tsv, each with a split-conformal interval), and Grad-RAM saliency maps summarised by AAL116
# region (results/saliency/<model>/). All logic is in brainage.apply.infer and brainage.apply.explain.


def infer_models(saliency=False):
    """Models to run: ``infer.models`` if given, else every model of config ``models:``; with
    ``saliency``, only those Grad-RAM applies to (networks, not a classical model)."""
    from brainage.models.spec import has_saliency

    names = list(config["infer"].get("models") or MODELS)
    return [m for m in names if not saliency or has_saliency(config["models"][m])]


def model_cache(wildcards):
    """The model (its first fold's when cross-validated), manifest, the splits it was trained
    with and the cache of the model's grid (train.smk's model_grid)."""
    fold = getattr(wildcards, "fold", REP_FOLD)
    return {
        "model": str(
            paths.model_files(paths.model_dir(wildcards.model, fold))["model"]
        ),
        "participants": PARTICIPANTS_TSV,
        "splits": str(paths.fold_splits(fold)) if fold else SPLITS_TSV,
        **model_grid(wildcards),
    }


def predict_inputs(wildcards):
    """As :func:`model_cache`, plus, for a simulated cohort only, the simulator's subjects
    table (each subject's true brain-age gap goes into the predictions)."""
    inputs = model_cache(wildcards)
    if config["cohort"]["source"] == "simulate":
        inputs["truth"] = str(paths.SIM_SUBJECTS)
    return inputs


def saliency_inputs(wildcards):
    """As :func:`model_cache`, plus the template, brain mask and AAL116 of the model's grid,
    and, for a simulated cohort only, the simulator's per-region effects (the truth the
    saliency ranking is checked against; a real cohort has none)."""
    inputs = model_cache(wildcards)
    res = float(config["models"][wildcards.model]["grid"])
    inputs.update({k: str(v) for k, v in resource_paths(RESOURCES, res).items()})
    if config["cohort"]["source"] == "simulate":
        inputs["truth"] = str(paths.SIM_EFFECTS)
    return inputs


rule predict_cohort:
    input:
        unpack(predict_inputs),
    output:
        **patterns(paths.prediction_files("{model}")),
    log:
        "logs/predict_cohort/{model}.log",
    benchmark:
        "logs/predict_cohort/{model}.benchmark.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        batch_size=config["infer"]["batch_size"],
        device=config["infer"]["device"],
        bias_correction=config["infer"]["bias_correction"],
        interval=config["infer"]["interval"],
        code=script_code("predict_cohort.py"),
    script:
        "../scripts/predict_cohort.py"


if FOLDS:

    # Cross-validation: each fold's model predicts its test fold, the patients and its val
    # subjects; predict_oof merges the folds into the model's predictions table (brainage.data.cv).
    use rule predict_cohort as predict_fold with:
        output:
            **patterns(paths.fold_prediction_files("{model}", "{fold}")),
        log:
            "logs/predict_cohort/{model}/{fold}.log",
        benchmark:
            "logs/predict_cohort/{model}/{fold}.benchmark.tsv"

    rule predict_oof:
        input:
            lambda w: [
                str(paths.fold_prediction_files(w.model, f)["tsv"]) for f in FOLDS
            ],
        output:
            **patterns(paths.prediction_files("{model}")),
        log:
            "logs/predict_cohort/{model}.log",
        conda:
            "../../envs/stats.yaml"
        params:
            folds=FOLDS,
            interval=config["infer"]["interval"],
            code=script_code("predict_oof.py"),
        script:
            "../scripts/predict_oof.py"

    ruleorder: predict_oof > predict_cohort


rule saliency:
    input:
        unpack(saliency_inputs),
    output:
        **{
            key: directory(path) if key in ("subjects", "groups") else path
            for key, path in patterns(paths.saliency_outputs("{model}")).items()
        },
    log:
        "logs/saliency/{model}.log",
    benchmark:
        "logs/saliency/{model}.benchmark.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=6000,
    params:
        explain=config["explain"],
        seed=SEED,
        device=config["infer"]["device"],
        code=script_code("saliency.py"),
    script:
        "../scripts/saliency.py"


rule infer_all:
    input:
        [str(paths.prediction_files(m)["tsv"]) for m in infer_models()],
        [str(paths.saliency_outputs(m)["aal116"]) for m in infer_models(saliency=True)],
