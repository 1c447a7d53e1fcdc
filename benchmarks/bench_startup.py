"""Start-up of a local run: `snakemake -n` of the demo, SLURM installed but stopped vs absent.

A local run never uses SLURM, so where SLURM's client tools are installed but no controller
answers (a workstation with the packages, a login node during maintenance) it must start as
fast as where SLURM is absent. The SLURM executor plugin, when installed, runs
`scontrol show config` at import (every Snakemake start imports every executor plugin), which
then waits for its 10 s timeout; it is therefore the `slurm` extra, not part of the laptop
install.

Both cases run in this one invocation, alternating, `--repeat` times each (median printed):

- installed: the PATH as it is (the script says whether `scontrol` is there and whether a
  controller answers);
- absent: the same PATH with SLURM's commands hidden (a folder of links to every other
  executable on PATH).

Run it with the interpreter of the install to judge: `.venv/bin/python benchmarks/bench_startup.py`
(README's install line: no plugin) or one with `.[slurm]` to see the plugin's cost.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLURM_COMMANDS = {"scontrol", "sinfo", "squeue", "sacct", "sbatch", "srun", "scancel", "salloc", "sacctmgr", "sstat"}


def path_without_slurm(folder: Path) -> str:
    """A PATH (one folder of links) holding every executable on PATH but SLURM's commands."""
    for entry in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(entry):
            continue
        for name in os.listdir(entry):
            target = os.path.join(entry, name)
            if name in SLURM_COMMANDS or (folder / name).exists() or not os.access(target, os.X_OK):
                continue
            (folder / name).symlink_to(target)
    return str(folder)


def dry_run(workdir: Path, path: str) -> float:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--quiet", "all",
           "--snakefile", str(REPO / "Snakefile"), "--configfile", str(REPO / "config" / "config.yaml"),
           "--directory", str(workdir)]
    start = time.perf_counter()
    subprocess.run(cmd, env={**os.environ, "PATH": path}, cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            answered = subprocess.run(["scontrol", "ping"], capture_output=True, timeout=15).returncode == 0
        except subprocess.TimeoutExpired:
            answered = False
        state = "SLURM installed, controller " + ("running" if answered else "stopped")
    else:
        state = "SLURM absent (no scontrol on PATH): both cases are the same"
    plugin = importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None

    with tempfile.TemporaryDirectory() as tmp:
        hidden = Path(tmp) / "bin"
        hidden.mkdir()
        no_slurm = path_without_slurm(hidden)
        work = Path(tmp) / "work"
        work.mkdir()
        dry_run(work, os.environ["PATH"])  # warm the file cache once, not timed
        installed, absent = [], []
        for _ in range(args.repeat):
            installed.append(dry_run(work, os.environ["PATH"]))
            absent.append(dry_run(work, no_slurm))
    a, b = statistics.median(installed), statistics.median(absent)
    print(f"bench_startup: {sys.executable} (SLURM plugin {'installed' if plugin else 'not installed'}); {state}")
    print(f"bench_startup: snakemake -n (demo) median of {args.repeat}: SLURM as installed {a:.2f} s | "
          f"SLURM hidden {b:.2f} s -> ratio {a / b:.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()
