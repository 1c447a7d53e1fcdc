"""Shared fixtures: the repository root and the packaged resources built once per session.

``BRAINAGE_STRICT_TESTS=1`` (CI sets it in .ci/run) turns every skip -- ``pytest.skip``,
``skipif``, ``importorskip`` -- into a failure with the skip's reason: CI must not be green
because SLURM, minc-tools or an optional dependency was missing. Without it (a laptop) tests
still skip, and ``-ra`` prints why.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STRICT = os.environ.get("BRAINAGE_STRICT_TESTS") == "1"
#: CI (.ci/run) builds a second virtual environment with the README's base install line only
#: (no test or slurm extra) and names it here: the pipeline runs of the tests and every README
#: command they run come from it, so the base install must carry all they need (the report once
#: needed pygments, which only the test extra brought). Unset (a laptop): this interpreter's.
BASE_VENV = os.environ.get("BRAINAGE_BASE_VENV")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under BRAINAGE_STRICT_TESTS=1: {reason}"
    return report


#: at most this many xdist workers (``-n auto``, pyproject addopts): each runs pipelines with
#: torch, ANTs and deepbet at 2-4 GiB, and the tiny run and its SLURM run (one unit) bound the
#: wall time anyway. One process kept 0.95 of CI's 2 cores busy on average (2026-12-07).
MAX_WORKERS = 4
#: the longest work units, started first: seconds in CI (pytest --durations=0, one process, 2026-12-07)
#: 572 (the tiny run 190, its SLURM run 377), 144, 129, 111, 97, 96, 71, 52, 45, 40, 37
LONGEST_FIRST = ("tests/integration/test_slurm.py", "tests/test_real_cohort.py", "tests/test_rule_envs.py",
                 "tests/test_faults.py", "tests/test_batches.py", "tests/test_preprocess.py", "tests/test_simulate.py",
                 "tests/test_readme_commands.py", "tests/test_rerun.py", "tests/test_manifest.py",
                 "tests/test_predict_batch.py")


def pytest_collection_modifyitems(config, items):
    """The longest modules first. Under xdist (pyproject addopts: ``--dist loadfile``) a module is
    one unit of work, so its fixtures are made once; a free worker takes the next unit in this
    order (``--no-loadscope-reorder``), so the long ones must not be left to the end. The
    session's tiny run is made once for all workers (``tiny_run``)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.hookimpl(optionalhook=True)  # xdist's hook: pytest without xdist does not know it
def pytest_xdist_auto_num_workers(config):
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def atlas_root(tmp_path_factory) -> Path:
    """Template, mask and AAL116 at 1, 2 and 4 mm, written once by the library."""
    from brainage.data.atlases import build_resources

    root = tmp_path_factory.mktemp("atlases")
    build_resources(root, [1, 2, 4])
    return root


# ---------------------------------------------------------------------------------------------
# The tiny pipeline, run once per session (tests/config/tiny.yaml), for tests that need a
# completed run: rerun behaviour (tests/test_rerun.py) and anyone checking real outputs.

TINY_CONFIG = REPO / "tests" / "config" / "tiny.yaml"
#: what a working directory needs to run the pipeline from its own copy of the code
WORKFLOW_FILES = ("Snakefile", "workflow", "profiles", "src", "envs")


def tiny_config() -> dict:
    """The demo (config/defaults.yaml + config/config.yaml) overlaid with tests/config/tiny.yaml,
    whose ``models`` replace the demo's: the whole resolved configuration, every key."""
    from brainage.config import resolved_config

    return resolved_config([REPO / "config" / "config.yaml", TINY_CONFIG], REPO)


def make_workdir(work: Path, config: dict | None = None) -> Path:
    """A working directory holding a copy of the workflow and library code and ``config``.

    ``config`` (default: :func:`tiny_config`) is written as the demo's ``config/config.yaml``,
    over a copy of ``config/defaults.yaml``, as a plain ``snakemake`` run there layers them.
    The copy lets a test edit code (a module, a figure script) without touching the
    repository; ``common.smk`` puts the copy's ``src/`` first on ``sys.path``, so the code
    hashes of the rules are those of the copy.
    """
    import shutil

    import yaml

    work.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, work / name)
    (work / "config").mkdir(exist_ok=True)
    shutil.copy2(REPO / "config" / "defaults.yaml", work / "config" / "defaults.yaml")
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config or tiny_config(), sort_keys=False))
    return work


def base_bin() -> Path:
    """The bin folder of the base install (``BRAINAGE_BASE_VENV``), else of this interpreter."""
    import sys

    return Path(BASE_VENV) / "bin" if BASE_VENV else Path(sys.executable).parent


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment with the base install first on PATH (plus ``extra``)."""
    env = {**os.environ, **extra}
    env["PATH"] = f"{base_bin()}{os.pathsep}{env.get('PATH', '')}"
    if BASE_VENV:
        env["VIRTUAL_ENV"] = BASE_VENV
    return env


def run_line(line: str, cwd: Path, timeout: float = 1800, **extra_env: str):
    """A command line as a user types it (README): bash, in ``cwd``, the base install on PATH."""
    import subprocess

    return subprocess.run(["bash", "-c", line], cwd=cwd, env=base_env(**extra_env), capture_output=True, text=True,
                          timeout=timeout)


def snakemake_cmd(work: Path, *args: str, python: str | None = None) -> list[str]:
    """Snakemake on ``work``, from the base install (``python``: another interpreter, e.g. the
    test environment's for ``--profile slurm``, whose plugin is the slurm extra's)."""
    return [python or str(base_bin() / "python"), "-m", "snakemake", "-s", str(work / "Snakefile"), "-d", str(work),
            *args]


def planned_jobs(work: Path, *args: str) -> list[tuple[str, dict[str, str]]]:
    """The jobs a dry-run (`snakemake -n`) of ``work`` would run: (rule, wildcards) each."""
    import re
    import subprocess

    out = subprocess.run(snakemake_cmd(work, "-n", "--cores", "1", *args), capture_output=True, text=True,
                         timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in text.splitlines():
        start = re.match(r"^\s*(?:local)?(?:rule|checkpoint) (\w+):$", line)  # group members are indented
        if start:
            jobs.append((start.group(1), {}))
            continue
        wildcards = re.match(r"^\s+wildcards: (.*)$", line)
        if wildcards and jobs:
            jobs[-1][1].update(dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")))
    return jobs


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Working directory of a completed run of the whole tiny pipeline (read-only: copy it).

    Made once per test session, whatever the number of xdist workers: the first worker to ask
    makes it under a lock in the folder all workers share, the others wait and reuse it (a
    failed run is reported to each of them, not made again). ``BRAINAGE_TINY_RUN=<dir>`` reuses
    a run made earlier by this fixture (or by ``make_workdir`` + ``snakemake --cores 2``), to
    iterate on tests without paying for the run.
    """
    from filelock import FileLock

    reuse = os.environ.get("BRAINAGE_TINY_RUN")
    if reuse:
        return Path(reuse)
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # <basetemp>/popen-gw<N>: the session's folder is above
        shared = shared.parent
    work, failed = shared / "tiny_run", shared / "tiny_run.failed"
    with FileLock(str(shared / "tiny_run.lock")):
        if failed.is_file():
            pytest.fail(failed.read_text(), pytrace=False)
        if not (work / ".complete").is_file():
            try:
                _make_tiny_run(work)
            except AssertionError as err:
                failed.write_text(str(err))
                raise
            (work / ".complete").touch()
    return work


def _make_tiny_run(work: Path) -> None:
    import shutil
    import subprocess

    import readme

    shutil.rmtree(work, ignore_errors=True)
    make_workdir(work, tiny_run_config())
    # simulate the QC failure's scan and spoil it, then the README's `snakemake --cores all` as
    # written, from the base install, in the working directory
    first = subprocess.run(snakemake_cmd(work, "--cores", "2", QC_FAILURE_T1W), capture_output=True, text=True,
                           timeout=1800)
    (work / "snakemake.log").write_text(first.stdout + first.stderr)
    assert first.returncode == 0, f"tiny pipeline failed in {work}:\n{(first.stdout + first.stderr)[-6000:]}"
    spoil_header_voxel_size(work / QC_FAILURE_T1W, QC_FAILURE_SCALE)
    out = run_line(readme.run_command(), work, timeout=1800)
    (work / "snakemake.log").write_text(first.stdout + first.stderr + out.stdout + out.stderr)
    assert out.returncode == 0, f"tiny pipeline failed in {work}:\n{(out.stdout + out.stderr)[-6000:]}"


#: the subject of the tiny run whose scan is spoiled so that it fails QC (one AD more is simulated
#: for it, so the AD cohort keeps the three subjects its Pearson r needs)
QC_FAILURE = "sub-ad0001"
QC_FAILURE_T1W = f"results/cohort/bids/{QC_FAILURE}/anat/{QC_FAILURE}_T1w.nii.gz"
#: voxel sizes scaled by this in the header: the head reads 1.6 x larger, its brain about 4700 ml
QC_FAILURE_SCALE = 1.6


def tiny_run_config() -> dict:
    config = tiny_config()
    config["cohort"]["simulate"]["n_ad"] += 1
    return config


#: what differs between two runs of the same preprocessing: its own timing and paths
PREPROCESS_VOLATILE = frozenset({"runtime_s", "timings_s", "t1w"})


def assert_same_preprocessing(mine: Path, ref: Path, volatile=PREPROCESS_VOLATILE, png: bool = False) -> None:
    """The preprocessing outputs in folder ``mine`` are those in ``ref``: the same file names,
    volumes, QC json but its ``volatile`` keys, and bytes of every other file (of the QC PNG
    too with ``png``)."""
    import json

    import nibabel as nib
    import numpy as np

    names = sorted(p.name for p in ref.iterdir())
    assert sorted(p.name for p in mine.iterdir()) == names
    for name in names:
        a, b = mine / name, ref / name
        if name.endswith(".nii.gz"):
            np.testing.assert_array_equal(nib.load(a).get_fdata(), nib.load(b).get_fdata(), err_msg=name)
        elif name.endswith(".json"):
            drop = (lambda d: {k: v for k, v in d.items() if k not in volatile})
            assert drop(json.loads(a.read_text())) == drop(json.loads(b.read_text())), name
        elif png or not name.endswith(".png"):  # the QC figure's PNG bytes carry nothing more
            assert a.read_bytes() == b.read_bytes(), name


def spoil_header_voxel_size(path: Path, scale: float) -> None:
    """Rewrite ``path`` with its voxel sizes times ``scale`` (the data untouched): a wrong header."""
    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    affine = img.affine.copy()
    affine[:3, :3] *= scale
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), affine, img.header), path)


@pytest.fixture
def tiny_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the completed tiny run (results and Snakemake's metadata included)."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(tiny_run, work, symlinks=True)  # copy2 keeps mtimes: nothing looks newer
    return work
