"""Every command the README documents runs in CI from the install the README gives for it, or
this file says why not.

.ci/run builds two virtual environments with the README's own lines: the base install (``pip
install -c requirements.lock -e .``, named by ``BRAINAGE_BASE_VENV``), and the test environment
(the README's slurm line, then its test line). The pipeline runs of the tests and the README's
commands run from the base install (tests/conftest.py ``snakemake_cmd``, ``run_line``), so a
command that needs a package only the test or slurm extra brings fails here; ``--profile slurm``
runs from the test environment, whose executor plugin the slurm line installed.

:data:`COVERAGE` maps each command block of the README (and each inline ``snakemake ...``) to the
test that runs it, or to the reason it is not run; a new README command without an entry fails
:func:`test_every_readme_command_runs_in_ci_or_says_why`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

import readme
from conftest import BASE_VENV, REPO, STRICT, base_bin, run_line

#: README command (a code block, or an inline ``snakemake ...``; whitespace collapsed) -> the test
#: that runs it ("path::test") or why it is not run ("not run: ...")
COVERAGE = {
    # the two one-line commands
    "pip install -c requirements.lock -e . && snakemake --cores all":
        "tests/test_readme_commands.py::test_the_base_install_is_the_readme_line",  # + conftest.tiny_run runs
        # `snakemake --cores all` as written, from that install, on the tiny config
    'pip install -c requirements.lock -e ".[test]" && pytest': "not run by a test: .ci/run runs it as written",
    # configuration
    "snakemake --configfile config/paper.yaml --cores all":
        "tests/test_study_config.py::test_paper_config_dry_run_plans_the_studys_jobs",  # -n: the study needs GPUs
    # bring your own data
    "brainage manifest --bids /data/my_bids --out participants.tsv\n"
    "snakemake --cores all --config cohort='{source: manifest, manifest: participants.tsv}'":
        "tests/test_readme_commands.py::test_bring_your_own_bids",
    "brainage manifest --ixi-demographics IXI.csv --ixi-t1 IXI-T1/ --adni ADNIMERGE.csv --adni-t1 adni/ "
    "--adni-viscode m24 --ppmi ppmi.csv --ppmi-t1 ppmi/ --ppmi-visit V08 --out participants.tsv":
        "tests/test_readme_commands.py::test_one_manifest_from_several_sources",
    "mkdir -p ~/ixi/IXI-T1 && cd ~/ixi\n"
    "wget http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI-T1.tar # ~4.5 GB\n"
    "wget http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI.xls\n"
    "tar -xf IXI-T1.tar -C IXI-T1 # IXI002-Guys-0828-T1.nii.gz, ...\n"
    "pip install xlrd # reads IXI.xls (or save the sheet as CSV and pass that)\n"
    "brainage manifest --ixi-demographics ~/ixi/IXI.xls --ixi-t1 ~/ixi/IXI-T1 --out participants.tsv\n"
    "snakemake --configfile config/ixi.yaml --cores all":
        "not run: it downloads 4.5 GB from the IXI site (CI has no network but the package registries); "
        "its last two lines are the next block's, run on the ten IXI heads of tests/data",
    "brainage manifest --ixi-demographics tests/data/ixi_cohort/demographics.csv --ixi-t1 tests/data/ixi_cohort "
    "--out participants.tsv\nsnakemake --configfile config/ixi.yaml --cores all":
        "tests/test_real_cohort.py::test_every_real_head_is_imported_with_its_age_and_passes_qc",
    "brainage predict --model results/models/brainager/model.pt --t1w new_scans/ --out preds.tsv":
        "tests/test_real_cohort.py::test_the_readme_predict_line_on_new_real_heads",
    # cluster
    'pip install -c requirements.lock -e ".[slurm]"':
        "not run by a test: .ci/run builds the test environment with it; --profile slurm runs from there",
    "export SBATCH_ACCOUNT=my_lab # your account: sacctmgr show assoc user=$USER\n"
    "export SBATCH_PARTITION=cpu # CPU partition: sinfo -s\n"
    "export BRAINAGE_GPU_PARTITION=gpu # GPU partition, if GPUs live in their own\n"
    "snakemake --configfile config/paper.yaml --profile slurm --cores all":
        "tests/integration/test_slurm.py::test_every_job_ran_through_sbatch",  # the tiny config through the
        # same profile on the local one-node cluster (its own account and partition): the study needs GPUs
    "snakemake --profile slurm --cores all --sdm apptainer --config preprocess='{engine: minc}'":
        "not run: no container runtime on the CI machines; tests/test_minc.py runs the MINC engine's "
        "minc-tools steps that need none",
    # reading the results
    "brainage predict --model results/models/<name>/model.pt --t1w scans/ --out preds.tsv\n"
    "brainage predict --model results/models/a/model.pt --model results/models/b/model.pt --t1w s1.nii.gz "
    "--t1w s2.nii.gz --out preds.tsv\n"
    "brainage predict --model results/models/<name>/model.pt --manifest participants.tsv --out preds.tsv":
        "tests/test_readme_commands.py::test_predict_block_on_new_scans",
    # inline commands of the prose
    "snakemake --cores all": "tests/test_tiny_run.py::test_splits_hold_every_passing_subject_once",  # conftest.tiny_run
    "snakemake fig6_bag_violin": "tests/test_readme_commands.py::test_one_figure_by_its_target_name",
    "snakemake <target>": "tests/test_readme_commands.py::test_one_figure_by_its_target_name",
    "snakemake --report results/report.html": "tests/test_tiny_run.py::test_report_embeds_every_table_and_figure",
    "snakemake --report": "tests/test_tiny_run.py::test_report_embeds_every_table_and_figure",
    "snakemake deploy_all": "tests/test_real_cohort.py::test_a_cross_validated_model_is_deployed_as_the_mean_of_its_fold_models",
    "snakemake -n": "tests/test_study_config.py::test_paper_config_dry_run_plans_the_studys_jobs",
    "snakemake --profile slurm -n": "tests/integration/test_slurm.py::test_outputs",
    "snakemake --configfile config/paper.yaml --profile slurm --cores all --config "
    "cohort='{source: manifest, manifest: participants.tsv}'":
        "not run: the study on a GPU cluster; its parts are run above (--profile slurm on the tiny config, "
        "a manifest cohort in tests/test_real_cohort.py)",
    "snakemake --configfile $PWD/config/config.yaml $PWD/config/pretrain_synth.yaml -d DIR --cores all train_all":
        "not run: it simulates and preprocesses 300 heads and trains three SFCNs (half an hour); "
        "tests/test_config.py::test_synth_pretraining_config_is_valid_and_fits_the_ixi_sfcns checks the layers "
        "as Snakemake reads them, tests/test_synth.py the random contrast",
    "snakemake --configfile $PWD/config/config.yaml $PWD/config/pretrain_sim.yaml -d DIR --cores all train_all":
        "not run: it trains the demo's models on a larger simulated cohort (an hour); "
        "tests/test_config.py::test_pretraining_config_is_valid_and_its_encoder_fits_the_ixi_rnc_model checks "
        "the layers as Snakemake reads them",
}


def _documented() -> list[str]:
    return readme.command_blocks() + [re.sub(r"\s+", " ", c) for c in readme.inline_snakemake()]


def test_every_readme_command_runs_in_ci_or_says_why():
    documented = _documented()
    assert sorted(set(documented) - set(COVERAGE)) == [], "README commands with no COVERAGE entry"
    assert sorted(set(COVERAGE) - set(documented)) == [], "COVERAGE entries the README no longer has"
    for command, where in COVERAGE.items():
        if where.startswith("not run"):
            assert ": " in where, command  # a reason
            continue
        path, name = where.split("::")
        assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.MULTILINE), f"{where}: no such test"


def test_the_readme_parser_finds_blocks_lists_and_continuations():
    text = ("Intro:\n\n    pip install x && snakemake --cores all\n\nProse `snakemake fig1` and\n`snakemake\n"
            "--report out.html`.\n\n- a list item:\n\n      brainage predict --model m.pt \\\n          --t1w s.nii.gz\n\n"
            "    Snakefile    a tree, not a command\n")
    assert readme.command_blocks(text) == ["pip install x && snakemake --cores all",
                                           "brainage predict --model m.pt --t1w s.nii.gz"]
    assert [re.sub(r"\s+", " ", c) for c in readme.inline_snakemake(text)] == ["snakemake --report out.html",
                                                                                "snakemake fig1"]


def test_the_base_install_is_the_readme_line():
    """CI's base environment holds the README's base install only: no test or slurm extra."""
    if not BASE_VENV:
        if STRICT:
            pytest.fail("BRAINAGE_BASE_VENV is not set: .ci/run builds the README's base install and names it")
        pytest.skip("BRAINAGE_BASE_VENV not set: the README's commands run from this environment")
    listed = subprocess.run([str(base_bin() / "python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True, timeout=120).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert {"brainage-rnc", "snakemake", "torch", "pygments"} <= installed
    assert not installed & {"pytest", "snakefmt", "snakemake-executor-plugin-slurm"}  # scikit-learn: nilearn needs it


def _rules_run(log: str) -> list[str]:
    return re.findall(r"^\s*(?:local)?rule (\w+):$", log, re.MULTILINE)


def test_one_figure_by_its_target_name(tiny_copy):
    """`snakemake fig6_bag_violin` rebuilds that figure and nothing else."""
    figures = tiny_copy / "results" / "figures"
    for made in figures.glob("fig6_bag_violin.*"):
        made.unlink()
    line = next(c for c in _documented() if c.startswith("snakemake fig"))
    out = run_line(line, tiny_copy, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert _rules_run(out.stdout + out.stderr) == ["fig6_bag_violin"]
    assert (figures / "fig6_bag_violin.png").stat().st_size > 10_000 and (figures / "fig6_bag_violin.svg").is_file()


def test_bring_your_own_bids(tiny_copy):
    """The BIDS block on the tiny run's simulated BIDS folder: the manifest as written; the run as
    a dry run (all but the preprocessing would retrain for minutes; tests/test_real_cohort.py runs
    a manifest cohort to the end)."""
    block = next(b for b in readme.command_blocks() if b.startswith("brainage manifest --bids"))
    manifest_line, run = block.replace("/data/my_bids", "results/cohort/bids").splitlines()
    made = run_line(manifest_line, tiny_copy, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    table = pd.read_csv(tiny_copy / "participants.tsv", sep="\t", dtype={"participant_id": str})
    simulated = pd.read_csv(tiny_copy / "results" / "cohort" / "participants.tsv", sep="\t",
                            dtype={"participant_id": str})
    assert sorted(table["participant_id"]) == sorted(simulated["participant_id"])
    merged = table.merge(simulated, on="participant_id", suffixes=("", "_sim"))
    assert (merged["age"] - merged["age_sim"]).abs().max() < 1e-6 and (merged["cohort"] == merged["cohort_sim"]).all()
    planned = run_line(run + " -n", tiny_copy, timeout=600)
    assert planned.returncode == 0, (planned.stdout + planned.stderr)[-3000:]
    assert "participants" in _rules_run(planned.stdout + planned.stderr)


def test_one_manifest_from_several_sources(tmp_path):
    """The several-sources block as written, on files named as it names them."""
    from test_manifest import IXI, PPMI, make_adni, tiny_nifti, write

    shutil.copy(IXI / "demographics.csv", tmp_path / "IXI.csv")
    shutil.copytree(IXI, tmp_path / "IXI-T1", ignore=shutil.ignore_patterns("*.csv", "*.md"))
    _, adni_t1 = make_adni(tmp_path)  # ADNIMERGE.csv and its scans
    adni_t1.rename(tmp_path / "adni")
    write(tmp_path / "ppmi.csv", PPMI)
    for patno in (3001, 3002, 3003):
        tiny_nifti(tmp_path / "ppmi" / str(patno) / "V08" / "t1.nii.gz")
    block = next(b for b in readme.command_blocks() if "--ppmi" in b)
    out = run_line(block, tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(tmp_path / "participants.tsv", sep="\t", keep_default_na=False)
    assert table["dataset"].tolist() == ["IXI"] * 3 + ["ADNI"] * 3 + ["PPMI"] * 3
    assert table.groupby("dataset")["cohort"].apply(sorted).to_dict() == {
        "IXI": ["HC"] * 3, "ADNI": ["AD", "AD", "HC"], "PPMI": ["HC", "PD", "PD"]}


def test_predict_block_on_new_scans(tiny_run, tmp_path):
    """The three batch lines, with the tiny run's models and raw scans: one TSV row per scan and
    model, each the pipeline's own prediction for the subjects it predicted."""
    block = next(b for b in readme.command_blocks() if "--model results/models/a/model.pt" in b)
    models = sorted(p.parent.name for p in (tiny_run / "results" / "models").glob("*/model.pt"))
    parts = pd.read_csv(tiny_run / "results" / "cohort" / "participants.tsv", sep="\t", dtype={"participant_id": str})
    preds = {m: pd.read_csv(tiny_run / "results" / "predictions" / f"{m}.tsv", sep="\t",
                            dtype={"participant_id": str}).set_index("participant_id") for m in models}
    tested = [s for s in parts["participant_id"] if s in preds[models[0]].index][:2]  # predicted by the pipeline
    t1w = {s: tiny_run / parts.set_index("participant_id").loc[s, "t1w"] for s in tested}
    (tmp_path / "scans").mkdir()
    shutil.copy(t1w[tested[0]], tmp_path / "scans" / f"{tested[0]}_T1w.nii.gz")
    for k, s in enumerate(tested, start=1):
        shutil.copy(t1w[s], tmp_path / f"s{k}.nii.gz")
    parts[parts["participant_id"] == tested[0]].assign(t1w=str(t1w[tested[0]])).to_csv(
        tmp_path / "participants.tsv", sep="\t", index=False)
    results = tiny_run / "results" / "models"
    chosen = {"<name>": models[0], "a": models[0], "b": models[1]}
    lines = re.sub(r"results/models/(<name>|a|b)/model\.pt", lambda m: str(results / chosen[m.group(1)] / "model.pt"),
                   block).splitlines()
    expected_rows = [1, 2 * 2, 1]  # scans x models per line
    for line, rows in zip(lines, expected_rows):
        (tmp_path / "preds.tsv").unlink(missing_ok=True)
        out = run_line(line, tmp_path, timeout=900)
        assert out.returncode == 0, (line, out.stderr[-3000:])
        table = pd.read_csv(tmp_path / "preds.tsv", sep="\t")
        assert len(table) == rows, line
        for _, row in table.iterrows():
            subject = _subject_of(row, tested)
            expected = preds[row["model"]].loc[subject, "predicted_age"]
            assert row["predicted_age"] == pytest.approx(expected, abs=0.05), (line, subject)
            assert row["predicted_age_lower"] < row["predicted_age"] < row["predicted_age_upper"]


def _subject_of(row: pd.Series, tested: list[str]) -> str:
    """The subject of a predictions row: its participant_id, or the file it came from."""
    name = Path(str(row["file"])).name
    for k, s in enumerate(tested, start=1):
        if str(row.get("participant_id", "")) == s or name in (f"{s}_T1w.nii.gz", f"s{k}.nii.gz"):
            return s
    raise AssertionError(f"predictions row of an unknown scan: {row.to_dict()}")
