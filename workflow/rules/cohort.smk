# The participants manifest, the single source of truth for who is in the study:
# the embedded simulated cohort, or a user's manifest made by `brainage manifest`.


if config["cohort"]["source"] == "simulate":

    # simulate_subject / simulate_cohort: see the simulation issue (owner: simulate helper)
    pass

else:

    rule participants:
        input:
            manifest=config["cohort"]["manifest"],
        output:
            "results/cohort/participants.tsv",
        log:
            "logs/participants/participants.log",
        params:
            schema=PARTICIPANTS_SCHEMA,
            code=code_hash("brainage.manifest", "brainage.io", "brainage.logs"),
        script:
            "../scripts/participants.py"


rule cohort_all:
    input:
        "results/cohort/participants.tsv",
