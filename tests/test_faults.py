"""Faults beyond training: a job killed with SIGKILL, then the same command again.

For each stage (simulation, preprocessing, the cache build, inference) a private copy of the
completed tiny run (tests/conftest.py ``tiny_copy``) loses one output of that stage; Snakemake
is asked for it, and the job's process is killed with SIGKILL while it runs (the OOM killer,
a node failure). The killed run must leave no output file behind; the same command then
completes, and the outputs equal those of the uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import snakemake_cmd

pytestmark = pytest.mark.slow

#: values the pipeline records that are not results (wall time)
VOLATILE = {"runtime_s", "timings_s", "elapsed", "seconds"}


def _same(a: Path, b: Path) -> None:
    """``b`` holds the same result as ``a`` (volumes to float error, tables and JSON by value)."""
    name = a.name
    if name.endswith((".nii.gz", ".nii")):
        x, y = nib.load(a), nib.load(b)
        assert x.shape == y.shape and np.allclose(x.affine, y.affine)
        assert np.allclose(np.asarray(x.dataobj, np.float64), np.asarray(y.dataobj, np.float64), atol=1e-4), name
    elif name.endswith(".npy"):
        assert np.allclose(np.load(a).astype(np.float64), np.load(b).astype(np.float64), atol=1e-3), name
    elif name.endswith(".json"):
        strip = lambda d: {k: strip(v) for k, v in d.items() if k not in VOLATILE} if isinstance(d, dict) else d
        assert strip(json.loads(a.read_text())) == strip(json.loads(b.read_text())), name
    elif name.endswith(".tsv"):
        pd.testing.assert_frame_equal(pd.read_csv(a, sep="\t"), pd.read_csv(b, sep="\t"), rtol=1e-4, check_exact=False)
    else:
        assert a.read_bytes() == b.read_bytes(), name


def _job_process(snakemake: psutil.Process, marker: str, timeout: float = 300) -> psutil.Process:
    """The running job: a descendant of ``snakemake`` whose command line holds ``marker``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for child in snakemake.children(recursive=True):
            try:
                if marker in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        assert snakemake.is_running(), "Snakemake ended before the job started"
        time.sleep(0.05)
    raise AssertionError(f"no job process with {marker!r} within {timeout} s")


STAGES = {
    # stage: (outputs removed and asked for again, the job script's name, seconds to let it work)
    "simulation": (["results/cohort/bids/sub-hc0002/anat/sub-hc0002_T1w.nii.gz",
                    "results/cohort/truth/sub-hc0002/sub-hc0002_truth.json"], "simulate_subject", 2.0),
    "preprocessing": (["results/preprocess/sub-hc0003/anat/sub-hc0003_desc-qc.json",
                       "results/preprocess/sub-hc0003/anat/sub-hc0003_space-MNI152NLin2009cAsym_res-4_desc-preproc_T1w.nii.gz"],
                      "preprocess_native", 4.0),
    "cache": (["results/cache/res-4/volumes.npy", "results/cache/res-4/index.tsv"], "train_cache", 1.0),
    "inference": (["results/predictions/resnet18_e2e.tsv", "results/predictions/resnet18_e2e.json"], "predict_cohort", 1.0),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkilled_job_then_same_command_equals_uninterrupted_run(tiny_copy, tmp_path, stage):
    outputs, script, work_s = STAGES[stage]
    reference = tmp_path / "reference"
    for rel in outputs:
        assert (tiny_copy / rel).is_file(), rel
        (reference / rel).parent.mkdir(parents=True, exist_ok=True)
        (reference / rel).write_bytes((tiny_copy / rel).read_bytes())
        (tiny_copy / rel).unlink()
    command = snakemake_cmd(tiny_copy, "--cores", "2", *outputs)

    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = _job_process(psutil.Process(run.pid), script)
    # kill while it writes (a temporary file of an output has appeared) or after work_s seconds
    folders = {(tiny_copy / rel).parent for rel in outputs}
    started = time.time()
    while time.time() - started < work_s and job.is_running():
        if any(p.name.startswith(".") and ".tmp" in p.name for f in folders if f.is_dir() for p in f.iterdir()):
            break
        time.sleep(0.002)
    try:
        job.suspend()  # frozen where it is, then killed there
        for _ in range(200):
            if job.status() == psutil.STATUS_STOPPED:
                break
            time.sleep(0.005)
        stopped = job.status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        stopped = False
    assert stopped, f"the {script} job ended before the kill"
    job.send_signal(signal.SIGKILL)
    killed_log = run.communicate(timeout=600)[0]
    assert run.returncode != 0, killed_log[-3000:]
    left = [rel for rel in outputs if (tiny_copy / rel).exists()]
    assert not left, f"outputs left by the killed job: {left}"

    again = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    for rel in outputs:
        _same(reference / rel, tiny_copy / rel)
    leftovers = [str(p) for f in folders for p in f.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
    assert not leftovers, f"temporaries of the killed job survive: {leftovers}"
