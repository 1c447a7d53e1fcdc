# Stage 'deploy' (cross-validation only): stacked models' fold predictions, then the one model
# file each model leaves to apply to new scans, results/models/<model>/model.pt: the ensemble
# of its fold models (a stack: of its members' deployed models), with its prediction interval.
# All logic is in brainage.train.stack and brainage.train.deploy.


def stack_member_folds(wildcards):
    """Every fold's predictions of every member of stack ``model``."""
    return [
        str(paths.fold_prediction_files(m, f)["tsv"])
        for m in config["models"][wildcards.model]["members"]
        for f in FOLDS
    ]


def deploy_inputs(wildcards):
    """A trained model: its fold models and out-of-fold predictions; a stack: its members'
    deployed models and out-of-fold predictions, and its own."""
    own = {"oof": str(paths.prediction_files(wildcards.model)["tsv"])}
    if wildcards.model in STACKS:
        members = config["models"][wildcards.model]["members"]
        return {
            **own,
            "members": [
                str(paths.model_files(paths.model_dir(m))["model"]) for m in members
            ],
            "member_oof": [str(paths.prediction_files(m)["tsv"]) for m in members],
        }
    return {
        **own,
        "folds": [
            str(paths.model_files(paths.model_dir(wildcards.model, f))["model"])
            for f in FOLDS
        ],
    }


if FOLDS:

    rule stack_fold:
        input:
            stack_member_folds,
        output:
            **patterns(paths.fold_prediction_files("{model}", "{fold}")),
        log:
            "logs/predict_cohort/{model}/{fold}.log",
        wildcard_constraints:
            model="|".join(STACKS) if STACKS else "NO_STACK",
        conda:
            "../../envs/stats.yaml"
        params:
            members=lambda w: config["models"][w.model]["members"],
            combine=lambda w: config["models"][w.model].get("combine", "fitted"),
            folds=FOLDS,
            code=script_code("stack_fold.py"),
        script:
            "../scripts/stack_fold.py"

    ruleorder: stack_fold > predict_fold

    rule deploy:
        input:
            unpack(deploy_inputs),
        output:
            model=str(paths.model_files(paths.model_dir("{model}"))["model"]),
            card=str(paths.model_files(paths.model_dir("{model}"))["card"]),
        log:
            "logs/deploy/{model}.log",
        conda:
            "../../envs/torch.yaml"
        params:
            members=lambda w: config["models"][w.model].get("members"),
            combine=lambda w: config["models"][w.model].get("combine", "fitted"),
            folds=FOLDS,
            interval=config["infer"].get("interval"),
            code=script_code("deploy.py"),
        script:
            "../scripts/deploy.py"

    ruleorder: deploy > train


rule deploy_all:
    input:
        (
            [str(paths.model_files(paths.model_dir(m))["model"]) for m in MODELS]
            if FOLDS
            else []
        ),
