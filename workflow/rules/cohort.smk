# The participants manifest, the single source of truth for who is in the study:
# the embedded simulated cohort, or a user's manifest made by `brainage manifest`.


if config["cohort"]["source"] == "simulate":

    from brainage.simulate.model import plan_row

    rule simulate_anatomy:
        output:
            "results/cohort/truth/anatomy.npz",
        log:
            "logs/simulate_anatomy/simulate_anatomy.log",
        conda:
            "../../envs/imaging.yaml"
        threads: 1
        resources:
            mem_mb=4000,
        params:
            voxel_mm=config["cohort"]["simulate"]["voxel_mm"],
            code=code_hash("brainage.simulate", "brainage.atlases", "brainage.grids"),
        script:
            "../scripts/simulate_anatomy.py"

    rule simulate_subject:
        input:
            anatomy="results/cohort/truth/anatomy.npz",
        output:
            t1w=f"{SIM_BIDS}/{{subject}}/anat/{{subject}}_T1w.nii.gz",
            mask="results/cohort/truth/{subject}/{subject}_desc-brain_mask.nii.gz",
            xfm_json="results/cohort/truth/{subject}/{subject}_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.json",
            xfm_itk="results/cohort/truth/{subject}/{subject}_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.txt",
            truth="results/cohort/truth/{subject}/{subject}_truth.json",
        log:
            "logs/simulate_subject/{subject}.log",
        wildcard_constraints:
            subject="sub-[A-Za-z0-9]+",
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
            code=code_hash("brainage.simulate", "brainage.io"),
        script:
            "../scripts/simulate_subject.py"

    rule simulate_cohort:
        input:
            anatomy="results/cohort/truth/anatomy.npz",
            t1w=expand(rules.simulate_subject.output.t1w, subject=SUBJECTS),
            truth=expand(rules.simulate_subject.output.truth, subject=SUBJECTS),
        output:
            manifest="results/cohort/participants.tsv",
            bids_participants=f"{SIM_BIDS}/participants.tsv",
            dataset_description=f"{SIM_BIDS}/dataset_description.json",
            subjects="results/cohort/truth/subjects.tsv",
            effects="results/cohort/truth/effects_aal116.tsv",
            sites="results/cohort/truth/sites.tsv",
            model="results/cohort/truth/model.json",
            figure=report(
                "results/figures/simulated_raw_scans.png",
                caption="../report/simulated_raw_scans.rst",
                category=CAT_QC,
            ),
        log:
            "logs/simulate_cohort/simulate_cohort.log",
        conda:
            "../../envs/imaging.yaml"
        threads: 1
        resources:
            mem_mb=3000,
        params:
            simulate=config["cohort"]["simulate"],
            seed=SEED,
            bids_root=SIM_BIDS,
            code=code_hash("brainage.simulate", "brainage.manifest", "brainage.io"),
        script:
            "../scripts/simulate_cohort.py"

else:

    rule participants:
        input:
            manifest=config["cohort"]["manifest"],
        output:
            "results/cohort/participants.tsv",
        log:
            "logs/participants/participants.log",
        conda:
            "../../envs/imaging.yaml"
        params:
            schema=PARTICIPANTS_SCHEMA,
            code=code_hash("brainage.manifest", "brainage.io", "brainage.logs"),
        script:
            "../scripts/participants.py"


rule cohort_all:
    input:
        "results/cohort/participants.tsv",
        rules.simulate_cohort.output if config["cohort"]["source"] == "simulate" else [],
