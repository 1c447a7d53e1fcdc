# Stage 'infer': brain-age predictions of every trained model for the HC test split, AD and
# PD (results/predictions/<model>.tsv), and Grad-RAM saliency maps summarised by AAL116
# region (results/saliency/<model>/). All logic is in brainage.infer and brainage.explain.


def infer_models():
    """Models to run: ``infer.models`` if given, else every model the train stage defines."""
    names = config["infer"].get("models")
    if names:
        return list(names)
    models = config.get("train", {}).get("models", {})
    if isinstance(models, dict):
        return list(models)
    return [m["name"] for m in models]


def model_res(name):
    """Grid (mm) of a model, from its entry in the train config (default: the finest grid)."""
    models = config.get("train", {}).get("models", {})
    spec = models.get(name, {}) if isinstance(models, dict) else next((m for m in models if m["name"] == name), {})
    for key in ("grid", "grid_res", "res"):
        if key in spec:
            return float(spec[key])
    return min(GRIDS)


def model_cache(wildcards):
    """Model, participants, splits and the cache of the model's grid."""
    cache = f"results/cache/res-{res_label(model_res(wildcards.model))}"
    return {
        "model": f"results/models/{wildcards.model}/model.pt",
        "participants": "results/cohort/participants.tsv",
        "splits": "results/splits.tsv",
        "volumes": f"{cache}/volumes.npy",
        "index": f"{cache}/index.tsv",
    }


def saliency_inputs(wildcards):
    """As :func:`model_cache`, plus the grid's atlas and the simulator's truth when simulated."""
    inputs = model_cache(wildcards)
    res = model_res(wildcards.model)
    inputs.update({k: str(v) for k, v in resource_paths(RESOURCES, res).items()})
    if config["cohort"]["source"] == "simulate":
        inputs["truth"] = SIM_TRUTH_REGIONS
    return inputs


#: the simulator's table of AAL116 regions with an age effect (see brainage.simulate)
SIM_TRUTH_REGIONS = "results/cohort/truth/regions.tsv"


rule predict_cohort:
    input:
        unpack(model_cache),
    output:
        tsv="results/predictions/{model}.tsv",
        json="results/predictions/{model}.json",
    log:
        "logs/predict_cohort/{model}.log",
    params:
        batch_size=config["infer"]["batch_size"],
        device=config["infer"]["device"],
        bias_correction=config["infer"]["bias_correction"],
        code=code_hash("brainage.infer", "brainage.cache", "brainage.train", "brainage.networks"),
    threads: 2
    resources:
        mem_mb=4000,
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
    params:
        resources=RESOURCES,
        explain=config["explain"],
        seed=SEED,
        device=config["infer"]["device"],
        code=code_hash("brainage.explain", "brainage.infer", "brainage.cache", "brainage.train", "brainage.networks", "brainage.atlases"),
    threads: 2
    resources:
        mem_mb=6000,
    script:
        "../scripts/saliency.py"


rule infer_all:
    input:
        expand("results/predictions/{model}.tsv", model=infer_models()),
        expand("results/saliency/{model}/aal116.tsv", model=infer_models()),
