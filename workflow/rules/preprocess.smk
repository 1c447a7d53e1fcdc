# Stage 'preprocess': raw T1w -> brain mask -> N4 -> 12-dof affine to MNI152NLin2009cAsym ->
# configured template grids, per subject, plus the cohort QC table. Engine from config:
# native (deepbet + ANTsPy, in-process) or minc (the study's MINC Toolkit chain in a container).
# All logic is in brainage.preprocess; `snakemake preprocess_all` runs this stage alone.
import shutil

from brainage.preprocess.minc import MincSettings, minc_script

PREPROCESS = config["preprocess"]
PP_ENGINE = PREPROCESS["engine"]
PP_QC = PREPROCESS.get("qc") or {}
PP_DIR = str(paths.preprocess_dir("{subject}"))
# what a subject's outputs depend on. The QC thresholds are not: the cohort table (rule
# qc_table) judges every subject against them, so thresholds set from a cohort's measured heads
# apply without preprocessing anyone again (each subject's QC json and figure keep the verdict
# of the thresholds at the time it ran, read from config by the script).
PP_SETTINGS = {
    k: v
    for k, v in PREPROCESS.items()
    if k not in ("engine", "grids", "qc", "subjects_per_job")
}
PP_PER_JOB = PREPROCESS.get("subjects_per_job", 1)
PP_THRESHOLDS = {k: v for k, v in PP_QC.items() if k != "on_fail"}
# mask, affine, QC, and the preprocessed T1w on each grid (res4, res2, ...)
PP_OUTPUTS = patterns(paths.preprocess_outputs(PP_DIR, "{subject}", GRIDS))


if PP_ENGINE == "minc":
    # Fail before any job starts: the MINC rules only run inside the container.
    from snakemake.settings.types import DeploymentMethod

    if DeploymentMethod.APPTAINER not in workflow.deployment_settings.deployment_method:
        raise WorkflowError(
            "config preprocess.engine is 'minc': run with --software-deployment-method apptainer "
            "(--sdm apptainer), or set preprocess.engine: native"
        )
    if shutil.which("apptainer") is None and shutil.which("singularity") is None:
        raise WorkflowError(
            "config preprocess.engine is 'minc' but apptainer is not on PATH: install apptainer "
            "(https://apptainer.org) or set preprocess.engine: native"
        )
    PP_MINC = MincSettings.from_config(PREPROCESS.get("minc"))
    PP_MINC_FILES = patterns(paths.minc_files("{subject}"))

    rule preprocess_minc_input:
        input:
            t1w=raw_t1w,
        output:
            temp(PP_MINC_FILES["ras"]),
        log:
            "logs/preprocess_minc_input/{subject}.log",
        benchmark:
            "logs/preprocess_minc_input/{subject}.benchmark.tsv"
        group:
            "preprocess"
        conda:
            "../../envs/imaging.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=5,
        params:
            code=script_code("preprocess_minc_input.py"),
        script:
            "../scripts/preprocess_minc_input.py"

    rule preprocess_minc:
        input:
            t1w=rules.preprocess_minc_input.output[0],
        output:
            brain=temp(PP_MINC_FILES["brain"]),
            mask=temp(PP_MINC_FILES["mask"]),
            xfm=PP_MINC_FILES["xfm"],
        log:
            "logs/preprocess_minc/{subject}.log",
        benchmark:
            "logs/preprocess_minc/{subject}.benchmark.tsv"
        group:
            "preprocess"
        container:
            PP_MINC.container
        threads: 2
        resources:
            mem_mb=4000,
            runtime=60,
        params:
            script=lambda wildcards, input, output: minc_script(
                input.t1w, output.brain, output.mask, output.xfm, PP_MINC
            ),
            code=code_hash("brainage.preprocess.minc"),
        shell:
            "(export ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads}\n{params.script}\n) > {log} 2>&1"

    rule preprocess:
        input:
            t1w=raw_t1w,
            brain=rules.preprocess_minc.output.brain,
            mask=rules.preprocess_minc.output.mask,
            xfm=rules.preprocess_minc.output.xfm,
        output:
            **PP_OUTPUTS,
        log:
            "logs/preprocess/{subject}.log",
        benchmark:
            "logs/preprocess/{subject}.benchmark.tsv"
        group:
            "preprocess"
        conda:
            "../../envs/imaging.yaml"
        threads: 1
        resources:
            mem_mb=3000,
            runtime=10,
        params:
            grids=GRIDS,
            settings=PP_SETTINGS,
            code=script_code("preprocess_minc_finish.py"),
        script:
            "../scripts/preprocess_minc_finish.py"

elif PP_PER_JOB > 1:
    # Batches of subjects per job (config preprocess.subjects_per_job): one Python start and one
    # import of torch, ANTs and deepbet per batch, not per subject. One rule per batch (the
    # names say which: preprocess_b000, ...), the same outputs and per-subject logs as rule
    # preprocess; a batch is redone whole when one of its members (or their order) changes.
    for PP_BATCH, PP_MEMBERS in paths.subject_batches(SUBJECTS, PP_PER_JOB):

        rule:
            name:
                f"preprocess_{PP_BATCH}"
            input:
                t1w=[RAW_T1W[s] for s in PP_MEMBERS],
            output:
                **{
                    key: expand(pattern, subject=PP_MEMBERS)
                    for key, pattern in PP_OUTPUTS.items()
                },
            log:
                expand("logs/preprocess/{subject}.log", subject=PP_MEMBERS),
            benchmark:
                f"logs/preprocess/{PP_BATCH}.benchmark.tsv"
            conda:
                "../../envs/imaging.yaml"
            threads: 1
            resources:
                mem_mb=4000,
                runtime=5 * len(PP_MEMBERS),
            params:
                subjects=PP_MEMBERS,
                grids=GRIDS,
                settings=PP_SETTINGS,
                code=script_code("preprocess_native.py"),
            script:
                "../scripts/preprocess_native.py"

else:

    rule preprocess:
        input:
            t1w=raw_t1w,
        output:
            **PP_OUTPUTS,
        log:
            "logs/preprocess/{subject}.log",
        benchmark:
            "logs/preprocess/{subject}.benchmark.tsv"
        group:
            "preprocess"
        conda:
            "../../envs/imaging.yaml"
        # one thread: two subjects at a time use a laptop's two cores better than one subject on
        # two (a job's start, its imports, is single-threaded); the SLURM profile sets 4
        threads: 1
        resources:
            mem_mb=4000,
            runtime=20,
        params:
            grids=GRIDS,
            settings=PP_SETTINGS,
            code=script_code("preprocess_native.py"),
        script:
            "../scripts/preprocess_native.py"


rule qc_table:
    input:
        qc=expand(PP_OUTPUTS["qc_json"], subject=SUBJECTS),
        volumes=expand(PP_OUTPUTS[f"res{res_label(max(GRIDS))}"], subject=SUBJECTS),
    output:
        table=str(paths.QC_TABLE),
        excluded=QC_EXCLUDED,
        montage=str(paths.QC_MONTAGE),
    log:
        "logs/qc_table/qc_table.log",
    benchmark:
        "logs/qc_table/qc_table.benchmark.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        on_fail=PP_QC.get("on_fail", "exclude"),
        thresholds=PP_THRESHOLDS,
        code=script_code("preprocess_qc_table.py"),
    script:
        "../scripts/preprocess_qc_table.py"


rule preprocess_all:
    input:
        rules.qc_table.output,
