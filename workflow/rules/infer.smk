# Stage 'infer': brain-age predictions of every trained model for the HC test split, AD and
# PD (results/predictions/<model>.tsv), and Grad-RAM saliency maps summarised by AAL116
# region (results/saliency/<model>/). All logic is in brainage.infer and brainage.explain.


def infer_models():
    """Models to run: ``infer.models`` if given, else every model of config ``models:``."""
    return list(config["infer"].get("models") or MODELS)


def model_cache(wildcards):
    """The model, manifest, splits and the cache of the model's grid (train.smk's model_grid)."""
    return {
        "model": f"results/models/{wildcards.model}/model.pt",
        "participants": "results/cohort/participants.tsv",
        "splits": "results/splits.tsv",
        **model_grid(wildcards),
    }


def predict_inputs(wildcards):
    """As :func:`model_cache`, plus, for a simulated cohort only, the simulator's subjects
    table (each subject's true brain-age gap goes into the predictions)."""
    inputs = model_cache(wildcards)
    if config["cohort"]["source"] == "simulate":
        inputs["truth"] = "results/cohort/truth/subjects.tsv"
    return inputs


def saliency_inputs(wildcards):
    """As :func:`model_cache`, plus the template, brain mask and AAL116 of the model's grid,
    and, for a simulated cohort only, the simulator's per-region effects (the truth the
    saliency ranking is checked against; a real cohort has none)."""
    inputs = model_cache(wildcards)
    res = float(config["models"][wildcards.model]["grid"])
    inputs.update({k: str(v) for k, v in resource_paths(RESOURCES, res).items()})
    if config["cohort"]["source"] == "simulate":
        inputs["truth"] = "results/cohort/truth/effects_aal116.tsv"
    return inputs


rule predict_cohort:
    input:
        unpack(predict_inputs),
    output:
        tsv="results/predictions/{model}.tsv",
        json="results/predictions/{model}.json",
    log:
        "logs/predict_cohort/{model}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        batch_size=config["infer"]["batch_size"],
        device=config["infer"]["device"],
        bias_correction=config["infer"]["bias_correction"],
        code=script_code("predict_cohort.py"),
    script:
        "../scripts/predict_cohort.py"


rule saliency:
    input:
        unpack(saliency_inputs),
    output:
        subjects=directory("results/saliency/{model}/subjects"),
        groups=directory("results/saliency/{model}/groups"),
        groups_tsv="results/saliency/{model}/groups.tsv",
        aal116="results/saliency/{model}/aal116.tsv",
        matches="results/saliency/{model}/matched_controls.tsv",
        truth="results/saliency/{model}/truth_check.tsv",
    log:
        "logs/saliency/{model}.log",
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
        expand("results/predictions/{model}.tsv", model=infer_models()),
        expand("results/saliency/{model}/aal116.tsv", model=infer_models()),
