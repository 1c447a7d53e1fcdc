# The participants manifest, the single source of truth for who is in the study:
# simulated (the embedded demo) or validated from a user's manifest.


rule participants:
    input:
        manifest=config["cohort"]["manifest"] or [],
    output:
        "results/cohort/participants.tsv",
    log:
        "logs/participants/participants.log",
    params:
        source=config["cohort"]["source"],
        simulate=config["cohort"].get("simulate"),
        seed=SEED,
        code=code_hash("brainage.manifest", "brainage.simulate"),
    script:
        "../scripts/participants.py"
