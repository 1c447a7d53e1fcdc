# The participants manifest, the single source of truth for who is in the study:
# the embedded simulated cohort, or a user's manifest made by `brainage manifest`.


if config["cohort"]["source"] == "simulate":

    from brainage.data.simulate.model import plan_row

    rule simulate_anatomy:
        output:
            str(paths.SIM_ANATOMY),
        log:
            "logs/simulate_anatomy/simulate_anatomy.log",
        benchmark:
            "logs/simulate_anatomy/simulate_anatomy.benchmark.tsv"
        conda:
            "../../envs/imaging.yaml"
        threads: 1
        resources:
            mem_mb=4000,
        params:
            voxel_mm=config["cohort"]["simulate"]["voxel_mm"],
            code=script_code("simulate_anatomy.py"),
        script:
            "../scripts/simulate_anatomy.py"

    SIM_PER_JOB = config["cohort"].get("subjects_per_job", 1)
    SIM_FILES = patterns(
        paths.simulated_subject_files(SIM_BIDS, paths.SIM_TRUTH, "{subject}")
    )
    if SIM_PER_JOB > 1:
        # Batches of subjects per job (config cohort.subjects_per_job): one Python start and
        # one load of the anatomy per batch; the same files as rule simulate_subject.
        for SIM_BATCH, SIM_MEMBERS in paths.subject_batches(SUBJECTS, SIM_PER_JOB):

            rule:
                name:
                    f"simulate_{SIM_BATCH}"
                input:
                    anatomy=str(paths.SIM_ANATOMY),
                output:
                    **{
                        key: expand(pattern, subject=SIM_MEMBERS)
                        for key, pattern in SIM_FILES.items()
                    },
                log:
                    expand("logs/simulate_subject/{subject}.log", subject=SIM_MEMBERS),
                benchmark:
                    f"logs/simulate_subject/{SIM_BATCH}.benchmark.tsv"
                # before any preprocessing (see rule simulate_cohort)
                priority: 1
                conda:
                    "../../envs/imaging.yaml"
                threads: 1
                resources:
                    mem_mb=int(
                        900
                        + 2600 / float(config["cohort"]["simulate"]["voxel_mm"]) ** 3
                    ),
                params:
                    subjects=SIM_MEMBERS,
                    rows=[plan_row(PARTICIPANTS, s) for s in SIM_MEMBERS],
                    simulate=SIM_MODEL,
                    seed=SEED,
                    code=script_code("simulate_subject.py"),
                script:
                    "../scripts/simulate_subject.py"

    else:

        rule simulate_subject:
            input:
                anatomy=str(paths.SIM_ANATOMY),
            output:
                **SIM_FILES,
            log:
                "logs/simulate_subject/{subject}.log",
            benchmark:
                "logs/simulate_subject/{subject}.benchmark.tsv"
            wildcard_constraints:
                subject="sub-[A-Za-z0-9]+",
            # before any preprocessing (see rule simulate_cohort)
            priority: 1
            conda:
                "../../envs/imaging.yaml"
            threads: 1
            resources:
                mem_mb=int(
                    900 + 2600 / float(config["cohort"]["simulate"]["voxel_mm"]) ** 3
                ),
            params:
                row=lambda wildcards: plan_row(PARTICIPANTS, wildcards.subject),
                simulate=SIM_MODEL,
                seed=SEED,
                code=script_code("simulate_subject.py"),
            script:
                "../scripts/simulate_subject.py"

    rule simulate_cohort:
        input:
            anatomy=str(paths.SIM_ANATOMY),
            t1w=expand(SIM_FILES["t1w"], subject=SUBJECTS),
            truth=expand(SIM_FILES["truth"], subject=SUBJECTS),
        output:
            **{
                key: (
                    report(
                        path,
                        caption="../report/simulated_raw_scans.rst",
                        category=CAT_QC,
                    )
                    if key == "figure"
                    else path
                )
                for key, path in patterns(
                    paths.simulated_cohort_files(SIM_COHORT, paths.SIM_FIGURE)
                ).items()
            },
        log:
            "logs/simulate_cohort/simulate_cohort.log",
        benchmark:
            "logs/simulate_cohort/simulate_cohort.benchmark.tsv"
        # It needs every simulated scan, and splits (hence training) need it: with the
        # simulations first (priority), it runs beside preprocessing instead of after it, with
        # one core idle (46 s of a 30-minute demo, benchmarks/bench_demo.py, 2026-12-06).
        priority: 1
        conda:
            "../../envs/imaging.yaml"
        threads: 1
        resources:
            mem_mb=3000,
        params:
            simulate=config["cohort"]["simulate"],
            seed=SEED,
            bids_root=SIM_BIDS,
            code=script_code("simulate_cohort.py"),
        script:
            "../scripts/simulate_cohort.py"

else:

    rule participants:
        input:
            manifest=config["cohort"]["manifest"],
        output:
            PARTICIPANTS_TSV,
        log:
            "logs/participants/participants.log",
        conda:
            "../../envs/imaging.yaml"
        params:
            schema=PARTICIPANTS_SCHEMA,
            code=script_code("participants.py"),
        script:
            "../scripts/participants.py"


rule cohort_all:
    input:
        PARTICIPANTS_TSV,
        rules.simulate_cohort.output if config["cohort"]["source"] == "simulate" else [],
